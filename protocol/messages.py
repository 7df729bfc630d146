"""Message dataclasses of the client conversation: one class per command.

Messages are plain frozen, keyword-only data. They do no validation themselves; the codec
validates on encode (cheap checks) and decode (strict). Every message ends with
``request_id`` (frame 1, echoed in the reply) and ``credentials`` (frame 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from . import constants as c


@dataclass(frozen=True, kw_only=True)
class Ping:
    """C: liveness probe; answered by PONG."""
    COMMAND: ClassVar[int] = c.PING
    request_id: bytes = b""
    credentials: dict = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Pong:
    """S: answer to PING: node name, software version, node clock (UNIX seconds)."""
    COMMAND: ClassVar[int] = c.PONG
    node: str
    version: str
    time: float
    request_id: bytes = b""
    credentials: dict = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Call:
    """C: run socket's function with args (msgpack list) and kwargs (msgpack map). With
    ``stream`` the caller will read the call's items (STREAM) from the first: a generator waits
    for it."""
    COMMAND: ClassVar[int] = c.CALL
    socket: str
    args: bytes
    kwargs: bytes
    call_id: str = ""
    stream: bool = False
    request_id: bytes = b""
    credentials: dict = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Accepted:
    """S: the call is durably logged (fsynced) under call_id. When the call had already ended
    durably by then (a fast call: one commit can carry both), ``result`` is a map {ok, value,
    error} with RESULT's meaning, and no GET is needed; else it is None."""
    COMMAND: ClassVar[int] = c.ACCEPTED
    call_id: str
    seq: int
    node: str
    duplicate: bool = False
    result: dict | None = None
    request_id: bytes = b""
    credentials: dict = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Get:
    """C: ask for a call's result, waiting up to wait_ms (long poll)."""
    COMMAND: ClassVar[int] = c.GET
    call_id: str
    wait_ms: int = 0
    request_id: bytes = b""
    credentials: dict = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Result:
    """S: the call ended: value (msgpack) when ok, else error {type, message, traceback}."""
    COMMAND: ClassVar[int] = c.RESULT
    call_id: str
    ok: bool
    value: bytes = b""
    error: dict | None = None
    request_id: bytes = b""
    credentials: dict = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Pending:
    """S: the call has not ended yet; state is its current state (queued, running, ...)."""
    COMMAND: ClassVar[int] = c.PENDING
    call_id: str
    state: str
    request_id: bytes = b""
    credentials: dict = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Calls:
    """C: many calls in one message; each entry is a map {socket, args, kwargs, call_id} with
    the meaning and checks of CALL's fields. With push, the server also sends RESULTS (same
    request id) as the calls end, so no GET is needed."""
    COMMAND: ClassVar[int] = c.CALLS
    calls: list
    push: bool = False
    request_id: bytes = b""
    credentials: dict = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class AcceptedMany:
    """S: answer to CALLS once every accepted entry is durably logged: accepted entries are maps
    {call_id, seq, duplicate}; refused entries are maps {call_id, code, reason}."""
    COMMAND: ClassVar[int] = c.ACCEPTED_MANY
    node: str
    accepted: list
    refused: list = field(default_factory=list)
    request_id: bytes = b""
    credentials: dict = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Results:
    """S: results pushed for a CALLS with push; entries are maps {call_id, ok, value, error}
    with the meaning and checks of RESULT's fields."""
    COMMAND: ClassVar[int] = c.RESULTS
    results: list
    request_id: bytes = b""
    credentials: dict = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Flow:
    """C: run a workflow (a graph of pipeline / parallel / funnel structures over socket calls)
    as one durable record under flow_id; args/kwargs are the input of its first steps. Answered
    by ACCEPTED; GET on flow_id gives the workflow's result."""
    COMMAND: ClassVar[int] = c.FLOW
    graph: dict
    args: bytes
    kwargs: bytes
    flow_id: str = ""
    request_id: bytes = b""
    credentials: dict = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Stream:
    """C: the items a streaming call (a generator) yielded from index ``start`` on, waiting up
    to wait_ms for one (long poll). Asking from ``start`` also says the items before it were
    read (the producer may run that much further)."""
    COMMAND: ClassVar[int] = c.STREAM
    call_id: str
    start: int = 0
    wait_ms: int = 0
    request_id: bytes = b""
    credentials: dict = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Items:
    """S: answer to STREAM: ``items`` (payloads) of the attempt ``attempt`` from index ``start``;
    ``done`` once the call ended (``error`` set if it failed) and no item is left after these."""
    COMMAND: ClassVar[int] = c.ITEMS
    call_id: str
    start: int
    items: list
    attempt: int = 0
    done: bool = False
    state: str = "running"
    error: dict | None = None
    request_id: bytes = b""
    credentials: dict = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Listen:
    """C: subscribe to the events of a processor, socket or queue ``name`` ("" = all) on a
    channel (task, log, result) from every node of the mesh, for ttl_ms; re-sent with the same
    request id before then to keep it. Events come back in EVENTS with that request id."""
    COMMAND: ClassVar[int] = c.LISTEN
    name: str
    channel: str
    ttl_ms: int = 30_000
    request_id: bytes = b""
    credentials: dict = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Events:
    """S: events of a LISTEN (the first, maybe empty, confirms it); ``dropped`` counts events
    that could not be delivered since the previous EVENTS (a slow listener)."""
    COMMAND: ClassVar[int] = c.EVENTS
    events: list
    dropped: int = 0
    request_id: bytes = b""
    credentials: dict = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Admin:
    """C: topology / inspection operation (see the admin ops table in SPEC.md)."""
    COMMAND: ClassVar[int] = c.ADMIN
    op: str
    args: dict = field(default_factory=dict)
    request_id: bytes = b""
    credentials: dict = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Reply:
    """S: successful answer to ADMIN."""
    COMMAND: ClassVar[int] = c.REPLY
    data: Any = None
    request_id: bytes = b""
    credentials: dict = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Error:
    """S: the request failed: code (E_*), human reason, machine detail."""
    COMMAND: ClassVar[int] = c.ERROR
    code: int
    reason: str
    detail: dict = field(default_factory=dict)
    request_id: bytes = b""
    credentials: dict = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class PeerMessage:
    """N: one message of the peer conversation between nodes (``command`` is one of
    :data:`~protocol.constants.PEER_COMMAND_NAMES`); ``body`` is the frame-3 map itself, checked
    by the codec only for being a map with str keys (the node checks each command's fields)."""
    command: int
    body: dict = field(default_factory=dict)
    request_id: bytes = b""
    credentials: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return c.PEER_COMMAND_NAMES.get(self.command, f"0x{self.command:02x}")


Message = (Ping | Pong | Call | Accepted | Get | Result | Pending | Calls | AcceptedMany | Results
           | Flow | Stream | Items | Listen | Events | Admin | Reply | Error | PeerMessage)
MESSAGE_TYPES: tuple[type, ...] = (Ping, Pong, Call, Accepted, Get, Result, Pending, Calls,
                                   AcceptedMany, Results, Flow, Stream, Items, Listen, Events,
                                   Admin, Reply, Error)
#: Commands a client sends; the server sends the others.
REQUEST_TYPES: tuple[type, ...] = (Ping, Call, Get, Calls, Flow, Stream, Listen, Admin)
