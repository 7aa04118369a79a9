"""Synthetic routing inputs, seeded and reproducible.

Shape legend: T tokens, H hidden, E experts.

| workload   | router logits                                                                 |
|------------|-------------------------------------------------------------------------------|
| `uniform`  | standard normal (the seed's default): every expert equally likely             |
| `zipf`     | log p_i + Gumbel noise with p_i ~ 1/(i+1)^s: top-1 expert i has probability p_i |
| `hot`      | the same with `hot_experts` experts sharing `hot_fraction` of the traffic     |
| `balanced` | round-robin: token t prefers experts (t*K + j) mod E, j = 0..K-1, in that order |
| `stream`   | every token prefers experts 0..K-1, in that order: dropless pack and combine then move their rows in K sequential streams (the roofline's reference for their bytes without the scatter) |
| `file:P`   | logits recorded from a trained router (a [N, E] tensor saved with torch.save), tiled to T rows |
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..routing.validation import ConfigError

WORKLOADS = ("uniform", "zipf", "hot", "balanced", "stream")


@dataclass(frozen=True)
class WorkloadSpec:
    name: str = "uniform"
    zipf_s: float = 1.2
    hot_experts: int = 0  # 0: max(1, E // 16)
    hot_fraction: float = 0.5


def parse_workload(name: str, **options) -> WorkloadSpec:
    if name not in WORKLOADS and not name.startswith("file:"):
        raise ConfigError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)} or file:PATH")
    spec = WorkloadSpec(name, **options)
    if spec.zipf_s <= 0:
        raise ConfigError(f"zipf exponent must be > 0, got {spec.zipf_s}")
    if not 0 < spec.hot_fraction <= 1:
        raise ConfigError(f"hot fraction must be in (0, 1], got {spec.hot_fraction}")
    return spec


def load_recorded_logits(path: str, num_experts: int) -> torch.Tensor:
    """A `file:` workload's float32 logits [N, E], N >= 1, all finite; ConfigError naming the
    problem otherwise (missing, a directory, empty, not a tensor file, wrong shape or dtype).
    Loaded with `weights_only=True`: a pickle that would run code is refused."""
    import os

    where = f"workload file {path!r}"
    if not path:
        raise ConfigError("a file: workload needs a path (file:PATH)")
    if not os.path.exists(path):
        raise ConfigError(f"{where} does not exist")
    if os.path.isdir(path):
        raise ConfigError(f"{where} is a directory, not a tensor file")
    if os.path.getsize(path) == 0:
        raise ConfigError(f"{where} is empty")
    try:
        recorded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a file that is not a safe tensor file
        if "Weights only load failed" in str(e):
            raise ConfigError(f"{where} holds pickled objects besides tensors: refused, loading it could run code") from None
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise ConfigError(f"{where} is not a tensor saved with torch.save ({type(e).__name__}: {first})") from None
    if not isinstance(recorded, torch.Tensor):
        raise ConfigError(f"{where} holds a {type(recorded).__name__}, not a tensor")
    if not recorded.is_floating_point():
        raise ConfigError(f"{where} holds {recorded.dtype} values; router logits must be floating point")
    if recorded.dim() != 2 or recorded.shape[1] != num_experts:
        raise ConfigError(f"recorded logits must be [N, {num_experts}] (N rows, one column per expert), "
                          f"got {tuple(recorded.shape)}")
    if recorded.shape[0] == 0:
        raise ConfigError(f"{where} has zero rows")
    recorded = recorded.float()
    if not bool(torch.isfinite(recorded).all()):
        raise ConfigError(f"{where}: router logits contain NaN or inf")
    return recorded


def _gumbel_logits(popularity_E: torch.Tensor, T: int, gen: torch.Generator) -> torch.Tensor:
    u = torch.rand(T, popularity_E.numel(), generator=gen).clamp_(1e-12, 1 - 1e-7)
    return torch.log(popularity_E)[None, :] - torch.log(-torch.log(u))


def router_logits(spec: WorkloadSpec, num_tokens: int, num_experts: int, top_k: int, seed: int,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Float32 logits [T, E] for a workload, generated on the CPU (same numbers on every device)."""
    T, E = num_tokens, num_experts
    gen = torch.Generator().manual_seed(seed)
    if spec.name == "uniform":
        logits = torch.randn(T, E, generator=gen)
    elif spec.name == "zipf":
        p = 1.0 / torch.arange(1, E + 1, dtype=torch.float64) ** spec.zipf_s
        logits = _gumbel_logits((p / p.sum()).float(), T, gen)
    elif spec.name == "hot":
        n_hot = spec.hot_experts or max(1, E // 16)
        if not 1 <= n_hot < E:
            raise ConfigError(f"hot experts must be between 1 and E-1={E - 1}, got {n_hot}")
        p = torch.full((E,), (1 - spec.hot_fraction) / (E - n_hot))
        p[:n_hot] = spec.hot_fraction / n_hot
        logits = _gumbel_logits(p, T, gen)
    elif spec.name == "balanced":
        logits = 0.01 * torch.randn(T, E, generator=gen)
        t = torch.arange(T)[:, None]
        j = torch.arange(top_k)[None, :]
        logits.scatter_(1, (t * top_k + j) % E, (10.0 - j).float().expand(T, top_k).contiguous())
    elif spec.name == "stream":
        logits = 0.01 * torch.randn(T, E, generator=gen)
        logits[:, :top_k] = 10.0 - torch.arange(top_k, dtype=torch.float32)
    else:
        recorded = load_recorded_logits(spec.name[len("file:"):], E)
        logits = recorded.repeat(math.ceil(T / recorded.shape[0]), 1)[:T]
    return logits.contiguous().to(device)


def hidden_states(num_tokens: int, hidden_dim: int, dtype: torch.dtype, seed: int,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Standard-normal activations [T, H] (never zeros: they hide unwritten outputs)."""
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.randn(num_tokens, hidden_dim, generator=gen).to(device=device, dtype=dtype)


def token_ids(num_tokens: int, seed: int, vocab_size: int = 50257, device: torch.device | str = "cpu") -> torch.Tensor:
    """Random token ids [T] for hash routing."""
    gen = torch.Generator().manual_seed(seed + 2)
    return torch.randint(0, vocab_size, (num_tokens,), generator=gen).to(device)
