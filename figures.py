"""
The teaching figures: where attention looks on a needle-in-a-haystack prompt, and where FwPKM stores the needle.

    python figures.py    # the study's checkpoints and results (bash reproduce.sh cpu), where they exist
    python figures.py --rope out/study_cpu/rope/ckpt.pt --nope out/study_cpu/nope/ckpt.pt \\
        --drope out/study_cpu/drope_late/ckpt.pt --fwpkm out/study_cpu/fwpkm/ckpt.pt \\
        --results results/cpu/*/results.json --out_dir results/figures

It writes to --out_dir:
- rope_wavelengths.png: the wavelength 2π/θ_i of every rotation pair i of one head (in tokens, log scale) against the
  training length L and 8L, for RoPE and for PI, NTK-aware and YaRN set for 8L (rope.rope_frequencies). Pairs whose
  wavelength exceeds L have not turned a full circle in training: beyond L they reach angles never seen. PI
  stretches every pair by s, NTK-aware mostly the slow ones, YaRN only those slower than L/β_slow turns. The head
  shape and L are the RoPE checkpoint's, else the study's (GPTConfig's head, L = 128 of config/niah_cpu.py).
- attention_maps.png: one prompt per length (eval_niah.py's first sample of a cell: single needle, val haystack,
  seen wording 0, --depth, --seed), the same for every model, read at 1x and 4x the training length L by RoPE
  (plain and with YaRN, factor s = length / L as eval_niah.py sets it), NoPE and DroPE (with the c of beta that
  `python drope_fit.py` stored, eval_niah.py's "fitted"). One head of one layer, chosen as the one whose last prompt
  token (the query that must produce the answer) puts the most attention on the needle for RoPE at 1x. Per model
  and length: that query's attention over the key positions (needle shaded; where the keys reach position L and
  distance L from the query, dotted and dashed), and the attention of the last 64 queries (query x key, log
  colour): at 4x RoPE and YaRN keep it on recent tokens, a soft truncation. Attention is recomputed from the q and
  k the positional modules return (eval_niah.attention_weights), so YaRN's scaling and DroPE's beta count.
- key_lookup.png: for the RoPE checkpoint, one multi-key prompt per length (the asked needle among others in the
  same held-out wording: only the key tells them apart; eval_niah.py's first sample of the cell) at 1x and 4x: the
  attention of the answer's query over the prompt in the head that looks up the key (the most attention on the
  asked needle beyond the most on any other at 1x), the needles shaded, and its mass on each needle as bars, with
  the model's greedy answer. Where the lookup works, the asked needle's bar stands alone; where it stops, the
  bars level out or the attention leaves the needles.
- needle_attention_by_length.png: from eval_niah.py's results.json files, per method (label), the attention mass
  of the answer's first query on the needle (solid) and on as many tokens right before it (dashed), mean over
  heads, depths and samples, against the context length, in the method's layer with the most needle mass at 1x;
  single needle, held-out wordings where the method has them.
- recalibration_sweep.png, where the results hold the study's DroPE sweep (drope_x1_7, drope_x1_2, drope_x1):
  DroPE's single-needle exact match at 1x, 2x and 4x against its recalibration steps (1/7 of the RoPE run's, the
  paper's ratio, 1/2 and 1x), beside the RoPE run it starts from and RoPE kept in layer 0 (rope_nope_cont); over
  several seeds' results, the mean with bars from the lowest to the highest seed.
- fwpkm_slots.png: for an FwPKM checkpoint, on one prompt at 1x, after 1, 2 and 3 reading passes (eval_niah.py
  --iters): the memory slots the needle's value tokens were written to (their writers' top-k read weights, mean
  over the value tokens) against the slots the answer read, with eval_niah.needle_trace's overlap and recall. Attention
  uses the checkpoint's training window when every training step had one (the FwPKM testbed), else --fwpkm_window.

Every input is optional: a figure whose inputs are missing is skipped with a note. An input not given defaults to
the study's (out/study_cpu/{rope,nope,drope_late,fwpkm}/ckpt.pt, results/cpu/*/results.json) when that exists;
`none` leaves it out.
"""
import argparse
import functools
import glob
import math
import os

