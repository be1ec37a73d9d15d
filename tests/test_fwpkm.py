
import pytest
import torch
import torch.nn.functional as F

import eval_niah
import fwpkm
from model import GPT, GPTConfig
from tests.test_model import check_kv_cache
from tests.test_train import load, run

MEMORY = dict(memory_n_sub=8, memory_topk=4, memory_key_dim=64, memory_value_dim=16, memory_chunk=8)
TINY = dict(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32, **MEMORY)


def memory_model(**overrides):
    return GPT(GPTConfig(**{**TINY, "fwpkm_layers": (1,), **overrides}))


def fw_layer(model):
    return next(m for m in model.modules() if isinstance(m, fwpkm.FastWeightProductKeyMemory))


@pytest.mark.parametrize("scores", [fwpkm.idw_scores, fwpkm.dot_scores])
def test_product_topk_equals_brute_force(scores):
    n, k = 16, 5
    q1, q2 = torch.randn(3, 7, 6), torch.randn(3, 7, 6)
    keys = torch.randn(3, 2, n, 6)
    s1, s2 = scores(q1, keys[:, 0]), scores(q2, keys[:, 1])
    top, slots = fwpkm.product_topk(s1, s2, k)
    brute = (s1[..., :, None] + s2[..., None, :]).flatten(-2)  # all n² slots, slot i·n + j
    brute_top, brute_slots = brute.topk(k, dim=-1)
    torch.testing.assert_close(top, brute_top)
    torch.testing.assert_close(slots, brute_slots, msg=lambda m: f"slot i·n + j of each of the top-k: {m}")


def test_idw_scores_are_minus_log_distance():
    q, keys = torch.randn(1, 4, 6), torch.randn(1, 9, 6)
    expected = -torch.log(1e-3 + torch.cdist(q, keys) ** 2)
    torch.testing.assert_close(fwpkm.idw_scores(q, keys), expected, rtol=1e-4, atol=1e-4)


def memorisation_loss(r):
    return (0.5 * r["g"][:, :-1] * (r["v"][:, 1:] - r["v_hat"][:, :-1]).pow(2)).sum().item()


def test_one_write_lowers_the_memorisation_loss_of_its_chunk():
    layer = fw_layer(memory_model())
    h = torch.randn(2, 8, 32)
    state = layer.fresh_state(2)
    with torch.no_grad():
        before = layer.read(layer.project(h, state.before), state)
        layer.write(before, state)
        after = layer.read(layer.project(h, state.before), state)
    assert memorisation_loss(after) < 0.9 * memorisation_loss(before), \
        f"L_mem {memorisation_loss(before):.4f} before the write, {memorisation_loss(after):.4f} after"


