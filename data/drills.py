"""
The retrieval drills of training (data/niah.py make_drill) at the rate a GPU step wants them, with the same rows
however they are made.

A drill is make_drill(random.Random(seed), ...) over the "train" split of a dataset: it depends on its seed, its
length and the drills' shape (make_drill's needles and shared_wording: train.py --drill_needles, --shared_wording).
train.py's batch stream draws the seeds (train_batch), and a DrillMaker turns seeds into rows in one of three
ways, all giving the same rows, so a run is the same run and resumes bit for bit whichever it uses:

- in this process (the default; the drills are Python, a row at a time, ~1.1M tokens/s on one core);
- in worker processes (train.py --data_workers N), each making a chunk of rows and handing them back as arrays;
- read from drills prepared before training (train.py --drills_dir DIR), made once for every run that reads them:

    python train.py --config config/niah_gpu.py --prepare_drills --drills_dir out/drills --data_workers 16
    python train.py --config config/niah_gpu.py --pe repo --drills_dir out/drills

  --prepare_drills replays the run's batch stream without training, so it knows every seed the run will draw, makes
  those drills on all the workers and adds them to DIR/drills_<length>.npy: one sorted table per row length (the
  curriculum's short rows and the full ones) of seed, tokens, answer marks and name slots, read as a memory map. Runs
  with the same seed and the same rows per step draw the same seeds, so every arm of a study reads the same drills
  (reproduce.sh prepares them first). A seed the table does not hold is made as before, and the run's last line counts
  both. Opening a table remakes a few of its rows and refuses it if they differ: made from other data or by another
  version of data/niah.py.
"""
import multiprocessing
import os
import random
import time

import numpy as np

from data.format import load_tokenizer, load_tokens, write_atomic
from data.niah import make_drill

CHECKED_ROWS = 8  # rows of a prepared table remade when it is opened


def make_rows(enc, source, seeds, length, shape):
    """The drills of `seeds` as three arrays [len(seeds), length]: tokens (the source's dtype), is_answer (bool) and
    name_at (int8: a drill names its few keys and the split's 18 story characters); shape: make_drill's keyword
    arguments."""
    tokens = np.empty((len(seeds), length), source.dtype)
    is_answer = np.empty((len(seeds), length), bool)
    name_at = np.empty((len(seeds), length), np.int8)
    for i, seed in enumerate(seeds):
        drill = make_drill(random.Random(int(seed)), enc, source, length, "train", **shape)
        tokens[i], is_answer[i], name_at[i] = drill
    return tokens, is_answer, name_at


def table_path(directory, length):
    return os.path.join(directory, f"drills_{length}.npy")


