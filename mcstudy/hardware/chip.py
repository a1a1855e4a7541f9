"""A hardware population and a programmed block of its chips.

``Population.program(layers, stream)`` is the moment of fabrication and programming:
variation, mismatch, operating-point drift and every per-device draw are fixed then.
The returned :class:`ChipBatch` is read at any time after programming; each read draws
fresh read noise from a sub-stream named by the read's tag and time, so "the same chip,
later" and "a new chip" can never be confused.

Read noise is drawn per read of the chip (default, as aihwkit does), or, with
``read_noise: per_vector``, split by the device (``DeviceModel.vector_fresh_fraction``)
into a part common to every matrix-vector product of one read — drawn once per read,
like the per-read noise — and a part fresh for every product: the read then returns the
weights with the common part and the fresh part's variance, and the layer adds Gaussian
noise of variance ``Σ_j σ_ij² x_j²`` to each output of each input vector (and of each
call of the layer: an LSTM's time steps) — the exact output-space distribution, without
sampling a noisy weight matrix per input. For PCM's 1/f noise products microseconds
apart share almost all of it (``pcm.vector_fresh_fraction``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch

from ..registry import Params
from ..rng import Stream, draw_normal
from .base import DEVICES, MAPPINGS, DeviceModel, DeviceState, Mix, joint_row, mixed_normal
from .layout import from_flat, to_flat
from .mapping import Mapping
from .periphery import NeuronDraws, PeripherySpec, chip_draws, mismatch_gain, neuron_draws
from .tiles import TileGrid, TileSpec
from .variation import Variation, apply_variation, chip_level_draws
from ..vocabulary import READOUT_INTERVAL_S

ReadNoiseMode = Literal["per_read", "per_vector"]
WeightScale = Literal["auto", "trained", "layer", "tile"]
"""Which weight maps to full conductance (G_max) in each crossbar tile: the range the
trainer used (``trained``; every tile of a layer shares it, and with shared ranges every
layer), the layer's own largest |w| (``layer``), or each tile's own largest |w|
(``tile``); ``auto`` is ``trained`` for a network whose trainer recorded ranges
(quantisation-, variability-, hardware-aware, uniform/unipolar) and ``tile`` otherwise."""


def off_state_problem(mapping_ratio: float, device_ratio: float) -> str:
    return (
        f"an on/off ratio of {mapping_ratio:g} puts G_min below the device's off state (its on/off ratio is "
        f"{device_ratio:g}); set the device's on_off_ratio, or a mapping ratio of at most {device_ratio:g}"
    )


def tile_scales(scale: str, w: torch.Tensor, grid: TileGrid, trained: float | None) -> torch.Tensor:
    """The full-scale weight of every tile of one layer's matrix ``w`` ``(n_tiles,)``, for a
    resolved weight scale (``trained``, ``layer`` or ``tile``; :data:`WeightScale`)."""
    if scale == "trained":
        if trained is None:
            raise ValueError("weight_scale 'trained' needs the weight ranges of the network's trainer; it recorded none")
        return torch.full((grid.n_tiles,), trained, dtype=w.dtype, device=w.device)
    if scale == "layer":
        return w.abs().max().expand(grid.n_tiles).clone()
    return grid.tile_abs_max(w)


@dataclass(frozen=True)
class LayerRead:
    """One analog layer of a block of chips as read at one time."""

    weight: torch.Tensor  # (C, out, in) mean effective weights (per_read: one noisy read)
    var: torch.Tensor | None  # (C, out, in) per-vector read-noise variance of each weight
    w_max: torch.Tensor  # (row tiles, out) full-scale weight of each physical column
    row_slices: list[slice]  # inputs of each row of tiles
    neurons: NeuronDraws
    noise: Stream | None  # draws per input vector (read noise, output noise)
    _transposed: dict[str, torch.Tensor] = field(default_factory=dict, init=False, repr=False, compare=False)

    def transposed(self, matrix: str) -> torch.Tensor:
        """``weight`` or ``var`` as ``(C, in, out)`` with unit stride along ``out`` — the
        layout a linear crossbar product reads (``analog.invariant.matmul``) — made once per
        read and kept (the evaluation and the calibration readouts of one read share it)."""
        if matrix not in self._transposed:
            m = getattr(self, matrix)
            self._transposed[matrix] = m.transpose(1, 2).contiguous()
        return self._transposed[matrix]


@dataclass(frozen=True)
class ChipRead:
    """Every analog layer of a block of chips at one read."""

    layers: list[LayerRead]
    periphery: PeripherySpec

    @property
    def n_chips(self) -> int:
        return int(self.layers[0].weight.shape[0])


@dataclass(frozen=True)
class Population:
    """The physics of one hardware population."""

    device: DeviceModel
    mapping: Mapping
    variation: Variation
    tile: TileSpec = TileSpec()
    periphery: PeripherySpec = PeripherySpec()
    read_noise: ReadNoiseMode = "per_read"
    weight_scale: WeightScale = "auto"

    def __post_init__(self) -> None:
        # a device with a finite off state sets the mapping's G_min unless the mapping sets its own,
        # which cannot lie below the device's off state
        device_ratio, mapping_ratio = self.device.on_off_ratio, self.mapping.params.on_off_ratio
        if device_ratio is not None and mapping_ratio is not None and mapping_ratio > device_ratio:
            raise ValueError(off_state_problem(mapping_ratio, device_ratio))
        object.__setattr__(self, "mapping", self.mapping.with_off_state(device_ratio))

    @classmethod
    def build(
        cls,
        device: str,
        device_params: Params,
        mapping: str,
        mapping_params: Params,
        variation: Variation,
        tile: TileSpec | None = None,
        periphery: PeripherySpec | None = None,
        read_noise: ReadNoiseMode = "per_read",
        weight_scale: WeightScale = "auto",
    ) -> "Population":
        return cls(
            DEVICES.get(device).obj(device_params),
            MAPPINGS.get(mapping).obj(mapping_params),  # type: ignore[arg-type]
            variation,
            tile or TileSpec(),
            periphery or PeripherySpec(),
            read_noise,
            weight_scale,
        )

    def scale_used(self, has_ranges: bool) -> str:
        """The weight scale a network is programmed with: ``weight_scale``, with ``auto``
        resolved by whether the network's trainer recorded ranges."""
        if self.weight_scale == "auto":
            return "trained" if has_ranges else "tile"
        return self.weight_scale

    def program(
        self, weights: list[torch.Tensor], stream: Stream, granules: list[int] | None = None, ranges: list[float] | None = None
    ) -> "ChipBatch":
        """Fabricate and program the chips of ``stream`` with weight matrices ``weights``
        (each ``(out, in)``, the same for every chip). ``granules[i]`` is the number of
        crossbar rows that must stay on one tile (kh·kw for a convolution); ``ranges[i]``
        the full-scale weight the network's trainer used for layer ``i`` (see
        :data:`WeightScale`), None where it has none."""
        g_max = self.device.g_max
        layers: list[_Layer] = []
        for i, w in enumerate(weights):
            w = w.to(stream.device)
            grid = TileGrid.build(w.shape[0], w.shape[1], self.tile, granules[i] if granules else 1)
            tile_max = tile_scales(self.scale_used(ranges is not None), w, grid, None if ranges is None else ranges[i])
            w_max = grid.per_weight(tile_max)
            targets, coeff = self.mapping.targets(w, w_max, g_max)
            varied = apply_variation(self.variation, targets, stream.child("variation"), i, g_max, grid)
            # device physics runs on each chip's values laid out flat and padded (layout.py)
            state = self.device.program(to_flat(varied), stream.child("program", i))
            periph = stream.child("periphery")
            layers.append(
                _Layer(
                    state=state,
                    reference=self._reference_column(grid, stream, i, w),
                    shape=tuple(targets.shape),
                    coeff=coeff,
                    w_max=w_max,
                    column_w_max=grid.per_column(tile_max),
                    grid=grid,
                    gain=mismatch_gain(self.periphery, periph, i, tuple(w.shape)),  # type: ignore[arg-type]
                    neurons=neuron_draws(self.periphery, periph, i, w.shape[0], float(tile_max.max())),
                )
            )
        return ChipBatch(self, stream, layers)

    def _reference_column(self, grid: TileGrid, stream: Stream, i: int, w: torch.Tensor) -> DeviceState | None:
        """Layer ``i``'s reference columns, where its mapping needs them (one device per
        input row in every column of tiles, programmed to G_min: ``Mapping.reference_column``),
        else None. Devices of their own: their variation and programming draws are their own,
        the variation shared at the tile, layer or chip level is their tile's."""
        g_min = self.mapping.g_min(self.device.g_max)
        if not self.mapping.reference_column or g_min == 0:
            return None
        targets = torch.full((1, grid.n_col_tiles, grid.n_in), g_min, dtype=w.dtype, device=w.device)
        ref_grid = TileGrid(grid.n_col_tiles, grid.n_in, grid.rows, 1)  # column c of tiles -> "output" c: the same tile numbers
        varied = apply_variation(self.variation, targets, stream.child("variation"), i, self.device.g_max, ref_grid, own="reference")
        return self.device.program(to_flat(varied), stream.child("program", i, "reference"))

    def draw_names(self) -> list[str]:
        """Names of the per-chip draws :meth:`ChipBatch.draws` returns."""
        return sorted(ChipBatch(self, Stream(torch.zeros(1, dtype=torch.int64)), []).draws())


