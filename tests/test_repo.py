import argparse
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import eval_niah
import repo
import repo_positions
from model import GPT, GPTConfig
from rope import RotaryEmbedding
from tests.test_model import check_kv_cache
from tests.test_train import ROOT, run

TINY = dict(vocab_size=64, block_size=32, n_layer=3, n_head=2, n_embd=32, kernels="off")  # the reference code


def repo_model(**overrides):
    """A RePo model whose positions spread over several units (f_φ's weights scaled up from the near-zero init)
    and whose attention is far from uniform (q, k scaled up), so that tests see positions act."""
    model = GPT(GPTConfig(**{**TINY, "pe": "repo", **overrides})).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.mul_(5)
        for module in model.modules():
            if isinstance(module, repo.PositionNetwork):
                for linear, scale in ((module.gate, 10), (module.content, 10), (module.to_position, 100)):
                    linear.weight.mul_(scale)
    return model


def test_layer_split_follows_the_paper():
    assert repo.first_repo_layer(16) == 5  # OLMo-2 1B: RePo in 0-based layers 5..15
    assert repo.first_repo_layer(4) == 1 and repo.first_repo_layer(3) == 0
    kinds = [type(b.attn.positional) for b in repo_model().blocks]
    assert kinds == [repo.RePo, repo.RePo, repo.RePo]  # 3 layers: from layer ⌈3/3⌉ = 1 (1-based)
    control = GPT(GPTConfig(**{**TINY, "n_layer": 4, "pe": "rope_nope"}))
    kinds = [type(b.attn.positional).__name__ for b in control.blocks]
    assert kinds == ["RotaryEmbedding", "NoPositionalEncoding", "NoPositionalEncoding", "NoPositionalEncoding"]


