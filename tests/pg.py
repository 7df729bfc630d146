"""A throwaway PostgreSQL server for the tests (a pytest plugin: ``pytest_plugins = ["tests.pg"]``).

The session-scoped ``postgres`` fixture runs ``initdb`` into a temp dir, starts the server with
``pg_ctl start -w`` on a free TCP port of 127.0.0.1 (unix socket inside the temp dir, trust auth,
``fsync=off``) and creates the superuser role ``ec``. When the tests run as root, the binaries run
as the ``postgres`` OS user through ``runuser -u postgres --`` (argument lists, never a shell).

API::

    postgres.new_database() -> "postgresql://ec@127.0.0.1:PORT/NAME"   # a fresh, empty database
    postgres.stop(mode="fast")   # shut down; returns once the port refuses connections
    postgres.start()             # same port, same data
    postgres.running             # bool
    postgres.pid                 # the postmaster's PID (None when stopped)
    postgres.port / host / data_dir / socket_dir / log()

A test that stops the server starts it again before it ends (``try/finally``): the server is
shared by the whole session. Teardown stops it with ``pg_ctl``, then makes sure the postmaster
whose PID ``postmaster.pid`` named is gone (SIGKILL by that PID, never by name) and removes the
temp dir. Missing binaries (or no ``postgres`` user while running as root) skip the tests that use
the fixture. ``EC_PG_BINDIR`` points at another ``bin`` directory.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.waiting import wait_for

#: Where Debian/Ubuntu put the PostgreSQL 15 server binaries.
DEFAULT_BINDIR = Path("/usr/lib/postgresql/15/bin")
#: Seconds any one pg_ctl/initdb step may take.
STEP_TIMEOUT = 120.0
#: The role the tests connect as.
ROLE = "ec"
HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        try:
            s.connect((HOST, port))
        except OSError:
            return False
        return True


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return False
    # "pid (comm) S ..." -- comm may contain spaces/parens: the state follows the last ")".
    return stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3] != b"Z"


class PostgresServer:
    """One PostgreSQL cluster in a temp dir, owned by the test session."""

    def __init__(self, bindir: Path, base: Path, run_as: str | None) -> None:
        self.bindir = bindir
        self.base = base
        self.data_dir = base / "data"
        self.socket_dir = base / "sock"
        self.log_path = base / "server.log"
        self.host = HOST
        self.port = 0
        self._run_as = run_as
        self._names = itertools.count(1)
        self._last_pid: int | None = None

    # ------------------------------------------------------------------ plumbing

    def _run(self, binary: str, *args: str, timeout: float = STEP_TIMEOUT) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bindir / binary), *args]
        if self._run_as:
            argv = ["runuser", "-u", self._run_as, "--", *argv]
        # cwd: a directory the postgres user may enter (the caller's may be private to root).
        result = subprocess.run(argv, cwd=self.base, capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise RuntimeError(f"{binary} {' '.join(args)} failed ({result.returncode}):\n"
                               f"{result.stdout}{result.stderr}\n{self.log()}")
        return result

    def log(self) -> str:
        """The tail of the server log."""
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def _postmaster_pid(self) -> int | None:
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first)
        except (OSError, ValueError):
            return None

    # ------------------------------------------------------------------ lifecycle

    def init(self) -> None:
        """initdb, trust auth, config; then start and create the ``ec`` role."""
        self.socket_dir.mkdir()
        if self._run_as:
            user = pwd.getpwnam(self._run_as)
            for path in (self.base, self.socket_dir):
                os.chown(path, user.pw_uid, user.pw_gid)
        self._run("initdb", "-D", str(self.data_dir), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")
        (self.data_dir / "pg_hba.conf").write_text(
            "# throwaway test cluster: trust local and loopback connections\n"
            "local all all trust\n"
            f"host all all {HOST}/32 trust\n"
            "host all all ::1/128 trust\n"
        )
        for attempt in range(5):
            self.port = _free_port()
            with open(self.data_dir / "postgresql.auto.conf", "w") as handle:
                handle.write(
                    f"listen_addresses = '{HOST}'\n"
                    f"port = {self.port}\n"
                    f"unix_socket_directories = '{self.socket_dir}'\n"
                    "fsync = off\n"
                    "synchronous_commit = off\n"
                    "full_page_writes = off\n"
                    "max_connections = 200\n"
                    "shared_buffers = 32MB\n"
                    "log_min_messages = warning\n"
                )
            try:
                self.start()
                break
            except RuntimeError:
                if attempt == 4 or "could not bind" not in self.log():
                    raise  # not a lost race for the port
        self._admin(f'CREATE ROLE "{ROLE}" SUPERUSER LOGIN')

    def _admin(self, sql: str) -> None:
        """Run one statement as the bootstrap superuser over the unix socket (autocommit)."""
        import psycopg

        with psycopg.connect(host=str(self.socket_dir), port=self.port, user="postgres",
                             dbname="postgres", autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    @property
    def running(self) -> bool:
        pid = self._postmaster_pid()
        return pid is not None and _alive(pid)

    @property
    def pid(self) -> int | None:
        """The postmaster's PID while it runs."""
        pid = self._postmaster_pid()
        return pid if pid is not None and _alive(pid) else None

    def start(self) -> None:
        """Start the server (same port, same data) and wait until it accepts connections."""
        if self.running:
            return
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data_dir), "-l", str(self.log_path))
        self._last_pid = self._postmaster_pid()
        wait_for(lambda: _port_open(self.port), 60, what=f"PostgreSQL on port {self.port}")

    def stop(self, mode: str = "fast") -> None:
        """Shut the server down (``fast`` or ``immediate``); returns once the port refuses."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"bad shutdown mode {mode!r}")
        if self.running:
            self._last_pid = self._postmaster_pid()
            self._run("pg_ctl", "stop", "-w", "-t", "60", "-m", mode, "-D", str(self.data_dir))
        wait_for(lambda: not _port_open(self.port), 60, what=f"port {self.port} to refuse connections")

    def new_database(self) -> str:
        """Create a fresh database owned by ``ec`` and return its URL."""
        name = f"ec_test_{next(self._names)}_{uuid.uuid4().hex[:8]}"
        self._admin(f'CREATE DATABASE "{name}" OWNER "{ROLE}"')
        return f"postgresql://{ROLE}@{self.host}:{self.port}/{name}"

    def destroy(self) -> None:
        """Stop the server, make sure the postmaster is gone, remove the temp dir."""
        pid = self._postmaster_pid() or self._last_pid
        try:
            if self.running:
                self._run("pg_ctl", "stop", "-w", "-t", "30", "-m", "immediate", "-D", str(self.data_dir))
        except (RuntimeError, subprocess.TimeoutExpired):
            pass  # the PID check below finishes the job
        if pid is not None and _alive(pid) and self._is_our_postmaster(pid):
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: not _alive(pid), 30, what=f"postmaster {pid} to exit")
        shutil.rmtree(self.base, ignore_errors=True)

    def _is_our_postmaster(self, pid: int) -> bool:
        """Guard against PID reuse: the process must be a postgres serving our data dir."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return str(self.data_dir).encode() in cmdline


