#!/usr/bin/env python3
"""Time one case with the CLI and with the pytest-benchmark fixture on this machine; print both medians.

    python tools/gpu_compare_pytest_cli.py [--stage routing_path] [--backend torch] [--tolerance 0.10]

The case is the benchmark fixture's (tests/benchfix.py): on a GPU DESIGN section 7's T=16384
H=4096 E=128 k=2, bf16, uniform, seed 17; on CPU the small case. The CLI (`moe-bench
bench-routing`) and the fixture both time with `moe_routing_bench.measure` (CUDA events around
each call after an L2 flush; perf_counter on CPU): this checks that the fixture times the same
case the same way. Exit 1 when the medians differ by more than the tolerance (relative to the CLI's). Writes the CLI's JSONL and pytest-benchmark's
JSON into $OUT (or a temporary folder) for asv_store.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from moe_routing_bench.harness.cases import STAGES  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stage", default="routing_path", choices=STAGES)
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--tolerance", type=float, default=0.10)
    args = ap.parse_args()
    from benchfix import default_case  # the fixture's case on this machine

    case = default_case()
    out = Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="compare-"))
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

    jsonl = out / "compare_cli.jsonl"
    jsonl.unlink(missing_ok=True)
    cli = [sys.executable, "-m", "moe_routing_bench.cli", "bench-routing", "--backend", args.backend,
           "--num-tokens", str(case.num_tokens), "--hidden-dim", str(case.hidden_dim),
           "--num-experts", str(case.num_experts), "--top-k", str(case.top_k), "--dtype", case.dtype,
           "--device", case.device, "--workload", case.workload, "--seed", str(case.seed),
           "--warmup", "10", "--iters", "100", "--out", str(jsonl)]
    subprocess.run(cli, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    (rec,) = [r for r in map(json.loads, jsonl.read_text().splitlines()) if r["name"] == args.stage]
    cli_us = rec["median_us"]

    report = out / "compare_pytest.json"
    test = f"tests/test_bench_fixtures.py::test_stage[{args.stage}-{args.backend}]"
    subprocess.run([sys.executable, "-m", "pytest", test, "-q", "-p", "no:cacheprovider", "--benchmark-only",
                    f"--benchmark-json={report}"], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    (bench,) = json.loads(report.read_text())["benchmarks"]
    pytest_us = bench["stats"]["median"] * 1e6

    ratio = pytest_us / cli_us
    print(f"case: {args.stage} {args.backend} T={case.num_tokens} H={case.hidden_dim} E={case.num_experts} "
          f"k={case.top_k} {case.dtype} {case.workload} on {rec['device_name']}")
    how = "CUDA events" if case.device == "cuda" else "perf_counter"
    print(f"CLI (moe-bench bench-routing), measure, {how:<12} median {cli_us:10.1f} us")
    print(f"pytest-benchmark (benchfix),   measure, {how:<12} median {pytest_us:10.1f} us")
    ok = abs(ratio - 1) <= args.tolerance
    print(f"pytest / CLI = {ratio:.3f}: {'agree' if ok else 'DISAGREE'} within {args.tolerance:.0%}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
