"""
What the command-line programs (train.py, eval_niah.py, drope.py, repo.py, bench.py) share: a bad input ends the
program with ONE line on stderr that names the bad value and what is valid, a non-zero exit status, and nothing
written; checkpoints are read with weights_only=True and anything else is refused by name.
"""
import argparse
import os
import tempfile

import torch


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a bad option reported in one line (argparse prints the whole usage before it)."""

    def error(self, message):
        self.exit(2, f"error: {message} (python {self.prog} --help lists the options)\n")


def parse_list(text, kind, name, minimum=None, valid=None):
    """A comma list of `kind` values, e.g. '1,2,4' for --lengths; ends the program on a bad item."""
    try:
        items = [kind(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"error: --{name} {text!r} must be a comma list of {kind.__name__} values, e.g. 1,2") from None
    if not items:
        raise SystemExit(f"error: --{name} {text!r} is empty")
    bad = [x for x in items if valid is not None and x not in valid]
    if bad:
        raise SystemExit(f"error: unknown --{name} {bad}; valid choices: {', '.join(map(str, valid))}")
    bad = [x for x in items if minimum is not None and not x >= minimum]  # `not >=` also catches NaN
    if bad:
        raise SystemExit(f"error: --{name} {bad}: each must be at least {minimum}")
    return items


def check_minimum(values, minimum, names):
    """Ends the program in one line when an option in `names` is below `minimum` (or NaN). values: a dict of options,
    or argparse's Namespace."""
    values = values if isinstance(values, dict) else vars(values)
    for name in names:
        if not values[name] >= minimum:  # `not >=` also catches NaN
            raise SystemExit(f"error: --{name} {values[name]} must be at least {minimum}")


DEVICE_HELP = "auto (cuda if available), cpu, cuda, cuda:1, mps"  # the --device flag of every program


def resolve_device(name):
    """'auto' -> cuda if available, else cpu; a device torch cannot use here ends the program."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SystemExit(f"error: unknown --device {name!r}; valid: auto, cpu, cuda, cuda:N, mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {name}: this torch build has no CUDA or sees no GPU; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise SystemExit(f"error: --device {name}: only {torch.cuda.device_count()} GPU(s) visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SystemExit(f"error: --device {name}: MPS is not available here; use --device cpu")
    return name


def check_writable_dir(path, flag):
    """Proves that files can be written in directory `path` before any work is spent, and creates nothing: a
    refused command leaves no empty directory behind (write_atomic creates it with the first file). A temporary
    file, removed at once, is tried in `path` or, where it does not exist yet, in its nearest existing parent."""
    existing = path
    while existing and not os.path.exists(existing):
        existing = os.path.dirname(existing.rstrip(os.sep))
    existing = existing or "."
    if existing == path and not os.path.isdir(path):
        raise SystemExit(f"error: {flag} {path} is a file, not a directory")
    try:
        if not os.path.isdir(existing):
            raise NotADirectoryError(20, f"{existing} is a file")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise SystemExit(f"error: {flag} {path} cannot be written ({e.strerror})") from None


def load_checkpoint(path, flag="--ckpt"):
    """A checkpoint written by train.py, loaded on the CPU with weights_only=True (no code runs from the file)."""
    if not os.path.isfile(path):
        raise SystemExit(f"error: {flag}: no checkpoint at {path}; train one with: python train.py --out_dir "
                         f"{os.path.dirname(path) or '.'}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, random bytes, or a pickle of other objects: torch raises many kinds
        raise SystemExit(f"error: {flag} {path} is not a valid checkpoint of this project (unreadable: "
                         f"{type(e).__name__}); train.py writes them") from None
    if not isinstance(ckpt, dict) or not {"model_config", "model"} <= ckpt.keys():
        raise SystemExit(f"error: {flag} {path} is not a valid checkpoint of this project (no model_config and "
                         f"model in it); train.py writes them")
    ckpt["model_config"].setdefault("memory_query_span", 1)  # a config without the field means the one-token query
    return ckpt
