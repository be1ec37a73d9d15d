"""
Trains the GPT of model.py with a chosen positional encoding.

    python train.py                                   # CPU default: embedded stories, RoPE, ~1M params, minutes
    python train.py --pe nope --out_dir out/nope      # the same without positional encoding
    python train.py --config config/tinystories_gpu.py --pe rope          # one GPU (prepare the data first)
    torchrun --nproc_per_node=8 train.py --config config/tinystories_gpu.py # several GPUs (DDP)
    python train.py --resume                          # continue a killed run from out_dir/ckpt.pt
    python train.py --pe nope --init_from out/rope/ckpt.pt --out_dir out/stage2   # a new stage from a checkpoint

Options come from, in increasing priority: the defaults below (which are the CPU default), a --config file of
Python assignments (config/*.py), and command-line flags `--name value`.

What it writes to out_dir: ckpt.pt (model config, weights, optimizer, RNG and data position, loss history; written
to a temporary file and renamed, so a kill never corrupts it) and loss.png (train and validation loss curves).
"""
import argparse
import inspect
import math
import os
import queue
import re
import runpy
import shlex
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import fields
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from cli import DEVICE_HELP, ArgumentParser, check_minimum, check_writable_dir, load_checkpoint, resolve_device
from data.format import PREPARE_COMMANDS, dataset_dir, get_batch, load_meta, load_tokenizer, load_tokens, write_atomic
from data.drills import DrillMaker, table_path
from data.niah import MULTIKEY_CHANCE
from fast_paths import check_available
from eval_niah import probe, probe_samples
from model import GPT, GPTConfig, POSITIONAL, format_health, stage_defaults
from plots import plt, save_figure

# The model's options are GPTConfig's fields, with its defaults and its comments as help (model.py declares each once);
# not the vocabulary (the data's), nor what is chosen at evaluation (a RoPE scaling, DroPE's c: eval_niah.py)
MODEL_OPTIONS = [f.name for f in fields(GPTConfig)
                 if f.name not in ("vocab_size", "rope_scaling", "rope_factor", "logit_scale_c")]
FIELD_COMMENTS = dict(re.findall(r"^    (\w+): \w+ = .*?  # (.*)$", inspect.getsource(GPTConfig), re.M))
OPTIONS = {  # name: (default, help); the defaults are the CPU default run
    # I/O
    "out_dir": (None, "default: out/<pe>"),
    "config": ("", "a Python file of option assignments, e.g. config/tinystories_gpu.py"),
    "resume": (False, "continue from out_dir/ckpt.pt (refused when there is none: nothing to continue)"),
    "init_from": ("", "start a new stage from this checkpoint's weights (fresh optimizer, iteration 0; the "
                      "architecture is the checkpoint's, only pe and qk_norm may change)"),
    "dataset": ("embedded", "embedded, tinystories or openwebtext"),
    "data_dir": (None, "default: data/<dataset> (a directory in the format of data/format.py)"),
    # the model (GPTConfig's fields; tuples of layers are given as comma lists)
    **{f.name: ("" if f.type is tuple else f.default, FIELD_COMMENTS[f.name])
       for f in fields(GPTConfig) if f.name in MODEL_OPTIONS},
    "swa_prob": (0.0, "probability of a step with sliding-window attention (FwPKM's trick; 1: every step)"),
    "swa_window": (0, "tokens each query sees on --swa_prob steps, itself included (0: memory_chunk)"),
    # data
    "niah_mix": (0.0, "fraction of training rows replaced by needle-in-a-haystack documents (data/niah.py)"),
    "drill_needles": (3, "most needles in a retrieval drill (1 to this many, asked in random order)"),
    "shared_wording": (0.0, "fraction of drills whose 2 or more needles share one wording, 1 to n - 1 of them asked: "
                            "only the key tells them apart, as in the multi-key needle (else each needle has its own "
                            "wording, which its question repeats, and every needle is asked)"),
    "answer_weight": (1.0, "loss weight of the drills' answer tokens (the rest weigh 1): the few tokens only a lookup "
                           "predicts; weighted up, the plateau before the lookup is learned is shorter"),
    "anonymous_names": (False, "give the drills' keys, and half their story characters of the drilled names, a fresh "
                               "random identity in every row (the embedding becomes the mean name embedding plus a "
                               "random vector; their targets weigh 0), so the lookup cannot be learned one name at a "
                               "time (results/niah.md)"),
    "curriculum_iters": (0, "first steps that train on rows of curriculum_len tokens (as many more rows, so tokens "
                            "per step stay): a short drill holds one needle in a short haystack, found sooner"),
    "curriculum_len": (48, "row length of the curriculum steps (48: every drill has one needle; results/niah.md)"),
    "data_workers": (0, "processes that make the retrieval drills (0: a thread of this process, enough on a CPU; one "
                        "core makes ~1.1M drill tokens/s, a GPU step wants ~1.1M: config/niah_gpu.py uses 8)"),
    "drills_dir": ("", "a directory of drills prepared before training (--prepare_drills): the drills found there "
                       "are read, the others made (data/drills.py)"),
    "prepare_drills": (False, "instead of training: replay this run's batch stream, make every drill it asks for "
                              "(in --data_workers processes) and add them to --drills_dir"),
    # optimisation
    "batch_size": (16, "sequences per micro-step (per process)"),
    "grad_accum": (1, "micro-steps per optimiser step, summed over all processes"),
    "max_iters": (1500, "optimiser steps"),
    "lr": (2e-3, "peak learning rate"),
    "min_lr": (2e-4, "learning rate at the end of the cosine"),
    "warmup_iters": (100, "linear warmup steps"),
    "cooldown_frac": (0.0, "last fraction of the steps over which the learning rate falls linearly to 0 (a lookup "
                           "found on the plateau settles instead of wobbling at a high rate; results/niah.md)"),
    "weight_decay": (0.1, "AdamW decay on matrices and embeddings, not on norms"),
    "beta1": (0.9, "AdamW beta1"),
    "beta2": (0.95, "AdamW beta2"),
    "grad_clip": (1.0, "max global gradient norm (0: off)"),
    # evaluation, logging, checkpoints
    "eval_interval": (250, "steps between validation-loss estimates and checkpoints"),
    "eval_iters": (20, "batches per loss estimate"),
    "log_interval": (25, "steps between progress lines"),
    "keep_iters": ("", "comma list of iterations at which to also keep out_dir/ckpt_<iter>.pt (e.g. drop points)"),
    # system
    "device": ("auto", DEVICE_HELP),
    "dtype": ("auto", "auto (bfloat16 on cuda, float32 elsewhere), float32, bfloat16"),
    "compile": (False, "torch.compile the model"),
    "seed": (1337, "seeds the initialisation and the batch stream"),
}
DEFAULTS = {name: default for name, (default, _) in OPTIONS.items()}
AT_LEAST_ONE = ("n_layer", "n_head", "n_embd", "block_size", "curriculum_len", "drill_needles", "memory_n_sub",
                "memory_topk", "memory_key_dim", "memory_value_dim", "memory_query_span", "memory_chunk", "batch_size",
                "grad_accum", "max_iters", "eval_interval", "eval_iters", "log_interval")
