"""Routing sweep: routers x experts x top-k x capacity factor x seeds, one training run each.

    python train/sweep.py --data data/tinystories_val.txt --router-list top1,softk --seeds 17,18,19 ...
    torchrun --standalone --nproc_per_node=4 train/sweep.py ...      # each run one DDP job on all ranks

Each grid point trains in its own folder ``OUTDIR_ROOT/R{router}_E{E}_K{k}_CF{cf}_S{seed}`` (router
without '-'; top1 only at k=1; dense only once per E and k, its capacity factor 'none'). A run whose
``train_log.jsonl`` ends with the done record of the same --max-steps is skipped, so a killed sweep
resumes; a half-finished run resumes from its checkpoint. A failed run is recorded in
``sweep_status.json`` and the sweep goes on; the exit status is 1 if any run failed. A summary
(``train/summarize.py``) is written at the end.

Placement:
- under ``torchrun`` (WORLD_SIZE > 1): every grid point is one DDP job across all ranks, trained
  in-process (``train.train``), one after the other;
- plain ``python`` with CUDA GPUs: runs are subprocesses, ``--runs-per-gpu`` at a time on each GPU
  (small models leave a GPU mostly idle); with ``--nproc-per-node N > 1`` each run is a
  ``torchrun`` DDP job on N GPUs and GPUs // N such jobs run side by side;
- CPU: one run after another, in this process (``--subprocess``: each in its own process).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

os.environ["NCCL_NVLS_ENABLE"] = "0"
ROOT = Path(__file__).resolve().parents[1]
# run as a script, this folder comes first on sys.path and "train" would be train/train.py itself
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "train"]
sys.path.insert(0, str(ROOT))

from moe_routing_bench.harness.records import write_atomic  # noqa: E402

TRAIN = ROOT / "train" / "train.py"
STATUS_NAME = "sweep_status.json"


def _csv(text: str) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Grid of MoE training runs (routers x E x k x cf x seeds).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=None, help="training text (its tail is held out); None: generated stories")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-per-gpu", type=int, default=128, help="sequences per rank per step")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--ffn-mult", type=int, default=4)
    p.add_argument("--num-experts-list", default="64,128")
    p.add_argument("--router-list", default="top1,topk-hard,softk",
                   help="strategies (top1, topk-hard, softk, hash, expert-choice, aux-free, dense)")
    p.add_argument("--topk-list", default="1,2,4")
    p.add_argument("--capacity-factors", default="1.0,1.25,1.5", help="comma list; 'none' = dropless")
    p.add_argument("--seeds", default="17,18,19")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--lr", type=float, default=1.2e-3)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--eval-interval", type=int, default=200)
    p.add_argument("--log-interval", type=int, default=0, help="steps per log record (0: = eval interval)")
    p.add_argument("--eval-batches", type=int, default=20)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--num-workers", type=int, default=2, help="accepted, unused (see train.py --help)")
    p.add_argument("--outdir-root", default="runs/routing_sweep")
    p.add_argument("--nproc-per-node", type=int, default=None,
                   help="GPUs per run. Default 1 under plain python (runs placed one per GPU, in parallel; the "
                        "seed's default of all visible GPUs per run left small models idle), the world size under torchrun")
    p.add_argument("--runs-per-gpu", type=int, default=1, help="concurrent runs per GPU (plain python)")
    p.add_argument("--backend", default="torch", help="routing backend for every run")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda if available)")
    p.add_argument("--subprocess", action="store_true", help="on CPU, run each grid point in its own process")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep each finished run's ckpt.pt")
    p.add_argument("--train-args", default="", help="extra train.py flags for every run (one quoted string)")
    p.add_argument("--summary-out", default=None, help="summary CSV (default OUTDIR_ROOT/summary.csv)")
    p.add_argument("--dry-run", action="store_true", help="print the grid and the commands, run nothing")
    return p


@dataclass(frozen=True)
class Point:
    router: str
    num_experts: int
    top_k: int
    cf: str  # as typed: "1.0", "1.25", "none"
    seed: int

    @property
    def tag(self) -> str:
        return f"R{self.router.replace('-', '')}_E{self.num_experts}_K{self.top_k}_CF{self.cf}_S{self.seed}"


def _same_cf(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b


def grid(args) -> list[Point]:
    from moe_routing_bench.routing.routers import canonical_strategy

    routers = []
    for r in _csv(args.router_list):
        name = "dense" if r.strip().lower() == "dense" else canonical_strategy(r)
        if name not in routers:
            routers.append(name)
    cfs = ["none" if c.lower() in ("none", "null", "dropless") else c for c in _csv(args.capacity_factors)]
    points = []
    for E in [int(e) for e in _csv(args.num_experts_list)]:
        for router in routers:
            ks = [1] if router == "top1" else [int(k) for k in _csv(args.topk_list)]
            for k in ks:
                if k > E:
                    continue
                router_cfs = cfs
                if router == "dense":
                    router_cfs = ["none"]  # no routing, no capacity
                elif router == "expert-choice" and any(_same_cf(c, "1.0") for c in cfs):
                    router_cfs = [c for c in cfs if c != "none"]  # expert-choice reads 'none' as 1.0
                for cf in router_cfs:
                    for seed in [int(s) for s in _csv(args.seeds)]:
                        pt = Point(router, E, k, cf, seed)
                        if pt not in points:
                            points.append(pt)
    return points


def train_argv(args, pt: Point, run_dir: Path) -> list[str]:
    argv = [
        "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_per_gpu), "--dim", str(args.dim),
        "--layers", str(args.layers), "--heads", str(args.heads), "--ffn-mult", str(args.ffn_mult),
        "--num-experts", str(pt.num_experts), "--router", pt.router, "--top-k", str(pt.top_k),
        "--capacity-factor", pt.cf, "--seed", str(pt.seed), "--dtype", args.dtype, "--lr", str(args.lr),
        "--warmup-steps", str(args.warmup_steps), "--max-steps", str(args.max_steps),
        "--eval-interval", str(args.eval_interval), "--log-interval", str(args.log_interval),
        "--eval-batches", str(args.eval_batches), "--grad-clip", str(args.grad_clip),
        "--weight-decay", str(args.weight_decay), "--dropout", str(args.dropout),
        "--backend", args.backend, "--outdir", str(run_dir),
    ]
    if args.data:
        argv += ["--data", args.data]
    if args.device:
        argv += ["--device", args.device]
    if args.compile:
        argv += ["--compile"]
    if not args.keep_checkpoints:
        argv += ["--delete-checkpoint-at-end"]
    return argv + shlex.split(args.train_args)


def run_finished(run_dir: Path, max_steps: int) -> bool:
    log = run_dir / "train_log.jsonl"
    if not log.exists():
        return False
    lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
    if not lines:
        return False
    try:
        last = json.loads(lines[-1])
    except json.JSONDecodeError:
        return False
    return bool(last.get("done")) and int(last.get("steps", -1)) == max_steps


def _run_summary(run_dir: Path) -> str:
    try:
        last = json.loads((run_dir / "train_log.jsonl").read_text().splitlines()[-1])
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
            write_atomic(self.path, json.dumps(self.data, indent=2) + "\n")

    def failed(self, tags) -> list[str]:
        return [t for t in tags if self.data.get(t, {}).get("status") == "failed"]


# ----------------------------------------------------------------------------- modes

def run_in_process(args, todo: list[Point], status: Status, rank: int = 0) -> None:
    """Each grid point trained by train.train in this process (CPU, or one DDP job under torchrun)."""
    import torch

    from train import train as train_mod

    n = len(todo)
    for i, pt in enumerate(todo, 1):
        run_dir = Path(args.outdir_root) / pt.tag
        argv = train_argv(args, pt, run_dir) + ["--quiet"]
        t0 = time.time()
        try:
            targs, _ = train_mod.normalize_args(train_mod.build_parser().parse_args(argv))
            train_mod.train(targs)
            ok, err = True, None
        except (Exception, SystemExit) as e:  # record and go on
            ok, err = False, f"{type(e).__name__}: {e}"
            if rank == 0:
                traceback.print_exc()
        finally:
            if args.compile:
                torch._dynamo.reset()
        dt = time.time() - t0
        if rank == 0:
            status.set(pt.tag, status="done" if ok else "failed", seconds=round(dt, 1), error=err)
            print(f"[{i}/{n}] {pt.tag} {'ok' if ok else 'FAILED'} {dt:.1f}s "
                  f"{_run_summary(run_dir) if ok else err}", flush=True)


def run_subprocesses(args, todo: list[Point], status: Status, gpus: list[str], nproc: int) -> None:
    """Subprocess per grid point; GPUs split into groups of nproc, runs_per_gpu runs per group."""
    groups = [gpus[i:i + nproc] for i in range(0, len(gpus) - nproc + 1, nproc)] if gpus else [[]]
    slots = [g for g in groups for _ in range(max(1, args.runs_per_gpu))]
    free = list(range(len(slots)))
    # seed-major order: the first runs side by side are distinct configurations, so the later
    # seeds of each find its compiled graph in torch.compile's on-disk cache
    seeds = sorted({pt.seed for pt in todo})
    pending = sorted(todo, key=lambda pt: seeds.index(pt.seed))
    compile_threads = str(max(1, (os.cpu_count() or 1) // len(slots)))
    running: dict[subprocess.Popen, tuple[Point, int, float, object]] = {}
    n, done = len(todo), 0
    while pending or running:
        while pending and free:
            pt, slot = pending.pop(0), free.pop(0)
            run_dir = Path(args.outdir_root) / pt.tag
            run_dir.mkdir(parents=True, exist_ok=True)
            if nproc > 1:
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                       str(TRAIN), "--distributed"]
            else:
                cmd = [sys.executable, str(TRAIN)]
            cmd += train_argv(args, pt, run_dir)
            env = {**os.environ, "NCCL_NVLS_ENABLE": "0", "PYTHONUNBUFFERED": "1",
                   "MOE_SWEEP_RUNS_PER_GPU": str(max(1, args.runs_per_gpu))}
            env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", compile_threads)  # runs compile side by side
            if slots[slot]:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(slots[slot])
            (run_dir / "launch_cmd.txt").write_text(
                (f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']} " if slots[slot] else "")
                + " ".join(shlex.quote(c) for c in cmd) + "\n")
            out = open(run_dir / "stdout.log", "a")
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=os.getcwd())
            running[proc] = (pt, slot, time.time(), out)
        time.sleep(0.5)
        for proc in [p for p in running if p.poll() is not None]:
            pt, slot, t0, out = running.pop(proc)
            out.close()
            free.append(slot)
            done += 1
            dt = time.time() - t0
            run_dir = Path(args.outdir_root) / pt.tag
            ok = proc.returncode == 0 and run_finished(run_dir, args.max_steps)
            err = None
            if not ok:
                tail = (run_dir / "stdout.log").read_text(errors="replace").strip().splitlines()[-3:]
                err = f"exit {proc.returncode}: " + " | ".join(tail)
            status.set(pt.tag, status="done" if ok else "failed", seconds=round(dt, 1), returncode=proc.returncode,
                       error=err, gpus=",".join(slots[slot]) or None)
            print(f"[{done}/{n}] {pt.tag} {'ok' if ok else 'FAILED'} {dt:.1f}s "
                  f"{_run_summary(run_dir) if ok else err}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    try:
        points = grid(args)
    except ValueError as e:
        print(f"sweep.py: error: {e}", file=sys.stderr)
        return 2
    root = Path(args.outdir_root)
    if args.dry_run:
        if rank == 0:
            print(f"{len(points)} runs in {root}")
            for pt in points:
                print(f"{pt.tag}: python train/train.py {' '.join(shlex.quote(a) for a in train_argv(args, pt, root / pt.tag))}")
        return 0

    import torch

    root.mkdir(parents=True, exist_ok=True)
    status = Status(root, write=rank == 0)
    skipped = [pt for pt in points if run_finished(root / pt.tag, args.max_steps)]
    todo = [pt for pt in points if pt not in skipped]
    if world > 1:
        import torch.distributed as dist

        from train.train import setup_distributed

        ctx = setup_distributed(argparse.Namespace(distributed=True, device=args.device, dist_backend=None))
        decided = [[pt.tag for pt in todo]]
        dist.broadcast_object_list(decided, src=0)  # rank 0's view of what is finished decides
        todo = [pt for pt in points if pt.tag in set(decided[0])]
        skipped = [pt for pt in points if pt not in todo]
    if rank == 0:
        print(f"sweep: {len(points)} runs, {len(skipped)} already finished, {len(todo)} to run -> {root}", flush=True)
        for pt in skipped:
            status.data.setdefault(pt.tag, {"status": "done"})
    t0 = time.time()
    use_cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if world > 1:
        run_in_process(args, todo, status, rank)
        dist.barrier()
        if ctx.created_group:
            dist.destroy_process_group()
    elif use_cuda:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = _csv(visible) if visible else [str(i) for i in range(torch.cuda.device_count())]
        nproc = args.nproc_per_node or 1
        if nproc > len(gpus):
            print(f"sweep.py: error: --nproc-per-node {nproc} but {len(gpus)} GPUs visible", file=sys.stderr)
            return 2
        run_subprocesses(args, todo, status, gpus, nproc)
    elif args.subprocess:
        run_subprocesses(args, todo, status, [], 1)
    else:
        run_in_process(args, todo, status)
    if rank != 0:
        return 0
    failed = status.failed([pt.tag for pt in todo])
    print(f"sweep: finished in {time.time() - t0:.0f}s; {len(todo) - len(failed)} ok, {len(failed)} failed, "
          f"{len(skipped)} skipped", flush=True)
    from train.summarize import print_table, summarize

    summary_out = Path(args.summary_out) if args.summary_out else root / "summary.csv"
    rows = summarize([str(root / "*")], summary_out)
    if rows:
        print_table(rows)
        print(f"summary: {summary_out}")
    for tag in failed:
        print(f"FAILED: {tag}: {status.data[tag].get('error')}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
