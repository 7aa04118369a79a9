"""The result store (DESIGN section 6): asv's results directory, and exporters into it.

asv suites write into `results/asv` themselves. This module adds what asv does not measure, as
`track_*` results of benchmarks that have no code to run (version `export-v1`), so that `asv publish` shows kernels,
the layer and training metrics on one dashboard, with the GPU model as a filter:

    export_pytest_benchmark(json_path)     pytest-benchmark --benchmark-json output
    export_jsonl(jsonl_path)               CLI records (`moe-bench bench-routing --out x.jsonl`)
    export_training_summary(summary_csv)   a training sweep summary (train/summarize.py)

Command line: `python -m moe_routing_bench.suite.store {pytest-benchmark,jsonl,training} FILE
[--machine NAME] [--results-dir results/asv] [--commit REF]`; `... machine [--name NAME]` records
this machine (with its `gpu` and `cuda` keys) in ~/.asv-machine.json for `asv run`;
`... import-results DIR [--commit HASH]` merges asv results brought back from another machine.

How the store works (asv results API version 2; files read and written through asv 0.6.6's own
`asv.machine.Machine` and `asv.results.Results`, saved into a temp folder inside the store and
renamed into place, every read-modify-write under one flock on `<results>/.lock`):
- `<results>/<machine>/machine.json`: the machine's keys; asv copies them into every result's
  parameters, so they must not change with a reboot (no kernel release, no RAM byte count).
- `<results>/<machine>/<commit[:8]>-<env>.json`: one file per commit and environment. An export
  merges into the file of the same commit and environment `export-<source>-py<X.Y>` (new values win).
- `<results>/benchmarks.json`: asv shows a result only if its benchmark is listed there with the
  same version. Exports add their entries; `asv run` keeps them (and the entries of benchmarks
  another machine discovered) through the project's asv plugin (moe_routing_bench.suite.asv_plugin).
Machine and environment names become paths: both must be single safe path components.
Parameter values are stored as Python reprs ("'softk'", "64", "1.25", "None"), as asv does.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import itertools
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

import json5

from moe_routing_bench.harness.records import read_jsonl, write_atomic

DEFAULT_RESULTS_DIR = Path("results/asv")
EXPORT_VERSION = "export-v1"  # bump when the meaning of an exported number changes
LOCK_FILE = ".lock"  # flock'ed around every read-modify-write of the store (gitignored)
TMP_PREFIX = ".tmp-"  # asv writes here first; renamed into place (a killed writer's is removed later)
# Parameter values listed first (see _natural): the main GPU shape and the documented training set-up
FIRST_VALUES = ("'T16384-H4096-E128-k2-bfloat16'", "'softk'", "8", "2", "1.25")

# The routers' top-k is part of the router label, not a parameter of its own: asv's first view draws
# at most 8 lines, one value of every parameter after the router, so top1 (k=1) would never appear
# beside the k=2 routers. A router at its usual k keeps its plain name (and its history).
TRAINING_PARAMS = ("router", "num_experts", "capacity_factor")
USUAL_TOP_K = {"top1": 1}  # every other router: 2, the documented sweeps' k
# Numeric summary columns that describe the configuration or the run rather than measure it
# (train/summarize.py's key columns and bookkeeping); `*_std` columns are dropped too.
TRAINING_CONFIG_COLUMNS = {
    *TRAINING_PARAMS, "top_k", "seed", "seeds", "n_seeds", "dim", "layers", "heads", "expand", "ffn_mult", "seq_len",
    "batch_size", "batch_per_gpu", "world_size", "max_steps", "steps", "best_step", "eval_interval",
    "vocab_size", "flops_per_token", "params_active", "params_total", "done", "causal_safe", "gpu_shared_by_runs",
    "moe_layers", "bytes_per_token_strict",
}
UNITS = [  # (pattern on the metric name, unit); first match wins
    (r"balance_loss|z_loss|load_cv", "value"), (r"ppl", "ppl"), (r"tokens_per_s", "tokens/s"), (r"tflops", "TFLOP/s"), (r"gibps", "GiB/s"),
    (r"gbps", "GB/s"), (r"drop_rate|share|fraction", "fraction"), (r"loss", "nats"), (r"entropy", "nats"),
    (r"_ms$", "ms"), (r"_us$", "us"), (r"_s$", "s"),
]


# --------------------------------------------------------------------------------------- machines
def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def safe_name(text: str, what: str = "name") -> str:
    """`text` if it is one safe path component (letters, digits, `_.+-`, not starting with a dot or dash)."""
    if not isinstance(text, str) or not _SAFE_NAME.fullmatch(text):
        raise ValueError(f"{what} {text!r} is not a single safe path component (letters, digits, _.+-)")
    return text


_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,200}")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def local_gpu() -> dict[str, str]:
    """`gpu` (device name) and `cuda` (torch's CUDA version) of this machine, "none" without a GPU."""
    try:
        import torch
    except ImportError:
        return {"gpu": "none", "cuda": "none"}
    if not torch.cuda.is_available():
        return {"gpu": "none", "cuda": "none", "torch_version": torch.__version__}
    return {"gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda or "unknown",
            "torch_version": torch.__version__}


def default_machine_name(gpu: str | None = None) -> str:
    """GPU machines are named after the GPU model, CPU machines after the CPU model and core count."""
    if gpu and gpu != "none":
        return slug(gpu)
    return f"cpu-{slug(_cpu_model())}-{os.cpu_count()}c"


def machine_info(name: str | None = None, **keys: str) -> dict[str, str]:
    """asv's machine description plus `gpu`, `cuda`, `torch_version`, `triton_version` keys.

    Every key is stable across reboots and kernel updates, because asv copies them into each
    result's parameters and a changed value starts a new series: `os` is the system without its
    release, `ram` is left empty (the exact byte count moves with firmware reservations).
    Without `keys`: this host. With `keys` (at least `gpu`): another machine whose records are
    exported here; its host keys are left empty."""
    if "gpu" in keys:
        info = {"arch": "", "cpu": "", "num_cpu": "", "os": "", "ram": "", "cuda": "unknown", **keys}
    else:
        info = {"arch": platform.machine(), "cpu": _cpu_model(), "num_cpu": str(os.cpu_count()),
                "os": platform.system(), "ram": "", **local_gpu(), **keys}
        try:
            import triton

            info.setdefault("triton_version", triton.__version__)
        except ImportError:
            pass
    info["machine"] = safe_name(name or default_machine_name(info.get("gpu")), "machine name")
    return info


def register_machine(name: str | None = None, machine_file: Path | None = None) -> dict[str, str]:
    """Record this host in ~/.asv-machine.json (through asv's Machine) so that `asv run` asks nothing.

    The entry is stored under the stable name and under the host name: asv looks the machine up by
    host name when no --machine is given, and the entry's `machine` key then names the series."""
    from asv.machine import MachineCollection

    info = machine_info(name)
    path = str(Path(machine_file or MachineCollection.get_machine_file_path()).expanduser())
    with _locked(Path(path).parent, f".{Path(path).name}.lock"):
        for key in dict.fromkeys((info["machine"], platform.node() or info["machine"])):
            MachineCollection.save(key, info, _path=path)
    return info


# ------------------------------------------------------------------------------------------- git
def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    if out.returncode != 0:
        raise ValueError(f"git {' '.join(args)} failed in {repo}: {out.stderr.strip()}")
    return out.stdout.strip()


def resolve_commit(ref: str | None = None, repo: Path | None = None) -> tuple[str, int]:
    """(40-hex commit, commit date in ms since the epoch) of `ref` (default HEAD; '+dirty' dropped)."""
    repo = Path(repo or Path.cwd())
    ref = (ref or "HEAD").removesuffix("+dirty")
    commit = _git(repo, "rev-parse", "--verify", f"{ref}^{{commit}}")
    return commit, int(_git(repo, "show", "-s", "--format=%ct", commit)) * 1000


# ------------------------------------------------------------------------------------ the store
@contextlib.contextmanager
def _locked(directory: Path, name: str = LOCK_FILE) -> Iterator[None]:
    """An exclusive advisory lock (flock) on `directory/name`, held for a read-modify-write."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / name, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def locked_store(results_dir: Path) -> Iterator[None]:
    """Hold the store's lock; clears temp folders a killed writer left (nobody else writes now)."""
    results_dir = Path(results_dir)
    with _locked(results_dir):
        for stale in results_dir.glob(f"{TMP_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
        yield


def _save_through(results_dir: Path, relative: str, save) -> Path:
    """Let asv's `save(tmp_root)` write `tmp_root/relative`, then rename it to `results_dir/relative`."""
    final = results_dir / relative
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(dir=results_dir, prefix=TMP_PREFIX))
    try:
        save(str(tmp_root))
        with open(tmp_root / relative, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_root / relative, final)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return final


def _read_json(path: Path, default):
    return json5.loads(path.read_text()) if path.exists() else default


def param_repr(value) -> str:
    """A parameter value as asv stores it: the Python repr of int, float, str or None."""
    return repr(value)


class Series:
    """Values of one exported benchmark: {tuple of param reprs: value}."""

    def __init__(self, key: str, param_names: Iterable[str], unit: str, description: str):
        self.key, self.param_names, self.unit, self.description = key, list(param_names), unit, description
        self.values: dict[tuple[str, ...], float] = {}

    def add(self, params: Iterable, value: float) -> None:
        self.values[tuple(param_repr(p) for p in params)] = float(value)

    def param_lists(self) -> list[list[str]]:
        return [sorted({c[i] for c in self.values}, key=_natural) for i in range(len(self.param_names))]

    def benchmark_entry(self, params: list[list[str]]) -> dict:
        return {"code": self.description, "name": self.key, "param_names": self.param_names, "params": params,
                "timeout": 60, "type": "track", "unit": self.unit, "version": EXPORT_VERSION}


def _natural(text: str):
    """Numbers numerically and before strings; a value listed in FIRST_VALUES before all others, so
    that asv's first view (the first values of each parameter) shows the main configuration."""
    first = FIRST_VALUES.index(text) if text in FIRST_VALUES else len(FIRST_VALUES)
    try:
        return (first, 0, float(text), "")
    except ValueError:
        return (first, 1, 0.0, text)


def _union(a: list[list[str]], b: list[list[str]]) -> list[list[str]]:
    return [sorted(set(x) | set(y), key=_natural) for x, y in zip(a, b)]


def _save_machine(results_dir: Path, info: dict) -> None:
    from asv.machine import Machine

    machine = Machine()
    machine.__dict__.update({k: v for k, v in info.items() if k != "version"})
    _save_through(results_dir, f"{info['machine']}/machine.json", machine.save)


def ensure_machine(results_dir: Path, machine: str, **keys: str) -> dict[str, str]:
    """The machine's keys from `<results>/<machine>/machine.json`, written first if missing.
    Call with the store locked."""
    path = Path(results_dir) / safe_name(machine, "machine name") / "machine.json"
    if path.exists():
        return {k: v for k, v in _read_json(path, {}).items() if k != "version"}
    info = machine_info(machine, **keys)
    _save_machine(Path(results_dir), info)
    return info


def write_series(series: list[Series], results_dir: Path, machine: str, commit: str, date_ms: int,
                 source: str, machine_keys: dict[str, str] | None = None, python: str | None = None) -> Path:
    """Merge `series` into the results file of (machine, commit, env) and register the benchmarks.

    The environment is `export-<source>-py<X.Y>` (python: the one that measured, default this one).
    The whole read-modify-write runs under the store's lock, so concurrent exporters lose nothing."""
    from asv.results import Results, get_filename
    from asv.runner import BenchmarkResult

    results_dir = Path(results_dir)
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise ValueError(f"commit must be a 40-hex hash, got {commit!r}")
    python = ".".join((python or platform.python_version()).split(".")[:2])
    env_name = safe_name(f"export-{source}-py{python}", "environment name")
    with locked_store(results_dir):
        info = ensure_machine(results_dir, machine, **(machine_keys or {}))
        relative = get_filename(machine, commit, env_name)
        path = results_dir / relative
        results = Results.load(str(path)) if path.exists() else Results(
            {**info, "python": python}, {}, commit, date_ms, python, env_name, {})
        registry = _read_json(results_dir / "benchmarks.json", {"version": 2})
        now = datetime.now(timezone.utc)
        for s in series:
            if not s.values:
                continue
            params = s.param_lists()
            old = registry.get(s.key)
            if old is not None and old.get("param_names") == s.param_names:
                params = _union(old["params"], params)
            values = {}
            if s.key in results.get_all_result_keys():
                values.update(zip(itertools.product(*params), results.get_result_value(s.key, params)))
            values.update(s.values)
            row = [values.get(c) for c in itertools.product(*params)]
            empty = [None] * len(row)
            results.add_result({"name": s.key, "version": EXPORT_VERSION, "params": params},
                               BenchmarkResult(result=row, samples=empty, number=empty, errcode=0, stderr="",
                                               profile=None), started_at=now, duration=0.0)
            registry[s.key] = s.benchmark_entry(params)
        _save_through(results_dir, relative, results.save)
        _write_registry(results_dir, registry)
    return path


def check_group(group: str) -> str:
    """An export group's name (`exported.<group>.*`): letters, digits and _, a letter first."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", group):
        raise ValueError(f"export group {group!r}: letters, digits and _ only, a letter first")
    return group


def drop_export_group(results_dir: Path, group: str) -> list[Path]:
    """Remove every `exported.<group>.*` benchmark from the store: its registry entries (and the
    parameter values they collected) and its results in every file, deleting a file left empty.
    For a one-off study exported again, whole, at the commit of its newest runs. Returns the files
    changed."""
    from asv.results import Results

    check_group(group)
    results_dir, prefix, changed = Path(results_dir), f"exported.{group}.", []
    with locked_store(results_dir):
        for path in sorted(results_dir.glob("*/*.json")):
            if path.name == "machine.json":
                continue
            results = Results.load(str(path))
            keys = [k for k in results.get_all_result_keys() if k.startswith(prefix)]
            if not keys:
                continue
            for key in keys:
                results.remove_result(key)
            if list(results.get_all_result_keys()):
                _save_through(results_dir, str(path.relative_to(results_dir)), results.save)
            else:
                path.unlink()
            changed.append(path)
        registry = _read_json(results_dir / "benchmarks.json", {"version": 2})
        kept = {k: v for k, v in registry.items() if not k.startswith(prefix)}
        if kept != registry:
            _write_registry(results_dir, kept)
    return changed


def _write_registry(results_dir: Path, registry: dict) -> None:
    """benchmarks.json, formatted as asv writes it (so an `asv run` that changes nothing leaves it alone)."""
    registry = {**registry, "version": 2}
    write_atomic(results_dir / "benchmarks.json", json.dumps(registry, indent=4, sort_keys=True))


# ------------------------------------------------------------------------------------- exporters
def _number(text) -> float | None:
    if text is None or isinstance(text, bool):
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _param_value(text: str):
    """CSV cell -> int, float, None or str (the parameter value whose repr is stored)."""
    text = (text or "").strip()
    if text.lower() in ("", "none", "null", "dropless", "nan"):
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def unit_of(metric: str) -> str:
    for pattern, unit in UNITS:
        if re.search(pattern, metric.lower()):
            return unit
    return "value"


def _run_rows(rows: list[dict]) -> list[dict]:
    """The per-run rows: `row_type` == run (train/summarize.py), else rows no text cell calls mean/std.
    A CSV of aggregates only gives its mean rows."""
    if rows and "row_type" in rows[0]:
        runs = [r for r in rows if r["row_type"].strip().lower() == "run"]
        return runs or [r for r in rows if r["row_type"].strip().lower() == "mean"]
    agg = {"mean", "std", "stddev", "sd"}
    runs = [r for r in rows if not any(str(v).strip().lower() in agg for v in r.values())]
    return runs or [r for r in rows if any(str(v).strip().lower() == "mean" for v in r.values())]


def training_router_label(router: str, top_k) -> str:
    """'softk' at k=2, 'top1' at k=1; 'softk k=4' (or 'softk [seed] k=4') otherwise."""
    name = router.split(" [")[0].strip()
    k = _param_value(str(top_k))
    return router if k in (None, USUAL_TOP_K.get(name, 2)) else f"{router} k={k}"


def training_series(summary_csv: Path, group: str = "Training") -> list[Series]:
    """One series per numeric metric column, `exported.<group>.track_<column>`, params router (with
    its top-k where not the usual one: `training_router_label`) x num_experts x capacity_factor.

    Values are the mean over the runs (seeds) of each configuration. Configuration columns
    (dim, layers, ...) other than the parameters and top_k should not vary within a configuration:
    a warning says so when they do (the runs are averaged all the same).
    """
    with open(summary_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{summary_csv} has no rows")
    check_group(group)
    missing = [c for c in (*TRAINING_PARAMS, "top_k") if c not in rows[0]]
    if missing:
        raise ValueError(f"{summary_csv} lacks the column(s) {', '.join(missing)}")
    runs = [{**r, "router": training_router_label(r["router"], r["top_k"])} for r in _run_rows(rows)]
    metrics = [c for c in rows[0] if c not in TRAINING_CONFIG_COLUMNS and not c.endswith("_std")
               and any(_number(r.get(c)) is not None for r in runs)]
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault(tuple(_param_value(r[c]) for c in TRAINING_PARAMS), []).append(r)
    others = [c for c in ("dim", "layers", "heads", "expand", "seq_len", "batch_size", "max_steps") if c in rows[0]]
    for params, members in groups.items():
        varying = [c for c in others if len({m.get(c) for m in members}) > 1]
        if varying:
            print(f"asv_store: warning: runs of {dict(zip(TRAINING_PARAMS, params))} differ in "
                  f"{', '.join(varying)}; the exported value averages them", file=sys.stderr)
    series = []
    for metric in metrics:
        s = Series(f"exported.{group}.track_{slug(metric).replace('-', '_')}", TRAINING_PARAMS, unit_of(metric),
                   f"training summary column {metric!r}: mean over the runs (seeds) of a configuration")
        for params, members in groups.items():
            values = [v for v in (_number(r.get(metric)) for r in members) if v is not None]
            if values:
                s.add(params, statistics.fmean(values))
        series.append(s)
    return series


def training_gpu(summary_csv: Path) -> str | None:
    """The GPU the runs trained on, from the summary's `device_name` column (None: CPU or unknown)."""
    with open(summary_csv, newline="") as f:
        names = {(r.get("device_name") or "").strip() for r in csv.DictReader(f)} - {""}
    cpu_names = {"cpu", platform.processor(), platform.machine(), _cpu_model()}
    gpus = names - cpu_names
    return next(iter(gpus)) if len(gpus) == 1 and not names & cpu_names else None


def _case_label(rec: dict) -> str:
    """The case of a CLI record in one parameter: T-H-E-k, then what differs from the defaults."""
    label = f"T{rec.get('num_tokens', rec.get('tokens'))}-H{rec.get('hidden_dim', rec.get('hidden'))}" \
            f"-E{rec.get('num_experts', rec.get('experts'))}-k{rec.get('top_k', rec.get('k'))}"
    for key, default in (("dtype", None), ("workload", "uniform"), ("strategy", "softk"),
                         ("capacity_factor", None), ("drop_policy", "position"), ("layout", "ragged")):
        value = rec.get(key)
        if value is not None and value != default:
            label += f"-{key.replace('capacity_factor', 'cf').replace('_policy', '')}={value}" if key != "dtype" \
                else f"-{value}"
    return label


def _record_us(rec: dict) -> float | None:
    for key, scale in (("median_us", 1.0), ("avg_ms", 1e3), ("elapsed_ms", 1e3), ("total_ms", 1e3)):
        value = _number(rec.get(key))
        if value is not None:
            return value * scale
    return None


def jsonl_series(records: list[dict]) -> list[Series]:
    s = Series("exported.CliRecord.track_median_us", ("name", "backend", "case"), "us",
               "moe-bench CLI record (--out JSONL): median_us (or the seed's avg_ms, which holds the median)")
    for rec in records:
        value = _record_us(rec)
        if value is not None and rec.get("name"):
            s.add((rec["name"], rec.get("backend") or rec.get("impl") or "torch", _case_label(rec)), value)
    return [s]


def pytest_series(report: dict) -> list[Series]:
    median = Series("exported.PytestBenchmark.track_median_us", ("test",), "us",
                    "pytest-benchmark stats.median of a benchmark test (tests/test_bench_fixtures.py)")
    gbps = Series("exported.PytestBenchmark.track_gbps", ("test",), "GB/s",
                  "pytest-benchmark extra_info GBps (strict bytes / median; higher is better)")
    for b in report.get("benchmarks", []):
        stats = b.get("stats") or {}
        if _number(stats.get("median")) is not None:
            median.add((b["name"],), stats["median"] * 1e6)
        extra = b.get("extra_info") or {}
        if _number(extra.get("GBps")) is not None:
            gbps.add((b["name"],), extra["GBps"])
    return [median, gbps]


def _gpu_keys(device_name: str | None, **extra) -> dict[str, str]:
    """Machine keys of a GPU that measured elsewhere; none (= this host's) for CPU records."""
    if not device_name:
        return {}
    return {"gpu": device_name, **{k: str(v) for k, v in extra.items() if v}}


def export_training_summary(summary_csv: Path, results_dir: Path = DEFAULT_RESULTS_DIR, machine: str | None = None,
                            *, commit: str | None = None, group: str = "Training") -> Path:
    """Export a training summary CSV (a row per run plus mean/std rows) into the store; returns the file.

    Every numeric column that is not configuration becomes `exported.<group>.track_<column>` over
    router (with its top-k where not the usual one) x num_experts x capacity_factor. `Training` is the
    documented sweep's history; a one-off study takes a group of its own, so that its numbers never
    join that history. The commit is HEAD unless given; the machine is this machine (named after its
    GPU) unless given.
    """
    commit_hash, date_ms = resolve_commit(commit)
    gpu = training_gpu(Path(summary_csv))
    machine = default_machine_name(gpu) if machine is None else machine
    return write_series(training_series(Path(summary_csv), group), Path(results_dir), machine, commit_hash, date_ms,
                        "training", machine_keys=_gpu_keys(gpu))


def export_jsonl(jsonl_path: Path, results_dir: Path = DEFAULT_RESULTS_DIR, machine: str | None = None,
                 *, commit: str | None = None) -> list[Path]:
    """Export CLI records; one results file per (machine, commit) found in the records.

    The machine is named after the records' GPU (`device_name`) when they come from one; the commit
    is the records' `git_commit` (without '+dirty') unless given.
    """
    records = read_jsonl(jsonl_path)
    groups: dict[tuple[str, str], list[dict]] = {}
    for rec in records:
        gpu = rec.get("device_name") if rec.get("device") == "cuda" else None
        name = default_machine_name(gpu) if machine is None else machine
        ref = commit or (rec.get("git_commit") if rec.get("git_commit") not in (None, "unknown") else None)
        groups.setdefault((name, ref or "HEAD", gpu or ""), []).append(rec)
    paths = []
    for (name, ref, gpu), recs in groups.items():
        commit_hash, date_ms = resolve_commit(ref)
        keys = _gpu_keys(gpu, torch_version=recs[0].get("torch"), triton_version=recs[0].get("triton"))
        paths.append(write_series(jsonl_series(recs), Path(results_dir), name, commit_hash, date_ms, "cli",
                                  machine_keys=keys, python=recs[0].get("python")))
    return paths


def export_pytest_benchmark(json_path: Path, results_dir: Path = DEFAULT_RESULTS_DIR, machine: str | None = None,
                            *, commit: str | None = None) -> Path:
    """Export a pytest-benchmark JSON report (`--benchmark-json`); machine from its extra_info device."""
    report = json.loads(Path(json_path).read_text())
    gpus = {(b.get("extra_info") or {}).get("device_name") for b in report.get("benchmarks", [])
            if (b.get("extra_info") or {}).get("device") == "cuda"}
    gpu = next(iter(gpus)) if len(gpus) == 1 else None
    commit_hash, date_ms = resolve_commit(commit or (report.get("commit_info") or {}).get("id"))
    machine = default_machine_name(gpu) if machine is None else machine
    keys = _gpu_keys(gpu)
    python = (report.get("machine_info") or {}).get("python_version")
    return write_series(pytest_series(report), Path(results_dir), machine, commit_hash, date_ms, "pytest",
                        machine_keys=keys, python=python)


def import_results(src: Path, results_dir: Path = DEFAULT_RESULTS_DIR, *, commit: str | None = None,
                   date_ms: int | None = None) -> list[Path]:
    """Merge asv results files from `src` (`<machine>/<file>.json` below it, e.g. tools/gpu_asv.sh's
    bundle) into the store. `commit` relabels them (a run against a stand-in repository on a machine
    without the history); the date then comes from this repository when it has the commit, else
    from `date_ms`, else now. Rows of an existing file of the same commit and environment are kept
    unless the import has the same benchmark. Machine and environment names are checked to be
    single safe path components before anything is written."""
    from asv.results import Results, get_filename

    src, results_dir = Path(src), Path(results_dir)
    machines, imports = {}, []
    for machine_json in sorted(src.glob("*/machine.json")):  # everything checked before anything is written
        machine = safe_name(machine_json.parent.name, "machine name")
        info = _read_json(machine_json, {})
        if info.get("machine", machine) != machine:
            raise ValueError(f"{machine_json} names machine {info.get('machine')!r}, not {machine!r}")
        machines[machine] = info
        for f in sorted(machine_json.parent.glob("*.json")):
            if f.name == "machine.json":
                continue
            new = Results.load(str(f))
            safe_name(new.env_name, "environment name")
            if new.params.get("machine", machine) != machine:
                raise ValueError(f"{f} is for machine {new.params.get('machine')!r}, not {machine!r}")
            commit_hash, date = new.commit_hash, new.date
            if commit is not None:
                try:
                    commit_hash, date = resolve_commit(commit)
                except ValueError:
                    if not re.fullmatch(r"[0-9a-f]{40}", commit):
                        raise ValueError(f"{commit!r} is not a commit of this repository nor a 40-hex hash") from None
                    commit_hash, date = commit, date_ms or int(time.time() * 1000)
            if not re.fullmatch(r"[0-9a-f]{40}", commit_hash or ""):
                raise ValueError(f"{f}: commit_hash {commit_hash!r} is not a 40-hex hash")
            imports.append((machine, new, commit_hash, date))
    written = []
    with locked_store(results_dir):
        for machine, info in machines.items():
            if not (results_dir / machine / "machine.json").exists():
                _save_machine(results_dir, {**info, "machine": machine})
        for machine, new, commit_hash, date in imports:
            relative = get_filename(machine, commit_hash, new.env_name)
            target = results_dir / relative
            merged = Results.load(str(target)) if target.exists() else None
            out = Results(new.params, new._requirements, commit_hash, date, new._python, new.env_name, new.env_vars)
            for source in (merged, new):  # later wins
                if source is None:
                    continue
                for attr in ("_results", "_samples", "_stats", "_benchmark_params", "_profiles", "_started_at",
                             "_duration", "_benchmark_version"):
                    getattr(out, attr).update(getattr(source, attr))
            _save_through(results_dir, relative, out.save)
            written.append(target)
    if not written:
        raise ValueError(f"no asv results (<machine>/machine.json and result files) under {src}")
    return written


# ------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m moe_routing_bench.suite.store",
                                 description="export measurements into the asv result store")
    sub = ap.add_subparsers(dest="what", required=True)
    for what, help_ in (("pytest-benchmark", "a pytest-benchmark --benchmark-json file"),
                        ("jsonl", "CLI records (moe-bench ... --out FILE.jsonl)"),
                        ("training", "a training summary CSV (train/summarize.py)")):
        p = sub.add_parser(what, help=help_)
        p.add_argument("file", type=Path)
        p.add_argument("--machine", default=None, help="machine name in the store (default: from the GPU/CPU)")
        p.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR)
        p.add_argument("--commit", default=None, help="commit the numbers belong to (default: recorded, else HEAD)")
    p = sub.add_parser("machine", help="record this machine (gpu, cuda keys) in ~/.asv-machine.json; prints its name")
    p.add_argument("--name", default=None)
    p.add_argument("--machine-file", type=Path, default=None, help="default ~/.asv-machine.json")
    p = sub.add_parser("import-results", help="merge asv results from DIR/<machine>/ (e.g. $OUT/asv of tools/gpu_asv.sh)")
    p.add_argument("dir", type=Path)
    p.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR)
    p.add_argument("--commit", default=None, help="relabel the results with this commit")
    p.add_argument("--date-ms", type=int, default=None, help="commit date when this repository lacks the commit")
    args = ap.parse_args(argv)
    try:
        if args.what == "machine":
            print(register_machine(args.name, args.machine_file)["machine"])
            return 0
        if args.what == "import-results":
            for p in import_results(args.dir, args.results_dir, commit=args.commit, date_ms=args.date_ms):
                print(f"wrote {p}")
            return 0
        if not args.file.exists():
            raise ValueError(f"{args.file} does not exist")
        if args.what == "training":
            paths = [export_training_summary(args.file, args.results_dir, args.machine, commit=args.commit)]
        elif args.what == "jsonl":
            paths = export_jsonl(args.file, args.results_dir, args.machine, commit=args.commit)
        else:
            paths = [export_pytest_benchmark(args.file, args.results_dir, args.machine, commit=args.commit)]
    except (ValueError, KeyError) as e:  # json.JSONDecodeError and json5's errors are ValueErrors
        print(f"store: error: {e}", file=sys.stderr)
        return 2
    for p in paths:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
