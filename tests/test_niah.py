import json
import itertools
import math
import random
import re

import numpy as np
import pytest
import torch

import eval_niah
from data.embedded import PAT_STR, generate_stories
from data.format import load_tokenizer, load_tokens
import data.niah as niah
from data.niah import (DRILL_DIGITS, KEYS, PARTS, PASSKEY, VARIANTS, WORDINGS, compose, draw_wording, make_drill,
                       make_sample, plan_needles, split_of)
from model import GPT, GPTConfig

EVERY_WORDING = WORDINGS["seen"] + WORDINGS["heldout"]
# every seen wording a drill can draw: each combination of parts that asks for the key
COMPOSED = {w for w in map(lambda parts: compose(*parts), itertools.product(*PARTS.values()))
            if "{name}" in w.question + w.prefix}
GROUPS = {"name": r"\w+(?: and \w+)*", "value": r"\d+"}


@pytest.fixture(scope="module")
def enc_and_val(tiny_data):
    return load_tokenizer(tiny_data), load_tokens(tiny_data, "val")


def pattern(template):
    """A regex for a wording's format string, with groups name (a key, or "Key and Key") and value (a number); a
    placeholder's repeats must equal its first occurrence."""
    regex, seen = "", set()
    for part in re.split(r"\{(name|value)\}", template):  # text, placeholder, text, ...
        if part in ("name", "value"):
            regex += f"(?P={part})" if part in seen else f"(?P<{part}>{GROUPS[part]})"
            seen.add(part)
        else:
            regex += re.escape(part)
    return regex


def asked_pattern(wording):
    """The end of a prompt in this wording and its answer: (key, value)."""
    return pattern(wording.question + wording.prefix + " {value}")


def record_draws(monkeypatch):
    """The list that every wording draw_wording returns from now on is appended to (the drills' wordings)."""
    drawn = []
    monkeypatch.setattr(niah, "draw_wording", lambda rng: drawn.append(draw_wording(rng)) or drawn[-1])
    return drawn


def drill_answers(text, wordings):
    """[(wording, key, value)] of the questions that end a drill's text, in order: repeatedly the longest question
    and answer in one of `wordings` (those drawn for the drill) that ends the text and whose needle is in it (a cloze
    like " The secret of Mia is 12" also ends longer ones; a story cut off after "The secret number of Mia is 74" has
    no such needle)."""
    found = []
    while True:
        ends = [(m, w) for w in set(wordings) if (m := re.search(asked_pattern(w) + "$", text))
                and w.needle.format(name=m["name"], value=m["value"]) in text]
        if not ends:
            return found[::-1]
        m, w = max(ends, key=lambda e: e[0].end() - e[0].start())
        found.append((w, m["name"], m["value"]))
        text = text[:m.start()]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("haystack", ["val", "noise"])
def test_sample_has_exact_length_and_needle_at_depth(enc_and_val, variant, haystack):
    enc, val = enc_and_val
    for wording in EVERY_WORDING:
        for length, depth in ((160, 0.75), (128, 0.0), (256, 0.5), (512, 1.0), (300, 0.25)):
            s = make_sample(random.Random(7), enc, val if haystack == "val" else None, length, depth, variant, "eval",
                            wording)
            tokens = s["tokens"]
            assert len(tokens) == length
            used = PASSKEY if variant == "passkey" else wording
            span = enc.decode(tokens[s["needle_at"]:s["needle_at"] + s["needle_len"]])
            match = re.fullmatch(pattern(used.needle), span)
            assert match and match["value"] == s["values"][0], (span, s["values"])
            if variant in ("single", "passkey"):  # the needle starts at the sentence start nearest the depth
                assert abs(s["needle_at"] - depth * s["haystack_len"]) <= 25  # the longest generated sentence
                assert s["needle_at"] == 0 or enc.decode([tokens[s["needle_at"] - 1]]).endswith(".")
            asked = enc.decode(tokens[s["question_at"]:s["prompt_len"]])
            assert re.fullmatch(pattern(used.question + used.prefix), asked), asked
            answer = tokens[s["prompt_len"]:]  # the answer continues the prompt: one text, tokenized as one
            assert enc.encode_ordinary(asked + enc.decode(answer)) == tokens[s["question_at"]:]
            values = s["values"]
            assert enc.decode(answer) == " " + (f"{', '.join(values[:-1])} and " if len(values) > 1 else "") + values[-1]
            assert sum(s["value_mask"]) == sum(len(v) for v in values)  # one token per digit here


