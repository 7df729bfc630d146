"""Encode messages to ZeroMQ frames and decode frames back, strictly; msgpack payload helpers.

``encode(msg)`` -> 4 frames; ``decode(frames)`` -> message or ProtocolError. ``pack`` /
``unpack`` are the payload codec (call args, results): msgpack with bin/str kept apart and no
ext types. Field schemas are computed once per message class, so the hot path is one
msgpack call plus a few type checks per field.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgpack

from . import constants as c
from .errors import ProtocolError, UnsupportedVersion
from .messages import MESSAGE_TYPES, Error, Message, PeerMessage

_EMPTY_MAP = b"\x80"
# Byte patterns of the msgpack timestamp extension (type -1): fixext4, fixext8, ext8(12).
_TIMESTAMP_MARKS = (b"\xd6\xff", b"\xd7\xff", b"\xc7\x0c\xff")


class _Invalid(Exception):
    """Internal: a field failed its check; the message is the human reason."""


# ---------------------------------------------------------------------------- payloads

def _reject_ext(code: int, data: bytes) -> Any:
    raise _Invalid(f"msgpack ext type {code} is not allowed")


def _no_default(obj: Any) -> Any:
    raise TypeError(f"cannot encode object of type {type(obj).__name__}")


def _find_timestamp(obj: Any) -> bool:
    """Iteratively look for msgpack.Timestamp in a decoded tree (only run on a byte hint)."""
    stack = [obj]
    while stack:
        o = stack.pop()
        t = type(o)
        if t is msgpack.Timestamp:
            return True
        if t is list:
            stack.extend(o)
        elif t is dict:
            stack.extend(o.keys())
            stack.extend(o.values())
    return False


def _unpackb(data: bytes) -> Any:
    """Strict msgpack decode; raises _Invalid or msgpack/ValueError/TypeError."""
    obj = msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True,
                          ext_hook=_reject_ext, timestamp=0)
    if (_TIMESTAMP_MARKS[0] in data or _TIMESTAMP_MARKS[1] in data
            or _TIMESTAMP_MARKS[2] in data) and _find_timestamp(obj):
        raise _Invalid("msgpack timestamp (ext type -1) is not allowed")
    return obj


def _packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True, default=_no_default, datetime=False)


def pack(obj: Any) -> bytes:
    """Encode a payload (str, bytes, int, float, bool, None, list/tuple, dict) as msgpack.

    Raises ProtocolError (code E_INVALID, or E_TOO_LARGE over MAX_MESSAGE_BYTES) for other
    types, ext types, integers out of 64-bit range or nesting too deep.
    """
    try:
        data = _packb(obj)
    except (TypeError, ValueError, OverflowError) as e:
        raise ProtocolError(f"cannot pack payload: {e}", code=c.E_INVALID) from e
    if len(data) > c.MAX_MESSAGE_BYTES:
        raise ProtocolError(f"payload is {len(data)} bytes, over {c.MAX_MESSAGE_BYTES}",
                            code=c.E_TOO_LARGE)
    if type(obj) is msgpack.ExtType or type(obj) is msgpack.Timestamp or _has_ext_lead(data):
        try:
            _unpackb(data)
        except Exception as e:
            raise ProtocolError(f"cannot pack payload: {_why(e)}", code=c.E_INVALID,
                                data=data) from e
    return data


_EXT_LEADS = (b"\xc7", b"\xc8", b"\xc9", b"\xd4", b"\xd5", b"\xd6", b"\xd7", b"\xd8")


def _has_ext_lead(data: bytes) -> bool:
    return any(b in data for b in _EXT_LEADS)


def unpack(data: bytes) -> Any:
    """Decode one msgpack payload strictly: no trailing bytes, no ext types, within limits."""
    if type(data) is not bytes:
        try:
            data = bytes(memoryview(data))
        except TypeError as e:
            raise ProtocolError(f"payload must be bytes, not {type(data).__name__}") from e
    if len(data) > c.MAX_MESSAGE_BYTES:
        raise ProtocolError(f"payload is {len(data)} bytes, over {c.MAX_MESSAGE_BYTES}",
                            code=c.E_TOO_LARGE, data=data[:64])
    try:
        return _unpackb(data)
    except Exception as e:
        raise ProtocolError(f"bad msgpack payload: {_why(e)}", data=data) from e


def pack_array(values: Sequence[bytes]) -> bytes:
    """A msgpack array of values that are msgpack already (each is copied, never decoded)."""
    return _header(len(values), 0x90, b"\xdc", b"\xdd") + b"".join(values)


def pack_map(entries: Sequence[tuple[str, bytes]]) -> bytes:
    """A msgpack map of str keys to values that are msgpack already (never decoded)."""
    return _header(len(entries), 0x80, b"\xde", b"\xdf") + b"".join(_packb(k) + v for k, v in entries)


def _header(n: int, fix: int, sixteen: bytes, thirty_two: bytes) -> bytes:
    if n < 16:
        return bytes((fix | n,))
    if n < 1 << 16:
        return sixteen + n.to_bytes(2, "big")
    return thirty_two + n.to_bytes(4, "big")


def split_array(data: bytes) -> list[bytes]:
    """The msgpack of each value of a msgpack array, as bytes (not decoded); ProtocolError when
    ``data`` is not exactly one array."""
    unpacker = msgpack.Unpacker(max_buffer_size=max(len(data), 1))
    unpacker.feed(data)
    try:
        count = unpacker.read_array_header()
        bounds = [unpacker.tell()]
        for _ in range(count):
            unpacker.skip()
            bounds.append(unpacker.tell())
    except Exception as e:
        raise ProtocolError(f"bad msgpack array: {_why(e)}", data=data[:64]) from e
    if bounds[-1] != len(data):
        raise ProtocolError("bad msgpack array: trailing bytes after the value", data=data[:64])
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def _why(e: BaseException) -> str:
    if isinstance(e, _Invalid):
        return str(e)
    if isinstance(e, msgpack.ExtraData):
        return "trailing bytes after the value"
    if isinstance(e, msgpack.StackError):
        return "nesting too deep"
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# ---------------------------------------------------------------------------- field checks

Check = Callable[[Any], Any]


def _str(min_len: int, max_len: int) -> Check:
    def check(v: Any) -> Any:
        if type(v) is not str:
            raise _Invalid(f"must be str, not {type(v).__name__}")
        if not min_len <= len(v) <= max_len:
            raise _Invalid(f"length {len(v)} not in {min_len}..{max_len}")
        return v
    return check


def _int(lo: int, hi: int) -> Check:
    def check(v: Any) -> Any:
        if type(v) is not int:
            raise _Invalid(f"must be int, not {type(v).__name__}")
        if not lo <= v <= hi:
            raise _Invalid(f"{v} not in {lo}..{hi}")
        return v
    return check


def _bool(v: Any) -> Any:
    if type(v) is not bool:
        raise _Invalid(f"must be bool, not {type(v).__name__}")
    return v


def _float(v: Any) -> Any:
    t = type(v)
    if t is float:
        return v
    if t is int:
        return float(v)
    raise _Invalid(f"must be float, not {t.__name__}")


def _bytes(v: Any) -> Any:
    if type(v) is not bytes:
        raise _Invalid(f"must be bytes, not {type(v).__name__}")
    return v


def _dict(v: Any) -> Any:
    if type(v) is not dict:
        raise _Invalid(f"must be a map, not {type(v).__name__}")
    return v


def _str_key_dict(v: Any) -> Any:
    _dict(v)
    for k in v:
        if type(k) is not str:
            raise _Invalid(f"keys must be str, found {type(k).__name__}")
    return v


def _any(v: Any) -> Any:
    return v


def _call_id(allow_empty: bool) -> Check:
    match = c.CALL_ID_RE.fullmatch

    def check(v: Any) -> Any:
        if type(v) is not str:
            raise _Invalid(f"must be str, not {type(v).__name__}")
        if v == "" and allow_empty:
            return v
        if len(v) > c.MAX_CALL_ID_CHARS or match(v) is None:
            raise _Invalid(f"{v[:80]!r} is not 1..64 chars of [A-Za-z0-9._:-]")
        return v
    return check


def _result_error(v: Any) -> Any:
    if v is None:
        return v
    _dict(v)
    for key in ("type", "message", "traceback"):
        if type(v.get(key)) is not str:
            raise _Invalid(f"error[{key!r}] must be str")
    return v


def _deep_args(v: bytes) -> None:
    if type(_unpackb(v)) is not list:
        raise _Invalid("must be the msgpack of a list")


def _deep_kwargs(v: bytes) -> None:
    obj = _unpackb(v)
    if type(obj) is not dict:
        raise _Invalid("must be the msgpack of a map")
    _str_key_dict(obj)


def _deep_value(v: bytes) -> None:
    if v:
        _unpackb(v)


def _entries(schema: tuple[tuple[str, Check, Callable[[Any], None] | None], ...],
             cross: Callable[[dict[str, Any]], None] | None = None) -> Check:
    """A list of at most MAX_BATCH maps, each checked field by field like a message body.
    Deep checks (payload decoding) run here too, so a batch is validated as a whole."""
    def check(v: Any) -> Any:
        if type(v) is not list:
            raise _Invalid(f"must be a list, not {type(v).__name__}")
        if len(v) > c.MAX_BATCH:
            raise _Invalid(f"{len(v)} entries, over {c.MAX_BATCH}")
        for i, entry in enumerate(v):
            if type(entry) is not dict:
                raise _Invalid(f"entry {i} must be a map, not {type(entry).__name__}")
            for name, field_check, deep in schema:
                if name not in entry:
                    raise _Invalid(f"entry {i}: missing field {name!r}")
                try:
                    field_check(entry[name])
                    if deep is not None:
                        deep(entry[name])
                except Exception as e:
                    raise _Invalid(f"entry {i}.{name}: {_why(e)}") from e
            if cross is not None:
                cross(entry)
        return v
    return check


def _inline_result(v: Any) -> Any:
    """ACCEPTED.result: None, or a map {ok, value, error} checked like RESULT's fields."""
    if v is None:
        return v
    _dict(v)
    for name, check, _deep in _RESULT_FIELDS[1:]:
        if name not in v:
            raise _Invalid(f"missing field {name!r}")
        check(v[name])
    _result_consistent(v)
    return v


