"""Tests for ecd.workers and ecd.runner with real virtualenvs and real subprocess workers."""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import pytest

from ecd.repos import PreparedCode
from ecd.workers import (Done, Exited, ImportFailed, Item, ProcessRegistry, Raised, Ready, StreamEnd, WorkerEvent,
                         WorkerProcess, process_start_time)
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]
PROCESSOR = "tproc"


def pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def pump(worker: WorkerProcess, until: Callable[[list[WorkerEvent]], bool],
         timeout: float = 30.0) -> list[WorkerEvent]:
    """Poll the worker's fds like the node does until ``until(events)`` or Exited."""
    events: list[WorkerEvent] = []
    deadline = time.monotonic() + timeout
    while not until(events):
        if any(isinstance(e, Exited) for e in events):
            break
        left = deadline - time.monotonic()
        assert left > 0, f"timed out; events so far: {events}"
        fds = [fd for fd in [worker.channel_fd, *worker.output_fds] if fd >= 0]
        readable, _, _ = select.select(fds, [], [], left)
        for fd in readable:
            if fd == worker.channel_fd:
                events.extend(worker.read_events())
            elif fd in worker.output_fds:
                worker.read_output(fd)
    return events


def has(kind: type) -> Callable[[list[WorkerEvent]], bool]:
    return lambda events: any(isinstance(e, kind) for e in events)


def alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    try:
        wait_for(lambda: not alive(pid), timeout, what=f"pid {pid} to exit")
    except AssertionError:
        return False
    return True


@pytest.fixture
def registry(tmp_path: Path) -> ProcessRegistry:
    return ProcessRegistry(tmp_path / "workers.json")


@pytest.fixture
def make_worker(code_tasks: PreparedCode, code_support_dir: Path,
                registry: ProcessRegistry) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def make(module: str = "pkg.tasks", ready: bool = True) -> WorkerProcess:
        w = WorkerProcess(processor=PROCESSOR, slot=len(started), code=code_tasks,
                          module=module, support_dir=code_support_dir, registry=registry)
        w.spawn()
        started.append(w)
        if ready:
            events = pump(w, has(Ready))
            assert events == [Ready(w.pid)], events
        return w

    yield make
    for w in started:
        w.kill()
        assert w.returncode is not None


def call(worker: WorkerProcess, call_id: str, function: str, *args: object,
         **kwargs: object) -> WorkerEvent:
    worker.send_call(call_id, function, pack(list(args)), pack(kwargs))
    events = pump(worker, lambda evs: bool(evs))
    assert len(events) == 1, events
    return events[0]


def test_call_roundtrip(make_worker, code_tasks: PreparedCode, registry: ProcessRegistry) -> None:
    t0 = time.monotonic()
    w = make_worker()
    print(f"\nworker spawn to Ready: {time.monotonic() - t0:.3f}s")
    assert registry.pids() == [w.pid]
    assert call(w, "c1", "add", 2, 3) == Done("c1", pack(5))
    assert call(w, "c2", "add", 2, b=40) == Done("c2", pack(42))
    # a generator streams: its first item goes unasked, the others as ecd grants credit
    assert call(w, "c3", "numbers", 3) == Item("c3", 0, pack(0))
    w.send_credit("c3", 3)
    assert pump(w, lambda evs: len(evs) >= 3) == [Item("c3", 1, pack(1)), Item("c3", 2, pack(2)), StreamEnd("c3", 3)]
    where = call(w, "c4", "where")
    assert isinstance(where, Done)
    info = msgpack.unpackb(where.value, raw=False)
    assert info["cwd"] == str(code_tasks.root)
    assert info["prefix"] == str(code_tasks.venv)
    assert info["pid"] == w.pid
    assert os.getpgid(w.pid) == w.pid  # own session and group
    w.stop(grace=5)
    assert w.returncode == 0
    assert registry.pids() == []
    assert json.loads(registry.path.read_text()) == {}


