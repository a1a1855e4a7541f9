"""The shared vocabulary every layer speaks: metric names and their units, the store's
dimensions, the reference time after programming and the version of the physics.

This module sits at the base of the package (it imports nothing from mcstudy), so the
store, the procedures, the spec and the analysis agree on these names without importing
each other.
"""

from __future__ import annotations

METRICS: tuple[str, ...] = ("accuracy", "loss")
"""Metrics every procedure records; a procedure may declare more (``Procedure.extra_metrics``)."""

METRIC_ATTRS: dict[str, dict[str, str]] = {
    "accuracy": {"long_name": "test accuracy", "units": "1"},
    "loss": {"long_name": "mean cross-entropy loss on the test split", "units": "nat", "better": "lower"},
    "accuracy_before": {"long_name": "test accuracy of the chip as read, before the procedure", "units": "1"},
    "learn_memory_bits": {"long_name": "memory of the procedure's trainable state and learning buffers", "units": "bit"},
    "learn_energy_pj": {"long_name": "multiply energy of the procedure's learning stage (Horowitz 2014, 45 nm)", "units": "pJ"},
    "float_memory_bits": {"long_name": "the same learning stage's memory in 32-bit float", "units": "bit"},
    "float_energy_pj": {"long_name": "the same learning stage's multiply energy in 32-bit float", "units": "pJ"},
}
"""Attributes (long name, units) of every metric a procedure may record."""

RESULT_DIMS: tuple[str, str, str, str, str] = ("variant", "hardware", "procedure", "time", "chip")
"""Dimensions of every per-chip result in a store, in order."""

CELL_DIMS: tuple[str, str, str, str] = RESULT_DIMS[:4]
"""The dimensions that name one cell of a study (every result dimension but ``chip``)."""

UNIT_DIMS: tuple[str, str, str] = ("variant", "hardware", "chip")
"""The dimensions a work unit's region spans (it covers every procedure and time)."""

REFERENCE_TIME_S: float = 20.0
"""The reference time after programming, s: PCM's drift and RRAM's relaxation reference
t0, drift compensation's reference read, the programming search's first time and the
default tuning read (Nandakumar et al. 2019 / Le Gallo et al. 2023 measure from 20 s)."""

READOUT_INTERVAL_S: float = 1.0
"""How long after the study's read at a time another readout at that same nominal time
is taken (a drift-compensation reference, a self-tuning read), s: with read noise
correlated in time (PCM's 1/f noise) the two share the variance the device's law gives
reads this far apart, not all of it."""


PHYSICS_VERSION = 3
"""Version of the models behind the numbers, part of every study's hash: raise it with any
change that changes a study's numbers, so a store written before is never resumed with
chips computed after (the store names both versions). 2: HWA's continuous surrogate,
trained weight ranges, the per-vector read-noise split, σ_prog ∝ G_max, asymmetry within
[G_min, G_max], RRAM's finite off state, ideal devices in units of G_max. 3: a device's
reads at all scheduled times one joint draw (PCM's 1/f law), in-situ learning through what
the chip can know and written back to non-volatile devices, every variant judged against
its trainer's forward pass, unipolar reference columns, the naive split without a second
pair, no drift compensation before its reference read."""
