import pytest
import torch
import torch.nn.functional as F

import model as model_module
from model import GPT, GPTConfig, KVCache

TINY = dict(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32)


def tiny_model(**overrides):
    return GPT(GPTConfig(**{**TINY, **overrides})).eval()


@pytest.mark.parametrize("pe", ["rope", "nope"])
def test_causal(pe):
    model = tiny_model(pe=pe)
    x = torch.randint(64, (2, 40))
    y = x.clone()
    y[:, 25] = (y[:, 25] + 1) % 64
    with torch.no_grad():
        a, b = model(x)[0], model(y)[0]
    torch.testing.assert_close(a[:, :25], b[:, :25])
    assert not torch.allclose(a[:, 25:], b[:, 25:])


@pytest.mark.parametrize("pe,scaling", [("rope", None), ("rope", "yarn"), ("rope", "dyn_ntk"), ("nope", None)])
def test_forward_beyond_training_length(pe, scaling):
    model = tiny_model(pe=pe, rope_scaling=scaling, rope_factor=4.0 if scaling else 1.0)
    for length in (32, 128):  # 1x and 4x block_size
        x = torch.randint(64, (2, length))
        logits, loss = model(x, x)
        assert logits.shape == (2, length, 64) and torch.isfinite(logits).all() and torch.isfinite(loss)


@pytest.mark.parametrize("pe", ["rope", "nope", "drope", "rope_nope"])
def test_kv_cache_equals_full_forward(pe):
    check_kv_cache(tiny_model(pe=pe))


def assert_greedy(logits, tokens):
    """tokens [B, n] are the argmax of logits [B, n, V] computed another way (without a KV cache): each token's logit
    is the row's largest to within 1e-4, the tolerance of cached vs full logits in check_kv_cache. Not
    `argmax == tokens`: where two logits of an untrained model lie closer than the rounding of the two computations,
    either is a correct greedy choice, and which one rounds higher depends on the CPU."""
    chosen = logits.gather(-1, tokens[..., None])[..., 0]
    assert (chosen >= logits.max(-1).values - 1e-4).all(), (logits.argmax(-1), tokens)


def check_kv_cache(model):
    prompt = torch.randint(64, (2, 45))  # longer than block_size: generation must not crop it
    out = model.generate(prompt, 20, temperature=0)
    assert out.shape == (2, 65) and torch.equal(out[:, :45], prompt)
    with torch.no_grad():
        full = model(out)[0]
        # greedy tokens are the argmax of the full forward at every generated step
        assert_greedy(full[:, 44:64], out[:, 45:])
        # and cached logits, fed in uneven chunks, equal the full forward's
        cache = KVCache(model.config.n_layer)
        chunks = [model(out[:, a:b], cache=cache)[0] for a, b in ((0, 30), (30, 31), (31, 50), (50, 65))]
    torch.testing.assert_close(torch.cat(chunks, 1), full, rtol=1e-4, atol=1e-4)


