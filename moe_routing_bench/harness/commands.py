"""`moe-bench` / `python -m moe_routing_bench.cli`: every benchmark of the seed README as a subcommand.

Seed flags and defaults are kept; a flag that no longer makes sense is accepted and its help says
why. A readable table goes to stdout, full records (JSON lines) to --out/--output.
Bad input ends with one line `moe-bench: error: ...` and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from typing import Callable, Iterable, Sequence

import torch

from . import cases as bench, records as store, timing
from . import ep_bench
from ..routing import metrics
from ..routing.backends import BACKENDS, available_backends, get_backend
from ..routing.validation import ConfigError, parse_dtype
from ..routing.routers import canonical_strategy

SEED_BACKEND_NAMES = {"torch_soft": "torch"}  # the seed's only backend name


# ---------------------------------------------------------------------------------------- parsing
def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _capacity_factor(text: str) -> float | None:
    if text.strip().lower() in ("none", "dropless", ""):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"capacity factor must be a number or 'none', got {text!r}") from None


def _backend_list(text: str | None) -> list[str]:
    if text is None:
        raise ConfigError("no backend given")
    if text == "all":
        return available_backends()
    names = [SEED_BACKEND_NAMES.get(n, n) for n in text.split(",") if n]
    for n in names:
        if n not in BACKENDS:
            raise ConfigError(f"unknown backend {n!r}; choose from {', '.join(BACKENDS)}, all (or the seed's torch_soft)")
    return names


def _common(p: argparse.ArgumentParser, *, tokens=16384, hidden=4096, experts=128, top_k=2, iters=100,
            device="auto", backend="torch") -> None:
    p.add_argument("--num-tokens", type=int, default=tokens)
    p.add_argument("--hidden-dim", type=int, default=hidden)
    p.add_argument("--num-experts", type=int, default=experts)
    p.add_argument("--top-k", type=int, default=top_k)
    _run_flags(p, iters=iters, device=device, backend=backend)


def _run_flags(p: argparse.ArgumentParser, *, iters=100, device="auto", backend="torch") -> None:
    p.add_argument("--dtype", default="float16", help="float16 | bfloat16 | float32 (aliases fp16, bf16, fp32)")
    p.add_argument("--device", default=device, help="auto (cuda when present) | cpu | cuda")
    p.add_argument("--seed", type=int, default=17)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--iters", type=int, default=iters)
    p.add_argument("--workload", default="uniform", help="uniform | zipf | hot | balanced | file:PATH (recorded logits)")
    p.add_argument("--backend", default=None,
                   help=f"comma-separated backends or 'all': {', '.join(BACKENDS)} (the seed's torch_soft = torch); "
                        f"default {backend}")
    p.set_defaults(default_backend=backend)
    p.add_argument("--out", "--output", dest="out", default="", help="append full records as JSON lines here")
    p.add_argument("--no-l2-flush", dest="flush_l2", action="store_false", help="GPU: skip the L2 flush between repetitions")
    p.add_argument("--cuda-graph", action="store_true", help="GPU: time CUDA-graph replays (small kernels)")


def _routing_flags(p: argparse.ArgumentParser, *, strategy="softk") -> None:
    p.add_argument("--strategy", default=strategy, help="top1 | topk-hard | softk | hash | expert-choice | aux-free")
    p.add_argument("--temperature", type=float, default=1.0, help="softk: softmax temperature over the selected logits")
    p.add_argument("--soft-normalize", "--soft_normalize", dest="soft_normalize", default="softmax",
                   help="accepted for the seed's scripts; only 'softmax' is implemented: the seed's 'sum' "
                        "divided clamped logits, which are not probabilities, and is mapped to softmax")
    p.add_argument("--renorm-after-drop", action="store_true", help="rescale kept gate weights to the token's total")
    p.add_argument("--drop-policy", default="position", help="position (token order, the seed's) | score (higher weight kept)")


# ------------------------------------------------------------------------------------ execution
def _case(args, **over) -> bench.Case:
    c = bench.Case(
        num_tokens=getattr(args, "num_tokens", 0), hidden_dim=getattr(args, "hidden_dim", 0),
        num_experts=getattr(args, "num_experts", 0), top_k=getattr(args, "top_k", 0),
        dtype=str(parse_dtype(args.dtype)).replace("torch.", ""), device=args.device, workload=args.workload,
        seed=args.seed, strategy=getattr(args, "strategy", "softk"),
        drop_policy=getattr(args, "drop_policy", "position"),
        capacity_factor=getattr(args, "capacity_factor", None),
        renormalize_kept=getattr(args, "renorm_after_drop", False),
    )
    c = replace(c, **over)
    if c.strategy in ("top1",) and c.top_k != 1:
        c = replace(c, top_k=1)  # top1 always routes to one expert; requested_k is recorded
    return c.validated()


class Runner:
    """Shared state of one invocation: environment metadata and the copy ceiling, measured once."""

    def __init__(self, args):
        self.args = args
        self.device = bench.resolve_device(args.device)
        self.env = store.environment(self.device)
        self._copy = None
        self.records: list[dict] = []

    @property
    def copy_bytes_per_s(self) -> float:
        if self._copy is None:
            self._copy = timing.copy_bandwidth(self.device)
        return self._copy

    def time(self, fn: Callable[[], object], device) -> timing.Timing:
        a = self.args
        return timing.measure(fn, device, warmup=a.warmup, iters=a.iters, flush_l2=a.flush_l2, cuda_graph=a.cuda_graph)

    def emit(self, record: dict) -> None:
        self.records.append({**record, **self.env, "warmup": self.args.warmup, "iters": self.args.iters})

    def finish(self, columns: list[str]) -> None:
        print_table(self.records, columns)
        if self.args.out:
            store.append_jsonl(self.args.out, self.records)
            print(f"wrote {len(self.records)} records to {self.args.out}")


def print_table(rows: list[dict], columns: Iterable[str]) -> None:
    columns = [c for c in columns if any(c in r for r in rows)]
    if not rows or not columns:
        return

    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
        return "-" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


STAGE_COLUMNS = ["name", "backend", "num_tokens", "hidden_dim", "num_experts", "top_k", "workload",
                 "median_us", "p10_us", "p90_us", "bw_GBps_strict", "pct_of_copy"]


def _stage_records(run: Runner, case: bench.Case, backends: list[str], stages: tuple[str, ...], extra: dict | None = None):
    inputs = bench.make_inputs(case)
    copy = run.copy_bytes_per_s
    for name in backends:
        fns = bench.stage_callables(get_backend(name), case, inputs)
        for stage in stages:
            rec = bench.stage_record(stage, case, name, run.time(fns[stage], case.device), copy)
            run.emit({**rec, **(extra or {})})
    return inputs


def cmd_stages(args, stages: tuple[str, ...], backend_arg: str) -> None:
    run = Runner(args)
    case = _case(args, device=str(run.device))
    _stage_records(run, case, _backend_list(backend_arg), stages)
    run.finish(STAGE_COLUMNS)


def cmd_quick(args) -> None:
    run = Runner(args)
    if run.device.type == "cpu":  # small sizes on CPU: a smoke run, not a claim
        args.num_tokens = args.num_tokens or 1024
        args.hidden_dim = args.hidden_dim or 256
    else:
        args.num_tokens = args.num_tokens or 16384
        args.hidden_dim = args.hidden_dim or 4096
    case = _case(args, device=str(run.device))
    print(f"quick routing-path benchmark on {run.env['device_name']} ({run.device.type}), "
          f"T={case.num_tokens} H={case.hidden_dim} E={case.num_experts} K={case.top_k} {case.dtype}")
    backends = _backend_list(args.backend)
    if "triton" in backends and run.env["triton_interpreter"]:
        print("note: no GPU here, so triton runs in its interpreter: its times are not kernel times")
    _stage_records(run, case, backends, bench.STAGES)
    run.finish(STAGE_COLUMNS)


def _routing_load(case: bench.Case, inputs: bench.Inputs) -> dict:
    """Load and drop statistics of the case's routing (reference backend)."""
    b = get_backend("torch")
    routing = b.route(inputs.logits_TE, case.strategy, case.top_k, token_ids_T=inputs.token_ids_T)
    plan = b.build_plan(routing, capacity_factor=case.capacity_factor, drop_policy=case.drop_policy)
    return {**metrics.load_stats(plan.counts_E), **metrics.drop_rates(plan.kept_TK, routing.valid_TK),
            "capacity": plan.capacity}


