"""Real fixtures shared by the test suite: ecd daemons started as processes, git repositories
made from the bundled example, and the ecctl command line. The throwaway PostgreSQL server
(``postgres``) is the plugin in tests/pg.py, registered below.

Every daemon is stopped by its PID (SIGTERM, then SIGKILL), every worker group it may have left
behind is killed through the node's own registry, and every temp dir is removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

#: The throwaway PostgreSQL server fixture (``postgres``) lives in tests/pg.py.
pytest_plugins = ["tests.pg"]

from tests.waiting import wait_for  # noqa: F401 - re-exported: tests import it from here

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "sample"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_git_repo(src: Path, dest: Path, extra: dict[str, str] | None = None) -> str:
    """Copy ``src`` into ``dest``, commit it, and return its file:// URL."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for rel, text in (extra or {}).items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "initial")
    return f"file://{dest}"


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True, timeout=60).stdout.strip()


@pytest.fixture(scope="session", autouse=True)
def client_config_dir() -> Iterator[Path]:
    """The clients' config folder (known node keys, the client key pair) for the whole run, in a
    temp dir: no test reads or writes the user's ~/.config/ec."""
    path = Path(tempfile.mkdtemp(prefix="ec-config-"))
    old = os.environ.get("EC_CONFIG_DIR")
    os.environ["EC_CONFIG_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("EC_CONFIG_DIR", None)
    else:
        os.environ["EC_CONFIG_DIR"] = old
    shutil.rmtree(path, ignore_errors=True)


def node_key(data_dir: Path) -> str:
    """The public key of the node whose data dir is ``data_dir`` (``ecd keys show``)."""
    from ecd.keys import load

    return load(data_dir).public_text


def trust(endpoint: str, data_dir: Path) -> None:
    """``ecctl trust ENDPOINT KEY`` for the node at ``endpoint`` (in the run's config folder)."""
    from ecctl.trust import KnownNodes

    KnownNodes().trust(endpoint, node_key(data_dir))


def admin_password(*data_dirs: Path) -> str:
    """The password the first start wrote for user admin (in the data dir of the node that made
    it: with a shared database, one of them)."""
    for data_dir in data_dirs:
        path = Path(data_dir) / "admin.password"
        if path.exists():
            return path.read_text().strip()
    raise AssertionError(f"no admin.password in {[str(d) for d in data_dirs]}")


def admin_client(endpoints: str, *data_dirs: Path, **kwargs: Any) -> Any:
    """A Client for ``endpoints`` (tcp ones trusted with their nodes' keys, in the order of
    ``data_dirs``) that logs in as admin when it needs to."""
    from ecctl import Client

    tcp_dirs = []
    for endpoint, data_dir in zip(endpoints.split(","), data_dirs):
        if endpoint.strip().startswith("tcp://"):
            trust(endpoint.strip(), data_dir)
            tcp_dirs.append(data_dir)
    return Client(endpoints, user="admin", password=admin_password(*tcp_dirs, *data_dirs), **kwargs)


@pytest.fixture(scope="session")
def venv_cache() -> Iterator[Path]:
    """One virtualenv cache for the whole run: nodes reuse venvs across tests."""
    path = Path(tempfile.mkdtemp(prefix="ec-venvs-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def sample_repo() -> Iterator[str]:
    """The bundled example processor as a real git repository (file:// URL)."""
    base = Path(tempfile.mkdtemp(prefix="ec-repo-"))
    url = make_git_repo(EXAMPLE, base / "sample")
    yield url
    shutil.rmtree(base, ignore_errors=True)


class EcdProcess:
    """A real ``ecd run`` process with its own data dir."""

    def __init__(self, data_dir: Path, venv_dir: Path, cpus: int = 2, grace: float = 10.0,
                 listen: str | None = None, extra: tuple[str, ...] = (), wrap: tuple[str, ...] = ()) -> None:
        self.data_dir = data_dir
        self.wrap = wrap  # a command the daemon runs under, e.g. ("ip", "netns", "exec", NS)
        self.venv_dir = venv_dir
        self.cpus = cpus
        self.grace = grace
        self.listen = listen
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}.log"

    @property
    def endpoint(self) -> str:
        return f"ipc://{self.data_dir / 'ecd.sock'}"

    @property
    def key(self) -> str:
        """The node's public key (made at its first start)."""
        return node_key(self.data_dir)

    def admin_client(self, endpoint: str | None = None, **kwargs: Any) -> Any:
        """A Client over tcp (``endpoint``, default this node's ``listen``) trusting this node's
        key and logged in as its admin."""
        target = endpoint or self.listen
        assert target, "the node has no tcp endpoint"
        return admin_client(target, self.data_dir, **kwargs)

    def start(self, wait: bool = True) -> "EcdProcess":
        args = [*self.wrap, sys.executable, "-m", "ecd", "run", "--data-dir", str(self.data_dir), "--venv-dir", str(self.venv_dir),
                "--cpus", str(self.cpus), "--grace", str(self.grace), "--log-level", "DEBUG", *self.extra]
        if self.listen:
            args += ["--listen", self.listen]
        log = open(self.log_path, "ab")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("NOTIFY_SOCKET", None)
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        from ecctl import Client

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"ecd exited with {self.proc.returncode}:\n{self.log()}")
            if not (self.data_dir / "ecd.sock").exists():
                return False
            try:
                with Client(self.endpoint, timeout=1.0, connect_timeout=1.0) as client:
                    client.ping()
                return True
            except Exception:
                return False

        wait_for(up, timeout, what="ecd to answer PING")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
            raise AssertionError(f"ecd did not stop within {timeout}s:\n{self.log()}")

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        from ecd.workers import ProcessRegistry

        registry_file = self.data_dir / "workers.json"
        if registry_file.exists():
            ProcessRegistry(registry_file).kill_orphans()


@pytest.fixture
def ecd_factory(venv_cache: Path) -> Iterator[Callable[..., EcdProcess]]:
    """Start ecd processes: ``ecd_factory(cpus=2)``; all are stopped and cleaned up afterwards."""
    base = Path(tempfile.mkdtemp(prefix="ec-"))
    nodes: list[EcdProcess] = []

    def make(name: str = "n1", start: bool = True, **kwargs: Any) -> EcdProcess:
        node = EcdProcess(base / name, venv_cache, **kwargs)
        nodes.append(node)
        return node.start() if start else node

    yield make
    for node in nodes:
        node.cleanup()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def node(ecd_factory: Callable[..., EcdProcess]) -> EcdProcess:
    return ecd_factory()


def run_ecctl(endpoint: str, *args: str, input: bytes | None = None, timeout: float = 60.0,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run the real ``ecctl`` command line against ``endpoint``."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "EC_ENDPOINT": endpoint, **(env or {})}
    return subprocess.run([sys.executable, "-m", "ecctl", *args], input=input, capture_output=True,
                          timeout=timeout, env=full_env, cwd=ROOT)


SAMPLE_FUNCTIONS = ("do_something", "do_this", "add_two", "echo", "fail", "sleep", "noop", "crash", "pid", "token",
                    "count", "produce", "slow_echo")


def processor_view(client: Any, name: str, allow_failed: bool = False) -> dict[str, Any]:
    """The processor's entry in ``status`` ({} if absent); fails the test if it failed."""
    for proc in client.status()["processors"]:
        if proc["name"] == name:
            if proc["status"] == "failed" and not allow_failed:
                raise AssertionError(f"processor {name} failed: {proc['reason']}")
            return proc
    return {}


def register_sample(client: Any, repo: str, *, queue: str = "q1", processor: str = "proc1",
                    concurrency: int = 2, retries: int = 1, **options: Any) -> None:
    """The example processor with sockets sample.tasks.<fn>; returns once every worker is up
    and idle (calls submitted next spread over all of them)."""
    client.add_queue(queue, "direct")
    client.add_processor(processor, repo, "sample.tasks", concurrency=concurrency, retries=retries,
                         retry_delay=0.1, **options)
    for fn in SAMPLE_FUNCTIONS:
        client.add_socket(f"sample.tasks.{fn}", processor=processor, function=fn, queue=queue)
    wait_for(lambda: (v := processor_view(client, processor)).get("status") == "running"
             and v["idle"] == concurrency, 180, what=f"{processor} running")


@contextlib.contextmanager
def sample_node_for_module(venv_cache: Path, sample_repo: str, prefix: str, **register: Any) -> Iterator[EcdProcess]:
    """A node with the example registered, shared by a test module's tests."""
    from ecctl import Client

    base = Path(tempfile.mkdtemp(prefix=prefix))
    node = EcdProcess(base / "n1", venv_cache, cpus=2)
    try:
        node.start()
        with Client(node.endpoint) as client:
            register_sample(client, sample_repo, **register)
        yield node
    finally:
        node.cleanup()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def sample_node(node: EcdProcess, sample_repo: str) -> EcdProcess:
    """A node with the example processor registered: sockets sample.tasks.<fn> on queue q1."""
    from ecctl import Client

    with Client(node.endpoint) as client:
        register_sample(client, sample_repo)
    return node
