"""A chip's numbers do not depend on what shares its call.

A chip is an identity: chip ``c`` gives the same bits alone or in a block of 64, for a
sample evaluated alone or among 1,024, on every executor. Two things in a CPU forward
pass would break that, both below the level a model's code can see:

- **Matrix products.** A BLAS picks its kernel, blocking and summation order from the
  shapes of a call (and from the CPU), so the same row summed in a call of 9 rows and in
  one of 4 can differ in the last bits. Here every product (crossbars, and the digital
  products of attention, a digital ``nn.Linear``, GRU or convolution) is the fma chain of
  ``kernels.products``: each output summed over its reduced index in increasing order,
  from zero, whatever the batch, block, thread count or vector width.
- **Elementwise functions.** PyTorch's CPU kernels run the vectorised form of a function on
  whole vectors and its scalar form on a call's last few elements (and at each thread's
  chunk end); for ``sigmoid``, ``gelu``, ``silu``, ``elu``, ``softplus`` … the two differ in
  the last bit, so an element's value depends on where it falls in the call. Under
  :func:`batch_invariant` every such function runs on a contiguous copy padded to a
  multiple of the widest vector step (64 elements) on one thread, so every element takes
  the vectorised form.

:func:`batch_invariant` is a ``TorchDispatchMode`` active for a chip pass (its forward and,
for on-chip learning, its backward): it routes ``mm``, ``bmm``, ``mv``, ``dot`` (and their
``add…`` forms) and non-transposed 1-D/2-D ``convolution`` (with its backward) to the
fixed-order kernels, pads the elementwise functions that are not exact in both forms
(anything but IEEE-exact arithmetic, comparisons, selections and copies), runs PyTorch on
one thread, with oneDNN off and the math form of ``scaled_dot_product_attention``. The
analog layers call :func:`matmul` and :func:`conv2d` themselves and run their pipelines
:func:`suspended` (invariant by construction); a network of such layers, ReLU, pooling and
reshapes alone needs no routing at all (``AnalogNetwork.routed``). ``tests/test_invariance.py``
checks every analog kind, alone and in blocks, however its samples are batched, under each
CPU capability PyTorch can use on the machine.

Not covered, so PyTorch's own where a digital part of a network uses them: transposed
and 3-D convolutions, ``nn.Bilinear`` (``_trilinear``), and other operations whose kernels
mix elements (FFTs, cumulative sums, sorting). On CUDA tensors, and for dtypes other than
float32, everything is PyTorch's own (cuBLAS chooses its algorithm by shape too: bit
identity across blocks is a CPU guarantee).
"""

from __future__ import annotations

import contextlib
import functools
import math
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
from torch.autograd.function import once_differentiable
from torch.utils._python_dispatch import TorchDispatchMode

from .. import kernels

aten = torch.ops.aten

PAD = 64  # elements: a multiple of two vectors of every width PyTorch's CPU kernels use


def _fixed(*tensors: torch.Tensor) -> bool:
    """Whether the fixed-order kernels compute with these tensors (float32 on the CPU)."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    """``t`` with unit stride along its last dimension (a copy only where it has not)."""
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


def matmul_values(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a (B, M, K) @ b (B, K, O)`` by the fma chains of ``kernels.products`` (no autograd;
    a batch stride may be 0)."""
    bsz, m, k = a.shape
    if b.dim() != 3 or b.shape[0] != bsz or b.shape[1] != k:
        raise ValueError(f"a product of shapes {tuple(a.shape)} and {tuple(b.shape)}")  # never reached from the mode: it checks first
    o = b.shape[2]
    if bsz * m * o == 0 or k == 0:
        return torch.zeros(bsz, m, o, dtype=torch.float32)
    width = _padded_width(o)
    if width != o:  # a narrow output: zero columns, one vector tile instead of scalar ones (the others' sums unchanged)
        b = torch.cat([b.detach(), b.new_zeros(bsz, k, width - o)], 2)
    out = torch.empty(bsz, m, width, dtype=torch.float32)
    kernels.matmul_batched(_unit_last(a.detach()).numpy(), _unit_last(b.detach()).numpy(), out.numpy())
    return out if width == o else out[:, :, :o].contiguous()