AT_LEAST_ZERO = ("answer_weight", "curriculum_iters", "data_workers", "warmup_iters", "lr", "min_lr", "weight_decay",
                 "grad_clip", "swa_window", "seed")
FRACTIONS = ("niah_mix", "shared_wording", "swa_prob", "cooldown_frac")


def parse_args(argv=None):
    """Returns (options dict, names set explicitly by the config file or the command line)."""
    parser = ArgumentParser(prog="train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, (default, help_) in OPTIONS.items():
        help_ = f"{help_} (default: {default})" if default not in (None, "") else help_
        if isinstance(default, bool):
            parser.add_argument(f"--{name}", type=parse_bool, nargs="?", const=True, default=argparse.SUPPRESS,
                                help=help_)
        else:
            kind = type(default) if default is not None else str
            parser.add_argument(f"--{name}", type=kind, default=argparse.SUPPRESS, help=help_)
    cli = vars(parser.parse_args(argv))
    explicit = read_config(cli["config"], parser) if cli.get("config") else {}
    explicit.update(cli)
    opts = {**DEFAULTS, **explicit}
    if opts["out_dir"] is None:
        opts["out_dir"] = os.path.join("out", opts["pe"])
    if opts["pe"] not in POSITIONAL:
        parser.error(f"unknown --pe {opts['pe']!r}; valid choices: {', '.join(sorted(POSITIONAL))}")
    try:
        opts["keep_iters"] = sorted({int(x) for x in str(opts["keep_iters"]).split(",") if x})
    except ValueError:
        parser.error(f"--keep_iters {opts['keep_iters']!r} must be a comma list of iteration numbers, e.g. 3000,5250")
    if opts["dtype"] not in ("auto", "float32", "bfloat16"):
        parser.error(f"unknown --dtype {opts['dtype']!r}; valid choices: auto, float32, bfloat16")
    check_minimum(opts, 1, AT_LEAST_ONE)
    check_minimum(opts, 0, AT_LEAST_ZERO)
    for name in FRACTIONS:
        if not 0 <= opts[name] <= 1:
            parser.error(f"--{name} {opts[name]} must be between 0 and 1")
    if opts["answer_weight"] != 1 and not opts["niah_mix"] > 0:
        parser.error(f"--answer_weight {opts['answer_weight']} weighs the answers of retrieval drills, and --niah_mix "
                     f"is 0: there are none (e.g. --niah_mix 1.0, as config/niah_cpu.py)")
    if opts["anonymous_names"] and not opts["niah_mix"] > 0:
        parser.error("--anonymous_names changes the names of retrieval drills, and --niah_mix is 0: there are none "
                     "(e.g. --niah_mix 1.0, as config/niah_cpu.py)")
    if opts["prepare_drills"] and not (opts["drills_dir"] and opts["niah_mix"] > 0):
        parser.error("--prepare_drills makes the retrieval drills of a run into --drills_dir: it needs both "
                     "--drills_dir and --niah_mix > 0 (e.g. --config config/niah_gpu.py --drills_dir out/drills)")
    if opts["drills_dir"] and not opts["niah_mix"] > 0:
        parser.error(f"--drills_dir {opts['drills_dir']} holds retrieval drills, and --niah_mix is 0: this run reads "
                     f"none (e.g. --niah_mix 1.0, as config/niah_cpu.py)")
    if opts["prepare_drills"] and (opts["resume"] or opts["init_from"]):
        parser.error("--prepare_drills replays a batch stream from its first step, which --resume and --init_from do "
                     "not change: prepare with the run's other options (a stage's stream is a fresh run's)")
    if not opts["rope_base"] > 1:
        parser.error(f"--rope_base {opts['rope_base']} must be greater than 1")
    return opts, set(explicit)


def check_schedule(o, explicit, method_defaults):
    """The learning-rate schedule and the kept iterations fit together (after a stage's defaults are applied); a
    warmup longer than the run is an error when it was asked for, and only warned about when it is a default that a
    shortened run (a short trial with --max_iters) outlasts."""
    source = lambda name: f" (pe={o['pe']}'s default for a stage)" if name in method_defaults else ""
    if o["warmup_iters"] > o["max_iters"] and "warmup_iters" in explicit:
        sys.exit(f"error: --warmup_iters {o['warmup_iters']} is more than --max_iters {o['max_iters']}"
                 f"{source('max_iters')}: the learning rate would rise for the whole run and never reach --lr "
                 f"{o['lr']}; give a warmup of at most {o['max_iters']} steps")
    if o["min_lr"] > o["lr"]:
        sys.exit(f"error: --min_lr {o['min_lr']}{source('min_lr')} is above --lr {o['lr']}{source('lr')}: the cosine "
                 f"decays from lr down to min_lr; give a min_lr of at most {o['lr']}")
    if o["warmup_iters"] > o["max_iters"]:  # legal (a short trial run), but the peak LR is never reached: say so
        print(f"warning: --warmup_iters {o['warmup_iters']}{source('warmup_iters')} is more than --max_iters "
              f"{o['max_iters']}{source('max_iters')}: the learning rate rises for the whole run and never reaches "
              f"--lr {o['lr']}", file=sys.stderr)
    outside = [k for k in o["keep_iters"] if not 0 <= k < o["max_iters"]]
    if outside:
        sys.exit(f"error: --keep_iters {outside}: a kept checkpoint is one of the iterations this run takes, 0 to "
                 f"{o['max_iters'] - 1} (--max_iters {o['max_iters']}); the final weights are ckpt.pt")


def check_kept_iterations(o, start_iter):
    """On --resume: every --keep_iters before the checkpoint's iteration must have been kept already (the run has
    passed it, so it cannot be kept now)."""
    lost = [k for k in o["keep_iters"] if k < start_iter
            and not os.path.exists(os.path.join(o["out_dir"], f"ckpt_{k}.pt"))]
    if lost:
        sys.exit(f"error: --keep_iters {lost}: {o['out_dir']} is at iteration {start_iter}, past them, and did not "
                 f"keep them; train a new run that passes them: python train.py --out_dir <new dir> --keep_iters "
                 f"{','.join(map(str, lost))} (with this run's other options)")


def data_dir_for(o, explicit, master):
    """The dataset's directory. The embedded corpus is generated on first use in data/embedded, or in --data_dir
    when --dataset embedded is given with it; a --data_dir that holds no dataset is refused (a mistyped path would
    otherwise be filled with a corpus and trained on)."""
    try:
        data_dir = o["data_dir"] or dataset_dir(o["dataset"])
    except ValueError as e:
        sys.exit(f"error: {e}")
    prepared = os.path.exists(os.path.join(data_dir, "meta.json"))
    if o["data_dir"] and not prepared and not (o["dataset"] == "embedded" and "dataset" in explicit):
        commands = "; ".join(f"{name}: {command}" for name, command in PREPARE_COMMANDS.items())
        sys.exit(f"error: --data_dir {data_dir} holds no prepared dataset (no meta.json). Prepare one ({commands}) "
                 f"and pass its directory, or add --dataset embedded to generate the embedded corpus in {data_dir}")
    if o["dataset"] == "embedded" and not prepared and master:
        from data.embedded import prepare
        prepare(data_dir)
    return data_dir


def check_memory(config, batch_size, device):
    """Refuses a step that cannot fit in memory, from a lower bound on what one micro-step's forward keeps for the
    backward in fp32: per layer ~16 numbers per token and channel (q, k, v, attention output, norms, the 4x MLP),
    and the logits with their softmax (2 per token and vocabulary entry). The real need is higher."""
    tokens = batch_size * config.block_size
    need = 4 * tokens * (16 * config.n_layer * config.n_embd + 2 * config.vocab_size)
    if torch.device(device).type == "cuda":
        have, where = torch.cuda.mem_get_info(torch.device(device))[1], "GPU memory"
    else:
        have, where = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "memory"
    if need > have:
        sys.exit(f"error: --batch_size {batch_size} x --block_size {config.block_size} = {tokens:,} tokens per "
                 f"micro-step need at least {need / 2 ** 30:.0f} GiB for the backward, more than the "
                 f"{have / 2 ** 30:.0f} GiB of {where} here; lower --batch_size (raise --grad_accum to keep the "
                 f"tokens per step) or --block_size")


def read_config(path, parser):
    """The option assignments of a config file, type-checked like command-line flags."""
    if not os.path.isfile(path):
        parser.error(f"--config {path}: no such file")
    try:
        values = {k: v for k, v in runpy.run_path(path).items() if not k.startswith("_")}
    except SyntaxError as e:
        parser.error(f"--config {path}, line {e.lineno}: {e.msg}")
    except Exception as e:
        parser.error(f"--config {path} failed to run: {type(e).__name__}: {e}")
    unknown = sorted(set(values) - set(DEFAULTS))
    if unknown:
        parser.error(f"unknown option(s) {unknown} in {path}; valid: {', '.join(DEFAULTS)}")
    for name, value in values.items():
        default = DEFAULTS[name]
        wanted = (bool,) if isinstance(default, bool) else (int,) if isinstance(default, int) else \
            (int, float) if isinstance(default, float) else None
        if wanted and (not isinstance(value, wanted) or isinstance(value, bool) != (wanted == (bool,))):
            parser.error(f"{name} = {value!r} in {path} must be {wanted[-1].__name__}")
    return values


def train_batch(tokens, o, block_size, gen, drills):
    """Random windows of the training data; with niah_mix > 0, some rows become retrieval documents: needles inside
    a haystack of training text, within the training length, keys and values from the "train" half, made by drills
    (a data.drills.DrillMaker) from seeds drawn here. Returns (x, y, the targets' loss weights: None for a plain mean,
    else answer_weight at drills' answers, 0 at anonymous names and 1 elsewhere, the name slots of x: None unless
    anonymous_names, else j >= 0 where x holds a drill's j-th name to anonymise (make_drill), -1 elsewhere)."""
    x, y = get_batch(tokens, o["batch_size"], block_size, gen)
    anonymous = o["anonymous_names"]
    weights = torch.ones(y.shape) if o["answer_weight"] != 1 or anonymous else None  # parse_args: only with drills
    names = torch.full(x.shape, -1) if anonymous else None
    rows = (torch.rand(len(x), generator=gen) < o["niah_mix"]).nonzero().flatten() if o["niah_mix"] > 0 else []
    if len(rows):
        seeds = torch.randint(2 ** 62, (len(rows),), generator=gen).tolist()
        # the drills' tokens, answer marks and name slots: three [rows, block_size + 1] arrays
        seq, is_answer, name_at = (torch.from_numpy(part) for part in drills(seeds, block_size + 1))
        seq, name_at = seq.long(), name_at.long()  # as x and names
        x[rows], y[rows] = seq[:, :-1], seq[:, 1:]
        if weights is not None:
            drill_weights = weights[rows]
            drill_weights[is_answer[:, 1:]] = o["answer_weight"]
            if anonymous:  # a name given a random identity cannot be predicted: its targets weigh 0
                names[rows] = name_at[:, :-1]
                drill_weights[name_at[:, 1:] >= 0] = 0.0
            weights[rows] = drill_weights
    return x, y, weights, names


def parse_bool(text):
    values = {"true": True, "1": True, "false": False, "0": False}
    if text.lower() not in values:
        raise argparse.ArgumentTypeError(f"{text!r} is not a boolean; valid: {', '.join(values)}")
    return values[text.lower()]


def lr_at(it, o):
    """Linear warmup, then cosine decay from lr to min_lr at max_iters; over the last cooldown_frac of the steps
    that value is scaled down linearly to 0 (the cooldown of a warmup-stable-decay schedule)."""
    if it < o["warmup_iters"]:
        return o["lr"] * (it + 1) / o["warmup_iters"]
    progress = min(1.0, (it - o["warmup_iters"]) / max(1, o["max_iters"] - o["warmup_iters"]))
    lr = o["min_lr"] + 0.5 * (1 + math.cos(math.pi * progress)) * (o["lr"] - o["min_lr"])
    steps_left = o["max_iters"] - it  # 1 at the last step, so the last update still moves the weights
    cooldown = o["cooldown_frac"] * o["max_iters"]
    return lr * min(1.0, steps_left / cooldown) if cooldown > 0 else lr


def make_optimizer(model, o, device_type):
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": o["weight_decay"]},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=o["lr"], betas=(o["beta1"], o["beta2"]), fused=device_type == "cuda")


def save_checkpoint(path, state):
    write_atomic(path, lambda tmp: torch.save(state, tmp))


def architecture_diff(saved, current):
    return [f"{k}: checkpoint {saved.get(k)!r} vs now {current[k]!r}"
            for k in GPTConfig.ARCHITECTURE if saved.get(k, getattr(GPTConfig, k)) != current[k]]  # older: defaults


STAGE_CHANGES = ("pe", "qk_norm")  # what a stage started with --init_from may change about the architecture


def model_config_for(o, explicit, vocab_size, init=None):
    """The model config of this run: from the options, or from the --init_from checkpoint `init` with a new pe
    (and QK-norm, if asked for)."""
    try:
        arch = GPTConfig(**{k: o[k] for k in MODEL_OPTIONS}, vocab_size=vocab_size).to_dict()
    except ValueError as e:
        sys.exit(f"error: {e}")
    if init is not None:
        saved = init["model_config"]
        clash = [d for d in architecture_diff(saved, arch)
                 if d.split(":")[0] in explicit and d.split(":")[0] not in STAGE_CHANGES]
        if clash:
            sys.exit(f"error: --init_from keeps the checkpoint's architecture; these flags differ: {clash}")
        arch = {**arch, **{k: saved.get(k, getattr(GPTConfig, k)) for k in GPTConfig.ARCHITECTURE},
                **{k: arch[k] for k in STAGE_CHANGES}}
    return GPTConfig(**arch)


@torch.no_grad()
def estimate_loss(model, splits, o, ctx, device):
    """Mean loss over eval_iters fixed batches per split (the same batches at every evaluation)."""
    model.eval()
    out = {}
    for split, tokens in splits.items():
        gen = torch.Generator().manual_seed(o["seed"] + 1)
        losses = []
        for _ in range(o["eval_iters"]):
            x, y = get_batch(tokens, o["batch_size"], o["block_size"], gen)
            with ctx:
                losses.append(model(x.to(device), y.to(device))[1].item())
        out[split] = float(np.mean(losses))
    model.train()
    return out


def plot_losses(history, path, title):
    """The loss curves; in a retrieval run, a second panel with the NIAH probe: where the lookup appears."""
    probed = bool(history["probe_iter"])
    fig, axes = plt.subplots(1, 2 if probed else 1, figsize=(11 if probed else 6, 4), squeeze=False)
    ax = axes[0][0]
    ax.plot(history["iter"], history["train_loss"], label="train: each step's batch", alpha=0.7, lw=0.8)
    # points, not a line: the first interval would otherwise be drawn as a straight drop the model never took
    ax.plot(history["eval_iter"], history["val_loss"], "o", label="validation: held-out batches")
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy (nats/token, log scale)")
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    if probed:
        ax = axes[0][1]
        ax.plot(history["probe_iter"], history["probe_exact"], "o-", label="single needle: exact match")
        # one per probe, unless the run began before the multi-key probe existed or its context cannot hold it
        if history.get("probe_multikey") and len(history["probe_multikey"]) == len(history["probe_iter"]):
            ax.plot(history["probe_iter"], history["probe_multikey"], "^-",
                    label="multi-key needle: exact match (the asked key's among 4)")
            ax.axhline(100 * MULTIKEY_CHANCE, color="gray", lw=0.8, ls=":", label="multi-key chance (1 in 4)")
        ax.plot(history["probe_iter"], history["probe_needle"], "s--", label="attention on the needle (best layer)")
        ax.set_xlabel("iteration")
        ax.set_ylabel("%")
        ax.set_ylim(-3, 103)
        ax.set_title("NIAH probe at the training length (held-out wordings)")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


class BatchPrefetcher:
    """Makes the batches of the coming steps in a background thread, in step order, so that the retrieval drills
    (generated in Python) are ready when the step wants them. Each step's batch comes with the batch stream's
    state after it: the checkpoint stores the state after the last step taken, so a resumed run continues the
    stream exactly where the uninterrupted one would."""

    def __init__(self, make_step, stream, steps, ahead=4):
        self.queue = queue.Queue(maxsize=ahead)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.produce, args=(make_step, stream, steps), daemon=True)
        self.thread.start()

    def produce(self, make_step, stream, steps):
        try:
            for it in steps:
                if not self.put((make_step(it), stream.get_state())):
                    return
        except BaseException as e:  # handed to the training loop, which raises it
            self.put(e)

    def put(self, item):
        while not self.stop.is_set():  # wakes now and then to see whether training has ended
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def next(self):
        item = self.queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self):
        self.stop.set()
        self.thread.join()


