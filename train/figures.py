"""Saving the training plots: one way for every plot script."""
from __future__ import annotations

from pathlib import Path

import moe_routing_bench as mrb


def save_figure(fig, out: str | Path, dpi: int = 130) -> None:
    """Write `fig` to `out` atomically (a reader never sees half a PNG; format from the extension), then close it."""
    import matplotlib.pyplot as plt

    with mrb.atomic_target(out) as tmp:
        fig.savefig(tmp, dpi=dpi, format=Path(out).suffix.lstrip(".") or "png")
    plt.close(fig)
