"""FwPKM retrieves by construction: one FwPKM layer with hand-set weights, and nothing else (no attention), reads back
a needle's value written chunks earlier, at 1x and 8x the number of chunks. This proves that the read, the lookahead
write and the chunking of fwpkm.py compose into retrieval, so training has a solution to find."""
import random

import torch
import torch.nn.functional as F

from fwpkm import FastWeightProductKeyMemory
from model import GPTConfig

N_SUB = 8                   # sub-keys per half: 64 slots, one per token id
VOCAB = N_SUB * N_SUB - 2   # token ids 0..61; the embedding has one more, constant, dimension
C = 64                      # model width = value size, so the output projection can be the identity
CHUNK = 16
KEYS = list(range(0, 20))       # needle keys (like names)
VALUES = list(range(20, 40))    # needle values (like numbers)
FILLER = list(range(40, VOCAB))  # haystack tokens


def hand_built_memory(seed=0):
    """top-1 product keys: token id a·n + b has query halves (K¹_a, K²_b), so every token reads its own slot with
    weight 1; the value is a random code of the token; the gate is 1; the output is RMSNorm(v̂) itself."""
    config = GPTConfig(vocab_size=VOCAB, n_layer=1, n_head=1, n_embd=C, fwpkm_layers=(0,), memory_n_sub=N_SUB,
                       memory_topk=1, memory_key_dim=2 * N_SUB, memory_value_dim=C, memory_chunk=CHUNK, memory_query_span=1)
    memory = FastWeightProductKeyMemory(config, 0).eval()
    scale = (C / 2) ** 0.5  # RMSNorm of a one-hot plus the constant dimension multiplies it by sqrt(C/2)
    codes = torch.randn(VOCAB, C, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        memory.initial_keys.copy_(3 * torch.eye(N_SUB).expand(2, N_SUB, N_SUB))  # K^m_i = 3·e_i
        memory.initial_values.zero_()
        memory.query.weight.zero_()
        memory.value.weight.zero_()
        memory.gate.weight.zero_()
        for token in range(VOCAB):
            a, b = divmod(token, N_SUB)
            memory.query.weight[a, token] = 3 / scale            # q¹ = K¹_a
            memory.query.weight[N_SUB + b, token] = 3 / scale    # q² = K²_b
            memory.value.weight[:, token] = codes[token] / scale
        memory.gate.weight[0, C - 1] = 10.0                      # sigmoid(10·sqrt(C/2)) = 1 in fp32
        memory.out_proj.weight.copy_(torch.eye(C))
    targets = F.rms_norm((codes - codes.mean(1, keepdim=True)) / codes.std(1, keepdim=True), (C,))
    return memory, targets  # targets: what the layer outputs when it reads a token's stored value


def embed(tokens):
    x = F.one_hot(torch.tensor(tokens), C).float()
    x[..., C - 1] = 1.0
    return x


def needle_sequence(rng, n_chunks):
    """A haystack of filler with the needle (key, value) inside chunk 0 and the key asked at the very end."""
    key, value = rng.choice(KEYS), rng.choice(VALUES)
    tokens = [rng.choice(FILLER) for _ in range(n_chunks * CHUNK - 1)] + [key]
    tokens[5:7] = [key, value]  # within one chunk: a pair across a chunk boundary is not written
    return tokens, value


def answer(memory, targets, tokens):
    """The value token whose code the layer outputs at the last token (the question)."""
    out = memory(embed([tokens])[:, :, :], torch.arange(len(tokens)))[0, -1]  # [C]
    return VALUES[int((targets[VALUES] @ out).argmax())]


def test_hand_built_fwpkm_retrieves_at_1x_and_8x_the_chunks():
    memory, targets = hand_built_memory()
    rng = random.Random(0)
    for n_chunks in (4, 32):  # 1x and 8x
        samples = [needle_sequence(rng, n_chunks) for _ in range(20)]
        got = [answer(memory, targets, tokens) for tokens, _ in samples]
        assert got == [value for _, value in samples], f"{n_chunks} chunks"


def test_without_the_write_there_is_nothing_to_read():
    """The answer comes from the needle: a sequence without it reads the empty initial memory."""
    memory, targets = hand_built_memory()
    tokens, _ = needle_sequence(random.Random(1), 4)
    tokens[5:7] = [FILLER[0], FILLER[1]]  # no needle
    out = memory(embed([tokens]), torch.arange(len(tokens)))[0, -1]
    assert out.abs().max() < 1e-3  # V_i = 0 never written: v̂ = 0


def test_needle_trace_sees_the_write_and_the_read_back():
    """needle_trace (eval_niah.py's memory diagnostics) on the hand-built layer: the question reads exactly the
    slots the needle's key wrote, at gate 1, and gets the needle's value back; a question with another key reads
    none of them and gets nothing back."""
    from eval_niah import needle_trace
    memory, _ = hand_built_memory()
    for same_key, expected in ((True, 1.0), (False, 0.0)):
        tokens, value = needle_sequence(random.Random(2), 4)
        if not same_key:
            tokens[-1] = next(k for k in KEYS if k != tokens[5])
        sample = {"tokens": tokens + [value], "prompt_len": len(tokens), "needle_at": 5, "needle_len": 2,
                  "value_mask": [True]}
        memory(embed([tokens]), torch.arange(len(tokens)))
        got = needle_trace(memory, [sample])[""]
        assert abs(got["gate_write"] - 1) < 1e-5, got
        assert abs(got["overlap"] - expected) < 1e-5 and abs(got["recall"] - expected) < 1e-4, got


def recall_batch(g, batch, pairs=4, length=48, n_keys=16):
    """Associative recall that attention of window 2 cannot do: `pairs` triples (key, marker, value) at the start,
    the same keys asked again as triples at the end, random filler between. A value follows its marker, one token
    after its key, so the query that must find it is the marker's. Returns tokens [B, L] and the answers' mask."""
    marker, filler = 2 * n_keys, 2 * n_keys + 1            # ids: keys 0..15, values 16..31, marker 32, filler 33..48
    x = torch.randint(filler, filler + 16, (batch, length), generator=g)
    keys = torch.stack([torch.randperm(n_keys, generator=g)[:pairs] for _ in range(batch)])
    values = torch.randint(n_keys, 2 * n_keys, (batch, pairs), generator=g)
    asked = torch.stack([torch.randperm(pairs, generator=g) for _ in range(batch)])
    for start, order in ((0, torch.arange(pairs).expand(batch, -1)), (length - 3 * pairs, asked)):
        x[:, start:start + 3 * pairs:3] = keys.gather(1, order)
        x[:, start + 1:start + 3 * pairs:3] = marker
        x[:, start + 2:start + 3 * pairs:3] = values.gather(1, order)
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[:, length - 3 * pairs + 2::3] = True
    return x, mask


def trained_recall(span, steps=40, window=2):
    """A one-layer GPT with FwPKM, trained on recall_batch with a sliding window of 2: the recall accuracy."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=64, block_size=48, n_layer=1, n_head=2, n_embd=64, fwpkm_layers=(0,), memory_n_sub=16,
                       memory_topk=8, memory_key_dim=32, memory_value_dim=64, memory_chunk=16, memory_query_span=span)
    from model import GPT
    model = GPT(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, mask = recall_batch(g, 16)
        logits, _ = model(x[:, :-1], window=window)
        loss = F.cross_entropy(logits[mask[:, 1:]], x[:, 1:][mask[:, 1:]])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x, mask = recall_batch(torch.Generator().manual_seed(2), 64)
    with torch.no_grad():
        logits, _ = model.eval()(x[:, :-1], window=window)
    return (logits.argmax(-1)[mask[:, 1:]] == x[:, 1:][mask[:, 1:]]).float().mean().item()


def test_training_finds_the_memory_when_the_query_can_see_the_key():
    """Trained, not hand-set: with a query span of 2 the marker's query holds the key one token back, and 40 steps
    learn recall through the memory (the window of 2 cannot reach the first triples). With the paper's one-token
    query the marker's query is the same for every key: the memory holds the sample's 4 values but no query can
    tell them apart, so recall stays at a guess among them (about 1/4). In a model with attention before the memory,
    attention must bring the key into the query first; results/fwpkm.md measures how training stalls there.
    The thresholds hold with margin over initialisations (12 seeds: learned 0.98-1.0, blind 0.08-0.34), so a
    trajectory that rounds differently on another CPU lands on the same side."""
    learned, blind = trained_recall(span=2), trained_recall(span=1)
    assert learned > 0.9 and blind < 0.5, (learned, blind)
