"""
Product-key memories as extra sublayers: the static PKM (slow weights, trained by the optimizer) and FwPKM, whose
values and keys are fast weights rewritten by gradient steps while the model reads.

FwPKM: Zhao & Jones, "Fast-weight Product Key Memory", arXiv 2601.00671 (Sakana AI, 2026); official code
github.com/SakanaAI/fast-weight-product-key-memory. PKM: Lample et al., "Large Memory Layers with Product Keys",
NeurIPS 2019. What we measured, and what the paper reports: results/fwpkm.md.

    python train.py --config config/fwpkm_testbed.py --fwpkm_layers 0 --out_dir out/tb_fwpkm   # only it can answer
    python eval_niah.py --ckpt out/tb_fwpkm/ckpt.pt --window 16 --iters 1,2,3                  # iterative reading

Product keys. A memory of N = n² slots is addressed with two tables of n sub-keys each. The query q (d_k) is split
into halves q¹, q²; slot (i, j) scores s¹_i + s²_j. The top-k slots over all N are among the k × k pairs of the
top-k of each half (a slot outside has a half outside its top-k, so k better slots exist), so scoring 2n sub-keys
and k² pairs finds them exactly (tests check it against brute force over all N slots).

Static PKM: q = LayerNorm(W_q RMSNorm(x)) (LayerNorm, not the paper's BatchNorm, keeps it causal), dot-product
scores, softmax over the top-k, v̂ = Σ w_i V_i, output W_o v̂. V, the keys and the projections are trained by the
optimizer like every other weight.

FwPKM, per token t of the chunk being read:

    q_t = W_q RMSNorm(h_t)          v_t = zscore(W_v RMSNorm(h_t))          g_t = sigmoid(w_g · RMSNorm(h_t))
    s^m_i = −log(1e-3 + ‖q^m_t − K^m_i‖²)          (inverse distance; dot products collapsed in the paper)
    v̂_t = Σ_{i ∈ top-k} softmax(s)_i V_i            out_t = W_o RMSNorm(g_t·v̂_t + (1 − g_t)·v_t)

V [N, d_v] and K [2, n, d_k/2] are fast weights: not in the optimizer, changed only by their own losses. Writes are
chunked and causal: chunk c (C tokens) is read with the memory left by chunk c−1, then one SGD step (lr 1, fp32,
no clipping) on

    L_mem  = Σ_t ½·g_t·‖v_{t+1} − v̂_t‖²          (lookahead: store the NEXT token's value under this token's
                                                   query, so that reading a key's token returns what followed it)
    L_addr = −H(p̄¹) − H(p̄²)                       (p̄^m: the chunk's mean top-k softmax over half m's sub-keys;
                                                   spreading usage fights slot collapse)

updates V (from L_mem) and K (from L_addr). Per slot i the value step is the official code's, not the paper's
equation: ΔV_i = −(k / N_i)·Σ_{t reading i} g_t·w_{t,i}·(v̂_t − v_{t+1}), N_i the reads of slot i in the chunk,
so that one step nearly rewrites a row read by one token. The pair that crosses a chunk boundary (the chunk's last
token and the next chunk's first) is not written: a write must wait for its target otherwise. One lr-1 key step
spreads usage when many queries pull on wide keys (the default 32-token chunks and 32-dim halves) and overshoots
when few pull on small ones.

In training the value step is part of the graph: the LM loss of later chunks reaches W_v, W_q and the gate through
the writes (that is how the slow weights learn what to write). The key step is taken on detached inputs.

The query's span (`--memory_query_span S`, this project's addition; 1 is the paper's). With the lookahead, the
token before a value writes it and the same token reads it back, so that token's query must name the key: for
"... of Mia is 4821" the query at " is" must hold "Mia", and the query at "8" must hold "Mia ... 4". With S = 1 the
query sees one token's hidden state, so the key has to come from attention in the layers below, a composition
training did not find at our scale (tests/test_fwpkm_retrieval.py shows the difference on a recall task). With
S > 1 the query is a linear map of the last S tokens' normalised inputs,
q_t = W_q [RMSNorm(h_{t−S+1}); …; RMSNorm(h_t)], so the local context that names the key is in the query from
the first step (a short causal convolution, as in the recurrent layers FwPKM is paired with in the paper).

Sliding-window attention (window = C) on a fraction of training steps (`train.py --swa_prob 0.9`, the paper's
trick): with full attention always available, the model learns to ignore the memory (gate → 0).

The memory's lifetime (`--memory_lifetime`):
- "sequence" (default): every sequence starts from the same initial memory and its writes are dropped when it ends.
  A NIAH sample can then only retrieve what it read itself, so evaluation is honest.
- "persistent": as in the official code, one memory shared by all rows of a batch and carried from one training
  step to the next (stored in the module's buffers, so it is saved with the checkpoint). Evaluation starts every
  sample from the trained memory and does not write it back, so samples do not leak into each other.

Iterative reading (`eval_niah.py --iters n`, read_iteratively below): before answering, the haystack is read n−1
extra times with the write chunk = the whole haystack; only the fast weights carry over between passes.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from fast_paths import use_kernels

IDW_EPS = 1e-3  # s = −log(eps + distance²): a slot at distance 0 scores −log(eps) ≈ 6.9, not infinity


def idw_scores(q, keys):
    """Inverse-distance scores −log(eps + ‖q − K_i‖²): q [..., T, d] against keys [..., n, d] -> [..., T, n]."""
    distance2 = q.pow(2).sum(-1, keepdim=True) - 2 * q @ keys.transpose(-1, -2) + keys.pow(2).sum(-1)[..., None, :]
    return -torch.log(IDW_EPS + distance2.clamp_min(0))


def halves(q):
    """The two halves of the queries q [B, T, d_k] side by side, [B, 2, T, d_k/2] (a view): each half is scored
    against its own sub-keys [B, 2, n, d_k/2], both at once."""
    return q.unflatten(-1, (2, -1)).transpose(1, 2)


def dot_scores(q, keys):
    return q @ keys.transpose(-1, -2)


def product_topk(s1, s2, k):
    """The top-k of s1_i + s2_j over all n² slots i·n + j, from the top-k of each half. s1, s2: [..., n].
    Returns (scores [..., k], slots [..., k])."""
    # --- solution: product topk ---
    # | the k best of the n² sums s1_a + s2_b (s1, s2 [..., n]) lie among the sums of each half's k best;
    # | return their scores and slots a·n + b, [..., k] each, best first
    n = s1.shape[-1]
    top1, i1 = s1.topk(k, dim=-1)
    top2, i2 = s2.topk(k, dim=-1)
    pairs = (top1[..., :, None] + top2[..., None, :]).flatten(-2)          # [..., k·k]
    scores, j = pairs.topk(k, dim=-1)
    return scores, i1.gather(-1, j // k) * n + i2.gather(-1, j % k)
    # --- end ---


def addressing_gradient(q, keys, group, half_scores, topk):
    """∂L_addr/∂K of L_addr = −H(p̄¹) − H(p̄²), the negative entropies of each half's mean top-k usage over a chunk's
    tokens; q [B, T, d_k] the chunk's queries, keys [G, 2, n, d_k/2] the sub-keys, group [B] the memory of each row,
    half_scores the two halves' idw_scores of q against keys [B, 2, T, n] (the read computed them: not again here).
    Returns [G, 2, n, d_k/2]; both halves at once, along their dimension of 2.

    In closed form, because torch.autograd.grad inside the forward would break torch.compile's graph. For one half,
    with s_{t,i} = −log(eps + ‖q_t − K_i‖²), w_t the softmax over token t's top-k scores, u_{t,i} = w_{t,i} on the
    top-k (0 elsewhere), p̄_i = (1/M)·Σ_t u_{t,i} over the M tokens of a memory, and −H(p̄) = Σ_i p̄_i·log p̄_i:

        ∂(−H)/∂u_{t,i} = (log p̄_i + 1) / M                                   =: a_{t,i}
        ∂(−H)/∂s_{t,i} = w_{t,i}·(a_{t,i} − Σ_j w_{t,j}·a_{t,j})  on the top-k  (softmax backward; 0 elsewhere)
        ∂(−H)/∂K_i     = Σ_t ∂(−H)/∂s_{t,i} · 2·(q_t − K_i) / (eps + ‖q_t − K_i‖²),  where 1 / (eps + ‖·‖²) = e^{s_{t,i}}
    """
    G, B, T = keys.shape[0], q.shape[0], q.shape[1]
    s = half_scores                                                               # [B, 2, T, n]
    top, idx = s.topk(topk, dim=-1)
    w = F.softmax(top, dim=-1)                                                    # [B, 2, T, k]
    usage = torch.zeros_like(s).scatter(-1, idx, w)                               # u [B, 2, T, n]
    p = usage.mean(2, keepdim=True) if G > 1 else usage.mean((0, 2), keepdim=True)  # p̄ [G, 2, 1, n]
    a = (p.clamp_min(1e-12).log() + 1) / (T if G > 1 else B * T)                  # the clamp: unused slots, p̄ = 0
    a = a.expand_as(s).gather(-1, idx)                                            # [B, 2, T, k]
    ds = w * (a - (w * a).sum(-1, keepdim=True))                                  # ∂(−H)/∂s on the top-k
    coeff = torch.zeros_like(s).scatter(-1, idx, 2 * ds * top.exp())             # [B, 2, T, n]
    grad = coeff.transpose(-1, -2) @ halves(q) - coeff.sum(2)[..., None] * keys[group]  # [B, 2, n, d_k/2]
    return grad if G > 1 else grad.sum(0, keepdim=True)                           # a shared memory sums its rows


def slot_health(slots, n_slots):
    """Coverage (% of slots read at least once) and collisions (% of tokens sharing their top-1 slot with another
    token of the same row); slots [B, T, k] of one chunk."""
    coverage = torch.unique(slots).numel() / n_slots
    top1 = slots[..., 0]
    distinct = sum(torch.unique(row).numel() for row in top1)
    return coverage, 1 - distinct / top1.numel()


class ProductKeyMemory(nn.Module):
    """Static PKM (Lample et al. 2019): product keys, dot-product scores, softmax over the top-k, value rows."""
    memory = True  # model.Block puts it in place of the layer's MLP with GPTConfig.memory_replaces_mlp

    def __init__(self, config):
        super().__init__()
        self.topk, n, d_k = config.memory_topk, config.memory_n_sub, config.memory_key_dim
        self.in_norm = nn.RMSNorm(config.n_embd)
        self.query = nn.Linear(config.n_embd, d_k, bias=False)
        self.query_norm = nn.LayerNorm(d_k)  # per token, so causal (Lample used BatchNorm)
        self.sub_keys = nn.Parameter(torch.randn(2, n, d_k // 2) / math.sqrt(d_k // 2))
        self.values = nn.Embedding(n * n, config.memory_value_dim)
        self.out_proj = nn.Linear(config.memory_value_dim, config.n_embd, bias=False)
        self.kernels = config.kernels

    def forward(self, x, pos, cache=None):
        q = self.query_norm(self.query(self.in_norm(x)))                   # [B, T, d_k]
        q1, q2 = q.chunk(2, dim=-1)
        scores, slots = product_topk(dot_scores(q1, self.sub_keys[0]), dot_scores(q2, self.sub_keys[1]), self.topk)
        w = F.softmax(scores.float(), dim=-1).type_as(q)                   # [B, T, k]
        if use_kernels(self.kernels, x):  # the same read without the gathered rows in memory (fast_paths/pkm.py)
            from fast_paths import pkm  # imports triton, which CPU-only installs may lack
            read = pkm.read(self.values.weight, slots, w)
        else:
            read = (w[..., None] * self.values(slots)).sum(-2)             # v̂ = Σ w_i V_i   [B, T, d_v]
        if not self.training:
            coverage, collisions = slot_health(slots, self.values.num_embeddings)
            self.health = {"coverage": coverage, "collisions": collisions}
        return self.out_proj(read)


class FastWeights:
    """One FwPKM layer's fast weights for a batch: values [G, N, d_v] and sub-keys [G, 2, n, d_k/2] (G = B: a memory
    per sequence, or 1: shared), the write chunk C, and the inputs of the chunk being read ([B, t < C, C_model]),
    which are written when the chunk completes; their count t is where the next token falls in its chunk."""

    def __init__(self, values, keys, chunk, before):
        self.values, self.keys, self.chunk, self.pending = values, keys, chunk, None
        self.before = before  # [B, span − 1, C]: the inputs of the tokens before the chunk (zeros at the start)

    def clone(self):
        state = FastWeights(self.values.clone(), self.keys.clone(), self.chunk, self.before.clone())
        state.pending = None if self.pending is None else self.pending.clone()
        return state

    def restart(self):
        """A new reading of the sequence from its first token (read_iteratively): the fast weights stay."""
        self.before, self.pending = torch.zeros_like(self.before), None


class FastWeightProductKeyMemory(nn.Module):
    memory = True  # model.Block puts it in place of the layer's MLP with GPTConfig.memory_replaces_mlp

    def __init__(self, config, layer_idx):
        super().__init__()
        self.name = f"fwpkm{layer_idx}"  # its key in KVCache.state
        self.topk, self.chunk, self.lifetime = config.memory_topk, config.memory_chunk, config.memory_lifetime
        C, n, d_k, d_v = config.n_embd, config.memory_n_sub, config.memory_key_dim, config.memory_value_dim
        self.span = config.memory_query_span
        self.q_norm, self.query = nn.RMSNorm(C), nn.Linear(self.span * C, d_k, bias=False)
        self.v_norm, self.value = nn.RMSNorm(C), nn.Linear(C, d_v, bias=False)
        self.g_norm, self.gate = nn.RMSNorm(C), nn.Linear(C, 1, bias=False)
        self.out_norm, self.out_proj = nn.RMSNorm(d_v), nn.Linear(d_v, C, bias=False)
        self.kernels = config.kernels
        # the initial fast weights: keys on the scale of the initial queries (0.02·sqrt(span·C) per feature), values 0
        self.register_buffer("initial_keys", torch.randn(2, n, d_k // 2) * 0.02 * math.sqrt(self.span * C))
        self.register_buffer("initial_values", torch.zeros(n * n, d_v))

    def fresh_state(self, batch_size, chunk=None):
        groups = batch_size if self.lifetime == "sequence" else 1
        return FastWeights(self.initial_values.float().expand(groups, -1, -1).clone(),
                           self.initial_keys.float().expand(groups, -1, -1, -1).clone(), chunk or self.chunk,
                           torch.zeros(batch_size, self.span - 1, self.q_norm.normalized_shape[0],
                                       device=self.initial_keys.device))

    def project(self, h, before):
        """The per-token tensors that do not depend on the memory, for tokens h [B, T, C] after the inputs `before`
        [B, span − 1, C]: query q, z-scored target v, gate g. forward() computes them for all its tokens at once, so
        the chunk loop runs only what the memory changes (the read and the write)."""
        # the query of token t from the inputs of tokens t − span + 1 .. t
        spans = self.q_norm(torch.cat((before.type_as(h), h), dim=1)).unfold(1, self.span, 1)  # [B, T, C, span]
        q = self.query(spans.flatten(2)).float()                                     # [B, T, d_k]
        v = self.value(self.v_norm(h)).float()
        v = (v - v.mean(-1, keepdim=True)) / (v.std(-1, keepdim=True) + 1e-5)          # z-scored target [B, T, d_v]
        g = torch.sigmoid(self.gate(self.g_norm(h)).float())                          # [B, T, 1]
        return {"q": q, "v": v, "g": g}

    def read(self, p, state):
        """Reads the tokens of p (project()'s tensors) with the memory of `state`; returns what the write needs."""
        q = p["q"]
        B = q.shape[0]
        group = torch.arange(B, device=q.device) if state.values.shape[0] == B else torch.zeros(B, dtype=torch.long,
                                                                                               device=q.device)
        half_scores = idw_scores(halves(q), state.keys[group])                       # [B, 2, T, n]
        scores, slots = product_topk(*half_scores.unbind(1), self.topk)
        w = F.softmax(scores, dim=-1)                                                 # [B, T, k]
        if use_kernels(self.kernels, q):  # the same read, memory [G, N, d_v] as rows group·N + slot (fast_paths/pkm.py)
            from fast_paths import pkm
            v_hat = pkm.read(state.values.flatten(0, 1), group[:, None, None] * state.values.shape[1] + slots, w)
        else:
            rows = state.values[group[:, None, None], slots]                          # [B, T, k, d_v]
            v_hat = (w[..., None] * rows).sum(-2)                                     # v̂_t = Σ w V   [B, T, d_v]
        return {**p, "w": w, "slots": slots, "v_hat": v_hat, "group": group, "half_scores": half_scores}

    def write(self, r, state):
        """One SGD step (lr 1) of L_mem on the values and of L_addr on the keys, from the reads r of one chunk."""
        G, N, d_v = state.values.shape
        # L_addr on the keys, taken on detached queries (it does not depend on the values)
        state.keys = state.keys - addressing_gradient(r["q"].detach(), state.keys, r["group"],
                                                      r["half_scores"].detach(), self.topk)
        needs_graph = torch.is_grad_enabled() and any(
            t.requires_grad for t in (state.values, r["v_hat"], r["v"], r["g"], r["w"]))
        if use_kernels(self.kernels, state.values) and not needs_graph:
            # the same value step as one fused scatter into state.values, in place (fast_paths/pkm.py). Only where no
            # graph is needed (evaluation, read_iteratively, generation): training differentiates through the
            # write (the LM loss of later chunks reaches W_v, W_q and the gate), so it takes the plain code below
            from fast_paths import pkm
            pkm.write_values(state.values, r["group"][:, None, None] * N + r["slots"], r["w"], r["g"], r["v_hat"],
                             r["v"], self.topk)
            return
        # --- solution: fwpkm write ---
        # | one SGD step (lr 1) on L_mem = ½·Σ_{t<T−1} g_t·|v̂_t − v_{t+1}|² over the chunk's reads r (v_hat, v, g,
        # | w, slots, group: read()), so V_i −= (k / N_i)·∂L_mem/∂V_i with N_i the reads of row i in the chunk (at
        # | least 1); state.values [G, N, d_v] holds row i of memory group g at [g, i]
        # L_mem with lookahead: token t's read is pulled towards v_{t+1}; ∂L_mem/∂V_i = Σ_t g_t w_{t,i} (v̂_t − v_{t+1})
        err = r["v_hat"][:, :-1] - r["v"][:, 1:]                                     # [B, T-1, d_v]
        weight = r["g"][:, :-1] * r["w"][:, :-1]                                      # [B, T-1, k]
        flat = (r["group"][:, None, None] * N + r["slots"][:, :-1]).flatten()         # global row of each read
        grad = torch.zeros(G * N, d_v, device=err.device).index_add(
            0, flat, (weight[..., None] * err[:, :, None, :]).flatten(0, 2))
        reads = torch.zeros(G * N, device=err.device).index_add(0, flat, torch.ones_like(flat, dtype=torch.float))
        state.values = state.values - (self.topk / reads.clamp_min(1))[:, None].view(G, N, 1) * grad.view(G, N, d_v)
        # --- end ---

    def forward(self, x, pos, cache=None):
        B, T, _ = x.shape
        if cache is not None:
            state = cache.state.setdefault(self.name, self.fresh_state(B))
        else:
            state = self.fresh_state(B)
        # the tokens of the current chunk read by earlier calls (generation) wait in state.pending and are read again
        # with these, so h starts at a chunk boundary: chunks are h[:, i·C:(i + 1)·C], the last one maybe incomplete
        h = x if state.pending is None else torch.cat((state.pending, x), dim=1)     # [B, done + T, C]
        done = h.shape[1] - T
        projected = self.project(h, state.before)
        # split, not sliced chunk by chunk: the backward of a split is one concatenation per tensor, that of each
        # slice a zero-padded copy and a sum
        pieces = {k: t.split(state.chunk, dim=1) for k, t in projected.items()}
        v_hats, reads = [], []
        for i, start in enumerate(range(0, h.shape[1], state.chunk)):
            end = min(start + state.chunk, h.shape[1])
            r = self.read({k: t[i] for k, t in pieces.items()}, state)
            v_hats.append(r["v_hat"])
            reads.append(r)
            if end - start == state.chunk:  # the chunk is complete
                self.write(r, state)
        state.pending = h[:, start:] if end - start < state.chunk else None
        # the inputs before the next chunk: the last span − 1 of `before` and the complete chunks (once, not per chunk)
        complete = end if state.pending is None else start
        state.before = torch.cat((state.before, h[:, :complete].float()), dim=1)[:, complete:]
        if cache is None and self.lifetime == "persistent" and self.training:
            self.initial_values.copy_(state.values.detach()[0])
            self.initial_keys.copy_(state.keys.detach()[0])
        if not self.training:  # health costs host syncs, so it is measured in evaluation only
            self.record(reads, state, done)
        g, v_hat = projected["g"], torch.cat(v_hats, dim=1)
        out = (g * v_hat + (1 - g) * projected["v"])[:, done:].type_as(x)             # gated read [B, T, d_v]
        return self.out_proj(self.out_norm(out))

    # -- diagnostics, not part of the method ----------------------------------------------------------------------
    def record(self, reads, state, done):
        """self.health: gate mean, slot coverage (% of slots read) and collisions (% of a chunk's tokens whose top-1
        slot another token of it has), averaged over the chunks; self.last_reads: this call's reads, for
        eval_niah.needle_trace."""
        stats = [(r["g"].mean().item(), *slot_health(r["slots"], state.values.shape[1])) for r in reads]
        gate, coverage, collisions = (sum(s[i] for s in stats) / len(stats) for i in range(3))
        self.health = {"gate": gate, "coverage": coverage, "collisions": collisions}
        self.last_reads = {k: torch.cat([r[k] for r in reads], dim=1)[:, done:]
                           for k in ("slots", "w", "g", "v", "v_hat")}


def memory_layer(config, layer_idx):
    if layer_idx in config.pkm_layers and layer_idx in config.fwpkm_layers:
        raise ValueError(f"layer {layer_idx} is in both pkm_layers and fwpkm_layers; choose one memory per layer")
    if layer_idx in config.pkm_layers:
        return ProductKeyMemory(config)
    if layer_idx in config.fwpkm_layers:
        return FastWeightProductKeyMemory(config, layer_idx)
    return None



@torch.no_grad()
def read_iteratively(model, context, passes, window=None, answer_chunk=None):
    """Reads context [B, T] `passes` times, each pass one write of the whole context (write chunk = T), carrying only
    the fast weights from pass to pass; window: the attention's sliding window while reading, as in forward().
    Returns an empty KVCache holding them, to answer from: the answering pass writes every memory_chunk tokens, or
    every answer_chunk tokens when given (longer than the input: no write inside it, as the official evaluation
    reads, where every pass writes once, at its end)."""
    memories = [m for m in model.modules() if isinstance(m, FastWeightProductKeyMemory)]
    state = {m.name: m.fresh_state(context.shape[0], chunk=context.shape[1]) for m in memories}
    for _ in range(passes):
        model(context, cache=model.new_cache(state), window=window)  # a fresh attention cache
        for m in memories:
            state[m.name].restart()
    for m in memories:
        state[m.name].chunk = m.chunk if answer_chunk is None else answer_chunk
    return model.new_cache(state)