import numpy as np
import torch
from matplotlib.colors import LogNorm

from cli import DEVICE_HELP, ArgumentParser, check_writable_dir, load_checkpoint, resolve_device
from data.format import checkpoint_data_dir, load_tokenizer, load_tokens
from eval_niah import (attention_stats, attention_weights, cell_samples, exact_match, load_model, needle_trace,
                       settings, start_cache, teacher_forced, value_positions)
from fwpkm import FastWeightProductKeyMemory
from model import GPTConfig
from plots import line_style, plt, save_figure
from rope import rope_frequencies
from summarize import load_results

STUDY = {"rope": "out/study_cpu/rope/ckpt.pt", "nope": "out/study_cpu/nope/ckpt.pt",
         "drope": "out/study_cpu/drope_late/ckpt.pt", "fwpkm": "out/study_cpu/fwpkm/ckpt.pt",
         "results": "results/cpu/*/results.json"}
KINDS = {  # flag -> (what its checkpoint must be, the test on its model_config)
    "rope": ("a RoPE model (train.py --pe rope)", lambda c: c["pe"] == "rope"),
    "nope": ("a NoPE model (train.py --pe nope)", lambda c: c["pe"] == "nope"),
    "drope": ("a DroPE model (train.py --pe drope --init_from ...)", lambda c: c["pe"] == "drope"),
    "fwpkm": ("a model with FwPKM layers (train.py --fwpkm_layers ...)", lambda c: bool(GPTConfig(**c).fwpkm_layers)),
}
MULTIPLES = (1, 4)   # context lengths of attention_maps.png, x the training length
MAP_QUERIES = 64     # the last prompt tokens whose attention the 2-D maps show
PASSES = (1, 2, 3)   # reading passes of fwpkm_slots.png


def checkpoint_of(flag, given):
    """(path, checkpoint) for --flag: the given path, else the study's when it exists; None for 'none' or none."""
    if given == "none" or (given is None and not os.path.isfile(STUDY[flag])):
        return None
    path = given or STUDY[flag]
    ckpt = load_checkpoint(path, f"--{flag}")
    want, ok = KINDS[flag]
    if not ok(ckpt["model_config"]):
        c = ckpt["model_config"]
        raise SystemExit(f"error: --{flag} {path} is not {want}: it has pe={c['pe']!r}, "
                         f"fwpkm_layers={c.get('fwpkm_layers')!r}")
    return path, ckpt


@functools.lru_cache(maxsize=None)
def data_of(data_dir):
    return load_tokenizer(data_dir), load_tokens(data_dir, "val")


def niah_prompt(ckpt, length, args):
    """eval_niah.py's first sample of the cell (single needle, val haystack, seen wordings, depth --depth, seed
    --seed) at `length`: every checkpoint trained on the same data gets the same sample."""
    enc, val = data_of(checkpoint_data_dir(ckpt))
    return cell_samples(enc, val, args.seed, "single", "val", "seen", length, (0, args.depth), 1, "eval")[0]


@torch.no_grad()
def attention_of(ckpt, changes, s, device):
    """Every layer's attention of the last MAP_QUERIES prompt tokens of sample s over the prompt,
    [n_layer, H, Q, prompt_len] (row −1: the answer's first query), from eval_niah.py's teacher-forced pass, and
    eval_niah.attention_stats of the same pass."""
    model = load_model(ckpt, changes, len(s["tokens"]), device)
    _, qk = teacher_forced(model, torch.tensor([s["tokens"]], device=device))
    at = s["prompt_len"] - 1
    queries = range(max(0, at + 1 - MAP_QUERIES), at + 1)
    w = torch.stack([attention_weights(*qk[layer], queries)[0, :, :, :at + 1] for layer in sorted(qk)])
    return w.cpu(), attention_stats(qk, [s])


def needle_mass(w, s):
    """Mass on the needle's tokens of the last query row of w [..., Q, T] -> [...]."""
    return w[..., -1, s["needle_at"]:s["needle_at"] + s["needle_len"]].sum(-1)


