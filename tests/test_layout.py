"""The layout's promises, checked by reading the source with ``ast`` (no falco module is executed,
except by the last test, which imports the paths scripts rely on).

How the import graph is built (nodes: every module under ``falco/`` and ``stylegan2_ops/``, a
package being its ``__init__.py``):

* Every import statement counts wherever it is: module level, inside a function or method,
  inside ``try``. Only the body of ``if TYPE_CHECKING:`` is left out of the runtime graph (it
  never runs); :func:`test_stylegan2_ops_imports_nothing_from_falco` counts it all the same.
* ``import falco.a.b`` and ``from falco.a.b import name`` give an edge to ``falco.a.b``;
  ``from falco.a import b`` where ``falco/a/b.py`` (or ``falco/a/b/``) exists gives an edge to
  ``falco.a.b``, otherwise to ``falco.a`` (the name is read from the package's ``__init__``).
  Relative imports are resolved the same way.
* Importing ``falco.a.b`` first runs the ``__init__`` of ``falco.a``: that implied edge is added,
  except towards a package that contains the importing module itself. Python has already
  started that package before the module runs, so ``falco.a.b -> falco.a`` is not a new
  dependency; adding it would turn every package whose ``__init__`` re-exports a submodule
  into a false cycle. An explicit ``from falco.a import name`` (name not a submodule) inside
  ``falco.a.b`` is a real edge to ``falco.a`` and is kept.
* ``importlib.import_module`` with a table of names: in a module that calls ``import_module``,
  every string constant naming a module (``"falco.x.y"`` or ``"falco.x.y:attr"``) is an edge.
"""

from __future__ import annotations

import ast
import functools
import importlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP_PACKAGES = ("falco", "stylegan2_ops")
MAX_LINES = 600
EVALUATION = "falco.evaluation"
PUBLIC_PATHS = (
    "falco.models:load_generator",
    "falco.models:load_e4e",
    "falco.models.arcface:load_arcface",
    "falco.models.farl:load_farl",
    "falco.align:detect_and_align",
    "falco.align:paste_back",
    "falco.io:load_image",
    "falco.bank:exact_search",
)

_HOW = {"package": "its package __init__", "dynamic": "import_module table", "missing": "no such module"}


@dataclass(frozen=True)
class Edge:
    """One import: ``source`` needs ``target`` (``how``: 'import', 'package', 'dynamic' or 'missing')."""

    source: str
    target: str
    file: str
    line: int
    how: str
    deferred: bool
    type_only: bool

    def describe(self) -> str:
        notes = [_HOW[self.how]] if self.how in _HOW else []
        notes += ["in a function"] if self.deferred else []
        notes += ["TYPE_CHECKING only"] if self.type_only else []
        extra = f" ({', '.join(notes)})" if notes else ""
        return f"{self.file}:{self.line} {self.source} -> {self.target}{extra}"


# ----------------------------------------------------------------------------- the graph
def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache
def module_files() -> dict[str, Path]:
    """Every module of the two top-level packages, by dotted name."""
    return {_module_name(p): p for top in TOP_PACKAGES for p in sorted((ROOT / top).rglob("*.py"))}


