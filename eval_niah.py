"""
Needle-in-a-haystack (NIAH) evaluation at and beyond the training length.

    python eval_niah.py --ckpt out/rope/ckpt.pt --ckpt out/nope/ckpt.pt --scaling none,pi,ntk,yarn

For every checkpoint (and, for checkpoints with RoPE layers, every --scaling) and every context length (multiples
of the checkpoint's training length) and needle depth, it builds --samples needle samples (data/niah.py: the
needle, the question and the answer fill exactly the context length) in each of --wordings:
"seen" (a fixed sample of 20 of the composed wordings the training drills draw from), "heldout" (5 wordings no
drill can make) or one held-out wording alone (heldout1 ... heldout5: which of them a model fails), and scores two
things:

- exact: greedy decoding of the answer, ANSWER_SLACK tokens longer than the expected answer (a model may lead in
  with ":" or " It is" on a wording it never saw, and that is not a retrieval error); the fraction of expected
  values that begin a number of the output (RULER's score; 1 or 0 for one value). Digits run on after a value
  ("52462" for 5246) do not count against it: without the slack, the window of the answer's length cut them off.
- token: teacher-forced accuracy of the value's tokens (the argmax at each value token, given the true prefix):
  less noisy for small models.

and, from the same forward pass, where the answer's first query (the last prompt token) attends in every layer:
the attention mass on the asked needle's tokens, on as many tokens right before the query, and the entropy of its
attention (computed from the q and k the positional modules return, so RoPE scalings and DroPE's beta count).

It prints a table per variant and haystack (rows: checkpoint[+scaling] [wordings], columns: length, cells: mean
exact match over depths) and writes to --out_dir: results.json (every cell, and the date, machine, torch version
and command), heatmaps_<label>_<wordings>.png (depth x length per variant) and accuracy_vs_length.png (one panel
per variant and wordings, one line per checkpoint[+setting]).

RoPE scalings (rope.py) are applied with factor s = length / training length (at least 1), as one would configure
them for each target length; dyn_ntk uses factor 1, so it is NTK-aware scaling computed from the current length.
DroPE checkpoints are evaluated with each --logit_scale_c: "fitted" is the c that `python drope_fit.py` stored in the
checkpoint, 0 turns the logit scale off.
Keys and values come from the evaluation half (data/niah.py): no training drill asks them. --split train draws them
from the drills' half instead; a model that answers those far better has learned its lookup in part per key.
Samples depend only on --seed, the wordings, length, depth, variant, haystack and split, so every checkpoint sees the
same samples. The k-th sample of a (variant, haystack, length) uses wording k mod the set's size, so every wording is
asked; a seen and a held-out sample with the same k share the haystack, keys and values.
"""
import argparse
import itertools
import json
import math
import os
import platform
import random
import re
import shlex
import sys
import time
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from cli import (DEVICE_HELP, ArgumentParser, check_minimum, check_writable_dir, load_checkpoint, parse_list,
                 resolve_device)
from data.format import checkpoint_data_dir, load_tokenizer, load_tokens, write_atomic
from data.niah import HAYSTACKS, MULTIKEY_CHANCE, SPLITS, VARIANTS, WORDINGS, make_sample
from model import GPT, GPTConfig, format_health
from plots import plot_accuracy, plt, save_figure
from fwpkm import FastWeightProductKeyMemory, read_iteratively
from fast_paths import MODES as KERNEL_MODES, check_available
from rope import SCALINGS, RotaryEmbedding

ANSWER_SLACK = 4  # extra greedy tokens for a lead-in before the value (": ", " It is"): a model that answers a
# held-out wording in its own format would otherwise be cut off after " It is 41" and scored as a retrieval failure


