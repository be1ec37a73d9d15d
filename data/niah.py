"""
Needle-in-a-haystack samples, shared by eval_niah.py (evaluation) and train.py (the retrieval drills in training).

A sample is a token sequence of exactly the requested length: a haystack with one or more needles inserted at
sentence boundaries, a question, and the answer. Formats follow RULER (Hsieh et al. 2024) and passkey retrieval
(Mohtashami & Jaggi 2023), worded like the embedded stories so that the task is in distribution for them. A wording
is a Wording of three format strings with {name} (the key) and {value}, for example

    needle    " The secret number of {name} is {value}."
    question  ' "What is the secret number of {name}?"'
    prefix    ' "The secret number of {name} is'          (ends the prompt; the answer " 4821" continues it)

The seen wordings, those of the training drills, are composed from parts (PARTS, compose): a noun ("secret number",
"home number", ...), how it names the key ("the {noun} of {name}", "{name}'s {noun}", ...), a tense (is, was), a
needle form (the key first, the value first, said, events with an object), a question form (none, plain, quoted,
about the object), an answer prefix (none: the answer right after the "?", "It is", the key's number again, a cloze
without a question, ...) and a colon after it or not. A drill draws every part independently (draw_wording), so no
question predicts its prefix and the lookup has to be learned, not a template (over 10,000 wordings, a test counts
them). WORDINGS["seen"] is the evaluation's fixed sample of 20 of them (seed 0). WORDINGS["heldout"] (the 5 of
before the composition, kept so that numbers stay comparable) are never trained: nouns no part has ("secret key",
"number", "favourite number"), a map, "found ... under a chair", with forms the parts do have (answers right after
the "?", "is:", a cloze, the value before the key). No part combination makes a held-out needle or question (tests
check every combination), so a model that learned templates, not the lookup, fails on them. Every word is in the
embedded tokenizer's vocabulary (tests check it).

Variants: single (one needle); multikey (the needle among needles of other keys); multivalue (several needles for
one key, all values must be returned); multiquery (several keys asked at once: the wording with {name} = "Mia and
Tom", answered "4821 and 1234"); passkey (its one fixed wording, PASSKEY: "The pass key is 4821. Remember it. 4821
is the pass key." in the haystack, "What is the pass key? The pass key is" at the end).
Haystacks: "val", tokens of the model's own data (document separators removed, so the needle and the question
are in one text), or "noise", RULER's repeated sentences.

Keys are names and values digit strings (4 digits in evaluation, 3 to 5 in drills). Both are split into two
disjoint halves by a hash: training documents use the "train" half and evaluation the "eval" half, so a model
cannot pass the evaluation by memorising pairs. A key that already occurs in the haystack is never used (the
stories have secret numbers of their own).
"""
import random
import re
import weakref
import zlib
from collections import namedtuple

from data.embedded import NAMES

VARIANTS = ("single", "multikey", "multivalue", "multiquery", "passkey")
HAYSTACKS = ("val", "noise")
SPLITS = ("train", "eval")
KEYS = tuple(sorted(NAMES["she"] + NAMES["he"]))  # one token each in the embedded tokenizer and in gpt2
NOISE = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
N_DISTRACTORS = 3  # multikey: needles with other keys
MULTIKEY_CHANCE = 1 / (1 + N_DISTRACTORS)  # multikey's score for a model that finds a needle, not the asked key's
N_VALUES = 3       # multivalue: needles of the one key
N_QUERIES = 2      # multiquery: keys asked at once
EVAL_DIGITS = 4          # evaluation values: one length, so a batch's answers are equally long
DRILL_DIGITS = (3, 4, 5)
DRILL_NOISE = 0.25       # the share of drills whose haystack is the noise sentences
STORY_NAME_IDENTITY = 0.5  # the chance that a drill's story character of the drilled names gets a random identity
MIN_HAYSTACK = 8         # tokens of haystack a sample or drill keeps at least

