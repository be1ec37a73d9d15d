"""
Training-step cost of the positional methods, measured side by side in one process on the same model.

    python bench.py                                        # the CPU figures: abs, rope, repo, rope+pkm, rope+fwpkm
                                                           # at 16 x 256 (the CPU default) and 16 x 128 (niah_cpu)
    python bench.py --arms rope rope+pkm_layers=1 rope+fwpkm_layers=1 --block_size 128
    python bench.py --arms rope repo --n_layer 12 --n_embd 768 --n_head 12 --batch_size 16 --block_size 1024
    python bench.py --drills 0,2 --block_size 256          # retrieval drills per second, made in 0 or 2 workers,
                                                           # and train.py's whole batches of them, made and read

Every arm is the same GPT with another --pe, and optionally other model-config fields after '+' (name=value).
The arms take turns, one full training step each (forward, backward, AdamW step) per round, so a slow moment of the
machine hits all of them alike; the reported time is the median over rounds, and the ratio to the first arm the median
of the rounds' ratios (each within one round, so that a slow stretch of the machine cancels). Printed per arm: step
time, tokens per second, that ratio, parameters, FLOPs per step (matrix products, as
torch.utils.flop_counter counts them, forward and backward), the memory autograd keeps for the backward pass (distinct
saved tensors, on any device), on CUDA the peak memory of a step, measured for each arm alone (before the timed
rounds, which keep every arm resident), and the aten operators of one eager forward and backward pass (ops/step: on a
GPU each is at least one kernel launch, so a method that is slow for its FLOPs shows here; a Triton kernel counts as
one, so with --kernels on under TRITON_INTERPRET=1 the CPU shows the GPU's count). The vocabulary is the embedded
dataset's unless --vocab_size is given. Then where the time goes: the operators that take the most time, in ms per
step of each arm side by side (--profile N rows; 3 profiled steps per arm; self time, without the operators an
operator calls). Each --block_size given is a run of its own, in turn.
"""
import argparse
import gc
import statistics
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from cli import DEVICE_HELP, ArgumentParser, check_minimum, resolve_device
from data.format import dataset_dir, load_meta
from fast_paths import MODES as KERNEL_MODES, check_available
from model import GPT, GPTConfig, POSITIONAL

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")  # torch.compile's modes


def parse_arm(arm):
    """'rope+fwpkm_layers=1,3+memory_chunk=64' -> {'pe': 'rope', 'fwpkm_layers': '1,3', 'memory_chunk': 64}"""
    pe, *fields = arm.split("+")
    if pe not in POSITIONAL:
        choices = ", ".join(sorted(POSITIONAL))
        raise SystemExit(f"error: unknown pe {pe!r} in --arms {arm!r}; valid choices: {choices}")
    overrides = {"pe": pe}
    for field in fields:
        name, _, value = field.partition("=")
        if name not in GPTConfig.__dataclass_fields__ or name == "pe":
            raise SystemExit(f"error: unknown field {name!r} in --arms {arm!r}; valid: "
                             f"{', '.join(f for f in GPTConfig.__dataclass_fields__ if f != 'pe')}")
        default = GPTConfig.__dataclass_fields__[name].default
        if isinstance(default, bool):
            if value.lower() not in ("1", "true", "0", "false"):
                raise SystemExit(f"error: {name}={value!r} in --arms {arm!r} must be true or false")
            overrides[name] = value.lower() in ("1", "true")
        elif isinstance(default, (int, float)):
            try:
                overrides[name] = type(default)(value)
            except ValueError:
                raise SystemExit(f"error: {name}={value!r} in --arms {arm!r} must be {type(default).__name__}") from None
        else:
            overrides[name] = value
    return overrides


def synchronize(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def training_step(model, optimizer, x, ctx):
    with ctx:
        _, loss = model(x, x)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def saved_for_backward(model, x, ctx):
    """Bytes of the distinct tensors autograd keeps for the backward pass of one step (activations and the weights
    they multiply): a device-independent measure of a step's memory."""
    seen = {}

    def pack(t):  # by storage: q, k and v saved as views of one qkv projection are its bytes once
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), ctx:
        loss = model(x, x)[1]
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


