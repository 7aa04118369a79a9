"""Summarise training runs into one CSV: a row per run, then the mean and std over seeds per configuration.

    python train/summarize.py --runs 'runs/routing_sweep/*' --out results/routing_sweep_summary.csv
    python train/summarize.py ... --export-asv          # also into the asv result store

Rows have ``row_type`` = ``run`` or ``mean``. A ``mean`` row averages the runs of one configuration
(everything but the seed equal); for each metric column ``X`` it has ``X`` = mean and ``X_std`` =
sample standard deviation over seeds (empty for one seed); ``seeds`` lists the seeds, ``n_seeds`` their
number. ``final_*`` is the last evaluation, ``best_*`` the evaluation with the lowest val loss,
``median_*`` the median over the log records (throughput), ``mean_*`` the mean over the log records
(routing statistics). Runs that shared a GPU (``gpu_shared_by_runs`` > 1, sweeps with
``--runs-per-gpu``) have tokens/s of a shared device: ``--bench`` adds ``bench_tokens_per_s``, the
throughput of the same configuration timed alone (``train/bench_throughput.py``); ``--export-asv``
leaves a shared run's throughput columns (``SHARED_GPU_COLUMNS``) out of the store, where nothing
would say the GPU was shared. ``causal_safe`` is false for expert-choice: its numbers are not those of a
causal LM (it routes with the whole batch, the future included).

Semantics: ``semantics`` names what the routers computed: ``ours`` (the default), ``seed`` (every
factor of the older tool behind the seed README, ``moe_routing_bench.SEED_FACTORS``), ``seed (ours:
F)`` (all but factor F) or the factors joined by ``+``; ``recipe`` is the training preset (``ours``
unless a ``--preset`` was given). Both are configuration keys, so a seed-preset run and ours are never
averaged together. ``variant`` is a label typed with a pattern (``--runs LABEL=GLOB``, empty otherwise)
for runs that changed something no other key names (one part of the recipe, say); it is a key too, and
``--variants`` compares each labelled configuration with the unlabelled one it differs from.

Statistics: ``X_ci95`` is the half-width of the 95% Student-t interval of the mean over seeds
(t_{0.975, n-1} * std / sqrt(n)) for the quality columns (``QUALITY``). Configurations that differ
only in the router (and its top-k) are compared pairwise on ``--compare`` (default final_val_loss)
with Welch's unequal-variance t-test: a pair is *distinguishable* when p < ``--level`` (default
0.05, two-sided). Each mean row gets ``rank`` (1 = lowest, within its group) and ``tied_with`` (the
routers of its group it is not distinguishable from); every pair, and every (seed preset vs ours)
pair of the same router, is written to ``<out>_pairs.csv`` with both intervals, whether they
overlap, t, the Welch degrees of freedom and p.
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

import moe_routing_bench as mrb

ROOT = Path(__file__).resolve().parents[1]
# run as a script, this folder comes first on sys.path and "train" would be train/train.py itself
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "train"]
sys.path.insert(0, str(ROOT))

KEY_COLUMNS = ["router", "semantics", "recipe", "variant", "num_experts", "top_k", "capacity_factor", "dim", "layers",
               "heads", "expand", "seq_len", "batch_size", "world_size", "max_steps", "dtype", "backend", "compile"]
# a comparison group: every key but these (top1 runs with k=1 are compared with k=2 routers)
ROUTER_KEYS = ("router", "top_k")
SEMANTICS_KEYS = ("semantics", "recipe")
# per-record routing statistics averaged over a run's log records: summary column <- log key
RECORD_MEANS = {
    "mean_drop_rate": "drop_rate", "mean_token_drop_rate": "token_drop_rate", "mean_unrouted_rate": "unrouted_rate",
    "mean_load_cv": "load_cv", "mean_load_cv_kept": "load_cv_kept", "mean_gate_entropy": "gate_entropy",
    "mean_gate_entropy_selected": "gate_entropy_selected", "mean_combine_weight": "mean_combine_weight",
    "mean_top1_prob": "mean_top1_prob", "mean_fallback_rate": "fallback_rate", "mean_balance_loss": "balance_loss",
    "mean_z_loss": "z_loss",
}
METRICS = [
    "final_val_ppl", "final_val_loss", "best_val_ppl", "best_val_loss", "final_train_loss",
    "median_tokens_per_s", "median_tokens_per_s_per_rank", "median_tflops", "median_eff_tflops",
    "median_bw_GiBps", "median_bw_GiBps_all_layers", *RECORD_MEANS, "train_time_s", "elapsed_s",
]
QUALITY = ["final_val_ppl", "final_val_loss", "best_val_ppl", "best_val_loss"]
# what a run measured of its device: a property of the router only when the run had the GPU alone
SHARED_GPU_COLUMNS = ["best_tokens_per_s", "best_eff_tflops", "median_tokens_per_s", "median_tokens_per_s_per_rank",
                      "median_tflops", "median_eff_tflops", "median_bw_GiBps", "median_bw_GiBps_all_layers",
                      "train_time_s", "elapsed_s"]
COLUMNS = (["row_type", "run", "seed", "seeds", "n_seeds"] + KEY_COLUMNS
           + ["seed_semantics", "causal_safe", "done", "steps", "best_step", "best_tokens_per_s", "best_eff_tflops",
              "flops_per_token", "params_active", "params_total", "moe_layers", "bytes_per_token_strict",
              "device_name", "gpu_shared_by_runs", "bench_tokens_per_s", "bench_tflops", "rank", "tied_with"]
           + [c for m in METRICS for c in (m, m + "_std") + ((m + "_ci95",) if m in QUALITY else ())] + ["log_path"])
PAIR_COLUMNS = (["kind"] + [k for k in KEY_COLUMNS if k not in ROUTER_KEYS]
                + ["metric", "a", "b", "n_a", "n_b", "mean_a", "mean_b", "diff", "ci95_a", "ci95_b",
                   "intervals_overlap", "welch_t", "welch_df", "welch_p", "level", "distinguishable"])


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _ppl(loss):
    return math.exp(min(loss, 50.0)) if loss is not None else None


def _seed_factors(value) -> tuple[str, ...]:
    """The older tool's factors of a run, from a list, a comma/plus string, or nothing."""
    from moe_routing_bench import check_seed_semantics

    if value in (None, "", "none", "ours"):
        return ()
    if isinstance(value, str):
        value = [v for v in value.replace("+", ",").split(",") if v.strip()]
    return check_seed_semantics(tuple(value))


