"""Tests for ecd.repos: URL checks, real git repos, real virtualenvs, real pip."""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from pathlib import Path

import pytest

from ecd.errors import RepoError
from ecd.repos import CodeLoader, CodeSpec, PreparedCode, check_git_url, redact_url

pytestmark = pytest.mark.timeout(120)


def run_in(code: PreparedCode, source: str) -> str:
    """Run ``source`` with the prepared python in the checkout; return stdout."""
    proc = subprocess.run([str(code.python), "-c", source], cwd=code.root, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


# -- URL checks --------------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "ext::sh -c touch% /tmp/pwned",
    "ext::sh",
    "EXT::sh",
    "fd::17",
    "--upload-pack=touch /tmp/x",
    "-oProxyCommand=touch /tmp/x",
    "-u",
    "ssh://-oProxyCommand=touch%20/tmp/x/repo",
    "https://host/repo --upload-pack=x",
    "https://host/re\npo",
    "https://host/re\x00po",
    "https://host/re po",
    "ftp://host/repo",
    "relative/path",
    "",
    "git@-oProxyCommand=x:repo",
    "file://remotehost/repo",
])
def test_check_git_url_rejects(url: str) -> None:
    with pytest.raises(RepoError):
        check_git_url(url)


@pytest.mark.parametrize("url", [
    "file:///srv/git/repo.git",
    "https://github.com/example/repo.git",
    "http://example.com/repo",
    "ssh://git@example.com:2222/repo.git",
    "git://example.com/repo.git",
    "git@github.com:example/repo.git",
    "/abs/path/to/repo",
    "https://user:token@example.com/repo.git",
    "ssh://git@[::1]/repo.git",
])
def test_check_git_url_accepts(url: str) -> None:
    check_git_url(url)