def _is_package(module: str) -> bool:
    return module_files()[module].name == "__init__.py"


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _ours(name: str) -> bool:
    return name.split(".")[0] in TOP_PACKAGES


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Collector:
    """Walks one module's tree and records its imports of falco/stylegan2_ops modules."""

    def __init__(self, module: str) -> None:
        self.module = module
        self.file = str(module_files()[module].relative_to(ROOT))
        self.edges: list[Edge] = []

    def add(self, target: str, line: int, how: str, deferred: bool, type_only: bool) -> None:
        known = module_files()
        if target not in known:
            how = "missing"
        self.edges.append(Edge(self.module, target, self.file, line, how, deferred, type_only))
        if how == "missing":
            return
        for parent in _ancestors(target):
            if parent != self.module and parent not in _ancestors(self.module):
                self.edges.append(Edge(self.module, parent, self.file, line, "package", deferred, type_only))

    def base_of(self, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        package = self.module if _is_package(self.module) else self.module.rpartition(".")[0]
        parts = package.split(".")
        base = ".".join(parts[: len(parts) - node.level + 1])
        return f"{base}.{node.module}" if node.module else base

    def visit(self, node: ast.AST, deferred: bool = False, type_only: bool = False) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _ours(alias.name):
                    self.add(alias.name, node.lineno, "import", deferred, type_only)
        elif isinstance(node, ast.ImportFrom):
            base = self.base_of(node)
            if _ours(base):
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    self.add(sub if sub in module_files() else base, node.lineno, "import", deferred, type_only)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                self.visit(child, deferred, True)
            for child in node.orelse:
                self.visit(child, deferred, type_only)
            return
        inner = deferred or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            self.visit(child, inner, type_only)

    def dynamic(self, tree: ast.Module) -> None:
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
        if not any(getattr(c.func, "attr", getattr(c.func, "id", "")) == "import_module" for c in calls):
            return
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                name = node.value.split(":")[0]
                if "." in name and name in module_files() and name != self.module:
                    self.add(name, node.lineno, "dynamic", False, False)


@functools.cache
def all_edges() -> tuple[Edge, ...]:
    """Every import edge of every module (TYPE_CHECKING ones included, flagged)."""
    edges: list[Edge] = []
    for module, path in module_files().items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        collector = _Collector(module)
        collector.visit(tree)
        collector.dynamic(tree)
        edges += collector.edges
    return tuple(dict.fromkeys(edges))


@functools.cache
def runtime_graph() -> dict[str, tuple[Edge, ...]]:
    """module -> the edges that run (no TYPE_CHECKING, no self-imports, no missing targets)."""
    graph: dict[str, list[Edge]] = {m: [] for m in module_files()}
    for e in all_edges():
        if not e.type_only and e.how != "missing" and e.target != e.source:
            graph[e.source].append(e)
    return {m: tuple(es) for m, es in graph.items()}


def strongly_connected(graph: dict[str, tuple[Edge, ...]]) -> list[list[str]]:
    """Tarjan's algorithm: the components with more than one module, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for e in graph[v]:
            if e.target not in index:
                visit(e.target)
                low[v] = min(low[v], low[e.target])
            elif e.target in on_stack:
                low[v] = min(low[v], index[e.target])
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def chains_to(roots: list[str], wanted) -> dict[str, list[Edge]]:
    """Each first module satisfying ``wanted`` reached from ``roots``, with one shortest chain to it."""
    graph = runtime_graph()
    via: dict[str, Edge | None] = {r: None for r in roots}
    queue = deque(r for r in roots if not wanted(r))
    while queue:
        v = queue.popleft()
        for e in graph[v]:
            if e.target not in via:
                via[e.target] = e
                if not wanted(e.target):
                    queue.append(e.target)
    chains = {}
    for target in sorted(t for t in via if wanted(t)):
        chain, node = [], target
        while via[node] is not None:
            chain.append(via[node])
            node = via[node].source
        chains[target] = chain[::-1]
    return chains


def _in(package: str):
    return lambda m: m == package or m.startswith(package + ".")


def _format_chains(chains: dict[str, list[Edge]]) -> str:
    return "\n".join(f"{t}:\n    " + "\n    ".join(e.describe() for e in chain) for t, chain in chains.items())


# ----------------------------------------------------------------------------- the promises
def test_graph_sees_the_known_edges():
    """The parser finds module-level, in-function and package edges (a guard against a blind graph)."""
    edges = {(e.source, e.target, e.how) for e in all_edges()}
    assert ("falco.faces", "falco.faces.detect", "import") in edges
    assert ("falco.models.zoo", "falco.pretrained.modelset", "import") in edges
    assert ("falco.models.zoo", "falco.pretrained", "package") in edges
    assert any(e.deferred for e in all_edges())
    assert not any(e.source == "falco.faces.pipeline" and e.target == "falco.faces" for e in all_edges())


def test_cycle_finder_reports_components():
    def edge(a: str, b: str) -> Edge:
        return Edge(a, b, "x.py", 1, "import", False, False)

    graph = {"a": (edge("a", "b"),), "b": (edge("b", "c"),), "c": (edge("c", "a"), edge("c", "d")), "d": ()}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert strongly_connected({"p": (edge("p", "q"),), "q": ()}) == []


def test_every_falco_import_names_a_module():
    missing = [e.describe() for e in all_edges() if e.how == "missing"]
    assert not missing, "imports of modules that do not exist:\n" + "\n".join(missing)


def test_no_import_cycles():
    graph = runtime_graph()
    components = strongly_connected(graph)
    lines = []
    for component in components:
        members = set(component)
        inside = [e for m in component for e in graph[m] if e.target in members]
        lines.append(f"cycle among {', '.join(component)}:\n    " + "\n    ".join(e.describe() for e in inside))
    assert not components, f"{len(components)} import cycle(s):\n" + "\n".join(lines)


def test_stylegan2_ops_imports_nothing_from_falco():
    bad = [e.describe() for e in all_edges() if e.source.startswith("stylegan2_ops") and _in("falco")(e.target)]
    assert not bad, "stylegan2_ops imports falco:\n" + "\n".join(bad)


def test_guard_never_imports_evaluation():
    chains = chains_to(["falco.guard"], _in(EVALUATION))
    assert not chains, "falco.guard reaches falco.evaluation:\n" + _format_chains(chains)


def test_production_path_never_imports_evaluation():
    roots = ["falco", "falco.guard"] + [m for m in module_files() if _in("falco.run")(m) or _in("falco.methods")(m)]
    chains = chains_to(roots, _in(EVALUATION))
    assert not chains, "the production path reaches falco.evaluation:\n" + _format_chains(chains)


def test_no_module_over_the_line_limit():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines()) for p in module_files().values()}
    long = {f: n for f, n in sizes.items() if n > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: " + ", ".join(f"{f} ({n})" for f, n in sorted(long.items()))


def test_models_depend_on_pretrained_not_the_reverse():
    """``falco.models`` reads ``falco.pretrained`` (registry, model sets); never the other way round."""
    roots = [m for m in module_files() if _in("falco.pretrained")(m)]
    chains = chains_to(roots, _in("falco.models"))
    assert not chains, "falco.pretrained reaches falco.models:\n" + _format_chains(chains)


@pytest.mark.parametrize("path", PUBLIC_PATHS)
def test_public_import_paths_work(path: str):
    module, name = path.split(":")
    assert callable(getattr(importlib.import_module(module), name))
