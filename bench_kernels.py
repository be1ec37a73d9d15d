"""
The fast paths of fast_paths/ against the plain code they replace, side by side in one process on a GPU: the rotary
(fast_paths/rotary.py vs rope.py), RePo's position network (fast_paths/position_net.py vs repo.py), then the memories'
read and FwPKM's write (fast_paths/pkm.py vs fwpkm.py).

    python bench_kernels.py                      # B=8, H=12, D=64, T = 1024, 2048, 4096, bf16, an H100 SXM's peak
    python bench_kernels.py --peak_gbps 4800     # an H200's peak bandwidth

Each case is a forward and backward pass of the rotation of q and k [B, H, T, D] (views with the model's strides),
for RoPE's positions (token indices [T], no gradient) and RePo's (real-valued [B, H, T], with gradient). Printed per
case: the median time of plain and fast (triton.testing.do_bench), the speedup, the fast path's bandwidth (the bytes
it must move at least, divided by its time) as a fraction of --peak_gbps, and the memory autograd saves for the
backward pass (distinct storages, q and k included where they are saved).

The rotation moves little data per FLOP, so the time is memory traffic: at least q and k read and written in the
forward, their gradients read and written in the backward, and with RePo q and k read once more for dL/dz.

RePo's position network f_φ of h [B, T, C] (C = H·D, fp32 weights, bf16 autocast as in GPU training), forward and
backward (the gradients of h and of the weights), at the same B and lengths: the median times, the speedup and the
memory autograd saves.

The memories, at B=8, T=1024, k=8, d_v=512 and N=512² slots (--memory_*), fp32 values and weights (the values are
fp32 parameters or fast weights, the weights come from fp32 softmaxes):
- the static PKM's read, forward + backward (gradients of the value table [N, d_v] and of the weights), whole
  sequences;
- FwPKM's read, forward + backward, of one write chunk [B, C] (C = --memory_chunk) from a memory per sequence
  [B, N, d_v] (rows group·N + slot);
- FwPKM's value write of one chunk without a graph (evaluation), for C = --memory_chunk and for C = T (the whole
  context, as eval_niah's iterative reading writes it); the kernel updates the values in place, the plain code
  makes a new table.
Printed per case: the median times, the speedup, the memory autograd saves for the backward (reads) and the peak
memory the call allocates beyond its inputs (writes). The value tables are large (the FwPKM one is B·N·d_v·4 bytes,
4 GiB at the defaults), and a dense gradient of one is as large, for both paths alike.
"""
import argparse

import torch
import torch.nn.functional as F

from rope import apply_rotation, rope_frequencies, rotation


def plain(q, k, pos, inv_freq, attention_factor):
    """rope.py's RotaryEmbedding without the kernel: cos and sin once, q and k rotated by them."""
    cos, sin = rotation(pos, inv_freq, attention_factor)
    return apply_rotation(q, cos, sin), apply_rotation(k, cos, sin)


def min_bytes(q, pos):
    """Bytes the fast path's forward + backward must move: q, k, their outputs, the two incoming and two outgoing
    gradients, the positions twice; with the positions' gradient, q and k once more and dL/dz."""
    qk = 2 * q.numel() * q.element_size()
    total = 4 * qk + 2 * pos.numel() * pos.element_size()
    if pos.requires_grad:
        total += qk + q.numel() // q.shape[-1] * 4
    return total


def forward_backward(rotate_fn, q, k, pos, inv_freq, attention_factor, upstream):
    inputs = (q, k, pos) if pos.requires_grad else (q, k)
    return torch.autograd.grad(rotate_fn(q, k, pos, inv_freq, attention_factor), inputs, upstream)


def saved_bytes(fn, *args):
    """Bytes of the distinct storages autograd keeps for the backward pass of fn(*args)."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return sum(seen.values())


def plain_static_read(values, rows, w):
    """fwpkm.py's ProductKeyMemory read: the rows through the embedding, weighted and summed."""
    return (w[..., None] * F.embedding(rows, values)).sum(-2)


def plain_read(values, rows, w):
    """fwpkm.py's FastWeightProductKeyMemory read, rows = group·N + slot of the table [G·N, d_v]."""
    return (w[..., None] * values[rows]).sum(-2)


