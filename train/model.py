"""A small decoder-only MoE transformer for the training harness (nanoGPT-style, readable).

Shapes use suffixes: B batch, S sequence, H model dim (``dim``), V vocabulary, T = B*S tokens,
E experts, L layers.

Block (pre-norm)::

    x = x + Drop(Attn(LN1(x)))          # causal: F.scaled_dot_product_attention, or nn.MultiheadAttention
    x = x + Drop(FFN(LN2(x)))           # FFN = moe_routing_bench.MoELayer, or dense

The FFN of every block is the core ``MoELayer`` (any router, any backend) applied to the
flattened [T, H] activations, with the token ids flattened alongside so ``hash`` routing keys on
the token id (not the position). ``router="dense"`` gives the baseline of equal *active* FLOPs:
one GELU MLP of width ``k * ffn_mult * dim`` (an MoE token runs k experts of width
``ffn_mult * dim``).

With ``capacity_group_tokens`` G the [T, H] activations are routed in T/G groups of G consecutive
tokens, each its own call of the layer (capacity, expert-choice and position keys per group), as
the older tool's ranks each routed their own 8192 tokens.

``MoETransformer.forward(idx_BS)`` returns ``(logits_BSV, aux_per_layer)``: per block a list of
``MoEAux``, one per capacity group ([] for a dense block). ``LossAndStats`` wraps a model into the training step's forward: the
LM loss plus the balance and z losses, and the routing statistics as tensors (no host sync), so the
whole step can be compiled (``torch.compile``) and wrapped in DDP.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

import moe_routing_bench as mrb
from moe_routing_bench import MoEAux, MoEConfig, MoELayer, metrics

DENSE = "dense"
ROUTERS = mrb.STRATEGIES + (DENSE,)


def seed_factors_changing(router: str) -> frozenset[str]:
    """The older tool's factors that change what a model with `router` computes
    (`mrb.seed_factors_changing`); none for the dense baseline, which routes nothing."""
    return frozenset() if router == DENSE else mrb.seed_factors_changing(router)

# Per-layer routing statistics returned by LossAndStats, in this column order.
STAT_NAMES = (
    "balance_loss",      # the layer's, unscaled: Switch E * sum f_i P_i (1 = balanced), or with
                         # seed_semantics "balance_loss" the older tool's sum (f_i - 1/E)^2 on kept counts
    "z_loss",            # mean logsumexp(logits)^2, unscaled
    "drop_rate",         # dropped assignments / assignments (metrics.drop_rates' avg_drop_rate)
    "token_drop_rate",   # routed tokens with every assignment dropped / routed tokens
    "unrouted_rate",     # tokens with no assignment at all / tokens (expert-choice only; else 0)
    "load_cv",           # std/mean of pre-drop per-expert counts, population std
    "load_max_over_mean",
    "gate_entropy",      # mean per-token entropy (nats) of the full router distribution
    "load_cv_kept",      # std/mean of KEPT (post-drop) counts: the older tool's load_cv
    "gate_entropy_selected",  # entropy of the k selected gates: the older tool's gate_entropy
    "mean_combine_weight",    # a token's total combine weight after drops (p_max for top1, k for seed topk-hard)
    "mean_top1_prob",         # largest router probability per token
    "fallback_rate",          # the older tool's expert-choice: tokens no expert picked, routed as softk (else 0)
)


@dataclass
class ModelConfig:
    vocab_size: int = 256
    seq_len: int = 256
    layers: int = 2
    dim: int = 256
    heads: int = 4
    dropout: float = 0.1
    ffn_mult: int = 4
    num_experts: int = 8
    top_k: int = 2
    router: str = "softk"          # a routers.STRATEGIES name, or "dense"
    backend: str = "torch"         # moe_routing_bench.routing.backends name
    capacity_factor: float | None = 1.25  # None: dropless
    renorm_after_drop: bool = False
    drop_policy: str = "position"
    temperature: float = 1.0
    jitter_eps: float = 0.0
    tie_head: bool = False
    attention: str = "sdpa"        # "sdpa" (no biases) | "mha" (nn.MultiheadAttention with biases)
    capacity_group_tokens: int | None = None  # route each group of this many tokens separately
    seed_semantics: tuple[str, ...] = ()  # the older tool's routing factors (moe_routing_bench.SEED_FACTORS)
    router_bias: bool = False
    router_init_std: float | None = None

    def __post_init__(self):
        self.router = self.router if self.router == DENSE else mrb.canonical_strategy(self.router)
        if self.router == "top1":
            self.top_k = 1
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not a multiple of heads {self.heads}")
        if self.attention not in ("sdpa", "mha"):
            raise ValueError(f"attention must be 'sdpa' or 'mha', got {self.attention!r}")
        self.seed_semantics = tuple(self.seed_semantics)

    @property
    def is_moe(self) -> bool:
        return self.router != DENSE

    @property
    def causal_safe(self) -> bool:
        return self.router != "expert-choice"

    @property
    def expert_dim(self) -> int:
        return self.ffn_mult * self.dim

    @property
    def dense_dim(self) -> int:
        """Width of the dense baseline FFN: the active width of an MoE token, k * ffn_mult * dim."""
        return self.top_k * self.ffn_mult * self.dim

    def to_dict(self) -> dict:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.dropout = cfg.dropout

    def forward(self, x_BSH: torch.Tensor) -> torch.Tensor:
        B, S, H = x_BSH.shape
        q, k, v = self.qkv(x_BSH).split(H, dim=2)
        q, k, v = (t.view(B, S, self.heads, H // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, S, H))


class MultiheadSelfAttention(nn.Module):
    """Causal ``nn.MultiheadAttention`` with biases and PyTorch's own init (the older tool's block)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.mha = nn.MultiheadAttention(cfg.dim, cfg.heads, dropout=cfg.dropout, bias=True, batch_first=True)

    def forward(self, x_BSH: torch.Tensor) -> torch.Tensor:
        S = x_BSH.shape[1]
        mask_SS = torch.ones(S, S, dtype=torch.bool, device=x_BSH.device).triu(1)  # True = not attended
        return self.mha(x_BSH, x_BSH, x_BSH, attn_mask=mask_SS, is_causal=True, need_weights=False)[0]