def rope_wavelengths(head_dim, base, train_len, path, factor=8):
    """rope_wavelengths.png (module docstring)."""
    fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
    pairs = np.arange(head_dim // 2)
    for i, (scaling, name) in enumerate(((None, "RoPE"), ("pi", f"PI (s = {factor})"),
                                         ("ntk", f"NTK-aware (s = {factor})"), ("yarn", f"YaRN (s = {factor})"))):
        inv_freq, _ = rope_frequencies(head_dim, base, scaling, factor if scaling else 1.0, train_len)
        colour, marker = line_style(2 * i)
        ax.plot(pairs, 2 * math.pi / inv_freq.numpy(), marker=marker, ms=4, color=colour, label=name,
                lw=2.5 if scaling is None else 1.2, ls="-" if scaling is None else "--")
    for length, text in ((train_len, f"L = {train_len} (training length)"),
                         (factor * train_len, f"{factor}L = {factor * train_len}")):
        ax.axhline(length, color="grey", ls=":", lw=1)
        ax.text(0, length * 1.15, text, color="grey", fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel(f"rotation pair i (0 = fastest; head dimension D = {head_dim}, base {base:g})")
    ax.set_ylabel("wavelength 2π/θ_i (tokens)")
    ax.set_title("RoPE's pairs against the training length: the slow pairs never turn a full circle within L",
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def attention_maps(models, args, path):
    """attention_maps.png. models: [(flag, path, ckpt)]. Returns the choice {"layer", "head", "reference"} and
    {(label, multiple): {"sample", "strip" [prompt_len], "map" [Q, prompt_len], "stats"}} for the chosen head."""
    how = argparse.Namespace(scaling=[None, "yarn"], logit_scale_c=["fitted"], iters=[1],  # eval_niah's settings
                             answer_writes=["chunks"])
    names = {flag: os.path.basename(os.path.dirname(os.path.abspath(ckpt_path))) for flag, ckpt_path, _ in models}
    if len(set(names.values())) < len(names):  # eval_niah.py's names (the directories) must tell them apart
        names = {flag: flag for flag in names}
    runs = [(label, ckpt, changes) for flag, _, ckpt in models
            for label, changes, _, _ in settings(ckpt, names[flag], how)]
    panels, weights = {}, {}
    for label, ckpt, changes in runs:
        for m in MULTIPLES:
            s = niah_prompt(ckpt, m * ckpt["model_config"]["block_size"], args)
            weights[label, m], stats = attention_of(ckpt, changes, s, args.device)
            panels[label, m] = {"sample": s, "stats": stats}
    reference = runs[0][0]  # RoPE when given: the head and layer that find the needle where RoPE works
    mass = needle_mass(weights[reference, 1], panels[reference, 1]["sample"])          # [n_layer, H]
    layer, head = divmod(int(mass.argmax()), mass.shape[1])
    for key, w in weights.items():
        if layer >= w.shape[0] or head >= w.shape[1]:
            raise SystemExit(f"error: {key[0]} has {w.shape[0]} layers of {w.shape[1]} heads, no layer {layer} head "
                             f"{head} (chosen on {reference}); give checkpoints of one architecture")
        panels[key].update(strip=w[layer, head, -1], map=w[layer, head])
    fig, axes = plt.subplots(len(runs), 2 * len(MULTIPLES), figsize=(18, 2.6 * len(runs) + 1), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 1.3] * len(MULTIPLES)}, layout="constrained")
    for row, (label, ckpt, _) in zip(axes, runs):
        L = ckpt["model_config"]["block_size"]
        for (ax, ax_map), m in zip(zip(row[::2], row[1::2]), MULTIPLES):
            p = panels[label, m]
            s, at = p["sample"], p["sample"]["prompt_len"] - 1
            needle = (s["needle_at"] - 0.5, s["needle_at"] + s["needle_len"] - 0.5)
            ax.axvspan(*needle, color="gold", alpha=0.5, label="needle")
            for a in (ax, ax_map):
                if a is ax_map:  # the map keeps its colours: the needle's edges only
                    a.vlines(needle, 0, 1, transform=a.get_xaxis_transform(), color="red", lw=0.8)
                if L <= at:
                    a.axvline(L, color="gray", ls=":", label="position L")
                if at + 1 - L >= 0:
                    a.axvline(at + 1 - L, color="gray", ls="--", label="L tokens before the query")
            ax.plot(p["strip"].numpy(), lw=0.8, color="C0")
            ax.set_xlim(-0.5, at + 0.5)
            ax.set_ylim(0, None)
            ax.set_title(f"{label} at {m}x ({len(s['tokens'])} tokens): {100 * needle_mass(p['map'], s):.1f}% on the "
                         f"needle (layer mean {100 * p['stats'][layer][0]:.1f}%)", fontsize=9)
            ax.set_ylabel("attention of the last\nprompt token", fontsize=8)
            q0 = at + 1 - p["map"].shape[0]
            im = ax_map.imshow(p["map"].numpy(), aspect="auto", norm=LogNorm(1e-4, 1), cmap="viridis",
                               extent=(-0.5, at + 0.5, at + 0.5, q0 - 0.5), interpolation="nearest")
            ax_map.set_ylabel("query position", fontsize=8)
            ax_map.set_title(f"last {p['map'].shape[0]} queries", fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("key position")
    axes[0][2 * len(MULTIPLES) - 2].legend(fontsize=7, loc="upper left")
    fig.colorbar(im, ax=axes[:, 1::2].ravel().tolist(), label="attention weight (log)")
    s = panels[reference, 1]["sample"]
    fig.suptitle(f"Layer {layer}, head {head} (the most attention on the needle for {reference} at 1x: "
                 f"{100 * mass[layer, head]:.0f}%), on one prompt per length: single needle at depth {args.depth:g}, "
                 f"seen wording 0, seed {args.seed}; eval_niah.py's sample", fontsize=10)
    save_figure(fig, path)
    return {"layer": layer, "head": head, "reference": reference}, panels


@torch.no_grad()
def key_lookup(path_ckpt, args, path):
    """key_lookup.png for a RoPE checkpoint: one multi-key prompt per length (eval_niah.py's first sample of the cell:
    the asked needle among N_DISTRACTORS in the same wording, val haystack, held-out wording 0, --depth, --seed) at
    1x and 4x. The head shown is the one whose answer query (the last prompt token) puts the most attention on the
    asked needle beyond the most on any distractor at 1x: the head that looks up the key. Returns {"layer", "head"}
    and {multiple: {"sample", "strip" [prompt_len], "masses" [asked, distractors...], "answer"}}."""
    ckpt_path, ckpt = path_ckpt
    enc, val = data_of(checkpoint_data_dir(ckpt))
    L = ckpt["model_config"]["block_size"]
    panels, weights = {}, {}
    for m in MULTIPLES:
        s = cell_samples(enc, val, args.seed, "multikey", "val", "heldout", m * L, (0, args.depth), 1, "eval")[0]
        model = load_model(ckpt, {}, len(s["tokens"]), args.device)
        tokens = torch.tensor([s["tokens"]], device=args.device)
        _, qk = teacher_forced(model, tokens)
        at = s["prompt_len"] - 1
        weights[m] = torch.stack([attention_weights(*qk[layer], [at])[0, :, 0, :at + 1]
                                  for layer in sorted(qk)]).cpu()                          # [n_layer, H, prompt_len]
        answer = model.generate(tokens[:, :s["prompt_len"]], len(s["tokens"]) - s["prompt_len"], temperature=0)
        panels[m] = {"sample": s, "answer": enc.decode(answer[0, s["prompt_len"]:].tolist())}
    masses = {m: torch.stack([w[..., a:a + n].sum(-1) for a, n in panels[m]["sample"]["needles"]], -1)
              for m, w in weights.items()}                                                # [n_layer, H, needles]
    lead = masses[1][..., 0] - masses[1][..., 1:].max(-1).values
    layer, head = divmod(int(lead.argmax()), lead.shape[1])
    fig, axes = plt.subplots(1, 2 * len(MULTIPLES), figsize=(18, 3.8), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 1] * len(MULTIPLES)}, layout="constrained")
    for (ax, ax_bar), m in zip(zip(axes[0][::2], axes[0][1::2]), MULTIPLES):
        p, s = panels[m], panels[m]["sample"]
        p.update(strip=weights[m][layer, head], masses=masses[m][layer, head].tolist())
        for i, (a, n) in enumerate(s["needles"]):
            ax.axvspan(a - 0.5, a + n - 0.5, color="gold" if i == 0 else "silver", alpha=0.6,
                       label="asked needle" if i == 0 else "other keys' needles" if i == 1 else None)
        if L <= s["prompt_len"] - 1:
            ax.axvline(L, color="gray", ls=":", label="position L")
        ax.plot(p["strip"].numpy(), lw=0.8, color="C0")
        ax.set_xlim(-0.5, s["prompt_len"] - 0.5)
        ax.set_ylim(0, None)
        ax.set_xlabel("key position")
        ax.set_ylabel("attention of the\nanswer's query", fontsize=8)
        right = "right" if exact_match(p["answer"], s["values"]) else "wrong"
        ax.set_title(f"{m}x ({len(s['tokens'])} tokens): answers {p['answer']!r}, asked for {s['values'][0]} "
                     f"({right})", fontsize=9)
        bars = 100 * np.array(p["masses"])
        ax_bar.bar(range(len(bars)), bars, color=["gold"] + ["silver"] * (len(bars) - 1))
        ax_bar.set_xticks(range(len(bars)), ["asked"] + [f"other {i}" for i in range(1, len(bars))], fontsize=8)
        ax_bar.set_ylabel("% of the attention", fontsize=8)
        ax_bar.set_title(f"on each needle at {m}x", fontsize=9)
    axes[0][0].legend(fontsize=7, loc="upper left")
    name = os.path.basename(os.path.dirname(os.path.abspath(ckpt_path)))
    fig.suptitle(f"{name}: the key lookup on one multi-key prompt (the asked needle among {len(bars) - 1} in the same "
                 f"held-out wording, depth {args.depth:g}, seed {args.seed}): layer {layer}, head {head}, the head "
                 f"whose answer query leads most on the asked needle at 1x", fontsize=10)
    save_figure(fig, path)
    return {"layer": layer, "head": head}, panels


