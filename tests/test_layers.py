"""The house's layers (ARCHITECTURE.md, "Layers"): no import cycle between modules, lazy imports included, and
no package importing one of a higher layer. Every module is also imported, so a runtime cycle fails here."""

import ast
import importlib
from pathlib import Path

import pytest

import arstudio

ROOT = Path(arstudio.__file__).parent

# Lowest first. A module may import its own layer and the ones below it.
LAYERS = (
    ("io", "images", "seeding", "limits", "checks", "data", "export"),
    ("nn",),
    ("tokenizers", "generators"),
    ("presets", "convert"),
    ("decoding",),
    ("pipelines",),
    ("training",),
    ("evaluation",),
    ("render", "reconstruction", "ui", "cli", "__init__"),
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    """The arstudio modules ``module`` imports anywhere in its source (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("arstudio"):
            for alias in node.names:  # `from arstudio.x import y` may name the module arstudio.x.y
                full = f"{node.module}.{alias.name}"
                found.add(full if full in MODULES else _resolve(node.module))
        elif isinstance(node, ast.Import):
            found |= {_resolve(a.name) for a in node.names if a.name.startswith("arstudio")}
    return found - {None, module}


GRAPH = {module: _imports(module) for module in MODULES}


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    for index, names in enumerate(LAYERS):
        if top in names:
            return index
    raise AssertionError(f"{module} is in no layer: add its package to LAYERS (and to ARCHITECTURE.md)")


def _cycles() -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while not component or w != v:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
            if len(component) > 1:
                found.append(component)

    for v in GRAPH:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    found = [sorted(c) for c in _cycles()]
    assert not found, f"import cycles (lazy imports count): {found}"


def _upward() -> list[tuple[str, str]]:
    edges = ((a, b) for a, targets in GRAPH.items() for b in targets)
    return sorted((a, b) for a, b in edges if _layer(b) > _layer(a))


def test_no_lower_layer_imports_a_higher_one():
    assert not _upward(), f"imports of a higher layer: {_upward()}"


# ui/ imports gradio (seconds); tests/test_ui.py imports it
@pytest.mark.parametrize("module", [m for m in MODULES if not m.startswith("arstudio.ui")])
def test_every_module_imports(module):
    importlib.import_module(module)


def test_the_checker_sees_a_cycle_and_an_upward_edge():
    """The checks are real: a planted pipelines <-> loading-style cycle and a decoding -> pipelines edge."""
    saved = {k: set(v) for k, v in GRAPH.items()}
    try:
        GRAPH["arstudio.pipelines.image"].add("arstudio.pipelines.loading")
        assert {"arstudio.pipelines.image", "arstudio.pipelines.loading"} <= set().union(*_cycles())
        GRAPH["arstudio.decoding.logits"].add("arstudio.pipelines.image")
        assert ("arstudio.decoding.logits", "arstudio.pipelines.image") in _upward()
    finally:
        GRAPH.clear()
        GRAPH.update(saved)