def _padded_width(o: int) -> int:
    """Columns to compute for ``o`` outputs: one vector where fewer than a vector would run
    in several narrower tiles, else ``o`` (each column's sum is the same either way)."""
    vw = kernels.products.VW
    return vw if o < vw and o not in (vw // 2, vw // 4, 1) else o


class _Matmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(a, b)
        return matmul_values(a, b)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # noqa: D102
        a, b = ctx.saved_tensors  # products of the same kind: differentiable again (create_graph)
        ga = _Matmul.apply(grad, b.transpose(1, 2)) if ctx.needs_input_grad[0] else None
        gb = _Matmul.apply(a.transpose(1, 2), grad) if ctx.needs_input_grad[1] else None
        return ga, gb


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a (B, M, K) @ b (B, K, O)`` with one summation order per output (differentiable).
    Other devices and dtypes: ``torch.bmm``."""
    if not _fixed(a, b):
        return torch.bmm(a, b)
    return _Matmul.apply(a, b)


def _conv_geometry(x_shape: Sequence[int], w_shape: Sequence[int], stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int]) -> tuple[int, int, tuple[int, ...]]:
    kh, kw = w_shape[-2], w_shape[-1]
    ho = (x_shape[-2] + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (x_shape[-1] + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return ho, wo, (kh, kw, stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1])


class _Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int], groups: int) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(x, w)
        ctx.conf = (kernel, stride, padding, dilation, groups)
        return _conv_values(x, w, kernel, stride, padding, dilation, groups)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # noqa: D102
        x, w = ctx.saved_tensors
        gx, gw = _conv_grads(x, w, grad, *ctx.conf, ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        return gx, gw, None, None, None, None, None


def _conv_values(
    x: torch.Tensor, w: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int], groups: int
) -> torch.Tensor:
    """``x (C, N, groups·Cin, H, W)``, ``w (C, groups·Cout, Cin·kh·kw)`` -> ``(C, N, groups·Cout, Ho, Wo)``."""
    ho, wo, geo = _conv_geometry(x.shape, kernel, stride, padding, dilation)
    c, n = x.shape[:2]
    out = torch.empty(c, n, w.shape[1], ho * wo, dtype=torch.float32)
    if out.numel() == 0:
        return out.view(c, n, w.shape[1], ho, wo)
    kernels.conv2d_chips(_unit_last(x.detach()).numpy(), _unit_last(w.detach()).numpy(), groups, *geo, out.numpy())
    return out.view(c, n, w.shape[1], ho, wo)


def _conv_grads(
    x: torch.Tensor, w: torch.Tensor, grad: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
    dilation: tuple[int, int], groups: int, want_x: bool, want_w: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of :func:`_conv_values` with respect to ``x`` and ``w`` (each where wanted)."""
    _, wo, geo = _conv_geometry(x.shape, kernel, stride, padding, dilation)
    c, n = grad.shape[:2]
    cout = w.shape[1] // groups
    grad_x = torch.zeros(c if want_x else 0, n, *x.shape[2:], dtype=torch.float32)
    grad_w = torch.empty(c if want_w else 0, *w.shape[1:], dtype=torch.float32)
    if grad.numel() and (want_x or want_w):
        w_t = w.detach().reshape(w.shape[0], groups, cout, w.shape[2]).transpose(2, 3).contiguous()
        g = grad.detach().reshape(c, n, grad.shape[2], -1).contiguous()
        kernels.conv2d_chips_backward(_unit_last(x.detach()).numpy(), w_t.numpy(), g.numpy(), groups, *geo, wo, grad_x.numpy(), grad_w.numpy())
    elif want_w:
        grad_w.zero_()
    return (grad_x if want_x else None), (grad_w if want_w else None)


def conv2d(x: torch.Tensor, w: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int], groups: int = 1) -> torch.Tensor:
    """Every chip's 2-D convolution: ``x (C, N, groups·Cin, H, W)`` (a chip stride of 0:
    inputs shared by every chip), ``w (C, groups·Cout, Cin·kh·kw)`` -> ``(C, N, groups·Cout,
    Ho, Wo)``, each output one fma chain over the kernel's ``(in, kh, kw)`` in order
    (differentiable). Other devices and dtypes: ``F.conv2d`` with one group per chip."""
    if _fixed(x, w):
        return _Conv2d.apply(x, w, kernel, stride, padding, dilation, groups)
    c, n, cin, h, wd = x.shape
    xg = x.transpose(0, 1).reshape(n, c * cin, h, wd)
    kern = w.reshape(c * w.shape[1], cin // groups, *kernel)
    y = torch.nn.functional.conv2d(xg, kern, None, stride, padding, dilation, groups=c * groups)
    return y.reshape(n, c, w.shape[1], *y.shape[2:]).transpose(0, 1).contiguous()


# -- the dispatch mode -----------------------------------------------------------------

_EXACT_NAMES = (
    # one correctly rounded IEEE operation, or a selection, in the scalar and the vector form alike
    "add", "sub", "mul", "div", "neg", "abs", "relu", "sqrt", "clamp", "clamp_min", "clamp_max", "maximum", "minimum",
    "where", "masked_fill", "fill", "sign", "floor", "ceil", "trunc", "round", "eq", "ne", "lt", "le", "gt", "ge",
    "logical_and", "logical_or", "logical_not", "logical_xor", "isnan", "isinf", "isfinite", "isposinf", "isneginf",
    "signbit", "copysign", "fmax", "fmin", "nan_to_num", "true_divide", "rsub", "positive", "hardtanh", "threshold",
    "threshold_backward",
    # copies
    "clone", "copy", "_to_copy", "lift_fresh_copy", "zeros_like", "ones_like", "full_like", "empty_like",
)  # fmt: skip
_ELEMENTWISE_NAMES = (
    # elementwise functions PyTorch does not tag as pointwise
    "hardswish", "hardswish_backward", "log_sigmoid_forward", "log_sigmoid_backward", "softplus_backward", "elu_backward",
    "hardsigmoid_backward", "mish_backward", "silu_backward", "gelu_backward", "sigmoid_backward", "tanh_backward",
    "leaky_relu_backward", "logit_backward",
)  # fmt: skip


def _packets(names: Sequence[str]) -> frozenset[Any]:
    """The operator packets of ``names`` and of their in-place forms (``add`` and ``add_``)."""
    return frozenset(getattr(aten, n) for name in names for n in (name, name + "_") if hasattr(aten, n))


_EXACT = _packets(_EXACT_NAMES)
_ELEMENTWISE = _packets(_ELEMENTWISE_NAMES)


def _tagged_pointwise(packet: Any) -> bool:
    """Whether any overload of ``packet`` is tagged pointwise."""
    return any(torch.Tag.pointwise in getattr(packet, name).tags for name in packet.overloads())


@functools.lru_cache(maxsize=None)
def _elementwise(func: Any) -> bool:
    """Whether ``func`` is an elementwise function to pad: tagged pointwise, the in-place
    form of one (``mish_``, ``gelu_`` are untagged), or one of :data:`_ELEMENTWISE`;
    returning tensors; not an ``out=`` form."""
    schema, packet = func._schema, func.overloadpacket
    name = packet.__name__
    in_place_of = getattr(aten, name[:-1], None) if name.endswith("_") and not name.startswith("_") else None
    return (
        (torch.Tag.pointwise in func.tags or packet in _ELEMENTWISE or (in_place_of is not None and _tagged_pointwise(in_place_of)))
        and bool(schema.returns)
        and all(isinstance(r.type, torch.TensorType) for r in schema.returns)
        and not any(a.is_out for a in schema.arguments)
    )


def _broadcast(shapes: Iterator[torch.Size]) -> torch.Size:
    """The broadcast of ``shapes`` (``torch.broadcast_shapes``, which imports SymPy on first use)."""
    out: list[int] = []
    for shape in shapes:
        for i, n in enumerate(reversed(shape)):
            if i == len(out):
                out.append(n)
            elif out[i] == 1:
                out[i] = n
            elif n not in (1, out[i]):
                raise RuntimeError(f"shapes {tuple(shape)} and {tuple(reversed(out))} do not broadcast")
    return torch.Size(reversed(out))


def _padded_elementwise(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``func`` on contiguous copies of its tensor arguments broadcast to one shape and
    padded to a multiple of :data:`PAD` elements: every element takes the kernel's
    vectorised form, whatever its position. Results keep the layout PyTorch would give
    them (that of the first argument of the full shape); in-place forms write back.
    Zero-dimensional tensors beside larger ones stay as they are (they promote types as
    scalars); a call of zero-dimensional tensors alone is padded like any other."""
    tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
    if not tensors or not any(t.is_floating_point() for t in tensors) or any(t.device.type != "cpu" for t in tensors):
        return func(*args, **kwargs)
    scalars_only = all(t.dim() == 0 for t in tensors)
    shape = _broadcast(t.shape for t in tensors)
    n = math.prod(shape)
    if n == 0:
        return func(*args, **kwargs)
    pad = -n % PAD

    def flat(v: Any) -> Any:
        if not isinstance(v, torch.Tensor) or (v.dim() == 0 and not scalars_only):
            return v
        f = v.expand(shape).reshape(n)
        return torch.cat([f, f.new_zeros(pad)]) if pad else f.clone()

    like = next((t for t in tensors if t.shape == shape), None)

    def shaped(r: torch.Tensor) -> torch.Tensor:
        r = r[:n].view(shape)
        if like is None or like.is_contiguous() or like.dim() == 0:
            return r
        return torch.empty_like(like, dtype=r.dtype).copy_(r)  # PyTorch's output follows the input's strides

    result = func(*(flat(v) for v in args), **{k: flat(v) for k, v in kwargs.items()})
    first = func._schema.arguments[0].alias_info
    if first is not None and first.is_write:
        target = args[0]
        target.copy_(result[:n].view(shape))
        return target
    if isinstance(result, torch.Tensor):
        return shaped(result)
    return tuple(shaped(r) if isinstance(r, torch.Tensor) and r.dim() == 1 and r.shape[0] == n + pad else r for r in result)


def _as_2d(stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int]) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """A 1-D convolution's geometry as the 2-D one on a height-1 input."""
    if len(stride) == 1:
        return (1, stride[0]), (0, padding[0]), (1, dilation[0])
    return (stride[0], stride[1]), (padding[0], padding[1]), (dilation[0], dilation[1])


def _convolution(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int], groups: int) -> torch.Tensor:
    one_d = x.dim() == 3
    s, p, d = _as_2d(stride, padding, dilation)
    x4 = x.unsqueeze(2) if one_d else x
    w4 = w.unsqueeze(2) if one_d else w
    y = _conv_values(x4.unsqueeze(0), w4.reshape(1, w.shape[0], -1), (w4.shape[2], w4.shape[3]), s, p, d, groups)[0]
    if bias is not None:
        y = y + bias.view(1, -1, 1, 1)
    return y.squeeze(2) if one_d else y


def _convolution_backward(grad: torch.Tensor, x: torch.Tensor, w: torch.Tensor, stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int], groups: int, mask: Sequence[bool]) -> tuple[torch.Tensor | None, ...]:
    one_d = x.dim() == 3
    s, p, d = _as_2d(stride, padding, dilation)
    x4, w4, g4 = (x.unsqueeze(2), w.unsqueeze(2), grad.unsqueeze(2)) if one_d else (x, w, grad)
    gx, gw = _conv_grads(x4.unsqueeze(0), w4.reshape(1, w.shape[0], -1), g4.unsqueeze(0), (w4.shape[2], w4.shape[3]), s, p, d, groups, mask[0], mask[1])
    grad_x = None if gx is None else gx[0].view(x.shape)
    grad_w = None if gw is None else gw[0].view(w.shape)
    grad_b = grad.sum([0, *range(2, grad.dim())]) if mask[2] else None
    return grad_x, grad_w, grad_b


