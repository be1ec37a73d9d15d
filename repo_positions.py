"""
RePo's learned positions, seen: z of every RePo layer and head against the token index on a needle-in-a-haystack
prompt (or any text), as a figure (the asked needle and the question shaded) and per-head statistics.

    python repo_positions.py --ckpt out/repo_cont/ckpt.pt      # positions.png beside the checkpoint

Per head it prints the spread (max − min z), the fraction of monotone steps and the correlation with the index:
RoPE's positions would give spread T − 1, 1.0 and 1.0.
"""
import argparse
import os
import random

import torch

from cli import DEVICE_HELP, ArgumentParser, check_minimum, load_checkpoint, parse_list, resolve_device
from data.format import checkpoint_data_dir, load_tokenizer, load_tokens
from data.niah import VARIANTS, WORDINGS, make_sample
from model import GPT
from plots import plt, save_figure
from repo import RePo



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
    p = ArgumentParser(prog="repo_positions.py", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="a RePo checkpoint (train.py --pe repo)")
    p.add_argument("--text", default="", help="default: a NIAH prompt (--variant) at --length tokens")
    p.add_argument("--variant", default="multikey", choices=VARIANTS, help="the NIAH prompt")
    p.add_argument("--length", type=int, default=0, help="tokens of the NIAH prompt; default: training length")
    p.add_argument("--layers", default="", help="comma list of RePo layers (0-based); default: all")
    p.add_argument("--out", default="", help="the PNG; default: positions.png beside the checkpoint")
    p.add_argument("--seed", type=int, default=0, help="which NIAH prompt")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    args = p.parse_args(argv)
    check_minimum(args, 0, ("length", "seed"))  # --length 0: the training length
    args.layers = parse_list(args.layers, int, "layers") if args.layers else []
    args.device = resolve_device(args.device)
    return positions_command(args)


if __name__ == "__main__":
    main()