def test_sampling_is_reproducible_and_respects_top_k():
    model = tiny_model()
    prompt = torch.randint(64, (1, 5))
    a = model.generate(prompt, 10, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(1))
    b = model.generate(prompt, 10, temperature=0)
    assert torch.equal(a, b)  # top-1 sampling is greedy
    c = model.generate(prompt, 10, temperature=2.0, generator=torch.Generator().manual_seed(3))
    d = model.generate(prompt, 10, temperature=2.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(c, d)


def test_sliding_window():
    model = tiny_model()
    x = torch.randint(64, (1, 40))
    y = x.clone()
    y[:, :10] = (y[:, :10] + 7) % 64
    with torch.no_grad():
        a, b = model(x, window=8)[0], model(y, window=8)[0]
    # 2 layers of window 8 see at most 2 * 7 tokens back: from position 10 + 14 on nothing changed
    torch.testing.assert_close(a[:, 24:], b[:, 24:])
    assert not torch.allclose(a[:, 10:17], b[:, 10:17])
    with torch.no_grad():
        torch.testing.assert_close(model(x, window=40)[0], model(x)[0])  # a window as long as the input is full


def test_unknown_pe_names_choices():
    with pytest.raises(ValueError, match="'alibi'.*valid choices: abs, drope, nope, repo, rope, rope_nope"):
        tiny_model(pe="alibi")


def test_positional_plugin_sees_hidden_state_and_positions(monkeypatch):
    seen = {}

    class Recorder(torch.nn.Module):
        def forward(self, q, k, h, pos):
            seen.setdefault("calls", []).append((q.shape, h.shape, pos.tolist()))
            return q, k

    monkeypatch.setitem(model_module.POSITIONAL, "test_recorder", lambda config, layer_idx: Recorder())
    model = tiny_model(pe="test_recorder")
    cache = KVCache(TINY["n_layer"])
    with torch.no_grad():
        model(torch.randint(64, (1, 3)), cache=cache)
        model(torch.randint(64, (1, 2)), cache=cache)
    q_shape, h_shape, pos = seen["calls"][-1]
    assert q_shape == (1, 2, 2, 16) and h_shape == (1, 2, 32) and pos == [3, 4]
    assert len(seen["calls"]) == 4  # one module per layer, called once per forward


def test_tied_embeddings_and_size():
    model = tiny_model()
    assert model.lm_head.weight is model.tok_emb.weight
    assert model.num_params() == sum(p.numel() for p in model.parameters())


def test_flex_window_attention_equals_the_dense_mask():
    """The CUDA path of sliding-window attention (FlexAttention, block mask) against the plain dense mask; here with
    the eager FlexAttention, which runs on the CPU."""
    import warnings

    from torch.nn.attention.flex_attention import flex_attention

    from model import attention_mask, window_attention
    q, k, v = (torch.randn(2, 3, 200, 16) for _ in range(3))  # T not a multiple of FlexAttention's 128-token blocks
    for window in (1, 8, 130, 400):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the eager FlexAttention warns that it is slow
            flex = window_attention(q, k, v, window, attend=flex_attention)
        dense = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask(200, 0, window, q.device))
        torch.testing.assert_close(flex, dense, atol=1e-5, rtol=1e-5)


def test_learned_absolute_positions():
    """'abs': one table row per position, added before the first block; beyond block_size the last row repeats."""
    config = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32, pe="abs")
    model = GPT(config).eval()
    assert model.num_params() - GPT(GPTConfig(**{**config.to_dict(), "pe": "nope"})).num_params() == 16 * 32
    x = torch.randint(64, (1, 16))
    with torch.no_grad():
        before = model(x)[0]
        model.blocks[0].sublayers[0].table.weight[3] += 1.0  # position 3 only: earlier outputs cannot change
        after = model(x)[0]
        assert torch.equal(before[:, :3], after[:, :3]) and not torch.allclose(before[:, 3:], after[:, 3:])
        assert model(torch.randint(64, (1, 40)))[0].shape == (1, 40, 64)  # runs beyond block_size


def test_generation_with_a_window_equals_the_windowed_forward():
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)).eval()
    prompt = torch.randint(64, (2, 20))
    with torch.no_grad():
        out = model.generate(prompt, 6, temperature=0, window=5)
        # greedy, each token the argmax of a full windowed forward of the tokens before it, without a cache
        full = torch.cat([model(out[:, :n], window=5)[0][:, -1:] for n in range(20, 26)], dim=1)
    assert out.shape == (2, 26) and torch.equal(out[:, :20], prompt)
    assert_greedy(full, out[:, 20:])


