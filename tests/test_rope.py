import math

import pytest
import torch

from model import GPT, GPTConfig
from rope import (SCALINGS, apply_rotation, rope_frequencies, rotate, rotation,
                  yarn_attention_factor, yarn_correction_range)

D = 64


def dot_at(q, k, m, n, inv_freq):
    """q at position m · k at position n, for every head: [H]."""
    qr = rotate(q, torch.tensor([float(m)]), inv_freq)
    kr = rotate(k, torch.tensor([float(n)]), inv_freq)
    return (qr * kr).sum(-1).flatten()


@pytest.mark.parametrize("scaling", [None, *SCALINGS])
def test_score_depends_only_on_position_difference(scaling):
    inv_freq, _ = rope_frequencies(D, scaling=scaling, factor=4.0, train_len=256, cur_len=1024)
    q, k = torch.randn(2, 1, 3, 1, D).unbind(0)  # [B=1, H=3, T=1, D]
    base = dot_at(q, k, 10, 3, inv_freq)
    for shift in (1, 57, 900, 12.5):
        torch.testing.assert_close(dot_at(q, k, 10 + shift, 3 + shift, inv_freq), base, rtol=1e-4, atol=1e-4)
    moved = dot_at(q, k, 10, 4, inv_freq)
    assert not torch.allclose(moved, base, atol=1e-3), f"the score must change with m − n: {moved} at 10 − 4, " \
        f"{base} at 10 − 3"


def test_angles_are_position_times_frequency_in_fp32():
    inv_freq, _ = rope_frequencies(D)
    pos = torch.tensor([0.0, 1.0, 100.5, 4096.0])
    angle = pos.double()[:, None] * inv_freq.double()                                # m·θ_i  [T, D/2]
    cos, sin = rotation(pos, inv_freq, attention_factor=1.5)
    assert cos.dtype == sin.dtype == torch.float32, f"cos and sin must be fp32, got {cos.dtype}, {sin.dtype}"
    torch.testing.assert_close(cos, 1.5 * angle.cos().float(), rtol=0, atol=5e-4, msg=lambda m: f"cos: {m}")
    torch.testing.assert_close(sin, 1.5 * angle.sin().float(), rtol=0, atol=5e-4, msg=lambda m: f"sin: {m}")
    per_head = torch.randn(2, 3, 5) * 50                                           # RePo: [B, H, T] positions
    cos, sin = rotation(per_head.bfloat16(), inv_freq)
    assert cos.shape == (2, 3, 5, D // 2), f"cos for [B, H, T] positions must be [B, H, T, D/2], got {cos.shape}"
    assert cos.dtype == torch.float32, f"angles of bf16 positions must be computed in fp32, got {cos.dtype}"


def test_rotation_multiplies_each_pair_by_a_unit_complex_number():
    # pair i = (x_i, x_{i + D/2}) is the complex number x_i + j·x_{i + D/2}; rotating it by the angle a multiplies
    # it by e^{j·a}
    x = torch.randn(2, 3, 7, D)
    angle = torch.rand(7, D // 2, dtype=torch.float64) * 100
    z = torch.complex(*x.double().chunk(2, dim=-1)) * torch.polar(torch.ones_like(angle), angle)
    expected = torch.cat((z.real, z.imag), dim=-1).float()
    got = apply_rotation(x, angle.cos().float(), angle.sin().float())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    got = apply_rotation(x.bfloat16(), angle.cos().float(), angle.sin().float())
    assert got.dtype == torch.bfloat16, f"the rotation must return x's dtype (bfloat16), got {got.dtype}"


def test_rotation_preserves_norms():
    x = torch.randn(2, 3, 50, D)
    inv_freq, _ = rope_frequencies(D)
    y = rotate(x, torch.arange(50), inv_freq)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))


def test_pi_equals_positions_divided_by_factor():
    x = torch.randn(1, 2, 40, D)
    pos = torch.arange(40)
    plain, _ = rope_frequencies(D)
    pi, factor = rope_frequencies(D, scaling="pi", factor=4.0, train_len=256)
    assert factor == 1.0
    torch.testing.assert_close(rotate(x, pos, pi), rotate(x, pos / 4.0, plain))


