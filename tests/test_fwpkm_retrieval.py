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
                       memory_topk=1, memory_key_dim=2 * N_SUB, memory_value_dim=C, memory_chunk=CHUNK)
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
    from fwpkm import needle_trace
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
