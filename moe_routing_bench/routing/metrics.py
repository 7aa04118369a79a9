"""Metric formulas (DESIGN section 4). Names follow the seed README; units are in the names.

Shape legend: T tokens, E experts, K experts per token.

Where the older tool behind the seed README computes another thing under the same name, both are
here, ours under the plain name (DESIGN section 4) and the older tool's with a suffix:
| ours                                   | the older tool's                                        |
|----------------------------------------|---------------------------------------------------------|
| `load_cv`: pre-drop counts             | `load_cv_kept`: kept (post-drop) counts                 |
| `gate_entropy`: full router distribution | `gate_entropy_selected`: the K selected gates          |
Routing-level tensor functions return 0-d tensors and never synchronise the host.
"""
from __future__ import annotations

import torch

GiB = 2**30


def bytes_per_token_strict(top_k: int, hidden_dim: int, dtype_bytes: int, op: str = "pack_combine") -> int:
    """(2 + 2K) * H * bytes for pack + combine; (1 + K) * H * bytes for pack or combine alone.

    Pack reads a token row and writes K rows; combine reads K rows and writes one."""
    per_op = (1 + top_k) * hidden_dim * dtype_bytes
    if op == "pack_combine":
        return 2 * per_op
    if op in ("pack", "combine"):
        return per_op
    raise ValueError(f"unknown op {op!r}")


def bytes_moved_kept(kept_assignments: int, num_tokens: int, hidden_dim: int, dtype_bytes: int, op: str) -> int:
    """Bytes pack or combine must move counting kept rows only: T token rows plus the kept rows."""
    per_op = (num_tokens + kept_assignments) * hidden_dim * dtype_bytes
    return 2 * per_op if op == "pack_combine" else per_op


def bandwidth(num_bytes: float, seconds: float, copy_bytes_per_s: float | None = None) -> dict[str, float]:
    """bw_GiBps (binary), bw_GBps (decimal) and pct_of_copy (vs the copy bandwidth measured in
    the same process, when given)."""
    rate = num_bytes / seconds
    out = {"bw_GiBps": rate / GiB, "bw_GBps": rate / 1e9}
    if copy_bytes_per_s:
        out["pct_of_copy"] = 100.0 * rate / copy_bytes_per_s
    return out


def load_stat_tensors(counts_E: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-expert load before drops, as 0-d tensors (no host sync: usable inside a compiled step):
    load_cv = std/mean (population std), max/mean, empty experts; 0 where no expert has a token."""
    counts = counts_E.float()
    mean = counts.mean()
    std = counts.std(correction=0)
    safe_mean = mean.clamp(min=1e-30)
    zero = torch.zeros_like(mean)
    return {
        "load_mean": mean,
        "load_std": std,
        "load_cv": torch.where(mean > 0, std / safe_mean, zero),
        "load_max_over_mean": torch.where(mean > 0, counts.max() / safe_mean, zero),
        "empty_experts": (counts == 0).sum(),
    }


def drop_rate_tensors(kept_TK: torch.Tensor, valid_TK: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """avg_drop_rate = dropped assignments / assignments; token_drop_rate = tokens with every
    assignment dropped / tokens that had an assignment. 0-d tensors, no host sync."""
    valid = torch.ones_like(kept_TK) if valid_TK is None else valid_TK
    routed = valid.any(-1)
    lost = routed & ~(kept_TK & valid).any(-1)
    return {
        "avg_drop_rate": (valid & ~kept_TK).sum().float() / valid.sum().float().clamp(min=1),
        "token_drop_rate": lost.sum().float() / routed.sum().float().clamp(min=1),
    }


def load_stats(counts_E: torch.Tensor) -> dict[str, float]:
    """`load_stat_tensors` as Python numbers (for records)."""
    return {k: int(v) if k == "empty_experts" else float(v) for k, v in load_stat_tensors(counts_E).items()}


def drop_rates(kept_TK: torch.Tensor, valid_TK: torch.Tensor | None = None) -> dict[str, float]:
    """`drop_rate_tensors` as Python numbers (for records)."""
    return {k: float(v) for k, v in drop_rate_tensors(kept_TK, valid_TK).items()}


def gate_entropy(probs_TE: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of the entropy (nats) of the full router distribution."""
    p = probs_TE.float()
    return -(p * torch.log(p.clamp_min(1e-30))).sum(-1).mean()


def gate_entropy_selected(weights_TK: torch.Tensor, valid_TK: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over tokens of the entropy (nats) of the K selected gates, normalised to sum 1 first
    (slots with `valid_TK` False and zero weights count for nothing; a token without one is 0).

    The older tool's `gate_entropy`, the same value for its softk, hash and expert-choice and 0 for
    top1; for topk-hard it logs 0 (it has no gates) where this gives ln K."""
    w = weights_TK.detach().float().clamp_min(0.0)
    if valid_TK is not None:
        w = torch.where(valid_TK, w, torch.zeros_like(w))
    q = w / w.sum(-1, keepdim=True).clamp_min(1e-30)
    return -(q * torch.log(q.clamp_min(1e-30))).sum(-1).mean()


def mean_combine_weight(gate_TK: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of a token's total combine weight (sum of its kept gates, after drops and
    any renormalisation): 1 for softk without drops, p_max < 1 for Switch top1 (gate down-scaling),
    K for the older tool's topk-hard (an unweighted sum of K expert outputs)."""
    return gate_TK.detach().float().sum(-1).mean()


def mean_top1_prob(probs_TE: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of the largest router probability (1/E uniform ... 1 saturated)."""
    return probs_TE.detach().float().max(-1).values.mean()


def load_cv_tensor(counts_E: torch.Tensor) -> torch.Tensor:
    """std/mean (population std) of per-expert counts, 0 when no expert has any: give pre-drop
    counts for `load_cv`, kept counts for `load_cv_kept` (the older tool's)."""
    return load_stat_tensors(counts_E)["load_cv"]
