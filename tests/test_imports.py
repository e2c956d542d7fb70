"""The import graph of rtplan has no cycle (read statically from the source with ``ast``).

What counts as an edge ``A -> B`` (A, B modules or packages of rtplan):

* ``import rtplan.B``, ``from rtplan.B import name``, ``from rtplan import B`` (B a
  submodule; ``from rtplan import name`` for a name defined in ``rtplan/__init__.py`` is
  an edge to the package ``rtplan``) and the relative forms (``from . import B``,
  ``from .B import name``), anywhere in A: at module level, in a function body (a lazy
  import still runs, and still ties the two modules together), in ``try`` blocks.
* NOT imports under ``if TYPE_CHECKING:``. They never run; they let a module name
  another module's contract in its annotations (``Comparison.write_report`` hands the
  comparison to ``report``, which annotates its argument as a ``Comparison``), and mypy
  resolves such cycles. They are collected (``type_only``) and must still point at real
  rtplan modules.
* NOT the edge from a module to its own enclosing packages (``rtplan.report`` ->
  ``rtplan``, ``rtplan.dicom_io.ct`` -> ``rtplan.dicom_io``): Python initializes every
  package before its submodules, so every module already depends on its ancestors; the
  package's re-exports of its submodules are not a design dependency of theirs. Such an
  import at module level is still a hazard when the package itself imports the module
  (it then runs while the package is half initialized), so
  :func:`test_no_module_imports_its_own_package_at_import_time` forbids that case; inside
  a function (``import rtplan`` to read ``__version__``) it is allowed.

Packages and modules both work: ``rtplan/dicom_io/__init__.py`` is the node
``rtplan.dicom_io``, ``rtplan/dicom_io/ct.py`` the node ``rtplan.dicom_io.ct``.
Dynamic imports (``importlib.import_module``) are not seen.
"""

from __future__ import annotations

import ast
import itertools
import textwrap
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import rtplan

PACKAGE = "rtplan"
PACKAGE_DIR = Path(rtplan.__file__).resolve().parent

Graph = Mapping[str, Iterable[str]]


# ---------------------------------------------------------------------------- walker
@dataclass(frozen=True)
class ImportEdge:
    """One import statement of ``source`` that names the rtplan module ``target``."""

    source: str
    target: str
    lineno: int
    in_function: bool
    type_only: bool


@dataclass
class ModuleInfo:
    """A module (or package ``__init__``) of the package: its name and file."""

    name: str
    path: Path
    is_package: bool
    edges: list[ImportEdge] = field(default_factory=list)


