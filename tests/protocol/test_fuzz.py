"""Property tests: payloads round-trip exactly; arbitrary frames decode or raise ProtocolError."""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import protocol as p

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
           | st.floats(allow_nan=False) | st.text(max_size=50) | st.binary(max_size=50))
keys = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
        | st.floats(allow_nan=False) | st.text(max_size=20) | st.binary(max_size=20))
payloads = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(keys, inner, max_size=6),
    max_leaves=40,
)
str_key_maps = st.dictionaries(st.text(max_size=20), payloads, max_size=6)


def same(a: Any, b: Any) -> bool:
    """Equality that also requires identical types all the way down (1 != True != 1.0)."""
    if type(a) is not type(b):
        return False
    if type(a) is list:
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if type(a) is dict:
        if len(a) != len(b):
            return False
        bk = {(type(k), k): k for k in b}
        return all((type(k), k) in bk and same(v, b[bk[(type(k), k)]]) for k, v in a.items())
    if type(a) is float and a == 0.0:
        return str(a) == str(b)  # keep the sign of zero
    return a == b


@SETTINGS
@given(payloads)
def test_pack_unpack_exact(value: Any) -> None:
    assert same(p.unpack(p.pack(value)), value)


@SETTINGS
@given(st.lists(payloads, max_size=5), str_key_maps, payloads,
       st.text(alphabet="abcXYZ019._:-", min_size=1, max_size=64), st.binary(max_size=32))
def test_call_and_result_round_trip(args: list, kwargs: dict, value: Any, call_id: str,
                                    rid: bytes) -> None:
    call = p.Call(socket="s", args=p.pack(args), kwargs=p.pack(kwargs), call_id=call_id,
                  request_id=rid)
    out = p.decode(p.encode(call))
    assert out == call
    assert same(p.unpack(out.args), args) and same(p.unpack(out.kwargs), kwargs)
    res = p.Result(call_id=call_id, ok=True, value=p.pack(value), request_id=rid)
    got = p.decode(p.encode(res))
    assert got == res and same(p.unpack(got.value), value)


@SETTINGS
@given(str_key_maps, payloads)
def test_admin_reply_round_trip(args: dict, data: Any) -> None:
    admin = p.Admin(op="ls_calls", args=args)
    assert same(p.decode(p.encode(admin)).args, args)
    assert same(p.decode(p.encode(p.Reply(data=data))).data, data)


def check_decode(frames: list[bytes]) -> None:
    try:
        msg = p.decode(frames)
    except p.ProtocolError as e:
        assert isinstance(e.reason, str) and e.reason
        assert isinstance(e.code, int) and type(e.request_id) is bytes
        return
    assert isinstance(msg, (*p.MESSAGE_TYPES, p.PeerMessage))
    assert p.decode(p.encode(msg)) == msg  # anything accepted re-encodes to the same message


@SETTINGS
@given(st.lists(st.binary(max_size=64), max_size=6))
def test_random_frames(frames: list[bytes]) -> None:
    check_decode(frames)


@SETTINGS
@given(st.sampled_from([m.COMMAND for m in p.MESSAGE_TYPES]), st.binary(max_size=200))
@example(0x10, b"\x84")
def test_random_body_valid_header(cmd: int, body: bytes) -> None:
    check_decode([b"EC\x01" + bytes((cmd,)), b"", b"\x80", body])


VALID = [p.encode(m) for m in (
    p.Call(socket="sock", args=p.pack([1, "x", {"a": [b"b"]}]), kwargs=p.pack({"k": 1.5}),
           call_id="abc", request_id=b"rid"),
    p.Result(call_id="abc", ok=False, error={"type": "E", "message": "m", "traceback": "t"}),
    p.Admin(op="add_processor", args={"name": "p", "concurrency": 2}),
    p.Accepted(call_id="abc", seq=7, node="n", duplicate=True),
    p.Pong(node="n", version="1", time=1.5),
)]


@SETTINGS
@given(st.sampled_from(VALID), st.data())
def test_mutated_valid_frames(frames: list[bytes], data: st.DataObject) -> None:
    frames = list(frames)
    i = data.draw(st.integers(0, 3))
    f = bytearray(frames[i])
    op = data.draw(st.sampled_from(["truncate", "flip", "insert", "drop_frame", "dup_frame"]))
    if op == "truncate":
        f = f[: data.draw(st.integers(0, max(0, len(f) - 1)))]
    elif op == "flip" and f:
        j = data.draw(st.integers(0, len(f) - 1))
        f[j] ^= data.draw(st.integers(1, 255))
    elif op == "insert":
        j = data.draw(st.integers(0, len(f)))
        f[j:j] = data.draw(st.binary(min_size=1, max_size=4))
    frames[i] = bytes(f)
    if op == "drop_frame":
        del frames[i]
    elif op == "dup_frame":
        frames.insert(i, frames[i])
    check_decode(frames)


@SETTINGS
@given(st.binary(max_size=100))
def test_unpack_garbage(data: bytes) -> None:
    try:
        p.unpack(data)
    except p.ProtocolError:
        pass


@SETTINGS
@given(st.binary(max_size=100))
def test_unpack_ext_never_leaks(data: bytes) -> None:
    try:
        value = p.unpack(data)
    except p.ProtocolError:
        return
    stack = [value]
    while stack:
        v = stack.pop()
        assert type(v) not in (msgpack.ExtType, msgpack.Timestamp)
        if type(v) is list:
            stack.extend(v)
        elif type(v) is dict:
            stack.extend(v)
            stack.extend(v.values())
