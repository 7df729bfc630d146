"""Data flows on a three-node mesh: the seed's workflow end to end, a workflow that outlives the
``kill -9`` of the node that owns it, a cron socket hosted by every node firing once per tick
(also across the loss of the node that fires), and listening to every node from one."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import pytest

from ecctl import Client, Function, funnel, parallel, pipeline
from tests.e2e.test_workflows import model
from tests.mesh import MeshNodes, sample_mesh
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def mesh(venv_cache: Path, sample_repo: str) -> Iterator[MeshNodes]:
    with sample_mesh("ec-meshflows-", venv_cache, sample_repo) as nodes:
        yield nodes


def test_the_seed_workflow_runs_on_the_mesh(mesh: MeshNodes) -> None:
    client = mesh.tcp_client(mesh.all_endpoints(first=1), timeout=60)
    do_something = Function("sample.tasks.do_something", client=client).p
    _pipeline = pipeline([do_something("One"), do_something("Two"),
                          parallel([do_something("Four"), do_something("Five")]), do_something("Three")])
    _parallel = parallel([_pipeline, do_something("Six"), do_something("Seven")])
    _funnel = funnel([do_something("Eight"), _parallel, do_something("Nine")])
    handle = _funnel(do_something("Four"))
    expected = model(funnel(_funnel.tasks, do_something("Four")))
    assert handle.get(60) == expected
    for i in range(3):  # one result for the workflow, whichever node is asked
        with mesh.client(i, timeout=30) as other:
            assert other.result(handle.id, timeout=30) == expected


def test_a_workflow_survives_the_kill_of_its_owner(mesh: MeshNodes) -> None:
    client = mesh.tcp_client(mesh.all_endpoints(first=1), timeout=60)
    sleep = Function("sample.tasks.sleep", client=client).p
    echo = Function("sample.tasks.echo", client=client).p
    handle = pipeline([sleep(0.5), parallel([sleep(), sleep()]), echo("end")])()  # sleep(0.5) twice, then echo
    assert handle.node == "n2"
    wait_for(lambda: len(client.ls_call(handle.id, flow=True)["calls"]) >= 3, 30, what="the parallel started")
    mesh.nodes[1].kill9()
    try:
        expected = {"args": [[0.5, 0.5], "end"], "kwargs": {}}
        assert handle.get(90) == expected
        for i in (0, 2):
            with mesh.client(i, timeout=60) as other:
                assert other.result(handle.id, timeout=60) == expected
    finally:
        mesh.nodes[1].start()
        mesh.wait_formed()


def _tick_times(client: Client, socket: str) -> list[tuple[float, str]]:
    calls = client.ls_calls(rows=1000, socket=socket)["calls"]
    return sorted((datetime.fromisoformat(c["via"].split(" ", 1)[1].replace("Z", "+00:00")).timestamp(), c["id"])
                  for c in calls if c.get("via"))


def test_a_cron_socket_on_every_node_fires_once_per_tick(mesh: MeshNodes) -> None:
    with mesh.client(0, timeout=60) as a:
        a.add_socket("mesh.cron", processor="proc1", function="noop", queue="q1")
        a.update("socket", "mesh.cron", cron="* * * * * *")  # every second (seconds last)
        wait_for(lambda: len(_tick_times(a, "mesh.cron")) >= 5, 60, what="five ticks")
    leader = next(i for i in range(3) if mesh.status(i)["ticks"]["leader"])
    assert sum(1 for i in range(3) if mesh.status(i)["ticks"]["leader"]) == 1
    mesh.nodes[leader].kill9()  # the node that fires: another one takes over the ticks
    survivor = (leader + 1) % 3
    with mesh.client(survivor, timeout=60) as b:
        before = len(_tick_times(b, "mesh.cron"))
        wait_for(lambda: len(_tick_times(b, "mesh.cron")) >= before + 5, 60, what="ticks after the loss")
        b.update("socket", "mesh.cron", cron=None)
        ticks = _tick_times(b, "mesh.cron")
    mesh.nodes[leader].start()
    mesh.wait_formed()
    times = [t for t, _ in ticks]
    fired = mesh.fired_ticks("mesh.cron")
    assert len(fired) == len(set(fired)), "a tick was fired by two nodes"
    assert len(fired) >= len(times) and len(times) == len(set(times))
    assert all(float(t).is_integer() for t in times)
    gaps = [b - a for a, b in zip(times, times[1:])]
    # one call per second, except the seconds the mesh needed to notice the loss (their ticks
    # fire once, as one catch-up call)
    assert sum(1 for g in gaps if g > 1) <= 1 and max(gaps) <= 8, gaps


def test_listening_on_one_node_hears_every_node(mesh: MeshNodes) -> None:
    events: list[dict[str, Any]] = []
    stop = threading.Event()

    def listen() -> None:
        with mesh.client(0, timeout=30) as listener:
            for event in listener.listen("sample.tasks.echo", "result", ttl=3.0, timeout=60):
                events.append(event)
                if stop.is_set():
                    return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    wait_for(lambda: mesh.status(2)["listen"]["remote_listeners"] >= 1, 30, what="the subscription on n3")
    with mesh.client(2, timeout=30) as c, mesh.client(1, timeout=30) as b:
        calls = [c.call("sample.tasks.echo", "from n3"), b.call("sample.tasks.echo", "from n2")]
        for call in calls:
            call.get(30)
    wait_for(lambda: {e["call_id"] for e in events} >= {call.id for call in calls}, 30, what="both results heard")
    stop.set()
    by_call = {e["call_id"]: e for e in events}
    assert {by_call[call.id]["node"] for call in calls} == {"n3", "n2"}
    assert by_call[calls[0].id]["value"] == {"args": ["from n3"], "kwargs": {}}
    thread.join(timeout=30)


def test_a_stream_run_on_another_node_reaches_its_reader_with_back_pressure(mesh: MeshNodes, sample_repo: str) -> None:
    """The processor runs only on n2; the call is owned by n1 (leased to n2): its items come
    through n1, as they are made, held back by the reader, and the plugs fire per item at n1."""
    with mesh.client(0, timeout=60) as a:
        a.add_processor("streamer", sample_repo, "sample.tasks", concurrency=1)
        a.add_socket("remote.produce", processor="streamer", function="produce", queue="q1")
        a.add_socket("remote.echo", processor="proc1", function="echo", queue="q1")
        a.add("deployment", name="streamer-on-n2", processor="streamer", node="n2", cpus=1)
        a.add("plug", name="remote-per-item", source="remote.produce", target="remote.echo", queue="q1")
    with mesh.client(1, timeout=60) as b:
        wait_for(lambda: any(p["name"] == "streamer" and p["status"] == "running"
                             for p in b.status()["processors"]), 180, what="streamer running on n2")
    with mesh.client(0, timeout=60) as a:
        produce = Function("remote.produce", client=a)
        seen = []
        for item in produce.stream(40):
            seen.append((item["i"], item["at"], time.time()))
            time.sleep(0.02)  # the slow reader under test
        assert [i for i, _, _ in seen] == list(range(40))
        received = [got for _, _, got in seen]
        for i, made, _ in seen:
            if i >= 17:  # the window (16) plus the item in flight
                assert made >= received[i - 17], (i, made, received[i - 17])
        calls = a.ls_calls(rows=5, socket="remote.produce")["calls"]
        record = a.ls_call(calls[0]["id"], result=True)
        assert record["node"] == "n1" and record["worker"] == "n2"  # owned by n1, leased to n2
        assert [x["i"] for x in record["result"]] == list(range(40))
        assert len(record["children"]) == 40
        assert a.result(record["children"][39], timeout=30) == {"args": [record["result"][39]], "kwargs": {}}
