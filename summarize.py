r"""
The study's summary: eval_niah.py's results.json files (reproduce.sh writes one per arm) become one Markdown table
of every method and one accuracy-vs-length figure.

    python summarize.py results/cpu/*/results.json --out_dir results/cpu --command "bash reproduce.sh cpu"

It writes to --out_dir:
- results.md: for each needle variant, haystack and set of wordings, a table with one row per checkpoint[+setting]
  (eval_niah.py's labels: the checkpoint's directory, then a RoPE scaling, a DroPE beta or FwPKM reading passes):
  the checkpoint's final validation loss (train.py's, on held-out text at the training length) and the NIAH exact
  match % (teacher-forced value-token accuracy %) at every length, the mean over depths and samples. Above the
  tables: the command, and the date, machine and torch version of every evaluation.
  A label found in several files is one arm trained with several seeds (reproduce.sh's SEED=, same directory
  name): its row gives the mean over the seeds and, in brackets, the lowest and highest seed, and its name how many
  seeds answer ≥ 50% at the shortest length (a mean over seeds that learned the lookup and seeds that did not is
  not a result), and, where the multi-key needle was evaluated too, how many answer it: only the key tells its
  asked needle from the others, so a seed that finds a needle but not the asked key's scores its chance level
  (25%, said beside its table). The val loss and the probe's step come from the checkpoints, or where a checkpoint
  is not on the machine from the record eval_niah.py keeps of it in results.json; where neither is there
  (results.json files older than that record), the val loss says over how many seeds it is the mean, and the
  probe's step is "?" for those seeds.
  DroPE evaluated with its fitted c (eval_niah.py --logit_scale_c fitted) is one row, "<arm>+fitted beta", with the
  c of each seed.

    python summarize.py results/cpu/{rope,repo_cont}/results.json results/cpu/seed*/{rope,repo_cont}/results.json \
        --out_dir results/cpu/seeds --command "bash reproduce.sh cpu; SEED=2 ...; SEED=3 ..."
- accuracy_vs_length.png: every row as a line (eval_niah.plot_accuracy), with the same caption.
- headline.md and headline.png, where the results hold the study's arms: README's table and figure, each method at
  its paper's setting (HEADLINE), single and multi-key needle, held-out wordings, mean over seeds with the lowest
  and highest seed (a band in the figure), and the multi-key needle's chance level.
"""
import argparse
import json
import os

import numpy as np
import torch

from cli import ArgumentParser, check_writable_dir
from data.format import write_atomic
from data.niah import MULTIKEY_CHANCE
from plots import line_style, plot_accuracy, plt, save_figure


def load_results(paths):
    """([run info of each file], [every result of every file]) from eval_niah.py's results.json files; each run info
    holds the file's training record of its checkpoints ("training": {checkpoint: val loss and probe history})."""
    runs, results = [], []
    for path in paths:
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as e:  # missing, unreadable, or not JSON
            raise SystemExit(f"error: {path} cannot be read as eval_niah.py's results.json "
                             f"({getattr(e, 'strerror', None) or e})") from None
        if not isinstance(data, dict) or not data.get("results"):
            raise SystemExit(f"error: {path} is not eval_niah.py's results.json (no results in it)")
        runs.append({"file": os.path.relpath(path), **data.get("run", {}),  # without a "run" record: only its name
                     "training": data.get("training", {})})  # older files: none
        for r in data["results"]:
            r = {**r, "source": path}  # the file tells one seed from another
            if fitted_beta(r, data.get("args", {})):  # one row for every seed's fitted c, which differ
                r.update(label=r["label"].split("+beta")[0] + "+fitted beta", fitted_c=r["logit_scale_c"])
            results.append(r)
    return runs, results


def fitted_beta(result, args):
    """Whether a DroPE result was evaluated with the c that drope.py fitted (eval_niah.py --logit_scale_c fitted):
    its c is not one of the numbers the evaluation listed."""
    listed = args.get("logit_scale_c") or []
    return (result.get("pe") == "drope" and "fitted" in listed
            and result["logit_scale_c"] not in [c for c in listed if c != "fitted"])


