"""Trust, tried the way an attacker would (issue #12): a raw pyzmq client against a real node.

Each attack that owned a node before issue #12 is a test here: plain tcp and unknown keys get no
service, an unregistered process never becomes a mesh member nor hears a copy of a call, a
registered member cannot forge the outcome of a call it does not own, a DRAIN in someone else's
name does nothing, and gossip cannot make a node open sockets to members nobody registered.
"""

from __future__ import annotations

import os
import uuid
from typing import Any, Callable

import pytest
import zmq

import protocol
from ecctl import Client
from tests.conftest import EcdProcess, register_sample
from tests.mesh import free_port_on
from tests.peers import PlayedPeer
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(240)


def tcp_node(ecd_factory: Callable[..., EcdProcess], name: str = "n1", **kwargs: Any) -> EcdProcess:
    address = "127.0.0.1"
    return ecd_factory(name, cpus=1, listen=f"tcp://{address}:{free_port_on(address)}",
                       extra=("--name", name, "--heartbeat", "0.5", *kwargs.pop("extra", ())), **kwargs)


def raw_socket(server_key: str | None, routing_id: bytes | None = None) -> zmq.Socket:
    """A raw DEALER, not yet connected: a CURVE client of ``server_key`` with a fresh key pair
    (plain tcp when None)."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if routing_id is not None:
        sock.setsockopt(zmq.ROUTING_ID, routing_id)
    if server_key is not None:
        sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
        sock.curve_serverkey = server_key.encode()
    return sock


def raw_request(endpoint: str, message: Any, *, server_key: str | None = None, timeout: float = 2.0) -> Any:
    """Send one message as a raw DEALER (CURVE when ``server_key`` is given, with a fresh key
    pair); the decoded reply, or None when nothing came back in time."""
    sock = raw_socket(server_key)
    try:
        sock.connect(endpoint)
        sock.send_multipart(protocol.encode(message))
        if not sock.poll(int(timeout * 1000)):
            return None
        return protocol.decode(sock.recv_multipart())
    finally:
        sock.close(0)


def call_message(socket: str = "sample.tasks.echo") -> protocol.Call:
    return protocol.Call(socket=socket, args=protocol.pack(["x"]), kwargs=protocol.pack({}), call_id=str(uuid.uuid4()),
                         request_id=os.urandom(8))


def test_plain_tcp_and_unknown_keys_get_no_service(ecd_factory: Callable[..., EcdProcess], sample_repo: str) -> None:
    node = tcp_node(ecd_factory)
    with Client(node.endpoint) as local:
        register_sample(local, sample_repo, concurrency=1)
    endpoint = node.listen
    assert endpoint
    admin = protocol.Admin(op="add_queue", args={"name": "owned"}, request_id=os.urandom(8))
    # no CURVE: no handshake, no answer at all
    assert raw_request(endpoint, protocol.Ping(request_id=os.urandom(8))) is None
    assert raw_request(endpoint, admin) is None
    # CURVE with the wrong server key: no handshake either
    assert raw_request(endpoint, protocol.Ping(request_id=os.urandom(8)), server_key=zmq.curve_keypair()[0].decode()) is None
    # CURVE with the node's key but a key nobody logged in with: PING only, everything else 401
    pong = raw_request(endpoint, protocol.Ping(request_id=os.urandom(8)), server_key=node.key)
    assert isinstance(pong, protocol.Pong)
    for message in (admin, call_message(), protocol.Get(call_id=str(uuid.uuid4()), wait_ms=0, request_id=b"g"),
                    protocol.Admin(op="status", args={}, request_id=b"s"),
                    protocol.Listen(name="", channel="task", ttl_ms=1000, request_id=b"l")):
        reply = raw_request(endpoint, message, server_key=node.key)
        assert isinstance(reply, protocol.Error) and reply.code == protocol.E_UNAUTHORIZED, (message, reply)
        assert "ecctl login" in reply.reason
    # the frame's content names nobody: credentials claiming a user change nothing
    forged = protocol.Admin(op="add_queue", args={"name": "owned"}, credentials={"user": "admin", "node": "x"},
                            request_id=b"f")
    reply = raw_request(endpoint, forged, server_key=node.key)
    assert isinstance(reply, protocol.Error) and reply.code == protocol.E_UNAUTHORIZED
    with Client(node.endpoint) as local:
        assert "owned" not in {q["name"] for q in local.ls("queues")}
        audit = local.ls_audit(100)
    denied = [row for row in audit if row["outcome"].startswith("denied (401)")]
    assert {row["op"] for row in denied} >= {"add_queue", "CALL", "GET", "status", "LISTEN"}
    assert all(row["user"] == "anonymous" and row["key"] and row["node"] == "n1" for row in denied)


def test_an_unregistered_process_never_joins_the_mesh_nor_hears_a_call(
        ecd_factory: Callable[..., EcdProcess], sample_repo: str) -> None:
    node = tcp_node(ecd_factory)
    assert node.listen
    intruder = PlayedPeer(node.listen, node.key, name="intruder")
    try:
        intruder.post(protocol.HELLO, intruder.hello())
        with Client(node.endpoint) as local:
            register_sample(local, sample_repo, concurrency=1)
            # it says HELLO and beats (every 0.2 s) the whole time: it is never a member
            assert local.call("sample.tasks.do_this", "secret argument").get(timeout=30) == "Do this: secret argument"
            status = local.status()
            assert status["mesh"]["nodes"] == []
            assert "intruder" not in {n["name"] for n in local.ls("nodes")}
            assert status["security"]["refused_peer_messages"] > 0
            assert status["mesh"]["sockets"] == 0
        assert intruder.received == [], [m.name for m in intruder.received]
    finally:
        intruder.close()


def test_a_spoofed_drain_does_nothing(ecd_factory: Callable[..., EcdProcess]) -> None:
    node = tcp_node(ecd_factory)
    assert node.listen
    with Client(node.endpoint) as local:
        victim = local.status()["node_id"]
    drain = protocol.PeerMessage(command=protocol.DRAIN, body={"drain": True}, credentials={"node": victim})
    for server_key in (None, node.key):  # plain tcp, then CURVE with a key that is no node's
        sock = raw_socket(server_key)
        sock.connect(node.listen)
        for _ in range(5):
            sock.send_multipart(protocol.encode(drain))
        if server_key is None:
            assert not sock.poll(1000)  # no handshake: nothing is ever read, nothing answered
        else:
            # a PING behind the DRAINs on the same connection is answered: they were read, and
            # dropped without an answer
            sock.send_multipart(protocol.encode(protocol.Ping(request_id=b"p")))
            assert sock.poll(10_000)
            assert isinstance(protocol.decode(sock.recv_multipart()), protocol.Pong)
        sock.close(0)
    with Client(node.endpoint) as local:
        status = local.status()
        assert status["state"] == "alive" and not status["replication"]["draining"]
        assert status["security"]["refused_peer_messages"] >= 5
    assert not (node.data_dir / "draining").exists()


def test_gossip_of_unregistered_members_opens_no_socket(ecd_factory: Callable[..., EcdProcess]) -> None:
    node = tcp_node(ecd_factory)
    assert node.listen
    member = PlayedPeer(node.listen, node.key, name="member")
    try:
        with Client(node.endpoint) as local:
            member.register(local)
            member.post(protocol.HELLO, member.hello())
            wait_for(lambda: [m["state"] for m in local.status()["mesh"]["nodes"]] == ["alive"], 30,
                     what="the registered member alive")
            fakes = [[str(uuid.uuid4()), 1, 1, f"tcp://127.0.0.3:{20000 + i}", f"fake{i}"] for i in range(1024)]
            fakes += [[str(uuid.uuid4()), 1, 1, "tcp://127.0.0.3:30000", "member", zmq.curve_keypair()[0].decode()]]
            member.beating.clear()  # from now on the test sends its beats
            for start in range(0, len(fakes), 256):  # 4 heartbeats of 256 gossiped members
                member.post(protocol.HEARTBEAT, {**member.hello(), "members": fakes[start:start + 256]})
            # the node reads the member's messages in order: once a beat saying 77 cpus is in,
            # so are the gossips before it
            member.post(protocol.HEARTBEAT, {**member.hello(), "cpus": 77})
            wait_for(lambda: [m.get("cpus") for m in local.status()["mesh"]["nodes"]] == [77], 30,
                     what="the member's last beat")
            status = local.status()
            assert [m["name"] for m in status["mesh"]["nodes"]] == ["member"]
            assert status["mesh"]["sockets"] == 1
            assert {n["name"] for n in local.ls("nodes")} == {"n1", "member"}
    finally:
        member.close()


def _two_played_peers(node: EcdProcess, local: Client) -> dict[str, PlayedPeer]:
    assert node.listen
    peers = {name: PlayedPeer(node.listen, node.key, name=name) for name in ("m1", "m2")}
    for peer in peers.values():
        peer.register(local)
        peer.post(protocol.HELLO, peer.hello())
    wait_for(lambda: sorted(m["state"] for m in local.status()["mesh"]["nodes"]) == ["alive", "alive"], 30,
             what="both played members alive")
    return peers


def test_a_member_cannot_forge_the_outcome_of_a_call_it_does_not_own(
        ecd_factory: Callable[..., EcdProcess], sample_repo: str) -> None:
    node = tcp_node(ecd_factory)
    with Client(node.endpoint, timeout=60) as local:
        peers = _two_played_peers(node, local)
        try:
            register_sample(local, sample_repo, concurrency=1)
            done_id = local.call("sample.tasks.slow_echo", "real", 0).id
            assert local.result(done_id, timeout=30) == "real"
            owner = local.ls_call(done_id)["owner"]
            # R=2: one of the two members holds a call's copies (its replica), the other none
            replica = wait_for(lambda: next((p for p in peers.values()
                                             if p.copies.get(done_id, {}).get("state") == "done"), None), 30,
                               what="the replica's copy")
            outsider = next(p for p in peers.values() if p is not replica)
            local.proc("pause", "proc1")
            queued_id = ""
            for _ in range(40):  # a queued call whose replica is the same member (each call picks its own)
                candidate = local.call("sample.tasks.slow_echo", "later", 0).id
                holder = wait_for(lambda: next((p for p in peers.values() if candidate in p.copies), None), 30,
                                  what="the queued call's copy")
                if holder is replica:
                    queued_id = candidate
                    break
            assert queued_id and done_id not in outsider.copies and queued_id not in outsider.copies
            forged = {**replica.copies[done_id], "result": protocol.pack("FORGED"), "version": 99, "term": 99}
            queued = replica.copies[queued_id]
            # a member that holds no copy of the queued call: no takeover, no outcome, no hand-off
            outsider.post(protocol.TAKEOVER, {"old_owner": owner, "new_owner": outsider.node_id, "calls": [queued_id]})
            outsider.post(protocol.COMPLETE, {"calls": [{"call_id": queued_id, "attempt": 1, "ok": True,
                                                         "value": protocol.pack("FORGED"), "error": None,
                                                         "requeue": ""}]})
            outsider.post(protocol.HANDOFF, {"records": [queued]})               # not the sender's call
            outsider.post(protocol.TAKEOVER, {"old_owner": owner, "new_owner": replica.node_id,
                                              "calls": [queued_id]})             # in another member's name
            rewritten = {**forged, "term": 0}
            # even the call's replica (a holder, trusted to take calls over) cannot rewrite the owner's
            # outcome, take it over in the owner's name, or claim it accepted the call first
            replica.post(protocol.REPLICATE, {"records": [forged]})
            replica.post(protocol.SYNCED, {"records": [rewritten], "last": False})
            replica.post(protocol.REPLICATE, {"records": [{**rewritten, "owner": replica.node_id, "created": 0.0}]})
            mine = {**forged, "owner": outsider.node_id}
            for message in (forged, rewritten, mine, {**mine, "term": 0, "created": forged["created"] - 1}):
                outsider.post(protocol.REPLICATE, {"records": [message]})        # nor a member with no copy
            outsider.post(protocol.SYNCED, {"records": [mine], "last": False})
            # the node reads each member's messages in order: once these last ones are refused, the
            # outsider's messages before them have been handled too
            wait_for(lambda: local.status()["security"]["refused_records"] >= 8, 30, what="the forgeries refused")
            assert local.result(done_id, timeout=10) == "real"
            assert local.ls_call(done_id, result=True)["result"] == "real"
            assert local.ls_call(done_id)["owner"] == owner
            assert local.ls_call(queued_id)["state"] == "queued" and local.ls_call(queued_id)["owner"] == owner
            local.proc("resume", "proc1")
            assert local.result(queued_id, timeout=30) == "later"
            assert local.ls_call(queued_id)["attempts"] == 1
        finally:
            for peer in peers.values():
                peer.close()


def _rss_mib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) // 1024 for line in status if line.startswith("VmRSS"))


def test_a_stranger_cannot_make_the_node_decode_a_big_body(ecd_factory: Callable[..., EcdProcess]) -> None:
    """16 MiB of empty maps (a msgpack body that expands to over a gigabyte) from a key nobody
    logged in with is refused (413) before it is decoded: the node's memory does not move."""
    node = tcp_node(ecd_factory)
    assert node.listen
    before = _rss_mib(node.pid)
    count = 16 << 20
    body = b"\x82\xa2op\xa5login\xa4args" + b"\xdd" + count.to_bytes(4, "big") + b"\x80" * count
    sock = raw_socket(node.key)
    sock.connect(node.listen)
    try:
        for _ in range(3):
            sock.send_multipart([bytes([0x45, 0x43, 1, protocol.ADMIN]), b"bomb", b"\x80", body])
        for _ in range(3):
            assert sock.poll(60_000)
            reply = protocol.decode(sock.recv_multipart())
            assert isinstance(reply, protocol.Error) and reply.code == protocol.E_TOO_LARGE
            assert "ecctl login" in reply.reason and reply.request_id == b"bomb"
    finally:
        sock.close(0)
    assert isinstance(raw_request(node.listen, protocol.Ping(request_id=b"p"), server_key=node.key), protocol.Pong)
    assert _rss_mib(node.pid) - before < 150  # decoded, the bodies would take gigabytes


