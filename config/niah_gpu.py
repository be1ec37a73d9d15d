# The retrieval setup of config/niah_cpu.py sized for one GPU (bf16, torch.compile), for the method comparison
# (RoPE, NoPE, DroPE, RePo, PKM, FwPKM) at a size where their effects start to show: ~11M parameters, every row a
# retrieval drill at a 256-token context (8x = 2,048 tokens). The size is the one of the H100 probes described in
# issues 11-13 (6 layers, d=384, L=256, batch 64); this file itself has not been run on a GPU yet (README, "Not
# measured yet"), so its time per arm is an estimate: 16k tokens per step, ~4,000 steps.
#   python train.py --config config/niah_gpu.py --pe rope --out_dir out/gpu_rope
#   python train.py --config config/niah_gpu.py --fwpkm_layers 2 --swa_prob 0.9 --out_dir out/gpu_fwpkm
niah_mix = 1.0         # every row a drill: the lookup is not learned from stories alone at this scale
answer_weight = 32.0   # as config/niah_cpu.py: the answers' tokens weigh 32 in the loss (not yet run on a GPU)
curriculum_iters = 1000  # as config/niah_cpu.py: first steps on 48-token rows, one needle each
anonymous_names = True  # as config/niah_cpu.py (not yet run on a GPU)
n_layer = 6            # blocks
n_head = 6             # heads of 64 dims
n_embd = 384           # residual width
block_size = 256       # training context length L
batch_size = 64        # sequences per step
max_iters = 4000       # RoPE did not yet retrieve at 1,500 steps in the H100 probe
lr = 1e-3
min_lr = 1e-4
warmup_iters = 200
cooldown_frac = 0.2    # as config/niah_cpu.py: the last fifth of the steps decays to 0 (not yet run on a GPU)
eval_interval = 500
eval_iters = 20
log_interval = 50
data_workers = 8       # drill-making processes: one core makes ~1.1M drill tokens/s, a step here wants ~1.1M
compile = True         # torch.compile: faster steps after a minute of compilation
