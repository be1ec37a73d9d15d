"""The Triton fast paths of fast_paths/ against the plain PyTorch code they replace: outputs and every gradient.

Here (tests/conftest.py sets TRITON_INTERPRET=1) the kernels run under Triton's CPU interpreter, on CPU tensors and,
where there is a GPU, on CUDA tensors too. On a GPU, `TRITON_INTERPRET=0 python -m pytest tests/test_kernels.py`
tests the compiled kernels (CUDA tensors only: compiled kernels cannot read CPU memory).
"""
import os

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed, so the kernels cannot run")

from fast_paths import use_kernels
from fast_paths.position_net import position_network
from fast_paths.rotary import rotary
from model import GPT, GPTConfig
from repo import PositionNetwork
from rope import rope_frequencies, rotate
from tests.test_train import assert_same_course

DEVICES = (["cpu"] if os.environ.get("TRITON_INTERPRET") == "1" else []) + (["cuda"] if torch.cuda.is_available()
                                                                             else [])
FP32 = dict(rtol=1e-5, atol=1e-5)   # the same fp32 math in another order: a few ulps
BF16 = dict(rtol=2e-2, atol=2e-2)   # outputs rounded to bf16 (8 bits of mantissa) from slightly different fp32


def qk_views(B, H, T, D, device, dtype=torch.float32):
    """q and k [B, H, T, D] as the model makes them: non-contiguous views of one projection [B, T, 2, H, D]."""
    qk = torch.randn(B, T, 2, H, D, device=device).to(dtype).requires_grad_()
    return qk, qk.permute(2, 0, 3, 1, 4).unbind(0)


