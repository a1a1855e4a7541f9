"""What an on-chip learning stage costs: memory of its state and the energy of its multiplies.

Energy per multiply at 45 nm (Horowitz, "Computing's energy problem", ISSCC 2014), the
table: 8-bit integer 0.2 pJ, 32-bit integer 3.1 pJ, 16-bit float
1.1 pJ, 32-bit float 3.7 pJ. Other integer widths follow the power law through the two
integer points, E(b) = 0.2 pJ · (b/8)^k with k = log(3.1/0.2)/log(4) ≈ 1.98 — an array
multiplier's area, and so its switched capacitance, grows with the square of its width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

HOROWITZ_PJ: dict[tuple[str, int], float] = {("int", 8): 0.2, ("int", 32): 3.1, ("float", 16): 1.1, ("float", 32): 3.7}
"""Energy of one multiply in pJ at 45 nm, by (arithmetic, bits) (Horowitz 2014)."""

_INT_EXPONENT = math.log(HOROWITZ_PJ[("int", 32)] / HOROWITZ_PJ[("int", 8)]) / math.log(32 / 8)


def multiply_energy_pj(bits: int | None) -> float:
    """Energy of one multiply in pJ: ``bits``-wide fixed point, or 32-bit float when ``bits`` is None."""
    if bits is None:
        return HOROWITZ_PJ[("float", 32)]
    if bits < 1:
        raise ValueError(f"bits must be positive; got {bits}")
    return HOROWITZ_PJ[("int", 8)] * (bits / 8) ** _INT_EXPONENT


@dataclass(frozen=True)
class LearningCost:
    """Counts of a learning stage, priced at a precision by :meth:`figures`."""

    state_values: int  # stored values: trainable parameters, their gradients, kept activations
    multiplies: int  # digital multiplies of the whole learning stage

    def figures(self, bits: int | None) -> dict[str, float]:
        """``learn_*`` at ``bits`` (None: 32-bit float) and ``float_*`` for 32-bit float training."""
        width = 32 if bits is None else bits
        return {
            "learn_memory_bits": float(self.state_values * width),
            "learn_energy_pj": self.multiplies * multiply_energy_pj(bits),
            "float_memory_bits": float(self.state_values * 32),
            "float_energy_pj": self.multiplies * multiply_energy_pj(None),
        }
