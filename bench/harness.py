"""Throwaway nodes for benchmarks: a temp data dir, a real ``ecd run`` process, the bundled
example processor from a fresh git repository; everything is stopped and removed afterwards."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "sample"


def print_result(result: dict[str, Any], as_json: bool) -> None:
    """A benchmark's figures: one JSON object, or aligned ``key  value`` lines."""
    if as_json:
        print(json.dumps(result))
        return
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")


class ThrowawayNode:
    """``with ThrowawayNode(cpus=2) as node:`` gives a running ecd at ``node.endpoint``."""

    def __init__(self, cpus: int = 2, venv_dir: Path | None = None, *, extra: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, repo_url: str | None = None) -> None:
        self.cpus = cpus
        self.extra = extra
        self.env = env or {}
        self.repo_url = repo_url or ""
        self.base = Path(tempfile.mkdtemp(prefix="ec-bench-"))
        self.data_dir = self.base / "data"
        self.venv_dir = venv_dir or self.base / "venvs"
        self.endpoint = f"ipc://{self.data_dir / 'ecd.sock'}"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "ThrowawayNode":
        self.repo_url = self.repo_url or self._make_repo()
        log = open(self.base / "ecd.log", "wb")
        env = {**os.environ, "PYTHONPATH": str(ROOT), **self.env}
        env.pop("NOTIFY_SOCKET", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ecd", "run", "--data-dir", str(self.data_dir), "--venv-dir", str(self.venv_dir),
             "--cpus", str(self.cpus), "--log-level", "WARNING", *self.extra],
            stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        from ecctl import Client

        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ecd exited: {(self.base / 'ecd.log').read_text()[-2000:]}")
            if (self.data_dir / "ecd.sock").exists():
                try:
                    with Client(self.endpoint, timeout=1, connect_timeout=1) as client:
                        client.ping()
                    break
                except Exception:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError("ecd did not start")
            time.sleep(0.05)
        return self

    def _make_repo(self) -> str:
        repo = self.base / "sample"
        shutil.copytree(EXAMPLE, repo, ignore=shutil.ignore_patterns("__pycache__"))
        env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@example.invalid",
               "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@example.invalid"}
        for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "bench"]):
            subprocess.run(["git", *args], cwd=repo, env=env, check=True, timeout=60)
        return f"file://{repo}"

    def wait_running(self, processor: str, timeout: float = 300) -> None:
        from ecctl import Client

        deadline = time.monotonic() + timeout
        with Client(self.endpoint) as client:
            while time.monotonic() < deadline:
                for proc in client.status()["processors"]:
                    if proc["name"] == processor and proc["status"] == "running" and proc["idle"] >= 1:
                        return
                    if proc["name"] == processor and proc["status"] == "failed":
                        raise RuntimeError(f"processor failed: {proc['reason']}")
                time.sleep(0.05)
        raise RuntimeError(f"processor {processor} not running after {timeout}s")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.base, ignore_errors=True)