def test_print_goes_to_logs_not_channel(make_worker, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=f"ecd.worker.{PROCESSOR}")
    w = make_worker()
    assert call(w, "p1", "chatty", 50) == Done("p1", pack(50))
    assert call(w, "p2", "add", 1, 1) == Done("p2", pack(2))  # channel still in sync
    deadline = time.monotonic() + 10
    while "to stderr" not in caplog.text or "line 49 from the worker" not in caplog.text:
        assert time.monotonic() < deadline, caplog.text
        readable, _, _ = select.select(w.output_fds, [], [], 0.2)
        for fd in readable:
            w.read_output(fd)
    records = [r for r in caplog.records if r.name == f"ecd.worker.{PROCESSOR}"]
    assert any(f"[{w.pid}] line 0 from the worker" == r.getMessage() for r in records)
    assert all(r.levelno == logging.INFO for r in records)


def test_user_exception_is_raised_event(make_worker) -> None:
    w = make_worker()
    ev = call(w, "r1", "boom", "it broke")
    assert isinstance(ev, Raised)
    assert (ev.call_id, ev.type, ev.message) == ("r1", "ValueError", "it broke")
    assert "def boom" in ev.traceback or "boom" in ev.traceback
    assert "Traceback" in ev.traceback
    ev = call(w, "r2", "no_such_function")
    assert isinstance(ev, Raised) and ev.type == "AttributeError"
    assert "no_such_function" in ev.message
    ev = call(w, "r3", "unserialisable")
    assert isinstance(ev, Raised) and ev.type == "TypeError"
    assert "result of unserialisable is not serialisable" in ev.message
    assert call(w, "r4", "add", 1, 2) == Done("r4", pack(3))  # still usable


def test_import_failure(make_worker) -> None:
    w = make_worker("pkg.broken", ready=False)
    events = pump(w, has(Exited))
    assert len(events) == 2, events
    failed, exited = events
    assert isinstance(failed, ImportFailed)
    assert failed.type == "RuntimeError" and failed.message == "broken on import"
    assert "broken.py" in failed.traceback
    assert exited == Exited(3)
    w2 = make_worker("pkg.does_not_exist", ready=False)
    events = pump(w2, has(Exited))
    assert isinstance(events[0], ImportFailed) and events[0].type == "ModuleNotFoundError"


def test_sigkill_mid_call(make_worker, registry: ProcessRegistry) -> None:
    w = make_worker()
    w.send_call("k1", "sleepy", pack([60]), pack({}))
    os.kill(w.pid, signal.SIGKILL)
    events = pump(w, has(Exited))
    assert events == [Exited(-signal.SIGKILL)]
    assert w.channel_fd == -1 and w.output_fds == []
    assert registry.pids() == []
    assert w.read_events() == []


def test_stop_busy_worker_kills_after_grace(make_worker) -> None:
    w = make_worker()
    w.send_call("s1", "sleepy", pack([60]), pack({}))
    t0 = time.monotonic()
    w.stop(grace=0.5)
    assert time.monotonic() - t0 < 10
    assert w.returncode == -signal.SIGKILL


def test_kill_takes_the_whole_group(make_worker) -> None:
    w = make_worker()
    ev = call(w, "g1", "spawn_child")
    assert isinstance(ev, Done)
    child = msgpack.unpackb(ev.value)
    assert alive(child)
    w.kill()
    assert wait_gone(child)


@pytest.mark.parametrize("garbage", [b"\x00\x00\x00\x03\xc1\xc1\xc1", b"\xff\xff\xff\xff",
                                     b"\x00\x00\x00\x02\x91\x05", b"\x00\x00\x00\x01\x05"])
def test_garbage_on_channel_kills_worker(make_worker, garbage: bytes) -> None:
    w = make_worker()
    w.send_call("x1", "corrupt_channel", pack([garbage]), pack({}))
    events = pump(w, has(Exited))
    assert events == [Exited(-signal.SIGKILL)]
    assert not alive(w.pid)


PARENT_SCRIPT = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from ecd.repos import PreparedCode
from ecd.workers import ProcessRegistry, Ready, WorkerProcess
cfg = json.loads(sys.argv[2])
code = PreparedCode(python=Path(cfg["python"]), root=Path(cfg["root"]), commit=cfg["commit"],
                    venv=Path(cfg["venv"]))
