"""figures.py: the three teaching figures from tiny checkpoints and hand-made results. The head and layer it picks
and the attention rows it plots are recomputed here by hand from the q and k of the models' positional modules
(YaRN and DroPE's beta included) and checked against eval_niah.py's numbers; the FwPKM slots against
eval_niah.needle_trace; bad inputs are refused in one line naming them, before anything is written."""
import argparse
import json
import math

import pytest
import torch

import eval_niah
import figures
from data.format import load_tokenizer
from eval_niah import value_positions
from fwpkm import FastWeightProductKeyMemory
from model import GPT, GPTConfig

L = 64  # training length of the tiny checkpoints


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, tiny_data):
    """Tiny untrained checkpoints: rope, nope, drope (c = 2 stored, as drope.py does) and fwpkm (trained, as in the
    testbed, with a window on every step)."""
    root, vocab = tmp_path_factory.mktemp("ckpts"), load_tokenizer(tiny_data).n_vocab
    paths = {}
    for name, config, options in (
            ("rope", {}, {}), ("nope", {"pe": "nope"}, {}), ("drope", {"pe": "drope", "logit_scale_c": 2.0}, {}),
            ("fwpkm", {"fwpkm_layers": (0,), "memory_n_sub": 4, "memory_topk": 2, "memory_key_dim": 8,
                       "memory_value_dim": 8, "memory_chunk": 16}, {"swa_prob": 1.0, "swa_window": 8})):
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=vocab, block_size=L, n_layer=2, n_head=2, n_embd=16, **config))
        state = {k: 8 * v if k.endswith("attn.qkv.weight") else v for k, v in model.state_dict().items()}  # peaky
        (root / name).mkdir()
        paths[name] = str(root / name / "ckpt.pt")
        torch.save({"model_config": model.config.to_dict(), "model": state,
                    "options": {"data_dir": tiny_data, **options}}, paths[name])
    return paths


def result(label, wordings, multiple, depth, attention):
    return {"label": label, "ckpt": "x/ckpt.pt", "variant": "single", "haystack": "val", "wordings": wordings,
            "multiple": multiple, "length": L * multiple, "depth": depth, "exact": 0.0, "token": 0.0, "n": 2,
            "attention": attention}


def by_hand(ckpt_path, changes, s):
    """The attention of sample s's last prompt token, [n_layer, H, prompt_len], by hand: a model built with the
    config changes (a RoPE scaling with factor length / L), eval_niah.py's teacher-forced forward (all tokens but
    the last), softmax(q·kᵀ/√D)."""
    ckpt = torch.load(ckpt_path, weights_only=True)
    model = GPT(GPTConfig(**{**ckpt["model_config"], **changes}))
    model.load_state_dict(ckpt["model"])
    tokens, at = torch.tensor([s["tokens"]]), s["prompt_len"] - 1
    with torch.no_grad(), eval_niah.captured_qk(model.eval()) as qk:
        model(tokens[:, :-1])
    rows = [torch.softmax(torch.einsum("hd,htd->ht", q[0, :, at], k[0, :, :at + 1]) / math.sqrt(q.shape[-1]), -1)
            for q, k in (qk[i] for i in sorted(qk))]
    return torch.stack(rows), model


