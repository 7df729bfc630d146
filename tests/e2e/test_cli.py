"""End to end: the real ``ecctl`` command line against a real ``ecd`` with real workers.

One node with the example processor serves the whole module; tests that change the topology use
their own names so they do not disturb each other.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from ecctl import Client
from tests.conftest import ROOT, SAMPLE_FUNCTIONS, EcdProcess, free_port, run_ecctl, sample_node_for_module, wait_for

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture(scope="module")
def cli_node(venv_cache: Path, sample_repo: str) -> Iterator[EcdProcess]:
    with sample_node_for_module(venv_cache, sample_repo, "ec-cli-") as node:
        yield node


@pytest.fixture(scope="module")
def shell_bin() -> Iterator[Path]:
    """A directory with an ``ecctl`` executable (the venv's python running ``-m ecctl``)."""
    path = Path(tempfile.mkdtemp(prefix="ec-bin-"))
    script = path / "ecctl"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m ecctl "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def ecctl(node: EcdProcess, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    return run_ecctl(node.endpoint, *args, **kwargs)


def ok_json(node: EcdProcess, *args: str) -> Any:
    proc = ecctl(node, *args)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


def stderr_lines(proc: subprocess.CompletedProcess[bytes]) -> list[str]:
    return proc.stderr.decode().splitlines()


# ------------------------------------------------------------------------------- run


def test_shell_pipe_through_real_shell(cli_node: EcdProcess, shell_bin: Path) -> None:
    venv_bin = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{shell_bin}:{venv_bin}:{os.environ.get('PATH', '')}",
           "EC_ENDPOINT": cli_node.endpoint, "PYTHONPATH": str(ROOT)}
    env.pop("EC_DATA_DIR", None)
    cmd = 'set -o pipefail; echo "HI THERE!" | ecctl run sample.tasks.do_something | ecctl run sample.tasks.do_this'
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, env=env, timeout=60, cwd="/")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode() == "Do this: Do something: HI THERE!\n"
    assert proc.stderr == b""


def test_run_with_args_prints_str_result(cli_node: EcdProcess) -> None:
    proc = ecctl(cli_node, "run", "sample.tasks.do_something", "hello")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b"Do something: hello\n"


def test_task_run_seed_spelling(cli_node: EcdProcess) -> None:
    proc = ecctl(cli_node, "task", "run", "--socket", "sample.tasks.do_this", "--data", '["some data"]')
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b"Do this: some data\n"


def test_run_data_json_numbers(cli_node: EcdProcess) -> None:
    proc = ecctl(cli_node, "run", "sample.tasks.add_two", "--data", "[40, 2]")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b"42\n"


def test_run_dict_result_printed_as_json(cli_node: EcdProcess) -> None:
    proc = ecctl(cli_node, "run", "sample.tasks.echo", "--data", '[1, "a", null, [2.5, true]]')
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout) == {"args": [1, "a", None, [2.5, True]], "kwargs": {}}


def test_no_wait_prints_id_then_ls_call_shows_done(cli_node: EcdProcess) -> None:
    proc = ecctl(cli_node, "run", "--no-wait", "sample.tasks.do_this", "later")
    assert proc.returncode == 0, proc.stderr.decode()
    call_id = proc.stdout.decode().strip()
    assert UUID_RE.fullmatch(call_id), call_id

    def done() -> Any:
        call = ok_json(cli_node, "ls", "call", "--id", call_id, "--json")
        return call if call["state"] == "done" else None

    call = wait_for(done, 30, interval=0.1, what="call done")
    assert call["id"] == call_id
    assert call["socket"] == "sample.tasks.do_this"
    assert call["attempts"] == 1
    assert call["error"] is None
    names = [e["name"] for e in call["events"]]
    assert names[:4] == ["received", "queued", "prerun", "postrun"], names
    times = [e["time"] for e in call["events"]]
    assert times == sorted(times)
    assert call["created"] <= call["started"] <= call["finished"]
    with_result = ok_json(cli_node, "ls", "call", "--id", call_id, "--json", "--result")
    assert with_result["result"] == "Do this: later"


# ------------------------------------------------------------------------ exit codes


def test_failing_call_exit_1_one_line(cli_node: EcdProcess) -> None:
    proc = ecctl(cli_node, "run", "sample.tasks.fail", "boom")
    assert proc.returncode == 1
    assert proc.stdout == b""
    lines = stderr_lines(proc)
    assert len(lines) == 1, lines
    match = re.fullmatch(r"error: ValueError: boom \(call (\S+)\)", lines[0])
    assert match, lines[0]
    call = ok_json(cli_node, "ls", "call", "--id", match.group(1), "--json")
    assert call["state"] == "failed"
    assert call["error"]["type"] == "ValueError"