def needles_and_asks(wordings):
    """The distinct needles and distinct question + prefix texts of wordings: what a sample's text is made of."""
    return {w.needle for w in wordings}, {w.question + w.prefix for w in wordings}


def test_wording_sets_are_disjoint_and_new_to_the_stories():
    """No held-out needle or question occurs in any composed seen wording (every combination of parts) or in the
    stories, and no composed needle or question occurs in a held-out wording: the held-out set tests wordings no
    training text had. The evaluation's seen wordings are composed ones."""
    needles, asks = needles_and_asks(COMPOSED)
    composed_texts = "\n".join([n.format(name="Mia", value="4821") for n in needles] +
                                [a.format(name="Mia") + " 4821" for a in asks])
    heldout_texts = "\n".join(w.needle.format(name="Mia", value="4821") + "|" + w.question.format(name="Mia") +
                               w.prefix.format(name="Mia") + " 4821" for w in WORDINGS["heldout"])
    stories = " ".join(generate_stories(300, seed=0))
    for w in WORDINGS["heldout"]:
        for regex in (pattern(w.needle), asked_pattern(w)):
            assert not re.search(regex, composed_texts) and not re.search(regex, stories), (w, regex)
    for regex in [pattern(n) for n in needles] + [pattern(a + " {value}") for a in asks]:
        assert not re.search(regex, heldout_texts), regex
    assert set(WORDINGS["seen"]) <= COMPOSED and len(WORDINGS["seen"]) == len(set(WORDINGS["seen"])) == 20
    assert len(WORDINGS["heldout"]) == 5 and len(COMPOSED) > 10000


def test_draws_take_every_part_independently(monkeypatch):
    """draw_wording takes each part of PARTS independently: every choice of every part is drawn, every question
    form with every prefix that completes it (a prompt without a question needs a prefix that names the key). The
    answer is the likeliest continuation of a prompt: it follows half the questions at once, and a colon after "is"
    is drawn a quarter of the time."""
    calls, drawn, rng = [], [], random.Random(0)
    monkeypatch.setattr(niah, "compose", lambda *parts: calls.append(parts) or compose(*parts))
    for _ in range(3000):
        wording = draw_wording(rng)
        assert wording == compose(*calls[-1]) and "{name}" in wording.question + wording.prefix
        drawn.append(dict(zip(PARTS, calls[-1])))
    for part, choices in PARTS.items():
        assert {d[part] for d in drawn} == set(choices), part
    names_key = {p for p in PARTS["prefix"] if "{name}" in compose("secret", "{name}'s {noun}", "is", "box", "", "",
                                                                     "", p).prefix}
    pairs = {(q, p) for q, p in itertools.product(PARTS["question"], PARTS["prefix"]) if q or p in names_key}
    assert {(d["question"], d["prefix"]) for d in drawn} == pairs and len(names_key) == 7
    assert 0.45 < np.mean([d["prefix"] == "" for d in drawn if d["question"]]) < 0.55
    assert 0.2 < np.mean([d["colon"] == ":" for d in drawn]) < 0.3


