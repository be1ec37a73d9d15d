"""
RePo: context re-positioning. A tiny network gives every token a learned, real-valued position per head, computed
from its hidden state; RoPE then rotates q and k by those positions instead of the token index.

Li, Zhao, Cai, Sproat, "RePo: Language Models with Context Re-Positioning", arXiv 2512.14391 (ICML 2026);
official code github.com/SakanaAI/repo (an OLMo fork, mode `swigluex_multihead`; no custom kernels).

    python train.py --pe repo                                                  # from scratch
    python train.py --pe repo --init_from out/rope/ckpt.pt --out_dir out/repo_cont  # the paper's protocol
    python repo_positions.py --ckpt out/repo_cont/ckpt.pt                      # plot the learned positions
    python eval_niah.py --ckpt out/repo_cont/ckpt.pt --variants multikey --scaling none,yarn   # retrieval

What we measured, and what the paper reports: results/repo.md.

The position network f_φ of one layer, for the normalised hidden state h_i [C] that also feeds q, k and v:

    r_i = SiLU(h_i W_g) ⊙ (h_i W_c)      W_g, W_c ∈ R^{C×C/8}: a SwiGLU-style gate, shared by the layer's heads
    z_i = r_i W_z                        W_z ∈ R^{C/8×H}: one real-valued position per head, z_i ∈ R^H

and RoPE with z in place of the index: pair k of head h at token i is rotated by z_i^h·θ_k (rope.py). The score of
query i and key j then depends on z_j^h − z_i^h only, so each head sees a learned "distance" that can put a far,
relevant token close and a near, irrelevant one far. Nothing constrains z: no cumsum over tokens, no offset by the
index (fed the index, the paper's model collapses to linear positions), no clamp, no monotonicity; positions may be
negative or repeat. The causal mask still follows token order: tokens are re-positioned, never re-ordered.

Where: RePo in the layers from ⌈n_layer/3⌉ (1-based) up; the lower layers keep integer RoPE (with RePo in only the
lowest third the paper's model was unstable; with RePo in only a few layers it behaves like RoPE). The paper continues
pretraining an OLMo-2 1B RoPE checkpoint for 50B tokens with fresh f_φ weights: `--init_from` a RoPE checkpoint here.
Beyond the training length it uses RePo + YaRN: a RoPE scaling changes θ_k and the attention factor, so it applies to
learned positions unchanged (eval_niah.py --scaling).

The paper describes the learned positions as "dense": a head's spread (max z − min z) grows with length but stays
far below it, in plateaus, monotone runs and jumps (`python repo_positions.py` plots ours). At initialisation f_φ
is near zero (std-0.02 weights make z ~ 0.002), so RePo layers begin as NoPE and learn their positions.

Fast path: on a GPU (GPTConfig.kernels), f_φ runs as one fused Triton kernel and the rotation by z as another
(fast_paths/position_net.py, fast_paths/rotary.py); on the CPU both run in fewer PyTorch operators
(fast_paths/cpu.py). The code here is the reference they are tested against.

Also here: "rope_nope", the control with the same layer split (RoPE below, NoPE from ⌈n_layer/3⌉ up), to tell learned
positions apart from merely dropping RoPE in the upper layers.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from fast_paths import use_cpu_forms, use_kernels
from rope import NoPositionalEncoding, RotaryEmbedding


def first_repo_layer(n_layer):
    """0-based index of the lowest RePo layer: layer ⌈n_layer/3⌉ counted from 1."""
    return math.ceil(n_layer / 3) - 1


class PositionNetwork(nn.Module):
    """f_φ: h [B, T, C] -> z [B, H, T], one real-valued position per head and token."""

    def __init__(self, config):
        super().__init__()
        d_p = config.n_embd // 8  # the paper's d_p = d/8
        self.gate = nn.Linear(config.n_embd, d_p, bias=False)            # W_g
        self.content = nn.Linear(config.n_embd, d_p, bias=False)         # W_c
        self.to_position = nn.Linear(d_p, config.n_head, bias=False)     # W_z
        self.kernels = config.kernels

    def forward(self, h):
        if use_kernels(self.kernels, h):  # the same f_φ in one fused Triton launch (fast_paths/position_net.py)
            from fast_paths.position_net import position_network  # imports triton, which CPU-only installs may lack
            return position_network(h, self.gate.weight, self.content.weight, self.to_position.weight)
        if use_cpu_forms(self.kernels, h):  # the same with W_g and W_c as one matrix product (fast_paths/cpu.py)
            from fast_paths.cpu import position_network
            return position_network(h, self.gate.weight, self.content.weight, self.to_position.weight)
        # --- solution: repo position network ---
        # | the module docstring's f_φ: a gate and a content projection of h [B, T, C] to d_p = C/8, their
        # | product, and a projection to one position per head; positions in fp32 even under bf16 autocast (RoPE
        # | multiplies them by θ); return z [B, H, T]
        r = F.silu(self.gate(h)) * self.content(h)                       # r = SiLU(h W_g) ⊙ (h W_c)  [B, T, d_p]
        # z in fp32 even under bf16 autocast: RoPE multiplies it by θ_k, and a bf16 z of ~100 is off by ~0.5
        with torch.autocast(h.device.type, enabled=False):
            z = self.to_position(r.float())                              # z = r W_z                  [B, T, H]
        return z.transpose(1, 2)                                         # [B, H, T]
        # --- end ---


class RePo(RotaryEmbedding):
    """RoPE rotated by learned positions z (per head) instead of token indices; everything else is RoPE's,
    including the eval-time scalings."""

    def __init__(self, config):
        super().__init__(config)
        self.position_net = PositionNetwork(config)

    def positions(self, h, pos):
        return self.position_net(h)  # [B, H, T]; pos (the indices) is deliberately not an input


def repo_layer(config, layer_idx):
    return RePo(config) if layer_idx >= first_repo_layer(config.n_layer) else RotaryEmbedding(config)


def rope_nope_layer(config, layer_idx):
    return NoPositionalEncoding() if layer_idx >= first_repo_layer(config.n_layer) else RotaryEmbedding(config)
