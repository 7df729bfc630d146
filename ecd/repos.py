"""Code loading: git mirrors, per-commit checkouts and a virtualenv cache.

This is the only module that uses GitPython and :mod:`virtualenv`. A processor's code is
described by a :class:`CodeSpec` (git URL, branch or commit, extra requirements);
:meth:`CodeLoader.prepare` turns it into a :class:`PreparedCode` (a checkout directory and the
python of a virtualenv in which the code's dependencies are installed). ``prepare`` blocks (git,
pip): the node runs it off the event-loop thread.

On-disk layout::

    <data_dir>/repos/<sha256(url)[:16]>.git     bare mirror per URL, fetched on each prepare
                                                 unless a commit is given and already present
    <data_dir>/checkouts/<sha>                  exported tree of one commit (never modified)
    <venv_dir>/<key>                            virtualenv, key = sha256(url, sha, requirements,
                                                 python version); venv_dir defaults to
                                                 <data_dir>/venvs

Every directory is built under a temporary name next to its final place and renamed into it,
so a half-built mirror, checkout or virtualenv is never used. Builds of the same key are
serialised with ``flock`` on a lock file (works between threads and between processes).

Security: URLs are checked by :func:`check_git_url` before git sees them (no ``ext::`` or other
``transport::`` helpers, no option injection); git runs with ``GIT_ALLOW_PROTOCOL`` and without a
terminal prompt, and GitPython's unsafe-protocol/option checks stay on. Credentials embedded in
URLs are redacted from every log line and error message.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import git
import virtualenv

from ecd.errors import RepoError

__all__ = ["CodeLoader", "CodeSpec", "PreparedCode", "check_git_url", "redact_url"]

log = logging.getLogger(__name__)

#: Protocols git may use, for the top-level clone and for anything it recurses into.
GIT_ALLOWED_PROTOCOLS = "file:git:http:https:ssh"
#: URL schemes accepted by :func:`check_git_url`.
ALLOWED_SCHEMES = frozenset({"file", "https", "http", "ssh", "git"})
#: Longest URL accepted.
MAX_URL_LENGTH = 4096
#: Default time limit for one ``pip install``.
DEFAULT_PIP_TIMEOUT = 900.0
#: Time limit for one git command (clone/fetch/export).
GIT_TIMEOUT = 600.0

#: Environment variables passed through to pip besides PIP_* (proxies, certificates).
_PASSTHROUGH_ENV = frozenset({"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy",
                              "https_proxy", "no_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR",
                              "REQUESTS_CA_BUNDLE", "TMPDIR"})

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_TRANSPORT_RE = re.compile(r"^[A-Za-z0-9+._-]+::")
_SCP_RE = re.compile(r"^(?:([A-Za-z0-9._~+-]+)@)?([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):(.+)$")
_REF_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/+-]*$")
_USERINFO_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@")


@dataclass(frozen=True)
class CodeSpec:
    """What code to load: a git URL, a branch or commit (SHA or tag), extra requirements."""

    gitrepo: str
    branch: str | None = None
    commit: str | None = None
    requirements: str | None = None


@dataclass(frozen=True)
class PreparedCode:
    """Code ready to run: ``python`` of the virtualenv, ``root`` of the checkout."""

    python: Path
    root: Path
    commit: str
    venv: Path


def redact_url(text: str) -> str:
    """Replace the user-info part (``user:password@``) of every URL in ``text`` with ``***@``."""
    return _USERINFO_RE.sub(r"\g<scheme>***@", text)


def check_git_url(url: str) -> None:
    """Raise :class:`RepoError` unless ``url`` is a plain, safe git URL.

    Accepted: ``file://``, ``https://``, ``http://``, ``ssh://``, ``git://`` URLs, scp-like
    ``user@host:path`` and absolute local paths. Refused: anything starting with ``-``, any
    ``transport::address`` form (``ext::`` runs commands), ``--upload-pack``-style options,
    control characters and whitespace.
    """
    if not isinstance(url, str) or not url:
        raise RepoError("invalid git url: empty")
    if len(url) > MAX_URL_LENGTH:
        raise RepoError("invalid git url: too long")
    if url.startswith("-"):
        raise RepoError("invalid git url: must not start with '-'")
    if any(ord(c) < 32 or ord(c) == 127 for c in url):
        raise RepoError("invalid git url: control characters")
    if any(c.isspace() for c in url):
        raise RepoError("invalid git url: whitespace")
    lowered = url.lower()
    if "ext::" in lowered or _TRANSPORT_RE.match(url):
        raise RepoError("invalid git url: transport helpers ('xxx::') are not allowed")
    if "--upload-pack" in lowered or "--receive-pack" in lowered or "--config" in lowered:
        raise RepoError("invalid git url: contains a git option")
    m = _SCHEME_RE.match(url)
    if m:
        scheme = m.group(1).lower()
        if scheme not in ALLOWED_SCHEMES:
            raise RepoError(f"invalid git url: scheme {scheme!r} is not allowed")
        try:
            parts = urllib.parse.urlsplit(url)
        except ValueError as e:
            raise RepoError(f"invalid git url: {e}") from None
        if scheme == "file":
            if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
                raise RepoError("invalid git url: file:// needs an absolute local path")
            return
        host = parts.netloc.rpartition("@")[2]
        user = parts.netloc.rpartition("@")[0]
        if not host or host.startswith("-") or user.startswith("-"):
            raise RepoError("invalid git url: bad host")
        return
    if url.startswith("/"):
        return
    m = _SCP_RE.match(url)
    if m and "/" not in url.split(":", 1)[0]:
        user, host, path = m.groups()
        if host.startswith("-") or path.startswith("-") or (user or "").startswith("-"):
            raise RepoError("invalid git url: bad host or path")
        return
    raise RepoError("invalid git url: use a URL (https://, ssh://, git://, file://), "
                    "user@host:path or an absolute path")


def _git_env() -> dict[str, str]:
    """Environment additions for every git command we run."""
    return {
        "GIT_ALLOW_PROTOCOL": GIT_ALLOWED_PROTOCOLS,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "",
        "SSH_ASKPASS": "",
        "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
        "LC_ALL": "C",
    }


def _git_reason(exc: Exception) -> str:
    """The short reason of a failed git command (its ``fatal:``/``error:`` lines), redacted."""
    text = getattr(exc, "stderr", None) or str(exc)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    lines = [ln.strip().removeprefix("stderr:").strip().strip("'\"").strip()
             for ln in str(text).splitlines()]
    picked = [ln for ln in lines if ln.startswith(("fatal:", "error:", "ERROR:"))]
    if not picked:
        picked = [ln for ln in lines if ln][-2:]
    reason = "; ".join(picked)[:500] or type(exc).__name__
    return redact_url(reason)


def _pip_reason(output: str) -> str:
    """The last meaningful line(s) of pip's output."""
    lines = [ln.rstrip() for ln in output.splitlines() if ln.strip()]
    errors = [ln.strip() for ln in lines if ln.lstrip().startswith("ERROR:")]
    picked = errors[-3:] if errors else [ln.strip() for ln in lines[-3:]]
    return redact_url(" | ".join(picked))[:1000] or "pip failed without output"