def test_real_positions_agree_with_integers_and_compose():
    x = torch.randn(1, 2, 6, D)
    inv_freq, _ = rope_frequencies(D)
    ints = torch.arange(100, 106)
    torch.testing.assert_close(rotate(x, ints, inv_freq), rotate(x, ints.double().float(), inv_freq))
    a, b = torch.full((6,), 2.25), torch.full((6,), 1000.5)  # rotating by a then b = rotating by a + b
    torch.testing.assert_close(rotate(rotate(x, a, inv_freq), b, inv_freq), rotate(x, a + b, inv_freq),
                               rtol=1e-4, atol=1e-4)


def test_per_head_positions_broadcast():
    x = torch.randn(2, 3, 5, D)
    inv_freq, _ = rope_frequencies(D)
    pos = torch.randn(2, 3, 5) * 50  # RePo's [B, H, T] real positions
    y = rotate(x, pos, inv_freq)
    torch.testing.assert_close(y[1, 2], rotate(x[1:2, 2:3], pos[1, 2], inv_freq)[0, 0])


@pytest.mark.parametrize("dim,train_len,factor,low,high,mscale", [
    (64, 256, 4, 0, 13, 1.1386),    # the worked numbers in shared/specs/rope.md
    (64, 1024, 8, 5, 18, 1.2079),
    (128, 4096, 16, 20, 46, None),
])
def test_yarn_bands_and_attention_factor(dim, train_len, factor, low, high, mscale):
    assert yarn_correction_range(dim, 10000.0, train_len) == (low, high)
    if mscale is not None:
        assert yarn_attention_factor(factor) == pytest.approx(mscale, abs=1e-4)
    plain, _ = rope_frequencies(dim)
    yarn, attention_factor = rope_frequencies(dim, scaling="yarn", factor=factor, train_len=train_len)
    assert attention_factor == pytest.approx(0.1 * math.log(factor) + 1)
    torch.testing.assert_close(yarn[:low + 1], plain[:low + 1])                 # fast band untouched
    torch.testing.assert_close(yarn[high:], plain[high:] / factor)              # slow band interpolated as PI
    middle = yarn[low + 1:high] / plain[low + 1:high]
    assert ((middle < 1) & (middle > 1 / factor)).all(), \
        f"pairs {low + 1}..{high - 1} must be blended, θ'/θ strictly between {1 / factor} and 1: got {middle}"


def test_ntk_base():
    ntk, _ = rope_frequencies(64, scaling="ntk", factor=4.0)
    base = 10000.0 * 4.0 ** (64 / 62)
    assert base == pytest.approx(41829.4, abs=0.1)
    torch.testing.assert_close(ntk, rope_frequencies(64, base=base)[0])


def test_dynamic_ntk_is_plain_within_training_length():
    plain, _ = rope_frequencies(D)
    within, _ = rope_frequencies(D, scaling="dyn_ntk", factor=1.0, train_len=256, cur_len=256)
    torch.testing.assert_close(within, plain)
    beyond, _ = rope_frequencies(D, scaling="dyn_ntk", factor=1.0, train_len=256, cur_len=1024)
    torch.testing.assert_close(beyond, rope_frequencies(D, scaling="ntk", factor=4.0)[0])  # factor 1: NTK at l/L


@pytest.mark.parametrize("cur_len", [1, 200, 256, 257, 300, 1024, 5000])
def test_dynamic_ntk_from_a_position_tensor_equals_the_int_length(cur_len):
    # RotaryEmbedding passes l = pos[-1] + 1 as a tensor (no host sync); the base must come out the same
    model = GPT(GPTConfig(vocab_size=64, block_size=256, n_layer=1, n_head=1, n_embd=D, rope_scaling="dyn_ntk",
                          rope_factor=2.0))
    module = model.blocks[0].attn.positional
    expected, _ = rope_frequencies(D, scaling="dyn_ntk", factor=2.0, train_len=256, cur_len=cur_len)
    for pos in (torch.arange(cur_len), torch.tensor([cur_len - 1])):  # a whole sequence; one token with a cache
        got, _ = rope_frequencies(D, scaling="dyn_ntk", factor=2.0, train_len=256, cur_len=pos[-1] + 1)
        assert torch.equal(got, expected)
        q = torch.randn(1, 1, len(pos), D)
        # the module takes the CPU fast form (fast_paths/cpu.py): the reference to rounding
        torch.testing.assert_close(module(q, q, None, pos)[0], rotate(q, pos, expected), rtol=1e-5, atol=1e-5)


