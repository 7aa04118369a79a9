"""Compare two commits in the result store and print a verdict table to paste into a pull request.

    python -m moe_routing_bench.suite.verdict BASE HEAD [--machine M] [-b REGEX] [--fail]
    python -m moe_routing_bench.suite.verdict --pytest-threshold [--backend B] [--machine M]   # e.g. "median:7%"

For every benchmark combination measured at both commits on the machine (same environment), one
row: the base and head medians, their spread (interquartile range / median, where asv recorded
quartiles), the ratio head / base, and the verdict. The threshold of a benchmark is the one asv's
step detection uses: the largest `regressions_thresholds` entry of asv.conf.json whose regex
matches the benchmark name (those entries come from the measured noise, tools/asv_runs.py noise; 5%,
asv's default, where none matches). A row is "slower" when ratio > 1 + threshold, "faster" when
ratio < 1 / (1 + threshold), else "same". Lower is better for every benchmark of the suites
(times, microseconds, bytes); exported higher-is-better metrics are marked "(higher is better)".
`--fail`: exit 1 when a row is slower. `--pytest-threshold` prints the fail threshold for
`pytest --benchmark-compare-fail` derived from the same noise figures (the largest threshold of
the machine's stage benchmarks).
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from .store import DEFAULT_RESULTS_DIR, default_machine_name, resolve_commit, safe_name

DEFAULT_THRESHOLD = 0.05  # asv's own default step threshold
NOISE_DIR = Path("results/noise")
HIGHER_IS_BETTER = re.compile(r"tokens_per_s|tflops|gbps|gibps")


def load_thresholds(config: Path = Path("asv.conf.json")) -> dict[str, float]:
    """asv.conf.json's `regressions_thresholds` ({regex: relative threshold})."""
    import json5

    return {k: float(v) for k, v in json5.loads(Path(config).read_text()).get("regressions_thresholds", {}).items()}


def threshold_for(name: str, thresholds: dict[str, float]) -> float:
    """asv's rule: the largest threshold whose regex matches the name (re.match), else 5%."""
    matching = [t for regex, t in thresholds.items() if re.match(regex, name)]
    return max(matching) if matching else DEFAULT_THRESHOLD


@dataclass(frozen=True)
class Row:
    benchmark: str
    env: str
    base: float
    head: float
    base_spread: float | None
    head_spread: float | None
    threshold: float

    @property
    def ratio(self) -> float:
        if self.head == self.base:
            return 1.0
        return self.head / self.base if self.base else math.inf

    @property
    def verdict(self) -> str:
        higher = bool(HIGHER_IS_BETTER.search(self.benchmark))
        slower = self.ratio > 1 + self.threshold
        faster = self.ratio < 1 / (1 + self.threshold)
        if higher:
            slower, faster = faster, slower
        return "slower" if slower else "faster" if faster else "same"


def _rows_of(results_dir: Path, machine: str, commit: str) -> dict[tuple[str, str], tuple[float, float | None]]:
    """{(benchmark(params), env): (value, spread)} of one commit's results files on the machine."""
    from asv.results import iter_results_for_machine_and_hash

    out = {}
    for result in iter_results_for_machine_and_hash(str(results_dir), machine, commit):
        for key in result.get_all_result_keys():
            params = result.get_result_params(key)
            values = result.get_result_value(key, params)
            stats = result.get_result_stats(key, params)
            combos = itertools.product(*params) if params else [()]
            for combo, value, stat in zip(combos, values, stats):
                if value is None or (isinstance(value, float) and not math.isfinite(value)):
                    continue
                spread = None
                if stat and stat.get("q_25") is not None and stat.get("q_75") is not None and value:
                    spread = (stat["q_75"] - stat["q_25"]) / value
                name = f"{key}({', '.join(combo)})" if combo else key
                out[(name, result.env_name)] = (float(value), spread)
    return out


def compare(results_dir: Path, machine: str, base: str, head: str, thresholds: dict[str, float],
            bench: str | None = None) -> list[Row]:
    rows_base, rows_head = _rows_of(results_dir, machine, base), _rows_of(results_dir, machine, head)
    rows = []
    for key in sorted(rows_base.keys() & rows_head.keys()):
        name, env = key
        if bench and not re.search(bench, name):
            continue
        (b, bs), (h, hs) = rows_base[key], rows_head[key]
        rows.append(Row(name, env, b, h, bs, hs, threshold_for(name, thresholds)))
    return rows


