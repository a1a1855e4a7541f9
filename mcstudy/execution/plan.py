"""The plan: a study cut into work units (variant × population × block of chips).

A unit evaluates every procedure at every drift time for its chips, because one
programmed chip is observed over time and every procedure sees the same chip.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..spec import StudySpec


@dataclass(frozen=True, order=True)
class WorkUnit:
    variant: int  # index into spec.variants
    hardware: int  # index into spec.hardware
    start: int  # first chip
    stop: int  # one past the last chip

    @property
    def n_chips(self) -> int:
        return self.stop - self.start

    def label(self, spec: StudySpec) -> str:
        return f"{spec.variants[self.variant].name} × {spec.hardware[self.hardware].name} × chips {self.start}-{self.stop - 1}"


def make_plan(spec: StudySpec, block_size: int) -> list[WorkUnit]:
    """All units of a study, population-major so workers reuse a population's setup."""
    return [
        WorkUnit(v, h, a, min(a + block_size, spec.chips))
        for h in range(len(spec.hardware))
        for v in range(len(spec.variants))
        for a in range(0, spec.chips, block_size)
    ]
