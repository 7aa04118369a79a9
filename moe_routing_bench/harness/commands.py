"""`moe-bench` / `python -m moe_routing_bench.cli`: every benchmark of the seed README as a subcommand.

A readable table goes to stdout, full records (JSON lines) to --out. Every flag is validated before
any work starts (sizes, names, the --out path, `file:` workloads, whether the sizes fit in memory).
Error policy: bad input ends with one line on stderr, `moe-bench: error: <subcommand>: <what>`,
and exit status 2, never a traceback. Nothing is written unless asked for, except the sweeps' and
roofline's default outputs, which go under `runs/` (ignored by git).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from . import cases as bench, ep_bench, records, timing
from .seed_names import SEED_BACKEND_NAMES, SEED_FLAG_ALIASES, spellings
from .tables import format_table
from ..routing import metrics
from ..routing.backends import BACKENDS, available_backends, backend_unavailable_reason, get_backend
from ..routing.routers import STRATEGIES, canonical_strategy
from ..routing.plan import DROP_POLICIES
from ..routing.validation import ConfigError, check_capacity_factor, parse_dtype

PROG = "moe-bench"
RUNS_DIR = "runs"  # default outputs (git-ignored)


# ---------------------------------------------------------------------------------------- parsing
class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error policy: a usage error is a ConfigError (one line, exit 2)
    that names the subcommand and points at its --help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        where = self.prog[len(PROG):].strip()
        raise ConfigError(f"{where + ': ' if where else ''}{message} (see '{self.prog} --help')")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _ints(text: str) -> list[int]:
    values = [v.strip() for v in text.split(",")]
    if not text.strip() or any(not v for v in values):
        raise argparse.ArgumentTypeError(f"expected a non-empty comma-separated list of integers, got {text!r}")
    return [_int(v) for v in values]


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _capacity_factor(text: str) -> float | None:
    if text.strip().lower() in ("none", "dropless"):
        return None
    value = _finite(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"capacity factor must be > 0 or 'none', got {text!r}")
    return value


def _capacity_factors(text: str) -> list[float | None]:
    values = [v.strip() for v in text.split(",")]
    if not text.strip() or any(not v for v in values):
        raise argparse.ArgumentTypeError(f"expected a non-empty comma-separated list of capacity factors, got {text!r}")
    return [_capacity_factor(v) for v in values]


def _backend_list(text: str, device: torch.device) -> list[str]:
    """Comma-separated backend names, 'all' or 'auto' (`default_backends`); ConfigError for an empty list or an unknown name."""
    names = [n.strip() for n in text.split(",")]
    if not text.strip() or any(not n for n in names):
        raise ConfigError(f"--backend needs a non-empty comma-separated list of backends, got {text!r}")
    if names == ["all"]:
        return available_backends()
    if names == ["auto"]:
        return default_backends(device)
    out = []
    for n in names:
        n = SEED_BACKEND_NAMES.get(n, n)
        if n not in BACKENDS:
            raise ConfigError(f"unknown backend {n!r}; choose from {', '.join(BACKENDS)}, all (or the seed's torch_soft)")
        if n not in out:
            out.append(n)
    return out


def default_backends(device: torch.device) -> list[str]:
    """`quick`'s and `roofline`'s default (`--backend auto`): every available backend on a GPU; torch
    alone on a CPU, where torch.compile's first compile takes 30-80 s on 2 cores and the Triton
    interpreter minutes, with times that mean nothing (ask for them with --backend all)."""
    return available_backends() if device.type == "cuda" else ["torch"]


def _sizes(p, *, lists=(), tokens=16384, hidden=4096, experts=128, top_k=2, tokens_help="tokens per batch (T)",
           hidden_help="hidden size (H)") -> None:
    def add(flag, dest, default, help_):
        many = dest in lists
        p.add_argument(*spellings(flag), dest=dest, type=_ints if many else _int, default=[default] if many and
                       not isinstance(default, list) else default, metavar="N,..." if many else "N",
                       help=help_ + (" (comma-separated list)" if many else ""))

    add("--num-tokens", "num_tokens", tokens, tokens_help)
    add("--hidden-dim", "hidden_dim", hidden, hidden_help)
    add("--num-experts", "num_experts", experts, "experts (E)" + ("; 0: 16 on a CPU, 128 on a GPU"
                                                                               if experts == 0 else ""))
    add("--top-k", "top_k", top_k, "experts per token (k); top1 uses 1" + ("; 0: 2" if top_k == 0 else ""))


def _run_flags(p, *, iters=100, backend="torch", out=None, out_help="") -> None:
    p.add_argument("--dtype", default="float16", help="float16 | bfloat16 | float32 (aliases fp16, bf16, fp32)")
    p.add_argument("--device", default="auto", help="auto (cuda when present) | cpu | cuda")
    p.add_argument("--seed", type=_int, default=17, help="seed of the synthetic inputs, in [0, 2**63)")
    p.add_argument("--warmup", type=_int, default=10, help="untimed repetitions first (>= 0)")
    p.add_argument("--iters", type=_int, default=iters, help="timed repetitions (>= 1); the median is reported")
    p.add_argument("--workload", default="uniform",
                   help="router logits: uniform | zipf | hot | balanced | stream | file:PATH (a [N, E] tensor saved with torch.save)")
    p.add_argument(*spellings("--backend"), dest="backend", default=backend, metavar="NAMES",
                   help=f"comma-separated backends, 'all', or 'auto' (all on a GPU, torch on a CPU): "
                        f"{', '.join(BACKENDS)} (the seed's torch_soft = torch; --impl and --impl-topk are the "
                        f"seed's spellings)")
    p.add_argument(*spellings("--out"), dest="out", default=out, metavar="PATH",
                   help=out_help or "append full records as JSON lines here (nothing is written without it)")
    p.add_argument("--no-l2-flush", dest="flush_l2", action="store_false",
                   help="GPU: skip the L2 flush between repetitions (there is none on a CPU)")
    p.add_argument("--cuda-graph", action="store_true", help="GPU only: time CUDA-graph replays (small kernels)")


def _router_flags(p) -> None:
    p.add_argument("--strategy", default="softk", help=" | ".join(STRATEGIES) + " (the seed's spellings too)")
    p.add_argument("--temperature", type=_finite, default=1.0,
                   help="softk: softmax temperature over the selected logits (> 0; other strategies record it)")
    p.add_argument(*spellings("--soft-normalize"), dest="soft_normalize", default="softmax",
                   choices=("softmax", "sum"),
                   help="the seed's flag; only softmax is implemented: the seed's 'sum' divided clamped logits, "
                        "which are not probabilities, and is mapped to softmax (recorded)")


def _plan_flags(p, *, capacity_factor: float | None = None, factors: bool = False) -> None:
    if factors:
        p.add_argument("--capacity-factors", type=_capacity_factors, default=[1.0, 1.1, 1.25, 1.5], metavar="CF,...",
                       help="capacity factors (> 0, or 'none' for dropless); C = ceil(cf*T*k/E)")
    else:
        p.add_argument("--capacity-factor", type=_capacity_factor, default=capacity_factor, metavar="CF",
                       help="C = ceil(cf*T*k/E) rows per expert; 'none' (None) is dropless")
    p.add_argument("--drop-policy", default="position", choices=DROP_POLICIES,
                   help="which assignments an expert keeps when full: token order (the seed's) or higher weight first")
    p.add_argument("--renorm-after-drop", action="store_true", help="rescale kept gate weights to the token's total")


# ------------------------------------------------------------------------------------- commands
@dataclass
class Job:
    """A validated invocation: device, backends and every case, all decided before any work."""

    args: argparse.Namespace
    device: torch.device
    backends: list[str]
    cases: list[bench.Case] = field(default_factory=list)


class Runner:
    """Shared state of one invocation: environment metadata and the copy ceiling, measured once."""

    def __init__(self, job: Job):
        self.job, self.args, self.device = job, job.args, job.device
        self.env = records.environment(self.device)
        self._copy = None
        self.records: list[dict] = []
        self._saved = 0  # records[:_saved] are in --out already
        self._start = time.perf_counter()

    @property
    def copy_bytes_per_s(self) -> float:
        if self._copy is None:
            self._copy = timing.copy_bandwidth(self.device)
        return self._copy

    def time(self, fn: Callable[[], object], device) -> timing.Timing:
        a = self.args
        return timing.measure(fn, device, warmup=a.warmup, iters=a.iters, flush_l2=a.flush_l2, cuda_graph=a.cuda_graph)

    def emit(self, record: dict) -> None:
        a = self.args
        extra = {"requested_k": a.top_k} if isinstance(getattr(a, "top_k", None), int) else {}
        self.records.append({**record, **self.env, "warmup": a.warmup, "iters": a.iters,
                             "soft_normalize": getattr(a, "soft_normalize", None), **extra})

    def progress(self, text: str) -> None:
        print(f"[{self.args.command} {time.perf_counter() - self._start:5.1f} s] {text}", file=sys.stderr, flush=True)

    def save(self) -> None:
        """Append the records not yet in --out: called after each case, so an interrupted sweep keeps
        every finished case."""
        if self.args.out and self._saved < len(self.records):
            self._saved += records.append_jsonl(self.args.out, self.records[self._saved:])

    def finish(self, columns: list[str]) -> None:
        self.save()
        print(format_table(self.records, columns))
        if self.args.out:
            print(f"wrote {self._saved} records to {self.args.out}")


STAGE_COLUMNS = ["name", "backend", "num_tokens", "hidden_dim", "num_experts", "top_k", "workload",
                 "median_us", "p10_us", "p90_us", "bw_GBps_strict", "pct_of_copy", "pct_of_stream"]


def _stage_records(run: Runner, case: bench.Case, stages: tuple[str, ...]) -> None:
    inputs = bench.make_inputs(case)
    copy = run.copy_bytes_per_s
    for name in run.job.backends:
        if name != "torch":
            run.progress(f"{name}: first calls ({'torch.compile compiles' if name == 'compile' else 'Triton kernels compile'}"
                         f"{' in the interpreter' if name == 'triton' and run.env['triton_interpreter'] else ''}; "
                         f"a cold cache takes a while)")
        fns = bench.stage_callables(get_backend(name), case, inputs)
        for stage in stages:
            rec = bench.stage_record(stage, case, name, run.time(fns[stage], case.device), copy)
            run.emit(rec)
            run.progress(f"{name} {stage}: {rec['median_us']:.1f} us (T={case.num_tokens} H={case.hidden_dim} "
                         f"E={case.num_experts} k={case.top_k})")


def cmd_stages(job: Job, stages: tuple[str, ...]) -> None:
    run = Runner(job)
    for case in job.cases:
        _stage_records(run, case, stages)
        run.save()
    run.finish(STAGE_COLUMNS)


def cmd_quick(job: Job) -> None:
    run = Runner(job)
    case = job.cases[0]
    print(f"quick routing-path benchmark on {run.env['device_name']} ({run.device.type}), "
          f"T={case.num_tokens} H={case.hidden_dim} E={case.num_experts} K={case.top_k} {case.dtype}; "
          f"backends {', '.join(job.backends)}", flush=True)
    if "triton" in job.backends and run.env["triton_interpreter"]:
        print("note: no GPU here, so triton runs in its interpreter: its times are not kernel times", flush=True)
    _stage_records(run, case, bench.STAGES)
    run.finish(STAGE_COLUMNS)


def _routing_load(case: bench.Case, inputs: bench.Inputs) -> dict:
    """Load and drop statistics of the case's routing (reference backend)."""
    b = get_backend("torch")
    routing = b.route(inputs.logits_TE, case.strategy, case.top_k, token_ids_T=inputs.token_ids_T,
                      temperature=case.temperature)
    plan = b.build_plan(routing, capacity_factor=case.capacity_factor, drop_policy=case.drop_policy,
                        renormalize_kept=case.renormalize_kept)
    return {**metrics.load_stats(plan.counts_E), **metrics.drop_rates(plan.kept_TK, routing.valid_TK),
            "capacity": plan.capacity}


