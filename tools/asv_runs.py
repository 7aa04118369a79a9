#!/usr/bin/env python3
"""asv over a list of commits and repeated asv runs: GPU history (no network, no git history there) and noise.

    python tools/asv_runs.py pack COMMIT...              # here: .gl/commits/<hash>.tar (+ date) to carry over
    python tools/asv_runs.py history COMMIT... --bundle $OUT/asv_results.tar
    python tools/asv_runs.py noise --runs 10 [--bench REGEX]   # results/noise/<machine>.json, asv.conf.json

`history` measures each commit with the working tree's benchmarks/ (whose `api()` adapts to old
commits), in the order given, as `asv run` does: the commit's package built into asv's
"virtualenv-host" environment (the project's asv plugin: only the project is installed, torch is
the interpreter's), so history and a plain `asv run` on the same machine are one series. The
source of a commit is a `git archive` of it where this copy has the history, else
`.gl/commits/<hash>.tar` made by `pack`; asv needs a repository holding the commit it records, so
each run goes against a one-commit stand-in repository of those files and its results are
relabelled with the real commit and commit date. Only the new result files are kept, merged into
`--bundle` (one tar: the device returns few files). Import at home: `python -m
moe_routing_bench.suite.store import-results DIR` after `tar xf`.

`noise` runs the selected benchmarks of the working tree `--runs` times, each run its own asv
invocation (so every benchmark process is a separate process each time), and records per
benchmark combination the spread: the 95th percentile over all pairs of runs of |a / b - 1|.
Rule for thresholds: threshold(benchmark, backend) = max(3%, 1.5 x the largest p95 spread over
its combinations), rounded up to a whole percent. The figures go to results/noise/<machine>.json; the
thresholds of every machine's file (the largest per benchmark and backend, over the machines) are
written into asv.conf.json's `regressions_thresholds` block, which asv's step detection and `moe_routing_bench.suite.verdict`
use; `pytest_benchmark_compare_fail` in the same file is the largest stage threshold, for
`pytest --benchmark-compare-fail`.

Benchmark processes: asv's forkserver launcher (torch imported once per run; nothing touches CUDA
at import, so forked children initialise CUDA themselves), one process per combination. Triton's and
inductor's own default caches persist across processes and commits, and are the ones plain `asv run`
and pytest use on the same machine. ASV_LAUNCH_METHOD=spawn falls back to a fresh interpreter per process.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moe_routing_bench.harness.deadline import Deadline, last  # noqa: E402
from moe_routing_bench.harness.records import write_atomic  # noqa: E402
from moe_routing_bench.suite import store  # noqa: E402

PACK_DIR = ROOT / ".gl" / "commits"
PACKAGE_FILES = ["moe_routing_bench", "pyproject.toml"]  # what asv builds a commit's wheel from
NOISE_DIR = ROOT / "results" / "noise"
# The threshold rule (module docstring). The floor: a GPU history is measured on whichever H200 a
# session is lent, and unchanged code moved by up to 2.2% between those (triton routing path, README).
FLOOR, FACTOR = 0.03, 1.5


def _git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def _has_history(commit: str) -> bool:
    return subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ROOT,
                          capture_output=True).returncode == 0


def pack(commits: list[str], branch: str = "main") -> None:
    PACK_DIR.mkdir(parents=True, exist_ok=True)
    drawn = set(_git("rev-list", "--first-parent", branch).split())
    for ref in commits:
        commit, date_ms = store.resolve_commit(ref, ROOT)
        if commit not in drawn:  # asv's graphs follow the branch's first parents only
            print(f"asv_runs: warning: {commit[:8]} is not on {branch}'s first-parent line: asv publish will not "
                  f"draw its results (asv compare and the verdict still use them)", file=sys.stderr)
        tar = PACK_DIR / f"{commit}.tar"
        # the package only: benchmarks/ come from the working tree for every commit
        subprocess.run(["git", "archive", "--format=tar", "-o", str(tar), commit, *PACKAGE_FILES], cwd=ROOT, check=True)
        (PACK_DIR / f"{commit}.date").write_text(str(date_ms))
        print(f"packed {commit[:8]} ({tar.stat().st_size // 1024} KiB)")


def commit_and_date(commit: str) -> tuple[str, int]:
    """(full hash, commit date ms) from this copy's history, else from a `pack`ed commit."""
    if _has_history(commit):
        return store.resolve_commit(commit, ROOT)
    matches = sorted(PACK_DIR.glob(f"{commit}*.tar"))
    if len(matches) != 1:
        raise SystemExit(f"asv_runs: no history and no single {PACK_DIR}/{commit}*.tar (run `pack` where git is)")
    return matches[0].stem, int((PACK_DIR / f"{matches[0].stem}.date").read_text())


