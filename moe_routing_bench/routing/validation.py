"""Input validation shared by every entry point.

`ConfigError` is what the CLI turns into a one-line message and a non-zero exit.
"""
from __future__ import annotations

import torch

DTYPES = {
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
}


class ConfigError(ValueError):
    """A bad argument: wrong shape, unknown name, out-of-range size."""


def check_positive(**sizes: int) -> None:
    for name, value in sizes.items():
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def check_top_k(k: int, num_experts: int) -> None:
    check_positive(num_experts=num_experts)
    if not isinstance(k, int) or not 1 <= k <= num_experts:
        raise ConfigError(f"top-k must be between 1 and num_experts={num_experts}, got {k!r}")


def check_capacity_factor(capacity_factor: float | None) -> None:
    if capacity_factor is not None and not capacity_factor > 0:
        raise ConfigError(f"capacity factor must be > 0 (or None for dropless), got {capacity_factor!r}")


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown dtype {name!r}; choose from {sorted(set(DTYPES))}") from None


def check_logits(logits_TE: torch.Tensor) -> None:
    """Reject logits that are not a finite float [T, E] matrix. Synchronises the host: not for hot paths."""
    if logits_TE.dim() != 2:
        raise ConfigError(f"router logits must be [tokens, experts], got shape {tuple(logits_TE.shape)}")
    if not logits_TE.is_floating_point():
        raise ConfigError(f"router logits must be floating point, got {logits_TE.dtype}")
    if not bool(torch.isfinite(logits_TE).all()):
        raise ConfigError("router logits contain NaN or inf")