def _backend_stages(job: Job, case: bench.Case, inputs: bench.Inputs) -> Iterator[tuple[str, dict]]:
    """(backend name, its stage callables on `inputs`) for each of the job's backends, one at a time."""
    for name in job.backends:
        yield name, bench.stage_callables(get_backend(name), case, inputs)


def _cases_with_load(job: Job) -> Iterator[tuple[bench.Case, dict, Iterator[tuple[str, dict]]]]:
    """For each case: (case, its routing load, its backends' stage callables); inputs made once per case."""
    for case in job.cases:
        inputs = bench.make_inputs(case)
        yield case, _routing_load(case, inputs), _backend_stages(job, case, inputs)


def cmd_pack(job: Job, ops: tuple[str, ...], label: str) -> None:
    """bench-pack (pack + combine), bench-pack-only, bench-combine-only."""
    run = Runner(job)
    for case, load, backends in _cases_with_load(job):
        for name, fns in backends:
            times = {op: run.time(fns[op], case.device) for op in ops}
            seconds = sum(t.median_s for t in times.values())
            op = "pack_combine" if len(ops) == 2 else ops[0]
            nbytes = metrics.bytes_per_token_strict(case.top_k, case.hidden_dim, parse_dtype(case.dtype).itemsize, op)
            bw = metrics.bandwidth(nbytes * case.num_tokens, seconds, run.copy_bytes_per_s)
            rec = {"name": f"{label}_{name}", "backend": name, **case.as_record(), "avg_ms": seconds * 1e3,
                   "tokens_per_s": case.num_tokens / seconds, "bw_GiBps_strict": bw["bw_GiBps"],
                   "bw_GBps_strict": bw["bw_GBps"], "pct_of_copy": bw["pct_of_copy"],
                   "cache_resident": bench.is_cache_resident(bw["pct_of_copy"]), "bytes_per_token_strict": nbytes,
                   "bytes_per_token": nbytes, "copy_GBps": run.copy_bytes_per_s / 1e9, **load}
            for o, t in times.items():
                rec[f"{o}_ms"] = t.median_s * 1e3
                rec.update(t.as_record(f"{o}_time_"))
            run.emit(rec)
            run.progress(f"{name} {label}: {seconds * 1e3:.3f} ms")
        run.save()
    run.finish(["name", "num_tokens", "hidden_dim", "num_experts", "top_k", "avg_ms", "pack_ms", "combine_ms",
                "bw_GBps_strict", "pct_of_copy", "load_cv"])


