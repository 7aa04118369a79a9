"""The asv dashboard, offline: vendoring of the JavaScript asv loads from CDNs, publishing, serving.

asv 0.6.6 writes an ``index.html`` that loads jQuery, flot, flot-orderbars, stupidtable,
blueimp-md5 and bootstrap from public CDNs; offline, the page redirects to ``error.html``.
`vendor_asv_assets` fetches those libraries as npm packages (``npm pack``, once per machine) into
a cache outside the repository, copies the files the page needs into ``<html_dir>/vendor/`` and
rewrites the CDN ``src``/``href`` attributes to point there. Third-party code is never committed.
It runs inside plain ``asv publish`` through the project's asv plugin
(`moe_routing_bench.suite.asv_plugin`, named under ``plugins`` in asv.conf.json).

    publish(config="asv.conf.json") -> Path      # `asv publish`; returns the html dir
    vendor_asv_assets(html_dir, cache_dir) -> None
    rewrite_cdn_references(html, vendor_prefix="vendor/") -> str   # pure
    external_references(html) -> list[str]                          # pure
    serve(html_dir, port=0) -> (server, url) / served(html_dir)      # 127.0.0.1 only

Standard library only at import time (no torch), so it runs in any environment that has asv.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import hashlib
import html.parser
import importlib.util
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

__all__ = [
    "ASV_VERSION",
    "CdnAsset",
    "CDN_ASSETS",
    "NPM_PACKAGES",
    "ExternalReferenceError",
    "VendoringError",
    "default_cache_dir",
    "rewrite_cdn_references",
    "external_references",
    "check_no_external_references",
    "fetch_npm_packages",
    "vendor_asv_assets",
    "read_asv_config",
    "publish",
    "serve",
    "served",
]

#: asv release whose ``www/index.html`` the table below was written against.
ASV_VERSION = "0.6.6"

#: npm packages providing the libraries asv 0.6.6 loads from CDNs.
NPM_PACKAGES: tuple[str, ...] = (
    "jquery@3.3.1",
    "flot@0.8.3",
    "flot-orderbars@1.0.0",
    "stupid-table-plugin@1.1.3",  # the CDN serves 1.0.1; npm has only 1.1.3
    "blueimp-md5@2.19.0",
    "bootstrap@3.1.1",
)


@dataclass(frozen=True)
class CdnAsset:
    """One CDN reference in asv's index.html and its local replacement."""

    url: str  #: exact CDN URL in asv 0.6.6's index.html
    package: str  #: npm spec from NPM_PACKAGES
    source: str  #: path inside the npm tarball (below ``package/``)
    dest: str  #: path below ``<html_dir>/vendor/``
    #: Subresource-integrity value that the npm bytes match (kept in the page), or None when
    #: the npm file differs from the CDN one (the ``integrity=`` attribute is then dropped).
    integrity: str | None


CDN_ASSETS: tuple[CdnAsset, ...] = (
    CdnAsset("https://code.jquery.com/jquery-3.3.1.min.js",
             "jquery@3.3.1", "dist/jquery.min.js", "jquery/jquery.min.js",
             "sha256-FgpCb/KJQlLNfOu91ta32o/NMZxltwRo8QtmkMRdAu8="),
    # flot: npm ships only the unminified sources, so the CDN hashes of the .min.js differ.
    CdnAsset("https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.min.js",
             "flot@0.8.3", "jquery.flot.js", "flot/jquery.flot.js", None),
    CdnAsset("https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.time.min.js",
             "flot@0.8.3", "jquery.flot.time.js", "flot/jquery.flot.time.js", None),
    CdnAsset("https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.selection.min.js",
             "flot@0.8.3", "jquery.flot.selection.js", "flot/jquery.flot.selection.js", None),
    CdnAsset("https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.categories.min.js",
             "flot@0.8.3", "jquery.flot.categories.js", "flot/jquery.flot.categories.js", None),
    CdnAsset("https://cdn.jsdelivr.net/npm/flot-orderbars@1.0.0/js/jquery.flot.orderBars.js",
             "flot-orderbars@1.0.0", "js/jquery.flot.orderBars.js",
             "flot-orderbars/jquery.flot.orderBars.js",
             "sha256-OXNbT0b5b/TgglckAfR8VaJ2ezZv0dHoIeRKjYMKEr8="),
    # stupidtable: the CDN serves 1.0.1, npm has only 1.1.3 (same API as used by asv).
    CdnAsset("https://cdnjs.cloudflare.com/ajax/libs/stupidtable/1.0.1/stupidtable.min.js",
             "stupid-table-plugin@1.1.3", "stupidtable.min.js", "stupidtable/stupidtable.min.js",
             None),
    CdnAsset("https://cdnjs.cloudflare.com/ajax/libs/blueimp-md5/2.19.0/js/md5.min.js",
             "blueimp-md5@2.19.0", "js/md5.min.js", "blueimp-md5/md5.min.js",
             "sha512-8pbzenDolL1l5OPSsoURCx9TEdMFTaeFipASVrMYKhuYtly+k3tcsQYliOEKTmuB1t7yuzAiVo+yd7SJz+ijFQ=="),
    CdnAsset("https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/js/bootstrap.min.js",
             "bootstrap@3.1.1", "dist/js/bootstrap.min.js", "bootstrap/js/bootstrap.min.js",
             "sha256-iY0FoX8s/FEg3c26R6iFw3jAtGbzDwcA5QJ1fiS0A6E="),
    CdnAsset("https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/css/bootstrap.min.css",
             "bootstrap@3.1.1", "dist/css/bootstrap.min.css", "bootstrap/css/bootstrap.min.css",
             "sha256-6VA0SGkrc43SYPvX98q/LhHwm2APqX5us6Vuulsafps="),
)

