"""Routing sweep: routers x experts x top-k x capacity factor x seeds (x attribution flips), one
training run each.

    torchrun train/sweep.py                       # a sweep sized for this machine (--preset auto)
    python train/sweep.py --preset seed --data data/tinystories_val.txt   # the older tool's grid
    torchrun --standalone --nproc_per_node=4 train/sweep.py ...   # each run one DDP job on all ranks

Every train.py flag applies to every run (the same flags, generated from train/config.py), except
those the grid sets per run: --router, --num-experts, --top-k, --capacity-factor, --seed, --outdir.

Each grid point trains in its own folder ``OUTDIR_ROOT/R{router}_E{E}_K{k}_CF{cf}_S{seed}`` (router
without '-'; top1 only at k=1; dense once per E and k, its capacity factor 'none'; attribution runs
end in ``_no-{factor}``). A run whose log ends with the done record of the same --max-steps is
skipped, so a stopped sweep resumes; a half-finished run resumes from its checkpoint. On a machine
with a time limit, ``--max-runs N`` starts at most N runs and ``--deadline-s S`` starts none that
would end after S seconds (judged by the longest run so far); rerun to continue. One sweep
owns OUTDIR_ROOT (a lock) and each run owns its folder, so a rerun never starts a second writer.
A failed run is recorded in ``sweep_status.json`` and the sweep goes on. A summary
(``train/summarize.py``) is written at the end.

Placement:
- under ``torchrun`` (WORLD_SIZE > 1): every grid point is one DDP job across all ranks, trained
  in this process, one after the other;
- plain ``python`` with CUDA GPUs: runs are subprocesses (each its own process group, ended when
  the sweep is stopped by Ctrl-C or SIGTERM), ``--runs-per-gpu`` at a time on each GPU; with
  ``--nproc-per-node N > 1`` each run is a ``torchrun`` DDP job on N GPUs;
- CPU: one run after another in this process (``--subprocess``: each in its own process).

Exit status: 0 when every run finished, 1 when a run failed, 2 for a bad command line or missing
data. Under torchrun it is 0 whenever the sweep itself ran (torchrun prints a traceback wall for
any other); the last lines and ``sweep_status.json`` name the failures.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ["NCCL_NVLS_ENABLE"] = "0"
ROOT = Path(__file__).resolve().parents[1]
# run as a script, this folder comes first on sys.path and "train" would be train/train.py itself
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "train"]
sys.path.insert(0, str(ROOT))

import moe_routing_bench as mrb  # noqa: E402
from train import config as C  # noqa: E402
from train.checkpoint import LOG_NAME, RunLock  # noqa: E402
from train.model import seed_factors_changing  # noqa: E402

TRAIN = ROOT / "train" / "train.py"
STATUS_NAME = "sweep_status.json"
PROG = "sweep.py"
PER_POINT = frozenset({"router", "strategy", "num_experts", "top_k", "capacity_factor", "seed", "outdir"})


@dataclass
class SweepOptions:
    """The grid and where its runs go."""
    router_list: str = C.opt("softk", "routers: top1, topk-hard, softk, hash, expert-choice, aux-free, dense")
    num_experts_list: str = C.opt("8", "comma list of expert counts")
    topk_list: str = C.opt("2", "comma list of k (top1 always runs at k=1)")
    capacity_factors: str = C.opt("1.25", "comma list; 'none' = dropless")
    seeds: str = C.opt("17", "comma list of seeds")
    flip_list: str = C.opt("", "attribution: for each factor of --seed-semantics named here, also run the "
                           "base semantics without it, for the routers the factor affects")
    outdir_root: str = C.opt("runs/routing_sweep", "folder of the run folders (runs/ is git-ignored)")
    nproc_per_node: int | None = C.opt(None, "GPUs per run under plain python (default 1: runs placed one per "
                                       "GPU, in parallel); under torchrun the world size", type=C.optional_int)
    runs_per_gpu: int = C.opt(1, "concurrent runs per GPU (plain python)")
    max_runs: int | None = C.opt(None, "start at most this many of the runs left (seed-major order); a rerun "
                                 "continues: a sweep in whole waves of time-limited calls", type=C.optional_int)
    deadline_s: float | None = C.opt(None, "start no run that would end more than this many seconds after the "
                                     "sweep started, judged by the longest run finished so far (the first runs "
                                     "always start); a rerun continues: for machines with a time limit",
                                     type=C.optional_float)
    subprocess: bool = C.opt(False, "on CPU, run each grid point in its own process")
    keep_checkpoints: bool = C.opt(False, "keep each finished run's checkpoints")
    summary_out: str | None = C.opt(None, "summary CSV (default OUTDIR_ROOT/summary.csv)", type=str)
    dry_run: bool = C.opt(False, "print the grid and the commands, run nothing")


def build_parser() -> argparse.ArgumentParser:
    p = C.train_parser(__doc__.split("\n\n")[0].replace("\n", " "), preset_default="auto", bench=False,
                       exclude=PER_POINT, prog=PROG, epilog=__doc__.split("\n\n", 1)[1])
    C.add_flags(p.add_argument_group(f"sweep ({SweepOptions.__doc__.rstrip('.')})"), SweepOptions)
    return p


def parse(argv: list[str] | None, semantics: str | None = None) -> tuple[SweepOptions, C.TrainConfig]:
    """The sweep's options and the base TrainConfig of its runs (``semantics`` overrides
    --seed-semantics: the base of an attribution flip)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if semantics is not None:
        argv += ["--seed-semantics", semantics]
    parser = build_parser()
    preset = C.apply_presets(parser, argv, "auto")
    ns = parser.parse_args(argv)
    opts = SweepOptions(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(SweepOptions)})
    cfg, _ = C.normalize(C.config_from_namespace(ns, preset))
    return opts, cfg