def _deep_inline_result(v: Any) -> None:
    if v is not None:
        _deep_value(v["value"])


def _result_consistent(fields: dict[str, Any]) -> None:
    if fields["ok"] and fields["error"] is not None:
        raise _Invalid("RESULT: ok is true but error is set")
    if not fields["ok"] and fields["error"] is None:
        raise _Invalid("RESULT: ok is false but error is missing")


_GRAPH_KINDS = ("call", "pipeline", "parallel", "funnel")


def _graph(v: Any) -> Any:
    """FLOW.graph: nested maps, each exactly one of ``{call, args, kwargs}`` (a step),
    ``{pipeline: [node...]}``, ``{parallel: [node...]}`` or ``{funnel: [node...], final: node
    or nil}``; at most MAX_GRAPH_NODES nodes, MAX_GRAPH_DEPTH deep, MAX_GRAPH_WIDTH wide.
    Step arguments are checked like CALL's (a msgpack list and a map with str keys)."""
    count = 0
    stack: list[tuple[Any, int, str]] = [(v, 0, "graph")]
    while stack:
        node, depth, where = stack.pop()
        count += 1
        if count > c.MAX_GRAPH_NODES:
            raise _Invalid(f"more than {c.MAX_GRAPH_NODES} nodes")
        if depth > c.MAX_GRAPH_DEPTH:
            raise _Invalid(f"{where}: nested deeper than {c.MAX_GRAPH_DEPTH}")
        if type(node) is not dict:
            raise _Invalid(f"{where}: must be a map, not {type(node).__name__}")
        kinds = [k for k in _GRAPH_KINDS if k in node]
        if len(kinds) != 1:
            raise _Invalid(f"{where}: must have exactly one of {', '.join(_GRAPH_KINDS)}")
        kind = kinds[0]
        if kind == "call":
            try:
                _str(1, c.MAX_NAME_CHARS)(node["call"])
                _bytes(node.get("args"))
                _deep_args(node["args"])
                _bytes(node.get("kwargs"))
                _deep_kwargs(node["kwargs"])
            except Exception as e:
                raise _Invalid(f"{where}: {_why(e)}") from e
            continue
        members = node[kind]
        if type(members) is not list or not 1 <= len(members) <= c.MAX_GRAPH_WIDTH:
            raise _Invalid(f"{where}.{kind}: must be a list of 1..{c.MAX_GRAPH_WIDTH} nodes")
        for i, member in enumerate(members):
            stack.append((member, depth + 1, f"{where}.{kind}[{i}]"))
        if kind == "funnel" and node.get("final") is not None:
            stack.append((node["final"], depth + 1, f"{where}.final"))
    return v


