import argparse
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import drope
import eval_niah
import model as model_module
import train
from model import GPT, GPTConfig
from tests.test_train import ROOT, load, run

SMALL = dict(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=32)


def dropped(rope_model, **changes):
    """A RoPE model's weights in a DroPE model (the drop)."""
    model = GPT(GPTConfig(**{**rope_model.config.to_dict(), "pe": "drope", **changes})).eval()
    model.load_state_dict(rope_model.state_dict())
    return model


def test_after_the_drop_the_last_output_ignores_the_order_of_earlier_tokens():
    rope = GPT(GPTConfig(**SMALL)).eval()
    model = dropped(rope)
    x = torch.randint(64, (1, 12))
    shuffled = torch.cat((x[:, :-1][:, torch.randperm(11)], x[:, -1:]), dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0][:, -1], model(shuffled)[0][:, -1])
        assert not torch.allclose(rope(x)[0][:, -1], rope(shuffled)[0][:, -1], atol=1e-4), \
            "the RoPE model before the drop must see the order of the tokens"


def test_beta_scales_q_exactly_and_is_one_within_the_training_length():
    module = drope.DroppedPositionalEncoding(GPTConfig(**SMALL, pe="drope", logit_scale_c=0.5))
    q, k = torch.randn(2, 2, 5, 16), torch.randn(2, 2, 5, 16)
    q_out, k_out = module(q, k, None, torch.arange(59, 64))  # context length 64 = 4x block_size
    torch.testing.assert_close(q_out, q * (1 + 0.5 * math.log(4)), msg=lambda m: f"q·beta at 4x: {m}")
    torch.testing.assert_close(k_out, k, rtol=0, atol=0, msg=lambda m: f"k must stay unscaled: {m}")
    for pos in (torch.arange(11, 16), torch.arange(5)):  # within block_size (16): the identity, beta = 1
        q_out, k_out = module(q, k, None, pos)
        torch.testing.assert_close(q_out, q, rtol=0, atol=0,
                                   msg=lambda m: f"beta = 1 at length {int(pos[-1]) + 1} <= the training length 16: {m}")
        torch.testing.assert_close(k_out, k, rtol=0, atol=0, msg=lambda m: f"k must stay unscaled: {m}")


def test_beta_scales_every_attention_logit(monkeypatch):
    rope = GPT(GPTConfig(**{**SMALL, "n_layer": 2})).eval()
    x = torch.randint(64, (2, 48))  # 3x block_size
    beta = 1 + 0.3 * math.log(3)
    with torch.no_grad():
        scaled = dropped(rope, logit_scale_c=0.3)(x)[0]
        plain = dropped(rope)(x)[0]
        # the reference: the unscaled dropped model with softmax(beta·q·k/sqrt(D)) asked of SDPA directly
        sdpa = F.scaled_dot_product_attention
        monkeypatch.setattr(model_module.F, "scaled_dot_product_attention",
                            lambda q, k, v, **kw: sdpa(q, k, v, scale=beta / math.sqrt(q.shape[-1]), **kw))
        reference = dropped(rope)(x)[0]
    torch.testing.assert_close(scaled, reference)
    assert not torch.allclose(scaled, plain, atol=1e-4), "beta = 1 + 0.3·ln 3 at 3x must change the outputs"


def test_beta_one_reproduces_the_unscaled_model():
    rope = GPT(GPTConfig(**SMALL)).eval()
    x = torch.randint(64, (2, 16))  # within the training length beta is 1 whatever c is
    with torch.no_grad():
        torch.testing.assert_close(dropped(rope, logit_scale_c=0.7)(x)[0], dropped(rope)(x)[0], rtol=0, atol=0)
        long = torch.randint(64, (2, 40))  # and c = 0 is NoPE at every length
        torch.testing.assert_close(dropped(rope, logit_scale_c=0.0)(long)[0], dropped(rope, pe="nope")(long)[0],
                                   rtol=0, atol=0)


@pytest.mark.parametrize("optimum", [1.37, 0.62, 4.1, 30.0])  # inside the first grid, below it, above it, past the limit
def test_beta_search_finds_the_optimum_or_says_it_is_at_the_edge(optimum):
    best, tried, interior = drope.search_beta(lambda b: (b - optimum) ** 2, [0.8, 1.2, 1.6, 2.0], 0.4)
    if optimum <= drope.BETA_LIMITS[1]:
        assert interior and abs(best - optimum) <= 0.4 / 25 / 2 + 1e-9, (best, optimum)
    else:
        assert not interior and best == drope.BETA_LIMITS[1] and max(tried) == drope.BETA_LIMITS[1]


