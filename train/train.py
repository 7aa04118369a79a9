"""Train a small MoE language model (one process, or DDP under torchrun) and log what routing costs.

    python train/train.py --max-steps 200 --eval-interval 50                 # generated stories
    python train/train.py --data data/tinystories_val.txt ...      # a text file of yours
    torchrun --standalone --nproc_per_node=2 train/train.py --distributed
    torchrun --standalone --nproc_per_node=8 train/train.py --expert-parallel 4    # EP 4 x DP 2
    python train/train.py --preset seed --router top1                        # the older tool's recipe
    python train/train.py --bench --compile --router softk ...               # tokens/s only

Outputs in --outdir (default runs/tiny; runs/ is git-ignored): ``train_log.jsonl`` (a record per
logged step, then ``{"done": true, ...}``), ``hparams.json`` (every setting, versions, git commit,
device), ``ckpt.pt`` with ``ckpt.pt.sha256`` (model, optimizer, step, data-generator state; the
previous one kept as ``ckpt.prev.pt``). A rerun of the same command resumes from the newest good
checkpoint (``--no-resume`` starts over); the log is cut back to the checkpoint's step. One process
owns a run folder: a second one on the same --outdir stops at once.

Modules: ``config`` (flags and presets), ``trainer`` (model, optimizer, step, evaluation),
``loop`` (the loop, records, benchmark), ``checkpoint`` (folder lock, checkpoints, log).
"""
from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

os.environ["NCCL_NVLS_ENABLE"] = "0"  # NVLink multicast stays off on shared hosts
os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")

ROOT = Path(__file__).resolve().parents[1]
# run as a script, this folder comes first on sys.path and "train" would be train/train.py itself
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "train"]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import moe_routing_bench as mrb  # noqa: E402
from train.checkpoint import DiskFull  # noqa: E402
from train.config import parse_train_args  # noqa: E402
from train.loop import bench, train  # noqa: E402,F401  (train/bench: the API of this module)

PROG = "train.py"


def fatal_message(e: BaseException) -> str | None:
    """One line saying what went wrong and what to do, for the failures a user can fix."""
    if isinstance(e, DiskFull):
        return e.strerror
    if isinstance(e, mrb.ConfigError):
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return f"the disk is full ({e.filename or 'writing'}); nothing was lost: free some space and rerun to resume"
    if isinstance(e, torch.OutOfMemoryError):
        return ("out of device memory: lower --batch-size (or --dim/--layers/--seq-len), or run fewer "
                "runs per GPU (sweep --runs-per-gpu)")
    return None


def main(argv: list[str] | None = None) -> int:
    try:
        cfg, notes = parse_train_args(argv, description=__doc__.split("\n")[0], prog=PROG,
                                      epilog=__doc__.split("\n", 1)[1])
    except mrb.ConfigError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
    try:
        bench(cfg) if cfg.bench.bench else train(cfg)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
    except Exception as e:
        message = fatal_message(e)
        if message is None:
            raise
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
