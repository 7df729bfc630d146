"""ecctl command line against the fake peer: CliRunner and a real `python -m ecctl` process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import protocol
from ecctl.cli import cli

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, input: bytes | str | None = None) -> object:
    return CliRunner().invoke(cli, list(args), input=input)


# ------------------------------------------------------------------------------- run

def test_run_str_result(fake) -> None:  # type: ignore[no-untyped-def]
    result = run("run", "echo", "hello world")
    assert result.exit_code == 0, result.output
    assert result.stdout == "hello world\n"
    assert protocol.unpack(fake.of_type(protocol.Call)[0].args) == ["hello world"]


def test_run_several_args_json_result(fake) -> None:  # type: ignore[no-untyped-def]
    result = run("run", "echo", "a", "b")
    assert result.stdout == '["a", "b"]\n'
    result = run("run", "obj")
    assert json.loads(result.stdout) == {"n": 1, "list": [1, 2.5, None], "s": "x"}


def test_run_bytes_result_raw(fake) -> None:  # type: ignore[no-untyped-def]
    result = run("run", "blob", "x")
    assert result.exit_code == 0
    assert result.stdout_bytes == b"\x00\x01raw\xff"


def test_run_stdin_is_the_argument(fake) -> None:  # type: ignore[no-untyped-def]
    result = run("run", "upper", input="line one\nline two\n")
    assert result.exit_code == 0, result.output
    assert result.stdout == "LINE ONE\nLINE TWO\n"
    assert protocol.unpack(fake.of_type(protocol.Call)[0].args) == ["line one\nline two"]


def test_run_data_json_list(fake) -> None:  # type: ignore[no-untyped-def]
    result = run("run", "echo", "--data", '[1, {"k": [true]}]')
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [1, {"k": [True]}]


@pytest.mark.parametrize("argv", [["run", "echo", "--data", '{"a": 1}'],
                                  ["run", "echo", "--data", "not json"],
                                  ["run", "echo", "x", "--data", "[1]"]])
def test_run_data_usage_errors(fake, argv: list[str]) -> None:  # type: ignore[no-untyped-def]
    result = run(*argv)
    assert result.exit_code == 2
    assert not fake.of_type(protocol.Call)


def test_run_remote_error(fake) -> None:  # type: ignore[no-untyped-def]
    result = run("run", "boom", "x")
    assert result.exit_code == 1
    call_id = fake.of_type(protocol.Call)[0].call_id
    assert result.stderr == f"error: ValueError: bad input (call {call_id})\n"
    assert result.stdout == ""


def test_run_unknown_socket(fake) -> None:  # type: ignore[no-untyped-def]
    result = run("run", "nope", "x")
    assert result.exit_code == 1
    assert result.stderr == "error: unknown socket 'nope'\n"


def test_run_no_wait_prints_id(fake) -> None:  # type: ignore[no-untyped-def]
    result = run("run", "echo", "x", "--no-wait")
    assert result.exit_code == 0
    assert result.stdout.strip() == fake.of_type(protocol.Call)[0].call_id
    assert not fake.of_type(protocol.Get)


def test_run_timeout(fake) -> None:  # type: ignore[no-untyped-def]
    result = run("run", "never", "x", "--timeout", "0.3")
    assert result.exit_code == 1 and "not finished" in result.stderr


def test_task_run_seed_spelling(fake) -> None:  # type: ignore[no-untyped-def]
    result = run("task", "run", "-s", "echo", "--data", '["q"]')
    assert result.exit_code == 0 and result.stdout == "q\n"


def test_no_daemon_exit_2(short_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EC_ENDPOINT", f"ipc://{short_dir}/missing.sock")
    result = run("run", "echo", "x")
    assert result.exit_code == 2
    assert result.stderr == f"error: no daemon at ipc://{short_dir}/missing.sock\n"
    monkeypatch.delenv("EC_ENDPOINT")
    monkeypatch.setenv("EC_DATA_DIR", short_dir)
    result = run("status")
    assert result.exit_code == 2 and f"no daemon at ipc://{short_dir}/ecd.sock" in result.stderr


# ---------------------------------------------------------------------------- options

def test_endpoint_precedence(fake, short_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    bad = f"ipc://{short_dir}/bad.sock"
    config = Path(short_dir) / "ecctl.toml"
    config.write_text(f'endpoint = "{fake.endpoint}"\ntimeout = 4\n')
    monkeypatch.delenv("EC_ENDPOINT")
    assert run("--config", str(config), "run", "echo", "x").exit_code == 0     # file
    monkeypatch.setenv("EC_ENDPOINT", bad)
    assert run("--config", str(config), "run", "echo", "x").exit_code == 2     # env beats file
    assert run("--config", str(config), "--endpoint", fake.endpoint,
               "run", "echo", "x").exit_code == 0                              # flag beats env
    config.write_text("endpoint = [")
    assert run("--config", str(config), "status").exit_code == 2


# ------------------------------------------------------------------------------ admin

def test_add_commands(fake) -> None:  # type: ignore[no-untyped-def]
    r1 = run("add", "queue", "-n", "q1", "-t", "topic")
    r2 = run("add", "processor", "-n", "p1", "-g", "https://example.com/r.git", "-m", "pkg.mod",
             "-c", "2", "-br", "main", "--commit", "abc123", "-r", "3", "--timelimit", "30",
             "--retry-delay", "0.5", "--requirements", "requests", "--description", "demo")
    r3 = run("add", "socket", "-n", "s1", "-q", "q1", "-pn", "p1", "-t", "do_it")
    assert [r.exit_code for r in (r1, r2, r3)] == [0, 0, 0]
    assert r1.stdout == "added queue q1 (topic)\n"
    assert r2.stdout == "added processor p1\n"
    assert r3.stdout.startswith("added socket s1")
    ops = {m.op: m.args for m in fake.of_type(protocol.Admin)}
    assert ops["add_queue"] == {"name": "q1", "type": "topic"}
    assert ops["add_processor"] == {
        "name": "p1", "gitrepo": "https://example.com/r.git", "module": "pkg.mod",
        "concurrency": 2, "branch": "main", "commit": "abc123", "retries": 3,
        "retry_delay": 0.5, "timelimit": 30.0, "requirements": "requests",
        "description": "demo"}
    assert ops["add_socket"] == {"name": "s1", "processor": "p1", "function": "do_it", "queue": "q1"}
    assert run("add", "queue", "-n", "q", "-t", "bogus").exit_code == 2


def test_add_json_prints_object(fake) -> None:  # type: ignore[no-untyped-def]
    fake.admin["add_queue"] = {"name": "q1", "type": "direct", "depth": 0}
    result = run("add", "queue", "-n", "q1", "--json")
    assert result.stdout == json.dumps({"name": "q1", "type": "direct", "depth": 0},
                                       indent=2, sort_keys=True) + "\n"
    assert run("--json", "add", "queue", "-n", "q1").stdout == result.stdout


def test_admin_server_error(fake) -> None:  # type: ignore[no-untyped-def]
    fake.admin["delete_queue"] = protocol.Error(code=409, reason="queue q1 is used by socket s1")
    result = run("delete", "queue", "-n", "q1")
    assert result.exit_code == 1 and result.stderr == "error: queue q1 is used by socket s1\n"


def test_delete(fake) -> None:  # type: ignore[no-untyped-def]
    fake.admin["delete_processor"] = {"deleted": "p1"}
    result = run("delete", "processor", "-n", "p1")
    assert result.exit_code == 0 and result.stdout == "deleted processor p1\n"
    assert fake.of_type(protocol.Admin)[0].args == {"name": "p1"}


def test_ls_objects(fake) -> None:  # type: ignore[no-untyped-def]
    fake.admin["ls_queues"] = [{"name": "q1", "type": "direct", "depth": 3},
                               {"name": "longer-name", "type": "fanout", "depth": 0}]
    result = run("ls", "queues")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["Name", "Type", "Depth", "Durable", "Max", "length", "TTL"]
    assert lines[2].split() == ["q1", "direct", "3", "-", "-", "-"]
    assert lines[0].index("Type") == lines[2].index("direct") == lines[3].index("fanout")
    result = run("ls", "queues", "--json")
    assert json.loads(result.stdout) == fake.admin["ls_queues"]
    fake.admin["ls_processors"] = [{"name": "p", "status": "failed", "reason": "clone failed"}]
    assert "clone failed" in run("ls", "processors").stdout
    fake.admin["ls_sockets"] = []
    assert run("ls", "sockets").exit_code == 0


def _call(n: int, **extra: object) -> dict:
    base = {"id": f"id-{n}", "seq": n, "owner": "o", "node": "n1", "socket": "s", "processor": "p",
            "function": "f", "state": "done", "attempts": 1, "max_retries": 2,
            "created": 1700000000.0 + n, "started": 1700000000.5 + n,
            "finished": 1700000001.25 + n, "worker": 4242, "error": None, "events": []}
    base.update(extra)
    return base


def test_ls_calls_paging(fake) -> None:  # type: ignore[no-untyped-def]
    fake.admin["ls_calls"] = {"total": 25, "calls": [_call(1), _call(2)]}   # a #2 reply: no "pages"
    result = run("ls", "calls", "-p", "2", "-r", "10", "--unfinished")
    assert result.exit_code == 0, result.output
    assert fake.of_type(protocol.Admin)[0].args == {"page": 2, "rows": 10, "unfinished": True}
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["Page", "Row", "ID"]
    assert lines[2].split()[:3] == ["2", "1", "id-1"] and lines[3].split()[:3] == ["2", "2", "id-2"]
    assert ".250" in lines[2]
    assert lines[-1] == "Page 2 of 3 of 25 total records"


def test_ls_call_detail(fake) -> None:  # type: ignore[no-untyped-def]
    fake.admin["ls_call"] = _call(
        7, state="failed", attempts=3, result="the value",
        error={"type": "KeyError", "message": "'k'", "traceback": "tb"},
        events=[{"name": "received", "time": 1700000000.0, "note": "from cli"},
                {"name": "failed", "time": 1700000002.0, "note": None}])
    result = run("ls", "call", "--id", "id-7", "--result")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "id-7" in out and "failed" in out and "3/3" in out and "4242" in out
    assert "Error: KeyError: 'k'" in out
    assert "Events" in out and "received" in out and "from cli" in out
    assert out.rstrip().endswith("Result\nthe value")
    assert fake.of_type(protocol.Admin)[0].args == {"id": "id-7", "result": True}
    assert json.loads(run("ls", "call", "--id", "id-7", "--json").stdout)["id"] == "id-7"


def test_status(fake) -> None:  # type: ignore[no-untyped-def]
    fake.admin["status"] = {
        "node": "n1", "version": "0.1.0", "pid": 99, "cpus": 2, "busy": 1, "uptime": 3725.0,
        "processors": [{"name": "p1", "status": "running", "reason": None, "workers": 2,
                        "busy": 1, "idle": 1}],
        "queues": [{"name": "q1", "depth": 5}], "sockets": [{"name": "s1", "depth": 5}],
        "wal": {"entries": 3}}
    result = run("status")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "node n1" in out and "cpus 2  busy 1" in out and "1h 2m 5s" in out
    assert any(line.split()[:5] == ["p1", "running", "2", "1", "1"] for line in out.splitlines())
    assert any(line.split() == ["q1", "5"] for line in out.splitlines())
    assert json.loads(run("status", "--json").stdout) == fake.admin["status"]


def test_ping(fake) -> None:  # type: ignore[no-untyped-def]
    result = run("ping")
    assert result.exit_code == 0 and result.stdout.startswith("fake 0.0-test")


# ------------------------------------------------------------------------- subprocess

def _ecctl(*args: str, input: bytes | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "ecctl", *args], input=input, cwd=ROOT,
                          env=full_env, capture_output=True, timeout=60)


def test_subprocess_outputs(fake) -> None:  # type: ignore[no-untyped-def]
    proc = _ecctl("run", "echo", "héllo", input=b"")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "héllo\n".encode()
    proc = _ecctl("run", "blob", "x", input=b"")
    assert proc.returncode == 0 and proc.stdout == b"\x00\x01raw\xff"
    proc = _ecctl("run", "upper", input=b"from stdin\n")
    assert proc.returncode == 0 and proc.stdout == b"FROM STDIN\n"
    proc = _ecctl("run", "obj", "--data", "[]", input=b"")
    assert json.loads(proc.stdout) == {"n": 1, "list": [1, 2.5, None], "s": "x"}


def test_subprocess_errors(fake, short_dir: str) -> None:  # type: ignore[no-untyped-def]
    proc = _ecctl("run", "boom", "x", input=b"")
    call_id = fake.of_type(protocol.Call)[-1].call_id
    assert proc.returncode == 1
    assert proc.stderr.decode() == f"error: ValueError: bad input (call {call_id})\n"
    proc = _ecctl("run", "nope", "x", input=b"")
    assert proc.returncode == 1 and proc.stderr.decode() == "error: unknown socket 'nope'\n"
    proc = _ecctl("run", "echo", "x", input=b"",
                  env={"EC_ENDPOINT": f"ipc://{short_dir}/gone.sock"})
    assert proc.returncode == 2
    assert proc.stderr.decode() == f"error: no daemon at ipc://{short_dir}/gone.sock\n"