@dataclass(frozen=True)
class _Layer:
    state: DeviceState  # per-chip flat, padded layout (layout.py)
    shape: tuple[int, int, int]  # (D, out, in)
    coeff: torch.Tensor
    w_max: torch.Tensor  # (out, in)
    column_w_max: torch.Tensor  # (row tiles, out)
    grid: TileGrid
    gain: torch.Tensor | None  # (C, out, in) multiplier mismatch
    neurons: NeuronDraws
    written: float = 0.0  # s after the first programming at which the devices were last written (ChipBatch.rewritten)
    reference: DeviceState | None = None  # reference columns (C, flat (1, col tiles, in)), where the mapping needs them


@dataclass(frozen=True)
class ChipBatch:
    """A block of programmed chips of one population (leading dimension: chip)."""

    population: Population
    stream: Stream
    layers: list[_Layer]
    # conductance buffers reused by every read of a layer (consumed by the decode at once)
    scratch: dict[int, torch.Tensor] = field(default_factory=dict, compare=False, repr=False)
    schedule: tuple[float, ...] = ()  # the times (s) a study reads these chips at: one joint draw of correlated read noise

    def scheduled(self, times: Sequence[float]) -> "ChipBatch":
        """These chips, to be read at ``times`` (s after programming): a device whose read
        noise is correlated in time (``DeviceModel.read_noise_correlation``: PCM's 1/f noise)
        then reads at all of them as one joint draw (:meth:`read_layer`)."""
        return dataclasses.replace(self, schedule=tuple(sorted(set(float(t) for t in times))), scratch={})

    @property
    def n_chips(self) -> int:
        return self.stream.n

    def read(self, t: float, tag: str = "read") -> ChipRead:
        """Every layer read ``t`` s after programming.

        Reads with the same ``tag`` and ``t`` see the same read noise (they are one read); a
        different tag is a different read of the same chips. A device whose read noise is
        correlated in time (PCM's 1/f noise) has one noise process, drawn jointly at the
        chips' scheduled times (:meth:`scheduled`), so that reads at ``t₁`` and ``t₂`` share
        variance as the device's law says (PCM: ``(D(t₁) + D(t₂) − D(|t₂ − t₁|))/2``); a read
        with another tag at ``t`` is taken ``READOUT_INTERVAL_S`` (1 s) after the study's
        read there and shares with it what the law gives reads 1 s apart. A read at a time
        outside the schedule is drawn jointly with the scheduled reads before it only.
        """
        return ChipRead([self.read_layer(i, t, tag) for i in range(len(self.layers))], self.population.periphery)

    def read_layer(self, i: int, t: float, tag: str = "read") -> LayerRead:
        """Layer ``i`` read ``t`` s after programming (its devices ``t`` minus the time of
        their last write old: see :meth:`rewritten`); :meth:`read`'s layer ``i``."""
        pop, layer = self.population, self.layers[i]
        device, mapping, g_max = pop.device, pop.mapping, pop.device.g_max
        read_stream = self.stream.child(tag, float(t), i)
        vector = pop.read_noise == "per_vector"
        noise, mix = self._read_noise(i, t, tag, read_stream, vector)
        age = t - layer.written
        var = None
        if vector:
            g, fresh_sigma = self._shared_read(layer.state, age, noise, mix)
            if fresh_sigma is not None:
                var = mapping.decode_variance(from_flat(fresh_sigma, layer.shape), layer.coeff, layer.w_max, g_max)
            w = mapping.decode_flat(g, layer.shape, layer.coeff, layer.w_max, g_max)
        else:
            w = self._read_weights(i, age, noise, mix)
        if layer.reference is not None:
            sub = None if mix is None else [(r, m.child("reference")) for r, m in mix]
            w, var = self._subtract_reference(layer, t, noise.child("reference"), w, var, sub)
        if layer.gain is not None:
            w = w * layer.gain
            var = None if var is None else var * layer.gain**2
        needs_noise = var is not None or pop.periphery.needs_vector_noise
        return LayerRead(
            weight=w,
            var=var,
            w_max=layer.column_w_max,
            row_slices=layer.grid.row_slices(),
            neurons=layer.neurons,
            noise=read_stream.child("vector") if needs_noise else None,
        )

    def _read_noise(self, i: int, t: float, tag: str, read_stream: Stream, vector: bool = False) -> tuple[Stream, Mix | None]:
        """Where layer ``i``'s read noise at ``t`` comes from: the read's own stream on a
        device with white read noise (and on devices written again since programming, read
        once); else the device's noise process — the study's read (``tag`` "read") at ``t``
        drawn from a stream named by the time alone, combined with those of the scheduled
        times before ``t`` by the Cholesky row of their correlation
        (:data:`~mcstudy.hardware.base.Mix`); a read with another tag at ``t`` taken
        ``READOUT_INTERVAL_S`` after the study's read there, with an increment of its own.
        ``vector``: the part of the noise shared by a read's products (per-vector mode)."""
        device, layer = self.population.device, self.layers[i]
        if layer.written or device.read_noise_correlation([t]) is None:
            return read_stream, None
        if tag == "read":
            own, at, earlier = self.stream.child("read", float(t), i), t, [x for x in self.schedule if x < t]
        else:
            own, at, earlier = read_stream, t + READOUT_INTERVAL_S, [x for x in self.schedule if x <= t]
        correlation = device.read_noise_correlation([*earlier, at], vector=vector) if earlier else None
        if correlation is None:
            return own, None
        row = joint_row(correlation)
        streams = [self.stream.child("read", float(x), i) for x in earlier] + [own]
        return own, [(float(r), s) for r, s in zip(row, streams)]

    def rewritten(self, i: int, weights: torch.Tensor, t: float, tag: str) -> "ChipBatch":
        """These chips with layer ``i``'s devices programmed again, ``t`` s after the first
        programming, with per-chip weights ``weights`` ``(C, out, in)`` (on-chip learning
        writing its result back). The same devices: the same full-scale weights (beyond
        which a weight clips), decoding coefficients (a unipolar column keeps its sign) and
        variation draws; a fresh write (``DeviceModel.rewrite``): a PCM device draws its
        programming noise and drift exponent anew (from a stream named by ``tag``, ``t`` and
        the layer), and its drift and read noise count from ``t``. Other layers unchanged."""
        pop, layer = self.population, self.layers[i]
        g_max = pop.device.g_max
        targets = torch.stack([pop.mapping.targets(w, layer.w_max, g_max, coeff=layer.coeff)[0] for w in weights.detach()])
        varied = apply_variation(pop.variation, targets, self.stream.child("variation"), i, g_max, layer.grid)
        state = pop.device.rewrite(layer.state, to_flat(varied), self.stream.child("program", i), self.stream.child("rewrite", tag, float(t), i))
        layers = list(self.layers)
        layers[i] = dataclasses.replace(layer, state=state, written=float(t))
        return dataclasses.replace(self, layers=layers, scratch={})

    def _shared_read(self, state: DeviceState, age: float, noise: Stream, mix: Mix | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A ``read_noise: per_vector`` read of devices ``state`` ``age`` s after their write:
        the conductances with the part of the read noise every product of the read shares,
        ``G = max(G + √(1 − f)·σ·z, 0)`` (``z`` from ``noise``, or the joint ``mix``), and the
        fresh part's σ ``√f·σ`` per device (None without read noise)."""
        device = self.population.device
        g, sigma = device.mean_and_sigma(state, age)
        if sigma is None:
            return g, None
        fresh = device.vector_fresh_fraction(age)
        if fresh < 1.0:
            z = draw_normal(noise, g, "shared") if mix is None else mixed_normal(mix, g, "shared")
            g = (g + math.sqrt(1.0 - fresh) * sigma * z).clamp_(min=0.0)
        return g, sigma * math.sqrt(fresh)

    def _subtract_reference(
        self, layer: _Layer, t: float, stream: Stream, w: torch.Tensor, var: torch.Tensor | None, mix: Mix | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weights ``w`` (decoded against the nominal G_min) with each column's current less
        its tile column's reference current, read ``t`` s after programming (the reference
        columns are never rewritten): ``w − c·w_max·(G_ref − G_min)/(G_max − G_min)``, the
        reference device of an input row shared by every column of its column of tiles."""
        assert layer.reference is not None
        pop = self.population
        device, mapping, g_max = pop.device, pop.mapping, pop.device.g_max
        grid, shape = layer.grid, (1, layer.grid.n_col_tiles, layer.grid.n_in)
        col_tile = torch.arange(grid.n_out, device=w.device) // grid.cols

        def per_weight(g: torch.Tensor) -> torch.Tensor:  # (C, flat) -> (C, out·in): each output's tile column
            return from_flat(g, shape)[:, 0, col_tile].reshape(g.shape[0], -1)

        if pop.read_noise == "per_vector":
            g, fresh_sigma = self._shared_read(layer.reference, t, stream, mix)
            if fresh_sigma is not None:
                extra = mapping.decode_variance(per_weight(fresh_sigma).view(-1, *layer.shape), layer.coeff, layer.w_max, g_max)
                var = extra if var is None else var + extra  # per vector, taken as independent between columns
        else:
            g = device.read(layer.reference, t, stream, mix=mix)
        return w - mapping.decode_flat(per_weight(g), layer.shape, layer.coeff, layer.w_max, g_max), var

    def _read_weights(self, i: int, t: float, stream: Stream, mix: Mix | None = None) -> torch.Tensor:
        """Layer ``i``'s weights at one read: the device's fused read-and-decode where it has
        one for this mapping, else a read into a reused buffer and the mapping's decode."""
        pop, layer = self.population, self.layers[i]
        device, mapping, g_max = pop.device, pop.mapping, pop.device.g_max
        coeffs = mapping.plane_coefficients(layer.coeff)
        if coeffs is not None:
            scale = mapping.decode_scale(layer.w_max, g_max)
            w = device.read_decoded(layer.state, t, stream, layer.shape, coeffs, mapping.g_min(g_max), scale, mix=mix)
            if w is not None:
                return w
        buf = self.scratch.setdefault(i, torch.empty_like(next(iter(layer.state.values()))))
        g = device.read(layer.state, t, stream, out=buf, mix=mix)
        return mapping.decode_flat(g, layer.shape, layer.coeff, layer.w_max, g_max)

    def programmed(self, layer: int, key: str) -> torch.Tensor:
        """A programmed device quantity of one layer (e.g. ``"g_prog"``, ``"nu"``, ``"g"``) as ``(C, D, out, in)``."""
        lay = self.layers[layer]
        return from_flat(lay.state[key], lay.shape)

    def draws(self) -> dict[str, torch.Tensor]:
        """Per-chip draws worth keeping in the store, each ``(C,)``."""
        return {
            **chip_level_draws(self.population.variation, self.stream.child("variation")),
            **chip_draws(self.population.periphery, self.stream.child("periphery")),
        }