# the study's recalibration sweep: its arms and their recalibration steps as a share of the RoPE run's
SWEEP = (("drope_x1_7", 1 / 7), ("drope_x1_2", 1 / 2), ("drope_x1", 1.0))


def of_arm(arm, labels):
    """Whether any of eval_niah.py's labels is the arm's: its name, or its name and a setting ("drope_x1+beta0.4");
    drope_x1 is not drope_x1_7."""
    return any(label == arm or label.startswith(arm + "+") for label in labels)


def recalibration_sweep(results, path):
    """recalibration_sweep.png from the study's results: DroPE's single-needle exact match (held-out wordings, with
    its fitted β) at 1x, 2x and 4x (those of them every sweep arm was evaluated at) against the length of its
    recalibration, beside the RoPE run it starts from and rope_nope_cont (RoPE kept in layer 0, recalibrated as
    DroPE). Results of several seeds (files): each point is the mean over the seeds, its bar the lowest to the
    highest seed. Returns {length multiple: [% per sweep arm]}."""
    def per_seed(label, m):  # exact match % of each seed (results file) that has the label
        rows = [r for r in results if r["label"] == label and r["variant"] == "single" and r["wordings"] == "heldout"
                and r["multiple"] == m]
        seeds = dict.fromkeys(r["source"] for r in rows)
        return [100 * float(np.mean([r["exact"] for r in rows if r["source"] == s])) for s in seeds]
    def exact(label, m):
        return float(np.mean(seeds)) if (seeds := per_seed(label, m)) else None
    def span(labels, m):  # error bars from the mean to the lowest and highest seed
        return np.array([[np.mean(v) - min(v), max(v) - np.mean(v)] for v in (per_seed(l, m) for l in labels)]).T
    labels = {r["label"] for r in results}
    arms = [(f"{arm}+fitted beta" if f"{arm}+fitted beta" in labels else arm, share)
            for arm, share in SWEEP if of_arm(arm, labels)]
    n_seeds = max(len(per_seed(label, 1)) for label, _ in arms)
    multiples = [m for m in (1, 2, 4) if all(per_seed(label, m) for label, _ in arms)]  # the lengths evaluated
    fig, ax = plt.subplots(figsize=(9.5, 4.2), layout="constrained")
    lines = {}
    for i, m in enumerate(multiples):
        colour, _ = line_style(2 * i)
        lines[m] = [exact(label, m) for label, _ in arms]
        ax.errorbar([share for _, share in arms], lines[m], yerr=span([label for label, _ in arms], m), fmt="o-",
                    color=colour, capsize=3, label=f"DroPE at {m}x")
        if (rope := exact("rope", m)) is not None:
            ax.axhline(rope, color=colour, ls=":", lw=1, label=f"RoPE before the drop, {m}x")
        if (kept := exact("rope_nope_cont", m)) is not None:
            ax.errorbar([1 / 8], [kept], yerr=span(["rope_nope_cont"], m), fmt="x", ms=9, mew=2, color=colour,
                        capsize=3, label=f"RoPE kept in layer 0, {m}x (1/8)")
    ax.set_xscale("log", base=2)
    ax.set_xticks([1 / 7, 1 / 2, 1], ["1/7", "1/2", "1"])  # rope_nope_cont's 375 steps are 1/8
    ax.set_xlabel("recalibration steps, as a share of the RoPE run's (1/7: the paper's)")
    ax.set_ylabel("exact match %, single needle, held-out")
    ax.set_ylim(-3, 103)
    ax.set_title("DroPE's recalibration sweep: what the drop costs, and what recalibrating wins back", fontsize=10)
    ax.grid(alpha=0.3)
    fig.legend(fontsize=7, loc="outside right upper", title_fontsize=7,
               title=f"mean over {n_seeds} seeds;\nbars: lowest to highest seed" if n_seeds > 1 else "1 seed")
    save_figure(fig, path)
    return lines