def cmd_capacity(job: Job) -> None:
    """bench-capacity (one E, k; several capacity factors) and sweep-capacity (E x k x cf)."""
    run = Runner(job)
    for case, load, backends in _cases_with_load(job):
        for name, fns in backends:
            t = run.time(fns["routing_path"], case.device)
            rec = bench.stage_record("routing_path", case, name, t, run.copy_bytes_per_s)
            rec.update(load, name=f"pack_capacity_{name}", elapsed_ms=t.median_s * 1e3)
            run.emit(rec)
        run.progress(f"done E={case.num_experts} k={case.top_k} cf={case.capacity_factor}")
        run.save()
    run.finish(["name", "num_experts", "top_k", "capacity_factor", "capacity", "avg_drop_rate", "token_drop_rate",
                "median_us", "bw_GBps_strict", "pct_of_copy"])


def cmd_sweep_pack(job: Job) -> None:
    run = Runner(job)
    for case in job.cases:
        _stage_records(run, case, ("pack", "combine"))
        run.save()
    run.finish(STAGE_COLUMNS)


def cmd_moe_layer(job: Job) -> None:
    from ..routing.layer import MoEConfig, MoELayer

    run, args = Runner(job), job.args
    dense_flops = timing.matmul_flops(run.device, parse_dtype(job.cases[0].dtype))  # the same run's compute ceiling
    for case in job.cases:
        dtype = parse_dtype(case.dtype)
        H, F = case.hidden_dim, args.ffn_dim or case.hidden_dim * args.expand
        for name in job.backends:
            torch.manual_seed(case.seed)
            layer = MoELayer(MoEConfig(H, F, case.num_experts, case.top_k, strategy=case.strategy, backend=name,
                                       capacity_factor=case.capacity_factor, drop_policy=case.drop_policy,
                                       renormalize_kept=case.renormalize_kept, temperature=case.temperature))
            layer = layer.to(case.device)
            inputs = bench.make_inputs(case)
            x, ids = inputs.x_TH, inputs.token_ids_T
            with torch.no_grad():  # the layer's own stages, as its forward runs them
                _, routing = layer.route(x, ids)
                plan = layer.plan(routing, x)
                packed = layer.backend.pack(x, plan)
                y = layer.experts(packed, plan)
                stage_fns = {
                    "router": lambda: layer.route(x, ids),
                    "plan": lambda: layer.plan(routing, x),
                    "pack": lambda: layer.backend.pack(x, plan),
                    "ffn": lambda: layer.experts(packed, plan),
                    "combine": lambda: layer.backend.combine(y, plan),
                }
                times = {k: run.time(fn, case.device) for k, fn in stage_fns.items()}
            xg = x.detach().clone().requires_grad_(True)

            def fwd_bwd():
                out, aux = layer(xg, inputs.token_ids_T)
                (out.float().square().mean() + 0.01 * aux.balance_loss).backward()

            fb = run.time(fwd_bwd, case.device)
            kept = int(plan.kept_TK.sum())
            flops_fwd = 2 * kept * H * F * 2  # two GEMMs over kept rows only (useful FLOPs)
            total_s = sum(t.median_s for t in times.values())
            routing_s = sum(times[k].median_s for k in ("router", "plan", "pack", "combine"))
            nbytes = metrics.bytes_per_token_strict(case.top_k, H, dtype.itemsize) * case.num_tokens
            rec = {"name": "moe_ffn_layer_microbench", "backend": name, **case.as_record(), "expand": args.expand, "ffn_dim": F,
                   **{f"{k}_ms": t.median_s * 1e3 for k, t in times.items()}, "total_ms": total_s * 1e3,
                   "routing_share": routing_s / total_s, "tflops_total": flops_fwd / total_s / 1e12,
                   "fwd_bwd_ms": fb.median_s * 1e3, "tflops_fwd_bwd": 3 * flops_fwd / fb.median_s / 1e12,
                   "dense_mm_tflops": dense_flops / 1e12,
                   "pct_of_dense_fwd_bwd": 300 * flops_fwd / fb.median_s / dense_flops,
                   "bw_GiBps_strict": nbytes / (times["pack"].median_s + times["combine"].median_s) / 2**30,
                   "bytes_per_token_strict": nbytes // case.num_tokens, "capacity": plan.capacity,
                   **metrics.load_stats(plan.counts_E), **metrics.drop_rates(plan.kept_TK, routing.valid_TK)}
            run.emit(rec)
            run.progress(f"{name} layer: forward stages {total_s * 1e3:.3f} ms, forward+backward {fb.median_s * 1e3:.3f} ms")
        run.save()
    run.finish(["name", "backend", "strategy", "router_ms", "plan_ms", "pack_ms", "ffn_ms", "combine_ms", "total_ms",
                "routing_share", "tflops_total", "fwd_bwd_ms", "tflops_fwd_bwd", "pct_of_dense_fwd_bwd", "avg_drop_rate"])