def semantics_label(factors: tuple[str, ...]) -> str:
    """``ours``, ``seed`` (every factor), ``seed (ours: F)`` (all but F), else the factors joined by +."""
    from moe_routing_bench import SEED_FACTORS

    if not factors:
        return "ours"
    missing = [f for f in SEED_FACTORS if f not in factors]
    if not missing:
        return "seed"
    if len(missing) == 1:
        return f"seed (ours: {missing[0]})"
    return "+".join(factors)


def _first(*values):
    return next((v for v in values if v is not None), None)


def load_run(run_dir: Path, variant: str = "") -> dict | None:
    """One run's row, or None when the folder holds no log; ``variant`` labels it (see the module doc)."""
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
    factors = _seed_factors(_first(last.get("seed_semantics"), model.get("seed_semantics"), args.get("seed_semantics")))
    preset = _first(last.get("preset"), args.get("preset"))
    row = {
        "row_type": "run", "run": run_dir.name, "seed": args.get("seed"),
        "router": last.get("router", model.get("router")), "semantics": semantics_label(factors),
        "seed_semantics": "+".join(factors), "recipe": preset if preset not in (None, "", "none") else "ours",
        "variant": variant,
        "num_experts": last.get("num_experts"),
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
        "params_total": hp.get("params_total"), "moe_layers": last.get("moe_layers"),
        "bytes_per_token_strict": last.get("bytes_per_token_strict"), "device_name": env.get("device_name"),
        "gpu_shared_by_runs": hp.get("gpu_shared_by_runs", 1),
        "final_val_loss": final["val_loss"] if final else None, "final_val_ppl": _ppl(final["val_loss"]) if final else None,
        "best_val_loss": best["val_loss"] if best else None, "best_val_ppl": _ppl(best["val_loss"]) if best else None,
        "final_train_loss": last.get("train_loss"),
        "median_tokens_per_s": _median(r.get("tokens_per_s") for r in records),
        "median_tokens_per_s_per_rank": _median(r.get("tokens_per_s_per_rank") for r in records),
        "median_tflops": _median(r.get("tflops") for r in records),
        "median_eff_tflops": _median(r.get("eff_tflops") for r in records),
        # one MoE layer's strict bytes (logs since issue 14; older logs: all layers), and all layers
        "median_bw_GiBps": _median(r.get("bw_GiBps_strict") for r in records),
        "median_bw_GiBps_all_layers": _median(r.get("bw_GiBps_strict_all_layers") for r in records),
        **{col: _mean(r.get(key) for r in records) for col, key in RECORD_MEANS.items()},
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
                   seed_semantics=first.get("seed_semantics"), moe_layers=first.get("moe_layers"),
                   bytes_per_token_strict=first.get("bytes_per_token_strict"),
                   causal_safe=all(str(m.get("causal_safe")) == "True" for m in members),
                   done=all(m.get("done") for m in members), steps=first.get("steps"),
                   flops_per_token=first.get("flops_per_token"), params_active=first.get("params_active"),
                   params_total=first.get("params_total"), device_name=first.get("device_name"),
                   gpu_shared_by_runs=first.get("gpu_shared_by_runs"),
                   bench_tokens_per_s=first.get("bench_tokens_per_s"), bench_tflops=first.get("bench_tflops"))
        for m in METRICS:
            vals = [x[m] for x in members if x.get(m) is not None]
            agg[m] = sum(vals) / len(vals) if vals else None
            agg[m + "_std"] = statistics.stdev(vals) if len(vals) > 1 else None  # one seed: no spread
            if m in QUALITY:
                agg[m + "_ci95"] = ci95_halfwidth(vals)
        agg["_values"] = {m: [x[m] for x in members if x.get(m) is not None] for m in QUALITY}
        out.append(agg)
    return out


