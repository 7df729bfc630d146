"""Tests of protocol.codec: round trips, strict decoding, limits, payload codec."""

from __future__ import annotations

import math
import struct

import msgpack
import pytest

import protocol as p
from protocol import constants as c

CID = "6f1c2a4e-0d0b-4b7e-9a51-0e6a1f3f9c11"


def all_messages() -> list[p.Message]:
    args, kwargs = p.pack([1, "a", b"b", None]), p.pack({"x": 1.5})
    return [
        p.Ping(),
        p.Ping(request_id=b"r" * 32, credentials={"user": "u", "token": b"t"}),
        p.Pong(node="n1", version="0.1.0", time=1700000000.25, request_id=b"\x00\xff"),
        p.Call(socket="sock", args=args, kwargs=kwargs),
        p.Call(socket="s" * 200, args=args, kwargs=kwargs, call_id=CID, request_id=b"1"),
        p.Accepted(call_id=CID, seq=0, node="n1"),
        p.Accepted(call_id="a" * 64, seq=c.MAX_SEQ, node="", duplicate=True),
        p.Accepted(call_id=CID, seq=5, node="n1", result={"ok": True, "value": p.pack([1, b"x"]), "error": None}),
        p.Accepted(call_id=CID, seq=6, node="n1",
                   result={"ok": False, "value": b"", "error": {"type": "E", "message": "m", "traceback": ""}}),
        p.Get(call_id=CID),
        p.Get(call_id="A.b_c:d-9", wait_ms=c.MAX_WAIT_MS),
        p.Result(call_id=CID, ok=True, value=p.pack({"r": [1, 2]})),
        p.Result(call_id=CID, ok=False,
                 error={"type": "ValueError", "message": "m", "traceback": "tb"}),
        p.Pending(call_id=CID, state="queued"),
        p.Calls(calls=[{"socket": "s", "args": args, "kwargs": kwargs, "call_id": CID},
                       {"socket": "t", "args": p.pack([]), "kwargs": p.pack({}), "call_id": ""}],
                push=True, request_id=b"b"),
        p.Calls(calls=[]),
        p.AcceptedMany(node="n1", accepted=[{"call_id": CID, "seq": 3, "duplicate": False}],
                       refused=[{"call_id": "x", "code": c.E_NOT_FOUND, "reason": "unknown socket 't'"}]),
        p.Results(results=[{"call_id": CID, "ok": True, "value": p.pack(None), "error": None},
                           {"call_id": "y", "ok": False, "value": b"",
                            "error": {"type": "E", "message": "m", "traceback": ""}}]),
        p.Flow(graph={"funnel": [{"call": "a", "args": args, "kwargs": kwargs},
                                 {"parallel": [{"call": "b", "args": p.pack([]), "kwargs": p.pack({})}]}],
                      "final": {"pipeline": [{"call": "c", "args": p.pack([1]), "kwargs": p.pack({})}]}},
               args=p.pack([]), kwargs=p.pack({}), flow_id=CID),
        p.Flow(graph={"call": "a", "args": args, "kwargs": kwargs}, args=args, kwargs=kwargs),
        p.Stream(call_id=CID, start=3, wait_ms=1000),
        p.Items(call_id=CID, start=0, items=[p.pack(1), p.pack("two")], attempt=1),
        p.Items(call_id=CID, start=2, items=[], attempt=1, done=True, state="failed",
                error={"type": "E", "message": "m", "traceback": ""}),
        p.Listen(name="proc1", channel="task", ttl_ms=5000),
        p.Events(events=[{"channel": "task", "event": "postrun", "call_id": CID}], dropped=2),
        p.Admin(op="add_queue", args={"name": "q", "type": "direct"}),
        p.Admin(op="status", args={}),
        p.Reply(data=[{"name": "q", "depth": 3}, None, 1.5, b"x"]),
        p.Reply(),
        p.Error(code=c.E_NOT_FOUND, reason="no such call", detail={"call_id": CID}),
        p.Error(code=c.E_VERSION, reason="v", detail={"versions": [1]}),
    ]