def test_loss_weights():
    """weights [B, T] make the loss sum(w · loss) / sum(w): all ones is the plain mean, a weight of 0 drops a target
    like -1 does, a weight of 3 counts a target three times."""
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16))
    idx, targets = torch.randint(64, (2, 16)), torch.randint(64, (2, 16))
    plain = model(idx, targets)[1]
    close = dict(rtol=1e-5, atol=1e-6)  # sums of 32 terms in another order: a few ulps on another CPU
    torch.testing.assert_close(model(idx, targets, weights=torch.ones(2, 16))[1], plain, **close)
    dropped = targets.clone()
    dropped[:, :5] = -1
    weights = torch.ones(2, 16)
    weights[:, :5] = 0
    torch.testing.assert_close(model(idx, targets, weights=weights)[1], model(idx, dropped)[1], **close)
    tripled = torch.cat((targets, targets[:, :1], targets[:, :1]), 1)  # the first targets twice more
    logits = model(idx)[0]
    expected = F.cross_entropy(torch.cat((logits, logits[:, :1], logits[:, :1]), 1).flatten(0, 1), tripled.flatten())
    weights = torch.ones(2, 16)
    weights[:, 0] = 3
    torch.testing.assert_close(model(idx, targets, weights=weights)[1], expected, **close)
    ignored_first = model(idx, dropped, weights=weights)[1]  # the weight 3 falls on an ignored target: no effect
    torch.testing.assert_close(ignored_first, model(idx, dropped)[1], **close)


def test_random_identities_share_one_vector_per_key_and_row():
    """train.py --anonymous_names: each (row, name slot) gets one random identity at the batch's mean name embedding
    plus a direction of the names' mean spread; other tokens keep their embeddings; seeded draws repeat (resume)."""
    from model import random_identities
    torch.manual_seed(0)
    x = torch.randn(3, 10, 16)
    slots = torch.full((3, 10), -1)
    slots[0, [1, 6]], slots[0, [3, 8]], slots[1, [2, 9]] = 0, 1, 0  # row 2 has no keys
    torch.manual_seed(1)
    out = random_identities(x, slots)
    keys = x[slots >= 0]
    mean, spread = keys.mean(0), (keys - keys.mean(0)).norm(dim=1).mean()
    assert torch.equal(out[slots < 0], x[slots < 0])
    assert torch.equal(out[0, 1], out[0, 6]) and torch.equal(out[0, 3], out[0, 8]) and torch.equal(out[1, 2], out[1, 9])
    assert not torch.allclose(out[0, 1], out[0, 3]) and not torch.allclose(out[0, 1], out[1, 2])
    assert not any(torch.allclose(out[0, 1], k) for k in keys)  # not a real key's embedding
    assert torch.allclose((out[slots >= 0] - mean).norm(dim=1), spread.expand(6), rtol=1e-4)
    torch.manual_seed(1)
    assert torch.equal(random_identities(x, slots), out)
    model = GPT(GPTConfig(**TINY)).eval()
    idx = torch.randint(0, 64, (3, 10))
    assert torch.equal(model(idx, anonymous=torch.full((3, 10), -1))[0], model(idx)[0])
    torch.manual_seed(1)
    logits = model(idx, anonymous=slots)[0]
    assert torch.equal(logits[2], model(idx)[0][2]) and not torch.allclose(logits[0], model(idx)[0][0])


def test_cpu_rmsnorm_equals_torchs_in_values_and_gradients():
    """model.RMSNorm's CPU form (fast_paths/cpu.py: LayerNorm's fused backward plus r·mean(g·w)) against nn.RMSNorm."""
    torch.manual_seed(0)
    fast, plain = model_module.RMSNorm(48, "auto"), torch.nn.RMSNorm(48)
    with torch.no_grad():
        plain.weight.normal_()
        fast.weight.copy_(plain.weight)
    x = (torch.randn(3, 7, 48) * 5 + 1).requires_grad_()  # a mean far from 0, where LayerNorm's gradient differs
    grad = torch.randn(3, 7, 48)
    got, expected = fast(x), plain(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    got_grads = torch.autograd.grad(got, (x, fast.weight), grad)
    expected_grads = torch.autograd.grad(expected, (x, plain.weight), grad)
    for name, g, e in zip(("x", "weight"), got_grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5, msg=lambda m: f"gradient of {name}: {m}")
    assert set(fast.state_dict()) == set(plain.state_dict())  # checkpoints keep their keys