def table(rows: list[Row]) -> str:
    from tabulate import tabulate

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    body = [[r.benchmark + (" (higher is better)" if HIGHER_IS_BETTER.search(r.benchmark) else ""),
             f"{r.base:.4g}", pct(r.base_spread), f"{r.head:.4g}", pct(r.head_spread), f"{r.ratio:.3f}",
             f"{100 * r.threshold:.0f}%", r.verdict] for r in rows]
    return tabulate(body, headers=["benchmark", "base", "spread", "head", "spread", "ratio", "threshold", "verdict"],
                    tablefmt="github")


def pytest_threshold(machine: str, noise_dir: Path = NOISE_DIR, backend: str | None = None) -> str:
    """`median:N%` for --benchmark-compare-fail, from the machine's noise figures (10% without them):
    the largest stage threshold, or the largest of one backend's stages (for `pytest -k BACKEND`:
    pytest-benchmark applies one threshold to every benchmark it compares)."""
    path = noise_dir / f"{safe_name(machine, 'machine name')}.json"
    if not path.exists():
        return "median:10%"
    if backend is None:
        return json.loads(path.read_text())["pytest_benchmark_compare_fail"]
    from .gate import STAGES

    found = [t for key, t in stage_thresholds(machine, noise_dir, STAGES).items() if key.endswith(f"|{backend}")]
    if not found:
        raise ValueError(f"no noise figures for backend {backend!r} on {machine}")
    return f"median:{round(100 * max(found))}%"


# the asv benchmark timing each gate stage the same way (`measure` median, no capacity)
STAGE_BENCHMARKS = {"topk": "bench_topk.TopK.track_topk_us", "plan": "bench_plan.Plan.track_plan_us",
                    "pack": "bench_pack.Pack.track_pack_us", "combine": "bench_combine.Combine.track_combine_us",
                    "routing_path": "bench_routing.RoutingPath.track_routing_path_us"}


def stage_thresholds(machine: str, noise_dir: Path, stages) -> dict[str, float]:
    """Relative thresholds of the stages' benchmarks (STAGE_BENCHMARKS) from the machine's noise
    figures: "stage|backend" per backend measured and "stage" the benchmark's largest ({} without
    figures)."""
    path = noise_dir / f"{safe_name(machine, 'machine name')}.json"
    if not path.exists():
        return {}
    benchmarks = json.loads(path.read_text())["benchmarks"]
    out: dict[str, float] = {}
    for stage in stages:
        b = benchmarks.get(STAGE_BENCHMARKS[stage])
        if b is not None:
            out[stage] = b["threshold"]
            out.update({f"{stage}|{k}": v for k, v in b.get("by_backend", {}).items()})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m moe_routing_bench.suite.verdict",
                                 description="verdict table of two commits in the asv result store")
    ap.add_argument("base", nargs="?")
    ap.add_argument("head", nargs="?")
    ap.add_argument("--machine", default=None, help="machine in the store (default: this machine's name)")
    ap.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR)
    ap.add_argument("--config", type=Path, default=Path("asv.conf.json"), help="where the thresholds are")
    ap.add_argument("-b", "--bench", default=None, help="regex on benchmark names")
    ap.add_argument("--fail", action="store_true", help="exit 1 when a benchmark is slower")
    ap.add_argument("--pytest-threshold", action="store_true", help="print the --benchmark-compare-fail value")
    ap.add_argument("--backend", default=None, help="with --pytest-threshold: that backend's stages only")
    args = ap.parse_args(argv)
    try:
        machine = safe_name(args.machine or default_machine_name(), "machine name")
        if args.pytest_threshold:
            print(pytest_threshold(machine, backend=args.backend))
            return 0
        if not (args.base and args.head):
            raise ValueError("give BASE and HEAD commits")
        base, head = resolve_commit(args.base)[0], resolve_commit(args.head)[0]
        rows = compare(args.results_dir, machine, base, head, load_thresholds(args.config), args.bench)
    except (ValueError, OSError) as e:
        print(f"verdict: error: {e}", file=sys.stderr)
        return 2
    if not rows:
        print(f"verdict: error: no benchmark measured at both {base[:8]} and {head[:8]} on {machine}", file=sys.stderr)
        return 2
    print(f"{machine}: {head[:8]} vs {base[:8]}\n")
    print(table(rows))
    slower = [r for r in rows if r.verdict == "slower"]
    print(f"\n{len(slower)} slower, {sum(r.verdict == 'faster' for r in rows)} faster, "
          f"{sum(r.verdict == 'same' for r in rows)} within noise")
    return 1 if args.fail and slower else 0


if __name__ == "__main__":
    sys.exit(main())