def test_cached_frequencies_stay_out_of_the_state_dict():
    # θ_i is a non-persistent buffer: checkpoints keep their keys, and those written before it existed load strictly
    config = dict(vocab_size=64, block_size=32, n_layer=1, n_head=2, n_embd=32)
    rope, nope = GPT(GPTConfig(**config)), GPT(GPTConfig(**config, pe="nope"))
    assert rope.state_dict().keys() == nope.state_dict().keys()
    rope.load_state_dict(nope.state_dict())


def test_bad_scaling_names_the_choices():
    with pytest.raises(ValueError, match="'linear'.*pi, ntk, dyn_ntk, yarn"):
        rope_frequencies(D, scaling="linear", factor=2.0, train_len=256)
    with pytest.raises(ValueError, match="factor must be >= 1"):
        rope_frequencies(D, scaling="pi", factor=0.5, train_len=256)


@pytest.mark.parametrize("scaling,hf_type", [("pi", "linear"), ("ntk", "dynamic"), ("yarn", "yarn")])
def test_matches_huggingface(scaling, hf_type):
    pytest.importorskip("transformers")
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    cfg = LlamaConfig(hidden_size=256, num_attention_heads=4, max_position_embeddings=256,
                      rope_scaling={"rope_type": hf_type, "factor": 4.0})
    hf_inv_freq, hf_factor = ROPE_INIT_FUNCTIONS[hf_type](cfg, "cpu", seq_len=1024)
    if scaling == "ntk":  # HF's "dynamic" at seq_len = 4L with factor 4 is dyn_ntk here
        ours, factor = rope_frequencies(D, scaling="dyn_ntk", factor=4.0, train_len=256, cur_len=1024)
    else:
        ours, factor = rope_frequencies(D, scaling=scaling, factor=4.0, train_len=256)
    torch.testing.assert_close(ours, hf_inv_freq.float())
    assert factor == pytest.approx(hf_factor)


@pytest.mark.parametrize("attention_factor", [1.0, 1.3])
@pytest.mark.parametrize("per_head", [False, True])
def test_cpu_fast_form_equals_the_reference_in_values_and_gradients(attention_factor, per_head):
    """fast_paths/cpu.py (RotaryEmbedding's path on the CPU in fp32) against rope.py's rotate(): q and k, and the
    gradient of learned per-head positions (RePo) from the backward written by hand."""
    rotary = pytest.importorskip("fast_paths.cpu", reason="a student copy leaves the fast paths out").rotary
    inv_freq, _ = rope_frequencies(D)
    torch.manual_seed(0)
    qkv = torch.randn(2, 40, 3, 3, D, requires_grad=True)  # q, k as strided views of one projection, as in model.py
    pos = (torch.randn(2, 3, 40) * 50).requires_grad_() if per_head else torch.arange(40) * 3
    grad_q, grad_k = torch.randn(2, 2, 3, 40, D).unbind(0)
    q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)  # [B, H, T, D]
    expected = rotate(q, pos, inv_freq, attention_factor), rotate(k, pos, inv_freq, attention_factor)
    got = rotary(q, k, pos, inv_freq, attention_factor)
    inputs = (qkv, pos) if per_head else (qkv,)
    for name, g, e in (("q", got[0], expected[0]), ("k", got[1], expected[1])):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5, msg=lambda m: f"rotated {name}: {m}")
    got_grads = torch.autograd.grad(got, inputs, (grad_q, grad_k))
    expected_grads = torch.autograd.grad(expected, inputs, (grad_q, grad_k))
    for name, g, e in zip(("q and k", "positions"), got_grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4, msg=lambda m: f"gradient of {name}: {m}")
