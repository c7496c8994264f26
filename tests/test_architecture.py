"""The house rules, read from the source with ``ast`` (nothing is imported, so they run on a
broken tree too; the checks are in tests/architecture.py):

* docs/design.md's floor table places every module of portacnn/ on exactly one floor, and every
  entry of the table names a module or package that exists;
* every import (at module level, inside a function, or ``importlib.import_module("...")``)
  points to a lower floor; modules on one floor do not import each other unless both are in one
  package; and there is no import cycle, inside a package either;
* no module outside portacnn/backends/ imports an array library, except the host-side modules
  of ``HOST_SIDE`` (each entry needed, each with its reason);
* nothing in portacnn/ outside the backends, nor in scripts/, compares a backend's name: it asks
  the backend a capability; nothing in portacnn/ looks a kernel up by a string;
* test modules share helpers through helper modules (tests/helpers.py) and conftest fixtures,
  never by importing each other or conftest.

The second half runs each check on a small made-up package with the drift it guards. Every
failure names the offending ``file:line``.
"""

from __future__ import annotations

import ast
import functools

import pytest

from architecture import (DESIGN, PACKAGE, array_library_imports, backend_name_comparisons,
                          crossings, cross_test_imports, cycles, design_floors, import_graph,
                          late_module_skips, parse_floors, read_files, read_modules,
                          stale_entries, string_lookups, unplaced_modules)


@functools.cache
def package():
    modules = read_modules(read_files(PACKAGE))
    return modules, import_graph(modules)


def _fail_with(rule: str, problems: list[str]):
    assert not problems, rule + ":\n  " + "\n  ".join(problems)


def test_every_module_is_on_exactly_one_floor():
    modules, _ = package()
    _fail_with(f"every module of portacnn/ stands on one floor of {DESIGN}",
               unplaced_modules(design_floors(), modules))


def test_every_floor_entry_names_a_module_that_exists():
    modules, _ = package()
    _fail_with(f"the floor table of {DESIGN} names what is in portacnn/",
               stale_entries(design_floors(), modules))


def test_imports_point_down_the_floors():
    modules, graph = package()
    _fail_with(f"imports point down the floors of {DESIGN}, never up (not even inside a "
               "function) nor sideways to another entry of the same floor; move what is needed "
               "down, or pass it in from above", crossings(design_floors(), modules, graph))


def test_no_import_cycles():
    _fail_with("import cycles", cycles(*package()))


def test_array_libraries_are_imported_only_in_the_backends_and_host_side_modules():
    problems, _ = array_library_imports(*package())
    _fail_with("array libraries are imported only in portacnn/backends/ and the host-side "
               "modules of HOST_SIDE (tests/architecture.py); kernels infer xp from their inputs",
               problems)


def test_every_host_side_exception_is_needed():
    _, stale = array_library_imports(*package())
    _fail_with("HOST_SIDE (tests/architecture.py) lists only modules that import an array "
               "library; remove these entries", stale)


def test_nothing_asks_which_backend_runs():
    modules, _ = package()
    hits = [hit for name, m in modules.items() if not name.startswith(f"{PACKAGE}.backends")
            for hit in backend_name_comparisons(m.path, m.tree)]
    hits += [hit for path, source in read_files("scripts").items()
             for hit in backend_name_comparisons(path, ast.parse(source), library_names=False)]
    _fail_with("code outside portacnn/backends/ asks which backend runs; ask the backend a "
               "capability (an attribute such as accelerator) instead", hits)


def test_no_kernel_is_looked_up_by_a_string():
    modules, graph = package()
    _fail_with("kernels are reached by attribute (backend.kernels.conv2d_forward), so a reader "
               "can follow them; name the function instead of computing its name",
               [hit for name, m in modules.items() for hit in string_lookups(m, graph[name])])


def test_test_modules_share_helpers_not_each_other():
    _fail_with("test modules import helpers from a helper module (tests/helpers.py) and get "
               "fixtures from conftest.py by name, never from another test module or conftest",
               [hit for path, source in read_files("tests").items()
                for hit in cross_test_imports(path, ast.parse(source, path))])