def _payload_list(max_items: int) -> Check:
    def check(v: Any) -> Any:
        if type(v) is not list or len(v) > max_items:
            raise _Invalid(f"must be a list of at most {max_items} payloads")
        for i, item in enumerate(v):
            if type(item) is not bytes:
                raise _Invalid(f"item {i} must be bytes")
        return v
    return check


def _deep_payloads(v: list) -> None:
    for item in v:
        _unpackb(item)


def _event_list(v: Any) -> Any:
    if type(v) is not list or len(v) > c.MAX_EVENTS:
        raise _Invalid(f"must be a list of at most {c.MAX_EVENTS} events")
    for i, event in enumerate(v):
        if type(event) is not dict:
            raise _Invalid(f"event {i} must be a map")
        _str_key_dict(event)
    return v


def _channel(v: Any) -> Any:
    if v not in c.CHANNELS:
        raise _Invalid(f"{v!r} is not one of {', '.join(c.CHANNELS)}")
    return v


_CALL_FIELDS = (("socket", _str(1, c.MAX_NAME_CHARS), None),
                ("args", _bytes, _deep_args),
                ("kwargs", _bytes, _deep_kwargs),
                ("call_id", _call_id(True), None))
_RESULT_FIELDS = (("call_id", _call_id(False), None),
                  ("ok", _bool, None),
                  ("value", _bytes, _deep_value),
                  ("error", _result_error, None))


