"""
RePo: context re-positioning. A tiny network gives every token a learned, real-valued position per head, computed
from its hidden state; RoPE then rotates q and k by those positions instead of the token index.

Li, Zhao, Cai, Sproat, "RePo: Language Models with Context Re-Positioning", arXiv 2512.14391 (ICML 2026);
official code github.com/SakanaAI/repo (an OLMo fork, mode `swigluex_multihead`; no custom kernels).

    python train.py --pe repo                                                  # from scratch
    python train.py --pe repo --init_from out/rope/ckpt.pt --out_dir out/repo_cont  # the paper's protocol
    python repo.py --ckpt out/repo_cont/ckpt.pt                                # plot the learned positions
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

Where: RePo in the layers from ⌈L/3⌉ (1-based) up; the lower layers keep integer RoPE (with RePo in only the lowest
third the paper's model was unstable; with RePo in only a few layers it behaves like RoPE). The paper continues
pretraining an OLMo-2 1B RoPE checkpoint for 50B tokens with fresh f_φ weights: `--init_from` a RoPE checkpoint
here. Beyond the training length it uses RePo + YaRN: a RoPE scaling changes θ_k and the attention factor, so it
applies to learned positions unchanged (eval_niah.py --scaling).

The paper describes the learned positions as "dense": a head's spread (max z − min z) grows with length but stays
far below it, in plateaus, monotone runs and jumps (`python repo.py` plots ours). At initialisation f_φ is near zero
(std-0.02 weights make z ~ 0.002), so RePo layers begin as NoPE and learn their positions.

Also here: "rope_nope", the control with the same layer split (RoPE below, NoPE from ⌈L/3⌉ up), to tell learned
positions apart from merely dropping RoPE in the upper layers.
"""
import argparse
import math
import os
import random

import torch
import torch.nn as nn
import torch.nn.functional as F

from cli import ArgumentParser, check_minimum, load_checkpoint, parse_list, resolve_device
from data.format import checkpoint_data_dir, load_tokenizer, load_tokens
from data.niah import VARIANTS, WORDINGS, make_sample
from model import GPT, NoPositionalEncoding, register_positional
from plots import plt, save_figure
from rope import RotaryEmbedding


def first_repo_layer(n_layer):
    """0-based index of the lowest RePo layer: layer ⌈L/3⌉ counted from 1."""
    return math.ceil(n_layer / 3) - 1


class PositionNetwork(nn.Module):
    """f_φ: h [B, T, C] -> z [B, H, T], one real-valued position per head and token."""

    def __init__(self, config):
        super().__init__()
        d_p = config.n_embd // 8  # the paper's d_p = d/8
        self.gate = nn.Linear(config.n_embd, d_p, bias=False)            # W_g
        self.content = nn.Linear(config.n_embd, d_p, bias=False)         # W_c
        self.to_position = nn.Linear(d_p, config.n_head, bias=False)     # W_z

    def forward(self, h):
        # --- solution: repo position network ---
        # | r = SiLU(h W_g) ⊙ (h W_c) (self.gate, self.content): [B, T, d_p];
        # | z = r W_z (self.to_position) in fp32 with autocast off: [B, T, H]; return z as [B, H, T]
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


register_positional("repo", repo_layer)
register_positional("rope_nope", rope_nope_layer)


# ----------------------------------------------------------------------------------------------------------------
# The learned positions of a checkpoint on a needle-in-a-haystack prompt (or any text): a figure and statistics.

def needle_prompt(enc, data_dir, length, variant, seed):
    """A NIAH sample (data/niah.py) from the validation haystack, in the first seen wording: a needle among
    distractors, then the question."""
    return make_sample(random.Random(seed), enc, load_tokens(data_dir, "val"), length, 0.5, variant, "eval",
                       WORDINGS["seen"][0])


@torch.no_grad()
def learned_positions(model, tokens):
    """{layer index: z [H, T]} for the RePo layers of model on one sequence of token ids."""
    found = {}
    hooks = [block.attn.positional.position_net.register_forward_hook(
        lambda module, args, z, i=i: found.__setitem__(i, z[0].float().cpu()))
        for i, block in enumerate(model.blocks) if isinstance(block.attn.positional, RePo)]
    model(torch.tensor([tokens], device=next(model.parameters()).device))
    for hook in hooks:
        hook.remove()
    return found