Wording = namedtuple("Wording", "needle question prefix")
# The parts of the seen wordings; compose() fills one of each into a Wording. {thing} names the key's number ({Thing}
# at a sentence start), {verb} is one tense for the whole wording. None of the parts can make a held-out needle or
# question (tests/test_niah.py enumerates every combination): no noun "number", "favourite number" or "secret key",
# no map, no "found". Draws are uniform over a tuple, so a repeated choice is drawn more often: the answer must be
# the likeliest continuation where a prompt ends (greedy decoding answers there), so the answer follows the "?" in
# half the questions and a colon ends a quarter of the prefixes (drawn uniformly, a model wrote ": 953" after "is").
# Nouns with an object ("the box number of Mia") and prefixes with several verbs ("The number Mia saw was") are there
# because models trained on fewer failed held-out wordings by template: "The number Kai found was" went on " for
# Maya." (the needle form "The number 4821 was for Mia."), and "the secret key of Mia" failed most, "key" being
# known only as an object (results/niah.md, "Which held-out wordings fail").
PARTS = {
    "noun": ("secret number", "secret", "home number", "old number", "good number", "golden number",
             "{object} number"),
    "thing": ("the {noun} of {name}", "the {noun} for {name}", "{name}'s {noun}"),
    "verb": ("is", "was"),
    "object": ("box", "key", "train", "boat", "car", "book", "hat", "cup"),
    "colon": ("",) * 3 + (":",),
    "needle": (" {Thing} {verb} {value}.", " {value} {verb} {thing}.", " The number {value} {verb} for {name}.",
               ' {name} said, "My {noun} is {value}."', " {name} had a {object} with the number {value} on it.",
               " {name} wrote the number {value} on the {object}.", " {name} saw the number {value} on the {object}."),
    "question": ("", " What {verb} {thing}?", ' "What {verb} {thing}?"',
                 " What number was on the {object} of {name}?"),
    "prefix": ("",) * 9 + (" It {verb}{colon}", " {Thing} {verb}{colon}", ' "{Thing} {verb}',
                           " The number {verb}{colon}", " The number {name} wrote {verb}{colon}",
                           " The number {name} had {verb}{colon}", " The number {name} saw {verb}{colon}",
                           " The number {name} loved {verb}{colon}", " The number {name} counted {verb}{colon}"),
}


def compose(noun, thing, verb, object, colon, needle, question, prefix):
    """The Wording of one choice of each of PARTS (in its order); {name} and {value} stay placeholders."""
    fields = {"noun": noun.format(object=object), "verb": verb, "object": object, "colon": colon,  # "box number"
              "name": "{name}", "value": "{value}"}
    fields["thing"] = thing.format(**fields)
    fields["Thing"] = fields["thing"][0].upper() + fields["thing"][1:]
    return Wording(*(part.format(**fields) for part in (needle, question, prefix)))


def draw_wording(rng):
    """A seen wording, each part drawn independently; drawn again when neither its question nor its prefix names
    the key (a prompt without a question must name the key in its prefix)."""
    while True:
        wording = compose(*(rng.choice(choices) for choices in PARTS.values()))
        if "{name}" in wording.question + wording.prefix:
            return wording


def draw_wordings(seed, n):
    """n distinct seen wordings, drawn once: the fixed "seen" set of the evaluation."""
    rng, drawn = random.Random(seed), {}
    while len(drawn) < n:
        drawn[draw_wording(rng)] = None
    return tuple(drawn)


EVAL_SEEN = 20  # composed seen wordings in the evaluation, drawn with seed 0
WORDINGS = {
    "seen": draw_wordings(0, EVAL_SEEN),
    "heldout": (
        Wording(" The secret key of {name} is {value}.", " What is the secret key of {name}?",
                " The secret key of {name} is:"),
        Wording(" {name} had a map with the number {value} on it.", " What number was on the map of {name}?", ""),
        Wording(" The favourite number for {name} was {value}.", ' "What was the favourite number for {name}?"',
                ' "The favourite number for {name} was'),
        Wording(" {value} was the number of {name}.", " What was the number of {name}?", " It was"),
        Wording(" {name} found the number {value} under a chair.", "", " The number {name} found was"),
    ),
}
PASSKEY = Wording(" The pass key is {value}. Remember it. {value} is the pass key.", " What is the pass key?",
                  " The pass key is")


def split_of(text):
    """'train' or 'eval', a fixed hash of the key or value."""
    return SPLITS[zlib.crc32(text.encode()) % 2]


KEYS_OF = {split: [k for k in KEYS if split_of(k) == split] for split in SPLITS}  # in KEYS' order
KEY_SET = frozenset(KEYS)
WORD = re.compile(r"\w+")  # the text's words: a key (one word) occurs as a whole word where it is one of them
SENTENCE_ENDS = weakref.WeakKeyDictionary()  # per tokenizer object (two datasets' BPEs share a name): a memo


def check_choice(kind, value, valid):
    """Raises a one-line ValueError naming a value that is not one of `valid`, and the choices."""
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; valid choices: {', '.join(valid)}")


def draw_value(rng, split, taken, digits):
    """A value of `digits` digits from the split's half, not in `taken` (which it joins)."""
    while True:
        value = str(rng.randint(10 ** (digits - 1), 10 ** digits - 1))
        if split_of(value) == split and value not in taken:
            taken.add(value)
            return value


def question_and_answer(wording, keys, values):
    """The end of the prompt (question and answer prefix) and the expected continuation, for the queried keys and
    their values. Several keys are asked as one name ("Mia and Tom"), several values answered as "1, 2 and 3"."""
    name = " and ".join(keys)
    answer = " " + ", ".join(values[:-1]) + " and " + values[-1] if len(values) > 1 else " " + values[0]
    return wording.question.format(name=name) + wording.prefix.format(name=name), answer


