"""Matrix products with one summation order, whatever the shapes (``analog/invariant.py``).

Every output element is the chain of fused multiply-adds over the reduced index in
increasing order, from zero::

    out[m, o] = fma(a[m, K-1], b[K-1, o], … fma(a[m, 1], b[1, o], fma(a[m, 0], b[0, o], 0)) …)

(IEEE 754 ``fusedMultiplyAdd`` in float32: one rounding per step). A BLAS picks its
summation order from the shapes of a call — how many rows, chips or samples share it —
and from the CPU, so the same chip and sample could get different last bits in a block
of 1 and a block of 8. Here the order is part of the definition: the kernels below only
decide how many outputs are computed side by side (registers and vector width), never the
order of one output's sum. The result is therefore the same for any batch, block, thread
count and vector width, on every x86 machine (and wherever ``llvm.fma`` is an exact fused
multiply-add, in hardware or in libm).

The inner loop is a register tile written in LLVM IR (``_tile``): ``rows × width·vectors``
accumulators stay in registers while ``k`` runs, with ``rows`` and ``width`` chosen for
the host's vector registers (16 floats with AVX-512, 8 otherwise; :func:`tile_rows`). On one core it runs
at about the speed of MKL's SGEMM (``benchmarks/README.md``).
"""

from __future__ import annotations

import llvmlite.binding as llvm_binding
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

_F32 = ir.FloatType()
_I64 = ir.IntType(64)
_I32 = ir.IntType(32)


def host_vector_width() -> int:
    """float32 lanes of the host's widest vector registers that LLVM targets (16 with AVX-512F, else 8)."""
    features = llvm_binding.get_host_cpu_features()
    return 16 if features.get("avx512f", False) else 8


VW = host_vector_width()
ACCUMULATORS = 24 if VW == 16 else 12  # vector registers a tile keeps its sums in (of 32 with AVX-512, 16 with AVX2)


