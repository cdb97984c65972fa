"""Stage modules depend downward only: no import cycle between motia's modules.

Every import statement counts, the ones inside functions too: the lazy imports
that keep ``motia --help`` fast are exactly where circles hid before.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the tree these tests belong to, not the installed copy


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the motia package."""
    out = {}
    for path in sorted((root / "motia").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def lazy_exports(path: Path) -> dict[str, str]:
    """A package's ``_EXPORTS`` (name -> submodule, resolved in ``__getattr__``), so lazy names count as imports."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_EXPORTS" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def import_graph(root: Path = ROOT) -> dict[str, dict[str, int]]:
    """module -> {imported motia module: line of its first import}, function-level imports included."""
    modules = module_files(root)
    exports = {name: lazy_exports(p) for name, p in modules.items() if p.name == "__init__.py"}
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = graph.setdefault(name, {})
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets = []
            if isinstance(node, ast.Import):
                for alias in node.names:  # `import motia.a.b` imports its longest module prefix
                    parts = alias.name.split(".")
                    targets += [next((m for m in (".".join(parts[:i]) for i in range(len(parts), 0, -1)) if m in modules), "")]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], node.module or ""]).strip(".")
                else:
                    base = node.module or ""
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    if sub in modules:
                        targets.append(sub)
                    elif alias.name in exports.get(base, {}):
                        targets.append(f"{base}.{exports[base][alias.name]}")
                    else:
                        targets.append(base)
            for t in targets:
                if t in modules and t != name:
                    edges.setdefault(t, node.lineno)
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One shortest cycle (first module repeated at the end) per strongly connected group of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan; the graph is a few dozen modules, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, {})):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                group.add(w)
                if w == v:
                    break
            groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for group in (g for g in groups if len(g) > 1):
        start = min(group)
        paths, seen = [[start]], {start}
        while paths:  # breadth first inside the group: the shortest way back to ``start``
            path = paths.pop(0)
            nxt = sorted(w for w in graph[path[-1]] if w in group)
            if start in nxt:
                cycles.append([*path, start])
                break
            for w in nxt:
                if w not in seen:
                    seen.add(w)
                    paths.append([*path, w])
    return sorted(cycles)


def describe(cycle: list[str], graph: dict[str, dict[str, int]], modules: dict[str, Path]) -> str:
    steps = ", ".join(f"{modules[a].relative_to(ROOT)}:{graph[a][b]} imports {b}" for a, b in zip(cycle, cycle[1:]))
    return f"{' -> '.join(cycle)} ({steps})"


def test_no_import_cycles_between_motia_modules():
    graph, modules = import_graph(), module_files()
    cycles = find_cycles(graph)
    assert not cycles, "import cycles (move the shared code to a lower module):\n" + "\n".join(
        describe(c, graph, modules) for c in cycles
    )


def test_the_graph_sees_lazy_and_function_level_imports():
    # Without these edges the cycle check above would pass on anything.
    graph = import_graph()
    assert "motia.batch" in graph["motia.cli"]  # `from .batch import run_batch` inside _dispatch
    assert "motia.models.loading" in graph["motia.job"]  # `from .models import load_components`, a lazy export
    assert "motia.lora" in graph["motia.outpaint"]  # `from motia.lora import ...` inside a function
    assert find_cycles({"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "b": 4}}) == [["a", "b", "c", "a"]]
