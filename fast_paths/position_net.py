"""
RePo's position network f_φ as one Triton kernel forward and one kernel (plus two matrix products) backward: the
fast path of repo.py's PositionNetwork, taken when GPTConfig.kernels says so (fast_paths/).

It computes what PositionNetwork computes, for the rows h_n [C] of a layer's normalised hidden state:

    g = h W_gᵀ,  c = h W_cᵀ       [N, P]   (P = C/8)
    r = SiLU(g) ⊙ c               [N, P]
    z = r W_zᵀ                    [N, H]   one position per head

Why a kernel: the plain code is 6 operators forward and ~16 backward per RePo layer (two projections, SiLU, the
product, fp32 casts, and their gradients), each a kernel launch on a GPU, most of them on small tensors: with the
rotary kernel, a step of RePo issued 17 launches per RePo layer more than RoPE's (bench.py's ops/step). Here a
program takes BLOCK_N rows of h, computes g and c over C in BLOCK_K slices, and writes z; g, c and r never reach
memory, and the backward recomputes them from h, which is all that is kept (attention keeps h for its own projection
anyway).

The backward, for the incoming dL/dz [N, H]:

    dr = dz W_z                   dc = dr ⊙ SiLU(g)       dg = dr ⊙ c ⊙ σ(g)·(1 + g·(1 − σ(g)))
    dh = dg W_g + dc W_c          (in the kernel, over C in slices)
    dW_g = dgᵀ h,  dW_c = dcᵀ h   (one matrix product of [dg | dc]ᵀ and h)
    dW_z = dzᵀ r                  (one matrix product; the kernel writes r and dz as rows)

All arithmetic is fp32 (the interpreter has no bf16 arithmetic, and z is multiplied by θ_k up to 1 in RoPE, so a
bf16 z of ~100 would be off by ~0.5), with IEEE products: tl.dot's default TF32 would round the inputs to 10 bits.
"""
import torch
import triton
import triton.language as tl

from fast_paths import require_gpu_or_interpreter

require_gpu_or_interpreter()


