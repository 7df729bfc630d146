"""A restarted node asks the nodes holding copies of its calls what became of them before it runs
them again (SPEC.md, "The peer conversation": SYNC). The peer is played by the test over the
wire protocol, so the test decides the order of its messages and which answers get lost.

The case: node N accepted a call; its replica P holds an outcome for it that N never wrote (a
copy leaves before the owner's own fsync, and N was killed in between).

* With P there, N takes P's outcome and does not run the call a second time, even when P's first
  message after N's restart is not a HELLO or HEARTBEAT (N knows P from its log only, without an
  address: P must not count as alive before N can answer it), and when P's answer to N's first
  SYNC is lost (N asks again).
* With P away, N runs the call again once P is found dead; when P is back, N gives it the new
  outcome, which is fresher than P's: both agree on one outcome, not two.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Callable

import pytest

import protocol
from ecctl import Client
from tests.conftest import EcdProcess, register_sample
from tests.mesh import free_port_on
from tests.peers import PlayedPeer
from tests.waiting import wait_for


def start_with_copies(ecd_factory: Callable[..., EcdProcess], sample_repo: str, socket: str,
                      *args: Any) -> tuple[EcdProcess, PlayedPeer, str, dict[str, Any]]:
    """A node N with the played peer P as its only member; P holds a copy of N's call
    ``socket(*args)``, running when this returns, and N a copy of a call of P's (so that after a
    restart N knows P from its log only). Returns N, P, the call id and P's call."""
    address = "127.0.0.1"
    node = ecd_factory(cpus=1, listen=f"tcp://{address}:{free_port_on(address)}", extra=("--heartbeat", "0.5"))
    assert node.listen is not None
    peer = PlayedPeer(node.listen, node.key)
    try:
        return node, peer, *_copies_both_ways(node, peer, sample_repo, socket, *args)
    except BaseException:
        peer.close()
        raise


def _copies_both_ways(node: EcdProcess, peer: PlayedPeer, sample_repo: str, socket: str,
                      *args: Any) -> tuple[str, dict[str, Any]]:
    with Client(node.endpoint, timeout=60) as client:
        peer.register(client)
        peer.post(protocol.HELLO, peer.hello())
        register_sample(client, sample_repo, concurrency=1)
        wait_for(lambda: [m["state"] for m in client.status()["mesh"]["nodes"]] == ["alive"], 30,
                 what="the node to see the played peer alive")
        template = client.call("sample.tasks.noop").id
        wait_for(lambda: template in peer.copies, 30, what="a copy at the peer")
        theirs = {**peer.copies[template], "id": str(uuid.uuid4()), "owner": peer.node_id, "node": "played",
                  "replicas": [peer.node_id], "state": "queued", "version": 1, "events": [], "result": None}
        peer.post(protocol.REPLICATE, {"records": [theirs]})
        wait_for(lambda: theirs["id"] in peer.stored, 30, what="the node to store the peer's copy")
        call_id = str(uuid.uuid4())
        client.call(socket, *args, call_id=call_id)
        wait_for(lambda: peer.copies.get(call_id, {}).get("replicas") == [peer.node_id], 30,
                 what="the call's copy at the peer")
        wait_for(lambda: client.ls_call(call_id)["state"] == "running", 30, what="the call to start")
    return call_id, theirs


def outcome_written_before_the_kill(copy: dict[str, Any], value: Any) -> dict[str, Any]:
    """The final record the node would have written for its call (and copied to the peer)."""
    now = time.time()
    return {**copy, "state": "done", "result": protocol.pack(value), "error": None, "finished": now,
            "version": int(copy.get("version") or 0) + 1, "events": [*copy["events"], ["postrun", now, "Finished"]]}


@pytest.mark.timeout(300)
def test_a_restarted_node_takes_its_replicas_outcome_instead_of_running_the_call_again(
        ecd_factory: Callable[..., EcdProcess], sample_repo: str) -> None:
    node, peer, call_id, theirs = start_with_copies(ecd_factory, sample_repo, "sample.tasks.sleep", 120)
    try:
        # the peer holds the outcome the node wrote and copied just before it died
        peer.beating.clear()
        node.kill9()
        done = outcome_written_before_the_kill(peer.copies[call_id], "from the replica")
        asked: list[str] = []

        def answer(body: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
            if call_id not in {entry[0] for entry in body.get("calls") or ()}:
                return []
            asked.append(call_id)
            if len(asked) == 1:
                return []  # this answer is lost: the node must ask again
            return [(protocol.SYNCED, {"records": [done], "last": False}),
                    (protocol.SYNCED, {"records": [], "last": True, "round": body.get("round")})]

        peer.on_sync = answer
        # the first thing the restarted node hears from the peer is no beat but a copy (queued
        # while the node is down, it arrives as soon as the node listens again)
        peer.post(protocol.REPLICATE, {"records": [theirs]})
        node.start()
        peer.beating.set()
        with Client(node.endpoint, timeout=60) as client:
            wait_for(lambda: client.ls_call(call_id)["state"] == "done", 60, what="the call to end")
            assert client.result(call_id, timeout=30) == "from the replica"
            record = client.ls_call(call_id)
        assert len(asked) >= 2
        # never started again after the restart: its events are the ones the peer held
        assert not any("after restart" in event["note"] for event in record["events"]), record["events"]
        assert "rejoin reconciliation done" in node.log()
    finally:
        peer.close()


@pytest.mark.timeout(300)
def test_a_call_run_again_without_its_replica_wins_over_that_replicas_older_outcome(
        ecd_factory: Callable[..., EcdProcess], sample_repo: str) -> None:
    node, peer, call_id, _theirs = start_with_copies(ecd_factory, sample_repo, "sample.tasks.slow_echo", "run again", 3)
    try:
        peer.beating.clear()
        node.kill9()
        held = outcome_written_before_the_kill(peer.copies[call_id], "from the replica")
        offered: list[list[Any]] = []
        peer.on_sync = lambda body: offered.extend(e for e in body.get("calls") or () if e[0] == call_id) or []
        node.start()  # the peer stays silent: found dead, and the call runs again without it
        with Client(node.endpoint, timeout=60) as client:
            assert client.result(call_id, timeout=60) == "run again"
            peer.beating.set()  # the peer is back, with its older outcome
            wait_for(lambda: peer.copies[call_id]["state"] == "done", 60, what="the node to give the peer its outcome")
            assert protocol.unpack(peer.copies[call_id]["result"]) == "run again"
            wait_for(lambda: offered, 60, what="the node to offer its outcome to the peer")
            assert offered[-1][1:] > [True, 0, held["version"]], (offered[-1], held["version"])
            # the peer says what it holds: the node answers with its fresher copy
            peer.post(protocol.SYNC, {"calls": [[call_id, True, int(held.get("term") or 0), held["version"]]],
                                      "last": True})
            wait_for(lambda: any(r["id"] == call_id for r in peer.synced), 30, what="the node's copy")
            sent = [r for r in peer.synced if r["id"] == call_id][-1]
            assert protocol.unpack(sent["result"]) == "run again"
            assert client.result(call_id, timeout=30) == "run again"
    finally:
        peer.close()