def _find_bindir() -> Path | None:
    candidates = [Path(p) for p in (os.environ.get("EC_PG_BINDIR"),) if p] + [DEFAULT_BINDIR]
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                candidates.append(Path(out.stdout.strip()))
        except (OSError, subprocess.TimeoutExpired):
            pass
    for bindir in candidates:
        if all(os.access(bindir / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
            return bindir
    return None


@contextlib.contextmanager
def throwaway_server() -> Iterator[PostgresServer]:
    """A running throwaway server, destroyed on exit (the fixture's and the benchmarks' way in).
    Raises :class:`Unavailable` when this machine cannot run one."""
    bindir = _find_bindir()
    if bindir is None:
        raise Unavailable(f"PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in {DEFAULT_BINDIR} "
                          "or EC_PG_BINDIR or pg_config --bindir")
    run_as: str | None = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise Unavailable("running as root and there is no 'postgres' OS user to run PostgreSQL as") from None
        if shutil.which("runuser") is None:
            raise Unavailable("running as root and runuser(1) is missing")
        run_as = "postgres"
    if importlib.util.find_spec("psycopg") is None:
        raise Unavailable("psycopg is not installed")
    server = PostgresServer(bindir, Path(tempfile.mkdtemp(prefix="ec-pg-")), run_as)
    try:
        server.init()
        yield server
    finally:
        server.destroy()


class Unavailable(RuntimeError):
    """This machine cannot run a throwaway PostgreSQL server (the reason says why)."""


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server shared by the session (see the module docstring)."""
    try:
        server_cm = throwaway_server()
        server = server_cm.__enter__()
    except Unavailable as exc:
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server_cm.__exit__(None, None, None)
