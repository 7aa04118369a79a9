#!/usr/bin/env python3
"""Plant a known slowdown in the triton backend's pack or combine (issue 13: can the suite see it?).

    python tools/plant_slowdown.py pack 0.05 [--backend triton|torch]   # on a THROWAWAY branch

Appends a wrapper to the backend's module (triton: moe_routing_bench/routing/backends/triton_ops.py;
torch, for a check on a CPU: moe_routing_bench/routing/dispatch.py): after the real kernel, one
more pass over FRACTION of the output rows (`out[:n].mul_(1)`: reads and writes those rows, as the
kernel itself does once), so the extra time is about FRACTION of the stage's memory traffic plus one
kernel launch (a few microseconds: noticeable at 3% of a ~140 us pack). The result is unchanged.
The planted slowdown actually reached is whatever the measurement says: compare the planted commit
with its parent (`python -m moe_routing_bench.suite.verdict PARENT PLANTED --machine nvidia-h200`).
Never commit this on main.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"triton": ROOT / "moe_routing_bench" / "routing" / "backends" / "triton_ops.py",
           "torch": ROOT / "moe_routing_bench" / "routing" / "dispatch.py"}

WRAPPER = '''

# --- planted by tools/plant_slowdown.py: {stage} does {fraction:.0%} more row traffic (throwaway branch only)
_planted_{stage} = {stage}


def {stage}(*args, **kwargs):
    out = _planted_{stage}(*args, **kwargs)
    rows = max(1, int({fraction} * out.shape[0]))
    out[:rows].mul_(1)
    return out
'''


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=["pack", "combine"])
    ap.add_argument("fraction", type=float, help="extra traffic as a fraction of the output rows, e.g. 0.05")
    ap.add_argument("--backend", choices=sorted(TARGETS), default="triton")
    args = ap.parse_args(argv)
    target = TARGETS[args.backend]
    if not 0 < args.fraction <= 1:
        ap.error("fraction must be in (0, 1]")
    branch = subprocess.run(["git", "branch", "--show-current"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    if branch in ("main", "master"):
        print("plant_slowdown: refusing to plant on main; use a throwaway branch", file=sys.stderr)
        return 2
    text = target.read_text()
    if "planted by tools/plant_slowdown.py" in text:
        print(f"plant_slowdown: {target} already has a planted slowdown", file=sys.stderr)
        return 2
    target.write_text(text + WRAPPER.format(stage=args.stage, fraction=args.fraction))
    print(f"planted: {args.backend} {args.stage} +{args.fraction:.0%} of its row traffic (+1 launch) in {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
