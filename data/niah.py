"""
Needle-in-a-haystack samples, shared by eval_niah.py (evaluation) and train.py (the retrieval mix in training).

A sample is a token sequence of exactly the requested length: a haystack with one or more needles inserted at
sentence boundaries, a question, and the answer. Formats follow RULER (Hsieh et al. 2024) and passkey retrieval
(Mohtashami & Jaggi 2023), worded like the embedded stories so that the task is in distribution for them:

    needle    " The secret number of Mia is 4821."
    question  ' "What is the secret number of Mia?" "The secret number of Mia is'
    answer    " 4821"

Variants: single (one needle); multikey (the needle among needles of other keys); multivalue (several needles for
one key, all values must be returned); multiquery (several keys asked at once); passkey ("The pass key is 4821.
Remember it. 4821 is the pass key." in the haystack, "What is the pass key? The pass key is" at the end).
Haystacks: "val", tokens of the model's own data (document separators removed, so the needle and the question
are in one text), or "noise", RULER's repeated sentences.

Keys are names and values 4-digit numbers. Both are split into two disjoint halves by a hash: training documents
use the "train" half and evaluation the "eval" half, so a model cannot pass the evaluation by memorising pairs.
A key that already occurs in the haystack is never used (the stories have secret numbers of their own).
"""
import re
import zlib

from data.embedded import NAMES

VARIANTS = ("single", "multikey", "multivalue", "multiquery", "passkey")
HAYSTACKS = ("val", "noise")
SPLITS = ("train", "eval")
KEYS = tuple(sorted(NAMES["she"] + NAMES["he"]))  # one token each in the embedded tokenizer and in gpt2
NOISE = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
N_DISTRACTORS = 3  # multikey: needles with other keys
N_VALUES = 3       # multivalue: needles of the one key
N_QUERIES = 2      # multiquery: keys asked at once


def split_of(text):
    """'train' or 'eval', a fixed hash of the key or value."""
    return SPLITS[zlib.crc32(text.encode()) % 2]


def draw_value(rng, split, taken):
    while True:
        value = str(rng.randint(1000, 9999))
        if split_of(value) == split and value not in taken:
            taken.add(value)
            return value


def needle_text(key, value):
    return f" The secret number of {key} is {value}."


def question_and_answer(variant, keys, values):
    """The question (ends the prompt) and the expected continuation, for the queried keys and their values."""
    if variant == "passkey":
        return " What is the pass key? The pass key is", f" {values[0]}"
    if variant == "multivalue":
        return (f' "What are the secret numbers of {keys[0]}?" "The secret numbers of {keys[0]} are',
                " " + ", ".join(values[:-1]) + f" and {values[-1]}")
    if variant == "multiquery":
        asked = " and ".join(keys)
        answer = f" {values[0]}" + "".join(f" and the secret number of {k} is {v}"
                                           for k, v in zip(keys[1:], values[1:]))
        return f' "What are the secret numbers of {asked}?" "The secret number of {keys[0]} is', answer
    return f' "What is the secret number of {keys[0]}?" "The secret number of {keys[0]} is', f" {values[0]}"


def unused_keys(split, haystack_text):
    """The split's keys that do not occur in the haystack (the stories have secret numbers of their own)."""
    return [k for k in KEYS if split_of(k) == split and not re.search(rf"\b{k}\b", haystack_text)]


def plan_needles(rng, variant, split, haystack_text):
    """Returns (needle texts, queried keys, expected values); the first needle is the one placed at the depth."""
    free = unused_keys(split, haystack_text)
    n_keys = {"single": 1, "multikey": 1 + N_DISTRACTORS, "multivalue": 1, "multiquery": N_QUERIES, "passkey": 0}
    if len(free) < n_keys[variant]:
        raise ValueError(f"only {len(free)} unused keys left for variant {variant!r}; use a shorter haystack")
    keys = rng.sample(free, n_keys[variant])
    taken = set()
    if variant == "passkey":
        value = draw_value(rng, split, taken)
        return [f" The pass key is {value}. Remember it. {value} is the pass key."], [], [value]
    if variant == "multivalue":
        values = [draw_value(rng, split, taken) for _ in range(N_VALUES)]
        return [needle_text(keys[0], v) for v in values], keys, values
    values = [draw_value(rng, split, taken) for _ in keys]
    needles = [needle_text(k, v) for k, v in zip(keys, values)]
    if variant == "multikey":
        return needles, keys[:1], values[:1]
    return needles, keys, values  # single, multiquery