def _csv(text: str) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


@dataclass(frozen=True)
class Point:
    router: str
    num_experts: int
    top_k: int
    cf: str  # as typed: "1.0", "1.25", "none"
    seed: int
    flip: str | None = None  # an older-tool factor switched off (attribution)

    @property
    def tag(self) -> str:
        tag = f"R{self.router.replace('-', '')}_E{self.num_experts}_K{self.top_k}_CF{self.cf}_S{self.seed}"
        return tag + (f"_no-{self.flip}" if self.flip else "")


def _same_cf(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b


def grid(opts: SweepOptions, base_semantics: tuple[str, ...] = ()) -> list[Point]:
    routers = []
    for r in _csv(opts.router_list):
        name = "dense" if r.strip().lower() == "dense" else mrb.canonical_strategy(r)
        if name not in routers:
            routers.append(name)
    cfs = ["none" if c.lower() in ("none", "null", "dropless") else c for c in _csv(opts.capacity_factors)]
    for c in cfs:
        if c != "none":
            C.capacity_factor_arg(c)
    flips = [f.replace("-", "_") for f in _csv(opts.flip_list)]
    for f in flips:
        if f not in base_semantics:
            raise mrb.ConfigError(f"--flip-list {f}: not a factor of --seed-semantics ({', '.join(base_semantics) or 'none'})")
    if not routers or not cfs or not _csv(opts.seeds) or not _csv(opts.num_experts_list):
        raise mrb.ConfigError("empty grid: --router-list, --num-experts-list, --capacity-factors and --seeds need values")
    points = []
    for E in [int(e) for e in _csv(opts.num_experts_list)]:
        for router in routers:
            ks = [1] if router == "top1" else [int(k) for k in _csv(opts.topk_list)]
            for k in ks:
                if k > E:
                    continue
                router_cfs = cfs
                if router == "dense":
                    router_cfs = ["none"]  # no routing, no capacity
                elif router == "expert-choice" and any(_same_cf(c, "1.0") for c in cfs):
                    router_cfs = [c for c in cfs if c != "none"]  # expert-choice reads 'none' as 1.0
                # one factor off at a time, for the routers it changes (the recipe changes every router)
                changes = seed_factors_changing(router)
                for flip in [None, *[f for f in flips if f == C.RECIPE_FACTOR or f in changes]]:
                    for cf in router_cfs:
                        for seed in [int(s) for s in _csv(opts.seeds)]:
                            pt = Point(router, E, k, cf, seed, flip)
                            if pt not in points:
                                points.append(pt)
    return points


def point_config(base: dict[str | None, C.TrainConfig], pt: Point, opts: SweepOptions) -> C.TrainConfig:
    """The run's TrainConfig: the base of its semantics with the grid's values."""
    cfg = base[pt.flip]
    moe = dataclasses.replace(cfg.moe, router=pt.router, num_experts=pt.num_experts,
                              top_k=pt.top_k, capacity_factor=C.capacity_factor_arg(pt.cf))
    optim = dataclasses.replace(cfg.optim, seed=pt.seed)
    run = dataclasses.replace(cfg.run, outdir=str(Path(opts.outdir_root) / pt.tag),
                              delete_checkpoint_at_end=not opts.keep_checkpoints)
    return dataclasses.replace(cfg, moe=moe, optim=optim, run=run)


def run_finished(run_dir: Path, max_steps: int) -> bool:
    try:
        lines = [ln for ln in (run_dir / LOG_NAME).read_text().splitlines() if ln.strip()]
        last = json.loads(lines[-1])
    except (OSError, IndexError, json.JSONDecodeError):
        return False
    return bool(last.get("done")) and int(last.get("steps", -1)) == max_steps


def _run_summary(run_dir: Path) -> str:
    try:
        last = json.loads((run_dir / LOG_NAME).read_text().splitlines()[-1])
        ppl, tps = last.get("final_ppl"), last.get("tokens_per_s")
        return f"val_ppl={ppl:.3f} tokens/s={tps:,.0f}" if ppl and tps else ""
    except (OSError, ValueError, IndexError, TypeError):
        return ""


class Status:
    def __init__(self, root: Path, write: bool):
        self.path, self.write = root / STATUS_NAME, write
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {}

    def set(self, tag: str, **fields) -> None:
        self.data[tag] = fields
        if self.write:
            mrb.write_atomic(self.path, json.dumps(self.data, indent=2) + "\n")

    def failed(self, tags) -> list[str]:
        return [t for t in tags if self.data.get(t, {}).get("status") == "failed"]


# ----------------------------------------------------------------------------- modes

def run_in_process(configs: dict[Point, C.TrainConfig], status: Status, rank: int = 0,
                   deadline: mrb.Deadline | None = None) -> list[Point]:
    """Each grid point trained by loop.train in this process (CPU, or one DDP job under torchrun).
    Returns the points the deadline left unstarted."""
    import torch

    from train import loop
    from train.train import fatal_message

    deadline = deadline or mrb.Deadline(None)
    n = len(configs)
    for i, (pt, cfg) in enumerate(configs.items(), 1):
        if not deadline.allows_start():
            return list(configs)[i - 1:]
        if rank == 0:
            print(f"[{i}/{n}] {pt.tag}: training ({cfg.optim.max_steps} steps)", flush=True)
        t0 = time.time()
        try:
            loop.train(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, quiet=True)))
            ok, err = True, None
        except Exception as e:  # record and go on
            ok, err = False, fatal_message(e) or f"{type(e).__name__}: {e}"
        finally:
            if cfg.optim.compile:
                torch._dynamo.reset()
        dt = time.time() - t0
        deadline.finished(dt)
        if rank == 0:
            status.set(pt.tag, status="done" if ok else "failed", seconds=round(dt, 1), error=err)
            print(f"[{i}/{n}] {pt.tag} {'ok' if ok else 'FAILED'} {dt:.1f}s "
                  f"{_run_summary(Path(cfg.run.outdir)) if ok else err}", flush=True)
    return []