def unused_keys(split, haystack_text):
    """The split's keys that do not occur in the haystack (the stories have secret numbers of their own)."""
    found = KEY_SET.intersection(WORD.findall(haystack_text))  # one pass over the text for every key
    return [k for k in KEYS_OF[split] if k not in found]


def plan_needles(rng, variant, wording, split, haystack_text):
    """Returns (needle texts, queried keys, expected values); the first needle is the one placed at the depth."""
    free = unused_keys(split, haystack_text)
    n_keys = {"single": 1, "multikey": 1 + N_DISTRACTORS, "multivalue": 1, "multiquery": N_QUERIES, "passkey": 0}
    if len(free) < n_keys[variant]:
        raise ValueError(f"only {len(free)} unused keys left for variant {variant!r}; use a shorter haystack")
    keys = rng.sample(free, n_keys[variant])
    taken = set()
    if variant == "passkey":
        value = draw_value(rng, split, taken, EVAL_DIGITS)
        return [wording.needle.format(value=value)], [], [value]
    if variant == "multivalue":
        keys *= N_VALUES  # one key, a needle per value
    values = [draw_value(rng, split, taken, EVAL_DIGITS) for _ in keys]
    needles = [wording.needle.format(name=k, value=v) for k, v in zip(keys, values)]
    if variant == "multikey":
        return needles, keys[:1], values[:1]
    return needles, list(dict.fromkeys(keys)), values  # single, multivalue, multiquery


