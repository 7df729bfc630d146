"""End to end: garbage on the daemon's client socket.

A raw pyzmq DEALER sends malformed, truncated, oversize, wrong-version and deeply nested messages
to a real ``ecd``. For each, the node answers with an ERROR reply (which must itself decode) or
drops the message; afterwards it still answers PING, still runs calls, and its process is alive.

Every probe is followed by a PING on the same connection: replies come back in order, so the
PONG proves the node processed the garbage and everything received before the PONG is the
garbage's answer. No sleeps, no guessing how long a reply may take.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import protocol
from ecctl import Client, Function, RemoteError, ServerError
from tests.conftest import EcdProcess, sample_node_for_module

HEADER = protocol.constants.SIGNATURE + bytes((protocol.VERSION,))
EMPTY = b"\x80"


@pytest.fixture(scope="module")
def gnode(venv_cache: Path, sample_repo: str) -> Iterator[EcdProcess]:
    with sample_node_for_module(venv_cache, sample_repo, "ec-garbage-", retries=0) as node:
        yield node


class RawPeer:
    """A bare DEALER connected to the node; nothing of ecctl's client logic."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.ctx = zmq.Context()
        self.sock = self._connect()
        self._probes = 0

    def _connect(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES + 65536)
        sock.connect(self.endpoint)
        return sock

    def reconnect(self) -> None:
        self.sock.close(linger=0)
        self.sock = self._connect()

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames, copy=False)

    def probe(self, timeout: float = 20.0) -> list[Any]:
        """PING and wait for its PONG; return the decoded replies that arrived before it."""
        self._probes += 1
        rid = b"probe-%d" % self._probes
        self.sock.send_multipart(protocol.encode(protocol.Ping(request_id=rid)))
        replies: list[Any] = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.sock.poll(int(remaining * 1000) + 1):
                raise AssertionError(f"no PONG within {timeout}s (replies so far: {replies})")
            frames = self.sock.recv_multipart()
            reply = protocol.decode(frames)         # every reply of the node must decode
            if isinstance(reply, protocol.Pong) and reply.request_id == rid:
                return replies
            replies.append(reply)

    def exchange(self, frames: list[bytes]) -> list[Any]:
        self.send(frames)
        return self.probe()

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


@pytest.fixture
def peer(gnode: EcdProcess) -> Iterator[RawPeer]:
    p = RawPeer(gnode.endpoint)
    yield p
    p.close()


def assert_node_healthy(node: EcdProcess) -> None:
    assert node.proc is not None and node.proc.poll() is None, f"ecd exited:\n{node.log()}"
    with Client(node.endpoint) as client:
        client.ping()
        assert Function("sample.tasks.add_two", client=client)(40, 2).get(timeout=30) == 42
    assert node.proc.poll() is None, f"ecd exited:\n{node.log()}"


def body(**fields: Any) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


def call_frames(rid: bytes = b"rid-1", **overrides: Any) -> list[bytes]:
    fields = {"socket": "sample.tasks.echo", "args": msgpack.packb([1]), "kwargs": EMPTY, "call_id": ""}
    fields.update(overrides)
    return [HEADER + bytes((protocol.constants.CALL,)), rid, EMPTY, body(**fields)]


def single_error(replies: list[Any], code: int | None = None, rid: bytes | None = None) -> protocol.Error:
    assert len(replies) == 1, replies
    reply = replies[0]
    assert isinstance(reply, protocol.Error), reply
    assert reply.reason, reply
    if code is not None:
        assert reply.code == code, reply
    if rid is not None:
        assert reply.request_id == rid, reply
    return reply


# ------------------------------------------------------------------------ named cases

CALL = bytes((protocol.constants.CALL,))
CALLS = bytes((protocol.constants.CALLS,))
GET = bytes((protocol.constants.GET,))


def calls_frames(rid: bytes, calls: Any, push: Any = False) -> list[bytes]:
    return [HEADER + CALLS, rid, EMPTY, body(calls=calls, push=push)]


def entry(socket: str = "no.such.socket", args: bytes = b"\x90", kwargs: bytes = EMPTY, call_id: str = "") -> dict:
    return {"socket": socket, "args": args, "kwargs": kwargs, "call_id": call_id}


