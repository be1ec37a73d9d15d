"""
The CPU's fast forms, in plain PyTorch: what the Triton kernels do on a GPU (fewer operators, a backward by hand),
for the CPU, where the study trains (GPTConfig.kernels "auto" on the CPU in fp32; fast_paths/). tests/test_rope.py and
tests/test_repo.py compare values and gradients with the reference code of rope.py and repo.py.

rotary(): RoPE's rotation of q and k by real-valued positions, as rope.py's rotate() (RoPE, RePo, every scaling).
Pair i = (x1_i, x2_i) = (x[i], x[i + D/2]) at position z is turned by φ_i = z·θ_i, times the attention factor a:

    y1 = a·(x1·cos φ − x2·sin φ)        y2 = a·(x1·sin φ + x2·cos φ)

written into the two halves of one output (a product and a fused multiply-add each: no chunked copies, no cat),
with the backward written by hand, as the Triton kernel's (fast_paths/rotary.py):

    dx1 = a·(dy1·cos φ + dy2·sin φ)     dx2 = a·(dy2·cos φ − dy1·sin φ)      the same turn by −φ
    dL/dz = Σ_i θ_i·(dy2_i·y1_i − dy1_i·y2_i)                                over the pairs of q and of k

with y the outputs, which attention keeps anyway. Autograd's chain through cos and sin of RePo's per-head angles
costs about twice as much.

position_network(): RePo's f_φ, as repo.py's PositionNetwork, with W_g and W_c as one matrix product: h is read once
and its gradient comes back as one tensor (two products and their sum cost ~2x as much at d_p = C/8).

rms_norm(): model.py's RMSNorm, y = x·r·w with r = 1 / sqrt(mean(x²) + eps). The forward writes one new tensor (r
from a norm, then x·r·w); the backward is LayerNorm's fused backward with its mean set to 0, which is RMSNorm's
gradient except for one term: with x̂ = x·r and g·w the incoming gradient times w,

    dx_LayerNorm = r·(g·w − mean(g·w) − x̂·mean(g·w·x̂))      dx_RMSNorm = r·(g·w − x̂·mean(g·w·x̂))

so dx_RMSNorm = dx_LayerNorm + r·mean(g·w): one matrix-vector product (g @ w) and one addition; dw is the same in
both. tests/test_model.py compares it with nn.RMSNorm.
"""
import torch
import torch.nn.functional as F


def turn(x, cos, sin):
    """x [B, H, T, D] with pair i turned by the angle whose (scaled) cos and sin [..., D/2] are given."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    y = x.new_empty(x.shape)  # contiguous [B, H, T, D]: from q's strided view of qkv, 2.5x faster than its layout
    y1, y2 = y[..., :half], y[..., half:]
    torch.mul(x1, cos, out=y1).addcmul_(x2, sin, value=-1)                  # y1 = x1·cos − x2·sin
    torch.mul(x2, cos, out=y2).addcmul_(x1, sin)                            # y2 = x2·cos + x1·sin
    return y


class _Rotation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, pos, inv_freq, attention_factor):
        angle = pos.float().contiguous()[..., None] * inv_freq              # φ  [T, D/2] or [B, H, T, D/2]
        cos, sin = angle.cos(), angle.sin()
        if attention_factor != 1.0:
            cos, sin = cos * attention_factor, sin * attention_factor
        yq, yk = turn(q, cos, sin), turn(k, cos, sin)
        ctx.save_for_backward(yq, yk, cos, sin, inv_freq)
        return yq, yk

    @staticmethod
    def backward(ctx, grad_q, grad_k):
        yq, yk, cos, sin, inv_freq = ctx.saved_tensors
        dq, dk = turn(grad_q, cos, -sin), turn(grad_k, cos, -sin)           # turned back by −φ
        dpos = None
        if ctx.needs_input_grad[2]:  # learned positions (RePo): dL/dz = Σ_i θ_i·(dy2_i·y1_i − dy1_i·y2_i)
            half = yq.shape[-1] // 2
            dphi = grad_q[..., half:] * yq[..., :half]                      # [B, H, T, D/2]
            dphi.addcmul_(grad_q[..., :half], yq[..., half:], value=-1)
            dphi.addcmul_(grad_k[..., half:], yk[..., :half]).addcmul_(grad_k[..., :half], yk[..., half:], value=-1)
            dpos = dphi @ inv_freq                                          # [B, H, T]
        return dq, dk, dpos, None, None


def rotary(q, k, pos, inv_freq, attention_factor=1.0):
    """q, k [B, H, T, D] fp32 rotated by the angles pos·θ (pos: [T], or [B, H, T] per head), as rope.py's rotate()."""
    return _Rotation.apply(q, k, pos, inv_freq, attention_factor)


def position_network(h, gate_weight, content_weight, position_weight):
    """z [B, H, T] from h [B, T, C] fp32: SiLU(h W_g) ⊙ (h W_c) W_z, as repo.py's PositionNetwork."""
    gate, content = F.linear(h, torch.cat((gate_weight, content_weight))).chunk(2, dim=-1)  # [B, T, d_p] each
    return F.linear(F.silu(gate) * content, position_weight).transpose(1, 2)


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        eps = torch.finfo(x.dtype).eps if eps is None else eps  # nn.RMSNorm's default
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)            # ||x||  [..., 1]: no x² in memory
        r = norm.square_().div_(x.shape[-1]).add_(eps).rsqrt_()             # r = 1 / sqrt(mean(x²) + eps)
        ctx.save_for_backward(x, weight, r)
        return torch.mul(x, r).mul_(weight)                                  # one new [..., C] tensor, as LayerNorm's

    @staticmethod
    def backward(ctx, grad):
        x, weight, r = ctx.saved_tensors
        dx, dweight, _ = torch.ops.aten.native_layer_norm_backward(grad, x, [x.shape[-1]], torch.zeros_like(r), r,
                                                                     weight, None, [True, True, False])
        return dx.add_(r * (grad @ weight)[..., None] / x.shape[-1]), dweight, None  # + r·mean(g·w), in place


def rms_norm(x, weight, eps=None):
    """x [..., C] fp32 normalised as nn.RMSNorm(C, eps) with weight w [C] does."""
    return _RMSNorm.apply(x, weight, eps)
