"""Python client of the ecd daemon: one ZeroMQ DEALER speaking the EC protocol.

A :class:`Client` owns one DEALER socket, created lazily by the first request and guarded by a
lock. Do not share a Client across ``fork()``: the child notices the pid change and builds a
fresh socket, but the parent's socket is never used from the child.

Failover: the endpoint may be a comma-separated list (the nodes of a mesh). The client talks to
one endpoint at a time, starting with the first. When a request gets no answer within
``attempt_timeout`` (plus the time a GET may be held), when the ipc socket file is missing or
the endpoint cannot be connected, or when the node answers ERROR 503 (shutting down), the
client closes its socket, moves to the next endpoint (round robin, a short pause after each
full round) and re-sends the same request, until the caller's deadline. With one endpoint the
request is re-sent to that one endpoint, as before. A CALL re-sent elsewhere keeps its call id
(a duplicate there); a GET, PING or ADMIN is simply sent again. So an admin change that a live
but slow node has not answered within ``attempt_timeout`` may reach the next node too, which
then refuses it as already made (e.g. 409 for an ``add``).

Calls are durable once :meth:`Client.call` returns: the daemon answered ACCEPTED after its
write-ahead log committed the call. A CALL that gets no answer is re-sent with the same call id
(the daemon answers duplicates with ``duplicate=True`` and does not queue them twice), so a
submit is idempotent. Results are fetched with long-polling GETs until the caller's deadline.

Trust (:mod:`ecctl.trust`): a ``tcp://`` endpoint is reached over CURVE with the client's own key
pair (from the config folder), and only when the node's public key is known (``server_key`` for
the first endpoint, ``EC_SERVER_KEY``, or ``known_nodes``): a client never talks to a node it cannot
check. Requests over tcp act as the user the client's key is logged in as (``ecctl login``, or
``Client(user=..., password=...)``, which logs in when needed and again when its login expired).
``insecure=True`` (``EC_INSECURE=on``) talks plain tcp, to a node run with ``--insecure``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

import protocol

from .access_client import AccessCalls
from .errors import CallTimeout, EcctlError, NoDaemon, RemoteError, ServerError, UnknownServerKey
from .trust import ClientKeys, KnownNodes, client_keys, curve_client, is_key

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_ATTEMPT_TIMEOUT", "DEFAULT_DRAIN_TIMEOUT", "DEFAULT_ENDPOINT", "FAILOVER_WAIT_MS",
           "KINDS", "PROC_ACTIONS", "AsyncResult", "Client", "Function", "Signature", "Socket",
           "default_endpoint", "resolve_endpoints"]

DEFAULT_ENDPOINT = "ipc:///var/lib/ec/ecd.sock"
MAX_WAIT_MS = 5000          # longest single GET long-poll
#: Longest GET long-poll with several endpoints: a dead node is noticed within
#: FAILOVER_WAIT_MS + ``attempt_timeout``.
FAILOVER_WAIT_MS = 1500
#: Seconds one endpoint of several may take to answer before the next one is tried.
DEFAULT_ATTEMPT_TIMEOUT = 1.5
#: Seconds ``wait_drained`` waits by default, and between two of its ``ls_nodes``.
DEFAULT_DRAIN_TIMEOUT = 300.0
DRAIN_POLL_INTERVAL = 1.0
#: Seconds a node that did not answer a request in time gets to answer PING before the client
#: moves to the next endpoint.
PING_PROBE = 0.5
_RETRY_PAUSE = 0.2          # pause before retrying when the daemon is away (and between rounds)
#: Kinds of network objects, in dependency order (ecd/DESIGN-3.md).
KINDS = ("queue", "node", "processor", "socket", "plug", "deployment", "flow")
#: What ``ecctl proc`` / :meth:`Client.proc` can do to a processor.
PROC_ACTIONS = ("pause", "resume", "stop", "start", "restart", "remove")
#: Refusals that mean "not now": the call is re-sent with the same id (SPEC, CALL).
_RETRY_CODES = frozenset({protocol.E_UNAVAILABLE, protocol.E_STORAGE, protocol.E_QUEUE_FULL})


def default_endpoint() -> str:
    """``ipc://$EC_DATA_DIR/ecd.sock`` when EC_DATA_DIR is set, else :data:`DEFAULT_ENDPOINT`."""
    data_dir = os.environ.get("EC_DATA_DIR")
    if data_dir:
        return f"ipc://{os.path.join(data_dir, 'ecd.sock')}"
    return DEFAULT_ENDPOINT


def resolve_endpoints(endpoint: str | None = None) -> list[str]:
    """Endpoint list: explicit argument > env EC_ENDPOINT > default; comma-separated allowed."""
    raw = endpoint or os.environ.get("EC_ENDPOINT") or default_endpoint()
    endpoints = [part.strip() for part in raw.split(",") if part.strip()]
    if not endpoints:
        raise EcctlError(f"invalid endpoint {raw!r}")
    return endpoints


def _ipc_path(endpoint: str) -> str | None:
    """Filesystem path of an ``ipc://`` endpoint (None for other transports/abstract names)."""
    if not endpoint.startswith("ipc://"):
        return None
    path = endpoint[len("ipc://"):]
    if not path or path.startswith("@"):
        return None
    return path


def _is_login(msg: Any) -> bool:
    return isinstance(msg, protocol.Admin) and msg.op in ("login", "logout", "mesh_keys")