def settings(ckpt, name, args):
    """(label, config changes, reading passes, answer writes) for each way to evaluate a checkpoint: every --scaling
    for a model with RoPE layers, every --logit_scale_c for a DroPE model (beta = 1 + c·ln(s), drope.py), and every
    --iters and --answer_writes for a model with FwPKM layers."""
    config = ckpt["model_config"]
    if has_rotary(config):  # RoPE, RePo, rope_nope
        pe = [(name + (f"+{s}" if s else ""), {"rope_scaling": s}) for s in args.scaling]
    elif config["pe"] == "drope":
        cs = dict.fromkeys(config.get("logit_scale_c", 0.0) if c == "fitted" else c for c in args.logit_scale_c)
        pe = [(name + (f"+beta{c:.3g}" if c else ""), {"logit_scale_c": c}) for c in cs]
    else:
        pe = [(name, {})]
    fwpkm = bool(config.get("fwpkm_layers"))
    iters, writes = (args.iters, args.answer_writes) if fwpkm else ([1], ["chunks"])
    return [(label + (f"+{n}reads" if n > 1 else "") + ("+writes_at_end" if w == "end" else ""), changes, n, w)
            for label, changes in pe for n in iters for w in writes]


def check_options_apply(ckpts, args):
    """Refuses an evaluation option set to other than its default that applies to none of the checkpoints (it
    would be ignored silently): --scaling needs RoPE layers, --logit_scale_c a DroPE model, --iters FwPKM layers."""
    fwpkm = ("models with FwPKM layers (--fwpkm_layers)", lambda config: config.get("fwpkm_layers"))
    needs = {"scaling": ([None], "models with RoPE layers (rope, repo, rope_nope)", has_rotary),
             "logit_scale_c": (["fitted"], "DroPE models (pe=drope)", lambda config: config["pe"] == "drope"),
             "iters": ([1], *fwpkm), "answer_writes": (["chunks"], *fwpkm)}
    for name, (default, who, applies) in needs.items():
        if getattr(args, name) != default and not any(applies(c["model_config"]) for c in ckpts.values()):
            kinds = ", ".join(f"{path}: pe={c['model_config']['pe']}" for path, c in ckpts.items())
            raise SystemExit(f"error: --{name} applies only to {who}, and no --ckpt is one ({kinds})")


def has_rotary(config):
    return any(isinstance(m, RotaryEmbedding) for m in GPT(GPTConfig(**config)).modules())


def load_model(ckpt, changes, length, device):
    """The checkpoint's model with the config changes of settings(); a RoPE scaling is configured for `length`."""
    scaling = changes.get("rope_scaling", ckpt["model_config"].get("rope_scaling"))
    if scaling not in (None, "dyn_ntk"):
        changes = {**changes, "rope_factor": max(1.0, length / ckpt["model_config"]["block_size"])}
    return GPT.from_checkpoint(ckpt, device, **changes)


@contextmanager
def captured_qk(model):
    """{layer: (q, k)} as each layer's positional module returns them ([B, H, T, D]: rotated, scaled) during the
    forward passes inside the block."""
    qk = {}
    hooks = [block.attn.positional.register_forward_hook(lambda module, args, out, i=i: qk.__setitem__(i, out))
             for i, block in enumerate(model.blocks)]
    try:
        yield qk
    finally:
        for hook in hooks:
            hook.remove()


def attention_weights(q, k, queries, window=None):
    """softmax(q·kᵀ/√D) of the queries at positions `queries` (a list or range) over the keys, with the causal mask
    (and the window) the model uses; q, k [B, H, T, D] as the positional modules return them. Returns
    [B, H, len(queries), T]: each row sums to 1, keys a query may not see get 0."""
    scores = torch.einsum("bhqd,bhtd->bhqt", q[:, :, list(queries)].float(), k.float()) / math.sqrt(q.shape[-1])
    query, key = torch.tensor(list(queries), device=q.device)[:, None], torch.arange(k.shape[2], device=q.device)
    allowed = key <= query                                             # [len(queries), T]
    if window is not None:  # keys before the window get no attention
        allowed &= key > query - window
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)