def cmd_env(job: Job) -> None:
    env = records.environment(job.device)
    env["copy_GBps"] = timing.copy_bandwidth(job.device) / 1e9
    env["backends"] = available_backends()
    for k, v in env.items():
        print(f"{k:>18}: {v}")
    if job.args.out:
        n = records.append_jsonl(job.args.out, [env])
        print(f"wrote {n} records to {job.args.out}")


def cmd_roofline(job: Job) -> None:
    from .roofline import plot_roofline, run_roofline

    run, args = Runner(job), job.args
    recs = run_roofline(job.cases, job.backends, device=str(job.device), dtype=job.cases[0].dtype, iters=args.iters,
                        warmup=args.warmup, copy_bytes_per_s=run.copy_bytes_per_s, flush_l2=args.flush_l2)
    for rec in recs:
        run.emit(rec)
    plot_roofline(run.records, args.png)  # first: a failed plot leaves no records behind
    print(f"wrote {args.png}")
    run.finish(STAGE_COLUMNS)


# ------------------------------------------------------------------------------------ validation
def _check_writable(path: str, flag: str) -> None:
    """`path` can be appended to or created (tried now, before any work, so no result is lost at
    the end; permission bits alone say nothing to root). Leaves no file behind."""
    if not path.strip():
        raise ConfigError(f"{flag} needs a file path")
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{flag} {path} is a directory")
    try:
        if p.exists():
            with open(p, "a"):
                return
        parent = p.parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise ConfigError(f"{flag} {path}: {parent} is not a directory")
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise ConfigError(f"{flag} {path} cannot be written ({e.strerror or e})") from None