class OpCounter(TorchDispatchMode):
    """Counts the aten operators dispatched while active that launch a kernel: views (they relabel memory) and
    allocations (torch.empty: the caching allocator, on the host) are left out. On CUDA each counted one is (at
    least) one kernel launch, and the count is the same on any device, so a step's launch overhead can be measured
    without a GPU. A Triton kernel (fast_paths/) counts as one launch: on CUDA it passes no aten operator, and under
    TRITON_INTERPRET the interpreter's own tensor operators are not counted."""

    NO_LAUNCH = (torch.ops.aten._unsafe_view, torch.ops.aten.empty, torch.ops.aten.empty_strided,
                 torch.ops.aten.empty_like)  # a view without the view flag, and the allocations

    def __init__(self):
        super().__init__()
        self.count, self.in_triton = 0, False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += not (func.is_view or func.overloadpacket in self.NO_LAUNCH or self.in_triton)
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        self.patched = []
        try:
            from triton.runtime.interpreter import InterpretedFunction
            from triton.runtime.jit import JITFunction
        except ImportError:  # no triton: no Triton kernels to count
            return super().__enter__()
        for cls in (JITFunction, InterpretedFunction):  # compiled / interpreted (TRITON_INTERPRET=1) kernels
            self.patched.append((cls, cls.run))
            cls.run = self.counting(cls.run)
        return super().__enter__()

    def __exit__(self, *exc):
        for cls, run in self.patched:
            cls.run = run
        return super().__exit__(*exc)

    def counting(self, run):
        def launch(kernel, *args, warmup=False, **kwargs):
            if warmup:
                return run(kernel, *args, warmup=warmup, **kwargs)
            self.count, self.in_triton = self.count + 1, True
            try:
                return run(kernel, *args, warmup=warmup, **kwargs)
            finally:
                self.in_triton = False
        return launch


def ops_per_step(model, x, ctx):
    """aten operators of one eager forward and backward pass (the optimizer's step is left out: train.py's fused
    AdamW is a few launches on CUDA whatever the model, where an unfused one here would count per tensor)."""
    with OpCounter() as counter, ctx:
        model(x, x)[1].backward()
    model.zero_grad(set_to_none=True)
    return counter.count


def flops_per_step(model, x, ctx):
    counter = FlopCounterMode(display=False)
    with counter, ctx:
        model(x, x)[1].backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def build(args, overrides, arm, block_size):
    torch.manual_seed(0)
    try:
        config = GPTConfig(vocab_size=args.vocab_size, block_size=block_size, n_layer=args.n_layer,
                           n_head=args.n_head, n_embd=args.n_embd, **{"kernels": args.kernels, **overrides})
    except (TypeError, ValueError) as e:
        raise SystemExit(f"error: --arms {arm!r}: {e}")
    model = GPT(config).to(args.device)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4)


def compiled(model, args):
    """The model as the timed steps run it: eager, or torch.compile'd in the mode --compile names."""
    return torch.compile(model, mode=args.compile) if args.compile else model


def peak_alone(args, overrides, arm, x, ctx):
    """CUDA peak memory of warmup steps of this arm with no other arm resident (None elsewhere)."""
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(args.device)
    model, optimizer = build(args, overrides, arm, x.shape[1])
    step_model = compiled(model, args)
    for _ in range(max(1, args.warmup)):
        training_step(step_model, optimizer, x, ctx)
    synchronize(args.device)
    peak = torch.cuda.max_memory_allocated(args.device)
    del model, optimizer, step_model
    return peak


def drill_rates(workers_list, block_size, batch_size, seconds=8.0):
    """Retrieval drills (train.py's, of block_size + 1 tokens) made per second by a DrillMaker with each number of
    worker processes (0: this process), each timed for `seconds`, then whole batches of batch_size drills as
    train.py's train_batch makes them in this process (answers weighted, names anonymous: config/niah_gpu.py's
    settings), and the same batches read from a prepared table (train.py --drills_dir); returns {workers: tokens per
    second}."""
    from data.embedded import prepare
    from data.drills import DrillMaker
    from train import SeedRecorder, train_batch
    data_dir, rates = prepare(dataset_dir("embedded")), {}
    for workers in workers_list:
        maker = DrillMaker(data_dir, workers)
        try:
            maker(list(range(4 * workers)), block_size + 1)  # the workers are started and loaded before the clock
            made, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                made += len(maker(list(range(made, made + 256)), block_size + 1)[0])
            rate = made / (time.perf_counter() - start)
        finally:
            maker.close()
        rates[workers] = rate * (block_size + 1)
        print(f"drills of {block_size + 1} tokens, {workers} worker process(es): {rate:,.0f} rows/s, "
              f"{rates[workers] / 1e3:,.0f}k tokens/s ({rates[workers] / rates[workers_list[0]]:.2f}x)")
    maker = DrillMaker(data_dir)
    options = {"batch_size": batch_size, "niah_mix": 1.0, "answer_weight": 32.0, "anonymous_names": True}

    def batches(drills, until):
        """train_batch's batches from seed 0 on, with these drills, until until(batches made, seconds elapsed) is
        true: (batches made, seconds each)."""
        gen, made, start = torch.Generator().manual_seed(0), 0, time.perf_counter()
        while not until(made, time.perf_counter() - start):
            train_batch(maker.source, options, block_size, gen, drills)
            made += 1
        return made, (time.perf_counter() - start) / made

    def report(what, per_batch):
        print(f"batches of {batch_size} x {block_size} tokens ({what}): {1e3 * per_batch:.1f} ms each, "
              f"{batch_size * block_size / per_batch / 1e3:,.0f}k tokens/s")
    n, per_batch = batches(maker, lambda made, elapsed: elapsed >= seconds)
    report("train_batch, drills in this process", per_batch)
    recorder = SeedRecorder()  # the seeds of the batches just made, replayed as train.py --prepare_drills does
    batches(recorder, lambda made, elapsed: made == n)
    with tempfile.TemporaryDirectory() as directory:
        maker.prepare(directory, recorder.seeds[block_size + 1], block_size + 1)
        reader = DrillMaker(data_dir, prepared_dir=directory)
        _, per_batch = batches(reader, lambda made, elapsed: made == n)
    report(f"the same, read from a prepared table: train.py --drills_dir; {reader.made} drills not there", per_batch)
    return rates


