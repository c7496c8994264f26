"""What tests/test_architecture.py checks, as functions of source text (nothing is imported).

Each check takes the modules of a package (read with :func:`read_modules`) and returns its
problems as lines naming ``file:line``; an empty list means the rule holds. The tests run them
on portacnn and on small made-up packages that break each rule, so no check passes vacuously.

The floors come from docs/design.md: the fenced block under ``# How portacnn is built`` holds
one floor a line, highest first, each line naming the modules (``name.py``) and packages
(``name/``) of portacnn/ on that floor, then two or more spaces and a comment.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "portacnn"
DESIGN = "docs/design.md"
FLOORS_HEADING = "# How portacnn is built"
ARRAY_LIBRARIES = {"numpy", "cupy", "torch", "jax", "array_api_strict"}

# Modules outside portacnn/backends/ that may import an array library, and why. Each entry is
# needed by some import (a test says so when one no longer is).
HOST_SIDE = {
    "portacnn/reference.py": "naive loops on host NumPy: the readable references, the oracle",
    "portacnn/viz.py": "host NumPy arrays for matplotlib",
    "portacnn/data/": "data set files read into host NumPy arrays, which a model moves per batch",
    "portacnn/training/augment.py": "host NumPy draws the crops and flips, alike on every "
                                    "backend and process, and builds their small index arrays",
    "portacnn/distributed/data_parallel.py": "host NumPy buffers that MPI sends and receives",
}


# --- the package, read with ast ---------------------------------------------------------------

@dataclass(frozen=True)
class Import:
    target: str      # the portacnn module imported, or the top-level name of another library
    binds: str       # the local name the statement binds ("" for import_module calls)
    path: str        # the importing file, relative to the repository root
    line: int

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class Module:
    name: str        # "portacnn.kernels.conv"; a package's __init__ is the package's name
    path: str        # "portacnn/kernels/conv.py"
    tree: ast.Module
    is_package: bool


def read_modules(sources: dict[str, str]) -> dict[str, Module]:
    """``{"portacnn/kernels/conv.py": source}`` -> ``{"portacnn.kernels.conv": Module}``."""
    found = {}
    for path, source in sorted(sources.items()):
        parts = path.removesuffix(".py").split("/")
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        found[name] = Module(name, path, ast.parse(source, path), is_package)
    return found


def read_files(folder: str) -> dict[str, str]:
    """Every ``.py`` file under ``folder`` of the repository: ``{relative path: source}``."""
    return {f.relative_to(ROOT).as_posix(): f.read_text()
            for f in sorted((ROOT / folder).rglob("*.py"))}


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _owning_module(name: str, modules: dict[str, Module]) -> str:
    """The longest prefix of ``name`` that is a module (``portacnn.x.func`` -> ``portacnn.x``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or PACKAGE


def _import_module_call(node: ast.AST) -> ast.expr | None:
    """The name argument of ``importlib.import_module(...)`` / ``__import__(...)``, if ``node``
    is such a call."""
    if isinstance(node, ast.Call) and node.args:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in ("import_module", "__import__"):
            return node.args[0]
    return None


def imports_of(module: Module, modules: dict[str, Module]) -> list[Import]:
    """Every import in ``module``, at module level and inside functions, and every
    ``import_module`` call with a literal name: portacnn targets resolved to the module
    imported (``from .backends import Backend`` -> ``portacnn.backends``), other libraries by
    their top-level name."""
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    found = []

    def add(target: str, binds: str, node: ast.AST):
        target = _owning_module(target, modules) if _in(target, PACKAGE) else target.split(".")[0]
        found.append(Import(target, binds, module.path, node.lineno))

    def resolve(level: int, base: str | None) -> str:
        anchor = package
        for _ in range(level - 1):
            anchor = anchor.rpartition(".")[0]
        return f"{anchor}.{base}" if base else anchor

    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, alias.asname or alias.name.split(".")[0], node)
        elif isinstance(node, ast.ImportFrom):
            base = resolve(node.level, node.module) if node.level else node.module
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if sub in modules else base, alias.asname or alias.name, node)
        elif (arg := _import_module_call(node)) is not None:
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                name = arg.value
                if name.startswith("."):
                    level = len(name) - len(name.lstrip("."))
                    name = resolve(level, name.lstrip(".") or None)
                add(name, "", node)
    return found


def import_graph(modules: dict[str, Module]) -> dict[str, list[Import]]:
    return {name: imports_of(module, modules) for name, module in modules.items()}


# --- the floors of docs/design.md -------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    text: str        # as drawn: "kernels/" or "cli.py", relative to portacnn/
    floor: int       # 0 is the ground floor
    line: int        # in docs/design.md

    def holds(self, module: Module) -> bool:
        where = f"{PACKAGE}/{self.text}"
        return module.path.startswith(where) if self.text.endswith("/") else module.path == where


