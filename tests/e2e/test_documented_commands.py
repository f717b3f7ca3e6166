"""Every command of README.md and docs/*.md works as written, from a clone, against a running
stack (the Procfile processes): the docs are read when the tests are collected, so a doc added
later is covered as soon as it lands.

What counts as a command, and the markers (docs/integration.md repeats them for doc writers):

- a fenced block tagged ``sh``, ``bash`` or ``shell`` is a script: its lines run in order in one
  ``bash`` with ``set -eo pipefail`` (a variable set on one line is there on the next, and what
  an earlier block of the same doc ``export``ed is there too, as in the reader's terminal);
- in a block tagged ``console``, the lines after a ``$ `` prompt are the commands (the other lines
  are their output);
- a command that needs what a test cannot have (the operator's cluster, Docker, a tool the
  project does not install, data of one's own) carries the comment ``# needs: <what>`` at the end of
  its line. A command that a dedicated test runs carries ``# tested by: <path>`` (the file must
  exist). A block whose first line is either marker is not run here at all;
- ``make <target>`` runs as ``make -n <target>`` here: the target and its variables exist; the
  targets themselves are run by their own tests (``tests/e2e/test_make_run.py``, CI's ``make
  test`` and ``make chaos``).

Each block runs in a directory of its own that links the clone's files (what a command writes
stays there), with a ``PATH`` that has no virtualenv on it (a bare ``python`` fails there as it
does in a new terminal), and the stack's servers in the environment, as ``make run``'s
``.local/stack.env`` gives them. ``localhost:8080`` is the running web process's port.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e")]
ROOT = Path(__file__).resolve().parents[2]
SHELLS = {"sh", "bash", "shell", "console"}
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```", re.S | re.M)
MARKER = re.compile(r"#\s*(needs|tested by):\s*(.*)$")
#: Answers that say the documented call itself is wrong (not a business refusal such as POOL_EMPTY).
WRONG_CALL = re.compile(r'"code":\s*"(UNAUTHORIZED|FORBIDDEN|CHANNEL_FORBIDDEN|BAD_REQUEST|VALIDATION_ERROR|'
                        r'NOT_FOUND|METHOD_NOT_ALLOWED|UNSUPPORTED_MEDIA_TYPE)"')


@dataclass
class Block:
    doc: str
    line: int
    tag: str
    commands: list[str]  # logical commands (continuations joined), markers kept
    exports: list[str]  # the ``export`` commands of the doc's earlier blocks

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def _logical(lines: list[str]) -> list[str]:
    out, current = [], ""
    for line in lines:
        current += line
        if current.rstrip().endswith("\\"):
            current = current.rstrip()[:-1] + " "
            continue
        if current.strip():
            out.append(current.strip())
        current = ""
    if current.strip():
        out.append(current.strip())
    return out


def blocks() -> list[Block]:
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text, exports = path.read_text(encoding="utf-8"), []
        for match in FENCE.finditer(text):
            tag = match.group(1).strip().split()[0] if match.group(1).strip() else ""
            if tag not in SHELLS:
                continue
            lines = match.group(2).splitlines()
            if tag == "console":
                commands, taking = [], False
                for line in lines:
                    if line.startswith("$ "):
                        commands.append(line[2:])
                        taking = line.rstrip().endswith("\\")
                    elif taking:
                        commands.append(line)
                        taking = line.rstrip().endswith("\\")
                lines = commands
            commands = [c for c in _logical(lines) if not c.startswith("#") or MARKER.match(c)]
            found.append(Block(str(path.relative_to(ROOT)), text[:match.start()].count("\n") + 1, tag, commands,
                               list(exports)))
            exports += [c for c in commands if c.startswith("export ") and not MARKER.search(c)]
    return found


BLOCKS = blocks()


def test_untagged_fences_hold_no_command():
    """A fence with no tag would hide a command from this test: tag it (sh, console, text...)."""
    bare = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        bare += [f"{path.name}:{text[:m.start()].count(chr(10)) + 1}" for m in FENCE.finditer(text)
                 if not m.group(1).strip() and re.search(r"(^|\s)(\.venv/bin/|python|make |curl )", m.group(2))]
    assert bare == []


def test_no_documented_command_uses_a_bare_python():
    bare = [(b.id, c) for b in BLOCKS for c in b.commands
            if re.match(r"(\w+=\S+\s+)*(export \w+=\$\()?python3?\s", c) or re.search(r"\$\(python3?\s", c)]
    assert bare == [], "write .venv/bin/python (a new terminal has no venv on its PATH)"


def _script(block: Block, port: int) -> tuple[str, list[str]]:
    run, skipped = ["set -eo pipefail", *block.exports], []
    for command in block.commands:
        marker = MARKER.search(command)
        if marker:
            kind, what = marker.groups()
            assert what.strip(), f"{block.id}: `# {kind}:` must say what ({command})"
            if kind == "tested by":
                assert (ROOT / what.strip().split()[0]).exists(), f"{block.id}: no {what}"
            if command.startswith("#"):
                return "", [command]  # the whole block
            skipped.append(command)
            continue
        command = re.sub(r"(localhost|127\.0\.0\.1):8080", f"127.0.0.1:{port}", command)
        command = re.sub(r"^((?:\w+=\S+\s+)*)make\s+(.*?)\s*&?\s*(#.*)?$", r"\1make -n \2", command)
        run.append(command)
    return "\n".join(run), skipped


@pytest.fixture(scope="module", autouse=True)
def own_database(stack):
    """A database of this module's own, made before its processes start: the documented
    ``verify --stream`` compares the whole database with this module's stream topic, so the
    earlier modules' outbox rows (published on their own topics) must not be in it."""
    import uuid
    from urllib.parse import urlparse, urlunparse

    import psycopg2

    from config import reset_settings
    from models.store.db import close_db, init_db

    before = os.environ["DATABASE_URL"]
    name = "gcp_doc_" + uuid.uuid4().hex[:10]
    admin = psycopg2.connect(urlunparse(urlparse(before)._replace(path="/postgres")))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    os.environ["DATABASE_URL"] = urlunparse(urlparse(before)._replace(path=f"/{name}"))
    close_db()
    reset_settings()
    init_db(os.environ["DATABASE_URL"])
    try:
        yield
    finally:
        close_db()
        from models.store.db import db

        if db.obj is not None:
            db.obj.close_all()
        os.environ["DATABASE_URL"] = before
        reset_settings()
        init_db(before)
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


