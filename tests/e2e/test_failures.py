"""End to end: failures of workers, user code, code loading and the daemon itself, each with its
clear error, while the node keeps serving other calls.

Real ecd processes, real git repositories, real worker processes; the victims are killed with
real signals. Tests that need a node of their own (CPU count, restarts) start one; the others
share one node per module.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

import protocol
from ecctl import Client, RemoteError, ServerError
from tests.conftest import (EXAMPLE, EcdProcess, make_git_repo, processor_view, register_sample,
                            run_ecctl, sample_node_for_module, wait_for)

proc_view = processor_view


def event_names(record: dict[str, Any]) -> list[str]:
    return [e["name"] for e in record["events"]]


def ecctl_json(node: EcdProcess, *args: str) -> Any:
    proc = run_ecctl(node.endpoint, *args, "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


def workers_of_attempts(record: dict[str, Any]) -> list[int]:
    """Worker pids of each attempt, from the prerun events' notes."""
    pids = []
    for event in record["events"]:
        if event["name"] == "prerun":
            match = re.search(r"worker (\d+)", event["note"] or "")
            assert match, event
            pids.append(int(match.group(1)))
    return pids


def wait_workers_respawned(client: Client, processor: str, gone: list[int], count: int) -> dict[str, Any]:
    def respawned() -> dict[str, Any] | None:
        view = proc_view(client, processor)
        ok = (view.get("status") == "running" and view["workers"] == count and view["idle"] == count
              and not set(gone) & set(view["pids"]))
        return view if ok else None

    return wait_for(respawned, 30, interval=0.05, what=f"{processor} workers respawned")


@pytest.fixture(scope="module")
def fnode(venv_cache: Path, sample_repo: str) -> Iterator[EcdProcess]:
    with sample_node_for_module(venv_cache, sample_repo, "ec-fail-") as node:
        yield node


@pytest.fixture
def client(fnode: EcdProcess) -> Iterator[Client]:
    with Client(fnode.endpoint) as c:
        yield c


@pytest.fixture(scope="module")
def bad_repo() -> Iterator[str]:
    """The example plus modules that cannot be imported."""
    base = Path(tempfile.mkdtemp(prefix="ec-badrepo-"))
    url = make_git_repo(EXAMPLE, base / "bad", extra={
        "bad/__init__.py": "",
        "bad/tasks.py": 'raise ImportError("nope")\n',
        "bad/syntax.py": "def broken(:\n    return 1\n",
        "bad/exits.py": "import os\nos._exit(3)\n",
        "bad/slow.py": "import time\ntime.sleep(5)\n\n\ndef fn():\n    return 1\n",
    })
    yield url
    shutil.rmtree(base, ignore_errors=True)


def assert_still_serving(client: Client, text: str = "still here") -> None:
    assert client.call("sample.tasks.do_this", text).get(timeout=30) == f"Do this: {text}"


# ------------------------------------------------------------------------------ workers


def test_worker_killed_mid_call_is_retried(fnode: EcdProcess, client: Client) -> None:
    r = client.call("sample.tasks.sleep", 2)

    def running() -> Any:
        call = ecctl_json(fnode, "ls", "call", "--id", r.id)
        return call if call["state"] == "running" and call["worker"] else None

    victim = wait_for(running, 30, interval=0.05, what="call running")["worker"]
    os.kill(victim, signal.SIGKILL)

    assert r.get(timeout=60) == 2
    record = client.ls_call(r.id)
    assert record["state"] == "done"
    assert record["attempts"] == 2
    assert record["error"] is None
    assert record["worker"] != victim
    names = event_names(record)
    assert names.count("prerun") == 2 and names.count("postrun") == 1, names
    assert names.index("retried") < len(names) - 1
    retried = next(e for e in record["events"] if e["name"] == "retried")
    assert "WorkerLost" in retried["note"]
    assert workers_of_attempts(record)[0] == victim
    wait_workers_respawned(client, "proc1", [victim], 2)
    assert_still_serving(client)


