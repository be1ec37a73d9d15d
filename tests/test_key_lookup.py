"""The key lookup that the multi-key needle tests, in a GPT whose weights are set by hand: two attention layers of
model.py's GPT with RoPE, no training. It answers "which value has key j?" among several facts of the same form
(the multi-key needle: only the key tells the asked fact from the others), and the answer follows the key: with the
facts' keys shuffled it gives the value now beside the asked key, never the one it gave before.

The circuit is the one a trained model must find (README, "Needle in a haystack"):
- layer 0, a previous-token head: every token attends to the one before it (RoPE's fast pairs, rotated so that the
  score peaks one token back) and copies that token's key into its own residual: a value token now holds its key;
- layer 1, the lookup: the question's key (the last token) is matched against the copied keys (a slow pair, which
  barely turns within the context) and the matching value token's value is copied to the output.
Switch layer 0 off and the values hold no key: the lookup can only pick a fact at random (chance, 1 in N_KEYS).
"""
import math
import random

import torch

import eval_niah
from model import GPT, GPTConfig

N_KEYS = N_VALUES = 4                   # 4 facts per prompt, as the multi-key needle's asked needle + 3 distractors
FILLER, MARK = 0, 1                     # token ids: haystack filler; the "?" before the question's key
KEY, VALUE = 2, 2 + N_KEYS              # key j is KEY + j, value v is VALUE + v
CONFIG = dict(vocab_size=VALUE + N_VALUES, block_size=64, n_layer=2, n_head=1, n_embd=32, pe="rope")
D = CONFIG["n_embd"]                    # one head: its size is the residual width
HALF = D // 2                           # rotate-half layout: pair i is (i, i + D/2), θ_i = 10000^(-2i/D)
# residual dims: 0-1 the token's own key (an angle 2πj/4), 2-3 the key of the token before (layer 0 writes it),
# 4-7 a value (one-hot), 8 a constant every token has (layer 0's positions ride on it), 9-10 markers that give every
# embedding the norm √2, so that RMSNorm scales every token alike
OWN_KEY, PREV_KEY, VALUES, CONSTANT, MARKERS = 0, 2, 4, 8, 9
PREV_PAIRS = range(8)  # layer 0's pairs: the fast ones resolve one token, the slower ones rule out far aliases
PREV_GAIN = 6.0        # layer 0's query gain: the previous token outscores every other by ~10 nats
LOOKUP_PAIR = HALF - 1  # layer 1's pair: θ = 10000^(-30/32), 0.01 rad over the context: content only
LOOKUP_GAIN = 4.0      # layer 1's query gain: the asked fact's score, others' 0 or below
COPY_GAIN = 3.0        # the copied value outscores the question key's own logit (1) in the tied output


