"""`moe-bench` / `python -m moe_routing_bench.cli`: the harness's commands plus the suite's `publish`.

The one module that sees every layer: it composes the entry point and computes nothing itself.
"""
from __future__ import annotations

import sys

from .harness import commands
from .suite.dashboard import add_publish_command


def main(argv: list[str] | None = None) -> int:
    return commands.main(argv, extra_commands=[add_publish_command])


if __name__ == "__main__":
    sys.exit(main())