class SeedRecorder:
    """Stands in for the DrillMaker while --prepare_drills replays a batch stream: notes the seeds asked for, by row
    length, and returns placeholder rows of the right shape."""

    def __init__(self):
        self.seeds = {}  # row length -> the seeds of its drills, in the order drawn

    def __call__(self, seeds, length):
        self.seeds.setdefault(length, []).extend(seeds)
        return (np.zeros((len(seeds), length), np.int64), np.zeros((len(seeds), length), bool),
                np.zeros((len(seeds), length), np.int8))


def prepare_drills(o, explicit, env):
    """--prepare_drills: replays the batch stream of steps 0 .. max_iters - 1 as train() draws it (the drills draw
    nothing from it, so placeholders do), then makes every drill it asked for and adds it to drills_dir."""
    check_writable_dir(o["drills_dir"], "--drills_dir")
    config, splits, _, _, drills = load_data(o, explicit, None, env)
    try:
        recorder, start = SeedRecorder(), time.time()
        replay = SimpleNamespace(o=o, config=config, data_gen=torch.Generator().manual_seed(o["seed"]),
                                 env=SimpleNamespace(rank=0, world=1, device_type="cpu"), drills=recorder)
        for it in range(o["max_iters"]):
            step_batches(replay, splits["train"], it)
        print(f"replayed the batch stream of {o['max_iters']:,} steps ({format_seconds(time.time() - start)}): "
              + ", ".join(f"{len(seeds):,} drills of {length} tokens" for length, seeds in recorder.seeds.items()))
        for length, seeds in recorder.seeds.items():
            made = drills.prepare(o["drills_dir"], seeds, length)
            print(f"{table_path(o['drills_dir'], length)}: {made:,} drills made, {len(set(seeds)) - made:,} there "
                  f"already")
    finally:
        drills.close()