def hand_built(previous_token_head=True):
    model = GPT(GPTConfig(**CONFIG)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for block in model.blocks:
            block.attn_norm.weight.fill_(1.0)
            block.mlp_norm.weight.fill_(1.0)
        model.norm.weight.fill_(1.0)
        emb = model.tok_emb.weight  # [V, C], tied with lm_head
        emb[:, CONSTANT] = 1.0
        emb[FILLER, MARKERS] = emb[MARK, MARKERS + 1] = 1.0
        for j in range(N_KEYS):
            emb[KEY + j, OWN_KEY], emb[KEY + j, OWN_KEY + 1] = math.cos(2 * math.pi * j / N_KEYS), math.sin(
                2 * math.pi * j / N_KEYS)
        for v in range(N_VALUES):
            emb[VALUE + v, VALUES + v] = 1.0
        scale = 1 / math.sqrt(2 / D)  # RMSNorm of a norm-√2 embedding multiplies it by 4
        # layer 0: q·k = Σ_i cos(θ_i·(t − s + 1)) for a query at s and a key at t: the peak is at t = s − 1
        w_q, w_k, w_v = model.blocks[0].attn.qkv.weight.split(D)
        if previous_token_head:
            for i in PREV_PAIRS:
                theta = 10000 ** (-2 * i / D)
                w_k[i, CONSTANT] = 1.0
                w_q[i, CONSTANT], w_q[i + HALF, CONSTANT] = PREV_GAIN * math.cos(theta), -PREV_GAIN * math.sin(theta)
            for d in range(2):  # copy the previous token's own key into PREV_KEY
                w_v[d, OWN_KEY + d] = 1 / scale
                model.blocks[0].attn.proj.weight[PREV_KEY + d, d] = 1.0
        # layer 1: the question's own key against the copied keys, in one slow pair; copy the matching value
        w_q, w_k, w_v = model.blocks[1].attn.qkv.weight.split(D)
        for d, at in enumerate((LOOKUP_PAIR, LOOKUP_PAIR + HALF)):
            w_q[at, OWN_KEY + d] = LOOKUP_GAIN
            w_k[at, PREV_KEY + d] = LOOKUP_GAIN
        for v in range(N_VALUES):
            w_v[v, VALUES + v] = COPY_GAIN / scale
            model.blocks[1].attn.proj.weight[VALUES + v, v] = 1.0
    return model


def multikey_prompt(rng, length, keys=None):
    """Filler with N_KEYS facts "key value" at random places, then "?" and the asked key; returns (tokens, the
    facts [(position of the key, key, value)], the asked key). keys: the facts' keys in order (default: all keys,
    shuffled)."""
    keys = keys if keys is not None else rng.sample(range(N_KEYS), N_KEYS)
    values = [rng.randrange(N_VALUES) for _ in keys]
    # even places, so facts never overlap, after the first token (it has no token before it: its previous-token
    # head can only attend to itself and would copy its own key)
    starts = sorted(rng.sample(range(2, length - 4, 2), len(keys)))
    tokens = [FILLER] * (length - 2) + [MARK, None]
    for at, key, value in zip(starts, keys, values):
        tokens[at], tokens[at + 1] = KEY + key, VALUE + value
    asked = rng.randrange(N_KEYS)
    tokens[-1] = KEY + asked
    return tokens, list(zip(starts, keys, values)), asked


def answer(model, tokens):
    """The model's next token after the prompt, and layer 1's attention of the last token over the prompt."""
    with torch.no_grad():
        logits, qk = eval_niah.teacher_forced(model, torch.tensor([tokens + [FILLER]]))
    q, k = qk[1]
    return logits[0, -1].argmax().item(), eval_niah.attention_weights(q, k, [len(tokens) - 1])[0, 0, 0]


def test_hand_set_lookup_answers_the_asked_key_and_the_answer_follows_the_key_when_keys_are_shuffled():
    rng, model = random.Random(0), hand_built()
    length = CONFIG["block_size"]
    for _ in range(50):
        tokens, facts, asked = multikey_prompt(rng, length)
        expected = next(VALUE + v for _, key, v in facts if key == asked)
        if sum(VALUE + v == expected for _, _, v in facts) > 1:
            continue  # another fact holds the same value: a shuffle could not tell the two apart
        got, attention = answer(model, tokens)
        assert got == expected, (tokens, facts, asked)
        value_at = next(at + 1 for at, key, _ in facts if key == asked)
        assert attention[value_at] > 0.9, "the lookup attends to the asked fact's value token"
        # the same prompt with the facts' keys shuffled (no fact keeps its key): the answer follows the key
        keys = [key for _, key, _ in facts]
        shuffled = next(p for p in (rng.sample(keys, len(keys)) for _ in range(100))
                        if all(a != b for a, b in zip(p, keys)))
        moved = list(tokens)
        for (at, _, _), key in zip(facts, shuffled):
            moved[at] = KEY + key
        got_moved, _ = answer(model, moved)
        now_beside = next(VALUE + v for (_, _, v), key in zip(facts, shuffled) if key == asked)
        assert got_moved == now_beside != expected


def test_without_the_previous_token_head_the_values_hold_no_key_and_the_lookup_is_at_chance():
    rng, model = random.Random(1), hand_built(previous_token_head=False)
    right, n = 0, 200
    for _ in range(n):
        tokens, facts, asked = multikey_prompt(rng, CONFIG["block_size"])
        got, attention = answer(model, tokens)
        right += got == next(VALUE + v for _, key, v in facts if key == asked)
        values_at = [at + 1 for at, _, _ in facts]
        # every value token scores alike: no fact stands out
        assert max(attention[values_at]) - min(attention[values_at]) < 1e-6
    assert right / n < 0.5, right / n  # chance is 1 in 4 (more where facts share a value)


def test_assoc_recall_rows_ask_each_key_once_and_score_only_the_answers():
    """assoc_recall.py's rows: n facts "key value", then every key again in another order, each followed by its
    value; the answers are the only targets that weigh. A short run prints a reading every --every steps."""
    import assoc_recall
    x, y, w = assoc_recall.recall_batch(16, 3, torch.Generator().manual_seed(0))
    seq = torch.cat([x, y[:, -1:]], 1)                                     # [16, 12]
    for row in seq.tolist():
        facts = dict(zip(row[0:6:2], row[1:6:2]))
        asked = list(zip(row[6::2], row[7::2]))
        assert len(facts) == 3 and sorted(k for k, _ in asked) == sorted(facts)
        assert all(facts[k] == v for k, v in asked)
    assert w.sum(1).tolist() == [3.0] * 16 and (y[w > 0] >= assoc_recall.VALUES[0]).all()
    curves = assoc_recall.main(["--steps", "4", "--every", "2", "--lrs", "1e-3,5e-4", "--n_embd", "16", "--n_head", "2"])
    assert set(curves) == {1e-3, 5e-4} and all([s for s, _ in c] == [0, 2, 4] for c in curves.values())
    assert all(0 <= a <= 1 for c in curves.values() for _, a in c)
