"""Bad input through every command-line entry point: one line naming the bad value, a non-zero exit, no traceback,
and nothing written or changed."""
import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import assoc_recall
import bench
import drope_fit
import eval_niah
import repo_positions
import train
from data.format import write_atomic
from tests.test_train import ROOT, TINY

PROGRAMS = {"train.py": train.main, "eval_niah.py": eval_niah.main, "drope_fit.py": drope_fit.main,
            "repo_positions.py": repo_positions.main, "bench.py": bench.main, "assoc_recall.py": assoc_recall.main}
NO_SUCH_GPU = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_data):
    """A trained checkpoint, broken checkpoints, broken datasets and a file where a directory should be."""
    root = tmp_path_factory.mktemp("cli")
    data = str(root / "data")
    shutil.copytree(tiny_data, data)
    train.main(["--data_dir", data, "--out_dir", str(root / "good"), *TINY, "--max_iters", "2"])
    good = (root / "good" / "ckpt.pt").read_bytes()
    os.makedirs(root / "truncated")
    (root / "truncated" / "ckpt.pt").write_bytes(good[:len(good) // 2])
    (root / "random.pt").write_bytes(np.random.default_rng(0).bytes(5000))
    torch.save({"model_config": argparse.Namespace(pe="rope"), "model": {}}, root / "pickled.pt")  # not a tensor
    (root / "a_file").write_text("I am not a directory\n")
    os.makedirs(root / "empty_dir")
    (root / "syntax.py").write_text("max_iters = = 3\n")
    for name, change in {"half": lambda b: b[:len(b) // 2], "odd": lambda b: b + b"\0"}.items():
        shutil.copytree(tiny_data, root / name)
        path = root / name / "train.bin"
        path.write_bytes(change(path.read_bytes()))
    return root


def case(program, args, named):
    return pytest.param(program, args, named, id=f"{program} {' '.join(args)}")


W = "{w}"  # stands for the workspace directory in the cases below
CASES = [
    *(case("train.py", [f"--{name}", value], f"--{name} {value}")
      for name in ("block_size", "eval_interval", "log_interval", "grad_accum", "batch_size", "max_iters")
      for value in ("0", "-5")),
    case("train.py", ["--config", "missing.py"], "missing.py"),
    case("train.py", ["--config", f"{W}/syntax.py"], "syntax.py, line 1"),
    case("train.py", ["--device", NO_SUCH_GPU], NO_SUCH_GPU),
    case("train.py", ["--out_dir", f"{W}/a_file"], "a_file is a file"),
    case("train.py", ["--out_dir", f"{W}/a_file/run"], "a_file/run cannot be written"),
    case("train.py", ["--init_from", f"{W}/truncated/ckpt.pt", "--out_dir", f"{W}/new"], "not a valid checkpoint"),
    case("train.py", ["--init_from", f"{W}/random.pt", "--out_dir", f"{W}/new"], "random.pt is not a valid"),
    case("train.py", ["--init_from", f"{W}/pickled.pt", "--out_dir", f"{W}/new"], "pickled.pt is not a valid"),
    case("train.py", ["--resume", "--out_dir", f"{W}/truncated"], "ckpt.pt is not a valid checkpoint"),
    case("train.py", ["--resume", "--out_dir", f"{W}/empty"], "no checkpoint at"),
    case("train.py", ["--data_dir", f"{W}/half", "--out_dir", f"{W}/new"], "half/train.bin has"),
    case("train.py", ["--data_dir", f"{W}/odd", "--out_dir", f"{W}/new"], "odd/train.bin has"),
    case("train.py", ["--block_size", "100000", "--out_dir", f"{W}/new"], "fewer than the 100,002 needed"),
    case("train.py", ["--batch_size", "abc"], "'abc'"),
    case("train.py", ["--min_lr", "1", "--lr", "0.001"], "--min_lr 1.0 is above --lr 0.001"),
    *(case("train.py", ["--keep_iters", value], f"--keep_iters [{value}]") for value in ("99999", "-5")),
    case("train.py", ["--seed", "-5"], "--seed -5 must be at least 0"),
    case("train.py", ["--pkm_layers", "9"], "layers [9] do not exist"),
    case("train.py", ["--niah_mix", "1", "--block_size", "32"], "--block_size 32 is too short for them"),
    case("train.py", ["--answer_weight", "8"], "--answer_weight 8.0 weighs the answers of retrieval drills"),
    case("train.py", ["--niah_mix", "1", "--answer_weight", "-2"], "--answer_weight -2.0 must be at least 0"),
    case("train.py", ["--anonymous_names"], "--anonymous_names changes the names of retrieval drills, and --niah_mix is 0"),
    case("train.py", ["--init_from", f"{W}/missing.pt"], "no checkpoint at"),
    case("train.py", ["--prepare_drills", "--niah_mix", "1"], "it needs both --drills_dir and --niah_mix > 0"),
    case("train.py", ["--prepare_drills", "--drills_dir", f"{W}/drills"], "it needs both --drills_dir and --niah_mix > 0"),
    case("train.py", ["--prepare_drills", "--drills_dir", f"{W}/drills", "--niah_mix", "1", "--resume"],
         "--prepare_drills replays a batch stream from its first step"),
    *(case("train.py", ["--niah_mix", "1", "--block_size", "128", "--drills_dir", f"{W}/{d}"],
           f"--drills_dir {W}/{d}: holds no prepared drills") for d in ("nowhere", "empty_dir")),
    case("train.py", ["--prepare_drills", "--niah_mix", "1", "--block_size", "128", "--drills_dir", f"{W}/a_file"],
         "a_file is a file"),
    *(case("train.py", ["--data_dir", f"{W}/{d}"], f"{W}/{d} holds no prepared dataset") for d in ("nowhere", "empty_dir")),
    case("train.py", ["--kernels", "fast"], "unknown kernels 'fast'; valid choices: auto, on, off"),
    case("train.py", ["--shared_wording", "2"], "--shared_wording 2.0 must be between 0 and 1"),
    case("train.py", ["--drill_needles", "0"], "--drill_needles 0 must be at least 1"),
    case("train.py", ["--drills_dir", f"{W}/drills"],
         f"--drills_dir {W}/drills holds retrieval drills, and --niah_mix is 0"),
    case("train.py", ["--warmup_iters", "50", "--max_iters", "10"], "--warmup_iters 50 is more than --max_iters 10"),
    case("train.py", ["--pkm_layers", "1", "--memory_topk", "5000"],
         "memory_topk=5000: a memory reads the top k of each half's memory_n_sub=32 sub-keys; valid: 1..32"),
    case("train.py", ["--fwpkm_layers", "0", "--memory_topk", "0"], "--memory_topk 0 must be at least 1"),
    case("assoc_recall.py", ["--lrs", "abc"], "--lrs 'abc'"),
    case("assoc_recall.py", ["--lrs", "1e-3,0"], "--lrs '1e-3,0': every learning rate must be > 0"),
    case("assoc_recall.py", ["--pairs", "0"], "--pairs 0 must be at least 1"),
    case("assoc_recall.py", ["--pairs", "65"], "--pairs 65: at most 64 distinct keys"),
    case("assoc_recall.py", ["--n_embd", "30"], "--n_embd 30 must be a multiple of --n_head 4"),
    *(case("eval_niah.py", ["--ckpt", f"{W}/good/ckpt.pt", "--lengths", value], value) for value in ("abc", "0", "-1")),
    case("eval_niah.py", [], "give --ckpt (evaluate checkpoints) or --figures_from"),
    case("eval_niah.py", ["--figures_from", f"{W}/random.pt"], f"--figures_from {W}/random.pt: not a results.json"),
    case("eval_niah.py", ["--ckpt", f"{W}/good/ckpt.pt", "--iters", "x"], "--iters 'x'"),
    case("eval_niah.py", ["--ckpt", f"{W}/good/ckpt.pt", "--answer_writes", "never"],
         "unknown --answer_writes ['never']; valid choices: chunks, end"),
    case("eval_niah.py", ["--ckpt", f"{W}/good/ckpt.pt", "--answer_writes", "end"],
         "--answer_writes applies only to models with FwPKM layers"),
    *(case("eval_niah.py", ["--ckpt", f"{W}/good/ckpt.pt", "--batch_size", value], f"--batch_size {value}")
      for value in ("0", "-1")),
    case("eval_niah.py", ["--ckpt", f"{W}/good/ckpt.pt", "--logit_scale_c", "0.4"],
         "--logit_scale_c applies only to DroPE models"),
    case("eval_niah.py", ["--ckpt", f"{W}/good/ckpt.pt", "--iters", "3"], "--iters applies only to models with FwPKM"),
    *(case("drope_fit.py", ["--ckpt", f"{W}/good/ckpt.pt", f"--{name}", "0"], f"--{name} 0 must be at least 1")
      for name in ("rows", "batch_size")),
    case("repo_positions.py", ["--ckpt", f"{W}/good/ckpt.pt", "--length", "-5"], "--length -5 must be at least 0"),
    case("bench.py", ["--warmup", "-1"], "--warmup -1 must be at least 0"),
    case("eval_niah.py", ["--ckpt", f"{W}/good/ckpt.pt", "--wordings", "seen,all"],
         "unknown --wordings ['all']; valid choices: seen, heldout"),
    *(case(program, ["--ckpt", f"{W}/{bad}"], f"{bad} is not a valid checkpoint")
      for program in ("eval_niah.py", "drope_fit.py", "repo_positions.py") for bad in ("truncated/ckpt.pt", "random.pt", "pickled.pt")),
    case("drope_fit.py", ["--ckpt", f"{W}/good/ckpt.pt", "--betas", "abc"], "--betas 'abc'"),
    case("drope_fit.py", ["--ckpt", f"{W}/good/ckpt.pt", "--betas", "2,1,0.1"], "--betas '2,1,0.1'"),
    case("repo_positions.py", ["--ckpt", f"{W}/missing.pt"], "missing.pt"),
    case("bench.py", ["--arms", "rope+n_layer=abc"], "n_layer='abc'"),
    case("bench.py", ["--compile", "fast"], "argument --compile: invalid choice: 'fast' (choose from 'default', "
                                            "'reduce-overhead', 'max-autotune')"),
]


def snapshot(root):
    return {os.path.relpath(os.path.join(d, f), root): hashlib.sha256(open(os.path.join(d, f), "rb").read()).digest()
            for d, _, files in os.walk(root) for f in files}


@pytest.mark.parametrize("program, args, named", CASES)
def test_bad_input_is_one_line_and_changes_nothing(workspace, program, args, named, capsys):
    args = [a.replace(W, str(workspace)) for a in args]
    if program == "train.py" and "--data_dir" not in args:
        args = ["--data_dir", str(workspace / "data"), *args]
    if program == "train.py" and "--out_dir" not in args:
        args += ["--out_dir", str(workspace / "new")]
    before = snapshot(workspace)
    with pytest.raises(SystemExit) as exit_:
        PROGRAMS[program](args)
    captured = capsys.readouterr()
    code = exit_.value.code
    message = (captured.err + (code if isinstance(code, str) else "")).strip()  # sys.exit(str) prints it and exits 1
    assert code not in (0, None), message
    assert captured.out == "" and len(message.splitlines()) == 1, captured.out + message
    assert message.startswith("error:") and named.replace(W, str(workspace)) in message, message
    assert snapshot(workspace) == before
    assert not (workspace / "new").exists() and not (workspace / "nowhere").exists()  # not even an empty directory
    assert not os.listdir(workspace / "empty_dir")


@pytest.mark.parametrize("argv", [["train.py", "--block_size", "0"], ["eval_niah.py", "--ckpt", "random.pt"],
                                  ["drope_fit.py", "--ckpt", "good/ckpt.pt", "--betas", "abc"]], ids=lambda a: a[0])
def test_command_line_prints_one_line_without_traceback(workspace, argv):
    done = subprocess.run([sys.executable, os.path.join(ROOT, argv[0]), *argv[1:]], cwd=workspace,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("error:"), done.stderr


def test_ctrl_c_during_training_is_one_line(workspace, tmp_path):
    """A real SIGINT, sent once the first progress line shows that the training loop runs. The child gets SIGINT's
    default action back: a job started in the background (as CI may start the suite) inherits SIGINT ignored, and
    Python then never raises KeyboardInterrupt."""
    train_py = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), "--data_dir", str(workspace / "data"),
                                 "--out_dir", str(tmp_path / "run"), *TINY, "--max_iters", "100000"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in train_py.stdout:
        if line.startswith("iter "):
            break
    train_py.send_signal(signal.SIGINT)
    try:
        _, err = train_py.communicate(timeout=600)  # generous: CI's machine may be busy
    finally:
        train_py.kill()  # never left running, whatever failed
    assert train_py.returncode == 130 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("interrupted at iteration ") and "Traceback" not in err, err


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        for pid in (int(dead.stdout), live.pid):
            open(f"{path}.{pid}.tmp", "wb").write(b"half a checkpoint")
        write_atomic(path, lambda tmp: open(tmp, "wb").write(b"whole"))
        assert sorted(os.listdir(tmp_path)) == sorted(["ckpt.pt", f"ckpt.pt.{live.pid}.tmp"])
    finally:
        live.communicate(b"")


def test_kernels_on_without_a_gpu_or_interpreter_is_one_line(workspace, monkeypatch):
    """--kernels on on a CPU needs Triton's interpreter, chosen in the environment before Python starts."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if torch.cuda.is_available():
        pytest.skip("a GPU runs --kernels on")
    with pytest.raises(SystemExit, match="--kernels on"):
        train.main(["--data_dir", str(workspace / "data"), "--out_dir", str(workspace / "new"), "--kernels", "on"])
    assert not (workspace / "new").exists()
