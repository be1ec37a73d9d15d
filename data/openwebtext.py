"""
Downloads OpenWebText (Gokaslan & Cohen 2019; ~8M documents, ~9B gpt2 tokens) with Hugging Face `datasets` and
tokenizes it with tiktoken's gpt2 vocabulary into data/openwebtext/{train,val}.bin + meta.json.

    pip install datasets               # optional: only this script needs it
    python data/openwebtext.py         # ~55 GB of Hugging Face cache, ~17 GB of .bin; then:
    python train.py --dataset openwebtext --config config/tinystories_gpu.py

Like nanoGPT, 0.05% of the documents (seeded) are held out for validation. Skipped when meta.json exists; a killed
run redoes only the split that was not finished (each .bin is written under a temporary name and renamed).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # so `python data/x.py` finds data/
from data.format import dataset_dir, gpt2_encoding, write_documents, write_meta

HF_NAME = "Skylion007/openwebtext"  # the Parquet copy on the Hugging Face hub
VAL_FRACTION = 0.0005
SEED = 2357


def prepare(data_dir=None):
    data_dir = data_dir or dataset_dir("openwebtext")
    if os.path.exists(os.path.join(data_dir, "meta.json")):
        print(f"{data_dir} is already prepared")
        return data_dir
    try:
        from datasets import load_dataset
    except ImportError:
        raise SystemExit("error: data/openwebtext.py needs the optional package `datasets`: pip install datasets")
    enc = gpt2_encoding()
    os.makedirs(data_dir, exist_ok=True)
    docs = load_dataset(HF_NAME, split="train", num_proc=max(1, os.cpu_count() // 2))
    parts = docs.train_test_split(test_size=VAL_FRACTION, seed=SEED, shuffle=True)
    n_tokens = {}
    for split, part in (("train", parts["train"]), ("val", parts["test"])):
        path = os.path.join(data_dir, f"{split}.bin")
        n_tokens[split] = write_documents(path, (row["text"] for row in part), enc, total=len(part))
    write_meta(data_dir, enc, "gpt2", n_tokens["train"], n_tokens["val"])
    return data_dir


if __name__ == "__main__":
    prepare()
