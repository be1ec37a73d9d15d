"""
A small GPT whose positional encoding is a plug-in, so that RoPE, NoPE, DroPE and RePo can be compared on one model.

    python train.py --pe rope      # train it (see train.py)

The model: tied token embedding, pre-norm blocks of causal multi-head self-attention (PyTorch SDPA) and a GELU MLP,
a final RMSNorm. There is no learned position table, so the model runs on sequences of any length; whatever it
knows about order comes from its positional module and the causal mask.

The positional interface. Every attention layer owns one positional module, made by the factory that the table
POSITIONAL below lists under the config's `pe` name, next to the file that teaches it:

    factory(config, layer_idx) -> module
    module(q, k, h, pos) -> (q, k)

        q, k  [B, H, T, D]  this layer's queries and keys for the T new tokens
        h     [B, T, C]     the normalised hidden state that produced them (RePo predicts positions from it)
        pos   [T]           absolute token indices of the new tokens (past + 0 .. past + T-1 with a KV cache)

The module returns transformed q and k; the model then takes softmax(q·kᵀ/sqrt(D)) under the causal mask. Keys
are transformed before they enter the KV cache, so a module whose output for token t depends only on tokens ≤ t
gives the same result with and without the cache. Rotations (RoPE, RePo), the identity (NoPE, DroPE) and a
scale of the logits (DroPE's β, YaRN's attention factor: multiply q, or q and k) all fit this shape. A module may
own parameters (RePo's position network); they are part of the model's state dict. A method may also set
train.py's defaults for a stage that starts from a checkpoint (STAGE_DEFAULTS: DroPE's recalibration schedule).
Adding a method is writing its file and one line in the table; the method files do not import this one.

The sublayer interface, for memories (fwpkm.py: static PKM and FwPKM) and the learned absolute positions of
"abs". Every factory in SUBLAYERS is asked for every layer; where it returns a module, that module is an extra
residual sublayer before the layer's attention (a memory, marked `memory = True`, takes the place of the layer's MLP
instead with memory_replaces_mlp):

    factory(config, layer_idx) -> nn.Module or None
    module(x, pos, cache) -> [B, T, C]   added to the residual stream x [B, T, C]; pos as above; cache: the
                                         KVCache or None. A module with per-sequence state (FwPKM's fast weights)
                                         keeps it in cache.state while a cache is used, so generation continues it.

A module may set `self.health` (a dict of floats) to report on itself; GPT.health_reports() collects them.

Sliding-window attention (FwPKM trains with it) is a forward() option: `window=W` lets each token see itself and
the W−1 tokens before it. The plain path builds a dense [T, T] mask for SDPA; on CUDA, FlexAttention with a block
mask computes only the blocks inside the window (tests check that both agree).
"""
import functools
import math
from dataclasses import dataclass, asdict

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

import fast_paths
from fast_paths import use_cpu_forms
from drope import DroppedPositionalEncoding, recalibration_defaults
from fwpkm import memory_layer
from repo import repo_layer, rope_nope_layer
from rope import NoPositionalEncoding, RotaryEmbedding


class RMSNorm(nn.RMSNorm):
    """y = x / sqrt(mean(x²) + eps) · w over the last dimension: nn.RMSNorm, whose CPU backward is a chain of
    elementwise operators (~6x LayerNorm's fused one); the switch `kernels` ("auto") runs fast_paths/cpu.py's form
    on the CPU instead (LayerNorm's fused backward plus one term, derived there)."""

    def __init__(self, n_embd, kernels_mode):
        super().__init__(n_embd)
        self.kernels = kernels_mode

    def forward(self, x):
        if use_cpu_forms(self.kernels, x):
            from fast_paths.cpu import rms_norm
            return rms_norm(x, self.weight, self.eps)
        return super().forward(x)


