import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")  # kernels/ run under Triton's CPU interpreter; must precede @triton.jit
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A small embedded dataset (same generator and tokenizer as the default, fewer stories)."""
    from data.embedded import prepare
    return prepare(str(tmp_path_factory.mktemp("embedded")), train_stories=300, val_stories=30)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