def test_unknown_socket_exit_1_names_socket(cli_node: EcdProcess) -> None:
    proc = ecctl(cli_node, "run", "no.such.socket", "x")
    assert proc.returncode == 1
    assert proc.stdout == b""
    lines = stderr_lines(proc)
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    assert "no.such.socket" in lines[0]


def test_no_daemon_ipc_exit_2(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path / 'nothing-here' / 'ecd.sock'}"
    proc = run_ecctl(endpoint, "run", "sample.tasks.do_this", "x", timeout=30)
    assert proc.returncode == 2
    lines = stderr_lines(proc)
    assert lines == [f"error: no daemon at {endpoint}"]


def test_no_daemon_tcp_closed_port_exit_2() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    key = zmq.curve_keypair()[0].decode()
    proc = run_ecctl(endpoint, "--timeout", "2", "--server-key", key, "run", "sample.tasks.do_this", "x", timeout=60)
    assert proc.returncode == 2
    lines = stderr_lines(proc)
    assert lines == [f"error: no daemon at {endpoint}"]


def test_a_tcp_endpoint_with_no_known_key_exits_2_naming_keys_show_and_trust() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = run_ecctl(endpoint, "--timeout", "2", "run", "sample.tasks.do_this", "x", timeout=60)
    assert proc.returncode == 2
    (line,) = stderr_lines(proc)
    assert line.startswith(f"error: the key of the node at {endpoint} is unknown")
    assert "`ecd keys show`" in line and f"`ecctl trust {endpoint} KEY`" in line


def test_endpoint_option_overrides_env(cli_node: EcdProcess, tmp_path: Path) -> None:
    bogus = f"ipc://{tmp_path / 'bogus.sock'}"
    proc = run_ecctl(bogus, "--endpoint", cli_node.endpoint, "run", "sample.tasks.do_this", "x")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b"Do this: x\n"


# ---------------------------------------------------------------------------- ls


def test_ls_json(cli_node: EcdProcess) -> None:
    procs = ok_json(cli_node, "ls", "processors", "--json")
    proc1 = next(p for p in procs if p["name"] == "proc1")
    assert proc1["status"] == "running"
    assert proc1["module"] == "sample.tasks"
    assert proc1["concurrency"] == 2
    assert re.fullmatch(r"[0-9a-f]{40}", proc1["resolved_commit"])

    sockets = ok_json(cli_node, "ls", "sockets", "--json")
    by_name = {s["name"]: s for s in sockets}
    for fn in SAMPLE_FUNCTIONS:
        sock = by_name[f"sample.tasks.{fn}"]
        assert (sock["processor"], sock["function"], sock["queue"]) == ("proc1", fn, "q1")

    queues = ok_json(cli_node, "ls", "queues", "--json")
    q1 = next(q for q in queues if q["name"] == "q1")
    assert q1["type"] == "direct"
    assert isinstance(q1["depth"], int)

    ran = ecctl(cli_node, "run", "--no-wait", "sample.tasks.noop")
    assert ran.returncode == 0, ran.stderr.decode()
    call_id = ran.stdout.decode().strip()
    calls = ok_json(cli_node, "ls", "calls", "--json", "--rows", "50")
    assert calls["total"] >= 1
    assert call_id in [c["id"] for c in calls["calls"]]
    row = next(c for c in calls["calls"] if c["id"] == call_id)
    assert row["socket"] == "sample.tasks.noop"


def test_ls_tables_human_readable(cli_node: EcdProcess) -> None:
    proc = ecctl(cli_node, "ls", "processors")
    assert proc.returncode == 0, proc.stderr.decode()
    assert "proc1" in proc.stdout.decode() and "running" in proc.stdout.decode()
    proc = ecctl(cli_node, "ls", "calls")
    assert proc.returncode == 0, proc.stderr.decode()


def test_ls_call_unknown_id(cli_node: EcdProcess) -> None:
    proc = ecctl(cli_node, "ls", "call", "--id", "no-such-call", "--json")
    assert proc.returncode == 1
    lines = stderr_lines(proc)
    assert len(lines) == 1 and "no-such-call" in lines[0], lines


# ------------------------------------------------------------------------- delete


