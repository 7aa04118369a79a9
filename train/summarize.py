"""Summarise training runs into one CSV: a row per run, then the mean and std over seeds per configuration.

    python train/summarize.py --runs 'runs/routing_sweep/*' --out results/routing_sweep_summary.csv
    python train/summarize.py ... --export-asv          # also into the asv result store

Rows have ``row_type`` = ``run`` or ``mean``. A ``mean`` row averages the runs of one configuration
(everything but the seed equal); for each metric column ``X`` it has ``X`` = mean and ``X_std`` =
sample standard deviation over seeds (0 for one seed); ``seeds`` lists the seeds, ``n_seeds`` their
number. ``final_*`` is the last evaluation, ``best_*`` the evaluation with the lowest val loss,
``median_*`` the median over the log records (throughput), ``mean_*`` the mean over the log records
(routing statistics). Runs that shared a GPU (``gpu_shared_by_runs`` > 1, sweeps with
``--runs-per-gpu``) have tokens/s of a shared device: ``--bench`` adds ``bench_tokens_per_s``, the
throughput of the same configuration timed alone (``train/bench_throughput.py``). ``causal_safe`` is false for expert-choice: its numbers are not those of a
causal LM (it routes with the whole batch, the future included).
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# run as a script, this folder comes first on sys.path and "train" would be train/train.py itself
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "train"]
sys.path.insert(0, str(ROOT))

KEY_COLUMNS = ["router", "num_experts", "top_k", "capacity_factor", "dim", "layers", "heads", "expand",
               "seq_len", "batch_size", "world_size", "max_steps", "dtype", "backend", "compile"]
METRICS = [
    "final_val_ppl", "final_val_loss", "best_val_ppl", "best_val_loss", "final_train_loss",
    "median_tokens_per_s", "median_tokens_per_s_per_rank", "median_tflops", "median_eff_tflops",
    "median_bw_GiBps", "mean_drop_rate", "mean_token_drop_rate", "mean_unrouted_rate", "mean_load_cv",
    "mean_gate_entropy", "mean_balance_loss", "mean_z_loss", "train_time_s", "elapsed_s",
]
COLUMNS = (["row_type", "run", "seed", "seeds", "n_seeds"] + KEY_COLUMNS
           + ["causal_safe", "done", "steps", "best_step", "best_tokens_per_s", "best_eff_tflops",
              "flops_per_token", "params_active", "params_total", "device_name", "gpu_shared_by_runs",
              "bench_tokens_per_s", "bench_tflops"]
           + [c for m in METRICS for c in (m, m + "_std")] + ["log_path"])


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _ppl(loss):
    return math.exp(min(loss, 50.0)) if loss is not None else None


def load_run(run_dir: Path) -> dict | None:
    """One run's row, or None when the folder holds no log."""
    log = run_dir / "train_log.jsonl"
    if not log.exists():
        return None
    records, done = [], None
    for line in log.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if r.get("done"):
            done = r
        else:
            records.append(r)
    if not records:
        return None
    hp = {}
    if (run_dir / "hparams.json").exists():
        hp = json.loads((run_dir / "hparams.json").read_text())
    args, model, env = hp.get("args", {}), hp.get("model", {}), hp.get("environment", {})
    evals = [r for r in records if r.get("val_loss") is not None]
    final = evals[-1] if evals else None
    best = min(evals, key=lambda r: r["val_loss"]) if evals else None
    last = records[-1]
    row = {
        "row_type": "run", "run": run_dir.name, "seed": args.get("seed"),
        "router": last.get("router", model.get("router")), "num_experts": last.get("num_experts"),
        "top_k": last.get("top_k"), "capacity_factor": "none" if last.get("capacity_factor") is None
        else last.get("capacity_factor"),
        "dim": args.get("dim", model.get("dim")), "layers": args.get("layers"), "heads": args.get("heads"),
        "expand": args.get("ffn_mult"), "seq_len": args.get("seq_len"), "batch_size": args.get("batch_size"),
        "world_size": last.get("world_size", hp.get("world_size")), "max_steps": args.get("max_steps"),
        "dtype": last.get("dtype"), "backend": last.get("backend"), "compile": last.get("compile"),
        "causal_safe": last.get("causal_safe", model.get("router") != "expert-choice"),
        "done": bool(done), "steps": last.get("step"),
        "best_step": best["step"] if best else None,
        "best_tokens_per_s": best.get("tokens_per_s") if best else None,
        "best_eff_tflops": best.get("eff_tflops") if best else None,
        "flops_per_token": last.get("flops_per_token"), "params_active": hp.get("params_active"),
        "params_total": hp.get("params_total"), "device_name": env.get("device_name"),
        "gpu_shared_by_runs": hp.get("gpu_shared_by_runs", 1),
        "final_val_loss": final["val_loss"] if final else None, "final_val_ppl": _ppl(final["val_loss"]) if final else None,
        "best_val_loss": best["val_loss"] if best else None, "best_val_ppl": _ppl(best["val_loss"]) if best else None,
        "final_train_loss": last.get("train_loss"),
        "median_tokens_per_s": _median(r.get("tokens_per_s") for r in records),
        "median_tokens_per_s_per_rank": _median(r.get("tokens_per_s_per_rank") for r in records),
        "median_tflops": _median(r.get("tflops") for r in records),
        "median_eff_tflops": _median(r.get("eff_tflops") for r in records),
        "median_bw_GiBps": _median(r.get("bw_GiBps_strict") for r in records),
        "mean_drop_rate": _mean(r.get("drop_rate") for r in records),
        "mean_token_drop_rate": _mean(r.get("token_drop_rate") for r in records),
        "mean_unrouted_rate": _mean(r.get("unrouted_rate") for r in records),
        "mean_load_cv": _mean(r.get("load_cv") for r in records),
        "mean_gate_entropy": _mean(r.get("gate_entropy") for r in records),
        "mean_balance_loss": _mean(r.get("balance_loss") for r in records),
        "mean_z_loss": _mean(r.get("z_loss") for r in records),
        "train_time_s": (done or last).get("train_time_s"), "elapsed_s": (done or last).get("elapsed"),
        "log_path": str(log),
    }
    return row


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean and sample std over seeds for each configuration (KEY_COLUMNS equal)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(str(r.get(k)) for k in KEY_COLUMNS), []).append(r)
    out = []
    for members in groups.values():
        first = members[0]
        agg = {k: first.get(k) for k in KEY_COLUMNS}
        seeds = sorted(m.get("seed") for m in members if m.get("seed") is not None)
        agg.update(row_type="mean", run="mean:" + "_S".join(first["run"].rsplit("_S", 1)[:1]),
                   seeds=";".join(str(s) for s in seeds), n_seeds=len(members),
                   causal_safe=all(str(m.get("causal_safe")) == "True" for m in members),
                   done=all(m.get("done") for m in members), steps=first.get("steps"),
                   flops_per_token=first.get("flops_per_token"), params_active=first.get("params_active"),
                   params_total=first.get("params_total"), device_name=first.get("device_name"),
                   gpu_shared_by_runs=first.get("gpu_shared_by_runs"),
                   bench_tokens_per_s=first.get("bench_tokens_per_s"), bench_tflops=first.get("bench_tflops"))
        for m in METRICS:
            vals = [x[m] for x in members if x.get(m) is not None]
            agg[m] = sum(vals) / len(vals) if vals else None
            agg[m + "_std"] = statistics.stdev(vals) if len(vals) > 1 else (0.0 if vals else None)
        out.append(agg)
    return out


