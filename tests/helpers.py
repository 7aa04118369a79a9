"""Small pieces several test files share (import as `helpers`; tests/ is on the path)."""
from __future__ import annotations

import importlib.util
import os
import shutil
import socket

import pytest


def require(what: str, ok: bool) -> None:
    """Skip when a tool is missing here; fail instead where MOE_BENCH_REQUIRE_DASHBOARD=1 (CI)."""
    if not ok:
        if os.environ.get("MOE_BENCH_REQUIRE_DASHBOARD") == "1":
            pytest.fail(f"{what} is required (MOE_BENCH_REQUIRE_DASHBOARD=1)")
        pytest.skip(f"{what} not available")


def require_dashboard_tools(asv_ok: bool = True) -> None:
    """asv (and `asv_ok`, a caller's extra condition on it), headless Chromium, npm or the vendor cache."""
    import browser
    from moe_routing_bench.suite import dashboard

    require("asv", importlib.util.find_spec("asv") is not None and asv_ok)
    try:
        browser.find_chromium()
        chromium = True
    except browser.BrowserNotFoundError:
        chromium = False
    require("chromium", chromium)
    require("npm or the dashboard vendor cache", shutil.which("npm") is not None
            or (dashboard.default_cache_dir() / "packages").is_dir())


class Crash(RuntimeError):
    pass


def crash_at(step: int):
    """A training `on_event` observer that raises Crash after the log of `step`."""
    def on_event(event, s):
        if event == "log" and s == step:
            raise Crash(f"crash after step {s}")
    return on_event


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
