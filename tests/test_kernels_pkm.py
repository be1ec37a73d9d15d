"""fast_paths/pkm.py against fwpkm.py's plain code: the memories' read (output and the gradients of the weights and of
the value rows) and FwPKM's value write, then tiny GPTs with a memory layer, kernels on vs off.

As tests/test_kernels.py: under Triton's CPU interpreter on CPU tensors and, where there is a GPU, on CUDA tensors.
"""
import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed, so the kernels cannot run")

import fwpkm
from fast_paths import pkm
from model import GPT, GPTConfig
from tests.test_kernels import BF16, DEVICES, FP32, assert_trains_the_same, train_steps

MEMORY = dict(memory_n_sub=4, memory_topk=2, memory_key_dim=8, memory_value_dim=12, memory_chunk=8)  # 16 slots
TINY = dict(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32, **MEMORY)


def check_read(values, rows, w, tol=FP32):
    """pkm.read() vs the plain gather-and-sum: output, and the gradients of values and w (those that require it)
    for a random upstream gradient."""
    fast = pkm.read(values, rows, w)
    plain = (w[..., None] * values[rows]).sum(-2)
    assert fast.dtype == plain.dtype
    torch.testing.assert_close(fast, plain, **tol)
    upstream = torch.randn(fast.shape, device=fast.device).to(fast.dtype)
    inputs = [x for x in (values, w) if x.requires_grad]
    grads = [torch.autograd.grad((y.float() * upstream.float()).sum(), inputs) for y in (fast, plain)]
    for a, b in zip(*grads):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, **tol)


def random_reads(B, T, K, rows, device, dtype=torch.float32):
    """Row indices [B, T, k] drawn from `rows` values (few, so rows repeat across tokens and the scatter-add must
    accumulate) and softmax weights [B, T, k] that require grad."""
    w = torch.randn(B, T, K, device=device).softmax(-1).to(dtype).requires_grad_()
    return torch.randint(rows, (B, T, K), device=device), w


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("M,D,B,T,K", [
    (64, 24, 2, 7, 3),      # static PKM: V [N, d_v], rows = slots
    (64, 200, 2, 17, 3),    # d_v = 200: 16 tokens a program, so 3 programs, the last mostly masked
    (256, 12, 1, 1, 4),     # T = 1 (generation)
])
def test_read_matches_plain(device, M, D, B, T, K):
    values = torch.randn(M, D, device=device, requires_grad=True)
    rows, w = random_reads(B, T, K, 8, device)  # 8 of the M rows: every row is read many times
    check_read(values, rows, w)


@pytest.mark.parametrize("device", DEVICES)
def test_read_matches_plain_for_grouped_fast_weights(device):
    """FwPKM's shape: values [G, N, d_v] seen as [G·N, d_v], row = group·N + slot; the fast values require grad
    (in training they carry the graph of earlier writes)."""
    G, N, D, T, K = 3, 16, 12, 5, 2
    values = torch.randn(G, N, D, device=device, requires_grad=True)
    slots, w = random_reads(G, T, K, N, device)
    check_read(values.flatten(0, 1), torch.arange(G, device=device)[:, None, None] * N + slots, w)


@pytest.mark.parametrize("device", DEVICES)
def test_read_with_only_the_values_learning(device):
    values = torch.randn(32, 12, device=device, requires_grad=True)
    rows, w = random_reads(2, 5, 3, 6, device)
    check_read(values, rows, w.detach())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("w_dtype", [torch.bfloat16, torch.float32])
def test_read_bf16(device, w_dtype):
    """A bf16 value table (a static PKM in a bf16 model): bf16 weights give a bf16 read, fp32 weights an fp32 one."""
    values = torch.randn(32, 24, device=device).bfloat16().requires_grad_()
    rows, w = random_reads(2, 7, 3, 6, device, w_dtype)
    check_read(values, rows, w, BF16)