def discover_modules(package_dir: Path, package: str = PACKAGE) -> dict[str, ModuleInfo]:
    """Every ``.py`` file under ``package_dir`` as a module name (packages by ``__init__``).

    Where a folder ``x/`` with an ``__init__.py`` and a file ``x.py`` both exist (midway
    through turning a module into a package), the package wins, as it does for Python.
    """
    out: dict[str, ModuleInfo] = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [package, *path.relative_to(package_dir).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        name = ".".join(parts)
        if name in out and out[name].is_package:
            continue
        out[name] = ModuleInfo(name, path, is_package)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``typing.TYPE_CHECKING`` (the test of an ``if``)."""
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


class _ImportVisitor(ast.NodeVisitor):
    """Collects the rtplan imports of one module, noting function bodies and TYPE_CHECKING."""

    def __init__(self, module: ModuleInfo, modules: Mapping[str, ModuleInfo]) -> None:
        self.module = module
        self.modules = modules
        self.function_depth = 0
        self.type_checking_depth = 0

    def _add(self, target: str, node: ast.stmt) -> None:
        self.module.edges.append(
            ImportEdge(
                source=self.module.name,
                target=target,
                lineno=node.lineno,
                in_function=self.function_depth > 0,
                type_only=self.type_checking_depth > 0,
            )
        )

    def _nested(self, node: ast.AST, *, function: bool = False) -> None:
        self.function_depth += function
        self.generic_visit(node)
        self.function_depth -= function

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._nested(node, function=True)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._nested(node, function=True)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._nested(node, function=True)

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        self.type_checking_depth += 1
        for child in node.body:
            self.visit(child)
        self.type_checking_depth -= 1
        for child in node.orelse:  # the runtime branch of `if TYPE_CHECKING: ... else: ...`
            self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = self._absolute(node.module, node.level)
        if base != PACKAGE and not base.startswith(PACKAGE + "."):
            return
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            self._add(submodule if submodule in self.modules else base, node)

    def _absolute(self, module: str | None, level: int) -> str:
        """The absolute name of ``from <level dots><module> import ...`` in this module."""
        if level == 0:
            return module or ""
        parts = self.module.name.split(".")
        if not self.module.is_package:
            parts = parts[:-1]  # a module's imports are relative to its package
        if level > 1:
            parts = parts[: -(level - 1)]
        return ".".join([*parts, module] if module else parts)


def import_edges(modules: Mapping[str, ModuleInfo]) -> list[ImportEdge]:
    """Every rtplan import of every module (parsed, never imported)."""
    out: list[ImportEdge] = []
    for info in modules.values():
        info.edges.clear()
        tree = ast.parse(info.path.read_text(encoding="utf-8"), filename=str(info.path))
        _ImportVisitor(info, modules).visit(tree)
        out.extend(info.edges)
    return out


def _is_ancestor(package: str, module: str) -> bool:
    return module.startswith(package + ".")


def dependency_graph(edges: Iterable[ImportEdge]) -> dict[str, set[str]]:
    """Module -> the modules it depends on: runtime imports, own packages left out."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set())
        if e.type_only or _is_ancestor(e.target, e.source):
            continue
        graph[e.source].add(e.target)
        graph.setdefault(e.target, set())
    return graph


# ---------------------------------------------------------------------------- cycles
def strongly_connected(graph: Graph) -> Iterator[list[str]]:
    """Tarjan's strongly connected components of ``graph`` (iterative, sorted nodes)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
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
                yield sorted(component)


def _path_within(graph: Graph, start: str, goal: str, allowed: set[str]) -> list[str]:
    """A shortest path ``start -> ... -> goal`` through ``allowed`` nodes (breadth first)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph.get(node, ())):
                if child == goal:
                    path = [child, node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return path[::-1]
                if child in allowed and child not in previous and child != start:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no path from {start} to {goal}")  # pragma: no cover


def find_cycles(graph: Graph) -> list[list[str]]:
    """One cycle per strongly connected component with one: ``[a, b, ..., a]``."""
    cycles = []
    for component in strongly_connected(graph):
        first = component[0]
        if len(component) > 1 or first in graph.get(first, ()):
            cycles.append(_path_within(graph, first, first, set(component)))
    return cycles


def describe_cycle(cycle: list[str], edges: Iterable[ImportEdge]) -> str:
    """``a -> b (a.py line 12) -> a (b.py line 3)``: where each import of the cycle is."""
    where = {}
    for e in edges:
        where.setdefault((e.source, e.target), e.lineno)
    steps = [cycle[0]]
    for a, b in itertools.pairwise(cycle):
        steps.append(f"{b} ({a} line {where.get((a, b), '?')})")
    return " -> ".join(steps)


# ---------------------------------------------------------------------------- the package
@pytest.fixture(scope="module")
def package_edges() -> list[ImportEdge]:
    return import_edges(discover_modules(PACKAGE_DIR))


def test_the_walker_sees_the_package(package_edges):
    modules = discover_modules(PACKAGE_DIR)
    assert {"rtplan", "rtplan.cli", "rtplan.demo", "rtplan._io"} <= set(modules)
    graph = dependency_graph(package_edges)
    assert "rtplan._io" in graph["rtplan.demo"]
    assert "rtplan._io" in graph["rtplan.cli"]
    assert "rtplan.cli" in graph["rtplan.__main__"]


def unknown_targets(edges: Iterable[ImportEdge], modules: Mapping[str, ModuleInfo]) -> list[str]:
    """``"<module> line <n>: <target>"`` for every import of a module the package lacks."""
    return [f"{e.source} line {e.lineno}: {e.target}" for e in edges if e.target not in modules]


def test_every_rtplan_import_names_a_module_of_the_package(package_edges):
    missing = unknown_targets(package_edges, discover_modules(PACKAGE_DIR))
    assert not missing, "imports of modules rtplan does not have:\n" + "\n".join(missing)


def test_import_graph_has_no_cycle(package_edges):
    cycles = find_cycles(dependency_graph(package_edges))
    text = "\n".join(describe_cycle(c, package_edges) for c in cycles)
    assert not cycles, f"import cycles in rtplan:\n{text}"


def half_initialized_imports(edges: Iterable[ImportEdge]) -> list[ImportEdge]:
    """Module-level imports of an enclosing package that itself (transitively) imports the module.

    Such an import runs while the package is still executing its ``__init__`` (it is
    what loads the module), so names the package defines later are missing.
    """
    edges = list(edges)
    graph = dependency_graph(edges)
    return [
        e
        for e in edges
        if _is_ancestor(e.target, e.source)
        and not e.in_function
        and not e.type_only
        and e.source in _reachable(graph, e.target)
    ]


def _reachable(graph: Graph, start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for child in graph.get(todo.pop(), ()):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


def test_no_module_imports_its_own_package_at_import_time(package_edges):
    bad = [
        f"{e.source} line {e.lineno} imports {e.target}, which imports {e.source}"
        for e in half_initialized_imports(package_edges)
    ]
    assert not bad, "a package is half initialized while its submodules load:\n" + "\n".join(bad)


def test_demo_does_not_import_cli(package_edges):
    """The cycle this test file was written for: demo took staged_output from cli."""
    assert not [e for e in package_edges if e.source == "rtplan.demo" and e.target == "rtplan.cli"]


# ---------------------------------------------------------------------------- the walker itself
def _write_package(root: Path, files: Mapping[str, str]) -> Path:
    """A synthetic package ``rtplan`` under ``root`` from ``{relative path: source}``."""
    package_dir = root / PACKAGE
    for rel, source in files.items():
        path = package_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source), encoding="utf-8")
    return package_dir