def needle_attention_by_length(results, path):
    """needle_attention_by_length.png from eval_niah.py's results. Returns {label: (layer, wordings, multiples,
    needle mass per multiple, nearby mass per multiple)}, as plotted."""
    single = [r for r in results if r["variant"] == "single"]
    if not single:
        raise SystemExit("error: the --results files have no single-needle results (eval_niah.py --variants single)")
    haystack, lines = single[0]["haystack"], {}
    for label in dict.fromkeys(r["label"] for r in single):
        mine = [r for r in single if r["label"] == label and r["haystack"] == haystack]
        wordings = "heldout" if any(r["wordings"] == "heldout" for r in mine) else mine[0]["wordings"]
        mine = [r for r in mine if r["wordings"] == wordings]
        multiples = sorted({r["multiple"] for r in mine})

        def mass(layer, m, i):  # i: 0 needle, 1 nearby (eval_niah.attention_stats)
            return float(np.mean([r["attention"][layer][i] for r in mine if r["multiple"] == m]))
        layer = max(sorted(mine[0]["attention"], key=int), key=lambda layer: mass(layer, multiples[0], 0))
        lines[label] = (layer, wordings, multiples, [mass(layer, m, 0) for m in multiples],
                        [mass(layer, m, 1) for m in multiples])
    fig, ax = plt.subplots(figsize=(10, 7), layout="constrained")
    for i, (label, (layer, wordings, multiples, needle, nearby)) in enumerate(lines.items()):
        color, marker = line_style(i)
        ax.plot(multiples, [100 * x for x in needle], marker + "-", color=color, label=f"{label} L{layer} [{wordings}]")
        ax.plot(multiples, [100 * x for x in nearby], "--", color=color, alpha=0.7)
    ax.set_xscale("log", base=2)
    ticks = sorted({m for line in lines.values() for m in line[2]})
    ax.set_xticks(ticks, [f"{m:g}x" for m in ticks])
    ax.set_xlabel("context length (x training length)")
    ax.set_ylabel("attention mass of the answer's first query, %")
    ax.set_title(f"Attention of the answer's first query (single needle, {haystack} haystack) on the needle (solid) "
                 f"and on as many tokens before it (dashed),\nmean over heads, depths, samples; each method in its layer "
                 f"with the most needle mass at 1x (L<layer>); held-out wordings if it has them", fontsize=9)
    ax.grid(alpha=0.3)
    fig.legend(fontsize=7, loc="outside lower center", ncols=3)
    save_figure(fig, path)
    return lines


