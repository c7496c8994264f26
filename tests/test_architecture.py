"""Structural tests of the package: which module may import which.

The house rule (docs: STYLE.md) is that imports point down only: backends <- kernels <-
layers/model <- training, checkpoints <- parallel, CLI, pictures. These tests read the source
with ``ast`` (nothing is imported, so they run on a broken tree too) and check:

* no import cycles between portacnn modules, counting imports inside functions too;
* ``portacnn.backends`` imports nothing else from portacnn;
* no module outside ``portacnn/backends/`` (and a short allow-list of host-side modules)
  imports an array library, and none compares a backend's name.

Every failure lists the offending ``file:line``.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "portacnn"
ARRAY_LIBRARIES = {"numpy", "cupy", "torch", "jax", "array_api_strict"}

# Modules outside the backends that may import an array library, and why.
HOST_NUMPY_ALLOWED = {
    "portacnn/reference.py": "naive loops on host NumPy: the readable references and oracles",
    "portacnn/viz.py": "host NumPy arrays for matplotlib",
    "portacnn/data/": "host data loading (NumPy arrays a model moves batch by batch)",
    "portacnn/gradcheck.py": "host float64 finite differences",
    "portacnn/checkpoint.py": "host NumPy arrays for safetensors",
    "portacnn/distributed/data_parallel.py": "host NumPy buffers that MPI sends and receives",
}


@dataclass(frozen=True)
class Import:
    target: str      # the portacnn module imported, or the top-level name of another library
    path: str        # the importing file, relative to the repository root
    line: int

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass
class Module:
    name: str        # "portacnn.kernels.conv"; a package's __init__ is the package's name
    path: str        # "portacnn/kernels/conv.py"
    tree: ast.Module
    is_package: bool


@functools.lru_cache(maxsize=None)
def modules() -> dict[str, Module]:
    found = {}
    for file in sorted((ROOT / PACKAGE).rglob("*.py")):
        rel = file.relative_to(ROOT)
        parts = list(rel.with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        name = ".".join(parts)
        found[name] = Module(name, rel.as_posix(), ast.parse(file.read_text(), str(rel)),
                             is_package)
    return found


def _resolve_relative(module: Module, level: int, base: str | None) -> str:
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    for _ in range(level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{base}" if base else package


def _owning_module(name: str) -> str:
    """The longest prefix of ``name`` that is a portacnn module (``portacnn.x.func`` ->
    ``portacnn.x``)."""
    known = modules()
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or PACKAGE


def _import_module_calls(node: ast.AST):
    """``importlib.import_module("x")`` / ``__import__("x")`` with a constant name."""
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
            and isinstance(node.args[0].value, str):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in ("import_module", "__import__"):
            return node.args[0].value
    return None


@functools.lru_cache(maxsize=None)
def imports_of(name: str) -> tuple[Import, ...]:
    """Every import in module ``name`` (module level and inside functions): portacnn targets
    resolved to modules, other libraries by their top-level name."""
    module = modules()[name]
    found = []

    def add(target: str, node: ast.AST):
        if target == PACKAGE or target.startswith(PACKAGE + "."):
            target = _owning_module(target)
        else:
            target = target.split(".")[0]
        found.append(Import(target, module.path, node.lineno))

    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node)
        elif isinstance(node, ast.ImportFrom):
            base = (_resolve_relative(module, node.level, node.module) if node.level
                    else node.module)
            if base == PACKAGE or base.startswith(PACKAGE + "."):
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    add(sub if sub in modules() else base, node)
            else:
                add(base, node)
        elif (target := _import_module_calls(node)) is not None:
            add(target, node)
    return tuple(found)


def _is_ancestor(package: str, name: str) -> bool:
    return name.startswith(package + ".")


@functools.lru_cache(maxsize=None)
def graph() -> dict[str, dict[str, Import]]:
    """module -> {imported portacnn module -> the first import statement}. Edges to the module
    itself and to its own enclosing packages are left out (a submodule reading its package's
    ``__init__`` is allowed); an import of another package is an edge to its ``__init__``."""
    edges: dict[str, dict[str, Import]] = {}
    for name in modules():
        out = edges.setdefault(name, {})
        for imp in imports_of(name):
            if imp.target in modules() and imp.target != name \
                    and not _is_ancestor(imp.target, name):
                out.setdefault(imp.target, imp)
    return edges


def _strongly_connected(edges: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return components


def _cycle_through(start: str, members: set[str], edges) -> list[str]:
    """A shortest cycle from ``start`` back to itself inside one component (BFS)."""
    previous = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(edges[node]):
                if child == start:
                    path = [node]                 # walk back: node, ..., start
                    while previous[path[-1]] is not None:
                        path.append(previous[path[-1]])
                    return path[::-1] + [start]
                if child in members and child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    return [start]


def _describe_cycle(cycle: list[str], edges) -> str:
    steps = [cycle[0]]
    for a, b in zip(cycle, cycle[1:]):
        steps.append(f" -> {b} ({edges[a][b].where})")
    return "".join(steps)


def test_no_import_cycles():
    edges = graph()
    problems = []
    for component in _strongly_connected(edges):
        if len(component) > 1:
            members = set(component)
            cycles, seen = [], set()
            for start in component:                  # the shortest cycle through each member
                cycle = _cycle_through(start, members, edges)
                key = frozenset(zip(cycle, cycle[1:]))
                if key not in seen:
                    seen.add(key)
                    cycles.append(_describe_cycle(cycle, edges))
            problems.append(f"cycle among {', '.join(component)}:\n    "
                            + "\n    ".join(cycles))
    assert not problems, ("imports must point down only (backends <- kernels <- layers/model "
                          "<- training...):\n  " + "\n  ".join(problems))


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_backends_import_nothing_else_from_portacnn():
    backends = f"{PACKAGE}.backends"
    offenders = [
        f"{imp.where}: {name} imports {imp.target}"
        for name in modules() if _in(name, backends)
        for imp in imports_of(name)
        if _in(imp.target, PACKAGE) and not _in(imp.target, backends)
    ]
    assert not offenders, ("portacnn.backends is the ground floor and imports nothing else "
                           "from portacnn:\n  " + "\n  ".join(offenders))


def _allowed_host_module(path: str) -> bool:
    return any(path == allowed or (allowed.endswith("/") and path.startswith(allowed))
               for allowed in HOST_NUMPY_ALLOWED)


def _outside_backends():
    return [m for m in modules().values() if not _in(m.name, f"{PACKAGE}.backends")]


def _names_a_library(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return node.value in ARRAY_LIBRARIES if isinstance(node.value, str) else False
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_names_a_library(e) for e in node.elts)
    return False


def _is_backend_name(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "name"
            and "backend" in ast.unparse(node.value).lower())


def backend_name_comparisons(module: Module) -> list[str]:
    found = []
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Compare) and any(
                isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in node.ops):
            sides = [node.left, *node.comparators]
            if any(_names_a_library(s) or _is_backend_name(s) for s in sides):
                found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.MatchValue) and _names_a_library(node.value):
            found.append((node.lineno, f"case {ast.unparse(node.value)}"))
    return [f"{module.path}:{line}: {text}" for line, text in sorted(found)]


def test_no_array_library_named_outside_the_backends():
    imports = [
        f"{imp.where}: imports {imp.target}"
        for module in _outside_backends() if not _allowed_host_module(module.path)
        for imp in sorted(imports_of(module.name), key=lambda i: i.line)
        if imp.target in ARRAY_LIBRARIES
    ]
    comparisons = [hit for module in _outside_backends()
                   for hit in backend_name_comparisons(module)]
    message = []
    if imports:
        message.append("array libraries are imported only in portacnn/backends/ (and the "
                       "host-side modules in HOST_NUMPY_ALLOWED):\n  " + "\n  ".join(imports))
    if comparisons:
        message.append("code outside portacnn/backends/ asks which backend runs; give the "
                       "backend class an attribute or method instead:\n  "
                       + "\n  ".join(comparisons))
    assert not message, "\n".join(message)


def test_the_scanner_sees_the_package():
    """Guard against the checks above passing vacuously."""
    names = set(modules())
    assert {PACKAGE, f"{PACKAGE}.backends"} <= names and len(names) > 5, sorted(names)
    assert any(imports_of(name) for name in names)
