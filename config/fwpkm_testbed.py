# The FwPKM testbed (results/fwpkm.md, "The testbed"): retrieval drills (config/niah_cpu.py's task) with
# sliding-window attention of 16 tokens in training and in evaluation (`eval_niah.py --window 16`). A needle is
# always more than 16 tokens before its question, so attention cannot reach it and only a memory can answer.
#   python train.py --config config/fwpkm_testbed.py --out_dir out/tb_swa                      # backbone alone
#   python train.py --config config/fwpkm_testbed.py --pkm_layers 1 --out_dir out/tb_pkm       # + static PKM
#   python train.py --config config/fwpkm_testbed.py --fwpkm_layers 0 --out_dir out/tb_fwpkm   # + FwPKM (query span 8)
#   python train.py --config config/fwpkm_testbed.py --fwpkm_layers 1 --memory_query_span 1 --out_dir out/tb_paper
#   python eval_niah.py --ckpt out/tb_fwpkm/ckpt.pt --window 16 --iters 1,2,3
# The table in results/fwpkm.md was measured at commit 7fb4c46 (single-wording drills; there the span's default was 1).
niah_mix = 1.0         # every row is a retrieval drill
block_size = 128       # training context length L
swa_prob = 1.0         # every step attends within the window
swa_window = 16        # tokens each query sees (itself included): less than any needle-to-question distance
memory_chunk = 16      # FwPKM writes every 16 tokens: a pair out of the window's reach is always in the memory
max_iters = 3000
min_lr = 1e-3          # as in config/niah_cpu.py
eval_interval = 500
log_interval = 100
