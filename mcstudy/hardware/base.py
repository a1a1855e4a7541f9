"""The interfaces every device model and weight mapping implements, and their registries.

A *device model* turns target conductances into a programmed state (every per-device
draw made once, at programming) and reads that state at a time after programming (read
noise drawn per read). A *mapping* turns a weight matrix into target conductances and
conductances back into weights. Both work on tensors with a leading chip dimension and
draw only from the random stream they are handed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from ..registry import Params, Registry
from ..rng import Stream

DeviceState = dict[str, torch.Tensor]


class DeviceModel(ABC):
    """A conductance device (PCM, RRAM, ...). Conductances are in microsiemens (µS)."""

    def __init__(self, params: Params) -> None:
        self.params = params

    @property
    @abstractmethod
    def g_max(self) -> float:
        """Largest programmable conductance, µS."""

    @abstractmethod
    def program(self, g_target: torch.Tensor, rng: Stream | torch.Generator) -> DeviceState:
        """Program target conductances ``g_target`` (µS, leading chip dim): every per-device
        random quantity is drawn here, once."""

    @abstractmethod
    def read(self, state: DeviceState, t: float, rng: Stream | torch.Generator) -> torch.Tensor:
        """Conductances (µS) read ``t`` seconds after programming; read noise drawn from ``rng``."""

    def drifts(self) -> bool:
        """Whether conductances change with time (so compensation has work to do)."""
        return True


class Mapping(ABC):
    """Weight matrix <-> device conductances."""

    devices_per_weight: int

    def __init__(self, params: Params) -> None:
        self.params = params

    @abstractmethod
    def targets(self, w: torch.Tensor, g_max: float) -> tuple[torch.Tensor, float]:
        """Target conductances ``(devices_per_weight, out, in)`` in µS for weights
        ``w`` (out, in), and the scale in µS per unit weight."""

    @abstractmethod
    def weights(self, g: torch.Tensor, scale: float) -> torch.Tensor:
        """Effective weights ``(C, out, in)`` from conductances ``(C, devices_per_weight, out, in)``."""


DEVICES: Registry[type[DeviceModel]] = Registry("device")
MAPPINGS: Registry[type[Mapping]] = Registry("mapping")