def tile_rows(vectors: int) -> int:
    """Rows of a full tile ``vectors`` vectors wide: as many as the accumulators allow, at most 12."""
    return min(12, ACCUMULATORS // vectors)

def _tile(rows: int, width: int, vectors: int):  # noqa: ANN202 (a numba intrinsic)
    """An intrinsic ``tile(a, m, b, o, out, accumulate)``: for ``i < rows`` and
    ``j < width·vectors``, ``out[m+i, o+j]`` = the fma chain over ``k`` of ``a[m+i, k]·b[k, o+j]``
    (from 0, or from ``out``'s value where ``accumulate``). ``a`` ``(M, K)``, ``b`` ``(K, O)``
    and ``out`` ``(M, O)`` have unit stride along their last dimension."""
    vty = ir.VectorType(_F32, width)
    lanes = ir.VectorType(_I32, width)

    @intrinsic
    def tile(typingctx, a, m, b, o, out, accumulate):  # noqa: ANN001, ANN202
        sig = types.void(a, types.intp, b, types.intp, out, types.boolean)

        def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
            a_arr, m_idx, b_arr, o_idx, out_arr, acc_flag = args
            arr_a = context.make_array(signature.args[0])(context, builder, a_arr)
            arr_b = context.make_array(signature.args[2])(context, builder, b_arr)
            arr_out = context.make_array(signature.args[4])(context, builder, out_arr)
            four = ir.Constant(_I64, 4)
            lda = builder.sdiv(cgutils.unpack_tuple(builder, arr_a.strides)[0], four)
            ldb = builder.sdiv(cgutils.unpack_tuple(builder, arr_b.strides)[0], four)
            ldo = builder.sdiv(cgutils.unpack_tuple(builder, arr_out.strides)[0], four)
            k_len = cgutils.unpack_tuple(builder, arr_a.shape)[1]
            a_ptr = builder.gep(arr_a.data, [builder.mul(m_idx, lda)])
            b_ptr = builder.gep(arr_b.data, [o_idx])
            out_ptr = builder.gep(arr_out.data, [builder.add(builder.mul(m_idx, ldo), o_idx)])
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty, vty, vty]), f"llvm.fma.v{width}f32")

            def vec_at(base, row, j):  # noqa: ANN001, ANN202
                p = builder.gep(base, [builder.add(builder.mul(ir.Constant(_I64, row), ldo), ir.Constant(_I64, j * width))])
                return builder.bitcast(p, vty.as_pointer())

            # the starting values: zero, or what out holds
            zero = ir.Constant(vty, [0.0] * width)
            start_bb = builder.block
            init_bb = builder.append_basic_block("tile.init")
            head_bb = builder.append_basic_block("tile.head")
            builder.cbranch(acc_flag, init_bb, head_bb)
            builder.position_at_end(init_bb)
            loaded = [[builder.load(vec_at(out_ptr, i, j), align=4) for j in range(vectors)] for i in range(rows)]
            init_end = builder.block
            builder.branch(head_bb)
            builder.position_at_end(head_bb)
            start = []
            for i in range(rows):
                row = []
                for j in range(vectors):
                    phi = builder.phi(vty)
                    phi.add_incoming(zero, start_bb)
                    phi.add_incoming(loaded[i][j], init_end)
                    row.append(phi)
                start.append(row)
            loop_bb = builder.append_basic_block("tile.loop")
            done_bb = builder.append_basic_block("tile.done")
            head_end = builder.block
            builder.cbranch(builder.icmp_signed(">", k_len, ir.Constant(_I64, 0)), loop_bb, done_bb)

            builder.position_at_end(loop_bb)
            k = builder.phi(_I64)
            k.add_incoming(ir.Constant(_I64, 0), head_end)
            acc = []
            for i in range(rows):
                row = []
                for j in range(vectors):
                    phi = builder.phi(vty)
                    phi.add_incoming(start[i][j], head_end)
                    row.append(phi)
                acc.append(row)
            b_row = builder.gep(b_ptr, [builder.mul(k, ldb)])
            b_vec = [builder.load(builder.bitcast(builder.gep(b_row, [ir.Constant(_I64, j * width)]), vty.as_pointer()), align=4) for j in range(vectors)]
            splat = ir.Constant(lanes, [0] * width)
            new = []
            for i in range(rows):
                a_val = builder.load(builder.gep(a_ptr, [builder.add(builder.mul(ir.Constant(_I64, i), lda), k)]))
                a_vec = builder.shuffle_vector(builder.insert_element(ir.Constant(vty, ir.Undefined), a_val, ir.Constant(_I32, 0)), ir.Constant(vty, ir.Undefined), splat)
                new.append([builder.call(fma, [a_vec, b_vec[j], acc[i][j]]) for j in range(vectors)])
            k_next = builder.add(k, ir.Constant(_I64, 1))
            loop_end = builder.block
            k.add_incoming(k_next, loop_end)
            for i in range(rows):
                for j in range(vectors):
                    acc[i][j].add_incoming(new[i][j], loop_end)
            builder.cbranch(builder.icmp_signed("<", k_next, k_len), loop_bb, done_bb)

            builder.position_at_end(done_bb)
            final = [[builder.phi(vty) for _ in range(vectors)] for _ in range(rows)]  # every phi first
            for i in range(rows):
                for j in range(vectors):
                    final[i][j].add_incoming(start[i][j], head_end)
                    final[i][j].add_incoming(new[i][j], loop_end)
            for i in range(rows):
                for j in range(vectors):
                    builder.store(final[i][j], vec_at(out_ptr, i, j), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tile


# column blocks, widest first: four, two and one vectors, half and quarter vectors, single
# columns; each as a full tile of tile_rows(vectors) rows and as a one-row tile
_W4, _W2, _W1, _WH, _WQ = 4 * VW, 2 * VW, VW, VW // 2, VW // 4
_R4, _R2, _R1 = tile_rows(4), tile_rows(2), tile_rows(1)
_full_4, _one_4 = _tile(_R4, VW, 4), _tile(1, VW, 4)
_full_2, _one_2 = _tile(_R2, VW, 2), _tile(1, VW, 2)
_full_1, _one_1 = _tile(_R1, VW, 1), _tile(1, VW, 1)
_full_h, _one_h = _tile(_R1, _WH, 1), _tile(1, _WH, 1)
_full_q, _one_q = _tile(_R1, _WQ, 1), _tile(1, _WQ, 1)
_full_s, _one_s = _tile(_R1, 1, 1), _tile(1, 1, 1)


def _column_block(full, one, rows: int):  # noqa: ANN001, ANN202 (numba intrinsics)
    """A compiled pass over every row of one column block: full tiles of ``rows`` rows, then
    one-row tiles for the rest."""

    @njit(nogil=True, cache=True, error_model="numpy", inline="always")
    def block(a: np.ndarray, b: np.ndarray, out: np.ndarray, o: int, accumulate: bool) -> None:
        m = 0
        while m + rows <= a.shape[0]:
            full(a, m, b, o, out, accumulate)
            m += rows
        while m < a.shape[0]:
            one(a, m, b, o, out, accumulate)
            m += 1

    return block


_block_4, _block_2, _block_1 = _column_block(_full_4, _one_4, _R4), _column_block(_full_2, _one_2, _R2), _column_block(_full_1, _one_1, _R1)
_block_h, _block_q, _block_s = _column_block(_full_h, _one_h, _R1), _column_block(_full_q, _one_q, _R1), _column_block(_full_s, _one_s, _R1)


@njit(nogil=True, cache=True, error_model="numpy")
def matmul_2d(a: np.ndarray, b: np.ndarray, out: np.ndarray, accumulate: bool) -> None:
    """``out (M, O) = a (M, K) @ b (K, O)`` as fma chains over ``k`` in order (from 0, or
    from ``out`` where ``accumulate``); unit stride along each last dimension. The column
    blocks and row tiles only decide which sums run side by side."""
    o_len = b.shape[1]
    o = 0
    while o < o_len:
        left = o_len - o
        if left >= _W4:
            _block_4(a, b, out, o, accumulate)
            o += _W4
        elif left >= _W2:
            _block_2(a, b, out, o, accumulate)
            o += _W2
        elif left >= _W1:
            _block_1(a, b, out, o, accumulate)
            o += _W1
        elif left >= _WH:
            _block_h(a, b, out, o, accumulate)
            o += _WH
        elif left >= _WQ:
            _block_q(a, b, out, o, accumulate)
            o += _WQ
        else:
            _block_s(a, b, out, o, accumulate)
            o += 1


@njit(nogil=True, cache=True, error_model="numpy")
def matmul_batched(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """``out[i] = a[i] @ b[i]`` for ``a (B, M, K)``, ``b (B, K, O)``, ``out (B, M, O)``
    (a batch stride may be 0: one operand shared by the batch)."""
    for i in range(out.shape[0]):
        matmul_2d(a[i], b[i], out[i], False)


@njit(nogil=True, cache=True, error_model="numpy")
def _patches(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int, dh: int, dw: int, ho: int, wo: int, out: np.ndarray) -> None:
    """``out (Cin·kh·kw, ho·wo)``: the input patch of every output position (im2col), rows in
    the order of a kernel's ``(in, kh, kw)``; zero where a patch reaches the padding."""
    cin, h, w = x.shape
    zero = np.float32(0.0)
    for c in range(cin):
        for i in range(kh):
            for j in range(kw):
                row = out[(c * kh + i) * kw + j]
                for y in range(ho):
                    src = y * sh - ph + i * dh
                    base = y * wo
                    if src < 0 or src >= h:
                        for x_ in range(wo):
                            row[base + x_] = zero
                        continue
                    line = x[c, src]
                    for x_ in range(wo):
                        col = x_ * sw - pw + j * dw
                        row[base + x_] = line[col] if 0 <= col < w else zero


@njit(nogil=True, cache=True, error_model="numpy")
def conv2d_chips(
    x: np.ndarray, w: np.ndarray, groups: int, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int, dh: int, dw: int, out: np.ndarray
) -> None:
    """A 2-D convolution per chip: ``x (C, N, groups·Cin, H, W)`` (a chip stride may be 0:
    inputs shared by every chip), ``w (C, groups·Cout, Cin·kh·kw)``, ``out (C, N, groups·Cout,
    Ho·Wo)``: each output the fma chain over the kernel's ``(in, kh, kw)`` in order (padding
    contributes exact zeros). One sample's patches are built once for every chip that shares
    them."""
    n_chips, n, cin_all, h, wd = x.shape
    cin, cout = cin_all // groups, w.shape[1] // groups
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    patches = np.empty((cin * kh * kw, ho * wo), dtype=np.float32)
    shared = x.strides[0] == 0
    for s in range(n):
        for g in range(groups):
            for c in range(n_chips):
                if c == 0 or not shared:
                    _patches(x[c, s, g * cin : (g + 1) * cin], kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, patches)
                matmul_2d(w[c, g * cout : (g + 1) * cout], patches, out[c, s, g * cout : (g + 1) * cout], False)


@njit(nogil=True, cache=True, error_model="numpy")
def _scatter_patches(cols: np.ndarray, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int, dh: int, dw: int, wo: int, out: np.ndarray) -> None:
    """The adjoint of :func:`_patches` (col2im): ``out (Cin, H, W) += `` each patch entry of
    ``cols (Cin·kh·kw, ho·wo)`` at its input position, kernel entries in order, then positions
    in order (a fixed order of additions for every input element)."""
    cin, h, w = out.shape
    ho = cols.shape[1] // wo
    for c in range(cin):
        for i in range(kh):
            for j in range(kw):
                row = cols[(c * kh + i) * kw + j]
                for y in range(ho):
                    src = y * sh - ph + i * dh
                    if src < 0 or src >= h:
                        continue
                    line = out[c, src]
                    for x_ in range(wo):
                        col = x_ * sw - pw + j * dw
                        if 0 <= col < w:
                            line[col] += row[y * wo + x_]


@njit(nogil=True, cache=True, error_model="numpy")
def conv2d_chips_backward(
    x: np.ndarray, w_t: np.ndarray, grad: np.ndarray, groups: int, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int, dh: int, dw: int,
    wo: int, grad_x: np.ndarray, grad_w: np.ndarray,
) -> None:
    """Gradients of :func:`conv2d_chips` for ``grad (C, N, groups·Cout, Ho·Wo)``:
    ``grad_w (C, groups·Cout, Cin·kh·kw)`` (empty first dimension: not wanted) as fma chains
    over samples, then positions, in order; ``grad_x (C, N, groups·Cin, H, W)`` (likewise)
    through the transposed kernels ``w_t (C, groups, Cin·kh·kw, Cout)`` and :func:`_scatter_patches`."""
    n_chips, n = grad.shape[0], grad.shape[1]
    cin, cout = x.shape[2] // groups, grad.shape[2] // groups
    k_len, positions = cin * kh * kw, grad.shape[3]
    ho = positions // wo
    want_w, want_x = grad_w.shape[0] > 0, grad_x.shape[0] > 0
    patches_t = np.empty((positions, k_len), dtype=np.float32)
    cols = np.empty((k_len, positions), dtype=np.float32)
    shared = x.strides[0] == 0
    for s in range(n):
        for g in range(groups):
            for c in range(n_chips):
                g_rows = grad[c, s, g * cout : (g + 1) * cout]
                if want_w:
                    if c == 0 or not shared:
                        _patches(x[c, s, g * cin : (g + 1) * cin], kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, patches_t.T)
                    matmul_2d(g_rows, patches_t, grad_w[c, g * cout : (g + 1) * cout], s > 0)
                if want_x:
                    matmul_2d(w_t[c, g], g_rows, cols, False)
                    _scatter_patches(cols, kh, kw, sh, sw, ph, pw, dh, dw, wo, grad_x[c, s, g * cin : (g + 1) * cin])
