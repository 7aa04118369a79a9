"""Regression gate: is the working tree slower than a base commit on this machine?

    python -m moe_routing_bench.suite.gate --base REF [--threshold 1.2]      # exit 1 on a slowdown
    python -m moe_routing_bench.suite.gate --write-baseline                   # results/baselines/<machine>.json
    python -m moe_routing_bench.suite.gate --against-baseline [--threshold 1.2]

`--base REF` checks REF out into a temporary `git worktree` and starts two worker processes, one
importing `moe_routing_bench` from that worktree and one from the working tree (uncommitted edits
included). Both build the same cases (`moe_routing_bench.bench`: Case, make_inputs,
stage_callables, the functions the CLI, asv and pytest-benchmark time) once, then the gate asks
them in turn, case by case, round after round (the order flips every round), for a
`timing.measure` median. A side's time for a case is the best of its round medians: noise only
ever adds time, so the minimum is the most repeatable statistic on a busy machine. The gate fails
when head / base > threshold for any case (and the difference exceeds --min-delta-us).

Why not `asv continuous`: it builds both commits into virtualenvs, starts a process per parameter
combination and round (each importing torch, on a GPU each creating a CUDA context), and cannot
run in an existing environment, which is all a GPU machine without network has. This gate needs
no build (the package is pure Python; Triton compiles at run time), runs in any environment in
seconds and times exactly what the CLI reports.

Per-GPU baselines: `--write-baseline` stores this machine's medians in
`results/baselines/<machine>.json` (machine = the GPU model, e.g. nvidia-h100-80gb-hbm3, or the CPU
model); `--against-baseline` measures the working tree and compares with that file, for GPU runs
where the base commit cannot be measured in the same session.

Default cases: stages topk, plan, pack, combine and routing_path of the torch backend at
T=1024 H=256 E=16 k=2 on CPU, at DESIGN section 7's T=16384 H=4096 E=128 k=2 on a GPU (bf16,
uniform, seed 17). Exit status: 0 no regression, 1 regression, 2 usage or set-up error.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

STAGES = ("topk", "plan", "pack", "combine", "routing_path")
CPU_SHAPE = dict(num_tokens=1024, hidden_dim=256, num_experts=16, top_k=2)
GPU_SHAPE = dict(num_tokens=16384, hidden_dim=4096, num_experts=128, top_k=2)
BASELINE_DIR = Path("results/baselines")
FALLBACK_THRESHOLD = 1.2  # head/base, where no noise figures say otherwise

def stable_cpu_allocator() -> bool:
    """Fix glibc's mmap and trim thresholds (no dynamic adjustment) in this process.

    With glibc's dynamic threshold a process sometimes stays in a state where every large tensor
    is mmapped and page-faulted afresh: on a 2-core VM 1 process in ~10 timed CPU combine 5x
    slower for its whole life. Fixed thresholds removed that (0 in 26). No-op off glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, 1 << 28)) and bool(libc.mallopt(-1, 1 << 28))  # M_MMAP_, M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False


# The worker runs in a fresh interpreter whose cwd is the tree under test, so `import
# moe_routing_bench` finds that tree's package first. Protocol: one JSON line in, one out.
WORKER = r"""
import ctypes, ctypes.util, json, sys
try:  # stable_cpu_allocator(), inlined: the base tree may not have this module
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _libc.mallopt(-3, 1 << 28), _libc.mallopt(-1, 1 << 28)
except (OSError, AttributeError):
    pass
import moe_routing_bench
if hasattr(moe_routing_bench, "stage_callables"):  # the public API
    bench = timing = moe_routing_bench
    get_backend = moe_routing_bench.get_backend
else:  # commits from before it
    from moe_routing_bench import bench, timing
    from moe_routing_bench.backends import get_backend
import torch
out = sys.stdout
sys.stdout = sys.stderr  # library prints must not corrupt the protocol
config = json.loads(sys.stdin.readline())
fns, devices = [], []
for c in config["cases"]:
    case = bench.Case(**c["case"]).validated()
    if case.device == "cpu":
        torch.set_num_threads(1)
    fns.append(bench.stage_callables(get_backend(c["backend"]), case, bench.make_inputs(case))[c["stage"]])
    devices.append(case.device)
out.write(json.dumps({"package": moe_routing_bench.__file__}) + "\n"); out.flush()
for line in sys.stdin:
    i = json.loads(line)["case"]
    t = timing.measure(fns[i], devices[i], warmup=config["warmup"], iters=config["iters"])
    out.write(json.dumps({"median_s": t.median_s}) + "\n"); out.flush()
"""


@dataclass(frozen=True)
class GateCase:
    stage: str
    backend: str
    case: dict

    @property
    def key(self) -> str:
        c = self.case
        return (f"{self.stage}|{self.backend}|T{c['num_tokens']}-H{c['hidden_dim']}-E{c['num_experts']}"
                f"-k{c['top_k']}|{c['dtype']}|{c['workload']}|{c['device']}")


