"""The package's import structure: modules in layers, imports only go down, no cycles.

The order of the layers is written down once, in :data:`LAYERS`; docs/ARCHITECTURE.md
describes it. The checks read the source with :mod:`ast` (nothing is imported), and are
small functions of ``{module name: source text}`` so that the tests at the end can show
on synthetic sources that each check does fail.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import NamedTuple

import pytest

#: The one list of the package's layers (module = file stem in src/astrodenoise). A module
#: may import package modules of a strictly lower layer only.
LAYERS: dict[int, tuple[str, ...]] = {
    0: ("__init__",),
    1: ("provenance", "io"),
    2: ("model", "symmetry", "noise_model", "sky", "psf", "photometry", "sources", "alignment", "fields",
        "photon_transfer"),
    3: ("transform", "detection", "metrics", "cutouts"),
    4: ("denoise", "restore", "baselines", "sampling", "inject", "reference"),
    5: ("tiling", "selection", "summary", "scoring_reference"),
    # The steps: each is run by its own CLI sub-command and Snakemake rule.
    6: ("simulate", "ingest", "noise", "register", "train", "predict", "evaluate", "report"),
    7: ("cli",),
    8: ("__main__",),
}

#: Modules allowed to import package modules inside a function: the CLI imports a step
#: only when its sub-command runs, which keeps an ingest job's start-up at ~1 s, not ~8 s.
LAZY_IMPORTS_ALLOWED = frozenset({"cli"})

PACKAGE = "astrodenoise"
SOURCE_DIR = Path(__file__).resolve().parents[1] / "src" / PACKAGE


class Edge(NamedTuple):
    """One package-internal import: who imports what, where, and whether in a function."""

    importer: str
    imported: str
    lineno: int
    in_function: bool
    statement: str

    def where(self) -> str:
        """``module.py:line: `statement```, the start of every message."""
        return f"{self.importer}.py:{self.lineno}: `{self.statement}`"


def read_sources(directory: Path = SOURCE_DIR) -> dict[str, str]:
    """Return ``{module name: source text}`` of the package's module files."""
    return {path.stem: path.read_text(encoding="utf-8") for path in sorted(directory.glob("*.py"))}


def layer_of(layers: dict[int, tuple[str, ...]]) -> dict[str, int]:
    """Return ``{module name: layer number}``."""
    return {name: number for number, names in layers.items() for name in names}


def _targets(node: ast.Import | ast.ImportFrom, modules: set[str]) -> list[str]:
    """Package modules named by one import statement (empty for third-party imports)."""
    if isinstance(node, ast.Import):
        out = []
        for alias in node.names:
            parts = alias.name.split(".")
            if parts[0] == PACKAGE:
                out.append(parts[1] if len(parts) > 1 else "__init__")
        return out
    # The module path inside the package: "x" for ``from .x import y`` and for
    # ``from astrodenoise.x import y``, "" for ``from . import y``.
    if node.level == 1:
        inside = node.module or ""
    elif node.level == 0 and node.module is not None and node.module.split(".")[0] == PACKAGE:
        inside = node.module.partition(".")[2]
    else:
        return []  # third-party
    if not inside:
        # ``from . import x``: x is a module when it has a file, else a name of __init__
        # (e.g. ``from . import __version__``).
        return [alias.name if alias.name in modules else "__init__" for alias in node.names]
    return [inside.split(".")[0]]


def import_edges(sources: dict[str, str]) -> list[Edge]:
    """Return every package-internal import of ``sources``, at any depth of the AST."""
    modules = set(sources)
    edges = []

    def visit(module: str, node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                for target in _targets(child, modules):
                    edges.append(Edge(module, target, child.lineno, in_function, ast.unparse(child)))
            nested = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda)
            visit(module, child, in_function or nested)

    for module, source in sources.items():
        visit(module, ast.parse(source, filename=f"{module}.py"), False)
    # ``from .x import a, b`` is one edge, not one per name.
    return sorted(set(edges), key=lambda e: (e.importer, e.lineno, e.imported))


