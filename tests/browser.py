"""Headless Chromium for the dashboard tests and tools/dashboard_screenshots.py (not part of the package).

Networking is off except for 127.0.0.1 (`--host-resolver-rules`), so a page that still references
a CDN fails exactly as it would offline, even on a machine that has network access.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path


class BrowserNotFoundError(RuntimeError):
    """No Chromium binary was found."""


_CHROMIUM_ENV = "MOE_BENCH_CHROMIUM"
_INSTALL_CHROMIUM = "apt-get install -y --no-install-recommends chromium"


def find_chromium() -> str:
    """Path of a Chromium binary (``$MOE_BENCH_CHROMIUM`` overrides the search)."""
    env = os.environ.get(_CHROMIUM_ENV)
    if env:
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    raise BrowserNotFoundError(
        f"no Chromium found (looked for chromium, chromium-browser, google-chrome; or set "
        f"${_CHROMIUM_ENV}); on Debian: `{_INSTALL_CHROMIUM}`")


def chromium_command(url: str, user_data_dir: str, *, wait_ms: int = 15000,
                     extra: tuple[str, ...] = ()) -> list[str]:
    """Headless Chromium command line with networking off except for 127.0.0.1.

    ``--host-resolver-rules`` makes every host name but 127.0.0.1 unresolvable, so a page
    that still references a CDN fails exactly as it would offline, even on a machine that
    has network access.  ``--no-sandbox`` is required when running as root.
    """
    return [
        find_chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-quic",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        f"--user-data-dir={user_data_dir}",
        "--window-size=1400,900",
        f"--virtual-time-budget={int(wait_ms)}",
        *extra,
        url,
    ]


def _run_chromium(url: str, wait_ms: int, extra: tuple[str, ...]) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="moe-bench-chromium-") as profile:
        cmd = chromium_command(url, profile, wait_ms=wait_ms, extra=extra)
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, timeout=wait_ms / 1000 + 120,
                                  stdin=subprocess.DEVNULL)
        except FileNotFoundError as e:
            raise BrowserNotFoundError(f"{cmd[0]} not runnable ({e}); `{_INSTALL_CHROMIUM}`") from e
    if proc.returncode != 0:
        raise RuntimeError(f"chromium exited {proc.returncode} for {url}:\n{proc.stderr[-4000:]}")
    return proc


def screenshot(url: str, out_png: str | os.PathLike[str], *, wait_ms: int = 15000) -> None:
    """Save a 1400x900 PNG of ``url`` rendered by headless Chromium without network."""
    out = Path(out_png).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.unlink()
    proc = _run_chromium(url, wait_ms, (f"--screenshot={out}",))
    if not out.is_file() or out.stat().st_size == 0:
        raise RuntimeError(f"chromium wrote no screenshot to {out}:\n{proc.stderr[-4000:]}")


def dump_dom(url: str, *, wait_ms: int = 15000) -> str:
    """The DOM of ``url`` after scripts ran (``--dump-dom``), for automated checks."""
    return _run_chromium(url, wait_ms, ("--dump-dom",)).stdout




def y_ticks(dom: str) -> list[float]:
    """Numeric axis tick labels flot drew; an empty plot gets its default axis, 1.00 to 1.01."""
    ticks = []
    for text in re.findall(r'class="flot-tick-label tickLabel"[^>]*>([^<]*)<', dom):
        try:
            ticks.append(float(text.replace(",", "")))
        except ValueError:
            pass
    return ticks