def default_cases(device: str, stages=STAGES, backends=("torch",), workload: str = "uniform") -> list[GateCase]:
    shape = GPU_SHAPE if device == "cuda" else CPU_SHAPE
    case = dict(shape, dtype="bfloat16", device=device, workload=workload, seed=17)
    return [GateCase(s, b, case) for b in backends for s in stages]


class Worker:
    """A process timing the cases with the `moe_routing_bench` of one source tree."""

    def __init__(self, tree: Path, cases: list[GateCase], warmup: int, iters: int):
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["PYTHONPATH"] = str(tree)
        self.tree = tree
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER], cwd=tree, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._send({"cases": [asdict(c) for c in cases], "warmup": warmup, "iters": iters})

    def _send(self, msg: dict) -> None:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()

    def _receive(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the worker for {self.tree} exited (status {self.proc.wait()}); see its stderr above")
        return json.loads(line)

    def ready(self) -> None:
        package = Path(self._receive()["package"]).resolve()
        if self.tree.resolve() not in package.parents:
            raise RuntimeError(f"worker for {self.tree} imported {package}, not the tree under test")

    def median_s(self, index: int) -> float:
        self._send({"case": index})
        return self._receive()["median_s"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def measure_trees(trees: dict[str, Path], cases: list[GateCase], rounds: int, warmup: int,
                  iters: int) -> dict[str, list[float]]:
    """{side: [best-of-rounds median seconds per case]}, the sides interleaved case by case."""
    workers = {name: Worker(tree, cases, warmup, iters) for name, tree in trees.items()}
    try:
        for w in workers.values():
            w.ready()
        samples = {name: [[] for _ in cases] for name in workers}
        order = list(workers)
        for r in range(rounds):
            for i in range(len(cases)):
                for name in (order if r % 2 == 0 else order[::-1]):
                    samples[name][i].append(workers[name].median_s(i))
        return {name: [min(s) for s in per_case] for name, per_case in samples.items()}
    finally:
        for w in workers.values():
            w.close()


@dataclass
class Comparison:
    key: str
    base_us: float
    head_us: float

    @property
    def ratio(self) -> float:
        return self.head_us / self.base_us

    def regressed(self, threshold: float, min_delta_us: float) -> bool:
        return self.ratio > threshold and self.head_us - self.base_us > min_delta_us


def compare(keys: list[str], base_s: list[float], head_s: list[float]) -> list[Comparison]:
    return [Comparison(k, b * 1e6, h * 1e6) for k, b, h in zip(keys, base_s, head_s)]


def threshold_of(thresholds: float | dict[str, float], key: str) -> float:
    """The ratio threshold of a case: one for all, or per "stage|backend", else per "stage" (a case
    key starts with its stage and backend)."""
    if isinstance(thresholds, float):
        return thresholds
    stage, backend = key.split("|")[:2]
    return thresholds.get(f"{stage}|{backend}", thresholds.get(stage, FALLBACK_THRESHOLD))


def report(rows: list[Comparison], thresholds: float | dict[str, float], min_delta_us: float, base_label: str) -> bool:
    """Print a table; True when some case regressed."""
    width = max(len(r.key) for r in rows)
    print(f"{'case':<{width}}  {base_label:>12}  {'head us':>12}  {'ratio':>6}  {'limit':>6}")
    bad = False
    for r in rows:
        limit = threshold_of(thresholds, r.key)
        flag = r.regressed(limit, min_delta_us)
        bad |= flag
        print(f"{r.key:<{width}}  {r.base_us:12.1f}  {r.head_us:12.1f}  {r.ratio:6.3f}  {limit:6.2f}"
              + ("  REGRESSION" if flag else ""))
    print(f"{'FAIL: slower than the limit' if bad else 'ok: within the limits'} "
          f"(head = working tree, base = {base_label.split()[0]})")
    return bad


def git_root(path: Path) -> Path:
    out = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=path, capture_output=True, text=True)
    if out.returncode != 0:
        raise ValueError(f"{path} is not inside a git repository")
    return Path(out.stdout.strip())


def gate_against_base(repo: Path, base: str, cases: list[GateCase], *, rounds: int, warmup: int,
                      iters: int) -> list[Comparison]:
    rev = subprocess.run(["git", "rev-parse", "--verify", f"{base}^{{commit}}"], cwd=repo, capture_output=True,
                         text=True)
    if rev.returncode != 0:
        raise ValueError(f"unknown base revision {base!r}: {rev.stderr.strip()}")
    tmp = Path(tempfile.mkdtemp(prefix="moe-gate-"))
    worktree = tmp / "base"
    subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(worktree), rev.stdout.strip()], cwd=repo,
                   check=True)
    try:
        if not any((worktree / "moe_routing_bench" / f).exists() for f in ("bench.py", "harness/cases.py")):
            raise ValueError(f"{base} predates moe_routing_bench's stage cases: nothing to compare")
        medians = measure_trees({"base": worktree, "head": repo}, cases, rounds, warmup, iters)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=repo, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return compare([c.key for c in cases], medians["base"], medians["head"])


def baseline_path(device: str) -> Path:
    from .store import default_machine_name, local_gpu

    gpu = local_gpu()["gpu"] if device == "cuda" else None
    return BASELINE_DIR / f"{default_machine_name(gpu)}.json"