#: Extra files copied with the assets: bootstrap.min.css loads ``../fonts/glyphicons-*``.
EXTRA_FILES: tuple[tuple[str, str, str], ...] = tuple(
    ("bootstrap@3.1.1", f"dist/fonts/glyphicons-halflings-regular.{ext}",
     f"bootstrap/fonts/glyphicons-halflings-regular.{ext}")
    for ext in ("eot", "svg", "ttf", "woff")
)

VENDOR_DIRNAME = "vendor"
_CACHE_ENV = "MOE_BENCH_ASV_VENDOR_CACHE"


class VendoringError(RuntimeError):
    """The CDN libraries could not be fetched, verified or copied."""


class LibrariesUnavailable(VendoringError):
    """Neither the cache nor npm can provide the libraries (a machine without network or npm)."""


class ExternalReferenceError(RuntimeError):
    """A published page still loads something from the network."""


# --------------------------------------------------------------------------- pure functions

def _key(url: str) -> str:
    """CDN URL without scheme, so ``https://x``, ``http://x`` and ``//x`` compare equal."""
    return re.sub(r"^(?:https?:)?//", "", url.strip())


_ASSET_BY_KEY = {_key(a.url): a for a in CDN_ASSETS}

# A start tag of an element that loads a resource.  Attribute values may contain '>' only
# inside quotes, which the alternation handles.
_TAG_RE = re.compile(
    r"<(?P<name>script|link)\b(?P<attrs>(?:[^>\"']|\"[^\"]*\"|'[^']*')*)>",
    re.IGNORECASE,
)
_ATTR_RE_TMPL = r"""(?P<lead>\s+){name}\s*=\s*(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<uq>[^\s"'>]+))"""


def _attr_re(name: str) -> re.Pattern[str]:
    return re.compile(_ATTR_RE_TMPL.format(name=re.escape(name)), re.IGNORECASE)


_SRC_HREF = {"script": _attr_re("src"), "link": _attr_re("href")}
_DROP_ALWAYS = (_attr_re("crossorigin"), _attr_re("referrerpolicy"))
_INTEGRITY = _attr_re("integrity")
# A bare boolean attribute ("crossorigin" with no value) is valid HTML too.
_BARE_CROSSORIGIN = re.compile(r"\s+crossorigin(?=[\s/>]|$)(?!\s*=)", re.IGNORECASE)


def _attr_value(m: re.Match[str]) -> str:
    for g in ("dq", "sq", "uq"):
        if m.group(g) is not None:
            return m.group(g)
    return ""