def test_wordings_use_the_vocabulary_and_ask_for_the_key(enc_and_val):
    """Every word of every wording is one token of the embedded tokenizer (with or without its leading space: ' What'
    after a space is ' ' and 'What'), and each wording names the key in its needle and in its question."""
    enc, _ = enc_and_val
    vocabulary = {enc.decode([i]) for i in range(enc.n_vocab - 1)}
    needles, asks = needles_and_asks(COMPOSED | set(WORDINGS["heldout"]))
    assert all("{name}" in n and "{value}" in n for n in needles) and all("{name}" in a for a in asks)
    for text in [n.format(name="Mia", value="4821") for n in needles] + [a.format(name="Mia") for a in asks]:
        pieces = re.findall(PAT_STR, text)
        assert all(p in vocabulary or p[1:] in vocabulary for p in pieces), (text, set(pieces) - vocabulary)
        assert enc.decode(enc.encode_ordinary(text)) == text


def test_keys_and_values_are_unique_and_split(enc_and_val):
    enc, val = enc_and_val
    for split in ("train", "eval"):
        for i in range(20):
            wording = EVERY_WORDING[i % len(EVERY_WORDING)]
            s = make_sample(random.Random(i), enc, val, 256, 0.5, "multivalue", split, wording)
            assert len(set(s["values"])) == len(s["values"]) and all(split_of(v) == split for v in s["values"])
            haystack = enc.decode([int(t) for t in val[i * 100:i * 100 + 256]])
            needles, asked, values = plan_needles(random.Random(i), "multikey", wording, split, haystack)
            keys = [re.fullmatch(pattern(wording.needle), n)["name"] for n in needles]
            assert len(set(keys)) == 4 and asked == keys[:1] and all(split_of(k) == split for k in keys)
            assert not any(k in haystack for k in keys)  # the stories' own characters are never keys


def test_samples_are_deterministic(enc_and_val):
    enc, val = enc_and_val
    a = make_sample(random.Random("x"), enc, val, 256, 0.3, "single", "eval", WORDINGS["heldout"][0])
    b = make_sample(random.Random("x"), enc, val, 256, 0.3, "single", "eval", WORDINGS["heldout"][0])
    assert a == b


def test_bad_variant_names_choices(enc_and_val):
    enc, val = enc_and_val
    with pytest.raises(ValueError, match="'needle'; valid choices: single, multikey"):
        make_sample(random.Random(0), enc, val, 256, 0.5, "needle", "eval", WORDINGS["seen"][0])


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
    s = make_sample(random.Random(3), enc, val, 200, 0.5, "single", "eval", WORDINGS["seen"][0])
    class Generating(Oracle):
        config = GPTConfig(n_layer=1)
        generate = GPT.generate

    right = Generating(s["tokens"], enc.n_vocab)
    assert eval_niah.score_batch(right, [s], enc, "cpu") == ([1.0], [1.0], {}, {})
    first_digit = s["prompt_len"] + s["value_mask"].index(True)
    wrong = Generating(s["tokens"], enc.n_vocab, wrong_at=first_digit)
    exact, token, _, _ = eval_niah.score_batch(wrong, [s], enc, "cpu")
    assert exact == [0.0] and token[0] == pytest.approx(3 / 4)  # teacher forcing: 3 of 4 digits right

    # a lead-in the expected answer does not have (a held-out wording) costs nothing while it fits in the slack
    # and so do digits that run on after the value ("52462" for 5246), which the answer-length window used to cut
    for lead_in, found in ((" It is", 1.0), (" Its value is here and now:", 0.0)):
        extra = enc.encode(lead_in)
        answer = s["tokens"][:s["prompt_len"]] + extra + s["tokens"][s["prompt_len"]:] + enc.encode("2 more")
        assert (len(extra) <= eval_niah.ANSWER_SLACK) == bool(found)
        exact, _, _, _ = eval_niah.score_batch(Generating(answer, enc.n_vocab), [s], enc, "cpu")
        assert exact == [found], lead_in