def unplaced_modules(modules: set[str], layers: dict[int, tuple[str, ...]]) -> list[str]:
    """Messages for modules without a layer, names listed twice, and names with no file."""
    placed = [name for names in layers.values() for name in names]
    problems = [f"{name}.py has no layer: place the new module in LAYERS in tests/test_architecture.py"
                for name in sorted(modules - set(placed))]
    problems += [f"{name} is listed in LAYERS but src/{PACKAGE}/{name}.py does not exist"
                 for name in sorted(set(placed) - modules)]
    problems += [f"{name} is listed in LAYERS more than once"
                 for name in sorted({n for n in placed if placed.count(n) > 1})]
    return problems


def upward_imports(edges: list[Edge], layers: dict[int, tuple[str, ...]]) -> list[str]:
    """Messages for imports of a module of the same or a higher layer."""
    layer = layer_of(layers)
    problems = []
    for edge in edges:
        if edge.importer not in layer or edge.imported not in layer:
            continue  # reported by unplaced_modules
        if layer[edge.imported] >= layer[edge.importer]:
            problems.append(f"{edge.where()} imports {edge.imported} (layer {layer[edge.imported]}) into "
                            f"{edge.importer} (layer {layer[edge.importer]}): imports only go down")
    return problems


def hidden_imports(edges: list[Edge], allowed: frozenset[str] = LAZY_IMPORTS_ALLOWED) -> list[str]:
    """Messages for package imports inside a function or class body outside ``allowed``."""
    return [f"{edge.where()} imports {edge.imported} inside a function or class: import it at the top "
            f"of the module (a hidden import is how a cycle is dodged)"
            for edge in edges if edge.in_function and edge.importer not in allowed]


def import_graph(edges: list[Edge]) -> dict[str, set[str]]:
    """Return ``{module: modules it imports}``."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.importer, set()).add(edge.imported)
        graph.setdefault(edge.imported, set())
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """Return one cycle of ``graph`` as ``[a, b, ..., a]``, or None when it has none."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def dfs(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_path:
                return path[path.index(nxt):] + [nxt]
            if nxt not in done:
                cycle = dfs(nxt)
                if cycle:
                    return cycle
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            cycle = dfs(start)
            if cycle:
                return cycle
    return None


# The package itself.

@pytest.fixture(scope="module")
def sources() -> dict[str, str]:
    found = read_sources()
    assert found, f"no modules found in {SOURCE_DIR}"
    return found


def test_every_module_has_a_layer(sources):
    problems = unplaced_modules(set(sources), LAYERS)
    assert not problems, "\n".join(problems)


def test_imports_only_go_down(sources):
    problems = upward_imports(import_edges(sources), LAYERS)
    assert not problems, "\n".join(problems)


def test_no_package_import_inside_functions(sources):
    problems = hidden_imports(import_edges(sources))
    assert not problems, "\n".join(problems)


def test_no_import_cycle(sources):
    cycle = find_cycle(import_graph(import_edges(sources)))
    assert cycle is None, f"import cycle: {' -> '.join(cycle or [])}"


def test_the_checker_sees_the_known_imports(sources):
    # Guards against a checker that passes because it finds nothing.
    edges = {(e.importer, e.imported, e.in_function) for e in import_edges(sources)}
    assert ("provenance", "__init__", False) in edges  # from . import __version__
    assert ("__main__", "cli", False) in edges
    assert ("cli", "train", True) in edges
    assert not [e for e in import_edges(sources) if e.importer == "io"]


# The checker on synthetic sources: each check must fail where it should.

SYNTHETIC_LAYERS = {0: ("__init__",), 1: ("io",), 2: ("sky",), 6: ("ingest", "noise"), 7: ("cli",)}


def test_find_cycle_reports_a_cycle():
    edges = import_edges({"a": "from . import b\n", "b": "from . import a\n"})
    assert find_cycle(import_graph(edges)) == ["a", "b", "a"]