def source_tree(commit: str, workdir: Path) -> tuple[Path, str, int]:
    """(directory with the commit's files, full hash, commit date ms)."""
    full, date_ms = commit_and_date(commit)
    tree = workdir / full[:8]
    if _has_history(commit):
        subprocess.run(["git", "archive", "--format=tar", "-o", str(workdir / "src.tar"), full, *PACKAGE_FILES],
                       cwd=ROOT, check=True)
        tar_path = workdir / "src.tar"
    else:
        tar_path = PACK_DIR / f"{full}.tar"
    tree.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar_path) as tf:
        tf.extractall(tree, filter="data")
    return tree, full, date_ms


def working_tree(workdir: Path) -> Path:
    """The working tree's package files, for runs of uncommitted code (noise)."""
    tree = workdir / "working-tree"
    for name in PACKAGE_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            tree.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, tree / name)
    return tree


def stand_in(tree: Path, results_dir: Path) -> Path:
    """Make `tree` a one-commit repository on `main`; an asv config that measures it with the working
    tree's benchmarks, environments in asv's usual place (reused across commits and by `asv run`)."""
    if not (tree / ".git").exists():
        _git("init", "-q", "-b", "main", cwd=tree)
        _git("add", "-A", cwd=tree)
        _git("-c", "user.name=asv_runs", "-c", "user.email=asv_runs@localhost", "commit", "-q", "-m", "stand-in",
             cwd=tree)
    from moe_routing_bench.suite.dashboard import read_asv_config

    conf = read_asv_config(ROOT / "asv.conf.json")
    conf.update(repo=str(tree), benchmark_dir=str(ROOT / "benchmarks"), results_dir=str(results_dir),
                html_dir=str(tree.parent / "html"), env_dir=str(ROOT / conf.get("env_dir", ".asv/env")))
    path = tree.parent / "asv.conf.json"
    path.write_text(json.dumps(conf))
    return path


def run_asv(tree: Path, results_dir: Path, machine: str, bench: str, quick: bool = False) -> None:
    conf = stand_in(tree, results_dir)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "asv", "run", "--config", str(conf), "--machine", machine,
           "--launch-method", os.environ.get("ASV_LAUNCH_METHOD", "forkserver"),
           "-b", bench, "-a", "processes=1", "--show-stderr"] + (["--quick"] if quick else [])
    subprocess.run(cmd, cwd=ROOT, env=env, check=False)  # cwd: asv imports the plugin relative to it


def _write_bundle(out: Path, bundle: Path) -> None:
    bundle.parent.mkdir(parents=True, exist_ok=True)
    tmp = bundle.with_name(f".{bundle.name}.tmp")
    with tarfile.open(tmp, "w") as tf:
        for f in sorted(out.rglob("*.json")):
            if not f.name.startswith("."):
                tf.add(f, arcname=str(f.relative_to(out)))
    os.replace(tmp, bundle)


