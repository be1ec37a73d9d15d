"""
DroPE: train with RoPE, then drop the positional embeddings and recalibrate briefly.

Gelberg, Eguchi, Akiba, Cetin, "Extending the Context of Pretrained LLMs by Dropping Their Positional Embeddings",
arXiv 2512.12167 (ICLR 2026); official code github.com/SakanaAI/DroPE (it has no evaluation or beta-fitting code).
What we measured, and the paper's numbers: results/drope.md.

    python train.py --pe rope --out_dir out/rope_keep --keep_iters 1312                    # 1. pretrain with RoPE
    python train.py --pe drope --init_from out/rope_keep/ckpt_1312.pt --out_dir out/drope --max_iters 188  # 2.-3.
    python drope_fit.py --ckpt out/drope/ckpt.pt                                            # 4. fit c of beta
    python eval_niah.py --ckpt out/drope/ckpt.pt --logit_scale_c fitted,0                  # 5. retrieve beyond L

The recipe:
1. Pretrain with RoPE for most of the budget (the paper: 14K of 16K steps, 87.5%: 1312 of our default 1500).
2. Drop RoPE in every layer: the rotation becomes the identity (cos = 1, sin = 0). All weights are kept, the
   logits stay q·k/sqrt(D), nothing positional is added; the causal mask is the only order signal left. Here that
   is `--pe drope --init_from <RoPE checkpoint>`: RoPE has no parameters, so every weight loads.
3. Recalibrate at the ORIGINAL training length with the ordinary next-token loss: all parameters, a fresh AdamW
   (β 0.9, 0.999, no weight decay: the official code's trainer, which recalibrates pretrained SmolLM and Llama
   models; the paper's from-scratch setting names β2 0.95 and weight decay 0.1), a short warmup, cosine decay,
   gradient clipping at 1.0, for the rest of the budget (the paper: 2K steps at LR 1e-3 with 70 warmup steps), so
   DroPE and the RoPE baseline train the same number of steps. `recalibration_defaults` makes that schedule
   train.py's default for this stage.
   Optional QK-norm (`--qk_norm true`, RMSNorm over the whole q and k projections, weights starting at 1) is
   added at the drop; the paper uses it for long recalibrations at a high learning rate, where it prevents
   divergence.
4. Beyond the training length L, multiply every attention logit by one scalar

       beta = 1 + c·ln(s),   s = T / L   (T: the current context length; beta = 1 for T <= L)

   and fit c on held-out rows of the training distribution by minimising the loss over beta at several lengths
   (`python drope_fit.py` on a checkpoint: a grid search per length, then a least-squares line through the best
   betas). Without position, the logits of a query spread over more keys as T grows, so attention
   gets flatter (its entropy grows ~ln T); beta > 1 sharpens it back, like YaRN's mscale or the log-length scaling
   of "scalable softmax".

Why not NoPE from the start (the scaffolding argument)? A NoPE model can represent position (the causal mask lets
it count), but at initialisation its attention is nearly uniform, and the gradient towards a positional bias is
tiny, so it learns slowly and ends worse. RoPE gives every head a positional bias for free, which makes language
modelling learnable quickly; once the model has learned, the scaffolding can come down. And the point of dropping:
RoPE's rotations at positions never seen in training break retrieval beyond L, and the scalings that fix
perplexity (PI, YaRN) compress the low frequencies so that far needles blur; without rotations nothing is out of
distribution except the number of keys.
"""
import math

import torch
import torch.nn as nn


def logit_scale(c, length, train_len):
    """beta = 1 + c·ln(s), s = length / train_len, and 1 within the training length."""
    return 1.0 + c * math.log(max(1.0, length / train_len))


class DroppedPositionalEncoding(nn.Module):
    """The positional module of one attention layer after the drop: no rotation, and beta on the logits."""

    def __init__(self, config):
        super().__init__()
        self.train_len = config.block_size
        self.c = config.logit_scale_c

    def forward(self, q, k, h, pos):
        # q, k: [B, H, T, D], returned unrotated; h is unused; pos: [T], only its end matters (the context length)
        # --- solution: drope drop and beta ---
        # | the drop: no rotation; every attention logit of a context of T = pos[-1] + 1 tokens is multiplied by
        # | β = 1 + c·ln(T / L) beyond the training length L (β = 1 for T ≤ L and for c = 0); q and k [B, H, T, D];
        # | where to put β so that the cached keys stay unscaled, in fp32, and without reading T on the host
        if self.c == 0:  # beta = 1 at every length: all of the recalibration, which trains without beta
            return q, k
        # logit_scale() on the device: the length pos[-1] + 1 stays a tensor, so reading it costs no host sync
        beta = 1.0 + self.c * torch.log((pos[-1] + 1).double() / self.train_len).clamp_min(0.0)  # 0-dim fp64
        # softmax(beta·q·k/sqrt(D)): scaling q alone scales every logit by beta, and keeps the cached keys unscaled;
        # the product in fp32, as with a Python-float beta, so bf16 q is rounded once
        return (q.float() * beta).type_as(q), k
        # --- end ---


def recalibration_defaults(init_ckpt):
    """The paper's recalibration schedule, for a stage started from the RoPE checkpoint init_ckpt: 2K of 16K total
    steps after 14K of RoPE, i.e. 1/7 of the checkpoint's steps (12.5% of the total), 70/2000 = 3.5% warmup, peak
    LR 1e-3, cosine (to 1e-4: the paper does not give its final LR), and the official trainer's AdamW: no weight
    decay, β2 = 0.999 (this project's pretraining uses 0.1 and 0.95)."""
    steps = max(1, round(init_ckpt["iter"] / 7))
    return {"max_iters": steps, "warmup_iters": max(1, round(0.035 * steps)), "lr": 1e-3, "min_lr": 1e-4,
            "weight_decay": 0.0, "beta2": 0.999}