def position_stats(z):
    """Per head of z [H, T]: spread (max − min), fraction of steps with z_{i+1} >= z_i, correlation with i."""
    index = torch.arange(z.shape[1], dtype=torch.float32)
    return [{"spread": float(zh.max() - zh.min()), "monotone": float((zh.diff() >= 0).float().mean()),
             "corr": float(torch.corrcoef(torch.stack((zh, index)))[0, 1])} for zh in z]


def plot_positions(positions, marks, path, title):
    layers = sorted(positions)
    n_head = positions[layers[0]].shape[0]
    fig, axes = plt.subplots(len(layers), n_head, figsize=(3.2 * n_head, 2.4 * len(layers)), squeeze=False,
                             sharex=True, layout="constrained")
    for row, layer in enumerate(layers):
        for head in range(n_head):
            ax = axes[row][head]
            ax.plot(positions[layer][head].numpy(), lw=0.8)
            for name, (start, end) in marks.items():
                ax.axvspan(start, end, alpha=0.2, color="tab:red" if name == "needle" else "tab:green")
            ax.set_title(f"layer {layer}, head {head}", fontsize=9)
            ax.grid(alpha=0.3)
            if head == 0:
                ax.set_ylabel("learned position z")
            if row == len(layers) - 1:
                ax.set_xlabel("token index")
    fig.suptitle(f"{title}\nred: the asked needle, green: the question", fontsize=10)
    save_figure(fig, path)


def positions_command(args):
    ckpt = load_checkpoint(args.ckpt)
    model, data_dir = GPT.from_checkpoint(ckpt, args.device), checkpoint_data_dir(ckpt)
    if model.config.pe != "repo":
        raise SystemExit(f"error: {args.ckpt} has pe={model.config.pe!r}; learned positions need pe='repo'")
    enc = load_tokenizer(data_dir)
    length = args.length or model.config.block_size
    if args.text:
        tokens, marks = enc.encode_ordinary(args.text), {}
    else:
        s = needle_prompt(enc, data_dir, length, args.variant, args.seed)
        tokens = s["tokens"][:s["prompt_len"]]
        marks = {"needle": (s["needle_at"], s["needle_at"] + s["needle_len"]),
                 "question": (s["question_at"], s["prompt_len"])}
    positions = learned_positions(model, tokens)
    layers = args.layers or sorted(positions)
    bad = [layer for layer in layers if layer not in positions]
    if bad:
        raise SystemExit(f"error: --layers {bad} are not RePo layers; valid choices: {sorted(positions)}")
    positions = {layer: positions[layer] for layer in layers}
    print(f"{len(tokens)} tokens; per head: spread (max − min z), monotone steps, correlation of z with the index")
    for layer, z in positions.items():
        for head, st in enumerate(position_stats(z)):
            print(f"layer {layer} head {head}: spread {st['spread']:8.2f}  monotone {st['monotone']:.2f}  "
                  f"corr {st['corr']:+.2f}")
    out = args.out or os.path.join(os.path.dirname(args.ckpt), "positions.png")
    plot_positions(positions, marks, out, f"RePo positions, {os.path.basename(os.path.dirname(args.ckpt))}, "
                   f"{len(tokens)} tokens" + (f" ({args.variant} NIAH prompt)" if not args.text else ""))
    print(f"wrote {out}")
    return positions


def main(argv=None):
    p = ArgumentParser(prog="repo.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="a RePo checkpoint (train.py --pe repo)")
    p.add_argument("--text", default="", help="default: a NIAH prompt (--variant) at --length tokens")
    p.add_argument("--variant", default="multikey", choices=VARIANTS, help="the NIAH prompt")
    p.add_argument("--length", type=int, default=0, help="tokens of the NIAH prompt; default: training length")
    p.add_argument("--layers", default="", help="comma list of RePo layers (0-based); default: all")
    p.add_argument("--out", default="", help="the PNG; default: positions.png beside the checkpoint")
    p.add_argument("--seed", type=int, default=0, help="which NIAH prompt")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, mps")
    args = p.parse_args(argv)
    check_minimum(args, 0, ("length", "seed"))  # --length 0: the training length
    args.layers = parse_list(args.layers, int, "layers") if args.layers else []
    args.device = resolve_device(args.device)
    return positions_command(args)


if __name__ == "__main__":
    import repo  # run the imported module's main(): model.py builds layers from its classes, not __main__'s
    repo.main()