def attention_stats(qk, samples, window=None):
    """Where the answer's first query (the last prompt token) attends, per layer, mean over heads and samples:
    [mass on the asked needle's tokens, mass on as many tokens right before the query, entropy in nats]."""
    at = samples[0]["prompt_len"] - 1
    stats = {}
    for layer, (q, k) in qk.items():
        w = attention_weights(q, k, [at], window)[:, :, 0, :at + 1]      # [B, H, at + 1]
        needle = torch.zeros_like(w[:, 0], dtype=torch.bool)              # [B, at + 1]
        nearby = torch.zeros_like(needle)
        for b, s in enumerate(samples):
            needle[b, s["needle_at"]:s["needle_at"] + s["needle_len"]] = True
            nearby[b, max(s["needle_at"] + s["needle_len"], at + 1 - s["needle_len"]):] = True
        entropy = -(w * w.clamp_min(1e-30).log()).sum(-1)
        stats[layer] = [(w * needle[:, None]).sum(-1).mean().item(), (w * nearby[:, None]).sum(-1).mean().item(),
                        entropy.mean().item()]
    return stats


def start_cache(model, tokens, samples, iters, window=None, writes="chunks"):
    """The cache the answering pass starts from: for iters = n, the FwPKM fast weights after n − 1 extra reads of
    the haystack (every token before the earliest question of the batch), with the same attention window. writes:
    "chunks", the answering pass writes every memory_chunk tokens (None for one pass: the model's own forward); "end",
    it writes only at its end, after the answer, as the official evaluation reads (fwpkm.read_iteratively)."""
    if iters == 1 and writes == "chunks":
        return None
    answer_chunk = None if writes == "chunks" else tokens.shape[1] + ANSWER_SLACK
    return read_iteratively(model, tokens[:, :min(s["question_at"] for s in samples)], iters - 1, window,
                            answer_chunk)


def teacher_forced(model, tokens, cache=None, window=None):
    """The teacher-forced forward over tokens [B, T] without their last token, starting from a copy of cache
    (start_cache). Returns the logits [B, T − 1, V] and {layer: (q, k)} as the positional modules returned them."""
    with captured_qk(model) as qk:
        logits, _ = model(tokens[:, :-1], cache=cache and cache.copy(), window=window)
    return logits, qk


# -- FwPKM's diagnostics: where the needle's value was written and what the answer read back ------------------

def value_positions(s):
    """[(written, writer, reader)] for each value token j of the answer of s, a NIAH sample (data/niah.py): written,
    the position of value token j in the needle; writer = written − 1, the token that stores it under its query (the
    lookahead); reader, the token before answer token j, which reads it back. [] when the answer does not occur in
    the needle (multivalue)."""
    answer, needle = s["tokens"][s["prompt_len"]:], s["tokens"][s["needle_at"]:s["needle_at"] + s["needle_len"]]
    found = [o for o in range(len(needle) - len(answer) + 1) if needle[o:o + len(answer)] == answer]
    if not found:
        return []
    return [(s["needle_at"] + found[0] + j, s["needle_at"] + found[0] + j - 1, s["prompt_len"] + j - 1)
            for j, is_value in enumerate(s["value_mask"]) if is_value]


