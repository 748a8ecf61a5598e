"""The package's layers: no module-level import cycle, and no module importing a
layer above it at module level (CONTRIBUTING.rst, "The layers").

The import graph is read from the source (``ast``), so the test needs no build.
Only module-level imports count (also those inside a module-level ``try``/``if``);
an import inside a function is a deliberate, lazy delegation upward, and one under
``if TYPE_CHECKING:`` is never executed (it names a type for the annotations only).
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("qe4", "qe4_fast")

# The core layers, bottom first (CONTRIBUTING.rst); a module may import only modules of
# its own layer or below.  Modules not listed are checked for cycles only.
LAYERS = [
    {"qe4.layouts", "qe4._mapped"},
    {"qe4.method_registry"},
    {"qe4.preset_registry"},
    {"qe4._validate"},
    {"qe4.table"},
    {"qe4.rowwise", "qe4.codebook", "qe4.bag", "qe4.metrics", "qe4.engines"},
    {"qe4.frontend"},
    {"qe4.api", "qe4.uniform"},
]


def _modules():
    """module name -> source path, for every .py module (and .pyx extension) of the packages."""
    out = {}
    for pkg in PACKAGES:
        for dirpath, _, files in os.walk(os.path.join(ROOT, pkg)):
            for f in files:
                if f.endswith((".py", ".pyx")):
                    rel = os.path.relpath(os.path.join(dirpath, f), ROOT).rsplit(".", 1)[0]
                    rel = rel.replace(os.sep, ".")
                    out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = \
                        os.path.join(dirpath, f)
    return out


def _is_type_checking(test):
    """``TYPE_CHECKING`` or ``typing.TYPE_CHECKING`` (False whenever the module runs)."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level(body):
    """Import statements executed when the module is imported (not inside def/class)."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _module_level(node.orelse)        # the body runs only in a type checker
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(node, field, []):
                    yield from _module_level(child.body if isinstance(child, ast.ExceptHandler)
                                             else [child])


def _graph():
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        if path.endswith(".pyx"):         # compiled: imports only C and cimports
            graph[name] = set()
            continue
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        is_pkg = path.endswith("__init__.py")
        package = name if is_pkg else name.rpartition(".")[0]
        deps = set()
        for node in _module_level(tree.body):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parts = parts[:len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                           for a in node.names]
            deps |= {t for t in targets if t in mods and t != name}
        graph[name] = deps
    return graph


GRAPH = _graph()


def test_the_graph_was_read():
    assert {"qe4", "qe4.layouts", "qe4.table", "qe4.frontend", "qe4_fast"} <= set(GRAPH)
    assert "qe4.layouts" in GRAPH["qe4.table"]


def test_no_module_level_import_cycle():
    """Tarjan's strongly connected components: every one must be a single module."""
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, f"module-level import cycles: {cycles}"


@pytest.mark.parametrize("module", sorted(m for layer in LAYERS for m in layer))
def test_no_import_from_a_layer_above(module):
    rank = {m: i for i, layer in enumerate(LAYERS) for m in layer}
    up = sorted(d for d in GRAPH[module] if rank.get(d, -1) > rank[module]
                or (d.startswith("qe4.") and d not in rank and d != "qe4"))
    assert not up, f"{module} (layer {rank[module]}) imports {up} at module level"
    assert "qe4" not in GRAPH[module] and "qe4_fast" not in GRAPH[module]


def test_the_reference_never_imports_the_compiled_twin():
    offenders = sorted(m for m, deps in GRAPH.items() if m.split(".")[0] == "qe4"
                       and any(d.split(".")[0] == "qe4_fast" for d in deps))
    assert not offenders
