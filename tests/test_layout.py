"""The package's shape: no import cycle anywhere in cortex/ (lazy and TYPE_CHECKING imports
count), imports between the neuron's layers point down only, and no two neuron modules share a
name across its layers (a newcomer finds a behaviour in the one file named for it)."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "cortex"

# The neuron's layers, highest first: a module may import from its own layer or any below.
NEURON_LAYERS = [
    "cortex.neuron.server",
    "cortex.neuron",  # the seams: manager, generation, offline, registry, devices, metrics
    "cortex.neuron.text",
    "cortex.neuron.engine",
    "cortex.neuron.models",
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """Every cortex module `path` imports, wherever the import statement stands."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return {m for m in found if m in known}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) - {name} for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def layer(module: str) -> int | None:
    """The rank of the layer `module` belongs to (the longest matching prefix), if any."""
    for prefix in sorted(NEURON_LAYERS, key=len, reverse=True):
        rest = module.removeprefix(prefix)
        if rest != module and (rest == "" or (rest.startswith(".") and "." not in rest[1:])):
            return NEURON_LAYERS.index(prefix)
    return None


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_neuron_layers_import_down_only():
    upward = [
        f"{a} -> {b}"
        for a, targets in graph().items()
        for b in targets
        if layer(a) is not None and layer(b) is not None and layer(b) < layer(a)
    ]
    assert upward == []


def test_neuron_module_names_are_unique_across_layers():
    names = Counter(
        m.rsplit(".", 1)[1]
        for m in modules()
        if m.startswith("cortex.neuron.") and layer(m) is not None
    )
    assert [n for n, count in names.items() if count > 1 and n != "__init__"] == []


def test_the_checks_see_a_cycle():
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
