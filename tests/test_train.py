import os
import shutil
import subprocess
import sys

import pytest
import torch

import model as model_module
import train
from plots import plt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--n_layer", "2", "--n_head", "2", "--n_embd", "32", "--block_size", "32", "--batch_size", "4",
        "--eval_interval", "4", "--eval_iters", "2", "--log_interval", "4", "--warmup_iters", "2", "--device", "cpu"]


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs."""


def run(tmp_path, data, *extra, out="run"):
    argv = ["--data_dir", data, "--out_dir", str(tmp_path / out), *TINY, *extra]
    return train.main(argv)


def raising_at(stop, error, real_lr_at=train.lr_at):
    """train.lr_at that raises `error` at iteration `stop`: a kill (Killed) or Ctrl-C (KeyboardInterrupt) there."""
    def lr_at(it, o):
        if it == stop:
            raise error
        return real_lr_at(it, o)
    return lr_at


def load(tmp_path, out="run"):
    return torch.load(tmp_path / out / "ckpt.pt", weights_only=True)


def assert_same_course(got, expected, what):
    """Per-step values (losses, gradient norms) of two trainings that differ only in the order of their float sums
    (two processes vs one, a kernel vs the plain code). Step 1 must agree to ~1e-7 (tolerance 1e-5); each later step
    may drift by 1e-4 more: AdamW's first update is lr·g/(|g| + eps), about ±lr for every weight, also for a weight
    whose gradient is rounding noise and whose sign the two orders may draw differently. For the same reason the
    weights after the steps are not compared: such a weight may differ by 2·lr."""
    assert len(got) == len(expected), (what, got, expected)
    for step, (a, b) in enumerate(zip(got, expected)):
        assert a == pytest.approx(b, rel=1e-5 + 1e-4 * step), f"{what} of step {step + 1}: {got} vs {expected}"


def test_tiny_training_lowers_loss(tmp_path, tiny_data):
    history = run(tmp_path, tiny_data, "--max_iters", "40", "--lr", "1e-2", "--eval_interval", "20")
    assert history["val_loss"][-1] < history["val_loss"][0] - 1.5  # nats; from ln(vocab) = 6.75 at init
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    ckpt = load(tmp_path)
    assert ckpt["iter"] == 40 and ckpt["model_config"]["pe"] == "rope"
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path / "run"))


def test_resume_after_kill_reproduces_the_uninterrupted_run(tmp_path, tiny_data, monkeypatch, capsys):
    uninterrupted = run(tmp_path, tiny_data, "--max_iters", "14", out="a")
    # killed 2 steps after the checkpoint at 8, while the prefetcher has batches ready
    monkeypatch.setattr(train, "lr_at", raising_at(10, Killed))
    with pytest.raises(Killed):
        run(tmp_path, tiny_data, "--max_iters", "14", out="b")
    monkeypatch.undo()
    assert load(tmp_path, "b")["iter"] == 8
    resumed = run(tmp_path, tiny_data, "--max_iters", "14", "--resume", out="b")
    out = capsys.readouterr().out
    assert "resuming" in out and "in all," in out and "since the resume" in out  # the whole run's time, and this one's
    assert resumed["train_loss"] == uninterrupted["train_loss"]  # bit-exact on CPU
    assert resumed["val_loss"] == uninterrupted["val_loss"]
    for name, tensor in load(tmp_path, "a")["model"].items():
        assert torch.equal(tensor, load(tmp_path, "b")["model"][name]), name


def test_ctrl_c_says_where_it_stopped_and_how_to_resume(tmp_path, tiny_data, monkeypatch, capsys):
    monkeypatch.setattr(train, "lr_at", raising_at(2, KeyboardInterrupt))  # before the first checkpoint (iteration 4)
    with pytest.raises(SystemExit) as exit_:
        run(tmp_path, tiny_data, "--max_iters", "14")
    assert exit_.value.code == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("interrupted at iteration 2, before the first checkpoint") and "--resume" not in err, err
    assert not (tmp_path / "run" / "ckpt.pt").exists()
    monkeypatch.setattr(train, "lr_at", raising_at(10, KeyboardInterrupt))
    with pytest.raises(SystemExit):
        run(tmp_path, tiny_data, "--max_iters", "14")
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "interrupted at iteration 10;" in err and "holds iteration 8;" in err, err
    command = err.split("resume with: ")[1]
    assert command.startswith("python train.py --data_dir") and command.endswith("--max_iters 14 --resume")
    monkeypatch.undo()  # the command it gives goes on
    assert run(tmp_path, tiny_data, "--max_iters", "14", "--resume")["iter"][-1] == 13


def test_keep_iters_a_run_has_passed_is_refused_with_what_to_do(tmp_path, tiny_data):
    run(tmp_path, tiny_data, "--max_iters", "8", "--keep_iters", "4")
    assert (tmp_path / "run" / "ckpt_4.pt").exists()
    run(tmp_path, tiny_data, "--max_iters", "8", "--keep_iters", "4", "--resume")  # kept already: fine
    with pytest.raises(SystemExit, match=r"--keep_iters \[2\]: .* is at iteration 8, past them.*--keep_iters 2"):
        run(tmp_path, tiny_data, "--max_iters", "8", "--keep_iters", "2,4", "--resume")


def test_a_warmup_longer_than_the_run_is_an_error_when_asked_for_and_a_warning_when_a_default(tmp_path, tiny_data,
                                                                                               capsys):
    with pytest.raises(SystemExit, match=r"--warmup_iters 5 is more than --max_iters 3: .* at most 3 steps"):
        run(tmp_path, tiny_data, "--max_iters", "3", "--warmup_iters", "5")
    o = {**train.DEFAULTS, "max_iters": 3, "warmup_iters": 100}  # the default warmup outlasts a short trial run
    train.check_schedule(o, {"max_iters"}, {})
    err = capsys.readouterr().err
    assert err.startswith("warning: --warmup_iters 100 is more than --max_iters 3") and len(err.splitlines()) == 1, err


def test_the_cooldown_takes_the_learning_rate_linearly_to_zero_over_the_last_steps():
    o = {**train.DEFAULTS, "max_iters": 100, "warmup_iters": 10, "lr": 2e-3, "min_lr": 1e-3}
    plain = [train.lr_at(it, o) for it in range(100)]
    cooled = [train.lr_at(it, {**o, "cooldown_frac": 0.25}) for it in range(100)]
    assert cooled[:75] == plain[:75]  # untouched before the last quarter
    assert cooled[75] == pytest.approx(plain[75])  # 25 steps left of 25: the full value
    assert cooled[87] == pytest.approx(plain[87] * 13 / 25)
    assert 0 < cooled[99] == pytest.approx(plain[99] / 25)  # the last step still moves the weights
    assert all(a > b for a, b in zip(cooled[75:], cooled[76:]))


def test_a_step_that_cannot_fit_in_memory_is_refused(tmp_path, tiny_data, monkeypatch):
    monkeypatch.setattr(os, "sysconf", lambda name: {"SC_PHYS_PAGES": 100, "SC_PAGE_SIZE": 4096}[name])  # 400 kB
    with pytest.raises(SystemExit, match=r"--batch_size 4 x --block_size 32 = 128 tokens .* more than the 0 GiB"):
        run(tmp_path, tiny_data, "--max_iters", "2")
    assert not (tmp_path / "run").exists()


def test_embedded_corpus_goes_to_a_new_data_dir_only_when_asked(tmp_path, tiny_data, monkeypatch):
    import data.embedded
    asked = []
    monkeypatch.setattr(data.embedded, "prepare", lambda d: asked.append(d) or shutil.copytree(tiny_data, d))
    with pytest.raises(SystemExit, match="holds no prepared dataset"):
        train.main([*TINY, "--data_dir", str(tmp_path / "corpus"), "--out_dir", str(tmp_path / "run")])
    assert not asked and not (tmp_path / "corpus").exists()
    train.main([*TINY, "--dataset", "embedded", "--data_dir", str(tmp_path / "corpus"), "--out_dir",
                str(tmp_path / "run"), "--max_iters", "2"])
    assert asked == [str(tmp_path / "corpus")] and load(tmp_path)["iter"] == 2


def test_the_probe_scores_the_multi_key_needle_beside_the_single_one_where_the_context_holds_it(tmp_path, tiny_data,
                                                                                                 capsys):
    """At a 128-token context the probe also scores the multi-key needle (four needles in one wording; chance 25%):
    on the eval line, in the history (one per probe) and in loss.png; at 64 tokens it cannot hold four needles and
    the probe scores the single needle only."""
    history = run(tmp_path, tiny_data, "--niah_mix", "1", "--block_size", "128", "--max_iters", "4", out="long")
    out = capsys.readouterr().out
    assert "multi-key" in out and "(chance 25%)" in out
    assert len(history["probe_multikey"]) == len(history["probe_iter"]) == 2
    assert all(0 <= v <= 100 for v in history["probe_multikey"])
    history = run(tmp_path, tiny_data, "--niah_mix", "1", "--block_size", "64", "--max_iters", "4", out="short")
    assert "multi-key" not in capsys.readouterr().out and history["probe_multikey"] == []


def test_a_retrieval_run_probes_the_lookup_and_still_resumes_exactly(tmp_path, tiny_data, monkeypatch, capsys):
    """With drills in training (niah_mix > 0), every evaluation runs the NIAH probe (exact match at 1x and attention
    on the needle) onto the eval line, into the history and as loss.png's second panel; the probe draws no random
    numbers from the training streams, so a killed and resumed run still reproduces the uninterrupted one, also
    when its drills are made in worker processes (--data_workers)."""
    retrieval = ("--niah_mix", "1", "--block_size", "64", "--max_iters", "10")
    uninterrupted = run(tmp_path, tiny_data, *retrieval, out="a")
    assert "NIAH at 1x:" in capsys.readouterr().out
    assert uninterrupted["probe_iter"] == [0, 4, 8, 10]
    assert all(0 <= v <= 100 for v in uninterrupted["probe_exact"] + uninterrupted["probe_needle"])
    assert max(uninterrupted["probe_needle"]) > 0
    width = plt.imread(tmp_path / "a" / "loss.png").shape[1]
    assert width > 1000, width  # two panels (600 px for the loss alone)
    # the killed and resumed run makes its drills in two worker processes: the same rows, so the same run
    monkeypatch.setattr(train, "lr_at", raising_at(6, Killed))
    with pytest.raises(Killed):
        run(tmp_path, tiny_data, *retrieval, "--data_workers", "2", out="b")
    monkeypatch.undo()
    resumed = run(tmp_path, tiny_data, *retrieval, "--data_workers", "2", "--resume", out="b")
    assert resumed == uninterrupted  # bit-exact on one machine


def test_kill_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, tiny_data, monkeypatch):
    real_save, saves = torch.save, [0]

    def save_then_die(obj, path):
        saves[0] += 1
        if saves[0] == 2:
            with open(path, "wb") as f:
                f.write(b"half a checkpoint")
            raise Killed
        real_save(obj, path)
    monkeypatch.setattr(torch, "save", save_then_die)
    with pytest.raises(Killed):
        run(tmp_path, tiny_data, "--max_iters", "12")
    monkeypatch.setattr(torch, "save", real_save)
    assert load(tmp_path)["iter"] == 4
    assert run(tmp_path, tiny_data, "--max_iters", "12", "--resume")["iter"][-1] == 11


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny_data, monkeypatch):
    real_ce, calls = model_module.F.cross_entropy, [0]

    def ce_turning_nan(*args, **kwargs):
        calls[0] += 1
        loss = real_ce(*args, **kwargs)
        return loss * float("nan") if calls[0] > 14 else loss  # 14 calls: iterations 0..5 and evals at 0, 4
    monkeypatch.setattr(model_module.F, "cross_entropy", ce_turning_nan)
    with pytest.raises(SystemExit, match=r"non-finite loss nan .* iteration 6.*last good checkpoint"):
        run(tmp_path, tiny_data, "--max_iters", "12")
    ckpt = load(tmp_path)
    assert ckpt["iter"] == 4 and all(torch.isfinite(t).all() for t in ckpt["model"].values())


def test_resume_with_another_model_is_refused(tmp_path, tiny_data):
    run(tmp_path, tiny_data, "--max_iters", "4")
    with pytest.raises(SystemExit, match="n_embd: checkpoint 32 vs now 48"):
        run(tmp_path, tiny_data, "--max_iters", "8", "--resume", "--n_embd", "48")
    with pytest.raises(SystemExit, match="exists; pass --resume"):  # a new run never overwrites a checkpoint
        run(tmp_path, tiny_data, "--max_iters", "8")


def test_init_from_starts_a_new_stage_with_another_pe(tmp_path, tiny_data, capsys):
    run(tmp_path, tiny_data, "--max_iters", "8", out="rope")
    rope_weights = load(tmp_path, "rope")["model"]
    history = run(tmp_path, tiny_data, "--max_iters", "4", "--pe", "nope",
                  "--init_from", str(tmp_path / "rope" / "ckpt.pt"), out="stage2")
    assert "(pe rope -> nope)" in capsys.readouterr().out
    assert history["iter"][0] == 0
    ckpt = load(tmp_path, "stage2")
    assert ckpt["model_config"]["pe"] == "nope" and ckpt["iter"] == 4
    assert ckpt["model"].keys() == rope_weights.keys()
    with pytest.raises(SystemExit, match="--init_from: no checkpoint at"):
        run(tmp_path, tiny_data, "--init_from", str(tmp_path / "missing.pt"), out="stage4")
    with pytest.raises(SystemExit, match="n_layer"):
        run(tmp_path, tiny_data, "--max_iters", "4", "--pe", "nope", "--n_layer", "3",
            "--init_from", str(tmp_path / "rope" / "ckpt.pt"), out="stage3")


def test_bad_options_name_the_valid_choices(tmp_path, tiny_data, capsys):
    with pytest.raises(SystemExit):
        run(tmp_path, tiny_data, "--pe", "alibi")
    assert "unknown --pe 'alibi'; valid choices: abs, drope, nope, repo, rope, rope_nope" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="unknown dataset 'wiki'; valid choices: embedded"):
        train.main(["--dataset", "wiki"])
    config = tmp_path / "bad.py"
    config.write_text("max_iters = 3\nlearning_rate = 1e-3\n")
    with pytest.raises(SystemExit):
        run(tmp_path, tiny_data, "--config", str(config))
    assert "unknown option(s) ['learning_rate']" in capsys.readouterr().err


def test_config_file_then_command_line(tmp_path, tiny_data):
    config = tmp_path / "small.py"
    config.write_text("max_iters = 3\nlr = 1e-3\n")
    history = run(tmp_path, tiny_data, "--config", str(config), "--lr", "2e-3")
    ckpt = load(tmp_path)
    assert ckpt["iter"] == 3 and ckpt["options"]["lr"] == 2e-3 and len(history["iter"]) == 3


def test_two_process_ddp_matches_one_process(tmp_path, tiny_data):
    common = ["--data_dir", tiny_data, *TINY, "--max_iters", "3", "--grad_accum", "2"]
    single = train.main(common + ["--out_dir", str(tmp_path / "single")])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "train.py", *common, "--out_dir", str(tmp_path / "ddp")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)  # generous: CI's machine may be busy
    assert done.returncode == 0, done.stdout + done.stderr
    ddp = load(tmp_path, "ddp")  # the same batches, gradients averaged over the processes:
    assert_same_course(ddp["history"]["train_loss"], single["train_loss"], "train loss")
    assert_same_course(ddp["history"]["grad_norm"], single["grad_norm"], "grad norm")


def test_retrieval_mix_rows(tiny_data, monkeypatch):
    from data.format import get_batch, load_tokenizer, load_tokens
    from data.drills import DrillMaker
    from data.niah import split_of
    from tests.test_niah import drill_answers, record_draws
    drawn = record_draws(monkeypatch)
    enc, tokens, drills = load_tokenizer(tiny_data), load_tokens(tiny_data, "train"), DrillMaker(tiny_data)
    o = {"batch_size": 8, "niah_mix": 0.0, "answer_weight": 1.0, "anonymous_names": False}
    *plain, weights, keys = train.train_batch(tokens, o, 128, torch.Generator().manual_seed(1), drills)
    assert all(torch.equal(a, b) for a, b in zip(plain, get_batch(tokens, 8, 128, torch.Generator().manual_seed(1))))
    assert weights is None and keys is None
    x, y, weights, _ = train.train_batch(tokens, {**o, "niah_mix": 1.0}, 128, torch.Generator().manual_seed(1), drills)
    assert x.shape == y.shape == (8, 128) and torch.equal(x[:, 1:], y[:, :-1]) and weights is None
    for row in torch.cat((x, y[:, -1:]), 1).tolist():  # every row a drill: questions about the training half
        answers = drill_answers(enc.decode(row), drawn)
        assert answers and all(split_of(k) == split_of(v) == "train" for _, k, v in answers)
    # --answer_weight: the same rows, and the weight on exactly the answers' tokens (" 4821"), 1 elsewhere
    drawn.clear()
    *same, weights, _ = train.train_batch(tokens, {**o, "niah_mix": 1.0, "answer_weight": 5.0}, 128,
                                          torch.Generator().manual_seed(1), drills)
    assert torch.equal(same[0], x) and torch.equal(same[1], y) and set(weights.unique().tolist()) == {1.0, 5.0}
    for row, w in zip(torch.cat((x[:, :1], y), 1).tolist(), weights.tolist()):
        answers = drill_answers(enc.decode(row), drawn)
        weighted = enc.decode([t for t, wt in zip(row[1:], w) if wt == 5.0])
        assert weighted == "".join(f" {v}" for _, _, v in answers)
    # --anonymous_names: the same rows; the names' slots marked in x (every key, and some other drilled names), and
    # the targets that are marked names weigh 0
    drawn.clear()
    *same, anon_weights, names = train.train_batch(tokens, {**o, "niah_mix": 1.0, "answer_weight": 5.0,
                                                            "anonymous_names": True}, 128,
                                                   torch.Generator().manual_seed(1), drills)
    assert torch.equal(same[0], x) and torch.equal(same[1], y) and names.shape == x.shape
    for row_x, row_y, n, w, w_before in zip(x.tolist(), y.tolist(), names.tolist(), anon_weights.tolist(),
                                            weights.tolist()):
        asked = {key for _, key, _ in drill_answers(enc.decode(row_x + row_y[-1:]), drawn)}
        marked = {enc.decode([t]).strip() for t, slot in zip(row_x, n) if slot >= 0}
        assert asked <= marked and all(split_of(name) == "train" for name in marked)
        assert all((wt == 0) == (enc.decode([t]).strip() in marked) for t, wt in zip(row_y, w))
        assert all(wt == wb for wt, wb in zip(w, w_before) if wt != 0)


def test_sliding_window_steps_use_swa_window(tmp_path, tiny_data, monkeypatch):
    seen, real_forward = [], model_module.GPT.forward

    def recording_forward(self, idx, targets=None, cache=None, window=None, **kwargs):
        if self.training:
            seen.append(window)
        return real_forward(self, idx, targets, cache, window, **kwargs)
    monkeypatch.setattr(model_module.GPT, "forward", recording_forward)
    run(tmp_path, tiny_data, "--max_iters", "2", "--swa_prob", "1", "--swa_window", "5", out="swa")
    run(tmp_path, tiny_data, "--max_iters", "2", "--swa_prob", "1", "--memory_chunk", "7", out="chunk")
    run(tmp_path, tiny_data, "--max_iters", "2", out="full")
    assert seen == [5] * 2 + [7] * 2 + [None] * 2


def test_curriculum_steps_train_on_short_rows_and_resume_exactly(tmp_path, tiny_data, monkeypatch):
    """--curriculum_iters: the first steps train on rows of curriculum_len tokens, as many more rows as keep the
    tokens per step (4 x 64 = 5 x 48 + 16: 5 rows), then on block_size rows; a run killed inside the curriculum and
    resumed after its end reproduces the uninterrupted one."""
    shapes, real_forward = [], model_module.GPT.forward

    def recording_forward(self, idx, *args, **kwargs):
        if self.training:
            shapes.append(tuple(idx.shape))
        return real_forward(self, idx, *args, **kwargs)
    monkeypatch.setattr(model_module.GPT, "forward", recording_forward)
    curriculum = ("--niah_mix", "1", "--block_size", "64", "--max_iters", "10", "--curriculum_iters", "6",
                  "--curriculum_len", "48")
    uninterrupted = run(tmp_path, tiny_data, *curriculum, out="a")
    assert shapes == [(5, 48)] * 6 + [(4, 64)] * 4
    monkeypatch.setattr(train, "lr_at", raising_at(6, Killed))  # the checkpoint at 4 is inside the curriculum
    with pytest.raises(Killed):
        run(tmp_path, tiny_data, *curriculum, out="b")
    monkeypatch.undo()
    assert run(tmp_path, tiny_data, *curriculum, "--resume", out="b") == uninterrupted  # bit-exact on one machine


def test_anonymous_names_change_the_run_and_resume_exactly(tmp_path, tiny_data, monkeypatch):
    """--anonymous_names draws random identities at every step: the run differs from the same run without them, and
    a run killed after a checkpoint and resumed reproduces the uninterrupted one."""
    retrieval = ("--niah_mix", "1", "--block_size", "64", "--max_iters", "10")
    uninterrupted = run(tmp_path, tiny_data, *retrieval, "--anonymous_names", out="a")
    assert uninterrupted["train_loss"] != run(tmp_path, tiny_data, *retrieval, out="plain")["train_loss"]
    monkeypatch.setattr(train, "lr_at", raising_at(6, Killed))
    with pytest.raises(Killed):
        run(tmp_path, tiny_data, *retrieval, "--anonymous_names", out="b")
    monkeypatch.undo()
    assert run(tmp_path, tiny_data, *retrieval, "--anonymous_names", "--resume", out="b") == uninterrupted


def test_a_curriculum_longer_than_the_context_or_too_short_for_a_drill_is_refused(tmp_path, tiny_data):
    with pytest.raises(SystemExit, match="--curriculum_len 64 must be shorter than --block_size 64"):
        run(tmp_path, tiny_data, "--block_size", "64", "--curriculum_iters", "2", "--curriculum_len", "64")
    with pytest.raises(SystemExit, match="--curriculum_len 20 is too short for retrieval drills"):
        run(tmp_path, tiny_data, "--niah_mix", "1", "--block_size", "64", "--curriculum_iters", "2",
            "--curriculum_len", "20")
    assert not (tmp_path / "run").exists()


def test_a_kill_before_a_kept_checkpoint_is_written_is_made_good_by_the_resume(tmp_path, tiny_data, monkeypatch):
    # ckpt.pt is written at iteration 4, then the process dies before ckpt_4.pt (reproduce.sh's drop point) is
    real_save = torch.save

    def die_at_the_kept_copy(obj, path):
        if os.path.basename(path).startswith("ckpt_4.pt."):
            raise Killed
        real_save(obj, path)
    monkeypatch.setattr(torch, "save", die_at_the_kept_copy)
    with pytest.raises(Killed):
        run(tmp_path, tiny_data, "--max_iters", "8", "--keep_iters", "4")
    monkeypatch.setattr(torch, "save", real_save)
    assert load(tmp_path)["iter"] == 4 and not (tmp_path / "run" / "ckpt_4.pt").exists()
    run(tmp_path, tiny_data, "--max_iters", "8", "--keep_iters", "4", "--resume")
    assert torch.load(tmp_path / "run" / "ckpt_4.pt", weights_only=True)["iter"] == 4


def test_a_run_that_reads_prepared_drills_is_the_run_that_makes_them(tmp_path, tiny_data, capsys):
    """--prepare_drills replays the batch stream (the curriculum's short rows and the full ones) and makes its drills
    into --drills_dir; a run that reads them trains exactly as one that makes them, and reads every one."""
    retrieval = ("--niah_mix", "1", "--block_size", "64", "--max_iters", "8", "--curriculum_iters", "4",
                 "--answer_weight", "8", "--anonymous_names")
    made_here = run(tmp_path, tiny_data, *retrieval, out="a")
    drills = str(tmp_path / "drills")
    assert run(tmp_path, tiny_data, *retrieval, "--prepare_drills", "--drills_dir", drills, out="unused") is None
    assert sorted(os.listdir(drills)) == ["drills_49.npy", "drills_65.npy"] and not (tmp_path / "unused").exists()
    capsys.readouterr()
    assert run(tmp_path, tiny_data, *retrieval, "--drills_dir", drills, out="b") == made_here  # bit-exact
    rows = 4 * 5 + 4 * 4  # 4 curriculum steps of 5 rows of 48 tokens (4 x 64 tokens), then 4 steps of 4 rows
    assert f"drills: {rows} read from {drills}, 0 made" in capsys.readouterr().out
