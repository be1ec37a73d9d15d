"""
Rotary position embedding (RoPE) and the context-extension scalings PI, NTK-aware, dynamic NTK and YaRN; and
NoPE, the absence of any positional encoding, at the end.

Papers: RoFormer (Su et al. 2021, arXiv 2104.09864); Position Interpolation (Chen et al. 2023, arXiv 2306.15595);
NTK-aware scaling (bloc97, 2023); YaRN (Peng et al. 2023, arXiv 2309.00071).

    python train.py --pe rope                                  # train with RoPE (the default)
    python eval_niah.py --ckpt out/rope/ckpt.pt --scaling yarn # evaluate it beyond the training length

How RoPE works. Split a head vector x (dimension D) into D/2 pairs and treat pair i as a complex number. A token
at position m has pair i rotated by the angle m·θ_i, with θ_i = b^(-2i/D) (b = 10,000):

    RoPE(x, m)_i = x_i · e^{j·m·θ_i}

The relative property: for a query at m and a key at n,

    <RoPE(q, m), RoPE(k, n)> = Re Σ_i q_i · conj(k_i) · e^{j·(m−n)·θ_i}

depends on m − n only, so attention sees relative distances although each vector is rotated by its absolute
position (tests/test_rope.py checks this). Fast pairs (small i, θ ≈ 1 rad per token) resolve nearby order; slow
pairs (large i, a full turn takes up to 2π·b tokens) change little over the whole context.

Why a RoPE model fails beyond its training length L: the slow pairs have never turned further than L·θ_i during
training. At 2L they reach angles the model has never seen, and attention scores become out of distribution.

The scalings, with s = eval length / L:
- PI (linear): use positions m/s. Every angle is back inside the trained range, but neighbouring tokens are now
  s times closer in the fast pairs, which blurs local order.
- NTK-aware: keep the fast pairs, stretch the slow ones, by raising the base: b' = b·s^(D/(D−2)). The slowest
  pair is then interpolated by exactly s, the fastest almost not at all.
- Dynamic NTK: the NTK base computed from the current length l (no change while l ≤ L).
- YaRN: split the pairs by how many full turns r_i = L·θ_i/(2π) they make over the training context.
  Pairs with r > β_fast = 32 turns are untouched, pairs with r < β_slow = 1 turn are interpolated like PI,
  and the band between is blended by a ramp. Because the blurred, longer context spreads attention out, YaRN
  also sharpens the logits with an attention factor: cos and sin are multiplied by mscale = 0.1·ln(s) + 1,
  so every logit is multiplied by mscale².

  This file follows the Hugging Face / jquesnelle code: the ramp is linear in the pair index i between
  low = floor(corr(β_fast)) and high = ceil(corr(β_slow)), corr(r) = D·ln(L/(2π·r)) / (2·ln b). The paper ramps
  linearly in r; the untouched and fully interpolated bands are the same, only the blend in the middle differs.

All scalings only change θ_i (and the attention factor), so they apply equally to real-valued positions, which is
how RePo (repo.py) uses them on learned positions.

Layout: "rotate-half" pairs (i, i + D/2), as in GPT-NeoX and Llama, not interleaved pairs (2i, 2i+1).
Angles are always computed in fp32: with bf16 positions the product m·θ_i is off by whole radians at m ~ 10^3.
"""
import math

import torch
import torch.nn as nn

from fast_paths import use_cpu_forms, use_kernels

SCALINGS = ("pi", "ntk", "dyn_ntk", "yarn")  # the context-extension methods; None = plain RoPE
YARN_BETA_FAST = 32.0  # pairs turning more than this many times over the training context are left untouched
YARN_BETA_SLOW = 1.0   # pairs turning less than this are interpolated fully, as in PI


def check_scaling(scaling, factor):
    if scaling is not None and scaling not in SCALINGS:
        raise ValueError(f"unknown RoPE scaling {scaling!r}; valid choices: {', '.join(SCALINGS)} (or none)")
    if not factor >= 1.0:  # also catches NaN
        raise ValueError(f"RoPE scaling factor must be >= 1, got {factor}")