def written(layer, r, state, kernels):
    state = state.clone()
    layer.kernels = kernels
    layer.write(r, state)
    return state


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("lifetime,T", [
    ("sequence", 8),       # a memory per sequence, one chunk of 8
    ("persistent", 8),     # one memory shared by the batch: rows repeat across sequences
    ("sequence", 13),      # read_iteratively's chunk is the whole context: any length
])
def test_write_matches_plain(device, lifetime, T):
    torch.manual_seed(0)
    layer = fwpkm.FastWeightProductKeyMemory(GPTConfig(**TINY, memory_lifetime=lifetime), 0).to(device).eval()
    state = layer.fresh_state(3)
    state.values = torch.randn_like(state.values)  # a memory that has been written before
    with torch.no_grad():  # no graph: the kernel's case
        r = layer.read(layer.project(torch.randn(3, T, 32, device=device), state.before), state)
        fast, plain = written(layer, r, state, "on"), written(layer, r, state, "off")
    assert torch.unique(r["group"][:, None, None] * 16 + r["slots"]).numel() < r["slots"].numel()  # rows repeat
    assert not torch.equal(plain.values, state.values)  # the step did something
    torch.testing.assert_close(fast.values, plain.values, **FP32)
    torch.testing.assert_close(fast.keys, plain.keys, **FP32)


@pytest.mark.parametrize("device", DEVICES)
def test_write_keeps_the_plain_code_when_a_graph_is_needed(device, monkeypatch):
    """Training differentiates through the write: with inputs that require grad the kernel must not be taken."""
    monkeypatch.setattr(pkm, "write_values", lambda *args: pytest.fail("the in-place kernel would cut the graph"))
    layer = fwpkm.FastWeightProductKeyMemory(GPTConfig(**TINY, kernels="on"), 0).to(device)
    state = layer.fresh_state(2)
    layer.write(layer.read(layer.project(torch.randn(2, 8, 32, device=device), state.before), state), state)
    assert state.values.grad_fn is not None


def tiny_gpt(memory, kernels, device):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY, **{memory: (1,)}, kernels=kernels)).to(device)
    if memory == "pkm_layers":  # the static values start at N(0, 1) like any embedding; fine as they are
        return model
    for m in model.modules():  # fast values start at 0, where the first chunk reads nothing: start them random
        if isinstance(m, fwpkm.FastWeightProductKeyMemory):
            m.initial_values.normal_()
    return model


def counting(monkeypatch):
    """Counts the calls of the kernels' entry points, to check that the switch took effect."""
    calls = {"read": 0, "write_values": 0}
    for name in calls:
        def wrapper(*args, fn=getattr(pkm, name), name=name):
            calls[name] += 1
            return fn(*args)
        monkeypatch.setattr(pkm, name, wrapper)
    return calls


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("memory", ["pkm_layers", "fwpkm_layers"])
def test_tiny_memory_gpt_evaluates_the_same_with_kernels_on_and_off(device, memory, monkeypatch):
    calls = counting(monkeypatch)
    x = torch.randint(64, (2, 13), generator=torch.Generator().manual_seed(0)).to(device)  # FwPKM: writes a chunk
    with torch.no_grad():
        fast, plain = (tiny_gpt(memory, kernels, device).eval()(x, x) for kernels in ("on", "off"))
    assert calls == {"read": 1 if memory == "pkm_layers" else 2, "write_values": 0 if memory == "pkm_layers" else 1}
    for a, b in zip(fast, plain):  # logits and loss
        torch.testing.assert_close(a, b, **FP32)


@pytest.mark.parametrize("device", DEVICES)
def test_iterative_reading_writes_the_same_with_kernels_on_and_off(device):
    """eval_niah's reading passes: one write of the whole context (13 tokens) per pass, in place with the kernel."""
    x = torch.randint(64, (2, 13), generator=torch.Generator().manual_seed(0)).to(device)
    fast, plain = (fwpkm.read_iteratively(tiny_gpt("fwpkm_layers", kernels, device).eval(), x, passes=2).state
                   for kernels in ("on", "off"))
    for name, state in fast.items():
        torch.testing.assert_close(state.values, plain[name].values, **FP32)
        torch.testing.assert_close(state.keys, plain[name].keys, **FP32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("memory", ["pkm_layers", "fwpkm_layers"])
def test_tiny_memory_gpt_trains_the_same_with_kernels_on_and_off(device, memory, monkeypatch):
    calls = counting(monkeypatch)
    x = torch.randint(64, (2, 13), generator=torch.Generator().manual_seed(0)).to(device)
    fast = train_steps(tiny_gpt(memory, "on", device), x, steps=2)
    assert calls["read"] > 0 and calls["write_values"] == 0  # the read's kernel; the write keeps its graph
    plain = train_steps(tiny_gpt(memory, "off", device), x, steps=2)
    assert_trains_the_same(fast, plain)  # FwPKM: W_v, W_q and the gate learn through the writes, so through dV