MALFORMED_CASES: dict[str, tuple[list[bytes], int, bytes | None]] = {
    # name: (frames, expected code, expected echoed request id or None when unreadable)
    "random bytes, one frame": ([b"\x00" + os.urandom(63)], 400, None),
    "empty frame": ([b""], 400, None),
    "three frames": ([HEADER + CALL, b"rid-3", EMPTY], 400, b"rid-3"),
    "five frames": ([HEADER + CALL, b"rid-5", EMPTY, EMPTY, EMPTY], 400, b"rid-5"),
    "wrong signature": ([b"XY\x01\x10", b"rid-s", EMPTY, EMPTY], 400, None),
    "short header": ([b"EC\x01", b"rid-h", EMPTY, EMPTY], 400, None),
    "long header": ([HEADER + CALL + b"\x00", b"rid-l", EMPTY, EMPTY], 400, b"rid-l"),
    "unknown command": ([HEADER + b"\x55", b"rid-u", EMPTY, EMPTY], 400, b"rid-u"),
    "reply command sent as request": (
        [HEADER + bytes((protocol.constants.PONG,)), b"rid-p", EMPTY, body(node="x", version="1", time=1.0)],
        400, b"rid-p"),
    "request id over 32 bytes": ([HEADER + CALL, b"r" * 33, EMPTY, EMPTY], 400, None),
    "credentials not msgpack": (call_frames(b"rid-c")[:2] + [b"\xc1", call_frames()[3]], 400, b"rid-c"),
    "credentials not a map": (call_frames(b"rid-c2")[:2] + [b"\x91\x01", call_frames()[3]], 400, b"rid-c2"),
    "body not msgpack": ([HEADER + CALL, b"rid-b", EMPTY, b"\xc1\xc1"], 400, b"rid-b"),
    "body not a map": ([HEADER + CALL, b"rid-b2", EMPTY, msgpack.packb([1, 2])], 400, b"rid-b2"),
    "truncated msgpack body": (call_frames(b"rid-t")[:3] + [call_frames()[3][:-3]], 400, b"rid-t"),
    "trailing bytes after body": (call_frames(b"rid-x")[:3] + [call_frames()[3] + b"\x00"], 400, b"rid-x"),
    "missing field": ([HEADER + CALL, b"rid-m", EMPTY, body(socket="sample.tasks.echo")], 400, b"rid-m"),
    "CALL args not a list": (call_frames(b"rid-a", args=msgpack.packb({"a": 1})), 400, b"rid-a"),
    "CALL args not bytes": (call_frames(b"rid-a2", args=[1, 2]), 400, b"rid-a2"),
    "CALL args truncated": (call_frames(b"rid-a3", args=msgpack.packb([1, "abc"])[:-2]), 400, b"rid-a3"),
    "CALL kwargs with int keys": (call_frames(b"rid-k", kwargs=msgpack.packb({1: 2})), 400, b"rid-k"),
    "CALL bad call id": (call_frames(b"rid-i", call_id="has spaces/and slashes"), 400, b"rid-i"),
    "CALL ext type in args": (call_frames(b"rid-e", args=b"\x91\xd4\x05\x00"), 400, b"rid-e"),
    "CALL unknown socket": (call_frames(b"rid-n", socket="no.such.socket"), 404, b"rid-n"),
    "GET unknown call": ([HEADER + GET, b"rid-g", EMPTY, body(call_id="nope", wait_ms=0)], 404, b"rid-g"),
    "GET negative wait": ([HEADER + GET, b"rid-g2", EMPTY, body(call_id="nope", wait_ms=-1)], 400, b"rid-g2"),
    "deeply nested body": ([HEADER + CALL, b"rid-d", EMPTY, b"\x81\xa1a" + b"\x91" * 100_000 + b"\xc0"],
                           400, b"rid-d"),
    "deeply nested args": (call_frames(b"rid-d2", args=b"\x91" * 5000 + b"\xc0"), 400, b"rid-d2"),
    "CALLS calls not a list": (calls_frames(b"rid-cl", {"a": 1}), 400, b"rid-cl"),
    "CALLS entry not a map": (calls_frames(b"rid-cl2", [1, 2]), 400, b"rid-cl2"),
    "CALLS entry missing field": (calls_frames(b"rid-cl3", [{"socket": "sample.tasks.noop"}]), 400, b"rid-cl3"),
    "CALLS entry args not a list": (calls_frames(b"rid-cl4", [entry("sample.tasks.echo", msgpack.packb({}))]),
                                    400, b"rid-cl4"),
    "CALLS entry deeply nested args": (calls_frames(b"rid-cl5", [entry(args=b"\x91" * 5000 + b"\xc0")]), 400,
                                       b"rid-cl5"),
    "CALLS over MAX_BATCH entries": (calls_frames(b"rid-cl6", [entry()] * (protocol.MAX_BATCH + 1)), 400, b"rid-cl6"),
    "CALLS push not a bool": (calls_frames(b"rid-cl7", [entry()], push=1), 400, b"rid-cl7"),
    "ADMIN unknown op": ([HEADER + bytes((protocol.constants.ADMIN,)), b"rid-o", EMPTY, body(op="rm_rf", args={})],
                         404, b"rid-o"),
    "ADMIN args not a map": ([HEADER + bytes((protocol.constants.ADMIN,)), b"rid-o2", EMPTY,
                              body(op="status", args=[1])], 400, b"rid-o2"),
    "ADMIN bad arg types": ([HEADER + bytes((protocol.constants.ADMIN,)), b"rid-o3", EMPTY,
                             body(op="ls_calls", args={"limit": "many"})], 422, b"rid-o3"),
}