def parse_floors(markdown: str) -> list[Entry]:
    """The entries of the floor table: the first fenced block after ``FLOORS_HEADING``."""
    lines = markdown.splitlines()
    assert FLOORS_HEADING in lines, f"{DESIGN} has no '{FLOORS_HEADING}' heading over its floors"
    start = lines.index(FLOORS_HEADING)
    fences = [i for i in range(start, len(lines)) if lines[i].startswith("```")]
    assert len(fences) >= 2, f"{DESIGN}: no fenced floor table under '{FLOORS_HEADING}'"
    rows = [(i + 1, lines[i]) for i in range(fences[0] + 1, fences[1]) if lines[i].strip()]
    entries = []
    for k, (line, row) in enumerate(rows):
        names = re.split(r"\s{2,}", row.strip(), maxsplit=1)[0]
        entries += [Entry(text.strip(), len(rows) - 1 - k, line) for text in names.split(",")]
    return entries


def design_floors() -> list[Entry]:
    return parse_floors((ROOT / DESIGN).read_text())


def unplaced_modules(entries: list[Entry], modules: dict[str, Module]) -> list[str]:
    """Modules on no floor, or on more than one."""
    problems = []
    for module in modules.values():
        holders = [e for e in entries if e.holds(module)]
        if not holders:
            problems.append(f"{module.path} is on no floor: add it to the floor table of "
                            f"{DESIGN} (under '{FLOORS_HEADING}'), on a floor above every "
                            "module it imports")
        elif len(holders) > 1:
            problems.append(f"{module.path} is on more than one floor ("
                            + ", ".join(f"'{e.text}' in {DESIGN}:{e.line}" for e in holders)
                            + "): name it once")
    return problems


def stale_entries(entries: list[Entry], modules: dict[str, Module]) -> list[str]:
    """Entries that are not ``name.py`` / ``name/`` or name nothing in the package."""
    problems = []
    for e in entries:
        if not re.fullmatch(r"(\w+/)*(\w+\.py|\w+/)", e.text):
            problems.append(f"{DESIGN}:{e.line}: '{e.text}' is neither a module (name.py) nor "
                            "a package (name/) of portacnn/")
        elif not any(e.holds(m) for m in modules.values()):
            problems.append(f"{DESIGN}:{e.line}: '{e.text}' names nothing in portacnn/: "
                            "remove it or correct the name")
    return problems


def crossings(entries: list[Entry], modules: dict[str, Module],
              graph: dict[str, list[Import]]) -> list[str]:
    """Imports that point to a higher floor, or to another entry of the importer's floor.
    Imports inside one entry (a package's modules among themselves) are the cycle check's."""
    entry_of = {}
    for name, module in modules.items():
        holders = [e for e in entries if e.holds(module)]
        if len(holders) == 1:                  # the others are unplaced_modules' problems
            entry_of[name] = holders[0]
    problems = []
    for name, imps in graph.items():
        here = entry_of.get(name)
        for imp in imps:
            there = entry_of.get(imp.target)
            if here is None or there is None or there is here or there.floor < here.floor:
                continue
            side = "a floor above it" if there.floor > here.floor else "its own floor"
            problems.append(f"{imp.where}: {here.text} imports {imp.target}, which is on "
                            f"{side} ({there.text}, {DESIGN}:{there.line})")
    return problems


# --- cycles -----------------------------------------------------------------------------------

def cycle_edges(modules: dict[str, Module], graph) -> dict[str, dict[str, Import]]:
    """module -> {imported module -> the first import}. Edges to the module itself and to its
    own enclosing packages are left out (a submodule may read its package's ``__init__``)."""
    return {name: {imp.target: imp for imp in reversed(graph[name])
                   if imp.target in modules and imp.target != name and not _in(name, imp.target)}
            for name in modules}


