import math
import random
import re

import pytest
import torch

import eval_niah
from data.format import load_tokenizer, load_tokens
from data.niah import VARIANTS, make_sample, plan_needles, split_of
from model import GPT, GPTConfig


@pytest.fixture(scope="module")
def enc_and_val(tiny_data):
    return load_tokenizer(tiny_data), load_tokens(tiny_data, "val")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("haystack", ["val", "noise"])
def test_sample_has_exact_length_and_needle_at_depth(enc_and_val, variant, haystack):
    enc, val = enc_and_val
    for length, depth in ((96, 0.75), (128, 0.0), (256, 0.5), (512, 1.0), (300, 0.25)):
        s = make_sample(random.Random(7), enc, val if haystack == "val" else None, length, depth, variant, "eval")
        tokens = s["tokens"]
        assert len(tokens) == length
        needle = enc.decode(tokens[s["needle_at"]:s["prompt_len"]])
        first = " The pass key is" if variant == "passkey" else " The secret number of"
        assert needle.startswith(first) and s["values"][0] in needle.split(".")[0]
        span = enc.decode(tokens[s["needle_at"]:s["needle_at"] + s["needle_len"]])
        assert span.startswith(first) and span.endswith(".") and s["values"][0] in span
        if variant in ("single", "passkey"):  # the needle starts at the sentence start nearest the requested depth
            assert abs(s["needle_at"] - depth * s["haystack_len"]) <= 25  # the longest generated sentence
            assert s["needle_at"] == 0 or enc.decode([tokens[s["needle_at"] - 1]]).endswith(".")
        answer = enc.decode(tokens[s["prompt_len"]:])
        assert all(v in answer for v in s["values"])
        assert sum(s["value_mask"]) == sum(len(v) for v in s["values"])  # one token per digit here


def test_keys_and_values_are_unique_and_split(enc_and_val):
    enc, val = enc_and_val
    for split in ("train", "eval"):
        for i in range(20):
            s = make_sample(random.Random(i), enc, val, 256, 0.5, "multivalue", split)
            assert len(set(s["values"])) == len(s["values"]) and all(split_of(v) == split for v in s["values"])
            haystack = enc.decode([int(t) for t in val[i * 100:i * 100 + 256]])
            needles, asked, values = plan_needles(random.Random(i), "multikey", split, haystack)
            keys = [n.split(" of ")[1].split(" is")[0] for n in needles]
            assert len(set(keys)) == 4 and asked == keys[:1] and all(split_of(k) == split for k in keys)
            assert not any(k in haystack for k in keys)  # the stories' own characters are never keys


def test_samples_are_deterministic(enc_and_val):
    enc, val = enc_and_val
    a = make_sample(random.Random("x"), enc, val, 256, 0.3, "single", "eval")
    b = make_sample(random.Random("x"), enc, val, 256, 0.3, "single", "eval")
    assert a == b


def test_bad_variant_names_choices(enc_and_val):
    enc, val = enc_and_val
    with pytest.raises(ValueError, match="'needle'; valid choices: single, multikey"):
        make_sample(random.Random(0), enc, val, 256, 0.5, "needle", "eval")


class Oracle(torch.nn.Module):
    """Predicts a fixed continuation: the sample's answer, or a wrong one, to check scoring."""
    blocks = []  # no attention layers to look into

    def __init__(self, sequence, vocab, wrong_at=None):
        super().__init__()
        self.sequence, self.vocab, self.wrong_at = sequence, vocab, wrong_at

    def forward(self, idx, targets=None, cache=None, window=None):
        logits = torch.zeros(idx.shape[0], idx.shape[1], self.vocab)
        for b in range(idx.shape[0]):
            for t in range(idx.shape[1]):
                pos = t if cache is None else cache.length() + t
                nxt = self.sequence[pos + 1] if pos + 1 < len(self.sequence) else 0
                if self.wrong_at is not None and pos + 1 == self.wrong_at:
                    nxt = (nxt + 1) % self.vocab
                logits[b, t, nxt] = 1.0
        if cache is not None:
            cache.keys[0] = torch.zeros(1, 1, cache.length() + idx.shape[1], 1)
        return logits, None


def test_scoring_on_hand_made_outputs(enc_and_val):
    enc, val = enc_and_val
    s = make_sample(random.Random(3), enc, val, 200, 0.5, "single", "eval")
    class Generating(Oracle):
        config = GPTConfig(n_layer=1)
        generate = GPT.generate

    right = Generating(s["tokens"], enc.n_vocab)
    assert eval_niah.score_batch(right, [s], enc, "cpu") == ([1.0], [1.0], {}, {})
    first_digit = s["prompt_len"] + s["value_mask"].index(True)
    wrong = Generating(s["tokens"], enc.n_vocab, wrong_at=first_digit)
    exact, token, _, _ = eval_niah.score_batch(wrong, [s], enc, "cpu")
    assert exact == [0.0] and token[0] == pytest.approx(3 / 4)  # teacher forcing: 3 of 4 digits right