# name -> (check, deep check run on decode only); order = dataclass field order.
_FIELDS: dict[int, tuple[tuple[str, Check, Callable[[Any], None] | None], ...]] = {
    c.PING: (),
    c.PONG: (("node", _str(0, c.MAX_NAME_CHARS), None),
             ("version", _str(0, c.MAX_TEXT_CHARS), None),
             ("time", _float, None)),
    c.CALL: (*_CALL_FIELDS, ("stream", _bool, None)),
    c.ACCEPTED: (("call_id", _call_id(False), None),
                 ("seq", _int(0, c.MAX_SEQ), None),
                 ("node", _str(0, c.MAX_NAME_CHARS), None),
                 ("duplicate", _bool, None),
                 ("result", _inline_result, _deep_inline_result)),
    c.GET: (("call_id", _call_id(False), None),
            ("wait_ms", _int(0, c.MAX_WAIT_MS), None)),
    c.RESULT: _RESULT_FIELDS,
    c.CALLS: (("calls", _entries(_CALL_FIELDS), None),
              ("push", _bool, None)),
    c.ACCEPTED_MANY: (("node", _str(0, c.MAX_NAME_CHARS), None),
                      ("accepted", _entries((("call_id", _call_id(False), None),
                                             ("seq", _int(0, c.MAX_SEQ), None),
                                             ("duplicate", _bool, None))), None),
                      ("refused", _entries((("call_id", _call_id(True), None),
                                            ("code", _int(c.MIN_ERROR_CODE, c.MAX_ERROR_CODE), None),
                                            ("reason", _str(0, c.MAX_TEXT_CHARS), None))), None)),
    c.RESULTS: (("results", _entries(_RESULT_FIELDS, _result_consistent), None),),
    c.PENDING: (("call_id", _call_id(False), None),
                ("state", _str(1, c.MAX_STATE_CHARS), None)),
    c.FLOW: (("graph", _graph, None),
             ("args", _bytes, _deep_args),
             ("kwargs", _bytes, _deep_kwargs),
             ("flow_id", _call_id(True), None)),
    c.STREAM: (("call_id", _call_id(False), None),
               ("start", _int(0, c.MAX_SEQ), None),
               ("wait_ms", _int(0, c.MAX_WAIT_MS), None)),
    c.ITEMS: (("call_id", _call_id(False), None),
              ("start", _int(0, c.MAX_SEQ), None),
              ("items", _payload_list(c.MAX_ITEMS), _deep_payloads),
              ("attempt", _int(0, c.MAX_SEQ), None),
              ("done", _bool, None),
              ("state", _str(1, c.MAX_STATE_CHARS), None),
              ("error", _result_error, None)),
    c.LISTEN: (("name", _str(0, c.MAX_NAME_CHARS), None),
               ("channel", _channel, None),
               ("ttl_ms", _int(c.MIN_LISTEN_TTL_MS, c.MAX_LISTEN_TTL_MS), None)),
    c.EVENTS: (("events", _event_list, None),
               ("dropped", _int(0, c.MAX_SEQ), None)),
    c.ADMIN: (("op", _str(1, c.MAX_OP_CHARS), None),
              ("args", _str_key_dict, None)),
    c.REPLY: (("data", _any, None),),
    c.ERROR: (("code", _int(c.MIN_ERROR_CODE, c.MAX_ERROR_CODE), None),
              ("reason", _str(0, c.MAX_TEXT_CHARS), None),
              ("detail", _dict, None)),
}

