"""Offline-dashboard vendoring (moe_routing_bench/suite/dashboard.py): no network, no browser, no asv."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from moe_routing_bench.suite import dashboard as pub

# The <head> of asv 0.6.6's www/index.html, verbatim for the CDN lines.
ASV_066_HEAD = """<!doctype html>
<html>
  <head>
    <meta http-equiv="Content-Type" content="text/html; charset=utf-8">
    <title>airspeed velocity</title>
    <script type="text/javascript">
      function js_load_failure() {
        window.location = "error.html";
      }
    </script>

    <script src="https://code.jquery.com/jquery-3.3.1.min.js" integrity="sha256-FgpCb/KJQlLNfOu91ta32o/NMZxltwRo8QtmkMRdAu8=" crossorigin="anonymous" onerror="js_load_failure()"></script>
    <script src="https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.min.js" integrity="sha512-eO1AKNIv7KSFl5n81oHCKnYLMi8UV4wWD1TcLYKNTssoECDuiGhoRsQkdiZkl8VUjoms2SeJY7zTSw5noGSqbQ==" crossorigin="anonymous" referrerpolicy="no-referrer" onerror="js_load_failure()"></script>
    <script src="https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.time.min.js" integrity="sha512-lcRowrkiQvFli9HkuJ2Yr58iEwAtzhFNJ1Galsko4SJDhcZfUub8UxGlMQIsMvARiTqx2pm7g6COxJozihOixA==" crossorigin="anonymous" referrerpolicy="no-referrer" onerror="js_load_failure()"></script>
    <script src="https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.selection.min.js" integrity="sha512-3EUG0t3qfbLaGN3FXO86i+57nvxHOXvIb/xMSKRrCuX/HXdn1bkbqwAeLd6U1PDmuEB2cnKhfM+SGLAVQbyjWQ==" crossorigin="anonymous" referrerpolicy="no-referrer" onerror="js_load_failure()"></script>
    <script src="https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.categories.min.js" integrity="sha512-x4QGSZkQ57pNuICMFFevIhDer5NVB5eJCRmENlCdJukMs8xWFH8OHfzWQVSkl9VQ4+4upPPTkHSAewR6KNMjGA==" crossorigin="anonymous" referrerpolicy="no-referrer" onerror="js_load_failure()"></script>
    <script language="javascript" type="text/javascript" src="jquery.flot.axislabels.js"></script>
    <script src="https://cdn.jsdelivr.net/npm/flot-orderbars@1.0.0/js/jquery.flot.orderBars.js" integrity="sha256-OXNbT0b5b/TgglckAfR8VaJ2ezZv0dHoIeRKjYMKEr8=" crossorigin="anonymous" onerror="js_load_failure()"></script>
    <script src="https://cdnjs.cloudflare.com/ajax/libs/stupidtable/1.0.1/stupidtable.min.js" integrity="sha512-GM3Ds3dUrgkpKVXc+4RxKbQDoeTemdlzXxn5d/QCOJT6EFdEufu1UTVBpIFDLd6YjIhSThNe+zpo1mwqzNq4GQ==" crossorigin="anonymous" referrerpolicy="no-referrer" onerror="js_load_failure()"></script>
    <script src="https://cdnjs.cloudflare.com/ajax/libs/blueimp-md5/2.19.0/js/md5.min.js" integrity="sha512-8pbzenDolL1l5OPSsoURCx9TEdMFTaeFipASVrMYKhuYtly+k3tcsQYliOEKTmuB1t7yuzAiVo+yd7SJz+ijFQ==" crossorigin="anonymous" referrerpolicy="no-referrer" onerror="js_load_failure()"></script>
    <script src="https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/js/bootstrap.min.js" integrity="sha256-iY0FoX8s/FEg3c26R6iFw3jAtGbzDwcA5QJ1fiS0A6E=" crossorigin="anonymous" onerror="js_load_failure()"></script>
    <link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/css/bootstrap.min.css" integrity="sha256-6VA0SGkrc43SYPvX98q/LhHwm2APqX5us6Vuulsafps=" crossorigin="anonymous">

    <script language="javascript" type="text/javascript"
            src="asv.js">
    </script>
    <link href="asv.css" rel="stylesheet" type="text/css"/>
    <link rel="shortcut icon" href="swallow.ico"/>
    <link rel="alternate" type="application/atom+xml" title="Regressions" href="regressions.xml"/>
  </head>
  <body>
    <a href="https://github.com/airspeed-velocity/asv/" class="navbar-link" target="_blank"><img src="swallow.png" width="22" height="22" alt="swallow"></img>airspeed velocity</a>
  </body>