def moe_config(cfg: ModelConfig) -> MoEConfig:
    """The MoE layer's config: sizes, router, capacity, and the older tool's semantics."""
    return MoEConfig(cfg.dim, cfg.expert_dim, cfg.num_experts, cfg.top_k, strategy=cfg.router,
                     backend=cfg.backend, capacity_factor=cfg.capacity_factor, drop_policy=cfg.drop_policy,
                     renormalize_kept=cfg.renorm_after_drop, temperature=cfg.temperature,
                     jitter_eps=cfg.jitter_eps, seed_semantics=cfg.seed_semantics, router_bias=cfg.router_bias,
                     router_init_std=cfg.router_init_std)


class DenseFFN(nn.Module):
    """GELU MLP of width k*ffn_mult*dim: the dense baseline of equal active FLOPs."""

    def __init__(self, dim: int, width: int):
        super().__init__()
        self.w1 = nn.Linear(dim, width, bias=False)
        self.w2 = nn.Linear(width, dim, bias=False)
        nn.init.normal_(self.w1.weight, std=1 / math.sqrt(dim))  # as MoELayer's experts
        nn.init.normal_(self.w2.weight, std=1 / math.sqrt(width))

    def forward(self, x_TH: torch.Tensor) -> torch.Tensor:
        return self.w2(F.gelu(self.w1(x_TH)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.dim)
        self.attn = MultiheadSelfAttention(cfg) if cfg.attention == "mha" else CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.dim)
        self.ffn = MoELayer(moe_config(cfg)) if cfg.is_moe else DenseFFN(cfg.dim, cfg.dense_dim)
        self.group_tokens = cfg.capacity_group_tokens
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x_BSH: torch.Tensor, ids_T: torch.Tensor) -> tuple[torch.Tensor, list[MoEAux]]:
        """Returns the block output and one ``MoEAux`` per capacity group ([] for a dense FFN)."""
        B, S, H = x_BSH.shape
        x_BSH = x_BSH + self.drop(self.attn(self.ln1(x_BSH)))
        h_TH = self.ln2(x_BSH).reshape(B * S, H)
        if not isinstance(self.ffn, MoELayer):
            return x_BSH + self.drop(self.ffn(h_TH).view(B, S, H)), []
        # each group is routed on its own (capacity, expert-choice and hash positions per group), as
        # the older tool's ranks each routed their own batch; a batch that is not a multiple of the
        # group (the last evaluation batch) ends with a shorter group
        G = self.group_tokens or B * S
        outs, auxs = zip(*(self.ffn(h_GH, ids_G) for h_GH, ids_G in zip(h_TH.split(G), ids_T.split(G))))
        return x_BSH + self.drop(torch.cat(outs).view(B, S, H)), list(auxs)