@pytest.mark.parametrize("msg", all_messages(), ids=lambda m: type(m).__name__)
def test_round_trip(msg: p.Message) -> None:
    frames = p.encode(msg)
    assert len(frames) == 4 and all(type(f) is bytes for f in frames)
    assert frames[0] == b"EC" + bytes((p.VERSION, msg.COMMAND))
    assert frames[1] == msg.request_id
    out = p.decode(frames)
    assert type(out) is type(msg) and out == msg


def test_every_message_type_covered() -> None:
    assert {type(m) for m in all_messages()} == set(p.MESSAGE_TYPES)
    assert len({cls.COMMAND for cls in p.MESSAGE_TYPES}) == len(p.MESSAGE_TYPES)


@pytest.mark.parametrize("graph, why", [
    ({}, "exactly one of"),
    ({"call": "a", "pipeline": []}, "exactly one of"),
    ({"pipeline": []}, "1..1000 nodes"),
    ({"parallel": "x"}, "1..1000 nodes"),
    ({"call": "a", "args": b"\x80", "kwargs": b"\x80"}, "msgpack of a list"),
    ({"call": "", "args": b"\x90", "kwargs": b"\x80"}, "length 0"),
    ({"pipeline": [{"pipeline": [{"call": "a", "args": b"\x90", "kwargs": b"\x81\x01\x02"}]}]}, "keys must be str"),
    ({"funnel": [{"call": "a", "args": b"\x90", "kwargs": b"\x80"}], "final": 7}, "must be a map"),
])
def test_flow_graph_is_checked(graph: dict, why: str) -> None:
    body = msgpack.packb({"graph": graph, "args": b"\x90", "kwargs": b"\x80", "flow_id": ""}, use_bin_type=True)
    with pytest.raises(p.ProtocolError) as info:
        p.decode([b"EC\x01\x18", b"r", b"\x80", body])
    assert why in info.value.reason and info.value.code == c.E_MALFORMED


def test_flow_graph_depth_and_size_are_bounded() -> None:
    leaf = {"call": "a", "args": b"\x90", "kwargs": b"\x80"}
    deep: dict = leaf
    for _ in range(c.MAX_GRAPH_DEPTH + 1):
        deep = {"pipeline": [deep]}
    wide = {"parallel": [{"parallel": [leaf] * 1000} for _ in range(11)]}
    for graph, why in ((deep, "deeper than"), (wide, "more than 10000 nodes")):
        body = msgpack.packb({"graph": graph, "args": b"\x90", "kwargs": b"\x80", "flow_id": ""}, use_bin_type=True)
        with pytest.raises(p.ProtocolError, match=why):
            p.decode([b"EC\x01\x18", b"r", b"\x80", body])


def test_listen_channel_and_ttl_are_checked() -> None:
    for fields, why in (({"name": "p", "channel": "nope", "ttl_ms": 5000}, "not one of"),
                        ({"name": "p", "channel": "task", "ttl_ms": 10}, "not in 1000..600000")):
        body = msgpack.packb(fields, use_bin_type=True)
        with pytest.raises(p.ProtocolError, match=why):
            p.decode([b"EC\x01\x1b", b"r", b"\x80", body])


def test_decode_accepts_bytes_like_frames() -> None:
    frames = p.encode(p.Get(call_id=CID, wait_ms=5, request_id=b"q"))
    assert p.decode([bytearray(f) for f in frames]) == p.decode(tuple(memoryview(f) for f in frames))


def test_empty_credentials_frame_is_empty_map() -> None:
    assert p.encode(p.Ping())[2] == b"\x80"


def test_unknown_body_fields_ignored() -> None:
    frames = p.encode(p.Get(call_id=CID, wait_ms=10))
    body = msgpack.unpackb(frames[3])
    body["future_field"] = [1, 2, 3]
    frames[3] = msgpack.packb(body, use_bin_type=True)
    assert p.decode(frames) == p.Get(call_id=CID, wait_ms=10)


