"""``ecctl listen`` and ``Client.listen`` on a real node: every lifecycle event of every call of
a run, worker log lines with the call that printed them, results, and an adaptor function that
receives each event."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from ecctl import Client, Function
from tests.conftest import ROOT, EcdProcess, sample_node_for_module
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def listen_node(venv_cache: Path, sample_repo: str) -> Iterator[EcdProcess]:
    with sample_node_for_module(venv_cache, sample_repo, "ec-listen-") as node:
        with Client(node.endpoint, timeout=30) as c:
            c.add("plug", name="listen-plug", source="sample.tasks.do_something", target="sample.tasks.do_this",
                  queue="q1")
        yield node


class Listener:
    """A background ``Client.listen`` collecting events."""

    def __init__(self, endpoint: str, name: str, channel: str) -> None:
        self.events: list[dict[str, Any]] = []
        self.client = Client(endpoint, timeout=30)
        self.thread = threading.Thread(target=self._run, args=(name, channel), daemon=True)
        self.thread.start()

    def _run(self, name: str, channel: str) -> None:
        for event in self.client.listen(name, channel, ttl=2.0, timeout=15):
            self.events.append(event)


def _listeners(node: EcdProcess) -> int:
    with Client(node.endpoint, timeout=10) as c:
        return c.status()["listen"]["listeners"]


def _listening(node: EcdProcess, n: int) -> None:
    wait_for(lambda: _listeners(node) >= n, 10, what=f"{n} listener(s)")


def test_a_listener_sees_every_event_of_a_run(listen_node: EcdProcess) -> None:
    base = _listeners(listen_node)
    tasks = Listener(listen_node.endpoint, "proc1", "task")
    logs = Listener(listen_node.endpoint, "sample.tasks.do_something", "log")
    results = Listener(listen_node.endpoint, "q1", "result")
    _listening(listen_node, base + 3)
    with Client(listen_node.endpoint, timeout=30) as c:
        root = Function("sample.tasks.do_something", client=c)("heard")
        root.get(30)
        [child] = wait_for(lambda: c.ls_call(root.id)["children"], 10, what="the plug's call")
        c.result(child, timeout=30)
        run = c.ls_call(root.id, flow=True)["calls"]
        assert {x["id"] for x in run} == {root.id, child}
        for call in run:  # every event of every call of the run, in order, as the log kept them
            kept = [e["name"] for e in c.ls_call(call["id"])["events"]]
            wait_for(lambda: [e["event"] for e in tasks.events if e["call_id"] == call["id"]] == kept, 10,
                     what=f"the events of {call['id']}")
            assert kept[0] == "received" and kept[-1] == "postrun" and "prerun" in kept
    first = next(e for e in tasks.events if e["call_id"] == root.id)
    assert (first["socket"], first["processor"], first["queue"], first["node"]) == \
        ("sample.tasks.do_something", "proc1", "q1", c.status()["node"])
    wait_for(lambda: any(e["call_id"] == root.id for e in logs.events), 10, what="the worker's line")
    line = next(e for e in logs.events if e["call_id"] == root.id)
    assert line["line"].startswith("Doing something with 'heard'") and line["stream"] == "stdout"
    wait_for(lambda: {e["call_id"] for e in results.events} >= {root.id, child}, 10, what="both results")
    by_call = {e["call_id"]: e for e in results.events}
    assert by_call[child]["value"] == "Do this: Do something: heard" and by_call[child]["ok"] is True


def test_ecctl_listen_prints_json_lines_and_calls_an_adaptor(listen_node: EcdProcess, tmp_path: Path) -> None:
    (tmp_path / "myadaptor.py").write_text(
        "import json\n"
        "def receive(event):\n"
        f"    with open({str(tmp_path / 'got.jsonl')!r}, 'a') as out:\n"
        "        out.write(json.dumps(event) + '\\n')\n")
    env = {"PYTHONPATH": str(ROOT), "EC_ENDPOINT": listen_node.endpoint, "PATH": "/usr/bin:/bin"}
    base = _listeners(listen_node)
    printing = subprocess.Popen([sys.executable, "-m", "ecctl", "listen", "-n", "sample.tasks.echo", "-c", "result",
                                 "--count", "2", "--for", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env, cwd=ROOT)
    adapted = subprocess.Popen([sys.executable, "-m", "ecctl", "listen", "--name", "sample.tasks.echo",
                                "--channel", "task", "--adaptor", "myadaptor.receive", "--count", "4", "--for", "60"],
                               stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        _listening(listen_node, base + 2)
        with Client(listen_node.endpoint, timeout=30) as c:
            calls = [c.call("sample.tasks.echo", i) for i in range(2)]
            for call in calls:
                call.get(30)
        out, err = printing.communicate(timeout=60)
        assert printing.returncode == 0, err
        assert err.startswith("Listening to sample.tasks.echo (result)")
        lines = [json.loads(line) for line in out.splitlines()]
        assert [line["value"] for line in lines] == [{"args": [0], "kwargs": {}}, {"args": [1], "kwargs": {}}]
        assert adapted.wait(timeout=60) == 0, adapted.stderr.read() if adapted.stderr else ""
        got = [json.loads(line) for line in (tmp_path / "got.jsonl").read_text().splitlines()]
        assert [e["event"] for e in got][:2] == ["received", "queued"] and len(got) == 4
    finally:
        for proc in (printing, adapted):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_bad_adaptor_is_a_usage_error(listen_node: EcdProcess) -> None:
    out = subprocess.run([sys.executable, "-m", "ecctl", "listen", "-n", "x", "-c", "task", "--adaptor", "no_such.mod.fn"],
                         capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "EC_ENDPOINT": listen_node.endpoint},
                         cwd=ROOT, timeout=30)
    assert out.returncode == 2 and "cannot import a module of 'no_such.mod.fn'" in out.stderr
