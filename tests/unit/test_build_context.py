"""The container image holds the service and nothing a developer keeps beside it (issue 27,
item 4). No Docker engine runs here, so the build context is computed with the Docker SDK's
``exclude_paths``, which applies ``.dockerignore`` rules as Docker does, on a copy of the
checkout where the dangerous files exist."""
from __future__ import annotations

import ast
import shutil
import sys
from pathlib import Path

import pytest
from docker.utils.build import exclude_paths

ROOT = Path(__file__).resolve().parents[2]
#: What a developer's checkout may hold that no image may: CVCs and full phones in the dev
#: sms.log, the embedded database, physical cards' printed CVCs, reports, the venv, git.
DANGEROUS = [
    ".local/sms.log", ".local/pg/base/1/1259", ".local/stack.env", "batch1.csv", "batch-2026-11.csv",
    "report-x.json", "report.json", ".venv/bin/python", ".venv/lib/python3.11/site-packages/x.py",
    ".git/config", ".git/objects/ab/cdef", ".hypothesis/examples/x", ".pytest_cache/v/x", ".coverage",
    ".coverage.host.1", "htmlcov/index.html", "coverage.xml", "bench/runs/20261203T073534Z.md",
    "bench/results/x.json", "tests/conftest.py", "tests/data/compose_spec.json", "dump.rdb",
    ".local-newcomer.log", ".schemathesis/x", ".env", "api/__pycache__/auth.cpython-311.pyc",
    "models/.local/sms.log", "workers/batch1.csv", "workers/bi/report-1.json", "loader/cards.csv",
    "docs/bi.md", "chaos/run.py", ".ci/run", "kafka/run.sh", "secrets/jwt.key",
]
#: What the image needs to run every Procfile process and the operator commands.
NEEDED = ["app.py", "config/settings.py", "observability.py", "gunicorn.conf.py", "devstack.py", "Procfile",
          "requirements.txt", "api/health.py", "models/store/db.py", "models/store/migrations", "actors/sms.py",
          "workers/pump.py", "workers/alive.py", "workers/bi/consumer.py", "loader/__init__.py",
          "contracts/all_salesorder.schema.json", "contracts/giftcertificates_stream.schema.json"]


def patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A copy of this checkout with every dangerous path in it."""
    copy = tmp_path_factory.mktemp("checkout") / "gcp"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".venv", ".git", ".local", ".hypothesis",
                                                              "__pycache__", "node_modules"))
    for rel in DANGEROUS:
        path = copy / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("CVC 123456 for +79990001122\n")
    return copy


@pytest.fixture(scope="module")
def context(checkout) -> set[str]:
    """The paths of the copy that ``docker build`` would send (relative, files and folders)."""
    return set(exclude_paths(str(checkout), patterns()))


def test_no_secret_and_no_local_data_is_in_the_build_context(context):
    leaked = [rel for rel in DANGEROUS if rel in context]
    assert leaked == [], leaked
    tops = {p.split("/")[0] for p in context}
    assert not {t for t in tops if t.startswith(".") and t not in (".dockerignore",)}, tops


def test_the_service_itself_is_in_the_build_context(context):
    missing = [rel for rel in NEEDED if rel not in context]
    assert missing == [], missing


def test_every_local_module_the_image_imports_is_in_the_build_context(checkout, context):
    """What .dockerignore lets in is closed under imports: a module the service imports is never
    left out (the list of what goes in is an allow-list)."""
    local = {p.stem for p in ROOT.glob("*.py")} | {p.name for p in ROOT.iterdir() if p.is_dir()}
    tops = {p.split("/")[0].removesuffix(".py") for p in context}
    wanted: dict[str, str] = {}
    for rel in sorted(p for p in context if p.endswith(".py")):
        for node in ast.walk(ast.parse((checkout / rel).read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                     else [])
            for name in names:
                top = name.split(".")[0]
                if top in local and top not in sys.stdlib_module_names:
                    wanted.setdefault(top, rel)
    assert {m: where for m, where in wanted.items() if m not in tops} == {}


def test_the_image_is_built_in_two_stages_and_runs_as_a_user():
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    stages = [i for i, line in enumerate(lines) if line.upper().startswith("FROM ")]
    assert len(stages) == 2, lines
    final = lines[stages[1]:]
    assert not any("pip install" in line for line in final), final  # no build tools, no pip cache
    assert any(line.startswith("COPY --from=") for line in final), final
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
