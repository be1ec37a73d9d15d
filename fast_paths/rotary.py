"""
RoPE's rotation of q and k by real-valued positions as one Triton kernel pair (forward, backward): the fast path of
rope.py's RotaryEmbedding, so of RoPE, RePo and every scaling, taken when GPTConfig.kernels says so (fast_paths/).

It computes what rope.py's rotate() computes, for q and k in one launch. Pair i = (x[i], x[i + D/2]) of a head
vector at position z is turned by the angle φ_i = z·θ_i and multiplied by the attention factor a (YaRN's mscale):

    y1 = a·(x1·cos φ − x2·sin φ)        y2 = a·(x1·sin φ + x2·cos φ)

Why a kernel: the plain code writes cos and sin to memory ([T, D/2], or [B, H, T, D/2] for RePo's per-head
positions) and autograd keeps them (with RePo also the angles, and with bf16 q and k their fp32 copies) until the
backward pass. Here each program reads a tile of q and k and its positions, computes the angles in fp32 in
registers and writes the rotated tile; the backward recomputes the angles from the saved positions, so nothing of
size [B, H, T, D/2] is ever stored.

The backward. The rotation is orthogonal (times a), so the gradient of x is the gradient of y turned back:

    dx1 = a·(dy1·cos φ + dy2·sin φ)     dx2 = a·(dy2·cos φ − dy1·sin φ)

and the positions, which RePo learns: dy1/dφ_i = −y2, dy2/dφ_i = y1 and dφ_i/dz = θ_i, so

    dL/dz = Σ_i θ_i·(dy2_i·y1_i − dy1_i·y2_i)      over the pairs of q and of k

with y recomputed from the saved q and k in fp32 (for positions shared by all heads, [T], also summed over b, h).
"""
import torch
import triton
import triton.language as tl

from fast_paths import require_gpu_or_interpreter

require_gpu_or_interpreter()


@triton.jit
def _load_pair(ptr, t, i, st, sd, HALF, mask):
    """The two halves x1, x2 [BLOCK_T, BLOCK_HALF] of rows t of one head, as fp32 (all math is fp32; the
    interpreter has no bf16 arithmetic either)."""
    offs = t[:, None] * st + i[None, :] * sd
    x1 = tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(ptr + offs + HALF * sd, mask=mask, other=0.0).to(tl.float32)
    return x1, x2


