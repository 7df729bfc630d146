"""ElasticCode wire protocol: message types, strict frame codec, payload codec, constants.

The authority is protocol/SPEC.md. This package imports only the standard library and msgpack.
"""

from .codec import decode, encode, error_reply, pack, pack_array, pack_map, split_array, unpack
from .constants import (
    PEER_COMMAND_NAMES, HELLO, WELCOME, HEARTBEAT, REPLICATE, REPLICATED, CREDIT, LEASE, COMPLETE,
    COMPLETED, TAKEOVER, HANDOFF, HANDED, SYNC, SYNCED, FIND, FOUND, DRAIN, SUBSCRIBE, EVENT,
    STREAMED, STREAM_CREDIT, FLOW, STREAM, ITEMS, LISTEN, EVENTS, CHANNELS, MAX_GRAPH_NODES,
    MAX_GRAPH_DEPTH, MAX_GRAPH_WIDTH, MIN_LISTEN_TTL_MS, MAX_LISTEN_TTL_MS, MAX_EVENTS, MAX_ITEMS,
    ACCEPTED, ADMIN, CALL, CALL_ID_RE, CURVE_KEY_RE, COMMAND_NAMES, E_CONFLICT, E_FAILED_DEPENDENCY,
    E_INTERNAL, E_INVALID, E_MALFORMED, E_NOT_FOUND, E_QUEUE_FULL, E_STORAGE, E_TIMEOUT,
    E_TOO_LARGE, E_UNAUTHORIZED, E_FORBIDDEN, E_UNAVAILABLE, E_VERSION, ERROR, ERROR_NAMES, FRAME_COUNT, GET,
    HEADER_BYTES, MAX_CALL_ID_CHARS, MAX_CREDENTIALS_BYTES, MAX_MESSAGE_BYTES, MAX_NAME_CHARS,
    MAX_OP_CHARS, MAX_REQUEST_ID_BYTES, MAX_ERROR_CODE, MAX_SEQ, MAX_STATE_CHARS, MAX_TEXT_CHARS, MAX_WAIT_MS,
    MIN_ERROR_CODE, PENDING, PING, CALLS, ACCEPTED_MANY, RESULTS, MAX_BATCH, PONG, REPLY, RESULT, SIGNATURE, SUPPORTED_VERSIONS, VERSION,
)
from .errors import ProtocolError, UnsupportedVersion
from .rights import ALL, RIGHT_KINDS, RIGHTS, is_right
from .messages import (
    MESSAGE_TYPES, REQUEST_TYPES, PeerMessage, Accepted, AcceptedMany, Admin, Call, Calls, Error, Results, Get, Message, Pending, Ping,
    Pong, Reply, Result, Flow, Stream, Items, Listen, Events,
)

__all__ = [
    # messages
    "Ping", "Pong", "Call", "Accepted", "Get", "Result", "Pending", "Calls", "AcceptedMany",
    "Results", "Flow", "Stream", "Items", "Listen", "Events", "Admin", "Reply", "Error",
    "PeerMessage",
    "Message", "MESSAGE_TYPES", "REQUEST_TYPES",
    # codec
    "encode", "decode", "pack", "unpack", "error_reply", "pack_array", "pack_map", "split_array",
    # errors
    "ProtocolError", "UnsupportedVersion",
    # versions and framing
    "VERSION", "SUPPORTED_VERSIONS", "SIGNATURE", "FRAME_COUNT", "HEADER_BYTES",
    # commands
    "PING", "PONG", "CALL", "ACCEPTED", "GET", "RESULT", "PENDING", "CALLS", "ACCEPTED_MANY",
    "RESULTS", "FLOW", "STREAM", "ITEMS", "LISTEN", "EVENTS", "ADMIN", "REPLY", "ERROR",
    "COMMAND_NAMES", "PEER_COMMAND_NAMES", "HELLO", "WELCOME", "HEARTBEAT", "REPLICATE",
    "REPLICATED", "CREDIT", "LEASE", "COMPLETE", "COMPLETED", "TAKEOVER", "HANDOFF", "HANDED",
    "SYNC", "SYNCED", "FIND", "FOUND", "DRAIN", "SUBSCRIBE", "EVENT", "STREAMED", "STREAM_CREDIT",
    # error codes
    "E_MALFORMED", "E_UNAUTHORIZED", "E_FORBIDDEN", "E_NOT_FOUND", "E_TIMEOUT", "E_CONFLICT", "E_TOO_LARGE",
    "E_INVALID", "E_FAILED_DEPENDENCY", "E_QUEUE_FULL", "E_INTERNAL", "E_UNAVAILABLE",
    "E_VERSION", "E_STORAGE", "ERROR_NAMES",
    # rights
    "ALL", "RIGHTS", "RIGHT_KINDS", "is_right",
    # limits
    "MAX_MESSAGE_BYTES", "MAX_REQUEST_ID_BYTES", "MAX_CREDENTIALS_BYTES", "MAX_NAME_CHARS",
    "MAX_CALL_ID_CHARS", "CALL_ID_RE", "CURVE_KEY_RE", "MAX_OP_CHARS", "MAX_STATE_CHARS", "MAX_TEXT_CHARS",
    "MAX_WAIT_MS", "MAX_SEQ", "MAX_BATCH", "MIN_ERROR_CODE", "MAX_ERROR_CODE",
    "MAX_GRAPH_NODES", "MAX_GRAPH_DEPTH", "MAX_GRAPH_WIDTH", "CHANNELS", "MIN_LISTEN_TTL_MS",
    "MAX_LISTEN_TTL_MS", "MAX_EVENTS", "MAX_ITEMS",
]