def test_pong_time_int_accepted_as_float() -> None:
    frames = [b"EC\x01\x02", b"", b"\x80",
              msgpack.packb({"node": "n", "version": "1", "time": 5})]
    m = p.decode(frames)
    assert m.time == 5.0 and type(m.time) is float


# ---------------------------------------------------------------------------- framing errors

def err(frames: list) -> p.ProtocolError:
    with pytest.raises(p.ProtocolError) as info:
        p.decode(frames)
    return info.value


def good(msg: p.Message | None = None) -> list[bytes]:
    return p.encode(msg or p.Get(call_id=CID, request_id=b"rid"))


def test_wrong_version() -> None:
    frames = good()
    frames[0] = b"EC\x02\x12"
    e = err(frames)
    assert isinstance(e, p.UnsupportedVersion)
    assert e.code == p.E_VERSION and e.versions == p.SUPPORTED_VERSIONS and e.version == 2
    assert e.request_id == b"rid"
    assert "version 2" in e.reason


def test_wrong_version_reported_before_frame_count() -> None:
    e = err([b"EC\x09\x12\x00\x00", b"rid", b"x", b"y", b"z"])
    assert isinstance(e, p.UnsupportedVersion) and e.request_id == b"rid"
    e = err([b"EC\x00"])
    assert isinstance(e, p.UnsupportedVersion) and e.request_id == b""


def test_bad_signature() -> None:
    frames = good()
    frames[0] = b"XX\x01\x12"
    e = err(frames)
    assert e.code == p.E_MALFORMED and e.reason == "frame 0: bad signature b'XX'"
    assert e.data == b"XX\x01\x12"


@pytest.mark.parametrize("header", [b"", b"E", b"EC", b"EC\x01", b"EC\x01\x12\x00"])
def test_bad_header_length(header: bytes) -> None:
    frames = good()
    frames[0] = header
    assert err(frames).code == p.E_MALFORMED


def test_unknown_command() -> None:
    frames = good()
    frames[0] = b"EC\x01\x66"
    e = err(frames)
    assert "unknown command 0x66" in e.reason and e.request_id == b"rid"


@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 6])
def test_frame_count(n: int) -> None:
    frames = good()
    frames = (frames + [b"\x80", b"\x80"])[:n]
    e = err(frames)
    assert e.code == p.E_MALFORMED
    if n >= 2:
        assert e.request_id == b"rid"
        assert f"got {n}" in e.reason


def test_request_id_too_long() -> None:
    frames = good()
    frames[1] = b"x" * 33
    e = err(frames)
    assert "request id" in e.reason and e.request_id == b""


def test_oversize_body() -> None:
    frames = good()
    frames[3] = b"\x80" + b"\x00" * c.MAX_MESSAGE_BYTES
    e = err(frames)
    assert e.code == p.E_TOO_LARGE and e.request_id == b"rid"


def test_oversize_credentials() -> None:
    frames = good()
    frames[2] = msgpack.packb({"k": "v" * c.MAX_CREDENTIALS_BYTES})
    assert err(frames).code == p.E_TOO_LARGE
    with pytest.raises(p.ProtocolError) as info:
        p.encode(p.Ping(credentials={"k": "v" * c.MAX_CREDENTIALS_BYTES}))
    assert info.value.code == p.E_TOO_LARGE


@pytest.mark.parametrize("creds", [b"", b"\x90", b"\xc1", b"\x81\xa1k", b"\x80\x80",
                                   msgpack.packb(msgpack.ExtType(3, b"x"))])
def test_bad_credentials(creds: bytes) -> None:
    frames = good()
    frames[2] = creds
    e = err(frames)
    assert e.code == p.E_MALFORMED and e.reason.startswith("frame 2")


