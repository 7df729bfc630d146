"""Wire constants of the ElasticCode client protocol (mirrors protocol/SPEC.md).

Everything a peer needs to agree on byte for byte lives here: the header signature, protocol
versions, command bytes, error codes and size limits. No logic, no imports of ours.
"""

from __future__ import annotations

import re
from typing import Final

#: First two bytes of frame 0 of every message.
SIGNATURE: Final = b"EC"
#: The protocol version this code speaks when it starts a conversation.
VERSION: Final = 1
#: Every version this code can decode, lowest first.
SUPPORTED_VERSIONS: Final[tuple[int, ...]] = (1,)
#: Number of frames of a message after the ROUTER identity frame.
FRAME_COUNT: Final = 4
#: Length of frame 0: signature (2) + version (1) + command (1).
HEADER_BYTES: Final = 4

# Commands (byte 3 of the header). Requests have the low range, replies follow them.
PING: Final = 0x01
PONG: Final = 0x02
CALL: Final = 0x10
ACCEPTED: Final = 0x11
GET: Final = 0x12
RESULT: Final = 0x13
PENDING: Final = 0x14
CALLS: Final = 0x15
ACCEPTED_MANY: Final = 0x16
RESULTS: Final = 0x17
FLOW: Final = 0x18
STREAM: Final = 0x19
ITEMS: Final = 0x1A
LISTEN: Final = 0x1B
EVENTS: Final = 0x1C
ADMIN: Final = 0x20
REPLY: Final = 0x21
ERROR: Final = 0x7F

# Peer commands (the conversation between ecd nodes; SPEC.md "The peer conversation"). All are
# one-way: a node sends them on its own DEALER to the peer's ROUTER, never as a reply.
HELLO: Final = 0x40
WELCOME: Final = 0x41
HEARTBEAT: Final = 0x42
REPLICATE: Final = 0x44
REPLICATED: Final = 0x45
CREDIT: Final = 0x46
LEASE: Final = 0x47
COMPLETE: Final = 0x49
COMPLETED: Final = 0x4A
TAKEOVER: Final = 0x4B
HANDOFF: Final = 0x4C
HANDED: Final = 0x4D
SYNC: Final = 0x4E
SYNCED: Final = 0x4F
FIND: Final = 0x50
FOUND: Final = 0x51
DRAIN: Final = 0x52
SUBSCRIBE: Final = 0x53
EVENT: Final = 0x54
STREAMED: Final = 0x55
STREAM_CREDIT: Final = 0x56

PEER_COMMAND_NAMES: Final[dict[int, str]] = {
    HELLO: "HELLO", WELCOME: "WELCOME", HEARTBEAT: "HEARTBEAT", REPLICATE: "REPLICATE",
    REPLICATED: "REPLICATED", CREDIT: "CREDIT", LEASE: "LEASE", COMPLETE: "COMPLETE",
    COMPLETED: "COMPLETED", TAKEOVER: "TAKEOVER", HANDOFF: "HANDOFF", HANDED: "HANDED",
    SYNC: "SYNC", SYNCED: "SYNCED", FIND: "FIND", FOUND: "FOUND", DRAIN: "DRAIN",
    SUBSCRIBE: "SUBSCRIBE", EVENT: "EVENT", STREAMED: "STREAMED", STREAM_CREDIT: "STREAM_CREDIT",
}

COMMAND_NAMES: Final[dict[int, str]] = {
    PING: "PING", PONG: "PONG", CALL: "CALL", ACCEPTED: "ACCEPTED", GET: "GET",
    RESULT: "RESULT", PENDING: "PENDING", ADMIN: "ADMIN", REPLY: "REPLY", ERROR: "ERROR",
    CALLS: "CALLS", ACCEPTED_MANY: "ACCEPTED_MANY", RESULTS: "RESULTS", FLOW: "FLOW",
    STREAM: "STREAM", ITEMS: "ITEMS", LISTEN: "LISTEN", EVENTS: "EVENTS",
}

