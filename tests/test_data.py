import http.server
import os
import threading

import numpy as np
import pytest
import torch

from data import embedded, tinystories
from data.format import get_batch, load_meta, load_tokenizer, load_tokens, write_documents


def test_embedded_is_deterministic_and_has_recurring_facts():
    a, b = embedded.generate_stories(50, seed=5), embedded.generate_stories(50, seed=5)
    assert a == b and a != embedded.generate_stories(50, seed=6)
    # every story states a secret number in its introduction; most mention a fact again later
    repeats = 0
    for story in a:
        facts = [w for w in story.replace(".", " ").replace(",", " ").split() if w.isdigit() and len(w) >= 2]
        repeats += len(facts) != len(set(facts))
    assert repeats > len(a) // 4


def test_tokenizer_round_trip_and_digits(tiny_data):
    enc = load_tokenizer(tiny_data)
    text = 'Mia\'s secret number was 4821. "Where is Spot?" asked Tom. Ünïcödé ✓ and\ttabs\n'
    assert enc.decode(enc.encode_ordinary(text)) == text
    digits = enc.encode_ordinary(" 4821")
    assert [enc.decode([t]) for t in digits] == [" ", "4", "8", "2", "1"]  # one token per digit
    assert len(enc.encode_ordinary(" secret")) == 1                         # story words are single tokens
    assert enc.eot_token == enc.n_vocab - 1 == load_meta(tiny_data)["vocab_size"] - 1


def test_prepared_files_round_trip(tiny_data):
    meta, enc = load_meta(tiny_data), load_tokenizer(tiny_data)
    train, val = load_tokens(tiny_data, "train"), load_tokens(tiny_data, "val")
    assert (len(train), len(val)) == (meta["train_tokens"], meta["val_tokens"])
    stories = embedded.generate_stories(330, embedded.SEED)
    first = enc.decode(list(train[:np.argmax(train == enc.eot_token)]))
    assert first == stories[0]
    assert enc.decode(list(val[:np.argmax(val == enc.eot_token)])) == stories[300]
    assert not any(f.endswith(".tmp") for f in os.listdir(tiny_data))


def test_get_batch_shifts_targets(tiny_data):
    tokens = load_tokens(tiny_data, "train")
    x, y = get_batch(tokens, 4, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    x2, _ = get_batch(tokens, 4, 16, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)


def test_missing_dataset_names_the_command(tmp_path):
    with pytest.raises(SystemExit, match="python data/tinystories.py"):
        load_meta(str(tmp_path / "tinystories"))


def test_write_documents_keeps_finished_file(tmp_path, tiny_data):
    enc = load_tokenizer(tiny_data)
    path = str(tmp_path / "x.bin")
    n = write_documents(path, ["one two", "three"], enc)
    assert n == len(np.fromfile(path, dtype=np.uint16))
    assert write_documents(path, iter(lambda: pytest.fail("re-tokenized"), None), enc) == n


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with HTTP range support, like the Hugging Face CDN."""
    def do_GET(self):
        data = open(self.translate_path(self.path), "rb").read()
        start = int(self.headers["Range"][6:-1]) if self.headers.get("Range") else 0
        self.server.requests.append(start)  # before the body: once the client has it all, the request is recorded
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def local_server(tmp_path):
    root = tmp_path / "remote"
    root.mkdir()
    stories = embedded.generate_stories(60, seed=1)
    (root / tinystories.FILES["train"]).write_text("\n<|endoftext|>\n".join(stories[:50]) + "\n")
    (root / tinystories.FILES["val"]).write_text("\n<|endoftext|>\n".join(stories[50:]) + "\n")
    handler = lambda *a, **k: RangeHandler(*a, directory=str(root), **k)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.requests = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, root, stories
    server.shutdown()


def test_download_resumes_a_partial_file(local_server, tmp_path):
    server, root, _ = local_server
    name = tinystories.FILES["train"]
    full = (root / name).read_bytes()
    dest = tmp_path / name
    (tmp_path / (name + ".part")).write_bytes(full[:1000])  # an earlier, killed download
    tinystories.download(f"http://127.0.0.1:{server.server_port}/{name}", str(dest))
    assert dest.read_bytes() == full and server.requests == [1000]
    tinystories.download(f"http://127.0.0.1:{server.server_port}/{name}", str(dest))  # done: no request
    assert server.requests == [1000]


def test_tinystories_prepare_end_to_end(local_server, tmp_path, tiny_data):
    server, _, stories = local_server
    enc = load_tokenizer(tiny_data)  # gpt2's vocabulary cannot be fetched offline; the code path is the same
    out = tinystories.prepare(str(tmp_path / "ts"), url=f"http://127.0.0.1:{server.server_port}/", enc=enc,
                              tokenizer_name="embedded")
    train = load_tokens(out, "train")
    docs = enc.decode(list(train)).split(embedded.EOT)
    assert docs[:-1] == stories[:50]
    assert load_meta(out)["train_tokens"] == len(train)


def test_read_stories_across_chunk_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr(tinystories, "CHUNK", 7)
    path = tmp_path / "raw.txt"
    path.write_text("first story\n<|endoftext|>\nsecond one\n<|endoftext|>\nthird")
    assert list(tinystories.read_stories(str(path))) == ["first story", "second one", "third"]


def test_offline_download_says_so(tmp_path):
    with pytest.raises(SystemExit, match="needs internet"):
        tinystories.download("http://127.0.0.1:9/TinyStories-valid.txt", str(tmp_path / "x.txt"))


def test_gpt2_vocabulary_offline_says_so(monkeypatch):
    import tiktoken
    from data.format import gpt2_encoding

    def offline(name):
        raise ConnectionError("no network")
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(SystemExit, match="needs internet"):
        gpt2_encoding()