def _cf_key(cf) -> str:
    if cf is None or str(cf).lower() in ("none", ""):
        return "none"
    return repr(float(cf))


def _bench_key(router, E, k, cf, dim, layers, seq_len, batch, world) -> tuple:
    return (str(router), int(E), int(k), _cf_key(cf), int(dim), int(layers), int(seq_len), int(batch), int(world))


def load_bench(paths: list[str]) -> dict[tuple, dict]:
    """Records of train/bench_throughput.py (JSON lines), keyed by configuration; the last one wins."""
    out = {}
    for path in paths:
        text = Path(path).read_text()
        try:
            records = [json.loads(text)]  # one record (train.py --bench-out)
        except json.JSONDecodeError:
            records = []
            for line in text.splitlines():  # JSON lines (bench_throughput.py --out)
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        for r in records:
            if isinstance(r, dict) and r.get("bench"):
                out[_bench_key(r["router"], r["num_experts"], r["top_k"], r["capacity_factor"], r["dim"],
                               r["layers"], r["seq_len"], r["batch_size_per_rank"], r["world_size"])] = r
    return out


def summarize(patterns: list[str], out: str | Path, bench: list[str] | None = None) -> list[dict]:
    """Write the CSV; return its rows (runs, then means). Missing folders are skipped. ``bench``:
    benchmark files whose exclusive-GPU tokens/s fill ``bench_tokens_per_s`` for matching runs."""
    dirs = sorted({Path(p) for pat in patterns for p in glob.glob(pat) if Path(p).is_dir()})
    rows = [r for r in (load_run(d) for d in dirs) if r is not None]
    benches = load_bench(bench or [])
    for r in rows:
        try:
            b = benches.get(_bench_key(r["router"], r["num_experts"], r["top_k"], r["capacity_factor"], r["dim"],
                                       r["layers"], r["seq_len"], r["batch_size"], r["world_size"]))
        except (TypeError, ValueError):
            b = None
        if b:
            r["bench_tokens_per_s"], r["bench_tflops"] = b["tokens_per_s"], b["tflops"]
    rows.sort(key=lambda r: (str(r["router"]), int(r["num_experts"] or 0), int(r["top_k"] or 0),
                             str(r["capacity_factor"]), int(r["seed"] or 0)))
    all_rows = rows + aggregate(rows)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in all_rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS})
    tmp.replace(out)
    return all_rows


