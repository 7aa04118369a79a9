#!/usr/bin/env python3
"""Can the gate and asv see a planted slowdown on this machine, and do they cry wolf? (issue 13)

    python tools/gpu_detection.py --out DIR [--plants pack:0.03,pack:0.05,pack:0.10,combine:0.05]
        [--nulls 10] [--repeats 2] [--device auto] [--backend triton]
    python tools/gpu_detection.py --out DIR --summarize     # judge DIR/detection.json again (new thresholds)

Everything happens in a scratch repository made from this working tree (no git history needed,
this repository left alone): the tree is committed as `parent`; each plant is a throwaway branch
with tools/plant_slowdown.py applied and committed; `null-1` ... `null-N` are empty commits on top
of `parent` (same code, new hashes). Then:

- gate: `python -m moe_routing_bench.suite.gate --base parent` with each plant checked out
  (--repeats times) and with `parent` checked out (--nulls times: the null comparisons);
- asv: `tools/asv_runs.py history` over parent, the plants and the null chain (the planted stages,
  the chosen backend, the main shape), then `moe_routing_bench.suite.verdict` of parent against
  each plant and of each null commit against the one before it (parent, null-1, ...).

Writes DIR/detection.json (every comparison, rewritten after each) and DIR/detection.md (the table
for the README): per plant the ratios measured and how often each tool flagged it; the false
alarms among the null comparisons; the smallest measured slowdown each tool flagged every time.
Flags are computed from the stored ratios with the thresholds in force when the files are written
(asv.conf.json and results/noise/<machine>.json, `tools/asv_runs.py noise`), so the noise may be
measured before or after: `--summarize` judges a stored run again.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moe_routing_bench.harness.records import write_atomic  # noqa: E402
from moe_routing_bench.suite import gate, store, verdict  # noqa: E402

COPY_EXCLUDES = {".git", ".venv", ".asv", "runs", "out", ".gl", ".whl", "__pycache__", ".pytest_cache",
                 ".hypothesis", ".benchmarks"}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=gpu_detection", "-c", "user.email=gpu_detection@localhost",
                           *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def scratch_repository(dest: Path) -> Path:
    """This working tree as the one commit of a new repository, tagged `parent`."""
    shutil.copytree(ROOT, dest, ignore=lambda d, names: [n for n in names if n in COPY_EXCLUDES])
    _git(dest, "init", "-q", "-b", "main")
    _git(dest, "add", "-A")
    _git(dest, "commit", "-q", "-m", "parent")
    _git(dest, "tag", "parent")
    return dest


def plant_branch(repo: Path, stage: str, fraction: float, backend: str) -> str:
    branch = f"planted-{stage}-{round(fraction * 100)}pct"
    _git(repo, "checkout", "-q", "-b", branch, "parent")
    subprocess.run([sys.executable, "tools/plant_slowdown.py", stage, str(fraction), "--backend", backend], cwd=repo,
                   check=True)
    _git(repo, "commit", "-q", "-am", f"planted: {stage} +{fraction:.0%}")
    _git(repo, "checkout", "-q", "main")
    return branch


def null_chain(repo: Path, n: int) -> list[str]:
    _git(repo, "checkout", "-q", "-b", "null-chain", "parent")
    for i in range(1, n + 1):
        _git(repo, "commit", "-q", "--allow-empty", "-m", f"null-{i}")
        _git(repo, "tag", f"null-{i}")
    _git(repo, "checkout", "-q", "main")
    return [f"null-{i}" for i in range(1, n + 1)]


def gate_run(repo: Path, head: str, args, out: Path) -> dict:
    """One gate comparison of `head` (checked out) against `parent`."""
    _git(repo, "checkout", "-q", head)
    cmd = [sys.executable, "-m", "moe_routing_bench.suite.gate", "--base", "parent", "--device", args.device,
           "--backend", args.backend, "--stages", ",".join(args.stages), "--json", str(out)]
    proc = subprocess.run(cmd, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)}, capture_output=True, text=True)
    _git(repo, "checkout", "-q", "main")
    if proc.returncode not in (0, 1):
        raise SystemExit(f"gpu_detection: the gate failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    print(proc.stdout, end="", flush=True)
    return json.loads(out.read_text())


def asv_comparisons(repo: Path, pairs: list[tuple[str, str]], args) -> dict[tuple[str, str], list[dict]]:
    """asv results for every commit of `pairs` (one history run, oldest first), then the verdict rows."""
    refs = list(dict.fromkeys(r for pair in pairs for r in pair))
    commits = {r: _git(repo, "rev-parse", f"{r}^{{commit}}") for r in refs}
    method = "track" if args.device == "cuda" else "time"  # GPU methods; CPU: the CPU shapes' timers
    env = {**os.environ, "MOE_BENCH_ASV_SUBSET": "main", "MOE_BENCH_ASV_BACKENDS": args.backend}
    bundle = repo.parent / "asv_results.tar"
    subprocess.run([sys.executable, "tools/asv_runs.py", "history", *commits.values(), "--bundle", str(bundle),
                    "--bench", rf"^bench_({'|'.join(args.stages)})\..*\.{method}_"], cwd=repo, env=env, check=True)
    results = repo.parent / "asv_results"
    results.mkdir()
    subprocess.run(["tar", "xf", str(bundle), "-C", str(results)], check=True)
    machine = next(p.name for p in results.iterdir() if p.is_dir())
    thresholds = verdict.load_thresholds(repo / "asv.conf.json")
    return {(a, b): [{"benchmark": r.benchmark, "base": r.base, "head": r.head, "ratio": r.ratio,
                      "threshold": r.threshold, "verdict": r.verdict}
                     for r in verdict.compare(results, machine, commits[a], commits[b], thresholds)]
            for a, b in pairs}


def judge(doc: dict, noise_dir: Path, conf: Path) -> dict:
    """Flags recomputed from the stored ratios with the thresholds in force now (the noise figures
    may be measured after the comparisons): gate rows against 1 + the threshold of their stage
    and backend (gate.default_thresholds' rule), asv rows against asv.conf.json's (verdict's rule)."""
    limits = {s: 1 + t for s, t in verdict.stage_thresholds(doc["machine"], noise_dir, gate.STAGES).items()}
    thresholds = verdict.load_thresholds(conf)

    def gate_flag(run: dict, stage: str | None = None) -> bool:
        return any(r["ratio"] > gate.threshold_of(limits, r["key"]) for r in run["rows"]
                   if stage is None or r["key"].startswith(f"{stage}|"))

    def asv_flag(row: dict) -> bool:
        return row["ratio"] > 1 + verdict.threshold_for(row["benchmark"], thresholds)

    noise_file = noise_dir / f"{store.safe_name(doc['machine'])}.json"
    noise = json.loads(noise_file.read_text())["benchmarks"] if noise_file.exists() else {}
    return {"gate_limits": limits,
            "noise_null_check": {name: b["null_check"] for name, b in noise.items() if "null_check" in b},
            "plants": [{"gate": [gate_flag(g, p["stage"]) for g in p["gate"]],
                        "asv": [asv_flag(r) for r in p.get("asv", []) if f"bench_{p['stage']}." in r["benchmark"]]}
                       for p in doc["plants"]],
            "nulls": {"gate": [gate_flag(g) for g in doc["nulls"]["gate"]],
                      "asv": [any(asv_flag(r) for r in rows) for rows in doc["nulls"]["asv"]]}}


def summarize(doc: dict, flags: dict) -> str:
    """detection.md: per plant and tool, the ratios and how often it was flagged; nulls; the smallest
    slowdown flagged every time."""
    lines = ["| planted | tool | ratios measured (planted stage, backend) | flagged |", "|---|---|---|---|"]
    caught: dict[str, list[tuple[float, bool, float]]] = {"gate": [], "asv": []}
    for p, f in zip(doc["plants"], flags["plants"]):
        stage, fraction = p["stage"], p["fraction"]
        ratios = {"gate": [r["ratio"] for g in p["gate"] for r in g["rows"] if r["key"].startswith(f"{stage}|")],
                  "asv": [r["ratio"] for r in p.get("asv", []) if f"bench_{stage}." in r["benchmark"]]}
        for tool, label in (("gate", "gate"), ("asv", "asv + verdict")):
            lines.append(f"| {stage} +{fraction:.0%} | {label} | {', '.join(f'{x:.3f}' for x in ratios[tool])} | "
                         f"{sum(f[tool])}/{len(f[tool])} |")
            caught[tool].append((fraction, bool(f[tool]) and all(f[tool]), min(ratios[tool], default=float("nan"))))
    null_ratios = {"gate": [r["ratio"] for g in doc["nulls"]["gate"] for r in g["rows"]],
                   "asv": [r["ratio"] for rows in doc["nulls"]["asv"] for r in rows]}
    lines.append("")
    for tool, label in (("gate", "gate"), ("asv", "asv + verdict")):
        if not flags["nulls"][tool]:
            continue
        rs = null_ratios[tool]
        lines.append(f"Null comparisons (same code twice), {label}: {sum(flags['nulls'][tool])} false alarm(s) in "
                     f"{len(flags['nulls'][tool])}" + (f"; ratios {min(rs):.3f} to {max(rs):.3f}." if rs else "."))
    checks = flags.get("noise_null_check", {})
    if checks:
        pairs, alarms = sum(c["pairs"] for c in checks.values()), sum(c["false_alarms"] for c in checks.values())
        lines.append(f"Null comparisons from the noise runs (consecutive runs, each pair judged with thresholds from "
                     f"the other runs), asv + verdict: {alarms} false alarm(s) in {pairs} "
                     f"({len(checks)} benchmarks, each backend judged with its own threshold).")
    for tool, results in caught.items():
        always = sorted((ratio, f) for f, ok, ratio in results if ok)
        missed = [ratio for f, ok, ratio in results if not ok]
        lines.append(f"Smallest slowdown the {tool} flagged every time: "
                     + (f"measured {always[0][0] - 1:.1%} (planted {always[0][1]:.0%})" if always else "none")
                     + (f"; missed: {', '.join(f'{r - 1:.1%}' for r in sorted(missed))}" if missed else "") + ".")
    limits = ", ".join(f"{s} {v:.2f}" for s, v in sorted(flags["gate_limits"].items()) if "|" in s) \
        or f"{gate.FALLBACK_THRESHOLD}"
    lines.append(f"Gate limits (head/base): {limits}; asv thresholds: asv.conf.json's regressions_thresholds.")
    return "\n".join(lines) + "\n"


def write(doc: dict, out: Path) -> str:
    """detection.json (what was measured) and detection.md (judged with today's thresholds); returns the latter."""
    flags = judge(doc, ROOT / "results" / "noise", ROOT / "asv.conf.json")
    md = summarize(doc, flags)
    write_atomic(out / "detection.json", json.dumps({**doc, "flags": flags}, indent=2) + "\n")
    write_atomic(out / "detection.md", md)
    return md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--plants", default="pack:0.03,pack:0.05,pack:0.10,combine:0.05")
    ap.add_argument("--nulls", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2, help="gate comparisons per plant")
    ap.add_argument("--asv-nulls", type=int, default=None,
                    help="null commits measured with asv (default --nulls; 0: the noise runs' null check stands in)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--backend", default="triton", help="the backend planted and timed")
    ap.add_argument("--summarize", action="store_true",
                    help="measure nothing: judge OUT/detection.json again with the thresholds in force now")
    args = ap.parse_args(argv)
    if args.summarize:
        print(write(json.loads((args.out / "detection.json").read_text()), args.out), end="")
        return 0
    plants = [(s, float(f)) for s, f in (p.split(":") for p in args.plants.split(","))]
    if any(s not in ("pack", "combine") or not 0 < f <= 1 for s, f in plants) or args.nulls < 1:
        ap.error("--plants: stage:fraction with stage pack or combine, 0 < fraction <= 1; --nulls >= 1")
    if args.asv_nulls is not None and args.asv_nulls < 0:
        ap.error("--asv-nulls must be >= 0")
    args.stages = sorted({s for s, _ in plants})
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    work = Path(tempfile.mkdtemp(prefix="gpu-detection-"))
    repo = scratch_repository(work / "repo")
    branches = [plant_branch(repo, s, f, args.backend) for s, f in plants]
    nulls = null_chain(repo, args.nulls if args.asv_nulls is None else args.asv_nulls)
    gpu = store.local_gpu()["gpu"] if args.device == "cuda" else None
    doc: dict = {"device": args.device, "backend": args.backend, "machine": store.default_machine_name(gpu),
                 "plants": [], "nulls": {"gate": [], "asv": []}}
    # written after every comparison: a run stopped by a time limit keeps what it measured
    for (stage, fraction), branch in zip(plants, branches):
        doc["plants"].append({"stage": stage, "fraction": fraction, "branch": branch, "gate": []})
        for i in range(args.repeats):
            doc["plants"][-1]["gate"].append(gate_run(repo, branch, args, work / f"gate-{branch}-{i}.json"))
            write(doc, args.out)
    for i in range(args.nulls):
        doc["nulls"]["gate"].append(gate_run(repo, "parent", args, work / f"gate-null-{i}.json"))
        write(doc, args.out)
    chain = ["parent", *nulls]
    pairs = [("parent", b) for b in branches] + list(zip(chain, chain[1:]))
    rows = asv_comparisons(repo, pairs, args)
    for p in doc["plants"]:
        p["asv"] = rows[("parent", p["branch"])]
    doc["nulls"]["asv"] = [rows[pair] for pair in zip(chain, chain[1:])]
    doc["wall_s"] = round(time.time() - t0)
    print(write(doc, args.out), end="")
    print(f"gpu_detection: {doc['wall_s']} s; {args.out}/detection.json and detection.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