def fwpkm_window(ckpt, given):
    """The attention window of fwpkm_slots.png: --fwpkm_window if given (0: full attention), else the checkpoint's
    training window when every step had one (train.py --swa_prob 1, the testbed), else full attention."""
    if given is not None:
        return given or None
    o = ckpt.get("options", {})
    return (o.get("swa_window") or ckpt["model_config"]["memory_chunk"]) if o.get("swa_prob", 0) >= 1 else None


@torch.no_grad()
def fwpkm_slots(ckpt, args, path):
    """fwpkm_slots.png. Returns {(memory name, passes): {"written" [N], "read" [N], "trace"}}: the mean over the
    value tokens of the top-k read weights of the token that wrote each (the writer) and of the answer token that
    reads it back (eval_niah.value_positions), in eval_niah.py's teacher-forced pass after passes − 1 extra reads, and
    eval_niah.needle_trace of that pass."""
    config, window = ckpt["model_config"], fwpkm_window(ckpt, args.fwpkm_window)
    s = niah_prompt(ckpt, config["block_size"], args)
    positions = value_positions(s)
    if not positions:
        raise SystemExit(f"error: the answer of the --fwpkm sample (seed {args.seed}, depth {args.depth}) does not "
                         f"occur in its needle; try another --seed")
    tokens = torch.tensor([s["tokens"]], device=args.device)
    model = load_model(ckpt, {}, tokens.shape[1], args.device)
    memories = {name: m for name, m in model.named_modules() if isinstance(m, FastWeightProductKeyMemory)}
    panels = {}
    for n in PASSES:
        teacher_forced(model, tokens, start_cache(model, tokens, [s], n, window), window)
        trace = needle_trace(model, [s])
        for name, m in memories.items():
            r, slots = m.last_reads, m.initial_values.shape[0]
            written, read = torch.zeros(slots), torch.zeros(slots)
            for _, writer, reader in positions:
                written.index_add_(0, r["slots"][0, writer].cpu(), r["w"][0, writer].float().cpu())
                read.index_add_(0, r["slots"][0, reader].cpu(), r["w"][0, reader].float().cpu())
            panels[name, n] = {"written": written / len(positions), "read": read / len(positions),
                               "trace": trace[name]}
    fig, axes = plt.subplots(len(memories), len(PASSES), figsize=(5.5 * len(PASSES), 3.2 * len(memories) + 0.6),
                             squeeze=False, sharey=True, layout="constrained")
    for row, name in zip(axes, memories):
        for ax, n in zip(row, PASSES):
            p = panels[name, n]
            w, rd = p["written"].numpy(), p["read"].numpy()
            both = np.flatnonzero((w > 0) & (rd > 0))
            ax.vlines(np.flatnonzero(w), 0, w[w > 0], color="C0", lw=2, label="written by the needle")
            ax.vlines(np.flatnonzero(rd), 0, -rd[rd > 0], color="C1", lw=2, label="read by the answer")
            ax.plot(both, np.zeros(len(both)), "k|", ms=14, label="both")
            ax.axhline(0, color="black", lw=0.5)
            ax.set_xlim(-0.5, len(w) - 0.5)
            t = p["trace"]
            ax.set_title(f"{name.replace('blocks.', 'layer ').replace('.sublayers.0', '')}, {n} pass(es): overlap "
                         f"{t['overlap']:.2f}, recall {t['recall']:.2f}, {len(both)} slots shared", fontsize=9)
            ax.set_xlabel("memory slot")
        row[0].set_ylabel("top-k weight, mean over value tokens\n(written up, read down)", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"FwPKM: the slots the needle's value tokens were written to and the answer read, on one prompt "
                 f"({config['block_size']} tokens, single needle, seed {args.seed}, depth {args.depth:g}, attention "
                 f"window {window or 'none'}); overlap and recall: eval_niah.needle_trace", fontsize=10)
    save_figure(fig, path)
    return panels