def test_deep_nesting_body_and_payload() -> None:
    deep = b"\x91" * 5000 + b"\xc0"
    frames = good(p.Reply(data=None, request_id=b"rid"))
    frames[3] = b"\x81\xa4data" + deep
    e = err(frames)
    assert e.code == p.E_MALFORMED and "too deep" in e.reason
    with pytest.raises(p.ProtocolError, match="too deep"):
        p.unpack(deep)
    call = p.encode(p.Call(socket="s", args=b"\x90", kwargs=b"\x80"))
    call[3] = msgpack.packb({"socket": "s", "args": deep, "kwargs": b"\x80", "call_id": ""},
                           use_bin_type=True)
    assert "Call".upper() in err(call).reason


@pytest.mark.parametrize("body", [b"", b"\xc1", b"\x90", b"\xa3abc", b"\x81", b"\x80\x80",
                                  b"\x81\xa4data\xc0\x00"])
def test_bad_body(body: bytes) -> None:
    frames = good(p.Reply(request_id=b"rid"))
    frames[3] = body
    e = err(frames)
    assert e.code == p.E_MALFORMED and e.request_id == b"rid" and e.reason.startswith("frame 3")
    assert e.data == body


def body_frames(cmd: int, body: dict) -> list[bytes]:
    return [b"EC\x01" + bytes((cmd,)), b"", b"\x80", msgpack.packb(body, use_bin_type=True)]


GOOD_BODIES = {
    c.PONG: {"node": "n", "version": "v", "time": 1.0},
    c.CALL: {"socket": "s", "args": b"\x90", "kwargs": b"\x80", "call_id": ""},
    c.ACCEPTED: {"call_id": CID, "seq": 1, "node": "n", "duplicate": False, "result": None},
    c.GET: {"call_id": CID, "wait_ms": 0},
    c.RESULT: {"call_id": CID, "ok": True, "value": b"\xc0", "error": None},
    c.PENDING: {"call_id": CID, "state": "queued"},
    c.ADMIN: {"op": "status", "args": {}},
    c.REPLY: {"data": None},
    c.ERROR: {"code": 404, "reason": "r", "detail": {}},
}

BAD_FIELDS = [
    (c.PONG, "time", "1"), (c.PONG, "time", True), (c.PONG, "node", b"n"),
    (c.PONG, "node", "n" * 201),
    (c.CALL, "socket", ""), (c.CALL, "socket", "s" * 201), (c.CALL, "socket", 1),
    (c.CALL, "args", "[]"), (c.CALL, "args", b"\x80"), (c.CALL, "args", b"\x91"),
    (c.CALL, "args", b"\x90\x90"), (c.CALL, "kwargs", b"\x90"),
    (c.CALL, "kwargs", b"\x81\x01\x02"), (c.CALL, "kwargs", None),
    (c.CALL, "call_id", "has space"), (c.CALL, "call_id", "x" * 65), (c.CALL, "call_id", None),
    (c.CALL, "call_id", "é"),
    (c.ACCEPTED, "call_id", ""), (c.ACCEPTED, "seq", True), (c.ACCEPTED, "seq", -1),
    (c.ACCEPTED, "seq", 2**63), (c.ACCEPTED, "seq", 1.0), (c.ACCEPTED, "duplicate", 0),
    (c.ACCEPTED, "duplicate", None),
    (c.GET, "wait_ms", True), (c.GET, "wait_ms", -1), (c.GET, "wait_ms", c.MAX_WAIT_MS + 1),
    (c.GET, "wait_ms", 1.5), (c.GET, "call_id", "a/b"),
    (c.RESULT, "ok", 1), (c.RESULT, "value", b"\xc1"), (c.RESULT, "value", None),
    (c.RESULT, "error", {"type": "T", "message": "m", "traceback": "t"}),
    (c.RESULT, "error", "boom"),
    (c.PENDING, "state", ""), (c.PENDING, "state", "x" * 33),
    (c.ADMIN, "op", ""), (c.ADMIN, "args", []), (c.ADMIN, "args", {1: 2}),
    (c.ERROR, "code", True), (c.ERROR, "code", 99), (c.ERROR, "code", 1000),
    (c.ERROR, "code", "404"), (c.ERROR, "detail", None), (c.ERROR, "reason", None),
]