def cmd_pack(args, ops: tuple[str, ...], label: str) -> None:
    """bench-pack (pack + combine), bench-pack-only, bench-combine-only."""
    run = Runner(args)
    case = _case(args, device=str(run.device))
    inputs = bench.make_inputs(case)
    load = _routing_load(case, inputs)
    for name in _backend_list(args.backend):
        fns = bench.stage_callables(get_backend(name), case, inputs)
        times = {op: run.time(fns[op], case.device) for op in ops}
        seconds = sum(t.median_s for t in times.values())
        op = "pack_combine" if len(ops) == 2 else ops[0]
        nbytes = metrics.bytes_per_token_strict(case.top_k, case.hidden_dim, parse_dtype(case.dtype).itemsize, op)
        bw = metrics.bandwidth(nbytes * case.num_tokens, seconds, run.copy_bytes_per_s)
        rec = {"name": f"{label}_{name}", "backend": name, **case.as_record(), "avg_ms": seconds * 1e3,
               "tokens_per_s": case.num_tokens / seconds, "bw_GiBps_strict": bw["bw_GiBps"],
               "bw_GBps_strict": bw["bw_GBps"], "pct_of_copy": bw["pct_of_copy"], "bytes_per_token_strict": nbytes,
               "bytes_per_token": nbytes, "copy_GBps": run.copy_bytes_per_s / 1e9, **load}
        for o, t in times.items():
            rec[f"{o}_ms"] = t.median_s * 1e3
            rec.update(t.as_record(f"{o}_time_"))
        run.emit(rec)
    run.finish(["name", "num_tokens", "hidden_dim", "num_experts", "top_k", "avg_ms", "pack_ms", "combine_ms",
                "bw_GBps_strict", "pct_of_copy", "load_cv"])