def write_baseline(path: Path, repo: Path, cases: list[GateCase], *, rounds: int, warmup: int, iters: int) -> dict:
    from ..harness import records as store

    medians = measure_trees({"head": repo}, cases, rounds, warmup, iters)["head"]
    env = store.environment(cases[0].case["device"])
    doc = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "environment": env,
           "method": f"best of {rounds} rounds of timing.measure medians (warmup {warmup}, iters {iters})",
           "cases": {c.key: {**asdict(c), "median_us": m * 1e6} for c, m in zip(cases, medians)}}
    store.write_atomic(path, json.dumps(doc, indent=2) + "\n")
    return doc


def gate_against_baseline(path: Path, repo: Path, cases: list[GateCase], *, rounds: int, warmup: int,
                          iters: int) -> list[Comparison]:
    if not path.exists():
        raise ValueError(f"no baseline {path}; record one with --write-baseline on this machine")
    stored = json.loads(path.read_text())["cases"]
    cases = [c for c in cases if c.key in stored]
    if not cases:
        raise ValueError(f"{path} holds none of the requested cases")
    head = measure_trees({"head": repo}, cases, rounds, warmup, iters)["head"]
    return compare([c.key for c in cases], [stored[c.key]["median_us"] / 1e6 for c in cases], head)


def default_thresholds(repo: Path, device: str) -> dict[str, float]:
    """On a GPU: per stage and backend, 1 + the threshold measured there for the stage's track_*_us
    benchmark (results/noise/<machine>.json; those benchmarks time the same `measure` median as this gate).
    Else, or for a stage without figures: 1.2 (the CPU figures are of asv's timer in separate
    processes, not of this gate's best-of-rounds)."""
    from .store import default_machine_name, local_gpu
    from .verdict import stage_thresholds

    if device == "cpu":
        return {}
    import torch

    if not torch.cuda.is_available():
        return {}
    measured = stage_thresholds(default_machine_name(local_gpu()["gpu"]), Path(repo) / "results" / "noise", STAGES)
    return {key: 1.0 + t for key, t in measured.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m moe_routing_bench.suite.gate", description=__doc__.split("\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--base", help="git revision to compare the working tree with (e.g. HEAD, main, HEAD~1)")
    mode.add_argument("--against-baseline", action="store_true", help="compare with results/baselines/<machine>.json")
    mode.add_argument("--write-baseline", action="store_true", help="record results/baselines/<machine>.json")
    ap.add_argument("--threshold", type=float, default=None,
                    help="fail when head/base exceeds this for any case (default per stage: 1 + this machine's "
                         "threshold from results/noise/<machine>.json, tools/asv_runs.py noise; 1.2 without figures)")
    ap.add_argument("--min-delta-us", type=float, default=0.0, help="and head - base exceeds this many us")
    ap.add_argument("--baseline", type=Path, default=None, help="baseline file (default per machine)")
    ap.add_argument("--repo", type=Path, default=Path.cwd(), help="repository (default: the current one)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--backend", default="torch", help="comma-separated backends")
    ap.add_argument("--workload", default="uniform")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--json", type=Path, default=None, help="also write the comparison here (threshold, rows)")
    args = ap.parse_args(argv)
    try:
        if args.threshold is not None and args.threshold <= 1.0:
            raise ValueError(f"--threshold must be > 1, got {args.threshold}")
        stages = tuple(s for s in args.stages.split(",") if s)
        unknown = set(stages) - set(STAGES)
        if unknown:
            raise ValueError(f"unknown stage(s) {sorted(unknown)}; choose from {', '.join(STAGES)}")
        device = args.device
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        repo = git_root(args.repo) if args.base else args.repo.resolve()
        cases = default_cases(device, stages, tuple(b for b in args.backend.split(",") if b), args.workload)
        timing = dict(rounds=args.rounds, warmup=args.warmup, iters=args.iters)
        if args.base:
            rows = gate_against_base(repo, args.base, cases, **timing)
            label = f"{args.base} us"
        else:
            path = args.baseline or repo / baseline_path(device)
            if args.write_baseline:
                doc = write_baseline(path, repo, cases, **timing)
                for key, c in doc["cases"].items():
                    print(f"{key}  {c['median_us']:.1f} us")
                print(f"wrote {path}")
                return 0
            rows = gate_against_baseline(path, repo, cases, **timing)
            label = "baseline us"
    except (ValueError, RuntimeError) as e:
        print(f"regression: error: {e}", file=sys.stderr)
        return 2
    thresholds = args.threshold if args.threshold is not None else default_thresholds(repo, device)
    bad = report(rows, thresholds, args.min_delta_us, label)
    if args.json:
        from ..harness.records import write_atomic

        doc = {"min_delta_us": args.min_delta_us, "regressed": bad, "base": label,
               "rows": [{**asdict(r), "ratio": r.ratio, "threshold": threshold_of(thresholds, r.key),
                         "regressed": r.regressed(threshold_of(thresholds, r.key), args.min_delta_us)} for r in rows]}
        write_atomic(args.json, json.dumps(doc, indent=2) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