@triton.jit
def _store_pair(ptr, t, i, st, sd, HALF, mask, y1, y2):
    offs = t[:, None] * st + i[None, :] * sd
    tl.store(ptr + offs, y1.to(ptr.dtype.element_ty), mask=mask)
    tl.store(ptr + offs + HALF * sd, y2.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _cos_sin(pos_ptr, t, p_st, T, inv_freq_ptr, i, HALF, attention_factor):
    """a·cos φ, a·sin φ [BLOCK_T, BLOCK_HALF] of the angles φ = z_t·θ_i in fp32 (as rope.py's rotation()), and θ
    [BLOCK_HALF] (0 in the padding beyond D/2)."""
    z = tl.load(pos_ptr + t * p_st, mask=t < T, other=0).to(tl.float32)
    theta = tl.load(inv_freq_ptr + i, mask=i < HALF, other=0.0)
    angle = z[:, None] * theta[None, :]
    return tl.cos(angle) * attention_factor, tl.sin(angle) * attention_factor, theta


@triton.jit
def _rotary_forward(q_ptr, k_ptr, qo_ptr, ko_ptr, pos_ptr, inv_freq_ptr, attention_factor, H, T, HALF,
                    q_sb, q_sh, q_st, q_sd,     # strides of q [B, H, T, D] (any layout: q and k are views of qkv)
                    k_sb, k_sh, k_st, k_sd,     # of k
                    o_sb, o_sh, o_st,           # of the outputs (contiguous, both alike)
                    p_sb, p_sh, p_st,           # of the positions as [B, H, T] (0, 0, 1 for shared positions [T])
                    BLOCK_T: tl.constexpr, BLOCK_HALF: tl.constexpr):
    # program (b·H + h, j): rows j·BLOCK_T .. of head h of sequence b, all D/2 pairs, q and k
    b = tl.program_id(0).to(tl.int64) // H  # int64: b·stride passes 2^31 elements in large batches
    h = tl.program_id(0).to(tl.int64) % H
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    i = tl.arange(0, BLOCK_HALF)
    mask = (t < T)[:, None] & (i < HALF)[None, :]
    cos, sin, _ = _cos_sin(pos_ptr + b * p_sb + h * p_sh, t, p_st, T, inv_freq_ptr, i, HALF, attention_factor)
    x1, x2 = _load_pair(q_ptr + b * q_sb + h * q_sh, t, i, q_st, q_sd, HALF, mask)
    _store_pair(qo_ptr + b * o_sb + h * o_sh, t, i, o_st, 1, HALF, mask, x1 * cos - x2 * sin, x1 * sin + x2 * cos)
    x1, x2 = _load_pair(k_ptr + b * k_sb + h * k_sh, t, i, k_st, k_sd, HALF, mask)
    _store_pair(ko_ptr + b * o_sb + h * o_sh, t, i, o_st, 1, HALF, mask, x1 * cos - x2 * sin, x1 * sin + x2 * cos)


@triton.jit
def _turn_back(dy_ptr, dy_st, dy_sd, dx_ptr, dx_st, x_ptr, x_st, x_sd, t, i, HALF, mask, cos, sin, theta, dz,
               POS_GRAD: tl.constexpr):
    """Writes dx (dy turned back by −φ) for one of q, k and returns dz plus its share of dL/dz [BLOCK_T]."""
    dy1, dy2 = _load_pair(dy_ptr, t, i, dy_st, dy_sd, HALF, mask)
    _store_pair(dx_ptr, t, i, dx_st, 1, HALF, mask, dy1 * cos + dy2 * sin, dy2 * cos - dy1 * sin)
    if POS_GRAD:
        x1, x2 = _load_pair(x_ptr, t, i, x_st, x_sd, HALF, mask)
        y1, y2 = x1 * cos - x2 * sin, x1 * sin + x2 * cos
        dz += tl.sum((dy2 * y1 - dy1 * y2) * theta[None, :], axis=1)
    return dz


@triton.jit
def _rotary_backward(dqo_ptr, dko_ptr, q_ptr, k_ptr, dq_ptr, dk_ptr, dpos_ptr, pos_ptr, inv_freq_ptr,
                     attention_factor, H, T, HALF,
                     g_sb, g_sh, g_st, g_sd,     # strides of the incoming gradient of q_out (any layout)
                     f_sb, f_sh, f_st, f_sd,     # of k_out's
                     q_sb, q_sh, q_st, q_sd,     # of q (read only for the positions' gradient)
                     k_sb, k_sh, k_st, k_sd,     # of k
                     o_sb, o_sh, o_st,           # of dq and dk (contiguous, both alike)
                     p_sb, p_sh, p_st,           # of the positions as [B, H, T]
                     POS_GRAD: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_HALF: tl.constexpr):
    b = tl.program_id(0).to(tl.int64) // H
    h = tl.program_id(0).to(tl.int64) % H
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    i = tl.arange(0, BLOCK_HALF)
    mask = (t < T)[:, None] & (i < HALF)[None, :]
    cos, sin, theta = _cos_sin(pos_ptr + b * p_sb + h * p_sh, t, p_st, T, inv_freq_ptr, i, HALF, attention_factor)
    dz = tl.zeros([BLOCK_T], dtype=tl.float32)
    dz = _turn_back(dqo_ptr + b * g_sb + h * g_sh, g_st, g_sd, dq_ptr + b * o_sb + h * o_sh, o_st,
                    q_ptr + b * q_sb + h * q_sh, q_st, q_sd, t, i, HALF, mask, cos, sin, theta, dz, POS_GRAD)
    dz = _turn_back(dko_ptr + b * f_sb + h * f_sh, f_st, f_sd, dk_ptr + b * o_sb + h * o_sh, o_st,
                    k_ptr + b * k_sb + h * k_sh, k_st, k_sd, t, i, HALF, mask, cos, sin, theta, dz, POS_GRAD)
    if POS_GRAD:
        tl.store(dpos_ptr + (b * H + h) * T + t, dz, mask=t < T)  # dpos: [B, H, T] contiguous


def _launch(T, D, B, H):
    """Block sizes and grid: all D/2 pairs of a row in one program (a power of two, masked beyond D/2), and as many
    rows as make ~1K elements per half-tile."""
    block_half = triton.next_power_of_2(D // 2)
    block_t = min(triton.next_power_of_2(T), max(1, 1024 // block_half))
    return block_t, block_half, (B * H, triton.cdiv(T, block_t))


def _position_strides(pos):
    """Strides of the positions read as [B, H, T]: shared positions [T] repeat over b and h."""
    return pos.stride() if pos.dim() == 3 else (0, 0, pos.stride(0))


class Rotary(torch.autograd.Function):
    """Both kernels as one autograd node; what it saves for the backward is the positions and θ (and q, k)."""

    @staticmethod
    def forward(ctx, q, k, pos, inv_freq, attention_factor):
        B, H, T, D = q.shape
        q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
        block_t, block_half, grid = _launch(T, D, B, H)
        _rotary_forward[grid](q, k, q_out, k_out, pos, inv_freq, attention_factor, H, T, D // 2,
                              *q.stride(), *k.stride(), *q_out.stride()[:3], *_position_strides(pos),
                              BLOCK_T=block_t, BLOCK_HALF=block_half)
        # the angles are recomputed in the backward; q and k are kept only when the positions learn (RePo), for
        # dL/dz (in the model they are views of the qkv projection, which attention keeps through v anyway)
        ctx.save_for_backward(pos, inv_freq, *((q, k) if ctx.needs_input_grad[2] else ()))
        ctx.attention_factor = attention_factor
        return q_out, k_out

    @staticmethod
    def backward(ctx, dq_out, dk_out):
        pos, inv_freq, *qk = ctx.saved_tensors
        pos_grad = ctx.needs_input_grad[2]
        B, H, T, D = dq_out.shape
        dq = torch.empty(dq_out.shape, dtype=dq_out.dtype, device=dq_out.device)
        dk = torch.empty(dk_out.shape, dtype=dk_out.dtype, device=dk_out.device)
        # without the positions' gradient, q, k and dpos are never touched: the gradients stand in for them
        q, k = qk if pos_grad else (dq_out, dk_out)
        dpos = torch.empty((B, H, T), dtype=torch.float32, device=dq.device) if pos_grad else dq
        block_t, block_half, grid = _launch(T, D, B, H)
        _rotary_backward[grid](dq_out, dk_out, q, k, dq, dk, dpos, pos, inv_freq, ctx.attention_factor, H, T, D // 2,
                               *dq_out.stride(), *dk_out.stride(), *q.stride(), *k.stride(), *dq.stride()[:3],
                               *_position_strides(pos), POS_GRAD=pos_grad, BLOCK_T=block_t, BLOCK_HALF=block_half)
        if not pos_grad:
            return dq, dk, None, None, None
        return dq, dk, (dpos if pos.dim() == 3 else dpos.sum((0, 1))).to(pos.dtype), None, None


def rotary(q, k, pos, inv_freq, attention_factor=1.0):
    """rope.py's rotate() of q and of k [B, H, T, D] at once: pos [T] (shared by the heads) or [B, H, T] (per head,
    real-valued; may require grad), inv_freq [D/2] fp32, attention_factor a float. Returns (q_out, k_out),
    contiguous, in the dtypes of q and k."""
    return Rotary.apply(q, k, pos, inv_freq, attention_factor)
