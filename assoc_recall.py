"""
The smallest setting where a key lookup must be learned: multi-query associative recall (MQAR; Arora et al. 2023,
"Zoology", arXiv 2312.04927) with model.py's GPT, at several learning rates side by side.

    python assoc_recall.py                       # 2 pairs, 2 layers, lr 2e-3, 1e-3, 5e-4, 2.5e-4: ~3 minutes
    python assoc_recall.py --pairs 4 --lrs 5e-4 --steps 3000

A row is n key-value pairs of single tokens, then the same keys in another order, each followed by its value:

    k1 v1 k2 v2 ... kn vn | k_a v_a k_b v_b ...       (keys from KEYS, values from VALUES, fresh in every row)

Only the answers are scored (their loss weight 1, every other token 0). The first query is the one that needs the
lookup: the later ones can also be answered by elimination (the values not given yet), which a model learns first.
So the accuracy of the first query is printed: chance is 1/n until the two-layer circuit of tests/test_key_lookup.py
forms (a head that copies each value's key into it, and one that matches the asked key against those copies). The
multi-key needle of the NIAH drills (data/niah.py) needs the same circuit, with the key a few tokens before the value.
AdamW as train.py sets it (β = 0.9, 0.95, weight decay 0.1 on matrices, clipping at 1), a constant rate after a
100-step warmup; one thread, so the runs are the same on every machine up to rounding.
"""
import argparse
import time

import torch

from cli import ArgumentParser, check_minimum, parse_list
from model import GPT, GPTConfig

KEYS = range(100, 164)    # token ids the keys are drawn from (distinct in a row)
VALUES = range(200, 264)  # token ids the values are drawn from
VOCAB = 856               # the embedded tokenizer's size, so the model is the one config/niah_cpu.py trains
WARMUP = 100              # linear warmup steps, as train.py's default


def recall_batch(rows, pairs, generator):
    """(x, y, weights) of `rows` MQAR rows, each [rows, 4·pairs − 1]; weights are 1 at the answers."""
    keys = torch.stack([torch.randperm(len(KEYS), generator=generator)[:pairs] for _ in range(rows)]) + KEYS[0]
    values = torch.randint(len(VALUES), (rows, pairs), generator=generator) + VALUES[0]      # [rows, pairs]
    order = torch.stack([torch.randperm(pairs, generator=generator) for _ in range(rows)])
    facts = torch.stack([keys, values], -1).flatten(1)                                      # k1 v1 k2 v2 ...
    queries = torch.stack([keys.gather(1, order), values.gather(1, order)], -1).flatten(1)  # k_a v_a ...
    seq = torch.cat([facts, queries], 1)                                                     # [rows, 4·pairs]
    weights = torch.zeros(rows, seq.shape[1] - 1)
    weights[:, 2 * pairs::2] = 1.0  # the targets at the query keys are their values
    return seq[:, :-1], seq[:, 1:], weights


def train_recall(lr, args):
    """Trains a fresh GPT at learning rate lr; yields (step, first-query accuracy, all-query accuracy) on held-out rows
    every --every steps."""
    torch.manual_seed(args.seed)
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=4 * args.pairs, n_layer=args.n_layer, n_head=args.n_head,
                          n_embd=args.n_embd, pe="rope"))
    params = list(model.parameters())
    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
                                   {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                                  lr=lr, betas=(0.9, 0.95))
    data, held_out = torch.Generator().manual_seed(args.seed), torch.Generator().manual_seed(args.seed + 1)
    test = recall_batch(512, args.pairs, held_out)
    for step in range(args.steps + 1):
        if step % args.every == 0:
            with torch.no_grad():
                logits, _ = model(test[0])
            right = logits.argmax(-1) == test[1]                                              # [512, T]
            first = right[:, 2 * args.pairs].float().mean().item()
            every = (right.float() * test[2]).sum().item() / test[2].sum().item()
            yield step, first, every
        if step == args.steps:
            return
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / WARMUP)
        x, y, w = recall_batch(args.batch_size, args.pairs, data)
        _, loss = model(x, y, weights=w)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()


def main(argv=None):
    p = ArgumentParser(prog="assoc_recall.py", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lrs", default="2e-3,1e-3,5e-4,2.5e-4", help="comma list of peak learning rates, one run each")
    p.add_argument("--pairs", type=int, default=2, help="key-value pairs per row (chance is 1/pairs)")
    p.add_argument("--steps", type=int, default=1500, help="optimiser steps per run")
    p.add_argument("--batch_size", type=int, default=64, help="rows per step")
    p.add_argument("--n_layer", type=int, default=2, help="transformer blocks (two suffice for the lookup)")
    p.add_argument("--n_head", type=int, default=4, help="attention heads per block")
    p.add_argument("--n_embd", type=int, default=128, help="residual width: config/niah_cpu.py's")
    p.add_argument("--every", type=int, default=250, help="steps between accuracy readings")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    lrs = parse_list(args.lrs, float, "lrs")
    if not all(lr > 0 for lr in lrs):
        raise SystemExit(f"error: --lrs {args.lrs!r}: every learning rate must be > 0")
    check_minimum(args, 1, ("pairs", "steps", "batch_size", "n_layer", "n_head", "n_embd", "every"))
    if args.pairs > len(KEYS):
        raise SystemExit(f"error: --pairs {args.pairs}: at most {len(KEYS)} distinct keys")
    if args.n_embd % args.n_head:
        raise SystemExit(f"error: --n_embd {args.n_embd} must be a multiple of --n_head {args.n_head}")
    torch.set_num_threads(1)
    print(f"MQAR, {args.pairs} pairs per row (chance of the first query: {100 / args.pairs:.0f}%), GPT of "
          f"{args.n_layer} layers x d={args.n_embd}, {args.batch_size} rows a step")
    curves = {}
    for lr in lrs:
        start = time.time()
        for step, first, every in train_recall(lr, args):
            curves.setdefault(lr, []).append((step, first))
            print(f"lr {lr:g} | step {step:5d} | first query {100 * first:5.1f}% | every query {100 * every:5.1f}% | "
                  f"{time.time() - start:.0f}s", flush=True)
    print("\nfirst-query accuracy %, by step:")
    steps = [s for s, _ in curves[lrs[0]]]
    print(f"{'lr':>8s}" + "".join(f"{s:>7d}" for s in steps))
    for lr, curve in curves.items():
        print(f"{lr:8g}" + "".join(f"{100 * a:7.0f}" for _, a in curve))
    return curves


if __name__ == "__main__":
    main()
