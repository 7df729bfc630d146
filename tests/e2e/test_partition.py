"""Partitions: three ecd nodes, each in its own network namespace joined by a bridge
(tests/netns.py). The tests cut the link between two nodes, or cut one node off from both
others, while calls keep coming; after healing, no acknowledged call is lost and every node
gives the same result for each call id.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from ecctl import Client
from tests import netns
from tests.mesh import MeshNodes
from tests.waiting import wait_for

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(not netns.available(), reason=netns.unavailable_reason() or "no netns")]


@pytest.fixture
def lab_mesh(venv_cache: Path, sample_repo: str) -> Iterator[tuple[netns.NetLab, MeshNodes]]:
    """Three nodes, each in its own network namespace; every daemon, namespace and dir removed."""
    base = Path(tempfile.mkdtemp(prefix="ec-part-"))
    try:
        with netns.NetLab(3, prefix="ecpt") as lab:
            yield from _started(base, venv_cache, sample_repo, lab)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _started(base: Path, venv_cache: Path, sample_repo: str,
             lab: netns.NetLab) -> Iterator[tuple[netns.NetLab, MeshNodes]]:
    """Three nodes in the lab's namespaces with the example processor running on each."""
    nodes = MeshNodes(base, venv_cache, lab=lab)
    try:
        nodes.start()
        nodes.run_sample(sample_repo)
        yield lab, nodes
    finally:
        nodes.cleanup()


def _submit(nodes: MeshNodes, i: int, count: int, seconds: float = 0.01) -> list[str]:
    """``count`` calls accepted by node ``i`` (through its own endpoint); their ids."""
    ids = []
    with nodes.client(i, timeout=60) as client:
        for _ in range(count):
            call_id = str(uuid.uuid4())
            client.call("sample.tasks.token", seconds, call_id=call_id)
            ids.append(call_id)
    return ids


def _agree(nodes: MeshNodes, ids: list[str], timeout: float = 60.0) -> dict[str, Any]:
    """Once the healed nodes have exchanged what they know (within ``timeout``), every node gives
    the same result for every call; returns it."""
    last: list[dict[str, Any]] = []

    def same() -> bool:
        last[:] = _results_everywhere(nodes, ids)
        return all(answer == last[0] for answer in last)

    try:
        wait_for(same, timeout, interval=1.0, what="every node giving the same results")
    except AssertionError:
        if not last:
            raise
        differ = [cid for cid in ids if len({str(a[cid]) for a in last}) > 1]
        raise AssertionError(f"{len(differ)} call(s) with different results on different nodes:\n"
                             f"{nodes.explain(differ[0])}") from None
    return last[0]


def _results_everywhere(nodes: MeshNodes, ids: list[str]) -> list[dict[str, Any]]:
    """Each node's answer for every id (a node without a copy asks its peers)."""
    answers = []
    for i in range(len(nodes.nodes)):
        with nodes.client(i, timeout=120) as client:
            answer = {}
            for cid in ids:
                try:
                    answer[cid] = client.result(cid, timeout=120)
                except Exception as exc:
                    raise AssertionError(f"n{i + 1} cannot give the result of {cid}: {exc}\n"
                                         f"{nodes.explain(cid)}") from exc
            answers.append(answer)
    return answers


def test_a_cut_link_between_two_nodes_keeps_both_serving(lab_mesh: tuple[netns.NetLab, MeshNodes]) -> None:
    """n1 and n2 cannot talk, both still reach n3: nobody is declared dead (n3's gossip keeps
    both alive), both keep accepting and running calls with their copies on n3."""
    lab, nodes = lab_mesh
    before = _submit(nodes, 0, 20) + _submit(nodes, 1, 20)
    lab.partition(0, 1)
    during = _submit(nodes, 0, 40) + _submit(nodes, 1, 40)
    with nodes.client(0, timeout=120) as a, nodes.client(1, timeout=120) as b:
        assert all(isinstance(a.result(cid, timeout=120), str) for cid in during[:40])
        assert all(isinstance(b.result(cid, timeout=120), str) for cid in during[40:])
    assert nodes.states(0)["n2"] == "alive" and nodes.states(1)["n1"] == "alive"
    assert sum(nodes.status(i)["replication"]["taken_over"] for i in range(3)) == 0
    lab.heal(0, 1)
    after = _submit(nodes, 0, 10) + _submit(nodes, 1, 10)
    ids = before + during + after
    results = _agree(nodes, ids)
    assert len(set(results.values())) == len(ids)  # one run's result per call


def test_an_isolated_node_rejoins_without_losing_or_doubling_results(
        lab_mesh: tuple[netns.NetLab, MeshNodes]) -> None:
    """n1 is cut off from both others with calls queued: n2 and n3 (a majority) take its calls
    over; n1 alone has no majority and takes nothing over, but keeps serving its own calls. After
    the link is back, every acknowledged call has one result, the same on every node."""
    lab, nodes = lab_mesh
    with nodes.client(1, timeout=60) as b:  # a scheduled socket: fired on one side only
        b.add_socket("part.tick", processor="proc1", function="noop", queue="q1")
        b.update("socket", "part.tick", interval=0.5)
    wait_for(lambda: len(nodes.fired_ticks("part.tick")) >= 2, 30, what="ticks before the partition")
    queued = _submit(nodes, 0, 24, seconds=0.5)  # a backlog on n1 (2 CPUs)
    lab.isolate(0)
    wait_for(lambda: nodes.states(1).get("n1") == "dead", 30, what="n1 dead as seen from n2")
    wait_for(lambda: sum(nodes.status(i)["replication"]["taken_over"] for i in (1, 2)) > 0, 30,
             what="n1's calls taken over")
    assert nodes.status(0)["replication"]["taken_over"] == 0  # no majority: n1 takes nothing over
    wait_for(lambda: {s for n, s in nodes.states(0).items() if n != "n1"} == {"dead"}, 30,
             what="n2 and n3 dead as seen from n1")
    assert not nodes.status(0)["ticks"]["leader"]  # no majority: n1 fires no ticks either
    assert sum(1 for i in (1, 2) if nodes.status(i)["ticks"]["leader"]) == 1
    fired = len(nodes.fired_ticks("part.tick"))
    wait_for(lambda: len(nodes.fired_ticks("part.tick")) >= fired + 3, 30, what="the majority firing ticks")
    alone = _submit(nodes, 0, 10)  # accepted with the copies n1 can make: only its own
    assert nodes.status(0)["replication"]["degraded"] is True
    majority = _submit(nodes, 1, 20)
    lab.rejoin(0)
    nodes.wait_formed(timeout=60)
    ids = queued + alone + majority
    results = _agree(nodes, ids)
    assert len(set(results.values())) == len(ids)
    with Client(nodes.all_endpoints(ipc=True), timeout=60) as client:
        assert all(client.ls_call(cid)["state"] == "done" for cid in ids)
    ticks = nodes.fired_ticks("part.tick")
    assert len(ticks) == len(set(ticks)), f"a tick was fired twice: {nodes.fired_ticks_by_node('part.tick')}"
