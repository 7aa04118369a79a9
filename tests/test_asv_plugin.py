"""The project's asv plugin (moe_routing_bench/suite/asv_plugin.py) against the installed asv 0.6.6."""
from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

asv = pytest.importorskip("asv")
from moe_routing_bench.suite import asv_plugin, dashboard  # noqa: E402


def test_benchmarks_save_keeps_entries_this_run_did_not_discover(tmp_path):
    from asv.benchmarks import Benchmarks

    asv_plugin.setup()
    asv_plugin.setup()  # idempotent: one wrapper
    assert Benchmarks.save.__wrapped__ is not None and not hasattr(Benchmarks.save.__wrapped__, "__wrapped__")
    old = {"version": 2,
           "exported.Training.track_x": {"name": "exported.Training.track_x", "version": "export-v1", "code": "c"},
           "bench_pack.Pack.track_pack_us": {"name": "bench_pack.Pack.track_pack_us", "version": "pack-v1", "code": "old"}}
    (tmp_path / "benchmarks.json").write_text(json.dumps(old))
    found = {"name": "bench_pack.Pack.time_pack", "version": "pack-v1", "code": "new"}
    b = Benchmarks.__new__(Benchmarks)
    b._conf = SimpleNamespace(results_dir=str(tmp_path))
    b._all_benchmarks = {found["name"]: found, "bench_pack.Pack.track_pack_us": {**old["bench_pack.Pack.track_pack_us"], "code": "new"}}
    b.save()
    saved = json.loads((tmp_path / "benchmarks.json").read_text())
    assert saved["exported.Training.track_x"] == old["exported.Training.track_x"]  # kept
    assert saved["bench_pack.Pack.track_pack_us"]["code"] == "new"  # rediscovered: replaced
    assert saved["bench_pack.Pack.time_pack"] == found and saved["version"] == 2


def test_publish_swaps_a_complete_output_in_while_it_is_served(tmp_path):
    """A server keeps answering from the old output until the new one is complete, then from the new."""
    link = tmp_path / "html"
    conf = SimpleNamespace(html_dir=str(link))

    def fake_publish(text):
        def run(c):
            out = Path(c.html_dir)
            assert out != link and out.parent == tmp_path  # asv writes into a fresh folder
            out.mkdir(exist_ok=True)
            (out / "index.html").write_text(text)
            time.sleep(0.3)  # a publish takes a while: the served page must not change meanwhile
            (out / "index.json").write_text(text)
        return run

    asv_plugin.publish_and_swap(fake_publish("one"), conf)
    assert conf.html_dir == str(link) and link.is_symlink() and (link / "index.html").read_text() == "one"
    server, url = dashboard.serve(link)
    seen = []
    try:
        t = threading.Thread(target=asv_plugin.publish_and_swap, args=(fake_publish("two"), conf))
        t.start()
        while t.is_alive():
            with urllib.request.urlopen(url + "index.json", timeout=5) as r:
                seen.append(r.read().decode())
        t.join()
        with urllib.request.urlopen(url + "index.json", timeout=5) as r:
            seen.append(r.read().decode())
    finally:
        server.shutdown()
        server.server_close()
    assert set(seen) <= {"one", "two"} and seen[0] == "one" and seen[-1] == "two"
    asv_plugin.publish_and_swap(fake_publish("three"), conf)
    generations = sorted(p.name for p in tmp_path.iterdir() if asv_plugin.GENERATION_PREFIX in p.name)
    assert len(generations) == 2  # the current output and the one before it


def test_failed_publish_leaves_the_served_output_alone(tmp_path):
    link = tmp_path / "html"
    conf = SimpleNamespace(html_dir=str(link))
    asv_plugin.publish_and_swap(lambda c: (Path(c.html_dir) / "index.html").write_text("good"), conf)

    def broken(c):
        raise RuntimeError("asv failed")

    with pytest.raises(RuntimeError):
        asv_plugin.publish_and_swap(broken, conf)
    assert (link / "index.html").read_text() == "good" and conf.html_dir == str(link)


def test_compare_rows_leave_out_skipped_combinations():
    from asv.commands import compare

    asv_plugin.setup()
    rows = list(compare.unroll_result("b.C.time_x", [["'torch'", "'compile'"]], [1.0, float("nan")],
                                      [None, None], [None, None]))
    assert [r[0] for r in rows] == ["b.C.time_x('torch')"] and rows[0][1] == 1.0
    failed = list(compare.unroll_result("b.C.time_y", [], [None], [None], [None]))
    assert len(failed) == 1  # a failure stays visible


def test_host_environment_records_the_versions_the_host_has(monkeypatch):
    """virtualenv-host installs no torch: what it records must be what the host runs."""
    from importlib import metadata

    versions = {"torch": "2.11.0+cu130", "numpy": "2.1.0"}
    monkeypatch.setattr(metadata, "version", lambda name: versions[name] if name in versions
                        else (_ for _ in ()).throw(metadata.PackageNotFoundError(name)))
    assert asv_plugin.host_version("torch", "2.13.0") == "2.11.0+cu130"  # a pin the host lacks: the host's
    assert asv_plugin.host_version("torch", "2.11.0") == "2.11.0"  # the host's release: the pin's spelling
    assert asv_plugin.host_version("numpy", "") == ""  # left open stays open
    with pytest.raises(asv.util.UserError, match="scipy"):
        asv_plugin.host_version("scipy", "1.0")


def test_host_environment_sees_the_host_packages_but_not_its_project(tmp_path):
    """The .pth lists the host's package directories; the editable project of the host is not among them."""
    import sys

    dirs = asv_plugin.host_site_dirs()
    assert dirs and all(Path(d).is_dir() for d in dirs)
    torch_dir = str(Path(pytest.importorskip("torch").__file__).parents[1])
    assert torch_dir in dirs
    assert str(Path(__file__).resolve().parents[1]) not in dirs  # the working tree is never a package dir
    assert dirs == [p for p in sys.path if p in dirs]  # host order kept