def test_long_prompt_is_not_cropped(tiny_data, tmp_path, monkeypatch):
    model = GPT(GPTConfig(vocab_size=load_tokenizer(tiny_data).n_vocab, block_size=64, n_layer=1, n_head=2,
                          n_embd=16))
    torch.save({"model_config": model.config.to_dict(), "model": model.state_dict(),
                "options": {"data_dir": tiny_data},
                "history": {"eval_iter": [0], "val_loss": [2.5], "train_loss": [3.0]}}, tmp_path / "ckpt.pt")
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
    assert (tmp_path / "niah" / "accuracy_vs_length.png").exists()
    written = json.loads((tmp_path / "niah" / "results.json").read_text())  # where and how, for summarize.py
    run = written["run"]
    assert run["command"].startswith("python eval_niah.py --ckpt ") and run["torch"] == torch.__version__
    # the checkpoint's val loss, for a summary without the checkpoint (its train loss per step is left out)
    assert written["training"] == {str(tmp_path / "ckpt.pt"): {"eval_iter": [0], "val_loss": [2.5]}}


def test_drills_ask_in_composed_wordings_only(enc_and_val, monkeypatch):
    """Drills end with 1-3 questions (their answers' tokens marked), each in the composed wording drawn for its needle (hundreds of different ones,
    with answers right after the "?", prompts without a question and values before their keys), values of 3 to 5
    digits from the training half, on both haystacks; no held-out needle or question ever occurs. The names to
    anonymise (train.py --anonymous_names) are the keys, then some of the story's characters of the drilled names."""
    enc, val = enc_and_val
    drawn = record_draws(monkeypatch)
    used, digits, noise, kept, anonymised = set(), set(), 0, 0, 0
    for i in range(300):
        drawn.clear()
        tokens, is_answer, name_at = make_drill(random.Random(i), enc, val, 129, "train")
        assert len(tokens) == 129
        text = enc.decode(tokens)
        answers = drill_answers(text, drawn)
        assert 1 <= len(answers) <= 3 and len({k for _, k, _ in answers}) == len(answers), text
        assert enc.decode([t for t, a in zip(tokens, is_answer) if a]) == "".join(f" {v}" for _, _, v in answers)
        # name_at marks every token of each key (needle and question or prefix: twice at least) as slots 0, 1, ...,
        # then some story characters of the drilled names, every token of each, and nothing else
        marked = {j: [enc.decode([t]).strip() for t, at in zip(tokens, name_at) if at == j]
                  for j in set(name_at) - {-1}}
        assert all(len(set(n)) == 1 for n in marked.values()), marked
        keys = [marked[j][0] for j in range(len(answers)) if j in marked]
        assert sorted(keys) == sorted(k for _, k, _ in answers), text
        assert all(len(marked[j]) >= 2 for j in range(len(keys))), marked
        characters = [marked[j][0] for j in marked if j >= len(answers)]
        assert all(split_of(c) == "train" and c not in keys for c in characters), text
        assert not [t for t, at in zip(tokens, name_at) if at == -1 and enc.decode([t]).strip() in keys + characters]
        names_in_story = {enc.decode([t]).strip() for t, at in zip(tokens, name_at) if at == -1} & set(KEYS)
        kept += bool({n for n in names_in_story if split_of(n) == "train"})
        anonymised += bool(characters)
        for wording, key, value in answers:
            assert split_of(key) == "train" and split_of(value) == "train"
            used.add(wording)
            digits.add(len(value))
        for wording in WORDINGS["heldout"]:
            assert not re.search(pattern(wording.needle), text) and not re.search(asked_pattern(wording), text)
        noise += text.startswith(" The grass is green.")
    assert used <= COMPOSED and len(used) > 300 and digits == set(DRILL_DIGITS) and 30 < noise < 120
    assert kept > 10 and anonymised > 10  # story characters of the drilled names: some anonymised, some kept
    assert any(not w.prefix for w in used) and any(not w.question for w in used)  # right after "?"; no question
    assert any(w.needle.startswith(" {value}") for w in used)  # the value before the key


@pytest.mark.parametrize("argv", [[], ["--config", "config/niah_cpu.py"],
                                  ["--config", "config/niah_cpu.py", "--shared_wording", "0.5",
                                   "--drill_needles", "5"]])