def history(commits: list[str], bundle: Path | None, bench: str, machine: str | None,
            deadline_s: float | None = None) -> Path:
    """Each commit in turn; the bundle is rewritten after every commit, so a run stopped by a time
    limit keeps what it finished, and no commit is started past `deadline_s` (seconds from now)."""
    machine = store.register_machine(machine)["machine"]
    out = Path(tempfile.mkdtemp(prefix="asv-history-"))
    deadline = Deadline(deadline_s, estimate=statistics.fmean)
    for i, ref in enumerate(commits, 1):
        t0 = time.time()
        if not deadline.allows_start():
            print(f"asv_runs: stopping before {ref}: the next commit would pass the {deadline_s:.0f} s deadline",
                  flush=True)
            break
        work = Path(tempfile.mkdtemp(prefix="asv-commit-"))
        tree, commit, date_ms = source_tree(ref, work)
        print(f"asv_runs: [{i}/{len(commits)}] {commit[:8]}", flush=True)
        raw = work / "results"
        run_asv(tree, raw, machine, bench)
        store.import_results(raw, out, commit=commit, date_ms=date_ms)
        shutil.rmtree(work, ignore_errors=True)
        if bundle:
            _write_bundle(out, bundle)
        deadline.finished(time.time() - t0)
        print(f"asv_runs: [{i}/{len(commits)}] {commit[:8]} done in {time.time() - t0:.0f} s", flush=True)
    if bundle:
        print(f"asv_runs: new results in {bundle} (tar xf it, then: python -m moe_routing_bench.suite.store "
              f"import-results <that folder>)")
    return out


def p95(values: list[float]) -> float:
    """95th percentile (linear interpolation) of |a / b - 1| over all pairs of runs."""
    diffs = sorted(abs(a / b - 1) for a, b in itertools.permutations(values, 2) if b)
    if not diffs:
        return 0.0
    k = (len(diffs) - 1) * 0.95
    lo, hi = math.floor(k), math.ceil(k)
    return diffs[lo] + (diffs[hi] - diffs[lo]) * (k - lo)


def threshold_of(spread: float) -> float:
    return max(FLOOR, math.ceil(FACTOR * spread * 100 - 1e-9) / 100)


