"""The interface every device model implements, and the device and mapping registries.

A *device model* turns target conductances into a programmed state (every per-device
draw made once, at programming) and reads that state at a time after programming (read
noise drawn per read). Device models work on tensors with a leading chip dimension and
draw only from the random stream they are handed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np

import torch

from ..registry import Params
from ..registries import DEVICES, MAPPINGS  # noqa: F401  (re-exported where it always was)
from ..rng import Stream, draw_normal

if TYPE_CHECKING:
    pass

DeviceState = dict[str, torch.Tensor]

Mix = Sequence[tuple[float, Stream]]
"""The read noise of one read as a combination ``Σ r_m·z_m`` of standard normals from the
chip streams ``m`` (each drawn as the read's own normals would be): a device whose reads
at different times are correlated (:meth:`DeviceModel.read_noise_correlation`) reads at
time ``t`` with the Cholesky row of its earlier scheduled reads and ``t``."""


def joint_row(correlation: np.ndarray) -> np.ndarray:
    """The last row of the Cholesky factor of a correlation matrix ``(k+1, k+1)`` of reads in
    time order: the coefficients of the newest read's normal on the k+1 independent ones."""
    try:
        return np.linalg.cholesky(correlation)[-1]
    except np.linalg.LinAlgError as e:
        raise ValueError(f"read times give a read-noise correlation that is not positive definite: {e}") from e


def mixed_normal(mix: Mix, like: torch.Tensor, tag: str) -> torch.Tensor:
    """``Σ r_m·z_m`` shaped like ``like``, each ``z_m`` standard normals of sub-stream ``tag`` of
    stream ``m`` (``draw_normal``)."""
    out: torch.Tensor | None = None
    for r, stream in mix:
        z = draw_normal(stream, like, tag).mul_(r)
        out = z if out is None else out.add_(z)
    assert out is not None
    return out


class DeviceModel(ABC):
    """A conductance device (PCM, RRAM, ...). Conductances are in microsiemens (µS)."""

    EXAMPLE: ClassVar[dict[str, Any]] = {}
    """Parameters for the contract tests where the defaults alone do not make a device
    (e.g. a measured table); every registered device must construct from them."""

    digital_weights: ClassVar[bool] = False
    """Whether on-chip learning keeps what it learns in digital memory, acting through the
    multipliers, as in Jia et al.'s processor (ideal devices). Otherwise the learned weights
    are written to the devices (:meth:`rewrite`): a PCM, RRAM or measured-table device with
    programming noise at the write, drift and read noise counted from it."""

    def __init__(self, params: Params) -> None:
        self.params = params

    @property
    def g_max(self) -> float:
        """Largest programmable conductance, µS (every device's parameters name it ``g_max``)."""
        return float(self.params.g_max)  # type: ignore[attr-defined]

    @property
    def on_off_ratio(self) -> float | None:
        """``G_max / G_off`` of a device with a finite off state (its lowest programmable
        conductance), or None where the model's off state is 0 S. A population's mapping
        uses it as ``G_min`` unless the mapping sets its own ``on_off_ratio``."""
        return None

    @abstractmethod
    def program(self, g_target: torch.Tensor, rng: Stream) -> DeviceState:
        """Program target conductances ``g_target`` (µS, leading chip dim): every per-device
        random quantity is drawn here, once."""

    def rewrite(self, state: DeviceState, g_target: torch.Tensor, fabrication: Stream, write: Stream) -> DeviceState:
        """Program devices in ``state`` again with targets ``g_target`` (µS): by default a
        fresh programming whose per-device draws come from ``write``; a model whose draws
        belong to the device rather than to the write (a cell's fabrication mismatch)
        takes them from ``fabrication``, the stream its first programming drew from."""
        return self.program(g_target, write)

    @abstractmethod
    def mean_and_sigma(self, state: DeviceState, t: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Conductance ``t`` seconds after programming without read noise, and the read
        noise's standard deviation (µS; None when the device has none)."""

    def vector_fresh_fraction(self, t: float) -> float:
        """The share of the read-noise variance (``mean_and_sigma``'s σ², at ``t``) that is
        fresh for every matrix-vector product when noise is drawn per input vector; the rest
        is common to every product of one read. Default 1: white read noise."""
        return 1.0

    def read_noise_correlation(self, times: Sequence[float], vector: bool = False) -> np.ndarray | None:
        """The correlation matrix of one device's read noise between reads at ``times`` (s
        after programming, increasing), or None where reads are independent (white read
        noise; the default). ``vector``: of the part each read's products share
        (:meth:`vector_fresh_fraction`)."""
        return None

    def read(self, state: DeviceState, t: float, rng: Stream, out: torch.Tensor | None = None, mix: Mix | None = None) -> torch.Tensor:
        """Conductances (µS) read ``t`` seconds after programming; read noise drawn from ``rng``,
        or, where ``mix`` is given, the combination of normals it names (:data:`Mix`).
        ``out``: a tensor shaped like the state that a model may write the result to (a
        scratch buffer reused between reads, so large reads do not fault in fresh pages)."""
        g, sigma = self.mean_and_sigma(state, t)
        if sigma is None:
            return g
        z = draw_normal(rng, g, "read") if mix is None else mixed_normal(mix, g, "read")
        return (g + sigma * z).clamp(min=0.0)

    def read_decoded(
        self, state: DeviceState, t: float, rng: Stream, shape: tuple[int, int, int], coeffs: list[float], g_min: float,
        scale: torch.Tensor, mix: Mix | None = None,
    ) -> torch.Tensor | None:  # fmt: skip
        """A read of a layer in the per-chip flat layout (device planes of ``shape``
        ``(D, out, in)``) decoded at once to weights ``(C, out, in)`` — the same numbers as
        :meth:`read` followed by ``Mapping.decode_flat`` with per-plane ``coeffs``, ``g_min``
        and ``scale`` (``Mapping.decode_scale``) — or None where a model has no fused form."""
        return None