def test_another_key_cannot_take_over_a_clients_routing_identity(
        ecd_factory: Callable[..., EcdProcess], sample_repo: str) -> None:
    """A client may fix its routing id; on CURVE a second connection with the same id (another
    key) gets none of the first one's replies."""
    node = tcp_node(ecd_factory)
    assert node.listen
    with Client(node.endpoint) as local:
        register_sample(local, sample_repo, concurrency=1)
        local.add_user("victim", "victim-password")
        local.add_privilege("RUN_TASK", user="victim")
    victim, thief = raw_socket(node.key, b"fixed-id"), raw_socket(node.key, b"fixed-id")
    try:
        victim.connect(node.listen)
        victim.send_multipart(protocol.encode(protocol.Admin(op="login", args={"user": "victim",
                                                                                "password": "victim-password"},
                                                             request_id=b"login")))
        assert victim.poll(30_000) and isinstance(protocol.decode(victim.recv_multipart()), protocol.Reply)
        call = protocol.Call(socket="sample.tasks.slow_echo", args=protocol.pack(["mine", 1.0]), kwargs=protocol.pack({}),
                             call_id=str(uuid.uuid4()), request_id=b"call")
        victim.send_multipart(protocol.encode(call))
        assert victim.poll(30_000) and isinstance(protocol.decode(victim.recv_multipart()), protocol.Accepted)
        victim.send_multipart(protocol.encode(protocol.Get(call_id=call.call_id, wait_ms=20_000, request_id=b"get")))
        thief.connect(node.listen)
        thief.send_multipart(protocol.encode(protocol.Ping(request_id=b"p")))
        assert victim.poll(30_000)
        result = protocol.decode(victim.recv_multipart())
        assert isinstance(result, protocol.Result) and protocol.unpack(result.value) == "mine"
        assert not thief.poll(500)  # refused as a second connection of the same id: it hears nothing
    finally:
        victim.close(0)
        thief.close(0)


def test_a_flood_of_refusals_is_counted_not_written_row_by_row(ecd_factory: Callable[..., EcdProcess]) -> None:
    node = tcp_node(ecd_factory)
    assert node.listen
    sock = raw_socket(node.key)
    sock.connect(node.listen)
    try:
        flood = 3000
        for i in range(flood):
            sock.send_multipart(protocol.encode(protocol.Get(call_id=f"c{i}", wait_ms=0, request_id=b"g")))
        for _ in range(flood):
            assert sock.poll(30_000)
            sock.recv_multipart()
    finally:
        sock.close(0)
    with Client(node.endpoint) as local:
        rows = [row for row in local.ls_audit(10_000) if row["op"] == "GET"]
    assert 1 <= len(rows) < 50, len(rows)
    total = sum(int(row["outcome"].rsplit("(x", 1)[1].rstrip(")")) if "(x" in row["outcome"] else 1 for row in rows)
    assert total == flood