def interrupted_message(it, saved_iter, ckpt_path, argv):
    """What an interrupted run says: where it stopped, what its checkpoint holds, and the command that goes on."""
    command = shlex.join(["python", "train.py", *argv])
    if saved_iter is None:
        return f"interrupted at iteration {it}, before the first checkpoint was written; start again with: {command}"
    resume = command if "--resume" in argv else f"{command} --resume"
    return f"interrupted at iteration {it}; {ckpt_path} holds iteration {saved_iter}; resume with: {resume}"


def format_seconds(s):
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m" if s >= 3600 else f"{int(s // 60)}m{int(s % 60):02d}s"


def start_processes(o):
    """The device, the processes (one, or torchrun's N with DDP) and the precision of this run."""
    env = SimpleNamespace(ddp="RANK" in os.environ)  # launched by torchrun
    env.rank, env.world = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if env.ddp else (0, 1)
    env.master = env.rank == 0
    env.device = resolve_device(o["device"])
    if env.ddp:
        if env.device.startswith("cuda"):
            env.device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(env.device)
        dist.init_process_group(backend="nccl" if env.device.startswith("cuda") else "gloo")
    env.device_type = torch.device(env.device).type
    check_available(o["kernels"], env.device_type)
    if o["grad_accum"] % env.world:
        sys.exit(f"error: --grad_accum {o['grad_accum']} must be a multiple of the number of processes ({env.world})")
    env.accum_here = o["grad_accum"] // env.world
    env.dtype = o["dtype"] if o["dtype"] != "auto" else ("bfloat16" if env.device_type == "cuda" else "float32")
    env.ctx = torch.autocast(env.device_type, dtype=torch.bfloat16) if env.dtype == "bfloat16" else nullcontext()
    return env


def check_inputs(o, explicit, env):
    """Every check that needs no data, before anything is written (a refused command leaves no out_dir behind:
    write_atomic makes it with the first file). Returns the checkpoint to resume, the one to start a stage from
    (or None), and the defaults the stage's method set."""
    ckpt_path = os.path.join(o["out_dir"], "ckpt.pt")
    if env.master:
        check_writable_dir(o["out_dir"], "--out_dir")
    if o["resume"] and not os.path.exists(ckpt_path):
        sys.exit(f"error: --resume: no checkpoint at {ckpt_path} to continue; leave out --resume to start a new run "
                 f"there")
    if not o["resume"] and os.path.exists(ckpt_path):
        sys.exit(f"error: {ckpt_path} exists; pass --resume to continue it, or choose another --out_dir "
                 f"(nothing is overwritten)")
    resumed = load_checkpoint(ckpt_path, "--resume") if o["resume"] else None
    init = load_checkpoint(o["init_from"], "--init_from") if o["init_from"] else None
    method_defaults = {}
    if init is not None:  # the method's defaults for a stage from a checkpoint (DroPE: its recalibration schedule)
        method_defaults = {k: v for k, v in stage_defaults(o["pe"], init).items() if k not in explicit}
        o.update(method_defaults)
    check_schedule(o, explicit, method_defaults)
    if resumed is not None:
        check_kept_iterations(o, resumed["iter"])
    return resumed, init, method_defaults


def load_data(o, explicit, init, env):
    """The model config (it needs the data's vocabulary) and the data: (config, {split: tokens}, the tokenizer and
    the NIAH probe's samples and the DrillMaker when drills are made, else None, [] and None). The caller closes
    the DrillMaker (its worker processes)."""
    data_dir = data_dir_for(o, explicit, env.master)
    if env.ddp:
        dist.barrier()  # rank 0 may have generated the embedded corpus
    config = model_config_for(o, explicit, load_meta(data_dir)["vocab_size"], init)
    o.update({k: getattr(config, k) for k in MODEL_OPTIONS})
    splits = {split: load_tokens(data_dir, split, min_tokens=config.block_size + 2) for split in ("train", "val")}
    check_memory(config, o["batch_size"], env.device)
    if o["curriculum_iters"] and not o["curriculum_len"] < config.block_size:
        sys.exit(f"error: --curriculum_len {o['curriculum_len']} must be shorter than --block_size "
                 f"{config.block_size}: the curriculum's rows are the short ones")
    if not o["niah_mix"] > 0:
        return config, splits, None, [], None
    enc = load_tokenizer(data_dir)
    try:  # the same held-out samples at every evaluation
        probes = probe_samples(enc, splits["val"], config.block_size)
    except ValueError as e:  # the context cannot hold a needle and its question
        sys.exit(f"error: --niah_mix {o['niah_mix']} needs retrieval drills, and --block_size {config.block_size} is "
                 f"too short for them ({e}); config/niah_cpu.py uses 128")
    try:  # --prepare_drills writes --drills_dir; a run reads it
        drills = DrillMaker(data_dir, o["data_workers"], None if o["prepare_drills"] else o["drills_dir"] or None,
                            {"needles": o["drill_needles"], "shared_wording": o["shared_wording"]})
    except ValueError as e:  # --drills_dir missing, empty or prepared from other data
        sys.exit(f"error: --drills_dir {o['drills_dir']}: {e}")
    if o["curriculum_iters"]:
        try:  # drills this short must fit (make_drill refuses a needle and question that leave too little haystack)
            drills.make(range(200), o["curriculum_len"] + 1)
        except ValueError as e:
            drills.close()
            sys.exit(f"error: --curriculum_len {o['curriculum_len']} is too short for retrieval drills ({e}); "
                     f"config/niah_cpu.py uses 48")
    return config, splits, enc, probes, drills


def build(o, config, resumed, init, env):
    """The run: model, optimizer, loss history and batch stream, fresh, from a stage's checkpoint, or resumed."""
    torch.manual_seed(o["seed"])
    run = SimpleNamespace(o=o, config=config, env=env, model=GPT(config),
                          ckpt_path=os.path.join(o["out_dir"], "ckpt.pt"),
                          history={"iter": [], "train_loss": [], "grad_norm": [], "eval_iter": [], "val_loss": [],
                                   "probe_iter": [], "probe_exact": [], "probe_multikey": [], "probe_needle": []},
                          start_iter=0, seconds_before=0.0, saved_at=None, t_start=time.time())
    run.data_gen = torch.Generator().manual_seed(o["seed"])  # the train-batch stream; its state is the data position
    if resumed is not None:
        diff = architecture_diff(resumed["model_config"], config.to_dict())
        if diff:
            sys.exit(f"error: refusing to resume {run.ckpt_path} with a different model; differs: {'; '.join(diff)}")
        run.model.load_state_dict(resumed["model"])
        run.history, run.start_iter = {**run.history, **resumed["history"]}, resumed["iter"]  # older: no probe
        run.saved_at, run.seconds_before = resumed["iter"], resumed.get("seconds", 0.0)
        run.data_gen.set_state(resumed["data_rng"])
        torch.set_rng_state(resumed["torch_rng"])
        if env.master:
            print(f"resuming {run.ckpt_path} at iteration {run.start_iter}")
    elif init is not None:
        missing, unexpected = run.model.load_state_dict(init["model"], strict=False)
        if env.master:
            print(f"initialised from {o['init_from']} (pe {init['model_config']['pe']} -> {config.pe}); "
                  f"fresh: {missing or 'none'}; not used: {unexpected or 'none'}")
    run.model.to(env.device)
    run.optimizer = make_optimizer(run.model, o, env.device_type)
    if resumed is not None:
        run.optimizer.load_state_dict(resumed["optimizer"])
    # dynamic=False: a run has two shapes (the curriculum's short rows, then L), each compiled once into a graph
    # specialised to it; by default the second would be compiled with symbolic sizes (automatic dynamic shapes)
    run.train_model = torch.compile(run.model, dynamic=False) if o["compile"] else run.model
    if env.ddp:
        run.train_model = DDP(run.train_model, device_ids=[env.device] if env.device_type == "cuda" else None)
    run.data_state = run.data_gen.get_state()  # the batch stream after the last step taken
    if env.master:
        print(f"{run.model.num_params():,} parameters | pe={config.pe} | {o['dataset']} | device {env.device} "
              f"{env.dtype} | {env.world} process(es) | {tokens_per_step(run, o['max_iters'] - 1):,} tokens/step"
              + (f" ({o['curriculum_iters']:,} steps of {o['curriculum_len']}-token rows first)"
                 if o["curriculum_iters"] else ""))
    return run


def row_shape(run, it):
    """(rows per micro-batch, tokens per row) of step it: the curriculum's short rows first, then block_size."""
    o, block_size = run.o, run.config.block_size
    if it < o["curriculum_iters"]:
        return o["batch_size"] * block_size // o["curriculum_len"], o["curriculum_len"]
    return o["batch_size"], block_size


def tokens_per_step(run, it):
    rows, length = row_shape(run, it)
    return rows * length * run.o["grad_accum"]


def save(run, it, path=None):
    """A checkpoint of iteration `it` (ckpt.pt unless path names a kept copy), and the loss curve beside it."""
    path = path or run.ckpt_path
    if path == run.ckpt_path:
        run.saved_at = it
    save_checkpoint(path, {
        # the kernel switch is a choice of the machine that runs the model, not of the model: stored as "auto"
        "model_config": {**run.config.to_dict(), "kernels": "auto"}, "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(), "iter": it, "options": run.o, "history": run.history,
        "seconds": run.seconds_before + time.time() - run.t_start,
        "data_rng": run.data_state, "torch_rng": torch.get_rng_state()})
    plot_losses(run.history, os.path.join(run.o["out_dir"], "loss.png"), f"{run.config.pe}, {run.o['dataset']}")


def step_batches(run, train_tokens, it):
    """This process's micro-batches of step it, and its attention window (runs in the prefetcher). Every process
    draws the whole step's rows and keeps its share, so N processes see exactly the batches that one process with
    the same grad_accum would see."""
    o, env = run.o, run.env
    n_rows, length = row_shape(run, it)
    rows = [train_batch(train_tokens, {**o, "batch_size": n_rows}, length, run.data_gen, run.drills)
            for _ in range(o["grad_accum"])][env.rank::env.world]
    if env.device_type == "cuda":  # page-locked, so the copy to the GPU does not wait for the host
        rows = [tuple(t if t is None else t.pin_memory() for t in row) for row in rows]
    # FwPKM's trick: some steps attend only within a sliding window, so lookups further back need the memory
    swa = o["swa_prob"] > 0 and torch.rand(1, generator=run.data_gen) < o["swa_prob"]
    window = (o["swa_window"] or o["memory_chunk"]) if swa else None
    return rows, window


def optimizer_step(run, it, rows, window):
    """One optimiser step over the micro-batches rows; returns (mean loss, gradient norm before clipping)."""
    o, env = run.o, run.env
    for group in run.optimizer.param_groups:
        group["lr"] = lr_at(it, o)
    loss_sum = torch.zeros((), device=env.device)
    for micro, row in enumerate(rows):
        if env.ddp:  # all-reduce gradients only on the last micro-step
            run.train_model.require_backward_grad_sync = micro == env.accum_here - 1
        x, y, weights, names = (t if t is None else t.to(env.device, non_blocking=True) for t in row)
        with env.ctx:
            _, loss = run.train_model(x, y, window=window, weights=weights, anonymous=names)
        (loss / env.accum_here).backward()
        loss_sum += loss.detach()
    if env.ddp:  # the logged loss is the mean over all processes, and all stop together if it is not finite
        dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), o["grad_clip"] or float("inf")).item()
    loss_value = loss_sum.item() / env.accum_here
    if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
        kept = (f"the last good checkpoint {run.ckpt_path} is kept" if os.path.exists(run.ckpt_path)
                else "no checkpoint")
        sys.exit(f"error: non-finite loss {loss_value} (grad norm {grad_norm}) at iteration {it}; stopping; {kept}. "
                 f"Try a lower --lr.")
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return loss_value, grad_norm