def test_crash_with_retries_exhausted_fails_worker_lost(fnode: EcdProcess, client: Client) -> None:
    r = client.call("sample.tasks.crash", 3)
    with pytest.raises(RemoteError) as info:
        r.get(timeout=60)
    assert info.value.type == "WorkerLost"
    assert info.value.call_id == r.id
    record = client.ls_call(r.id)
    assert record["state"] == "failed"
    assert record["attempts"] == record["max_retries"] + 1 == 2
    assert record["error"]["type"] == "WorkerLost"
    assert "code 3" in record["error"]["message"]
    names = event_names(record)
    assert names.count("prerun") == 2 and names[-1] == "failed" and "postrun" not in names, names
    crashed = workers_of_attempts(record)
    # the node keeps serving, and the processor is back to full strength with new workers
    assert_still_serving(client, "after crash")
    view = wait_workers_respawned(client, "proc1", crashed, 2)
    assert view["busy"] == 0
    pids = {client.call("sample.tasks.pid").get(timeout=30) for _ in range(4)}
    assert pids <= set(view["pids"]) and not pids & set(crashed)


def test_time_limit_kills_call_and_others_still_run(fnode: EcdProcess, client: Client, sample_repo: str) -> None:
    client.add_processor("ptl", sample_repo, "sample.tasks", concurrency=1, retries=0, timelimit=1)
    client.add_socket("tl.sleep", processor="ptl", function="sleep", queue="q1")
    client.add_socket("tl.do_this", processor="ptl", function="do_this", queue="q1")
    wait_for(lambda: proc_view(client, "ptl").get("status") == "running", 120, what="ptl running")
    first_pids = proc_view(client, "ptl")["pids"]

    r = client.call("tl.sleep", 30)
    # other processors keep running while that worker is stuck
    assert_still_serving(client, "meanwhile")
    with pytest.raises(RemoteError) as info:
        r.get(timeout=25)      # long before the 30 s sleep could end by itself
    assert info.value.type == "TimeLimitExceeded"
    record = client.ls_call(r.id)
    assert record["state"] == "failed"
    assert record["attempts"] == 1
    assert record["error"]["type"] == "TimeLimitExceeded"
    assert "time limit" in record["error"]["message"]
    # the stuck worker was killed and replaced; the processor runs calls again
    wait_workers_respawned(client, "ptl", first_pids, 1)
    assert client.call("tl.do_this", "again").get(timeout=30) == "Do this: again"
    assert client.call("tl.sleep", 0).get(timeout=30) == 0
    assert_still_serving(client)


# ---------------------------------------------------------------------------- user code


def test_user_code_raising_is_dead_lettered(fnode: EcdProcess, client: Client) -> None:
    dead_before = client.status()["wal"].get("dead")
    r = client.call("sample.tasks.fail", "oops")
    with pytest.raises(RemoteError) as info:
        r.get(timeout=30)
    assert (info.value.type, info.value.message) == ("ValueError", "oops")
    record = ecctl_json(fnode, "ls", "call", "--id", r.id)
    assert record["state"] == "failed"
    assert record["attempts"] == record["max_retries"] + 1 == 2
    assert record["error"]["type"] == "ValueError"
    assert record["error"]["message"] == "oops"
    assert "raise ValueError(message)" in record["error"]["traceback"]
    assert record["finished"] is not None
    assert event_names(record) == ["received", "queued", "prerun", "retried", "prerun", "failed"]
    if dead_before is not None:
        assert client.status()["wal"]["dead"] == dead_before + 1
    # the human view names the error too
    proc = run_ecctl(fnode.endpoint, "ls", "call", "--id", r.id)
    assert proc.returncode == 0 and "ValueError: oops" in proc.stdout.decode()
    assert_still_serving(client)


# ---------------------------------------------------------------------------- code loading


@pytest.mark.parametrize(("module", "error_type"), [("bad.tasks", "ImportError"), ("bad.syntax", "SyntaxError")])
def test_module_failing_to_import(fnode: EcdProcess, client: Client, bad_repo: str, module: str,
                                  error_type: str) -> None:
    name = f"pbad-{module.replace('.', '-')}"
    client.add_processor(name, bad_repo, module, concurrency=1)
    client.add_socket(f"{name}.fn", processor=name, function="fn", queue="q1")

    def failed() -> Any:
        procs = ecctl_json(fnode, "ls", "processors")
        proc = next(p for p in procs if p["name"] == name)
        return proc if proc["status"] == "failed" else None

    proc = wait_for(failed, 120, interval=0.1, what=f"{name} failed")
    assert "import" in proc["reason"] and module in proc["reason"], proc["reason"]
    assert error_type in proc["reason"], proc["reason"]
    status_view = proc_view(client, name, allow_failed=True)
    assert status_view["status"] == "failed" and status_view["reason"] == proc["reason"]
    assert status_view["workers"] == 0
    # the other processors keep running
    assert proc_view(client, "proc1")["status"] == "running"
    assert_still_serving(client)

    # a call to the broken processor is accepted and waits in its queue: not failed
    r = client.call(f"{name}.fn")
    pending = client.poll(r.id, wait=1.0)       # a 1 s long poll: nothing happens to it
    assert isinstance(pending, protocol.Pending) and pending.state == "queued"
    record = client.ls_call(r.id)
    assert record["state"] == "queued" and record["attempts"] == 0 and record["error"] is None
    assert {s["name"]: s["depth"] for s in client.ls("sockets")}[f"{name}.fn"] == 1
    assert_still_serving(client, "after bad import")