@triton.jit
def _gate_content(h_ptr, wg_ptr, wc_ptr, n, p, N, C, P, h_sn, h_sc, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  BLOCK_P: tl.constexpr):
    """g = h W_gᵀ and c = h W_cᵀ [BLOCK_N, BLOCK_P] of rows n, in fp32, over C in BLOCK_K slices (0 beyond P)."""
    g = tl.zeros([BLOCK_N, BLOCK_P], dtype=tl.float32)
    c = tl.zeros([BLOCK_N, BLOCK_P], dtype=tl.float32)
    for k0 in range(0, C, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(h_ptr + n[:, None] * h_sn + k[None, :] * h_sc, mask=(n < N)[:, None] & (k < C)[None, :],
                    other=0.0).to(tl.float32)                                        # h [BLOCK_N, BLOCK_K]
        w_mask = (k < C)[:, None] & (p < P)[None, :]
        wg = tl.load(wg_ptr + p[None, :] * C + k[:, None], mask=w_mask, other=0.0)  # W_gᵀ [BLOCK_K, BLOCK_P]
        wc = tl.load(wc_ptr + p[None, :] * C + k[:, None], mask=w_mask, other=0.0)  # W_cᵀ
        g += tl.dot(x, wg, input_precision="ieee")
        c += tl.dot(x, wc, input_precision="ieee")
    return g, c


@triton.jit
def _position_forward(h_ptr, wg_ptr, wc_ptr, wz_ptr, z_ptr, N, C, P, H, h_sn, h_sc,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_H: tl.constexpr):
    # program i: rows i·BLOCK_N .. of h [N, C] (any strides); z [N, H] contiguous
    n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    p, j = tl.arange(0, BLOCK_P), tl.arange(0, BLOCK_H)
    g, c = _gate_content(h_ptr, wg_ptr, wc_ptr, n, p, N, C, P, h_sn, h_sc, BLOCK_N, BLOCK_K, BLOCK_P)
    r = g * tl.sigmoid(g) * c                                                        # SiLU(g) ⊙ c
    wz = tl.load(wz_ptr + j[None, :] * P + p[:, None], mask=(p < P)[:, None] & (j < H)[None, :], other=0.0)  # W_zᵀ
    z = tl.dot(r, wz, input_precision="ieee")                                        # [BLOCK_N, BLOCK_H]
    tl.store(z_ptr + n[:, None] * H + j[None, :], z, mask=(n < N)[:, None] & (j < H)[None, :])


@triton.jit
def _position_backward(h_ptr, wg_ptr, wc_ptr, wz_ptr, dz_ptr, dh_ptr, dgc_ptr, r_ptr, dzr_ptr, N, T, C, P, H,
                       h_sn, h_sc,            # strides of h as [N, C]
                       dz_sb, dz_sh, dz_st,   # of the incoming dL/dz as [B, H, T] (row n is b·T + t)
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_H: tl.constexpr):
    # writes dh [N, C] (h's dtype), [dg | dc] [N, 2P] (h's dtype), r [N, P] and dz as rows [N, H] (fp32)
    n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    p, j = tl.arange(0, BLOCK_P), tl.arange(0, BLOCK_H)
    row, head, pair = n < N, j < H, p < P
    g, c = _gate_content(h_ptr, wg_ptr, wc_ptr, n, p, N, C, P, h_sn, h_sc, BLOCK_N, BLOCK_K, BLOCK_P)
    s = tl.sigmoid(g)
    silu = g * s
    dz = tl.load(dz_ptr + (n // T)[:, None] * dz_sb + j[None, :] * dz_sh + (n % T)[:, None] * dz_st,
                 mask=row[:, None] & head[None, :], other=0.0).to(tl.float32)         # [BLOCK_N, BLOCK_H]
    wz = tl.load(wz_ptr + j[:, None] * P + p[None, :], mask=head[:, None] & pair[None, :], other=0.0)  # W_z
    dr = tl.dot(dz, wz, input_precision="ieee")                                      # dr = dz W_z [BLOCK_N, BLOCK_P]
    dc = dr * silu
    dg = dr * c * s * (1 + g * (1 - s))                                              # SiLU'(g) = σ(1 + g(1 − σ))
    rows_p = row[:, None] & pair[None, :]
    tl.store(r_ptr + n[:, None] * P + p[None, :], silu * c, mask=rows_p)
    tl.store(dzr_ptr + n[:, None] * H + j[None, :], dz, mask=row[:, None] & head[None, :])
    tl.store(dgc_ptr + n[:, None] * 2 * P + p[None, :], dg.to(dgc_ptr.dtype.element_ty), mask=rows_p)
    tl.store(dgc_ptr + n[:, None] * 2 * P + P + p[None, :], dc.to(dgc_ptr.dtype.element_ty), mask=rows_p)
    for k0 in range(0, C, BLOCK_K):  # dh = dg W_g + dc W_c, a slice of C at a time
        k = k0 + tl.arange(0, BLOCK_K)
        w_mask = pair[:, None] & (k < C)[None, :]
        wg = tl.load(wg_ptr + p[:, None] * C + k[None, :], mask=w_mask, other=0.0)  # W_g [BLOCK_P, BLOCK_K]
        wc = tl.load(wc_ptr + p[:, None] * C + k[None, :], mask=w_mask, other=0.0)
        dh = tl.dot(dg, wg, input_precision="ieee") + tl.dot(dc, wc, input_precision="ieee")
        tl.store(dh_ptr + n[:, None] * C + k[None, :], dh.to(dh_ptr.dtype.element_ty),
                 mask=row[:, None] & (k < C)[None, :])


def _blocks(C, P, H):
    """Block sizes: 32 rows a program, C in slices of 64, P and H padded to powers of two of at least 16 (tl.dot's
    smallest tile)."""
    return dict(BLOCK_N=32, BLOCK_K=min(64, max(16, triton.next_power_of_2(C))),
                BLOCK_P=max(16, triton.next_power_of_2(P)), BLOCK_H=max(16, triton.next_power_of_2(H)))


class PositionNetwork(torch.autograd.Function):
    """Both kernels as one autograd node; it saves h and the weights, and recomputes the rest."""

    @staticmethod
    def forward(ctx, h, w_gate, w_content, w_position):
        B, T, C = h.shape
        P, H = w_gate.shape[0], w_position.shape[0]
        x = h.reshape(B * T, C)  # a view of the usual contiguous h
        z = torch.empty((B * T, H), dtype=torch.float32, device=h.device)
        blocks = _blocks(C, P, H)
        _position_forward[(triton.cdiv(B * T, blocks["BLOCK_N"]),)](
            x, w_gate, w_content, w_position, z, B * T, C, P, H, *x.stride(), **blocks)
        ctx.save_for_backward(h, w_gate, w_content, w_position)
        return z.view(B, T, H).transpose(1, 2)  # [B, H, T], as the plain code returns it

    @staticmethod
    def backward(ctx, dz):
        h, w_gate, w_content, w_position = ctx.saved_tensors
        B, T, C = h.shape
        P, H = w_gate.shape[0], w_position.shape[0]
        x = h.reshape(B * T, C)
        dh = torch.empty((B * T, C), dtype=h.dtype, device=h.device)
        dgc = torch.empty((B * T, 2 * P), dtype=h.dtype, device=h.device)  # [dg | dc]
        r = torch.empty((B * T, P), dtype=torch.float32, device=h.device)
        dz_rows = torch.empty((B * T, H), dtype=torch.float32, device=h.device)
        blocks = _blocks(C, P, H)
        _position_backward[(triton.cdiv(B * T, blocks["BLOCK_N"]),)](
            x, w_gate, w_content, w_position, dz, dh, dgc, r, dz_rows, B * T, T, C, P, H, *x.stride(),
            *dz.stride(), **blocks)
        dw = (dgc.t() @ x).to(w_gate.dtype)  # [2P, C]: dW_g over dW_c
        return dh.view(B, T, C), dw[:P], dw[P:], (dz_rows.t() @ r).to(w_position.dtype)


def position_network(h, w_gate, w_content, w_position):
    """repo.py's PositionNetwork of h [B, T, C] with the weights W_g, W_c [P, C] and W_z [H, P] (fp32): the
    positions z [B, H, T] in fp32."""
    return PositionNetwork.apply(h, w_gate, w_content, w_position)
