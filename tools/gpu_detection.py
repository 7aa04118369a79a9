#!/usr/bin/env python3
"""Can the gate and asv see a planted slowdown on this machine, and do they cry wolf? (issue 13)

    python tools/gpu_detection.py --out DIR [--plants pack:0.03,pack:0.05,pack:0.10,combine:0.05]
        [--nulls 10] [--repeats 2] [--device auto] [--backend triton]

Everything happens in a scratch repository made from this working tree (no git history needed,
this repository left alone): the tree is committed as `parent`; each plant is a throwaway branch
with tools/plant_slowdown.py applied and committed; `null-1` ... `null-N` are empty commits on top
of `parent` (same code, new hashes). Then, with the thresholds in force (asv.conf.json and
results/noise/<machine>.json: measure the noise first, `tools/asv_runs.py noise`):

- gate: `python -m moe_routing_bench.suite.gate --base parent` with each plant checked out
  (--repeats times) and with `parent` checked out (--nulls times: the null comparisons);
- asv: `tools/asv_runs.py history` over parent, the plants and the null chain (the planted stages,
  the chosen backend, the main shape), then `moe_routing_bench.suite.verdict` of parent against
  each plant and of each null commit against the one before it (parent, null-1, ...).

Writes DIR/detection.json (every comparison) and DIR/detection.md (the table for the README): per
plant the ratios measured and how often each tool flagged it; the false alarms among the null
comparisons; the smallest planted slowdown each tool flagged every time.
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

from moe_routing_bench.suite import verdict  # noqa: E402

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


def gate(repo: Path, head: str, args, out: Path) -> dict:
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


def summarize(doc: dict) -> str:
    """detection.md: per plant and tool, the ratios and how often it was flagged; nulls; the smallest
    slowdown flagged every time."""
    lines = ["| planted | tool | ratios measured (planted stage, backend) | flagged |", "|---|---|---|---|"]
    caught: dict[str, list[tuple[float, bool]]] = {"gate": [], "asv": []}
    for p in doc["plants"]:
        stage, fraction = p["stage"], p["fraction"]
        gate_ratios = [r["ratio"] for g in p["gate"] for r in g["rows"] if r["key"].startswith(stage)]
        gate_flags = [any(r["regressed"] for r in g["rows"] if r["key"].startswith(stage)) for g in p["gate"]]
        asv_rows = [r for r in p["asv"] if f"bench_{stage}." in r["benchmark"]]
        asv_flags = [r["verdict"] == "slower" for r in asv_rows]
        asv_ratios = [r["ratio"] for r in asv_rows]
        lines.append(f"| {stage} +{fraction:.0%} | gate | {', '.join(f'{x:.3f}' for x in gate_ratios)} | "
                     f"{sum(gate_flags)}/{len(gate_flags)} |")
        lines.append(f"| {stage} +{fraction:.0%} | asv + verdict | {', '.join(f'{x:.3f}' for x in asv_ratios)} | "
                     f"{sum(asv_flags)}/{len(asv_flags)} |")
        caught["gate"].append((fraction, bool(gate_flags) and all(gate_flags)))
        caught["asv"].append((fraction, bool(asv_flags) and all(asv_flags)))
    gate_false = sum(g["regressed"] for g in doc["nulls"]["gate"])
    asv_false = sum(any(r["verdict"] == "slower" for r in rows) for rows in doc["nulls"]["asv"])
    lines += ["", f"Null comparisons (same code twice): gate {gate_false} false alarm(s) in "
                  f"{len(doc['nulls']['gate'])}, asv + verdict {asv_false} in {len(doc['nulls']['asv'])}."]
    for tool, results in caught.items():
        always = sorted(f for f, ok in results if ok)
        lines.append(f"Smallest planted slowdown the {tool} flagged every time: "
                     + (f"{always[0]:.0%}" if always else "none") + ".")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--plants", default="pack:0.03,pack:0.05,pack:0.10,combine:0.05")
    ap.add_argument("--nulls", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2, help="gate comparisons per plant")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--backend", default="triton", help="the backend planted and timed")
    args = ap.parse_args(argv)
    plants = [(s, float(f)) for s, f in (p.split(":") for p in args.plants.split(","))]
    if any(s not in ("pack", "combine") or not 0 < f <= 1 for s, f in plants) or args.nulls < 1:
        ap.error("--plants: stage:fraction with stage pack or combine, 0 < fraction <= 1; --nulls >= 1")
    args.stages = sorted({s for s, _ in plants})
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    work = Path(tempfile.mkdtemp(prefix="gpu-detection-"))
    repo = scratch_repository(work / "repo")
    branches = [plant_branch(repo, s, f, args.backend) for s, f in plants]
    nulls = null_chain(repo, args.nulls)
    doc: dict = {"device": args.device, "backend": args.backend, "plants": [], "nulls": {"gate": [], "asv": []}}
    for (stage, fraction), branch in zip(plants, branches):
        runs = [gate(repo, branch, args, work / f"gate-{branch}-{i}.json") for i in range(args.repeats)]
        doc["plants"].append({"stage": stage, "fraction": fraction, "branch": branch, "gate": runs})
    doc["nulls"]["gate"] = [gate(repo, "parent", args, work / f"gate-null-{i}.json") for i in range(args.nulls)]
    chain = ["parent", *nulls]
    pairs = [("parent", b) for b in branches] + list(zip(chain, chain[1:]))
    rows = asv_comparisons(repo, pairs, args)
    for p in doc["plants"]:
        p["asv"] = rows[("parent", p["branch"])]
    doc["nulls"]["asv"] = [rows[pair] for pair in zip(chain, chain[1:])]
    doc["wall_s"] = round(time.time() - t0)
    (args.out / "detection.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.out / "detection.md").write_text(summarize(doc))
    print(summarize(doc), end="")
    print(f"gpu_detection: {doc['wall_s']} s; {args.out}/detection.json and detection.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
