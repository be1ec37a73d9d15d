"""The hidden tests of the course assignment (assignment.py): one more check per part, at other sizes and inputs than
the visible tests. `python assignment.py make` leaves this folder out of the student copy; `grade` runs it."""
import math

import pytest
import torch
import torch.nn.functional as F

import drope
import fwpkm
import repo
from model import GPT, GPTConfig
from rope import apply_rotation, rope_frequencies, rotation, yarn_correction_range


def test_angles_at_other_sizes_and_dtypes():
    inv_freq, _ = rope_frequencies(16, base=500.0)
    pos = torch.tensor([3, 70, 1023], dtype=torch.int32)
    cos, sin = rotation(pos, inv_freq, attention_factor=0.8)
    angle = pos.double()[:, None] * inv_freq.double()
    assert cos.shape == sin.shape == (3, 8) and cos.dtype == torch.float32
    torch.testing.assert_close(cos, 0.8 * angle.cos().float(), rtol=0, atol=5e-4)
    torch.testing.assert_close(sin, 0.8 * angle.sin().float(), rtol=0, atol=5e-4)
    half = torch.tensor([[[0.5, 2000.25]]], dtype=torch.float16)  # [B=1, H=1, T=2] per-head positions, fp16
    cos, sin = rotation(half, inv_freq)
    assert cos.shape == (1, 1, 2, 8) and cos.dtype == torch.float32
    torch.testing.assert_close(cos.square() + sin.square(), torch.ones_like(cos), rtol=0, atol=1e-5)


def test_rotation_is_a_two_by_two_rotation_of_each_pair():
    torch.manual_seed(1)
    x = torch.randn(1, 2, 4, 12)
    angle = torch.rand(4, 6) * 7
    got = apply_rotation(x, angle.cos(), angle.sin())
    x1, x2 = x[..., :6], x[..., 6:]
    torch.testing.assert_close(got[..., :6], x1 * angle.cos() - x2 * angle.sin(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[..., 6:], x1 * angle.sin() + x2 * angle.cos(), rtol=1e-5, atol=1e-5)
    x = x.requires_grad_()
    apply_rotation(x, angle.cos(), angle.sin()).square().sum().backward()
    torch.testing.assert_close(x.grad, 2 * x.detach(), rtol=1e-4, atol=1e-4)  # a rotation keeps |x|², so d|y|²/dx = 2x


def test_yarn_at_another_length_and_factor():
    dim, train_len, factor = 32, 512, 8.0
    low, high = yarn_correction_range(dim, 10000.0, train_len)
    plain, _ = rope_frequencies(dim)
    yarn, attention_factor = rope_frequencies(dim, scaling="yarn", factor=factor, train_len=train_len)
    assert attention_factor == pytest.approx(0.1 * math.log(8.0) + 1)
    torch.testing.assert_close(yarn[:low + 1], plain[:low + 1])
    torch.testing.assert_close(yarn[high:], plain[high:] / factor)
    ratio = yarn / plain
    assert (ratio[1:] <= ratio[:-1] + 1e-7).all(), f"θ'/θ must fall from 1 to 1/s along the pairs: {ratio}"


def test_beta_at_four_times_the_training_length():
    module = drope.DroppedPositionalEncoding(GPTConfig(vocab_size=32, block_size=8, n_layer=1, n_head=1, n_embd=8,
                                                       pe="drope", logit_scale_c=0.25))
    q, k = torch.randn(1, 1, 3, 8).bfloat16(), torch.randn(1, 1, 3, 8)
    q_out, k_out = module(q, k, None, torch.arange(29, 32))  # length 32 = 4 L
    assert q_out.dtype == torch.bfloat16
    torch.testing.assert_close(q_out.float(), (q.float() * (1 + 0.25 * math.log(4))).bfloat16().float())
    assert torch.equal(k_out, k)


def test_position_network_at_another_width():
    net = repo.PositionNetwork(GPTConfig(vocab_size=32, block_size=8, n_layer=3, n_head=4, n_embd=64, kernels="off"))
    h = torch.randn(3, 7, 64, requires_grad=True)
    z = net(h)
    r = F.silu(h @ net.gate.weight.T) * (h @ net.content.weight.T)
    torch.testing.assert_close(z, (r @ net.to_position.weight.T).transpose(1, 2))
    assert z.shape == (3, 4, 7)
    z.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_product_topk_at_other_sizes():
    torch.manual_seed(2)
    for n, k in ((4, 1), (9, 9), (32, 7)):
        s1, s2 = torch.randn(5, n), torch.randn(5, n)
        top, slots = fwpkm.product_topk(s1, s2, k)
        brute_top, brute_slots = (s1[:, :, None] + s2[:, None, :]).flatten(-2).topk(k, dim=-1)
        torch.testing.assert_close(top, brute_top)
        assert torch.equal(slots, brute_slots), f"n={n}, k={k}: slots {slots} against {brute_slots}"


def test_a_write_with_gate_zero_changes_nothing():
    config = dict(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32, memory_n_sub=8, memory_topk=4,
                  memory_key_dim=64, memory_value_dim=16, memory_chunk=8, fwpkm_layers=(1,))
    layer = next(m for m in GPT(GPTConfig(**config)).modules() if isinstance(m, fwpkm.FastWeightProductKeyMemory))
    state = layer.fresh_state(2)
    with torch.no_grad():
        r = layer.read(layer.project(torch.randn(2, 6, 32), state.before), state)
        before = state.values.clone()
        r["g"] = torch.zeros_like(r["g"])
        layer.write(r, state)
        assert torch.equal(state.values, before), "with every gate at 0 the write's step is 0"
        r["g"] = torch.ones_like(r["g"])
        layer.write(r, state)
        changed = (state.values != before).any(-1).sum().item()
        n_slots = state.values.shape[1]
        read_rows = (r["group"][:, None, None] * n_slots + r["slots"][:, :-1]).unique().numel()  # of every memory
        assert 0 < changed <= read_rows, f"only rows read by tokens 0..T-2 may change: {changed} rows of {read_rows}"
