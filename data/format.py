"""
The one on-disk format every dataset uses, and the one batch sampler over it.

    data/<name>/train.bin   token ids, flat, uint16 (uint32 if the vocabulary needs it), documents separated by EOT
    data/<name>/val.bin     the same for validation
    data/<name>/meta.json   {"vocab_size", "dtype", "tokenizer", "eot_token", "train_tokens", "val_tokens"}
    data/<name>/tokenizer.json   only for a locally built tokenizer (the embedded default)

Files are written to a temporary name and renamed, so a killed preparation never leaves a half file that looks
finished.
"""
import glob
import json
import os
import time

import numpy as np
import tiktoken
import torch

DATA_ROOT = os.path.dirname(os.path.abspath(__file__))
PREPARE_COMMANDS = {  # dataset name -> the command that writes data/<name>/
    "embedded": "python data/embedded.py",
    "tinystories": "python data/tinystories.py",
    "openwebtext": "python data/openwebtext.py",
}


def dataset_dir(name):
    if name not in PREPARE_COMMANDS:
        raise ValueError(f"unknown dataset {name!r}; valid choices: {', '.join(PREPARE_COMMANDS)}")
    return os.path.join(DATA_ROOT, name)


def checkpoint_data_dir(ckpt, override=None):
    """The data directory a checkpoint was trained on (its options), unless override names another."""
    options = ckpt.get("options", {})
    return override or options.get("data_dir") or dataset_dir(options.get("dataset", "embedded"))


def write_atomic(path, write):
    """Calls write(tmp_path), then renames tmp_path to path. The temporary name is per process, so two runs that
    prepare the same file at once (two trainings started together on a fresh machine) do not collide. Temporary
    files that killed writers left beside path are removed first. The directory is created here, with its first
    file, so that a command refused before it writes anything leaves no empty directory."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    remove_stale_temp_files(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    write(tmp)
    os.replace(tmp, path)


def remove_stale_temp_files(path):
    """Removes path.<pid>.tmp files whose writer process is gone (killed mid-write); a live writer's file stays."""
    for tmp in glob.glob(glob.escape(path) + ".*.tmp"):
        pid = tmp[len(path) + 1:-len(".tmp")]
        if pid.isdigit() and not process_alive(int(pid)):
            try:
                os.remove(tmp)
            except FileNotFoundError:  # another process cleaned it up first
                pass


def process_alive(pid):
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def token_dtype(vocab_size):
    return np.uint16 if vocab_size <= 2 ** 16 else np.uint32


def write_documents(path, documents, enc, total=None, batch=1024):
    """Tokenizes an iterable of text documents into path (an EOT after each). Streams, so it works on corpora larger
    than memory, and prints a progress line (with an ETA when the number of documents is given as total).
    Returns the number of tokens written. A path that exists is finished work: it is kept and counted."""
    dtype = token_dtype(enc.n_vocab)
    if os.path.exists(path):
        return os.path.getsize(path) // np.dtype(dtype).itemsize
    counts = {"docs": 0, "tokens": 0}
    name = os.path.basename(path)

    def write(tmp):
        t0 = t_print = time.time()
        with open(tmp, "wb") as f:
            for docs in batches(documents, batch):
                ids = [t for doc in enc.encode_ordinary_batch(docs) for t in (*doc, enc.eot_token)]
                np.asarray(ids, dtype=dtype).tofile(f)
                counts["docs"] += len(docs)
                counts["tokens"] += len(ids)
                if time.time() - t_print > 2:
                    t_print = time.time()
                    rate = counts["docs"] / (t_print - t0)
                    eta = f", ETA {(total - counts['docs']) / rate / 60:.1f} min" if total else ""
                    print(f"{name}: {counts['docs']:,} documents, {counts['tokens']:,} tokens, {rate:,.0f} docs/s{eta}",
                          flush=True)
        print(f"{name}: {counts['docs']:,} documents, {counts['tokens']:,} tokens")
    write_atomic(path, write)
    return counts["tokens"]


def batches(items, n):
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def write_json(path, obj):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)
    write_atomic(path, write)


