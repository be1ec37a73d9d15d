import argparse
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import drope
import drope_fit
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
    best, tried, interior = drope_fit.search_beta(lambda b: (b - optimum) ** 2, [0.8, 1.2, 1.6, 2.0], 0.4)
    if optimum <= drope_fit.BETA_LIMITS[1]:
        assert interior and abs(best - optimum) <= 0.4 / 25 / 2 + 1e-9, (best, optimum)
    else:
        assert not interior and best == drope_fit.BETA_LIMITS[1] and max(tried) == drope_fit.BETA_LIMITS[1]


def test_fit_c_recovers_a_known_c():
    multiples = [2, 4, 8]
    assert drope_fit.fit_c(multiples, [1 + 0.41 * math.log(m) for m in multiples]) == pytest.approx(0.41)


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
    assert options["weight_decay"] == 0.0 and options["beta2"] == 0.999  # the official trainer's AdamW
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


def test_c_is_fitted_on_the_rows_the_run_trained_on(tmp_path, tiny_data):
    """A run on retrieval drills is fitted on new drills, weighted as its training loss; --rows_from text (and a run
    on text) on the held-out text. The two give other losses at beta = 1, so the rows really differ."""
    run(tmp_path, tiny_data, "--pe", "drope", "--niah_mix", "1", "--block_size", "64", "--answer_weight", "8",
        "--anonymous_names", "true", "--max_iters", "2")
    path = str(tmp_path / "run" / "ckpt.pt")
    losses = {}
    for rows_from, said in (("training", "new retrieval drills"), ("text", "windows of the held-out text")):
        done = subprocess.run([sys.executable, "drope_fit.py", "--ckpt", path, "--lengths", "2", "--betas",
                               "0.8,1.2,0.2", "--rows", "4", "--rows_from", rows_from],
                              cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert said in done.stdout, done.stdout
        assert load(tmp_path)["logit_scale_fit"]["rows_from"] == ("drills" if rows_from == "training" else "text")
        losses[rows_from] = float(done.stdout.split("loss ")[1].split()[0])  # "2x (128 tokens): loss L at beta 1"
    assert abs(losses["training"] - losses["text"]) > 1e-3, losses


def test_fitted_c_is_stored_reloaded_and_overridable(tmp_path, tiny_data, rope_ckpt):
    run(tmp_path, tiny_data, "--pe", "drope", "--init_from", str(rope_ckpt), "--max_iters", "2")
    path = str(tmp_path / "run" / "ckpt.pt")
    # as a user runs it: a script whose classes are __main__'s, while model.py builds layers from drope's
    done = subprocess.run([sys.executable, "drope_fit.py", "--ckpt", path, "--lengths", "2,4", "--betas", "0.6,2.0,0.2",
                           "--rows", "4"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    ckpt = load(tmp_path)
    c = ckpt["logit_scale_fit"]["c"]
    assert ckpt["model_config"]["logit_scale_c"] == c and f"fitted c = {c:.4f}" in done.stdout
    for curve in ckpt["logit_scale_fit"]["curves"]:  # beta changes the loss: the curve is not flat
        losses = [loss for _, loss in curve]
        # (not "every loss differs": near the flat minimum two betas 0.008 apart can round to the same fp32 loss).
        # The grid's ends differ by 0.03-0.06 nats on this model, the rounding of a mean fp32 loss is ~1e-6
        assert max(losses) - min(losses) > 1e-3, curve
    assert (tmp_path / "run" / "beta_fit.png").stat().st_size > 1000
    args = argparse.Namespace(logit_scale_c=["fitted", 0.0], scaling=[None], iters=[1], answer_writes=["chunks"])
    (label_fit, fit, *_), (label_off, off, *_) = eval_niah.settings(ckpt, "run", args)
    assert fit == {"logit_scale_c": c} and off == {"logit_scale_c": 0.0} and label_off == "run" != label_fit
    model = eval_niah.load_model(ckpt, fit, 64, "cpu")
    assert all(m.c == c for m in model.modules() if isinstance(m, drope.DroppedPositionalEncoding))
    with pytest.raises(SystemExit, match="pe='rope'"):
        drope_fit.main(["--ckpt", str(rope_ckpt)])


def test_train_rejects_unknown_pe_naming_drope():
    with pytest.raises(SystemExit):
        train.parse_args(["--pe", "dope"])
    assert "drope" in model_module.POSITIONAL


# ----------------------------------------------------------------------------------------------------------------
# The mechanism DroPE relies on, in a model whose weights are set by hand: the lookup half of retrieval (a query
# finds the token that carries its key and copies that token's value) needs no positions. Without rotations the
# needle's logit is the same at every distance, so nothing is out of distribution beyond the training length but
# the number of keys that share the attention; beta = 1 + c·ln(s) with c = 1/(the needle's logit) gives the needle
# the attention it had at 1x. With RoPE, the same content match rides on a pair that turns a fraction of a circle
# within L; beyond L it turns further than training ever showed, and the lookup fails.
# What the hand-built model skips is the other half: a fact token here carries its key already, where a trained model
# needs a lower layer to copy the key into the value's token (a previous-token head). The evidence points at that
# half as what the drop breaks at our scale (results/drope.md: dropping RoPE from layer 1 up keeps the lookup,
# dropping it everywhere does not).

N_KEYS = N_VALUES = 4
FILLER, QUESTION, ANSWER = 0, 1, 1 + N_KEYS  # token ids: filler, question about key j, answer "value v"
FACT = ANSWER + N_VALUES                     # fact "key j has value v": FACT + j·N_VALUES + v
LOOKUP = dict(vocab_size=FACT + N_KEYS * N_VALUES, block_size=64, n_layer=1, n_head=1, n_embd=16)
SLOW_PAIR = 4  # the rotation pair the content rides on: θ_4 = 10000^(-8/16) = 0.01 rad per token, 0.64 rad over L
ALPHA = 3.0    # query gain: the needle's logit is 2·ALPHA = 6 without rotation (every embedding has norm √2)


def hand_built_lookup(pe, **config):
    """A 1-layer, 1-head GPT that answers "which value has key j?" by attention alone. Residual dims: 0-1 the fact's
    key (an angle 2πj/4), 2-3 the question's key, 4-7 the value (one-hot), 8-11 markers that give every embedding
    the norm √2 (so RMSNorm scales every token alike)."""
    model = GPT(GPTConfig(**LOOKUP, pe=pe, **config)).eval()
    angle = [2 * math.pi * j / N_KEYS for j in range(N_KEYS)]
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for norm in (model.blocks[0].attn_norm, model.blocks[0].mlp_norm, model.norm):
            norm.weight.fill_(1.0)
        emb = model.tok_emb.weight                                 # [V, 16]; tied with lm_head
        emb[FILLER, 8] = emb[FILLER, 11] = 1.0
        for j in range(N_KEYS):
            emb[QUESTION + j, 2], emb[QUESTION + j, 3], emb[QUESTION + j, 9] = math.cos(angle[j]), math.sin(angle[j]), 1
            for v in range(N_VALUES):
                fact = FACT + j * N_VALUES + v
                emb[fact, 0], emb[fact, 1], emb[fact, 4 + v] = math.cos(angle[j]), math.sin(angle[j]), 1
        for v in range(N_VALUES):
            emb[ANSWER + v, 4 + v] = math.sqrt(2)                  # outscores the facts that hold the same value
        C = LOOKUP["n_embd"]                                       # one head: its size D is C
        w_q, w_k, w_v = model.blocks[0].attn.qkv.weight.split(C)   # [C, C] each: head dims x residual dims
        half = C // 2                                              # rotate-half layout: pair i = (i, i + D/2)
        w_q[SLOW_PAIR, 2] = w_q[SLOW_PAIR + half, 3] = ALPHA       # q: the question's key in the slow pair
        w_k[SLOW_PAIR, 0] = w_k[SLOW_PAIR + half, 1] = 1.0         # k: the fact's key in the same pair
        for v in range(N_VALUES):
            w_v[v, 4 + v] = 1.0                                    # v: the fact's value
            model.blocks[0].attn.proj.weight[4 + v, v] = 1.0       # written back into the value dims
    return model


def lookup_prompt(length, needle_at, key=1, value=2):
    """Filler, one fact at needle_at, the question last; plus the expected answer (teacher_forced drops it)."""
    tokens = [FILLER] * length
    tokens[needle_at] = FACT + key * N_VALUES + value
    tokens[-1] = QUESTION + key
    return torch.tensor([tokens + [ANSWER + value]])


def lookup(model, length, needle_at):
    """(answered right, attention of the question on the needle, its logit there)."""
    tokens = lookup_prompt(length, needle_at)
    with torch.no_grad():
        logits, qk = eval_niah.teacher_forced(model, tokens)
    q, k = qk[0]
    weights = eval_niah.attention_weights(q, k, [length - 1])[0, 0, 0]  # [length]
    logit = float(q[0, 0, -1] @ k[0, 0, needle_at]) / math.sqrt(q.shape[-1])
    return logits[0, -1].argmax().item() == tokens[0, -1].item(), weights[needle_at].item(), logit


DEPTHS = (0.0, 0.25, 0.5, 0.75, 0.95)  # where the fact sits, as a fraction of the context


def test_hand_built_rope_lookup_answers_within_the_training_length_and_fails_beyond():
    model = hand_built_lookup("rope")
    L = LOOKUP["block_size"]
    assert all(lookup(model, L, int(d * L))[0] for d in DEPTHS), "RoPE must answer at every depth at 1x"
    far = [lookup(model, 4 * L, int(d * 4 * L)) for d in DEPTHS]
    # the fact more than ~L/0.64·(π/2) ≈ 157 tokens back sits at a rotation angle training never showed
    assert not far[0][0] and not far[1][0], "the far needles at 4x must be lost: their pair turned past 90°"
    assert far[0][2] < 0 < far[-1][2], [f[2] for f in far]  # its logit turned negative; the near one is fine


def test_hand_built_dropped_lookup_keeps_the_needle_logit_at_every_length_and_beta_undoes_the_dilution():
    L = LOOKUP["block_size"]
    dropped_model = hand_built_lookup("drope")
    results = {m: [lookup(dropped_model, m * L, int(d * m * L)) for d in DEPTHS] for m in (1, 2, 4, 8)}
    logits = [r[2] for rows in results.values() for r in rows]
    assert max(logits) - min(logits) < 1e-5 and logits[0] == pytest.approx(2 * ALPHA, rel=1e-5), \
        "after the drop the needle's logit may not depend on the distance or the length"
    for m in (1, 2, 4):
        assert all(r[0] for r in results[m]), f"the dropped lookup must answer at every depth at {m}x"
    # what is left beyond L: 8L − 1 other keys share the attention, e^6 / (e^6 + 8·64 − 1) < 1/2, and it fails
    assert not any(r[0] for r in results[8]), [r[1] for r in results[8]]
    attention_1x = results[1][0][1]
    assert max(r[1] for r in results[8]) < attention_1x - 0.3
    # beta = 1 + c·ln 8 with c = 1 / (needle logit): e^(beta·6) = 8·e^6, so the needle gets its 1x attention back
    scaled = hand_built_lookup("drope", logit_scale_c=1 / (2 * ALPHA))
    for d in DEPTHS:
        answered, attention, _ = lookup(scaled, 8 * L, int(d * 8 * L))
        assert answered and attention == pytest.approx(attention_1x, abs=0.005), (d, attention, attention_1x)
