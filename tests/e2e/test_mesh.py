"""The mesh end to end: three real ecd processes on 127.0.0.1-3, each with its own data dir and
log, one shared topology; calls replicated to two nodes, leased to idle peers, taken over when
a node is killed with SIGKILL, drained, and waiting for the only node hosting their processor.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from ecctl import Client
from tests.conftest import processor_view, run_ecctl
from tests.e2e.history import ANY, History, check
from tests.mesh import MeshNodes, sample_mesh
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def mesh(venv_cache: Path, sample_repo: str) -> Iterator[MeshNodes]:
    """Three nodes in one mesh with the example processor running on each."""
    with sample_mesh("ec-mesh-", venv_cache, sample_repo) as nodes:
        yield nodes


def _views(nodes: MeshNodes, i: int) -> dict[str, dict[str, Any]]:
    out = run_ecctl(nodes.nodes[i].endpoint, "ls", "nodes", "--json")
    assert out.returncode == 0, out.stderr.decode()
    import json
    return {row["name"]: row for row in json.loads(out.stdout)}


def test_ls_nodes_shows_every_member_and_a_killed_one_goes_dead(mesh: MeshNodes) -> None:
    views = _views(mesh, 1)
    assert set(views) == {"n1", "n2", "n3"}
    for name, row in views.items():
        assert row["state"] == "alive", row
        assert row["cpus"] == 2
        for key in ("load", "memory", "disk"):
            assert 0.0 <= row[key] <= 100.0, (name, key, row)
        assert row["endpoint"].startswith("tcp://127.0.0.")
    mesh.nodes[2].kill9()
    wait_for(lambda: _views(mesh, 0)["n3"]["state"] == "dead", 15, what="n3 dead as seen from n1")
    assert _views(mesh, 0)["n2"]["state"] == "alive"


def test_a_call_survives_the_kill_of_the_node_that_accepted_it(mesh: MeshNodes) -> None:
    """ACCEPTED means two nodes hold the call: with its owner killed mid-run, another node runs
    it and the client, listing every endpoint, gets the result by itself."""
    client = mesh.tcp_client(mesh.all_endpoints(first=1), timeout=60)
    calls = [client.call("sample.tasks.token", 1.0) for _ in range(6)]
    mesh.nodes[1].kill9()
    started = time.monotonic()
    results = [call.get(timeout=60) for call in calls]
    assert all(isinstance(r, str) for r in results)
    assert time.monotonic() - started < 30
    taken = sum(mesh.status(i)["replication"]["taken_over"] for i in (0, 2))
    assert taken >= 1  # at least the calls still queued at the lost node were taken over
    # every node that answers gives the same result for each call
    for i in (0, 2):
        with mesh.client(i, timeout=30) as other:
            assert [other.result(call.id, timeout=30) for call in calls] == results


def test_load_spreads_over_the_nodes_hosting_the_processor(mesh: MeshNodes) -> None:
    """A backlog submitted to one node keeps the idle peers busy too (they take leases)."""
    with mesh.client(0, timeout=60) as client:
        calls = [client.call("sample.tasks.sleep", 0.4) for _ in range(18)]
        for call in calls:
            call.get(timeout=60)
        runners = {client.ls_call(call.id)["worker"] for call in calls}
    # the owner's own workers are pids; a call leased to a peer names that node
    assert {"n2", "n3"} & {r for r in runners if isinstance(r, str)}, runners


def test_calls_wait_for_the_only_node_hosting_their_processor(mesh: MeshNodes, sample_repo: str) -> None:
    with mesh.client(0, timeout=60) as client:
        client.add_processor("pinned", sample_repo, "sample.tasks", concurrency=1)
        client.add_socket("pinned.echo", processor="pinned", function="echo", queue="q1")
        client.add("deployment", name="pinned-on-n2", processor="pinned", node="n2", cpus=1)
    with mesh.client(1, timeout=60) as b:
        wait_for(lambda: processor_view(b, "pinned").get("status") == "running", 180, what="pinned running on n2")
    mesh.nodes[1].terminate()
    wait_for(lambda: mesh.states(0).get("n2") == "dead", 15, what="n2 dead")
    with mesh.client(0, timeout=60) as a:
        calls = [a.call("pinned.echo", i) for i in range(5)]
        # durable, waiting: nothing can run them until n2 is back
        assert {a.ls_call(call.id)["state"] for call in calls} == {"queued"}
        mesh.nodes[1].start()
        assert [call.get(timeout=120) for call in calls] == [{"args": [i], "kwargs": {}} for i in range(5)]
        assert {a.ls_call(call.id)["worker"] for call in calls} == {"n2"}


def test_drain_hands_queued_calls_to_peers_and_loses_nothing(mesh: MeshNodes) -> None:
    with mesh.client(1, timeout=60) as b:
        calls = [b.call("sample.tasks.sleep", 0.3) for _ in range(30)]
    out = run_ecctl(mesh.nodes[0].endpoint, "node", "drain", "n2")
    assert out.returncode == 0, out.stderr.decode()
    wait_for(lambda: mesh.states(0).get("n2") == "drained", 60, what="n2 drained")
    assert mesh.nodes[1].terminate() == 0
    client = mesh.tcp_client(",".join([mesh.tcp[0], mesh.tcp[2]]), timeout=60)
    assert [client.result(call.id, timeout=60) for call in calls] == [0.3] * 30
    attempts = [client.ls_call(call.id)["attempts"] for call in calls]
    assert max(attempts) == 1, attempts  # handed over, not run twice
    mesh.nodes[1].start()  # a drained node stays drained across a restart, until undrained
    wait_for(lambda: mesh.states(0).get("n2") == "drained", 30, what="n2 back, still drained")
    out = run_ecctl(mesh.nodes[0].endpoint, "node", "undrain", "n2")
    assert out.returncode == 0, out.stderr.decode()
    wait_for(lambda: mesh.states(0).get("n2") == "alive", 30, what="n2 undrained")


@pytest.mark.timeout(600)
def test_kill9_rounds_lose_no_acknowledged_call_and_never_give_two_results(mesh: MeshNodes) -> None:
    """Thousands of calls in flight; each round kills a random node with SIGKILL at a random
    moment and restarts it. Every acknowledged call completes once, with one result everywhere."""
    rng = random.Random()
    history = History()
    endpoints = mesh.all_endpoints()
    stop = threading.Event()
    errors: list[BaseException] = []

    def submit(first: int) -> None:
        client = mesh.tcp_client(mesh.all_endpoints(first=first), timeout=60)
        try:
            while not stop.is_set():
                call_id = str(uuid.uuid4())
                history.invoke(call_id, ANY)
                try:
                    client.call("sample.tasks.token", 0.005, call_id=call_id)
                except Exception:  # noqa: BLE001 - ambiguous: may or may not be accepted
                    history.fail(call_id)
                    continue
                history.ok(call_id)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=submit, args=(i,), daemon=True) for i in range(3)]
    for thread in threads:
        thread.start()
    for _round in range(3):
        wait_for(lambda n=len(history.acked): len(history.acked) >= n + 300, 120, what="more calls acknowledged")
        victim = rng.randrange(3)
        mesh.nodes[victim].kill9()
        wait_for(lambda n=len(history.acked): len(history.acked) >= n + 200, 120,
                 what="calls acknowledged by the survivors")
        mesh.nodes[victim].start()
        mesh.wait_formed()
    stop.set()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    reader = mesh.tcp_client(endpoints, timeout=120)
    completed = {}
    for cid in sorted(history.acked):
        try:
            completed[cid] = reader.result(cid, timeout=120)
        except Exception as exc:
            raise AssertionError(f"acknowledged call {cid} has no result: {exc}\n{mesh.explain(cid)}") from exc
    executions: dict[str, int] = {}  # runs of each call, from the prerun events of its record
    for cid in completed:
        for i in range(3):
            with mesh.client(i, timeout=30) as client:
                try:
                    events = client.ls_call(cid)["events"]
                except Exception:  # noqa: BLE001 - this node holds no copy of the call
                    continue
            executions[cid] = sum(1 for e in events if e["name"] == "prerun")
            break
    # a second read through every node: one result per call id, wherever it is read
    reread: dict[str, Any] = {}
    for i in range(3):
        with mesh.client(i, timeout=120) as client:
            for cid in list(completed)[i::3]:
                reread[cid] = client.result(cid, timeout=120)
    verdict = check(history, completed, executions, reread)
    assert verdict.ok, f"{verdict}\n" + "\n".join(mesh.explain(cid) for cid in sorted(verdict.divergent)[:2])
    assert len(history.acked) >= 1500


def test_require_replicas_refuses_calls_a_lone_node_cannot_copy(venv_cache: Path) -> None:
    """Two nodes with ``--require-replicas``: with the peer gone, a call cannot be on two disks,
    so it is refused with a clear 503 (and ``status`` says the node is degraded) rather than
    acknowledged with one copy; with the peer back, calls are accepted again."""
    base = Path(tempfile.mkdtemp(prefix="ec-req-"))
    nodes = MeshNodes(base, venv_cache, n=2, extra=("--require-replicas",))
    try:
        nodes.start()
        with nodes.client(0, timeout=30) as a:
            a.add_queue("q1", "direct")
            a.add_processor("p", "file:///nonexistent/repo", "m")  # code is not needed to accept
            a.add_socket("s", processor="p", function="f", queue="q1")
            wait_for(lambda: "s" in {s["name"] for s in nodes.status(1)["sockets"]}, 30, what="socket on n2")
            assert a.call("s").id  # two nodes: accepted with both copies
            nodes.nodes[1].kill9()
            wait_for(lambda: nodes.status(0)["replication"]["degraded"], 15, what="n1 degraded")
            with pytest.raises(Exception, match="replicas required are reachable") as refused:
                a.call("s")
            assert getattr(refused.value, "code", None) == 503
            nodes.nodes[1].start()
            nodes.wait_formed()
            assert a.call("s").id
    finally:
        nodes.cleanup()
        shutil.rmtree(base, ignore_errors=True)
