"""The package's import graph: no circles, and no module imports from a layer above its own (the layers are the
list in docs/architecture.md). Imports inside functions count too: moving an import into a function hides an
arrow, it does not remove it. Only ``if TYPE_CHECKING:`` imports are left out (they never run)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "platform" / "sstparse"
# Bottom to top; a module may import from its own layer and the layers below. Prefixes name subpackages.
LAYERS = [
    ("foundation", ["sstparse.config", "sstparse.redact", "sstparse.atoms"]),
    ("label domains", ["sstparse.domains"]),
    ("scoring", ["sstparse.evaluate"]),
    ("data and model", ["sstparse.data", "sstparse.model", "sstparse.plots"]),
    ("tracking", ["sstparse.tracking"]),
    ("job schemas and checkpoints", ["sstparse.train.config", "sstparse.tune.config", "sstparse.train.checkpoints"]),
    ("serving and registry", ["sstparse.export", "sstparse.pyfunc", "sstparse.predict", "sstparse.registry",
                              "sstparse.promote"]),
    ("inference at scale", ["sstparse.batch_predict", "sstparse.serve"]),
    ("training and sweeps", ["sstparse.train", "sstparse.tune"]),
    ("command line", ["sstparse.cli"]),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    """Index of the longest layer prefix naming ``module``."""
    matches = [(len(prefix), i) for i, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]
    if not matches:
        raise AssertionError(f"{module}: in no layer of tests/test_architecture.py (add it, and to the doc)")
    return max(matches)[1]


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for child in node.body for n in ast.walk(child)}
    return skip


def imports(module: str) -> set[str]:
    """The package modules ``module`` imports (``from a import b`` counts as a.b when b is a module)."""
    tree = ast.parse(MODULES[module].read_text())
    skip, found = _type_checking_nodes(tree), set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                      for a in node.names}
    return {m for m in found if m in MODULES and m != module and m != "sstparse"}


GRAPH = {m: imports(m) for m in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
                on.discard(comp[-1])
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert cycles(GRAPH) == []


def test_no_module_imports_from_a_layer_above():
    upward = [f"{m} ({LAYERS[layer(m)][0]}) -> {t} ({LAYERS[layer(t)][0]})"
              for m, targets in GRAPH.items() for t in sorted(targets) if layer(t) > layer(m)]
    assert upward == []


def test_the_checker_sees_cycles_and_function_local_imports():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert "sstparse.domains" in GRAPH["sstparse.data.shards"]  # top-level import
    assert "sstparse.train.job" in GRAPH["sstparse.cli"]       # imported inside a function


def test_architecture_doc_lists_the_layers():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for name, prefixes in LAYERS:
        assert name in doc, name
        for prefix in prefixes:
            assert f"`{prefix.removeprefix('sstparse.')}`" in doc, prefix


def _direct_imports(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return names | {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}


@pytest.mark.parametrize("schema", ["sstparse.config", "sstparse.data.config", "sstparse.train.config",
                                    "sstparse.tune.config"])
def test_config_schemas_import_no_heavy_library(schema):
    """Validating a job (a CLI check, a sweep's driver) must not import torch, Ray or MLflow, even indirectly."""
    heavy = re.compile(r"^(torch|ray|mlflow|pyarrow|PIL|s3fs|fsspec|matplotlib)(\.|$)")
    seen, todo = set(), [schema]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += GRAPH[m]
    assert {m: sorted(n for n in _direct_imports(m) if heavy.match(n)) for m in sorted(seen)
            if any(heavy.match(n) for n in _direct_imports(m))} == {}