ANSWERS = 50  # % exact at the shortest length that counts a seed as answering (the seeds' count in a row's name)
LEARNED = 75  # % exact of train.py's NIAH probe (9 of its 12 held-out samples) that counts as the lookup learned


def checkpoint_history(ckpt_path, recorded):
    """The loss history train.py stored in the checkpoint; where the checkpoint is not on this machine, the part of
    it that eval_niah.py recorded in results.json (recorded: {checkpoint: history}), else {}."""
    if not os.path.isfile(ckpt_path):
        return recorded.get(ckpt_path, {})
    return torch.load(ckpt_path, map_location="cpu", weights_only=True).get("history", {})


def learned_at(history):
    """The first step at which the probe reached LEARNED % ("no (best N%)" if never), or None without a probe."""
    if not history.get("probe_iter"):
        return None
    steps = [it for it, exact in zip(history["probe_iter"], history["probe_exact"]) if exact >= LEARNED]
    return str(steps[0]) if steps else f"no (best {max(history['probe_exact']):.0f}%)"


def exact_per_seed(rows, m):
    """{seed (its results file): mean exact match % at length multiple m} of one label's rows."""
    seeds = dict.fromkeys(r["source"] for r in rows if r["multiple"] == m)
    return {s: 100 * np.mean([r["exact"] for r in rows if r["multiple"] == m and r["source"] == s]) for s in seeds}


def markdown_tables(results, losses, learned):
    """One Markdown table per (variant, haystack, wordings): rows are labels, columns val loss, the step the probe
    says the lookup was learned at (learned: {checkpoint: learned_at}, of the runs with a probe), and the lengths."""
    lengths = sorted({r["multiple"] for r in results})
    lines = []
    keyed = [r for r in results if r["variant"] == "multikey"]
    # (label, haystack, wordings) -> the multi-key needle's exact % per seed at the shortest length
    multikey = {key: exact_per_seed([r for r in keyed if (r["label"], r["haystack"], r["wordings"]) == key], lengths[0])
                for key in dict.fromkeys((r["label"], r["haystack"], r["wordings"]) for r in keyed)}
    for variant, haystack, wordings in dict.fromkeys((r["variant"], r["haystack"], r["wordings"]) for r in results):
        rows = [r for r in results if (r["variant"], r["haystack"], r["wordings"]) == (variant, haystack, wordings)]
        header = []
        for m in lengths:
            tokens = {r["length"] for r in rows if r["multiple"] == m}
            header.append(f"{m}x ({tokens.pop()})" if len(tokens) == 1 else f"{m}x")  # checkpoints may differ in L
        depths = len({r["depth"] for r in rows})
        per_length = {m: {r["n"] for r in rows if r["multiple"] == m} for m in lengths}
        samples = rows[0]["n"] if len(set().union(*per_length.values())) == 1 else "(" + ", ".join(  # apart
            f"{'/'.join(map(str, sorted(n)))} at {m}x" for m, n in per_length.items() if n) + ")"
        chance = (f" Chance: {100 * MULTIKEY_CHANCE:.0f}% (the value of any one of the needles, not the asked "
                  f"key's)." if variant == "multikey" else "")
        lines += [f"### {variant} needle, {haystack} haystack, {wordings} wordings", "",
                  f"Exact match % (teacher-forced value-token accuracy %), mean over {depths} depths x {samples} "
                  f"samples.{chance}", "",
                  "| method | val loss | " + (f"probe ≥ {LEARNED}% at step | " if learned else "")
                  + " | ".join(header) + " |",
                  "| --- " * (2 + bool(learned) + len(lengths)) + "|"]
        for label in dict.fromkeys(r["label"] for r in rows):
            mine = [r for r in rows if r["label"] == label]
            seeds = list(dict.fromkeys(r["source"] for r in mine))
            known = [losses[ckpt] for ckpt in dict.fromkeys(r["ckpt"] for r in mine) if losses.get(ckpt) is not None]
            cells, at_first = [], []
            for m in lengths:
                # per seed: the mean over depths and samples; then the mean (and range) over seeds
                per_seed = [(100 * np.mean([r["exact"] for r in cell]), 100 * np.mean([r["token"] for r in cell]))
                            for cell in ([r for r in mine if r["multiple"] == m and r["source"] == s] for s in seeds)
                            if cell]
                if not per_seed:
                    cells.append("")
                    continue
                exact, token = np.array(per_seed).T
                at_first = at_first or list(exact)  # per seed, at the shortest length evaluated
                spread = f" [{exact.min():.0f}-{exact.max():.0f}]" if len(exact) > 1 else ""
                cells.append(f"{exact.mean():.0f}{spread} ({token.mean():.1f})")
            # how many seeds answer at all at the shortest length: a mean over seeds that did and seeds that did not
            # is no result
            notes = [f"{len(seeds)} seeds, {sum(e >= ANSWERS for e in at_first)} ≥ {ANSWERS}% at {lengths[0]}x"
                     ] if len(seeds) > 1 else []
            keyed = multikey.get((label, haystack, wordings), {})
            if notes and variant != "multikey" and keyed:  # the seeds that also look up the key
                notes[0] += f" ({sum(e >= ANSWERS for e in keyed.values())} of {len(keyed)} on the multi-key needle)"
            if "fitted_c" in mine[0]:  # the c of each seed
                notes.append("c = " + ", ".join(f"{next(r['fitted_c'] for r in mine if r['source'] == s):.3g}"
                                                for s in seeds))
            name = f"{label} ({'; '.join(notes)})" if notes else label
            loss = f"{np.mean(known):.3f}" if known else ""
            if known and len(known) < len(seeds):  # some seeds have neither checkpoint nor record here
                loss += f" ({len(known)} of {len(seeds)} seeds)"
            # the probe's step per seed; "?" where neither its checkpoint nor its record is here
            steps = ", ".join(learned.get(ckpt, "?") for ckpt in dict.fromkeys(r["ckpt"] for r in mine))
            lines.append(f"| {name} | {loss} | " + (f"{steps} | " if learned else "") + " | ".join(cells) + " |")
        lines.append("")
    return lines