# ------------------------------------------------------------------------------ statistics
def ci95_halfwidth(values: list[float]) -> float | None:
    """Half-width of the 95% Student-t interval of the mean: t_{0.975, n-1} * s / sqrt(n); None for n < 2."""
    from scipy import stats

    n = len(values)
    if n < 2:
        return None
    return float(stats.t.ppf(0.975, n - 1) * statistics.stdev(values) / math.sqrt(n))


def welch(a: list[float], b: list[float]) -> tuple[float | None, float | None, float | None]:
    """Welch's two-sided unequal-variance t-test: (t, degrees of freedom, p); None where undefined
    (fewer than 2 values on a side). With no spread on either side p is 0 if the means differ, else 1."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return None, None, None
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(a) - statistics.fmean(b)
    if va + vb == 0:
        return (math.copysign(math.inf, diff) if diff else 0.0), None, (0.0 if diff else 1.0)
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return t, df, float(2 * stats.t.sf(abs(t), df))


def _pair(kind: str, ra: dict, rb: dict, label_a: str, label_b: str, metric: str, level: float) -> dict:
    a, b = ra["_values"][metric], rb["_values"][metric]
    t, df, p = welch(a, b)
    ca, cb = ra.get(metric + "_ci95"), rb.get(metric + "_ci95")
    ma, mb = ra.get(metric), rb.get(metric)
    overlap = None
    if None not in (ca, cb, ma, mb):
        overlap = ma - ca <= mb + cb and mb - cb <= ma + ca
    row = {k: ra.get(k) for k in PAIR_COLUMNS if k in KEY_COLUMNS and not (kind != "routers" and k in SEMANTICS_KEYS)}
    row.update(kind=kind, metric=metric, a=label_a, b=label_b, n_a=len(a), n_b=len(b), mean_a=ma, mean_b=mb,
               diff=None if None in (ma, mb) else ma - mb, ci95_a=ca, ci95_b=cb, intervals_overlap=overlap,
               welch_t=t, welch_df=df, welch_p=p, level=level, distinguishable=None if p is None else p < level)
    return row


def compare(means: list[dict], metric: str = "final_val_loss", level: float = 0.05) -> list[dict]:
    """Pairwise Welch tests on `metric`: routers within a group (all keys but router and top-k equal),
    then each router under two semantics/recipes (all other keys equal). Sets each mean row's `rank`
    and `tied_with` (routers of its group not distinguishable from it); returns the pair rows."""
    def key(r, drop):
        return tuple(str(r.get(k)) for k in KEY_COLUMNS if k not in drop)

    pairs = []
    groups: dict[tuple, list[dict]] = {}
    for r in means:
        groups.setdefault(key(r, ROUTER_KEYS), []).append(r)
    for members in groups.values():
        ranked = sorted((r for r in members if r.get(metric) is not None), key=lambda r: r[metric])
        for i, r in enumerate(ranked, 1):
            r["rank"] = i
        for r in members:
            r["tied_with"] = ""
        for i, ra in enumerate(ranked):
            for rb in ranked[i + 1:]:
                pair = _pair("routers", ra, rb, ra["router"], rb["router"], metric, level)
                pairs.append(pair)
                if pair["distinguishable"] is False:
                    for x, y in ((ra, rb), (rb, ra)):
                        x["tied_with"] = ";".join(filter(None, [x["tied_with"], y["router"]]))
    by_router: dict[tuple, list[dict]] = {}
    for r in means:
        by_router.setdefault(key(r, SEMANTICS_KEYS), []).append(r)
    for members in by_router.values():
        members = sorted(members, key=lambda r: (r["semantics"] != "seed", r["semantics"], r["recipe"]))
        for i, ra in enumerate(members):
            for rb in members[i + 1:]:
                if ra.get(metric) is not None and rb.get(metric) is not None:
                    pairs.append(_pair(f"semantics ({ra['router']})", ra, rb, f"{ra['semantics']}/{ra['recipe']}",
                                       f"{rb['semantics']}/{rb['recipe']}", metric, level))
    return pairs


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


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with mrb.atomic_target(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})


def split_variant(pattern: str) -> tuple[str, str]:
    """``LABEL=GLOB`` -> (LABEL, GLOB); a plain glob -> ("", glob)."""
    label, sep, rest = pattern.partition("=")
    if sep and label and not any(c in label for c in "/*?[\\"):
        return label, rest
    return "", pattern


def pairs_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + "_pairs.csv")


def summarize(patterns: list[str], out: str | Path, bench: list[str] | None = None,
              metric: str = "final_val_loss", level: float = 0.05) -> list[dict]:
    """Write the CSV and its pairwise comparisons (`pairs_path`); return the CSV's rows (runs, then
    means). Missing folders are skipped. ``bench``: benchmark files whose exclusive-GPU tokens/s
    fill ``bench_tokens_per_s`` for matching runs. ``metric``/``level``: see `compare`."""
    if metric not in QUALITY:
        raise ValueError(f"--compare must be one of {', '.join(QUALITY)}, got {metric!r}")
    dirs: dict[Path, str] = {}
    for labelled in patterns:
        label, pat = split_variant(labelled)
        dirs.update({Path(p): label for p in glob.glob(pat) if Path(p).is_dir()})
    rows = [r for r in (load_run(d, label) for d, label in sorted(dirs.items())) if r is not None]
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
    means = aggregate(rows)
    pairs = compare(means, metric, level)
    all_rows = rows + means
    _write_csv(Path(out), COLUMNS, all_rows)
    _write_csv(pairs_path(out), PAIR_COLUMNS, pairs)
    return all_rows


def export_rows(rows: list[dict]) -> list[dict]:
    """The rows as the result store groups them (router x num_experts x top_k x capacity_factor):
    where runs of one router differ in another key (semantics, recipe, steps, ...), the router label
    names it, the same way for every expert count and capacity factor, e.g. ``softk [seed, recipe
    seed, max_steps=1200]`` (our default runs keep the plain router name, and their history; our
    recipe is named only beside the older tool's semantics), so no two experiments are averaged. Run rows
    get their configuration's ``rank`` and ``*_ci95`` (exported as such); those of runs that shared
    their GPU lose the ``SHARED_GPU_COLUMNS``."""
    store_keys = ("router", "num_experts", "top_k", "capacity_factor")
    # the store reads the run rows: give them their configuration's interval and rank
    config = {tuple(str(r.get(k)) for k in KEY_COLUMNS): r for r in rows if r.get("row_type") == "mean"}
    per_config = ["rank"] + [m + "_ci95" for m in QUALITY]
    rows = [{**r, **{c: config.get(tuple(str(r.get(k)) for k in KEY_COLUMNS), {}).get(c) for c in per_config},
             **({c: None for c in SHARED_GPU_COLUMNS} if float(r.get("gpu_shared_by_runs") or 1) > 1 else {})}
            if r.get("row_type") == "run" else r for r in rows]
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(str(r.get("router")), []).append(r)
    out = []
    for members in groups.values():
        varying = [k for k in KEY_COLUMNS if k not in store_keys and len({str(m.get(k)) for m in members}) > 1]
        for r in members:
            extra = [(f"recipe {r.get(k)}" if k == "recipe" else str(r.get(k))) if k in SEMANTICS_KEYS
                     else f"{k}={r.get(k)}" for k in varying if _named(r, k)]
            for k in reversed(SEMANTICS_KEYS):  # a seed-preset sweep alone is still named
                if k not in varying and r.get(k, "ours") != "ours":
                    extra.insert(0, f"recipe {r[k]}" if k == "recipe" else str(r[k]))
            out.append({**r, "router": f"{r['router']} [{', '.join(extra)}]" if extra else r["router"]})
    return out


def _named(row: dict, key: str) -> bool:
    """Whether an export label names `key`'s value: not our defaults (semantics ours, no variant), and
    our recipe only beside the older tool's semantics."""
    value = row.get(key)
    if key == "variant":
        return bool(value)
    if key == "semantics" or (key == "recipe" and row.get("semantics") == "ours"):
        return value != "ours"
    return True


def export(out: str | Path, rows: list[dict], results_dir: Path, machine: str | None, commit: str | None = None,
           group: str = "Training") -> Path:
    """`suite.store.export_training_summary` of `export_rows` (a temporary CSV beside `out`)."""
    from moe_routing_bench.suite.store import export_training_summary

    tmp = Path(out).with_name(Path(out).stem + ".export.tmp.csv")
    try:
        _write_csv(tmp, COLUMNS, export_rows(rows))
        kw = {"commit": commit} if commit else {}
        return export_training_summary(tmp, results_dir, machine=machine, group=group, **kw)
    finally:
        tmp.unlink(missing_ok=True)


def print_table(rows: list[dict]) -> None:
    means = [r for r in rows if r["row_type"] == "mean"]
    bench = any(r.get("bench_tokens_per_s") for r in means)
    print(f"{'router':<14}{'semantics':<34}{'E':>4}{'k':>3}{'cf':>6}{'n':>3}  {'val ppl':>16}  {'tokens/s':>20}  "
          f"{'drop':>6}  {'load_cv':>7}  causal" + ("  bench tokens/s (alone)" if bench else "") + "  not distinguishable from")
    for r in sorted(means, key=lambda r: (r["semantics"], r["recipe"], r.get("variant") or "", str(r["max_steps"]),
                                          r["final_val_ppl"] is None, r["final_val_ppl"] or 0)):
        spread = r["n_seeds"] > 1  # one seed has no spread: print the value alone, not "±0"
        ppl = "-" if r["final_val_ppl"] is None else \
            f"{r['final_val_ppl']:.3f}" + (f"±{r['final_val_ppl_std']:.3f}" if spread else "")
        sem = r["semantics"] + ("" if r["recipe"] == "ours" else f"/{r['recipe']}") + _variant(r)
        tps = "-" if r["median_tokens_per_s"] is None else \
            f"{r['median_tokens_per_s']:,.0f}" + (f"±{r['median_tokens_per_s_std']:,.0f}" if spread else "")
        drop = "-" if r["mean_drop_rate"] is None else f"{r['mean_drop_rate']:.3f}"
        cv = "-" if r["mean_load_cv"] is None else f"{r['mean_load_cv']:.3f}"
        print(f"{r['router']:<14}{sem:<34}{r['num_experts']:>4}{r['top_k']:>3}{str(r['capacity_factor']):>6}"
              f"{r['n_seeds']:>3}  {ppl:>16}  {tps:>20}  {drop:>6}  {cv:>7}  "
              f"{'yes' if r['causal_safe'] else 'NO (not causal)':<15}"
              + (f"  {r['bench_tokens_per_s']:,.0f}" if bench and r.get("bench_tokens_per_s") else "")
              + f"  {(r.get('tied_with') or '-').replace(';', ', ')}")


def _variant(r: dict) -> str:
    return f" [{r['variant']}]" if r.get("variant") else ""


def _fmt(v, spec):
    return "-" if v in (None, "") else format(float(v), spec)


def markdown_table(rows: list[dict], metric: str = "final_val_ppl") -> str:
    """The configurations as a Markdown table, one block per (semantics, recipe, steps), best first:
    mean ± std and the 95% interval over seeds, the routers each is not distinguishable from."""
    means = [r for r in rows if r["row_type"] == "mean"]
    head = (f"| semantics | recipe | steps | router | cf | seeds | {metric} (mean ± std) | 95% interval | "
            "not distinguishable from | drop rate | load_cv (pre-drop) | load_cv_kept | causal |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in sorted(means, key=lambda r: (r["semantics"] != "seed", r["semantics"], r["recipe"], r.get("variant") or "",
                                          str(r["max_steps"]), str(r["capacity_factor"]), r.get(metric) is None,
                                          r.get(metric) or 0)):
        m, sd, ci = r.get(metric), r.get(metric + "_std"), r.get(metric + "_ci95")
        interval = "-" if None in (m, ci) else f"[{m - ci:.3f}, {m + ci:.3f}]"
        lines.append(f"| {r['semantics']} | {r['recipe']}{_variant(r)} | {r['max_steps']} | {r['router']} | "
                     f"{r['capacity_factor']} | "
                     f"{r['n_seeds']} | {_fmt(m, '.3f')} ± {_fmt(sd, '.3f')} | {interval} | "
                     f"{(r.get('tied_with') or '-').replace(';', ', ')} | {_fmt(r.get('mean_drop_rate'), '.3f')} | "
                     f"{_fmt(r.get('mean_load_cv'), '.3f')} | {_fmt(r.get('mean_load_cv_kept'), '.3f')} | "
                     f"{'yes' if r['causal_safe'] else '**no**'} |")
    return "\n".join(lines) + "\n"


