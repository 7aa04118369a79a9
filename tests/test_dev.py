"""dev.py set-up: the commands it runs on a fresh machine (issue 11), without running them."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def dev(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("dev_under_test", ROOT / "dev.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    venv = tmp_path / ".venv"
    monkeypatch.setattr(module, "VENV", venv)
    monkeypatch.setattr(module, "VENV_PY", venv / "bin" / "python")
    monkeypatch.setattr(module, "STAMP", venv / ".ready")
    module.calls = []

    def fake_run(cmd, **kw):
        module.calls.append([str(c) for c in cmd])
        if "venv" in cmd:
            (venv / "bin").mkdir(parents=True)
            (venv / "bin" / "python").write_text("")
        return 0

    monkeypatch.setattr(module, "_run", fake_run)
    return module


@pytest.mark.parametrize("has_torch", [False, True])
def test_setup_installs_the_test_tools_into_the_venv_even_when_the_system_has_them(dev, monkeypatch, has_torch):
    monkeypatch.setattr(dev, "_importable", lambda m: has_torch and m != "moe_routing_bench")
    dev.setup()
    pips = [c for c in dev.calls if "pip" in c]
    assert dev.calls[0][:3] == [sys.executable, "-m", "venv"] and "--system-site-packages" in dev.calls[0]
    assert any("--ignore-installed" in c and any(t.startswith("pytest>=") for t in c) and
               any(t.startswith("hypothesis") for t in c) for c in pips)
    assert any(dev.TORCH_PIN in c for c in pips) == (not has_torch)  # a GPU machine keeps its own torch
    assert pips[-1][-2:] == ["-e", ".[test,bench]"]


def test_setup_does_not_reinstall_test_tools_the_venv_already_has(dev, monkeypatch):
    monkeypatch.setattr(dev, "_importable", lambda m: m != "moe_routing_bench")
    (dev.VENV / "bin").mkdir(parents=True)
    (dev.VENV / "bin" / "python").write_text("")
    (dev.VENV / "bin" / "pytest").write_text("")
    dev.setup()
    assert not any("--ignore-installed" in c for c in dev.calls)


@pytest.mark.parametrize("invoked_from_a_venv", [False, True])
def test_setup_lets_the_venv_see_a_python3_that_is_itself_a_venv(dev, monkeypatch, tmp_path, invoked_from_a_venv):
    """GPU machines often have torch in a venv of their own: `venv --system-site-packages` alone
    would not show it, and set-up would try to download torch."""
    site = tmp_path / "their-venv" / "lib" / "python3" / "site-packages"
    site.mkdir(parents=True)
    monkeypatch.setattr(sys, "path", [str(tmp_path / "src"), str(site), "/nonexistent/site-packages"])
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "their-venv") if invoked_from_a_venv else sys.base_prefix)
    monkeypatch.setattr(dev, "_importable", lambda m: m != "moe_routing_bench")
    dev.setup()
    pth = list(dev.VENV.rglob("_invoking_python.pth"))
    if invoked_from_a_venv:
        assert len(pth) == 1 and pth[0].read_text().split() == [str(site)]  # existing package dirs only
        assert pth[0].parent.name == "site-packages" and pth[0].is_relative_to(dev.VENV)
    else:
        assert pth == []


def test_bench_writes_under_runs_and_test_fails_on_no_tests(dev, monkeypatch):
    monkeypatch.setattr(dev, "setup", lambda: None)
    assert dev.main(["bench"]) == 0
    assert dev.calls[-1][-2:] == ["--out", "runs/quick.jsonl"]
    monkeypatch.setattr(dev, "_run", lambda cmd, **kw: 5)
    assert dev.main(["test"]) == 1
    assert dev.main([]) == 2


def test_pytest_addopts_do_not_list_skips():
    """`pytest --benchmark-only` shows the benchmark table, not one skip notice per other test."""
    text = (ROOT / "pyproject.toml").read_text()
    addopts = next(line for line in text.splitlines() if line.startswith("addopts"))
    assert "-r" not in addopts.split("#")[0]