def test_writes_the_three_figures_with_eval_niahs_numbers(tmp_path, tiny_data, ckpts):
    heldout = {"0": [0.1, 0.5, 2.0], "1": [0.3, 0.2, 2.0]}  # layer 1 has the most needle mass in the held-out rows
    seen = {"0": [0.9, 0.05, 1.0], "1": [0.1, 0.1, 1.0]}
    rows = [result("a", "seen", m, d, seen) for m in (1, 2) for d in (0.0, 1.0)]
    rows += [result("a", "heldout", 1, 0.0, heldout), result("a", "heldout", 1, 1.0, {"0": [0.1, 0.5, 2.0],
                                                                                        "1": [0.5, 0.4, 2.0]})]
    rows += [result("a", "heldout", 2, 0.0, {"0": [0.8, 0.0, 2.0], "1": [0.05, 0.7, 2.0]}),
             result("b", "seen", 1, 0.5, seen), result("b", "seen", 2, 0.5, heldout),
             result("b", "seen", 1, 0.5, seen) | {"variant": "multikey", "attention": heldout}]
    (tmp_path / "results.json").write_text(json.dumps({"results": rows}))
    out = tmp_path / "figs"
    written = figures.main(["--rope", ckpts["rope"], "--nope", ckpts["nope"], "--drope", ckpts["drope"],
                            "--fwpkm", ckpts["fwpkm"], "--results", str(tmp_path / "results.json"),
                            "--out_dir", str(out), "--device", "cpu"])
    for name in ("attention_maps", "needle_attention_by_length", "fwpkm_slots"):
        assert written[name][0] == str(out / f"{name}.png") and (out / f"{name}.png").stat().st_size > 10_000

    # attention_maps: every setting on the same prompt per length, and the rows are those of the hand computation
    _, choice, panels = written["attention_maps"]
    changes = {"rope": {}, "rope+yarn": {"rope_scaling": "yarn"}, "nope": {}, "drope+beta2": {}}
    assert set(panels) == {(label, m) for label in changes for m in (1, 4)}
    enc = load_tokenizer(tiny_data)
    for (label, m), p in panels.items():
        s = p["sample"]
        assert s == panels["nope", m]["sample"] and len(s["tokens"]) == m * L and s["depth"] == 0.5
        extra = {"rope_factor": m} if "yarn" in label else {}
        rows, model = by_hand(ckpts[label.split("+")[0]], {**changes[label], **extra}, s)
        if (label, m) == ("rope", 1):  # the most needle mass of any layer and head
            mass = rows[..., s["needle_at"]:s["needle_at"] + s["needle_len"]].sum(-1)          # [n_layer, H]
            # (to 1e-5, the tolerance of the strips below: two heads closer than that are both the most)
            assert mass[choice["layer"], choice["head"]] >= mass.max() - 1e-5, (choice, mass)
            assert choice["reference"] == "rope"
        torch.testing.assert_close(p["strip"], rows[choice["layer"], choice["head"]], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(p["map"][-1], p["strip"])
        queries = min(figures.MAP_QUERIES, s["prompt_len"])  # [Q, prompt_len], each row sums to 1
        assert p["map"].shape == (queries, s["prompt_len"]) and p["strip"].sum().item() == pytest.approx(1, abs=1e-5)
        assert torch.allclose(p["map"].sum(-1), torch.ones(queries), atol=1e-5)
        # eval_niah.py's number for the layer is the mean of the heads' needle mass (scoring the same model)
        _, _, attention, _ = eval_niah.score_batch(model, [s], enc, "cpu")
        needle = rows[choice["layer"], :, s["needle_at"]:s["needle_at"] + s["needle_len"]].sum(-1).mean().item()
        assert attention[choice["layer"]][0] == pytest.approx(needle, abs=1e-5)
    assert not torch.allclose(panels["rope", 4]["strip"], panels["rope+yarn", 4]["strip"])  # YaRN counts at 4x
    torch.testing.assert_close(panels["rope", 1]["strip"], panels["rope+yarn", 1]["strip"])  # and is RoPE at 1x

    # needle_attention_by_length: single needle, held-out rows where a label has them, the layer with most at 1x
    lines = written["needle_attention_by_length"][1]
    assert lines["a"] == ("1", "heldout", [1, 2], [pytest.approx(0.4), 0.05], [pytest.approx(0.3), 0.7])
    assert lines["b"] == ("0", "seen", [1, 2], [0.9, 0.1], [0.05, 0.5])

    # fwpkm_slots: per pass, what the needle's writers and the answer's readers read; needle_trace as eval_niah's
    fw = written["fwpkm_slots"][1]
    assert set(fw) == {("blocks.0.sublayers.0", n) for n in figures.PASSES}
    ckpt = torch.load(ckpts["fwpkm"], weights_only=True)
    assert figures.fwpkm_window(ckpt, None) == 8 and figures.fwpkm_window(ckpt, 0) is None
    s = figures.niah_prompt(ckpt, L, argparse.Namespace(seed=0, depth=0.5))
    model = eval_niah.load_model(ckpt, {}, L, "cpu")
    memory = next(m for m in model.modules() if isinstance(m, FastWeightProductKeyMemory))
    tokens, positions = torch.tensor([s["tokens"]]), value_positions(s)
    for n in figures.PASSES:
        p = fw["blocks.0.sublayers.0", n]
        assert p["written"].sum().item() == pytest.approx(1) and p["read"].sum().item() == pytest.approx(1)
        _, _, _, health = eval_niah.score_batch(model, [s], enc, "cpu", iters=n, window=8)
        trace = {k: health["blocks.0.sublayers.0"][k] for k in ("overlap", "gate_write", "gate_read", "recall")}
        assert p["trace"] == pytest.approx(trace) and 0 <= p["trace"]["overlap"] <= 1
    with torch.no_grad():
        model(tokens[:, :-1], window=8)  # pass 1 by hand: the slots the writers read are the ones plotted
    for kind, at in (("written", 1), ("read", 2)):  # (written, writer, reader) positions
        slots = {int(i) for position in positions for i in memory.last_reads["slots"][0, position[at]]}
        assert set(fw["blocks.0.sublayers.0", 1][kind].nonzero().flatten().tolist()) == slots, kind
    assert not torch.equal(fw["blocks.0.sublayers.0", 1]["read"], fw["blocks.0.sublayers.0", 3]["read"])


def test_key_lookup_shows_the_head_that_leads_on_the_asked_needle(tmp_path, tiny_data):
    """key_lookup.png, from a RoPE checkpoint long enough for a multi-key prompt at 1x: one held-out multi-key prompt
    per length, the asked needle first in sample["needles"]; the head shown is the one whose answer query puts the
    most attention on the asked needle beyond the most on any other needle at 1x, and the bars are that head's mass
    on each needle (recomputed by hand). A checkpoint too short for the prompt skips the figure."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=load_tokenizer(tiny_data).n_vocab, block_size=128, n_layer=2, n_head=2,
                          n_embd=16))
    state = {k: 8 * v if k.endswith("attn.qkv.weight") else v for k, v in model.state_dict().items()}  # peaky
    path = tmp_path / "rope128" / "ckpt.pt"
    path.parent.mkdir()
    torch.save({"model_config": model.config.to_dict(), "model": state, "options": {"data_dir": tiny_data}}, path)
    written = figures.main(["--rope", str(path), "--nope", "none", "--drope", "none", "--fwpkm", "none",
                            "--results", "none", "--out_dir", str(tmp_path / "figs"), "--device", "cpu"])
    out, choice, panels = written["key_lookup"]
    assert (tmp_path / "figs" / "key_lookup.png").stat().st_size > 10_000 and set(panels) == set(figures.MULTIPLES)
    lead = None
    for m, p in panels.items():
        s = p["sample"]
        assert len(s["tokens"]) == 128 * m and len(s["needles"]) == 4 and s["needles"][0][0] == s["needle_at"]
        rows, _ = by_hand(str(path), {}, s)                                      # [n_layer, H, prompt_len]
        masses = torch.stack([rows[..., a:a + n].sum(-1) for a, n in s["needles"]], -1)  # [n_layer, H, 4]
        if m == 1:
            lead = masses[..., 0] - masses[..., 1:].max(-1).values
            assert lead[choice["layer"], choice["head"]] >= lead.max() - 1e-5
        torch.testing.assert_close(p["strip"], rows[choice["layer"], choice["head"]], atol=1e-6, rtol=1e-5)
        assert p["masses"] == pytest.approx(masses[choice["layer"], choice["head"]].tolist(), abs=1e-5)
    assert lead is not None


def test_missing_inputs_skip_their_figures(tmp_path, ckpts, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no study here: the defaults find nothing
    (tmp_path / "r.json").write_text(json.dumps({"results": [result("a", "seen", 1, 0.0, {"0": [0.1, 0.2, 1.0]})]}))
    written = figures.main(["--results", "r.json", "--fwpkm", "none"])
    assert list(written) == ["rope_wavelengths", "needle_attention_by_length"]  # RoPE's needs no checkpoint
    assert (tmp_path / "results" / "figures" / "rope_wavelengths.png").stat().st_size > 10_000
    assert (tmp_path / "results" / "figures" / "needle_attention_by_length.png").exists()
    out = capsys.readouterr().out
    assert "attention_maps.png skipped" in out and "fwpkm_slots.png skipped" in out and "key_lookup.png skipped" in out


@pytest.mark.parametrize("flag, value, message", [
    ("--fwpkm", "rope", "--fwpkm {} is not a model with FwPKM layers .* pe='rope', fwpkm_layers=()"),
    ("--nope", "drope", "--nope {} is not a NoPE model"),
    ("--rope", "missing", "--rope: no checkpoint at {}"),
    ("--results", "missing", "{} cannot be read as eval_niah.py's results.json"),
    ("--depth", "2", "--depth 2.0 must be between 0 and 1")])
def test_bad_input_is_one_line_naming_it(tmp_path, ckpts, monkeypatch, flag, value, message):
    monkeypatch.chdir(tmp_path)  # no study here: the defaults find nothing
    value = ckpts.get(value, str(tmp_path / value / "ckpt.pt") if value == "missing" else value)
    with pytest.raises(SystemExit, match=message.format(value).replace("(", r"\(").replace(")", r"\)")):
        figures.main([flag, value, "--out_dir", str(tmp_path / "figs")])
    assert not (tmp_path / "figs").exists()  # nothing written


def test_recalibration_sweep_plots_each_arm_at_its_share_of_the_rope_run(tmp_path, monkeypatch):
    """The sweep's arms with their fitted β where they have one, held-out wordings only, beside RoPE's level."""
    monkeypatch.chdir(tmp_path)
    rows = []
    for label, exact in (("rope", 0.9), ("drope_x1_7+beta-0.1", 0.2), ("drope_x1_7", 0.1), ("drope_x1_2", 0.5),
                         ("drope_x1", 0.8)):
        for wordings in ("seen", "heldout"):
            for m in (1, 2, 4):
                rows.append({**result(label, wordings, m, 0.0, {"0": [0.1, 0.2, 1.0]}),
                             "exact": exact / m if wordings == "heldout" else 1.0, "pe": "drope", "logit_scale_c":
                             -0.1 if "beta" in label else 0.0})
    (tmp_path / "r.json").write_text(json.dumps({"args": {"logit_scale_c": ["fitted", 0.0]}, "results": rows}))
    written = figures.main(["--results", "r.json", "--rope", "none", "--nope", "none", "--drope", "none",
                            "--fwpkm", "none"])
    lines = written["recalibration_sweep"][1]
    assert lines[1] == pytest.approx([20, 50, 80]) and lines[4] == pytest.approx([5, 12.5, 20])  # fitted β at 1/7
    assert (tmp_path / "results" / "figures" / "recalibration_sweep.png").stat().st_size > 10_000
    # a second seed (another results file): each point is the mean over the seeds
    (tmp_path / "s2.json").write_text(json.dumps({"args": {"logit_scale_c": ["fitted", 0.0]}, "results": [
        {**r, "exact": 0.0} for r in rows]}))
    written = figures.main(["--results", "r.json", "s2.json", "--rope", "none", "--nope", "none", "--drope", "none",
                            "--fwpkm", "none"])
    assert written["recalibration_sweep"][1][1] == pytest.approx([10, 25, 40])
    # results evaluated at 1x and 2x only (SMOKE=1's lengths): the lengths it has, not a crash on 4x
    (tmp_path / "short.json").write_text(json.dumps({"args": {"logit_scale_c": ["fitted", 0.0]}, "results": [
        r for r in rows if r["multiple"] < 4]}))
    written = figures.main(["--results", "short.json", "--rope", "none", "--nope", "none", "--drope", "none",
                            "--fwpkm", "none"])
    assert sorted(written["recalibration_sweep"][1]) == [1, 2]
    # an arm is its own labels, not every label it begins: drope_x1 is not drope_x1_7
    assert figures.of_arm("drope_x1", {"drope_x1+beta-0.1"}) and not figures.of_arm("drope_x1", {"drope_x1_7"})