def test_a_single_token_with_gate_one_is_rewritten_exactly(monkeypatch):
    layer = fw_layer(memory_model())
    with torch.no_grad():
        layer.initial_keys.zero_()  # every slot scores the same: the token's k reads are spread evenly, w = 1/k
        layer.initial_values.normal_()
    state = layer.fresh_state(1)
    with torch.no_grad():
        # one pair: token 0 reads, token 1's value is its target
        r = layer.read(layer.project(torch.randn(1, 2, 32), state.before), state)
        r["g"] = torch.ones_like(r["g"])
        torch.testing.assert_close(r["w"], torch.full_like(r["w"], 1 / layer.topk))
        layer.write(r, state)
    slots, w = r["slots"][0, 0], r["w"][0, 0]
    read_back = (w[:, None] * state.values[0, slots]).sum(0)
    torch.testing.assert_close(read_back, r["v"][0, 1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("span", [1, 4])  # the query of one token (the paper's), of the last 4 tokens
def test_outputs_do_not_depend_on_later_tokens(span):
    model = memory_model(memory_query_span=span).eval()
    x = torch.randint(64, (2, 40))
    with torch.no_grad():
        base = model(x)[0]
        for p in (7, 8, 12, 16, 24, 33):  # inside chunks and on chunk boundaries (chunk 8)
            y = x.clone()
            y[:, p:] = (y[:, p:] + 1) % 64
            out = model(y)[0]
            torch.testing.assert_close(out[:, :p], base[:, :p])
            assert not torch.allclose(out[:, p:], base[:, p:])


def test_lm_gradients_reach_value_projection_and_gate_through_the_writes():
    layer = fw_layer(memory_model())
    state = layer.fresh_state(2)
    h = torch.randn(2, 16, 32)
    layer.write(layer.read(layer.project(h[:, :8], state.before), state), state)
    # chunk 1's reads: W_v and the gate act on them only by the write
    later = layer.read(layer.project(h[:, 8:], state.before), state)["v_hat"]
    grads = torch.autograd.grad(later.pow(2).sum(), [layer.value.weight, layer.gate.weight, layer.query.weight])
    for name, g in zip(("W_v", "the gate", "W_q"), grads):
        assert g.abs().sum() > 0, f"no gradient reaches {name} through the write"
    model = memory_model()
    x = torch.randint(64, (2, 24))
    model(x, x)[1].backward()
    assert layer.value.weight.grad is None and fw_layer(model).value.weight.grad.abs().sum() > 0


def usage_entropy(layer, q, keys):
    h = 0.0
    for m, qm in enumerate(q.chunk(2, dim=-1)):
        s = fwpkm.idw_scores(qm, keys[:, m])
        top, idx = s.topk(layer.topk, dim=-1)
        p = torch.zeros_like(s).scatter(-1, idx, F.softmax(top, dim=-1)).mean((0, 1))
        h += -(p * p.clamp_min(1e-12).log()).sum().item()
    return h


def test_one_addressing_step_raises_the_usage_entropy():
    layer = fw_layer(memory_model())
    state = layer.fresh_state(1)
    with torch.no_grad():
        # a 32-token chunk (the default); at 8 tokens lr 1 overshoots
        r = layer.read(layer.project(torch.randn(1, 32, 32), state.before), state)
        before = usage_entropy(layer, r["q"], state.keys)
        layer.write(r, state)
        after = usage_entropy(layer, r["q"], state.keys)
    assert after > before


@pytest.mark.parametrize("groups", [3, 1])  # a memory per sequence; one memory shared by the batch (persistent)
def test_addressing_gradient_equals_autograd(groups):
    q = torch.randn(3, 16, 8, dtype=torch.float64)
    keys = torch.randn(groups, 2, 6, 4, dtype=torch.float64, requires_grad=True)
    group = torch.arange(3) if groups > 1 else torch.zeros(3, dtype=torch.long)
    neg_entropy = 0.0
    for m, q_m in enumerate(q.chunk(2, dim=-1)):  # L_addr = −H(p̄¹) − H(p̄²), differentiated by autograd
        s = fwpkm.idw_scores(q_m, keys[group, m])
        top, idx = s.topk(3, dim=-1)
        usage = torch.zeros_like(s).scatter(-1, idx, F.softmax(top, dim=-1))
        p = usage.mean(1) if groups > 1 else usage.mean((0, 1))[None]
        neg_entropy = neg_entropy + (p * p.clamp_min(1e-12).log()).sum()
    expected, = torch.autograd.grad(neg_entropy, keys)
    half_scores = fwpkm.idw_scores(fwpkm.halves(q), keys.detach()[group])  # [B, 2, T, n], as the read makes them
    got = fwpkm.addressing_gradient(q, keys.detach(), group, half_scores, 3)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_each_sequence_starts_from_the_initial_memory():
    model = memory_model().eval()
    layer = fw_layer(model)
    x = torch.randint(64, (2, 40))
    with torch.no_grad():
        first, second = model(x)[0], model(x)[0]  # nothing carried over from the first call
        assert torch.equal(first, second)
        state = layer.fresh_state(2)
        assert torch.equal(state.values[0], layer.initial_values) and torch.equal(state.keys[1], layer.initial_keys)


def test_persistent_memory_carries_over_in_training_only():
    model = memory_model(memory_lifetime="persistent")
    layer = fw_layer(model)
    x = torch.randint(64, (2, 40))
    initial = layer.initial_values.clone()
    model(x, x)
    assert not torch.equal(layer.initial_values, initial)  # carried into the next step
    carried = layer.initial_values.clone()
    with torch.no_grad():
        model.eval()(x)
    assert torch.equal(layer.initial_values, carried)  # evaluation does not write back
    with pytest.raises(ValueError, match="'forever'; valid choices: sequence, persistent"):
        memory_model(memory_lifetime="forever")


@pytest.mark.parametrize("span", [1, 4])  # span 4: the query's earlier tokens carry over chunk boundaries and calls
def test_kv_cache_generation_equals_full_forward(span):
    check_kv_cache(memory_model(pkm_layers=(0,), memory_query_span=span).eval())


def test_projections_run_once_per_call_and_the_read_once_per_chunk(monkeypatch):
    """The query, target and gate do not depend on the memory, so a forward computes them for all its tokens in one
    pass; only the read and the write run per chunk (40 tokens, chunk 8: 5 chunks)."""
    model = memory_model().train()
    layer, calls = fw_layer(model), {"query": 0, "read": 0}
    layer.query.register_forward_hook(lambda *_: calls.__setitem__("query", calls["query"] + 1))
    read = layer.read
    monkeypatch.setattr(layer, "read", lambda *a: calls.__setitem__("read", calls["read"] + 1) or read(*a))
    model(torch.randint(64, (2, 40)))
    assert calls == {"query": 1, "read": 5}


def test_iterative_reading_changes_only_the_fast_weights():
    model = memory_model().eval()
    context = torch.randint(64, (2, 20))
    cache = fwpkm.read_iteratively(model, context, 2)
    state = cache.state[fw_layer(model).name]
    assert cache.length() == 0 and state.pending is None and state.chunk == 8
    assert not torch.equal(state.values[0], fw_layer(model).initial_values)
    with torch.no_grad():
        assert not torch.allclose(model(context, cache=cache.copy())[0], model(context)[0])


def test_an_answering_pass_that_writes_at_its_end_reads_the_memory_of_the_passes_before():
    """eval_niah.py --answer_writes end (the FwPKM paper's evaluation): no write inside the answering pass, so with
    one pass the model reads its initial memory throughout, as the same weights with a write chunk longer than the
    input do; writing every chunk (ours) changes what later tokens read."""
    model = memory_model().eval()
    never_writes = GPT(GPTConfig(**{**TINY, "fwpkm_layers": (1,), "memory_chunk": 1000})).eval()
    never_writes.load_state_dict(model.state_dict())
    tokens = torch.randint(64, (2, 30))
    samples = [{"question_at": 20}] * 2
    with torch.no_grad():
        expected = never_writes(tokens)[0]
        at_end = eval_niah.start_cache(model, tokens, samples, 1, writes="end")
        torch.testing.assert_close(model(tokens, cache=at_end)[0], expected)
        assert eval_niah.start_cache(model, tokens, samples, 1, writes="chunks") is None
        assert not torch.allclose(model(tokens)[0][:, 16:], expected[:, 16:])  # two chunks of 8 written by then
        twice = eval_niah.start_cache(model, tokens, samples, 2, writes="end")  # one read of the 20-token haystack
        state = twice.state[fw_layer(model).name]
        assert state.chunk > tokens.shape[1] and not torch.equal(state.values[0], fw_layer(model).initial_values)


@pytest.mark.parametrize("memory", ["pkm_layers", "fwpkm_layers"])
def test_a_memory_in_place_of_the_mlp(memory):
    """memory_replaces_mlp (Lample et al.'s PKM, the FwPKM code): the memory's layer has no MLP, the others keep
    theirs; the model trains and generates with a cache as it runs whole."""
    beside = GPT(GPTConfig(**{**TINY, memory: (1,)}))
    model = GPT(GPTConfig(**{**TINY, memory: (1,), "memory_replaces_mlp": True}))
    mlp = sum(p.numel() for p in beside.blocks[1].mlp.parameters()) + beside.blocks[1].mlp_norm.weight.numel()
    assert model.num_params() == beside.num_params() - mlp
    assert model.blocks[1].mlp is None and model.blocks[1].ffn_memory is not None and not model.blocks[1].sublayers
    assert model.blocks[0].mlp is not None and model.blocks[0].ffn_memory is None
    x = torch.randint(64, (2, 20))
    _, loss = model(x, x)
    loss.backward()
    assert torch.isfinite(loss) and model.blocks[1].ffn_memory.out_proj.weight.grad is not None
    check_kv_cache(model.eval())
    with pytest.raises(ValueError, match="memory_replaces_mlp=True .* give pkm_layers or fwpkm_layers"):
        GPTConfig(**{**TINY, "memory_replaces_mlp": True})


def test_bad_memory_layers_name_the_valid_ones():
    with pytest.raises(ValueError, match=r"layers \[5\] do not exist; valid: 0..1"):
        memory_model(fwpkm_layers="1,5")
    with pytest.raises(ValueError, match="both pkm_layers and fwpkm_layers"):
        memory_model(pkm_layers=(1,))


def test_training_and_iterative_niah_from_the_command_line(tmp_path, tiny_data, capsys):
    memory = ["--memory_n_sub", "8", "--memory_topk", "4", "--memory_key_dim", "64", "--memory_value_dim", "16",
              "--memory_chunk", "8"]
    run(tmp_path, tiny_data, *memory, "--fwpkm_layers", "1", "--swa_prob", "0.9", "--max_iters", "8")
    out = capsys.readouterr().out
    assert "L1: gate" in out and "coverage" in out and "collisions" in out
    ckpt = load(tmp_path)
    assert ckpt["model_config"]["fwpkm_layers"] == (1,) and "blocks.1.sublayers.0.initial_values" in ckpt["model"]
    results = eval_niah.main(["--ckpt", str(tmp_path / "run" / "ckpt.pt"), "--lengths", "4", "--depths", "1",
                              "--samples", "2", "--iters", "1,2", "--answer_writes", "chunks,end", "--wordings",
                              "heldout", "--out_dir", str(tmp_path / "niah")])
    assert [r["label"] for r in results] == ["run", "run+writes_at_end", "run+2reads", "run+2reads+writes_at_end"]
    assert [(r["iters"], r["answer_writes"]) for r in results] == [(1, "chunks"), (1, "end"), (2, "chunks"), (2, "end")]
    run(tmp_path, tiny_data, *memory, "--pkm_layers", "0", "--max_iters", "4", out="pkm")
    assert "L0: coverage" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="do not exist"):
        run(tmp_path, tiny_data, "--fwpkm_layers", "7", out="bad")
