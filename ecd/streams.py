"""Streaming calls: the items a generator yields, as they come, to readers and to plugs, with
back-pressure all the way to the generator.

A function that returns a generator streams (``ecd/runner.py``): each item reaches the node that
owns the call as soon as it is made (from its own worker, or from the node that runs the call
for it: STREAMED). The owner keeps the items of the running attempt in memory (they are the
call's result, the list of them, once it ends), hands them to STREAM readers, and fires the
plugs of the call's socket once per item (plug calls ``p-hash(call, plug, index)``: an attempt
that runs again makes no new ones).

**Back-pressure.** The producer sends its first item, then only what it is granted: at most
:data:`WINDOW` items past the slowest live reader (a reader that has not asked for
:data:`READER_TTL` seconds is no longer waited for; a client that calls with ``stream`` is a
reader from the start) and no more than the room left in the queues its plugs feed (their
``max_length``). Held-back credit simply leaves the generator un-advanced in its worker. An
attempt whose items pass :data:`MAX_STREAM_BYTES` fails (``ResultTooLarge``).

A retried attempt streams again from item 0; readers keep their position (items they read are
not sent again).
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

#: Items a producer may run ahead of the slowest reader (and of its first credit).
WINDOW = 16
#: Seconds a reader holds the producer back after its last STREAM.
READER_TTL = 10.0
#: Most bytes of items one attempt may yield (its result must fit in one reply).
MAX_STREAM_BYTES = protocol.MAX_MESSAGE_BYTES - 64 * 1024
#: Bytes of items in one ITEMS reply at most.
MAX_ITEMS_BYTES = 16 << 20
#: Longest a STREAM is held before an empty ITEMS (clients ask again).
MAX_WAIT = 30.0
#: Seconds without an item from a stream run on another node before its credit is sent again
#: (a lost STREAMED or STREAM_CREDIT; the runner then sends again the items the owner lacks).
CREDIT_RESEND = 1.0


def _chunk(items: list[bytes], start: int, end: int | None = None) -> list[bytes]:
    """The items from ``start`` (before ``end``) that fit one message (MAX_ITEMS,
    MAX_ITEMS_BYTES; at least one)."""
    chunk: list[bytes] = []
    size = 0
    stop = start + protocol.MAX_ITEMS if end is None else min(end, start + protocol.MAX_ITEMS)
    for value in items[start:stop]:
        if chunk and size + len(value) > MAX_ITEMS_BYTES:
            break
        chunk.append(value)
        size += len(value)
    return chunk


@dataclass
class _Stream:
    call_id: str
    attempt: int
    runner: str = ""  # "" = a worker of this node, else the node id that runs it for us
    items: list[bytes] = field(default_factory=list)
    size: int = 0
    granted: int = 1  # the producer sends its first item unasked
    readers: dict[bytes, tuple[int, float]] = field(default_factory=dict)  # identity -> (position, seen)
    heard: float = field(default_factory=time.monotonic)  # last item or credit (streams run elsewhere)


@dataclass
class _Read:
    peer: Any
    request_id: bytes
    start: int
    deadline: float


@dataclass
class _Relay:
    """A call this node runs for another owner: its items go to the owner, its credit comes back."""
    owner: str
    attempt: int
    items: list[bytes] = field(default_factory=list)
    size: int = 0
    granted: int = 1
    sent: float = 0.0  # when the first item was last sent (until the owner grants credit)


class Streams:
    """The streams of one node (the loop thread owns it)."""

    def __init__(self, node: "Node") -> None:
        self.node = node
        self.streams: dict[str, _Stream] = {}
        self.relays: dict[str, _Relay] = {}
        self.reads: dict[str, list[_Read]] = {}
        self.items = 0

    # -- producers ------------------------------------------------------------------------------

    def expect(self, call_id: str, identity: bytes) -> None:
        """A client called with ``stream``: it reads from item 0, so the producer waits for it."""
        stream = self.streams.get(call_id)
        if stream is None:
            stream = self.streams[call_id] = _Stream(call_id, -1)
        stream.readers.setdefault(identity, (0, time.monotonic()))

    def started(self, record: dict[str, Any], runner: str = "") -> None:
        """An attempt of ``record`` starts (here, or on ``runner``): a stream it had starts over."""
        stream = self.streams.get(record["id"])
        if stream is not None:
            stream.items, stream.size, stream.granted = [], 0, 1
            stream.attempt, stream.runner = int(record.get("attempts") or 0), runner

    def item(self, record: dict[str, Any], index: int, value: bytes, runner: str = "") -> str:
        """Item ``index`` of the running attempt of ``record`` (owned here). Returns "" or why
        the attempt must fail."""
        call_id = record["id"]
        attempt = int(record.get("attempts") or 0)
        stream = self.streams.get(call_id)
        if stream is None:
            stream = self.streams[call_id] = _Stream(call_id, attempt, runner)
        elif stream.attempt != attempt:  # the first item of an attempt (readers keep their place)
            stream.items, stream.size, stream.granted, stream.attempt, stream.runner = [], 0, 1, attempt, runner
        if index != len(stream.items):
            return "" if index < len(stream.items) else f"item {index} arrived before item {len(stream.items)}"
        stream.size += len(value)
        if stream.size > MAX_STREAM_BYTES:
            return f"the items streamed are more than {MAX_STREAM_BYTES} bytes"
        stream.items.append(value)
        stream.heard = time.monotonic()
        self.items += 1
        record["streamed"] = True
        self.node.fire_item(record, index, value)
        record["items_fired"] = index + 1  # (a retried attempt fires again from item 0: same ids)
        self._answer(call_id)
        self.regrant(stream)
        return ""

    def result(self, call_id: str) -> bytes:
        """The result of a stream that ended: the list of its items (msgpack)."""
        stream = self.streams.get(call_id)
        items = stream.items if stream is not None else []
        return protocol.pack_array(items)

    def ended(self, call_id: str) -> None:
        """The call's final record is durable: readers now read it."""
        self.streams.pop(call_id, None)
        self._answer(call_id)

    def regrant(self, stream: _Stream, mono: float | None = None, again: bool = False) -> None:
        """Give the producer more credit if its readers and the queues it feeds allow (with
        ``again``, send the current credit even if it did not grow)."""
        mono = time.monotonic() if mono is None else mono
        record = self.node.active.get(stream.call_id)
        if record is None:
            return
        if stream.attempt < 0:
            return  # not started yet
        live = [pos for pos, seen in stream.readers.values() if mono - seen <= READER_TTL]
        upto = min(live) + WINDOW if live else len(stream.items) + WINDOW
        room = self.node.plug_room(record["socket"])
        if room is not None:
            upto = min(upto, len(stream.items) + min(room, WINDOW))
        if upto <= stream.granted and not again:
            return
        stream.granted = max(upto, stream.granted)
        stream.heard = mono
        self.node.grant(record, stream.runner, stream.attempt, stream.granted, have=len(stream.items))

    def tick(self, mono: float) -> None:
        """Grants held back by a queue that drained or a reader that left; waits that ran out."""
        for stream in list(self.streams.values()):
            stalled = bool(stream.runner) and len(stream.items) < stream.granted and mono - stream.heard > CREDIT_RESEND
            self.regrant(stream, mono, again=stalled and self._runs_for_us(stream))
        for call_id, relay in self.relays.items():
            # the owner answers the first item with credit: no answer, the first item was lost
            if relay.granted <= 1 and relay.items and mono - relay.sent > CREDIT_RESEND:
                self._send_items(call_id, relay, 0, upto=1)
        for call_id, waits in list(self.reads.items()):
            due = [w for w in waits if w.deadline <= mono]
            if due:
                self.reads[call_id] = [w for w in waits if w.deadline > mono]
                for wait in due:
                    self._reply(wait, call_id, force=True)
                if not self.reads[call_id]:
                    del self.reads[call_id]

    def _runs_for_us(self, stream: _Stream) -> bool:
        record = self.node.active.get(stream.call_id)
        return record is not None and record.get("state") == C.RUNNING and stream.call_id not in self.node.finalizing

    # -- relays (runner side) -------------------------------------------------------------------

    def relay_item(self, record: dict[str, Any], index: int, value: bytes) -> str:
        """Item of a call run here for another owner: sent to it. Returns "" or why to fail."""
        relay = self.relays.get(record["id"])
        attempt = int(record.get("lease_attempt") or 0)
        if relay is None or relay.attempt != attempt:
            relay = self.relays[record["id"]] = _Relay(record["leased_from"], attempt)
        if index != len(relay.items):
            return ""
        relay.size += len(value)
        if relay.size > MAX_STREAM_BYTES:
            return f"the items streamed are more than {MAX_STREAM_BYTES} bytes"
        relay.items.append(value)
        self._send_items(record["id"], relay, index)
        return ""

    def relay_result(self, call_id: str) -> bytes:
        relay = self.relays.pop(call_id, None)
        items = relay.items if relay is not None else []
        return protocol.pack_array(items)

    def on_credit(self, sender: str, body: dict[str, Any]) -> tuple[dict[str, Any], int] | None:
        """STREAM_CREDIT from an owner: the items it lacks (``have`` says how many it holds) are
        sent again; returns the call and the bound to pass to its worker here, if it grew."""
        call_id, attempt, upto, have = body.get("call_id"), body.get("attempt"), body.get("upto"), body.get("have")
        relay = self.relays.get(call_id) if isinstance(call_id, str) else None
        record = self.node.active.get(call_id) if isinstance(call_id, str) else None
        if relay is None or record is None or relay.owner != sender or relay.attempt != attempt \
                or not isinstance(upto, int) or isinstance(upto, bool):
            return None
        if isinstance(have, int) and not isinstance(have, bool) and 0 <= have < len(relay.items):
            self._send_items(record["id"], relay, have)
        if upto <= relay.granted:
            return None
        relay.granted = upto
        return record, upto

    def _send_items(self, call_id: str, relay: _Relay, start: int, upto: int | None = None) -> None:
        """Items from ``start`` on (up to ``upto``) to the owner, in messages of at most
        MAX_ITEMS_BYTES."""
        if start == 0:
            relay.sent = time.monotonic()
        end = len(relay.items) if upto is None else min(upto, len(relay.items))
        while start < end:
            chunk = _chunk(relay.items, start, end)
            if not self.node.mesh.send(relay.owner, protocol.STREAMED,
                                       {"call_id": call_id, "attempt": relay.attempt, "start": start, "items": chunk}):
                return  # not connected: the owner asks again
            start += len(chunk)

    # -- readers --------------------------------------------------------------------------------

    def read(self, peer: Any, request_id: bytes, call_id: str, start: int, wait_ms: int) -> None:
        """STREAM: items from ``start`` on, now or when some come (long poll)."""
        stream = self.streams.get(call_id)
        if stream is not None:
            stream.readers[peer.identity] = (start, time.monotonic())
            self.regrant(stream)
        wait = _Read(peer, request_id, start, time.monotonic() + min(wait_ms / 1000, MAX_WAIT))
        if not self._reply(wait, call_id, force=wait_ms <= 0):
            self.reads.setdefault(call_id, []).append(wait)

    def _answer(self, call_id: str) -> None:
        waits = self.reads.pop(call_id, None)
        if not waits:
            return
        left = [w for w in waits if not self._reply(w, call_id)]
        if left:
            self.reads[call_id] = left

    def _reply(self, wait: _Read, call_id: str, force: bool = False) -> bool:
        """Answer ``wait`` if there is something to say (or ``force``); True if answered."""
        node = self.node
        stream = self.streams.get(call_id)
        record = node.active.get(call_id)
        if record is None and call_id not in node.finalizing:
            stored = node.wal.get(call_id)
            if stored is None:
                node.reply(wait.peer, protocol.Error(code=protocol.E_NOT_FOUND, reason=f"unknown call id '{call_id}'",
                                                     request_id=wait.request_id))
                return True
            if stored["state"] in C.TERMINAL:
                self._send_final(wait, stored)
                return True
            record = stored
        if record is None:  # its final record is being written: answered once it is durable
            if force:
                node.reply(wait.peer, protocol.Items(call_id=call_id, start=wait.start, items=[], state="running",
                                                     request_id=wait.request_id))
            return force
        items = stream.items if stream is not None else []
        if wait.start < len(items) or force:
            attempt = stream.attempt if stream is not None and stream.attempt >= 0 else int(record.get("attempts") or 0)
            self._send(wait, call_id, items, attempt, record["state"], done=False)
            return True
        return False

    def _send_final(self, wait: _Read, record: dict[str, Any]) -> None:
        if record["state"] == C.DONE:
            try:
                value = protocol.unpack(record.get("result") or b"\xc0")
            except protocol.ProtocolError:
                value = None
            values = value if record.get("streamed") and isinstance(value, list) else [value]
            items = [protocol.pack(v) for v in values]
            self._send(wait, record["id"], items, int(record.get("attempts") or 0), C.DONE, done=True)
            return
        error = record.get("error") or C.error_dict("Error", "failed")
        self.node.reply(wait.peer, protocol.Items(
            call_id=record["id"], start=wait.start, items=[], attempt=int(record.get("attempts") or 0), done=True,
            state=C.FAILED, error={"type": str(error.get("type", "Error")), "message": str(error.get("message", "")),
                                   "traceback": str(error.get("traceback", ""))},
            request_id=wait.request_id))

    def _send(self, wait: _Read, call_id: str, items: list[bytes], attempt: int, state: str, done: bool) -> None:
        chunk = _chunk(items, wait.start)
        last = done and wait.start + len(chunk) >= len(items)
        self.node.reply(wait.peer, protocol.Items(call_id=call_id, start=wait.start, items=chunk, attempt=attempt,
                                                  done=last, state=state[:protocol.MAX_STATE_CHARS],
                                                  request_id=wait.request_id))

    def status(self) -> dict[str, Any]:
        return {"streaming": len(self.streams), "relayed": len(self.relays), "items": self.items,
                "readers": sum(len(s.readers) for s in self.streams.values())}