def _shortest_cycle(start: str, edges) -> list[str] | None:
    """A shortest cycle from ``start`` back to itself (breadth first), or None."""
    previous, frontier = {start: None}, [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(edges[node]):
                if child == start:
                    path = [node]
                    while previous[path[-1]] is not None:
                        path.append(previous[path[-1]])
                    return path[::-1] + [start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    return None


def cycles(modules: dict[str, Module], graph) -> list[str]:
    """One line per import cycle: each module of it and the import that leads on."""
    edges = cycle_edges(modules, graph)
    problems, seen = [], set()
    for start in sorted(edges):
        if start not in seen and (cycle := _shortest_cycle(start, edges)):
            seen.update(cycle)
            problems.append(cycle[0] + "".join(f" -> {b} ({edges[a][b].where})"
                                               for a, b in zip(cycle, cycle[1:])))
    return problems


# --- what code outside the backends may not do ------------------------------------------------

def _host_side(path: str) -> str | None:
    return next((entry for entry in HOST_SIDE
                 if path == entry or (entry.endswith("/") and path.startswith(entry))), None)


def array_library_imports(modules: dict[str, Module], graph) -> tuple[list[str], list[str]]:
    """(imports of an array library outside portacnn/backends/ and HOST_SIDE,
    HOST_SIDE entries no such import needs)."""
    problems, needed = [], set()
    for name, module in modules.items():
        if _in(name, f"{PACKAGE}.backends"):
            continue
        for imp in graph[name]:
            if imp.target in ARRAY_LIBRARIES:
                if (entry := _host_side(module.path)) is not None:
                    needed.add(entry)
                else:
                    problems.append(f"{imp.where}: imports {imp.target}")
    present = {_host_side(m.path) for m in modules.values()} - {None}
    stale = [f"{entry} ({why}): imports no array library" + ("" if entry in present else
             ", and is not in the package") for entry, why in HOST_SIDE.items()
             if entry not in needed]
    return problems, stale


def _names_a_library(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str) and node.value in ARRAY_LIBRARIES
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_names_a_library(e) for e in node.elts)
    return False


def _is_backend_name(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "name"
            and "backend" in ast.unparse(node.value).lower())


def backend_name_comparisons(path: str, tree: ast.Module, library_names=True) -> list[str]:
    """Comparisons of a backend's name (``backend.name == ...``), and with ``library_names``
    of anything with an array library's name (``library_name(xp) in ("torch", "cupy")``).
    Scripts compare device strings a user typed and peers' names, so they are checked for the
    first only."""
    def asks(node: ast.AST) -> bool:
        return _is_backend_name(node) or (library_names and _names_a_library(node))

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(
                isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in node.ops):
            if any(asks(side) for side in (node.left, *node.comparators)):
                found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.MatchValue) and library_names and _names_a_library(node.value):
            found.append((node.lineno, f"case {ast.unparse(node.value)}"))
    return [f"{path}:{line}: {text}" for line, text in sorted(found)]


def string_lookups(module: Module, imports: list[Import]) -> list[str]:
    """Kernels (or modules) found by a computed string: ``globals()``, ``getattr(kernels,
    name)`` with a non-literal name, ``import_module(name)`` outside portacnn/backends/ (where
    the registry imports the array library a device string names)."""
    kernel_names = {imp.binds for imp in imports if _in(imp.target, f"{PACKAGE}.kernels")}

    def names_kernels(node: ast.AST) -> bool:
        root = node
        while isinstance(root, (ast.Attribute, ast.Subscript, ast.Call)):
            root = root.func if isinstance(root, ast.Call) else root.value
        return ("kernel" in ast.unparse(node).lower()
                or (isinstance(root, ast.Name) and root.id in kernel_names))

    in_backends = _in(module.name, f"{PACKAGE}.backends")
    found = []
    for node in ast.walk(module.tree):
        if not isinstance(node, ast.Call):
            continue
        func = ast.unparse(node.func)
        if func == "globals":
            found.append((node.lineno, "globals()"))
        elif func == "getattr" and len(node.args) >= 2 and names_kernels(node.args[0]) \
                and not isinstance(node.args[1], ast.Constant):
            found.append((node.lineno, ast.unparse(node)))
        elif (arg := _import_module_call(node)) is not None and not in_backends \
                and not isinstance(arg, ast.Constant):
            found.append((node.lineno, ast.unparse(node)))
    return [f"{module.path}:{line}: {text}" for line, text in sorted(found)]


def cross_test_imports(path: str, tree: ast.Module) -> list[str]:
    """Imports of ``conftest`` or of a ``test_*`` module by a file of tests/."""
    found = []
    for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
        for name in names:
            top = name.split(".")[0]
            if top == "conftest" or top.startswith("test_"):
                found.append(f"{path}:{node.lineno}: imports {name}")
    return found


def late_module_skips(path: str, tree: ast.Module) -> list[str]:
    """Module-level ``pytest.importorskip(...)`` / ``pytest.skip(...)`` calls that come after a
    test of the file: they skip the tests above them too, wherever the package is missing. A
    module whose every test needs the package says so before its first test; otherwise the
    tests that need it ask for it themselves (a fixture or a call inside the test)."""
    found, first_test = [], None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name.lower().startswith(
                "test") and first_test is None:
            first_test = node.lineno
        calls = [n for n in ast.walk(node) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Attribute) and n.func.attr in ("importorskip", "skip")
                 ] if isinstance(node, (ast.Assign, ast.Expr, ast.AnnAssign)) else []
        for call in calls:
            if first_test is not None:
                found.append(f"{path}:{call.lineno}: pytest.{call.func.attr} after the test at "
                             f"line {first_test} skips it too")
    return found
