#!/usr/bin/env bash
# Every speed figure of one GPU in one run, within a time budget, so a lent GPU's minutes are enough (docs/gpu.md
# says what each figure is for and how a session with a GPU spends its minutes): the training step of every method at
# 8 layers, d=512, 32 x 512 tokens compiled, the kernels against their plain versions, the kernels' tests compiled on
# the GPU, the step eager, the drills' rate, and the step compiled with CUDA graphs. One log per step in DIR, a
# summary of the steps (exit status, seconds), and DIR.tgz.
#
#   bash bench_gpu.sh                       # logs in out/bench_gpu/, at most 9 minutes
#   BUDGET=240 bash bench_gpu.sh DIR        # at most 4 minutes: the steps that fit, in the order above
#   PEAK_GBPS=3350 bash bench_gpu.sh DIR    # an H100 SXM (the default, 4800, is an H200's peak memory bandwidth)
#
# The steps run in the order of what the issue's targets need most. Each runs if the budget has at least its least
# useful time left, for at most its own limit or what is left; one that fails, runs out of time or is skipped is
# recorded in the summary and the next one runs.
set -uo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python}  # the interpreter: $PYTHON if set (e.g. a virtual environment's, not activated), else PATH's

DIR=${1:-out/bench_gpu}
PEAK_GBPS=${PEAK_GBPS:-4800}  # GB/s, the rotary kernel's share of it is printed
BUDGET=${BUDGET:-540}  # seconds for every step together: 9 minutes, within one device command's 10
if [[ ! $BUDGET =~ ^[0-9]+$ ]]; then
    echo "error: BUDGET=$BUDGET must be the seconds the steps may take together (540 by default)" >&2
    exit 2
fi
if [[ ! $PEAK_GBPS =~ ^[0-9]+([.][0-9]+)?$ ]]; then
    echo "error: PEAK_GBPS=$PEAK_GBPS must be the GPU's peak memory bandwidth in GB/s (H200 4800, H100 SXM 3350)" >&2
    exit 2
fi
if ! "$PYTHON" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    echo "error: bench_gpu.sh needs a CUDA GPU; without one, bench.py and bench_kernels.py's CPU figures are in" \
         "docs/gpu.md" >&2
    exit 2
fi
mkdir -p "$DIR"
export TORCHINDUCTOR_CACHE_DIR=$PWD/$DIR/inductor_cache  # the three compiled steps share what they compiled
SIZE=(--n_layer 8 --n_head 8 --n_embd 512 --block_size 512 --batch_size 32)
ARMS=(--arms abs rope repo rope+fwpkm_layers=2)  # abs: learned absolute positions, nanoGPT's GPT

step() {  # step NAME LEAST MOST COMMAND...: COMMAND's output in DIR/NAME.log, its exit status and time in the summary
    local name=$1 least=$2 limit=$3 start=$SECONDS
    shift 3
    local left=$(( BUDGET - SECONDS ))
    (( left < limit )) && limit=$left
    if (( limit < least )); then  # e.g. a compiled step given less than its compilations take tells nothing
        printf '%-16s skipped: %ds of BUDGET=%s left, it needs %ds  %s\n' "$name" "$left" "$BUDGET" "$least" "$*" \
            | tee -a "$DIR/summary.txt"
        return
    fi
    echo "[$name] at most ${limit}s: $*"
    timeout "$limit" "$@" > "$DIR/$name.log" 2>&1
    local status=$?
    printf '%-16s exit %3d  %4ds  %s\n' "$name" "$status" $((SECONDS - start)) "$*" | tee -a "$DIR/summary.txt"
}

: > "$DIR/summary.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$DIR/gpu.txt" 2>&1
"$PYTHON" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda,
      'triton', triton.__version__)" >> "$DIR/gpu.txt"
# compiling the four arms took 165 s on an H200 (2026-11-30); timeout's exit 124 in the summary means out of time
step compiled 150 240 "$PYTHON" bench.py "${ARMS[@]}" "${SIZE[@]}" --compile
step kernels 30 60 "$PYTHON" bench_kernels.py --peak_gbps "$PEAK_GBPS"
step kernel_tests 60 150 "$PYTHON" -m pytest -q tests/test_kernels.py tests/test_kernels_pkm.py tests/test_compile.py \
    tests/test_suite.py
step eager 30 60 "$PYTHON" bench.py "${ARMS[@]}" "${SIZE[@]}"
step drills 20 45 "$PYTHON" bench.py --drills 0,2,8 --block_size 256 --batch_size 64
step cuda_graphs 150 240 "$PYTHON" bench.py "${ARMS[@]}" "${SIZE[@]}" --compile reduce-overhead
tar -czf "$DIR.tgz" --exclude inductor_cache -C "$(dirname "$DIR")" "$(basename "$DIR")"
echo "logs: $DIR/ and $DIR.tgz"