def _grid(args, device: torch.device) -> list[bench.Case]:
    """Every case of the invocation, validated (file workloads loaded, memory estimated)."""
    def as_list(v):
        return v if isinstance(v, list) else [v]

    factors = getattr(args, "capacity_factors", None) or [getattr(args, "capacity_factor", None)]
    dtype = str(parse_dtype(args.dtype)).replace("torch.", "")
    cases = []
    for T in as_list(args.num_tokens):
        for H in as_list(args.hidden_dim):
            for E in as_list(args.num_experts):
                for k in as_list(args.top_k):
                    for cf in factors:
                        check_capacity_factor(cf)
                        case = bench.Case(T, H, E, 1 if args.strategy == "top1" else k, dtype=dtype,
                                          device=str(device), workload=args.workload, seed=args.seed,
                                          strategy=args.strategy, capacity_factor=cf, drop_policy=args.drop_policy,
                                          renormalize_kept=args.renorm_after_drop, temperature=args.temperature)
                        case = case.validated()
                        if case not in cases:  # top1 maps every k to 1
                            cases.append(case)
    for case in {(c.num_tokens, c.hidden_dim, c.num_experts, c.top_k): c for c in cases}.values():
        bench.check_fits(case, ffn_dim=getattr(args, "ffn_dim", None) or case.hidden_dim * getattr(args, "expand", 0))
    return cases


