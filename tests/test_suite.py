"""The suite's own set-up (tests/conftest.py): under pytest-xdist the workers share the cores instead of each
starting a torch thread per core, and the kernels run under Triton's interpreter only where no GPU can run them."""
import os

import pytest
import torch


def test_xdist_workers_share_the_cores(cores):
    """torch reads OMP_NUM_THREADS when it is imported: this fails if something imported it before conftest.py."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers is None:
        pytest.skip("one process (no pytest-xdist): torch's own default of a thread per core")
    share = max(1, cores // int(workers))
    if os.environ["OMP_NUM_THREADS"] != str(share):
        pytest.skip(f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} set by hand")
    assert torch.get_num_threads() == share


def test_kernels_are_interpreted_only_without_a_gpu():
    """The interpreter is chosen when triton is imported: this fails if something imported it before conftest.py."""
    triton = pytest.importorskip("triton")
    if torch.cuda.is_available():
        if os.environ.get("TRITON_INTERPRET") == "1":
            pytest.skip("TRITON_INTERPRET=1 set by hand")
        assert not triton.knobs.runtime.interpret
    else:
        assert triton.knobs.runtime.interpret