def print_table(rows: list[dict]) -> None:
    means = [r for r in rows if r["row_type"] == "mean"]
    bench = any(r.get("bench_tokens_per_s") for r in means)
    print(f"{'router':<14}{'E':>4}{'k':>3}{'cf':>6}{'n':>3}  {'val ppl':>16}  {'tokens/s':>20}  {'drop':>6}  "
          f"{'load_cv':>7}  causal" + ("  bench tokens/s (alone)" if bench else ""))
    for r in sorted(means, key=lambda r: (r["final_val_ppl"] is None, r["final_val_ppl"] or 0)):
        ppl = "-" if r["final_val_ppl"] is None else f"{r['final_val_ppl']:.3f}±{r['final_val_ppl_std']:.3f}"
        tps = "-" if r["median_tokens_per_s"] is None else \
            f"{r['median_tokens_per_s']:,.0f}±{r['median_tokens_per_s_std']:,.0f}"
        drop = "-" if r["mean_drop_rate"] is None else f"{r['mean_drop_rate']:.3f}"
        cv = "-" if r["mean_load_cv"] is None else f"{r['mean_load_cv']:.3f}"
        print(f"{r['router']:<14}{r['num_experts']:>4}{r['top_k']:>3}{str(r['capacity_factor']):>6}{r['n_seeds']:>3}  "
              f"{ppl:>16}  {tps:>20}  {drop:>6}  {cv:>7}  {'yes' if r['causal_safe'] else 'NO (not causal)':<15}"
              + (f"  {r['bench_tokens_per_s']:,.0f}" if bench and r.get("bench_tokens_per_s") else ""))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", nargs="+", default=["runs/routing_sweep/*"], help="run folders (globs)")
    p.add_argument("--out", default="results/routing_sweep_summary.csv")
    p.add_argument("--bench", nargs="*", default=[], help="bench_throughput.py JSONL files: exclusive-GPU "
                   "tokens/s per configuration (column bench_tokens_per_s), for runs that shared a GPU")
    p.add_argument("--export-asv", action="store_true", help="export into the asv result store "
                   "(moe_routing_bench.suite.store.export_training_summary)")
    p.add_argument("--results-dir", default="results/asv", help="asv results folder for --export-asv")
    p.add_argument("--machine", default=None, help="asv machine name for --export-asv")
    args = p.parse_args(argv)
    rows = summarize(args.runs, args.out, args.bench)
    if not rows:
        print(f"summarize.py: no runs with a train_log.jsonl under {args.runs}", file=sys.stderr)
        return 1
    print_table(rows)
    print(f"wrote {sum(r['row_type'] == 'run' for r in rows)} runs and "
          f"{sum(r['row_type'] == 'mean' for r in rows)} configurations to {args.out}")
    if args.export_asv:
        try:
            from moe_routing_bench.suite.store import export_training_summary
        except ImportError:
            print("--export-asv: moe_routing_bench.suite.store is unavailable in this version; nothing exported",
                  file=sys.stderr)
            return 0
        path = export_training_summary(Path(args.out), Path(args.results_dir), machine=args.machine)
        print(f"exported to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