def evaluate(run, splits, it):
    """The validation loss at iteration it, into the history (and onto the screen); in a retrieval run
    (niah_mix > 0) also the NIAH probe: exact match at 1x of the single and the multi-key needle, and the attention
    on the single needle (eval_niah.probe)."""
    t_eval = time.perf_counter()
    losses = estimate_loss(run.model, splits, run.o, run.env.ctx, run.env.device)
    run.history["eval_iter"].append(it)
    run.history["val_loss"].append(losses["val"])
    probed = ""
    if run.probe_samples:
        run.model.eval()
        with run.env.ctx:
            scores = probe(run.model, run.probe_samples, run.enc, run.env.device)
        run.model.train()
        for key, value in (("probe_iter", it), ("probe_exact", scores["single"]), ("probe_needle", scores["needle"])):
            run.history[key].append(value)
        multikey = ""
        if "multikey" in scores:  # a context long enough for it (eval_niah.probe_samples)
            run.history["probe_multikey"].append(scores["multikey"])
            multikey = f", multi-key {scores['multikey']:.0f}% (chance {100 * MULTIKEY_CHANCE:.0f}%)"
        probed = (f" | NIAH at 1x: single {scores['single']:.0f}%{multikey}, {scores['needle']:.0f}% attention on "
                  f"the needle")
    print(f"eval iter {it}: train {losses['train']:.4f} val {losses['val']:.4f}{probed} "
          f"({time.perf_counter() - t_eval:.1f}s){format_health(run.model.health_reports())}")
    return losses