def test_module_exiting_during_import(fnode: EcdProcess, client: Client, bad_repo: str) -> None:
    client.add_processor("pexit", bad_repo, "bad.exits", concurrency=1)
    client.add_socket("pexit.fn", processor="pexit", function="fn", queue="q1")
    r = client.call("pexit.fn")

    def failed() -> Any:
        view = proc_view(client, "pexit", allow_failed=True)
        return view if view.get("status") == "failed" else None

    try:
        view = wait_for(failed, 6, interval=0.1, what="pexit failed")
        assert "import" in view["reason"] and "bad.exits" in view["reason"], view["reason"]
        assert client.ls_call(r.id)["state"] == "queued"
    finally:
        assert_still_serving(client)


def test_worker_still_importing_is_not_reported_idle(fnode: EcdProcess, client: Client, bad_repo: str) -> None:
    client.add_processor("pslow", bad_repo, "bad.slow", concurrency=1)
    view = wait_for(lambda: (v := proc_view(client, "pslow")) and v["workers"] == 1 and v, 60,
                    interval=0.02, what="pslow worker spawned")
    assert view["status"] == "pending"      # the import takes seconds: not ready yet
    assert view["idle"] == 0 and view["busy"] == 0, view


def test_repo_that_does_not_exist(fnode: EcdProcess, client: Client, tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'no-such-repo.git'}"
    client.add_processor("pmissing", url, "sample.tasks", concurrency=1)
    client.add_socket("missing.do_this", processor="pmissing", function="do_this", queue="q1")

    def failed() -> Any:
        procs = ecctl_json(fnode, "ls", "processors")
        proc = next(p for p in procs if p["name"] == "pmissing")
        return proc if proc["status"] == "failed" else None

    proc = wait_for(failed, 120, interval=0.1, what="pmissing failed")
    assert "cannot clone" in proc["reason"], proc["reason"]
    assert "no-such-repo.git" in proc["reason"], proc["reason"]
    table = run_ecctl(fnode.endpoint, "status")
    assert table.returncode == 0 and "cannot clone" in table.stdout.decode()
    r = client.call("missing.do_this", "x")
    pending = client.poll(r.id, wait=0.5)
    assert isinstance(pending, protocol.Pending) and pending.state == "queued"
    assert_still_serving(client)


# ---------------------------------------------------------------------------- CPU cap


def test_never_more_busy_slots_than_cpus(ecd_factory: Callable[..., EcdProcess], sample_repo: str) -> None:
    node = ecd_factory("cpu1", cpus=1)
    with Client(node.endpoint) as client:
        register_sample(client, sample_repo, concurrency=2)
        wait_for(lambda: proc_view(client, "proc1")["workers"] == 2, 30, what="2 workers")
        handles = [client.call("sample.tasks.sleep", 0.3) for _ in range(4)]
        max_busy = 0

        def all_done() -> bool:
            nonlocal max_busy
            status = client.status()
            proc1 = next(p for p in status["processors"] if p["name"] == "proc1")
            max_busy = max(max_busy, status["busy"], proc1["busy"])
            return all(h.ready() for h in handles)

        wait_for(all_done, 30, interval=0.01, what="4 calls done")
        assert [h.get(timeout=30) for h in handles] == [0.3] * 4
    assert max_busy <= 1
    intervals = []
    for h in handles:
        record = ecctl_json(node, "ls", "call", "--id", h.id)
        times = {e["name"]: e["time"] for e in record["events"]}
        intervals.append((times["prerun"], times["postrun"]))
    intervals.sort()
    for (start_a, end_a), (start_b, end_b) in zip(intervals, intervals[1:]):
        assert end_a <= start_b, f"calls overlapped on a 1-CPU node: {intervals}"


