"""The mesh: this node's peers, whether each is alive, and the one-way messages between them.

Every node keeps one DEALER per peer, connected to the peer's advertised endpoint (its ROUTER,
the same socket clients use). Peer messages are one-way (SPEC.md, "The peer conversation"): an
answer is a message of its own on the answering node's DEALER. DEALERs are ``ZMQ_IMMEDIATE``:
a message to a peer with no live connection is refused at once (EAGAIN) instead of queueing for
a node that may never come back, so senders learn of it and retry with a deadline.

Identity (issue #12): on a secure node every DEALER is a CURVE client of the peer's registered
public key, and a peer is whoever holds the secret of a key registered for a node in the topology
(the node checks the ZAP ``User-Id`` of every message before it gets here): its HELLO binds its
node id to that key, and every later message from the key is that node's. A key holds one node id
at a time (a new id takes it over only once the old one is dead), a node id one key. Gossip only
tells of nodes whose name is registered with the key it gives, so nobody can introduce a member,
and peer sockets are bounded by the registered keys. With ``--insecure`` the sender is what the
credentials frame says, as before.

Liveness: every node sends HEARTBEAT every ``interval`` seconds to every member it knows, with
its own counter (``beat``) and what it knows of the others (gossip). A member is *alive* while a
newer beat of it arrives within 3 intervals (directly or through another member's gossip),
*suspect* after that and *dead* after 5 intervals. A member is *reachable* while messages from it
arrive directly: only reachable members are given replicas or leases, so a link cut between two
nodes that both still reach a third makes them avoid each other without either taking over the
other's calls (the third node's gossip keeps both alive).

The loop thread owns everything here; nothing blocks.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import zmq

import protocol

from .config import is_peer_endpoint
from .keys import KeyPair
from .zap import curve_client

logger = logging.getLogger(__name__)

ALIVE = "alive"
SUSPECT = "suspect"
DEAD = "dead"
#: Missed heartbeat intervals before a member is suspect / dead.
SUSPECT_AFTER = 3
DEAD_AFTER = 5
#: Messages a DEALER queues for a connected peer before sends fail (flow control, never a drop:
#: every sender retries what it must deliver).
PEER_SNDHWM = 200_000
#: Seconds a member known only from the log gets to appear before the usual timeouts run.
EXPECT_GRACE = 5.0
#: Seconds after which a dead member is forgotten (it no longer counts for a majority).
FORGET_AFTER = 3600.0
#: Members a heartbeat's gossip carries at most.
MAX_GOSSIP = 256


@dataclass
class Member:
    """What this node knows of one peer."""

    node_id: str
    endpoint: str = ""
    name: str = ""
    incarnation: int = 0
    beat: int = 0
    state: str = SUSPECT
    heard: float = 0.0     # monotonic time a newer beat of it arrived (directly or by gossip)
    direct: float = 0.0    # monotonic time a message came from it directly
    info: dict[str, Any] = field(default_factory=dict)  # its last heartbeat (stats, wants, leases)
    info_at: float = 0.0   # monotonic time that heartbeat arrived
    key: str = ""          # its registered CURVE public key (secure meshes)

    @property
    def draining(self) -> bool:
        return bool(self.info.get("draining"))

    def view(self) -> dict[str, Any]:
        info = self.info
        state = self.state
        if state == ALIVE and self.draining:
            state = "drained" if info.get("drained") else "draining"
        return {
            "node_id": self.node_id, "name": self.name, "endpoint": self.endpoint, "state": state,
            "incarnation": self.incarnation, "draining": self.draining, "drained": bool(info.get("drained")),
            "cpus": info.get("cpus"), "busy": info.get("busy"), "depth": info.get("depth"),
            "load": info.get("load"), "memory": info.get("memory"), "disk": info.get("disk"),
            "version": info.get("version"), "key": self.key or None,
        }


def _str(body: dict[str, Any], key: str, limit: int = 500) -> str:
    value = body.get(key)
    if not isinstance(value, str) or len(value) > limit:
        raise ValueError(f"{key} must be a string of at most {limit} characters")
    return value


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _info(body: dict[str, Any]) -> dict[str, Any]:
    """What a heartbeat says of its sender, each field checked (a bad one is left out)."""
    info: dict[str, Any] = {}
    for key in ("cpus", "busy", "depth"):
        value = body.get(key)
        info[key] = value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
    for key in ("load", "memory", "disk"):
        info[key] = _number(body.get(key))
    info["version"] = body["version"][:100] if isinstance(body.get("version"), str) else None
    info["draining"] = body.get("draining") is True
    info["drained"] = body.get("drained") is True
    wants = body.get("wants")
    info["wants"] = {k: v for k, v in wants.items() if isinstance(k, str) and isinstance(v, int)
                     and not isinstance(v, bool) and v > 0} if isinstance(wants, dict) else {}
    leased = body.get("leased")
    info["leased"] = {k: [c for c in v if isinstance(c, str)] for k, v in leased.items()
                      if isinstance(k, str) and isinstance(v, list)} if isinstance(leased, dict) else {}
    topology = body.get("topology")
    info["topology"] = topology if isinstance(topology, int) and not isinstance(topology, bool) else None
    ticks = body.get("ticks")
    info["ticks"] = {k: float(v) for k, v in ticks.items() if isinstance(k, str) and _number(v) is not None
                     and 0 <= v < 1e11} if isinstance(ticks, dict) else {}
    return info


def _int(body: dict[str, Any], key: str) -> int:
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise ValueError(f"{key} must be a non-negative integer")
    return value


class Mesh:
    """Membership of this node in the mesh, and the transport to its peers."""

    def __init__(self, context: zmq.Context, *, node_id: str, name: str, endpoint: str, incarnation: int,
                 interval: float, seeds: tuple[str, ...] = (),
                 describe: Callable[[], dict[str, Any]] = dict,
                 on_change: Callable[[Member, str, str], None] = lambda member, old, new: None,
                 keys: KeyPair | None = None, admitted: Callable[[], Mapping[str, str]] = dict) -> None:
        """``keys``: this node's key pair (None: an insecure mesh); ``admitted()``: key -> node name
        of every node registered with a key (the only peers there are)."""
        self.context = context
        self.keys = keys
        self.admitted = admitted
        self._by_key: dict[str, str] = {}  # key -> the node id its direct HELLO bound to it
        self.node_id = node_id
        self.name = name
        self.endpoint = endpoint
        self.incarnation = incarnation
        self.interval = interval
        self.describe = describe
        self.on_change = on_change
        self.beat = 0
        self.members: dict[str, Member] = {}
        self._sockets: dict[str, tuple[str, zmq.Socket]] = {}  # key (or endpoint, insecure) -> (endpoint, DEALER)
        self._seeds: dict[str, str] = {s: "" for s in seeds if s and s != endpoint}  # endpoint -> its key
        self.dropped = 0  # membership messages refused (a name or id that is not its key's)
        self._next_beat = 0.0
        self._next_hello = 0.0
        self.sent = 0
        self.refused = 0  # sends refused (no connection or high-water mark): retried by their owners

    # -- transport ------------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """True when this node can be part of a mesh (it has an endpoint peers can reach)."""
        return bool(self.endpoint)

    @property
    def secure(self) -> bool:
        return self.keys is not None

    def _socket(self, endpoint: str, key: str) -> zmq.Socket | None:
        """The DEALER to the node holding ``key`` at ``endpoint`` (one per key: a key that moves
        gets a new connection)."""
        slot = key or endpoint
        entry = self._sockets.get(slot)
        if entry is not None and entry[0] != endpoint:
            entry[1].close(0)
            del self._sockets[slot]
            entry = None
        sock = entry[1] if entry is not None else None
        if sock is None:
            if not is_peer_endpoint(endpoint) or (self.secure and not key):
                return None
            sock = self.context.socket(zmq.DEALER)
            if self.keys is not None:
                curve_client(sock, self.keys, key)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.setsockopt(zmq.SNDHWM, PEER_SNDHWM)
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
            sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
            sock.setsockopt(zmq.HEARTBEAT_TTL, 3000)
            sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES + 65536)
            try:
                sock.connect(endpoint)
            except zmq.ZMQError as exc:
                logger.warning("mesh: cannot connect to %s: %s", endpoint, exc)
                sock.close(0)
                return None
            self._sockets[slot] = (endpoint, sock)
        return sock

    def _post(self, endpoint: str, key: str, command: int, body: dict[str, Any]) -> bool:
        if not endpoint or endpoint == self.endpoint:
            return False
        try:
            # a secure peer knows the sender by its key; the credentials frame names it only
            # in an insecure mesh
            frames = protocol.encode(protocol.PeerMessage(
                command=command, body=body, credentials={} if self.secure else {"node": self.node_id}))
        except protocol.ProtocolError as exc:  # e.g. over the size limit: the caller copes
            logger.error("mesh: cannot send %s to %s: %s", protocol.PEER_COMMAND_NAMES.get(command), endpoint,
                         exc.reason)
            return False
        sock = self._socket(endpoint, key)
        if sock is None:
            return False
        try:
            sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.refused += 1
            return False
        except zmq.ZMQError as exc:
            logger.warning("mesh: cannot send to %s: %s", endpoint, exc)
            return False
        self.sent += 1
        return True

    def send(self, node_id: str, command: int, body: dict[str, Any]) -> bool:
        """Send one message to a member; False when it cannot be handed to a connection now."""
        member = self.members.get(node_id)
        if member is None or self.revoked(member):
            return False
        return self._post(member.endpoint, member.key, command, body)

    def close(self, linger_ms: int = 300) -> None:
        """Close the peer sockets, giving what is queued ``linger_ms`` to leave."""
        for _, sock in self._sockets.values():
            sock.close(linger_ms)
        self._sockets.clear()

    @property
    def sockets(self) -> int:
        """Peer sockets open now."""
        return len(self._sockets)

    # -- membership -----------------------------------------------------------------------------

    def expect(self, node_id: str) -> None:
        """A node this one holds copies for, known only from its log: counted as a member (so
        it is found dead, and its calls taken over, if it never shows up)."""
        if node_id != self.node_id and node_id not in self.members:
            # a few seconds' grace: after a restart of many nodes, peers take a moment to appear
            self.members[node_id] = Member(node_id=node_id, heard=time.monotonic() + EXPECT_GRACE)

    def add_seeds(self, seeds: list[tuple[str, str]]) -> None:
        """``(endpoint, key)`` pairs to say HELLO to until they answer (the topology's nodes); a
        ``--join`` endpoint learns its key from them (a secure node says HELLO only to a key)."""
        known = {m.endpoint for m in self.members.values()}
        for endpoint, key in seeds:
            if not is_peer_endpoint(endpoint) or endpoint == self.endpoint or endpoint in known:
                continue
            if endpoint not in self._seeds or (key and self._seeds[endpoint] != key):
                self._seeds[endpoint] = key
                self._next_hello = 0.0

    def _hello_body(self) -> dict[str, Any]:
        return {"node": self.node_id, "name": self.name, "endpoint": self.endpoint,
                "incarnation": self.incarnation, "beat": self.beat}

    def _member_from(self, body: dict[str, Any], key: str) -> Member | None:
        node_id = _str(body, "node", 64)
        if node_id == self.node_id:
            return None
        endpoint = _str(body, "endpoint")
        if not is_peer_endpoint(endpoint):
            raise ValueError(f"endpoint {endpoint[:80]!r} is not tcp://HOST:PORT")
        if self.secure:
            self._bind(node_id, key, body.get("name"))
        member = self.members.get(node_id)
        if member is None:
            member = self.members[node_id] = Member(node_id=node_id, endpoint=endpoint)
            self._seeds.pop(endpoint, None)
            logger.info("mesh: met node %s at %s", body.get("name") or node_id, endpoint)
        elif endpoint and endpoint != member.endpoint:
            logger.info("mesh: node %s moved from %s to %s", member.name or node_id, member.endpoint, endpoint)
            member.endpoint = endpoint
            self._seeds.pop(endpoint, None)
        if isinstance(body.get("name"), str):
            member.name = body["name"][:200]
        if self.secure:
            member.key = key
        return member

    def _bind(self, node_id: str, key: str, name: Any) -> None:
        """The node holding ``key`` says it is ``node_id`` called ``name``: refused (ValueError)
        when the key is registered for another name, when another live node id holds the key, or
        when the node id is bound to another key that is still registered."""
        admitted = self.admitted()
        registered = admitted.get(key)
        if registered is None or name != registered:
            self.dropped += 1
            raise ValueError(f"its key is registered for node {registered!r}, not {str(name)[:80]!r}")
        holder = self._by_key.get(key)
        if holder is not None and holder != node_id:
            other = self.members.get(holder)
            if other is not None and other.state != DEAD:
                self.dropped += 1
                raise ValueError(f"the key of {registered} is held by node id {holder}, which is alive")
            logger.warning("mesh: node %s is back with a new node id %s (was %s)", registered, node_id, holder)
        member = self.members.get(node_id)
        if member is not None and member.key and member.key != key and self._by_key.get(member.key) == node_id \
                and member.key in admitted:
            self.dropped += 1
            raise ValueError(f"node id {node_id} belongs to the key of {admitted[member.key]}")
        if member is not None and member.key and member.key != key:
            self._by_key.pop(member.key, None)
        self._by_key[key] = node_id

    def sender(self, key: str, credentials: dict[str, Any]) -> Member | None:
        """The member a non-membership message came from: the node id its key is bound to (an
        insecure mesh: the id its credentials give)."""
        node_id = self._by_key.get(key) if self.secure else credentials.get("node")
        return self.members.get(node_id) if isinstance(node_id, str) else None

    def _fresh(self, member: Member, incarnation: int, beat: int, now: float, direct: bool) -> None:
        """A beat of ``member`` arrived; newer ones keep it alive."""
        if (incarnation, beat) > (member.incarnation, member.beat):
            restarted = incarnation > member.incarnation and member.incarnation > 0
            member.incarnation, member.beat = incarnation, beat
            member.heard = now
            if restarted:
                logger.info("mesh: node %s restarted (incarnation %d)", member.name or member.node_id, incarnation)
                self._set_state(member, member.state, "restarted")
        if direct:
            member.direct = now
            member.heard = max(member.heard, now)
        self._update(member, now)

    def _set_state(self, member: Member, old: str, new: str) -> None:
        if new != "restarted":
            member.state = new
        if old != new:
            (logger.warning if new == DEAD else logger.info)(
                "mesh: node %s is %s", member.name or member.node_id, new)
            self.on_change(member, old, new)

    def revoked(self, member: Member) -> bool:
        """A member whose key is no longer registered (its node deleted, or its key replaced): it
        is dead to this node, which sends it nothing more."""
        return self.secure and bool(member.key) and member.key not in self.admitted()

    def _update(self, member: Member, now: float) -> None:
        silent = now - member.heard
        if self.revoked(member):
            new = DEAD
        elif silent > DEAD_AFTER * self.interval:
            new = DEAD
        elif silent > SUSPECT_AFTER * self.interval or not member.endpoint:
            # a node known only from the log, heard from before its address: alive (and sent
            # SYNCs) only once this node can answer it
            new = SUSPECT
        else:
            new = ALIVE
        if new != member.state:
            self._set_state(member, member.state, new)

    def handle(self, msg: protocol.PeerMessage, key: str = "") -> Member | None:
        """Take in a peer message that came from the connection key ``key`` (a registered node's):
        membership ones are consumed here; every other one is counted as a sign of life of its
        sender. Returns the sender (None if it is unknown or the message is malformed: it is then
        dropped and logged)."""
        now = time.monotonic()
        body = msg.body
        try:
            if msg.command in (protocol.HELLO, protocol.WELCOME, protocol.HEARTBEAT):
                member = self._member_from(body, key)
                if member is None:
                    return None
                self._fresh(member, _int(body, "incarnation"), _int(body, "beat"), now, direct=True)
                if msg.command == protocol.HEARTBEAT:
                    member.info = _info(body)
                    member.info_at = now
                if msg.command == protocol.HELLO:
                    self._post(member.endpoint, member.key, protocol.WELCOME, self._hello_body())
                    self._post(member.endpoint, member.key, protocol.HEARTBEAT, self._heartbeat_body())
                gossip = body.get("members")
                if isinstance(gossip, list):
                    self._gossip(gossip[:MAX_GOSSIP], now)
                return member
            member = self.sender(key, msg.credentials)
            if member is not None:
                member.direct = now
                member.heard = max(member.heard, now)
                self._update(member, now)
            return member
        except ValueError as exc:
            logger.warning("mesh: dropped a malformed %s: %s", msg.name, exc)
            return None

    def _gossip(self, entries: list[Any], now: float) -> None:
        keys = {name: key for key, name in self.admitted().items()} if self.secure else {}
        for entry in entries:
            if not (isinstance(entry, list) and len(entry) in (5, 6)):
                continue
            node_id, incarnation, beat, endpoint, name = entry[:5]
            if not (isinstance(node_id, str) and len(node_id) <= 64 and is_peer_endpoint(endpoint)
                    and isinstance(incarnation, int) and isinstance(beat, int)) or node_id == self.node_id:
                continue
            key = keys.get(name) if isinstance(name, str) else None
            if self.secure and (key is None or (len(entry) == 6 and entry[5] != key)):
                continue  # not a registered node (or not with that key): gossip cannot introduce it
            member = self.members.get(node_id)
            if member is None:
                if not endpoint or (key and self._by_key.get(key, node_id) != node_id):
                    continue  # its key is another node id's (heard from directly): hearsay loses
                member = self.members[node_id] = Member(node_id=node_id, endpoint=endpoint,
                                                        name=name if isinstance(name, str) else "", key=key or "")
                self._seeds.pop(endpoint, None)
                logger.info("mesh: learned of node %s at %s", member.name or node_id, endpoint)
                self._next_beat = 0.0  # introduce ourselves at once
            elif endpoint and not member.endpoint:  # known from the log only: now reachable
                member.endpoint = endpoint
                if key and not member.key:
                    member.key, member.name = key, name
                logger.info("mesh: learned where node %s is: %s", member.name or node_id, endpoint)
                self._next_beat = 0.0
            self._fresh(member, incarnation, beat, now, direct=False)

    def _heartbeat_body(self) -> dict[str, Any]:
        body = self._hello_body()
        body.update(self.describe())
        body["members"] = [[m.node_id, m.incarnation, m.beat, m.endpoint, m.name, *([m.key] if self.secure else [])]
                           for m in list(self.members.values())[:MAX_GOSSIP] if m.state != DEAD]
        return body

    def heartbeat_now(self) -> None:
        """Send the next heartbeat at the next tick (news others should hear at once)."""
        self._next_beat = 0.0

    def tick(self, now: float) -> float:
        """Send heartbeats and hellos that are due, update states; return the next due time."""
        if not self.enabled:
            return now + 3600.0
        if now >= self._next_beat:
            self.beat += 1
            body = self._heartbeat_body()
            for member in list(self.members.values()):
                if not self.revoked(member):
                    self._post(member.endpoint, member.key, protocol.HEARTBEAT, body)
            self._next_beat = now + self.interval
        if self._seeds and now >= self._next_hello:
            hello = self._hello_body()
            for endpoint, key in list(self._seeds.items()):
                self._post(endpoint, key, protocol.HELLO, hello)
            self._next_hello = now + max(self.interval, 0.5)
        for member in list(self.members.values()):
            self._update(member, now)
            if member.key in self._sockets and self.revoked(member):
                self._sockets.pop(member.key)[1].close(0)  # nothing more leaves for a revoked node
            if member.state == DEAD and now - member.heard > FORGET_AFTER:
                logger.info("mesh: forgetting node %s, dead for %ds", member.name or member.node_id, FORGET_AFTER)
                del self.members[member.node_id]
        return min(self._next_beat, self._next_hello if self._seeds else self._next_beat)

    # -- views ----------------------------------------------------------------------------------

    def alive(self) -> list[Member]:
        return [m for m in self.members.values() if m.state == ALIVE]

    def reachable(self, now: float | None = None) -> list[Member]:
        """Alive members that messages arrive from directly (given replicas and leases)."""
        now = time.monotonic() if now is None else now
        limit = SUSPECT_AFTER * self.interval
        return [m for m in self.members.values() if m.state == ALIVE and now - m.direct <= limit]

    def is_reachable(self, node_id: str) -> bool:
        member = self.members.get(node_id)
        return bool(member and member.state == ALIVE and time.monotonic() - member.direct <= SUSPECT_AFTER * self.interval)

    def has_quorum(self) -> bool:
        """True when this node sees a strict majority of the mesh alive (itself included).
        Members that left after a drain do not count."""
        counted = [m for m in self.members.values() if not m.info.get("drained")]
        alive = 1 + sum(1 for m in counted if m.state == ALIVE)
        return alive * 2 > len(counted) + 1

    def status(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "endpoint": self.endpoint, "incarnation": self.incarnation,
                "beat": self.beat, "alive": 1 + len(self.alive()), "members": 1 + len(self.members),
                "quorum": self.has_quorum(), "sent": self.sent, "refused": self.refused,
                "seeds": sorted(self._seeds), "secure": self.secure, "sockets": len(self._sockets),
                "dropped": self.dropped}
