"""Which weights of a torch module live on crossbars: one answer for training and deployment.

A weight matrix on a chip is a parameter of the trained model. Training perturbs,
quantises or constrains these parameters by name (``analog_weight_names``), and
``mcstudy.analog.AnalogNetwork`` deploys the same parameters, in the same order, each on
its own crossbar:

* ``nn.Linear``: ``weight`` (out × in), on any leading dimensions (tokens, time steps);
* ``nn.Conv1d`` / ``nn.Conv2d``: ``weight`` unrolled to (out × in·k) / (out × in·kh·kw);
* ``nn.LSTM``: per layer and direction ``weight_ih_l{k}[_reverse]`` (4·hidden × in) and
  ``weight_hh_l{k}[_reverse]`` (4·hidden × hidden); gates, cell state and biases digital;
* ``nn.MultiheadAttention``: the input projection ``in_proj_weight`` (3·E × E: query, key
  and value, one crossbar) or ``q_proj_weight``, ``k_proj_weight``, ``v_proj_weight`` when
  key and value have their own widths, then ``out_proj.weight``; the attention itself
  (scores, softmax, the weighted sum of values) is digital — its operands are
  activations, not stored weights.

Any other module runs digitally, and so does one of the kinds above in a configuration
mcstudy has no analog form for (``why_digital`` says which and why).
"""

from __future__ import annotations

from typing import Iterator

import torch.nn as nn

ANALOG_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.LSTM, nn.MultiheadAttention)


def why_digital(m: nn.Module) -> str | None:
    """Why a module of a kind that has an analog form stays digital in this configuration
    (None when it runs on the chips, or is of another kind)."""
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        if m.groups != 1:
            return f"groups={m.groups}: only ungrouped convolutions are mapped to crossbars"
        if m.padding_mode != "zeros":
            return f"padding_mode={m.padding_mode!r}: only zero padding is modelled"
    if isinstance(m, nn.LSTM) and m.proj_size > 0:
        return f"proj_size={m.proj_size}: LSTMs with projections are not modelled"
    if isinstance(m, nn.MultiheadAttention) and (m.bias_k is not None or m.add_zero_attn):
        return "add_bias_kv/add_zero_attn are not modelled"
    return None


def crossbar_weights(m: nn.Module) -> list[str] | None:
    """The parameter names (within ``m``) of ``m``'s crossbar matrices, in deployment
    order; None for a module that is not itself analog (its children may be)."""
    if not isinstance(m, ANALOG_TYPES) or why_digital(m) is not None:
        return None
    if isinstance(m, nn.LSTM):
        directions = ["", "_reverse"] if m.bidirectional else [""]
        return [f"weight_{kind}_l{k}{d}" for k in range(m.num_layers) for d in directions for kind in ("ih", "hh")]
    if isinstance(m, nn.MultiheadAttention):
        inputs = ["in_proj_weight"] if m._qkv_same_embed_dim else ["q_proj_weight", "k_proj_weight", "v_proj_weight"]
        return [*inputs, "out_proj.weight"]
    return ["weight"]


def searched(m: nn.Module) -> bool:
    """Whether a digital module's children may be analog: not an attention kept digital,
    whose ``out_proj`` its own forward reads as a weight, never calls as a module."""
    return not isinstance(m, nn.MultiheadAttention)


def analog_modules(model: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """The outermost modules with crossbars, depth first in ``named_children`` order, each
    as (qualified name, module); a module with crossbars is not searched further (an
    attention's ``out_proj`` is its own)."""
    if crossbar_weights(model) is not None:
        yield prefix.removesuffix("."), model
        return
    if not searched(model):
        return
    for name, child in model.named_children():
        yield from analog_modules(child, f"{prefix}{name}.")


def analog_weight_names(model: nn.Module) -> list[str]:
    """Names of the model's parameters that live on crossbars, in deployment order."""
    return [f"{name}.{w}" if name else w for name, m in analog_modules(model) for w in crossbar_weights(m) or []]