class BatchInvariant(TorchDispatchMode):
    """Routes a chip pass's matrix products, convolutions and inexact elementwise functions
    to forms whose result for an element does not depend on the rest of the call."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # a chip pass is never compiled: no TorchDynamo guard around __torch_dispatch__
        # (importing TorchDynamo for it costs ~1 s in every worker process)
        return False

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        packet = func.overloadpacket
        tensors = [t for t in args if isinstance(t, torch.Tensor)]
        if packet in _PRODUCTS and not kwargs.get("out") and _fixed(*tensors) and _product_shapes_fit(packet, args):
            return _product(packet, args, kwargs)
        if packet is aten.convolution and not args[6] and _fixed(*tensors) and _convolution_shapes_fit(args[0], args[1], args[8]):
            x, w, bias, stride, padding, dilation, _, _, groups = args
            return _convolution(x, w, bias, stride, padding, dilation, groups)
        if packet is aten.convolution_backward and not args[7] and _fixed(*tensors) and _convolution_shapes_fit(args[1], args[2], args[9]):
            grad, x, w, _, stride, padding, dilation, _, _, groups, mask = args
            return _convolution_backward(grad, x, w, stride, padding, dilation, groups, mask)
        if packet in _EXACT and kwargs.get("alpha", 1) == 1:  # add/sub with alpha: a multiply-add, not exact
            return func(*args, **kwargs)
        if _elementwise(func):
            return _padded_elementwise(func, args, kwargs)
        return func(*args, **kwargs)


_PRODUCTS = frozenset({aten.mm, aten.bmm, aten.addmm, aten.baddbmm, aten.mv, aten.addmv, aten.dot})
_OPERANDS = {aten.mm: (2, 2), aten.bmm: (3, 3), aten.addmm: (2, 2), aten.baddbmm: (3, 3), aten.mv: (2, 1), aten.addmv: (2, 1), aten.dot: (1, 1)}


def _product_shapes_fit(packet: Any, args: tuple[Any, ...]) -> bool:
    """Whether a product's operands have the dimensions and matching sizes its kernel needs
    (anything else goes to PyTorch, which raises its own error)."""
    a, b = args[-2:]
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or (a.dim(), b.dim()) != _OPERANDS[packet]:
        return False
    if packet is aten.dot:
        return a.shape == b.shape
    if packet in (aten.bmm, aten.baddbmm) and a.shape[0] != b.shape[0]:
        return False
    return a.shape[-1] == b.shape[-2 if b.dim() > 1 else 0]


def _convolution_shapes_fit(x: torch.Tensor, w: torch.Tensor, groups: int) -> bool:
    """A 1-D or 2-D convolution whose channels match its kernel and groups."""
    return x.dim() in (3, 4) and w.dim() == x.dim() and groups > 0 and w.shape[0] % groups == 0 and x.shape[1] == w.shape[1] * groups


def _product(packet: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    """``mm``, ``bmm``, ``mv``, ``dot`` and their ``add…`` forms by the fixed-order kernel:
    the product first, then ``beta·input + alpha·product``."""
    a, b = args[-2:]
    base = args[0] if len(args) == 3 else None
    batched = a.dim() == 3
    a3 = a if batched else a.reshape(1, -1, a.shape[-1])  # dot: one row
    b3 = b if batched else b.reshape(1, b.shape[0], -1)  # mv, dot: one column
    y = matmul_values(a3, b3)
    y = y if batched else y.reshape((*a.shape[:-1], *b.shape[1:]))
    alpha, beta = kwargs.get("alpha", 1), kwargs.get("beta", 1)
    if alpha != 1:
        y = y * alpha
    if base is not None and beta != 0:
        y = y + (base if beta == 1 else base * beta)
    return y


@contextmanager
def batch_invariant(route: bool = True) -> Iterator[None]:
    """Inside: a chip's numbers do not depend on what shares its calls (module docstring):
    one PyTorch thread, oneDNN off, the math form of scaled dot-product attention, no fused
    transformer fast path, and — where ``route`` — :class:`BatchInvariant` routing every
    operation. A network made only of operations invariant by construction (mcstudy's
    analog layers, ReLU, pooling, reshapes: ``AnalogNetwork.routed``) needs no routing.
    Re-entrant: an inner call adds the routing an outer one left out."""
    global _active, _routing
    if _active:
        if route and not _routing:
            _routing = True
            try:
                with BatchInvariant():
                    yield
            finally:
                _routing = False
        else:
            yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    threads = torch.get_num_threads()
    mkldnn = torch.backends.mkldnn.enabled
    fastpath = torch.backends.mha.get_fastpath_enabled()
    if threads != 1:
        torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False
    torch.backends.mha.set_fastpath_enabled(False)
    _active, _routing = True, route
    try:
        with sdpa_kernel(SDPBackend.MATH), (BatchInvariant() if route else contextlib.nullcontext()):
            yield
    finally:
        _active = _routing = False
        if threads != 1:
            torch.set_num_threads(threads)
        torch.backends.mkldnn.enabled = mkldnn
        torch.backends.mha.set_fastpath_enabled(fastpath)


_active = False  # whether batch_invariant() is active in this process (it is re-entrant)
_routing = False  # whether its BatchInvariant mode is on


@contextmanager
def suspended() -> Iterator[None]:
    """Inside a chip pass, PyTorch's own operations without :class:`BatchInvariant`, for work
    invariant by construction made of many small operations: an analog layer's pipeline
    (converters, noise, neuron stage: exact arithmetic, row-wise maxima and compiled
    passes around the fixed-order products) and the counter-based random streams of
    ``rng.py``, whose values depend on their keys alone."""
    if not _routing:
        yield
        return
    from torch.utils._python_dispatch import _disable_current_modes

    with _disable_current_modes():
        yield
