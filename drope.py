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
   (0.9, 0.95, wd 0.1), a short warmup, cosine decay, gradient clipping at 1.0, for the rest of the budget (the
   paper: 2K steps at LR 1e-3 with 70 warmup steps), so DroPE and the RoPE baseline train the same number of
   steps. `recalibration_defaults` makes that schedule train.py's default for this stage.
   Optional QK-norm (`--qk_norm true`, RMSNorm over the whole q and k projections, weights starting at 1) is
   added at the drop; the paper uses it for long recalibrations at a high learning rate, where it prevents
   divergence.
4. Beyond the training length L, multiply every attention logit by one scalar

       beta = 1 + c·ln(s),   s = T / L   (T: the current context length; beta = 1 for T <= L)

   and fit c on held-out text by minimising perplexity over beta at several lengths (search_beta and fit_c
   below, which `python drope_fit.py` runs on a checkpoint: a grid, extended past an end while the best sits
   there, then refined; it says whether each optimum is interior). Without position, the logits of a query spread over more keys as T grows, so attention
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

import numpy as np
import torch
import torch.nn as nn

from plots import plt, save_figure


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


# ----------------------------------------------------------------------------------------------------------------
# Fitting c: held-out loss over a grid of beta at several lengths, then beta - 1 = c·ln(s) by least squares.

def set_logit_scale_c(model, c):
    model.config.logit_scale_c = c
    for module in model.modules():
        if isinstance(module, DroppedPositionalEncoding):
            module.c = c


@torch.no_grad()
def loss_at(model, x, y, beta, batch_size, weights=None, names=None):
    """Mean next-token loss of x [N, T] with every logit scaled by beta; weights and names [N, T] as train.py's
    batches of drills have them (the answers' loss weight, the name slots given random identities)."""
    s = x.shape[1] / model.config.block_size
    set_logit_scale_c(model, (beta - 1) / math.log(s))
    rows = [slice(i, i + batch_size) for i in range(0, len(x), batch_size)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same random identities for every beta: the loss differs by beta alone
        return float(np.mean([model(x[r], y[r], weights=None if weights is None else weights[r],
                                    anonymous=None if names is None else names[r])[1].item() for r in rows]))


BETA_LIMITS = (0.05, 20.0)  # the search never leaves these: beta <= 0 flips attention, beyond 20 it is one-hot


def search_beta(loss_of, betas, step, refinements=2):
    """The beta of least loss_of(beta), from the grid `betas` (spaced `step`): while the best is at an end of the
    points tried, 5 more steps past that end (within BETA_LIMITS); then, twice, 9 points around the best at a fifth
    of the last spacing. Returns (best beta, {beta: loss} of every point tried, whether the best before refining was
    interior: False means the optimum lies at or past BETA_LIMITS)."""
    tried = {}

    def try_all(points):
        for b in (round(b, 6) for b in points):
            if b not in tried and BETA_LIMITS[0] <= b <= BETA_LIMITS[1]:
                tried[b] = loss_of(b)

    try_all(betas)
    while True:
        best, low, high = min(tried, key=tried.get), min(tried), max(tried)
        if best == high and high + step <= BETA_LIMITS[1]:
            try_all(high + step * k for k in range(1, 6))
        elif best == low and low - step >= BETA_LIMITS[0]:
            try_all(low - step * k for k in range(1, 6))
        else:
            break
    interior = low < best < high
    for _ in range(refinements):
        step /= 5
        try_all(best + step * k for k in range(-4, 5))
        best = min(tried, key=tried.get)
    return best, tried, interior


def fit_c(multiples, best_betas):
    """Least squares through the origin of beta - 1 = c·ln(s)."""
    ln_s = np.log(multiples)
    return float(np.sum(ln_s * (np.array(best_betas) - 1)) / np.sum(ln_s ** 2))


def plot_fit(multiples, curves, c, path):
    """curves: per length, the [beta, loss] points search_beta tried."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for m, curve in zip(multiples, curves):
        line, = ax.plot(*zip(*sorted(curve)), marker=".", ms=3, label=f"{m:g}x")
        ax.axvline(logit_scale(c, m, 1), color=line.get_color(), ls=":", lw=1)
    ax.set_xlabel("beta (attention logits x beta)")
    ax.set_ylabel("held-out loss (nats/token)")
    ax.set_title(f"DroPE logit scale: fitted beta = 1 + {c:.3f}·ln(s) (dotted)")
    ax.legend(title="context length")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