@pytest.mark.parametrize("cmd,name,value", BAD_FIELDS, ids=lambda v: repr(v)[:30])
def test_bad_field(cmd: int, name: str, value: object) -> None:
    body = dict(GOOD_BODIES[cmd], **{name: value})
    assert p.decode(body_frames(cmd, GOOD_BODIES[cmd])) is not None
    e = err(body_frames(cmd, body))
    assert e.code == p.E_MALFORMED and name in e.reason, e.reason


@pytest.mark.parametrize("cmd", sorted(GOOD_BODIES))
def test_missing_field(cmd: int) -> None:
    optional = {(c.ACCEPTED, "result")}  # added later: may be omitted (see the test below)
    for name in GOOD_BODIES[cmd]:
        if (cmd, name) in optional:
            continue
        body = dict(GOOD_BODIES[cmd])
        del body[name]
        assert f"missing field {name!r}" in err(body_frames(cmd, body)).reason


def test_result_failed_needs_error() -> None:
    body = dict(GOOD_BODIES[c.RESULT], ok=False)
    assert "error is missing" in err(body_frames(c.RESULT, body)).reason


def test_ext_types_rejected_in_body() -> None:
    for ext in (msgpack.ExtType(5, b"abc"), msgpack.Timestamp(1, 2), msgpack.Timestamp(2**34),
                msgpack.Timestamp(2**40, 5)):
        frames = body_frames(c.REPLY, {"data": [1, {"k": ext}]})
        e = err(frames)
        assert "ext type" in e.reason or "timestamp" in e.reason


# ---------------------------------------------------------------------------- encode errors

@pytest.mark.parametrize("msg", [
    p.Call(socket="", args=b"\x90", kwargs=b"\x80"),
    p.Call(socket="s", args=[1], kwargs=b"\x80"),  # type: ignore[arg-type]
    p.Get(call_id=""),
    p.Get(call_id=CID, wait_ms=True),
    p.Accepted(call_id=CID, seq=1, node="n", duplicate=1),  # type: ignore[arg-type]
    p.Ping(request_id=b"x" * 33),
    p.Ping(request_id="text"),  # type: ignore[arg-type]
    p.Ping(credentials=None),  # type: ignore[arg-type]
    p.Reply(data=object()),
    p.Reply(data=2**64),
    p.Result(call_id=CID, ok=True, error={"type": "", "message": "", "traceback": ""}),
])
def test_encode_rejects(msg: p.Message) -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.encode(msg)
    assert info.value.code == p.E_INVALID


def test_encode_rejects_non_message() -> None:
    with pytest.raises(p.ProtocolError):
        p.encode("hello")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- pack / unpack

def test_pack_types() -> None:
    value = {"s": "x", "b": b"\x00", "i": -(2**63), "u": 2**64 - 1, "f": 1.5, "t": True,
             "n": None, "l": [1, [2]], 1: "int key", b"k": "bytes key", None: 0}
    out = p.unpack(p.pack(value))
    assert out == value and type(out["b"]) is bytes and type(out["t"]) is bool
    assert p.unpack(p.pack((1, 2))) == [1, 2]
    assert math.isnan(p.unpack(p.pack(float("nan"))))


@pytest.mark.parametrize("value", [object(), {1, 2}, 2**64, -(2**63) - 1,
                                   msgpack.ExtType(1, b""), msgpack.Timestamp(0),
                                   [msgpack.ExtType(1, b"")], {"t": msgpack.Timestamp(9)}])
def test_pack_rejects(value: object) -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.pack(value)
    assert info.value.code == p.E_INVALID


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x92\x01", b"\x01\x02", b"\xa1\xff",
                                  b"\x81\x90\x01", b"\xd4\x01\x00",
                                  b"\xd6\xff" + struct.pack(">I", 1)])
def test_unpack_rejects(data: bytes) -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.unpack(data)
    assert info.value.code == p.E_MALFORMED and info.value.data == data
    assert info.value.__cause__ is not None


def test_unpack_too_large() -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.unpack(b"\xc0" * (c.MAX_MESSAGE_BYTES + 1))
    assert info.value.code == p.E_TOO_LARGE