def test_long_prompt_is_not_cropped(tiny_data, tmp_path, monkeypatch):
    model = GPT(GPTConfig(vocab_size=load_tokenizer(tiny_data).n_vocab, block_size=64, n_layer=1, n_head=2,
                          n_embd=16))
    torch.save({"model_config": model.config.to_dict(), "model": model.state_dict(),
                "options": {"data_dir": tiny_data}}, tmp_path / "ckpt.pt")
    seen = []
    real_forward = GPT.forward

    def recording_forward(self, idx, *args, **kwargs):
        seen.append(idx.shape[1])
        return real_forward(self, idx, *args, **kwargs)
    monkeypatch.setattr(GPT, "forward", recording_forward)
    results = eval_niah.main(["--ckpt", str(tmp_path / "ckpt.pt"), "--lengths", "1,4", "--depths", "2",
                              "--samples", "2", "--out_dir", str(tmp_path / "niah"), "--scaling", "none,yarn"])
    assert max(seen) == 4 * 64 - 1  # the whole 256-token sample minus its last token, uncropped
    assert {r["label"] for r in results} == {tmp_path.name, f"{tmp_path.name}+yarn"}
    assert all(list(r["attention"]) == [0] and len(r["attention"][0]) == 3 for r in results)  # one layer
    assert (tmp_path / "niah" / "results.json").exists() and (tmp_path / "niah" / "accuracy_vs_length.png").exists()


def test_drill_asks_every_needle(enc_and_val):
    from data.niah import make_drill
    enc, val = enc_and_val
    for i in range(10):
        tokens = make_drill(random.Random(i), enc, val, 257, "train")
        assert len(tokens) == 257
        text = enc.decode(tokens)
        needles = re.findall(r" The secret number of (\w+) is (\d+)\.", text)
        answers = re.findall(r'"The secret number of (\w+) is (\d+)(?= "What|$)', text)  # not the stories' own
        assert 1 <= len(answers) <= 3 and sorted(answers) == sorted(n for n in needles if n in answers)
        assert all(split_of(k) == "train" and split_of(v) == "train" for k, v in answers)


def test_attention_stats_on_hand_made_queries(enc_and_val):
    enc, val = enc_and_val
    s = make_sample(random.Random(3), enc, val, 200, 0.25, "single", "eval")
    at, needle = s["prompt_len"] - 1, range(s["needle_at"], s["needle_at"] + s["needle_len"])
    k = torch.zeros(1, 2, 200, 2)
    k[0, :, list(needle), 0] = 1.0  # needle keys point along x, the others are zero
    q = torch.zeros(1, 2, 200, 2)
    q[0, 0, at, 0] = 100.0          # head 0 looks for the needle, head 1 attends uniformly
    (needle_mass, nearby_mass, entropy), = eval_niah.attention_stats({0: (q, k)}, [s]).values()
    uniform = s["needle_len"] / (at + 1)
    assert needle_mass == pytest.approx((1 + uniform) / 2, abs=1e-4)
    assert nearby_mass == pytest.approx(uniform / 2, abs=1e-4)
    assert entropy == pytest.approx((math.log(s["needle_len"]) + math.log(at + 1)) / 2, abs=1e-3)


def test_window_keeps_the_needle_out_of_attention(tmp_path, tiny_data):
    """--window W: the answering passes attend to the last W tokens only, so a needle further back gets no attention
    (the testbed where only a memory can answer)."""
    model = GPT(GPTConfig(vocab_size=load_tokenizer(tiny_data).n_vocab, block_size=64, n_layer=2, n_head=2,
                          n_embd=16))
    torch.save({"model_config": model.config.to_dict(), "model": model.state_dict(),
                "options": {"data_dir": tiny_data}}, tmp_path / "ckpt.pt")
    results = eval_niah.main(["--ckpt", str(tmp_path / "ckpt.pt"), "--lengths", "2", "--depths", "1",
                              "--samples", "2", "--window", "8", "--out_dir", str(tmp_path / "niah")])
    assert results and all(r["window"] == 8 for r in results)
    for r in results:  # depth 0: the needle opens the 128-token sample, far outside the last 8 tokens
        assert all(needle == 0.0 for needle, _, _ in r["attention"].values())


def test_reading_passes_use_the_window():
    """The extra reading passes (--iters) attend through the answering pass's window: the fast weights they leave
    depend on it, and a window as long as the context is full attention."""
    from fwpkm import read_iteratively
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32, fwpkm_layers=(1,),
                          memory_n_sub=4, memory_topk=2, memory_key_dim=8, memory_value_dim=8)).eval()
    context = torch.randint(64, (2, 40))
    values = {w: read_iteratively(model, context, 2, w).state["fwpkm1"].values for w in (None, 4, 40)}
    assert torch.equal(values[None], values[40]) and not torch.allclose(values[None], values[4])
