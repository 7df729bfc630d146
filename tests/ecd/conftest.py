"""Fixtures for code loading and workers: real git repos in temp dirs, a shared venv cache."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

ROOT = Path(__file__).resolve().parents[2]

if TYPE_CHECKING:  # imported lazily below so other tests here never depend on these modules
    from ecd.repos import CodeLoader, PreparedCode

GitCommit = Callable[..., str]

_GIT_ENV = {
    "GIT_AUTHOR_NAME": "ecd-tests", "GIT_AUTHOR_EMAIL": "tests@example.invalid",
    "GIT_COMMITTER_NAME": "ecd-tests", "GIT_COMMITTER_EMAIL": "tests@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}

#: The module every worker test loads (pkg/tasks.py).
CODE_TASKS_SOURCE = '''
import os, sys, time

def add(a, b=0):
    return a + b

def chatty(n):
    for i in range(n):
        print(f"line {i} from the worker")
    print("to stderr", file=sys.stderr)
    return n

def boom(msg):
    raise ValueError(msg)

def sleepy(seconds):
    time.sleep(seconds)
    return "woke"

def numbers(n):
    for i in range(n):
        yield i

def unserialisable():
    return object()

def where():
    return {"cwd": os.getcwd(), "prefix": sys.prefix, "pid": os.getpid()}

def corrupt_channel(data):
    fd = int(sys.argv[sys.argv.index("--fd") + 1])
    os.write(fd, data)
    return 1

def spawn_child():
    import subprocess
    return subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"]).pid
'''


def _git(*args: str, cwd: Path) -> str:
    env = dict(os.environ, **_GIT_ENV)
    out = subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                         text=True, timeout=60)
    return out.stdout.strip()


@pytest.fixture
def git_commit() -> GitCommit:
    """``git_commit(repo_dir, {path: text}, message="...", branch=None) -> sha``.

    Creates the repository (branch ``main``) on first use, writes the files, commits them;
    ``branch`` switches to (creating) that branch first.
    """

    def commit(repo: Path, files: dict[str, str], message: str = "commit",
               branch: str | None = None) -> str:
        repo = Path(repo)
        if not (repo / ".git").exists():
            repo.mkdir(parents=True, exist_ok=True)
            _git("init", "-q", "-b", "main", str(repo), cwd=repo)
        if branch is not None:
            existing = _git("branch", "--list", branch, cwd=repo)
            _git("checkout", "-q", *([] if existing else ["-b"]), branch, cwd=repo)
        for rel, text in files.items():
            path = repo / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        _git("add", "-A", cwd=repo)
        _git("commit", "-q", "--allow-empty", "-m", message, cwd=repo)
        return _git("rev-parse", "HEAD", cwd=repo)

    return commit


@pytest.fixture(scope="session")
def code_venv_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One virtualenv cache shared by every test of the session."""
    return tmp_path_factory.mktemp("venvs")


@pytest.fixture
def code_loader(tmp_path: Path, code_venv_dir: Path) -> CodeLoader:
    """A CodeLoader with its own data dir and the shared venv cache."""
    from ecd.repos import CodeLoader

    return CodeLoader(tmp_path / "data", code_venv_dir)


@pytest.fixture(scope="session")
def code_support_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The support dir (msgpack) handed to workers."""
    from ecd.workers import make_support_dir

    return make_support_dir(tmp_path_factory.mktemp("support") / "support")


@pytest.fixture(scope="session")
def code_tasks(tmp_path_factory: pytest.TempPathFactory, code_venv_dir: Path) -> PreparedCode:
    """A prepared repo whose ``pkg.tasks`` module holds the functions worker tests call."""
    from ecd.repos import CodeLoader, CodeSpec

    base = tmp_path_factory.mktemp("tasks")
    repo = base / "repo"
    repo.mkdir()
    _git("init", "-q", "-b", "main", str(repo), cwd=repo)
    (repo / "pkg").mkdir()
    (repo / "pkg" / "__init__.py").write_text("")
    (repo / "pkg" / "tasks.py").write_text(CODE_TASKS_SOURCE)
    (repo / "pkg" / "broken.py").write_text("import os\nraise RuntimeError('broken on import')\n")
    _git("add", "-A", cwd=repo)
    _git("commit", "-q", "-m", "tasks", cwd=repo)
    loader = CodeLoader(base / "data", code_venv_dir)
    return loader.prepare(CodeSpec(gitrepo=str(repo)))