def haystack_tokens(rng, enc, source, n):
    """n tokens of haystack: from the token array source (EOTs removed), or the noise text when source is None."""
    if source is None:
        noise = enc.encode_ordinary(NOISE)
        return (noise * (n // len(noise) + 1))[:n]
    if len(source) < 2 * n + 2:
        raise ValueError(f"the haystack source has {len(source)} tokens, too few for a {n}-token haystack")
    start = rng.randrange(len(source) - 2 * n - 1)
    window = [int(t) for t in source[start:start + 2 * n] if t != enc.eot_token]  # 2n: room for removed EOTs
    return window[:n]


def sentence_starts(enc, tokens):
    """Indices where a sentence may start: 0 and after every token that ends with '.'."""
    return [0] + [i + 1 for i, t in enumerate(tokens) if enc.decode([t]).rstrip().endswith(".")]


def make_sample(rng, enc, source, length, depth, variant, split):
    """A sample of exactly `length` tokens. source: a token array for the "val" haystack, None for "noise".

    Returns a dict: tokens (list), prompt_len, values (expected strings), value_mask (True at answer tokens that
    hold digits), needle_at and needle_len (where the asked needle starts, and its tokens), question_at (where the
    question starts), depth (requested)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid choices: {', '.join(VARIANTS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid choices: {', '.join(SPLITS)}")
    pool = haystack_tokens(rng, enc, source, length)  # at least as long as the final haystack
    needles, keys, values = plan_needles(rng, variant, split, enc.decode(pool))
    question, answer = question_and_answer(variant, keys, values)
    needle_ids = [enc.encode_ordinary(t) for t in needles]
    question_ids, answer_ids = enc.encode_ordinary(question), enc.encode_ordinary(answer)
    n_haystack = length - sum(map(len, needle_ids)) - len(question_ids) - len(answer_ids)
    if n_haystack < 8:
        raise ValueError(f"length {length} is too short for the {variant!r} needles and question")
    haystack = pool[:n_haystack]
    starts = sentence_starts(enc, haystack)
    target = min(starts, key=lambda s: abs(s - depth * n_haystack))
    others = rng.choices(starts, k=len(needles) - 1)
    placed = sorted(zip([target, *others], range(len(needles))), reverse=True)  # insert from the back
    tokens = list(haystack)
    for at, which in placed:
        tokens[at:at] = needle_ids[which]
    needle_at = target + sum(len(needle_ids[w]) for at, w in placed if at < target)
    tokens += question_ids + answer_ids
    prompt_len = length - len(answer_ids)
    value_mask = [any(c.isdigit() for c in enc.decode([t])) for t in answer_ids]
    return {"tokens": tokens, "prompt_len": prompt_len, "values": values, "value_mask": value_mask,
            "needle_at": needle_at, "needle_len": len(needle_ids[0]), "question_at": prompt_len - len(question_ids),
            "depth": depth, "haystack_len": n_haystack}


def make_drill(rng, enc, source, length, split, max_needles=3):
    """A training document of exactly `length` tokens that asks for every needle it holds: 1 to max_needles
    needles at random sentence starts of a haystack, then one question and answer per needle, in random order.
    Several answers per row is what lets a small model leave the long plateau before lookups are learned
    (README, "Needle in a haystack")."""
    pool = haystack_tokens(rng, enc, source, length)
    free = unused_keys(split, enc.decode(pool))
    keys = rng.sample(free, min(rng.randint(1, max_needles), len(free)))
    taken = set()
    values = [draw_value(rng, split, taken) for _ in keys]
    needle_ids = [enc.encode_ordinary(needle_text(k, v)) for k, v in zip(keys, values)]
    qa_ids = [t for i in rng.sample(range(len(keys)), len(keys))
              for t in enc.encode_ordinary("".join(question_and_answer("single", [keys[i]], [values[i]])))]
    n_haystack = length - sum(map(len, needle_ids)) - len(qa_ids)
    if n_haystack < 8:
        raise ValueError(f"length {length} is too short for a drill of {len(keys)} needles")
    tokens = pool[:n_haystack]
    starts = sentence_starts(enc, tokens)
    for at, ids in sorted(zip(rng.choices(starts, k=len(keys)), needle_ids), reverse=True):
        tokens[at:at] = ids
    return tokens + qa_ids