def check_against_plain(pos, inv_freq, attention_factor, shape, device, dtype=torch.float32, tol=FP32):
    """rotary() vs rope.py's rotate() of q and k: outputs, and the gradients of q, k and (if it requires grad) pos
    for a random upstream gradient."""
    leaf, (q, k) = qk_views(*shape, device, dtype)
    fast = rotary(q, k, pos, inv_freq, attention_factor)
    plain = rotate(q, pos, inv_freq, attention_factor), rotate(k, pos, inv_freq, attention_factor)
    upstream = [torch.randn(shape, device=device).to(dtype) for _ in range(2)]
    inputs = (leaf, pos) if pos.requires_grad else (leaf,)
    grads = [torch.autograd.grad(sum((y.float() * g.float()).sum() for y, g in zip(ys, upstream)), inputs)
             for ys in (fast, plain)]
    for a, b in zip(fast, plain):
        assert a.dtype == b.dtype == dtype
        torch.testing.assert_close(a, b, **tol)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,positions", [
    ((2, 3, 5, 48), "per_head"),     # RePo: a learned real position per head; D = 48 is not a power of two
    ((2, 3, 33, 64), "per_head"),    # T = 33: two row blocks, the second mostly masked
    ((1, 3, 1, 64), "per_head"),     # T = 1 (generation with a KV cache)
    ((2, 3, 7, 48), "indices"),      # RoPE: token indices [T] shared by the heads, no gradient
    ((2, 1, 6, 64), "shared_real"),  # real positions [T] that require grad: dL/dz sums over b and h
])
def test_rotary_matches_plain(device, shape, positions):
    B, H, T, D = shape
    inv_freq, _ = rope_frequencies(D)
    pos = {"per_head": lambda: (torch.randn(B, H, T) * 30).requires_grad_(),
           "indices": lambda: torch.arange(100, 100 + T),
           "shared_real": lambda: (torch.rand(T) * 500).requires_grad_()}[positions]()
    check_against_plain(pos.to(device).detach().requires_grad_(pos.requires_grad), inv_freq.to(device), 1.0, shape,
                        device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scaling", [None, "pi", "ntk", "dyn_ntk", "yarn"])
def test_rotary_matches_plain_for_each_scaling(device, scaling):
    D = 64
    inv_freq, attention_factor = rope_frequencies(D, scaling=scaling, factor=4.0, train_len=256, cur_len=1024)
    assert (attention_factor != 1.0) == (scaling == "yarn")  # YaRN's mscale multiplies cos and sin
    pos = (torch.randn(2, 3, 9) * 300).to(device).requires_grad_()
    check_against_plain(pos, inv_freq.to(device), attention_factor, (2, 3, 9, D), device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("positions", ["per_head", "indices"])
def test_rotary_bf16(device, positions):
    B, H, T, D = 2, 3, 7, 48
    inv_freq, attention_factor = rope_frequencies(D, scaling="yarn", factor=4.0, train_len=256)
    pos = ((torch.randn(B, H, T) * 30).requires_grad_() if positions == "per_head" else torch.arange(T))
    check_against_plain(pos.to(device).detach().requires_grad_(pos.requires_grad), inv_freq.to(device),
                        attention_factor, (B, H, T, D), device, torch.bfloat16, BF16)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n_embd,n_head,T", [(96, 3, 33), (160, 5, 40), (32, 2, 1)])  # P = 12, 20, 4; C in slices
def test_position_network_matches_plain(device, dtype, n_embd, n_head, T):
    """fast_paths/position_net.py vs repo.py's PositionNetwork: the positions z [B, H, T] and the gradients of h and of
    the three weights, for a random upstream gradient; in bf16 under autocast the plain code multiplies in bf16, the
    kernel in fp32 from the same bf16 h, so they agree to bf16's rounding of the largest values."""
    torch.manual_seed(0)
    net = PositionNetwork(GPTConfig(n_embd=n_embd, n_head=n_head, kernels="off")).to(device)
    for weight in net.parameters():  # positions of tens of units, as trained RePo layers have
        torch.nn.init.normal_(weight, std=0.3)
    h = torch.randn(2, T, n_embd, device=device).to(dtype).requires_grad_()
    upstream = torch.randn(2, n_head, T, device=device)
    results = []
    for fast in (True, False):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            z = position_network(h, net.gate.weight, net.content.weight, net.to_position.weight) if fast else net(h)
        results.append((z, *torch.autograd.grad((z * upstream).sum(), (h, *net.parameters()))))
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for name, a, b in zip(("z", "dh", "dW_g", "dW_c", "dW_z"), *results):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol * b.abs().max().item(), msg=name)


def test_switch():
    x = torch.zeros(1)
    assert use_kernels("on", x) and not use_kernels("off", x) and not use_kernels("auto", x)  # auto: CUDA only
    with pytest.raises(ValueError, match="valid choices: auto, on, off"):
        GPTConfig(kernels="fast")


def train_steps(model, x, steps):
    """Losses of a few AdamW steps of model on x ([B, T] tokens, also the targets), and the gradients of the first."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses, grads = [], None
    for _ in range(steps):
        loss = model(x, x)[1]
        loss.backward()
        grads = grads or {name: p.grad.clone() for name, p in model.named_parameters()}
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses, grads


def assert_trains_the_same(fast, plain):
    """(losses, first gradients) of train_steps with a fast path and with the plain code: the same training, up to
    float rounding. The first gradients carry the test: each tensor is compared at 1e-5 of its largest element,
    where fp32 sums in another order round to ~1e-7 of it (measured: at most 1e-7 here, at 1 and 2 threads and with
    ATen's AVX-512, AVX2 and plain kernels) and a wrong kernel gradient is off by much more (dL/dz scaled by 0.9
    fails). The losses only show that training takes the same course: AdamW's first step does not see a gradient's
    scale, so they cannot tell a gradient wrong by a factor."""
    (fast_losses, fast_grads), (plain_losses, plain_grads) = fast, plain
    for name, g in fast_grads.items():
        scale = plain_grads[name].abs().max().item()
        torch.testing.assert_close(g, plain_grads[name], rtol=1e-5, atol=1e-5 * scale,
                                   msg=lambda m: f"first-step gradient of {name}: {m}")
    assert_same_course(fast_losses, plain_losses, "loss")


def tiny_repo_gpt(kernels, device, nodes):
    """A tiny RePo GPT whose rotations record the autograd nodes they make into `nodes`, and whose plain position
    networks record that they ran ("plain f_φ")."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=3, n_head=2, n_embd=32, pe="repo",
                          kernels=kernels)).to(device)
    for block in model.blocks:
        with torch.no_grad():  # positions of a few units: f_φ starts near zero, where RePo is NoPE
            block.attn.positional.position_net.to_position.weight.mul_(1000)
        block.attn.positional.register_forward_hook(lambda m, args, out: nodes.add(type(out[0].grad_fn).__name__))
        if hasattr(block.attn.positional, "position_net"):
            block.attn.positional.position_net.gate.register_forward_hook(lambda *_: nodes.add("plain f_φ"))
    return model


@pytest.mark.parametrize("device", DEVICES)
def test_tiny_repo_gpt_trains_the_same_with_kernels_on_and_off(device):
    x = torch.randint(64, (2, 13), generator=torch.Generator().manual_seed(0)).to(device)  # T = 13
    fast_nodes, plain_nodes = set(), set()
    fast = train_steps(tiny_repo_gpt("on", device, fast_nodes), x, steps=3)
    plain = train_steps(tiny_repo_gpt("off", device, plain_nodes), x, steps=3)
    assert fast_nodes == {"RotaryBackward"} and "RotaryBackward" not in plain_nodes  # the switch took effect,
    assert "plain f_φ" in plain_nodes  # for the position networks too
    assert_trains_the_same(fast, plain)  # the position networks' gradients too: they learn through the kernel