KNOWN_BUGS: dict[str, str] = {}  # case name -> reason, for cases xfailed on a known product bug


@pytest.mark.parametrize("case", [
    pytest.param(name, id=name, marks=[pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[name])] if name in KNOWN_BUGS else [])
    for name in MALFORMED_CASES
])
def test_malformed_message_gets_error_reply(gnode: EcdProcess, peer: RawPeer, case: str) -> None:
    frames, code, rid = MALFORMED_CASES[case]
    reply = single_error(peer.exchange(frames), code, rid)
    assert 400 <= reply.code < 500, reply      # the sender's fault, never an internal error
    assert gnode.proc is not None and gnode.proc.poll() is None


def test_calls_batch_refuses_bad_entries_one_by_one(gnode: EcdProcess, peer: RawPeer) -> None:
    good = entry("sample.tasks.add_two", msgpack.packb([20, 22]), call_id="batch-good-1")
    bad = entry("no.such.socket", call_id="batch-bad-1")
    peer.send(calls_frames(b"rid-batch", [good, bad], push=True))
    replies: list[Any] = peer.probe()
    deadline = time.monotonic() + 30
    while not any(isinstance(r, protocol.Results) for r in replies):      # pushed when it ends
        assert time.monotonic() < deadline, replies
        if peer.sock.poll(100):
            replies.append(protocol.decode(peer.sock.recv_multipart()))
    many = [r for r in replies if isinstance(r, protocol.AcceptedMany)]
    assert len(many) == 1 and many[0].request_id == b"rid-batch", replies
    assert [a["call_id"] for a in many[0].accepted] == ["batch-good-1"]
    assert [(r["call_id"], r["code"]) for r in many[0].refused] == [("batch-bad-1", 404)]
    assert "no.such.socket" in many[0].refused[0]["reason"]
    results = [e for r in replies if isinstance(r, protocol.Results) for e in r.results]
    assert [(e["call_id"], e["ok"], protocol.unpack(e["value"])) for e in results] == [("batch-good-1", True, 42)]


def test_wrong_version_gets_505_with_versions(gnode: EcdProcess, peer: RawPeer) -> None:
    for version in (0, 2, 255):
        frames = [b"EC" + bytes((version, protocol.constants.PING)), b"rid-v%d" % version, EMPTY, EMPTY]
        reply = single_error(peer.exchange(frames), 505, b"rid-v%d" % version)
        assert reply.detail == {"versions": list(protocol.SUPPORTED_VERSIONS)}
    # even a future version's 2-frame hello is answered with the versions we speak
    reply = single_error(peer.exchange([b"EC\x02\x01", b"rid-v"]), 505)
    assert reply.detail["versions"] == [1]
    assert_node_healthy(gnode)


def test_oversize_body_refused(gnode: EcdProcess, peer: RawPeer) -> None:
    # just over the protocol limit, under the transport limit: the codec refuses it (413)
    big = b"\xc6" + (protocol.MAX_MESSAGE_BYTES - 4).to_bytes(4, "big") + b"\x00" * (protocol.MAX_MESSAGE_BYTES - 4)
    assert len(big) == protocol.MAX_MESSAGE_BYTES + 1
    frames = [HEADER + CALL, b"rid-big", EMPTY, big]
    single_error(peer.exchange(frames), 413, b"rid-big")
    del big, frames
    assert_node_healthy(gnode)