class LearnedPositions(nn.Module):
    """"abs": GPT-2's learned absolute position table, added to the residual stream before the first block (a
    sublayer of layer 0; attention itself is NoPE). The classic baseline, and the reference of bench.py's speed
    comparison. It has no row beyond block_size: later positions all get the last row, so it cannot extrapolate."""

    def __init__(self, config):
        super().__init__()
        self.table = nn.Embedding(config.block_size, config.n_embd)

    def forward(self, x, pos, cache=None):
        return self.table(pos.clamp_max(self.table.num_embeddings - 1))  # [T, C], the same for every row


POSITIONAL = {  # --pe name -> factory(config, layer_idx) -> the layer's positional module      where it is taught
    "rope": lambda config, layer_idx: RotaryEmbedding(config),                                 # rope.py
    "nope": lambda config, layer_idx: NoPositionalEncoding(),                                  # rope.py
    "abs": lambda config, layer_idx: NoPositionalEncoding(),  # and LearnedPositions below     model.py
    "drope": lambda config, layer_idx: DroppedPositionalEncoding(config),                      # drope.py
    "repo": repo_layer,                                                                        # repo.py
    "rope_nope": rope_nope_layer,  # RePo's control: its layer split, no learned positions    repo.py
}
STAGE_DEFAULTS = {  # --pe name -> train.py option defaults for a stage that starts from a checkpoint
    "drope": recalibration_defaults,                                                           # drope.py
}
SUBLAYERS = (  # factory(config, layer_idx) -> an extra residual sublayer before attention, or None
    lambda config, layer_idx: LearnedPositions(config) if config.pe == "abs" and layer_idx == 0 else None,
    memory_layer,                                                                              # fwpkm.py
)


def make_positional(config, layer_idx):
    if config.pe not in POSITIONAL:
        raise ValueError(f"unknown positional encoding pe={config.pe!r}; valid choices: "
                         f"{', '.join(sorted(POSITIONAL))}")
    return POSITIONAL[config.pe](config, layer_idx)


def stage_defaults(pe, init_ckpt):
    """Training-option defaults the method `pe` sets for a stage started from the checkpoint init_ckpt ({} if none)."""
    return STAGE_DEFAULTS[pe](init_ckpt) if pe in STAGE_DEFAULTS else {}


