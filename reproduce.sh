#!/usr/bin/env bash
# The study: every method of this repository trained with the same budget on the same data (the retrieval drills of
# config/niah_<mode>.py), evaluated by needle in a haystack at 1x, 2x, 4x and 8x its training length, and summed up
# in results/<mode>/: results.md (the table), accuracy_vs_length.png, figures/ (figures.py's teaching figures), and
# one folder per arm with eval_niah.py's results.json and heatmaps. Checkpoints go to out/study_<mode>/<arm>/, each
# arm's log to results/<mode>/logs/.
#
#   bash reproduce.sh cpu             # config/niah_cpu.py, 2 arms side by side with one thread each
#   bash reproduce.sh gpu             # config/niah_gpu.py on one GPU, 4 arms side by side
#   SMOKE=1 bash reproduce.sh cpu     # the whole pipeline in minutes: 16 steps per arm, tiny evaluations, all of it
#                                     # under out/smoke_cpu/ (results in out/smoke_cpu/results/)
#   SMOKE=1 bash reproduce.sh gpu     # the same for the GPU plan; where no GPU is, on the CPU
#   JOBS=3 bash reproduce.sh cpu      # another number of arms side by side
#   SEED=2 ARMS=rope,repo bash reproduce.sh cpu  # another seed (in out/study_cpu_seed2/, results/cpu/seed2/), and
#                                     # only some arms (with the arms they start from)
#   PYTHON=.venv/bin/python bash reproduce.sh cpu  # another interpreter than python on PATH
#
# Safe to rerun: an arm whose checkpoint has reached its planned step is not trained again, a killed one continues
# from its last checkpoint (train.py --resume; on CPU bit for bit), and an evaluation is redone only when its
# checkpoint is newer than its results.json.
set -euo pipefail
cd "$(dirname "$0")"
# the interpreter: $PYTHON if set (the tests give theirs, so that a virtual environment works without activating it),
# else python on PATH; every `python` below, also through run(), is this one
PYTHON=${PYTHON:-python}
python() { command "$PYTHON" "$@"; }

MODE=${1:-}
if [[ $# -ne 1 || ! $MODE =~ ^(cpu|gpu)$ ]]; then
    echo "error: unknown mode '$*'; valid choices: cpu, gpu (e.g. bash reproduce.sh cpu)" >&2
    exit 2
fi
SMOKE=${SMOKE:-0}
if [[ ! $SMOKE =~ ^[01]$ ]]; then
    echo "error: SMOKE=$SMOKE; valid choices: 0 (the study), 1 (the smoke test: 16 steps per arm)" >&2
    exit 2
fi
SELECTED=${ARMS:-}  # ARMS=a,b: only these arms (ARMS is the list of every arm below)
SEED=${SEED:-1337}  # train.py's default seed: the study's main run
if [[ ! $SEED =~ ^[0-9]+$ ]]; then
    echo "error: SEED=$SEED must be a non-negative integer (train.py --seed); the study's main run is 1337" >&2
    exit 2
fi
CONFIG=config/niah_$MODE.py

if [[ $MODE == cpu ]]; then
    JOBS=${JOBS:-2}
    # measured 2026-12-01 (2-core CPU, 2 runs side by side): 13.5-13.9 minutes per 3,000 steps of RoPE and NoPE
    # (the curriculum's short rows and the random name identities included), ~42 s per evaluation setting (1x-8x,
    # both wordings, both variants, measured 2026-11-30); the whole study took 1h31m (FwPKM's 23 minutes included)
    SEC_PER_STEP=0.28
    SEC_PER_EVAL=45
    SEC_COMPILE=0  # eager
    SEC_PREPARE=25  # the drills of both batch streams, made on the 2 cores before the arms: 23 s (2026-12-02)
    TIMINGS="measured on this project's 2-core CPU"
else
    JOBS=${JOBS:-4}  # arms side by side: a model of this size leaves most of an H100/H200 idle (not yet measured)
    SEC_PER_STEP=0.025  # a guess, not measured: 16k tokens per step at the ~655k tokens/s of an earlier H100 probe
    SEC_PER_EVAL=10     # a guess
    SEC_COMPILE=40      # torch.compile per shape of a trained arm: ~40 s on an H200 (bench.py, 2026-11-30), measured
    SEC_PREPARE=20      # a guess: both streams' drills took 105 s on this project's 2 cores; the GPU machine has 16
    TIMINGS="the step, evaluation and drill times are GUESSES, not yet measured on a GPU; the compile time was measured"
fi
if [[ ! $JOBS =~ ^[1-9][0-9]*$ ]]; then
    echo "error: JOBS=$JOBS must be a number of arms side by side, at least 1" >&2
    exit 2
fi
CORES=$(python -c "import os; print(len(os.sched_getaffinity(0)))")  # nproc would say OMP_NUM_THREADS
# Each arm its share of the cores: torch's threads spin while they wait for each other, so two runs of 2 threads on
# 2 cores are 15-25x slower, two runs of 1 thread are not (README, results/cpu_default.md); on a GPU machine the
# arms' host-side work would otherwise start a thread per core in each of them as well
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( CORES / JOBS > 0 ? CORES / JOBS : 1 ))}