def test_far_oversize_message_dropped_node_survives(gnode: EcdProcess, peer: RawPeer) -> None:
    # over the transport's MAXMSGSIZE: libzmq drops the connection (or the node answers 413)
    huge = b"\x00" * (protocol.MAX_MESSAGE_BYTES + 1024 * 1024)
    peer.send([HEADER + CALL, b"rid-huge", EMPTY, huge])
    del huge
    peer.reconnect()              # the old connection may be gone: probe on a fresh one
    replies = peer.probe()
    assert all(isinstance(r, protocol.Error) for r in replies), replies
    assert_node_healthy(gnode)


def nest(depth: int) -> Any:
    value: Any = None
    for _ in range(depth):
        value = [value]
    return value


def depth_of(value: Any) -> int:
    """Nesting depth of lists/dicts, without recursion (Python's == recurses and overflows)."""
    depth, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
            depth = max(depth, level + 1)
        elif isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
            depth = max(depth, level + 1)
    return depth


def test_deep_but_legal_nesting_round_trips(gnode: EcdProcess) -> None:
    """Nesting the codec accepts reaches the worker and back; a result nested too deep to pack
    is a clean failure of that one call."""
    with Client(gnode.endpoint) as client:
        echo = Function("sample.tasks.echo", client=client)
        # msgpack's limit is 1024 levels; echo wraps its args 2 levels deeper
        value = echo(nest(1022)).get(timeout=30)
        assert set(value) == {"args", "kwargs"} and depth_of(value) == 1024
        with pytest.raises(RemoteError) as info:
            echo(nest(1023)).get(timeout=30)
        assert info.value.type == "TypeError" and "not serialisable" in info.value.message
    assert_node_healthy(gnode)


def test_ls_call_result_of_deeply_nested_value(gnode: EcdProcess) -> None:
    with Client(gnode.endpoint) as client:
        r = client.call("sample.tasks.echo", nest(1022))
        assert depth_of(r.get(timeout=30)) == 1024
        try:
            record = client.ls_call(r.id, result=True)
        except ServerError as exc:
            # a clear refusal is acceptable; an internal error is not
            assert exc.code != protocol.E_INTERNAL, exc
        else:
            assert record["state"] == "done"
    assert_node_healthy(gnode)


def test_interleaved_garbage_and_valid_calls(gnode: EcdProcess, peer: RawPeer) -> None:
    """Garbage from one peer does not disturb the valid requests around it."""
    good = protocol.encode(protocol.Call(socket="sample.tasks.add_two", args=msgpack.packb([1, 2]),
                                         kwargs=EMPTY, call_id="garbage-neighbour-1", request_id=b"good"))
    peer.send([b"\xff" * 10])
    peer.send(good)
    peer.send(call_frames(b"bad", args=b"\x92"))
    replies = peer.probe()
    # ACCEPTED waits for the log's fsync, so it may come after the PONG
    deadline = time.monotonic() + 20
    while not any(isinstance(r, protocol.Accepted) for r in replies):
        assert time.monotonic() < deadline, replies
        if peer.sock.poll(100):
            replies.append(protocol.decode(peer.sock.recv_multipart()))
    accepted = [r for r in replies if isinstance(r, protocol.Accepted)]
    errors = [r for r in replies if isinstance(r, protocol.Error)]
    assert len(accepted) == 1 and accepted[0].call_id == "garbage-neighbour-1", replies
    assert accepted[0].request_id == b"good"
    assert sorted(e.request_id for e in errors) == [b"", b"bad"], replies
    with Client(gnode.endpoint) as client:
        assert client.result("garbage-neighbour-1", timeout=30) == 3


# -------------------------------------------------------------------------- hypothesis

COMMANDS = [protocol.constants.PING, protocol.constants.CALL, protocol.constants.GET, protocol.constants.ADMIN,
            protocol.constants.CALLS, protocol.constants.ACCEPTED_MANY, protocol.constants.RESULTS,
            protocol.constants.PONG, protocol.constants.RESULT, protocol.constants.ERROR, 0x00, 0x40, 0xFF]

payload_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)

