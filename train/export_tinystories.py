"""Export a split of roneneldan/TinyStories to a text file for train/train.py --data.

    python train/export_tinystories.py --split train --out data/tinystories_train.txt
    python train/export_tinystories.py --split validation --out data/tinystories_val.txt

Needs the optional `datasets` package (pip install datasets) and network access to
the Hugging Face hub. Each story is stripped, CRLF/CR become LF, and stories are
separated by one blank line. The file is written to a temporary file next to --out
and renamed into place, so an interrupted export never leaves a truncated file.
Dataset licence: CDLA-Sharing-1.0 (Eldan & Li, arXiv 2305.07759).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from typing import Iterable, NoReturn

import moe_routing_bench as mrb

DATASET = "roneneldan/TinyStories"
SPLITS = ("train", "validation")  # the dataset has no "test" split


class LoadError(Exception):
    """The dataset could not be loaded or read (no network, hub error, ...)."""


def fail(msg: str) -> NoReturn:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def clean(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def write_stories(stories: Iterable[str], out: str) -> int:
    """Write non-empty cleaned stories separated by a blank line, atomically; return the count."""
    count = 0
    with mrb.atomic_target(out) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for story in stories:
            story = clean(story)
            if story:
                f.write(("\n\n" if count else "") + story)
                count += 1
        if count:
            f.write("\n")
    return count


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", default="train", choices=[*SPLITS, "test"],
                   help="dataset split (default train). 'test' is accepted for compatibility with the "
                        "old tool but the dataset has only train and validation")
    p.add_argument("--out", default=None, help="output text file, parent folders created (default: "
                   "data/tinystories_SPLIT.txt; data/ is git-ignored)")
    p.add_argument("--limit", type=int, default=None, help="export at most this many stories (default: all)")
    args = p.parse_args(argv)
    if args.split not in SPLITS:
        fail(f"TinyStories has no '{args.split}' split; only train and validation exist")
    if args.limit is not None and args.limit < 0:
        fail(f"--limit must be >= 0, got {args.limit}")
    args.out = args.out or f"data/tinystories_{args.split}.txt"

    try:
        from datasets import load_dataset
    except ImportError:
        fail("the optional 'datasets' package is required: pip install datasets")

    def stories() -> Iterable[str]:
        # streaming: no 2 GB cache copy, and --limit downloads only what it needs
        try:
            ds = load_dataset(DATASET, split=args.split, streaming=True)
            for row in itertools.islice(ds, args.limit):
                yield row["text"]
        except Exception as e:  # hub/datasets errors have many types
            raise LoadError(f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}") from e

    try:
        count = write_stories(stories(), args.out)
    except LoadError as e:
        fail(f"loading {DATASET} ({args.split}) failed; it needs network access to the "
             f"Hugging Face hub ({e})")
    except OSError as e:
        fail(f"cannot write {args.out}: {e}")
    except KeyboardInterrupt:
        print("interrupted; nothing written", file=sys.stderr)
        return 130
    print(f"wrote {count} samples to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