def main(argv=None):
    p = ArgumentParser(prog="figures.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, kind in KINDS.items():
        p.add_argument(f"--{flag}", default=None, help=f"{kind[0]}: its checkpoint (default: {STUDY[flag]} if it "
                       f"exists; none: leave it out)")
    p.add_argument("--results", nargs="+", default=None, help=f"eval_niah.py's results.json files (default: "
                   f"{STUDY['results']}; none: leave them out)")
    p.add_argument("--out_dir", default="results/figures")
    p.add_argument("--depth", type=float, default=0.5, help="needle depth of the figures' prompts, 0 to 1")
    p.add_argument("--seed", type=int, default=0, help="the sample seed (eval_niah.py's --seed)")
    p.add_argument("--fwpkm_window", type=int, default=None, help="attention window for fwpkm_slots.png (0: full "
                   "attention; default: the checkpoint's training window if every step had one)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    args = p.parse_args(argv)
    if not 0 <= args.depth <= 1:
        raise SystemExit(f"error: --depth {args.depth} must be between 0 and 1")
    if args.fwpkm_window is not None and args.fwpkm_window < 0:
        raise SystemExit(f"error: --fwpkm_window {args.fwpkm_window} must be a number of tokens >= 1, or 0 for full "
                         f"attention")
    args.device = resolve_device(args.device)
    models = {flag: checkpoint_of(flag, getattr(args, flag)) for flag in KINDS}  # every input checked before work
    results_paths = sorted(glob.glob(STUDY["results"])) if args.results is None else args.results
    results = load_results(results_paths)[1] if results_paths and results_paths != ["none"] else None
    attention = [(flag, *models[flag]) for flag in ("rope", "nope", "drope") if models[flag]]
    check_writable_dir(args.out_dir, "--out_dir")
    written = {}
    shape = models["rope"][1]["model_config"] if models["rope"] else {**GPTConfig().to_dict(), "block_size": 128}
    out = os.path.join(args.out_dir, "rope_wavelengths.png")
    rope_wavelengths(shape["n_embd"] // shape["n_head"], shape["rope_base"], shape["block_size"], out)
    written["rope_wavelengths"] = (out,)
    if attention:
        out = os.path.join(args.out_dir, "attention_maps.png")
        written["attention_maps"] = (out, *attention_maps(attention, args, out))
    else:
        print("note: no --rope, --nope or --drope checkpoint: attention_maps.png skipped")
    out = os.path.join(args.out_dir, "key_lookup.png")
    try:
        if models["rope"]:
            written["key_lookup"] = (out, *key_lookup(models["rope"], args, out))
        else:
            print("note: no --rope checkpoint: key_lookup.png skipped")
    except ValueError as e:  # the multi-key needle's four needles and question do not fit the training length
        print(f"note: key_lookup.png skipped: {e}")
    if results:
        out = os.path.join(args.out_dir, "needle_attention_by_length.png")
        written["needle_attention_by_length"] = (out, needle_attention_by_length(results, out))
        if any(of_arm(arm, {r["label"] for r in results}) for arm, _ in SWEEP):
            out = os.path.join(args.out_dir, "recalibration_sweep.png")
            written["recalibration_sweep"] = (out, recalibration_sweep(results, out))
    else:
        where = "" if args.results else f" (none at {STUDY['results']})"
        print(f"note: no --results{where}: needle_attention_by_length.png skipped")
    if models["fwpkm"]:
        out = os.path.join(args.out_dir, "fwpkm_slots.png")
        written["fwpkm_slots"] = (out, fwpkm_slots(models["fwpkm"][1], args, out))
    else:
        print("note: no --fwpkm checkpoint: fwpkm_slots.png skipped")
    for out, *_ in written.values():
        print(f"wrote {out}")
    return written


if __name__ == "__main__":
    main()
