# The CPU retrieval setup of the NIAH comparison (README, "Needle in a haystack"): every row of training is a
# retrieval drill (1-3 needles in seen wordings inside training text or noise, each asked at the end;
# data/niah.py make_drill), at a 128-token context so that 8x is 1,024 tokens. Measured on 2 cores: 14 minutes alone, 19-21 minutes with two
# runs side by side (OMP_NUM_THREADS=1 each).
#   python train.py --config config/niah_cpu.py --pe rope --out_dir out/niah_rope
#   python train.py --config config/niah_cpu.py --pe nope --out_dir out/niah_nope
niah_mix = 1.0         # fraction of rows that are drills; at 0.5 the lookup was not learned in 3,500 steps
block_size = 128       # training context length L
max_iters = 6000       # lookups start to be learned after ~2,000 steps (a plateau, then a phase change)
min_lr = 1e-3          # keep the learning rate high through the phase change
eval_interval = 1000
log_interval = 200
