"""
The rotary fast path (kernels/rotary.py) against the plain rotation of rope.py, side by side in one process on a GPU.

    python kernels/bench.py                      # B=8, H=12, D=64, T = 1024, 2048, 4096, bf16, an H100 SXM's peak
    python kernels/bench.py --peak_gbps 4800     # an H200's peak bandwidth

Each case is a forward and backward pass of the rotation of q and k [B, H, T, D] (views with the model's strides),
for RoPE's positions (token indices [T], no gradient) and RePo's (real-valued [B, H, T], with gradient). Printed per
case: the median time of plain and fast (triton.testing.do_bench), the speedup, the fast path's bandwidth (the bytes
it must move at least, divided by its time) as a fraction of --peak_gbps, and the memory autograd saves for the
backward pass (distinct storages, q and k included where they are saved).

The rotation moves little data per FLOP, so the time is memory traffic: at least q and k read and written in the
forward, their gradients read and written in the backward, and with RePo q and k read once more for dL/dz.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

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


def saved_bytes(rotate_fn, q, k, pos, inv_freq, attention_factor):
    """Bytes of the distinct storages autograd keeps for the backward pass of the rotation."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        rotate_fn(q, k, pos, inv_freq, attention_factor)
    return sum(seen.values())


def main(argv=None):
    p = argparse.ArgumentParser(prog="kernels/bench.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--n_head", type=int, default=12)
    p.add_argument("--head_dim", type=int, default=64)
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"),
                   help="of q and k (bfloat16: as under the autocast of GPU training)")
    p.add_argument("--peak_gbps", type=float, default=3350.0,
                   help="the GPU's peak memory bandwidth in GB/s (default: an H100 SXM's HBM3)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("kernels/bench.py needs a CUDA GPU and there is none here; tests/test_kernels.py checks the "
                         "kernels on the CPU")
    # imported only now: triton comes with torch's CUDA builds, and this machine has CUDA
    import triton.testing
    from kernels.rotary import rotary

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


if __name__ == "__main__":
    main()
