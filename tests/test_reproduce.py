"""reproduce.sh's refusals. The study itself takes hours and its smoke test (SMOKE=1) minutes on 2 cores, too long
for the suite: README, "The study", shows the smoke run."""
import os
import re
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the running interpreter, and a PATH without any `python`: the script must use $PYTHON, so that the suite passes
# under a virtual environment's python that is not activated
ENV = {**os.environ, "PYTHON": sys.executable, "PATH": os.pathsep.join(("/usr/bin", "/bin"))}
# mode gpu prints its plan and stops where no GPU is; with one it would run the study
plan_only = pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, mode gpu runs the study")


@pytest.mark.parametrize("args, env, message", [
    ([], {}, "error: unknown mode ''; valid choices: cpu, gpu"),
    (["tpu"], {}, "error: unknown mode 'tpu'; valid choices: cpu, gpu"),
    (["cpu", "gpu"], {}, "error: unknown mode 'cpu gpu'; valid choices: cpu, gpu"),
    (["cpu"], {"SMOKE": "yes"}, "error: SMOKE=yes; valid choices: 0 (the study), 1"),
    (["cpu"], {"JOBS": "0"}, "error: JOBS=0 must be a number of arms side by side, at least 1"),
    (["cpu"], {"SEED": "-1"}, "error: SEED=-1 must be a non-negative integer"),
    (["cpu"], {"ARMS": "rope,repo2"}, "error: ARMS names 'repo2'; valid choices: rope nope rope_at_late"),
])
def test_bad_input_is_refused_in_one_line(args, env, message):
    done = subprocess.run(["bash", os.path.join(ROOT, "reproduce.sh"), *args], capture_output=True, text=True,
                          env={**ENV, **env})
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(message) and done.stderr.count("\n") == 1


@plan_only
def test_gpu_plan_is_printed_where_no_gpu_can_run_it():
    """The one-GPU study's plan and estimate can be read on any machine (with the timings reproduce.sh names as
    guesses), then the refusal; the arms docs/gpu.md gives a lent GPU fit the 9 minutes it gives them."""
    done = subprocess.run(["bash", os.path.join(ROOT, "reproduce.sh"), "gpu"], capture_output=True, text=True,
                          env=ENV)
    assert done.returncode == 2 and done.stderr.startswith("error: mode gpu needs a CUDA GPU")
    assert "config/niah_gpu.py, 4000 steps per arm" in done.stdout and "fwpkm             4000  scratch" in done.stdout
    assert re.search(r"estimate: \dh\d\dm\d\ds for the drills \(20 s\), then \d+ steps", done.stdout)
    with open(os.path.join(ROOT, "docs", "gpu.md"), encoding="utf-8") as f:
        arms = re.search(r"timeout 540 env ARMS=([\w,]+) bash reproduce.sh gpu", f.read()).group(1)
    done = subprocess.run(["bash", os.path.join(ROOT, "reproduce.sh"), "gpu"], capture_output=True, text=True,
                          env={**ENV, "ARMS": arms})
    minutes = re.search(r"estimate: 0h(\d\d)m\d\ds for the drills", done.stdout)
    assert minutes and int(minutes.group(1)) < 9 and "GUESSES" in done.stdout


@plan_only
def test_the_plan_names_the_seed_and_arms_it_was_run_with():
    """The command in the plan's first line (and in results.md, and in the message to rerun an arm that failed) is
    the one that continues this run: with ARMS= it names the same arms, not the whole study."""
    done = subprocess.run(["bash", os.path.join(ROOT, "reproduce.sh"), "gpu"], capture_output=True, text=True,
                          env={**ENV, "SEED": "4", "ARMS": "repo,drope_late"})
    assert done.stdout.startswith("SEED=4 ARMS=repo,drope_late bash reproduce.sh gpu: config/niah_gpu.py")
    assert "rope              4000  scratch" in done.stdout  # drope_late starts from the RoPE arm, which runs too