def cmd_sweep_pack(args) -> None:
    run = Runner(args)
    for T in args.tokens:
        for H in args.hidden:
            for E in args.experts:
                for k in args.topk:
                    case = bench.Case(T, H, E, k, dtype=str(parse_dtype(args.dtype)).replace("torch.", ""),
                                      device=str(run.device), workload=args.workload, seed=args.seed).validated()
                    _stage_records(run, case, _backend_list(args.backend), ("pack", "combine"))
                    print(f"done T={T} H={H} E={E} k={k}", flush=True)
    run.finish(STAGE_COLUMNS)


def cmd_capacity(args, sweep: bool) -> None:
    """bench-capacity (one E, k; several capacity factors) and sweep-capacity (E x k x cf)."""
    run = Runner(args)
    experts = args.experts if sweep else [args.num_experts]
    topks = args.topk if sweep else [args.top_k]
    for E in experts:
        for k in topks:
            for cf in args.capacity_factors:
                case = _case(args, device=str(run.device), num_tokens=args.num_tokens, hidden_dim=args.hidden_dim,
                             num_experts=E, top_k=k, capacity_factor=cf)
                inputs = bench.make_inputs(case)
                load = _routing_load(case, inputs)
                for name in _backend_list(args.backend):
                    fns = bench.stage_callables(get_backend(name), case, inputs)
                    t = run.time(fns["routing_path"], case.device)
                    rec = bench.stage_record("routing_path", case, name, t, run.copy_bytes_per_s)
                    rec.update(load, name=f"pack_capacity_{name}", requested_k=k, elapsed_ms=t.median_s * 1e3)
                    run.emit(rec)
                print(f"done E={E} k={case.top_k} cf={cf}", flush=True)
    run.finish(["name", "num_experts", "top_k", "capacity_factor", "capacity", "avg_drop_rate", "token_drop_rate",
                "median_us", "bw_GBps_strict", "pct_of_copy"])