def rewrite_cdn_references(html: str, vendor_prefix: str = VENDOR_DIRNAME + "/") -> str:
    """Point asv's CDN ``<script src>``/``<link href>`` tags at local copies.

    Each known CDN URL (``CDN_ASSETS``) becomes ``vendor_prefix + asset.dest``; the
    ``integrity=`` attribute is kept where the npm bytes match the CDN's and dropped otherwise;
    ``crossorigin``/``referrerpolicy`` (meaningless for same-origin files) are dropped.
    Everything else, unknown external URLs included, is left as it was (see
    :func:`check_no_external_references`).  Pure function: no I/O.
    """
    if vendor_prefix and not vendor_prefix.endswith("/"):
        vendor_prefix += "/"

    def fix_tag(m: re.Match[str]) -> str:
        name = m.group("name").lower()
        attrs = m.group("attrs")
        am = _SRC_HREF[name].search(attrs)
        if am is None:
            return m.group(0)
        asset = _ASSET_BY_KEY.get(_key(_attr_value(am)))
        if asset is None:
            return m.group(0)
        local = vendor_prefix + asset.dest
        attr_name = "src" if name == "script" else "href"
        attrs = attrs[:am.start()] + f'{am.group("lead")}{attr_name}="{local}"' + attrs[am.end():]
        for rx in _DROP_ALWAYS:
            attrs = rx.sub("", attrs)
        attrs = _BARE_CROSSORIGIN.sub("", attrs)
        im = _INTEGRITY.search(attrs)
        if im is not None:
            if asset.integrity is None:
                attrs = attrs[:im.start()] + attrs[im.end():]
            elif _attr_value(im).split() != [asset.integrity]:
                # Keep the page's own value only if it is the one the npm bytes satisfy.
                attrs = attrs[:im.start()] + f' integrity="{asset.integrity}"' + attrs[im.end():]
        return f"<{m.group('name')}{attrs}>"

    return _TAG_RE.sub(fix_tag, html)


class _ResourceFinder(html.parser.HTMLParser):
    """Collects URLs of resources a browser would load by itself (not ``<a href>``)."""

    _LOADING_ATTRS = {
        "script": ("src",),
        "link": ("href",),
        "img": ("src", "srcset"),
        "iframe": ("src",),
        "frame": ("src",),
        "embed": ("src",),
        "object": ("data",),
        "source": ("src", "srcset"),
        "audio": ("src",),
        "video": ("src", "poster"),
        "track": ("src",),
        "input": ("src",),
    }

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = self._LOADING_ATTRS.get(tag.lower())
        if not names:
            return
        for k, v in attrs:
            if v is None or k.lower() not in names:
                continue
            candidates = [c.strip().split()[0] for c in v.split(",") if c.strip()] \
                if k.lower() == "srcset" else [v.strip()]
            for url in candidates:
                if re.match(r"^(?:[a-z][a-z0-9+.-]*:)?//", url, re.IGNORECASE):
                    self.found.append(f"<{tag} {k}={url}>")

    handle_startendtag = handle_starttag


def external_references(html: str) -> list[str]:
    """Resources (script, stylesheet, image, frame …) the page would fetch from another host.

    Matches absolute ``scheme://`` and protocol-relative ``//host`` URLs.  Plain links
    (``<a href>``) are not resources and are ignored.  Pure function.
    """
    finder = _ResourceFinder()
    finder.feed(html)
    finder.close()
    return finder.found


def check_no_external_references(html: str, source: str = "<string>") -> None:
    """Raise :class:`ExternalReferenceError` if ``html`` still loads anything remotely."""
    refs = external_references(html)
    if refs:
        raise ExternalReferenceError(
            f"{source}: {len(refs)} external reference(s) remain after vendoring; the dashboard "
            f"would need network access (asv version other than {ASV_VERSION}? extend "
            f"CDN_ASSETS in moe_routing_bench/suite/dashboard.py):\n  " + "\n  ".join(refs))


# --------------------------------------------------------------------------- fetching

