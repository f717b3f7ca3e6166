"""The import graph of the whole tree: every layer imports only what is below it, the domain is
pure, entry points reach the model through the message bus and the read models, and no module
circle exists. Every import counts: at module level, inside a function, and by name through
``importlib.import_module`` or ``__import__``.

The layers, lowest first (a module may import its own layer and the ones below):

1. ``models.domain``: the pure rules; imports nothing of the project.
2. ``config`` and ``observability``: the settings and the log format and metrics; leaves.
3. ``models.store``: PostgreSQL and Redis.
4. ``models.service``: the use cases.
5. Entry points: ``api`` (HTTP), ``actors`` (Dramatiq), ``workers`` (the long-running
   processes), ``loader`` (a client of the HTTP API). Of ``models`` they take only the domain,
   ``models.service.messagebus``, the read models ``models.store.queries`` and
   ``models.store.db`` (the connection's lifecycle): see :data:`ENTRY_MAY_USE`.
6. The composition root and the tools: ``app``, ``devstack``, ``gunicorn.conf``, ``chaos``,
   ``bench``, ``.ci``.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Not the service and not its tools: the tests, and the Apache Kafka proof scripts.
LEFT_OUT = ("tests", "kafka", ".venv", ".local", ".git")

#: Each layer's prefixes, lowest first.
LAYERS = (
    ("models.domain",),
    ("config", "observability"),
    ("models.store",),
    ("models.service", "models"),
    ("api", "actors", "workers", "loader"),
    ("app", "devstack", "gunicorn", "chaos", "bench", ".ci"),
)
#: Among the entry points: who must never import whom (a view never runs an actor or a worker;
#: an actor never calls the API or a process; the loader is an HTTP client of the API).
NEVER = {"api": {"actors", "workers"}, "actors": {"api", "workers"}, "loader": {"api", "actors", "workers"}}
#: What an entry point may take from models (prefixes).
ENTRY_MAY_USE = ("models.domain", "models.service.messagebus", "models.store.queries", "models.store.db")
#: The store modules some entry points use directly, and why no use case stands between them.
ENTRY_EXCEPTIONS = {
    # every process records its heartbeat and its dependencies' outages in Redis: the process's
    # own bookkeeping, not a use case (and actors may not import workers, where it would go)
    "models.store.liveness": {"actors.broker", "actors.inbox", "workers.process", "workers.pump",
                              "workers.relay", "workers.scheduler", "workers.bi.consumer",
                              "workers.bi.__main__"},
    # the relay reads and marks the outbox on its own LISTEN connection, which holds its
    # leadership lock; the scheduler LISTENs on the pool's channel
    "models.store.outbox": {"workers.relay", "workers.scheduler"},
    # the DLQ tool's record of what it replayed: the operator's bookkeeping
    "models.store.dlq": {"workers.dlq"},
    # the Idempotency-Key rows are the HTTP edge's own record, written in the use case's
    # transaction; no command changes them
    "models.store.idempotency": {"api.idempotency"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_files() -> list[Path]:
    return [p for p in ROOT.rglob("*.py")
            if not set(p.relative_to(ROOT).parts) & set(LEFT_OUT) and "migrations" not in p.parts]


def imported_names(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Name) and node.func.id == "__import__")
                   or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"))):
            names.append(node.args[0].value)
    return names


def graph() -> dict[str, set[str]]:
    files = source_files()
    known = {module_name(p) for p in files}
    edges: dict[str, set[str]] = {}
    for path in files:
        me = module_name(path)
        out = edges.setdefault(me, set())
        for name in imported_names(ast.parse(path.read_text())):
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != me and not me.startswith(name + "."):  # a package's own __init__
                out.add(name)
    return edges


def layer(module: str) -> int:
    best = (-1, -1)  # (length of the matching prefix, layer)
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best[0]:
                best = (len(prefix), rank)
    assert best[1] >= 0, f"{module} belongs to no layer: add it to LAYERS"
    return best[1]


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


def test_every_module_has_a_layer_and_the_tree_is_all_there():
    edges = graph()
    for package in ("models.domain", "models.store", "models.service", "api", "actors", "workers", "loader"):
        assert any(m.startswith(package + ".") for m in edges), package
    for module in edges:
        layer(module)


def test_the_domain_imports_nothing_of_ours():
    edges = graph()
    wrong = {m: t for m, t in edges.items() if m.startswith("models.domain")
             and any(not x.startswith("models.domain") for x in t)}
    assert not wrong, wrong


def test_nothing_imports_upwards():
    edges = graph()
    wrong = sorted((m, t) for m, targets in edges.items() for t in targets if layer(t) > layer(m))
    assert not wrong, wrong


def test_entry_points_reach_the_model_through_the_bus_and_the_read_models():
    edges = graph()
    wrong = sorted((m, t) for m, targets in edges.items() if layer(m) == 4 for t in targets
                   if t.startswith("models") and t not in ("models", "models.service", "models.store")
                   and not t.startswith(ENTRY_MAY_USE) and m not in ENTRY_EXCEPTIONS.get(t, ()))
    assert not wrong, wrong
    unused = sorted((t, m) for t, users in ENTRY_EXCEPTIONS.items() for m in users if t not in edges.get(m, ()))
    assert not unused, f"exceptions no longer needed: {unused}"
    crossed = sorted((m, t) for m, targets in edges.items() for t in targets
                     if t.split(".")[0] in NEVER.get(m.split(".")[0], ()))
    assert not crossed, crossed


def test_no_import_circle_anywhere():
    assert cycles(graph()) == []


def test_a_circle_and_an_upward_import_would_be_seen():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    tree = ast.parse("def f():\n    from models.service import messagebus\n"
                     "    importlib.import_module('workers.pump')\n")
    assert imported_names(tree) == ["models.service", "models.service.messagebus", "workers.pump"]
    assert layer("models.store.db") < layer("models.service.inbox") < layer("workers.pump")


def test_no_module_is_over_400_lines():
    # (not the npm tools of tests/js: node-gyp ships Python of its own)
    tests = [p for p in (ROOT / "tests").rglob("*.py") if "node_modules" not in p.parts]
    long = {str(p.relative_to(ROOT)): n for p in source_files() + tests
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long