def prepare(args) -> Job:
    """Validate every flag and build the Job; raises ConfigError before any work starts."""
    device = bench.resolve_device(args.device)
    if args.command in ("env", "publish"):
        if getattr(args, "out", None) is not None:
            _check_writable(args.out, "--out")
        return Job(args, device, [])
    if args.warmup < 0:
        raise ConfigError(f"--warmup must be >= 0, got {args.warmup}")
    if args.iters < 1:
        raise ConfigError(f"--iters must be >= 1, got {args.iters}")
    if args.cuda_graph and device.type != "cuda":
        raise ConfigError("--cuda-graph times CUDA-graph replays and needs a CUDA device")
    if getattr(args, "expand", 1) < 1:
        raise ConfigError(f"--expand must be >= 1, got {args.expand}")
    if getattr(args, "ffn_dim", None) is not None and args.ffn_dim < 1:
        raise ConfigError(f"--ffn-dim must be >= 1, got {args.ffn_dim}")
    if args.command == "bench-moe-layer" and args.workload != "uniform":
        raise ConfigError("the layer routes with its own router (logits from its weights), so --workload does not "
                          "apply; drop it or use bench-routing")
    args.strategy = canonical_strategy(args.strategy)
    backends = _backend_list(args.backend, device)
    for name in backends:
        reason = backend_unavailable_reason(name)
        if reason is not None:
            raise ConfigError(f"backend {name}: {reason}")
    if args.out is not None:
        _check_writable(args.out, "--out")
    if getattr(args, "png", None) is not None:
        _check_writable(args.png, "--png")
    if args.command == "quick":  # small sizes on CPU: a smoke run, not a claim
        for name, value in bench.main_shape(device).items():
            setattr(args, name, getattr(args, name) or value)
    return Job(args, device, backends, _grid(args, device))