def where_time_goes(run, x, ctx, device, steps=3):
    """{operator: ms of self time per step} over `steps` profiled training steps of the arm `run` (CUDA: time on the
    GPU)."""
    cuda = device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            training_step(run["model"], run["optimizer"], x, ctx)
        synchronize(device)
    return {event.key: (event.self_device_time_total if cuda else event.self_cpu_time_total) / 1e3 / steps
            for event in prof.key_averages()}


def print_profile(profiles, rows):
    """The operators that take the most time in any arm (up to `rows`), in ms per step, one column per arm."""
    top = sorted({op for ms in profiles.values() for op in sorted(ms, key=ms.get, reverse=True)[:rows]},
                 key=lambda op: -max(ms.get(op, 0.0) for ms in profiles.values()))[:rows]
    width = max(len(op) for op in top) + 2
    print("where the time goes (ms of self time per step, 3 profiled steps per arm):")
    print(f"{'operator':{width}s}" + "".join(f"{arm[:14]:>16s}" for arm in profiles))
    for op in top:
        print(f"{op:{width}s}" + "".join(f"{ms.get(op, 0.0):16.1f}" for ms in profiles.values()))
    print(f"{'all':{width}s}" + "".join(f"{sum(ms.values()):16.1f}" for ms in profiles.values()))


def measure(args, arms, block_size, ctx, bf16):
    """Every arm at one block size, side by side: prints the table (and the profile) and returns
    {arm: {time, tokens_per_s, params, flops, saved, ops}}."""
    x = torch.randint(args.vocab_size, (args.batch_size, block_size), generator=torch.Generator().manual_seed(0))
    x = x.to(args.device)
    peaks = {arm: peak_alone(args, overrides, arm, x, ctx) if args.device.startswith("cuda") else None
             for arm, overrides in arms.items()}
    runs = {}
    for arm, overrides in arms.items():
        model, optimizer = build(args, overrides, arm, block_size)
        flops = flops_per_step(model, x, ctx)
        saved = saved_for_backward(model, x, ctx)
        ops = ops_per_step(model, x, ctx)
        step_model = compiled(model, args)
        for _ in range(args.warmup):
            training_step(step_model, optimizer, x, ctx)
        runs[arm] = {"model": step_model, "optimizer": optimizer, "params": model.num_params(), "flops": flops,
                     "saved": saved, "ops": ops, "peak": peaks[arm], "times": []}
    tokens = args.batch_size * block_size
    print(f"\n{args.n_layer} layers, d={args.n_embd}, {args.n_head} heads, {args.batch_size} x {block_size} "
          f"tokens per step, {args.device} {'bf16' if bf16 else 'fp32'}"
          f"{f', compiled ({args.compile})' if args.compile else ''}; "
          f"{args.rounds} rounds, arms alternating")
    t0 = time.time()
    for r in range(args.rounds):
        for run in runs.values():
            synchronize(args.device)
            start = time.perf_counter()
            training_step(run["model"], run["optimizer"], x, ctx)
            synchronize(args.device)
            run["times"].append(time.perf_counter() - start)
        eta = (time.time() - t0) / (r + 1) * (args.rounds - r - 1)
        print(f"\rround {r + 1}/{args.rounds} | ETA {eta:.0f}s", end="", flush=True)
    print()
    base = runs[args.arms[0]]
    width = max(12, *(len(arm) + 2 for arm in arms))
    print(f"{'arm':{width}s}{'step ms':>10s}{'tokens/s':>10s}{'ratio':>8s}{'params':>12s}{'+params':>9s}"
          f"{'GFLOP/step':>12s}"
          f"{'+FLOPs':>8s}{'saved MiB':>11s}{'peak MiB':>10s}{'ops/step':>10s}")
    for pe, run in runs.items():
        t = statistics.median(run["times"])
        peak = f"{run['peak'] / 2 ** 20:10.0f}" if run["peak"] is not None else f"{'n/a':>10s}"
        ratio = statistics.median(a / b for a, b in zip(run["times"], base["times"]))  # within each round
        print(f"{pe:{width}s}{1e3 * t:10.1f}{tokens / t:10,.0f}{ratio:8.3f}{run['params']:12,d}"
              f"{100 * (run['params'] / base['params'] - 1):+8.2f}%{run['flops'] / 1e9:12.2f}"
              f"{100 * (run['flops'] / base['flops'] - 1):+7.2f}%{run['saved'] / 2 ** 20:11.1f}{peak}{run['ops']:10d}")
    if args.profile:
        print_profile({arm: where_time_goes(run, x, ctx, args.device) for arm, run in runs.items()}, args.profile)
    return {pe: {"time": statistics.median(run["times"]), "tokens_per_s": tokens / statistics.median(run["times"]),
                 "ratio": statistics.median(a / b for a, b in zip(run["times"], base["times"])),
                 "params": run["params"], "flops": run["flops"], "saved": run["saved"], "ops": run["ops"]}
            for pe, run in runs.items()}


