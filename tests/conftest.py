import os
import sys

# Under pytest-xdist every worker would start as many torch threads as the machine has cores: 8 workers on 16 cores
# run 128 threads that spin while they wait for each other (two 2-thread runs on 2 cores train 15-25x slower,
# README). Each worker gets its share, and so do the train.py runs it starts (they inherit the environment).
def cpu_cores():
    """The cores this process may run on (os.cpu_count() counts the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


if "PYTEST_XDIST_WORKER_COUNT" in os.environ and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, cpu_cores() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest
import torch

# Without a GPU, fast_paths/ run under Triton's CPU interpreter, chosen when triton is imported (importing torch
# does not import it). With a GPU they are compiled: the interpreter would run them on CUDA tensors, slowly.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def cores():
    return cpu_cores()


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A small embedded dataset (same generator and tokenizer as the default, fewer stories)."""
    from data.embedded import prepare
    return prepare(str(tmp_path_factory.mktemp("embedded")), train_stories=300, val_stories=30)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