def noise(runs: int, bench: str, machine: str | None, quick: bool, deadline_s: float | None = None,
          as_commit: str | None = None, bundle: Path | None = None, merge: bool = False) -> Path:
    """`runs` asv runs of the working tree; the figures are rewritten after every run from the second
    on (a run stopped by a time limit keeps them), and no run is started past `deadline_s`. With
    `as_commit` (the commit the working tree is) and `bundle`, the first run's results go into the
    bundle as that commit's history entry. `merge`: add to the runs already in the machine's file
    (same benchmarks), e.g. the rest of a series a time limit stopped."""
    from asv.results import Results

    machine = store.register_machine(machine)["machine"]
    work = Path(tempfile.mkdtemp(prefix="asv-noise-"))
    tree = working_tree(work)
    values: dict[tuple[str, tuple], list[float]] = {}
    path = NOISE_DIR / f"{store.safe_name(machine)}.json"
    done = 0
    if merge and path.exists():
        old = json.loads(path.read_text())
        if old["bench"] != bench:
            raise SystemExit(f"asv_runs: --merge: {path} measured {old['bench']!r}, not {bench!r}")
        done = old["runs"]
        for key, b in old["benchmarks"].items():
            for combo, c in b["combos"].items():
                values[(key, tuple(combo.split(", ")))] = list(c["values"])
    t0 = time.time()
    # two runs at least (a spread needs two); then the last run is the guide (the first one compiles)
    deadline = Deadline(deadline_s, t0, estimate=last, always=2)
    for i in range(runs):
        if not deadline.allows_start():
            print(f"asv_runs: stopping after {i} noise runs: another would pass the {deadline_s:.0f} s deadline")
            break
        started = time.time()
        raw = work / f"run{i}"
        run_asv(tree, raw, machine, bench, quick)
        for f in raw.glob("*/*.json"):
            if f.name == "machine.json":
                continue
            r = Results.load(str(f))
            for key in r.get_all_result_keys():
                params = r.get_result_params(key)
                for combo, v in zip(itertools.product(*params) if params else [()], r.get_result_value(key, params)):
                    if v is not None and isinstance(v, (int, float)) and math.isfinite(v) and v > 0:
                        values.setdefault((key, combo), []).append(float(v))
        print(f"asv_runs: noise run {i + 1}/{runs} done ({time.time() - t0:.0f} s)", flush=True)
        if i == 0 and as_commit and bundle:
            commit, date_ms = commit_and_date(as_commit)
            store.import_results(raw, work / "history", commit=commit, date_ms=date_ms)
            _write_bundle(work / "history", bundle)
        if done + i >= 1:
            record = noise_record(values, machine=machine, runs=done + i + 1, quick=quick, bench=bench,
                                  wall_s=round(time.time() - t0))
            write_atomic(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
            update_conf_thresholds()
        deadline.finished(time.time() - started)
    if not path.exists():
        raise SystemExit("asv_runs: fewer than two noise runs; nothing written")
    print(f"asv_runs: wrote {path} and asv.conf.json's thresholds")
    return path


def noise_record(values: dict[tuple[str, tuple], list[float]], **about) -> dict:
    """Spread and threshold per benchmark (the module docstring's rule) of repeated values per combination."""
    benchmarks: dict[str, dict] = {}
    for (key, combo), vs in sorted(values.items()):
        if len(vs) < 2:
            continue
        b = benchmarks.setdefault(key, {"combos": {}})
        b["combos"][", ".join(combo)] = {"values": [float(f"{v:.4g}") for v in vs], "p95_rel_diff": round(p95(vs), 4)}
    for b in benchmarks.values():
        b["p95_rel_diff"] = max(c["p95_rel_diff"] for c in b["combos"].values())
        b["threshold"] = threshold_of(b["p95_rel_diff"])
        by_backend: dict[str, list[dict]] = {}  # every suite's first parameter is the backend
        for combo, c in b["combos"].items():
            by_backend.setdefault(combo.split(", ")[0].strip("'"), []).append(c)
        b["by_backend"] = {k: threshold_of(max(c["p95_rel_diff"] for c in cs)) for k, cs in sorted(by_backend.items())}
        checks = [null_check(cs) for cs in by_backend.values()]
        b["null_check"] = {k: sum(c[k] for c in checks) for k in ("pairs", "false_alarms")}
    stage = [b["threshold"] for k, b in benchmarks.items() if re.search(r"\.(time|track)_(topk|plan|pack|combine|routing_path)", k)]
    return {**about, "commit": os.environ.get("MOE_BENCH_GIT_COMMIT") or (_git("rev-parse", "HEAD") if _has_history("HEAD") else "unknown"),
            "rule": f"threshold = max({FLOOR:.0%}, {FACTOR} x the largest p95 over the combinations of "
                    "|a/b - 1| over all pairs of runs), per benchmark and backend, rounded up to a whole percent",
            "stage_threshold": max(stage or [0.1]),
            "pytest_benchmark_compare_fail": f"median:{round(100 * max(stage or [0.1]))}%",
            "benchmarks": benchmarks}


def null_check(combos: list[dict]) -> dict:
    """Out-of-sample null comparisons of one benchmark and backend: each pair of consecutive runs
    (i, i+1) is judged as asv's step detection would (slower when b / a - 1 exceeds the threshold)
    against the threshold the same rule gives from the other runs only. Counts the pairs and the
    false alarms."""
    runs = min(len(c["values"]) for c in combos)
    pairs, alarms = 0, 0
    for i in range(runs - 1):
        others = [[v for j, v in enumerate(c["values"]) if j not in (i, i + 1)] for c in combos]
        if min(len(o) for o in others) < 2:
            continue
        t = threshold_of(max(p95(o) for o in others))
        pairs += 1
        alarms += any(c["values"][i + 1] / c["values"][i] - 1 > t for c in combos)
    return {"pairs": pairs, "false_alarms": alarms}


FIXED = {r"exported\..*": 1.0}  # exported metrics: not timed repeatably here; only gross changes


def update_conf_thresholds(conf: Path = ROOT / "asv.conf.json", noise_dir: Path = NOISE_DIR) -> None:
    """Rewrite the BEGIN/END block of regressions_thresholds from every machine's noise file: per
    benchmark and backend the largest threshold over the machines, and for backends without noise
    figures (and unparametrized names) the benchmark's largest. asv matches each regex against
    "name(params)@branch" and applies the largest matching threshold, so the entries must not overlap."""
    overall: dict[str, float] = {}
    by_backend: dict[str, dict[str, float]] = {}
    for f in sorted(noise_dir.glob("*.json")):
        for name, b in json.loads(f.read_text())["benchmarks"].items():
            overall[name] = max(overall.get(name, 0.0), b["threshold"])
            for backend, t in b.get("by_backend", {}).items():
                by_backend.setdefault(name, {})[backend] = max(by_backend.get(name, {}).get(backend, 0.0), t)
    entries: dict[str, float] = {}
    for name, t in sorted(overall.items()):
        measured = by_backend.get(name, {})
        for backend, bt in sorted(measured.items()):
            entries[rf"^{re.escape(name)}\('{re.escape(backend)}',"] = bt
        others = "".join(f"(?!'{re.escape(b)}',)" for b in sorted(measured))
        entries[rf"^{re.escape(name)}(\({others}|@|$)"] = t
    entries.update(FIXED)
    lines = [f"        {json.dumps(regex)}: {t}," for regex, t in entries.items()]
    lines[-1] = lines[-1].rstrip(",")
    text = conf.read_text()
    new = re.sub(r"(// BEGIN thresholds\n).*?(\n\s*// END thresholds)", lambda m: m.group(1) + "\n".join(lines) + m.group(2),
                 text, flags=re.S)
    if new == text and "// BEGIN thresholds" not in text:
        raise SystemExit(f"asv_runs: no BEGIN/END thresholds block in {conf}")
    write_atomic(conf, new)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("pack", help="git archive each commit into .gl/commits/ (to carry to a machine without history)")
    p.add_argument("commits", nargs="+")
    gpu_default = r"^bench_.*\.track_"
    p = sub.add_parser("history", help="run the suites for each commit, in order")
    p.add_argument("commits", nargs="+")
    p.add_argument("--bundle", type=Path, default=None, help="tar of the new result files")
    p.add_argument("--deadline-s", type=float, default=None,
                   help="start no commit that would end past this many seconds (the average so far as the guide)")
    p.add_argument("--bench", default=gpu_default, help="asv -b regex (asv searches it in names; no $ anchor)")
    p.add_argument("--machine", default=None)
    p = sub.add_parser("noise", help="spread of repeated runs of the working tree; thresholds from it")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--bench", default=None, help=f"default {gpu_default} with a GPU, else the CPU time_ methods")
    p.add_argument("--machine", default=None)
    p.add_argument("--quick", action="store_true", help="asv --quick: one sample per process (CPU: keep it short)")
    p.add_argument("--deadline-s", type=float, default=None, help="start no run that would end past this (after two)")
    p.add_argument("--as-commit", default=None, help="the commit the working tree is: its first run goes to --bundle")
    p.add_argument("--bundle", type=Path, default=None, help="tar of that first run's result files")
    p.add_argument("--merge", action="store_true", help="add to the runs in the machine's noise file")
    sub.add_parser("thresholds", help="only rewrite asv.conf.json's thresholds from results/noise/*.json")
    args = ap.parse_args(argv)
    if args.what == "pack":
        pack(args.commits)
    elif args.what == "history":
        history(args.commits, args.bundle, args.bench, args.machine, args.deadline_s)
    elif args.what == "noise":
        if args.runs < (1 if args.merge else 2):
            ap.error("--runs must be at least 2 (1 with --merge)")
        import torch

        bench = args.bench or (gpu_default if torch.cuda.is_available() else r"^bench_.*\.time_")
        noise(args.runs, bench, args.machine, args.quick, args.deadline_s, args.as_commit, args.bundle, args.merge)
    else:
        update_conf_thresholds()
    return 0


if __name__ == "__main__":
    sys.exit(main())