def test_unpack_timestamp_marker_false_positive() -> None:
    value = [b"\xd6\xff\xd7\xff\xc7\x0c\xff", "x"]
    assert p.unpack(p.pack(value)) == value


def test_error_reply_for_bad_version() -> None:
    with pytest.raises(p.UnsupportedVersion) as info:
        p.decode([b"EC\x07\x10", b"rid", b"\x80", b"\x80"])
    reply = p.error_reply(info.value)
    assert reply == p.Error(code=p.E_VERSION, reason=info.value.reason,
                            detail={"versions": [1]}, request_id=b"rid")
    frames = p.encode(reply)
    assert frames[0] == b"EC" + bytes((min(p.SUPPORTED_VERSIONS), p.ERROR))
    assert p.decode(frames) == reply


def test_error_reply_for_malformed() -> None:
    e = err([b"EC\x01\x12", b"rid", b"\x80", b"\xc1"])
    assert p.error_reply(e) == p.Error(code=p.E_MALFORMED, reason=e.reason, request_id=b"rid")


def test_nesting_limit_is_1024() -> None:
    assert p.unpack(b"\x91" * 1024 + b"\xc0") is not None
    with pytest.raises(p.ProtocolError, match="too deep"):
        p.unpack(b"\x91" * 1025 + b"\xc0")


def _calls_frames(entries: list) -> list[bytes]:
    body = msgpack.packb({"calls": entries, "push": False}, use_bin_type=True)
    return [b"EC" + bytes((p.VERSION, c.CALLS)), b"r", b"\x80", body]


@pytest.mark.parametrize("entries, why", [
    ([{"socket": "s", "args": p.pack({}), "kwargs": p.pack({}), "call_id": ""}], "msgpack of a list"),
    ([{"socket": "s", "args": p.pack([]), "kwargs": p.pack({}), "call_id": "bad id"}], "call_id"),
    ([{"socket": "s", "args": p.pack([]), "kwargs": p.pack({})}], "missing field 'call_id'"),
    (["not a map"], "must be a map"),
    ([{"socket": "s", "args": p.pack([]), "kwargs": p.pack({}), "call_id": ""}] * (c.MAX_BATCH + 1), "over"),
])
def test_calls_batch_is_validated_per_entry(entries: list, why: str) -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.decode(_calls_frames(entries))
    assert why in info.value.reason and info.value.request_id == b"r"


def test_results_batch_checks_consistency() -> None:
    body = msgpack.packb({"results": [{"call_id": CID, "ok": False, "value": b"", "error": None}]},
                         use_bin_type=True)
    with pytest.raises(p.ProtocolError, match="error is missing"):
        p.decode([b"EC" + bytes((p.VERSION, c.RESULTS)), b"", b"\x80", body])


@pytest.mark.parametrize("result, why", [
    ({"ok": True, "value": b"\xc1", "error": None}, "result"),
    ({"ok": False, "value": b"", "error": None}, "error is missing"),
    ({"ok": True, "error": None}, "missing field 'value'"),
    ([1], "must be a map"),
])
def test_accepted_inline_result_is_validated(result: object, why: str) -> None:
    body = msgpack.packb({"call_id": CID, "seq": 1, "node": "n", "duplicate": False, "result": result},
                         use_bin_type=True)
    with pytest.raises(p.ProtocolError) as info:
        p.decode([b"EC" + bytes((p.VERSION, c.ACCEPTED)), b"", b"\x80", body])
    assert why in info.value.reason


def test_accepted_without_result_field_decodes_as_none() -> None:
    """``result`` came after ACCEPTED was first specified: a sender that omits it is fine."""
    body = msgpack.packb({"call_id": CID, "seq": 1, "node": "n", "duplicate": False}, use_bin_type=True)
    msg = p.decode([b"EC" + bytes((p.VERSION, c.ACCEPTED)), b"", b"\x80", body])
    assert msg == p.Accepted(call_id=CID, seq=1, node="n")