def test_the_drills_share_a_wording_as_often_as_the_options_say(enc_and_val, monkeypatch, argv):
    """Of the drills with several needles, the share whose needles all share one wording (only the key tells them
    apart, as in the multi-key needle) is --shared_wording (binomial bounds): at the defaults (0: every needle its
    own wording), at config/niah_cpu.py's options, and at a share of one half. Such a drill asks 1 to n − 1 of its n
    needles, the others every needle; none holds more than --drill_needles. (Noise haystacks, so that the only
    needles are the drill's.)"""
    import train
    o, _ = train.parse_args(argv)
    enc, val = enc_and_val
    drawn = record_draws(monkeypatch)
    monkeypatch.setattr(niah, "DRILL_NOISE", 1.0)
    several = shared = 0
    for i in range(300):
        drawn.clear()
        tokens, _, _ = make_drill(random.Random(i), enc, val, o["block_size"] + 1, "train", needles=o["drill_needles"],
                                  shared_wording=o["shared_wording"])
        text = enc.decode(tokens)
        needles = {(m["name"], m["value"]): w for w in set(drawn) for m in re.finditer(pattern(w.needle), text)}
        asked = drill_answers(text, drawn)
        assert 1 <= len(needles) <= o["drill_needles"] and {(k, v) for _, k, v in asked} <= set(needles), text
        if len(needles) > 1:
            several += 1
            one_wording = len(set(drawn)) == 1  # every needle found in the one wording drawn
            shared += one_wording
            assert len(asked) < len(needles) if one_wording else len(asked) == len(needles), text
    p = o["shared_wording"]
    assert several > 100 and abs(shared / several - p) <= 4 * math.sqrt(p * (1 - p) / several) + 0.01, (shared,
                                                                                                        several)


def test_drills_fit_short_lengths(enc_and_val, monkeypatch):
    """Three needles in long wordings do not fit 64 tokens: a drill holds fewer instead of failing, and a length
    that not even one needle fits is a clear error."""
    enc, val = enc_and_val
    drawn, counts = record_draws(monkeypatch), []
    for i in range(200):
        drawn.clear()
        counts.append(len(drill_answers(enc.decode(make_drill(random.Random(i), enc, val, 64, "train")[0]), drawn)))
    assert set(counts) == {1, 2}
    with pytest.raises(ValueError, match="drill length 20 is too short: .* fewer than 8 of haystack"):
        make_drill(random.Random(0), enc, val, 20, "train")


def test_eval_reports_seen_and_heldout_wordings(tiny_data, tmp_path, monkeypatch, capsys):
    """Every cell is measured on both wording sets (by default), each result and table row says which, and the
    samples of a cell ask every wording of its set; heldout3 asks only the third held-out wording."""
    model = GPT(GPTConfig(vocab_size=load_tokenizer(tiny_data).n_vocab, block_size=96, n_layer=1, n_head=2,
                          n_embd=16))
    torch.save({"model_config": model.config.to_dict(), "model": model.state_dict(),
                "options": {"data_dir": tiny_data}}, tmp_path / "ckpt.pt")
    asked, real_make_sample = [], eval_niah.make_sample

    def recording_make_sample(*args):
        asked.append(args[-1])
        return real_make_sample(*args)
    monkeypatch.setattr(eval_niah, "make_sample", recording_make_sample)
    results = eval_niah.main(["--ckpt", str(tmp_path / "ckpt.pt"), "--lengths", "1", "--depths", "5",
                              "--samples", "4", "--out_dir", str(tmp_path / "niah")])
    assert sorted(r["wordings"] for r in results) == ["heldout"] * 5 + ["seen"] * 5
    assert set(asked) == set(EVERY_WORDING)  # 20 samples per set: at least one of each of its wordings
    table = capsys.readouterr().out
    assert f"{tmp_path.name} [seen]" in table and f"{tmp_path.name} [heldout]" in table
    figures = sorted(p.name for p in (tmp_path / "niah").glob("*.png"))
    assert f"heatmaps_{tmp_path.name}_heldout.png" in figures
    for png in (tmp_path / "niah").glob("*.png"):  # the study commits results.json; the figures come back from it
        png.unlink()
    eval_niah.main(["--figures_from", str(tmp_path / "niah" / "results.json")])
    assert sorted(p.name for p in (tmp_path / "niah").glob("*.png")) == figures
    only = eval_niah.main(["--ckpt", str(tmp_path / "ckpt.pt"), "--lengths", "1", "--depths", "1", "--samples", "1",
                           "--wordings", "heldout", "--out_dir", str(tmp_path / "niah")])
    assert [r["wordings"] for r in only] == ["heldout"]
    asked.clear()
    third = eval_niah.main(["--ckpt", str(tmp_path / "ckpt.pt"), "--lengths", "1", "--depths", "2", "--samples", "3",
                            "--wordings", "heldout3", "--out_dir", str(tmp_path / "niah")])
    assert [r["wordings"] for r in third] == ["heldout3"] * 2 and set(asked) == {WORDINGS["heldout"][2]}
    with pytest.raises(SystemExit, match="heldout6.*heldout5"):
        eval_niah.main(["--ckpt", str(tmp_path / "ckpt.pt"), "--wordings", "heldout6"])