def needle_trace(model, samples):
    """Where each FwPKM layer wrote a NIAH sample's value and what the answer read back, from the last evaluation
    forward of model over the samples' tokens (teacher-forced, so the answer's tokens are in it too), whose reads
    FastWeightProductKeyMemory.record keeps.

    With the lookahead, value token j of the needle (at position n_j) is stored by the token before it (n_j − 1)
    under that token's query, and read back at the answer by the token before answer token j (prompt_len + j − 1),
    which is the same token with the same local context ("... of Mia is" -> " ", "4" -> "8"). Per value token:
      overlap     the answer's read weight on the slots the needle's token read (and so wrote) in this pass
      gate_write  g at the needle's token (how strongly it wrote)    gate_read  g at the answer's token
      recall      cos(v̂ read at the answer, v_{n_j} written at the needle): 1 = the value came back
    Returns {layer name: {metric: mean}} over the samples whose answer occurs in their needle (not multivalue)."""
    report = {}
    for name, m in model.named_modules():
        if not isinstance(m, FastWeightProductKeyMemory) or not hasattr(m, "last_reads"):
            continue
        r, rows = m.last_reads, []
        for b, s in enumerate(samples):
            for written, w_at, r_at in value_positions(s):
                hit = torch.isin(r["slots"][b, r_at], r["slots"][b, w_at])
                rows.append([(r["w"][b, r_at] * hit).sum().item(), r["g"][b, w_at].item(), r["g"][b, r_at].item(),
                             F.cosine_similarity(r["v_hat"][b, r_at], r["v"][b, written], dim=0).item()])
        if rows:
            report[name] = dict(zip(("overlap", "gate_write", "gate_read", "recall"),
                                    torch.tensor(rows).mean(0).tolist()))
    return report


@torch.no_grad()
def score_batch(model, samples, enc, device, iters=1, window=None, writes="chunks"):
    """Greedy exact match and teacher-forced value-token accuracy for samples of equal length and answer length,
    and attention_stats() of the teacher-forced pass; both passes start from start_cache()'s fast weights."""
    tokens = torch.tensor([s["tokens"] for s in samples], device=device)
    prompt_len = samples[0]["prompt_len"]
    answer_len = tokens.shape[1] - prompt_len
    cache = start_cache(model, tokens, samples, iters, window, writes)
    logits, qk = teacher_forced(model, tokens, cache, window)
    attention = attention_stats(qk, samples, window)
    health = model.health_reports() if isinstance(model, GPT) else {}  # of this teacher-forced pass
    for name, trace in needle_trace(model, samples).items():           # the needle's write and read
        health[name] = {**health[name], **trace}
    predicted = logits[:, prompt_len - 1:].argmax(-1)                  # [B, answer_len]
    mask = torch.tensor([s["value_mask"] for s in samples], device=device)
    token_acc = ((predicted == tokens[:, prompt_len:]) & mask).sum(1) / mask.sum(1)
    generated = model.generate(tokens[:, :prompt_len], answer_len + ANSWER_SLACK, temperature=0, cache=cache,
                               window=window)[:, prompt_len:]
    exact = [exact_match(enc.decode(out), s["values"]) for s, out in zip(samples, generated.tolist())]
    return exact, token_acc.tolist(), attention, health


def exact_match(answer, values):
    """The fraction of the expected values that begin a number of the answer text (RULER's score)."""
    numbers = re.findall(r"\d+", answer)
    return sum(any(n.startswith(v) for n in numbers) for v in values) / len(values)


# --wordings: the two sets of data/niah.py, and each held-out wording alone
WORDING_SETS = {**WORDINGS, **{f"heldout{i + 1}": (w,) for i, w in enumerate(WORDINGS["heldout"])}}


def cell_samples(enc, val, seed, variant, haystack, wordings, length, depth, n, split):
    """The n samples of one cell, keys and values from the given half (data/niah.py, split_of); depth = (its index
    d, the depth). Sample i depends only on seed, the cell, i and the split (so every checkpoint sees the same
    samples) and uses wording d·n + i of the set (so every wording gets asked)."""
    (d, depth), choices = depth, WORDING_SETS[wordings]
    return [make_sample(random.Random(f"{seed}/{variant}/{haystack}/{length}/{depth}/{i}"), enc,
                        val if haystack == "val" else None, length, depth, variant, split,
                        choices[(d * n + i) % len(choices)]) for i in range(n)]


PROBE_DEPTHS = (0.25, 0.5, 0.75)  # the training probe's needle depths
PROBE_PER_DEPTH = 4               # samples per depth and variant: 12 each, one batch each, seconds on a CPU
PROBE_VARIANTS = ("single", "multikey")  # a needle found; the asked key's needle found among others (chance 25%)