#: Fields added to a command after version 1 was first published: a receiver takes the default
#: when a sender omits them (senders of this code always send them).
_OPTIONAL: dict[tuple[int, str], Any] = {(c.ACCEPTED, "result"): None, (c.CALL, "stream"): False}

_CLASSES: dict[int, type] = {cls.COMMAND: cls for cls in MESSAGE_TYPES}
_HEADERS: dict[type, bytes] = {
    cls: c.SIGNATURE + bytes((c.VERSION, cls.COMMAND)) for cls in MESSAGE_TYPES
}


def _cross_check(cmd: int, fields: dict[str, Any]) -> None:
    """Rules that tie fields together."""
    if cmd == c.RESULT:
        _result_consistent(fields)


# ---------------------------------------------------------------------------- encode

def encode(msg: Message) -> list[bytes]:
    """Serialize a message to its 4 frames (header, request id, credentials, body).

    Raises ProtocolError (E_INVALID, or E_TOO_LARGE) when a field has the wrong type or is
    over a limit. Call.args/kwargs and Result.value are checked for type only; the receiver's
    decode checks their content.
    """
    if type(msg) is PeerMessage:
        return _encode_peer(msg)
    header = _HEADERS.get(type(msg))
    if header is None:
        raise ProtocolError(f"cannot encode {type(msg).__name__}: not a message",
                            code=c.E_INVALID)
    rid = msg.request_id
    if type(rid) is not bytes or len(rid) > c.MAX_REQUEST_ID_BYTES:
        raise ProtocolError(f"request_id must be bytes of at most {c.MAX_REQUEST_ID_BYTES}",
                            code=c.E_INVALID)
    cmd = msg.COMMAND
    body: dict[str, Any] = {}
    try:
        for name, check, _deep in _FIELDS[cmd]:
            try:
                body[name] = check(getattr(msg, name))
            except _Invalid as e:
                raise _Invalid(f"{type(msg).__name__}.{name}: {e}") from None
        _cross_check(cmd, body)
    except _Invalid as e:
        raise ProtocolError(f"cannot encode: {e}", code=c.E_INVALID, request_id=rid) from None
    try:
        data = _packb(body)
    except (TypeError, ValueError, OverflowError) as e:
        raise ProtocolError(f"cannot encode {type(msg).__name__}: {e}", code=c.E_INVALID,
                            request_id=rid) from e
    if len(data) > c.MAX_MESSAGE_BYTES:
        raise ProtocolError(f"body is {len(data)} bytes, over {c.MAX_MESSAGE_BYTES}",
                            code=c.E_TOO_LARGE, request_id=rid)
    return [header, rid, _encode_credentials(msg.credentials, rid), data]


