"""One ElasticCode node: wires the parts together and runs the event loop.

Start order: data-dir lock -> kill orphaned workers -> write-ahead log (recovery) -> topology ->
client sockets -> READY. One thread runs the loop; it owns the ZeroMQ sockets, the worker pipes
and all call state. Blocking work (database, git, pip) runs in :mod:`ecd.background` threads,
and fsyncs in the log's writer thread; both report back through file descriptors the loop polls.

Stop order (SIGTERM/SIGINT): STOPPING=1, refuse new calls, let running calls finish within the
grace period, requeue the rest durably, stop workers, flush the log, close sockets, exit 0.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import heapq
import logging
import os
import signal
import sys
import time
import uuid
from typing import Any

import zmq

import protocol

from . import __version__
from . import calls as C
from .accounts import AccessStore
from .admin import AdminHandler
from .audit import AuditLog
from .background import Background
from .cluster import Cluster, RemoteWaiter, read_incarnation
from .config import Config
from .dataflow import Dataflow, Derived
from .events import Bus
from .provenance import Provenance
from .ticks import Ticker
from .errors import (AccessError, AlreadyExists, ConfigError, EcdError, InvalidName, KeyRefused, NodeUnavailable, NotFound,
                     PeerUnreachable, RepoError, WorkerError)
from .exporter import HistoryExporter
from .guard import Guard
from .history import HistoryStore
from .keys import load_or_create
from .mesh import Mesh
from .processors import FAILED, PENDING, RUNNING, STOPPED, ProcessorRuntime, WorkerSlot
from .repos import CodeLoader
from .scheduler import Scheduler
from .sdnotify import Notifier
from .server import Frontend, Peer
from .sync import TopologySync
from .topology import TopologyStore
from .wal import Wal
from .streams import Streams
from .access import authorize, can_see_call, rule_for
from .useradmin import AccessAdmin, first_admin
from .workers import Done, Exited, ImportFailed, Item, ProcessRegistry, Raised, Ready, StreamEnd, make_support_dir
from .zap import Authenticator

logger = logging.getLogger(__name__)

#: Longest the loop sleeps without looking at its timers.
MAX_POLL_MS = 1000
#: Seconds between GIL hand-offs among the node's threads (Python's default is 0.005).
SWITCH_INTERVAL = 0.0005
#: Seconds a new worker may take to import its module before it is killed (and respawned).
WORKER_READY_TIMEOUT = 120.0
#: Workers in a row dying before their module imported that mark the processor failed.
EARLY_EXIT_LIMIT = 3
#: Push destinations kept per call (a client that re-sends a batch makes a new one each time).
MAX_PUSH_WAITERS = 4
#: Longest text kept of a failed call's error message and traceback (each).
MAX_ERROR_TEXT = 64 * 1024
#: Longest a GET is held before PENDING (clients poll again), bounding the timer heap.
MAX_GET_WAIT = 60.0
#: Largest result a call may return (it must fit in one RESULT message).
MAX_RESULT_BYTES = protocol.MAX_MESSAGE_BYTES - 64 * 1024
#: Prefetch only calls whose arguments are this small (the worker's pipe takes them at once)...
PREFETCH_MAX_BYTES = 64 * 1024
#: ... and only for processors whose calls take this long on average (seconds), so a long
#: call never holds short ones behind it.
PREFETCH_MAX_DURATION = 0.01
#: Seconds before a final record whose commit failed is written again.
FINAL_RETRY_DELAY = 1.0
#: Calls of a processor a node must have timed before it prefetches them while it has peers.
PREFETCH_MIN_OBSERVED = 3
#: Calls handed to one worker at most (1 running + the rest waiting in its pipe) under backlog.
PREFETCH = 4
#: Seconds a worker gets to exit after "stop" before it is killed.
WORKER_STOP_GRACE = 2.0
#: Seconds between the node's registrations (heartbeats) in the topology's node table.
REGISTER_EVERY = 10.0
#: Refusal of a client's call id that has the form of an id the daemons make.
#: Refusal of a call id that another user's call has (ids are scoped by user).
TAKEN_ID = "call id '{}' is taken by another user's call: send a fresh id (uuid4)"
RESERVED_ID = "call id '{}' is reserved (ids of the form p-, j-, s- or t- and 32 hex digits name calls the daemons make)"


class _Batch:
    """A CALLS request waiting for its new entries to become durable."""

    __slots__ = ("peer", "request_id", "accepted", "refused", "waiting", "ready", "sent")

    def __init__(self, peer: Peer, request_id: bytes) -> None:
        self.peer = peer
        self.request_id = request_id
        self.accepted: list[dict[str, Any]] = []
        self.refused: list[dict[str, Any]] = []
        self.waiting: set[str] = set()
        self.ready: list[dict[str, Any]] = []  # results of finished duplicates, sent after the accept
        self.sent = False


class Node:
    """An ecd daemon: ``Node(config).run()`` returns the process exit code."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.started = time.time()
        self.stop_requested = False
        self.stopping = False
        self.active: dict[str, dict[str, Any]] = {}  # calls not yet finished-and-committed
        self.ack_waiters: dict[str, list[tuple[Peer, bytes]]] = {}
        self.result_waiters: dict[str, list[tuple[Peer, bytes]]] = {}  # GET long polls
        self.push_waiters: dict[str, list[tuple[Peer, bytes]]] = {}  # CALLS with push
        self.get_timers: list[tuple[float, int, str, Peer, bytes]] = []
        self.running: dict[str, tuple[ProcessorRuntime, WorkerSlot]] = {}
        self.runtimes: dict[str, ProcessorRuntime] = {}
        self.fd_owner: dict[int, tuple[str, ProcessorRuntime, WorkerSlot]] = {}
        self.scheduler = Scheduler(config.cpus)
        self.sockets_of: dict[str, list[str]] = {}
        # back-pressure (queues with a max_length), derived once per topology
        self.queue_limits: dict[str, int] = {}            # queue -> max_length
        self.queue_sockets: dict[str, list[str]] = {}     # limited queue -> sockets whose calls wait in it
        self.plug_limits: dict[str, list[str]] = {}       # socket -> limited queues its plugs feed
        self._timer_seq = 0
        self._next_register = 0.0
        self._registering = False
        self.history: HistoryExporter | None = None
        self.unstored: set[str] = set()  # calls whose accept commit failed (ERROR 507 was sent)
        self.finalizing: dict[str, dict[str, Any]] = {}  # terminal records not yet durable
        # what a final record set off (other finals, derived records), written with it again if
        # its commit fails
        self.final_extra: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
        self.final_retries: list[tuple[float, str]] = []  # finals to write again after a failed commit
        self._next_watchdog = 0.0
        self._grace_deadline = 0.0
        self.refused_peer_messages = 0  # peer messages from keys that are not a registered node's
        self._key_refused = False  # the topology has another key (or a revoked one) for this node

    # -- start ----------------------------------------------------------------------------------

    def initialize(self) -> None:
        cfg = self.config
        # The loop, the log writer and the background threads hand work to each other all the
        # time: a short switch interval keeps a woken thread from waiting 5 ms for the GIL.
        sys.setswitchinterval(SWITCH_INTERVAL)
        cfg.data_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        self._lock_data_dir()
        self.notifier = Notifier()
        self.registry = ProcessRegistry(cfg.data_dir / "workers.json")
        killed = self.registry.kill_orphans()
        if killed:
            logger.warning("killed %d orphaned worker(s) left by a previous ecd: %s", len(killed), killed)
        self.wal = Wal(cfg.data_dir / "wal", map_size=cfg.map_size, result_ttl=cfg.result_ttl)
        self.wal.start()
        self.node_id = self.wal.node_id
        self.keys = None
        if not cfg.insecure:
            self.keys, made = load_or_create(cfg.data_dir)
            if made:
                logger.info("made this node's key pair in %s (public key %s)", cfg.data_dir / "keys",
                            self.keys.public_text)
        self.store = TopologyStore(cfg.db)
        self.bg_db = Background(threads=1, name="ecd-db")
        self.sync = TopologySync(self.store, self.bg_db, cfg.data_dir / "topology.json", cfg.topology_poll,
                                 lambda _topology: self._reconcile())
        self.sync.load()
        self.access_store = AccessStore(self.store)
        if not self.sync.cached_start:
            first_admin(self.access_store, cfg.data_dir)
        self.audit = AuditLog(self.bg_db, self.access_store.write_audit, cfg.name)
        self.guard = Guard(insecure=cfg.insecure, topology=lambda: self.topology, audit=self.audit)
        self.bg_auth = Background(threads=1, name="ecd-auth")  # password hashing, off the db thread
        if cfg.history:
            self.history = HistoryExporter(HistoryStore(self.store.engine), interval=cfg.history_interval,
                                           retention=cfg.history_retention)
        self.loader = CodeLoader(cfg.data_dir, cfg.venv_dir)
        self.support_dir = make_support_dir(cfg.data_dir / "runtime")
        self.bg_code = Background(threads=2, name="ecd-code")
        self.context = zmq.Context()
        # the ZAP handler runs before anything binds or connects: CURVE sockets refuse every
        # connection it does not answer for (ZAP_ENFORCE_DOMAIN)
        self.zap = Authenticator(self.context) if self.keys is not None else None
        self.mesh = Mesh(self.context, node_id=self.node_id, name=cfg.name, endpoint=cfg.peer_endpoint,
                         incarnation=read_incarnation(cfg.data_dir / "incarnation"), interval=cfg.heartbeat,
                         seeds=cfg.join, describe=self._describe,
                         on_change=lambda member, old, new: self.cluster.on_member(member, old, new),
                         keys=self.keys, admitted=self.guard.node_keys)
        self.access_admin = AccessAdmin(
            store=self.access_store, guard=self.guard, audit=self.audit, sync=self.sync, bg_db=self.bg_db,
            bg_auth=self.bg_auth, reply=lambda peer, message: self.frontend.send(peer, message),
            config=cfg, mesh_keys=self._mesh_keys, mesh=self.mesh)
        self.admin = AdminHandler(self)
        self.cluster = Cluster(self, self.mesh, cfg.data_dir)
        self.dataflow = Dataflow(self)
        self.provenance = Provenance(self)
        self.ticker = Ticker(self, cfg.data_dir / "ticks.json")
        self.streams = Streams(self)
        self.bus = Bus(self)
        self._host_stats: Any = None
        recovered = self._recover()
        self.cluster.start_hold()
        self.frontend = Frontend(self.context, cfg.endpoints, keys=self.keys, body_limit=self.guard.body_limit)
        if cfg.insecure and any(e.startswith("tcp://") for e in cfg.endpoints):
            logger.warning("INSECURE: tcp endpoints serve plain text with no authentication: anyone who can reach "
                           "them can run code on this node and read every call (--insecure)")
        self._sig_r, self._sig_w = os.pipe()
        os.set_blocking(self._sig_r, False)
        os.set_blocking(self._sig_w, False)
        signal.set_wakeup_fd(self._sig_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.poller = zmq.Poller()
        for sock in self.frontend.sockets:
            self.poller.register(sock, zmq.POLLIN)
        extra = [*self.sync.fds, *([self.history.wake_fd] if self.history else [])]
        for fd in (self.wal.wake_fd, self.bg_db.wake_fd, self.bg_code.wake_fd, self.bg_auth.wake_fd, self._sig_r,
                   *extra):
            self.poller.register(fd, zmq.POLLIN)
        self._reconcile()
        logger.info(
            "node %s (%s) ready: %d cpus, %d call(s) recovered, endpoints %s, %s",
            cfg.name, self.node_id, cfg.cpus, recovered, ", ".join(self.frontend.bound),
            f"key {self.keys.public_text}" if self.keys is not None else "INSECURE (no CURVE, no authentication)",
        )
        self.notifier.ready()
        self.notifier.status(f"serving on {', '.join(self.frontend.bound)}")

    @property
    def topology(self) -> Any:
        """The topology this node serves (kept current by :class:`~ecd.sync.TopologySync`)."""
        return self.sync.topology

    def _lock_data_dir(self) -> None:
        self._lock_file = open(self.config.data_dir / "ecd.lock", "a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise ConfigError(f"another ecd is running on {self.config.data_dir}") from exc
        self._lock_file.seek(0)
        self._lock_file.truncate()
        self._lock_file.write(f"{os.getpid()}\n")
        self._lock_file.flush()

    def _recover(self) -> int:
        """Requeue every unfinished call from the log: leased-but-unfinished become ready."""
        count = 0
        now = time.time()
        for record in self.wal.pending():
            if record.get("owner", self.node_id) != self.node_id:  # a copy kept for another node
                self.cluster.keep_replica(record)
                continue
            if not C.runnable(record):  # a workflow, or a join waiting for arguments
                self.active[record["id"]] = record
                count += 1
                continue
            if record["state"] == C.RUNNING:
                C.mark_requeued(record, "Requeued after restart (the attempt was interrupted)", now)
            self.active[record["id"]] = record
            due = record.get("not_before") or 0.0 if record["state"] == C.RETRYING else 0.0
            if record["state"] == C.RETRYING:
                record["state"] = C.QUEUED
            self.scheduler.push(record["socket"], record["id"], due=due, now=now)
            count += 1
        return count

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stop_requested = True

    # -- loop -----------------------------------------------------------------------------------

    def run(self) -> int:
        self.initialize()
        try:
            self.loop()
        finally:
            self.shutdown()
        return 0

    def loop(self) -> None:
        while True:
            if self.stop_requested and not self.stopping:
                self._begin_stop()
            if self.stopping and (not self.running or time.monotonic() >= self._grace_deadline):
                return
            if self.wal.fatal:
                logger.critical("the write-ahead log failed fatally; stopping the node")
                self._begin_stop()
                return
            timeout = self._run_timers()
            if self.cluster.outbox:
                self.cluster.flush()
            events = self.poller.poll(timeout)
            for item, _ in events:
                self._handle_ready(item)
            if self.cluster.outbox:
                self.cluster.flush()
            if self.bus.subs:
                self.bus.flush()

    def _handle_ready(self, item: Any) -> None:
        if isinstance(item, zmq.Socket):
            for peer, message in self.frontend.receive(item):
                self._handle_request(peer, message)
            self.dispatch()
            return
        fd = item
        if fd == self.wal.wake_fd:
            self._handle_commits()
        elif fd == self.bg_db.wake_fd:
            self.bg_db.drain()
        elif fd == self.bg_code.wake_fd:
            self.bg_code.drain()
        elif fd == self.bg_auth.wake_fd:
            self.bg_auth.drain()
        elif self.history is not None and fd == self.history.wake_fd:
            self.history.drain()
        elif fd in self.sync.fds:
            self.sync.on_wake()
        elif fd == self._sig_r:
            try:
                while os.read(self._sig_r, 512):
                    pass
            except BlockingIOError:
                pass
        elif fd in self.fd_owner:
            kind, runtime, slot = self.fd_owner[fd]
            if kind in ("channel", "exit"):
                if self.bus.subs:  # lines printed during a call are listed with that call
                    for output_fd in list(slot.process.output_fds):
                        slot.process.read_output(output_fd)
                for event in slot.process.read_events(exited=kind == "exit"):
                    self._handle_worker_event(runtime, slot, event)
            else:
                slot.process.read_output(fd)
                if fd not in slot.process.output_fds:  # EOF
                    self._unregister_fd(fd)
        self.dispatch()

    def _run_timers(self) -> int:
        """Fire due timers; return the poll timeout in ms until the next one."""
        mono = time.monotonic()
        now = time.time()
        next_at = mono + MAX_POLL_MS / 1000
        # GET long polls that ran out
        while self.get_timers and self.get_timers[0][0] <= mono:
            _, _, call_id, peer, request_id = heapq.heappop(self.get_timers)
            waiters = self.result_waiters.get(call_id)
            if waiters and (peer, request_id) in waiters:
                waiters.remove((peer, request_id))
                if not waiters:
                    del self.result_waiters[call_id]
                record = self.active.get(call_id)
                state = record["state"] if record else "unknown"
                if record is None and call_id in self.cluster.replicas:
                    state = "queued"
                self.reply(peer, protocol.Pending(call_id=call_id, state=state, request_id=request_id))
        if self.get_timers:
            next_at = min(next_at, self.get_timers[0][0])
        # final records whose commit failed
        while self.final_retries and self.final_retries[0][0] <= mono:
            _, call_id = self.final_retries.pop(0)
            if call_id in self.finalizing:
                finals, extra = self.final_extra.get(call_id, ([], []))
                finals = [self.finalizing[call_id], *(f for f in finals if f["id"] in self.finalizing)]
                # what it set off, as it is now; a record that ended since is durable already
                extra = [r for r in (self.finalizing.get(x["id"]) or self.active.get(x["id"]) for x in extra) if r]
                self.wal.submit(("final", [f["id"] for f in finals]), [*finals, *extra])
        if self.final_retries:
            next_at = min(next_at, self.final_retries[0][0])
        # delayed retries
        due = self.scheduler.promote_due(now)
        if due is not None:
            next_at = min(next_at, mono + max(0.0, due - now))
        # time limits, respawns, preparation retries
        for runtime in list(self.runtimes.values()):
            for slot in list(runtime.slots.values()):
                if not slot.ready:
                    if mono - slot.spawned > WORKER_READY_TIMEOUT:
                        logger.error("worker %d of %s did not import %s within %ss: killing it",
                                     slot.process.pid, runtime.name, runtime.definition.module, WORKER_READY_TIMEOUT)
                        self._worker_exited(runtime, slot, None)
                    else:
                        next_at = min(next_at, slot.spawned + WORKER_READY_TIMEOUT)
                    continue
                if slot.deadline is not None:
                    if slot.deadline <= mono:
                        self._time_limit_exceeded(runtime, slot)
                    else:
                        next_at = min(next_at, slot.deadline)
            if runtime.next_start > mono and self.sockets_of.get(runtime.name):
                next_at = min(next_at, runtime.next_start)  # a rate-limited call may start then
            if runtime.respawn_at is not None:
                if runtime.respawn_at <= mono:
                    runtime.respawn_at = None
                    self._spawn_workers(runtime)
                else:
                    next_at = min(next_at, runtime.respawn_at)
            if runtime.prepare_at is not None and runtime.prepare_at <= mono:
                if runtime.status == FAILED:
                    self._prepare(runtime)
                elif runtime.status == RUNNING:  # new code failed earlier; the old code serves
                    self._prepare(runtime, rolling=True)
        next_at = min(next_at, self._mesh_tick(mono))
        if self.streams.streams or self.streams.reads or self.streams.relays:
            self.streams.tick(mono)
            next_at = min(next_at, mono + 0.1)
        if self.bus.subs:
            self.bus.tick(mono)
        if not self.stopping:
            if self.ticker.due(now):
                try:
                    self.ticker.tick(now)
                except Exception:  # a bug there must not stop the node
                    logger.exception("scheduled sockets failed")
            next_at = min(next_at, mono + max(0.0, self.ticker.next_look - now))
            next_at = min(next_at, self.sync.tick(mono))
            if mono >= self._next_register and not self._registering:
                self._register()
            next_at = min(next_at, self._next_register)
        if self.history is not None:
            next_at = min(next_at, self.history.tick(mono))
        next_at = min(next_at, self.audit.tick(mono), self.access_admin.tick(mono))
        if self.notifier.enabled:
            interval = self.notifier.watchdog_interval()
            if interval and mono >= self._next_watchdog:
                self.notifier.watchdog()
                self._next_watchdog = mono + interval
        if self.stopping:
            next_at = min(next_at, self._grace_deadline)
        self.dispatch()
        return max(0, int((next_at - time.monotonic()) * 1000) + 1)

    def _mesh_tick(self, mono: float) -> float:
        """Heartbeats and the mesh's timers; a bug there is logged, never fatal to the node."""
        next_at = mono + 0.5
        for tick in (self.mesh.tick, self.cluster.tick):
            try:
                next_at = min(next_at, tick(mono))
            except Exception:
                logger.exception("mesh timers failed")
        return next_at

    # -- requests -------------------------------------------------------------------------------

    def _handle_request(self, peer: Peer, message: Any) -> None:
        if isinstance(message, protocol.ProtocolError):
            detail: dict[str, Any] = {}
            if isinstance(message, protocol.UnsupportedVersion):
                detail["versions"] = list(message.versions)
            logger.info("bad request from %s: %s", peer.identity.hex(), message.reason)
            self.frontend.send(peer, protocol.Error(
                code=message.code, reason=message.reason, detail=detail, request_id=message.request_id))
            return
        try:
            if isinstance(message, protocol.PeerMessage):
                self._handle_peer(peer, message)
                return
            peer = dataclasses.replace(peer, principal=self.guard.admit(peer, _request_name(message),
                                                                         lambda: _object_of(message)))
            if isinstance(message, protocol.Call):
                self._handle_call(peer, message)
            elif isinstance(message, protocol.Calls):
                self._handle_calls(peer, message)
            elif isinstance(message, protocol.Flow):
                self._handle_flow(peer, message)
            elif isinstance(message, protocol.Stream):
                self._handle_stream(peer, message)
            elif isinstance(message, protocol.Listen):
                self.bus.listen(peer, message)
            elif isinstance(message, protocol.Get):
                self._handle_get(peer, message)
            elif isinstance(message, protocol.Admin):
                self.admin.handle(peer, message)
            elif isinstance(message, protocol.Ping):
                self.frontend.send(peer, protocol.Pong(
                    node=self.config.name, version=__version__, time=time.time(), request_id=message.request_id))
            else:
                self._error(peer, message.request_id, protocol.E_MALFORMED,
                            f"{type(message).__name__} is not a request")
        except EcdError as exc:
            if isinstance(exc, AccessError) and peer.principal is not None:  # refused inside a handler
                self.guard.deny(peer.principal, _request_name(message), _object_of(message), exc)
            self._error(peer, message.request_id, exc.code, exc.message)
        except Exception:
            logger.exception("request %s failed", type(message).__name__)
            self._error(peer, message.request_id, protocol.E_INTERNAL, "internal error (see the ecd log)")

    def _handle_peer(self, peer: Peer, message: protocol.PeerMessage) -> None:
        if not self.mesh.enabled:
            self._error(peer, message.request_id, protocol.E_MALFORMED,
                        f"{message.name}: this node is not in a mesh (no tcp --listen or --advertise endpoint)")
            return
        if self.mesh.secure:
            # a member is whoever holds the secret of a key registered for a node; anything else
            # is dropped unanswered (and never becomes a member)
            if self.guard.member_of(peer.key) is None:
                self.refused_peer_messages += 1
                logger.debug("dropped %s from key %s: not a registered node's", message.name, peer.key[:12])
                return
            self.cluster.handle(message, peer.key)
            return
        sender = message.credentials.get("node")
        known = isinstance(sender, str) and sender in self.mesh.members
        if not known and message.command not in (protocol.HELLO, protocol.WELCOME, protocol.HEARTBEAT):
            self._error(peer, message.request_id, protocol.E_UNAUTHORIZED,
                        f"{message.name}: peer commands are for mesh members (say HELLO first)")
            return
        self.cluster.handle(message)

    def reply(self, peer: Any, message: Any) -> None:
        """Answer a client, or a peer that asked on a client's behalf (FIND)."""
        if isinstance(peer, RemoteWaiter):
            self.cluster.answer_remote(peer, message)
        else:
            self.frontend.send(peer, message)

    def _error(self, peer: Peer, request_id: bytes, code: int, reason: str, **detail: Any) -> None:
        self.frontend.send(peer, protocol.Error(code=code, reason=reason, detail=detail, request_id=request_id))

    def _admit(self, socket_name: str, args: bytes, kwargs: bytes, call_id: str,
               principal: Any) -> tuple[str, Any]:
        """Decide what a CALL (or one CALLS entry) with ``call_id`` from ``principal`` becomes:

        ``("known", record)`` already in memory (its accept may still be in flight),
        ``("stored", record)`` already in the log, ``("refused", (code, reason))``, or
        ``("new", record)``: a new record, queued (it may start before its accept is durable;
        the log writes its accept ahead of any later write of the call, and the client is only
        told once it is durable). A known id of another user's call is refused (409): call ids
        are scoped by user.
        """
        record = self.active.get(call_id)
        if record is not None:
            if not can_see_call(principal, record):
                return "refused", (protocol.E_CONFLICT, TAKEN_ID.format(call_id))
            if call_id in self.unstored:  # its accept failed to commit: store it now
                self.unstored.discard(call_id)
                return "restore", self.finalizing.get(call_id, record)
            return "known", record
        if self.stopping:
            return "refused", (protocol.E_UNAVAILABLE, "node is shutting down; call not accepted")
        stored = self.wal.get(call_id)
        if stored is not None:
            if not can_see_call(principal, stored):
                return "refused", (protocol.E_CONFLICT, TAKEN_ID.format(call_id))
            return "stored", stored
        if C.DERIVED_ID_RE.fullmatch(call_id):
            return "refused", (protocol.E_INVALID, RESERVED_ID.format(call_id))
        refusal = self.cluster.can_accept() if self.mesh.enabled else ""
        if refusal:
            return "refused", (protocol.E_UNAVAILABLE, refusal)
        socket = self.topology.sockets.get(socket_name)
        if socket is None:
            return "refused", (protocol.E_NOT_FOUND, f"unknown socket '{socket_name}'")
        full = self._queue_full(socket_name) if self.queue_limits else ""
        if full:
            return "refused", (protocol.E_QUEUE_FULL, full)
        processor = self.topology.processors[socket.processor]
        record = C.new_record(
            call_id=call_id, seq=self.wal.next_seq(), owner=self.node_id, node=self.config.name,
            socket=socket.name, processor=processor.name, function=socket.function,
            args=args, kwargs=kwargs, retries=processor.retries,
            retry_delay=processor.retry_delay, timelimit=processor.timelimit,
        )
        record["user"] = principal.label
        self.place(record)
        self.active[call_id] = record
        self.scheduler.push(socket.name, call_id)
        if self.bus.subs:
            self.bus.record(record)
        if self.mesh.members and not self._can_run(socket.name):
            self.cluster.nudge()
        return "new", record

    def _handle_call(self, peer: Peer, msg: protocol.Call) -> None:
        call_id = msg.call_id or str(uuid.uuid4())
        kind, value = self._admit(msg.socket, msg.args, msg.kwargs, call_id, peer.principal)
        if msg.stream and kind in ("new", "restore", "known"):
            self.streams.expect(call_id, peer.identity)  # the caller reads its items from the first
        if kind == "refused":
            self._error(peer, msg.request_id, *value)
        elif kind in ("new", "restore"):
            self.ack_waiters[call_id] = [(peer, msg.request_id)]
            linger = kind == "new" and self._starts_now(msg.socket)
            self.wal.submit(("accept", [call_id]), [value], linger=linger)
            if value.get("replicas"):
                self.cluster.replicate([value], gate="accept", defer=linger)
        else:
            self._answer_known(peer, msg.request_id, call_id, kind, value)

    def _answer_known(self, peer: Peer, request_id: bytes, call_id: str, kind: str, value: dict[str, Any]) -> None:
        """A request for a call (or workflow) id this node knows: ACCEPTED ``duplicate=true``
        once its accept is durable (with its result when it ended)."""
        if call_id in self.ack_waiters:
            self.ack_waiters[call_id].append((peer, request_id))
            return
        inline = self._inline_result(value) if kind == "stored" and value["state"] in C.TERMINAL else None
        self.frontend.send(peer, protocol.Accepted(
            call_id=call_id, seq=value["seq"], node=self.config.name, duplicate=True,
            result=inline, request_id=request_id))

    def place(self, record: dict[str, Any], like: dict[str, Any] | None = None) -> None:
        """Make a new record replicated in a mesh: the copies go where those of ``like`` (the
        call that made it) went, else to the nodes its run's root id hashes to, so all the
        records of one run are kept by the same nodes (and taken over together)."""
        if self.mesh.members:
            replicas = list(like.get("replicas") or ()) if like is not None else []
            record.update(term=0, version=1)
            C.set_replicas(record, replicas or self.cluster.pick_replicas(record.get("root") or record["id"]))

    def holds(self, call_id: str) -> bool:
        """Does this node have a record of ``call_id`` (in memory, ending, or in its log)?"""
        return call_id in self.active or call_id in self.finalizing or self.wal.get(call_id) is not None

    def own(self, record: dict[str, Any]) -> None:
        """A record this node owns now (accepted, made by a plug, taken over, handed over): a
        call waits for a worker; a workflow or a waiting join only waits for its steps or its
        arguments."""
        self.active[record["id"]] = record
        if self.bus.subs:
            self.bus.record(record)
        if C.runnable(record):
            self.scheduler.push(record["socket"], record["id"])
            if self.mesh.members and not self._can_run(record["socket"]):
                self.cluster.nudge()

    def _handle_flow(self, peer: Peer, msg: protocol.Flow) -> None:
        """FLOW: a workflow's record and its first steps, accepted in one commit."""
        flow_id = msg.flow_id or str(uuid.uuid4())
        known = self.active.get(flow_id)
        stored = self.wal.get(flow_id) if known is None else None
        if (known or stored) is not None and not can_see_call(peer.principal, known or stored):
            raise AlreadyExists(TAKEN_ID.format(flow_id))
        if known is not None and flow_id in self.unstored:  # its accept failed to commit
            self.unstored.discard(flow_id)
            records = [known, *(self.active[c] for c in known.get("children") or () if c in self.active)]
        elif known is not None:
            self._answer_known(peer, msg.request_id, flow_id, "known", known)
            return
        else:
            if self.stopping:
                raise NodeUnavailable("node is shutting down; workflow not accepted")
            if stored is not None:
                self._answer_known(peer, msg.request_id, flow_id, "stored", stored)
                return
            if C.DERIVED_ID_RE.fullmatch(flow_id):
                raise InvalidName(RESERVED_ID.format(flow_id))
            refusal = self.cluster.can_accept() if self.mesh.enabled else ""
            if refusal:
                raise NodeUnavailable(refusal)
            records = self.dataflow.start_flow(flow_id, msg.graph, msg.args, msg.kwargs, user=peer.principal.label)
            for record in records:
                self.own(record)
        self.ack_waiters[flow_id] = [(peer, msg.request_id)]
        self.wal.submit(("accept", [flow_id]), records)
        if records[0].get("replicas"):
            self.cluster.replicate(records[:1], gate="accept")
            self.cluster.replicate(records[1:])

    def _starts_now(self, socket_name: str) -> bool:
        """Will a call on this socket start on a worker right away? Then its result is likely
        to follow its accept within microseconds, and one commit can carry both."""
        return self.scheduler.busy < self.scheduler.cpus and self._can_run(socket_name)

    def _handle_calls(self, peer: Peer, msg: protocol.Calls) -> None:
        """CALLS: admit every entry, answer ACCEPTED_MANY once all new ones are durable, and with
        ``push`` send RESULTS as they end."""
        batch = _Batch(peer, msg.request_id)
        records: list[dict[str, Any]] = []
        ready: list[dict[str, Any]] = []
        for entry in msg.calls:
            call_id = entry["call_id"] or str(uuid.uuid4())
            try:
                kind, value = self._admit(entry["socket"], entry["args"], entry["kwargs"], call_id, peer.principal)
            except Exception as exc:  # e.g. a corrupt log record: refuse this entry, keep the rest
                logger.exception("cannot admit call %s", call_id)
                kind, value = "refused", (getattr(exc, "code", protocol.E_INTERNAL), f"call not accepted: {exc}")
            if kind == "refused":
                code, reason = value
                batch.refused.append({"call_id": call_id, "code": code, "reason": reason})
                continue
            if kind in ("new", "restore"):
                records.append(value)
                batch.waiting.add(call_id)
                self.ack_waiters[call_id] = [batch]
            elif call_id in self.ack_waiters:
                if call_id not in batch.waiting:
                    batch.waiting.add(call_id)
                    self.ack_waiters[call_id].append(batch)
            else:
                batch.accepted.append({"call_id": call_id, "seq": value["seq"], "duplicate": True})
            if msg.push:
                if kind == "stored" and value["state"] in C.TERMINAL:
                    ready.append(value)
                else:
                    waiters = self.push_waiters.setdefault(call_id, [])
                    if (peer, msg.request_id) not in waiters:
                        waiters.append((peer, msg.request_id))
                        del waiters[:-MAX_PUSH_WAITERS]  # re-sent batches: only the latest matter
        batch.ready = [self._result_entry(r) for r in ready]
        if records:
            self.wal.submit(("accept", [r["id"] for r in records]), records,
                            linger=self.scheduler.busy < self.scheduler.cpus)
            if self.mesh.members:
                self.cluster.replicate(records, gate="accept")
        if not batch.waiting:
            self._send_batch_accept(batch)

    def _send_batch_accept(self, batch: "_Batch") -> None:
        batch.sent = True
        self.frontend.send(batch.peer, protocol.AcceptedMany(
            node=self.config.name, accepted=batch.accepted, refused=batch.refused,
            request_id=batch.request_id))
        if batch.ready:  # finished duplicates: their results right after the accept
            self._send_results(batch.peer, batch.request_id, batch.ready)
            batch.ready = []

    def _send_results(self, peer: Peer, request_id: bytes, entries: list[dict[str, Any]]) -> None:
        """RESULTS messages split by count and by bytes: one message must stay under 64 MiB."""
        chunk: list[dict[str, Any]] = []
        size = 0
        for entry in entries:
            error = entry["error"] or {}
            entry_size = len(entry["value"]) + sum(len(str(v)) for v in error.values()) + 512
            if chunk and (len(chunk) >= protocol.MAX_BATCH or size + entry_size > MAX_RESULT_BYTES):
                self.frontend.send(peer, protocol.Results(results=chunk, request_id=request_id))
                chunk, size = [], 0
            chunk.append(entry)
            size += entry_size
        if chunk:
            self.frontend.send(peer, protocol.Results(results=chunk, request_id=request_id))

    def _handle_get(self, peer: Peer, msg: protocol.Get) -> None:
        record = self.active.get(msg.call_id)
        if record is not None and record.get("leased_from"):
            record = None  # only running here for its owner: the owner (or a replica) answers
        if record is not None and not can_see_call(peer.principal, record):
            raise NotFound(f"unknown call id '{msg.call_id}'")  # another user's call is not there for it
        if record is None:
            stored = self.wal.get(msg.call_id)
            if stored is not None and stored.get("superseded") and stored["state"] not in C.TERMINAL:
                stored = None  # a duplicate's copy: the node that accepted the call first answers
            if stored is not None and not can_see_call(peer.principal, stored):
                raise NotFound(f"unknown call id '{msg.call_id}'")
            if stored is None:
                if not self.cluster.find(peer, msg.request_id, msg.call_id, msg.wait_ms):
                    self._error(peer, msg.request_id, protocol.E_NOT_FOUND, f"unknown call id '{msg.call_id}'")
                return
            if stored["state"] in C.TERMINAL:
                self.frontend.send(peer, self._result_message(stored, msg.request_id))
                return
            record = stored
        if msg.wait_ms <= 0:
            self.frontend.send(peer, protocol.Pending(call_id=msg.call_id, state=record["state"], request_id=msg.request_id))
            return
        self.hold_get(peer, msg.request_id, msg.call_id, msg.wait_ms)

    def _handle_stream(self, peer: Peer, msg: protocol.Stream) -> None:
        """STREAM: the items of a call the caller may see (another user's call is not found)."""
        record = self.active.get(msg.call_id) or self.finalizing.get(msg.call_id) or self.wal.get(msg.call_id)
        if record is not None and not can_see_call(peer.principal, record):
            raise NotFound(f"unknown call id '{msg.call_id}'")
        self.streams.read(peer, msg.request_id, msg.call_id, msg.start, msg.wait_ms)

    def hold_get(self, peer: Any, request_id: bytes, call_id: str, wait_ms: int) -> None:
        """Answer a GET once the call ends, or PENDING after ``wait_ms`` (long poll)."""
        self.result_waiters.setdefault(call_id, []).append((peer, request_id))
        self._timer_seq += 1
        wait = min(wait_ms / 1000, MAX_GET_WAIT)  # a node MAY answer PENDING early (SPEC)
        heapq.heappush(self.get_timers, (time.monotonic() + wait, self._timer_seq, call_id, peer, request_id))

    def deliver_stored_result(self, call_id: str) -> None:
        """A final record written here for another owner: answer the GETs (and CALLS with push)
        waiting for it."""
        if call_id not in self.result_waiters and call_id not in self.push_waiters:
            return
        record = self.wal.get(call_id)
        if record is None or record["state"] not in C.TERMINAL:
            return
        for peer, request_id in self.result_waiters.pop(call_id, []):
            self.reply(peer, self._result_message(record, request_id))
        pushes: dict[tuple[Peer, bytes], list[dict[str, Any]]] = {}
        for key in self.push_waiters.pop(call_id, []):
            pushes.setdefault(key, []).append(self._result_entry(record))
        self._send_pushes(pushes)

    def result_message(self, record: dict[str, Any]) -> protocol.Result:
        return self._result_message(record, b"")

    @staticmethod
    def _result_entry(record: dict[str, Any]) -> dict[str, Any]:
        if record["state"] == C.DONE:
            return {"call_id": record["id"], "ok": True, "value": record.get("result") or b"\xc0", "error": None}
        error = record.get("error") or C.error_dict("Error", "failed")
        failure = {"type": str(error.get("type", "Error")), "message": str(error.get("message", "")),
                   "traceback": str(error.get("traceback", ""))}
        for key in ("call_id", "step", "socket"):  # a workflow's failed step
            if isinstance(error.get(key), str):
                failure[key] = error[key]
        return {"call_id": record["id"], "ok": False, "value": b"", "error": failure}

    def _inline_result(self, record: dict[str, Any]) -> dict[str, Any]:
        """ACCEPTED.result of a call whose final outcome is durable."""
        entry = self._result_entry(record)
        del entry["call_id"]
        return entry

    def _result_message(self, record: dict[str, Any], request_id: bytes) -> protocol.Result:
        return protocol.Result(**self._result_entry(record), request_id=request_id)

    # -- commits --------------------------------------------------------------------------------

    def _handle_commits(self) -> None:
        pushes: dict[tuple[Peer, bytes], list[dict[str, Any]]] = {}
        drained = self.wal.drain()
        ended: dict[str, dict[str, Any]] = {}  # calls whose final outcome became durable now
        for token, error in drained:
            if token is None:
                if error is not None:
                    logger.error("log write failed: %s", error)
                continue
            kind, ids = token
            if kind == "final":
                for call_id in ids:
                    record = self.finalizing.get(call_id)
                    if record is None:
                        continue
                    if error is not None:
                        logger.error("result of call %s not stored (retrying): %s", call_id, error)
                        self.final_retries.append((time.monotonic() + FINAL_RETRY_DELAY, call_id))
                        continue
                    if self.cluster.local_done("final", call_id, None):
                        self._final_out(call_id, pushes, ended)
            elif kind == "replica":
                self.cluster.replica_committed(ids, error)
            elif kind == "handed":
                self.cluster.handed_committed(ids, error)
            elif kind == "synced" and error is None:
                for call_id in ids:
                    self.deliver_stored_result(call_id)
            elif kind == "tick":
                self.ticker.committed(ids, error)
        # Accepts after finals: a call whose result became durable in the same commit (a fast call and
        # a lingering accept) gets its result inside ACCEPTED, and its client needs no GET.
        for token, error in drained:
            if token is not None and token[0] == "accept":
                for call_id in token[1]:
                    if self.cluster.local_done("accept", call_id, error):
                        self._accepted(call_id, error, ended.get(call_id))
        # pushed results after the ACCEPTED_MANY of their batch
        self._send_pushes(pushes)

    def _send_pushes(self, pushes: dict[tuple[Peer, bytes], list[dict[str, Any]]]) -> None:
        for (peer, request_id), entries in pushes.items():
            self._send_results(peer, request_id, entries)

    def _final_out(self, call_id: str, pushes: dict[tuple[Peer, bytes], list[dict[str, Any]]],
                   ended: dict[str, dict[str, Any]]) -> None:
        """A call's final record is durable (here and on its replicas): let everyone see it."""
        record = self.finalizing.pop(call_id, None)
        if record is None:
            return
        self.final_extra.pop(call_id, None)
        self.active.pop(call_id, None)
        if self.bus.subs:
            self.bus.result(record)
        if call_id in self.streams.streams or call_id in self.streams.reads:
            self.streams.ended(call_id)
        if self.history is not None:
            self.history.note(record)
        self.cluster.note_final(record)
        self.unstored.discard(call_id)
        ended[call_id] = record
        for peer, request_id in self.result_waiters.pop(call_id, []):
            self.reply(peer, self._result_message(record, request_id))
        for key in self.push_waiters.pop(call_id, []):
            pushes.setdefault(key, []).append(self._result_entry(record))

    def finals_durable(self, call_ids: list[str]) -> None:
        """The replicas of these final records answered after this node's own commit."""
        pushes: dict[tuple[Peer, bytes], list[dict[str, Any]]] = {}
        ended: dict[str, dict[str, Any]] = {}
        for call_id in call_ids:
            self._final_out(call_id, pushes, ended)
        self._send_pushes(pushes)

    def accept_durable(self, call_id: str, error: Exception | None, duplicate: bool = False) -> None:
        """The replicas of an accept answered after this node's own commit (``duplicate``:
        another node had accepted the call first)."""
        ended = None
        if call_id not in self.active and call_id not in self.finalizing and not duplicate:
            stored = self.wal.get(call_id)
            ended = stored if stored is not None and stored["state"] in C.TERMINAL else None
        self._accepted(call_id, error, ended, duplicate=duplicate)

    def _accepted(self, call_id: str, error: Exception | None, ended: dict[str, Any] | None = None,
                  duplicate: bool = False) -> None:
        """The accept of ``call_id`` committed (or failed): answer everyone waiting on it.
        ``ended`` is the call's durable final record when it ended in the same commit."""
        waiters = self.ack_waiters.pop(call_id, [])
        record = self.active.get(call_id) or ended or self.wal.get(call_id)
        inline = self._inline_result(ended) if ended is not None else None
        if error is not None and ended is not None:
            error = None  # the call's final record is durable: it is stored after all
        if error is None and record is not None and ended is None and self.history is not None:
            self.history.note(record)
        if error is not None:
            logger.error("call %s not accepted: %s", call_id, error)
            if call_id in self.active:
                self.unstored.add(call_id)  # a repeated CALL stores it again (never "duplicate")
        for waiter in waiters:
            if isinstance(waiter, _Batch):
                waiter.waiting.discard(call_id)
                if error is None:
                    waiter.accepted.append({"call_id": call_id, "seq": record["seq"] if record else 0, "duplicate": duplicate})
                else:
                    waiter.refused.append({"call_id": call_id, "code": protocol.E_STORAGE, "reason": f"call not stored: {error}"})
                if not waiter.waiting and not waiter.sent:
                    self._send_batch_accept(waiter)
                continue
            peer, request_id = waiter
            if error is not None:
                self._error(peer, request_id, protocol.E_STORAGE, f"call not stored: {error}")
            else:
                self.frontend.send(peer, protocol.Accepted(
                    call_id=call_id, seq=record["seq"] if record else 0, node=self.config.name,
                    duplicate=duplicate, result=inline, request_id=request_id))

    # -- scheduling -----------------------------------------------------------------------------

    def _can_run(self, socket_name: str) -> bool:
        if self.cluster.draining or (self.cluster.hold_until and self.cluster.holding()):
            return False
        socket = self.topology.sockets.get(socket_name)
        if socket is None:
            return False
        if socket_name in self.plug_limits and self.plugs_blocked(socket_name):
            return False
        runtime = self.runtimes.get(socket.processor)
        return bool(runtime and runtime.status == RUNNING and runtime.idle and not runtime.paused
                    and (not runtime.next_start or runtime.may_start(time.monotonic())))

    def dispatch(self) -> None:
        """Start queued calls on idle workers (one CPU slot each); then, if nothing else is
        waiting for a slot, queue a few more behind the calls already running (prefetch), so a
        worker under backlog never waits for the loop between two calls."""
        if self.stopping:
            return
        for socket_name, call_id in self.scheduler.assign(self._can_run):
            socket = self.topology.sockets[socket_name]
            runtime = self.runtimes[socket.processor]
            slot = runtime.take_idle()
            if call_id not in self.active or slot is None:  # cannot happen: can_run said yes
                self.scheduler.release()
                if call_id in self.active:
                    self.scheduler.push_front(socket_name, call_id)
                continue
            self._hand_over(runtime, slot, socket_name, call_id)
        if self.scheduler.waiting and not self.scheduler.runnable(self._can_run):
            self._prefetch()
        if self.mesh.members:
            try:
                self.cluster.offer_credit()
            except Exception:  # a peer's odd heartbeat must never stop the node
                logger.exception("cannot offer credit to peers")

    def _prefetch(self) -> None:
        if self.cluster.draining or self.cluster.hold_until:
            return  # a draining node starts nothing new; a rejoining one waits for its peers
        for runtime in self.runtimes.values():
            names = self.sockets_of.get(runtime.name)
            if not names or runtime.status != RUNNING or runtime.paused or runtime.start_interval:
                continue  # a rate-limited processor takes calls one start at a time
            if runtime.avg_duration > PREFETCH_MAX_DURATION or len(runtime.slots) > runtime.definition.concurrency:
                continue  # long calls would hold short ones back; surplus workers must drain
            if self.mesh.members and runtime.observed < PREFETCH_MIN_OBSERVED:
                continue  # in a mesh, calls of unknown length are left for idle peers to take
            if self.plug_limits:
                names = [name for name in names if not self.plugs_blocked(name)]
            self._prefetch_into(runtime, names)

    def _prefetch_into(self, runtime: ProcessorRuntime, names: list[str]) -> None:
        now = time.time()
        slots = [slot for slot in runtime.slots.values() if slot.calls and not runtime.stale(slot) and
                 now - (self.active.get(slot.calls[0], {}).get("started") or now) <= PREFETCH_MAX_DURATION * 10]
        # one call per worker per round, and only while the backlog is deeper than the workers
        # that could take it: a worker that frees up still finds calls waiting
        backlog = sum(self.scheduler.depth(name) for name in names)
        for depth in range(2, PREFETCH + 1):
            for slot in slots:
                if len(slot.calls) >= depth:
                    continue
                if backlog <= len(runtime.slots):
                    return
                backlog -= 1
                taken = self.scheduler.take(names)
                if taken is None:
                    return
                record = self.active.get(taken[1])
                if record is None or len(record["args"]) + len(record["kwargs"]) > PREFETCH_MAX_BYTES:
                    self.scheduler.push_front(*taken)  # big: it waits for a free worker
                    return
                self._hand_over(runtime, slot, *taken)

    def _hand_over(self, runtime: ProcessorRuntime, slot: WorkerSlot, socket_name: str, call_id: str) -> None:
        """Send a call to a worker; it runs now if the worker is free, else after its queue."""
        record = self.active[call_id]
        socket = self.topology.sockets[socket_name]
        record["processor"], record["function"] = runtime.name, socket.function
        slot.calls.append(call_id)
        self.running[call_id] = (runtime, slot)
        if len(slot.calls) == 1:
            self._start_head(runtime, slot)
        try:
            slot.process.send_call(call_id, socket.function, record["args"], record["kwargs"])
        except (OSError, WorkerError) as exc:  # the worker is gone; its channel EOF retries the call
            logger.warning("cannot hand call %s to worker %d: %s", call_id, slot.process.pid, exc)

    def _start_head(self, runtime: ProcessorRuntime, slot: WorkerSlot) -> None:
        """The slot's first call is now running. Its start is not written to the log: a crash
        mid-attempt requeues the call without counting it; the attempt's end is written."""
        record = self.active[slot.calls[0]]
        C.mark_running(record, slot.process.pid)
        if record.get("streamed"):
            self.streams.started(record)
        if self.bus.subs:
            self.bus.record(record)
        if runtime.start_interval:
            runtime.started(time.monotonic())
        limit = runtime.definition.timelimit
        slot.deadline = time.monotonic() + limit if limit else None

    def _finish_head(self, runtime: ProcessorRuntime, slot: WorkerSlot, value: bytes | None,
                     error: dict[str, str] | None) -> None:
        """The worker answered for its running call; the next queued one (if any) starts."""
        call_id = slot.calls.popleft()
        record = self.active.get(call_id)
        if record is not None and record.get("started"):
            runtime.observe(time.time() - record["started"])
        self._end_attempt(call_id, value, error)
        if slot.calls:
            self._start_head(runtime, slot)
        else:
            self.scheduler.release()
            if runtime.stale(slot):
                self._retire(runtime, slot)  # rolled: a new worker takes its place
                self._spawn_workers(runtime)
            elif len(runtime.slots) > runtime.definition.concurrency:
                self._retire(runtime, slot)  # the processor was scaled down
            else:
                runtime.mark_idle(slot)

    def _retire(self, runtime: ProcessorRuntime, slot: WorkerSlot) -> None:
        """Stop an idle worker the processor no longer needs."""
        for fd in self._fds_of(slot):
            self._unregister_fd(fd)
        runtime.forget(slot.process.pid)
        slot.process.stop(WORKER_STOP_GRACE)

    def _abandon(self, slot: WorkerSlot, error: dict[str, str] | None, note: str) -> None:
        """The slot's worker is gone. Its running call ends with ``error`` (or, with None, is
        requeued without counting the attempt); calls queued behind it go back untouched."""
        if not slot.calls:
            return
        head = slot.calls.popleft()
        for call_id in reversed(slot.calls):
            self.running.pop(call_id, None)
            record = self.active.get(call_id)
            if record is not None:
                self.scheduler.push_front(record["socket"], call_id)
        slot.calls.clear()
        self.scheduler.release()
        if error is not None:
            self._end_attempt(head, None, error)
        else:
            self._requeue_running(head, note)

    def end_remote_attempt(self, call_id: str, value: bytes | None, error: dict[str, str] | None) -> None:
        """A call leased to another node ended there (COMPLETE)."""
        self._end_attempt(call_id, value, error, remote=True)

    def _end_attempt(self, call_id: str, value: bytes | None, error: dict[str, str] | None,
                     remote: bool = False) -> None:
        """A running call's attempt is over (result, exception, worker death or time limit).

        A retry is visible at once; a final outcome (done, or failed after the last retry) is
        built on a copy and shown only once its commit is durable, so nobody can see a result
        that a crash could still change."""
        entry = True if remote else self.running.pop(call_id, None)
        record = self.active.get(call_id)
        if entry is None or record is None or call_id in self.finalizing:
            return  # (finalizing: another attempt ended first; results stay exactly-once)
        if error is None and value is not None and len(value) > MAX_RESULT_BYTES:
            error = C.error_dict("ResultTooLarge", f"the result is {len(value)} bytes; at most {MAX_RESULT_BYTES} fit in a reply")
        if error is not None:
            error = {key: (text if len(text) <= MAX_ERROR_TEXT else text[:MAX_ERROR_TEXT] + " [truncated]")
                     for key, text in ((k, str(v)) for k, v in error.items())}
        if record.get("leased_from"):
            self.cluster.finish_leased(record, value, error)
            return
        outcome = {**record, "events": list(record["events"])}
        if error is None:
            C.mark_done(outcome, value if value is not None else b"\xc0")
        elif C.mark_error(outcome, error):
            self.active[call_id] = outcome
            self.scheduler.push(outcome["socket"], call_id, due=outcome["not_before"], now=time.time())
            self.wal.submit(None, [outcome])
            if self.bus.subs:
                self.bus.record(outcome)
            if self.history is not None:
                self.history.note(outcome)
            return
        else:
            logger.info("call %s failed after %d attempt(s): %s", call_id, outcome["attempts"], error.get("type"))
        self._submit_final(call_id, outcome)

    def _submit_final(self, call_id: str, outcome: dict[str, Any]) -> None:
        """Write a call's final record, with what it sets off (plug calls, join arguments, the
        next steps of its workflow: :mod:`ecd.dataflow`) in the same commit; it is shown once
        durable here and on its replicas."""
        # the common case, a call that sets nothing off, costs one check
        derived = self.dataflow.on_final(outcome) if self.dataflow.sets_off(outcome) else Derived()
        finals = [outcome, *derived.finals]
        for record in finals:
            if record.get("replicas"):
                record["version"] = int(record.get("version") or 0) + 1
            self.finalizing[record["id"]] = record
        extra = derived.records
        if derived.finals or extra:
            self.final_extra[call_id] = (finals[1:], extra)
        self.wal.submit(("final", [record["id"] for record in finals]), [*finals, *extra])
        replicated = [record for record in finals if record.get("replicas")]
        if replicated:
            self.cluster.replicate(replicated, gate="final")
        if extra:
            self._set_off(extra)

    def _set_off(self, records: list[dict[str, Any]]) -> None:
        """Records that a final record or a streamed item set off, just submitted with it: their
        copies go out, new calls are queued, and a join whose last argument arrived can start."""
        self.cluster.replicate([record for record in records if record.get("replicas")])
        for record in records:
            if record["id"] not in self.active:
                self.own(record)
            elif record["state"] == C.QUEUED and C.kind_of(record) == C.JOIN:
                self.scheduler.push(record["socket"], record["id"])  # its last argument arrived
            if self.history is not None:
                self.history.note(record)

    # -- workers --------------------------------------------------------------------------------

    def _handle_worker_event(self, runtime: ProcessorRuntime, slot: WorkerSlot, event: Any) -> None:
        if isinstance(event, Ready):
            slot.ready = True
            runtime.healthy()
            if runtime.status == PENDING:
                runtime.status = RUNNING
                runtime.reason = ""
                logger.info("processor %s running (%s)", runtime.name, runtime.code.commit if runtime.code else "?")
            runtime.mark_idle(slot)
        elif isinstance(event, Done):
            if slot.call_id == event.call_id:
                self._finish_head(runtime, slot, event.value, None)
        elif isinstance(event, Raised):
            if slot.call_id == event.call_id:
                self._finish_head(runtime, slot, None, C.error_dict(event.type, event.message, event.traceback))
        elif isinstance(event, Item):
            if slot.call_id == event.call_id:
                self._stream_item(runtime, slot, event)
        elif isinstance(event, StreamEnd):
            if slot.call_id == event.call_id:
                record = self.active.get(event.call_id)
                leased = record is not None and record.get("leased_from")
                value = self.streams.relay_result(event.call_id) if leased else self.streams.result(event.call_id)
                if record is not None:
                    record["streamed"] = True
                self._finish_head(runtime, slot, value, None)
        elif isinstance(event, ImportFailed):
            reason = f"cannot import {runtime.definition.module}: {event.type}: {event.message}"
            runtime.fail(reason, self.config.prepare_retry)
            self._stop_workers(runtime, requeue_note="Requeued: processor failed")
        elif isinstance(event, Exited):
            self._worker_exited(runtime, slot, event.returncode)

    def _worker_exited(self, runtime: ProcessorRuntime, slot: WorkerSlot, returncode: int | None) -> None:
        for fd in self._fds_of(slot):  # the worker has closed them already
            self._unregister_fd(fd)
        runtime.forget(slot.process.pid)
        slot.process.kill()
        self._abandon(slot, C.error_dict(
            "WorkerLost", f"worker {slot.process.pid} exited with code {returncode} during the call"), "")
        if not slot.ready and runtime.status in (RUNNING, PENDING):
            runtime.early_exits += 1
            if runtime.early_exits >= EARLY_EXIT_LIMIT:
                # the module kills the interpreter while importing (os._exit, a crashing C
                # extension, a killed import): it will not get better by respawning
                runtime.fail(f"workers exit while importing {runtime.definition.module} "
                             f"(exit code {returncode}, {runtime.early_exits} times in a row; see the ecd log)",
                             self.config.prepare_retry)
                self._stop_workers(runtime, "Requeued: processor failed")
                return
        if runtime.status in (RUNNING, PENDING) and runtime.respawn_at is None:
            logger.warning("worker %d of %s exited (code %s); respawning", slot.process.pid, runtime.name, returncode)
            runtime.schedule_respawn(time.monotonic())

    def _stream_item(self, runtime: ProcessorRuntime, slot: WorkerSlot, event: Item) -> None:
        record = self.active.get(event.call_id)
        if record is None:
            return
        if record.get("leased_from"):
            why = self.streams.relay_item(record, event.index, event.value)
        else:
            why = self.streams.item(record, event.index, event.value)
        if why:
            logger.warning("call %s: %s; stopping its worker", event.call_id, why)
            self._kill_attempt(runtime, slot, C.error_dict("ResultTooLarge", why))

    def fire_item(self, record: dict[str, Any], index: int, value: bytes) -> None:
        """Item ``index`` of a streaming call owned here: the plugs of its socket fire for it now."""
        derived = self.dataflow.on_item(record, index, value)
        if not derived.records:
            return
        self.wal.submit(None, derived.records)
        self._set_off(derived.records)

    def grant(self, record: dict[str, Any], runner: str, attempt: int, upto: int, have: int = 0) -> None:
        """Let the producer of a streaming call send items up to ``upto`` (``have``: the items
        this node holds, for a producer on another node)."""
        if runner:
            self.mesh.send(runner, protocol.STREAM_CREDIT,
                           {"call_id": record["id"], "attempt": attempt, "upto": upto, "have": have})
            return
        entry = self.running.get(record["id"])
        if entry is None:
            return
        _runtime, slot = entry
        if slot.call_id == record["id"]:
            try:
                slot.process.send_credit(record["id"], upto)
            except WorkerError as exc:  # the worker is gone: its exit requeues the call
                logger.debug("no credit for call %s: %s", record["id"], exc)

    def _kill_attempt(self, runtime: ProcessorRuntime, slot: WorkerSlot, error: dict[str, str]) -> None:
        """End the running call of ``slot`` with ``error``, killing its worker (and respawning one)."""
        for fd in self._fds_of(slot):
            self._unregister_fd(fd)
        runtime.forget(slot.process.pid)
        slot.process.kill()
        self._abandon(slot, error, "")
        if runtime.status in (RUNNING, PENDING):
            self._spawn_workers(runtime)

    def _time_limit_exceeded(self, runtime: ProcessorRuntime, slot: WorkerSlot) -> None:
        limit = runtime.definition.timelimit
        logger.warning("call %s exceeded its time limit of %ss: killing worker %d", slot.call_id, limit, slot.process.pid)
        self._kill_attempt(runtime, slot, C.error_dict("TimeLimitExceeded", f"call exceeded the time limit of {limit}s"))

    def _worker_line(self, processor: str, pid: int, stream: str, text: str) -> None:
        """A line a worker printed: to the listeners of its processor, socket and queue."""
        if not self.bus.subs:
            return
        runtime = self.runtimes.get(processor)
        slot = runtime.slots.get(pid) if runtime is not None else None
        self.bus.line(processor, pid, stream, text, slot.call_id if slot is not None else None)

    def _fds_of(self, slot: WorkerSlot) -> list[int]:
        return [fd for fd, (_, _, owner) in self.fd_owner.items() if owner is slot]

    def _unregister_fd(self, fd: int) -> None:
        if self.fd_owner.pop(fd, None) is not None:
            try:
                self.poller.unregister(fd)
            except KeyError:
                pass

    def _spawn_workers(self, runtime: ProcessorRuntime) -> None:
        if self.stopping or runtime.code is None or runtime.status in (FAILED, STOPPED):
            return
        try:
            runtime.spawn_missing(self.support_dir, self.registry,
                                  lambda pid, stream, text, name=runtime.name: self._worker_line(name, pid, stream, text))
        except (OSError, EcdError) as exc:
            runtime.fail(f"cannot start workers: {exc}", self.config.prepare_retry)
            self._stop_workers(runtime, "Requeued: processor failed")
        finally:
            for slot in runtime.slots.values():  # the ones started before a failure too
                if slot.process.channel_fd >= 0 and slot.process.channel_fd not in self.fd_owner:
                    self._watch(runtime, slot)

    def _watch(self, runtime: ProcessorRuntime, slot: WorkerSlot) -> None:
        """Poll a new worker's channel, exit pidfd and output pipes."""
        fds = [("channel", slot.process.channel_fd), ("exit", slot.process.exit_fd)]
        fds += [("output", fd) for fd in slot.process.output_fds]
        for kind, fd in fds:
            if fd >= 0:
                self.fd_owner[fd] = (kind, runtime, slot)
                self.poller.register(fd, zmq.POLLIN)

    def _stop_workers(self, runtime: ProcessorRuntime, requeue_note: str, graceful: bool = False) -> None:
        """Stop every worker of ``runtime``; calls they were running go back to their queue
        without counting the attempt."""
        for pid, slot in list(runtime.slots.items()):
            for fd in self._fds_of(slot):
                self._unregister_fd(fd)
            runtime.forget(pid)
            if graceful and slot.call_id is None:
                slot.process.stop(WORKER_STOP_GRACE)
            else:
                slot.process.kill()
            self._abandon(slot, None, requeue_note)

    def _requeue_running(self, call_id: str, note: str) -> None:
        entry = self.running.pop(call_id, None)
        record = self.active.get(call_id)
        if entry is None or record is None:
            return
        if record.get("leased_from"):
            self.cluster.finish_leased(record, None, None, requeue=note)
            return
        C.mark_requeued(record, note, refund=True)
        self.scheduler.push_front(record["socket"], call_id)
        self.wal.submit(None, [record])
        if self.bus.subs:
            self.bus.record(record)
        if self.history is not None:
            self.history.note(record)

    # -- topology and code ----------------------------------------------------------------------

    def _register(self) -> None:
        """Heartbeat into the node table (endpoint, CPUs, version, last_seen); off the loop."""
        self._registering = True
        cfg = self.config
        endpoint = cfg.peer_endpoint or ",".join(self.frontend.bound)

        key = self.keys.public_text if self.keys is not None else ""

        def done(_: Any, error: BaseException | None) -> None:
            self._registering = False
            self._next_register = time.monotonic() + REGISTER_EVERY
            if isinstance(error, KeyRefused):
                if not self._key_refused:
                    logger.error("%s", error.message)
                self._key_refused = True
            elif error is not None:
                self.sync.note_error(error)
                logger.debug("cannot register node in the topology: %s", error)
            else:
                self._key_refused = False

        self.bg_db.submit(lambda: self.store.register_node(cfg.name, endpoint, cfg.cpus, __version__, key), done)

    def _placement(self, definition: Any) -> tuple[Any, str]:
        """The processor as it runs here: ``(definition, "")`` with the CPUs its deployments give
        this node, or ``(None, reason)`` when it is deployed only on other nodes. A processor
        without deployments runs on every node with its own concurrency."""
        deployments = [d for d in self.topology.deployments.values() if d.processor == definition.name]
        if not deployments:
            return definition, ""
        mine = [d for d in deployments if d.node == self.config.name]
        if not mine:
            return None, f"deployed on {', '.join(sorted({d.node for d in deployments}))}"
        cpus = sum(d.cpus or definition.concurrency for d in mine)
        return dataclasses.replace(definition, concurrency=cpus), ""

    def _revalidate(self) -> None:
        """Access changed (a logout, a user disabled or deleted, a right removed): what is held
        open for a client that may no longer ask for it (LISTEN, long-poll GET and STREAM) is
        ended with its 401 or 403 now, not when it runs out."""
        topology = self.topology
        seen = (topology.users, topology.roles, topology.sessions)
        if getattr(self, "_access_seen", None) == seen:
            return
        first = not hasattr(self, "_access_seen")
        self._access_seen = seen
        if first:
            return

        def refused(peer: Any, request_id: bytes, request: str) -> bool:
            if not isinstance(peer, Peer) or peer.principal is None or peer.local:
                return False
            try:
                authorize(self.guard.principal(peer), request, rule_for(request))
            except AccessError as exc:
                self._error(peer, request_id, exc.code, exc.message)
                return True
            return False

        for key, sub in list(self.bus.subs.items()):
            if sub.peer is not None and refused(sub.peer, sub.request_id, "LISTEN"):
                del self.bus.subs[key]
        for waiters in (self.result_waiters, self.streams.reads):
            for call_id, held in list(waiters.items()):
                kept = [w for w in held if not refused(*(w[:2] if isinstance(w, tuple) else (w.peer, w.request_id)),
                                                      "GET" if waiters is self.result_waiters else "STREAM")]
                if kept:
                    waiters[call_id] = kept
                else:
                    del waiters[call_id]

    def _reconcile(self) -> None:
        """Bring the processors running here in line with the topology."""
        self._revalidate()
        if self.mesh.enabled:  # registered nodes are peers to meet (a secure one: with their keys)
            by_endpoint = {n.endpoint: n.key for n in self.topology.nodes.values() if n.endpoint.startswith("tcp://")}
            self.mesh.add_seeds([(endpoint, key) for endpoint, key in by_endpoint.items()
                                 if endpoint != self.config.peer_endpoint]
                                + [(seed, by_endpoint[seed]) for seed in self.config.join if seed in by_endpoint])
        self.sockets_of = {}  # processor -> its socket names, derived once per topology
        for socket in self.topology.sockets.values():
            self.sockets_of.setdefault(socket.processor, []).append(socket.name)
        self._derive_limits()
        if self.stopping:
            return
        wanted = self.topology.processors
        for name in list(self.runtimes):
            if name not in wanted:
                runtime = self.runtimes.pop(name)
                runtime.status = STOPPED
                self._stop_workers(runtime, "Requeued: processor removed")
                logger.info("processor %s removed", name)
        for name, stored in wanted.items():
            definition, elsewhere = self._placement(stored)
            runtime = self.runtimes.get(name)
            if definition is None or not definition.enabled:
                reason = elsewhere or "stopped by an operator (ecctl proc start resumes it)"
                if runtime is None:
                    self.runtimes[name] = ProcessorRuntime(definition or stored, status=STOPPED, reason=reason)
                else:
                    runtime.definition, runtime.reason = definition or stored, reason
                    if runtime.status != STOPPED:
                        runtime.status = STOPPED
                        self._stop_workers(runtime, "Requeued: processor stopped")
                        logger.info("processor %s stopped here: %s", name, reason)
                continue
            if runtime is None:
                runtime = self.runtimes[name] = ProcessorRuntime(definition)
                self._prepare(runtime)
                continue
            old, runtime.definition = runtime.definition, definition
            if runtime.status == STOPPED:
                self._prepare(runtime)
                continue
            code_changed = (old.gitrepo, old.branch, old.commit, old.tag, old.requirements, old.module) != (
                definition.gitrepo, definition.branch, definition.commit, definition.tag, definition.requirements,
                definition.module)
            if code_changed:
                self._prepare(runtime, rolling=True)
            elif old.restarts != definition.restarts:
                if runtime.status == FAILED:
                    self._prepare(runtime)
                else:
                    self._roll(runtime)
            elif old.concurrency != definition.concurrency:
                self._resize(runtime)
            if old.paused != definition.paused:
                logger.info("processor %s %s", name, "paused: calls queue until it is resumed" if definition.paused else "resumed")
        self._fail_orphaned_calls()

    def _derive_limits(self) -> None:
        topology = self.topology
        self.queue_limits = {q.name: q.max_length for q in topology.queues.values() if q.max_length}
        self.queue_sockets = {}
        for socket in topology.sockets.values():
            if socket.queue in self.queue_limits:
                self.queue_sockets.setdefault(socket.queue, []).append(socket.name)
        self.plug_limits = {}
        for plug in topology.plugs.values():
            target = topology.sockets.get(plug.target)
            if target is not None and target.queue in self.queue_limits:
                limits = self.plug_limits.setdefault(plug.source, [])
                if target.queue not in limits:
                    limits.append(target.queue)

    def queue_depth(self, queue: str) -> int:
        """Calls waiting here in ``queue`` (on its sockets), for queues with a max_length."""
        return sum(self.scheduler.depth(name) for name in self.queue_sockets.get(queue, ()))

    def _queue_full(self, socket_name: str) -> str:
        """Why a new call of ``socket_name`` is refused (its queue is full), or ""."""
        socket = self.topology.sockets.get(socket_name)
        limit = self.queue_limits.get(socket.queue) if socket is not None else None
        if limit is None:
            return ""
        depth = self.queue_depth(socket.queue)
        if depth < limit:
            return ""
        return f"queue '{socket.queue}' is full ({depth} calls waiting, max_length {limit}); try again later"

    def plugs_blocked(self, socket_name: str) -> bool:
        """Is a queue that the plugs of ``socket_name`` feed at its max_length? Then calls of the
        socket do not start (and streams do not advance) until it drains: back-pressure."""
        queues = self.plug_limits.get(socket_name)
        return bool(queues) and any(self.queue_depth(q) >= self.queue_limits[q] for q in queues)

    def plug_room(self, socket_name: str) -> int | None:
        """How many more calls the fullest queue fed by the plugs of ``socket_name`` takes (None:
        no such queue has a max_length)."""
        queues = self.plug_limits.get(socket_name)
        if not queues:
            return None
        return max(0, min(self.queue_limits[q] - self.queue_depth(q) for q in queues))

    def _fail_orphaned_calls(self) -> None:
        """Calls queued on a socket that no longer exists can never run: fail them, durably and
        with a clear error, instead of keeping them (and requeuing them at every start) forever.
        Only on a topology read from the store, never on the cached copy a node starts with."""
        if not self.sync.store_ok or self.sync.cached_start:
            return
        for socket_name in list(self.scheduler.depths()):
            if socket_name in self.topology.sockets:
                continue
            dropped = self.scheduler.drop(socket_name)
            if dropped:
                logger.warning("socket %s was deleted: failing its %d queued call(s)", socket_name, len(dropped))
            for call_id in dropped:
                record = self.active.get(call_id)
                if record is None or call_id in self.running or call_id in self.finalizing:
                    continue
                outcome = {**record, "events": list(record["events"])}
                if record.get("leased_from"):
                    self.cluster.finish_leased(record, None, None, requeue="socket deleted here")
                    continue
                C.mark_failed(outcome, C.error_dict(
                    "SocketRemoved", f"socket '{socket_name}' was deleted before the call could run"))
                self._submit_final(call_id, outcome)

    def _roll(self, runtime: ProcessorRuntime) -> None:
        """Replace every worker without failing a call: idle ones stop now, busy ones once their
        calls end; new ones start as the old ones go (never more busy than the CPUs)."""
        runtime.worker_generation += 1
        logger.info("rolling the workers of processor %s", runtime.name)
        for slot in list(runtime.slots.values()):
            if not slot.calls:
                self._retire(runtime, slot)
        self._spawn_workers(runtime)

    def _resize(self, runtime: ProcessorRuntime) -> None:
        surplus = len(runtime.slots) - runtime.definition.concurrency
        while surplus > 0:
            slot = runtime.take_idle()
            if slot is None:
                break  # busy workers above the new size retire when their calls end
            self._retire(runtime, slot)
            surplus -= 1
        self._spawn_workers(runtime)

    def _prepare(self, runtime: ProcessorRuntime, rolling: bool = False) -> None:
        """Clone and install the processor's code off the loop, then start its workers. With
        ``rolling`` (new code for a running processor) the old workers keep serving until the
        new code is ready, then roll over to it."""
        runtime.generation += 1
        generation = runtime.generation
        rolling = rolling and runtime.status == RUNNING and runtime.code is not None
        runtime.prepare_at = None
        if not rolling:
            if runtime.slots:  # workers of the previous code still starting: they must not serve
                self._stop_workers(runtime, "Requeued: processor code changed")
            runtime.status, runtime.reason, runtime.code = PENDING, "", None
        spec = runtime.code_spec()
        logger.info("preparing code of processor %s from %s", runtime.name, spec.gitrepo)

        def done(code: Any, error: BaseException | None) -> None:
            if self.runtimes.get(runtime.name) is not runtime or runtime.generation != generation:
                return  # superseded by a newer definition
            if error is not None:
                reason = error.message if isinstance(error, RepoError) else f"{type(error).__name__}: {error}"
                if rolling and runtime.status == RUNNING:
                    # the workers of the previous code keep serving; the new code is tried again
                    runtime.reason = f"new code not ready, still running {runtime.code.commit[:12]}: {reason}"
                    runtime.prepare_at = time.monotonic() + self.config.prepare_retry
                    logger.error("processor %s: %s", runtime.name, runtime.reason)
                    return
                runtime.fail(reason, self.config.prepare_retry)
                self._stop_workers(runtime, "Requeued: processor failed")
                return
            runtime.reason = ""
            runtime.code = code
            if rolling:
                self._roll(runtime)
            else:
                self._spawn_workers(runtime)

        self.bg_code.submit(lambda: self.loader.prepare(spec), done)

    # -- stop -----------------------------------------------------------------------------------

    def _begin_stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self._grace_deadline = time.monotonic() + self.config.grace
        self.notifier.stopping()
        logger.info("stopping: %d call(s) running get up to %.0fs to finish", len(self.running), self.config.grace)

    def shutdown(self) -> None:
        """Requeue what still runs, stop workers, flush the log, close everything."""
        self.stopping = True
        for runtime in self.runtimes.values():
            self._stop_workers(runtime, "Requeued: node stopped before the call finished", graceful=True)
        cluster = getattr(self, "cluster", None)
        if cluster is not None:
            cluster.give_back()
            cluster.flush()
        wal = getattr(self, "wal", None)
        if wal is not None:
            wal.close()  # commits everything submitted, including the requeues above
        loader = getattr(self, "loader", None)
        if loader is not None:
            loader.cancel()  # a long pip install must not hold the exit
        self._flush_history()
        self._flush_audit()
        sync = getattr(self, "sync", None)
        if sync is not None:
            sync.close()
        for bg in (getattr(self, "bg_db", None), getattr(self, "bg_code", None), getattr(self, "bg_auth", None)):
            if bg is not None:
                bg.close(wait=False)
        frontend = getattr(self, "frontend", None)
        if frontend is not None:
            frontend.close()
        mesh = getattr(self, "mesh", None)
        if mesh is not None:
            mesh.close()
        zap = getattr(self, "zap", None)
        if zap is not None:
            zap.stop()
        context = getattr(self, "context", None)
        if context is not None:
            context.term()
        store = getattr(self, "store", None)
        if store is not None:
            store.close()
        signal.set_wakeup_fd(-1)
        logger.info("stopped")

    # -- status ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        depths = self.scheduler.depths()
        queue_depth: dict[str, int] = {}
        for name, socket in self.topology.sockets.items():
            queue_depth[socket.queue] = queue_depth.get(socket.queue, 0) + depths.get(name, 0)
        return {
            "node": self.config.name,
            "node_id": self.node_id,
            "version": __version__,
            "pid": os.getpid(),
            "cpus": self.config.cpus,
            "busy": self.scheduler.busy,
            "uptime": time.time() - self.started,
            "endpoints": list(self.frontend.bound),
            "stopping": self.stopping,
            "calls": {"active": len(self.active), "running": self.scheduler.busy, "assigned": len(self.running), "waiting": self.scheduler.waiting},
            "processors": [
                {"name": name, **runtime.view(), "concurrency": runtime.definition.concurrency}
                for name, runtime in sorted(self.runtimes.items())
            ],
            "queues": [{"name": name, "depth": queue_depth.get(name, 0)} for name in sorted(self.topology.queues)],
            "sockets": [{"name": name, "depth": depths.get(name, 0)} for name in sorted(self.topology.sockets)],
            "wal": self.wal.stats(),
            "state": self.state,
            "mesh": {**self.mesh.status(), "nodes": [m.view() for m in self.mesh.members.values()]},
            "replication": self.cluster.status(),
            "dataflow": self.dataflow.status(),
            "ticks": self.ticker.status(),
            "streams": self.streams.status(),
            "listen": self.bus.status(),
            "topology": self.sync.status(),
            "history": self.history.status() if self.history is not None else {"enabled": False},
            "key": self.keys.public_text if self.keys is not None else None,
            "insecure": self.config.insecure,
            "security": {**self.guard.status(), **self.access_admin.status(),
                         "refused_peer_messages": self.refused_peer_messages,
                         "refused_records": self.cluster.refused_records},
        }

    @property
    def state(self) -> str:
        if self.cluster.draining:
            return "drained" if self.cluster.drained else "draining"
        return "stopping" if self.stopping else "alive"

    def _describe(self) -> dict[str, Any]:
        """This node as its heartbeats show it to peers."""
        return {"cpus": self.config.cpus, "busy": self.scheduler.busy, "depth": self.scheduler.waiting,
                **self.host_stats(), "version": __version__, "draining": self.cluster.draining,
                "drained": self.cluster.drained, "wants": self.cluster.wants(),
                "leased": self.cluster.leases_held(), "ticks": self.ticker.advertised(),
                "topology": self.topology.version}

    def host_stats(self) -> dict[str, float]:
        if self._host_stats is None:
            from .stats import HostStats
            self._host_stats = HostStats(self.config.data_dir)
        return self._host_stats.sample()

    def node_view(self, name: str) -> dict[str, Any]:
        """What the mesh knows of the node called ``name`` (for ``ecctl ls nodes``)."""
        if name == self.config.name:
            return {"node_id": self.node_id, "state": self.state, "cpus": self.config.cpus,
                    "busy": self.scheduler.busy, "depth": self.scheduler.waiting, **self.host_stats(),
                    "version": __version__, "endpoint": self.config.peer_endpoint or ",".join(self.frontend.bound),
                    "key": self.keys.public_text if self.keys is not None else None}
        for member in self.mesh.members.values():
            if member.name == name:
                view = member.view()
                return {k: v for k, v in view.items() if v is not None and k not in ("draining", "drained")}
        return {"state": "unknown"}

    def mesh_views(self) -> list[dict[str, Any]]:
        """Nodes this node knows from the mesh (and itself), for ones not in the topology."""
        names = [self.config.name] + [m.name for m in self.mesh.members.values() if m.name]
        return [{"name": name, **self.node_view(name)} for name in names]

    def _mesh_keys(self) -> list[dict[str, Any]]:
        """``mesh_keys``: the public key of every node of the mesh with its endpoints, so that a
        client that trusts this node's key can fail over to the others."""
        keys: dict[str, dict[str, Any]] = {}
        for node in self.topology.nodes.values():
            if node.key:
                keys[node.name] = {"name": node.name, "key": node.key,
                                   "endpoints": [e for e in node.endpoint.split(",") if e.startswith("tcp://")]}
        if self.keys is not None:
            mine = keys.setdefault(self.config.name, {"name": self.config.name, "key": self.keys.public_text,
                                                      "endpoints": []})
            mine["key"] = self.keys.public_text
            mine["endpoints"] = sorted({*mine["endpoints"], *(e for e in self.frontend.bound if e.startswith("tcp://")),
                                        *([self.config.peer_endpoint] if self.config.peer_endpoint else [])})
        for member in self.mesh.members.values():
            entry = keys.get(member.name)
            if entry is not None and member.endpoint and member.endpoint not in entry["endpoints"]:
                entry["endpoints"].append(member.endpoint)
        # an endpoint two nodes claim (with two keys) is left out: which key answers there is not
        # this node's to say
        claims: dict[str, set[str]] = {}
        for entry in keys.values():
            for endpoint in entry["endpoints"]:
                claims.setdefault(endpoint, set()).add(entry["key"])
        for entry in keys.values():
            entry["endpoints"] = [e for e in entry["endpoints"] if len(claims[e]) == 1]
        return sorted(keys.values(), key=lambda entry: entry["name"])

    def set_drain(self, name: str, drain: bool) -> dict[str, Any]:
        """``ecctl node drain|undrain NAME``: here, or sent to the member called so."""
        if name == self.config.name:
            self.cluster.set_draining(drain)
            return {"name": name, "state": self.state}
        for member in self.mesh.members.values():
            if member.name == name:
                if member.state == "dead":
                    raise PeerUnreachable(f"node '{name}' is dead; start it, then try again")
                self.cluster.ask_drain(member, drain)
                return {"name": name, "state": "draining" if drain else "alive"}
        raise NotFound(f"unknown node '{name}' (not a member of this node's mesh)")

    def _flush_audit(self) -> None:
        """At stop: write the audit rows still pending, if the store is there."""
        audit = getattr(self, "audit", None)
        if audit is not None and audit.pending and self.sync.store_ok:
            try:
                audit.write_pending()
            except Exception as exc:  # noqa: BLE001 - stopping must go on whatever the database says
                logger.warning("%d audit row(s) not written at stop: %s", len(audit.pending), exc)

    def _flush_history(self) -> None:
        """At stop: write the call history still pending, if the store is there (bounded wait)."""
        history = self.history
        if history is None:
            return
        history.close()
        if history.pending and self.sync.store_ok:
            try:
                history.write_pending()
            except Exception as exc:  # noqa: BLE001 - stopping must go on whatever the database says
                logger.warning("call history of %d call(s) not exported at stop: %s", len(history.pending), exc)


#: Request names (:data:`ecd.access.RULES`) of the client commands other than ADMIN.
_REQUESTS = {protocol.Ping: "PING", protocol.Call: "CALL", protocol.Calls: "CALLS", protocol.Flow: "FLOW",
             protocol.Stream: "STREAM", protocol.Get: "GET", protocol.Listen: "LISTEN"}


def _request_name(message: Any) -> str:
    """The request name of a client message (:data:`ecd.access.RULES`)."""
    if isinstance(message, protocol.Admin):
        return f"admin:{message.op}"
    return _REQUESTS.get(type(message), type(message).__name__.upper())


def _object_of(message: Any) -> str:
    """What a refused request was about, for the audit log."""
    if isinstance(message, protocol.Admin):
        name = message.args.get("name") if isinstance(message.args.get("name"), str) else ""
        return name or str(message.args.get("id") or message.args.get("user") or "")[:200]
    if isinstance(message, protocol.Call):
        return message.socket
    if isinstance(message, (protocol.Get, protocol.Stream)):
        return message.call_id
    if isinstance(message, protocol.Listen):
        return message.name
    if isinstance(message, protocol.Calls):
        return f"{len(message.calls)} call(s)"
    return ""


def storage_error(exc: OSError) -> bool:
    """True for errors that mean the disk itself failed (fsyncgate: never carry on)."""
    return exc.errno in (errno.EIO,)
