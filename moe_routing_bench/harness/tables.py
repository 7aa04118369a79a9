"""Plain-text tables of benchmark records (every harness command prints through this)."""
from __future__ import annotations

from typing import Sequence

from tabulate import tabulate


def format_table(rows: list[dict], columns: Sequence[str]) -> str:
    """A plain-text table of `columns` (those present); a cache-resident % of copy is marked '*'."""
    columns = [c for c in columns if any(c in r for r in rows)]
    if not rows or not columns:
        return ""

    def cell(r: dict, c: str):
        v = r.get(c)
        if c == "pct_of_copy" and v is not None and r.get("cache_resident"):
            return f"{v:.0f}*"
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
        return "-" if v is None else v

    text = tabulate([[cell(r, c) for c in columns] for r in rows], headers=columns, disable_numparse=True,
                    stralign="right")
    if any(r.get("cache_resident") for r in rows):
        text += ("\n* well above 100% of copy: the data stayed in cache (cache_resident: true), so this is not a "
                 "bandwidth figure")
    return text