# README's headline: each method at its paper's setting, (the study's label, the name a reader knows)
HEADLINE = (
    ("rope", "RoPE"),
    ("rope+yarn", "RoPE + YaRN"),
    ("nope", "NoPE"),
    ("drope_late+fitted beta", "DroPE (dropped at 87.5%, fitted β)"),
    ("repo_cont+yarn", "RePo + YaRN (continued from RoPE)"),
    ("pkm_ffn", "static PKM (in place of an MLP)"),
    ("fwpkm_paper+yarn+3reads+writes_at_end", "FwPKM + YaRN (its paper's query and reading, 3 passes)"),
)
HEADLINE_WORDINGS = "heldout"  # wordings no drill used: the lookup, not a memorised phrase


def per_seed_exact(results, label, variant, lengths):
    """[seeds, lengths] exact match % of one label on one variant (held-out wordings, first haystack)."""
    rows = [r for r in results if r["label"] == label and r["variant"] == variant
            and r["wordings"] == HEADLINE_WORDINGS and r["haystack"] == results[0]["haystack"]]
    seeds = list(dict.fromkeys(r["source"] for r in rows))
    return np.array([[100 * np.mean([r["exact"] for r in rows if r["source"] == s and r["multiple"] == m])
                      for m in lengths] for s in seeds]).reshape(len(seeds), len(lengths))


