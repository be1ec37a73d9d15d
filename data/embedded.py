"""
The embedded default dataset: seeded, procedurally generated children's stories, and a byte-level BPE tokenizer
built from them. Nothing is downloaded, so `python train.py` works offline.

    python data/embedded.py            # writes data/embedded/ (train.py also does this on first use)

Why generated stories: the project studies looking things up in the context, so the text must contain facts that
come back. Each story introduces a few characters with a pet, a favourite thing, a place and a secret number, and
later sentences refer back to them (Mia said, "My secret number is 4821."). A model can only predict those later
tokens by finding the earlier mention. The key (the name) comes a few tokens before the value it recalls, the
lookup that one attention circuit can learn in minutes at this scale.

The tokenizer is a tiktoken.Encoding: 256 byte tokens, merges learned by BPE on the generated words, and
<|endoftext|>. Digits are never merged, so a number is one token per digit (as needle values need).
Everything is deterministic given the seed.
"""
import os
import random
import re
import sys
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # so `python data/x.py` finds data/
from data.format import dataset_dir, encoding_from_spec, write_documents, write_json, write_meta

SEED = 1337           # the corpus is a pure function of this seed
TRAIN_STORIES = 12000  # ~2.5M tokens (11 MB of text, 5 MB of uint16)
VAL_STORIES = 1000     # ~200k tokens
VOCAB_SIZE = 1024     # at most; BPE stops once every generated word is one token (~860)
# letters and apostrophe-suffixes with their leading space, each digit alone, other symbols, whitespace;
# written for both Python's re (BPE training here) and tiktoken's Rust regex (encoding)
PAT_STR = r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+|[0-9]| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"

NAMES = {  # name -> pronoun set
    "she": "Mia Lily Emma Sara Lucy Anna Ella Zoe Ruby Nora Ivy Maya Rosa Hana Lena Amy Kate Jade Elsa Tina".split(),
    "he": "Tom Ben Max Sam Leo Jack Finn Noah Omar Luke Theo Ivan Hugo Kai Owen Alex Dan Eli Ray Paul".split(),
}
PRONOUNS = {"she": ("she", "her", "her"), "he": ("he", "him", "his")}  # subject, object, possessive
ANIMALS = "dog cat rabbit bird fish frog turtle mouse duck pony hamster goat".split()
PET_NAMES = "Spot Fluffy Bubbles Pip Coco Patch Biscuit Ziggy Pebble Sunny Muffin Rocky Bean Dot Pickles".split()
COLORS = "red blue green yellow purple orange pink white black brown silver golden".split()
THINGS = "ball kite hat box cup book drum boat car doll train shell key bell spoon sock rock map".split()
PLACES = ("park", "garden", "beach", "forest", "school", "farm", "lake", "hill", "market", "library",
          "river", "zoo", "castle", "kitchen", "playground", "cave")
FEELINGS = "happy sad sleepy excited scared proud hungry curious calm brave".split()
WEATHER = ("The sun was warm.", "It started to rain.", "The wind was cold.", "The sky was full of clouds.",
           "Snow fell softly.", "It was a bright day.")
TIMES = ("One day", "One morning", "Later", "After lunch", "That evening", "The next day", "Soon", "Then")


def article(word):
    return "an" if word[0] in "aeiou" else "a"


def make_character(rng, used_names):
    gender = rng.choice(("she", "he"))
    name = rng.choice([n for n in NAMES[gender] if n not in used_names])
    used_names.add(name)
    return {
        "name": name, "pron": PRONOUNS[gender],
        "pet": rng.choice(ANIMALS), "pet_name": rng.choice(PET_NAMES),
        "color": rng.choice(COLORS), "thing": rng.choice(THINGS),
        "place": rng.choice(PLACES), "number": str(rng.randint(1000, 9999)),
    }


def introduce(rng, c):
    subj, _, poss = c["pron"]
    return rng.choice([
        f"{c['name']} had a {c['pet']} named {c['pet_name']}. "
        f"{c['name']} also had {article(c['color'])} {c['color']} {c['thing']}.",
        f"There was a child named {c['name']}. {subj.capitalize()} loved {poss} {c['color']} {c['thing']} "
        f"and {poss} {c['pet']}, {c['pet_name']}.",
        f"{c['name']} lived near the {c['place']} with a {c['pet']} called {c['pet_name']}.",
    ]) + rng.choice([
        f" {c['name']}'s secret number was {c['number']}.",
        f" {c['name']} had a secret number. It was {c['number']}.",
        f" The secret number of {c['name']} was {c['number']}.",
    ]) + f" {poss.capitalize()} favourite place was the {c['place']}."