def test_fit_c_recovers_a_known_c():
    multiples = [2, 4, 8]
    assert drope.fit_c(multiples, [1 + 0.41 * math.log(m) for m in multiples]) == pytest.approx(0.41)


@pytest.fixture(scope="module")
def rope_ckpt(tmp_path_factory, tiny_data):
    tmp = tmp_path_factory.mktemp("drope")
    run(tmp, tiny_data, "--max_iters", "140", "--lr", "1e-2", "--eval_interval", "70", out="rope")
    return tmp / "rope" / "ckpt.pt"


def test_recalibration_defaults_and_loss_drop(tmp_path, tiny_data, rope_ckpt, capsys):
    history = run(tmp_path, tiny_data, "--pe", "drope", "--init_from", str(rope_ckpt), "--eval_interval", "5")
    assert "defaults of pe=drope" in capsys.readouterr().out
    options = load(tmp_path)["options"]
    assert options["max_iters"] == 20 and options["lr"] == 1e-3 and options["min_lr"] == 1e-4  # 140 / 7 steps
    assert options["warmup_iters"] == 2  # TINY sets it: flags win over the method's defaults
    # val_loss[0] is the dropped model before any recalibration step: the drop costs loss, recalibration wins it back
    rope_loss = torch.load(rope_ckpt, weights_only=True)["history"]["val_loss"][-1]
    assert history["val_loss"][0] > rope_loss + 0.03 and history["val_loss"][-1] < history["val_loss"][0] - 0.03, \
        (rope_loss, history["val_loss"])


def test_qk_norm_is_added_at_the_drop(tmp_path, tiny_data, rope_ckpt, capsys):
    run(tmp_path, tiny_data, "--pe", "drope", "--init_from", str(rope_ckpt), "--qk_norm", "true", "--max_iters", "2")
    assert "q_norm.weight" in capsys.readouterr().out  # reported as fresh
    ckpt = load(tmp_path)
    assert ckpt["model_config"]["qk_norm"] is True
    with pytest.raises(SystemExit, match="n_layer"):  # the rest of the architecture still cannot change
        run(tmp_path, tiny_data, "--pe", "drope", "--init_from", str(rope_ckpt), "--n_layer", "3", out="other")


def test_fitted_c_is_stored_reloaded_and_overridable(tmp_path, tiny_data, rope_ckpt):
    run(tmp_path, tiny_data, "--pe", "drope", "--init_from", str(rope_ckpt), "--max_iters", "2")
    path = str(tmp_path / "run" / "ckpt.pt")
    # as a user runs it: a script whose classes are __main__'s, while model.py builds layers from drope's
    done = subprocess.run([sys.executable, "drope.py", "--ckpt", path, "--lengths", "2,4", "--betas", "0.6,2.0,0.2",
                           "--rows", "4"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    ckpt = load(tmp_path)
    c = ckpt["logit_scale_fit"]["c"]
    assert ckpt["model_config"]["logit_scale_c"] == c and f"fitted c = {c:.4f}" in done.stdout
    for curve in ckpt["logit_scale_fit"]["curves"]:
        losses = [loss for _, loss in curve]
        assert len(set(losses)) == len(losses)  # beta changed every loss
    assert (tmp_path / "run" / "beta_fit.png").stat().st_size > 1000
    args = argparse.Namespace(logit_scale_c=["fitted", 0.0], scaling=[None], iters=[1])
    (label_fit, fit, _), (label_off, off, _) = eval_niah.settings(ckpt, "run", args)
    assert fit == {"logit_scale_c": c} and off == {"logit_scale_c": 0.0} and label_off == "run" != label_fit
    model = eval_niah.load_model(ckpt, fit, 64, "cpu")
    assert all(m.c == c for m in model.modules() if isinstance(m, drope.DroppedPositionalEncoding))
    with pytest.raises(SystemExit, match="pe='rope'"):
        drope.main(["--ckpt", str(rope_ckpt)])


def test_train_rejects_unknown_pe_naming_drope():
    with pytest.raises(SystemExit):
        train.parse_args(["--pe", "dope"])
    assert "drope" in model_module.positional_choices()
