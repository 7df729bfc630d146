"""The codec's side of the peer conversation: PeerMessage frames for commands 0x40..0x52 (the
node checks each command's fields; the codec checks the framing and that the body is a map with
str keys, like any body)."""

from __future__ import annotations

import msgpack
import pytest

import protocol as p


@pytest.mark.parametrize("command", sorted(p.PEER_COMMAND_NAMES))
def test_every_peer_command_round_trips(command: int) -> None:
    body = {"node": "n" * 36, "records": [{"id": "a", "args": b"\x90", "events": [["queued", 1.5, "x"]]}],
            "slots": 2, "flag": True, "none": None}
    msg = p.PeerMessage(command=command, body=body, request_id=b"r1", credentials={"node": "n" * 36})
    frames = p.encode(msg)
    assert frames[0] == b"EC" + bytes((p.VERSION, command))
    back = p.decode(frames)
    assert back == msg
    assert back.name == p.PEER_COMMAND_NAMES[command]


def test_a_peer_body_must_be_a_map_with_str_keys() -> None:
    header = b"EC" + bytes((p.VERSION, p.HEARTBEAT))
    for body in (msgpack.packb([1, 2]), msgpack.packb({1: "x"}), b"\xc1"):
        with pytest.raises(p.ProtocolError) as err:
            p.decode([header, b"", b"\x80", body])
        assert err.value.code == p.E_MALFORMED


def test_a_command_outside_both_conversations_is_unknown() -> None:
    with pytest.raises(p.ProtocolError, match="unknown command 0x6e"):
        p.decode([b"EC" + bytes((p.VERSION, 0x6E)), b"", b"\x80", b"\x80"])


def test_encode_refuses_a_peer_message_with_a_client_command() -> None:
    with pytest.raises(p.ProtocolError):
        p.encode(p.PeerMessage(command=p.CALL, body={}))
    with pytest.raises(p.ProtocolError):
        p.encode(p.PeerMessage(command=p.HELLO, body={1: 2}))
