"""Streaming sockets and back-pressure end to end: a generator's items reach Python and
``ecctl run --stream`` as they are made; a slow reader holds the generator back; plugs fire per
item, never pushing a queue past its max_length; a full queue refuses calls with a clear error."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from ecctl import Client, Function, RemoteError, ServerError
from tests.conftest import ROOT, EcdProcess, sample_node_for_module
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

#: How far a producer may run ahead of its slowest reader (ecd.streams.WINDOW), plus the item
#: in flight while a grant travels.
AHEAD = 16 + 1


@pytest.fixture(scope="module")
def stream_node(venv_cache: Path, sample_repo: str) -> Iterator[EcdProcess]:
    with sample_node_for_module(venv_cache, sample_repo, "ec-streams-") as node:
        yield node


@pytest.fixture
def client(stream_node: EcdProcess) -> Iterator[Client]:
    with Client(stream_node.endpoint, timeout=30) as c:
        yield c


def test_items_come_as_they_are_made(client: Client) -> None:
    count = Function("sample.tasks.count", client=client)
    arrivals = []
    started = time.monotonic()
    for item in count.stream(4, 0.3):
        arrivals.append((item, time.monotonic() - started))
    assert [item for item, _ in arrivals] == [0, 1, 2, 3]
    # the first item arrived long before the generator ended (1.2 s of sleeps)
    assert arrivals[0][1] < arrivals[-1][1] - 0.6
    # the call's result is the list of its items
    assert count(3).get(30) == [0, 1, 2]
    # a call that is not a generator streams its one result
    assert list(Function("sample.tasks.do_this", client=client).stream("x")) == ["Do this: x"]


def test_ecctl_run_stream_prints_a_line_per_item(stream_node: EcdProcess) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "ecctl", "run", "--stream", "sample.tasks.count", "--data", "[3, 0.4]"],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={"PYTHONPATH": str(ROOT), "EC_ENDPOINT": stream_node.endpoint, "PATH": "/usr/bin:/bin"})
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # printed while the generator still runs
        assert first == "0\n" and proc.poll() is None
        assert proc.stdout.read() == "1\n2\n"
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_slow_reader_holds_the_generator_back(client: Client) -> None:
    seen: list[tuple[int, float, float]] = []
    for item in Function("sample.tasks.produce", client=client).stream(80):
        seen.append((item["i"], item["at"], time.time()))
        time.sleep(0.02)  # the slow consumer under test (not a synchronisation)
    assert [i for i, _, _ in seen] == list(range(80))
    # item i was made only after the reader had received item i - AHEAD: the producer never ran
    # more than the window ahead of it
    received = [got for _, _, got in seen]
    for i, made, _ in seen:
        if i >= AHEAD:
            assert made >= received[i - AHEAD], (i, made, received[i - AHEAD])


def test_plugs_fire_per_item_within_the_target_queues_max_length(client: Client) -> None:
    client.add_queue("bounded", "direct")
    client.update("queue", "bounded", max_length=3)
    client.add_socket("bounded.slow", processor="proc1", function="slow_echo", queue="bounded")
    client.add("plug", name="per-item", source="sample.tasks.count", target="bounded.slow", queue="q1")
    try:
        handle = Function("sample.tasks.count", client=client)(12)
        depths = []
        while client.ls_call(handle.id)["state"] != "done":
            depths.append(next(q["depth"] for q in client.ls("queues") if q["name"] == "bounded"))
        assert handle.get(30) == list(range(12))
        assert max(depths) <= 3, depths
        children = client.ls_call(handle.id)["children"]
        assert len(children) == 12  # one plug call per item (each takes 0.1 s)
        results = sorted(client.result(child, timeout=60) for child in children)
        assert results == list(range(12))
        # a full queue refuses new calls with a clear error instead of growing
        fillers = [client.call("bounded.slow", i, 0.5) for i in range(3)]
        with pytest.raises(ServerError) as full:
            for i in range(3):
                client.call("bounded.slow", i, 0.5)
        assert full.value.code == 429 and "queue 'bounded' is full" in full.value.reason
        for filler in fillers:
            filler.get(30)
    finally:
        client.delete("plug", "per-item")


def test_a_failing_generator_gives_its_items_then_its_error(client: Client) -> None:
    with pytest.raises(RemoteError, match="ValueError"):
        list(Function("sample.tasks.count", client=client).stream("x"))
    wait_for(lambda: client.status()["streams"]["streaming"] == 0, 10, what="no stream left in memory")
