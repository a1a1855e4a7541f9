"""Analog forms of torch modules with several crossbars: ``nn.LSTM`` and ``nn.MultiheadAttention``.

Each weight matrix (``models.crossbars.crossbar_weights``) is a :class:`ChipLinear` with
its own read, periphery and per-vector noise; what is computed between the matrices —
gates and cell state, attention scores, softmax and the weighted sum of values — is
digital, in float32, as in torch's own modules. With ideal devices and no periphery both
compute torch's function (``tests/test_own_network.py`` compares them; the summation
order differs from torch's fused kernels, so agreement is to float32 rounding).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn

from ..models.crossbars import crossbar_weights
from .layers import ChipConv1d, ChipConv2d, ChipLayer, ChipLinear


class ChipLSTM(nn.Module):
    """``nn.LSTM`` (Hochreiter & Schmidhuber 1997; torch's gate order i, f, g, o) with
    ``W_ih`` and ``W_hh`` of every layer and direction on crossbars. The input-to-gates
    product runs once over the whole sequence (each time step an input vector); the
    hidden-to-gates product once per step (each step a new call: fresh per-vector noise)."""

    def __init__(self, lstm: nn.LSTM) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers = lstm.input_size, lstm.hidden_size, lstm.num_layers
        self.bias, self.batch_first, self.dropout = lstm.bias, lstm.batch_first, lstm.dropout  # torch's attributes, read by user code
        self.bidirectional, self.proj_size = lstm.bidirectional, lstm.proj_size
        self.directions = 2 if lstm.bidirectional else 1
        cells: list[ChipLayer] = []
        for name in crossbar_weights(lstm) or []:
            kind = "ih" if name.startswith("weight_ih") else "hh"
            bias = getattr(lstm, name.replace("weight", "bias")) if lstm.bias else None
            cells.append(ChipLinear(lstm.get_parameter(name), bias, "LSTM input→gates" if kind == "ih" else "LSTM hidden→gates"))
        self.cells = nn.ModuleList(cells)

    def crossbars(self) -> list[ChipLayer]:
        return list(self.cells)  # type: ignore[arg-type]

    def flatten_parameters(self) -> None:
        """torch's cuDNN weight layout call: nothing to do on a chip."""

    def forward(self, input: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        if not isinstance(input, torch.Tensor) or input.dim() != 3:
            raise ValueError("the analog LSTM takes a batched, padded tensor (batch, time, features) or (time, batch, features)")
        x = input if self.batch_first else input.transpose(0, 1)
        n, steps = x.shape[0], x.shape[1]
        states = self.num_layers * self.directions
        h0, c0 = hx if hx is not None else (x.new_zeros(states, n, self.hidden_size),) * 2
        h_n, c_n = [], []
        for k in range(self.num_layers):
            outs = []
            for d in range(self.directions):
                j = k * self.directions + d
                ih, hh = self.cells[2 * j], self.cells[2 * j + 1]
                gx = ih(x)  # (n, steps, 4·hidden)
                h, c = h0[j], c0[j]
                hs: list[torch.Tensor] = [h] * steps
                for t in range(steps) if d == 0 else reversed(range(steps)):
                    i, f, g, o = (gx[:, t] + hh(h)).chunk(4, dim=1)
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                    h = torch.sigmoid(o) * torch.tanh(c)
                    hs[t] = h
                outs.append(torch.stack(hs, 1))
                h_n.append(h)
                c_n.append(c)
            x = outs[0] if len(outs) == 1 else torch.cat(outs, -1)
        return (x if self.batch_first else x.transpose(0, 1)), (torch.stack(h_n), torch.stack(c_n))


class ChipAttention(nn.Module):
    """``nn.MultiheadAttention`` (Vaswani et al. 2017) with its input projection (query,
    key and value: one ``3E × E`` crossbar, or three when key and value have their own
    widths) and output projection on crossbars; ``softmax(q kᵀ/√d + mask) v`` per head is
    digital. Takes torch's arguments (masks as bool or additive float, ``is_causal``,
    ``need_weights``); dropout is inactive, as in evaluation."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = mha.embed_dim, mha.num_heads, mha.head_dim
        self.kdim, self.vdim, self.dropout, self.batch_first = mha.kdim, mha.vdim, mha.dropout, mha.batch_first  # torch's attributes
        self._qkv_same_embed_dim = mha._qkv_same_embed_dim  # read by nn.TransformerEncoderLayer
        e, b = mha.embed_dim, mha.in_proj_bias
        if mha._qkv_same_embed_dim:
            self.in_proj: nn.ModuleList = nn.ModuleList([ChipLinear(mha.in_proj_weight, b, "attention q·k·v projection")])
        else:
            self.in_proj = nn.ModuleList(
                ChipLinear(mha.get_parameter(f"{p}_proj_weight"), None if b is None else b[i * e : (i + 1) * e], f"attention {p} projection")
                for i, p in enumerate("qkv")
            )
        self.out_proj = ChipLinear(mha.out_proj.weight, mha.out_proj.bias, "attention output projection")

    def crossbars(self) -> list[ChipLayer]:
        return [*self.in_proj, self.out_proj]  # type: ignore[list-item]

    def _project(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, same: bool) -> tuple[torch.Tensor, ...]:
        e = self.embed_dim
        if len(self.in_proj) == 3:
            return tuple(p(t) for p, t in zip(self.in_proj, (query, key, value)))
        proj = self.in_proj[0]
        if same:  # self-attention: one pass through the crossbar gives all three
            return proj(query).chunk(3, dim=-1)
        # different inputs drive the same crossbar in turn; each keeps its own columns
        return proj(query)[..., :e], proj(key)[..., e : 2 * e], proj(value)[..., 2 * e :]

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if query.dim() != 3:
            raise ValueError("the analog attention takes batched inputs (batch, sequence, embedding) or (sequence, batch, embedding)")
        same = query is key and key is value
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        q, k, v = self._project(query, key, value, same)
        n, lq, s, h, d = q.shape[0], q.shape[1], k.shape[1], self.num_heads, self.head_dim
        q, k, v = (t.reshape(n, t.shape[1], h, d).transpose(1, 2) for t in (q, k, v))
        scores = torch.matmul(q * math.sqrt(1.0 / d), k.transpose(-2, -1))  # (n, h, lq, s)
        if is_causal and (attn_mask is None or (not need_weights and key_padding_mask is None)):
            # torch's hint: without weights and padding it computes a causal mask, whatever attn_mask is
            attn_mask = torch.ones(lq, s, dtype=torch.bool, device=q.device).triu(1)
        if attn_mask is not None:
            mask = _additive(attn_mask, scores.dtype)
            scores = scores + (mask.view(n, h, lq, s) if mask.dim() == 3 else mask)
        if key_padding_mask is not None:
            scores = scores + _additive(key_padding_mask, scores.dtype).view(n, 1, 1, s)
        weights = torch.softmax(scores, dim=-1)
        if not need_weights and (attn_mask is not None or key_padding_mask is not None):
            # a query that may attend to no key: a zero output, as torch's path without weights
            # (scaled_dot_product_attention) gives with additive masks (with boolean masks
            # torch 2.13 gives NaN there; the explicit softmax below would too)
            weights = weights.masked_fill(torch.isneginf(scores).all(-1, keepdim=True), 0.0)
        out = self.out_proj(torch.matmul(weights, v).transpose(1, 2).reshape(n, lq, self.embed_dim))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, weights.mean(1) if average_attn_weights else weights


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A torch attention mask as an additive one: True (masked) -> -inf; a float mask as it is."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    return mask.to(dtype)


def to_chip(module: nn.Module) -> ChipLayer | ChipLSTM | ChipAttention:
    """The analog counterpart of a torch module with crossbars (``crossbar_weights`` not
    None); its ``crossbars()`` are in the order of ``models.crossbars.crossbar_weights``."""
    chip: ChipLayer | ChipLSTM | ChipAttention
    if isinstance(module, nn.Linear):
        chip = ChipLinear(module.weight, module.bias)
    elif isinstance(module, nn.Conv1d):
        chip = ChipConv1d(module)
    elif isinstance(module, nn.Conv2d):
        chip = ChipConv2d(module)
    elif isinstance(module, nn.LSTM):
        chip = ChipLSTM(module)
    else:
        assert isinstance(module, nn.MultiheadAttention)
        chip = ChipAttention(module)
    return chip


@contextmanager
def torch_fast_paths_off() -> Iterator[None]:
    """Turn off torch's fused transformer inference path (``torch.backends.mha``), which
    reads an attention's weights directly instead of calling its modules."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)
