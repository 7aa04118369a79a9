#!/usr/bin/env python3
"""Publish the dashboard (`asv publish`) and take headless-Chromium screenshots of its first views.

    python tools/dashboard_screenshots.py [--out docs] [--config asv.conf.json]

Writes docs/dashboard_gpu_pack.png (pack on the H200, x axis = shape: a bar per backend),
docs/dashboard_gpu_routing_path.png (the GPU routing path: a series per backend and machine),
docs/dashboard_gpu_history_layer.png (the layer's forward + backward over the H200 history), docs/dashboard_training.png
(a training metric: one series per router), docs/dashboard_router_study.png,
docs/dashboard_router_attribution.png, docs/dashboard_router_recipe_parts.png and
docs/dashboard_router_study_long.png (issue 14's router study: (a) vs (b), the attribution grid, our
recipe part by part, the longer runs) and docs/dashboard_regressions.png. Each page but the first is
opened as a user opens it: the benchmark's own URL with no parameters in it, so what is shown is
asv's first view.
Needs chromium (`apt-get install -y --no-install-recommends chromium`); uses tests/browser.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import browser  # noqa: E402  (tests/browser.py)

from moe_routing_bench.suite import dashboard  # noqa: E402

PAGES = {
    # a view chosen by URL: bars per backend over the shapes, on the H200 (asv's x-axis control)
    "dashboard_gpu_pack.png": "bench_pack.Pack.track_pack_us?x-axis=shape&machine=nvidia-h200",
    "dashboard_gpu_routing_path.png": "bench_routing.RoutingPath.track_routing_path_us",
    # the H200 history, a line per backend: the layer (54e4038 made the fused expert path the default)
    "dashboard_gpu_history_layer.png": "bench_layer.MoELayer.track_forward_backward_us?machine=nvidia-h200",
    "dashboard_training.png": "exported.Training.track_best_val_loss?x-axis=router&machine=nvidia-h200",
    # issue 14's study on the H200, a bar per router: (a) the older tool's routers and recipe beside
    # (b) ours; (c) one factor at a time; our recipe's parts; (b) at 1200 and 4800 steps
    "dashboard_router_study.png": "exported.RouterStudy.track_final_val_ppl?x-axis=router&machine=nvidia-h200",
    "dashboard_router_attribution.png":
        "exported.RouterAttribution.track_final_val_ppl?x-axis=router&machine=nvidia-h200",
    "dashboard_router_recipe_parts.png":
        "exported.RouterRecipeParts.track_final_val_ppl?x-axis=router&machine=nvidia-h200",
    "dashboard_router_study_long.png": "exported.RouterStudyLong.track_final_val_ppl?x-axis=router&machine=nvidia-h200",
    "dashboard_regressions.png": "regressions",
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    ap.add_argument("--config", type=Path, default=ROOT / "asv.conf.json")
    ap.add_argument("--no-publish", action="store_true", help="use the html dir as it is")
    args = ap.parse_args(argv)
    html = dashboard.html_dir_of(args.config) if args.no_publish else dashboard.publish(args.config)
    with dashboard.served(html) as url:
        for name, page in PAGES.items():
            browser.screenshot(f"{url}index.html#{page}", args.out / name, wait_ms=10000)
            print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
