"""The import graph: the domain is pure, nothing imports upwards, and no module circle exists.

Layers, lowest first: the pure rules (``models.domain``, ``models.correlation``,
``models.timeutil``, ``models.locks``), the rest of ``models`` (unit of work, handlers, queries),
then the edges (``api``, ``actors``, ``loader``, ``bi``), then the processes (``workers``,
``app``). Every import counts, at module level or inside a function.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("models", "api", "actors", "workers", "loader", "bi")
PURE_PREFIX = "models.domain"
#: package -> packages it must never import
NEVER = {
    "models": {"api", "actors", "workers", "app", "bi", "loader"},
    "actors": {"api", "workers", "app"},
    "api": {"workers", "app"},
    "loader": {"api", "actors", "workers", "app"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def graph() -> dict[str, set[str]]:
    files = [ROOT / "app.py", ROOT / "config.py", ROOT / "observability.py"]
    for package in PACKAGES:
        files += [p for p in (ROOT / package).rglob("*.py") if "migrations" not in p.parts]
    known = {module_name(p) for p in files}
    edges: dict[str, set[str]] = {}
    for path in files:
        me = module_name(path)
        out = edges.setdefault(me, set())
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                while name and name not in known:
                    name = name.rpartition(".")[0]
                if name and name != me:
                    out.add(name)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def test_the_pure_rules_import_nothing_of_ours_but_each_other():
    edges = graph()
    pure = [m for m in edges if m.startswith(PURE_PREFIX)]
    assert len(pure) >= 10, pure
    for module in pure:
        assert all(t.startswith(PURE_PREFIX) for t in edges[module]), (module, edges[module])


def test_nothing_imports_upwards():
    edges = graph()
    wrong = [(m, t) for m, targets in edges.items() for t in targets
             if t.split(".")[0] in NEVER.get(m.split(".")[0], set())]
    assert not wrong, wrong


def test_the_models_have_no_import_circle():
    edges = graph()
    models = {m: {t for t in ts if t.startswith("models")} for m, ts in edges.items() if m.startswith("models")}
    assert cycles(models) == []


def test_a_circle_would_be_seen():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