def yarn_correction_range(head_dim, base, train_len):
    """The pair indices [low, high] between which YaRN blends (HF form)."""
    def corr(turns):  # the pair index whose wavelength fits `turns` times into train_len
        return head_dim * math.log(train_len / (turns * 2 * math.pi)) / (2 * math.log(base))
    low = max(math.floor(corr(YARN_BETA_FAST)), 0)
    high = min(math.ceil(corr(YARN_BETA_SLOW)), head_dim - 1)
    return low, high


def yarn_attention_factor(factor):
    return 0.1 * math.log(factor) + 1.0 if factor > 1.0 else 1.0


def rope_frequencies(head_dim, base=10000.0, scaling=None, factor=1.0, train_len=None, cur_len=None):
    """Returns (inv_freq [D/2] fp32, attention factor) for plain RoPE or one of its scalings.

    factor is s = target length / train_len; cur_len (dyn_ntk only) is the length l of the sequence being run: an
    int, or a tensor on the model's device (RotaryEmbedding passes pos[-1] + 1, so reading l costs no host sync).
    """
    check_scaling(scaling, factor)
    device = cur_len.device if torch.is_tensor(cur_len) else None
    half = torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim  # 2i/D, i = 0..D/2-1
    if scaling == "ntk":
        base = base * factor ** (head_dim / (head_dim - 2))               # b' = b·s^(D/(D−2))
    elif scaling == "dyn_ntk":
        # b' = b·(s·l/L − (s − 1))^(D/(D−2)); the stretch is ≤ 1 exactly when l ≤ L, where the clamp keeps b
        stretch = (factor * torch.as_tensor(cur_len, dtype=torch.float64) / train_len - (factor - 1)).clamp_min(1.0)
        base = base * stretch ** (head_dim / (head_dim - 2))
    inv_freq = base ** -half                                               # θ_i = b^(−2i/D)
    attention_factor = 1.0
    if scaling == "pi":
        inv_freq = inv_freq / factor                                       # θ_i / s  ==  positions m / s
    elif scaling == "yarn":
        # --- solution: yarn frequencies ---
        # | pair i turns r_i = L·θ_i / (2π) times over the training length L: the fast pairs (i ≤ low) keep θ_i,
        # | the slow ones (i ≥ high) get θ_i / s as in PI, and between them the weight of θ_i / s rises linearly in i
        # | from 0 to 1 (low, high: yarn_correction_range; equal bounds must not divide by 0); the attention
        # | factor is 0.1·ln(s) + 1. inv_freq [D/2] fp64 here; s = factor
        low, high = yarn_correction_range(head_dim, base, train_len)
        if low == high:
            high += 0.001  # avoid a division by zero in the ramp
        i = torch.arange(head_dim // 2, dtype=torch.float64)
        ramp = ((i - low) / (high - low)).clamp(0, 1)                      # 0: fast, untouched; 1: slow, PI
        inv_freq = inv_freq / factor * ramp + inv_freq * (1 - ramp)
        attention_factor = yarn_attention_factor(factor)                   # mscale = 0.1·ln(s) + 1
        # --- end ---
    return inv_freq.float(), attention_factor


def rotation(pos, inv_freq, attention_factor=1.0):
    """cos and sin of the angles m·θ_i, times the attention factor: [T, D/2] for pos [T] (shared by all heads),
    [B, H, T, D/2] for pos [B, H, T] (a position per head, RePo). Positions may be any real values."""
    # --- solution: rope angles ---
    # | pair i of a token at position m turns by the angle φ_i = m·θ_i, for pos [T] or [B, H, T] (any real values,
    # | any dtype) and inv_freq θ [D/2]: φ in fp32 whatever pos's dtype (why: see the module docstring); return
    # | a·cos φ and a·sin φ, a = attention_factor, each [..., D/2] with pos's shape in front
    angle = pos.float()[..., None] * inv_freq  # fp32 always
    if attention_factor == 1.0:  # the common case: two multiplications (and their backward) fewer per layer
        return angle.cos(), angle.sin()
    return angle.cos() * attention_factor, angle.sin() * attention_factor
    # --- end ---


def apply_rotation(x, cos, sin):
    """Rotates pair i of x [B, H, T, D] by the angles whose cos and sin are given (rotation())."""
    # --- solution: rope rotation ---
    # | pair i of x [B, H, T, D] is the complex number x[i] + j·x[i + D/2] (the rotate-half layout); multiply it by
    # | e^{jφ_i}, whose cos and sin ([T, D/2] or [B, H, T, D/2]) are given, and put the real parts back at i and the
    # | imaginary parts at i + D/2; compute in fp32 and return x's shape and dtype
    x1, x2 = x.float().chunk(2, dim=-1)  # rotate-half layout: pair i = (x[i], x[i + D/2])
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)
    # --- end ---