def test_no_module_level_skip_reaches_back_over_tests_above_it():
    _fail_with("a module-level importorskip after a test skips every test of the module where "
               "the package is missing; put it above the first test (every test needs it) or in "
               "the tests that need it (a fixture)",
               [hit for path, source in read_files("tests").items()
                for hit in late_module_skips(path, ast.parse(source, path))])


def test_the_scanner_sees_the_package_and_the_floors():
    """Guard against the checks above passing vacuously."""
    modules, graph = package()
    assert {PACKAGE, f"{PACKAGE}.backends", f"{PACKAGE}.kernels.conv"} <= set(modules)
    assert f"{PACKAGE}.namespace" in {imp.target for imp in graph[f"{PACKAGE}.kernels.conv"]}
    floors = design_floors()
    assert len({e.floor for e in floors}) >= 5 and min(e.floor for e in floors) == 0
    assert [e.text for e in floors if e.floor == 0] == ["namespace.py", "scalars.py", "threads.py"]


# --- each check against the drift it guards, on a made-up package ----------------------------

TOY_DESIGN = """# How portacnn is built

```
__init__.py                 the package itself
top.py                      the top floor
mid.py                      the middle
kernels/, low.py            a package and a module on the ground floor
```
"""

TOY = {
    "portacnn/__init__.py": "from . import top\n",
    "portacnn/top.py": "from . import low, mid\nfrom .kernels import conv\n",
    "portacnn/mid.py": "from .kernels import conv\n",
    "portacnn/low.py": "def helper():\n    return 1\n",
    "portacnn/kernels/__init__.py": "from .conv import conv\n",
    "portacnn/kernels/conv.py": "from .pad import pad\n\n\ndef conv(x):\n    return pad(x)\n",
    "portacnn/kernels/pad.py": "def pad(x):\n    return x\n",
}


def floor_problems(changes=None, design=TOY_DESIGN) -> dict[str, list[str]]:
    modules = read_modules({**TOY, **(changes or {})})
    graph, entries = import_graph(modules), parse_floors(design)
    return {"unplaced": unplaced_modules(entries, modules),
            "stale": stale_entries(entries, modules),
            "crossings": crossings(entries, modules, graph),
            "cycles": cycles(modules, graph)}


def test_the_made_up_package_passes_every_floor_check():
    assert floor_problems() == {"unplaced": [], "stale": [], "crossings": [], "cycles": []}


LOW_LATER = "def helper():\n    return 1\n\n\ndef later():\n    {}\n"


@pytest.mark.parametrize("changes, design, check, expected", [
    ({"portacnn/low.py": LOW_LATER.format("from .mid import helper")}, TOY_DESIGN, "crossings",
     "portacnn/low.py:6: low.py imports portacnn.mid, which is on a floor above it"),
    ({"portacnn/low.py": "import portacnn\n"}, TOY_DESIGN, "crossings",
     "portacnn/low.py:1: low.py imports portacnn, which is on a floor above it"),
    ({"portacnn/low.py": "from .kernels import conv\n"}, TOY_DESIGN, "crossings",
     "portacnn/low.py:1: low.py imports portacnn.kernels.conv, which is on its own floor"),
    ({"portacnn/low.py": LOW_LATER.format("importlib.import_module('portacnn.mid')")}, TOY_DESIGN,
     "crossings", "portacnn/low.py:6: low.py imports portacnn.mid, which is on a floor above"),
    ({"portacnn/low.py": "import importlib\nimportlib.import_module('.mid', __package__)\n"},
     TOY_DESIGN, "crossings", "portacnn/low.py:2: low.py imports portacnn.mid"),
    ({"portacnn/new.py": ""}, TOY_DESIGN, "unplaced",
     f"portacnn/new.py is on no floor: add it to the floor table of {DESIGN}"),
    ({}, TOY_DESIGN.replace("mid.py ", "mid.py, gone.py"), "stale",
     "'gone.py' names nothing in portacnn/"),
    ({}, TOY_DESIGN.replace("mid.py ", "mid.py, kernels/pad.py"), "unplaced",
     "portacnn/kernels/pad.py is on more than one floor"),
    ({}, TOY_DESIGN.replace("mid.py ", "mid.py, the middle"), "stale",
     "'the middle' is neither a module"),
    ({"portacnn/kernels/pad.py": "from . import conv\n"}, TOY_DESIGN, "cycles",
     "portacnn.kernels.conv -> portacnn.kernels.pad (portacnn/kernels/conv.py:1) -> "
     "portacnn.kernels.conv (portacnn/kernels/pad.py:1)"),
], ids=["up-in-a-function", "up-to-the-package", "sideways", "import_module", "relative-call",
        "unplaced", "stale", "placed-twice", "no-comment-gap", "cycle-in-a-package"])