def default_cache_dir() -> Path:
    """``$MOE_BENCH_ASV_VENDOR_CACHE``, else ``$XDG_CACHE_HOME/moe-routing-bench/asv-vendor``
    (``~/.cache/…``): outside the repository, so third-party code is never committed."""
    env = os.environ.get(_CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "moe-routing-bench" / "asv-vendor"


def _tarball_name(spec: str) -> str:
    name, version = spec.rsplit("@", 1)
    return f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"


def _package_dir(cache_dir: Path, spec: str) -> Path:
    return cache_dir / "packages" / _tarball_name(spec)[: -len(".tgz")]


def _needed_files() -> list[tuple[str, str, str]]:
    return [(a.package, a.source, a.dest) for a in CDN_ASSETS] + list(EXTRA_FILES)


def _extract(tgz: Path, dest: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    try:
        with tarfile.open(tgz, "r:gz") as tf:
            if hasattr(tarfile, "data_filter"):
                tf.extractall(tmp, filter="data")
            else:  # Python without PEP 706: refuse unsafe member names ourselves
                for member in tf.getmembers():
                    p = Path(member.name)
                    if p.is_absolute() or ".." in p.parts or not (member.isfile() or member.isdir()):
                        raise VendoringError(f"unsafe member {member.name!r} in {tgz}")
                tf.extractall(tmp)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def fetch_npm_packages(cache_dir: Path, specs: tuple[str, ...] = NPM_PACKAGES) -> dict[str, Path]:
    """Make sure each npm package is packed and extracted under ``cache_dir``.

    Returns ``{spec: <dir containing package/>}``.  Packages already extracted with all
    needed files are reused, so only the first publish on a machine needs the npm registry.
    """
    cache_dir = Path(cache_dir).expanduser().resolve()
    tarballs = cache_dir / "tarballs"
    needed: dict[str, list[str]] = {}
    for pkg, src, _ in _needed_files():
        needed.setdefault(pkg, []).append(src)

    def complete(spec: str) -> bool:
        d = _package_dir(cache_dir, spec) / "package"
        return all((d / s).is_file() for s in needed.get(spec, []))

    missing = [s for s in specs if not complete(s)]
    to_pack = [s for s in missing if not (tarballs / _tarball_name(s)).is_file()]
    if to_pack:
        npm = shutil.which("npm")
        if npm is None:
            raise LibrariesUnavailable(
                "npm is needed once per machine to fetch asv's dashboard libraries "
                f"({' '.join(to_pack)}); install it with "
                "`apt-get install -y --no-install-recommends npm`, or fill the cache "
                f"{cache_dir} from a machine that has it")
        tarballs.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([npm, "pack", "--silent", *to_pack], cwd=tarballs,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise LibrariesUnavailable(f"`npm pack {' '.join(to_pack)}` failed (exit {proc.returncode}) "
                                 f"in {tarballs}:\n{proc.stderr.strip() or proc.stdout.strip()}")
    for spec in missing:
        tgz = tarballs / _tarball_name(spec)
        if not tgz.is_file():
            raise VendoringError(f"npm pack did not produce {tgz}")
        pdir = _package_dir(cache_dir, spec)
        pdir.parent.mkdir(parents=True, exist_ok=True)
        _extract(tgz, pdir)
        if not complete(spec):
            absent = [s for s in needed[spec] if not (pdir / "package" / s).is_file()]
            raise VendoringError(f"{spec} from npm lacks {absent}")
    return {s: _package_dir(cache_dir, s) for s in specs}


def _sri(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    h.update(path.read_bytes())
    return f"{algo}-{base64.b64encode(h.digest()).decode('ascii')}"


def _verify_integrity(path: Path, integrity: str) -> None:
    algo = integrity.split("-", 1)[0]
    got = _sri(path, algo)
    if got != integrity:
        raise VendoringError(
            f"{path} does not match the page's integrity {integrity} (got {got}); the browser "
            "would refuse it. Delete the cache directory and publish again.")


def _is_inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def vendor_asv_assets(html_dir: Path, cache_dir: Path | None = None) -> None:
    """Make an ``asv publish`` output directory render with no network access.

    Fetches the npm packages into ``cache_dir`` (default :func:`default_cache_dir`) if
    needed, copies the files into ``html_dir/vendor/`` (bootstrap fonts included), rewrites
    every ``*.html`` under ``html_dir`` and raises :class:`ExternalReferenceError` if any page
    still loads a remote resource.  Run it after **every** ``asv publish``, which wipes
    ``html_dir``.
    """
    html_dir = Path(html_dir)
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if not (html_dir / "index.html").is_file():
        raise VendoringError(f"{html_dir}/index.html not found: run `asv publish` first")
    if _is_inside(cache_dir, html_dir):
        raise VendoringError(f"cache dir {cache_dir} must not be inside html_dir {html_dir}")

    pkgs = fetch_npm_packages(cache_dir)
    vendor = html_dir / VENDOR_DIRNAME
    for pkg, src, dest in _needed_files():
        s = pkgs[pkg] / "package" / src
        d = vendor / dest
        d.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(s, d)
    for a in CDN_ASSETS:
        if a.integrity is not None:
            _verify_integrity(vendor / a.dest, a.integrity)

    problems: list[str] = []
    for page in sorted(html_dir.rglob("*.html")):
        if _is_inside(page, vendor):
            continue
        prefix = os.path.relpath(vendor, page.parent).replace(os.sep, "/") + "/"
        text = page.read_text(encoding="utf-8")
        new = rewrite_cdn_references(text, vendor_prefix=prefix)
        if new != text:
            page.write_text(new, encoding="utf-8")
        try:
            check_no_external_references(new, source=str(page))
        except ExternalReferenceError as e:
            problems.append(str(e))
    if problems:
        raise ExternalReferenceError("\n".join(problems))


# --------------------------------------------------------------------------- asv's graph page

#: (file under html_dir, asv 0.6.6 text, replacement, why). Applied to the published copy only.
JS_PATCHES: tuple[tuple[str, str, str, str], ...] = (
    ("graphdisplay.js",
     """                var ignore = {
                    'os': null,
                    'cpu': null,
                    'arch': null,
                    'ram': null
                };""",
     """                var ignore = {
                    'os': null,
                    'cpu': null,
                    'arch': null,
                    'ram': null,
                    'num_cpu': null, 'gpu': null, 'cuda': null, 'torch_version': null,
                    'triton_version': null, 'numpy': null, 'python': null, 'branch': null,
                    'torch': null
                };""",
     "legend labels: the machine name already says which GPU/CPU; the keys that follow from it made "
     "every label two lines long"),
    ("graphdisplay.js",
     """            else {
                if (unit && unit != "unit") {
                    unit_name = unit;
                }
                multiplier = 1.0;
            }""",
     """            else {
                if (unit && unit != "unit") {
                    unit_name = unit;
                }
                multiplier = 1.0;
                if (!zoom_y_axis && min >= 0) {
                    options.yaxis.min = 0.0;
                    options.yaxis.max = max * 1.3;
                }
            }""",
     "y axis from zero for every unit, as asv does for seconds and bytes: otherwise the smallest "
     "value sits on the bottom edge (a zero-height bar, a half-hidden point)"),
    ("graphdisplay.js",
     """                options.xaxis.mode = 'categories';
                options.xaxis.tickLength = 0;
                options.series = {
                    bars: {
                        show: true,
                        barWidth: 0.6 / graphs.length,
                        align: "center"
                    }
                };

                // deep copy graphs and html-escape x-labels
                graphs = $.extend(true, [], orig_graphs);
                $.each(graphs, function(i, graph) {
                    $.each(graph.data, function(j, point) {
                        point[0] = $("<span>").text('' + point[0]).html();
                    });
                });""",
     """                options.xaxis.tickLength = 0;
                options.series = {
                    bars: {
                        show: true,
                        barWidth: 0.8 / orig_graphs.length,
                        align: "center",
                        lineWidth: 0,
                        fill: 0.8
                    }
                };

                // deep copy graphs; x = index of the html-escaped label, one tick per label
                var categories = [];
                graphs = $.extend(true, [], orig_graphs);
                $.each(graphs, function(i, graph) {
                    $.each(graph.data, function(j, point) {
                        var label = $("<span>").text('' + point[0]).html();
                        var k = categories.indexOf(label);
                        if (k < 0) {
                            categories.push(label);
                            k = categories.length - 1;
                        }
                        point[0] = k;
                    });
                });
                options.xaxis.ticks = $.map(categories, function(label, k) { return [[k, label]]; });
                options.xaxis.min = -0.5;
                options.xaxis.max = categories.length - 0.5;""",
     "bars side by side: flot-orderbars offsets bars by the x range, which is NaN on string "
     "categories, so every series but one was drawn nowhere (the backends' bars hid each other)"),
    ("graphdisplay.js",
     """                    series = $.asv.filter_graph_data(data,
                                                     x_coordinate_axis,
                                                     graph_content[0],
                                                     $.asv.main_json.benchmarks[current_benchmark].params);
                    orig_graphs.push({""",
     """                    series = $.asv.filter_graph_data(data,
                                                     x_coordinate_axis,
                                                     graph_content[0],
                                                     $.asv.main_json.benchmarks[current_benchmark].params);
                    if (!series.some(function (p) { return p[1] !== null && !isNaN(p[1]); })) {
                        return;  // measured nowhere on this selection: no empty legend entry
                    }
                    orig_graphs.push({""",
     "no legend entry for a series without a value (a GPU shape on a CPU machine, a CPU shape on a "
     "GPU): a first view selects both devices' main shapes, and half its legend was empty series"),
)


def patch_asv_js(html_dir: Path) -> None:
    """Apply JS_PATCHES to a published output; raise VendoringError where asv's text differs."""
    for name, old, new, why in JS_PATCHES:
        path = Path(html_dir) / name
        text = path.read_text(encoding="utf-8")
        if new in text:
            continue
        if text.count(old) != 1:
            raise VendoringError(f"{path}: asv's code changed (asv {ASV_VERSION} expected); cannot apply: {why}")
        path.write_text(text.replace(old, new), encoding="utf-8")


# --------------------------------------------------------------------------- asv publish

def read_asv_config(config: str | os.PathLike[str] = "asv.conf.json") -> dict:
    """asv.conf.json as asv reads it (JSON5: comments and trailing commas allowed)."""
    import json5

    return json5.loads(Path(config).read_text(encoding="utf-8"))


def html_dir_of(config: str | os.PathLike[str] = "asv.conf.json") -> Path:
    cfg_path = Path(config).resolve()
    return cfg_path.parent / read_asv_config(cfg_path).get("html_dir", "html")


def publish(config: str | os.PathLike[str] = "asv.conf.json") -> Path:
    """Run ``asv publish`` for ``config`` (the project's asv plugin vendors the libraries and swaps
    the new output in); return the html dir. asv runs in the config's directory, as it resolves
    the config's relative paths against the working directory."""
    cfg_path = Path(config).resolve()
    if not cfg_path.is_file():
        raise FileNotFoundError(f"asv config {cfg_path} not found")
    if importlib.util.find_spec("asv") is None:
        raise RuntimeError(f"asv is not installed in {sys.executable}: "
                           f"`{sys.executable} -m pip install asv=={ASV_VERSION} virtualenv` "
                           "(offline: tools/asv_wheelhouse.sh, then --no-index --find-links .whl)")
    proc = subprocess.run([sys.executable, "-m", "asv", "publish", "--config", str(cfg_path)], cwd=cfg_path.parent)
    if proc.returncode != 0:
        raise RuntimeError(f"`asv publish` failed (exit {proc.returncode})")
    return html_dir_of(cfg_path)


# --------------------------------------------------------------------------- serving

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        pass


class _LocalServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        # A browser that navigates away (or exits) mid-transfer resets the connection.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


def serve(html_dir: str | os.PathLike[str], port: int = 0
          ) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Serve ``html_dir`` on 127.0.0.1 (never 0.0.0.0) from a daemon thread.

    Returns ``(server, url)``; stop with ``server.shutdown(); server.server_close()``.
    ``port=0`` picks a free port.
    """
    # not resolved: html_dir is a symlink that each publish swaps, and requests must follow it
    directory = os.path.abspath(html_dir)
    if not Path(directory).is_dir():
        raise FileNotFoundError(f"{directory} is not a directory")
    handler = functools.partial(_QuietHandler, directory=directory)
    server = _LocalServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, name="asv-html-server", daemon=True)
    thread.start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


@contextlib.contextmanager
def served(html_dir: str | os.PathLike[str], port: int = 0) -> Iterator[str]:
    """``with served(html_dir) as url:`` — serve on 127.0.0.1 for the block's duration."""
    server, url = serve(html_dir, port)
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- command line

def add_publish_command(sub: argparse._SubParsersAction) -> None:
    """`moe-bench publish`: the suite's subcommand, added to the harness's parser by `moe_routing_bench.cli`."""
    p = sub.add_parser("publish", help="asv publish of the result store, with its JavaScript served locally (renders offline)")
    p.add_argument("--config", default="asv.conf.json")
    p.add_argument("--serve", action="store_true", help="then serve the dashboard on 127.0.0.1 until interrupted")
    p.set_defaults(func=_cmd_publish, standalone=True)


def _cmd_publish(args) -> None:
    from ..routing.validation import ConfigError

    try:
        html_dir = publish(args.config)
    except (RuntimeError, FileNotFoundError) as e:  # asv or npm missing, vendoring failed
        raise ConfigError(f"publish failed: {e}") from None
    print(f"dashboard written to {html_dir}/index.html")
    if args.serve:
        with served(html_dir) as url:
            print(f"serving {url} (Ctrl-C stops)", flush=True)
            threading.Event().wait()