def _on(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


class Client(AccessCalls):
    """Connection to an ecd daemon, or to one of several (``"tcp://a:7800,tcp://b:7800"``).

    ``timeout`` is the deadline of one request (a CALL is re-sent inside it); ``connect_timeout``
    bounds the first exchange: no answer by then raises :class:`NoDaemon` (with several
    endpoints, every endpoint gets at least one ``attempt_timeout`` first). With several
    endpoints one attempt lasts ``attempt_timeout`` (plus the GET long-poll wait) before the
    next endpoint is tried; see the module docstring.

    ``server_key`` is the public key of the (first) node (else ``EC_SERVER_KEY``, else the
    ``known_nodes`` file); ``user`` and ``password`` log this client in when it needs to;
    ``insecure`` talks plain tcp (``EC_INSECURE``); ``config_dir`` is where the known keys and the
    client's key pair live (``EC_CONFIG_DIR``).
    """

    def __init__(self, endpoint: str | None = None, *, timeout: float = 10.0,
                 connect_timeout: float = 5.0, resend_interval: float | None = None,
                 attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT, server_key: str | None = None,
                 user: str | None = None, password: str | None = None, insecure: bool | None = None,
                 config_dir: str | os.PathLike[str] | None = None) -> None:
        self._endpoints = resolve_endpoints(endpoint)
        key = server_key or os.environ.get("EC_SERVER_KEY") or None
        if key is not None and not is_key(key):
            raise EcctlError(f"server key {key[:60]!r} is not a node key: expected the 40 characters "
                             "`ecd keys show` prints")
        self.server_key = key
        self.user = user
        self._password = password
        self.insecure = _on(os.environ.get("EC_INSECURE")) if insecure is None else bool(insecure)
        self.config_dir = Path(config_dir) if config_dir is not None else None
        self._keys: ClientKeys | None = None
        self._logged_in = False
        self._learned = False
        self._index = 0              # the endpoint in use
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self.resend_interval = (float(resend_interval) if resend_interval is not None
                                else max(1.0, self.timeout / 5))
        self.attempt_timeout = float(attempt_timeout)
        self._lock = threading.RLock()
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None
        self._pid = os.getpid()
        self._answered = False       # True once any reply came back

    @property
    def endpoints(self) -> list[str]:
        """Every endpoint, in the order they are tried."""
        return list(self._endpoints)

    @property
    def endpoint(self) -> str:
        """The endpoint in use (the first until a failover)."""
        return self._endpoints[self._index]

    @property
    def _several(self) -> bool:
        return len(self._endpoints) > 1

    def _all(self) -> str:
        return ",".join(self._endpoints)

    # -- socket management -------------------------------------------------------------

    def _socket(self) -> zmq.Socket:
        if self._pid != os.getpid():     # forked: never touch the parent's sockets
            self._ctx, self._sock, self._pid = None, None, os.getpid()
        if self._ctx is None:
            # The process-wide context: a Client collected without close() (e.g. inside a
            # reference cycle) must never block in Context.term() on its own open socket.
            self._ctx = zmq.Context.instance()
        if self._sock is None:
            self._sock = self._connect(self._ctx, self.endpoint)
        return self._sock

    def key_of(self, endpoint: str) -> str:
        """The public key this client trusts for a tcp ``endpoint``; UnknownServerKey when none."""
        if self.server_key is not None and endpoint == self._endpoints[0]:
            return self.server_key
        known = KnownNodes(self.config_dir).get(endpoint)
        if known is None:
            raise UnknownServerKey(endpoint)
        return known

    @property
    def keys(self) -> ClientKeys:
        """This client's CURVE key pair (from the config folder; made there at first use)."""
        if self._keys is None:
            self._keys = client_keys(self.config_dir)
        return self._keys

    def _connect(self, ctx: zmq.Context, endpoint: str) -> zmq.Socket:
        """A DEALER connected to ``endpoint`` with the client's options (CURVE on tcp)."""
        server_key = self.key_of(endpoint) if endpoint.startswith("tcp://") and not self.insecure else None
        sock = ctx.socket(zmq.DEALER)
        if server_key is not None:
            curve_client(sock, self.keys, server_key)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
        sock.setsockopt(zmq.HEARTBEAT_TTL, 6000)
        sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES + 65536)
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as exc:   # malformed endpoint, ipc path too long, ...
            sock.close(linger=0)
            raise EcctlError(f"cannot connect to {endpoint}: {exc}") from exc
        return sock

    def _reset(self) -> None:
        """Drop the socket (and whatever it queued); the next request makes a new one."""
        if self._sock is not None and self._pid == os.getpid():
            self._sock.close(linger=0)
        self._sock = None

    def _advance(self, why: str) -> None:
        """Close the socket and move to the next endpoint (round robin)."""
        old = self.endpoint
        self._reset()
        self._index = (self._index + 1) % len(self._endpoints)
        log.info("%s %s; trying %s", old, why, self.endpoint)

    def close(self) -> None:
        """Close this client's socket (the process-wide ZeroMQ context stays)."""
        with self._lock:
            self._reset()
            self._ctx = None  # shared: closing the socket is all this client owns

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            sock = getattr(self, "_sock", None)
            if sock is not None and getattr(self, "_pid", None) == os.getpid():
                sock.close(linger=0)
        except Exception:  # interpreter shutdown (modules already gone): nothing left to do
            pass

    # -- requests ------------------------------------------------------------------------

    def _check_ipc(self) -> None:
        if not self._reachable():
            raise NoDaemon(self.endpoint)

    def _skip_unreachable(self, *, raise_if_none: bool) -> None:
        """Move to the first endpoint, from the current one on, whose ipc file exists."""
        for _ in range(len(self._endpoints)):
            if self._reachable():
                return
            self._advance("has no socket file")
        if raise_if_none:
            raise NoDaemon(self._all())

    def _reachable(self) -> bool:
        """False when the current endpoint is an ipc socket file that does not exist."""
        path = _ipc_path(self.endpoint)
        return path is None or os.path.exists(path)

    def _exchange(self, msg: Any, timeout: float) -> Any | None:
        """Send ``msg`` once; the matching reply, or None (socket reset) when none came."""
        sock = self._socket()
        rid = msg.request_id
        sock.send_multipart(protocol.encode(msg), copy=False)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sock.poll(int(remaining * 1000) + 1, zmq.POLLIN):
                if time.monotonic() < deadline:
                    continue
                self._reset()
                return None
            frames = sock.recv_multipart()
            try:
                reply = protocol.decode(frames)
            except protocol.ProtocolError as exc:
                if getattr(exc, "request_id", b"") == rid:
                    raise ServerError(exc.code, f"bad reply from daemon: {exc.reason}") from exc
                log.warning("dropping undecodable reply: %s", exc)
                continue
            if reply.request_id != rid:
                log.debug("dropping stale reply %r", reply.request_id)
                continue
            return reply

    def request(self, msg: Any, *, wait: float = 0.0, resend: bool = False,
                timeout: float | None = None) -> Any:
        """Send one request, return its reply message.

        ``wait`` is extra time the daemon may legitimately hold the request (GET long-poll).
        With ``resend`` the request is re-sent every ``resend_interval`` until the deadline.
        With several endpoints every request is re-sent to the next endpoint after an
        unanswered attempt (see the module docstring).
        Raises NoDaemon, CallTimeout, or ServerError for an ERROR reply.
        """
        with self._lock:
            if self._password is not None and not self._logged_in and self._needs_login():
                self._login_locked()
            reply = self._send_request(msg, wait, resend, timeout)
            if (isinstance(reply, protocol.Error) and reply.code == protocol.E_UNAUTHORIZED
                    and self._password is not None and not _is_login(msg)):
                self._login_locked()  # the login expired (or was revoked): once more, then the same request
                reply = self._send_request(msg, wait, resend, timeout)
            if not self._learned and self._several and not isinstance(reply, protocol.Error):
                self._learn_locked()
        if isinstance(reply, protocol.Error):
            raise ServerError(reply.code, reply.reason, reply.detail)
        return reply

    def _send_request(self, msg: Any, wait: float, resend: bool, timeout: float | None) -> Any:
        if self._several:
            reply = self._request_failover(msg, wait, timeout)
        else:
            reply = self._request_one(msg, wait, resend, timeout)
        self._answered = True
        return reply

    def _needs_login(self) -> bool:
        """Does the endpoint in use authenticate (CURVE tcp)? The ipc socket and --insecure need none."""
        return self.endpoint.startswith("tcp://") and not self.insecure

    # -- login --------------------------------------------------------------------------------

    def login(self, user: str | None = None, password: str | None = None) -> dict[str, Any]:
        """Prove ``user``'s password to the node (over CURVE) and bind this client's key to that
        user for the node's session time, on every node of its mesh; returns ``{"user", "roles",
        "rights", "expires", "node"}``. Given once, ``user`` and ``password`` are kept, and the
        client logs in again by itself when its login has expired."""
        with self._lock:
            if user is not None:
                self.user = user
            if password is not None:
                self._password = password
            return self._login_locked()

    def _login_locked(self) -> dict[str, Any]:
        if not self.user or self._password is None:
            raise EcctlError("a login needs a user and a password")
        reply = self._send_request(protocol.Admin(op="login", args={"user": self.user, "password": self._password}),
                                   0.0, False, None)
        if isinstance(reply, protocol.Error):
            raise ServerError(reply.code, reply.reason, reply.detail)
        self._logged_in = True
        if not self._learned:
            self._learn_locked()
        return reply.data

    def _learn_locked(self) -> None:
        """Ask the node in use for the keys of its mesh's members (so failover to them works),
        once; kept in ``known_nodes`` where no key is known yet."""
        self._learned = True
        if not self._needs_login():
            return
        try:
            reply = self._send_request(protocol.Admin(op="mesh_keys", args={}), 0.0, False, None)
        except EcctlError as exc:
            log.debug("cannot learn the mesh's keys: %s", exc)
            return
        if not isinstance(reply, protocol.Reply) or not isinstance(reply.data, list):
            return
        claims: dict[str, set[Any]] = {}
        for entry in reply.data:
            if isinstance(entry, dict):
                for endpoint in entry.get("endpoints") or ():
                    if isinstance(endpoint, str):
                        claims.setdefault(endpoint, set()).add(entry.get("key"))
        # an endpoint given two keys is learned with neither
        learned = {e: next(iter(k)) for e, k in claims.items() if len(k) == 1 and isinstance(next(iter(k)), str)}
        try:
            new = KnownNodes(self.config_dir).learn(learned)
        except OSError as exc:
            log.warning("cannot keep the mesh's keys: %s", exc)
            return
        if new:
            log.info("learned the keys of %d endpoint(s) of the mesh", new)

    def _deadline(self, wait: float, timeout: float | None, connect: float) -> float:
        """Deadline of a request; bounded by ``connect`` while no daemon has answered yet."""
        start = time.monotonic()
        deadline = start + (self.timeout if timeout is None else timeout) + wait
        if not self._answered:
            deadline = min(deadline, start + connect + wait)
        return deadline

    def _request_one(self, msg: Any, wait: float, resend: bool, timeout: float | None) -> Any:
        """One endpoint: re-send to it until the deadline; a missing ipc file is NoDaemon."""
        if not self._answered:  # once the daemon answered, a lost socket shows as a timeout
            self._check_ipc()
        msg = dataclasses.replace(msg, request_id=os.urandom(8))
        first = not self._answered
        deadline = self._deadline(wait, timeout, self.connect_timeout)
        while True:
            remaining = deadline - time.monotonic()
            attempt = min(remaining, self.resend_interval + wait) if resend else remaining
            reply = self._exchange(msg, max(attempt, 0.0))
            if reply is not None:
                return reply
            if time.monotonic() >= deadline:
                if first:
                    raise NoDaemon(self.endpoint)
                raise CallTimeout(f"no reply from {self.endpoint} in time")
            self._check_ipc()
            log.debug("no reply yet, re-sending %s", type(msg).__name__)

    def _request_failover(self, msg: Any, wait: float, timeout: float | None) -> Any:
        """Several endpoints: one attempt per endpoint in turn until one answers or the
        deadline; ERROR 503 also moves on (and is the reply once every endpoint gave it)."""
        msg = dataclasses.replace(msg, request_id=os.urandom(8))
        first = not self._answered
        count = len(self._endpoints)
        deadline = self._deadline(wait, timeout,
                                  max(self.connect_timeout, count * self.attempt_timeout))
        unavailable: dict[str, Any] = {}   # endpoint -> its ERROR 503 in this request
        unusable: dict[str, str] = {}      # endpoint -> why it could not be tried this round
        keyless: dict[str, UnknownServerKey] = {}  # tcp endpoints with no key known
        attempts = 0
        while True:
            endpoint = self.endpoint
            reply = None
            if not self._reachable():
                unusable[endpoint] = "has no socket file"
            else:
                remaining = deadline - time.monotonic()
                try:
                    attempt = min(remaining, self.attempt_timeout + wait)
                    reply = self._exchange(msg, max(attempt, 0.0))
                except UnknownServerKey as exc:  # no key to check it by: never used
                    keyless[endpoint] = exc
                    unusable[endpoint] = str(exc)
                except EcctlError as exc:   # the endpoint cannot be connected
                    log.warning("%s", exc)
                    unusable[endpoint] = str(exc)
            if reply is None and endpoint not in unusable and self._answers_ping(deadline):
                continue  # alive, only slow (say, waiting for a replica): ask it again, not another
                #           node, which would accept a re-sent CALL as a second, separate call
            if reply is not None:
                if not (isinstance(reply, protocol.Error) and reply.code == protocol.E_UNAVAILABLE):
                    return reply
                unavailable[endpoint] = reply
                if len(unavailable) == count:    # no node can take it now: say so
                    return reply
            attempts += 1
            if time.monotonic() >= deadline:
                if unavailable:
                    return next(reversed(unavailable.values()))
                if first:
                    raise NoDaemon(self._all())
                raise CallTimeout(f"no reply from {self._all()} in time")
            self._advance("is unavailable" if reply is not None
                          else unusable.get(endpoint, "did not answer"))
            if attempts % count == 0:            # a full round: never spin
                if len(unusable) == count and set(unusable.values()) == {"has no socket file"}:
                    raise NoDaemon(self._all())   # as with one endpoint: no daemon runs
                if len(keyless) == count:
                    raise next(iter(keyless.values()))  # not one node this client can check
                unusable.clear()
                time.sleep(max(0.0, min(_RETRY_PAUSE, deadline - time.monotonic())))

    def _answers_ping(self, deadline: float) -> bool:
        """Does the current endpoint's node answer PING within :data:`PING_PROBE` seconds?"""
        remaining = min(PING_PROBE, deadline - time.monotonic())
        if remaining <= 0:
            return False
        try:
            reply = self._exchange(protocol.Ping(request_id=os.urandom(8)), remaining)
        except EcctlError:
            return False
        return isinstance(reply, protocol.Pong)

    # -- calls -----------------------------------------------------------------------------

    def submit(self, socket: str, args: tuple[Any, ...] | list[Any] = (),
               kwargs: Mapping[str, Any] | None = None, *, call_id: str | None = None,
               stream: bool = False) -> AsyncResult:
        """Submit a call of ``socket``; returns once the daemon durably accepted it. With
        ``stream`` this client will read its items (:meth:`stream`) from the first one."""
        msg = protocol.Call(socket=socket, args=protocol.pack(list(args)),
                            kwargs=protocol.pack(dict(kwargs or {})),
                            call_id=call_id or str(uuid.uuid4()), stream=stream)
        reply = self.request(msg, resend=True)
        if not isinstance(reply, protocol.Accepted):
            raise EcctlError(f"unexpected reply to CALL: {type(reply).__name__}")
        result = AsyncResult(self, reply.call_id, seq=reply.seq, node=reply.node,
                             duplicate=reply.duplicate)
        if reply.result is not None:  # a fast call: it had already ended durably
            result._reply = protocol.Result(call_id=reply.call_id, **reply.result)
            result._state = "done" if reply.result["ok"] else "failed"
        return result

    def submit_flow(self, graph: Mapping[str, Any], args: tuple[Any, ...] | list[Any] = (),
                    kwargs: Mapping[str, Any] | None = None, *, flow_id: str | None = None) -> AsyncResult:
        """Send a workflow graph (see :mod:`ecctl.workflows`); returns once a daemon holds it
        durably. The returned handle's id is the workflow's: ``result(id)`` is its result."""
        msg = protocol.Flow(graph=dict(graph), args=protocol.pack(list(args)),
                            kwargs=protocol.pack(dict(kwargs or {})), flow_id=flow_id or str(uuid.uuid4()))
        reply = self.request(msg, resend=True)
        if not isinstance(reply, protocol.Accepted):
            raise EcctlError(f"unexpected reply to FLOW: {type(reply).__name__}")
        result = AsyncResult(self, reply.call_id, seq=reply.seq, node=reply.node, duplicate=reply.duplicate)
        if reply.result is not None:
            result._reply = protocol.Result(call_id=reply.call_id, **reply.result)
            result._state = "done" if reply.result["ok"] else "failed"
        return result

    def call(self, socket: str, *args: Any, call_id: str | None = None, **kwargs: Any) -> AsyncResult:
        """Submit ``socket(*args, **kwargs)``; see :meth:`submit`."""
        return self.submit(socket, args, kwargs, call_id=call_id)

    def poll(self, call_id: str, wait: float = 0.0) -> Any:
        """One GET: the RESULT or PENDING message.

        With several endpoints ``wait`` is cut to :data:`FAILOVER_WAIT_MS` (a PENDING may come
        early), so that a node that dies while holding the GET is noticed soon.
        """
        wait_ms = min(max(0, int(wait * 1000)), self._max_wait_ms())
        return self.request(protocol.Get(call_id=call_id, wait_ms=wait_ms),
                            wait=wait_ms / 1000, resend=True)

    def _max_wait_ms(self) -> int:
        """Longest GET long-poll: short with several endpoints, to fail over soon."""
        return FAILOVER_WAIT_MS if self._several else protocol.MAX_WAIT_MS

    def result(self, call_id: str, timeout: float | None = None) -> Any:
        """Wait for the call's result (``timeout=None``: forever); raise RemoteError if it failed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        longest = min(MAX_WAIT_MS, self._max_wait_ms()) / 1000
        while True:
            remaining = longest if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise CallTimeout(f"call {call_id} not finished after {timeout}s", call_id)
            reply = self._patiently(lambda: self.poll(call_id, min(remaining, longest)))
            if isinstance(reply, protocol.Result):
                return _outcome(reply)

    @staticmethod
    def _patiently(request: Callable[[], Any]) -> Any:
        """``request()``, or None (after a short pause) when the daemon is away or restarting:
        the caller asks again until its own deadline."""
        try:
            return request()
        except (CallTimeout, NoDaemon) as exc:
            log.info("waiting for daemon: %s", exc)
        except ServerError as exc:
            if exc.code != protocol.E_UNAVAILABLE:
                raise
        time.sleep(_RETRY_PAUSE)
        return None

    def stream(self, call_id: str, timeout: float | None = None) -> Iterator[Any]:
        """The items a streaming call (a generator) yields, as they come; its failure raises
        :class:`RemoteError` after the items before it. A call that is not a generator gives its
        result as one item. Each request for more also tells the node how far this reader got:
        a slow reader holds the generator back (back-pressure), and one that stops asking for 10
        seconds no longer does. ``timeout`` bounds the whole stream."""
        deadline = None if timeout is None else time.monotonic() + timeout
        longest = min(MAX_WAIT_MS, self._max_wait_ms()) / 1000
        position = 0
        while True:
            remaining = longest if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise CallTimeout(f"stream of call {call_id} not finished after {timeout}s", call_id)
            wait = min(remaining, longest)
            msg = protocol.Stream(call_id=call_id, start=position, wait_ms=int(wait * 1000))
            reply = self._patiently(lambda: self.request(msg, wait=wait, resend=True))
            if reply is None:
                continue
            if not isinstance(reply, protocol.Items):
                raise EcctlError(f"unexpected reply to STREAM: {type(reply).__name__}")
            for offset, value in enumerate(reply.items):
                if reply.start + offset >= position:   # items already read are not read twice
                    position = reply.start + offset + 1
                    yield protocol.unpack(value)
            if reply.done:
                if reply.error is not None:
                    error = reply.error
                    raise RemoteError(str(error.get("type", "Error")), str(error.get("message", "")),
                                      str(error.get("traceback", "")), call_id)
                return

    def listen(self, name: str = "", channel: str = "task", *, ttl: float = 30.0,
               timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Events of processor, socket or queue ``name`` ("" = all) on ``channel`` (``task``:
        lifecycle events, ``log``: worker output lines, ``result``: outcomes), from every node of
        the mesh, as they happen, for ``timeout`` seconds (None: until the caller stops).

        Uses a connection of its own (other requests of this client are not held up). The
        subscription is renewed every ``ttl / 3`` seconds; when a node stops answering, the next
        endpoint is tried. Listening is best-effort: events a slow listener could not take are
        counted by the daemon and logged here."""
        if channel not in protocol.CHANNELS:
            raise ValueError(f"channel must be one of {', '.join(protocol.CHANNELS)}, not {channel!r}")
        ttl_ms = min(max(int(ttl * 1000), protocol.MIN_LISTEN_TTL_MS), protocol.MAX_LISTEN_TTL_MS)
        renew_every = ttl_ms / 3000
        deadline = None if timeout is None else time.monotonic() + timeout
        rid = os.urandom(8)
        ctx = zmq.Context.instance()
        with self._lock:
            if self._password is not None and not self._logged_in and self._needs_login():
                self._login_locked()
        index = self._index
        sock = self._connect(ctx, self._endpoints[index])
        renew_at = 0.0
        heard = time.monotonic()
        try:
            while True:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return
                if now - heard > renew_every + self.attempt_timeout + 1.0:  # the node is gone
                    sock.close(linger=0)
                    index = (index + 1) % len(self._endpoints)
                    log.info("listening: no answer; trying %s", self._endpoints[index])
                    sock = self._connect(ctx, self._endpoints[index])
                    heard, renew_at = now, 0.0
                if now >= renew_at:
                    sock.send_multipart(protocol.encode(protocol.Listen(name=name, channel=channel, ttl_ms=ttl_ms,
                                                                        request_id=rid)), copy=False)
                    renew_at = now + renew_every
                until = renew_at if deadline is None else min(renew_at, deadline)
                if not sock.poll(max(1, int((until - now) * 1000)), zmq.POLLIN):
                    continue
                try:
                    reply = protocol.decode(sock.recv_multipart())
                except protocol.ProtocolError as exc:
                    log.warning("dropping undecodable reply: %s", exc)
                    continue
                if reply.request_id != rid:
                    continue
                heard = time.monotonic()
                if isinstance(reply, protocol.Error):
                    raise ServerError(reply.code, reply.reason, reply.detail)
                if isinstance(reply, protocol.Events):
                    if reply.dropped:
                        log.warning("listening: the daemon dropped %d event(s) (this listener was too slow)",
                                    reply.dropped)
                    yield from reply.events
        finally:
            sock.close(linger=0)

    def map(self, socket: str, arglists: Iterable[Sequence[Any] | Any], *, window: int = 1024,
            batch: int = 128, timeout: float | None = None) -> list[Any]:
        """Call ``socket(*args)`` for every ``args`` in ``arglists`` (a non-sequence item is one
        argument) and return the results in input order.

        Calls go out in CALLS messages of up to ``batch`` entries, at most ``window`` unfinished
        at once, over this one connection; the daemon pushes RESULTS as they end. The first
        failed call raises its RemoteError (the others still run: they are durable). If nothing
        arrives for ``resend_interval`` the unfinished calls are sent again with the same ids
        (idempotent); with several endpoints they go to the next endpoint then, and also when
        the node answers ERROR 503. ``timeout`` bounds the whole batch.
        """
        if window < 1 or batch < 1:
            raise ValueError("window and batch must be at least 1")
        batch = min(batch, protocol.MAX_BATCH)
        empty_kwargs = protocol.pack({})
        entries = [{"socket": socket, "args": protocol.pack(list(a) if isinstance(a, (list, tuple)) else [a]),
                    "kwargs": empty_kwargs, "call_id": str(uuid.uuid4())} for a in arglists]
        index = {e["call_id"]: i for i, e in enumerate(entries)}
        results: list[Any] = [_UNSET] * len(entries)
        errors: dict[int, RemoteError] = {}
        unfinished: set[str] = set()
        accepted: set[str] = set()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if self._several:
                self._skip_unreachable(raise_if_none=True)
            else:
                self._check_ipc()
            if self._password is not None and not self._logged_in and self._needs_login():
                self._login_locked()
            sock = self._socket()
            request_ids: set[bytes] = set()
            next_entry = done = 0
            last_progress = time.monotonic()

            def send(chunk: list[dict[str, Any]]) -> None:
                rid = os.urandom(8)
                request_ids.add(rid)
                sock.send_multipart(protocol.encode(protocol.Calls(calls=chunk, push=True, request_id=rid)),
                                    copy=False)

            def send_again(why: str) -> None:
                """A new socket (to the next endpoint, if several) and every unfinished call on it."""
                nonlocal sock, last_progress
                if self._several:
                    self._advance(why)
                    self._skip_unreachable(raise_if_none=False)
                else:
                    self._reset()
                sock = self._socket()
                request_ids.clear()
                pending = [entries[index[cid]] for cid in unfinished]
                for start in range(0, len(pending), batch):
                    send(pending[start:start + batch])
                last_progress = time.monotonic()

            while done < len(entries):
                while next_entry < len(entries) and len(unfinished) < window:
                    chunk = entries[next_entry:next_entry + min(batch, window - len(unfinished))]
                    next_entry += len(chunk)
                    unfinished.update(e["call_id"] for e in chunk)
                    send(chunk)
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise CallTimeout(f"{len(entries) - done} of {len(entries)} calls unfinished after {timeout}s")
                wait = self.resend_interval if deadline is None else min(self.resend_interval, deadline - now)
                if not sock.poll(int(wait * 1000) + 1, zmq.POLLIN):
                    # calls not yet accepted are re-sent soon; accepted ones are only running
                    # long, so their results are asked for again much later
                    quiet = self.resend_interval if unfinished - accepted else max(30.0, 10 * self.resend_interval)
                    if time.monotonic() - last_progress >= quiet:
                        # nothing for a while (daemon restarted?): send the unfinished calls again
                        send_again("did not answer")
                    continue
                while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    try:
                        reply = protocol.decode(sock.recv_multipart())
                    except protocol.ProtocolError as exc:
                        log.warning("dropping undecodable reply: %s", exc)
                        continue
                    if reply.request_id not in request_ids:
                        continue  # stale: from before a re-send
                    last_progress = time.monotonic()
                    self._answered = True
                    if (isinstance(reply, protocol.Error) and reply.code == protocol.E_UNAVAILABLE
                            and self._several):
                        send_again("is unavailable")   # node stopping: its peers take the calls
                        break
                    if isinstance(reply, protocol.Error):
                        raise ServerError(reply.code, reply.reason, reply.detail)
                    if isinstance(reply, protocol.AcceptedMany):
                        accepted.update(a["call_id"] for a in reply.accepted)
                        for refusal in reply.refused:
                            if refusal["code"] not in _RETRY_CODES:
                                raise ServerError(refusal["code"], refusal["reason"], {"call_id": refusal["call_id"]})
                            # node stopping or storage trouble: the same id is re-sent later
                    elif isinstance(reply, protocol.Results):
                        for entry in reply.results:
                            cid = entry["call_id"]
                            if cid not in unfinished:
                                continue
                            unfinished.discard(cid)
                            done += 1
                            i = index[cid]
                            try:
                                results[i] = _outcome(protocol.Result(**entry))
                            except RemoteError as exc:
                                errors[i] = exc
        if errors:
            raise errors[min(errors)]
        return results

    # -- admin -------------------------------------------------------------------------------

    def ping(self) -> dict[str, Any]:
        """PING: ``{"node", "version", "time", "rtt"}``."""
        start = time.monotonic()
        reply = self.request(protocol.Ping(), resend=True)
        return {"node": reply.node, "version": reply.version, "time": reply.time,
                "rtt": time.monotonic() - start}

    def admin(self, op: str, **args: Any) -> Any:
        """Run an admin op (see DESIGN.md "Admin ops"); returns the reply data."""
        reply = self.request(protocol.Admin(op=op, args=args))
        return reply.data

    def status(self) -> dict[str, Any]:
        """The daemon's status dict."""
        return self.admin("status")

    def add_queue(self, name: str, type: str = "direct") -> dict[str, Any]:
        """Create a queue."""
        return self.admin("add_queue", name=name, type=type)

    def add_processor(self, name: str, gitrepo: str, module: str, **options: Any) -> dict[str, Any]:
        """Create a processor; options: concurrency, branch, commit, retries, retry_delay, ..."""
        return self.admin("add_processor", name=name, gitrepo=gitrepo, module=module, **options)

    def add_socket(self, name: str, processor: str, function: str, queue: str) -> dict[str, Any]:
        """Create a socket binding ``processor.function`` to ``queue``."""
        return self.admin("add_socket", name=name, processor=processor, function=function,
                          queue=queue)

    # -- the network (ecd/DESIGN-3.md "Admin ops") -------------------------------------------

    def add(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Create a ``kind`` object (queue, node, processor, socket, plug, deployment, flow)
        from ``fields`` (``name`` included); returns the object as stored."""
        return self.admin(f"add_{_kind(kind)}", **fields)

    def update(self, kind: str, name: str, **fields: Any) -> dict[str, Any]:
        """Change the given ``fields`` of one object (nothing else is sent); returns it."""
        return self.admin(f"update_{_kind(kind)}", name=name, **fields)

    def delete(self, kind: str, name: str) -> dict[str, Any]:
        """Delete one object; refused (ServerError 409) while something refers to it."""
        return self.admin(f"delete_{_kind(kind)}", name=name)

    def ls(self, kind: str) -> list[dict[str, Any]]:
        """Every object of ``kind`` (singular or plural: ``queue`` or ``queues``), by name."""
        return self.admin(f"ls_{_kind(kind)}s")

    # -- the mesh (issue #4) --------------------------------------------------------------------

    def drain(self, name: str) -> dict[str, Any]:
        """Start draining node ``name``: it takes no new work, hands its queued calls to peers
        and lets its running calls finish. Returns ``{"name", "state": "draining", ...}``;
        ServerError 404 for an unknown node. See :meth:`wait_drained`."""
        return self.admin("node_drain", name=name)

    def undrain(self, name: str) -> dict[str, Any]:
        """Let node ``name`` take work again; returns ``{"name", "state", ...}``."""
        return self.admin("node_undrain", name=name)

    def wait_drained(self, name: str, timeout: float = DEFAULT_DRAIN_TIMEOUT,
                     interval: float = DRAIN_POLL_INTERVAL) -> dict[str, Any]:
        """Ask ``ls_nodes`` every ``interval`` seconds until node ``name`` is ``drained``;
        returns its entry. CallTimeout after ``timeout`` seconds (naming its last state),
        EcctlError if no node has that name. Requests that fail for want of a daemon are
        retried until the deadline (the node asked may be the one going away)."""
        deadline = time.monotonic() + timeout
        state: Any = "unknown"
        while True:
            remaining = deadline - time.monotonic()
            try:
                nodes = self.request(protocol.Admin(op="ls_nodes", args={}),
                                     timeout=max(0.0, min(self.timeout, remaining))).data
            except (CallTimeout, NoDaemon) as exc:
                log.info("waiting for node %s to drain: %s", name, exc)
            except ServerError as exc:
                if exc.code != protocol.E_UNAVAILABLE:
                    raise
            else:
                entry = next((n for n in nodes or [] if isinstance(n, dict) and n.get("name") == name),
                             None)
                if entry is None:
                    raise EcctlError(f"unknown node {name!r}")
                state = entry.get("state")
                if state == "drained":
                    return entry
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CallTimeout(f"node {name} not drained after {timeout:g}s (state: {state})")
            time.sleep(min(interval, remaining))

    def proc(self, action: str, name: str) -> dict[str, Any]:
        """``pause``, ``resume``, ``stop``, ``start``, ``restart`` or ``remove`` a processor.

        ``remove`` deletes it with its sockets, their plugs, its deployments and flow
        memberships, and returns what went: ``{"processor", "sockets", "plugs", ...}``.
        """
        if action not in PROC_ACTIONS:
            raise ValueError(f"unknown processor action {action!r} (one of: {', '.join(PROC_ACTIONS)})")
        return self.admin(f"proc_{action}", name=name)

    def apply(self, spec: Mapping[str, Any], dry_run: bool = False, prune: bool = False) -> dict[str, Any]:
        """Make the network match ``spec`` in one transaction (see :mod:`ecctl.spec`).

        Returns ``{"changes": [{"action", "kind", "name", "fields"}], "applied", "version"}``;
        with ``dry_run`` nothing changes; with ``prune`` objects of the listed sections that
        ``spec`` does not name are deleted (never nodes).
        """
        return self.admin("apply", spec=dict(spec), dry_run=bool(dry_run), prune=bool(prune))

    def export(self) -> dict[str, Any]:
        """The whole network as a spec that :meth:`apply` accepts unchanged."""
        return self.admin("export")

    def ls_calls(self, page: int = 1, rows: int = 10, unfinished: bool = False,
                 socket: str | None = None, *, limit: int | None = None,
                 offset: int | None = None) -> dict[str, Any]:
        """One page of calls, newest first: ``{"total", "page", "pages", "rows", "calls", ...}``.

        ``socket`` keeps only that socket's calls. The issue #2 form ``ls_calls(limit=,
        offset=)`` is still sent as such when ``limit`` or ``offset`` is given.
        """
        args: dict[str, Any]
        if limit is not None or offset is not None:
            args = {"limit": 50 if limit is None else limit, "offset": offset or 0,
                    "unfinished": unfinished}
        else:
            args = {"page": page, "rows": rows, "unfinished": unfinished}
        if socket is not None:
            args["socket"] = socket
        return self.admin("ls_calls", **args)

    def ls_call(self, id: str, result: bool = False, *, tree: bool = False, graph: bool = False,
                flow: bool = False) -> dict[str, Any]:
        """One call's record with its events (and decoded ``result`` when asked).

        With ``tree`` (the calls it led to), ``graph`` (its whole run) or ``flow`` (every call of
        its run): ``{"id", "view", "root", "calls": [summary...], "edges": [[parent, child]...],
        "missing": [...]}`` instead (see :mod:`ecctl.calltree`)."""
        args: dict[str, Any] = {"id": id}
        if result:
            args["result"] = True
        for name, wanted in (("tree", tree), ("graph", graph), ("flow", flow)):
            if wanted:
                args[name] = True
        return self.admin("ls_call", **args)


def _kind(kind: str) -> str:
    """``kind`` in the singular; ValueError for an unknown kind."""
    singular = kind[:-1] if kind not in KINDS and kind.endswith("s") else kind
    if singular not in KINDS:
        raise ValueError(f"unknown kind {kind!r} (one of: {', '.join(KINDS)})")
    return singular


def _outcome(reply: Any) -> Any:
    """Value of a RESULT message, or raise RemoteError."""
    if reply.ok:
        return protocol.unpack(reply.value)
    error = reply.error or {}
    step_call = error.get("call_id")
    if isinstance(step_call, str) and step_call and step_call != reply.call_id:  # a workflow's step
        raise RemoteError(str(error.get("type", "Error")), str(error.get("message", "")),
                          str(error.get("traceback", "")), step_call, step=str(error.get("step", "")),
                          workflow_id=reply.call_id)
    raise RemoteError(str(error.get("type", "Error")), str(error.get("message", "")),
                      str(error.get("traceback", "")), reply.call_id)


_UNSET = object()


class AsyncResult:
    """Handle of a submitted call."""

    def __init__(self, client: Client, call_id: str, *, seq: int | None = None,
                 node: str | None = None, duplicate: bool = False) -> None:
        self.client = client
        self.id = call_id
        self.seq = seq
        self.node = node
        self.duplicate = duplicate
        self._state = "queued"
        self._reply: Any = None

    def __repr__(self) -> str:
        return f"<AsyncResult {self.id} {self._state}>"

    def _check(self) -> bool:
        if self._reply is None:
            reply = self.client.poll(self.id, 0)
            if isinstance(reply, protocol.Result):
                self._reply = reply
                self._state = "done" if reply.ok else "failed"
            else:
                self._state = reply.state
        return self._reply is not None

    def ready(self) -> bool:
        """True when the call has finished (one GET with wait_ms=0)."""
        return self._check()

    @property
    def state(self) -> str:
        """Current state: queued, running, retrying, done or failed (asks the daemon)."""
        self._check()
        return self._state

    def get(self, timeout: float | None = None) -> Any:
        """The call's return value; None waits forever. Raises RemoteError or CallTimeout."""
        if self._reply is not None:
            return _outcome(self._reply)
        try:
            value = self.client.result(self.id, timeout)
        except RemoteError:
            self._state = "failed"
            raise
        self._state = "done"
        return value


