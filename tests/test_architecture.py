"""The package's three layers and the public API: imports point one way, cheap imports stay cheap."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "moe_routing_bench"
# A layer may import itself and the layers listed after it.
MAY_IMPORT = {"routing": {"routing"}, "harness": {"harness", "routing"}, "suite": {"suite", "harness", "routing"}}
THIRD_PARTY_OF_ROUTING = {"torch", "triton"}


def _layer(path: Path) -> str | None:
    parts = path.relative_to(PKG).parts
    return parts[0] if len(parts) > 1 else None


def _imported_layers(path: Path) -> tuple[set[str], set[str]]:
    """(layers of this package, top-level third-party modules) that `path` imports, lazily or not."""
    pkg_parts = path.relative_to(PKG.parent).with_suffix("").parts[:-1]
    layers, external = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg_parts[: len(pkg_parts) - node.level + 1]
                target = [*base, *(node.module.split(".") if node.module else [])]
                names = [target + [a.name] for a in node.names] if len(target) == 1 else [target]
            elif node.module.split(".")[0] == "moe_routing_bench":
                names = [node.module.split(".")]
            else:
                external.add(node.module.split(".")[0])
                continue
            for target in names:
                layers.add(target[1] if len(target) > 1 else "<top>")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")
                if top[0] == "moe_routing_bench":
                    layers.add(top[1] if len(top) > 1 else "<top>")
                else:
                    external.add(top[0])
    return layers, external


LAYERED = sorted(p for p in PKG.rglob("*.py") if _layer(p) is not None)


@pytest.mark.parametrize("path", LAYERED, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_point_one_way(path):
    layer = _layer(path)
    layers, external = _imported_layers(path)
    assert layers <= MAY_IMPORT[layer], f"{path.name} ({layer}) imports {sorted(layers - MAY_IMPORT[layer])}"
    if layer == "routing":
        stdlib = set(sys.stdlib_module_names)
        assert external - stdlib <= THIRD_PARTY_OF_ROUTING, f"{path.name} imports {sorted(external - stdlib)}"


def test_no_two_modules_share_a_name():
    names = [p.stem for p in PKG.rglob("*.py") if p.stem != "__init__"]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_importing_the_package_loads_neither_triton_nor_matplotlib():
    code = ("import sys, moe_routing_bench as m; m.get_backend('torch'); m.available_backends();"
            "print(sorted(x for x in ('triton', 'matplotlib') if x in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_public_api_is_exported():
    import moe_routing_bench as m

    for name in m.__all__:
        assert getattr(m, name) is not None
    for name in ("route", "build_plan", "pack", "combine", "MoELayer", "get_backend", "measure", "Case"):
        assert name in m.__all__