def test_split_train_asks_the_drills_keys_and_values(tiny_data, tmp_path, monkeypatch, capsys):
    """--split train draws the needles' keys and values from the training drills' half, the default from the other;
    a bad split is refused with the choices."""
    enc = load_tokenizer(tiny_data)
    model = GPT(GPTConfig(vocab_size=enc.n_vocab, block_size=64, n_layer=1, n_head=2, n_embd=16))
    torch.save({"model_config": model.config.to_dict(), "model": model.state_dict(),
                "options": {"data_dir": tiny_data}}, tmp_path / "ckpt.pt")
    made, real_make_sample = [], eval_niah.make_sample

    def recording_make_sample(*args):
        made.append(real_make_sample(*args))
        return made[-1]
    monkeypatch.setattr(eval_niah, "make_sample", recording_make_sample)
    for split in ("train", "eval"):
        made.clear()
        results = eval_niah.main(["--ckpt", str(tmp_path / "ckpt.pt"), "--lengths", "1", "--depths", "2",
                                  "--samples", "3", "--split", split, "--out_dir", str(tmp_path / "niah")])
        assert {r["split"] for r in results} == {split} and len(made) == 12
        questions = [enc.decode(s["tokens"][s["question_at"]:s["prompt_len"]]) for s in made]
        keys = {k for q in questions for k in KEYS if re.search(rf"\b{k}\b", q)}
        assert keys and all(split_of(k) == split for k in keys)
        assert all(split_of(v) == split for s in made for v in s["values"])
    with pytest.raises(SystemExit):
        eval_niah.main(["--ckpt", str(tmp_path / "ckpt.pt"), "--split", "test"])
    assert "invalid choice: 'test' (choose from 'train', 'eval')" in capsys.readouterr().err


def test_attention_stats_on_hand_made_queries(enc_and_val):
    enc, val = enc_and_val
    s = make_sample(random.Random(3), enc, val, 200, 0.25, "single", "eval", WORDINGS["seen"][0])
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


def test_sentence_starts_follow_each_tokenizer_of_the_same_name(tiny_data):
    """sentence_starts remembers which tokens end with '.' per tokenizer object: two datasets' BPEs share the name
    "embedded-bpe" and not their tokens."""
    from data.format import encoding_from_spec
    with open(f"{tiny_data}/tokenizer.json") as f:
        spec = json.load(f)
    enc = encoding_from_spec(spec)
    dot, a = spec["tokens"].index(b".".hex()), spec["tokens"].index(b"a".hex())
    tokens = spec["tokens"][:]
    tokens[dot], tokens[a] = tokens[a], tokens[dot]  # the same name, "." and "a" trade ids
    swapped = encoding_from_spec({**spec, "tokens": tokens})
    assert swapped.name == enc.name
    assert niah.sentence_starts(enc, [a, dot, a]) == [0, 2]
    assert niah.sentence_starts(swapped, [a, dot, a]) == [0, 1, 3]