def write_meta(data_dir, enc, tokenizer_name, train_tokens, val_tokens):
    write_json(os.path.join(data_dir, "meta.json"), {
        "vocab_size": enc.n_vocab, "dtype": np.dtype(token_dtype(enc.n_vocab)).name, "tokenizer": tokenizer_name,
        "eot_token": enc.eot_token, "train_tokens": int(train_tokens), "val_tokens": int(val_tokens)})


def rebuild_command(data_dir):
    """How to write data_dir again: the preparation command of a dataset under data/, after removing the damage."""
    name = os.path.basename(os.path.normpath(data_dir))
    command = PREPARE_COMMANDS.get(name, "the script that prepared it")
    return f"rm -r {data_dir} && {command}" if name in PREPARE_COMMANDS else command


def load_meta(data_dir):
    """meta.json of a prepared dataset; ends the program with the command that prepares it when it is missing."""
    path = os.path.join(data_dir, "meta.json")
    if not os.path.exists(path):
        hint = PREPARE_COMMANDS.get(os.path.basename(os.path.normpath(data_dir)), "the data preparation script")
        raise SystemExit(f"error: no prepared dataset at {data_dir} (missing meta.json); run: {hint}")
    try:
        with open(path) as f:
            meta = json.load(f)
        meta["dtype"], meta["train_tokens"], meta["val_tokens"]
    except (ValueError, KeyError, TypeError):
        raise SystemExit(f"error: {path} is damaged; rebuild: {rebuild_command(data_dir)}") from None
    return meta


def load_tokens(data_dir, split, min_tokens=0):
    """The split's tokens as a read-only memmap, after checking the file against meta.json (a truncated file would
    otherwise train silently on less data) and that it holds at least min_tokens."""
    meta = load_meta(data_dir)
    path = os.path.join(data_dir, f"{split}.bin")
    itemsize = np.dtype(meta["dtype"]).itemsize
    size = os.path.getsize(path) if os.path.exists(path) else None
    expected = meta[f"{split}_tokens"]
    if size is None or size % itemsize or size // itemsize != expected:
        found = "is missing" if size is None else f"has {size:,} bytes"
        raise SystemExit(f"error: {path} {found}, but meta.json says {expected:,} tokens of {meta['dtype']} "
                         f"({expected * itemsize:,} bytes): incomplete or damaged; rebuild: {rebuild_command(data_dir)}")
    if expected < min_tokens:
        raise SystemExit(f"error: {path} has {expected:,} tokens, fewer than the {min_tokens:,} needed here; use a "
                         f"shorter context (--block_size) or a larger dataset")
    return np.memmap(path, dtype=meta["dtype"], mode="r")


def load_tokenizer(data_dir):
    meta = load_meta(data_dir)
    if meta["tokenizer"] == "gpt2":
        return gpt2_encoding()
    with open(os.path.join(data_dir, "tokenizer.json")) as f:
        return encoding_from_spec(json.load(f))


def gpt2_encoding():
    """tiktoken's gpt2 vocabulary, which tiktoken downloads (and caches) on first use."""
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # tiktoken raises the HTTP library's own errors when offline
        raise SystemExit(f"error: cannot load tiktoken's gpt2 vocabulary ({type(e).__name__}); its first use "
                         f"needs internet. The embedded default dataset (python train.py) works offline.")


def encoding_from_spec(spec):
    """A tiktoken.Encoding from {"name", "pat_str", "tokens": [hex bytes, in rank order], "special_tokens"}."""
    return tiktoken.Encoding(
        name=spec["name"], pat_str=spec["pat_str"],
        mergeable_ranks={bytes.fromhex(t): rank for rank, t in enumerate(spec["tokens"])},
        special_tokens=spec["special_tokens"])


def get_batch(tokens, n_rows, block_size, generator):
    """Random windows of block_size + 1 tokens: inputs x and next-token targets y, each [n_rows, block_size]."""
    starts = torch.randint(len(tokens) - block_size - 1, (n_rows,), generator=generator).tolist()
    window = torch.stack([torch.from_numpy(tokens[s:s + block_size + 1].astype(np.int64)) for s in starts])
    return window[:, :-1], window[:, 1:]
