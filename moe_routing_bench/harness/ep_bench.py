"""`moe-bench bench-ep`: the expert-parallel MoE layer under torchrun, phase by phase.

    torchrun --standalone --nproc_per_node=8 -m moe_routing_bench.cli bench-ep --out results/ep.jsonl

Every rank routes its own `--num-tokens` tokens (a workload's logits, different per rank) through
`ExpertParallelMoELayer`; rank 0 prints the table and appends one record per workload to --out.
Without torchrun it runs as a world of one through the same code path (the all-to-alls copy locally).

Phases (each timed alone, on the layer's own stage methods, with overlap off): route, plan, pack,
count_exchange (the counts' all_to_all_single and the layer's one host sync), dispatch_a2a,
local_experts (reorder + grouped GEMM + reorder back), combine_a2a, combine. Then the whole layer,
forward and forward+backward, for each --overlap-chunks value. A phase's time is the slowest rank's
median. Routing follows the workload: the router is the identity on the first E hidden features,
which hold the workload's logits (so --hidden-dim must be >= --num-experts).

Bandwidth: dispatch_GBps = mean bytes a rank sends / the dispatch time; the ceiling is an even
`all_to_all_single` of the same bytes per rank in the same EP group, measured in the same run;
pct_of_a2a = dispatch_GBps / a2a_GBps. Bus bandwidth (nccl-tests' convention) is algbw * (P-1)/P.
World size 1: overhead_fwd / overhead_fwd_bwd = the EP layer's time over the single-GPU `MoELayer`'s
on the same tokens and weights (the single-layer baseline runs by default at world size 1 only).
--check first compares the EP layer with the single layer holding every expert on every rank
(check_*_rel_err = max |ep - ref| / max |ref|, worst rank) and exits 1 beyond the dtype's tolerance.
Records: name `ep_layer_ep{P}_dp{D}`, median_us (and avg_ms) = the forward, what suite.store exports.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist

from . import records, workloads
from .tables import format_table
from .cases import resolve_device
from .timing import Timing, measure
from ..routing import metrics
from ..routing.expert_parallel import ExpertParallelGroups, ExpertParallelMoELayer, expert_parallel_groups
from ..routing.layer import MoEConfig, MoELayer
from ..routing.routers import canonical_strategy
from ..routing.validation import ConfigError, check_capacity_factor, check_positive, check_top_k, parse_dtype

PHASES = ("route", "plan", "pack", "count_exchange", "dispatch_a2a", "local_experts", "combine_a2a", "combine")
COLUMNS = ["workload", "world_size", "expert_parallel", *(f"{p}_ms" for p in PHASES), "fwd_ms", "fwd_bwd_ms",
           "dispatch_GBps", "combine_GBps", "a2a_GBps", "dispatch_pct_of_a2a", "combine_pct_of_a2a",
           "recv_rows_max_over_mean", "overhead_fwd", "overhead_fwd_bwd"]


@dataclass(frozen=True)
class EPBenchConfig:
    num_tokens: int  # per rank
    hidden_dim: int
    ffn_dim: int
    num_experts: int
    top_k: int
    dtype: str
    workloads: tuple[str, ...]
    strategy: str
    capacity_factor: float | None
    drop_policy: str
    backend: str
    expert_parallel: int  # 0: the world
    overlap_chunks: tuple[int, ...]
    single_baseline: str  # auto | on | off
    check: bool
    seed: int
    warmup: int
    iters: int


def add_command(sub: argparse._SubParsersAction) -> None:
    """Register `bench-ep` on the `moe-bench` parser."""
    p = sub.add_parser("bench-ep", help="expert-parallel MoE layer under torchrun: per-phase times, all-to-all "
                                        "bandwidth against an equal-bytes all_to_all_single")
    p.add_argument("--num-tokens", type=int, default=8192, help="tokens per rank")
    p.add_argument("--hidden-dim", type=int, default=4096)
    p.add_argument("--ffn-dim", type=int, default=2048, help="expert hidden width")
    p.add_argument("--num-experts", type=int, default=64)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--dtype", default="bfloat16", help="bfloat16 | float16 | float32 (GPU grouped GEMM: bfloat16)")
    p.add_argument("--workloads", default="uniform,zipf,hot", help="comma-separated: uniform | zipf | hot | balanced | stream")
    p.add_argument("--strategy", default="softk", help="top1 | topk-hard | softk | hash | expert-choice | aux-free")
    p.add_argument("--capacity-factor", default="none", help="a number, or 'none' for dropless (capacity per rank)")
    p.add_argument("--drop-policy", default="position", help="position | score")
    p.add_argument("--backend", default="torch", help="routing backend for route/plan/pack/combine")
    p.add_argument("--expert-parallel", type=int, default=0, help="ranks per EP group (0: the whole world)")
    p.add_argument("--overlap-chunks", default="1,2", help="comma-separated chunk counts timed for the whole layer")
    p.add_argument("--single-baseline", default="auto", choices=("auto", "on", "off"),
                   help="also time the single-GPU MoELayer on the same tokens (auto: at world size 1)")
    p.add_argument("--check", action="store_true",
                   help="first compare the EP layer with the single-GPU MoELayer holding every expert (same weights "
                        "and tokens), forward and backward, on every rank; exit 1 if they differ beyond the dtype's tolerance")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (cuda:LOCAL_RANK under torchrun)")
    p.add_argument("--dist-backend", default="auto", help="auto (nccl on cuda, gloo on cpu) | nccl | gloo")
    p.add_argument("--seed", type=int, default=17)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--out", "--output", dest="out", default="", help="append records as JSON lines here (rank 0)")
    p.set_defaults(func=run, standalone=True)


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ConfigError(f"{flag} needs positive integers, got {text!r}")
    return values


def config_from_args(args) -> EPBenchConfig:
    """Validate every flag before any work starts (ConfigError: one line, exit 2)."""
    cf_text = str(args.capacity_factor).strip().lower()
    try:
        cf = None if cf_text in ("none", "dropless", "") else float(cf_text)
    except ValueError:
        raise ConfigError(f"--capacity-factor must be a number or 'none', got {args.capacity_factor!r}") from None
    check_capacity_factor(cf)
    check_positive(num_tokens=args.num_tokens, hidden_dim=args.hidden_dim, ffn_dim=args.ffn_dim)
    check_top_k(args.top_k, args.num_experts)
    if args.hidden_dim < args.num_experts:
        raise ConfigError(f"--hidden-dim ({args.hidden_dim}) must be >= --num-experts ({args.num_experts}): the "
                          "workload's logits ride in the first E hidden features")
    names = tuple(w.strip() for w in args.workloads.split(",") if w.strip())
    if not names:
        raise ConfigError("--workloads is empty")
    for name in names:
        workloads.parse_workload(name)
    if args.drop_policy not in ("position", "score"):
        raise ConfigError(f"unknown drop policy {args.drop_policy!r}; choose from position, score")
    if args.expert_parallel < 0:
        raise ConfigError(f"--expert-parallel must be >= 0, got {args.expert_parallel}")
    if args.warmup < 0 or args.iters < 1:
        raise ConfigError("--warmup must be >= 0 and --iters >= 1")
    strategy = canonical_strategy(args.strategy)
    return EPBenchConfig(
        args.num_tokens, args.hidden_dim, args.ffn_dim, args.num_experts, 1 if strategy == "top1" else args.top_k,
        str(parse_dtype(args.dtype)).replace("torch.", ""), names, strategy, cf, args.drop_policy, args.backend,
        args.expert_parallel, _int_list(args.overlap_chunks, "--overlap-chunks"), args.single_baseline,
        args.check, args.seed, args.warmup, args.iters)


# ------------------------------------------------------------------------------------- distributed
def _device(name: str) -> torch.device:
    device = resolve_device(name)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def init_distributed(device: torch.device, backend: str = "auto") -> bool:
    """Join torchrun's world, or make a world of one; False when a process group already existed."""
    if dist.is_initialized():
        return False
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ConfigError(f"unknown --dist-backend {backend!r}; choose from auto, nccl, gloo")
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError("--dist-backend nccl needs a CUDA device")
    kwargs = {"device_id": device} if backend == "nccl" else {}
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        dist.init_process_group(backend, **kwargs)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, **kwargs)
    return True