def headline(results, out_dir):
    """headline.md (README's table) and headline.png: the methods of HEADLINE found in results, on the single and
    the multi-key needle, held-out wordings: per length the mean over seeds, the lowest and highest seed, and how
    many seeds answer ≥ ANSWERS% at the shortest length. Returns the paths written ([] if no HEADLINE label is in
    results)."""
    found = [(label, name) for label, name in HEADLINE if any(r["label"] == label for r in results)]
    if not found:
        return []
    lengths = sorted({r["multiple"] for r in results})
    variants = [v for v in ("single", "multikey") if any(r["variant"] == v for r in results)]
    chance = 100 * MULTIKEY_CHANCE
    cols = [f"{v} {m}x" for v in variants for m in lengths]  # "single 1x", ..., "multikey 8x"
    lines = [f"Exact match %, held-out wordings: the mean over seeds [the lowest and highest seed]; seeds: how many, "
             f"and in brackets how many answer ≥ {ANSWERS}% of single needles at {lengths[0]}x. The multi-key "
             f"needle's chance level is {chance:.0f}% (the value of any one of its needles).", "",
             "| method | seeds (≥ 50% at 1x) | " + " | ".join(c.replace("multikey", "multi-key") for c in cols) + " |",
             "| --- " * (2 + len(cols)) + "|"]
    fig, axes = plt.subplots(1, len(variants), figsize=(6 * len(variants) + 3, 4.2), squeeze=False, sharey=True,
                             layout="constrained")
    for i, (label, name) in enumerate(found):
        cells, count = [], ""
        colour, marker = line_style(2 * i)
        for ax, variant in zip(axes[0], variants):
            exact = per_seed_exact(results, label, variant, lengths)  # [seeds, lengths]
            if not len(exact):
                cells += [""] * len(lengths)
                continue
            if variant == "single":
                count = f"{len(exact)} ({sum(exact[:, 0] >= ANSWERS)})"
            for j in range(len(lengths)):
                spread = f" [{exact[:, j].min():.0f}-{exact[:, j].max():.0f}]" if len(exact) > 1 else ""
                cells.append(f"{exact[:, j].mean():.0f}{spread}")
            seeds = f"{len(exact)} seed" + ("s" if len(exact) > 1 else "")
            ax.plot(lengths, exact.mean(0), marker + "-", color=colour, label=f"{name} ({seeds})")
            if len(exact) > 1:
                ax.fill_between(lengths, exact.min(0), exact.max(0), color=colour, alpha=0.15, lw=0)
        lines.append(f"| {name} | {count} | " + " | ".join(cells) + " |")
    for ax, variant in zip(axes[0], variants):
        if variant == "multikey":
            ax.axhline(chance, color="black", lw=1, ls=":", label=f"chance ({chance:.0f}%: any needle's value)")
        ax.set_xscale("log", base=2)
        tokens = sorted({r["length"] for r in results if r["multiple"] == lengths[0]})
        ax.set_xticks(lengths, [f"{m}x" for m in lengths])
        ax.set_xlabel(f"context length, in training lengths (1x = {tokens[0]} tokens)")
        ax.set_ylim(-3, 103)
        ax.set_title({"single": "one needle: find it",
                      "multikey": "four needles, one wording: find the asked key's"}[variant], fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("exact match % (held-out wordings)")
    handles = {h.get_label(): h for ax in axes[0] for h in ax.get_lines()}
    fig.legend(handles.values(), handles.keys(), loc="outside right upper", fontsize=8,
               title="mean over seeds; band: lowest to highest seed", title_fontsize=8)
    png, md = os.path.join(out_dir, "headline.png"), os.path.join(out_dir, "headline.md")
    save_figure(fig, png)

    def write(tmp):
        with open(tmp, "w") as f:
            f.write("\n".join(lines) + "\n")
    write_atomic(md, write)
    return [md, png]


def main(argv=None):
    p = ArgumentParser(prog="summarize.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="eval_niah.py's results.json files, in the order of the table's rows")
    p.add_argument("--out_dir", required=True, help="where results.md and accuracy_vs_length.png go")
    p.add_argument("--command", default="", help="the command that made the results, for the record")
    args = p.parse_args(argv)
    runs, results = load_results(args.results)
    check_writable_dir(args.out_dir, "--out_dir")
    recorded = {ckpt: history for run in runs for ckpt, history in run["training"].items()}
    histories = {path: checkpoint_history(path, recorded) for path in dict.fromkeys(r["ckpt"] for r in results)}
    losses = {ckpt: h["val_loss"][-1] for ckpt, h in histories.items() if h.get("val_loss")}
    learned = {ckpt: step for ckpt, h in histories.items() if (step := learned_at(h)) is not None}

    def distinct(key):
        return ", ".join(dict.fromkeys(run.get(key, "not recorded") for run in runs))
    dates = sorted(run["date"] for run in runs if "date" in run)
    when = f"{dates[0]} to {dates[-1]}" if dates else "not recorded"
    caption = f"{args.command or 'eval_niah.py'} | {distinct('machine')} | torch {distinct('torch')} | {when}"
    lines = ["# Needle in a haystack: every method beyond its training length", "",
             *([f"Made by `{args.command}`."] if args.command else []),
             f"Evaluated {when} on {distinct('machine')}, torch {distinct('torch')}. Val loss: the last validation "
             f"loss in each checkpoint (train.py, held-out text at the training length).", "",
             "![accuracy vs length](accuracy_vs_length.png)", "",
             *(["![the NIAH probe over training](probe.png)", ""] if learned else []),
             *markdown_tables(results, losses, learned),
             "Evaluation commands:", "",
             *(f"- `{run.get('command', 'not recorded')}` ({run.get('date', 'no date')}): {run['file']}"
               for run in runs), ""]
    path = os.path.join(args.out_dir, "results.md")

    def write(tmp):
        with open(tmp, "w") as f:
            f.write("\n".join(lines))
    write_atomic(path, write)
    plot_accuracy(results, sorted({r["multiple"] for r in results}),
                  os.path.join(args.out_dir, "accuracy_vs_length.png"), caption)
    written = [path, os.path.join(args.out_dir, "accuracy_vs_length.png")]
    if learned:
        probed = {ckpt: histories[ckpt] for ckpt in learned}
        written.append(plot_probes(probed, results, os.path.join(args.out_dir, "probe.png"), caption))
    written += headline(results, args.out_dir)
    print("\n".join(markdown_tables(results, losses, learned)))
    print(f"wrote {', '.join(written)}")


def plot_probes(histories, results, path, caption):
    """The probe's exact match over training steps, one line per checkpoint of histories (each with a probe;
    labelled as in the tables), and a dashed one of the same colour for its multi-key needle where it was probed
    (with that needle's chance level); returns path."""
    fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    labels = {r["ckpt"]: r["label"].split("+")[0] for r in results}
    keyed = False
    for i, (ckpt, history) in enumerate(histories.items()):
        color, marker = line_style(i)
        ax.plot(history["probe_iter"], history["probe_exact"], marker + "-", ms=3, color=color, label=labels[ckpt])
        if len(history.get("probe_multikey", [])) == len(history["probe_iter"]):  # probed since the multi-key needle
            ax.plot(history["probe_iter"], history["probe_multikey"], marker + "--", ms=2, lw=0.8, color=color)
            keyed = True
    ax.axhline(LEARNED, color="gray", lw=0.8, ls=":")
    if keyed:
        ax.axhline(100 * MULTIKEY_CHANCE, color="black", lw=0.8, ls="-.",
                   label=f"multi-key chance ({100 * MULTIKEY_CHANCE:.0f}%)")
    ax.set(xlabel="training step", ylabel="NIAH probe: exact match at 1x (%)", ylim=(-3, 103),
           title="When the lookup is learned (train.py's probe, 12 held-out-wording samples"
                 + ("; solid: single needle, dashed: multi-key needle)" if keyed else ")"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.suptitle(caption, fontsize=8)
    save_figure(fig, path)
    return path


if __name__ == "__main__":
    main()