FIELD_NAMES = ["socket", "args", "kwargs", "call_id", "wait_ms", "op", "node", "code", "reason", "ok", "value",
               "calls", "push", "results", "accepted", "refused"]


@st.composite
def plausible_body(draw: st.DrawFn) -> bytes:
    """A msgpack map with real field names and random values (some of them packed payloads)."""
    fields = draw(st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=6),
                                  payload_values | payload_values.map(lambda v: msgpack.packb(v, use_bin_type=True)),
                                  max_size=6))
    if "socket" in fields and draw(st.booleans()):
        fields["socket"] = "no.such." + str(fields["socket"])[:20]   # never run real code
    if "op" in fields:
        fields["op"] = draw(st.sampled_from(["ls_queues", "status", "ls_call", "nope", "ls_calls"]))
    try:
        return msgpack.packb(fields, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        return b"\x80"


TEMPLATES = [
    protocol.encode(protocol.Ping(request_id=b"t-ping")),
    protocol.encode(protocol.Get(call_id="no-such-call", wait_ms=0, request_id=b"t-get")),
    protocol.encode(protocol.Call(socket="sample.tasks.noop", args=protocol.pack([1, "x", {"k": b"v"}]),
                                  kwargs=protocol.pack({"a": [None, 1.5]}), call_id="", request_id=b"t-call")),
    protocol.encode(protocol.Admin(op="status", args={}, request_id=b"t-admin")),
    protocol.encode(protocol.Calls(calls=[entry("sample.tasks.noop", protocol.pack([1])), entry()], push=False,
                                   request_id=b"t-calls")),
    protocol.encode(protocol.Admin(op="ls_calls", args={"limit": 5}, request_id=b"t-ls")),
]


@st.composite
def mutated_valid(draw: st.DrawFn) -> list[bytes]:
    """A valid request with a few bytes flipped, inserted or cut."""
    frames = [bytearray(f) for f in draw(st.sampled_from(TEMPLATES))]
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(frames) - 1))
        frame = frames[i]
        op = draw(st.sampled_from(["flip", "insert", "cut"]))
        pos = draw(st.integers(0, len(frame)))
        if op == "flip" and frame:
            pos = min(pos, len(frame) - 1)
            frame[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            frame[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        else:
            del frame[pos:pos + draw(st.integers(1, 8))]
    return [bytes(f) for f in frames]


@st.composite
def frame_lists(draw: st.DrawFn) -> list[bytes]:
    kind = draw(st.sampled_from(["random", "header", "structured", "mutated"]))
    if kind == "mutated":
        return draw(mutated_valid())
    if kind == "random":
        return draw(st.lists(st.binary(max_size=64), min_size=1, max_size=6))
    version = draw(st.sampled_from([protocol.VERSION, protocol.VERSION, 0, 2, 255]))
    header = b"EC" + bytes((version, draw(st.sampled_from(COMMANDS))))
    if kind == "header":
        rest = draw(st.lists(st.binary(max_size=40), min_size=0, max_size=5))
        return [header, *rest]
    rid = draw(st.binary(max_size=34))
    creds = draw(st.sampled_from([EMPTY, b"\x80", b"\x81\xa1a\x01", b"\xc1", b"\x90"]))
    frames = [header, rid, creds, draw(plausible_body())]
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(frames[3])))
        frames[3] = frames[3][:cut]
    return frames


@pytest.mark.timeout(300)
def test_random_frames_never_break_the_node(gnode: EcdProcess) -> None:
    peer = RawPeer(gnode.endpoint)
    seen: list[Any] = []

    @settings(max_examples=50, deadline=None, derandomize=False, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(frames=frame_lists())
    def check(frames: list[bytes]) -> None:
        replies = peer.exchange(frames)     # decodes every reply; fails if the PONG never comes
        for reply in replies:
            assert isinstance(reply, (protocol.Error, protocol.Pong, protocol.Pending, protocol.Reply,
                                      protocol.Result, protocol.Accepted, protocol.AcceptedMany,
                                      protocol.Results)), reply
            if isinstance(reply, protocol.Error):
                assert reply.code != protocol.E_INTERNAL, (frames, reply)
        seen.extend(replies)

    try:
        check()
    finally:
        peer.close()
    assert any(isinstance(r, protocol.Error) for r in seen)
    assert_node_healthy(gnode)