def measure_collective(fn, device: torch.device, warmup: int, iters: int) -> Timing:
    """Time `fn` on every rank with the same number of calls: a fixed-count warm-up (a time-based
    one would let ranks call a collective a different number of times, and hang), then a barrier."""
    return measure(fn, device, warmup=warmup, iters=iters, flush_l2=False, warmup_s=None, after_warmup=dist.barrier)


def _max_over_ranks(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def _gather(values: list[float], device: torch.device, group=None) -> list[list[float]]:
    """values of every rank of `group`: [ranks][len(values)]."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    out = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, t, group=group)
    return [o.tolist() for o in out]


# ------------------------------------------------------------------------------------------ the bench
def _inputs(cfg: EPBenchConfig, workload: str, rank: int, device: torch.device):
    """This rank's tokens: normal activations whose first E features are the workload's router logits."""
    dtype = parse_dtype(cfg.dtype)
    T, E = cfg.num_tokens, cfg.num_experts
    x = workloads.hidden_states(T, cfg.hidden_dim, dtype, cfg.seed + 7919 * rank, device)
    logits = workloads.router_logits(workloads.parse_workload(workload), T, E, cfg.top_k, cfg.seed + 7919 * rank, device)
    x[:, :E] = logits.to(dtype)
    return x, workloads.token_ids(T, cfg.seed + 7919 * rank, device=device)


def _identity_router(layer: MoELayer) -> None:
    with torch.no_grad():
        w = layer.router.weight
        w.zero_()
        w[:, : w.shape[0]] = torch.eye(w.shape[0], dtype=w.dtype, device=w.device)


def _layer_config(cfg: EPBenchConfig, expert_parallel: int) -> MoEConfig:
    return MoEConfig(cfg.hidden_dim, cfg.ffn_dim, cfg.num_experts, cfg.top_k, strategy=cfg.strategy,
                     backend=cfg.backend, capacity_factor=cfg.capacity_factor, drop_policy=cfg.drop_policy,
                     expert_parallel=expert_parallel)


def _time_layer(layer, x, ids, grad_out, device, cfg) -> tuple[Timing, Timing]:
    """(forward, forward+backward) of the whole layer."""
    with torch.no_grad():
        fwd = measure_collective(lambda: layer(x, ids), device, cfg.warmup, cfg.iters)
    xg = x.detach().clone().requires_grad_(True)

    def fwd_bwd():
        out, _ = layer(xg, ids)
        out.backward(grad_out)

    return fwd, measure_collective(fwd_bwd, device, cfg.warmup, cfg.iters)


CHECK_TOLERANCE = {"float32": 1e-4, "bfloat16": 2e-2, "float16": 5e-3}  # max |ep - ref| / max |ref| per tensor


def check_against_single(cfg: EPBenchConfig, groups: ExpertParallelGroups, device: torch.device, workload: str) -> dict:
    """The EP layer against `MoELayer` with every expert, the same weights and this rank's tokens: forward,
    input and router gradients, and expert-weight gradients (the single layer's summed over the EP
    group). Errors are max |ep - ref| / max |ref|, the worst over ranks."""
    dtype = parse_dtype(cfg.dtype)
    torch.manual_seed(cfg.seed)
    with torch.device(device):
        full = MoELayer(_layer_config(cfg, 1)).to(dtype)
    _identity_router(full)
    layer = ExpertParallelMoELayer.from_full(full, groups)
    x, ids = _inputs(cfg, workload, dist.get_rank(), device)
    grad_out = torch.randn_like(x)
    got = {}
    for name, module in (("ref", full), ("ep", layer)):
        xi = x.detach().clone().requires_grad_(True)
        out, _ = module(xi, ids)
        out.backward(grad_out)
        got[name] = {"out": out.detach(), "x_grad": xi.grad, "router_grad": module.router.weight.grad,
                     "w1_grad": module.w1_EHF.grad, "w2_grad": module.w2_EFH.grad}
    L, lo = layer.num_local_experts, layer.expert_offset
    for w in ("w1_grad", "w2_grad"):
        dist.all_reduce(got["ref"][w], group=groups.ep_group)
        got["ref"][w] = got["ref"][w][lo:lo + L]
    names = list(got["ref"])
    errs = [float((got["ep"][n].float() - got["ref"][n].float()).abs().max() / got["ref"][n].float().abs().max().clamp_min(1e-30))
            for n in names]
    worst = _max_over_ranks(errs, device)
    del full, layer, got
    tolerance = CHECK_TOLERANCE[cfg.dtype]
    return {"check_tolerance": tolerance, "check_passed": max(worst) <= tolerance,
            **{f"check_{n}_rel_err": e for n, e in zip(names, worst)}}


def bench_workload(cfg: EPBenchConfig, groups: ExpertParallelGroups, device: torch.device, workload: str) -> dict:
    """One record: phase times, bytes, bandwidth against the equal-bytes all-to-all, whole-layer times."""
    rank, world = dist.get_rank(), dist.get_world_size()
    P, dtype = groups.ep_size, parse_dtype(cfg.dtype)
    H, b = cfg.hidden_dim, dtype.itemsize
    torch.manual_seed(cfg.seed)
    with torch.device(device):
        layer = ExpertParallelMoELayer(_layer_config(cfg, P), groups).to(dtype)
    _identity_router(layer)
    x, ids = _inputs(cfg, workload, rank, device)
    grad_out = torch.randn_like(x)

    layer.overlap_chunks = 1
    with torch.no_grad():  # each stage's input, computed once by the stage before it
        _, routing = layer.route(x, ids)
        plan = layer.plan(routing, x)
        x_RH = layer.backend.pack(x, plan)
        ex = layer.exchange_counts(plan)
        send = x_RH[: ex.num_send]
        recv = layer.dispatch(send, ex)
        y = layer.local_experts(recv, ex)
        y_RH = layer.exchange(x_RH, ex)
        stages = {
            "route": lambda: layer.route(x, ids),
            "plan": lambda: layer.plan(routing, x),
            "pack": lambda: layer.backend.pack(x, plan),
            "count_exchange": lambda: layer.exchange_counts(plan),
            "dispatch_a2a": lambda: layer.dispatch(send, ex),
            "local_experts": lambda: layer.local_experts(recv, ex),
            "combine_a2a": lambda: layer.return_rows(y, ex),
            "combine": lambda: layer.backend.combine(y_RH, plan),
        }
        phase_s = {name: measure_collective(fn, device, cfg.warmup, cfg.iters).median_s for name, fn in stages.items()}

    self_rows = ex.send_CP[0][groups.ep_rank]
    rows = _gather([ex.num_send, ex.num_recv, self_rows], device, groups.ep_group)
    mean_send = sum(r[0] for r in rows) / P
    recv_rows = [r[1] for r in rows]
    # the ceiling: an even all_to_all_single of the same bytes per rank, in the same group, same run
    even_rows = max(P, -(-int(round(mean_send)) // P) * P)
    src = torch.randn(even_rows, H, device=device).to(dtype)
    dst = torch.empty_like(src)
    a2a_s = measure_collective(lambda: dist.all_to_all_single(dst, src, group=groups.ep_group), device,
                               cfg.warmup, cfg.iters).median_s

    whole = {}
    for chunks in cfg.overlap_chunks:
        layer.overlap_chunks = chunks
        fwd, fwd_bwd = _time_layer(layer, x, ids, grad_out, device, cfg)
        suffix = "" if chunks == 1 else f"_chunks{chunks}"
        whole[f"fwd_ms{suffix}"], whole[f"fwd_bwd_ms{suffix}"] = fwd.median_s * 1e3, fwd_bwd.median_s * 1e3
    layer.overlap_chunks = 1

    single = cfg.single_baseline == "on" or (cfg.single_baseline == "auto" and world == 1)
    if single:  # the single-GPU layer on the same tokens (and, at world size 1, the same weights)
        torch.manual_seed(cfg.seed)
        with torch.device(device):
            ref = MoELayer(_layer_config(cfg, 1)).to(dtype)
        if P == 1:
            ref.load_state_dict(layer.state_dict())
        _identity_router(ref)
        ref_fwd, ref_fwd_bwd = _time_layer(ref, x, ids, grad_out, device, cfg)
        del ref
        whole.update(single_fwd_ms=ref_fwd.median_s * 1e3, single_fwd_bwd_ms=ref_fwd_bwd.median_s * 1e3)

    names = list(phase_s) + ["a2a"] + list(whole)
    worst = dict(zip(names, _max_over_ranks([*phase_s.values(), a2a_s, *(v / 1e3 for v in whole.values())], device)))
    counts_E = plan.counts_E.to(torch.int64)
    dist.all_reduce(counts_E)
    assignments = routing.expert_ids_TK.numel() if routing.valid_TK is None else routing.valid_TK.sum()
    kept_assign = torch.stack([plan.kept_TK.sum(), torch.as_tensor(assignments, device=device)]).to(torch.float64)
    dist.all_reduce(kept_assign)

    send_bytes = mean_send * H * b
    even_bytes = even_rows * H * b
    rec = {"name": f"ep_layer_ep{P}_dp{groups.dp_size}", **{k: v for k, v in asdict(cfg).items() if k != "workloads"},
           "workload": workload, "world_size": world,
           "expert_parallel": P, "data_parallel": groups.dp_size, "tokens_per_rank": cfg.num_tokens,
           "host_syncs_per_layer": 1, "timing_method": "cuda_events" if device.type == "cuda" else "perf_counter",
           **{f"{p}_ms": worst[p] * 1e3 for p in PHASES},
           "phases_sum_ms": sum(worst[p] for p in PHASES) * 1e3,
           **{k: worst[k] * 1e3 for k in whole},
           "dispatch_bytes_per_rank": send_bytes, "dispatch_remote_bytes_per_rank": (mean_send - sum(r[2] for r in rows) / P) * H * b,
           "combine_bytes_per_rank": send_bytes, "a2a_bytes_per_rank": even_bytes,
           "dispatch_GBps": send_bytes / worst["dispatch_a2a"] / 1e9,
           "combine_GBps": send_bytes / worst["combine_a2a"] / 1e9,
           "a2a_GBps": even_bytes / worst["a2a"] / 1e9, "a2a_ms": worst["a2a"] * 1e3,
           "recv_rows_max_over_mean": max(recv_rows) / max(1e-9, sum(recv_rows) / P),
           "avg_drop_rate": 1.0 - float(kept_assign[0]) / max(1.0, float(kept_assign[1])),
           **metrics.load_stats(counts_E)}
    bus = (P - 1) / P
    for what in ("dispatch", "combine", "a2a"):
        rec[f"{what}_busbw_GBps"] = rec[f"{what}_GBps"] * bus
    for what in ("dispatch", "combine"):
        rec[f"{what}_pct_of_a2a"] = 100 * rec[f"{what}_GBps"] / rec["a2a_GBps"]
    # the store's headline number (suite.store exports median_us per record): the layer's forward, overlap off
    rec["median_us"], rec["avg_ms"] = rec["fwd_ms"] * 1e3, rec["fwd_ms"]
    if single:
        rec["overhead_fwd"] = rec["fwd_ms"] / rec["single_fwd_ms"]
        rec["overhead_fwd_bwd"] = rec["fwd_bwd_ms"] / rec["single_fwd_bwd_ms"]
    return rec


def run(args) -> None:
    cfg = config_from_args(args)
    device = _device(args.device)
    created = init_distributed(device, args.dist_backend)
    try:
        world, rank = dist.get_world_size(), dist.get_rank()
        P = cfg.expert_parallel or world
        if world % P:
            raise ConfigError(f"world size {world} is not a multiple of --expert-parallel {P}")
        if cfg.num_experts % P:
            raise ConfigError(f"--num-experts {cfg.num_experts} is not a multiple of the EP size {P}")
        groups = expert_parallel_groups(P)
        env = records.environment(device)
        out = []
        failed = []
        for workload in cfg.workloads:
            check = check_against_single(cfg, groups, device, workload) if cfg.check else {}
            if check and not check["check_passed"]:
                failed.append(workload)
            rec = {**bench_workload(cfg, groups, device, workload), **check, **env,
                   "warmup": cfg.warmup, "iters": cfg.iters}
            out.append(rec)
            if rank == 0:
                print(f"done {workload}: fwd {rec['fwd_ms']:.3f} ms, dispatch {rec['dispatch_pct_of_a2a']:.0f}% "
                      f"of the equal-bytes all-to-all", flush=True)
        if rank == 0:
            print(f"bench-ep on {env['device_name']}: world {world} = EP {P} x DP {world // P}, "
                  f"T={cfg.num_tokens}/rank H={cfg.hidden_dim} F={cfg.ffn_dim} E={cfg.num_experts} k={cfg.top_k} {cfg.dtype}")
            print(format_table(out, COLUMNS))
            if args.out:
                records.append_jsonl(args.out, out)
                print(f"wrote {len(out)} records to {args.out}")
        if failed:
            worst = {w: {k: v for k, v in r.items() if k.startswith("check_") and k.endswith("_err")}
                     for w, r in zip(cfg.workloads, out) if w in failed}
            if rank == 0:
                print(f"moe-bench: bench-ep --check failed: the EP layer differs from the single-GPU layer beyond "
                      f"{CHECK_TOLERANCE[cfg.dtype]} (max |ep - ref| / max |ref|): {worst}", file=sys.stderr)
            raise SystemExit(1)
    finally:
        if created:
            dist.destroy_process_group()