# Error codes (Error.code and ProtocolError.code); numbers follow HTTP where one fits.
E_MALFORMED: Final = 400          # not a valid message: framing, msgpack or field types
E_UNAUTHORIZED: Final = 401       # not authenticated: no session for the caller's key (log in)
E_FORBIDDEN: Final = 403          # authenticated, but the caller lacks the right the request needs
E_NOT_FOUND: Final = 404          # unknown call id, socket, queue, processor, admin op
E_TIMEOUT: Final = 408            # a deadline ran out
E_CONFLICT: Final = 409           # name already exists / state forbids the operation
E_TOO_LARGE: Final = 413          # a frame or payload is over its limit
E_INVALID: Final = 422            # well-formed but semantically invalid (bad admin args, ...)
E_FAILED_DEPENDENCY: Final = 424  # target processor is not running (failed / pending code)
E_QUEUE_FULL: Final = 429         # back-pressure: retry later
E_INTERNAL: Final = 500           # bug in the server
E_UNAVAILABLE: Final = 503        # node stopping / not ready
E_VERSION: Final = 505            # protocol version not supported
E_STORAGE: Final = 507            # the write-ahead log could not commit

ERROR_NAMES: Final[dict[int, str]] = {
    E_MALFORMED: "malformed", E_UNAUTHORIZED: "unauthorized", E_FORBIDDEN: "forbidden", E_NOT_FOUND: "not found",
    E_TIMEOUT: "timeout", E_CONFLICT: "conflict", E_TOO_LARGE: "too large",
    E_INVALID: "invalid", E_FAILED_DEPENDENCY: "failed dependency", E_QUEUE_FULL: "queue full",
    E_INTERNAL: "internal error", E_UNAVAILABLE: "unavailable", E_VERSION: "version not supported",
    E_STORAGE: "storage error",
}

# Limits.
#: Largest body frame (and largest payload accepted by unpack).
MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024
#: Largest request id (frame 1).
MAX_REQUEST_ID_BYTES: Final = 32
#: Largest credentials frame (frame 2).
MAX_CREDENTIALS_BYTES: Final = 8 * 1024
#: Longest socket / node / processor name.
MAX_NAME_CHARS: Final = 200
#: Longest call id; ids match CALL_ID_RE.
MAX_CALL_ID_CHARS: Final = 64
CALL_ID_RE: Final = re.compile(r"[A-Za-z0-9._:-]{1,64}")
#: A CURVE public key as ``ecd keys show`` prints it: 40 characters of ZeroMQ's Z85 alphabet.
CURVE_KEY_RE: Final = re.compile(r"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}", re.ASCII)
#: Longest admin op name.
MAX_OP_CHARS: Final = 64
#: Longest call state string in PENDING.
MAX_STATE_CHARS: Final = 32
#: Longest free text (Pong.version, Error.reason).
MAX_TEXT_CHARS: Final = 64 * 1024
#: Longest long poll a GET may ask for (1 hour).
MAX_WAIT_MS: Final = 3_600_000
#: Largest sequence number (signed 64 bit).
MAX_SEQ: Final = 2**63 - 1
#: Most calls in one CALLS message (and entries in ACCEPTED_MANY / RESULTS).
MAX_BATCH: Final = 1000
#: Most nodes (steps and structures) in one FLOW graph, and its deepest nesting.
MAX_GRAPH_NODES: Final = 10_000
MAX_GRAPH_DEPTH: Final = 64
#: Most members of one pipeline / parallel / funnel.
MAX_GRAPH_WIDTH: Final = 1000
#: LISTEN channels.
CHANNELS: Final[tuple[str, ...]] = ("task", "log", "result")
#: Longest and shortest LISTEN subscription (ttl_ms).
MIN_LISTEN_TTL_MS: Final = 1000
MAX_LISTEN_TTL_MS: Final = 600_000
#: Most events in one EVENTS message, and items in one ITEMS message.
MAX_EVENTS: Final = 1000
MAX_ITEMS: Final = 1000
#: Error.code range.
MIN_ERROR_CODE: Final = 100
MAX_ERROR_CODE: Final = 999