def progress_line(run, it, loss, interval):
    """The line every log_interval steps: loss, learning rate, training speed, the data wait, ETA (and MFU)."""
    rate = interval["tokens"] / interval["seconds"]
    eta = interval["seconds"] / interval["steps"] * (run.o["max_iters"] - it - 1)
    mfu = ""
    if run.env.device_type == "cuda":
        c = run.config
        flops_per_token = 6 * run.model.num_params() + 12 * c.n_layer * c.n_embd * c.block_size
        peak_flops = 989e12 if run.env.dtype == "bfloat16" else 67e12  # H100 SXM dense bf16 / fp32
        mfu = f" | MFU {100 * rate * flops_per_token / (peak_flops * run.env.world):.1f}%"
    return (f"iter {it + 1}/{run.o['max_iters']} | loss {loss:.4f} | lr {lr_at(it, run.o):.2e} | "
            f"{rate / 1e3:.1f}k tok/s | data {100 * interval['data'] / interval['seconds']:.1f}% of step | "
            f"ETA {format_seconds(eta)}{mfu}")


def train(run, splits, argv):
    """The loop from the run's iteration to max_iters: evaluations and checkpoints every eval_interval, kept copies
    at keep_iters, a progress line every log_interval. Ctrl-C ends it with one line saying how to resume."""
    o, master = run.o, run.env.master
    # the progress line's rates count training steps only: evaluation and checkpoints are timed on their own
    interval = {"steps": 0, "tokens": 0, "seconds": 0.0, "data": 0.0}
    prefetcher = BatchPrefetcher(lambda it: step_batches(run, splits["train"], it), run.data_gen,
                                 range(run.start_iter, o["max_iters"]))
    it = run.start_iter
    compiled = set()  # the (row shape, window) pairs compiled so far
    try:
        for it in range(run.start_iter, o["max_iters"]):
            if master and (it % o["eval_interval"] == 0 and it > run.start_iter
                           or it == 0 and not run.history["eval_iter"]):
                evaluate(run, splits, it)
                if it > run.start_iter:
                    save(run, it)
            keep_path = os.path.join(o["out_dir"], f"ckpt_{it}.pt")
            # also at the resume's first iteration when the file is missing: a kill after ckpt.pt was written at
            # this iteration and before this copy would otherwise lose the drop point that later stages start from
            if master and it in o["keep_iters"] and (it > run.start_iter or not os.path.exists(keep_path)):
                save(run, it, keep_path)
            t_step = time.perf_counter()
            (rows, window), step_data_state = prefetcher.next()
            t_data = time.perf_counter() - t_step
            loss, grad_norm = optimizer_step(run, it, rows, window)
            run.data_state = step_data_state
            step_seconds = time.perf_counter() - t_step  # .item() in the step waited for the device
            graph = (row_shape(run, it), window)  # with compile, each new shape or window compiles a graph
            if o["compile"] and graph not in compiled:
                compiled.add(graph)
                if master:
                    print(f"iter {it}: torch.compile compiling for {graph[0][0]} rows of {graph[0][1]} tokens"
                          f"{f', window {window}' if window else ''}: {step_seconds:.1f}s (not in the rates)")
            else:
                interval["steps"] += 1
                interval["tokens"] += tokens_per_step(run, it)
                interval["seconds"] += step_seconds
                interval["data"] += t_data
            if master:
                for key, value in (("iter", it), ("train_loss", loss), ("grad_norm", grad_norm)):
                    run.history[key].append(value)
            # the first step too: a run whose steps take long says so at once, with its ETA
            if master and ((it + 1) % o["log_interval"] == 0 or it == run.start_iter) and interval["steps"]:
                print(progress_line(run, it, loss, interval), flush=True)
                interval = {"steps": 0, "tokens": 0, "seconds": 0.0, "data": 0.0}
    except KeyboardInterrupt:  # Ctrl-C: one line on what is kept and how to go on, instead of a traceback
        if master:
            print(interrupted_message(it, run.saved_at, run.ckpt_path, sys.argv[1:] if argv is None else argv),
                  file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        prefetcher.close()


def finish(run, splits):
    """The last evaluation and checkpoint, and the line that says what the run took."""
    o = run.o
    if run.start_iter >= o["max_iters"]:
        print(f"{run.ckpt_path} already finished its {o['max_iters']} iterations (raise --max_iters to train on)")
        return
    losses = evaluate(run, splits, o["max_iters"])
    save(run, o["max_iters"])
    this_run = time.time() - run.t_start
    took = (f"{format_seconds(run.seconds_before + this_run)} in all, {format_seconds(this_run)} since the resume"
            if run.start_iter else format_seconds(this_run))
    read = (f"; drills: {run.drills.read:,} read from {o['drills_dir']}, {run.drills.made:,} made"
            if o["drills_dir"] and run.drills else "")
    print(f"done: val loss {losses['val']:.4f} after {o['max_iters']} iterations ({took}); wrote {run.ckpt_path}"
          + read)


def main(argv=None):
    o, explicit = parse_args(argv)                               # options: defaults < --config file < flags
    env = start_processes(o)                                     # device, processes, precision
    if o["prepare_drills"]:
        return prepare_drills(o, explicit, env)                  # the run's drills, made before it instead
    resumed, init, method_defaults = check_inputs(o, explicit, env)  # refused before anything is written
    config, splits, enc, probes, drills = load_data(o, explicit, init, env)
    if env.master and method_defaults:
        print(f"defaults of pe={o['pe']} for a stage from a checkpoint: {method_defaults}")
    try:
        run = build(o, config, resumed, init, env)               # model, optimizer, history, batch stream
        run.enc, run.probe_samples = enc, probes                 # a retrieval run probes the lookup at evaluations
        run.drills = drills                                      # makes the retrieval drills (or None)
        train(run, splits, argv)                                 # the loop, with checkpoints as it goes
    finally:
        if drills:
            drills.close()                                       # its worker processes
    if env.master:
        finish(run, splits)                                      # the last evaluation and checkpoint
    if env.ddp:
        dist.barrier()  # the others wait for rank 0's last checkpoint, then all tear down together
        run.train_model = None  # DDP's reducer holds the process group: freed now, not while Python shuts down
        dist.destroy_process_group()
    return run.history


if __name__ == "__main__":
    main()