def test_ext_url_is_never_run(code_loader: CodeLoader, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(RepoError):
        code_loader.prepare(CodeSpec(gitrepo=f"ext::sh -c touch% {marker}"))
    with pytest.raises(RepoError):
        code_loader.prepare(CodeSpec(gitrepo=f"--upload-pack=touch {marker}"))
    assert not marker.exists()


def test_redact_url() -> None:
    assert redact_url("cannot clone https://bob:s3cret@host/x.git") == \
        "cannot clone https://***@host/x.git"
    assert "tok" not in redact_url("see https://tok@h/r and ssh://u:tok@h/r")


# -- prepare -----------------------------------------------------------------------------------

def test_prepare_local_repo_and_cache(code_loader: CodeLoader, git_commit, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    sha = git_commit(repo, {"pkg/__init__.py": "", "pkg/tasks.py": "VERSION = 1\n"})
    t0 = time.monotonic()
    code = code_loader.prepare(CodeSpec(gitrepo=str(repo)))
    first = time.monotonic() - t0
    assert code.commit == sha
    assert code.root == code_loader.checkouts_dir / sha
    assert (code.root / "pkg" / "tasks.py").read_text() == "VERSION = 1\n"
    assert not (code.root / ".git").exists()
    assert code.python == code.venv / "bin" / "python"
    assert run_in(code, "import sys; print(sys.prefix)") == str(code.venv)
    assert run_in(code, "import pkg.tasks as t; print(t.VERSION)") == "1"
    assert not list(code_loader.venv_dir.glob(".tmp-*"))

    t0 = time.monotonic()
    again = code_loader.prepare(CodeSpec(gitrepo=str(repo)))
    cached = time.monotonic() - t0
    assert again == code
    assert cached < 2.0
    print(f"\nfirst prepare {first:.2f}s, cached prepare {cached:.3f}s")


def test_prepare_fetches_new_commits(code_loader: CodeLoader, git_commit, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    git_commit(repo, {"pkg/__init__.py": "", "pkg/tasks.py": "VERSION = 1\n"})
    first = code_loader.prepare(CodeSpec(gitrepo=str(repo)))
    sha2 = git_commit(repo, {"pkg/tasks.py": "VERSION = 2\n"})
    second = code_loader.prepare(CodeSpec(gitrepo=str(repo)))
    assert second.commit == sha2 != first.commit
    assert run_in(second, "import pkg.tasks as t; print(t.VERSION)") == "2"


def test_branch_commit_and_tag_selection(code_loader: CodeLoader, git_commit,
                                         tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    sha1 = git_commit(repo, {"pkg/__init__.py": "", "pkg/tasks.py": "VERSION = 1\n"})
    subprocess.run(["git", "tag", "v1"], cwd=repo, check=True, timeout=30)
    sha2 = git_commit(repo, {"pkg/tasks.py": "VERSION = 2\n"})
    sha3 = git_commit(repo, {"pkg/tasks.py": "VERSION = 3\n"}, branch="feature")
    subprocess.run(["git", "checkout", "-q", "main"], cwd=repo, check=True, timeout=30)
    url = str(repo)
    cases = [
        (CodeSpec(gitrepo=url), sha2, "2"),
        (CodeSpec(gitrepo=url, commit=sha1), sha1, "1"),
        (CodeSpec(gitrepo=url, commit=sha1[:8]), sha1, "1"),
        (CodeSpec(gitrepo=url, commit="v1"), sha1, "1"),
        (CodeSpec(gitrepo=url, branch="feature"), sha3, "3"),
        (CodeSpec(gitrepo=url, branch="main"), sha2, "2"),
    ]
    for spec, sha, version in cases:
        code = code_loader.prepare(spec)
        assert code.commit == sha, spec
        assert run_in(code, "import pkg.tasks as t; print(t.VERSION)") == version, spec


def test_file_url(code_loader: CodeLoader, git_commit, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    sha = git_commit(repo, {"pkg/__init__.py": ""})
    assert code_loader.prepare(CodeSpec(gitrepo=f"file://{repo}")).commit == sha


def test_missing_repo(code_loader: CodeLoader, tmp_path: Path) -> None:
    with pytest.raises(RepoError, match="cannot clone") as info:
        code_loader.prepare(CodeSpec(gitrepo=str(tmp_path / "nope")))
    assert "nope" in str(info.value)
    assert not list(code_loader.repos_dir.iterdir())


def test_credentials_never_logged(code_loader: CodeLoader,
                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = "http://alice:hunter2secret@127.0.0.1:9/repo.git"
    with pytest.raises(RepoError, match="cannot clone") as info:
        code_loader.prepare(CodeSpec(gitrepo=url))
    assert "hunter2secret" not in str(info.value)
    assert "hunter2secret" not in caplog.text


def test_unknown_branch_and_commit(code_loader: CodeLoader, git_commit, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    git_commit(repo, {"pkg/__init__.py": ""})
    with pytest.raises(RepoError, match="unknown branch"):
        code_loader.prepare(CodeSpec(gitrepo=str(repo), branch="nope"))
    with pytest.raises(RepoError, match="unknown commit"):
        code_loader.prepare(CodeSpec(gitrepo=str(repo), commit="0123456789abcdef"))
    with pytest.raises(RepoError, match="invalid"):
        code_loader.prepare(CodeSpec(gitrepo=str(repo), branch="--upload-pack=x"))


def test_requirements_installed(code_loader: CodeLoader, git_commit, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    git_commit(repo, {"pkg/__init__.py": "", "requirements.txt": "six\n"})
    t0 = time.monotonic()
    code = code_loader.prepare(CodeSpec(gitrepo=str(repo)))
    took = time.monotonic() - t0
    assert run_in(code, "import six, sys; print(six.__file__.startswith(sys.prefix))") == "True"
    # scripts installed by pip point at the final venv, not the temporary build dir
    pip_script = (code.venv / "bin" / "pip").read_text().splitlines()[0]
    assert pip_script == f"#!{code.python}" or str(code.venv) in pip_script
    print(f"\nprepare with pip install six: {took:.2f}s")


def test_pyproject_and_requirements_text(code_loader: CodeLoader, git_commit,
                                         tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    git_commit(repo, {
        "pyproject.toml": '[build-system]\nrequires = ["setuptools"]\n'
                          'build-backend = "setuptools.build_meta"\n'
                          '[project]\nname = "ecdtestpkg"\nversion = "0.1"\n',
        "ecdtestpkg/__init__.py": "ANSWER = 42\n",
    })
    code = code_loader.prepare(CodeSpec(gitrepo=str(repo), requirements="six"))
    out = run_in(code, "import os, ecdtestpkg, six; os.chdir('/'); print(ecdtestpkg.ANSWER)")
    assert out == "42"
    assert sorted(p.name for p in code.root.iterdir()) == ["ecdtestpkg", "pyproject.toml"]
    other = code_loader.prepare(CodeSpec(gitrepo=str(repo)))
    assert other.venv != code.venv  # the requirements text is part of the cache key


def test_pip_failure_is_reported(code_loader: CodeLoader, git_commit, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    git_commit(repo, {"pkg/__init__.py": ""})
    with pytest.raises(RepoError, match="pip install failed") as info:
        code_loader.prepare(CodeSpec(gitrepo=str(repo),
                                     requirements=str(tmp_path / "no-such-dir")))
    assert "no-such-dir" in str(info.value)
    assert not [p for p in code_loader.venv_dir.iterdir() if p.name.startswith(".tmp-")]


def test_half_built_venv_is_rebuilt(code_loader: CodeLoader, git_commit, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    sha = git_commit(repo, {"pkg/__init__.py": "", "pkg/half.py": "X = 1\n"})
    key = code_loader.venv_key(str(repo), sha, None)
    (code_loader.venv_dir / key / "lib").mkdir(parents=True)  # no bin/python: unfinished
    (code_loader.venv_dir / f".tmp-{key}-crashed").mkdir()
    code = code_loader.prepare(CodeSpec(gitrepo=str(repo)))
    assert code.venv == code_loader.venv_dir / key
    assert run_in(code, "import pkg.half as h; print(h.X)") == "1"
    assert not (code_loader.venv_dir / f".tmp-{key}-crashed").exists()


def test_concurrent_prepare(tmp_path: Path, code_venv_dir: Path, git_commit) -> None:
    repo = tmp_path / "repo"
    git_commit(repo, {"pkg/__init__.py": "", "pkg/tasks.py": "VERSION = 'c'\n"})
    loaders = [CodeLoader(tmp_path / "data", code_venv_dir) for _ in range(3)]
    results: list[PreparedCode] = []
    errors: list[BaseException] = []

    def work(loader: CodeLoader) -> None:
        try:
            results.append(loader.prepare(CodeSpec(gitrepo=str(repo))))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(ld,)) for ld in loaders for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=100)
    assert not errors
    assert len(results) == 6 and len(set(results)) == 1
    assert run_in(results[0], "import pkg.tasks as t; print(t.VERSION)") == "c"