def probe_samples(enc, val, length):
    """The samples of the probe train.py runs at every evaluation of a retrieval run, {variant: samples}: single
    and multi-key needles in the validation haystack at the training length, in held-out wordings, keys from the
    evaluation half, the same at every evaluation. A context too short for the multi-key needle's four needles and
    question (under ~100 tokens) probes the single needle only; one too short for that raises ValueError."""
    samples = {}
    for variant in PROBE_VARIANTS:
        try:
            samples[variant] = [s for d, depth in enumerate(PROBE_DEPTHS)
                                for s in cell_samples(enc, val, 0, variant, "val", "heldout", length, (d, depth),
                                                      PROBE_PER_DEPTH, "eval")]
        except ValueError:
            if variant == "single":
                raise
    return samples


@torch.no_grad()
def probe(model, samples, enc, device):
    """{"single": exact %, "multikey": exact % (where probed), "needle": attention %} of model on probe_samples():
    greedy answers as eval_niah.py scores them, and the most attention any layer's answer query puts on the single
    needle (mean over heads and samples). A needle found shows as single and needle attention rising together; the
    key looked up, as multi-key leaving its chance level (MULTIKEY_CHANCE) for single's level."""
    scores = {}
    for variant, variant_samples in samples.items():
        exact, _, attention, _ = score_batch(model, variant_samples, enc, device)
        scores[variant] = 100 * float(np.mean(exact))
        if variant == "single":
            scores["needle"] = 100 * max(stats[0] for stats in attention.values())
    return scores


def evaluate(ckpt_path, ckpt, args, device):
    """Yields one result dict per (scaling, variant, haystack, wordings, length, depth) for the checkpoint ckpt."""
    config = ckpt["model_config"]
    data_dir = checkpoint_data_dir(ckpt, args.data_dir)
    enc = load_tokenizer(data_dir)
    val = load_tokens(data_dir, "val")
    name = os.path.basename(os.path.dirname(os.path.abspath(ckpt_path)))
    if os.path.basename(ckpt_path) != "ckpt.pt":  # a kept earlier checkpoint (train.py --keep_iters): say which step
        name += f"@{ckpt['iter']}"
    depths = np.linspace(0, 1, args.depths).round(3).tolist()
    for label, changes, iters, writes in settings(ckpt, name, args):
        for mult in args.lengths:
            length = int(mult * config["block_size"])
            model = load_model(ckpt, {**changes, "kernels": args.kernels}, length, device)
            t0, length_health = time.time(), []
            for variant, haystack, wordings, (d, depth) in itertools.product(
                    args.variants, args.haystacks, args.wordings, enumerate(depths)):
                samples = cell_samples(enc, val, args.seed, variant, haystack, wordings, length, (d, depth),
                                       args.samples, args.split)
                exact, token, attention, health = [], [], [], []
                for b in range(0, len(samples), args.batch_size):
                    e, t, a, h = score_batch(model, samples[b:b + args.batch_size], enc, device, iters,
                                             args.window or None, writes)
                    health.append(h)
                    exact += e
                    token += t
                    attention += [a] * len(e)
                yield {"label": label, "ckpt": ckpt_path, "pe": config["pe"], **changes, "window": args.window,
                       "iters": iters, "answer_writes": writes,
                       "variant": variant, "haystack": haystack, "wordings": wordings, "split": args.split,
                       "multiple": mult, "length": length, "depth": depth, "exact": float(np.mean(exact)),
                       "token": float(np.mean(token)),
                       "attention": {layer: np.mean([a[layer] for a in attention], axis=0).round(4).tolist()
                                     for layer in attention[0]},  # 4 decimals: results.json stays small
                       "health": mean_health(health), "n": len(samples)}
                length_health += health
            print(f"{label} at {length} tokens ({mult}x): {time.time() - t0:.1f}s"
                  f"{format_health(mean_health(length_health))}", flush=True)