def test_find_cycle_through_three_modules_and_absolute_forms():
    edges = import_edges({"a": "import astrodenoise.b\n",
                          "b": "def f():\n    from astrodenoise.c import g\n",
                          "c": "from .a import x\n"})
    assert find_cycle(import_graph(edges)) == ["a", "b", "c", "a"]


def test_upward_import_is_reported():
    sources = {"sky": "import numpy as np\n\nfrom .ingest import read\n", "ingest": "from . import sky\n",
               "io": "", "__init__": "", "noise": "", "cli": ""}
    problems = upward_imports(import_edges(sources), SYNTHETIC_LAYERS)
    assert len(problems) == 1
    assert problems[0].startswith("sky.py:3: `from .ingest import read` imports ingest (layer 6)")


def test_step_importing_a_step_is_reported():
    sources = {"noise": "from astrodenoise import ingest\n", "ingest": ""}
    problems = upward_imports(import_edges(sources), SYNTHETIC_LAYERS)
    assert len(problems) == 1 and problems[0].startswith("noise.py:1:")


def test_import_inside_a_function_is_reported():
    sources = {"noise": "import numpy\n\ndef f():\n    import scipy\n    from .sky import g\n    return g\n",
               "sky": "", "cli": "def run():\n    from .noise import f\n"}
    edges = import_edges(sources)
    problems = hidden_imports(edges)
    assert len(problems) == 1  # not cli's, not the third-party scipy
    assert problems[0].startswith("noise.py:5: `from .sky import g`")
    assert not upward_imports(edges, SYNTHETIC_LAYERS)


def test_import_inside_a_class_body_is_reported():
    edges = import_edges({"noise": "class A:\n    from . import sky\n", "sky": ""})
    assert len(hidden_imports(edges)) == 1


def test_module_missing_from_layers_is_reported():
    modules = {"__init__", "io", "sky", "ingest", "noise", "cli", "extra"}
    problems = unplaced_modules(modules, SYNTHETIC_LAYERS)
    assert problems == ["extra.py has no layer: place the new module in LAYERS in tests/test_architecture.py"]
    assert unplaced_modules({"__init__"}, {0: ("__init__", "gone")}) == [
        f"gone is listed in LAYERS but src/{PACKAGE}/gone.py does not exist"]


def test_clean_pair_passes():
    sources = {"sky": "from . import io\n", "io": "import json\n"}
    edges = import_edges(sources)
    assert [(e.importer, e.imported) for e in edges] == [("sky", "io")]
    assert not upward_imports(edges, SYNTHETIC_LAYERS)
    assert not hidden_imports(edges)
    assert find_cycle(import_graph(edges)) is None
    assert not unplaced_modules(set(sources), {1: ("io",), 2: ("sky",)})


# --- size: a module a reader can hold, functions of one job ----------------------------

MAX_MODULE_LINES, MAX_FUNCTION_LINES = 600, 60
#: Declarative set-up, long by nature (one add_argument per option), exempt from the limit.
LONG_FUNCTIONS_ALLOWED = frozenset({("cli", "build_parser")})


def oversized(sources: dict[str, str]) -> list[str]:
    """Modules over MAX_MODULE_LINES lines and functions over MAX_FUNCTION_LINES lines."""
    found = [f"{name}.py: {len(text.splitlines())} lines" for name, text in sources.items()
             if len(text.splitlines()) > MAX_MODULE_LINES]
    for name, text in sources.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES and (name, node.name) not in LONG_FUNCTIONS_ALLOWED:
                    found.append(f"{name}.py:{node.lineno}: {node.name} has {length} lines")
    return found


def test_modules_and_functions_stay_small(sources):
    assert oversized(sources) == []


def test_the_size_check_sees_a_long_function_and_a_long_module():
    long_function = "def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES
    long_module = "x = 1\n" * (MAX_MODULE_LINES + 1)

    parser = "def build_parser():\n" + "    x = 1\n" * 99
    found = oversized({"a": long_function, "b": long_module, "cli": parser})

    assert len(found) == 2 and found[0].startswith("b.py") and "f has 61 lines" in found[1]