def test_add_and_delete_through_cli(cli_node: EcdProcess, sample_repo: str) -> None:
    tag = uuid.uuid4().hex[:8]
    queue, processor, socket = f"qd-{tag}", f"pd-{tag}", f"sd-{tag}"
    assert ecctl(cli_node, "add", "queue", "-n", queue, "-t", "direct").returncode == 0
    proc = ecctl(cli_node, "add", "processor", "-n", processor, "-g", sample_repo, "-m", "sample.tasks", "-c", "1")
    assert proc.returncode == 0, proc.stderr.decode()
    proc = ecctl(cli_node, "add", "socket", "-n", socket, "-q", queue, "-pn", processor, "-t", "do_this")
    assert proc.returncode == 0, proc.stderr.decode()
    # the new socket works through the CLI
    proc = ecctl(cli_node, "run", socket, "via new socket", timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b"Do this: via new socket\n"

    # a processor still referenced by a socket cannot be deleted
    proc = ecctl(cli_node, "delete", "processor", "-n", processor)
    assert proc.returncode != 0
    lines = stderr_lines(proc)
    assert len(lines) == 1 and lines[0].startswith("error: ") and processor in lines[0], lines
    assert processor in [p["name"] for p in ok_json(cli_node, "ls", "processors", "--json")]

    proc = ecctl(cli_node, "delete", "socket", "-n", socket)
    assert proc.returncode == 0, proc.stderr.decode()
    assert socket not in [s["name"] for s in ok_json(cli_node, "ls", "sockets", "--json")]
    # the deleted socket is unknown now
    proc = ecctl(cli_node, "run", socket, "x")
    assert proc.returncode == 1 and socket in proc.stderr.decode()

    proc = ecctl(cli_node, "delete", "processor", "-n", processor)
    assert proc.returncode == 0, proc.stderr.decode()
    assert processor not in [p["name"] for p in ok_json(cli_node, "ls", "processors", "--json")]
    wait_for(lambda: processor not in [p["name"] for p in ok_json(cli_node, "status", "--json")["processors"]],
             30, interval=0.1, what="processor gone from status")

    proc = ecctl(cli_node, "delete", "queue", "-n", queue)
    assert proc.returncode == 0, proc.stderr.decode()
    assert queue not in [q["name"] for q in ok_json(cli_node, "ls", "queues", "--json")]


def test_delete_unknown_names_fail(cli_node: EcdProcess) -> None:
    for kind in ("socket", "processor", "queue"):
        proc = ecctl(cli_node, "delete", kind, "-n", f"nope-{kind}")
        assert proc.returncode == 1, (kind, proc.stdout)
        lines = stderr_lines(proc)
        assert len(lines) == 1 and f"nope-{kind}" in lines[0], lines


# ------------------------------------------------------------------------- status


def test_status_json_workers_and_depths(cli_node: EcdProcess) -> None:
    tag = uuid.uuid4().hex[:8]
    queue, processor, socket = f"qs-{tag}", f"ps-{tag}", f"ss-{tag}"
    with Client(cli_node.endpoint) as client:
        # a processor whose code cannot be fetched: its calls wait in the queue, a fixed depth
        client.add_queue(queue, "direct")
        client.add_processor(processor, f"file:///nonexistent/{tag}.git", "x.tasks")
        client.add_socket(socket, processor=processor, function="f", queue=queue)
        for _ in range(3):
            client.call(socket)
        sleeper = client.call("sample.tasks.sleep", 2)

        def busy() -> Any:
            s = ok_json(cli_node, "status", "--json")
            p = next(p for p in s["processors"] if p["name"] == "proc1")
            return s if p["busy"] == 1 else None

        status = wait_for(busy, 30, interval=0.05, what="proc1 busy")
        assert status["cpus"] == 2
        assert status["busy"] == 1
        p1 = next(p for p in status["processors"] if p["name"] == "proc1")
        assert (p1["status"], p1["workers"], p1["busy"], p1["idle"]) == ("running", 2, 1, 1)
        depths = {q["name"]: q["depth"] for q in status["queues"]}
        assert depths[queue] == 3
        assert depths["q1"] == 0
        assert {s["name"]: s["depth"] for s in status["sockets"]}[socket] == 3
        ps = next(p for p in status["processors"] if p["name"] == processor)
        assert ps["status"] in ("pending", "failed")
        human = ecctl(cli_node, "status")
        assert human.returncode == 0 and "proc1" in human.stdout.decode()
        assert sleeper.get(timeout=30) == 2
    # its socket still has unfinished calls: deleting it is refused with a clear error
    proc = ecctl(cli_node, "delete", "socket", "-n", socket)
    assert proc.returncode == 1
    lines = stderr_lines(proc)
    assert len(lines) == 1 and socket in lines[0] and "unfinished" in lines[0], lines
    assert socket in [s["name"] for s in ok_json(cli_node, "ls", "sockets", "--json")]
