"""
Downloads TinyStories (Eldan & Li 2023, arXiv 2305.07759) and tokenizes it with tiktoken's gpt2 vocabulary into
data/tinystories/{train,val}.bin + meta.json (the format of data/format.py).

    python data/tinystories.py          # ~1.9 GB download, ~470M train tokens; then:
    python train.py --config config/tinystories_gpu.py

Needs internet (for the text files and for tiktoken's gpt2 vocabulary). Every step is skipped when its output
exists, a killed download continues where it stopped (HTTP range request), and every file is written under a
temporary name and renamed when complete.
"""
import os
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # so `python data/x.py` finds data/
from data.format import dataset_dir, gpt2_encoding, write_documents, write_meta

URL = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/"
FILES = {"train": "TinyStories-train.txt", "val": "TinyStories-valid.txt"}
SEPARATOR = "<|endoftext|>"  # the raw files separate stories with this line
CHUNK = 1 << 20              # bytes per read, for the download and for the text stream


def download(url, path):
    """Downloads url to path, continuing a partial path + '.part' from an earlier, killed run."""
    if os.path.exists(path):
        return
    part = path + ".part"
    have = os.path.getsize(part) if os.path.exists(part) else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the range starts at the end: the partial file is already complete
            os.replace(part, path)
            return
        raise SystemExit(f"error: downloading {url} failed: HTTP {e.code} {e.reason}")
    except urllib.error.URLError as e:
        raise SystemExit(f"error: cannot reach {url} ({e.reason}). Preparing {os.path.basename(path)} needs "
                         f"internet; the embedded default dataset (python train.py) works offline.")
    if have and response.status != 206:  # the server ignored the range: start over
        have = 0
    total = have + int(response.headers.get("Content-Length", 0))
    t0 = t_print = time.time()
    done = have
    with response, open(part, "ab" if have else "wb") as f:
        while block := response.read(CHUNK):
            f.write(block)
            done += len(block)
            if time.time() - t_print > 2:
                t_print = time.time()
                rate = (done - have) / (t_print - t0)
                eta = f", ETA {(total - done) / rate / 60:.1f} min" if total else ""
                print(f"{os.path.basename(path)}: {done / 1e6:,.0f} / {total / 1e6:,.0f} MB, "
                      f"{rate / 1e6:.1f} MB/s{eta}", flush=True)
    os.replace(part, path)


def read_stories(path):
    """Yields the stories of a raw TinyStories file, streaming."""
    rest = ""
    with open(path, encoding="utf-8") as f:
        while block := f.read(CHUNK):
            *stories, rest = (rest + block).split(SEPARATOR)
            yield from (s.strip() for s in stories if s.strip())
    if rest.strip():
        yield rest.strip()


def prepare(data_dir=None, url=URL, enc=None, tokenizer_name="gpt2"):
    """enc and tokenizer_name default to gpt2; tests pass a local tokenizer."""
    data_dir = data_dir or dataset_dir("tinystories")
    if os.path.exists(os.path.join(data_dir, "meta.json")):
        print(f"{data_dir} is already prepared")
        return data_dir
    enc = enc or gpt2_encoding()
    os.makedirs(data_dir, exist_ok=True)
    n_tokens = {}
    for split, name in FILES.items():
        raw, tokens = os.path.join(data_dir, name), os.path.join(data_dir, f"{split}.bin")
        if not os.path.exists(tokens):
            download(url + name, raw)
        n_tokens[split] = write_documents(tokens, read_stories(raw), enc)  # keeps a finished .bin
    write_meta(data_dir, enc, tokenizer_name, n_tokens["train"], n_tokens["val"])
    return data_dir


if __name__ == "__main__":
    prepare()
