"""
The product-key memories' sparse read and FwPKM's value write as Triton kernels: the fast paths of fwpkm.py's
ProductKeyMemory, FastWeightProductKeyMemory.read and FastWeightProductKeyMemory.write, taken when GPTConfig.kernels
says so (fast_paths/).

The read. Token r (of the B·T tokens) reads its top-k value rows, weighted by the softmax of their scores:

    v̂[r] = Σ_j w[r, j]·V[row[r, j]]                      V [M, d_v]; rows [B, T, k]; w [B, T, k]

(static PKM: V is the nn.Embedding weight, row the slot; FwPKM: V the fast values [G, N, d_v] seen as [G·N, d_v],
row = group·N + slot). The plain code gathers the rows to memory, [B, T, k, d_v], and autograd keeps them for the
backward; here each program gathers a tile of rows into registers and writes only v̂. The backward takes both
gradients in one pass over the same rows:

    dw[r, j] = <dv̂[r], V[row[r, j]]>          dV[row[r, j]] += w[r, j]·dv̂[r]

the second a scatter-add (tl.atomic_add): a row read by several tokens sums their contributions. dV is needed
whenever V requires grad: the static PKM's values are trained by the optimizer, and in FwPKM training the fast
values carry the graph of earlier writes, through which the LM loss reaches the slow weights.

The write. FwPKM's value step on the reads of one chunk (fwpkm.py's docstring), token t < T−1 pulling the rows it
read towards the next token's value:

    ΔV_i = −(k / N_i)·Σ_{t reading i} g_t·w_{t,i}·(v̂_t − v_{t+1})          N_i: the reads of row i in the chunk

The plain code builds the gradient of every row, [G·N, d_v], and the read counts in buffers and then a new value
table; here one kernel counts the reads (atomic adds) and a second adds each read's share −(k / N_i)·g_t·w_{t,i}·
(v̂_t − v_{t+1}) to its row in place (atomic adds), so only the rows read are touched. In place is why it serves
only where no graph is needed (evaluation, iterative reading, generation): training differentiates through the
write and keeps the plain code.

All math is fp32 (the interpreter has no bf16 arithmetic either); atomic adds sum in another order than the plain
index_add, so results agree to float tolerance, not bit for bit.
"""
import torch
import triton
import triton.language as tl

from fast_paths import require_gpu_or_interpreter

require_gpu_or_interpreter()