def attribution_table(rows: list[dict], metric: str = "final_val_loss", level: float = 0.05) -> str:
    """Markdown: for each router (and every other key but semantics and recipe), the seed preset
    (semantics ``seed``, recipe ``seed``) first, then each variant with what it flips back to ours
    (the factors that matter to that router, `seed_factors_changing`, and the recipe), its difference
    from the preset in `metric` and Welch's p: which factor moves a router, and how much; then what
    the single flips add up to beside the row that flips them all (the rest is their interaction)."""
    from moe_routing_bench import SEED_FACTORS
    from train.model import seed_factors_changing

    means = [r for r in rows if r["row_type"] == "mean" and r.get(metric) is not None]
    groups: dict[tuple, list[dict]] = {}
    for r in means:
        groups.setdefault(tuple(str(r.get(k)) for k in KEY_COLUMNS if k not in SEMANTICS_KEYS), []).append(r)
    head = (f"| router | cf | steps | variant | flipped to ours | {metric} (mean ± std) | Δ vs seed preset | "
            f"Welch p | distinguishable at {level} |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for members in sorted(groups.values(), key=lambda m: (str(m[0]["router"]), str(m[0]["capacity_factor"]),
                                                          str(m[0]["max_steps"]))):
        base = next((r for r in members if r["semantics"] == "seed" and r["recipe"] == "seed"), None)
        if base is None or len(members) < 2:
            continue
        singles: dict[str, float] = {}  # one factor flipped: its difference from the preset
        every: list[str] = []  # the factors of the row that flips all of them (our semantics and recipe)
        for r in [base] + sorted((m for m in members if m is not base), key=lambda m: (m["semantics"], m["recipe"])):
            factors = set(filter(None, str(r.get("seed_semantics") or "").split("+")))
            relevant = seed_factors_changing(r["router"])
            flipped = ([f for f in SEED_FACTORS if f not in factors and f in relevant]
                       + (["recipe"] if r["recipe"] != "seed" else []))
            if r is base:
                delta = p_txt = dist = "-"
            else:
                if len(flipped) == 1:
                    singles[flipped[0]] = r[metric] - base[metric]
                if len(flipped) > len(every):
                    every = flipped
                _, _, p = welch(r["_values"][metric], base["_values"][metric])
                delta = f"{r[metric] - base[metric]:+.4f}"
                p_txt = "-" if p is None else f"{p:.3g}"
                dist = "-" if p is None else ("yes" if p < level else "no")
            lines.append(f"| {r['router']} | {r['capacity_factor']} | {r['max_steps']} | {r['semantics']}/{r['recipe']} | "
                         f"{', '.join(flipped) or '(none: the preset)'} | {r[metric]:.4f} ± {_fmt(r.get(metric + '_std'), '.4f')} | "
                         f"{delta} | {p_txt} | {dist} |")
        measured = [f for f in every if f in singles]
        if len(every) > 1 and measured:  # how much of the whole difference the single flips add up to
            lines.append(f"| {base['router']} | {base['capacity_factor']} | {base['max_steps']} | sum of single flips | "
                         f"{', '.join(measured)} ({len(measured)} of {len(every)}) | - | "
                         f"{sum(singles[f] for f in measured):+.4f} | - | - |")
    return "\n".join(lines) + "\n"