# N: the training budget of every arm, in optimiser steps. A staged arm (DroPE, RePo continued) spends part of it
# as RoPE, up to its drop point, and the rest in its own stage, so every arm sees N steps of the same data.
read -r N CURRICULUM < <(python -c "import runpy, sys; c = runpy.run_path(sys.argv[1])
print(c['max_iters'], c.get('curriculum_iters', 0))" "$CONFIG")
OUT=out/study_$MODE
RES=results/$MODE
COMMAND="bash reproduce.sh $MODE"
SMOKE_TRAIN=() SMOKE_FIT=() SMOKE_EVAL=()
if [[ $SMOKE == 1 ]]; then  # the same commands with tiny budgets, away from the study's checkpoints and results
    N=16
    OUT=out/smoke_$MODE
    RES=$OUT/results
    COMMAND="SMOKE=1 $COMMAND"
    SMOKE_TRAIN=(--eval_iters 2 --log_interval 4 --warmup_iters 2)  # the config's warmup is longer than 16 steps
    SMOKE_FIT=(--lengths 2 --rows 2 --betas 0.8,1.2,0.2)
    SMOKE_EVAL=(--lengths 1,2 --depths 2 --samples 2)
    SEC_PER_EVAL=10  # its evaluations are mostly start-up
fi
WHOLE_STUDY=$COMMAND  # every arm, the main seed
SEED_STUDY=$COMMAND   # every arm, this seed: the command that makes this seed's whole table again
if [[ -n $SELECTED ]]; then  # the command that made the results, and that continues them, names the same arms
    COMMAND="ARMS=$SELECTED $COMMAND"
fi
SEED_TRAIN=()
ALL_SEEDS=$RES  # where every seed's results sit: the main run's, and seed<N>/ beside its arms (summed up in seeds/)
if [[ $SEED != 1337 ]]; then  # another seed: its own checkpoints and results, beside the main run's
    OUT=${OUT}_seed$SEED
    RES=$RES/seed$SEED
    COMMAND="SEED=$SEED $COMMAND"
    SEED_STUDY="SEED=$SEED $SEED_STUDY"
    SEED_TRAIN=(--seed "$SEED")
fi
LATE=$(( N * 7 / 8 ))  # DroPE's drop point in the paper (14K of 16K steps), and RePo's start here
HALF=$(( N / 2 ))      # the earlier drop point of the DroPE paper's sweep

# ---------------------------------------------------------------------------------------------------------------
# The arms, in the order of the table. One RoPE run is both the baseline and the source of the staged arms: it keeps
# its checkpoints at the drop points (train.py --keep_iters), so a stage starts from exactly the model (and the
# learning-rate schedule position) the N-step RoPE run had there, and no separate shorter RoPE run is needed.
ARMS=()
declare -A STEPS TRAIN EVAL NEEDS CKPT SETTINGS
arm() {  # name, steps, train.py flags, eval_niah.py flags, [the arm whose checkpoint it starts from]
    ARMS+=("$1")
    STEPS[$1]=$2 TRAIN[$1]=$3 EVAL[$1]="$4 --variants single,multikey" NEEDS[$1]=${5:-} CKPT[$1]=$OUT/$1/ckpt.pt
    local word commas settings=1  # the product of the comma lists' lengths: --scaling none,yarn --iters 1,2 is 4
    for word in $4; do
        [[ $word == --* ]] && continue
        commas=${word//[^,]/}
        settings=$(( settings * (${#commas} + 1) ))
    done
    SETTINGS[$1]=$settings
}
kept() {  # name, step: no training, the RoPE run's checkpoint at that step evaluated as it is
    arm "$1" 0 "" "" rope
    CKPT[$1]=$OUT/rope/ckpt_$2.pt
}
stage() {  # train.py flags of a stage of $2 steps from the RoPE checkpoint at step $1
    # drope.py's recalibration schedule (3.5% warmup, LR 1e-3, cosine to 1e-4, no cooldown), spelled out because the
    # config's values count as given and would win over a method's stage defaults; no curriculum: the RoPE run had it
    local warmup=$(( ($2 * 35 + 500) / 1000 ))
    echo "--init_from $OUT/rope/ckpt_$1.pt --warmup_iters $(( warmup > 0 ? warmup : 1 )) --lr 1e-3 --min_lr 1e-4" \
         "--cooldown_frac 0 --curriculum_iters 0"
}
arm rope           $N             "--pe rope --keep_iters $HALF,$LATE"         "--scaling none,pi,ntk,yarn"
arm nope           $N             "--pe nope"                                  ""
# RoPE at the drop points: what a DroPE arm starts from, so "DroPE keeps what RoPE had learned" can be told from
# "DroPE learned it again without positions"
kept rope_at_late $LATE
kept rope_at_half $HALF
# DroPE with beta = 1 + c ln(s): c fitted by drope_fit.py, the paper's c = 0.412 (0.5B from scratch), and no beta;
# the official trainer's AdamW (no weight decay, beta2 0.999: drope.py's stage defaults, which the config's values do
# not override since it sets neither)
arm drope_late     $(( N - LATE )) "--pe drope $(stage $LATE $(( N - LATE )))"  "--logit_scale_c fitted,0.412,0" rope
arm drope_half     $(( N - HALF )) "--pe drope $(stage $HALF $(( N - HALF )))"  "--logit_scale_c fitted,0.412,0" rope
# the recalibration sweep: from the whole RoPE run, recalibrated for the paper's 1/7 of its steps, 1/2 and 1x, each
# with the curriculum (its share of the steps) and the cooldown the RoPE run had, the official optimizer
sweep() {  # train.py flags of a DroPE recalibration of $1 steps from the RoPE run's last checkpoint
    local warmup=$(( ($1 * 35 + 500) / 1000 ))
    echo "--pe drope --init_from $OUT/rope/ckpt.pt --warmup_iters $(( warmup > 0 ? warmup : 1 )) --lr 1e-3" \
         "--min_lr 1e-4 --curriculum_iters $(( $1 * CURRICULUM / N ))"
}
arm drope_x1_7     $(( N / 7 ))   "$(sweep $(( N / 7 )))"                     "--logit_scale_c fitted,0" rope
arm drope_x1_2     $(( N / 2 ))   "$(sweep $(( N / 2 )))"                     "--logit_scale_c fitted,0" rope
arm drope_x1       $N             "$(sweep $N)"                               "--logit_scale_c fitted,0" rope
# the same with QK-norm added at the drop (RMSNorm on q and k, weights from 1): the paper's stabiliser, with which its
# SmolLM recalibrated at LR 1e-3 where it diverged without; here the schedule stays the one above
arm drope_late_qk  $(( N - LATE )) "--pe drope --qk_norm true $(stage $LATE $(( N - LATE )))" \
    "--logit_scale_c fitted,0.412,0" rope
arm drope_half_qk  $(( N - HALF )) "--pe drope --qk_norm true $(stage $HALF $(( N - HALF )))" \
    "--logit_scale_c fitted,0.412,0" rope
# every arm that keeps RoPE layers is evaluated with YaRN too, as RoPE is: the RePo paper evaluates RePo + YaRN (a
# scaling changes θ, so it applies to learned positions as they are), and an arm without it would be compared with
# RoPE + YaRN on unequal terms
arm repo_cont      $(( N - LATE )) "--pe repo $(stage $LATE $(( N - LATE )))"   "--scaling none,yarn" rope
arm rope_nope_cont $(( N - LATE )) "--pe rope_nope $(stage $LATE $(( N - LATE ))) --weight_decay 0 --beta2 0.999" \
    "--scaling none,yarn" rope  # DroPE's schedule and optimizer, RoPE kept in layer 0: what the drop of layer 0 costs
arm repo           $N             "--pe repo"                                  "--scaling none,yarn"
arm rope_nope      $N             "--pe rope_nope"                             "--scaling none,yarn"
arm pkm            $N             "--pe rope --pkm_layers 1"                   "--scaling none,yarn"
# the static PKM where Lample et al. and the FwPKM code put it: in place of its layer's MLP, not beside it
arm pkm_ffn        $N             "--pe rope --pkm_layers 1 --memory_replaces_mlp true" "--scaling none,yarn"
# FwPKM at layer 0 with the default query span of 8 (README, FwPKM testbed), with full attention like every arm; read
# as the paper's evaluation reads (every pass writes once, at its end: --answer_writes end) and as ours (the answering
# pass writes every chunk, as in training)
arm fwpkm          $N             "--pe rope --fwpkm_layers 0"                 \
    "--scaling none,yarn --iters 1,2,3 --answer_writes end,chunks"
# FwPKM as its paper trains it: the query of one token's contextual state (span 1) in a deeper layer, and sliding-window
# attention (window = the write chunk) on 90% of the steps, so that the memory must carry what the window drops
arm fwpkm_paper    $N             "--pe rope --fwpkm_layers 2 --memory_query_span 1 --swa_prob 0.9" \
    "--scaling none,yarn --iters 1,2,3 --answer_writes end,chunks"

EVERY_ARM=("${ARMS[@]}")  # the whole table, for the summary over seeds
if [[ -n $SELECTED ]]; then  # keep the chosen arms and the arms they start from, in the table's order
    for a in ${SELECTED//,/ }; do
        if [[ -z ${STEPS[$a]+set} ]]; then
            echo "error: ARMS names '$a'; valid choices: ${ARMS[*]}" >&2
            exit 2
        fi
        [[ -n ${NEEDS[$a]} ]] && SELECTED+=,${NEEDS[$a]}
    done
    chosen=()
    for a in "${ARMS[@]}"; do [[ ,$SELECTED, == *,$a,* ]] && chosen+=("$a"); done
    ARMS=("${chosen[@]}")
fi

# ---------------------------------------------------------------------------------------------------------------
# The plan and the time it should take: the drills prepared first (SEC_PREPARE), then training steps at SEC_PER_STEP,
# evaluation settings (a RoPE scaling, a DroPE beta, a number of FwPKM reads) at SEC_PER_EVAL, ~10 s of start-up per
# arm and SEC_COMPILE per graph a trained arm compiles (two for an arm from scratch that outlasts the curriculum: its
# short rows, then L), JOBS arms at a time. Memory arms step 1.1-1.4x slower than RoPE on the CPU
# (bench.py) and drope_fit.py's fits take minutes; the estimate leaves both out. Printed also where mode gpu cannot
# run (no GPU): the plan, then the refusal.
hms() { printf "%dh%02dm%02ds" $(( $1 / 3600 )) $(( $1 % 3600 / 60 )) $(( $1 % 60 )); }
echo "$COMMAND: $CONFIG, $N steps per arm, $JOBS arm(s) at a time; checkpoints in $OUT/, results in $RES/"
printf "  %-15s %6s  %-46s %s\n" arm steps "starts from" "evaluation (eval_niah.py)"
total_steps=0 settings=0
declare -A GRAPHS  # the graphs torch.compile makes: a model (its --pe flags) at a row shape; one arm's are in the
                   # shared cache (below) for the next (DroPE at both drop points, RePo and RePo continued)
for a in "${ARMS[@]}"; do
    from=scratch
    [[ ${TRAIN[$a]} =~ --init_from\ ([^ ]+) ]] && from=${BASH_REMATCH[1]}
    [[ -z ${TRAIN[$a]} ]] && from="${CKPT[$a]} (no training)"
    [[ $a == rope ]] && from="scratch; keeps steps $HALF and $LATE"
    printf "  %-15s %6d  %-46s %s\n" "$a" "${STEPS[$a]}" "$from" "${EVAL[$a]:-single setting}"
    total_steps=$(( total_steps + STEPS[$a] ))
    read -ra words <<< "${TRAIN[$a]%%--init_from*}"  # the flags that make the model: its graph
    model="${words[*]}" && model=${model%% --keep_iters*}
    if [[ -n ${NEEDS[$a]} ]]; then
        (( STEPS[$a] > 0 )) && GRAPHS["$model@L"]=1  # a stage runs without the curriculum
    else
        (( CURRICULUM > 0 )) && GRAPHS["$model@short"]=1
        (( STEPS[$a] > CURRICULUM )) && GRAPHS["$model@L"]=1
    fi
    settings=$(( settings + SETTINGS[$a] ))
done
estimate=$(awk "BEGIN { print int(($total_steps * $SEC_PER_STEP + $settings * $SEC_PER_EVAL + 10 * ${#ARMS[@]} \
                                     + ${#GRAPHS[@]} * $SEC_COMPILE) / $JOBS + $SEC_PREPARE) }")
compiles=""
(( SEC_COMPILE > 0 )) && compiles=", ${#GRAPHS[@]} compilations at $SEC_COMPILE s"
echo "estimate: $(hms "$estimate") for the drills ($SEC_PREPARE s), then $total_steps steps at $SEC_PER_STEP s," \
     "$settings evaluation settings at $SEC_PER_EVAL s$compiles, $JOBS at a time ($TIMINGS)"
if [[ $MODE == gpu ]] && ! python -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    if [[ $SMOKE == 0 ]]; then
        echo "error: mode gpu needs a CUDA GPU that torch can see; without one run: bash reproduce.sh cpu" \
             "(or SMOKE=1 bash reproduce.sh gpu: the GPU plan's pipeline on the CPU)" >&2
        exit 2
    fi
    echo "no GPU: the smoke run of the GPU plan runs on the CPU (config/niah_gpu.py compiled, $JOBS arms at a time)"
fi

# ---------------------------------------------------------------------------------------------------------------
# One arm: train (or resume, or skip), fit DroPE's beta, evaluate. Each command is printed before it runs.
run() { echo "+ $*"; "$@"; }
trained() {  # true when $1/ckpt.pt has reached step $2 (train.py's last checkpoint is the one at max_iters)
    [[ -f $1/ckpt.pt ]] && python -c "import sys, torch
sys.exit(torch.load(sys.argv[1], map_location='cpu', weights_only=True)['iter'] < int(sys.argv[2]))" "$1/ckpt.pt" "$2"
}
do_arm() {
    local arm=$1 dir=$OUT/$1 ckpt=${CKPT[$1]}
    if [[ -z ${TRAIN[$arm]} ]]; then
        echo "not trained: evaluates $ckpt"
    elif trained "$dir" "${STEPS[$arm]}"; then
        echo "trained already: $dir/ckpt.pt is at step ${STEPS[$arm]}"
    else
        local resume=() every=$(( STEPS[$arm] / 6 ))  # an evaluation and a checkpoint every sixth of the run
        [[ -f $dir/ckpt.pt ]] && resume=(--resume)  # killed before: continue it
        # the prepared drills (below): no worker processes, the few drills not there are made in the prefetch thread
        # shellcheck disable=SC2086  # TRAIN holds several flags
        run python train.py --config "$CONFIG" --out_dir "$dir" --max_iters "${STEPS[$arm]}" \
            --eval_interval $(( every > 0 ? every : 1 )) ${TRAIN[$arm]} --drills_dir "$DRILLS" --data_workers 0 \
            "${SEED_TRAIN[@]}" "${SMOKE_TRAIN[@]}" "${resume[@]}"
    fi
    # drope_fit.py stores c in the checkpoint and then writes beta_fit.png: a figure newer than the checkpoint means done
    if [[ ${TRAIN[$arm]} == "--pe drope "* && ! $dir/beta_fit.png -nt $dir/ckpt.pt ]]; then
        run python drope_fit.py --ckpt "$dir/ckpt.pt" "${SMOKE_FIT[@]}"
    fi
    if [[ $RES/$arm/results.json -nt $ckpt ]]; then
        echo "evaluated already: $RES/$arm/results.json"
    else
        # shellcheck disable=SC2086
        run python eval_niah.py --ckpt "$ckpt" --out_dir "$RES/$arm" ${EVAL[$arm]} "${SMOKE_EVAL[@]}"
    fi
}

# ---------------------------------------------------------------------------------------------------------------
# The drills, made once for all arms on every core (train.py --prepare_drills, data/drills.py), before any arm starts:
# the arms from scratch draw the batch stream of the config's N steps, every staged arm the stream of a fresh run
# without the curriculum (--init_from does not change the stream), the first N - LATE or N - HALF steps of it. Seeds
# already prepared are not made again, so a rerun only replays the streams.
DRILLS=$OUT/drills
run python train.py --config "$CONFIG" --prepare_drills --drills_dir "$DRILLS" --max_iters "$N" \
    --data_workers "$CORES" "${SEED_TRAIN[@]}"
run python train.py --config "$CONFIG" --prepare_drills --drills_dir "$DRILLS" --max_iters $(( N - HALF )) \
    --curriculum_iters 0 --data_workers "$CORES" "${SEED_TRAIN[@]}"

# ---------------------------------------------------------------------------------------------------------------
# The schedule: at most JOBS arms at a time, each staged arm waiting for the checkpoint of the RoPE run it starts from
# (not for the whole run). Every line an arm prints goes to its log and, prefixed with its name, to this terminal.
export PYTHONUNBUFFERED=1  # progress lines through the pipe as they come
# torch.compile's inductor cache, shared by the arms and kept with their checkpoints: an arm whose graphs another arm
# compiled already (DroPE at both drop points, RePo from scratch and continued, ...) reuses them (on the CPU, a second
# process compiling config/niah_cpu.py's model: 3.9 s instead of 35.2 s, 2026-12-02). The estimate counts
# SEC_COMPILE once per graph.
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$PWD/$OUT/inductor_cache}
mkdir -p "$RES/logs"
declare -A PID
failed=()
started=$SECONDS
# RoPE and JOBS - 1 arms from scratch beside it, then the staged arms (they wait for RoPE), then the other arms from
# scratch: the staged results come early, and no slot idles while RoPE trains
scratch=() staged=() order=()
for a in "${ARMS[@]}"; do
    if [[ -n ${NEEDS[$a]} ]]; then staged+=("$a"); elif [[ $a == rope ]]; then order+=(rope); else scratch+=("$a"); fi
done
order+=("${scratch[@]:0:JOBS-1}" "${staged[@]}" "${scratch[@]:JOBS-1}")
starts_from() {  # the checkpoint a staged or kept arm starts from: its --init_from, or the one it evaluates
    if [[ ${TRAIN[$1]} =~ --init_from\ ([^ ]+) ]]; then echo "${BASH_REMATCH[1]}"; else echo "${CKPT[$1]}"; fi
}
for a in "${order[@]}"; do
    while (( $(jobs -rp | wc -l) >= JOBS )); do wait -n || true; done  # a slot frees up (failures counted below)
    need=${NEEDS[$a]}
    if [[ -n $need ]]; then  # starts as soon as the RoPE run has kept its checkpoint (written atomically)
        from=$(starts_from "$a")
        while [[ ! -f $from ]] && kill -0 "${PID[$need]}" 2>/dev/null; do sleep 2; done
        if [[ ! -f $from ]]; then
            echo "[$(date +%H:%M:%S)] $a not started: $need, which it starts from, ended without $from"
            failed+=("$a")
            continue
        fi
    fi
    echo "[$(date +%H:%M:%S)] start $a (log: $RES/logs/$a.log)"
    ( do_arm "$a" 2>&1 | tee -a "$RES/logs/$a.log" | sed -u "s/^/[$a] /" ) &
    PID[$a]=$!
done
for a in "${ARMS[@]}"; do
    if [[ -n ${PID[$a]:-} ]] && ! wait "${PID[$a]}"; then
        echo "[$(date +%H:%M:%S)] $a FAILED; see $RES/logs/$a.log"
        failed+=("$a")
    fi
done
echo "[$(date +%H:%M:%S)] all arms ended after $(hms $(( SECONDS - started )))"

# The table and the figure of every arm of this seed evaluated so far, by this run or by earlier ones with other
# ARMS= (the order of the table). Its command is this run's, or, where earlier runs added arms, the seed's whole
# study: the one command that makes the whole table again (it keeps every arm already trained and evaluated).
done_results=() table_command=$COMMAND
for a in "${EVERY_ARM[@]}"; do
    [[ -f $RES/$a/results.json ]] || continue
    done_results+=("$RES/$a/results.json")
    [[ " ${ARMS[*]} " == *" $a "* ]] || table_command=$SEED_STUDY
done
if (( ${#done_results[@]} )); then
    python summarize.py "${done_results[@]}" --out_dir "$RES" --command "$table_command"
fi
# The table over seeds, once another seed than the main run's has results: every arm of every seed evaluated so
# far (summarize.py takes a label found in several files as one arm's seeds), in $ALL_SEEDS/seeds/ with its figures
seed_dirs=()
for d in "$ALL_SEEDS"/seed*/; do [[ -d $d && $(basename "$d") =~ ^seed[0-9]+$ ]] && seed_dirs+=("${d%/}"); done
if (( ${#seed_dirs[@]} )); then
    # the commands of the seeds (the row names say how many seeds each arm has, where ARMS= chose some)
    seed_commands=("$WHOLE_STUDY")
    for d in "${seed_dirs[@]}"; do seed_commands+=("SEED=${d##*/seed} $WHOLE_STUDY"); done
    every_seed=()
    for a in "${EVERY_ARM[@]}"; do
        for d in "$ALL_SEEDS" "${seed_dirs[@]}"; do
            [[ -f $d/$a/results.json ]] && every_seed+=("$d/$a/results.json")
        done
    done
    joined=$(printf "; %s" "${seed_commands[@]}")
    python summarize.py "${every_seed[@]}" --out_dir "$ALL_SEEDS/seeds" --command "${joined:2}"
    # the figures drawn from results alone (the recalibration sweep with each seed's range), not from checkpoints
    python figures.py --rope none --nope none --drope none --fwpkm none --results "${every_seed[@]}" \
        --out_dir "$ALL_SEEDS/seeds/figures"
fi
# The teaching figures from this study's models (an input whose arm was not run: none, and figures.py skips what
# needs it)
figure_inputs=()
for input in rope:rope nope:nope drope:drope_late fwpkm:fwpkm; do
    ckpt=$OUT/${input#*:}/ckpt.pt
    figure_inputs+=("--${input%%:*}" "$([[ -f $ckpt ]] && echo "$ckpt" || echo none)")
done
python figures.py "${figure_inputs[@]}" --results "${done_results[@]:-none}" --out_dir "$RES/figures"
if (( ${#failed[@]} )); then
    echo "error: ${failed[*]} did not finish; rerun '$COMMAND' to continue where they stopped" >&2
    exit 1
fi
