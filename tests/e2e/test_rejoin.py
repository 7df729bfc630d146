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

import queue
import threading
import time
import uuid
from typing import Any, Callable

import pytest
import zmq

import protocol
from ecctl import Client
from tests.conftest import EcdProcess, register_sample
from tests.mesh import free_port_on
from tests.waiting import wait_for


class PlayedPeer:
    """A mesh member played by the test, in a thread of its own: it binds its endpoint (where
    the node's messages arrive), beats and answers while ``beating`` is set (else it is away),
    keeps and acknowledges what the node REPLICATEs to it, and hands each SYNC to ``on_sync``, which returns the answer to send."""

    def __init__(self, node_endpoint: str) -> None:
        self.node_id = str(uuid.uuid4())
        self.endpoint = f"tcp://127.0.0.2:{free_port_on('127.0.0.2')}"
        self.node_endpoint = node_endpoint
        self.beating = threading.Event()
        self.beating.set()
        self.copies: dict[str, dict[str, Any]] = {}   # call id -> the newest copy the node sent
        self.stored: set[str] = set()                 # ids the node acknowledged storing for us
        self.synced: list[dict[str, Any]] = []        # records the node sent in SYNCED answers
        self.on_sync: Callable[[dict[str, Any]], list[tuple[int, dict[str, Any]]]] = lambda body: []
        self._outgoing: queue.Queue[tuple[int, dict[str, Any]]] = queue.Queue()
        self._stop = threading.Event()
        self._beat = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def post(self, command: int, body: dict[str, Any]) -> None:
        self._outgoing.put((command, body))

    def hello(self) -> dict[str, Any]:
        return {"node": self.node_id, "name": "played", "endpoint": self.endpoint, "incarnation": 1,
                "beat": self._beat}

    def _run(self) -> None:
        context = zmq.Context()
        inbox = context.socket(zmq.ROUTER)
        inbox.bind(self.endpoint)
        out = context.socket(zmq.DEALER)
        out.connect(self.node_endpoint)
        self._ready.set()

        def send(command: int, body: dict[str, Any]) -> None:
            out.send_multipart(protocol.encode(protocol.PeerMessage(
                command=command, body=body, credentials={"node": self.node_id})))

        next_beat = 0.0
        try:
            while not self._stop.is_set():
                while not self._outgoing.empty():
                    send(*self._outgoing.get())
                if self.beating.is_set() and time.monotonic() >= next_beat:
                    self._beat += 1
                    send(protocol.HEARTBEAT, self.hello())
                    next_beat = time.monotonic() + 0.2
                if not inbox.poll(20):
                    continue
                msg = protocol.decode(inbox.recv_multipart()[1:])
                assert isinstance(msg, protocol.PeerMessage)
                if not self.beating.is_set():
                    continue  # away: it hears nothing either
                if msg.command == protocol.HELLO:
                    send(protocol.WELCOME, self.hello())
                elif msg.command == protocol.REPLICATE:
                    for record in msg.body["records"]:
                        self.copies[record["id"]] = record
                    send(protocol.REPLICATED, {"acks": [[r["id"], r.get("version") or 0] for r in msg.body["records"]]})
                elif msg.command == protocol.REPLICATED:
                    self.stored.update(ack[0] for ack in msg.body.get("acks") or ())
                elif msg.command == protocol.SYNCED:
                    self.synced.extend(msg.body.get("records") or ())
                elif msg.command == protocol.SYNC:
                    for answer in self.on_sync(msg.body):
                        send(*answer)
        finally:
            inbox.close(0)
            out.close(0)
            context.term()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


def start_with_copies(ecd_factory: Callable[..., EcdProcess], sample_repo: str, socket: str,
                      *args: Any) -> tuple[EcdProcess, PlayedPeer, str, dict[str, Any]]:
    """A node N with the played peer P as its only member; P holds a copy of N's call
    ``socket(*args)``, running when this returns, and N a copy of a call of P's (so that after a
    restart N knows P from its log only). Returns N, P, the call id and P's call."""
    address = "127.0.0.1"
    node = ecd_factory(cpus=1, listen=f"tcp://{address}:{free_port_on(address)}", extra=("--heartbeat", "0.5"))
    assert node.listen is not None
    peer = PlayedPeer(node.listen)
    try:
        return node, peer, *_copies_both_ways(node, peer, sample_repo, socket, *args)
    except BaseException:
        peer.close()
        raise


def _copies_both_ways(node: EcdProcess, peer: PlayedPeer, sample_repo: str, socket: str,
                      *args: Any) -> tuple[str, dict[str, Any]]:
    peer.post(protocol.HELLO, peer.hello())
    with Client(node.endpoint, timeout=60) as client:
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