def variant_table(rows: list[dict], metric: str = "final_val_loss", level: float = 0.05) -> str:
    """Markdown: each labelled configuration (``--runs LABEL=GLOB``) against the unlabelled one with
    every other key equal: both means over seeds, the difference in `metric` and Welch's p."""
    means = [r for r in rows if r["row_type"] == "mean" and r.get(metric) is not None]
    base = {tuple(str(r.get(k)) for k in KEY_COLUMNS if k != "variant"): r for r in means if not r.get("variant")}
    head = (f"| router | cf | steps | semantics/recipe | variant | {metric} (mean ± std) | without it | Δ | "
            f"Welch p | distinguishable at {level} |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in sorted((m for m in means if m.get("variant")), key=lambda m: (str(m["router"]), str(m["capacity_factor"]),
                                                                        str(m["max_steps"]), m[metric])):
        b = base.get(tuple(str(r.get(k)) for k in KEY_COLUMNS if k != "variant"))
        if b is None:
            continue
        _, _, p = welch(r["_values"][metric], b["_values"][metric])
        lines.append(f"| {r['router']} | {r['capacity_factor']} | {r['max_steps']} | {r['semantics']}/{r['recipe']} | "
                     f"{r['variant']} | {r[metric]:.4f} ± {_fmt(r.get(metric + '_std'), '.4f')} | "
                     f"{b[metric]:.4f} ± {_fmt(b.get(metric + '_std'), '.4f')} | {r[metric] - b[metric]:+.4f} | "
                     f"{'-' if p is None else f'{p:.3g}'} | {'-' if p is None else ('yes' if p < level else 'no')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", nargs="+", default=["runs/routing_sweep/*"], help="run folders (globs); LABEL=GLOB "
                   "labels its runs as a variant (a configuration key, see --variants)")
    p.add_argument("--out", default="runs/routing_sweep_summary.csv")
    p.add_argument("--bench", nargs="*", default=[], help="bench_throughput.py JSONL files: exclusive-GPU "
                   "tokens/s per configuration (column bench_tokens_per_s), for runs that shared a GPU")
    p.add_argument("--export-asv", action="store_true", help="export into the asv result store "
                   "(moe_routing_bench.suite.store.export_training_summary)")
    p.add_argument("--results-dir", default="results/asv", help="asv results folder for --export-asv")
    p.add_argument("--machine", default=None, help="asv machine name for --export-asv")
    p.add_argument("--export-group", default="Training", help="benchmark group for --export-asv: "
                   "exported.<group>.track_*; Training is the documented sweep's history, a one-off study "
                   "takes its own name")
    p.add_argument("--commit", default=None, help="commit the runs trained at, for --export-asv (default HEAD)")
    p.add_argument("--replace", action="store_true", help="with --export-asv: first remove every earlier export "
                   "of --export-group (all commits and machines), so a one-off study re-exported whole at the "
                   "commit of its newest runs appears once, with only its current labels (not for Training, "
                   "the documented sweep's history)")
    p.add_argument("--compare", default="final_val_loss", choices=QUALITY,
                   help="column the routers are compared on (Welch's t-test over seeds)")
    p.add_argument("--level", type=float, default=0.05, help="significance level of the two-sided Welch test")
    p.add_argument("--markdown", default=None, help="also write the configurations as a Markdown table here")
    p.add_argument("--attribution", default=None, help="also write, per router, the seed preset vs each variant "
                   "(one factor or the recipe flipped back to ours) as a Markdown table here")
    p.add_argument("--variants", default=None, help="also write each labelled configuration (--runs LABEL=GLOB) "
                   "against the unlabelled one as a Markdown table here")
    args = p.parse_args(argv)
    if not 0 < args.level < 1:
        p.error(f"--level must be between 0 and 1, got {args.level}")
    if args.replace and (not args.export_asv or args.export_group == "Training"):
        p.error("--replace needs --export-asv and a study's own --export-group (Training keeps its history)")
    rows = summarize(args.runs, args.out, args.bench, args.compare, args.level)
    if not rows:
        print(f"summarize.py: no runs with a train_log.jsonl under {args.runs}", file=sys.stderr)
        return 1
    print_table(rows)
    print(f"wrote {sum(r['row_type'] == 'run' for r in rows)} runs and "
          f"{sum(r['row_type'] == 'mean' for r in rows)} configurations to {args.out}; pairwise Welch tests on "
          f"{args.compare} at level {args.level} to {pairs_path(args.out)}")
    # perplexity reads better; the ties come from the test on --compare (ppl = exp(loss), same order)
    for path, text in ((args.markdown, lambda: markdown_table(rows, args.compare.replace("_loss", "_ppl"))),
                       (args.attribution, lambda: attribution_table(rows, args.compare, args.level)),
                       (args.variants, lambda: variant_table(rows, args.compare, args.level))):
        if path:
            mrb.write_atomic(path, text())
            print(f"wrote {path}")
    if args.export_asv:
        try:
            from moe_routing_bench.suite.store import export_training_summary  # noqa: F401
        except ImportError:
            print("--export-asv: moe_routing_bench.suite.store is unavailable in this version; nothing exported",
                  file=sys.stderr)
            return 0
        try:
            if args.replace:
                from moe_routing_bench.suite.store import drop_export_group

                for dropped in drop_export_group(Path(args.results_dir), args.export_group):
                    print(f"removed the earlier exported.{args.export_group} from {dropped}")
            path = export(args.out, rows, Path(args.results_dir), args.machine, args.commit, args.export_group)
        except ValueError as e:
            print(f"summarize.py: error: {e}", file=sys.stderr)
            return 2
        print(f"exported to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