def main(argv=None):
    p = ArgumentParser(prog="bench.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", nargs="+", default=["abs", "rope", "repo", "rope+pkm_layers=1", "rope+fwpkm_layers=0"],
                   help="pe names, each optionally with +field=value config overrides; ratios are to the first "
                        "(default: nanoGPT's learned absolute positions, then the study's arms at their layers)")
    p.add_argument("--n_layer", type=int, default=4)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--n_embd", type=int, default=128)
    p.add_argument("--vocab_size", type=int, default=None, help="default: the embedded dataset's vocabulary")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--block_size", type=int, nargs="+", default=[256, 128],
                   help="tokens per row; each value a run of its own (default: the CPU default's 256, then "
                        "config/niah_cpu.py's 128)")
    p.add_argument("--rounds", type=int, default=20, help="timed steps per arm")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per arm first")
    p.add_argument("--profile", type=int, default=10,
                   help="rows of the table of where the time goes (one profiled step per arm); 0: none")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                   help="auto: bfloat16 autocast on cuda, float32 elsewhere")
    p.add_argument("--compile", nargs="?", const="default", default=None, choices=COMPILE_MODES,
                   help="torch.compile every arm, in this mode (alone: default); reduce-overhead replays each step's "
                        "launches as one CUDA graph, which spares a launch-bound step its launch overhead")
    p.add_argument("--drills", default=None,
                   help="instead of the arms: the rate of the retrieval drills, made in each comma-listed number of "
                        "worker processes (train.py --data_workers), e.g. 0,2,8; then train.py's whole batches of "
                        "--batch_size drills")
    p.add_argument("--kernels", default="auto", choices=KERNEL_MODES,
                   help="fused Triton fast paths (fast_paths/) of every arm, unless the arm sets +kernels=...")
    args = p.parse_args(argv)
    if args.drills is not None:
        try:
            workers = [int(w) for w in args.drills.split(",")]
        except ValueError:
            raise SystemExit(f"error: --drills {args.drills!r} must be a comma list of worker counts, e.g. 0,2,8")
        if min(workers) < 0:
            raise SystemExit(f"error: --drills {args.drills!r}: a worker count is 0 or more")
        return {block_size: drill_rates(workers, block_size, args.batch_size) for block_size in args.block_size}
    arms = {arm: parse_arm(arm) for arm in args.arms}
    check_minimum(args, 1, ("n_layer", "n_head", "n_embd", "batch_size", "rounds"))
    check_minimum(args, 0, ("warmup", "profile"))
    if min(args.block_size) < 1:
        raise SystemExit(f"error: --block_size {min(args.block_size)}: every block size must be at least 1")
    args.device = resolve_device(args.device)
    if args.vocab_size is None:
        from data.embedded import prepare
        args.vocab_size = load_meta(prepare(dataset_dir("embedded")))["vocab_size"]
    device_type = torch.device(args.device).type
    for mode in {overrides.get("kernels", args.kernels) for overrides in arms.values()}:
        check_available(mode, device_type)
    bf16 = args.dtype == "bfloat16" or (args.dtype == "auto" and device_type == "cuda")
    ctx = torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16)

    return {block_size: measure(args, arms, block_size, ctx, bf16) for block_size in args.block_size}


if __name__ == "__main__":
    main()