# ----------------------------------------------------------------------------------------- parser
def build_parser(extra_commands: Sequence[Callable[[argparse._SubParsersAction], None]] = ()) -> argparse.ArgumentParser:
    """The `moe-bench` parser; `extra_commands` add subcommands from outside the harness (the suite's publish)."""
    ap = _Parser(prog=PROG, description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str, description: str = "") -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=f"{help_}.\n\n{description}".strip())

    p = add("quick", "the whole routing path (top-k, plan, pack, combine) at a small size",
            "Default backends: all on a GPU; torch on a CPU (compile and the Triton interpreter when asked: "
            "--backend all, or torch,compile). Sizes default to T=1024 H=256 E=16 k=2 on a CPU, T=16384 H=4096 E=128 k=2 "
            "on a GPU (0 = that default).")
    _sizes(p, tokens=0, hidden=0, experts=0, top_k=0, tokens_help="tokens (T); 0: 1024 on a CPU, 16384 on a GPU",
           hidden_help="hidden size (H); 0: 256 on a CPU, 4096 on a GPU")
    _run_flags(p, iters=20, backend="auto")
    _router_flags(p)
    _plan_flags(p)
    p.set_defaults(func=cmd_quick, dtype="bfloat16")

    p = add("bench-topk", "router: softmax + top-k + weights (the seed's bench_topk.py)",
            "--hidden-dim sizes the activations made alongside; the router does not read them.")
    _sizes(p)
    _run_flags(p)
    _router_flags(p)
    p.set_defaults(func=lambda job: cmd_stages(job, ("topk",)), capacity_factor=None, drop_policy="position",
                   renorm_after_drop=False)

    p = add("bench-routing", "the routing path: top-k, plan, pack, combine, and their sum")
    _sizes(p)
    _run_flags(p)
    _router_flags(p)
    _plan_flags(p)
    p.set_defaults(func=lambda job: cmd_stages(job, bench.STAGES))

    for name, ops, label, help_ in [
        ("bench-pack", ("pack", "combine"), "pack_combine", "pack then combine (the seed's bench_pack.py)"),
        ("bench-pack-only", ("pack",), "pack_only", "pack alone (the seed's bench_pack_only.py)"),
        ("bench-combine-only", ("combine",), "combine_only", "weighted combine alone (the seed's bench_combine_only.py)"),
    ]:
        p = add(name, help_)
        _sizes(p)
        _run_flags(p)
        _router_flags(p)
        _plan_flags(p)
        p.set_defaults(func=lambda job, ops=ops, label=label: cmd_pack(job, ops, label))

    p = add("bench-moe-layer", "MoE layer: router + plan + pack + expert MLPs (grouped GEMM) + combine, "
            "and forward + backward", "The layer's own router computes the logits (seeded weights), so only "
            "--workload uniform applies; load and drop statistics are the layer's.")
    _sizes(p, tokens=8192, hidden=1024, experts=32)
    _run_flags(p)
    _router_flags(p)
    _plan_flags(p, capacity_factor=1.25)
    p.add_argument("--expand", type=_int, default=4, help="expert hidden = expand * hidden-dim (>= 1)")
    p.add_argument("--ffn-dim", type=_int, default=None, help="expert hidden size (overrides --expand)")
    p.set_defaults(func=cmd_moe_layer)

    p = add("sweep-pack", "pack and combine over a grid of sizes (the seed's sweep_pack.py)")
    _sizes(p, lists=("num_tokens", "hidden_dim", "num_experts", "top_k"), tokens=[8192, 16384, 32768],
           hidden=[2048, 4096], experts=[32, 64, 128], top_k=[1, 2, 4])
    _run_flags(p, out=f"{RUNS_DIR}/pack.jsonl", out_help="append full records as JSON lines here")
    _router_flags(p)
    _plan_flags(p)
    p.set_defaults(func=cmd_sweep_pack)

    p = add("sweep-capacity", "drops and time over experts x top-k x capacity factor (the seed's sweep_capacity_ke.py)")
    _sizes(p, lists=("num_experts", "top_k"), experts=[32, 64, 128], top_k=[1, 2, 4])
    _run_flags(p, iters=20, out=f"{RUNS_DIR}/capacity_ke.jsonl", out_help="append full records as JSON lines here")
    _router_flags(p)
    _plan_flags(p, factors=True)
    p.set_defaults(func=cmd_capacity)

    p = add("bench-capacity", "the routing path at several capacity factors (the seed's bench_capacity.py)")
    _sizes(p)
    _run_flags(p)
    _router_flags(p)
    _plan_flags(p, factors=True)
    p.set_defaults(func=cmd_capacity)

    p = add("env", "device, versions and the copy bandwidth measured now")
    p.add_argument("--device", default="auto", help="auto (cuda when present) | cpu | cuda")
    p.add_argument(*spellings("--out"), dest="out", default=None, metavar="PATH",
                   help="append the environment as a JSON line here")
    p.set_defaults(func=cmd_env)

    p = add("roofline", "time, GB/s and percent of copy bandwidth per primitive and backend: JSONL and PNG",
            "Default backends as quick's: all on a GPU, torch on a CPU unless asked for.")
    _sizes(p)
    _run_flags(p, backend="auto")
    _router_flags(p)
    _plan_flags(p)
    p.add_argument("--png", default=f"{RUNS_DIR}/roofline.png", metavar="PATH", help="the chart")
    p.set_defaults(func=cmd_roofline, dtype="bfloat16")
    ep_bench.add_command(sub)
    for add_command in extra_commands:
        add_command(sub)
    return ap


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv: list[str] | None = None,
         extra_commands: Sequence[Callable[[argparse._SubParsersAction], None]] = ()) -> int:
    """Run one `moe-bench` command; 0 on success, 2 with one `moe-bench: error: ...` line on bad input."""
    start = time.perf_counter()
    command = ""
    try:
        parser = build_parser(extra_commands)
        args, unknown = parser.parse_known_args(argv)
        command = args.command
        if unknown:  # reported under the subcommand's usage, not the top level's
            raise ConfigError(f"{command}: unrecognized arguments: {' '.join(unknown)} "
                              f"(see '{PROG} {command} --help')")
        if getattr(args, "standalone", False):  # validates its own flags (publish, bench-ep)
            args.func(args)
        else:
            job = prepare(args)
            threads = torch.get_num_threads()
            if job.device.type == "cpu":  # as the pytest-benchmark fixtures and the gate
                torch.set_num_threads(1)  # 2 threads on 2 vCPUs time bimodally
                timing.stable_cpu_allocator()
            try:
                args.func(job)
            finally:
                torch.set_num_threads(threads)
        print(f"[{args.command} finished in {time.perf_counter() - start:.1f} s]", file=sys.stderr)
    except ConfigError as e:
        message = _one_line(e)
        if command and not message.startswith(f"{command}:"):
            message = f"{command}: {message}"
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    except (torch.OutOfMemoryError, MemoryError) as e:
        print(f"{PROG}: error: out of memory ({_one_line(e)[:200]}); use smaller sizes", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a file that vanished: say which and what
        where = f": {e.filename}" if e.filename else ""
        print(f"{PROG}: error: {command + ': ' if command else ''}{e.strerror or _one_line(e)}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; the records of every finished case are in --out (when given)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