class MoETransformer(nn.Module):
    """Token + learned position embeddings, ``layers`` pre-norm blocks, final LayerNorm, LM head."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos_emb = nn.Embedding(cfg.seq_len, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self._init_weights()
        if cfg.tie_head:
            self.head.weight = self.tok_emb.weight

    def _init_weights(self) -> None:
        """nanoGPT init for attention, embeddings and head (std 0.02, residual projections scaled
        by 1/sqrt(2L)); the MoE layer and the dense FFN keep their own init."""
        for name, p in self.named_parameters():
            if ".ffn." in name or ".attn.mha." in name or p.dim() < 2:
                continue
            std = 0.02 / math.sqrt(2 * self.cfg.layers) if name.endswith("attn.proj.weight") else 0.02
            nn.init.normal_(p, mean=0.0, std=std)
        nn.init.zeros_(self.pos_emb.weight)  # zero-init learned positions, as the seed

    def moe_layers(self) -> list[MoELayer]:
        return [b.ffn for b in self.blocks if isinstance(b.ffn, MoELayer)]

    def forward(self, idx_BS: torch.Tensor) -> tuple[torch.Tensor, list[list[MoEAux]]]:
        """Logits [B, S, V] and, per block, its ``MoEAux`` per capacity group ([] when dense)."""
        B, S = idx_BS.shape
        if S > self.cfg.seq_len:
            raise ValueError(f"sequence of {S} tokens is longer than the model's seq_len {self.cfg.seq_len}")
        pos = torch.arange(S, device=idx_BS.device)
        x = self.drop(self.tok_emb(idx_BS) + self.pos_emb(pos))
        ids_T = idx_BS.reshape(B * S)
        aux_per_layer = []
        for block in self.blocks:
            x, auxs = block(x, ids_T)
            aux_per_layer.append(auxs)
        return self.head(self.ln_f(x)), aux_per_layer

    # ------------------------------------------------------------------------- FLOPs
    def active_params(self) -> float:
        """Parameters a token uses in one forward: all but the embedding tables, experts counted
        k/E (expert-choice: E*C/T assignments per token at the nominal capacity, k*cf/E), the LM
        head counted once even when tied (it is a matmul either way)."""
        cfg = self.cfg
        n = 0.0
        for name, p in self.named_parameters():
            if name.startswith(("tok_emb.", "pos_emb.")):
                continue
            if name.endswith(("w1_EHF", "w2_EFH")):
                n += p.numel() * self.expert_fraction()
            else:
                n += p.numel()
        if cfg.tie_head:
            n += self.head.weight.numel()
        return n

    def expert_fraction(self) -> float:
        cfg = self.cfg
        if cfg.router == "expert-choice":
            return cfg.top_k * (cfg.capacity_factor or 1.0) / cfg.num_experts
        return cfg.top_k / cfg.num_experts

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token: 6 * N_active (forward 2, backward 4 per parameter) plus the
        attention scores and values, 12 * L * dim * S (torchtitan/PaLM convention: forward 4*dim*S
        per layer, backward twice that, no causal discount)."""
        cfg = self.cfg
        S = seq_len or cfg.seq_len
        return 6.0 * self.active_params() + 12.0 * cfg.layers * cfg.dim * S