def mean_health(reports):
    """The mean of several GPT.health_reports() (one per batch)."""
    return {name: {k: float(np.mean([r[name][k] for r in reports])) for k in reports[0][name]}
            for name in (reports[0] if reports else {})}


def row_of(r):
    """A table row or plot line: the checkpoint[+setting] and which wordings its samples use."""
    return f"{r['label']} [{r['wordings']}]"


def print_tables(results, lengths):
    width = max(24, *(len(row_of(r)) + 5 for r in results))
    for variant in sorted({r["variant"] for r in results}):
        for haystack in sorted({r["haystack"] for r in results}):
            rows = [r for r in results if r["variant"] == variant and r["haystack"] == haystack]
            window = f", attention window {rows[0]['window']}" if rows[0]["window"] else ""
            chance = (f", chance {100 * MULTIKEY_CHANCE:.0f}% (any needle's value, not the asked key's)"
                      if variant == "multikey" else "")
            print(f"\n{variant} needle, {haystack} haystack{window}: exact match %{chance} (teacher-forced "
                  f"value-token accuracy %)")
            print(f"{'':{width}s}" + "".join(f"{f'{m}x':>16s}" for m in lengths))
            for label in dict.fromkeys(map(row_of, rows)):
                cells = []
                for m in lengths:
                    cell = [r for r in rows if row_of(r) == label and r["multiple"] == m]
                    cells.append(f"{100 * np.mean([r['exact'] for r in cell]):5.1f} "
                                 f"({100 * np.mean([r['token'] for r in cell]):5.1f})")
                print(f"{label:{width}s}" + "".join(f"{c:>16s}" for c in cells))
            print(f"\n{variant} needle, {haystack} haystack: attention of the last prompt token per layer, mean over "
                  f"heads: % on the needle / % on as many tokens before the query / entropy (nats)")
            print(f"{'':{width}s}" + "".join(f"{f'{m}x':>18s}" for m in lengths))
            for label in dict.fromkeys(map(row_of, rows)):
                for layer in rows[0]["attention"]:
                    cells = []
                    for m in lengths:
                        needle, nearby, entropy = np.mean([r["attention"][layer] for r in rows
                                                           if row_of(r) == label and r["multiple"] == m], axis=0)
                        cells.append(f"{100 * needle:4.0f} /{100 * nearby:4.0f} /{entropy:4.1f}")
                    print(f"{f'{label} L{layer}':{width}s}" + "".join(f"{c:>18s}" for c in cells))


def plot_heatmaps(results, lengths, out_dir):
    """heatmaps_<label>_<wordings>.png: exact match % per depth x length, one panel per variant (first haystack)."""
    variants = list(dict.fromkeys(r["variant"] for r in results))
    haystack = results[0]["haystack"]  # figures show the first haystack; results.json has all
    results = [r for r in results if r["haystack"] == haystack]
    files = {row_of(r): f"heatmaps_{r['label']}_{r['wordings']}.png" for r in results}
    depths = sorted({r["depth"] for r in results})
    for label in files:
        fig, axes = plt.subplots(1, len(variants), figsize=(4 * len(variants) + 1, 3.5), squeeze=False,
                                 layout="constrained")
        for ax, variant in zip(axes[0], variants):
            grid = np.array([[np.mean([r["exact"] for r in results if row_of(r) == label and r["variant"] == variant
                                       and r["depth"] == d and r["multiple"] == m]) for m in lengths] for d in depths])
            im = ax.imshow(100 * grid, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto", origin="upper")
            ax.set_xticks(range(len(lengths)), [f"{m}x" for m in lengths])
            ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
            ax.set_xlabel("context length (x training length)")
            ax.set_ylabel("needle depth")
            ax.set_title(f"{label}: {variant}")
            for i in range(len(depths)):
                for j in range(len(lengths)):
                    ax.text(j, i, f"{100 * grid[i, j]:.0f}", ha="center", va="center", fontsize=8)
        fig.colorbar(im, ax=axes[0].tolist(), label="exact match %")
        save_figure(fig, os.path.join(out_dir, files[label]))


def run_info(argv):
    """Where and when results were made, for results.json: the date, this machine, torch, and the command."""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "torch": torch.__version__,
            "machine": gpu or f"{os.cpu_count()}-core {platform.machine()} CPU",
            "command": shlex.join(["python", "eval_niah.py", *argv])}


