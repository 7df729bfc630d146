"""CURVE on the node's tcp sockets: the ZAP handler, and the socket options of servers and clients.

Every tcp ROUTER of a secure node is a CURVE server with ``ZMQ_ZAP_DOMAIN`` set and
``ZMQ_ZAP_ENFORCE_DOMAIN=1``: libzmq asks the ZAP handler about each connection and refuses it
when no handler answers (without ENFORCE_DOMAIN a CURVE server with no handler accepts any key).
The handler is pyzmq's :class:`~zmq.auth.thread.ThreadAuthenticator`, in the node's own context,
started before any socket binds. Its policy is to let every key that completes the CURVE handshake
connect (the handshake proves the client holds the key's secret): what a key may then do is
decided per request by :mod:`ecd.access`, from the connection's ZAP ``User-Id`` (the client's
public key in Z85), never from a frame's content. A connection without CURVE gets no handshake.
"""

from __future__ import annotations

import logging
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

from .keys import KeyPair

logger = logging.getLogger(__name__)

#: The ZAP domain of every CURVE socket of ecd.
ZAP_DOMAIN = "ec"


class _AnyKey:
    """ZAP policy: a key that completed the handshake may connect; requests are authorized later."""

    def callback(self, domain: str, key: bytes) -> bool:
        return domain == ZAP_DOMAIN


class Authenticator:
    """The ZAP handler of one ZeroMQ context (start it before binding)."""

    def __init__(self, context: zmq.Context) -> None:
        quiet = logging.getLogger("ecd.zap.handler")
        quiet.setLevel(logging.WARNING)  # pyzmq logs every handshake at DEBUG
        self._auth = ThreadAuthenticator(context, log=quiet)
        self._auth.start()
        self._auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=_AnyKey())

    @property
    def alive(self) -> bool:
        return self._auth.is_alive()

    def stop(self) -> None:
        self._auth.stop()


def curve_server(sock: zmq.Socket, pair: KeyPair) -> None:
    """Make ``sock`` (before bind) a CURVE server that needs the ZAP handler for every connection."""
    sock.curve_secretkey = pair.secret
    sock.curve_publickey = pair.public
    sock.curve_server = True
    sock.zap_domain = ZAP_DOMAIN.encode()
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)


def curve_client(sock: zmq.Socket, pair: KeyPair, server_key: str | bytes) -> None:
    """Make ``sock`` (before connect) a CURVE client of the server whose public key is ``server_key``."""
    sock.curve_secretkey = pair.secret
    sock.curve_publickey = pair.public
    sock.curve_serverkey = server_key.encode("ascii") if isinstance(server_key, str) else server_key


def user_id(frame: Any) -> str:
    """The ZAP User-Id of the connection a received frame came on ("" when it has none)."""
    try:
        value = frame.get("User-Id")
    except zmq.ZMQError:
        return ""
    return value if isinstance(value, str) else ""
