"""Listening: lifecycle events, worker log lines and results, live, from every node of the mesh
(``ecctl listen --name NAME --channel task|log|result``).

A client's LISTEN subscribes it, for ``ttl_ms``, to the events of one processor, socket or
queue (``name``; "" is everything) on one channel:

* ``task``: a call's lifecycle events as they happen (received, queued, prerun, postrun,
  retried, failed, and waiting / arrived for joins), with the call, its socket, processor and
  queue and the event's note;
* ``log``: each line a worker of the processor prints, with the call it was running;
* ``result``: each call's outcome, once it is durable.

The node the client talks to passes the subscription on to every live member (SUBSCRIBE), which
sends the matching events back (EVENT); the client gets them all in EVENTS messages with its
LISTEN's request id, and renews the subscription by sending the same LISTEN again before it
runs out. Listening is best-effort monitoring: events are not stored, a listener that cannot
keep up loses some (``dropped`` counts them), and nothing else waits on a listener. A node
with no listener pays one dictionary check per event.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import protocol

from . import calls as C

if TYPE_CHECKING:
    from .node import Node

logger = logging.getLogger(__name__)

#: Events kept for one listener between two flushes (more are dropped and counted).
MAX_PENDING = 10_000
#: Results larger than this are listed without their value.
MAX_VALUE_BYTES = 64 * 1024
#: Longest log line passed on.
MAX_LINE = 4096


@dataclass
class _Subscription:
    name: str
    channel: str
    expires: float                     # monotonic
    peer: Any = None                   # a local client (Peer), or None for another node's
    request_id: bytes = b""
    node_id: str = ""                  # the node a remote subscription came from
    token: str = ""
    pending: list[dict[str, Any]] = field(default_factory=list)
    dropped: int = 0

    def matches(self, channel: str, names: tuple[str, ...]) -> bool:
        return self.channel == channel and (not self.name or self.name in names)


class Bus:
    """This node's listeners, local and remote (the loop thread owns it)."""

    def __init__(self, node: "Node") -> None:
        self.node = node
        self.subs: dict[tuple[Any, ...], _Subscription] = {}
        self.published: dict[str, int] = {}  # call id -> its events published so far
        self.sent = 0

    @property
    def active(self) -> bool:
        return bool(self.subs)

    # -- subscriptions --------------------------------------------------------------------------

    def listen(self, peer: Any, msg: protocol.Listen) -> None:
        """LISTEN from a client: subscribe (or renew), here and on every live member."""
        key = ("local", peer.identity, msg.request_id)
        expires = time.monotonic() + msg.ttl_ms / 1000
        sub = self.subs.get(key)
        if sub is None:
            sub = self.subs[key] = _Subscription(msg.name, msg.channel, expires, peer=peer, request_id=msg.request_id,
                                                 token=f"{self.node.node_id}:{peer.identity.hex()}:{msg.request_id.hex()}")
            logger.info("listener for %s/%s", msg.name or "*", msg.channel)
        else:
            sub.expires = expires
        self.node.frontend.send(peer, protocol.Events(events=[], request_id=msg.request_id))  # subscribed
        for member in self.node.mesh.alive():
            self.node.mesh.send(member.node_id, protocol.SUBSCRIBE,
                                {"token": sub.token, "name": msg.name, "channel": msg.channel, "ttl_ms": msg.ttl_ms})

    def on_subscribe(self, sender: str, body: dict[str, Any]) -> None:
        token, name, channel, ttl = body.get("token"), body.get("name"), body.get("channel"), body.get("ttl_ms")
        if not (isinstance(token, str) and isinstance(name, str) and channel in protocol.CHANNELS
                and isinstance(ttl, int) and protocol.MIN_LISTEN_TTL_MS <= ttl <= protocol.MAX_LISTEN_TTL_MS):
            return
        key = ("remote", sender, token)
        expires = time.monotonic() + ttl / 1000
        sub = self.subs.get(key)
        if sub is None:
            self.subs[key] = _Subscription(name[:protocol.MAX_NAME_CHARS], channel, expires, node_id=sender, token=token)
        else:
            sub.expires = expires

    def on_event(self, sender: str, body: dict[str, Any]) -> None:
        """Events another node matched for a listener of this node."""
        token, events = body.get("token"), body.get("events")
        if not isinstance(token, str) or not isinstance(events, list):
            return
        for sub in self.subs.values():
            if sub.peer is not None and sub.token == token:
                self._queue(sub, [e for e in events if isinstance(e, dict)])
                if isinstance(body.get("dropped"), int):
                    sub.dropped += max(0, body["dropped"])
                return

    # -- publishing ----------------------------------------------------------------------------

    def record(self, record: dict[str, Any]) -> None:
        """Publish the lifecycle events ``record`` got since it was last published."""
        events = record.get("events") or ()
        call_id = record["id"]
        start = self.published.get(call_id, 0)
        if start >= len(events):
            return
        self.published[call_id] = len(events)
        names = self._names(record)
        for name, when, note in events[start:]:
            self._publish("task", names, {"event": name, "time": when, "note": note, "state": record.get("state"),
                                          "call_id": call_id, "socket": record.get("socket"),
                                          "processor": record.get("processor"), "queue": names[2], "via": record.get("via")})

    def result(self, record: dict[str, Any]) -> None:
        """Publish a call's outcome (it is durable)."""
        self.record(record)
        self.published.pop(record["id"], None)
        names = self._names(record)
        event: dict[str, Any] = {"call_id": record["id"], "socket": record.get("socket"), "processor": record.get("processor"),
                                 "queue": names[2], "state": record.get("state"), "time": record.get("finished"),
                                 "ok": record.get("state") == C.DONE}
        if record.get("state") == C.DONE:
            value = record.get("result") or b"\xc0"
            try:
                if len(value) > MAX_VALUE_BYTES:
                    raise protocol.ProtocolError(f"{len(value)} bytes, over {MAX_VALUE_BYTES}")
                event["value"] = protocol.unpack(value)
            except protocol.ProtocolError:  # too large to pass on, or not a plain value
                event["value_bytes"] = len(value)
        else:
            error = record.get("error") or {}
            event["error"] = {"type": str(error.get("type", "Error")), "message": str(error.get("message", ""))}
        self._publish("result", names, event)

    def line(self, processor: str, pid: int, stream: str, text: str, call_id: str | None) -> None:
        """Publish a line a worker printed."""
        record = self.node.active.get(call_id) if call_id else None
        names = self._names(record) if record is not None else (processor, "", "")
        self._publish("log", (processor, *names[1:]), {
            "time": time.time(), "processor": processor, "pid": pid, "stream": stream, "line": text[:MAX_LINE],
            "call_id": call_id, "socket": names[1] or None})

    def _names(self, record: dict[str, Any]) -> tuple[str, str, str]:
        socket = record.get("socket") or ""
        definition = self.node.topology.sockets.get(socket)
        return (record.get("processor") or "", socket, definition.queue if definition is not None else "")

    def _publish(self, channel: str, names: tuple[str, ...], event: dict[str, Any]) -> None:
        event = {"channel": channel, "node": self.node.config.name, **event}
        for sub in self.subs.values():
            if sub.matches(channel, names):
                self._queue(sub, [event])

    @staticmethod
    def _queue(sub: _Subscription, events: list[dict[str, Any]]) -> None:
        room = MAX_PENDING - len(sub.pending)
        sub.pending.extend(events[:max(0, room)])
        sub.dropped += max(0, len(events) - max(0, room))

    def flush(self) -> None:
        """Send what each listener got in this turn of the loop."""
        for sub in self.subs.values():
            if not sub.pending and not (sub.dropped and sub.peer is not None):
                continue
            events, sub.pending = sub.pending, []
            for start in range(0, max(1, len(events)), protocol.MAX_EVENTS):
                chunk = events[start:start + protocol.MAX_EVENTS]
                if sub.peer is not None:
                    self.node.frontend.send(sub.peer, protocol.Events(events=chunk, dropped=sub.dropped,
                                                                       request_id=sub.request_id))
                else:
                    self.node.mesh.send(sub.node_id, protocol.EVENT, {"token": sub.token, "events": chunk,
                                                                      "dropped": sub.dropped})
                sub.dropped = 0
                self.sent += len(chunk)

    def forget(self, call_id: str) -> None:
        self.published.pop(call_id, None)

    def tick(self, mono: float) -> None:
        for key in [k for k, sub in self.subs.items() if sub.expires <= mono]:
            sub = self.subs.pop(key)
            logger.info("listener for %s/%s expired", sub.name or "*", sub.channel)
        if not self.subs:
            self.published.clear()

    def status(self) -> dict[str, Any]:
        return {"listeners": sum(1 for s in self.subs.values() if s.peer is not None),
                "remote_listeners": sum(1 for s in self.subs.values() if s.peer is None), "events_sent": self.sent}