# the part of each checkpoint's training history that summarize.py reads (val loss, the probe), kept in results.json
# so that a study's summary is whole on a machine without its checkpoints (they are not committed)
TRAINING_RECORD = ("eval_iter", "val_loss", "probe_iter", "probe_exact", "probe_multikey")


def write_results(path, run, args, results, training):
    """results.json: {"run", "args", "training", "results"}, one result per line (a study commits hundreds of them);
    training: {checkpoint path: its TRAINING_RECORD}."""
    rows = ",\n".join(json.dumps(r, separators=(",", ":")) for r in results)
    text = (f'{{"run": {json.dumps(run)},\n"args": {json.dumps(args)},\n"training": {json.dumps(training)},\n'
            f'"results": [\n{rows}\n]}}\n')

    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    write_atomic(path, write)


def redraw(paths):
    """The heatmaps and the accuracy figure of each results.json, written beside it, as the evaluation drew them."""
    for path in paths:
        try:
            with open(path) as f:
                saved = json.load(f)
            results, lengths = saved["results"], saved["args"]["lengths"]
        except (OSError, ValueError, KeyError) as e:
            raise SystemExit(f"error: --figures_from {path}: not a results.json of eval_niah.py ({e})")
        out_dir = os.path.dirname(path) or "."
        plot_heatmaps(results, lengths, out_dir)
        plot_accuracy(results, lengths, os.path.join(out_dir, "accuracy_vs_length.png"))
        print(f"{path}: drew its figures in {out_dir}/")


