"""The seed README's spellings -> this project's: backend names and flags (one table for the CLI and train/)."""
from __future__ import annotations

SEED_BACKEND_NAMES = {"torch_soft": "torch", "torch_hard": "torch"}
SEED_FLAG_ALIASES = {
    "--tokens": "--num-tokens", "--hidden": "--hidden-dim", "--experts": "--num-experts", "--topk": "--top-k",
    "--output": "--out", "--impl": "--backend", "--impl-topk": "--backend", "--soft_normalize": "--soft-normalize",
}


def spellings(flag: str) -> list[str]:
    """`flag` and the seed's spellings of it (SEED_FLAG_ALIASES): what the parser accepts."""
    return [flag, *(seed for seed, ours in SEED_FLAG_ALIASES.items() if ours == flag)]