def _encode_peer(msg: PeerMessage) -> list[bytes]:
    rid = msg.request_id
    if msg.command not in c.PEER_COMMAND_NAMES:
        raise ProtocolError(f"cannot encode: 0x{msg.command:02x} is not a peer command", code=c.E_INVALID)
    if type(rid) is not bytes or len(rid) > c.MAX_REQUEST_ID_BYTES:
        raise ProtocolError(f"request_id must be bytes of at most {c.MAX_REQUEST_ID_BYTES}",
                            code=c.E_INVALID)
    try:
        _str_key_dict(msg.body)
        data = _packb(msg.body)
    except (_Invalid, TypeError, ValueError, OverflowError) as e:
        raise ProtocolError(f"cannot encode {msg.name}: {e}", code=c.E_INVALID, request_id=rid) from e
    if len(data) > c.MAX_MESSAGE_BYTES:
        raise ProtocolError(f"body is {len(data)} bytes, over {c.MAX_MESSAGE_BYTES}",
                            code=c.E_TOO_LARGE, request_id=rid)
    header = c.SIGNATURE + bytes((c.VERSION, msg.command))
    return [header, rid, _encode_credentials(msg.credentials, rid), data]


def _encode_credentials(creds: Any, rid: bytes) -> bytes:
    if not creds:
        if type(creds) is not dict:
            raise ProtocolError("credentials must be a dict", code=c.E_INVALID, request_id=rid)
        return _EMPTY_MAP
    if type(creds) is not dict:
        raise ProtocolError("credentials must be a dict", code=c.E_INVALID, request_id=rid)
    try:
        data = _packb(creds)
    except (TypeError, ValueError, OverflowError) as e:
        raise ProtocolError(f"cannot encode credentials: {e}", code=c.E_INVALID,
                            request_id=rid) from e
    if len(data) > c.MAX_CREDENTIALS_BYTES:
        raise ProtocolError(f"credentials are {len(data)} bytes, over "
                            f"{c.MAX_CREDENTIALS_BYTES}", code=c.E_TOO_LARGE, request_id=rid)
    return data


# ---------------------------------------------------------------------------- decode