def cmd_moe_layer(args) -> None:
    from ..routing.layer import MoEConfig, MoELayer

    run = Runner(args)
    cf = args.capacity_factor
    case = _case(args, device=str(run.device))
    dtype = parse_dtype(case.dtype)
    H, F = case.hidden_dim, case.hidden_dim * args.expand
    dense_flops = timing.matmul_flops(run.device, dtype)  # the same run's compute ceiling
    for name in _backend_list(args.backend):
        torch.manual_seed(case.seed)
        layer = MoELayer(MoEConfig(H, F, case.num_experts, case.top_k, strategy=case.strategy, backend=name,
                                   capacity_factor=cf, drop_policy=case.drop_policy,
                                   renormalize_kept=case.renormalize_kept, temperature=args.temperature))
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
        routing_s = times["router"].median_s + times["plan"].median_s + times["pack"].median_s + times["combine"].median_s
        nbytes = metrics.bytes_per_token_strict(case.top_k, H, dtype.itemsize) * case.num_tokens
        rec = {"name": "moe_ffn_layer_microbench", "backend": name, **case.as_record(), "expand": args.expand,
               **{f"{k}_ms": t.median_s * 1e3 for k, t in times.items()}, "total_ms": total_s * 1e3,
               "routing_share": routing_s / total_s, "tflops_total": flops_fwd / total_s / 1e12,
               "fwd_bwd_ms": fb.median_s * 1e3, "tflops_fwd_bwd": 3 * flops_fwd / fb.median_s / 1e12,
               "dense_mm_tflops": dense_flops / 1e12, "pct_of_dense_fwd_bwd": 300 * flops_fwd / fb.median_s / dense_flops,
               "bw_GiBps_strict": nbytes / (times["pack"].median_s + times["combine"].median_s) / 2**30,
               "bytes_per_token_strict": nbytes // case.num_tokens, **_routing_load(case, inputs),
               "soft_normalize": "softmax", "temperature": args.temperature}
        run.emit(rec)
    run.finish(["name", "backend", "strategy", "router_ms", "plan_ms", "pack_ms", "ffn_ms", "combine_ms", "total_ms",
                "routing_share", "tflops_total", "fwd_bwd_ms", "tflops_fwd_bwd", "pct_of_dense_fwd_bwd", "avg_drop_rate"])


def cmd_env(args) -> None:
    device = bench.resolve_device(args.device)
    env = store.environment(device)
    env["copy_GBps"] = timing.copy_bandwidth(device) / 1e9
    env["backends"] = available_backends()
    for k, v in env.items():
        print(f"{k:>12}: {v}")
    if args.out:
        store.append_jsonl(args.out, [env])