w = WorkerProcess(processor="orphan", slot=0, code=code, module="pkg.tasks",
                  support_dir=Path(cfg["support"]), registry=ProcessRegistry(Path(cfg["reg"])))
w.spawn()
deadline = time.monotonic() + 30
events = []
while not events and time.monotonic() < deadline:
    import select
    select.select([w.channel_fd], [], [], 1)
    events = w.read_events()
print(w.pid, type(events[0]).__name__, flush=True)
sys.stdin.read()
"""


def test_worker_dies_with_its_parent(code_tasks: PreparedCode, code_support_dir: Path,
                                     tmp_path: Path) -> None:
    cfg = {"python": str(code_tasks.python), "root": str(code_tasks.root),
           "commit": code_tasks.commit, "venv": str(code_tasks.venv),
           "support": str(code_support_dir), "reg": str(tmp_path / "workers.json")}
    parent = subprocess.Popen([sys.executable, "-c", PARENT_SCRIPT, str(ROOT), json.dumps(cfg)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    worker_pid = 0
    try:
        ready, _, _ = select.select([parent.stdout], [], [], 60)
        assert ready, "parent did not report its worker"
        line = parent.stdout.readline().split()
        assert line[1] == "Ready", line
        worker_pid = int(line[0])
        assert alive(worker_pid)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        assert wait_gone(worker_pid), "worker survived its parent"
        # the registry still names it: a restarted ecd would find nothing left to kill
        assert ProcessRegistry(tmp_path / "workers.json").kill_orphans() == []
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=10)
        if worker_pid and alive(worker_pid):
            os.killpg(worker_pid, signal.SIGKILL)
        if parent.stdin:
            parent.stdin.close()
        if parent.stdout:
            parent.stdout.close()


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"],
                            start_new_session=True)


def test_kill_orphans(tmp_path: Path) -> None:
    path = tmp_path / "workers.json"
    orphan, stranger = _sleeper(), _sleeper()
    try:
        reg = ProcessRegistry(path)
        reg.add(orphan.pid)
        reg.add(stranger.pid)
        data = json.loads(path.read_text())
        assert data[str(orphan.pid)] == {"pgid": orphan.pid,
                                         "start": process_start_time(orphan.pid)}
        data[str(stranger.pid)]["start"] -= 1  # as if the pid had been reused since
        path.write_text(json.dumps(data))
        killed = ProcessRegistry(path).kill_orphans()
        assert killed == [orphan.pid]
        assert orphan.wait(timeout=10) == -signal.SIGKILL
        assert stranger.poll() is None  # a reused pid is never killed
        assert json.loads(path.read_text()) == {}
        assert ProcessRegistry(path).kill_orphans() == []
    finally:
        for p in (orphan, stranger):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)


def test_kill_orphans_group_without_leader(tmp_path: Path) -> None:
    path = tmp_path / "workers.json"
    script = ("import subprocess, sys, time\n"
              "p = subprocess.Popen([sys.executable, '-c', 'import signal; signal.pause()'])\n"
              "print(p.pid, flush=True)\n")
    leader = subprocess.Popen([sys.executable, "-c", script + "import signal; signal.pause()\n"],
                              start_new_session=True, stdout=subprocess.PIPE, text=True)
    member = 0
    try:
        member = int(leader.stdout.readline())
        ProcessRegistry(path).add(leader.pid)
        os.kill(leader.pid, signal.SIGKILL)
        leader.wait(timeout=10)
        assert alive(member)
        assert ProcessRegistry(path).kill_orphans() == [leader.pid]
        assert wait_gone(member)
    finally:
        if leader.poll() is None:
            leader.kill()
            leader.wait(timeout=10)
        if member and alive(member):
            os.kill(member, signal.SIGKILL)
        leader.stdout.close()


def test_runner_imports_only_stdlib_and_msgpack() -> None:
    import ast

    from ecd.workers import RUNNER_PATH

    tree = ast.parse(RUNNER_PATH.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    names.discard("__future__")
    assert names - {"msgpack"} <= set(sys.stdlib_module_names), names