def plain_write(values, rows, w, g, v_hat, v, topk):
    """fwpkm.py's plain value step (FastWeightProductKeyMemory.write): a new table [G, N, d_v]."""
    G, N, d_v = values.shape
    err = v_hat[:, :-1] - v[:, 1:]
    weight = g[:, :-1] * w[:, :-1]
    flat = rows[:, :-1].flatten()
    grad = torch.zeros(G * N, d_v, device=err.device).index_add(
        0, flat, (weight[..., None] * err[:, :, None, :]).flatten(0, 2))
    reads = torch.zeros(G * N, device=err.device).index_add(0, flat, torch.ones_like(flat, dtype=torch.float))
    return values - (topk / reads.clamp_min(1))[:, None].view(G, N, 1) * grad.view(G, N, d_v)


def peak_bytes(fn, *args):
    """Bytes fn(*args) allocates at its peak beyond what was allocated before the call."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn(*args)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def memory_reads(B, T, K, N, per_sequence):
    """Random reads of a memory of N slots: rows [B, T, k] (the slot, or group·N + slot with a memory per sequence;
    a token may draw a slot twice, which the top-k never gives, no matter for timing) and softmax weights [B, T, k]
    that require grad."""
    rows = torch.randint(N, (B, T, K), device="cuda")
    if per_sequence:
        rows += torch.arange(B, device="cuda")[:, None, None] * N
    return rows, torch.randn(B, T, K, device="cuda").softmax(-1).requires_grad_()


def bench_position_net(args, triton_testing):
    from fast_paths.position_net import position_network
    from model import GPTConfig
    from repo import PositionNetwork
    B, H, C = args.batch_size, args.n_head, args.n_head * args.head_dim
    net = PositionNetwork(GPTConfig(n_embd=C, n_head=H, kernels="off")).cuda()
    weights = tuple(net.parameters())
    print(f"\nRePo's position network forward + backward, B={B} C={C} H={H}, bf16 autocast")
    print(f"{'T':>6s}{'plain ms':>10s}{'fast ms':>9s}{'speedup':>9s}{'saved MiB plain':>17s}{'fast':>7s}")
    fns = (("plain", net), ("fast", lambda h: position_network(h, *weights)))

    def forward_backward_f(fn, h, upstream):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            z = fn(h)
        return torch.autograd.grad(z, (h, *weights), upstream)
    for T in args.lengths:
        h = torch.randn(B, T, C, device="cuda").requires_grad_()  # the block's RMSNorm output (fp32)
        upstream = torch.randn(B, H, T, device="cuda")
        times = {label: triton_testing.do_bench(lambda fn=fn: forward_backward_f(fn, h, upstream),
                                                return_mode="median") for label, fn in fns}
        saved = {}
        for label, fn in fns:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                saved[label] = saved_bytes(fn, h) / 2 ** 20
        print(f"{T:6d}{times['plain']:10.3f}{times['fast']:9.3f}{times['plain'] / times['fast']:8.2f}x"
              f"{saved['plain']:17.1f}{saved['fast']:7.1f}")


def bench_memories(args, triton_testing):
    from fast_paths import pkm
    B, T, K, N, D, C = (args.batch_size, args.memory_length, args.memory_topk, args.memory_n_sub ** 2,
                        args.memory_value_dim, args.memory_chunk)
    print(f"\nmemories: B={B} T={T} k={K} N={args.memory_n_sub}²={N} d_v={D} C={C} fp32")
    print(f"{'case':>28s}{'tokens':>8s}{'plain ms':>10s}{'fast ms':>9s}{'speedup':>9s}{'MiB plain':>11s}{'fast':>8s}")

    def row(name, tokens, times, mib):
        print(f"{name:>28s}{tokens:8d}{times['plain']:10.3f}{times['fast']:9.3f}{times['plain'] / times['fast']:8.2f}x"
              f"{mib['plain']:11.1f}{mib['fast']:8.1f}")

    def read_case(name, values, rows, w, plain_fn):
        upstream = torch.randn(*rows.shape[:-1], D, device="cuda")
        fns = (("plain", plain_fn), ("fast", pkm.read))
        times = {label: triton_testing.do_bench(
            lambda fn=fn: torch.autograd.grad(fn(values, rows, w), (values, w), upstream), return_mode="median")
            for label, fn in fns}
        row(name, rows.shape[0] * rows.shape[1], times, {label: saved_bytes(fn, values, rows, w) / 2 ** 20
                                                         for label, fn in fns})

    # static PKM: one table [N, d_v] (a parameter), whole sequences
    values = (torch.randn(N, D, device="cuda") * 0.02).requires_grad_()
    read_case("PKM read fwd+bwd (saved)", values, *memory_reads(B, T, K, N, False), plain_static_read)
    del values
    # FwPKM: a memory per sequence [B, N, d_v], one chunk of C tokens at a time
    values = (torch.randn(B, N, D, device="cuda") * 0.02).requires_grad_()
    read_case("FwPKM read fwd+bwd (saved)", values.flatten(0, 1), *memory_reads(B, C, K, N, True), plain_read)
    values = values.detach()
    for tokens in (C, T):
        rows, w = memory_reads(B, tokens, K, N, True)
        w, g = w.detach(), torch.rand(B, tokens, 1, device="cuda")
        v_hat, v = (torch.randn(B, tokens, D, device="cuda") for _ in range(2))
        fns = (("plain", plain_write), ("fast", pkm.write_values))  # the fast one drifts the values: no matter
        times = {label: triton_testing.do_bench(lambda fn=fn: fn(values, rows, w, g, v_hat, v, K),
                                                return_mode="median") for label, fn in fns}
        row("FwPKM write (peak)", B * tokens, times, {label: peak_bytes(fn, values, rows, w, g, v_hat, v, K) / 2 ** 20
                                                      for label, fn in fns})


def main(argv=None):
    p = argparse.ArgumentParser(prog="bench_kernels.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--n_head", type=int, default=12)
    p.add_argument("--head_dim", type=int, default=64)
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"),
                   help="of q and k (bfloat16: as under the autocast of GPU training)")
    p.add_argument("--peak_gbps", type=float, default=3350.0,
                   help="the GPU's peak memory bandwidth in GB/s (default: an H100 SXM's HBM3)")
    p.add_argument("--memory_length", type=int, default=1024, help="T of the memory cases")
    p.add_argument("--memory_n_sub", type=int, default=512, help="sub-keys per half: N = n_sub² slots")
    p.add_argument("--memory_topk", type=int, default=8)
    p.add_argument("--memory_value_dim", type=int, default=512)
    p.add_argument("--memory_chunk", type=int, default=32, help="FwPKM's write chunk C")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_kernels.py needs a CUDA GPU and there is none here; tests/test_kernels*.py check the "
                         "kernels on the CPU")
    # imported only now: triton comes with torch's CUDA builds, and this machine has CUDA
    import triton.testing
    from fast_paths.rotary import rotary

    torch.manual_seed(0)
    B, H, D, dtype = args.batch_size, args.n_head, args.head_dim, getattr(torch, args.dtype)
    inv_freq, attention_factor = rope_frequencies(D)
    inv_freq = inv_freq.cuda()
    print(f"rotary forward + backward of q and k, B={B} H={H} D={D} {args.dtype}, {torch.cuda.get_device_name()}; "
          f"peak bandwidth {args.peak_gbps:.0f} GB/s (--peak_gbps)")
    print(f"{'positions':>12s}{'T':>6s}{'plain ms':>10s}{'fast ms':>9s}{'speedup':>9s}{'fast GB/s':>11s}"
          f"{'of peak':>9s}{'saved MiB plain':>17s}{'fast':>7s}")
    for T in args.lengths:
        # q and k as the model makes them: [B, T, H, D] projections seen as [B, H, T, D]
        q, k = (torch.randn(B, T, H, D, device="cuda", dtype=dtype).transpose(1, 2).requires_grad_()
                for _ in range(2))
        upstream = [torch.randn(B, H, T, D, device="cuda", dtype=dtype) for _ in range(2)]
        cases = {"[T]": torch.arange(T, device="cuda"),                                   # RoPE: token indices
                 "[B, H, T]": (torch.randn(B, T, H, device="cuda") * 100).transpose(1, 2).requires_grad_()}  # RePo
        for name, pos in cases.items():
            times = {label: triton.testing.do_bench(
                lambda fn=fn: forward_backward(fn, q, k, pos, inv_freq, attention_factor, upstream),
                return_mode="median") for label, fn in (("plain", plain), ("fast", rotary))}
            saved = {label: saved_bytes(fn, q, k, pos, inv_freq, attention_factor) / 2 ** 20
                     for label, fn in (("plain", plain), ("fast", rotary))}
            gbps = min_bytes(q, pos) / (times["fast"] * 1e-3) / 1e9
            print(f"{name:>12s}{T:6d}{times['plain']:10.3f}{times['fast']:9.3f}{times['plain'] / times['fast']:8.2f}x"
                  f"{gbps:11.0f}{gbps / args.peak_gbps:9.1%}{saved['plain']:17.1f}{saved['fast']:7.1f}")
    bench_position_net(args, triton.testing)
    bench_memories(args, triton.testing)


if __name__ == "__main__":
    main()