def haystack_tokens(rng, enc, source, n):
    """n tokens of haystack: from the token array source (EOTs removed), or the noise text when source is None."""
    if source is None:
        noise = enc.encode_ordinary(NOISE)
        return (noise * (n // len(noise) + 1))[:n]
    if len(source) < 2 * n + 2:
        raise ValueError(f"the haystack source has {len(source)} tokens, too few for a {n}-token haystack")
    start = rng.randrange(len(source) - 2 * n - 1)
    window = source[start:start + 2 * n]  # 2n: room for removed EOTs
    return window[window != enc.eot_token][:n].tolist()


def sentence_starts(enc, tokens):
    """Indices where a sentence may start: 0 and after every token that ends with '.'."""
    ends = SENTENCE_ENDS.setdefault(enc, {})  # token -> whether it ends with '.', decoded once per token
    for t in set(tokens).difference(ends):
        ends[t] = enc.decode([t]).rstrip().endswith(".")
    return [0] + [i + 1 for i, t in enumerate(tokens) if ends[t]]


def make_sample(rng, enc, source, length, depth, variant, split, wording):
    """A sample of exactly `length` tokens in the given Wording (one of WORDINGS; passkey samples use PASSKEY).
    source: a token array for the "val" haystack, None for "noise".

    Returns a dict: tokens (list), prompt_len, values (expected strings), value_mask (True at answer tokens that
    hold digits), needle_at and needle_len (where the asked needle starts, and its tokens), needles ((start, tokens)
    of every needle, the asked one first), question_at (where the question starts), depth (requested)."""
    check_choice("variant", variant, VARIANTS)
    check_choice("split", split, SPLITS)
    wording = PASSKEY if variant == "passkey" else wording
    pool = haystack_tokens(rng, enc, source, length)  # at least as long as the final haystack
    needles, asked, values = plan_needles(rng, variant, wording, split, enc.decode(pool))
    question, answer = question_and_answer(wording, asked, values)
    needle_ids = [enc.encode_ordinary(t) for t in needles]
    question_ids, answer_ids = enc.encode_ordinary(question), enc.encode_ordinary(answer)
    n_haystack = length - sum(map(len, needle_ids)) - len(question_ids) - len(answer_ids)
    if n_haystack < MIN_HAYSTACK:
        raise ValueError(f"length {length} is too short for the {variant!r} needles and question")
    haystack = pool[:n_haystack]
    starts = sentence_starts(enc, haystack)
    target = min(starts, key=lambda s: abs(s - depth * n_haystack))
    others = rng.choices(starts, k=len(needles) - 1)
    placed = sorted(zip([target, *others], range(len(needles))), reverse=True)  # insert from the back
    tokens = list(haystack)
    for at, which in placed:
        tokens[at:at] = needle_ids[which]
    # where each needle starts once all are in: those inserted before it, or at the same place and drawn earlier
    needle_starts = [at + sum(len(needle_ids[v]) for other, v in placed if other < at or (other == at and v < w))
                     for at, w in sorted(placed, key=lambda p: p[1])]
    needle_at = needle_starts[0]
    tokens += question_ids + answer_ids
    prompt_len = length - len(answer_ids)
    value_mask = [any(c.isdigit() for c in enc.decode([t])) for t in answer_ids]
    return {"tokens": tokens, "prompt_len": prompt_len, "values": values, "value_mask": value_mask,
            "needle_at": needle_at, "needle_len": len(needle_ids[0]), "question_at": prompt_len - len(question_ids),
            "needles": [(at, len(ids)) for at, ids in zip(needle_starts, needle_ids)],
            "depth": depth, "haystack_len": n_haystack}


def make_drill(rng, enc, source, length, split, needles=3, shared_wording=0.0):
    """A training document of exactly `length` tokens that asks for the needles it holds: 1 to `needles` needles
    (fewer when long wordings would leave less than MIN_HAYSTACK tokens of haystack), each in its own seen wording,
    or, in a `shared_wording` share of the drills, 2 to `needles` needles all in one (they differ only in key and
    value, so only the key tells the asked needle from the others: the multi-key needle's test; such a drill asks 1
    to n − 1 of its n needles, so that no question is answered by elimination, as the last of all n would be), with
    a value of 3 to 5 digits, at random sentence starts of a haystack (the noise sentences in a DRILL_NOISE share of
    drills, else source), then one question and answer per asked needle, in random order. Several answers per row is
    what lets a small model leave the long plateau before lookups are learned (README, "Needle in a haystack").

    Returns (tokens, is_answer, name_at): is_answer[i] is True where tokens[i] is part of an answer (" 4821"), the
    tokens only a lookup predicts (train.py --answer_weight weighs them in the loss); name_at[i] is j where tokens[i]
    is the j-th name to be given a random identity (train.py --anonymous_names), else -1: first the needles' keys (a
    key is never in the haystack: unused_keys; its marks are its needle and its question or answer prefix), then
    some of the split's names that are characters of the haystack."""
    pool = haystack_tokens(rng, enc, None if rng.random() < DRILL_NOISE else source, length)
    free = unused_keys(split, enc.decode(pool))
    shared = shared_wording and rng.random() < shared_wording  # no draw at 0: the drills of before stay the same
    keys = rng.sample(free, min(rng.randint(2 if shared and needles > 1 else 1, needles), len(free)))
    taken = set()
    shared = draw_wording(rng) if shared else None
    drawn = [(k, draw_value(rng, split, taken, rng.choice(DRILL_DIGITS)), shared or draw_wording(rng)) for k in keys]
    needles = [enc.encode_ordinary(w.needle.format(name=k, value=v)) for k, v, w in drawn]
    asked = [[enc.encode_ordinary(text) for text in question_and_answer(w, [k], [v])] for k, v, w in drawn]
    answers = [question + answer for question, answer in asked]
    answer_lens = [len(answer) for _, answer in asked]
    while len(needles) > 1 and sum(map(len, needles + answers)) > length - MIN_HAYSTACK:
        needles.pop()
        answers.pop()
    if shared and len(needles) > 1:  # asks 1 to n - 1 of its n needles: no answer is the one value not yet given
        kept = sorted(rng.sample(range(len(answers)), rng.randint(1, len(answers) - 1)))
        answers, answer_lens = [answers[i] for i in kept], [answer_lens[i] for i in kept]
    n_haystack = length - sum(map(len, needles + answers))
    if n_haystack < MIN_HAYSTACK:
        raise ValueError(f"drill length {length} is too short: {length - n_haystack} tokens of needle and question "
                         f"leave fewer than {MIN_HAYSTACK} of haystack")
    tokens = pool[:n_haystack]
    starts = sentence_starts(enc, tokens)
    for at, ids in sorted(zip(rng.choices(starts, k=len(needles)), needles), reverse=True):
        tokens[at:at] = ids
    is_answer = [False] * len(tokens)
    for i in rng.sample(range(len(answers)), len(answers)):
        tokens += answers[i]
        is_answer += [False] * (len(answers[i]) - answer_lens[i]) + [True] * answer_lens[i]
    # the split's names that are characters of the haystack, each with probability STORY_NAME_IDENTITY: with them a
    # random identity (train.py --anonymous_names) does not by itself mark a key, the model has to match names
    absent = set(unused_keys(split, enc.decode(pool[:n_haystack])))
    characters = [k for k in KEYS_OF[split] if k not in absent and rng.random() < STORY_NAME_IDENTITY]
    keys = [k for k, _, _ in drawn[:len(needles)]]  # the keys whose needles fitted, asked or not
    name_ids = {ids[0]: j for j, k in enumerate(keys + characters)  # " Mia" and "Mia" (after a quote), one token
                for ids in (enc.encode_ordinary(" " + k), enc.encode_ordinary(k)) if len(ids) == 1}
    return tokens, is_answer, [name_ids.get(t, -1) for t in tokens]
