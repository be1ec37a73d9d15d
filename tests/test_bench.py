import os
import subprocess
import sys

import pytest
import torch

import bench


def test_bench_reports_repo_overhead():
    result = bench.main(["--arms", "rope", "repo", "rope+fwpkm_layers=1+memory_n_sub=8", "--rounds", "2",
                         "--warmup", "1", "--n_layer", "3", "--n_embd", "32", "--n_head", "2", "--batch_size", "2",
                         "--block_size", "16", "--device", "cpu", "--vocab_size", "1024"])[16]
    d, d_p, heads = 32, 32 // 8, 2
    assert result["repo"]["params"] - result["rope"]["params"] == 3 * (2 * d * d_p + d_p * heads)  # W_g, W_c, W_z
    assert result["repo"]["flops"] > result["rope"]["flops"] and result["rope"]["time"] > 0
    assert result["rope+fwpkm_layers=1+memory_n_sub=8"]["params"] > result["rope"]["params"]
    assert result["repo"]["saved"] > result["rope"]["saved"] > 0  # RePo keeps its per-head cos/sin and f_φ's tensors
    assert result["rope+fwpkm_layers=1+memory_n_sub=8"]["ops"] > result["repo"]["ops"] > result["rope"]["ops"] > 0


def test_op_counter_counts_each_operator_once():
    x = torch.ones(3)
    with bench.OpCounter() as counter:
        (x + 1).view(3, 1) * 2  # the view launches nothing
        torch.empty(4)  # nor does an allocation
        torch.ones(2, 3, 4) @ torch.ones(4, 5)  # a matrix product of a batch: an mm and an _unsafe_view (no kernel)
    assert counter.count == 5  # add, mul, the two ones and mm


def test_a_triton_kernel_counts_as_one_launch():
    """fast_paths/rotary.py: two outputs allocated (no launch) and one kernel, whose interpreter (TRITON_INTERPRET=1,
    conftest.py) runs tensor operators of its own that a GPU would not; the counter restores triton when it leaves."""
    pytest.importorskip("triton", reason="triton is not installed")
    pytest.importorskip("fast_paths.rotary", reason="a student copy of assignment.py leaves the fast paths out")
    from triton.runtime.interpreter import InterpretedFunction
    from fast_paths.rotary import rotary
    run = InterpretedFunction.run
    q, k, pos, inv_freq = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8), torch.arange(5.0), torch.ones(4)
    with bench.OpCounter() as counter:
        rotary(q, k, pos, inv_freq)
    assert counter.count == 1 and InterpretedFunction.run is run


def test_saved_bytes_count_views_of_one_storage_once():
    """q, k and v are views of one qkv projection: what autograd keeps of them is that projection, once."""
    class Views(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.ones(2, 8))

        def forward(self, x, y):
            qk = self.p * 2.0  # a new [2, 8] fp32 storage: 64 bytes (a product by a number keeps nothing)
            return None, (qk[:, :4] * qk[:, 4:]).sum()  # the product keeps both halves: views of qk
    assert bench.saved_for_backward(Views(), None, torch.autocast("cpu", enabled=False)) == 64


def test_bench_rejects_unknown_arms():
    with pytest.raises(SystemExit, match="'alibi'.*valid choices"):
        bench.main(["--arms", "rope", "alibi"])
    with pytest.raises(SystemExit, match="unknown field 'fwpkm'"):
        bench.main(["--arms", "rope+fwpkm=1"])


def test_bench_measures_the_drill_rate_with_workers(capsys):
    rates = bench.drill_rates([0, 1], block_size=128, batch_size=4, seconds=0.2)
    assert set(rates) == {0, 1} and all(r > 0 for r in rates.values())
    # the batches read back from the table prepared from their replayed seeds: every drill was there
    assert "read from a prepared table: train.py --drills_dir; 0 drills not there" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="'0,two' must be a comma list"):
        bench.main(["--drills", "0,two"])


BENCH_GPU = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench_gpu.sh")
# the running interpreter as $PYTHON and no `python` on PATH: the script runs the interpreter it is given
NO_PYTHON_ON_PATH = {**os.environ, "PYTHON": sys.executable, "PATH": os.pathsep.join(("/usr/bin", "/bin"))}
needs_bench_gpu = pytest.mark.skipif(not os.path.exists(BENCH_GPU),
                                     reason="a student copy of assignment.py leaves bench_gpu.sh out")


@needs_bench_gpu
def test_bench_gpu_refuses_in_one_line(tmp_path):
    """bench_gpu.sh names a bad bandwidth or budget, and without a GPU says it needs one, before it writes anything."""
    for name, value in (("PEAK_GBPS", "fast"), ("BUDGET", "9m")):
        bad = subprocess.run(["bash", BENCH_GPU, str(tmp_path / "logs")], env={**NO_PYTHON_ON_PATH, name: value},
                             capture_output=True, text=True)
        assert bad.returncode == 2 and bad.stderr.startswith(f"error: {name}={value}") and bad.stderr.count("\n") == 1
    if torch.cuda.is_available():
        pytest.skip("with a GPU, bench_gpu.sh runs")
    done = subprocess.run(["bash", BENCH_GPU, str(tmp_path / "logs")], capture_output=True, text=True,
                          env=NO_PYTHON_ON_PATH)
    assert done.returncode == 2 and done.stderr.startswith("error: bench_gpu.sh needs a CUDA GPU")
    assert not (tmp_path / "logs").exists()


@needs_bench_gpu
def test_bench_gpu_runs_the_steps_its_budget_allows(tmp_path):
    """With a stand-in python that says a GPU is there and only echoes its commands: a budget of 100 s skips the
    compiled steps (each needs 150 s), gives every other step at most its own limit or what is left, and records
    all six steps in the summary, which lands in the tarball."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool, body in (("python", 'case "$*" in *cuda.is_available*) exit 0 ;; esac\necho "ran: $*"'),
                       ("nvidia-smi", "echo stand-in GPU")):
        (bin_dir / tool).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_dir / tool).chmod(0o755)
    logs = tmp_path / "logs"
    done = subprocess.run(["bash", BENCH_GPU, str(logs)], capture_output=True, text=True,
                          env={**os.environ, "BUDGET": "100", "PATH": f"{bin_dir}:{os.environ['PATH']}",
                               "PYTHON": "python"})  # the stand-in, found on PATH
    assert done.returncode == 0, done.stderr
    summary = (logs / "summary.txt").read_text().splitlines()
    assert [line.split()[0] for line in summary] == ["compiled", "kernels", "kernel_tests", "eager", "drills",
                                                     "cuda_graphs"]
    assert "skipped" in summary[0] and "skipped" in summary[5] and "needs 150s" in summary[0]
    assert all(" exit   0 " in line for line in summary[1:5])
    assert "[kernels] at most 60s: python bench_kernels.py --peak_gbps 4800" in done.stdout
    kernel_tests_limit = int(done.stdout.split("[kernel_tests] at most ")[1].split("s")[0])
    assert 60 <= kernel_tests_limit <= 100  # the budget's 100 s less what the steps before it took
    assert (logs / "eager.log").read_text().startswith("ran: bench.py --arms abs rope repo")
    listing = subprocess.run(["tar", "-tzf", f"{logs}.tgz"], capture_output=True, text=True, check=True).stdout
    assert "logs/summary.txt" in listing.split()