def rotate(x, pos, inv_freq, attention_factor=1.0):
    """Rotates pair i of x [B, H, T, D] at position m by m·θ_i; pos: [T] or [B, H, T]."""
    return apply_rotation(x, *rotation(pos, inv_freq, attention_factor))


class RotaryEmbedding(nn.Module):
    """The positional module of one attention layer: rotates q and k by each token's position, which for RoPE is
    its index (RePo, repo.py, subclasses this and overrides positions())."""

    def __init__(self, config):
        super().__init__()
        self.head_dim = config.n_embd // config.n_head
        self.base = config.rope_base
        self.train_len = config.block_size
        self.scaling = config.rope_scaling
        self.factor = config.rope_factor
        self.kernels = config.kernels
        # θ_i and the attention factor do not depend on the length (except θ_i with dyn_ntk, which forward
        # recomputes), so they are computed once; a non-persistent buffer follows .to(device) and stays out of the
        # state dict (checkpoints are unchanged)
        inv_freq, self.attention_factor = rope_frequencies(self.head_dim, self.base, self.scaling, self.factor,
                                                           self.train_len, cur_len=self.train_len)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # [D/2] fp32

    def positions(self, h, pos):
        return pos  # [T] token indices; h [B, T, C] is unused by plain RoPE

    def forward(self, q, k, h, pos):
        # q, k: [B, H, T, D]; h: [B, T, C]; pos: [T] absolute token indices
        inv_freq = self.inv_freq
        if self.scaling == "dyn_ntk":  # the base follows the current length l = pos[-1] + 1, read on the device
            inv_freq, _ = rope_frequencies(self.head_dim, self.base, self.scaling, self.factor, self.train_len,
                                           cur_len=pos[-1] + 1)
        pos = self.positions(h, pos)  # [T], or [B, H, T] with RePo
        if use_kernels(self.kernels, q):  # the same rotation as below in one fused Triton launch (fast_paths/rotary.py)
            from fast_paths.rotary import rotary  # imports triton, which CPU-only installs may lack
            return rotary(q, k, pos, inv_freq, self.attention_factor)
        if use_cpu_forms(self.kernels, q):  # the same in fewer operators, with a backward by hand (fast_paths/cpu.py)
            from fast_paths.cpu import rotary
            return rotary(q, k, pos, inv_freq, self.attention_factor)
        # cos and sin are computed once for q and k; the attention factor goes on both, so logits scale by
        # mscale², as YaRN prescribes
        cos, sin = rotation(pos, inv_freq, self.attention_factor)
        return apply_rotation(q, cos, sin), apply_rotation(k, cos, sin)


class NoPositionalEncoding(nn.Module):
    """NoPE: q and k pass through unchanged; the causal mask is the only order signal (Kazemnejad et al. 2023)."""

    def forward(self, q, k, h, pos):
        return q, k
