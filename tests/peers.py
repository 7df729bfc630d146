"""A mesh member played by the test over the wire protocol (raw pyzmq), for the tests that decide
the order of a peer's messages, which answers get lost, or what a hostile member sends.

The played peer has a CURVE key pair of its own: its inbox (where the node's messages arrive) is a
CURVE server with it, and it reaches the node as a CURVE client with it. Whether the node admits
it is up to the test: :meth:`PlayedPeer.register` adds it as a node of the topology (as `ecctl add
node -n NAME --key KEY` does); an unregistered peer is what an attacker looks like.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from typing import Any, Callable

import zmq

import protocol
from tests.mesh import free_port_on


class PlayedPeer:
    """A mesh member played by the test, in a thread of its own: it binds its endpoint (where
    the node's messages arrive), beats and answers while ``beating`` is set (else it is away),
    keeps and acknowledges what the node REPLICATEs to it, and hands each SYNC to ``on_sync``,
    which returns the answer to send. ``node_key``: the node's public key (None: plain tcp, for a
    node run with --insecure)."""

    def __init__(self, node_endpoint: str, node_key: str | None, name: str = "played",
                 address: str = "127.0.0.2") -> None:
        self.node_id = str(uuid.uuid4())
        self.name = name
        self.endpoint = f"tcp://{address}:{free_port_on(address)}"
        self.node_endpoint = node_endpoint
        self.node_key = node_key
        self.public, self.secret = zmq.curve_keypair()
        self.beating = threading.Event()
        self.beating.set()
        self.copies: dict[str, dict[str, Any]] = {}   # call id -> the newest copy the node sent
        self.stored: set[str] = set()                 # ids the node acknowledged storing for us
        self.synced: list[dict[str, Any]] = []        # records the node sent in SYNCED answers
        self.received: list[protocol.PeerMessage] = []  # every message the node sent
        self.on_sync: Callable[[dict[str, Any]], list[tuple[int, dict[str, Any]]]] = lambda body: []
        self.credentials: dict[str, Any] = {}
        self._outgoing: queue.Queue[tuple[int, dict[str, Any]]] = queue.Queue()
        self._stop = threading.Event()
        self._beat = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    @property
    def key(self) -> str:
        return self.public.decode("ascii")

    def register(self, client: Any) -> None:
        """Admit this peer in the node's topology (with the key it holds), through ``client``."""
        client.add("node", name=self.name, key=self.key, endpoint=self.endpoint)

    def post(self, command: int, body: dict[str, Any]) -> None:
        self._outgoing.put((command, body))

    def hello(self) -> dict[str, Any]:
        return {"node": self.node_id, "name": self.name, "endpoint": self.endpoint, "incarnation": 1,
                "beat": self._beat}

    def _run(self) -> None:
        context = zmq.Context()
        inbox = context.socket(zmq.ROUTER)
        out = context.socket(zmq.DEALER)
        if self.node_key is not None:
            inbox.curve_secretkey, inbox.curve_publickey, inbox.curve_server = self.secret, self.public, True
            out.curve_secretkey, out.curve_publickey = self.secret, self.public
            out.curve_serverkey = self.node_key.encode("ascii")
        inbox.bind(self.endpoint)
        out.connect(self.node_endpoint)
        self._ready.set()

        def send(command: int, body: dict[str, Any]) -> None:
            out.send_multipart(protocol.encode(protocol.PeerMessage(
                command=command, body=body, credentials=self.credentials or {"node": self.node_id})))

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
                self.received.append(msg)
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
