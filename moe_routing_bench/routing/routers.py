"""Routing strategies: router logits -> the experts each token goes to, and with what weight.

Shape legend: T tokens, E experts, K experts per token (top-k), C tokens per expert (expert-choice).
Routing math is float32 whatever the activation dtype; ties go to the lower expert id.

| strategy        | selection                         | weights                                         | router learns from |
|-----------------|-----------------------------------|-------------------------------------------------|--------------------|
| `top1`          | argmax of logits (K = 1)          | softmax prob of the chosen expert (Switch)      | LM loss + balance  |
| `topk-hard`     | top-K logits                      | 1/K each                                        | balance loss only  |
| `softk`         | top-K logits                      | softmax over the K selected logits / temperature | LM loss + balance  |
| `hash`          | hash(token id), then the next K-1 | 1/K each                                        | nothing (fixed)    |
| `expert-choice` | each expert takes its top-C tokens | softmax prob; K = E slots, `valid_TK` marks picks | LM loss           |
| `aux-free`      | top-K of sigmoid(logits) + bias   | selected sigmoid scores renormalised            | LM loss; bias by `update_aux_free_bias` |

`softk` with `renormalize=False` uses the full-softmax probabilities of the selected experts instead
(Qwen2-MoE's `norm_topk_prob=False`). Expert-choice ranks every token of the batch, so in a causal
LM the present sees the future: its `Routing.causal_safe` is False.

`seed_semantics` selects, factor by factor, what the older tool behind the seed README computes
under the same names (DESIGN section 2b; `SEED_FACTORS`, the block at the end of this module).
Our semantics above stay the default.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import torch

from .validation import (ConfigError, check_capacity_factor, check_finite, check_logits_shape, check_top_k,
                         check_vector)

STRATEGIES = ("top1", "topk-hard", "softk", "hash", "expert-choice", "aux-free")
_ALIASES = {
    "topk_hard": "topk-hard", "expert_choice": "expert-choice", "aux_free": "aux-free",
    "switch": "top1", "topk_softmax_renorm": "softk", "soft": "softk",
}


def canonical_strategy(name: str) -> str:
    """Accept any case and '_' for '-' (the seed's spellings); raise ConfigError on an unknown name."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in STRATEGIES:
        raise ConfigError(f"unknown routing strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    return key


@dataclass
class Routing:
    """Routing decision for T tokens. Slots with `valid_TK` False carry no assignment."""

    expert_ids_TK: torch.Tensor  # int64
    weights_TK: torch.Tensor  # float32; carries gradient to the router where the strategy allows
    probs_TE: torch.Tensor  # float32 router distribution over experts: balance loss and entropy
    valid_TK: torch.Tensor | None = None  # bool; None means every slot is an assignment
    causal_safe: bool = True
    fallback_T: torch.Tensor | None = None  # bool; the older tool's expert-choice: routed as softk instead

    @property
    def num_tokens(self) -> int:
        return self.expert_ids_TK.shape[0]

    @property
    def top_k(self) -> int:
        return self.expert_ids_TK.shape[1]

    @property
    def num_experts(self) -> int:
        return self.probs_TE.shape[1]


def capacity(num_tokens: int, top_k: int, num_experts: int, capacity_factor: float | None) -> int | None:
    """C = ceil(capacity_factor * T * K / E), at least 1; None (dropless) when the factor is None.

    Exact rational arithmetic on the decimal the user typed: 1.1 * 100 is 110, not 111."""
    ratio = capacity_ratio(capacity_factor)
    return None if ratio is None else capacity_from_ratio(num_tokens, top_k, num_experts, ratio)


def capacity_ratio(capacity_factor: float | None) -> tuple[int, int] | None:
    """The capacity factor as the exact fraction (numerator, denominator) of its decimal repr."""
    if capacity_factor is None:
        return None
    check_capacity_factor(capacity_factor)
    cf = Fraction(repr(float(capacity_factor)))
    return cf.numerator, cf.denominator


def capacity_from_ratio(num_tokens: int, top_k: int, num_experts: int, ratio: tuple[int, int]) -> int:
    """`capacity` from a precomputed `capacity_ratio`: integer arithmetic only, so torch.compile traces it."""
    numerator, denominator = ratio
    return max(1, -(-(numerator * num_tokens * top_k) // (denominator * num_experts)))


def topk_lowest_id(scores_TE: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k along the last dim, largest first, the lower index winning ties, on every device.

    Each float is mapped to an int32 that orders like it, widened to int64 with the reversed index
    in the low 32 bits, so one integer top-k is exact and deterministic."""
    scores = scores_TE.float().contiguous() + 0.0  # -0.0 -> +0.0
    n = scores.shape[-1]
    bits = scores.view(torch.int32)
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64)
    index = torch.arange(n, device=scores.device, dtype=torch.int64)
    keys = ordered * (1 << 32) + (n - 1 - index)
    top_keys = torch.topk(keys, k, dim=-1, sorted=True).values
    ids = (n - 1) - torch.remainder(top_keys, 1 << 32)
    return scores.gather(-1, ids), ids


def _hash_experts(token_ids_T: torch.Tensor, num_experts: int, k: int) -> torch.Tensor:
    """A fixed multiplicative hash of the token id, then the next k-1 experts: k distinct ids."""
    h = (token_ids_T.to(torch.int64) * 2654435761) & 0xFFFFFFFF
    h = h ^ (h >> 16)
    first = torch.remainder(h, num_experts)
    offsets = torch.arange(k, device=token_ids_T.device, dtype=torch.int64)
    return torch.remainder(first[:, None] + offsets, num_experts)


def check_route_args(
    logits_TE: torch.Tensor,
    strategy: str,
    top_k: int,
    *,
    temperature: float = 1.0,
    token_ids_T: torch.Tensor | None = None,
    bias_E: torch.Tensor | None = None,
    seed_semantics: tuple[str, ...] = (),
    checked: bool = False,
) -> str:
    """Every backend's `route` checks its arguments here first (see `validation` for the policy);
    returns the canonical strategy name. Shapes and dtypes always; values only when `checked`."""
    strategy = canonical_strategy(strategy)
    check_logits_shape(logits_TE)
    T, E = logits_TE.shape
    check_top_k(top_k, E)
    if strategy == "top1" and top_k != 1:
        raise ConfigError(f"top1 routes each token to exactly one expert; got top-k {top_k}")
    if not isinstance(temperature, (int, float)) or not 0 < temperature < float("inf"):
        raise ConfigError(f"temperature must be a finite number > 0, got {temperature}")
    if strategy == "hash" and token_ids_T is None and seed_route_factor(strategy, seed_semantics) is None:
        raise ConfigError("hash routing needs the token ids (token_ids_T)")  # the older tool's hashes row positions
    check_vector("token ids", token_ids_T, T, None, integer=True)  # moved to the logits' device
    check_vector("bias_E", bias_E, E, logits_TE.device, integer=False)
    if checked:
        check_finite("router logits", logits_TE)
        check_finite("bias_E", bias_E)
    return strategy


def route(
    logits_TE: torch.Tensor,
    strategy: str,
    top_k: int,
    *,
    temperature: float = 1.0,
    renormalize: bool = True,
    token_ids_T: torch.Tensor | None = None,
    bias_E: torch.Tensor | None = None,
    capacity_factor: float | None = None,
    seed_semantics: tuple[str, ...] = (),
    checked: bool = False,
) -> Routing:
    """Route T tokens among E experts. See the module table for each strategy's semantics.

    `token_ids_T` (int) is required by `hash`; `bias_E` is aux-free's selection bias (zeros if None);
    `capacity_factor` sets expert-choice's per-expert token count C = ceil(cf*T*K/E) (cf 1 if None).
    `seed_semantics` (names from `SEED_FACTORS`) swaps in the older tool's version of the strategy
    where one of them applies to it (`seed_route_factor`); the others are ignored here.
    Invalid input (`validation` states the policy): shapes and dtypes raise ConfigError always;
    NaN/inf logits or bias raise ConfigError only with `checked=True`, which synchronises the host;
    unchecked, their result is unspecified. T = 0 gives empty [0, K] outputs."""
    strategy = check_route_args(logits_TE, strategy, top_k, temperature=temperature, token_ids_T=token_ids_T,
                                bias_E=bias_E, seed_semantics=seed_semantics, checked=checked)
    seed_factor = seed_route_factor(strategy, seed_semantics)
    T, E = logits_TE.shape
    logits = logits_TE.float()
    if seed_factor is not None:
        return SEED_ROUTERS[seed_factor](logits, top_k, capacity_factor)
    probs_TE = torch.softmax(logits, dim=-1)

    if strategy in ("top1", "topk-hard", "softk"):
        top_logits, ids = topk_lowest_id(logits, top_k)
        if strategy == "top1":
            weights = probs_TE.gather(-1, ids)
        elif strategy == "topk-hard":
            weights = torch.full_like(top_logits, 1.0 / top_k)
        elif renormalize:
            weights = torch.softmax(top_logits / temperature, dim=-1)
        else:
            weights = torch.softmax(logits / temperature, dim=-1).gather(-1, ids)
        return Routing(ids, weights, probs_TE)

    if strategy == "hash":
        ids = _hash_experts(token_ids_T.to(logits.device), E, top_k)
        return Routing(ids, torch.full(ids.shape, 1.0 / top_k, device=logits.device), probs_TE)

    if strategy == "aux-free":
        scores = torch.sigmoid(logits)
        selection = scores if bias_E is None else scores + bias_E.float().detach()
        _, ids = topk_lowest_id(selection, top_k)
        chosen = scores.gather(-1, ids)
        weights = chosen / chosen.sum(-1, keepdim=True)
        return Routing(ids, weights, scores / scores.sum(-1, keepdim=True))

    # expert-choice: every expert takes its C highest-probability tokens (lower token id wins ties)
    per_expert = min(T, capacity(T, top_k, E, 1.0 if capacity_factor is None else capacity_factor))
    _, tokens_EC = topk_lowest_id(probs_TE.t(), per_expert)
    valid_TE = torch.zeros(T, E, dtype=torch.bool, device=logits.device)
    valid_TE.scatter_(0, tokens_EC.t().contiguous(), True)
    ids = torch.arange(E, device=logits.device).expand(T, E).contiguous()
    weights = torch.where(valid_TE, probs_TE, torch.zeros_like(probs_TE))
    return Routing(ids, weights, probs_TE, valid_TE, causal_safe=False)


def expert_counts(routing: Routing) -> torch.Tensor:
    """Assignments per expert before any capacity drop, [E] int64, without a host sync."""
    E = routing.num_experts
    ids = routing.expert_ids_TK.reshape(-1)
    if routing.valid_TK is not None:
        ids = torch.where(routing.valid_TK.reshape(-1), ids, E)
    counts = torch.zeros(E + 1, dtype=torch.int64, device=ids.device)
    counts.scatter_add_(0, ids, torch.ones_like(ids))
    return counts[:E]


def balance_loss(routing: Routing) -> torch.Tensor:
    """Switch balance loss E * sum_i f_i * P_i (multiply by alpha yourself).

    f_i is expert i's share of the assignments before drops (no gradient), P_i the mean router
    probability (gradient to the router). It is 1 under perfect balance, E at total collapse."""
    counts = expert_counts(routing).float()
    f_E = counts / counts.sum().clamp(min=1.0)
    P_E = routing.probs_TE.mean(0)
    return routing.num_experts * (f_E * P_E).sum()


def z_loss(logits_TE: torch.Tensor) -> torch.Tensor:
    """Router z-loss mean(logsumexp(logits)^2) (ST-MoE); multiply by beta yourself."""
    return torch.logsumexp(logits_TE.float(), dim=-1).square().mean()


def jitter(x: torch.Tensor, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Multiplicative router-input noise x * U(1-eps, 1+eps) (Switch); identity when eps is 0."""
    if eps <= 0:
        return x
    noise = torch.rand(x.shape, device=x.device, dtype=torch.float32, generator=generator)
    return x * (1.0 - eps + 2.0 * eps * noise).to(x.dtype)


def update_aux_free_bias(bias_E: torch.Tensor, counts_E: torch.Tensor, gamma: float) -> torch.Tensor:
    """DeepSeek-V3 bias step, outside autograd: b_i += gamma * sign(mean load - load_i).

    Leading dimensions batch independent routers: bias_LE and counts_LE ([layers, E]) update every
    layer in one pass (the mean is over the last dimension)."""
    with torch.no_grad():
        load = counts_E.float()
        return bias_E + gamma * torch.sign(load.mean(-1, keepdim=True) - load)


# ---------------------------------------------------------------------------------------------
# The older tool's semantics (the tool behind the seed README; DESIGN section 2b, issue 14).
# Each factor is one difference from our defaults, selectable alone so that a difference between
# the two sweeps can be assigned to its cause. The routers below return ordinary `Routing`s: plan,
# pack and combine are shared. `probs_TE` is the full softmax (our balance loss, the metrics).

SEED_FACTORS = ("top1_gate", "topk_hard_weights", "hash_key", "expert_choice", "balance_loss")
_SEED_ROUTE_FACTORS = {
    "top1": "top1_gate", "topk-hard": "topk_hard_weights", "hash": "hash_key", "expert-choice": "expert_choice",
}
SEED_EXPERT_CHOICE_MAX_TOKENS = 64  # the older tool caps every expert's pick at 64 tokens
_SEED_HASH_MUL, _SEED_HASH_ADD, _SEED_HASH_STEP = 1315423911, 2654435761, 97


def check_seed_semantics(names) -> tuple[str, ...]:
    """The factor names, validated and in `SEED_FACTORS` order (any case, '-' for '_'); a string is
    one name, "all" every factor. ConfigError on an unknown name."""
    if isinstance(names, str):
        names = (names,)
    chosen = set()
    for name in names:
        key = str(name).strip().lower().replace("-", "_")
        if key == "all":
            chosen.update(SEED_FACTORS)
        elif key in SEED_FACTORS:
            chosen.add(key)
        else:
            raise ConfigError(f"unknown seed-semantics factor {name!r}; choose from {', '.join(SEED_FACTORS)} or all")
    return tuple(f for f in SEED_FACTORS if f in chosen)


def seed_factors_changing(strategy: str) -> frozenset[str]:
    """The older tool's factors that change what `strategy` computes: its own routing factor and the
    balance loss, but not for hash, whose expert choice never reads the router's logits."""
    name = canonical_strategy(strategy)
    return frozenset(filter(None, (_SEED_ROUTE_FACTORS.get(name), None if name == "hash" else "balance_loss")))


def seed_route_factor(strategy: str, seed_semantics: tuple[str, ...]) -> str | None:
    """The factor of `seed_semantics` that changes how `strategy` routes, or None (ours applies)."""
    factor = _SEED_ROUTE_FACTORS.get(canonical_strategy(strategy))
    return factor if factor in check_seed_semantics(seed_semantics) else None


def seed_top1(logits_TE: torch.Tensor, top_k: int = 1, capacity_factor: float | None = None) -> Routing:
    """The older tool's top1: the argmax expert with weight 1. The weight is a constant, so the LM
    loss gives the router no gradient (it learns only from a balance loss that has one)."""
    logits = logits_TE.float()
    _, ids = topk_lowest_id(logits.detach(), 1)
    return Routing(ids, torch.ones(ids.shape, device=logits.device), torch.softmax(logits, dim=-1))


def seed_topk_hard(logits_TE: torch.Tensor, top_k: int, capacity_factor: float | None = None) -> Routing:
    """The older tool's topk-hard: the top-K experts, weight 1 each, so the output is the plain SUM
    of K expert outputs (K times ours). No gradient to the router from the LM loss."""
    logits = logits_TE.float()
    _, ids = topk_lowest_id(logits.detach(), top_k)
    return Routing(ids, torch.ones(ids.shape, device=logits.device), torch.softmax(logits, dim=-1))


def seed_hash_experts(num_tokens: int, num_experts: int, top_k: int, device=None) -> torch.Tensor:
    """[T, K] int64: base = (t * 1315423911 + 2654435761) mod E for row position t (not the token),
    then (base + 97 j) mod E for the j-th choice; repeats an expert when E divides 97 j."""
    t = torch.arange(num_tokens, device=device, dtype=torch.int64)
    # reduced mod E first (same value for t >= 0): inductor's int32 Triton code cannot hold the constants
    base = torch.remainder(
        torch.remainder(t, num_experts) * (_SEED_HASH_MUL % num_experts) + _SEED_HASH_ADD % num_experts, num_experts)
    steps = torch.arange(top_k, device=device, dtype=torch.int64) * _SEED_HASH_STEP
    return torch.remainder(base[:, None] + steps, num_experts)


def seed_hash(logits_TE: torch.Tensor, top_k: int, capacity_factor: float | None = None) -> Routing:
    """The older tool's hash: `seed_hash_experts` of the row positions, weights 1/K; content-agnostic."""
    T, E = logits_TE.shape
    ids = seed_hash_experts(T, E, top_k, logits_TE.device)
    return Routing(ids, torch.full(ids.shape, 1.0 / top_k, device=logits_TE.device),
                   torch.softmax(logits_TE.float(), dim=-1))


def seed_expert_choice_tokens(num_tokens: int, top_k: int, num_experts: int, capacity_factor: float | None) -> int:
    """Tokens each expert picks in the older tool: min(ceil(cf*T*K/E), T, 64), cf 1 when None."""
    per_expert = capacity(num_tokens, top_k, num_experts, 1.0 if capacity_factor is None else capacity_factor)
    return min(per_expert, num_tokens, SEED_EXPERT_CHOICE_MAX_TOKENS)


def seed_expert_choice(logits_TE: torch.Tensor, top_k: int, capacity_factor: float | None = None) -> Routing:
    """The older tool's expert-choice, a token-choice router in the end:

    1. each expert picks its top `seed_expert_choice_tokens` tokens by logit (lower token wins ties);
    2. a token picked by at least one expert takes the top-K of those experts by logit, gates =
       softmax over their logits; a slot no picking expert fills gets gate 0 and the lowest-id
       expert that did not pick the token (it still takes a capacity slot there, as in the older
       tool, whose choice of that expert is unspecified);
    3. a token nobody picked falls back to softk (top-K logits, softmax over them).
    Capacity and drops then apply as for token choice. It ranks the whole batch: not causal."""
    logits = logits_TE.float()
    T, E = logits.shape
    per_expert = seed_expert_choice_tokens(T, top_k, E, capacity_factor)
    _, tokens_EC = topk_lowest_id(logits.detach().t(), per_expert)
    picked_TE = torch.zeros(T, E, dtype=torch.bool, device=logits.device)
    picked_TE.scatter_(0, tokens_EC.t().contiguous(), True)
    chosen = torch.where(picked_TE, logits, torch.full_like(logits, float("-inf")))
    _, chosen_ids = topk_lowest_id(chosen.detach(), top_k)
    _, fallback_ids = topk_lowest_id(logits.detach(), top_k)
    picked_T1 = picked_TE.any(-1, keepdim=True)
    ids = torch.where(picked_T1, chosen_ids, fallback_ids)
    scores = torch.where(picked_T1, chosen, logits).gather(-1, ids)
    weights = torch.softmax(scores, dim=-1)
    return Routing(ids, weights, torch.softmax(logits, dim=-1), causal_safe=False, fallback_T=~picked_T1.squeeze(-1))


def seed_balance_loss(kept_counts_E: torch.Tensor) -> torch.Tensor:
    """The older tool's balance loss sum_i (f_i - 1/E)^2, f_i = expert i's share of the KEPT
    assignments (multiply by alpha yourself). Integer counts: it carries no gradient, so it does not
    balance anything; 0 at perfect balance, 1 - 1/E at total collapse, 0 when nothing was kept."""
    counts = kept_counts_E.detach().float()
    E = counts.shape[0]
    f_E = counts / counts.sum().clamp(min=1.0)
    loss = (f_E - 1.0 / E).square().sum()
    return torch.where(counts.sum() > 0, loss, torch.zeros_like(loss))


def seed_renormalize_kept(seed_factor: str | None, renormalize_kept: bool) -> bool:
    """Whether kept weights are renormalised after drops. The older tool renormalises only routers
    that have gates: never its weight-1 top1 and topk-hard (ours would rescale a topk-hard token
    that lost one of its K slots to a total of K again)."""
    return renormalize_kept and seed_factor not in ("top1_gate", "topk_hard_weights")


SEED_ROUTERS = {
    "top1_gate": seed_top1, "topk_hard_weights": seed_topk_hard, "hash_key": seed_hash,
    "expert_choice": seed_expert_choice,
}


__all__ = [
    "SEED_FACTORS", "STRATEGIES", "Routing", "balance_loss", "canonical_strategy", "capacity", "check_route_args",
    "check_seed_semantics", "expert_counts", "jitter", "route", "seed_balance_loss", "seed_expert_choice",
    "seed_expert_choice_tokens", "seed_factors_changing", "seed_hash", "seed_hash_experts", "seed_renormalize_kept",
    "seed_route_factor", "seed_top1", "seed_topk_hard", "topk_lowest_id", "update_aux_free_bias", "z_loss",
]