# ----------------------------------------------------------------------------------------- parser
def build_parser(extra_commands: Sequence[Callable[[argparse._SubParsersAction], None]] = ()) -> argparse.ArgumentParser:
    """The `moe-bench` parser; `extra_commands` add subcommands from outside the harness (the suite's publish)."""
    ap = argparse.ArgumentParser(prog="moe-bench", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("quick", help="the whole routing path for every available backend at a small size")
    _common(p, tokens=0, hidden=0, iters=20, backend="all")
    p.set_defaults(func=cmd_quick, dtype="bfloat16")

    p = sub.add_parser("bench-topk", help="router: softmax + top-k + weights")
    _common(p)
    p.add_argument("--impl", default=None, help="the seed's name for --backend (--backend wins when both are given)")
    _routing_flags(p)
    p.set_defaults(func=lambda a: cmd_stages(a, ("topk",), a.backend or a.impl))

    p = sub.add_parser("bench-routing", help="the routing path: top-k, plan, pack, combine, and their sum")
    _common(p)
    p.add_argument("--impl-topk", default=None,
                   help="the seed's name for --backend; it applies to the whole path here (--backend wins)")
    _routing_flags(p)
    p.add_argument("--capacity-factor", type=_capacity_factor, default=None)
    p.set_defaults(func=lambda a: cmd_stages(a, bench.STAGES, a.backend or a.impl_topk))

    for name, ops, label, help_ in [
        ("bench-pack", ("pack", "combine"), "pack_combine", "pack then combine (the seed's bench_pack.py)"),
        ("bench-pack-only", ("pack",), "pack_only", "pack alone (bench_pack_only.py)"),
        ("bench-combine-only", ("combine",), "combine_only", "weighted combine alone (bench_combine_only.py)"),
    ]:
        p = sub.add_parser(name, help=help_)
        _common(p)
        _routing_flags(p)
        p.set_defaults(func=lambda a, ops=ops, label=label: cmd_pack(a, ops, label))

    p = sub.add_parser("bench-moe-layer", help="router + plan + pack + expert MLPs (grouped GEMM) + combine")
    _common(p, tokens=8192, hidden=1024, experts=32)
    _routing_flags(p)
    p.add_argument("--expand", type=int, default=4, help="expert hidden = expand * hidden-dim")
    p.add_argument("--capacity-factor", type=_capacity_factor, default=1.25, help="a number, or 'none' for dropless")
    p.set_defaults(func=cmd_moe_layer)

    p = sub.add_parser("sweep-pack", help="pack and combine over a grid (sweep_pack.py)")
    p.add_argument("--tokens", type=_ints, default=[8192, 16384, 32768])
    p.add_argument("--hidden", type=_ints, default=[2048, 4096])
    p.add_argument("--experts", type=_ints, default=[32, 64, 128])
    p.add_argument("--topk", type=_ints, default=[1, 2, 4])
    _run_flags(p)
    p.set_defaults(func=cmd_sweep_pack, out="results/pack.jsonl")

    p = sub.add_parser("sweep-capacity", help="drops and time over experts x top-k x capacity factor (sweep_capacity_ke.py)")
    p.add_argument("--tokens", dest="num_tokens", type=int, default=16384)
    p.add_argument("--hidden-dim", type=int, default=4096)
    p.add_argument("--experts", type=_ints, default=[32, 64, 128])
    p.add_argument("--topk", type=_ints, default=[1, 2, 4])
    p.add_argument("--capacity-factors", type=_floats, default=[1.0, 1.1, 1.25, 1.5])
    _run_flags(p, iters=20)
    _routing_flags(p)
    p.set_defaults(func=lambda a: cmd_capacity(a, sweep=True), out="results/capacity_ke.jsonl")

    p = sub.add_parser("bench-capacity", help="the routing path at several capacity factors (bench_capacity.py)")
    _common(p)
    _routing_flags(p)
    p.add_argument("--capacity-factors", type=_floats, default=[1.0, 1.1, 1.25, 1.5])
    p.set_defaults(func=lambda a: cmd_capacity(a, sweep=False))

    p = sub.add_parser("env", help="device, versions and the copy bandwidth measured now")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", "--output", dest="out", default="")
    p.set_defaults(func=cmd_env)

    p = sub.add_parser("roofline", help="time, GB/s and %% of copy bandwidth per primitive and backend; JSONL + PNG")
    _common(p, backend="all")
    p.add_argument("--png", default="results/roofline.png")
    p.set_defaults(func=cmd_roofline, dtype="bfloat16")
    ep_bench.add_command(sub)
    for add_command in extra_commands:
        add_command(sub)
    return ap


def cmd_roofline(args) -> None:
    from .roofline import plot_roofline, run_roofline

    run = Runner(args)
    case = _case(args, device=str(run.device))
    records = run_roofline([case], _backend_list(args.backend), device=case.device, dtype=case.dtype,
                           iters=args.iters, warmup=args.warmup, workload=case.workload,
                           copy_bytes_per_s=run.copy_bytes_per_s, flush_l2=args.flush_l2)
    for rec in records:
        run.emit(rec)
    run.finish(STAGE_COLUMNS)
    plot_roofline(run.records, args.png)
    print(f"wrote {args.png}")


def _validate(args) -> None:
    for name in ("warmup", "iters"):
        if hasattr(args, name) and getattr(args, name) < (0 if name == "warmup" else 1):
            raise ConfigError(f"--{name} must be {'>= 0' if name == 'warmup' else '>= 1'}, got {getattr(args, name)}")
    if hasattr(args, "strategy"):
        args.strategy = canonical_strategy(args.strategy)
    if getattr(args, "soft_normalize", "softmax") not in ("softmax", "sum"):
        raise ConfigError(f"--soft-normalize must be softmax or sum, got {args.soft_normalize!r}")
    for name in ("capacity_factors",):
        for cf in getattr(args, name, []) or []:
            if not cf > 0:
                raise ConfigError(f"capacity factors must be > 0, got {cf}")


def main(argv: list[str] | None = None,
         extra_commands: Sequence[Callable[[argparse._SubParsersAction], None]] = ()) -> int:
    args = build_parser(extra_commands).parse_args(argv)
    if getattr(args, "backend", "unset") is None and not (getattr(args, "impl", None) or getattr(args, "impl_topk", None)):
        args.backend = args.default_backend
    try:
        _validate(args)
        start = time.perf_counter()
        args.func(args)
        print(f"[{args.command} finished in {time.perf_counter() - start:.1f} s]", file=sys.stderr)
    except ConfigError as e:
        print(f"moe-bench: error: {e}", file=sys.stderr)
        return 2
    except torch.OutOfMemoryError as e:
        print(f"moe-bench: error: out of device memory ({str(e).splitlines()[0]}); try smaller sizes", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("moe-bench: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
