"""What every training plot script shares: reading summary cells, saving figures."""
from __future__ import annotations

from pathlib import Path

import moe_routing_bench as mrb


def save_figure(fig, out: str | Path, dpi: int = 130) -> None:
    """Write `fig` to `out` atomically (a reader never sees half a PNG; format from the extension), then close it."""
    import matplotlib.pyplot as plt

    with mrb.atomic_target(out) as tmp:
        fig.savefig(tmp, dpi=dpi, format=Path(out).suffix.lstrip(".") or "png")
    plt.close(fig)


def cell_float(v) -> float | None:
    """A summary CSV cell as a float; None for an empty or non-numeric cell."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return None