@triton.jit
def _tile(ptr, r, d, D, mask):
    """Rows r [BLOCK_R] of a contiguous [R, D] tensor as an fp32 tile [BLOCK_R, BLOCK_D]."""
    return tl.load(ptr + r[:, None] * D + d[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _read_forward(v_ptr, rows_ptr, w_ptr, out_ptr, R, D, v_sr, v_sd,
                  K: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    # program i: tokens i·BLOCK_R .. of the B·T, all d_v features. int64: row·stride passes 2^31 in large tables
    r = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    r_mask = r < R
    mask = r_mask[:, None] & (d < D)[None, :]
    acc = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    for j in tl.static_range(K):
        row = tl.load(rows_ptr + r * K + j, mask=r_mask, other=0)
        w = tl.load(w_ptr + r * K + j, mask=r_mask, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + row[:, None] * v_sr + d[None, :] * v_sd, mask=mask, other=0.0).to(tl.float32)
        acc += w[:, None] * v
    tl.store(out_ptr + r[:, None] * D + d[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _read_backward(v_ptr, rows_ptr, w_ptr, dout_ptr, dv_ptr, dw_ptr, R, D, v_sr, v_sd,
                   W_GRAD: tl.constexpr, V_GRAD: tl.constexpr,
                   K: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    r = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    r_mask = r < R
    mask = r_mask[:, None] & (d < D)[None, :]
    dout = _tile(dout_ptr, r, d, D, mask)                                       # dv̂ [BLOCK_R, BLOCK_D]
    for j in tl.static_range(K):
        row = tl.load(rows_ptr + r * K + j, mask=r_mask, other=0)
        if W_GRAD:
            v = tl.load(v_ptr + row[:, None] * v_sr + d[None, :] * v_sd, mask=mask, other=0.0).to(tl.float32)
            tl.store(dw_ptr + r * K + j, tl.sum(dout * v, axis=1), mask=r_mask)
        if V_GRAD:  # dV is a contiguous fp32 [M, D]
            w = tl.load(w_ptr + r * K + j, mask=r_mask, other=0.0).to(tl.float32)
            tl.atomic_add(dv_ptr + row[:, None] * D + d[None, :], w[:, None] * dout, mask=mask)


def _launch(R, D):
    """Block sizes and grid: all d_v features of a token in one program (a power of two, masked beyond d_v), and as
    many tokens as make ~4K elements per tile."""
    block_d = triton.next_power_of_2(D)
    block_r = min(triton.next_power_of_2(R), max(1, 4096 // block_d))
    return block_r, block_d, (triton.cdiv(R, block_r),)


class Read(torch.autograd.Function):
    """Both read kernels as one autograd node; it saves V, the rows and w (not the gathered rows)."""

    @staticmethod
    def forward(ctx, values, rows, w):
        D, K = values.shape[1], rows.shape[-1]
        rows_flat, w_flat = rows.reshape(-1, K).contiguous(), w.reshape(-1, K).contiguous()    # [R, k]
        R = rows_flat.shape[0]
        out = torch.empty((R, D), dtype=torch.promote_types(values.dtype, w.dtype), device=values.device)
        block_r, block_d, grid = _launch(R, D)
        _read_forward[grid](values, rows_flat, w_flat, out, R, D, *values.stride(), K=K, BLOCK_R=block_r,
                            BLOCK_D=block_d)
        ctx.save_for_backward(values, rows_flat, w_flat)
        ctx.w_shape = w.shape
        return out.view(*rows.shape[:-1], D)

    @staticmethod
    def backward(ctx, dout):
        values, rows, w = ctx.saved_tensors
        v_grad, _, w_grad = ctx.needs_input_grad
        (M, D), (R, K) = values.shape, rows.shape
        dout = dout.reshape(R, D).contiguous()
        # fp32 buffers: the scatter-add accumulates in fp32 whatever the dtype of V; an unneeded one is never touched
        dv = torch.zeros((M, D), dtype=torch.float32, device=dout.device) if v_grad else dout
        dw = torch.empty((R, K), dtype=torch.float32, device=dout.device) if w_grad else dout
        block_r, block_d, grid = _launch(R, D)
        _read_backward[grid](values, rows, w, dout, dv, dw, R, D, *values.stride(), W_GRAD=w_grad, V_GRAD=v_grad,
                             K=K, BLOCK_R=block_r, BLOCK_D=block_d)
        return (dv.to(values.dtype) if v_grad else None, None,
                dw.to(w.dtype).view(ctx.w_shape) if w_grad else None)


def read(values, rows, w):
    """v̂ = Σ_j w[..., j]·values[rows[..., j]]: values [M, d_v] (any strides; may require grad), rows [B, T, k]
    (int64 row indices, repeats allowed), w [B, T, k] (may require grad). Returns v̂ [B, T, d_v], contiguous, in
    the dtype of w·values, as (w[..., None] * values[rows]).sum(-2)."""
    return Read.apply(values, rows, w)


@triton.jit
def _count_reads(rows_ptr, counts_ptr, T, K: tl.constexpr, BLOCK_T: tl.constexpr):
    # program (b, i): tokens i·BLOCK_T .. of sequence b; the last token writes nothing (its target is in the next
    # chunk), so it is not counted
    b = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    for j in tl.static_range(K):
        row = tl.load(rows_ptr + (b * T + t) * K + j, mask=t < T - 1, other=0)
        tl.atomic_add(counts_ptr + row, 1, mask=t < T - 1)


@triton.jit
def _write_values(values_ptr, counts_ptr, rows_ptr, w_ptr, g_ptr, v_hat_ptr, v_ptr, T, D, topk,
                  K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    d = tl.arange(0, BLOCK_D)
    t_mask = t < T - 1
    mask = t_mask[:, None] & (d < D)[None, :]
    # v̂_t − v_{t+1} [BLOCK_T, BLOCK_D] and the gate g_t of the writing tokens
    err = _tile(v_hat_ptr, b * T + t, d, D, mask) - _tile(v_ptr, b * T + t + 1, d, D, mask)
    g = tl.load(g_ptr + b * T + t, mask=t_mask, other=0.0)
    for j in tl.static_range(K):
        row = tl.load(rows_ptr + (b * T + t) * K + j, mask=t_mask, other=0)
        w = tl.load(w_ptr + (b * T + t) * K + j, mask=t_mask, other=0.0)
        reads = tl.load(counts_ptr + row, mask=t_mask, other=1).to(tl.float32)    # N_i ≥ 1 for a row read
        share = -topk * g * w / reads                                                # −(k / N_i)·g_t·w_{t,i}
        tl.atomic_add(values_ptr + row[:, None] * D + d[None, :], share[:, None] * err, mask=mask)


def write_values(values, rows, w, g, v_hat, v, topk):
    """FwPKM's value step, in place: values [G, N, d_v] fp32 contiguous (the fast values; nothing may need their
    old contents or a graph through them), rows [B, T, k] (group·N + slot), w [B, T, k], g [B, T, 1], v_hat and
    v [B, T, d_v], all fp32, of one chunk; topk the k of the step size k / N_i."""
    D = values.shape[-1]
    table = values.view(-1, D)  # a view, so the adds land in values (view() refuses a layout that would copy)
    B, T, K = rows.shape
    rows, w, g, v_hat, v = (x.contiguous() for x in (rows, w, g, v_hat, v))
    counts = torch.zeros(table.shape[0], dtype=torch.int32, device=values.device)
    block_d = triton.next_power_of_2(D)
    block_t = min(triton.next_power_of_2(T), max(1, 4096 // block_d))
    grid = (B, triton.cdiv(T, block_t))
    _count_reads[grid](rows, counts, T, K=K, BLOCK_T=block_t)
    _write_values[grid](table, counts, rows, w, g, v_hat, v, T, D, float(topk), K=K, BLOCK_T=block_t,
                        BLOCK_D=block_d)
