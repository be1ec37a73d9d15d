"""The training forward of every method runs as one torch.compile graph: no graph breaks, so no host syncs either
(a .item() or int() of a tensor is a break)."""
import pytest
import torch

from model import GPT, GPTConfig

TINY = dict(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32,
            memory_n_sub=8, memory_topk=4, memory_key_dim=16, memory_value_dim=16, memory_chunk=8)


@pytest.mark.parametrize("config,window", [
    (dict(pe="rope"), None),
    (dict(pe="nope"), None),
    (dict(pe="abs"), None),
    (dict(pe="drope"), None),
    (dict(pe="repo", n_layer=4), None),                                   # 4 layers: RoPE below, RePo from layer 1
    (dict(pe="rope_nope", n_layer=4), None),
    (dict(pe="rope", pkm_layers="1"), None),
    (dict(pe="rope", fwpkm_layers="1"), None),
    (dict(pe="rope", fwpkm_layers="1"), 8),                               # FwPKM trains with sliding windows
    (dict(pe="rope", fwpkm_layers="1", memory_lifetime="persistent"), None),
    (dict(pe="drope", logit_scale_c=0.4), None),                          # beta from the length on the device
    (dict(pe="rope", rope_scaling="dyn_ntk", rope_factor=2.0), None),     # the base from the length on the device
])
def test_training_forward_has_no_graph_breaks(config, window):
    torch._dynamo.reset()
    model = GPT(GPTConfig(**{**TINY, **config})).train()
    x = torch.randint(64, (2, 36))  # longer than block_size (beta, dyn_ntk act) and not a multiple of the chunk
    explained = torch._dynamo.explain(lambda idx: model(idx, idx, window=window)[1])(x)
    assert explained.graph_break_count == 0, explained.break_reasons


def test_random_identities_keep_one_graph():
    """train.py --anonymous_names (config/niah_gpu.py uses it): the name slots change the embeddings without a
    branch or a shape that depends on them, also when a batch has no names."""
    torch._dynamo.reset()
    model = GPT(GPTConfig(**TINY)).train()
    x = torch.randint(64, (2, 36))
    slots = torch.full((2, 36), -1)
    slots[0, [3, 9]], slots[1, 5] = 0, 1
    for names in (slots, torch.full((2, 36), -1)):
        explained = torch._dynamo.explain(lambda idx, s: model(idx, idx, anonymous=s)[1])(x, names)
        assert explained.graph_break_count == 0, explained.break_reasons


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="the compiled kernels need CUDA (under Triton's interpreter dynamo traces the interpreter)")
@pytest.mark.parametrize("config", [dict(pe="rope"), dict(pe="repo", n_layer=4), dict(pe="rope", pkm_layers="1"),
                                    dict(pe="rope", fwpkm_layers="1")])
def test_kernels_stay_in_the_graph(config):
    """With --kernels on (a GPU's default) the Triton kernels are traced into the graph as calls, not broken out."""
    torch._dynamo.reset()
    model = GPT(GPTConfig(**{**TINY, **config}, kernels="on")).cuda().train()
    x = torch.randint(64, (2, 36), device="cuda")
    explained = torch._dynamo.explain(lambda idx: model(idx, idx)[1])(x)
    assert explained.graph_break_count == 0, explained.break_reasons