def routing_stats(aux: MoEAux) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's statistics as a float32 vector (STAT_NAMES order) and its pre-drop counts [E].

    The formulas are ``moe_routing_bench.metrics``' tensor versions: no host sync, so they run
    inside the compiled step."""
    routing, plan = aux.routing, aux.plan
    drops = metrics.drop_rate_tensors(plan.kept_TK, routing.valid_TK)
    routed = torch.ones_like(plan.kept_TK[:, 0]) if routing.valid_TK is None else routing.valid_TK.any(-1)
    unrouted = 1.0 - routed.float().mean()
    counts = plan.counts_E.to(torch.int64)  # pre-drop assignments per expert
    load = metrics.load_stat_tensors(counts)
    entropy = metrics.gate_entropy(routing.probs_TE)
    vec = torch.stack([aux.balance_loss.detach().float(), aux.z_loss.detach().float(), drops["avg_drop_rate"],
                       drops["token_drop_rate"], unrouted, load["load_cv"], load["load_max_over_mean"],
                       entropy.detach(), metrics.load_cv_tensor(plan.kept_counts_E),
                       metrics.gate_entropy_selected(routing.weights_TK, routing.valid_TK),
                       metrics.mean_combine_weight(plan.gate_TK), metrics.mean_top1_prob(routing.probs_TE),
                       torch.zeros_like(unrouted) if routing.fallback_T is None else routing.fallback_T.float().mean()])
    return vec, counts


def stats_record(values: list[float], num_layers: int) -> dict:
    """A log record's routing fields from the per-layer statistics flattened layer by layer
    ([L * len(STAT_NAMES)], STAT_NAMES order): each name is the mean over the MoE layers and
    ``<name>_per_layer`` the list of layer values; all None without MoE layers."""
    if num_layers == 0:
        return {k: None for k in STAT_NAMES} | {f"{k}_per_layer": None for k in STAT_NAMES}
    n = len(STAT_NAMES)
    rows = [values[i * n:(i + 1) * n] for i in range(num_layers)]
    out = {k: sum(r[j] for r in rows) / num_layers for j, k in enumerate(STAT_NAMES)}
    out.update({f"{k}_per_layer": [r[j] for r in rows] for j, k in enumerate(STAT_NAMES)})
    return out


class LossAndStats(nn.Module):
    """The training step's forward: ``(x_BS, y_BS) -> (loss, ce, stats_LN, counts_LE)``.

    loss = CE + alpha * sum over MoE layers of the balance loss + beta * sum of the z-loss.
    The aux terms are added even when their coefficient is 0, so every router weight is in the
    graph (DDP then needs no ``find_unused_parameters``). ``stats_LN`` has one row per MoE layer
    (STAT_NAMES columns), ``counts_LE`` the pre-drop expert counts (aux-free bias update); both
    are detached and empty ([0, ...]) for the dense model.
    """

    def __init__(self, model: MoETransformer, alpha: float, beta: float):
        super().__init__()
        self.model = model
        self.alpha = float(alpha)
        self.beta = float(beta)

    def forward(self, x_BS: torch.Tensor, y_BS: torch.Tensor):
        logits, aux_per_layer = self.model(x_BS)
        ce = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y_BS.reshape(-1))
        loss = ce
        rows, counts = [], []
        for groups in aux_per_layer:
            if not groups:
                continue
            # a layer routed in G capacity groups: losses and statistics are the groups' means,
            # counts their sum
            for aux in groups:
                loss = loss + (self.alpha * aux.balance_loss + self.beta * aux.z_loss) / len(groups)
            vecs, cnts = zip(*(routing_stats(aux) for aux in groups))
            rows.append(torch.stack(vecs).mean(0))
            counts.append(torch.stack(cnts).sum(0))
        device = logits.device
        if rows:
            stats, counts_LE = torch.stack(rows), torch.stack(counts)
        else:
            stats = torch.zeros(0, len(STAT_NAMES), device=device)
            counts_LE = torch.zeros(0, self.model.cfg.num_experts, dtype=torch.int64, device=device)
        return loss, ce.detach(), stats, counts_LE