def test_position_network_is_a_gated_projection_to_one_position_per_head():
    net = repo.PositionNetwork(GPTConfig(**TINY))
    h = torch.randn(2, 5, 32)
    r = F.silu(h @ net.gate.weight.T) * (h @ net.content.weight.T)                 # r = SiLU(h W_g) ⊙ (h W_c)
    expected = (r @ net.to_position.weight.T).transpose(1, 2)                      # z = r W_z as [B, H, T]
    torch.testing.assert_close(net(h), expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = net(h)
    assert z.dtype == torch.float32, f"z must be fp32 under bf16 autocast (RoPE multiplies it by θ), got {z.dtype}"


def test_cpu_fast_form_of_the_position_network_equals_the_reference():
    """fast_paths/cpu.py's f_φ (W_g and W_c as one product), the model's path on the CPU, against repo.py's."""
    pytest.importorskip("fast_paths.cpu", reason="a student copy of assignment.py leaves the fast paths out")
    torch.manual_seed(0)
    reference = repo.PositionNetwork(GPTConfig(**TINY))
    fast = repo.PositionNetwork(GPTConfig(**{**TINY, "kernels": "auto"}))
    fast.load_state_dict(reference.state_dict())
    h = torch.randn(2, 5, 32, requires_grad=True)
    grad = torch.randn(2, 2, 5)
    got, expected = fast(h), reference(h)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    got_grads = torch.autograd.grad(got, (h, *fast.parameters()), grad)
    expected_grads = torch.autograd.grad(expected, (h, *reference.parameters()), grad)
    for g, e in zip(got_grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_positions_are_per_head_and_move(monkeypatch):
    model = repo_model()
    z = repo_positions.learned_positions(model, torch.randint(64, (20,)).tolist())
    assert sorted(z) == [0, 1, 2] and z[0].shape == (2, 20), f"layers {sorted(z)}, z[0] of shape {z[0].shape}"
    assert z[0].std() > 1, f"positions must depend on the content: std {z[0].std():.4f} over tokens and heads"


def test_a_constant_shift_of_one_heads_positions_changes_nothing(monkeypatch):
    model = repo_model()
    x = torch.randint(64, (2, 24))
    with torch.no_grad():
        base = model(x)[0]
        forward = repo.PositionNetwork.forward

        def shifted(self, h, scale=1.0):
            z = forward(self, h).clone()
            z[:, 0] = z[:, 0] * scale + 37.5  # head 0 only
            return z
        monkeypatch.setattr(repo.PositionNetwork, "forward", shifted)
        torch.testing.assert_close(model(x)[0], base, rtol=1e-4, atol=1e-4)
        monkeypatch.setattr(repo.PositionNetwork, "forward", lambda self, h: shifted(self, h, scale=2.0))
        assert not torch.allclose(model(x)[0], base, atol=1e-3), "a stretch of the positions, unlike a shift, " \
            "must change the outputs"


def test_index_positions_give_exactly_the_rope_model(monkeypatch):
    rope = GPT(GPTConfig(**TINY)).eval()
    model = repo_model()
    missing, unexpected = model.load_state_dict(rope.state_dict(), strict=False)
    assert missing and all(".position_net." in k for k in missing) and not unexpected
    monkeypatch.setattr(repo.RePo, "positions", RotaryEmbedding.positions)  # f_φ replaced by the token index
    x = torch.randint(64, (2, 40))
    with torch.no_grad():
        assert torch.equal(model(x)[0], rope(x)[0])


def test_kv_cache_generation_equals_full_forward():
    check_kv_cache(repo_model())


def test_gradients_reach_the_position_network():
    model = GPT(GPTConfig(**{**TINY, "pe": "repo"}))  # the plain init: z ~ 0.002 still gets gradients
    x = torch.randint(64, (2, 24))
    model(x, x)[1].backward()
    for name, p in model.named_parameters():
        if ".position_net." in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_yarn_applies_to_learned_positions():
    x = torch.randint(64, (1, 96))  # 3x block_size
    with torch.no_grad():
        plain = repo_model()(x)[0]
        yarn = repo_model(rope_scaling="yarn", rope_factor=3.0)(x)[0]  # same seed, same weights
    assert torch.isfinite(yarn).all() and not torch.allclose(plain, yarn, atol=1e-3)


def test_position_stats():
    z = torch.stack((torch.arange(10.0), torch.tensor([0.0, 1, 1, 5, 5, 5, 2, 2, 9, 9])))
    a, b = repo_positions.position_stats(z)
    assert a == {"spread": 9.0, "monotone": 1.0, "corr": pytest.approx(1.0)}
    assert b["spread"] == 9.0 and b["monotone"] == pytest.approx(8 / 9) and 0 < b["corr"] < 1


def test_continue_from_rope_gets_fresh_position_network(tmp_path, tiny_data, capsys):
    tiny = ["--n_layer", "3"]
    run(tmp_path, tiny_data, *tiny, "--max_iters", "4", out="rope")
    run(tmp_path, tiny_data, *tiny, "--pe", "repo", "--init_from", str(tmp_path / "rope" / "ckpt.pt"),
        "--max_iters", "2", out="repo")
    out = capsys.readouterr().out
    fresh = out.split("fresh: ")[1].split("; not used")[0]
    assert fresh.count(".position_net.") == 9 and "not used: none" in out  # 3 layers x (W_g, W_c, W_z)
    args = argparse.Namespace(scaling=[None, "yarn"], iters=[1], logit_scale_c=["fitted"], answer_writes=["chunks"])
    ckpt = torch.load(tmp_path / "repo" / "ckpt.pt", weights_only=True)
    assert [label for label, *_ in eval_niah.settings(ckpt, "repo", args)] == ["repo", "repo+yarn"]
    positions = repo_positions.main(["--ckpt", str(tmp_path / "repo" / "ckpt.pt"), "--length", "128"])
    assert sorted(positions) == [0, 1, 2] and (tmp_path / "repo" / "positions.png").stat().st_size > 1000
    done = subprocess.run([sys.executable, "repo_positions.py", "--ckpt", str(tmp_path / "repo" / "ckpt.pt"), "--length", "128",
                           "--layers", "2", "--out", str(tmp_path / "one.png")],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.count("layer 2 head") == 2, done.stderr  # as a user runs it
    with pytest.raises(SystemExit, match="pe='rope'"):
        repo_positions.main(["--ckpt", str(tmp_path / "rope" / "ckpt.pt")])