class Stopped(Exception):
    """SIGINT or SIGTERM reached the sweep."""


def _raise_stopped(signum, frame):
    raise Stopped(signal.Signals(signum).name)


def end_children(running: dict) -> None:
    """SIGTERM each child's process group, SIGKILL what is left after 10 s."""
    for proc in running:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + 10
    for proc in running:
        try:
            proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # a group's stragglers too (torchrun's workers)
        except ProcessLookupError:
            pass
        proc.wait()


def cpu_share_env(runs_at_once: int) -> dict[str, str]:
    """Each run's share of the CPU cores for its intra-op threads and inductor's compile workers
    (a caller's own settings win): runs side by side would otherwise each start a thread per core."""
    share = str(max(1, (os.cpu_count() or 1) // max(1, runs_at_once)))
    return {"OMP_NUM_THREADS": share, "TORCHINDUCTOR_COMPILE_THREADS": share}


def run_subprocesses(configs: dict[Point, C.TrainConfig], status: Status, opts: SweepOptions,
                     gpus: list[str], nproc: int, deadline: mrb.Deadline | None = None) -> list[Point]:
    """Subprocess per grid point; GPUs split into groups of nproc, runs_per_gpu runs per group.
    Returns the points the deadline left unstarted."""
    deadline = deadline or mrb.Deadline(None)
    groups = [gpus[i:i + nproc] for i in range(0, len(gpus) - nproc + 1, nproc)] if gpus else [[]]
    slots = [g for g in groups for _ in range(max(1, opts.runs_per_gpu))]
    free = list(range(len(slots)))
    pending = list(configs)  # seed-major (_sweep)
    cpu_env = cpu_share_env(len(slots))
    running: dict[subprocess.Popen, tuple[Point, int, float, object]] = {}
    n, done = len(configs), 0
    previous = {s: signal.signal(s, _raise_stopped) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while pending or running:
            while pending and free and deadline.allows_start():
                pt, slot = pending.pop(0), free.pop(0)
                cfg = configs[pt]
                run_dir = Path(cfg.run.outdir)
                run_dir.mkdir(parents=True, exist_ok=True)
                cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                        str(TRAIN), "--distributed"] if nproc > 1 else [sys.executable, str(TRAIN)])
                cmd += C.to_argv(cfg)
                env = {**cpu_env, **os.environ, "NCCL_NVLS_ENABLE": "0", "PYTHONUNBUFFERED": "1",
                       "MOE_SWEEP_RUNS_PER_GPU": str(max(1, opts.runs_per_gpu))}
                if slots[slot]:
                    env["CUDA_VISIBLE_DEVICES"] = ",".join(slots[slot])
                mrb.write_atomic(run_dir / "launch_cmd.txt",
                                 (f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']} " if slots[slot] else "")
                                 + " ".join(shlex.quote(c) for c in cmd) + "\n")
                out = open(run_dir / "stdout.log", "a")
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=os.getcwd(),
                                        start_new_session=True)  # its own process group, ended with the sweep
                running[proc] = (pt, slot, time.time(), out)
                print(f"[{done + len(running)}/{n}] {pt.tag}: started"
                      + (f" on GPU {','.join(slots[slot])}" if slots[slot] else ""), flush=True)
            if not running:  # the deadline holds back what is pending
                break
            time.sleep(0.5)
            for proc in [p for p in running if p.poll() is not None]:
                pt, slot, t0, out = running.pop(proc)
                out.close()
                free.append(slot)
                done += 1
                dt = time.time() - t0
                deadline.finished(dt)
                run_dir = Path(configs[pt].run.outdir)
                ok = proc.returncode == 0 and run_finished(run_dir, configs[pt].optim.max_steps)
                err = None
                if not ok:
                    tail = (run_dir / "stdout.log").read_text(errors="replace").strip().splitlines()[-2:]
                    err = f"exit {proc.returncode}: " + " | ".join(tail)
                status.set(pt.tag, status="done" if ok else "failed", seconds=round(dt, 1),
                           returncode=proc.returncode, error=err, gpus=",".join(slots[slot]) or None)
                print(f"[{done}/{n}] {pt.tag} {'ok' if ok else 'FAILED'} {dt:.1f}s "
                      f"{_run_summary(run_dir) if ok else err}", flush=True)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if running:
            print(f"sweep: stopping {len(running)} running run(s); rerun the same command to resume", flush=True)
            end_children(running)
            for proc, (pt, *_rest, out) in running.items():
                out.close()
                status.set(pt.tag, status="stopped", returncode=proc.returncode)
    return pending


def check_data(cfg: C.TrainConfig) -> None:
    from train.trainer import DATA_HINT

    for path in (cfg.run.data, cfg.run.val_data):
        if path and not Path(path).is_file():
            raise mrb.ConfigError(f"data file not found: {path}: {DATA_HINT}")


def check_expert_parallel(cfg: C.TrainConfig, configs: dict[Point, C.TrainConfig], world: int,
                          opts: SweepOptions) -> None:
    """--expert-parallel fits every run's world size and expert count: one error before any run starts."""
    import torch

    from train.trainer import check_expert_parallel as check

    on_gpu = (cfg.run.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    run_world = world if world > 1 else (opts.nproc_per_node or 1) if on_gpu else 1
    for c in configs.values():
        check(c, run_world)


def main(argv: list[str] | None = None) -> int:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    under_torchrun = world > 1 or "TORCHELASTIC_RUN_ID" in os.environ
    try:
        return _main(argv, world, rank)
    except Exception as e:
        from train.train import fatal_message

        message = fatal_message(e)
        if message is None:
            raise
        if rank == 0:
            print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
        return 0 if under_torchrun else 2


def _main(argv: list[str] | None, world: int, rank: int) -> int:
    opts, cfg = parse(argv)
    if opts.max_runs is not None and opts.max_runs < 1:
        raise mrb.ConfigError(f"--max-runs must be at least 1, got {opts.max_runs}")
    if opts.deadline_s is not None and not 0 < opts.deadline_s < float("inf"):
        raise mrb.ConfigError(f"--deadline-s must be a number of seconds > 0, got {opts.deadline_s}")
    if opts.deadline_s is not None and world > 1:
        raise mrb.ConfigError("--deadline-s needs plain python (every rank would have to agree on the clock); "
                              "under torchrun use --max-runs")
    flips = [f.replace("-", "_") for f in _csv(opts.flip_list)]
    points = grid(opts, cfg.semantics)
    base = {None: cfg}
    for f in flips:  # the attribution runs: the same flags with one factor off
        base[f] = parse(argv, ",".join(["none", *[s for s in cfg.semantics if s != f]]))[1]
    configs = {pt: point_config(base, pt, opts) for pt in points}
    root = Path(opts.outdir_root)
    if opts.dry_run:
        if rank == 0:
            print(f"{len(points)} runs in {root} (preset {cfg.preset})")
            for pt, c in configs.items():
                print(f"{pt.tag}: python train/train.py {' '.join(shlex.quote(a) for a in C.to_argv(c))}")
        return 0
    check_data(cfg)
    check_expert_parallel(cfg, configs, world, opts)

    root.mkdir(parents=True, exist_ok=True)
    with RunLock(root, what="sweep folder") if rank == 0 else contextlib.nullcontext():
        return _sweep(opts, cfg, configs, root, world, rank)


def _sweep(opts: SweepOptions, cfg: C.TrainConfig, configs: dict[Point, C.TrainConfig], root: Path,
           world: int, rank: int) -> int:
    import torch

    status = Status(root, write=rank == 0)
    skipped = [pt for pt, c in configs.items() if run_finished(Path(c.run.outdir), c.optim.max_steps)]
    # seed-major order: the first runs side by side are distinct configurations, so the later
    # seeds of each find its compiled graph in torch.compile's on-disk cache
    seeds = sorted({pt.seed for pt in configs})
    todo = {pt: configs[pt] for pt in sorted(configs, key=lambda pt: seeds.index(pt.seed)) if pt not in skipped}
    left = list(todo)[opts.max_runs:] if opts.max_runs is not None else []
    todo = {pt: c for pt, c in todo.items() if pt not in left}
    ctx = None
    if world > 1:
        import torch.distributed as dist

        from train.trainer import setup_distributed

        ctx = setup_distributed(cfg.run.device, True, cfg.run.dist_backend)
        decided = [[pt.tag for pt in todo]]
        dist.broadcast_object_list(decided, src=0)  # rank 0's view of what is finished decides
        todo = {pt: c for pt, c in configs.items() if pt.tag in set(decided[0])}
        skipped = [pt for pt in configs if pt not in todo and pt not in left]
    if rank == 0:
        print(f"sweep: {len(configs)} runs (preset {cfg.preset}), {len(skipped)} already finished, "
              f"{len(todo)} to run" + (f", {len(left)} left for a rerun (--max-runs)" if left else "")
              + f" -> {root}", flush=True)
        for pt in skipped:
            status.data.setdefault(pt.tag, {"status": "done"})
    t0 = time.time()
    deadline = mrb.Deadline(opts.deadline_s, t0)  # runs side by side: judged by the longest
    use_cuda = (cfg.run.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    unstarted: list[Point] = []
    try:
        if world > 1:
            run_in_process(todo, status, rank)
            dist.barrier()
        elif use_cuda:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            gpus = _csv(visible) if visible else [str(i) for i in range(torch.cuda.device_count())]
            nproc = opts.nproc_per_node or 1
            if nproc > len(gpus):
                raise mrb.ConfigError(f"--nproc-per-node {nproc} but {len(gpus)} GPUs visible")
            unstarted = run_subprocesses(todo, status, opts, gpus, nproc, deadline)
        elif opts.subprocess:
            unstarted = run_subprocesses(todo, status, opts, [], 1, deadline)
        else:
            unstarted = run_in_process(todo, status, deadline=deadline)
    except (Stopped, KeyboardInterrupt) as e:
        print(f"sweep: stopped by {e or 'SIGINT'}; rerun the same command to resume", file=sys.stderr, flush=True)
        return 130
    finally:
        if ctx is not None and ctx.created_group:
            dist.destroy_process_group()
    if rank != 0:
        return 0
    ran = [pt for pt in todo if pt not in unstarted]
    failed = status.failed([pt.tag for pt in ran])
    left = unstarted + left
    print(f"sweep: finished in {time.time() - t0:.0f}s; {len(ran) - len(failed)} ok, {len(failed)} failed, "
          f"{len(skipped)} skipped" + (f"; {len(left)} left" + (f" ({len(unstarted)} held back by --deadline-s)"
                                                                   if unstarted else "")
                                       + ": rerun the same command to continue" if left else ""),
          flush=True)
    from train.summarize import print_table, summarize

    summary_out = Path(opts.summary_out) if opts.summary_out else root / "summary.csv"
    rows = summarize([str(root / "*")], summary_out)
    if rows:
        print_table(rows)
        print(f"summary: {summary_out}")
    for tag in failed:
        print(f"FAILED: {tag}: {status.data[tag].get('error')}", file=sys.stderr)
    return 0 if world > 1 else (1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())
