"""
DroPE's step 4: fit c of the logit scale beta = 1 + c·ln(s) on held-out rows, and store it in the checkpoint.

    python drope_fit.py --ckpt out/drope/ckpt.pt     # the DroPE recipe of drope.py; then eval_niah.py uses "fitted"

The paper fits beta on held-out data of the distribution the model was trained on. --rows_from training (the
default) does that: a run trained on retrieval drills (config/niah_cpu.py) is fitted on new drills of each length,
with its training loss (answers weighted by its answer_weight, anonymised names not predicted); a run trained on text
on windows of the held-out text (the val split), as --rows_from text always does. For each length s·L (--lengths) the
held-out loss is searched over beta (search_beta below: a grid, extended past an end while the best sits there,
then refined), and c is the least-squares fit through the best betas (fit_c). The checkpoint gets
model_config["logit_scale_c"] = c and the curves; beta_fit.png is written beside it.
"""
import argparse
import math
import os

import numpy as np
import torch

from cli import DEVICE_HELP, ArgumentParser, check_minimum, load_checkpoint, parse_list, resolve_device
from data.drills import DrillMaker
from data.format import checkpoint_data_dir, get_batch, load_tokens, write_atomic
from drope import DroppedPositionalEncoding, logit_scale
from model import GPT
from plots import plt, save_figure
from train import train_batch

ROWS_FROM = ("training", "text")


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


def main(argv=None):
    p = ArgumentParser(prog="drope_fit.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="a DroPE checkpoint (train.py --pe drope); c is written into it")
    p.add_argument("--lengths", default="2,4,8", help="context lengths, as multiples (> 1) of the training length")
    p.add_argument("--betas", default="0.8,2.5,0.05", help="the first beta grid: start,stop,step (stop included); "
                   "extended past an end while the best is there, then refined around the best")
    p.add_argument("--rows", type=int, default=32, help="held-out sequences per length (the same for every beta)")
    p.add_argument("--batch_size", type=int, default=8, help="sequences per forward pass")
    p.add_argument("--rows_from", default="training", choices=ROWS_FROM,
                   help="training: rows like the run's training rows (new drills if it trained on them, else held-out "
                        "text); text: windows of the held-out text")
    p.add_argument("--data_dir", default=None, help="held-out data; default: the checkpoint's dataset")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--seed", type=int, default=0, help="which held-out windows")
    args = p.parse_args(argv)
    check_minimum(args, 1, ("rows", "batch_size"))
    check_minimum(args, 0, ("seed",))
    multiples = parse_list(args.lengths, float, "lengths")
    if not min(multiples) > 1:
        raise SystemExit(f"error: --lengths {args.lengths!r} must be multiples > 1 of the training length")
    grid = parse_list(args.betas, float, "betas")
    if len(grid) != 3 or not 0 < grid[0] < grid[1] or not grid[2] > 0:
        raise SystemExit(f"error: --betas {args.betas!r} must be start,stop,step with 0 < start < stop and step > 0, "
                         f"e.g. 0.8,2.5,0.05")
    start, stop, step = grid
    betas = np.round(np.arange(start, stop + step / 2, step), 6).tolist()
    args.device = resolve_device(args.device)
    ckpt = load_checkpoint(args.ckpt)
    if ckpt["model_config"]["pe"] != "drope":
        raise SystemExit(f"error: {args.ckpt} has pe={ckpt['model_config']['pe']!r}; beta is fitted for pe='drope'")
    data_dir = checkpoint_data_dir(ckpt, args.data_dir)
    val = load_tokens(data_dir, "val")
    model = GPT.from_checkpoint(ckpt, args.device)
    train_len = model.config.block_size

    options = ckpt.get("options", {})
    on_drills = args.rows_from == "training" and options.get("niah_mix", 0) > 0
    drills = DrillMaker(data_dir, shape={"needles": options.get("drill_needles", 3),
                                         "shared_wording": options.get("shared_wording", 0.0)}) if on_drills else None
    batches = {}  # per length: inputs, targets [rows, length], the loss weights and name slots (None on text)
    for m in multiples:
        gen = torch.Generator().manual_seed(args.seed)
        if on_drills:  # train.py's batch with every row a drill of this length, from seeds it never drew
            batch = train_batch(val, {**options, "batch_size": args.rows, "niah_mix": 1.0}, int(m * train_len),
                                gen, drills)
        else:
            batch = (*get_batch(val, args.rows, int(m * train_len), gen), None, None)
        batches[m] = [None if t is None else t.to(args.device) for t in batch]
    print(f"rows: {args.rows} per length, " + ("new retrieval drills, weighted as in training" if on_drills
                                               else "windows of the held-out text"))
    def loss(m, beta):
        x, y, weights, names = batches[m]
        return loss_at(model, x, y, beta, args.batch_size, weights, names)

    curves, best, interior = [], [], []
    for m in multiples:
        beta, tried, inside = search_beta(lambda b: loss(m, b), betas, step)
        curves.append(sorted(tried.items()))
        best.append(beta)
        interior.append(inside)
        unscaled = loss(m, 1.0)
        where = "interior" if inside else f"AT THE EDGE of the search ({BETA_LIMITS[0]}-{BETA_LIMITS[1]})"
        print(f"{m:g}x ({int(m * train_len)} tokens): loss {unscaled:.4f} at beta 1, best {tried[beta]:.4f} at beta "
              f"{beta:.3f} ({where}; {len(tried)} betas tried, {min(tried):g}-{max(tried):g})", flush=True)
    c = fit_c(multiples, best)
    fitted = [loss(m, logit_scale(c, m, 1)) for m in multiples]
    print(f"fitted c = {c:.4f}: beta = " + ", ".join(f"{logit_scale(c, m, 1):.3f} at {m:g}x (loss {f:.4f})"
                                                    for m, f in zip(multiples, fitted)))

    ckpt["model_config"]["logit_scale_c"] = c
    ckpt["logit_scale_fit"] = {"multiples": multiples, "curves": curves, "best_betas": best, "interior": interior,
                               "c": c, "rows": args.rows, "seed": args.seed,
                               "rows_from": "drills" if on_drills else "text"}
    write_atomic(args.ckpt, lambda tmp: torch.save(ckpt, tmp))
    figure = os.path.join(os.path.dirname(args.ckpt), "beta_fit.png")
    plot_fit(multiples, curves, c, figure)
    print(f"stored c in {args.ckpt}; wrote {figure}")
    return c


if __name__ == "__main__":
    main()