@dataclass
class GPTConfig:
    vocab_size: int = 1024         # tokenizer size (the embedded default's byte-level BPE)
    block_size: int = 256          # training context length L; the model itself accepts any length
    n_layer: int = 4               # transformer blocks
    n_head: int = 4                # attention heads per block
    n_embd: int = 128              # residual width C; head dim D = C / n_head
    pe: str = "rope"               # positional encoding: a name in the table POSITIONAL (model.py)
    rope_base: float = 10000.0     # RoPE base b, θ_i = b^(−2i/D)
    rope_scaling: str = None       # evaluation-time context extension: None, pi, ntk, dyn_ntk, yarn (rope.py)
    rope_factor: float = 1.0       # s = eval length / block_size for the scaling
    qk_norm: bool = False          # RMSNorm over the whole q and k projections (DroPE's optional stabiliser)
    logit_scale_c: float = 0.0     # DroPE: logits x beta = 1 + c·ln(T / block_size) beyond block_size (drope.py)
    pkm_layers: tuple = ()         # layers (0-based, e.g. 1,3) with a static product-key memory before attention
    fwpkm_layers: tuple = ()       # layers (0-based, e.g. 1,3) with a fast-weight product-key memory (fwpkm.py)
    memory_n_sub: int = 32         # sub-keys per half; N = n_sub² slots
    memory_topk: int = 8           # slots read per token
    memory_key_dim: int = 64       # query / key size d_k (two halves of d_k/2)
    memory_value_dim: int = 128    # value size d_v
    memory_query_span: int = 8     # FwPKM: tokens whose hidden states form the query (1: the paper's; fwpkm.py)
    memory_chunk: int = 32         # FwPKM: tokens per write; also the sliding window of training
    memory_lifetime: str = "sequence"  # FwPKM: "sequence" (fresh per sequence) or "persistent" (fwpkm.py)
    memory_replaces_mlp: bool = False  # memories in place of their layers' MLP (Lample et al., the FwPKM code)
    kernels: str = "auto"          # fast paths (fast_paths/): auto, on, off; the same weights either way

    # what changes the weights' meaning; resuming with a different value here is refused
    ARCHITECTURE = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "pe", "rope_base", "qk_norm",
                    "pkm_layers", "fwpkm_layers", "memory_n_sub", "memory_topk", "memory_key_dim", "memory_value_dim",
                    "memory_query_span", "memory_replaces_mlp")

    def __post_init__(self):
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError(f"n_embd={self.n_embd} must split into n_head={self.n_head} heads of even size")
        for name in ("pkm_layers", "fwpkm_layers"):
            value = getattr(self, name)
            try:
                layers = tuple(int(i) for i in (value.split(",") if isinstance(value, str) else value) if i != "")
            except ValueError:
                raise ValueError(f"{name}={value!r} must be a comma list of layer indices, e.g. 1,3") from None
            bad = [i for i in layers if not 0 <= i < self.n_layer]
            if bad:
                raise ValueError(f"{name}={value!r}: layers {bad} do not exist; valid: 0..{self.n_layer - 1}")
            setattr(self, name, layers)
        if self.memory_replaces_mlp and not (self.pkm_layers or self.fwpkm_layers):
            raise ValueError("memory_replaces_mlp=True puts a memory in place of its layer's MLP, and no layer has "
                             "one: give pkm_layers or fwpkm_layers")
        if (self.pkm_layers or self.fwpkm_layers) and not 1 <= self.memory_topk <= self.memory_n_sub:
            raise ValueError(f"memory_topk={self.memory_topk}: a memory reads the top k of each half's "
                             f"memory_n_sub={self.memory_n_sub} sub-keys; valid: 1..{self.memory_n_sub}")
        if self.memory_lifetime not in ("sequence", "persistent"):
            raise ValueError(f"unknown memory_lifetime {self.memory_lifetime!r}; valid choices: sequence, persistent")
        if self.kernels not in fast_paths.MODES:
            raise ValueError(f"unknown kernels {self.kernels!r}; valid choices: {', '.join(fast_paths.MODES)}")

    def to_dict(self):
        return asdict(self)


def format_health(reports):
    """GPT.health_reports() as one line, ' | L1: gate 0.41 coverage 0.52 ...', or '' when there are none."""
    return "".join(f" | {name.replace('blocks.', 'L').replace('.sublayers.0', '')}: "
                   + " ".join(f"{k} {v:.2f}" for k, v in report.items()) for name, report in reports.items())


class KVCache:
    """Per-layer keys and values of the tokens seen so far ([B, H, T_past, D] each)."""

    def __init__(self, n_layer, state=None):
        self.keys = [None] * n_layer
        self.values = [None] * n_layer
        self.state = {} if state is None else state  # sublayers' per-sequence state (FwPKM's fast weights)

    def copy(self):
        """A copy whose use leaves this cache as it is (the sublayers' state is cloned)."""
        new = KVCache(len(self.keys), {name: state.clone() for name, state in self.state.items()})
        new.keys, new.values = list(self.keys), list(self.values)
        return new

    def length(self):  # tokens cached before the current forward (layer 0 is extended first)
        return 0 if self.keys[0] is None else self.keys[0].shape[2]

    def extend(self, layer_idx, k, v):
        if self.keys[layer_idx] is not None:
            k = torch.cat((self.keys[layer_idx], k), dim=2)
            v = torch.cat((self.values[layer_idx], v), dim=2)
        self.keys[layer_idx], self.values[layer_idx] = k, v
        return k, v


def attention_mask(n_new, n_past, window, device):
    """Boolean [n_new, n_past + n_new] mask, True where query i (at n_past + i) may attend to key j, or None when
    plain causal attention from the start of the sequence suffices (SDPA's is_causal)."""
    if n_past == 0 and window is None:
        return None
    query = torch.arange(n_past, n_past + n_new, device=device)[:, None]
    key = torch.arange(n_past + n_new, device=device)[None, :]
    allowed = key <= query
    if window is not None:
        allowed &= key > query - window
    return allowed


