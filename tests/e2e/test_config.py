"""Configuration as an operator uses it: ``ecd run --config FILE`` (TOML), ``EC_*`` variables,
a tcp:// listener, and ``ecctl --config`` / ``--endpoint`` reaching the node over tcp."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ecctl import Client
from tests.conftest import ROOT, EcdProcess, admin_client, free_port, register_sample, run_ecctl


def _ecd(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "ecd", *args], capture_output=True, timeout=timeout,
                          env=full_env, cwd=ROOT)


def test_config_file_sets_name_cpus_and_tcp_listener(ecd_factory, sample_repo: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    node: EcdProcess = ecd_factory("cfg", start=False, cpus=1)
    config = tmp_path / "ecd.toml"
    config.write_text(f'data_dir = "{node.data_dir}"\nlisten = ["tcp://127.0.0.1:{port}"]\n'
                      f'name = "cfg-node"\ncpus = 1\n')
    node.extra = ("--config", str(config))
    node.start()
    tcp = f"tcp://127.0.0.1:{port}"
    with admin_client(tcp, node.data_dir) as client:
        status = client.status()
        assert (status["node"], status["cpus"]) == ("cfg-node", 1)
        assert tcp in status["endpoints"]
        register_sample(client, sample_repo, concurrency=1)
        assert client.call("sample.tasks.add_two", 40, 2).get(timeout=30) == 42
    # ecctl reaches it over tcp through its own TOML config file, the node's key in it; a config
    # folder of its own: a client that never logged in
    ecctl_config = tmp_path / "ecctl.toml"
    ecctl_config.write_text(f'endpoint = "{tcp}"\nserver_key = "{node.key}"\n')
    env = {"EC_ENDPOINT": "", "EC_CONFIG_DIR": str(tmp_path / "client")}
    proc = run_ecctl("ipc:///nonexistent/ecd.sock", "--config", str(ecctl_config), "run", "sample.tasks.do_this", "x",
                     env=env)
    assert proc.returncode == 1 and b"not logged in" in proc.stderr, proc.stderr
    proc = run_ecctl("ipc:///nonexistent/ecd.sock", "--config", str(ecctl_config), "login", "-u", "admin",
                     "--password-stdin", env=env, input=(node.data_dir / "admin.password").read_bytes())
    assert proc.returncode == 0 and proc.stdout.startswith(b"logged in as admin until "), proc.stderr
    proc = run_ecctl("ipc:///nonexistent/ecd.sock", "--config", str(ecctl_config), "run", "sample.tasks.do_this", "x",
                     env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == "Do this: x\n"
    assert node.terminate() == 0


@pytest.mark.parametrize("content, message", [
    ("cpus = 'many'\n", "cpus"),
    ("no_such_key = 1\n", "unknown keys no_such_key"),
    ("listen = ['http://x']\n", "not a tcp:// or ipc:// endpoint"),
    ("this is not toml", "config file"),
])
def test_bad_config_file_exits_2_with_the_reason(tmp_path: Path, content: str, message: str) -> None:
    config = tmp_path / "ecd.toml"
    config.write_text(content)
    proc = _ecd("run", "--config", str(config), "--data-dir", str(tmp_path / "d"))
    assert proc.returncode == 2
    assert message in proc.stderr.decode()
    assert not (tmp_path / "d" / "ecd.lock").exists()  # it never started


def test_environment_overrides_the_file_and_flags_override_both(ecd_factory, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "ecd.toml"
    config.write_text("cpus = 3\nname = 'from-file'\ngrace = 7\n")
    monkeypatch.setenv("EC_NAME", "from-env")
    node: EcdProcess = ecd_factory("prec", start=False, cpus=2)  # the fixture passes --cpus 2
    node.extra = ("--config", str(config))
    node.start()
    with Client(node.endpoint) as client:
        status = client.status()
    assert status["node"] == "from-env"  # environment beats the file
    assert status["cpus"] == 2           # the command line beats both