def recall(rng, c, other):
    """A sentence that repeats a fact from the introduction: predicting it needs looking back."""
    subj, obj, poss = c["pron"]
    return rng.choice([
        f"{other['name']} asked, \"What is the secret number of {c['name']}?\" \"The secret number of {c['name']} is "
        f"{c['number']},\" said {c['name']}.",
        f"{c['name']} said, \"My secret number is {c['number']}.\"",
        f"{c['name']} wrote {poss} secret number, {c['number']}, on a piece of paper.",
        f"{c['name']} called for {c['pet_name']}. \"Come here, {c['pet_name']}!\" The {c['pet']} ran to {obj}.",
        f"{c['name']} could not find {poss} {c['color']} {c['thing']}. {other['name']} helped {obj} look, "
        f"and they found the {c['color']} {c['thing']} under a chair.",
        f"{c['name']} and {c['pet_name']} the {c['pet']} went to the {c['place']}.",
        f"{other['name']} asked, \"Where is {c['pet_name']}?\" {c['name']} said, \"{c['pet_name']} is at the "
        f"{c['place']}.\"",
        f"\"My favourite place is the {c['place']},\" said {c['name']}.",
        f"{c['name']} showed {other['name']} the {c['color']} {c['thing']}.",
    ])


def event(rng, c, other):
    """A sentence with new, unpredictable content (the noise between the facts)."""
    subj, obj, poss = c["pron"]
    place, feeling, color, thing = rng.choice(PLACES), rng.choice(FEELINGS), rng.choice(COLORS), rng.choice(THINGS)
    return rng.choice([
        f"{rng.choice(TIMES)}, {c['name']} went to the {place}.",
        f"{c['name']} felt {feeling}.",
        rng.choice(WEATHER),
        f"{c['name']} and {other['name']} played together for a long time.",
        f"At the {place}, {subj} saw {article(color)} {color} {thing}.",
        f"{c['name']} gave {other['name']} {article(color)} {color} {thing}. {other['name']} was {feeling}.",
        f"{c['name']} counted to {rng.randint(3, 20)}.",
        f"{subj.capitalize()} ate {rng.randint(2, 9)} apples and felt {feeling}.",
    ])


def story(rng):
    used = set()
    cast = [make_character(rng, used) for _ in range(rng.randint(2, 3))]
    sentences = [introduce(rng, c) for c in cast]
    for _ in range(rng.randint(6, 14)):
        c, other = rng.sample(cast, 2)
        sentences.append(recall(rng, c, other) if rng.random() < 0.5 else event(rng, c, other))
    sentences.append(rng.choice(["They all went home happy.", "It was a good day.", "The end."]))
    return " ".join(sentences)


def generate_stories(n, seed):
    rng = random.Random(seed)
    return [story(rng) for _ in range(n)]


def train_bpe(texts, vocab_size):
    """Byte-pair merges learned on word counts. Returns mergeable ranks {token bytes: rank}."""
    words = Counter(w for text in texts for w in re.findall(PAT_STR, text) if not w.isdigit())
    words = {tuple(bytes([b]) for b in w.encode()): n for w, n in words.items()}
    ranks = {bytes([b]): b for b in range(256)}
    while len(ranks) < vocab_size - 1:  # one id is left for <|endoftext|>
        pairs = Counter()
        for parts, n in words.items():
            for pair in zip(parts, parts[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))  # most frequent; ties broken by the bytes, deterministic
        ranks[best[0] + best[1]] = len(ranks)
        words = {merge_pair(parts, best): n for parts, n in words.items()}
    return ranks


def merge_pair(parts, pair):
    out, i = [], 0
    while i < len(parts):
        if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
            out.append(parts[i] + parts[i + 1])
            i += 2
        else:
            out.append(parts[i])
            i += 1
    return tuple(out)


def tokenizer_spec(ranks):
    tokens = [t.hex() for t, _ in sorted(ranks.items(), key=lambda item: item[1])]
    return {"name": "embedded-bpe", "pat_str": PAT_STR, "tokens": tokens, "special_tokens": {EOT: len(tokens)}}


def prepare(data_dir=None, train_stories=TRAIN_STORIES, val_stories=VAL_STORIES, seed=SEED, vocab_size=VOCAB_SIZE):
    """Writes the dataset unless it is already there. Returns its directory."""
    data_dir = data_dir or dataset_dir("embedded")
    if os.path.exists(os.path.join(data_dir, "meta.json")):  # meta.json is written last: its presence means done
        return data_dir
    os.makedirs(data_dir, exist_ok=True)
    texts = generate_stories(train_stories + val_stories, seed)
    spec = tokenizer_spec(train_bpe(texts[:2000], vocab_size))
    enc = encoding_from_spec(spec)
    write_json(os.path.join(data_dir, "tokenizer.json"), spec)
    n_train = write_documents(os.path.join(data_dir, "train.bin"), texts[:train_stories], enc)
    n_val = write_documents(os.path.join(data_dir, "val.bin"), texts[train_stories:], enc)
    write_meta(data_dir, enc, "embedded", n_train, n_val)
    print(f"wrote {data_dir}: vocabulary {enc.n_vocab}")
    return data_dir


if __name__ == "__main__":
    prepare()