def test_each_floor_check_catches_its_drift(changes, design, check, expected):
    problems = floor_problems(changes, design)
    assert any(expected in p for p in problems[check]), problems
    assert all(not found for name, found in problems.items() if name != check), problems


def test_an_array_library_outside_the_backends_is_caught_and_a_needless_exception_too():
    modules = read_modules({**TOY, "portacnn/mid.py": "import numpy as np\n",
                            "portacnn/reference.py": "import math\n",
                            "portacnn/viz.py": "import numpy\n",
                            "portacnn/backends/__init__.py": "import cupy\n"})
    problems, stale = array_library_imports(modules, import_graph(modules))
    assert problems == ["portacnn/mid.py:1: imports numpy"]
    assert any(s.startswith("portacnn/reference.py (") for s in stale)
    assert not any(s.startswith("portacnn/viz.py") for s in stale)


def test_a_backend_name_comparison_is_caught():
    source = ("if backend.name == 'numpy':\n    pass\nif xp_name in ('torch', 'cupy'):\n    pass\n"
              "if backend.accelerator or self.name == 'conv1':\n    pass\n")
    assert backend_name_comparisons("s.py", ast.parse(source)) == [
        "s.py:1: backend.name == 'numpy'", "s.py:3: xp_name in ('torch', 'cupy')"]
    assert backend_name_comparisons("s.py", ast.parse(source), library_names=False) == [
        "s.py:1: backend.name == 'numpy'"]


def test_a_kernel_looked_up_by_a_string_is_caught():
    source = ("from .kernels import conv as K\nimport importlib\n"
              "a = getattr(K, name)\nb = globals()[name]\n"
              "c = getattr(self.backend.kernels, 'relu')\nd = getattr(self.kernels, op)\n"
              "e = getattr(layer, key)\n"
              "f = importlib.import_module(f'portacnn.kernels.{name}')\n")
    module = read_modules({"portacnn/layers.py": source})["portacnn.layers"]
    modules = {**read_modules(TOY), module.name: module}
    hits = string_lookups(module, import_graph(modules)[module.name])
    assert [h.split(":")[1] for h in hits] == ["3", "4", "6", "8"], hits


def test_a_test_module_importing_another_or_conftest_is_caught():
    source = ("from conftest import assert_close\nfrom test_kernels import CASES\n"
              "from helpers import assert_close\nimport recording\n\n\n"
              "def test_x():\n    import test_model\n")
    assert cross_test_imports("tests/test_x.py", ast.parse(source)) == [
        "tests/test_x.py:1: imports conftest", "tests/test_x.py:2: imports test_kernels",
        "tests/test_x.py:8: imports test_model"]


def test_a_module_level_skip_below_a_test_is_caught():
    source = ("import pytest\nnp = pytest.importorskip('numpy')\n\n\ndef test_a():\n    pass\n"
              "\n\ntorch = pytest.importorskip('torch')\n\n\ndef test_b():\n"
              "    pytest.importorskip('jax')\n")
    assert late_module_skips("tests/test_x.py", ast.parse(source)) == [
        "tests/test_x.py:9: pytest.importorskip after the test at line 5 skips it too"]