class DrillMaker:
    """Turns seeds into drills of the "train" split of data_dir, of the given shape (make_drill's keyword arguments):
    in this process, in `workers` processes, or read from the tables in prepared_dir (module docstring)."""

    def __init__(self, data_dir, workers=0, prepared_dir=None, shape=None):
        self.workers, self.shape = workers, shape or {}
        self.enc, self.source = load_tokenizer(data_dir), load_tokens(data_dir, "train")
        # spawn, not fork: a forked child of a process with torch's threads running can deadlock
        self.pool = (multiprocessing.get_context("spawn").Pool(workers, start_worker, (data_dir, self.shape))
                     if workers else None)
        self.tables = {}  # length -> the prepared table of drills of that length, sorted by seed (a memory map)
        if prepared_dir is not None:
            names = os.listdir(prepared_dir) if os.path.isdir(prepared_dir) else []
            lengths = sorted(int(name[len("drills_"):-len(".npy")]) for name in names
                             if name.startswith("drills_") and name.endswith(".npy"))
            if not lengths:
                raise ValueError("holds no prepared drills (drills_<length>.npy); make them with the run's options "
                                 "and --prepare_drills")
            for length in lengths:
                self.tables[length] = self.open_table(table_path(prepared_dir, length), length)
        self.read = self.made = 0  # drills asked for: read from a table, made

    def open_table(self, path, length):
        """The table of drills of `length` tokens at path, after remaking CHECKED_ROWS of its rows."""
        table = np.load(path, mmap_mode="r")
        at = np.linspace(0, len(table) - 1, min(CHECKED_ROWS, len(table))).astype(int)
        for field, remade in zip(("tokens", "is_answer", "name_at"), self.make(table["seed"][at], length)):
            if not np.array_equal(table[field][at], remade):
                raise ValueError(f"its {os.path.basename(path)} differs from the drills made here from the same "
                                 f"seeds: prepared from other data, by another version of data/niah.py or for other "
                                 f"drill options (--drill_needles, --shared_wording); delete it and prepare again")
        return table

    def make(self, seeds, length):
        """make_rows of the seeds, in the workers when there are some (a few chunks each: even load, little
        overhead; a chunk comes back as three arrays, which cost less to hand over than the rows as lists)."""
        if self.pool is None or len(seeds) == 0:
            return make_rows(self.enc, self.source, seeds, length, self.shape)
        chunks = np.array_split(np.asarray(seeds), min(len(seeds), 4 * self.workers))
        parts = self.pool.starmap(rows_in_worker, [(chunk, length) for chunk in chunks])
        return tuple(np.concatenate(field) for field in zip(*parts))

    def __call__(self, seeds, length):
        """The drills of `length` tokens of the given seeds, in their order, as make_rows returns them: those in a
        prepared table read from it, the others made."""
        seeds = np.asarray(seeds, np.int64)
        table = self.tables.get(length)
        if table is None:
            self.made += len(seeds)
            return self.make(seeds, length)
        at = np.searchsorted(table["seed"], seeds).clip(max=len(table) - 1)
        found = table["seed"][at] == seeds
        rows = table[at[found]]  # one read of the table for every seed it holds
        parts = (rows["tokens"], rows["is_answer"], rows["name_at"])
        if found.all():
            self.read += len(seeds)
            return parts
        missing = self.make(seeds[~found], length)
        self.read, self.made = self.read + int(found.sum()), self.made + len(missing[0])
        merged = tuple(np.empty((len(seeds), length), part.dtype) for part in parts)
        for out, read, made in zip(merged, parts, missing):
            out[found], out[~found] = read, made
        return merged

    def prepare(self, directory, seeds, length):
        """Adds the drills of `seeds` (of `length` tokens) that directory's table lacks to it, made in chunks with a
        progress line; the table is rewritten atomically (temp file + rename) once all are made. Returns how many it
        made."""
        path = table_path(directory, length)
        old = np.load(path) if os.path.exists(path) else None
        seeds = np.unique(np.asarray(seeds, np.int64))
        if old is not None:
            seeds = seeds[~np.isin(seeds, old["seed"])]
        if len(seeds) == 0:
            return 0
        table = np.empty(len(seeds), [("seed", np.int64), ("tokens", self.source.dtype, (length,)),
                                      ("is_answer", bool, (length,)), ("name_at", np.int8, (length,))])
        table["seed"] = seeds
        chunk = 1024 * max(1, self.workers)  # rows per call of make: a progress line every second or so
        start = shown = time.perf_counter()
        for begin in range(0, len(seeds), chunk):
            end = min(begin + chunk, len(seeds))
            table["tokens"][begin:end], table["is_answer"][begin:end], table["name_at"][begin:end] = \
                self.make(seeds[begin:end], length)
            now = time.perf_counter()
            if now - shown > 2 or end == len(seeds):
                shown, rate = now, end / (now - start)
                print(f"drills of {length} tokens: {end:,}/{len(seeds):,} made | {rate:,.0f} rows/s, "
                      f"{rate * length / 1e3:,.0f}k tokens/s | ETA {(len(seeds) - end) / rate:.0f}s", flush=True)
        if old is not None:
            table = np.concatenate((old, table))
            table = table[np.argsort(table["seed"], kind="stable")]

        def write(tmp):
            with open(tmp, "wb") as f:  # a file object: np.save would add ".npy" to a temporary name
                np.save(f, table)
        write_atomic(path, write)
        return len(seeds)

    def close(self):
        if self.pool is not None:
            self.pool.terminate()


WORKER = {}  # in a DrillMaker's worker process: its tokenizer, haystack source and drill shape, loaded once


def start_worker(data_dir, shape):
    WORKER["enc"], WORKER["source"], WORKER["shape"] = load_tokenizer(data_dir), load_tokens(data_dir, "train"), shape


def rows_in_worker(seeds, length):
    return make_rows(WORKER["enc"], WORKER["source"], seeds, length, WORKER["shape"])
