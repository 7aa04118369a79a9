"""Input validation shared by every entry point and every backend.

`ConfigError` is what the CLI turns into a one-line message and exit status 2.

The invalid-input policy (the same on every backend: torch, compile, triton, the interpreter):
- Shapes and dtypes are checked up front on every call (`check_*_shape` functions: metadata only,
  no host synchronisation), so every backend rejects the same calls with the same ConfigError.
- Values are checked only in *checked mode* (`checked=True` on `route` and `build_plan`; the CLI,
  the benchmark cases and the tests use it outside timed regions): NaN or infinite logits, bias or
  gate weights, and expert ids outside [0, E), raise ConfigError. Those checks read the values, so
  they synchronise the host; the unchecked hot path makes no promise for such inputs (backends
  differ: torch ranks NaN highest, the Triton kernel skips it).
- An empty batch (T = 0) is valid everywhere and gives empty outputs of the right shape.
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
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def check_top_k(k: int, num_experts: int) -> None:
    check_positive(num_experts=num_experts)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= num_experts:
        raise ConfigError(f"top-k must be between 1 and num_experts={num_experts}, got {k!r}")


def check_capacity_factor(capacity_factor: float | None) -> None:
    if capacity_factor is None:
        return
    if not isinstance(capacity_factor, (int, float)) or not 0 < capacity_factor < float("inf"):
        raise ConfigError(f"capacity factor must be a finite number > 0 (or None for dropless), got {capacity_factor!r}")


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[name.lower()]
    except (KeyError, AttributeError):
        raise ConfigError(f"unknown dtype {name!r}; choose from {sorted(set(DTYPES))}") from None


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def check_logits_shape(logits_TE: torch.Tensor) -> None:
    """Router logits: a floating-point [T, E] matrix with E >= 1 (T = 0 allowed). No host sync."""
    if not isinstance(logits_TE, torch.Tensor) or logits_TE.dim() != 2:
        shape = _shape(logits_TE) if isinstance(logits_TE, torch.Tensor) else type(logits_TE).__name__
        raise ConfigError(f"router logits must be [tokens, experts], got shape {shape}")
    if not logits_TE.is_floating_point():
        raise ConfigError(f"router logits must be floating point, got {logits_TE.dtype}")


def check_vector(name: str, t: torch.Tensor | None, length: int, device: torch.device | None, *, integer: bool) -> None:
    """An optional [length] tensor (on `device` unless None), integer or floating. No host sync."""
    if t is None:
        return
    if not isinstance(t, torch.Tensor) or _shape(t) != (length,):
        raise ConfigError(f"{name} must have shape ({length},), got {_shape(t) if isinstance(t, torch.Tensor) else t!r}")
    if integer == t.is_floating_point() or t.dtype == torch.bool:
        raise ConfigError(f"{name} must be {'an integer' if integer else 'a floating-point'} tensor, got {t.dtype}")
    if device is not None and t.device != device:
        raise ConfigError(f"{name} is on {t.device} but the router logits are on {device}")


def check_rows(name: str, t: torch.Tensor, rows: int, device: torch.device) -> None:
    """A floating-point [rows, H] matrix on `device` (pack's x_TH, combine's y_RH). No host sync."""
    if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[0] != rows:
        shape = _shape(t) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ConfigError(f"{name} must be [{rows}, hidden] for this plan, got shape {shape}")
    if not t.is_floating_point():
        raise ConfigError(f"{name} must be floating point, got {t.dtype}")
    if t.device != device:
        raise ConfigError(f"{name} is on {t.device} but the plan is on {device}")


def check_finite(name: str, t: torch.Tensor | None) -> None:
    """Checked mode: every value finite. Synchronises the host: never on a hot path."""
    if t is not None and t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
        raise ConfigError(f"{name} contain NaN or inf")


def check_expert_ids(expert_ids_TK: torch.Tensor, valid_TK: torch.Tensor | None, num_experts: int) -> None:
    """Checked mode: every (valid) expert id in [0, num_experts). Synchronises the host."""
    ids = expert_ids_TK if valid_TK is None else expert_ids_TK[valid_TK]
    if ids.numel() and not bool(((ids >= 0) & (ids < num_experts)).all()):
        bad = ids[(ids < 0) | (ids >= num_experts)][0].item()
        raise ConfigError(f"expert id {bad} is out of range for {num_experts} experts")


def check_logits(logits_TE: torch.Tensor) -> None:
    """Reject logits that are not a finite float [T, E] matrix. Synchronises the host: not for hot paths."""
    check_logits_shape(logits_TE)
    check_finite("router logits", logits_TE)