def _run_bounded(cmd: list[str], *, cwd: Path, env: dict[str, str],
                 timeout: float, running: set[int] | None = None) -> tuple[int | None, str]:
    """Run ``cmd`` in its own session; on timeout SIGKILL its whole group. (rc or None, output).
    While it runs its pid is in ``running`` (so :meth:`CodeLoader.cancel` can kill it)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    if running is not None:
        running.add(proc.pid)
    try:
        return _wait_bounded(proc, timeout)
    finally:
        if running is not None:
            running.discard(proc.pid)


def _wait_bounded(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int | None, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out.decode("utf-8", "replace")
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return proc.returncode, out.decode("utf-8", "replace")


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _remove_stale(parent: Path, prefix: str) -> None:
    """Delete leftovers of interrupted builds (caller holds the key's lock)."""
    if not parent.is_dir():
        return
    for entry in parent.iterdir():
        if entry.name.startswith(prefix):
            log.info("removing stale build directory %s", entry)
            shutil.rmtree(entry, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CodeLoader:
    """Clones, checks out and installs processors' code; safe to call from several threads."""

    def __init__(self, data_dir: Path, venv_dir: Path | None = None, *,
                 pip_timeout: float = DEFAULT_PIP_TIMEOUT) -> None:
        self.data_dir = Path(data_dir)
        self.repos_dir = self.data_dir / "repos"
        self.checkouts_dir = self.data_dir / "checkouts"
        self.locks_dir = self.data_dir / "locks"
        self.venv_dir = Path(venv_dir) if venv_dir is not None else self.data_dir / "venvs"
        self.pip_timeout = pip_timeout
        self._running: set[int] = set()  # pids (and process groups) of installs under way
        self._cancelled = False
        for d in (self.repos_dir, self.checkouts_dir, self.locks_dir, self.venv_dir):
            d.mkdir(parents=True, exist_ok=True)

    # -- public -----------------------------------------------------------------------------

    def cancel(self) -> None:
        """Kill installs under way and refuse new ones (the node is stopping)."""
        self._cancelled = True
        for pid in list(self._running):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)

    def prepare(self, spec: CodeSpec) -> PreparedCode:
        """Make ``spec``'s code runnable; blocking. Raises :class:`RepoError` on any failure."""
        url = spec.gitrepo
        check_git_url(url)
        if spec.branch is not None and not self._valid_ref(spec.branch):
            raise RepoError(f"invalid branch name {spec.branch!r}")
        if spec.commit is not None and not self._valid_ref(spec.commit):
            raise RepoError(f"invalid commit {spec.commit!r}")
        t0 = time.monotonic()
        mirror = self._mirror(url, spec)
        sha = self._resolve(url, mirror, spec)
        root = self._checkout(mirror, sha)
        venv = self._venv(url, sha, root, spec.requirements)
        log.info("prepared %s at %s in %.2fs (venv %s)", redact_url(url), sha[:12],
                 time.monotonic() - t0, venv.name)
        return PreparedCode(python=venv / "bin" / "python", root=root, commit=sha, venv=venv)

    # -- git --------------------------------------------------------------------------------

    @staticmethod
    def _valid_ref(ref: str) -> bool:
        return bool(_REF_RE.match(ref)) and ".." not in ref and not ref.endswith((".lock", "/"))

    def mirror_path(self, url: str) -> Path:
        """Where the bare mirror of ``url`` lives."""
        return self.repos_dir / (hashlib.sha256(url.encode()).hexdigest()[:16] + ".git")

    def _mirror(self, url: str, spec: CodeSpec) -> Path:
        """Clone ``url`` as a bare mirror, or fetch into the existing one when needed."""
        path = self.mirror_path(url)
        with _flock(self.locks_dir / (path.name + ".lock")):
            if not path.is_dir():
                _remove_stale(self.repos_dir, f".tmp-{path.name}-")
                tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=self.repos_dir))
                log.info("cloning %s", redact_url(url))
                try:
                    git.Repo.clone_from(url, tmp / "m.git", env=_git_env(), mirror=True).close()
                    os.rename(tmp / "m.git", path)
                except git.GitCommandError as e:
                    raise RepoError(f"cannot clone {redact_url(url)}: {_git_reason(e)}") from None
                except OSError as e:
                    raise RepoError(f"cannot clone {redact_url(url)}: {e}") from None
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
                _fsync_dir(self.repos_dir)
            elif spec.commit is None or self._rev_parse(path, spec.commit) is None:
                self._fetch(url, path)
        return path

    def _fetch(self, url: str, path: Path) -> None:
        log.info("fetching %s", redact_url(url))
        try:
            git.Git(str(path)).fetch("--prune", "--quiet", "origin", env=_git_env(),
                                     kill_after_timeout=GIT_TIMEOUT)
        except git.GitCommandError as e:
            raise RepoError(f"cannot fetch {redact_url(url)}: {_git_reason(e)}") from None

    @staticmethod
    def _rev_parse(mirror: Path, rev: str) -> str | None:
        """Full SHA of commit ``rev`` in ``mirror``, or None."""
        try:
            out = git.Git(str(mirror)).rev_parse("--verify", "--quiet", "--end-of-options",
                                                 f"{rev}^{{commit}}", env=_git_env())
        except git.GitCommandError:
            return None
        out = out.strip()
        return out if re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", out) else None

    def _resolve(self, url: str, mirror: Path, spec: CodeSpec) -> str:
        if spec.commit is not None:
            sha = self._rev_parse(mirror, spec.commit)
            if sha is None:
                raise RepoError(f"unknown commit {spec.commit!r} in {redact_url(url)}")
            return sha
        if spec.branch is not None:
            sha = self._rev_parse(mirror, f"refs/heads/{spec.branch}")
            if sha is None:
                raise RepoError(f"unknown branch {spec.branch!r} in {redact_url(url)}")
            return sha
        sha = self._rev_parse(mirror, "HEAD")
        if sha is None:
            raise RepoError(f"{redact_url(url)} has no default branch (empty repository?)")
        return sha

    def _checkout(self, mirror: Path, sha: str) -> Path:
        """Export the tree of ``sha`` to ``<data_dir>/checkouts/<sha>`` (atomically)."""
        final = self.checkouts_dir / sha
        if final.is_dir():
            return final
        with _flock(self.locks_dir / f"checkout-{sha}.lock"):
            if final.is_dir():
                return final
            _remove_stale(self.checkouts_dir, f".tmp-{sha}-")
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{sha}-", dir=self.checkouts_dir))
            tree = tmp / "tree"
            tree.mkdir()
            env = dict(os.environ, **_git_env(), GIT_INDEX_FILE=str(tmp / "index"))
            base = ["git", f"--git-dir={mirror}", f"--work-tree={tree}"]
            try:
                for args in (["read-tree", sha], ["checkout-index", "--all", "--force"]):
                    proc = subprocess.run(base + args, env=env, capture_output=True, text=True,
                                          timeout=GIT_TIMEOUT, cwd=tmp, check=False)
                    if proc.returncode != 0:
                        raise RepoError(f"cannot check out {sha[:12]}: "
                                        f"{redact_url(proc.stderr.strip())[-500:]}")
                os.rename(tree, final)
                _fsync_dir(self.checkouts_dir)
            except subprocess.TimeoutExpired:
                raise RepoError(f"cannot check out {sha[:12]}: git timed out") from None
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return final

    # -- virtualenv -------------------------------------------------------------------------

    @staticmethod
    def venv_key(url: str, sha: str, requirements: str | None) -> str:
        """Cache key of the virtualenv for this code and this python."""
        python = f"{platform.python_implementation()} {sys.version}"
        blob = json.dumps([url, sha, requirements or "", python])
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def _venv(self, url: str, sha: str, root: Path, requirements: str | None) -> Path:
        key = self.venv_key(url, sha, requirements)
        final = self.venv_dir / key
        if (final / "bin" / "python").exists():
            return final
        with _flock(self.venv_dir / ".locks" / f"{key}.lock"):
            if (final / "bin" / "python").exists():
                return final
            if final.exists():  # not ours to reuse: something odd left it
                shutil.rmtree(final, ignore_errors=True)
            _remove_stale(self.venv_dir, f".tmp-{key}-")
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=self.venv_dir))
            try:
                self._build_venv(tmp, final, root, requirements)
                os.rename(tmp, final)
                _fsync_dir(self.venv_dir)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return final

    def _build_venv(self, dest: Path, final: Path, root: Path, requirements: str | None) -> None:
        """Create a virtualenv in ``dest`` (to be renamed to ``final``) and pip-install into it."""
        has_reqs = (root / "requirements.txt").is_file()
        has_project = (root / "pyproject.toml").is_file() or (root / "setup.py").is_file()
        needs_pip = bool(has_reqs or has_project or (requirements and requirements.strip()))
        args = [str(dest), "--python", sys.executable, "--no-periodic-update", "--quiet"]
        args += ["--no-download"] if needs_pip else ["--no-seed"]
        t0 = time.monotonic()
        try:
            virtualenv.cli_run(args, setup_logging=False)
        except (Exception, SystemExit) as e:  # virtualenv exits on bad arguments
            raise RepoError(f"cannot create virtualenv: {e}") from None
        log.info("created virtualenv %s in %.2fs", final.name, time.monotonic() - t0)
        if needs_pip:
            self._pip_install(dest, root, requirements, has_reqs, has_project)
        self._fix_paths(dest, final)

    def _pip_install(self, dest: Path, root: Path, requirements: str | None,
                     has_reqs: bool, has_project: bool) -> None:
        cmd = [str(dest / "bin" / "python"), "-m", "pip", "install",
               "--disable-pip-version-check", "--no-input"]
        if has_reqs:
            cmd += ["-r", str(root / "requirements.txt")]
        build_src = dest / ".ecd-build-src"
        if has_project:  # pip builds in the source tree: keep the shared checkout pristine
            shutil.copytree(root, build_src, symlinks=True)
            cmd += [str(build_src)]
        if requirements and requirements.strip():
            req_file = dest / "ecd-requirements.txt"
            req_file.write_text(requirements if requirements.endswith("\n") else requirements + "\n")
            cmd += ["-r", str(req_file)]
        env = {
            "PATH": f"{dest / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": os.environ.get("HOME", "/"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "VIRTUAL_ENV": str(dest),
            "PIP_NO_INPUT": "1",
            **{k: v for k, v in os.environ.items()
               if (k.startswith("PIP_") and k not in ("PIP_NO_INPUT", "PIP_TARGET", "PIP_PREFIX",
                                                      "PIP_USER", "PIP_REQUIRE_VIRTUALENV"))
               or k in _PASSTHROUGH_ENV},
        }
        t0 = time.monotonic()
        try:
            if self._cancelled:
                raise RepoError("cancelled: the node is stopping")
            returncode, output = _run_bounded(cmd, cwd=root, env=env, timeout=self.pip_timeout,
                                              running=self._running)
        finally:
            shutil.rmtree(build_src, ignore_errors=True)
        if returncode is None:
            raise RepoError(f"pip install timed out after {self.pip_timeout:.0f}s")
        if returncode != 0:
            log.warning("pip install failed (%d): %s", returncode, redact_url(output[-4000:]))
            raise RepoError(f"pip install failed: {_pip_reason(output)}")
        log.debug("pip output: %s", redact_url(output[-4000:]))
        log.info("pip install done in %.2fs", time.monotonic() - t0)

    @staticmethod
    def _fix_paths(tmp: Path, final: Path) -> None:
        """Rewrite the temporary venv path to the final one in bin/ (shebangs) and pyvenv.cfg."""
        old, new = str(tmp).encode(), str(final).encode()
        for entry in [*(tmp / "bin").iterdir(), tmp / "pyvenv.cfg"]:
            if entry.is_symlink() or not entry.is_file():
                continue
            try:
                data = entry.read_bytes()
            except OSError:
                continue
            if old in data and b"\0" not in data[:4096]:
                mode = entry.stat().st_mode
                entry.write_bytes(data.replace(old, new))
                os.chmod(entry, mode)
