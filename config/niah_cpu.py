# The CPU retrieval setup of the NIAH comparison (README, "The retrieval task"): every row of training is a
# retrieval drill (1-3 needles in seen wordings inside training text or noise, each asked at the end;
# data/niah.py make_drill), at a 128-token context so that 8x is 1,024 tokens. 3,000 steps: ~14 minutes with one
# thread on 2 cores, two runs side by side (OMP_NUM_THREADS=1 each). results/niah.md has the search behind it.
#   python train.py --config config/niah_cpu.py --pe rope --out_dir out/niah_rope
#   python train.py --config config/niah_cpu.py --pe nope --out_dir out/niah_nope
niah_mix = 1.0         # fraction of rows that are drills; at 0.5 the lookup was not learned in 3,500 steps
answer_weight = 32.0   # the answers' tokens (~5% of a row) in the loss; results/niah.md has 1, 8, 32 and 128
curriculum_iters = 1000  # first steps on 48-token rows (one needle in a short haystack; 42 rows a step)
block_size = 128       # training context length L
max_iters = 3000       # the lookup forms after a plateau (the probe on the eval line shows when)
min_lr = 1e-3          # keep the learning rate high through the plateau
cooldown_frac = 0.2    # the last 600 steps take it linearly to 0: a lookup found on the plateau settles
anonymous_names = True  # every drill's key a fresh random identity per row: the lookup cannot be learned name by name
drill_needles = 3      # 1-3 needles per drill, each in its own wording, all asked
shared_wording = 0.0   # no drill shares one wording among its needles: with a share of them (up to 1.0, low learning
#                        rates too) the key lookup still was not learned in 3,000 steps (results/niah.md, "The
#                        multi-key needle"), and the single needle is what this config is measured on
eval_interval = 250    # each evaluation also runs the NIAH probe (~3 s)
log_interval = 250