def _cycles_of(package_dir: Path) -> list[list[str]]:
    return find_cycles(dependency_graph(import_edges(discover_modules(package_dir))))


def test_finds_the_old_cli_demo_cycle(tmp_path):
    """The tree before the fix: ``demo.run_demo`` imported ``staged_output`` from cli."""
    package_dir = _write_package(
        tmp_path,
        {
            "__init__.py": "from rtplan.grid import Grid\n__version__ = '0'\n",
            "grid.py": "class Grid: ...\n",
            "__main__.py": "from rtplan.cli import main\n",
            "cli.py": """
                from rtplan._progress import Progress

                def staged_output(): ...

                def _cmd_demo(args):
                    from rtplan.demo import run_demo
                    from rtplan import __version__
            """,
            "_progress.py": "",
            "demo.py": """
                from rtplan._progress import Progress

                def run_demo():
                    from rtplan.cli import staged_output
            """,
        },
    )
    assert _cycles_of(package_dir) == [["rtplan.cli", "rtplan.demo", "rtplan.cli"]]
    # ... and the fix: the helper in _io, imported by both
    (package_dir / "demo.py").write_text("def run_demo():\n    from rtplan._io import x\n")
    (package_dir / "_io.py").write_text("x = 1\n")
    assert _cycles_of(package_dir) == []