@functools.lru_cache(maxsize=16)
def window_block_mask(T, window, device):
    """FlexAttention's block mask of causal attention within `window` tokens, for T queries and keys (cached: it
    depends on the shape only)."""
    return create_block_mask(lambda b, h, q, k: (k <= q) & (k > q - window), None, None, T, T, device=device)


@functools.lru_cache(maxsize=1)
def compiled_flex_attention():
    return torch.compile(flex_attention, dynamic=False)  # FlexAttention is fast only when compiled


def window_attention(q, k, v, window, attend=None):
    """Causal attention of q, k, v [B, H, T, D] within `window` tokens, without a dense [T, T] mask. attend: the
    FlexAttention function (default: compiled; tests pass the eager one to run on the CPU)."""
    attend = attend or compiled_flex_attention()
    return attend(q, k, v, block_mask=window_block_mask(q.shape[2], window, str(q.device)))


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.q_norm = RMSNorm(config.n_embd, config.kernels) if config.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(config.n_embd, config.kernels) if config.qk_norm else nn.Identity()
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.positional = make_positional(config, layer_idx)

    def forward(self, h, pos, cache=None, window=None):
        B, T, C = h.shape
        q, k, v = self.qkv(h).split(C, dim=-1)                                 # 3 x [B, T, C]
        q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (x.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for x in (q, k, v))  # [B, H, T, D]
        q, k = self.positional(q, k, h, pos)
        if cache is not None:
            k, v = cache.extend(self.layer_idx, k, v)  # [B, H, n_past + T, D]
        if window is not None and cache is None and h.is_cuda:
            y = window_attention(q, k, v, window)                                # [B, H, T, D]
        else:
            mask = attention_mask(T, k.shape[2] - T, window, h.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)  # [B, H, T, D]
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.up = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.proj(F.gelu(self.up(x)))


