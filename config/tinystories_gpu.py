# One-GPU TinyStories run (~40M parameters with gpt2's 50k vocabulary, ~650M tokens).
#   python data/tinystories.py && python train.py --config config/tinystories_gpu.py --pe rope
# Flags given on the command line override these values.
dataset = "tinystories"
n_layer = 8            # blocks
n_head = 8             # heads of 64 dims
n_embd = 512           # residual width
block_size = 512       # training context; NIAH then tests 1k-4k
batch_size = 64        # sequences per micro-step
grad_accum = 2         # 64k tokens per optimiser step
max_iters = 10000
lr = 1e-3
min_lr = 1e-4
warmup_iters = 500
eval_interval = 500
eval_iters = 50
log_interval = 50
compile = True         # torch.compile: faster steps after a minute of compilation