def test_cycle_finder_on_small_graphs():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert find_cycles({"a": {"a"}}) == [["a", "a"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    two = find_cycles({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}, "e": {"a", "c"}})
    assert two == [["c", "d", "c"], ["a", "b", "a"]] or two == [["a", "b", "a"], ["c", "d", "c"]]
    # the shortest way round is printed even when the component is larger
    assert find_cycles({"a": {"b", "c"}, "b": {"a"}, "c": {"b"}}) == [["a", "b", "a"]]


def test_packages_relative_imports_and_type_checking(tmp_path):
    package_dir = _write_package(
        tmp_path,
        {
            "__init__.py": "from rtplan.dicom import read_ct\n",
            "errors.py": "",
            "report.py": """
                from typing import TYPE_CHECKING
                if TYPE_CHECKING:
                    from rtplan.compare import Comparison

                def version():
                    import rtplan
                    return rtplan.__version__
            """,
            "compare.py": """
                def write_report(self):
                    from rtplan.report import write
            """,
            "dicom/__init__.py": "from .ct import read_ct\nfrom rtplan.dicom.rtstruct import rs\n",
            "dicom/ct.py": "from . import _common\nfrom .. import errors\n",
            "dicom/_common.py": "import rtplan.errors\n",
            "dicom/rtstruct.py": "from ._common import x\nfrom rtplan.dicom.ct import read_ct\n",
        },
    )
    edges = import_edges(discover_modules(package_dir))
    graph = dependency_graph(edges)
    assert graph["rtplan.dicom"] == {"rtplan.dicom.ct", "rtplan.dicom.rtstruct"}
    assert graph["rtplan.dicom.ct"] == {"rtplan.dicom._common", "rtplan.errors"}
    assert graph["rtplan.dicom._common"] == {"rtplan.errors"}
    assert graph["rtplan.dicom.rtstruct"] == {"rtplan.dicom._common", "rtplan.dicom.ct"}
    # compare -> report at run time; report -> compare only for the type checker
    assert graph["rtplan.compare"] == {"rtplan.report"}
    assert graph["rtplan.report"] == set()
    type_only = [e for e in edges if e.type_only]
    assert [(e.source, e.target) for e in type_only] == [("rtplan.report", "rtplan.compare")]
    # `import rtplan` inside a function: an edge to the package, in a function
    (to_root,) = [e for e in edges if e.source == "rtplan.report" and e.target == "rtplan"]
    assert to_root.in_function and not to_root.type_only
    assert find_cycles(graph) == []
    assert half_initialized_imports(edges) == []
    # a submodule importing its package's re-export at module level is caught as such
    (package_dir / "dicom" / "ct.py").write_text("from rtplan.dicom import rs\n")
    edges = import_edges(discover_modules(package_dir))
    (bad,) = half_initialized_imports(edges)
    assert (bad.source, bad.target, bad.lineno) == ("rtplan.dicom.ct", "rtplan.dicom", 1)
    # ... but not a module the package does not import (it loads once the package is done)
    (package_dir / "extra.py").write_text("import rtplan\n")
    edges = import_edges(discover_modules(package_dir))
    assert [e.source for e in half_initialized_imports(edges)] == ["rtplan.dicom.ct"]
    # a module file left beside the package that replaced it is not read (Python ignores it)
    (package_dir / "dicom.py").write_text("from rtplan.compare import write_report\n")
    modules = discover_modules(package_dir)
    assert modules["rtplan.dicom"].is_package
    assert modules["rtplan.dicom"].path == package_dir / "dicom" / "__init__.py"
    # a runtime import the other way round is a cycle
    (package_dir / "report.py").write_text("from rtplan.compare import Comparison\n")
    assert _cycles_of(package_dir) == [["rtplan.compare", "rtplan.report", "rtplan.compare"]]


def test_an_import_of_a_missing_module_is_reported(tmp_path):
    files = {"__init__.py": "", "a.py": "import os\n\nfrom rtplan.nope import x\n"}
    modules = discover_modules(_write_package(tmp_path, files))
    assert unknown_targets(import_edges(modules), modules) == ["rtplan.a line 3: rtplan.nope"]