class Block(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.attn_norm = RMSNorm(config.n_embd, config.kernels)
        self.attn = CausalSelfAttention(config, layer_idx)
        sublayers = [m for factory in SUBLAYERS if (m := factory(config, layer_idx)) is not None]
        # memory_replaces_mlp: the layer's memory (a module with `memory = True`) takes the MLP's place
        memory = [m for m in sublayers if config.memory_replaces_mlp and getattr(m, "memory", False)]
        self.sublayers = nn.ModuleList(m for m in sublayers if m not in memory)
        self.ffn_memory = memory[0] if memory else None
        self.mlp_norm = None if memory else RMSNorm(config.n_embd, config.kernels)
        self.mlp = None if memory else MLP(config)

    def forward(self, x, pos, cache=None, window=None):
        for sublayer in self.sublayers:
            x = x + sublayer(x, pos, cache)
        x = x + self.attn(self.attn_norm(x), pos, cache, window)
        if self.ffn_memory is not None:  # the memory normalises its own input
            return x + self.ffn_memory(x, pos, cache)
        return x + self.mlp(self.mlp_norm(x))


def random_identities(x, slots):
    """x: [B, T, C] token embeddings; slots: [B, T], j >= 0 where a row holds its j-th name to anonymise (a key, or
    a story character: data.niah.make_drill). Every (row, slot) gets one fresh identity: the mean embedding m of the
    batch's marked tokens plus a random direction scaled to their mean distance from m, the same at each of its
    tokens. A model trained on these cannot learn the lookup one name at a time: it must match a key it has never
    seen, as the evaluation's names are (results/niah.md). No gradient reaches the identities: there is nothing to
    learn. Masked sums, not x[slots >= 0], and a draw of fixed size: no tensor decides a shape or a branch, so a
    compiled step stays one graph (tests/test_compile.py). The draw is on x's device; on the CPU from the generator a
    checkpoint restores, so a resumed run draws the same."""
    is_name = (slots >= 0)[..., None]  # [B, T, 1]
    with torch.no_grad():
        count = is_name.sum().clamp_min(1)  # no names: nothing is replaced below, any finite value will do
        mean = torch.where(is_name, x.float(), 0).sum((0, 1)) / count  # [C]
        spread = torch.where(is_name, (x.float() - mean).norm(dim=-1, keepdim=True), 0).sum() / count
        # one direction per (row, slot); a row's slots are distinct names it holds, so fewer than its T tokens
        directions = torch.randn(x.shape, device=x.device)  # [B, T, C]
        identities = mean + spread * directions / directions.norm(dim=-1, keepdim=True)
        at = identities.gather(1, slots.clamp_min(0)[..., None].expand_as(x))  # [B, T, C]: slot j's identity
    return torch.where(is_name, at.to(x.dtype), x)


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm = RMSNorm(config.n_embd, config.kernels)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # tied input and output embeddings
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):  # residual branches: keep the residual stream's variance ~1 at init
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    @classmethod
    def from_checkpoint(cls, ckpt, device="cpu", **changes):
        """The model of a checkpoint (the dict cli.load_checkpoint returns), in evaluation mode on device. `changes`
        override config fields that leave the weights' meaning alone (a RoPE scaling, DroPE's c)."""
        model = cls(GPTConfig(**{**ckpt["model_config"], **changes}))
        model.load_state_dict(ckpt["model"])
        return model.to(device).eval()

    def new_cache(self, state=None):
        """An empty KVCache; state: the sublayers' per-sequence state to start from (FwPKM's fast weights)."""
        return KVCache(self.config.n_layer, state)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def health_reports(self):
        """{module name: its health dict} for the modules that report one (FwPKM's memory health)."""
        return {name: m.health for name, m in self.named_modules() if isinstance(getattr(m, "health", None), dict)}

    def forward(self, idx, targets=None, cache=None, window=None, weights=None, anonymous=None):
        """idx: [B, T] token ids. Returns logits [B, T, V] and the mean cross-entropy (None without targets;
        targets of -1 are ignored), weighted by weights [B, T] when given: sum(w · loss) / sum(w). anonymous:
        [B, T] name slots (train.py --anonymous_names); tokens at slots >= 0 get random identities
        (random_identities)."""
        n_past = cache.length() if cache is not None else 0
        pos = torch.arange(n_past, n_past + idx.shape[1], device=idx.device)  # [T]
        x = self.tok_emb(idx)
        if anonymous is not None:
            x = random_identities(x, anonymous)
        for block in self.blocks:
            x = block(x, pos, cache, window)
        logits = self.lm_head(self.norm(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1,
                                   reduction="mean" if weights is None else "none")
            if weights is not None:  # train.py --answer_weight; ignored targets have a loss of 0
                weights = weights.flatten() * (targets.flatten() != -1)
                loss = (loss * weights).sum() / weights.sum()
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None, cache=None, window=None):
        """Continues idx [B, T] by max_new_tokens tokens with a KV cache. The prompt is never cropped to the
        training length: running beyond it is what this project studies. temperature=0 means greedy. cache: an
        empty KVCache to start from, e.g. one whose state holds FwPKM fast weights from earlier reading passes.
        window: sliding-window attention, as in forward()."""
        cache = KVCache(self.config.n_layer) if cache is None else cache
        logits, _ = self(idx, cache=cache, window=window)
        out = [idx]
        for step in range(max_new_tokens):
            next_logits = logits[:, -1, :].float()
            if temperature == 0:
                next_token = next_logits.argmax(dim=-1, keepdim=True)
            else:
                next_logits = next_logits / temperature
                if top_k is not None:
                    kth = torch.topk(next_logits, min(top_k, next_logits.shape[-1])).values[:, [-1]]
                    next_logits = next_logits.masked_fill(next_logits < kth, float("-inf"))
                next_token = torch.multinomial(F.softmax(next_logits, dim=-1), 1, generator=generator)
            out.append(next_token)
            if step + 1 < max_new_tokens:
                logits, _ = self(next_token, cache=cache, window=window)
        return torch.cat(out, dim=1)
