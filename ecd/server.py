"""The client-facing ZeroMQ sockets of a node: ROUTERs bound on ipc:// and tcp:// endpoints.

On a secure node (the default) every tcp ROUTER is a CURVE server (:mod:`ecd.zap`), and each
request carries the ZAP ``User-Id`` of its connection (the client's public key): that, and
whether it came in on the ipc socket (the local administrator), is all the node knows of who sent
it. The ipc socket file is 0660: whoever can open it administers the node (like docker.sock).

Owns socket options (ROUTER_MANDATORY so unroutable replies are reported, not silently dropped;
HANDOVER so a reconnecting client with a fixed identity is not locked out; heartbeats; small
linger; MAXMSGSIZE) and turns frames into protocol messages and back. Replies that cannot be
delivered (the client went away, or its pipe is full) are logged and dropped: every reply can be
asked for again (GET), because the state behind it is in the write-ahead log.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import zmq

import protocol

from .keys import KeyPair
from .zap import curve_server, user_id

logger = logging.getLogger(__name__)

#: Messages queued per client before the daemon stops reading more from it.
DEFAULT_HWM = 100_000
#: Bytes above which a message is refused by libzmq itself (body limit plus frame overhead).
MAX_WIRE_BYTES = protocol.MAX_MESSAGE_BYTES + 64 * 1024
#: Messages taken from one socket before the loop looks at its other inputs.
RECV_BATCH = 256


@dataclass(frozen=True)
class Peer:
    """Where a request came from, so its reply goes back the same way: the socket, the routing
    identity, the connection's CURVE key (``key``, its ZAP User-Id; "" without CURVE), whether it
    came in on the ipc socket, and the principal the node resolved for it."""

    socket: zmq.Socket
    identity: bytes
    key: str = ""
    local: bool = False
    principal: Any = None


class Frontend:
    """The ROUTER sockets a node serves clients on."""

    def __init__(self, context: zmq.Context, endpoints: tuple[str, ...], keys: KeyPair | None = None,
                 body_limit: Callable[[str], int] | None = None) -> None:
        """``keys``: the node's key pair, making every tcp endpoint a CURVE server (None: plain tcp,
        ``--insecure``). The ZAP handler must be running in ``context`` already. ``body_limit(key)``:
        the largest body a CURVE connection with that key may send (checked before anything is
        decoded: a key that has not logged in sends small requests only)."""
        self.context = context
        self.keys = keys
        self.body_limit = body_limit
        self.sockets: list[zmq.Socket] = []
        self.bound: list[str] = []
        self._local: set[zmq.Socket] = set()
        self._curve: set[zmq.Socket] = set()
        for endpoint in endpoints:
            self._bind(endpoint)

    def _bind(self, endpoint: str) -> None:
        sock = self.context.socket(zmq.ROUTER)
        if endpoint.startswith("ipc://"):
            self._local.add(sock)
        elif self.keys is not None:
            curve_server(sock, self.keys)
            self._curve.add(sock)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # a client restarted with a fixed identity takes it over, but not on CURVE: there a new
        # connection with another key would receive the replies meant for the old one
        sock.setsockopt(zmq.ROUTER_HANDOVER, 0 if sock in self._curve else 1)
        sock.setsockopt(zmq.LINGER, 500)
        sock.setsockopt(zmq.SNDHWM, DEFAULT_HWM)
        sock.setsockopt(zmq.RCVHWM, DEFAULT_HWM)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_WIRE_BYTES)
        sock.setsockopt(zmq.HEARTBEAT_IVL, 5000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 15000)
        sock.setsockopt(zmq.HEARTBEAT_TTL, 15000)
        if endpoint.startswith("ipc://"):
            path = Path(endpoint[len("ipc://"):])
            if path.exists():
                path.unlink()  # a stale socket file from a killed daemon (we hold the data-dir lock)
        sock.bind(endpoint)
        if endpoint.startswith("ipc://"):
            os.chmod(endpoint[len("ipc://"):], 0o660)
        self.sockets.append(sock)
        self.bound.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
        logger.info("serving clients on %s", self.bound[-1])

    def receive(self, sock: zmq.Socket) -> list[tuple[Peer, "protocol.Message | protocol.ProtocolError"]]:
        """Read up to RECV_BATCH waiting requests from ``sock``. Undecodable ones come back as
        ProtocolError values so the caller can answer them."""
        out: list[tuple[Peer, protocol.Message | protocol.ProtocolError]] = []
        local = sock in self._local
        curve = sock in self._curve
        for _ in range(RECV_BATCH):
            # EVENTS first: a failed non-blocking recv raises zmq.Again, which costs far more
            if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                break
            key = ""
            try:
                if curve:  # the connection's key comes with every message (its metadata)
                    parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    key = user_id(parts[0])
                    frames = [part.bytes for part in parts]
                else:
                    frames = sock.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                break
            if len(frames) < 2:
                logger.warning("dropping a message without routing identity")
                continue
            if curve and not key:
                logger.warning("dropping a message without a ZAP User-Id on a CURVE socket")
                continue
            peer = Peer(sock, frames[0], key, local)
            if curve and self.body_limit is not None and len(frames) == 1 + protocol.FRAME_COUNT:
                limit = self.body_limit(key)
                if len(frames[-1]) > limit:  # never decoded: what a stranger sends costs nothing
                    rid = frames[2] if len(frames[2]) <= protocol.MAX_REQUEST_ID_BYTES else b""
                    out.append((peer, protocol.ProtocolError(
                        f"frame 3: body is {len(frames[-1])} bytes; before a login requests are at most {limit} "
                        f"bytes: run `ecctl login` first", code=protocol.E_TOO_LARGE, request_id=rid)))
                    continue
            try:
                out.append((peer, protocol.decode(frames[1:])))
            except protocol.ProtocolError as exc:
                out.append((peer, exc))
        return out

    def send(self, peer: Peer, message: protocol.Message) -> bool:
        """Send a reply; False (logged) when the client cannot be reached right now."""
        try:
            frames = protocol.encode(message)
        except protocol.ProtocolError as exc:  # e.g. a reply over the size limit
            logger.error("cannot encode %s for %s: %s", type(message).__name__, peer.identity.hex(), exc.reason)
            frames = protocol.encode(protocol.Error(code=exc.code, reason=f"reply not sent: {exc.reason}"[:1000],
                                                    request_id=message.request_id))
        try:
            peer.socket.send_multipart([peer.identity, *frames], zmq.NOBLOCK)
            return True
        except zmq.Again:
            logger.warning("client %s is not reading (high-water mark): reply dropped", peer.identity.hex())
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                logger.info("client %s is gone: reply dropped", peer.identity.hex())
            else:
                logger.error("cannot reply to %s: %s", peer.identity.hex(), exc)
        return False

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(linger=200)
        self.sockets.clear()