@pytest.mark.parametrize("submit_before_ready", [
    pytest.param(True, id="backlog-at-start"),
    pytest.param(False, id="steady"),
])
def test_backlog_is_shared_by_the_processor_workers(ecd_factory: Callable[..., EcdProcess], sample_repo: str,
                                                    submit_before_ready: bool) -> None:
    """4 equal calls on a processor with 2 workers and 2 CPUs: each worker runs 2 of them."""
    node = ecd_factory("spread", cpus=2)
    with Client(node.endpoint) as client:
        client.add_queue("q1", "direct")
        client.add_processor("proc1", sample_repo, "sample.tasks", concurrency=2)
        client.add_socket("sample.tasks.sleep", processor="proc1", function="sleep", queue="q1")
        if not submit_before_ready:
            wait_for(lambda: proc_view(client, "proc1").get("idle") == 2, 120, what="both workers ready")
        handles = [client.call("sample.tasks.sleep", 0.3) for _ in range(4)]
        assert [h.get(timeout=60) for h in handles] == [0.3] * 4
        per_worker: dict[int, int] = {}
        for h in handles:
            worker = client.ls_call(h.id)["worker"]
            per_worker[worker] = per_worker.get(worker, 0) + 1
        assert sorted(per_worker.values()) == [2, 2], f"calls per worker: {per_worker}"


# ----------------------------------------------------------------------------- SIGTERM


def _submit_sleepers(client: Client, n: int, base: float) -> dict[str, float]:
    """n sleep calls with distinct durations (so each result is recognisable)."""
    return {client.call("sample.tasks.sleep", base + i / 100).id: base + i / 100 for i in range(n)}


def _stop_and_restart(node: EcdProcess, client: Client, within: float) -> None:
    wait_for(lambda: client.status()["busy"] == 2, 30, interval=0.02, what="2 calls running")
    start = time.monotonic()
    os.kill(node.pid, signal.SIGTERM)
    assert node.proc is not None
    try:
        code = node.proc.wait(timeout=within)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"ecd did not exit within {within}s of SIGTERM:\n{node.log()}") from None
    assert code == 0, node.log()
    assert time.monotonic() - start < within
    node.start()


@pytest.mark.timeout(120)
def test_sigterm_lets_running_calls_finish(ecd_factory: Callable[..., EcdProcess], sample_repo: str) -> None:
    node = ecd_factory("term", cpus=2, grace=10.0)
    with Client(node.endpoint) as client:
        register_sample(client, sample_repo)
        expected = _submit_sleepers(client, 5, 1.0)
        _stop_and_restart(node, client, within=10.0)
        for call_id, value in expected.items():
            assert client.result(call_id, timeout=60) == value
        for call_id in expected:
            record = client.ls_call(call_id)
            names = event_names(record)
            assert record["state"] == "done", record
            assert names.count("postrun") == 1, names
            assert record["attempts"] == 1, names     # nothing was interrupted: grace was enough


@pytest.mark.timeout(120)
def test_sigterm_starts_no_new_calls(ecd_factory: Callable[..., EcdProcess], sample_repo: str) -> None:
    node = ecd_factory("term3", cpus=2, grace=10.0)
    with Client(node.endpoint) as client:
        register_sample(client, sample_repo)
        expected = _submit_sleepers(client, 3, 1.0)
        wait_for(lambda: client.status()["busy"] == 2, 30, interval=0.02, what="2 calls running")
        sigterm_at = time.time()
        os.kill(node.pid, signal.SIGTERM)
        assert node.proc is not None and node.proc.wait(timeout=20) == 0
        stopped_at = time.time()
        node.start()
        for call_id, value in expected.items():
            assert client.result(call_id, timeout=60) == value
        for call_id in expected:
            record = client.ls_call(call_id)
            starts = [e["time"] for e in record["events"] if e["name"] == "prerun"]
            assert not [t for t in starts if sigterm_at < t < stopped_at], (
                f"call {call_id} started {min(starts) - sigterm_at:.2f}s after SIGTERM, while stopping")


@pytest.mark.timeout(120)
def test_sigterm_requeues_calls_past_the_grace(ecd_factory: Callable[..., EcdProcess], sample_repo: str) -> None:
    node = ecd_factory("term2", cpus=2, grace=0.5)
    with Client(node.endpoint) as client:
        register_sample(client, sample_repo)
        expected = _submit_sleepers(client, 3, 2.0)
        _stop_and_restart(node, client, within=0.5 + 10)
        for call_id, value in expected.items():
            assert client.result(call_id, timeout=60) == value
        requeued = 0
        for call_id in expected:
            record = client.ls_call(call_id)
            names = event_names(record)
            assert record["state"] == "done", record
            assert names.count("postrun") == 1, names
            # an interrupted attempt is not counted against the call's retries
            assert record["attempts"] == 1, record["events"]
            if names.count("prerun") == 2:
                requeued += 1
                assert any(e["name"] == "queued" and "Requeued" in (e["note"] or "") for e in record["events"])
        assert requeued == 2, "the two calls running at SIGTERM should have been requeued"