def decode(frames: Sequence[bytes]) -> Message:
    """Parse and validate 4 frames (no routing envelope) into a message.

    Checks, in order: signature and version (so a newer peer always gets E_VERSION), header
    length, frame count, command, request id, credentials, body, every field. Unknown body
    fields are ignored. Raises ProtocolError (UnsupportedVersion for the version).
    """
    try:
        n = len(frames)
        frames = [f if type(f) is bytes else bytes(memoryview(f)) for f in frames]
    except TypeError as e:
        raise ProtocolError(f"frames must be a sequence of bytes: {e}") from e
    if n == 0:
        raise ProtocolError("no frames")
    header = frames[0]
    if header[:2] != c.SIGNATURE:
        raise ProtocolError(f"frame 0: bad signature {header[:2]!r}", data=header)
    if len(header) < 3:
        raise ProtocolError(f"frame 0: header is {len(header)} bytes, expected "
                            f"{c.HEADER_BYTES}", data=header)
    rid = frames[1] if n > 1 and len(frames[1]) <= c.MAX_REQUEST_ID_BYTES else b""
    version = header[2]
    if version not in c.SUPPORTED_VERSIONS:
        raise UnsupportedVersion(
            f"frame 0: protocol version {version} not supported (supported: "
            f"{', '.join(map(str, c.SUPPORTED_VERSIONS))})",
            version=version, request_id=rid, data=header)
    if len(header) != c.HEADER_BYTES:
        raise ProtocolError(f"frame 0: header is {len(header)} bytes, expected "
                            f"{c.HEADER_BYTES}", request_id=rid, data=header)
    if n != c.FRAME_COUNT:
        raise ProtocolError(f"expected {c.FRAME_COUNT} frames, got {n}", request_id=rid,
                            data=b"".join(frames)[:256])
    cmd = header[3]
    cls = _CLASSES.get(cmd)
    if cls is None and cmd not in c.PEER_COMMAND_NAMES:
        raise ProtocolError(f"frame 0: unknown command 0x{cmd:02x}", request_id=rid,
                            data=header)
    if len(frames[1]) > c.MAX_REQUEST_ID_BYTES:
        raise ProtocolError(f"frame 1: request id is {len(frames[1])} bytes, over "
                            f"{c.MAX_REQUEST_ID_BYTES}", data=frames[1][:64])
    credentials = _decode_credentials(frames[2], rid)
    body = frames[3]
    if len(body) > c.MAX_MESSAGE_BYTES:
        raise ProtocolError(f"frame 3: body is {len(body)} bytes, over {c.MAX_MESSAGE_BYTES}",
                            code=c.E_TOO_LARGE, request_id=rid, data=body[:64])
    try:
        fields = _unpackb(body)
    except Exception as e:
        raise ProtocolError(f"frame 3: bad msgpack body: {_why(e)}", request_id=rid,
                            data=body) from e
    if type(fields) is not dict:
        raise ProtocolError(f"frame 3: body must be a map, not {type(fields).__name__}",
                            request_id=rid, data=body)
    if cls is None:
        try:
            _str_key_dict(fields)
        except _Invalid as e:
            raise ProtocolError(f"{c.PEER_COMMAND_NAMES[cmd]}: {e}", request_id=rid, data=body) from e
        return PeerMessage(command=cmd, body=fields, request_id=rid, credentials=credentials)
    name = c.COMMAND_NAMES[cmd]
    kwargs: dict[str, Any] = {}
    for field_name, check, deep in _FIELDS[cmd]:
        try:
            value = fields[field_name]
        except KeyError:
            if (cmd, field_name) not in _OPTIONAL:
                raise ProtocolError(f"{name}: missing field {field_name!r}", request_id=rid,
                                    data=body) from None
            value = _OPTIONAL[(cmd, field_name)]
        try:
            value = check(value)
            if deep is not None:
                deep(value)
        except Exception as e:
            raise ProtocolError(f"{name}.{field_name}: {_why(e)}", request_id=rid,
                                data=body) from e
        kwargs[field_name] = value
    try:
        _cross_check(cmd, kwargs)
    except _Invalid as e:
        raise ProtocolError(str(e), request_id=rid, data=body) from e
    return cls(request_id=rid, credentials=credentials, **kwargs)


def _decode_credentials(data: bytes, rid: bytes) -> dict:
    if data == _EMPTY_MAP:
        return {}
    if len(data) > c.MAX_CREDENTIALS_BYTES:
        raise ProtocolError(f"frame 2: credentials are {len(data)} bytes, over "
                            f"{c.MAX_CREDENTIALS_BYTES}", code=c.E_TOO_LARGE, request_id=rid,
                            data=data[:64])
    try:
        creds = _unpackb(data)
    except Exception as e:
        raise ProtocolError(f"frame 2: bad msgpack credentials: {_why(e)}", request_id=rid,
                            data=data) from e
    if type(creds) is not dict:
        raise ProtocolError(f"frame 2: credentials must be a map, not {type(creds).__name__}",
                            request_id=rid, data=data)
    return creds


def error_reply(exc: ProtocolError) -> Error:
    """The ERROR a server sends back for a message that failed to decode.

    Carries the exception's code, reason and request id; for UnsupportedVersion,
    ``detail["versions"]`` lists the versions this side supports.
    """
    detail: dict[str, Any] = {}
    if isinstance(exc, UnsupportedVersion):
        detail["versions"] = list(exc.versions)
    return Error(code=exc.code, reason=exc.reason, detail=detail, request_id=exc.request_id)