@pytest.fixture(scope="module")
def clone_dir(tmp_path_factory):
    """A directory that links every file of the clone: commands that write files write here."""
    where = tmp_path_factory.mktemp("clone")
    for entry in ROOT.iterdir():
        if entry.name not in (".local",):
            (where / entry.name).symlink_to(entry)
    return where


@pytest.fixture(scope="module")
def stack_env_file(clone_dir, procs):
    """``.local/stack.env`` as `make run` writes it while it runs: the servers' URLs."""
    (clone_dir / ".local").mkdir()
    (clone_dir / ".local" / "stack.env").write_text("".join(
        f"{k}={procs.env[k]}\n" for k in ("DATABASE_URL", "REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS") if k in procs.env))


@pytest.fixture(scope="module")
def shell_env(procs, api):
    from tests.helpers import unique_code

    api.load([unique_code("DOC") for _ in range(3)], "1000.00", "RUB")  # the README's reservation
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in procs.env.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                                  if p and Path(p).resolve() != Path(venv_bin).resolve())
    return env


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_documented_commands_work_as_written(block, procs, shell_env, clone_dir, stack_env_file):
    script, skipped = _script(block, procs.port)
    if not script:
        pytest.skip(f"every command is marked: {skipped}")
    run = subprocess.run(["bash", "-c", script], cwd=clone_dir, env=shell_env, capture_output=True,
                         text=True, timeout=400)
    said = run.stdout + run.stderr
    assert run.returncode == 0, f"{block.id} failed ({run.returncode}):\n{script}\n---\n{said[-3000:]}"
    wrong = WRONG_CALL.search(run.stdout)
    assert wrong is None, f"{block.id}: the service refused the documented call: {run.stdout[-1500:]}"