def main(argv=None):
    p = ArgumentParser(prog="eval_niah.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", action="append", help="a checkpoint; repeat for several")
    p.add_argument("--figures_from", nargs="+", metavar="RESULTS_JSON",
                   help="no evaluation: draw the figures of these results.json files again, beside each (the study "
                        "commits results.json, not the heatmaps: python eval_niah.py --figures_from results/cpu/*/"
                        "results.json)")
    p.add_argument("--lengths", default="1,2,4,8", help="context lengths as multiples of the training length "
                   "(below 1, e.g. 0.5, evaluates shorter contexts than the model was trained on)")
    p.add_argument("--depths", type=int, default=5, help="needle depths, evenly spread from 0%% to 100%%")
    p.add_argument("--samples", type=int, default=10, help="samples per (length, depth) cell")
    p.add_argument("--variants", default="single", help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--haystacks", default="val", help=f"comma list of {', '.join(HAYSTACKS)}")
    p.add_argument("--wordings", default=",".join(WORDINGS),
                   help="comma list of seen (20 of the training drills' wordings), heldout (5 wordings never "
                        "trained), heldout1 ... heldout5 (one of them alone)")
    p.add_argument("--split", default="eval", choices=SPLITS,
                   help="the half of the keys and values the needles draw from: eval (never in a training drill) or "
                        "train (the drills' own; the gap between the two is how much of the lookup is learned per key)")
    p.add_argument("--scaling", default="none",
                   help=f"comma list of none, {', '.join(SCALINGS)} (models with RoPE layers: rope, repo, rope_nope)")
    p.add_argument("--logit_scale_c", default="fitted",
                   help="comma list of c for DroPE models' beta = 1 + c·ln(s): numbers, or fitted (the c stored by "
                        "python drope_fit.py; 0 if none)")
    p.add_argument("--iters", default="1", help="comma list of reading passes for models with FwPKM layers: n > 1 "
                   "reads the haystack n − 1 extra times first, carrying only the fast weights (fwpkm.py)")
    p.add_argument("--answer_writes", default="chunks",
                   help="comma list, for models with FwPKM layers: chunks (the answering pass writes every "
                        "memory_chunk tokens, as in training), end (it writes once, at its end: every pass reads "
                        "with the memory of the passes before it, as the FwPKM paper's evaluation does)")
    p.add_argument("--window", type=int, default=0, help="sliding-window attention of this many tokens in every "
                   "pass (0: full attention), for models whose attention must not reach the needle")
    p.add_argument("--data_dir", default=None, help="haystack data; default: the checkpoint's dataset")
    p.add_argument("--out_dir", default="out/niah")
    p.add_argument("--batch_size", type=int, default=10, help="samples per forward pass")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--kernels", default="auto", choices=KERNEL_MODES,
                   help="fused Triton fast paths (fast_paths/): auto (on CUDA when triton is installed), on, off")
    p.add_argument("--seed", type=int, default=0)
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    if bool(args.ckpt) == bool(args.figures_from):
        raise SystemExit("error: give --ckpt (evaluate checkpoints) or --figures_from (redraw the figures of "
                         "results.json files), one of the two")
    if args.figures_from:
        return redraw(args.figures_from)
    lengths = args.lengths
    args.lengths = parse_list(lengths, float, "lengths")
    if not min(args.lengths) > 0:
        raise SystemExit(f"error: --lengths {lengths!r}: each multiple of the training length must be > 0")
    args.lengths = [int(m) if m == int(m) else m for m in args.lengths]
    args.iters = parse_list(args.iters, int, "iters", minimum=1)
    args.answer_writes = parse_list(args.answer_writes, str, "answer_writes", valid=("chunks", "end"))
    args.variants = parse_list(args.variants, str, "variants", valid=VARIANTS)
    args.haystacks = parse_list(args.haystacks, str, "haystacks", valid=HAYSTACKS)
    args.wordings = parse_list(args.wordings, str, "wordings", valid=tuple(WORDING_SETS))
    args.scaling = [None if s == "none" else s
                    for s in parse_list(args.scaling, str, "scaling", valid=("none", *SCALINGS))]
    try:
        args.logit_scale_c = [c if c == "fitted" else float(c) for c in args.logit_scale_c.split(",") if c]
    except ValueError:
        raise SystemExit(f"error: --logit_scale_c {args.logit_scale_c!r}: give numbers or 'fitted', e.g. fitted,0")
    if args.window < 0:
        raise SystemExit(f"error: --window {args.window} must be a number of tokens >= 1, or 0 for full attention")
    check_minimum(args, 1, ("depths", "samples", "batch_size"))
    check_minimum(args, 0, ("seed",))
    args.device = resolve_device(args.device)
    check_available(args.kernels, torch.device(args.device).type)
    ckpts = {path: load_checkpoint(path) for path in args.ckpt}  # every one is checked before any work
    check_options_apply(ckpts, args)
    check_writable_dir(args.out_dir, "--out_dir")
    torch.manual_seed(args.seed)
    results = [r for path, ckpt in ckpts.items() for r in evaluate(path, ckpt, args, args.device)]
    print_tables(results, args.lengths)
    training = {path: {key: value for key, value in ckpt.get("history", {}).items() if key in TRAINING_RECORD}
                for path, ckpt in ckpts.items()}
    write_results(os.path.join(args.out_dir, "results.json"), run_info(argv), vars(args), results, training)
    plot_heatmaps(results, args.lengths, args.out_dir)
    plot_accuracy(results, args.lengths, os.path.join(args.out_dir, "accuracy_vs_length.png"))
    print(f"\nwrote {args.out_dir}/results.json and figures")
    return results


if __name__ == "__main__":
    main()