</html>
"""

KEEP_SRI = {"jquery/jquery.min.js", "flot-orderbars/jquery.flot.orderBars.js",
            "blueimp-md5/md5.min.js", "bootstrap/js/bootstrap.min.js",
            "bootstrap/css/bootstrap.min.css"}
DROP_SRI = {"flot/jquery.flot.js", "flot/jquery.flot.time.js", "flot/jquery.flot.selection.js",
            "flot/jquery.flot.categories.js", "stupidtable/stupidtable.min.js"}


def _tag_for(html: str, local: str) -> str:
    m = re.search(r"<(?:script|link)\b[^>]*\b(?:src|href)=\"" + re.escape(local) + r"\"[^>]*>", html)
    assert m, f"no tag references {local}"
    return m.group(0)


def test_template_has_external_references_before_rewrite():
    refs = pub.external_references(ASV_066_HEAD)
    assert len(refs) == len(pub.CDN_ASSETS) == 10
    assert all("https://" in r for r in refs)
    with pytest.raises(pub.ExternalReferenceError):
        pub.check_no_external_references(ASV_066_HEAD)


def test_rewrite_points_every_cdn_tag_at_vendor():
    out = pub.rewrite_cdn_references(ASV_066_HEAD)
    assert pub.external_references(out) == []
    pub.check_no_external_references(out)  # does not raise
    for tag in re.findall(r"<(?:script|link)\b[^>]*>", out):
        assert "cdn" not in tag and "code.jquery.com" not in tag, tag
    for asset in pub.CDN_ASSETS:
        assert asset.url not in out
        tag = _tag_for(out, "vendor/" + asset.dest)
        assert "crossorigin" not in tag and "referrerpolicy" not in tag, tag
        assert 'onerror="js_load_failure()"' in tag or tag.startswith("<link"), tag
    assert out.count('src="vendor/') == 9 and out.count('href="vendor/') == 1


def test_rewrite_keeps_integrity_only_where_npm_bytes_match():
    out = pub.rewrite_cdn_references(ASV_066_HEAD)
    for dest in KEEP_SRI:
        asset = next(a for a in pub.CDN_ASSETS if a.dest == dest)
        assert asset.integrity and asset.integrity in ASV_066_HEAD  # same hash as the CDN tag
        assert f'integrity="{asset.integrity}"' in _tag_for(out, "vendor/" + dest)
    for dest in DROP_SRI:
        assert "integrity" not in _tag_for(out, "vendor/" + dest)
    assert {a.dest for a in pub.CDN_ASSETS} == KEEP_SRI | DROP_SRI


def test_rewrite_leaves_local_tags_and_plain_links_alone():
    out = pub.rewrite_cdn_references(ASV_066_HEAD)
    for unchanged in ('src="jquery.flot.axislabels.js"', 'src="asv.js"', '<link href="asv.css"',
                      'href="regressions.xml"', 'href="https://github.com/airspeed-velocity/asv/"',
                      'window.location = "error.html"'):
        assert unchanged in out
    # An <a href> to the web is a link, not a resource the page loads.
    assert pub.external_references('<a href="https://example.org/">x</a>') == []


def test_rewrite_is_idempotent_and_keeps_line_structure():
    once = pub.rewrite_cdn_references(ASV_066_HEAD)
    assert pub.rewrite_cdn_references(once) == once
    assert once.count("\n") == ASV_066_HEAD.count("\n")


def test_rewrite_vendor_prefix_for_nested_pages():
    out = pub.rewrite_cdn_references(ASV_066_HEAD, vendor_prefix="../vendor")
    assert 'src="../vendor/jquery/jquery.min.js"' in out
    assert 'href="../vendor/bootstrap/css/bootstrap.min.css"' in out


def test_rewrite_handles_quoting_variants_and_scheme_relative_urls():
    html = ("<script src='https://code.jquery.com/jquery-3.3.1.min.js' crossorigin></script>\n"
            "<SCRIPT SRC=//cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.min.js></SCRIPT>\n"
            '<link href="https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/css/bootstrap.min.css"'
            ' rel="stylesheet" integrity="sha256-wrong">')
    out = pub.rewrite_cdn_references(html)
    assert pub.external_references(out) == []
    assert 'src="vendor/jquery/jquery.min.js"' in out and "crossorigin" not in out
    assert 'SRC="vendor/flot/jquery.flot.js"' in out or 'src="vendor/flot/jquery.flot.js"' in out
    # A wrong/stale integrity value is replaced by the one the npm bytes satisfy.
    assert 'integrity="sha256-6VA0SGkrc43SYPvX98q/LhHwm2APqX5us6Vuulsafps="' in out
    assert "sha256-wrong" not in out


@pytest.mark.parametrize("leftover", [
    '<script src="https://cdn.example.com/unknown-lib.min.js"></script>',
    "<script src='http://cdn.example.com/x.js'></script>",
    '<script src="//cdn.example.com/x.js"></script>',
    '<link rel="stylesheet" href="https://fonts.example.com/font.css">',
    '<img src="https://example.com/logo.png">',
])
def test_leftover_external_reference_raises_and_is_listed(leftover):
    html = pub.rewrite_cdn_references(ASV_066_HEAD.replace("</head>", leftover + "\n</head>"))
    url = re.search(r"(?:src|href)=['\"]([^'\"]+)", leftover).group(1)
    with pytest.raises(pub.ExternalReferenceError) as exc:
        pub.check_no_external_references(html, source="index.html")
    msg = str(exc.value)
    assert url in msg and "index.html: 1 external reference(s)" in msg


def test_read_config_is_json5(tmp_path):
    cfg = tmp_path / "asv.conf.json"
    cfg.write_text('{\n  // a comment with "quotes"\n  "version": 1,\n'
                   '  "project_url": "https://example.org/a//b", /* block */\n'
                   '  "html_dir": ".asv/html",\n  "branches": ["main",],\n}\n')
    conf = pub.read_asv_config(cfg)
    assert conf == {"version": 1, "project_url": "https://example.org/a//b",
                    "html_dir": ".asv/html", "branches": ["main"]}
    root = Path(__file__).resolve().parents[1]
    assert pub.read_asv_config(root / "asv.conf.json")["plugins"] == [".moe_routing_bench.suite.asv_plugin"]


def _fake_cache(cache: Path, content: bytes = b"/* fake */\n") -> None:
    for pkg, src, _dest in [(a.package, a.source, a.dest) for a in pub.CDN_ASSETS] + list(pub.EXTRA_FILES):
        f = cache / "packages" / pub._tarball_name(pkg)[: -len(".tgz")] / "package" / src
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(content)


def _fake_html(html_dir: Path) -> None:
    (html_dir / "sub").mkdir(parents=True)
    (html_dir / "index.html").write_text(ASV_066_HEAD)
    (html_dir / "sub" / "page.html").write_text(ASV_066_HEAD)


def test_vendor_asv_assets_from_cache_without_network(tmp_path, monkeypatch):
    cache, html_dir = tmp_path / "cache", tmp_path / "html"
    _fake_cache(cache)
    _fake_html(html_dir)
    # Fake bytes cannot satisfy the real SRI hashes; that check has its own test below.
    monkeypatch.setattr(pub, "_verify_integrity", lambda path, integrity: None)
    monkeypatch.setenv("PATH", str(tmp_path / "no-npm-here"))  # the cache must suffice
    pub.vendor_asv_assets(html_dir, cache)
    vendor = html_dir / "vendor"
    for a in pub.CDN_ASSETS:
        assert (vendor / a.dest).is_file()
    for ext in ("eot", "svg", "ttf", "woff"):  # bootstrap.min.css loads ../fonts/*
        assert (vendor / "bootstrap" / "fonts" / f"glyphicons-halflings-regular.{ext}").is_file()
    top = (html_dir / "index.html").read_text()
    nested = (html_dir / "sub" / "page.html").read_text()
    assert 'src="vendor/jquery/jquery.min.js"' in top
    assert 'src="../vendor/jquery/jquery.min.js"' in nested
    assert pub.external_references(top) == pub.external_references(nested) == []


def test_vendor_asv_assets_rejects_bytes_that_fail_integrity(tmp_path):
    cache, html_dir = tmp_path / "cache", tmp_path / "html"
    _fake_cache(cache, b"not jquery")
    _fake_html(html_dir)
    with pytest.raises(pub.VendoringError, match="integrity"):
        pub.vendor_asv_assets(html_dir, cache)


def test_vendor_asv_assets_raises_on_unknown_cdn(tmp_path, monkeypatch):
    cache, html_dir = tmp_path / "cache", tmp_path / "html"
    _fake_cache(cache)
    _fake_html(html_dir)
    (html_dir / "extra.html").write_text('<script src="https://unpkg.example/x.js"></script>')
    monkeypatch.setattr(pub, "_verify_integrity", lambda path, integrity: None)
    with pytest.raises(pub.ExternalReferenceError, match=r"extra\.html[\s\S]*unpkg\.example/x\.js"):
        pub.vendor_asv_assets(html_dir, cache)


def test_vendor_asv_assets_needs_published_html(tmp_path):
    with pytest.raises(pub.VendoringError, match="asv publish"):
        pub.vendor_asv_assets(tmp_path / "missing", tmp_path / "cache")


def test_missing_npm_gives_install_hint(tmp_path, monkeypatch):
    _fake_html(tmp_path / "html")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(pub.VendoringError, match="apt-get install -y --no-install-recommends npm"):
        pub.vendor_asv_assets(tmp_path / "html", tmp_path / "cache")


def test_publish_without_npm_or_cache_warns_and_keeps_the_cdn_page(tmp_path, monkeypatch, caplog):
    """An offline machine without npm still publishes (exit 0): a warning says the page needs network."""
    from types import SimpleNamespace

    from moe_routing_bench.suite import asv_plugin

    _fake_html(tmp_path / "html")
    before = (tmp_path / "html" / "index.html").read_text()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("MOE_BENCH_ASV_VENDOR_CACHE", str(tmp_path / "cache"))
    patched = []
    monkeypatch.setattr(pub, "patch_asv_js", patched.append)
    with caplog.at_level("WARNING"):
        asv_plugin.OfflineAssets.publish(SimpleNamespace(html_dir=str(tmp_path / "html")), None, None, None, None)
    assert "renders only with network" in caplog.text and "apt-get install" in caplog.text
    assert (tmp_path / "html" / "index.html").read_text() == before  # CDN links kept, not half-rewritten
    assert patched == [tmp_path / "html"]  # the graph page edits still applied


def test_default_cache_dir_is_outside_the_repository(monkeypatch, tmp_path):
    monkeypatch.delenv("MOE_BENCH_ASV_VENDOR_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert pub.default_cache_dir() == tmp_path / "xdg" / "moe-routing-bench" / "asv-vendor"
    monkeypatch.delenv("XDG_CACHE_HOME")
    repo = Path(__file__).resolve().parents[1]
    d = pub.default_cache_dir().resolve()
    assert d.parts[-2:] == ("moe-routing-bench", "asv-vendor")
    assert repo not in d.parents


def test_serve_binds_loopback_and_serves_files(tmp_path):
    (tmp_path / "index.html").write_text("<p>hello</p>")
    server, url = pub.serve(tmp_path)
    try:
        assert server.server_address[0] == "127.0.0.1"
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url + "index.html", timeout=10) as r:
            assert r.read() == b"<p>hello</p>"
    finally:
        server.shutdown()
        server.server_close()


def test_chromium_command_disables_network(monkeypatch):
    import browser

    monkeypatch.setenv("MOE_BENCH_CHROMIUM", "/opt/fake/chromium")
    cmd = browser.chromium_command("http://127.0.0.1:1/", "/tmp/profile", wait_ms=1234)
    assert cmd[0] == "/opt/fake/chromium" and cmd[-1] == "http://127.0.0.1:1/"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 "--user-data-dir=/tmp/profile", "--window-size=1400,900",
                 "--virtual-time-budget=1234"):
        assert flag in cmd
    assert any(c.startswith("--host-resolver-rules=MAP * ~NOTFOUND") for c in cmd)


def test_missing_chromium_gives_install_hint(monkeypatch, tmp_path):
    import browser

    monkeypatch.delenv("MOE_BENCH_CHROMIUM", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(browser.BrowserNotFoundError, match="apt-get install -y --no-install-recommends chromium"):
        browser.find_chromium()


def test_publish_module_is_stdlib_only():
    # Load the file directly (not through the package __init__) in a fresh interpreter.
    path = Path(pub.__file__)
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('publish_only', {str(path)!r})\n"
            "m = importlib.util.module_from_spec(spec); sys.modules['publish_only'] = m\n"
            "spec.loader.exec_module(m)\n"
            "bad = sorted(k for k in ('torch', 'numpy', 'asv', 'moe_routing_bench') if k in sys.modules)\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert importlib.util.find_spec("moe_routing_bench.suite.dashboard") is not None


def test_asv_graph_page_patches_apply_to_the_installed_asv_once(tmp_path):
    asv = pytest.importorskip("asv")
    src = Path(asv.__file__).parent / "www" / "graphdisplay.js"
    (tmp_path / "graphdisplay.js").write_text(src.read_text())
    pub.patch_asv_js(tmp_path)
    patched = (tmp_path / "graphdisplay.js").read_text()
    for _name, old, new, _why in pub.JS_PATCHES:
        assert new in patched and old not in patched
    pub.patch_asv_js(tmp_path)  # idempotent
    assert (tmp_path / "graphdisplay.js").read_text() == patched
    (tmp_path / "graphdisplay.js").write_text("// another asv\n")
    with pytest.raises(pub.VendoringError, match="asv's code changed"):
        pub.patch_asv_js(tmp_path)