# ------------------------------------------------------------------- more worker failures


def test_idle_worker_killed_is_respawned(fnode: EcdProcess, client: Client) -> None:
    view = wait_for(lambda: (v := proc_view(client, "proc1")) and v["idle"] == 2 and v, 30, what="proc1 idle")
    victim = view["pids"][0]
    os.kill(victim, signal.SIGKILL)
    wait_workers_respawned(client, "proc1", [victim], 2)
    for i in range(4):
        assert client.call("sample.tasks.add_two", i, 1).get(timeout=30) == i + 1


def _gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (reaped, or a zombie waiting for its new parent)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


@pytest.mark.timeout(120)
def test_kill9_daemon_workers_die_and_calls_resume(ecd_factory: Callable[..., EcdProcess], sample_repo: str) -> None:
    node = ecd_factory("k9", cpus=2)
    with Client(node.endpoint) as client:
        register_sample(client, sample_repo)
        expected = {client.call("sample.tasks.sleep", 1.0 + i / 100).id: 1.0 + i / 100 for i in range(4)}
        wait_for(lambda: client.status()["busy"] == 2, 30, interval=0.02, what="2 calls running")
        workers = proc_view(client, "proc1")["pids"]
        node.kill9()
        # no worker outlives its daemon (else a call could run twice at once after a restart)
        wait_for(lambda: all(_gone(pid) for pid in workers), 30, interval=0.05, what="workers gone")
        node.start()
        for call_id, value in expected.items():
            assert client.result(call_id, timeout=60) == value
        for call_id in expected:
            record = client.ls_call(call_id)
            assert record["state"] == "done"
            assert event_names(record).count("postrun") == 1, record["events"]


# ------------------------------------------------------------------------- oversize result

BIG_TASKS = '''
import time


def make(n, delay=0.0):
    time.sleep(delay)
    return b"x" * n


def small():
    return "small"
'''


@pytest.mark.timeout(120)
def test_result_over_protocol_limit_fails_cleanly(ecd_factory: Callable[..., EcdProcess], tmp_path: Path) -> None:
    url = make_git_repo(EXAMPLE, tmp_path / "bigrepo", extra={"big/__init__.py": "", "big/tasks.py": BIG_TASKS})
    node = ecd_factory("big", cpus=2)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        with Client(node.endpoint) as client:
            client.add_queue("q1", "direct")
            client.add_processor("pbig", url, "big.tasks", concurrency=1, retries=0)
            client.add_socket("big.make", processor="pbig", function="make", queue="q1")
            client.add_socket("big.small", processor="pbig", function="small", queue="q1")
            wait_for(lambda: proc_view(client, "pbig").get("status") == "running", 120, what="pbig running")
            # the function waits a little so that our long-polling GET is there when it ends
            r = client.call("big.make", protocol.MAX_MESSAGE_BYTES + 1024, 0.5)
            sock.connect(node.endpoint)
            sock.send_multipart(protocol.encode(protocol.Get(call_id=r.id, wait_ms=60_000, request_id=b"g")))

            def answer() -> Any:
                if node.proc is not None and node.proc.poll() is not None:
                    return "ecd exited"
                return protocol.decode(sock.recv_multipart()) if sock.poll(50) else None

            reply = wait_for(answer, 60, interval=0, what="an answer to the GET")
            assert reply != "ecd exited", f"ecd died on an oversize result:\n{node.log()[-4000:]}"
            if isinstance(reply, protocol.Result):
                assert not reply.ok and reply.error, reply
            else:
                assert isinstance(reply, protocol.Error) and reply.code == protocol.E_TOO_LARGE, reply
            # the node still serves, this processor included
            assert client.call("big.small").get(timeout=30) == "small"
            with pytest.raises((RemoteError, ServerError)) as info:
                client.result(r.id, timeout=30)
            assert getattr(info.value, "code", 0) != protocol.E_INTERNAL
    finally:
        sock.close(linger=0)
        ctx.term()