@dataclass(frozen=True)
class Signature:
    """A call not yet submitted: socket name plus partial arguments.

    Calling a Signature returns a new one with more arguments (``Function("f").p(1)(2)``);
    :meth:`delay` submits it, :meth:`apply` submits and waits.
    """

    function: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    client: Client | None = field(default=None, compare=False, repr=False)
    endpoint: str | None = field(default=None, compare=False, repr=False)

    @property
    def name(self) -> str:
        """The socket name."""
        return self.function

    def __call__(self, *args: Any, **kwargs: Any) -> Signature:
        return dataclasses.replace(self, args=self.args + args, kwargs={**self.kwargs, **kwargs})

    def _client(self) -> Client:
        return self.client if self.client is not None else Client(self.endpoint)

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        """Submit with extra arguments appended; returns once accepted."""
        return self._client().submit(self.function, self.args + args, {**self.kwargs, **kwargs})

    def apply(self, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Submit and wait for the value."""
        return self.delay(*args, **kwargs).get(timeout)


class Function:
    """A remote function (an ecd socket) called like a local one: ``Function("add")(1, 2)``."""

    def __init__(self, name: str, *, endpoint: str | None = None, client: Client | None = None) -> None:
        self.name = name
        self._endpoint = endpoint
        self._client = client
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Function({self.name!r})"

    @property
    def client(self) -> Client:
        """The client used (created on first use when none was given)."""
        with self._lock:
            if self._client is None:
                self._client = Client(self._endpoint)
            return self._client

    def __call__(self, *args: Any, **kwargs: Any) -> AsyncResult:
        """Submit a call; returns once the call is durably accepted."""
        return self.client.submit(self.name, args, kwargs)

    def stream(self, *args: Any, timeout: float | None = None, **kwargs: Any) -> Iterator[Any]:
        """Call this function and iterate over what it yields, item by item as they come (a
        generator function streams; see :meth:`Client.stream`). The call is durable before the
        first item is asked for."""
        handle = self.client.submit(self.name, args, kwargs, stream=True)
        return self.client.stream(handle.id, timeout=timeout)

    def map(self, arglists: Iterable[Sequence[Any] | Any], *, window: int = 1024, batch: int = 128,
            timeout: float | None = None) -> list[Any]:
        """Call this function once per item with a bounded window in flight; see :meth:`Client.map`."""
        return self.client.map(self.name, arglists, window=window, batch=batch, timeout=timeout)

    @property
    def p(self) -> Signature:
        """A partial signature: ``f.p(1, x=2)`` is ``Signature(f.name, (1,), {"x": 2})``."""
        return Signature(self.name, client=self.client, endpoint=self._endpoint)


Socket = Function
