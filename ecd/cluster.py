"""Calls across the mesh: replication, leases to other nodes, takeover, rejoin, drain and GETs
for calls held elsewhere (SPEC.md, "The peer conversation").

The node that accepts a call **owns** it: it writes the call to its log and REPLICATEs it to
R-1 reachable peers (its **replicas**), and the client hears ACCEPTED only once all R copies are
durable (or the wait for a replica ran out: then with the copies there are, counted in
``status``). Final outcomes are replicated the same way before anyone sees them.

A node with idle workers for a processor whose calls wait at another node sends that owner
CREDIT (a promise of that many slots); the owner answers with a LEASE of at most that many
calls, so no node ever receives more work than it has free slots. The runner answers COMPLETE
(re-sent until COMPLETED); the owner writes the outcome. If a runner dies, the owner requeues
its calls. If an owner dies, the live replica with the smallest node id (among those holding the
call) takes it over, with a higher ``term``, when it sees a majority of the mesh alive.

A record's freshness is ``(terminal, term, version)``: a finished record beats an unfinished one,
then the higher term (a takeover or handoff), then the later write. Every node keeps the freshest
copy it is given, so after a crash, restart or partition the copies converge (SYNC), and a call
never gets two different final records on one node.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import protocol

from . import calls as C
from .access import can_see_call
from .integrity import holders, refusal
from .mesh import ALIVE, DEAD, Member, Mesh

if TYPE_CHECKING:
    from .node import Node

logger = logging.getLogger(__name__)

#: Seconds an owner waits for a replica's REPLICATED before it goes on without that copy.
REPLICA_TIMEOUT = 2.0
#: Seconds a runner's CREDIT stays promised when the owner does not answer.
CREDIT_TIMEOUT = 2.0
#: Seconds between re-sends of a COMPLETE that got no COMPLETED.
COMPLETE_RESEND = 1.0
#: Seconds a runner keeps re-sending an outcome nobody acknowledges (the owner and its replicas
#: are gone; whoever takes the call over runs it again).
COMPLETE_GIVE_UP = 600.0
#: Seconds between checks of the leases this node gave and holds.
LEASE_CHECK_EVERY = 1.0
#: Seconds after a lease by which the runner's heartbeats must list the call.
LEASE_GRACE = 3.0
#: Seconds a leased call may stay on a runner this node cannot hear from directly.
LEASE_UNREACHABLE = 10.0
#: Seconds at most a restarted node holds its replicated calls while it asks its peers about
#: them (it goes on sooner once every peer named as a replica answered or is found dead).
SYNC_HOLD = 30.0
#: Seconds before a restarted node asks a live peer again that has not answered its SYNC (then
#: twice as long each time, up to 8 s: a big SYNC may take a peer a while to answer).
SYNC_RESEND = 1.0
#: Seconds it waits for a replica that is not a member of the mesh (never heard of since start).
SYNC_HOLD_UNKNOWN = 5.0
#: What a call resumed without word from one of its replicas adds to its version: more than the
#: writes a node can lose in a crash, so its next record wins over any of them in its term.
RESUME_VERSION_GAP = 1_000_000
#: Newest records a restarted node offers for reconciliation besides its unfinished ones.
RECENT_FINALS = 10_000
#: Newest records a restarted node checks for outcomes written just before it stopped.
RESTART_FINALS = 2_000
#: Records per REPLICATE / HANDOFF / SYNCED message and ids per SYNC message...
CHUNK = 500
#: ... and bytes per message at most (a peer message must stay under the 64 MiB limit).
CHUNK_BYTES = 16 << 20
#: Seconds between the checks of the copies a node holds for others against the mesh.
RESYNC_EVERY = 5.0
#: Seconds a copy held for another node must be unchanged before the periodic check includes it.
RESYNC_AGE = 10.0
#: Seconds an outcome written while the mesh was not whole is offered in SYNCs.
FINAL_WATCH = 300.0
#: Seconds between checks for calls that lost a replica (dead or draining members).
REPAIR_EVERY = 1.0
#: Seconds a drain request to another node is repeated until that node's heartbeats show it.
DRAIN_ASK_FOR = 30.0
#: Seconds before an unanswered HANDOFF is sent again.
HANDOFF_RETRY = 2.0


def freshness(record: dict[str, Any]) -> tuple[bool, int, int]:
    """How new a copy of a call is: finished beats unfinished, then term, then version."""
    return (record.get("state") in C.TERMINAL, int(record.get("term") or 0), int(record.get("version") or 0))


def _rival(current: dict[str, Any], incoming: dict[str, Any]) -> bool:
    """Two nodes accepted the same call id independently (same term, different owners): the
    copy a node holds first stays, and the later owner is told it holds a duplicate."""
    return (current.get("owner") != incoming.get("owner")
            and int(current.get("term") or 0) == int(incoming.get("term") or 0)
            and not current.get("superseded"))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_time(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def wins(incoming: dict[str, Any], current: dict[str, Any]) -> bool:
    """Is ``incoming`` the copy to keep over ``current``? The fresher one, and between rivals
    (two nodes accepted one call id) that are equally finished, the one accepted first (then the
    smaller owner id): every node decides the same way, whatever order copies arrive in."""
    if _rival(current, incoming) and freshness(incoming)[0] == freshness(current)[0]:
        return ((incoming.get("created") or 0.0, incoming["owner"])
                < (current.get("created") or 0.0, current["owner"]))
    return freshness(incoming) > freshness(current)


def _valid_record(rec: Any) -> bool:
    """A call record from a peer has every field this node reads, with the right types."""
    if not isinstance(rec, dict):
        return False
    ids = (rec.get("id"), rec.get("owner"))
    return (all(isinstance(v, str) for v in ids) and protocol.CALL_ID_RE.fullmatch(rec["id"]) is not None
            and isinstance(rec.get("state"), str) and rec["state"] in C.STATES
            and rec.get("kind", C.CALL) in C.KINDS
            and all(isinstance(rec.get(k), str) for k in ("socket", "processor", "function", "node"))
            and all(isinstance(rec.get(k), bytes) for k in ("args", "kwargs"))
            and isinstance(rec.get("result"), (bytes, type(None))) and isinstance(rec.get("error"), (dict, type(None)))
            and all(_is_int(rec.get(k)) and rec[k] >= 0 for k in ("seq", "attempts", "max_retries"))
            and all(_is_int(rec.get(k, 0)) and rec.get(k, 0) >= 0 for k in ("term", "version"))
            and all(_is_time(rec.get(k)) for k in ("created", "started", "finished", "not_before", "retry_delay",
                                                      "timelimit"))
            and isinstance(rec.get("events"), list) and all(isinstance(e, list) for e in rec["events"])
            and isinstance(rec.get("replicas", []), list) and all(isinstance(n, str) for n in rec.get("replicas", []))
            and isinstance(rec.get("user", ""), str)
            and isinstance(rec.get("holders", []), list) and all(isinstance(n, str) for n in rec.get("holders", [])))


def _run_key(record: dict[str, Any]) -> str:
    """What a record's replicas are picked by: its run's root call (the record itself for a
    call a client sent)."""
    root = record.get("root")
    return root if isinstance(root, str) and root else record["id"]


def _rendezvous(key: str, nodes: list[str]) -> str:
    """The node of ``nodes`` that ``key`` hashes to (the same on every node, for any order)."""
    return max(nodes, key=lambda node_id: hashlib.blake2b(f"{key}/{node_id}".encode(), digest_size=8).digest())


def record_size(rec: dict[str, Any]) -> int:
    """About how many bytes a record takes in a peer message."""
    size = (len(rec.get("args") or b"") + len(rec.get("kwargs") or b"") + len(rec.get("result") or b"")
            + sum(len(str(v)) for v in (rec.get("error") or {}).values()) + 96 * len(rec.get("events") or ()) + 512)
    kind = rec.get("kind")
    if kind == C.FLOW:  # its graph and the results of the steps that ended
        size += int(rec.get("graph_bytes") or 0) + int(rec.get("done_bytes") or 0) + 64 * len(rec.get("done") or ())
    elif kind == C.JOIN:  # the arguments that arrived
        size += sum(len(value[0]) + 64 for value in (rec.get("join") or {}).values())
    return size


def chunks(records: list[Any], size: Any = record_size) -> Iterator[list[Any]]:
    """``records`` in groups that fit one peer message (by count and by bytes)."""
    group: list[Any] = []
    total = 0
    for rec in records:
        n = size(rec)
        if group and (len(group) >= CHUNK or total + n > CHUNK_BYTES):
            yield group
            group, total = [], 0
        group.append(rec)
        total += n
    if group:
        yield group


@dataclass
class Gate:
    """A write the node may only announce once it is durable here and on ``need`` replicas."""
    need: set[str]
    version: int
    deadline: float
    local: bool = False
    error: Exception | None = None
    duplicate: bool = False  # another node accepted the call first


@dataclass
class RemoteWaiter:
    """A GET held here for another node (FIND): its answer goes back as FOUND, with the user
    whose call it is (the asking node shows it only to that user, or to one with READ)."""
    node_id: str
    token: str
    user: str = ""

    def __hash__(self) -> int:
        return hash((self.node_id, self.token))


@dataclass
class _Find:
    peer: Any
    request_id: bytes
    call_id: str
    asked: set[str]
    deadline: float
    state: str = ""
    answered: set[str] = field(default_factory=set)


@dataclass
class _Replica:
    owner: str
    term: int
    version: int
    seq: int
    replicas: list[str] = field(default_factory=list)
    since: float = field(default_factory=time.monotonic)  # when this copy last changed


class Cluster:
    """This node's part in the calls of the mesh (the loop thread owns it)."""

    def __init__(self, node: "Node", mesh: Mesh, data_dir: Path) -> None:
        self.node = node
        self.mesh = mesh
        self.me = node.node_id
        self.gates: dict[tuple[str, str], Gate] = {}
        self._finals_out: list[str] = []  # finals whose copies all answered, to show now
        self._accepts_out: list[tuple[str, Exception | None]] = []  # accepts likewise
        self.deferred: dict[str, dict[str, Any]] = {}  # accepts replicated after the local commit
        # node -> what leaves for it at the end of this turn of the loop: (record, gate) to
        # replicate, or (outcome, "complete") of a call run here for that owner
        self.outbox: dict[str, list[tuple[dict[str, Any], str | None]]] = {}
        self.replicas: dict[str, _Replica] = {}         # calls this node holds for other owners
        self.leased_out: dict[str, tuple[str, float, int]] = {}  # call -> (runner, leased at, attempt)
        self.leased_in: dict[str, str] = {}              # call -> owner (running here for it)
        self.completions: dict[str, list[Any]] = {}      # call -> [owner, body, resend at]
        self.credits: dict[tuple[str, str], tuple[int, float]] = {}  # (owner, processor) -> (slots, expiry)
        self.finds: dict[str, _Find] = {}
        self.handoffs: dict[str, tuple[str, float]] = {}  # call -> (peer offered to, offer again at)
        self.drain_requests: dict[str, tuple[bool, float]] = {}  # node -> (drain, ask until)
        # node -> (monotonic time this node last sent it a full SYNC, seconds until it asks again)
        self.sync_sent: dict[str, tuple[float, float]] = {}
        self.sync_needed: set[str] = set()   # nodes a restarted node waits to hear from
        self.synced: set[str] = set()        # nodes that answered this node's SYNC
        # outcomes offered in SYNCs: call -> (freshness, monotonic time it was noted)
        self._recent_finals: dict[str, tuple[tuple[bool, int, int], float]] = {}
        self.hold_until = 0.0
        self._hold_unknown_until = 0.0
        self._held: dict[str, set[str]] = {}  # call -> its replicas, for a restarted node's hold
        self._rounds = itertools.count(1)
        self._asked: dict[str, set[int]] = {}  # node -> rounds of the whole SYNCs it was sent
        # calls resumed without word from some of their replicas -> those replicas (_outrank);
        # once such a call ended: node -> the calls whose outcome it must still be given
        self._outranked: dict[str, set[str]] = {}
        self.owed: dict[str, set[str]] = {}
        self.under_replicated = 0
        self.taken_over = 0
        self.refused_records = 0  # copies refused: the sender may not write them (ecd.integrity)
        self.runners: dict[str, set[str]] = {}  # call -> members it was leased to (their late COMPLETE counts)
        self._lease_replicas: dict[str, set[str]] = {}  # call run here for an owner -> its replicas
        self._next_repair = 0.0
        self._next_lease_check = 0.0
        self._next_resync = time.monotonic() + RESYNC_EVERY
        self._nudged = 0.0
        self._drain_file = data_dir / "draining"
        self.draining = self._drain_file.exists()

    # -- replication factor -----------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return self.mesh.enabled

    def wanted_replicas(self) -> int:
        """R: ``--replicas``, else 2 in a mesh of two or more nodes (members that left after a
        drain do not count), else 1. With fewer nodes reachable, calls are accepted with the
        copies there can be and ``status`` says the node is degraded."""
        configured = self.node.config.replicas
        if configured:
            return configured
        return 2 if any(not m.info.get("drained") for m in self.mesh.members.values()) else 1

    def can_accept(self) -> str:
        """"" when a new call may be accepted; else why not (``--require-replicas``)."""
        if self.draining:
            return "node is draining; send calls to another node"
        if self.node.config.require_replicas:
            have = 1 + len(self._replica_candidates())
            want = self.wanted_replicas()
            if have < want:
                return f"only {have} of the {want} replicas required are reachable (--require-replicas)"
        return ""

    def _replica_candidates(self, exclude: tuple[str, ...] = ()) -> list[Member]:
        return [m for m in self.mesh.reachable() if not m.draining and m.node_id not in exclude]

    def pick_replicas(self, call_id: str, exclude: tuple[str, ...] = ()) -> list[str]:
        """R-1 reachable, non-draining peers for ``call_id`` (the id of a run's root call: every
        record of a run goes to the same nodes), by rendezvous hashing over the nodes (this one
        included): copies spread evenly, and two nodes that both accept one call id (a client
        re-sending it elsewhere) send their copies to a node that holds the other's, which tells
        them apart (REPLICATED ``duplicates``)."""
        if not self.enabled:
            return []
        want = self.wanted_replicas() - 1
        if want <= 0:
            return []
        nodes = [m.node_id for m in self._replica_candidates(exclude)] + [self.me]
        ranked = sorted(nodes, key=lambda node_id: hashlib.blake2b(
            f"{call_id}/{node_id}".encode(), digest_size=8).digest(), reverse=True)
        return [node_id for node_id in ranked if node_id != self.me][:want]

    # -- replicate (owner) ----------------------------------------------------------------------

    def replicate(self, records: list[dict[str, Any]], gate: str | None = None, defer: bool = False) -> None:
        """Queue ``records`` (already submitted to this node's log) for their replicas; with
        ``gate`` ("accept" or "final") their announcement waits for the copies. What is queued
        in one turn of the loop leaves in one REPLICATE per replica (:meth:`flush`).

        ``defer`` (an accept whose call is starting at once) holds the copy until this node's
        own commit: by then the call has often ended, and its final record, replicated anyway,
        carries the accept too: one copy, one commit on the replica, and ACCEPTED carries the
        result."""
        deadline = time.monotonic() + REPLICA_TIMEOUT + (1.0 if defer else 0.0)
        for record in records:
            targets = [n for n in record.get("replicas") or () if n != self.me]
            if gate is not None and targets:
                self.gates[(gate, record["id"])] = Gate(need=set(targets), version=int(record.get("version") or 0),
                                                        deadline=deadline)
            if defer and targets:
                self.deferred[record["id"]] = record
                continue
            for node_id in targets:
                self.outbox.setdefault(node_id, []).append((record, gate))

    def flush(self) -> None:
        """Send the REPLICATEs queued in this turn of the loop."""
        outbox, self.outbox = self.outbox, {}
        failed: dict[str, list[tuple[dict[str, Any], str | None]]] = {}
        for node_id, entries in outbox.items():
            completes = [body for body, kind in entries if kind == "complete"]
            if completes:  # outcomes of calls run here for that owner (re-sent until COMPLETED)
                for group in chunks(completes, lambda body: len(body["value"]) + 4096):
                    self.mesh.send(node_id, protocol.COMPLETE, {"calls": group})
                entries = [entry for entry in entries if entry[1] != "complete"]
            for chunk in chunks(entries, lambda entry: record_size(entry[0])):
                if not self.mesh.send(node_id, protocol.REPLICATE, {"records": [rec for rec, _ in chunk]}):
                    failed.setdefault(node_id, []).extend(chunk)
        # a replica that cannot be reached at all (its connection is gone): another node instead
        unreachable = tuple(failed)
        for node_id, entries in failed.items():
            for rec, gate in entries:
                kept = [n for n in rec.get("replicas") or () if n not in unreachable]
                missing = len(rec.get("replicas") or ()) - len(kept)
                spare = [n for n in self.pick_replicas(_run_key(rec), exclude=(*unreachable, *kept)) if n not in kept]
                spare = [n for n in spare[:missing] if self.mesh.send(n, protocol.REPLICATE, {"records": [rec]})]
                held = self.gates.get((gate, rec["id"])) if gate else None
                if spare:
                    C.set_replicas(rec, kept + spare)
                    if held is not None:
                        held.need.update(spare)
                        held.need.discard(node_id)
                else:
                    self._ack(node_id, rec["id"], None)
        self._show_finals()

    def local_done(self, kind: str, call_id: str, error: Exception | None) -> bool:
        """This node's commit of a gated write finished; True if it may be announced now."""
        deferred = self.deferred.pop(call_id, None)
        if deferred is not None and error is None and call_id not in self.node.finalizing:
            self.replicate([deferred])  # still running: the accept's copies leave now
        gate = self.gates.get((kind, call_id))
        if gate is None:
            return True
        gate.local, gate.error = True, error
        if gate.need and error is None:
            return False
        del self.gates[(kind, call_id)]
        if gate.duplicate:
            self.node.accept_durable(call_id, error, duplicate=True)
            return False
        return True

    def _ack(self, node_id: str, call_id: str, version: int | None) -> None:
        for kind in ("accept", "final"):
            gate = self.gates.get((kind, call_id))
            if gate is None or node_id not in gate.need:
                continue
            if version is not None and version < gate.version:
                continue
            gate.need.discard(node_id)
            if version is None:
                self.under_replicated += 1
            if not gate.need and gate.local:
                del self.gates[(kind, call_id)]
                self._fire(kind, call_id, gate.error)

    def _fire(self, kind: str, call_id: str, error: Exception | None) -> None:
        if kind == "accept":
            self._accepts_out.append((call_id, error))
        else:
            self._finals_out.append(call_id)  # shown together: one RESULTS per client and turn

    def _show_finals(self) -> None:
        """Announce what became durable on its replicas: outcomes first, so an ACCEPTED sent in
        the same turn carries its call's result."""
        if self._finals_out:
            finals, self._finals_out = self._finals_out, []
            self.node.finals_durable(finals)
        if self._accepts_out:
            accepts, self._accepts_out = self._accepts_out, []
            for call_id, error in accepts:
                self.node.accept_durable(call_id, error)

    def _on_replicated(self, sender: Member, body: dict[str, Any]) -> None:
        owed = self.owed.get(sender.node_id)
        for ack in body.get("acks") or ():
            if isinstance(ack, list) and len(ack) == 2 and isinstance(ack[0], str) and isinstance(ack[1], int):
                self._ack(sender.node_id, ack[0], ack[1])
                if owed is not None:
                    owed.discard(ack[0])
        if owed is not None and not owed:
            del self.owed[sender.node_id]
        for entry in body.get("duplicates") or ():
            if isinstance(entry, list) and len(entry) == 2 and all(isinstance(v, str) for v in entry):
                self._drop_duplicate(entry[0], entry[1])

    def _drop_duplicate(self, call_id: str, owner: str) -> None:
        """Another node accepted this call id first: answer its clients as a duplicate, never run
        it here, and keep a copy that sends GETs to the owner."""
        record = self.node.finalizing.get(call_id) or self.node.active.get(call_id)
        if record is None or record.get("owner") != self.me or record.get("leased_from"):
            return
        self.node.finalizing.pop(call_id, None)
        logger.info("call %s was accepted by another node first; answering it as a duplicate", call_id)
        self.node.scheduler.discard(record["socket"], call_id)
        self.node.active.pop(call_id, None)
        self.leased_out.pop(call_id, None)
        self.gates.pop(("final", call_id), None)
        copy = {**record, "owner": owner, "version": 0, "superseded": True, "state": C.QUEUED,
                "events": list(record["events"]), "result": None, "error": None, "finished": None}
        self.node.wal.submit(None, [copy])
        gate = self.gates.pop(("accept", call_id), None)
        if gate is None or gate.local:
            self.node.accept_durable(call_id, gate.error if gate else None, duplicate=True)
        else:
            self.gates[("accept", call_id)] = Gate(need=set(), version=0, deadline=gate.deadline, duplicate=True)

    # -- replicate (replica) ----------------------------------------------------------------------

    def _current(self, call_id: str) -> dict[str, Any] | None:
        record = self.node.finalizing.get(call_id) or self.node.active.get(call_id)
        if record is not None and not record.get("leased_from"):
            return record
        return self.node.wal.get(call_id)

    def _known(self, call_id: str) -> dict[str, Any] | None:
        """This node's copy of a call, for answering about it (a duplicate's copy does not count)."""
        record = self._current(call_id)
        if record is None or (record.get("superseded") and record["state"] not in C.TERMINAL):
            return None
        return record

    def adopt(self, incoming: dict[str, Any]) -> dict[str, Any] | None:
        """Keep ``incoming`` if it wins over this node's copy (:func:`wins`); return the record to
        write (with this node's own seq), or None when the copy here stays."""
        call_id = incoming["id"]
        current = self._current(call_id)
        if current is not None and not wins(incoming, current):
            return None
        self._outranked.pop(call_id, None)
        mine = self.node.active.get(call_id)
        if mine is not None and (mine.get("leased_from") or mine.get("owner") != self.me):
            mine = None
        if mine is not None and _rival(mine, incoming):
            self._drop_duplicate(call_id, incoming["owner"])  # the other node accepted it first
            mine = None
        if self.node.finalizing.pop(call_id, None) is not None:
            # this node was writing an outcome that lost (a partition let two nodes run the
            # call): the winning one is kept, and this node never shows its own
            self.gates.pop(("final", call_id), None)
        if current is not None and current.get("owner") not in (incoming["owner"], self.me, None):
            # the copy replaced here came from another owner (a partition let two nodes own the
            # call): that node learns of the winning copy too, so every copy converges
            self.mesh.send(current["owner"], protocol.REPLICATE, {"records": [incoming]})
        held = self.replicas.get(call_id)
        seq = current["seq"] if current is not None else (held.seq if held else self.node.wal.next_seq())
        record = {**incoming, "seq": seq, "owner_seq": incoming.get("owner_seq", incoming.get("seq"))}
        record.pop("leased_from", None)
        if mine is not None:
            self.node.scheduler.discard(mine["socket"], call_id)
            self.leased_out.pop(call_id, None)
            if incoming["owner"] == self.me and record["state"] not in C.TERMINAL:
                # this node's own call, as a peer kept it fresher (after a restart): go on with it
                self.node.own(record)
            else:
                # another node owns it now, or it ended (a takeover, a partition, a restart): stop
                # owning it, and pass the winning copy to the nodes that held this node's copies
                self.node.active.pop(call_id, None)
                logger.info("call %s is owned by another node now, or ended there (term %s)",
                            call_id, record.get("term"))
                for node_id in mine.get("replicas") or ():
                    if node_id not in (self.me, incoming["owner"]):
                        self.mesh.send(node_id, protocol.REPLICATE, {"records": [incoming]})
        if record["state"] in C.TERMINAL or incoming["owner"] == self.me:
            self.replicas.pop(call_id, None)
        else:
            self.replicas[call_id] = _Replica(record["owner"], int(record.get("term") or 0),
                                              int(record.get("version") or 0), seq, list(record.get("replicas") or ()))
        return record

    def keep_replica(self, record: dict[str, Any]) -> None:
        """At start: an unfinished copy in the log that this node keeps for another owner."""
        self.mesh.expect(record["owner"])
        self.replicas[record["id"]] = _Replica(record["owner"], int(record.get("term") or 0),
                                               int(record.get("version") or 0), record["seq"],
                                               list(record.get("replicas") or ()))

    def give_back(self) -> None:
        """At stop: calls leased here that have not run go back to their owners."""
        for call_id, owner in list(self.leased_in.items()):
            if call_id not in self.node.running and call_id in self.node.active:
                self.finish_leased(self.node.active[call_id], None, None, requeue="Requeued: the runner stopped")

    def _on_replicate(self, sender: Member, body: dict[str, Any]) -> None:
        records = body.get("records")
        if not isinstance(records, list):
            return
        writes: list[dict[str, Any]] = []
        acks: list[list[Any]] = []
        duplicates: list[list[str]] = []
        fresher: list[dict[str, Any]] = []
        for rec in records:
            if not _valid_record(rec) or rec.get("superseded"):
                logger.warning("dropped a malformed record replicated by %s", sender.name)
                continue
            if not self._entitled(sender, rec, "REPLICATE"):
                continue
            current = self._current(rec["id"])
            if current is not None and _rival(current, rec) and not wins(rec, current):
                duplicates.append([rec["id"], current["owner"]])  # the sender holds a duplicate
                continue
            if current is not None and freshness(current) > freshness(rec) and current["owner"] != sender.node_id:
                fresher.append(current)  # the sender's copy is stale: it gets this one first
            acks.append([rec["id"], int(rec.get("version") or 0)])
            record = self.adopt(rec)
            if record is not None:
                writes.append(record)
        if fresher:
            self.mesh.send(sender.node_id, protocol.SYNCED, {"records": fresher, "last": False})
        if duplicates:
            self.mesh.send(sender.node_id, protocol.REPLICATED, {"acks": [], "duplicates": duplicates})
        if writes:
            self.node.wal.submit(("replica", (sender.node_id, acks, [r["id"] for r in writes if r["state"] in C.TERMINAL])),
                                 writes)
        elif acks:
            self.mesh.send(sender.node_id, protocol.REPLICATED, {"acks": acks})

    def _entitled(self, sender: Member, rec: dict[str, Any], via: str) -> bool:
        """May ``sender`` give this node ``rec``? (:func:`ecd.integrity.refusal`; refusals are
        counted and logged, and the record is dropped.)"""
        draining = {m.node_id for m in self.mesh.members.values() if m.draining}
        why = refusal(sender.node_id, rec, self._current(rec["id"]), self.me, draining)
        if why:
            self.refused_records += 1
            logger.warning("refused call %s from node %s (%s): %s", rec["id"], sender.name or sender.node_id, via, why)
        return not why

    def replica_committed(self, info: tuple[str, list[list[Any]], list[str]], error: Exception | None) -> None:
        """A batch of copies this node keeps for others committed: acknowledge it (never before
        the fsync), and answer the GETs waiting here for calls that ended."""
        sender, acks, ended = info
        if error is not None:
            logger.error("replicated records from %s not stored: %s", sender, error)
            return
        self.mesh.send(sender, protocol.REPLICATED, {"acks": acks})
        for call_id in ended:
            self.node.deliver_stored_result(call_id)

    # -- leases ---------------------------------------------------------------------------------

    def wants(self) -> dict[str, int]:
        """Calls waiting here per processor: what this node could lease to others."""
        if self.holding() or not self.enabled:
            return {}
        wants: dict[str, int] = {}
        for socket_name, depth in self.node.scheduler.depths().items():
            socket = self.node.topology.sockets.get(socket_name)
            if socket is not None and depth:
                wants[socket.processor] = wants.get(socket.processor, 0) + depth
        return wants

    def nudge(self) -> None:
        """New calls wait here: tell the peers now rather than at the next heartbeat."""
        now = time.monotonic()
        if self.mesh.members and now - self._nudged > 0.05:
            self._nudged = now
            self.mesh.heartbeat_now()

    def offer_credit(self) -> None:
        """Promise idle workers to owners whose calls wait (called after local dispatch)."""
        if self.draining or self.node.stopping or self.holding():
            return
        now = time.monotonic()
        candidates = [m for m in self.mesh.reachable(now) if m.info.get("wants")]
        if not candidates:
            return
        for name, runtime in self.node.runtimes.items():
            if runtime.status != "running" or runtime.paused or not runtime.idle:
                continue
            local = sum(self.node.scheduler.depth(s) for s in self.node.sockets_of.get(name, ()))
            promised = sum(slots for (owner, proc), (slots, expiry) in self.credits.items()
                           if proc == name and expiry > now)
            free = min(len(runtime.idle), self.node.scheduler.cpus - self.node.scheduler.busy) - local - promised
            if free <= 0:
                continue
            owners = sorted((m for m in candidates if (m.info["wants"] or {}).get(name)),
                            key=lambda m: -int(m.info["wants"][name]))
            for member in owners:
                if free <= 0:
                    break
                key = (member.node_id, name)
                if key in self.credits and self.credits[key][1] > now:
                    continue  # one promise at a time per owner
                slots = min(free, int(member.info["wants"][name]))
                if self.mesh.send(member.node_id, protocol.CREDIT, {"processor": name, "slots": slots}):
                    self.credits[key] = (slots, now + CREDIT_TIMEOUT)
                    free -= slots

    def _on_credit(self, sender: Member, body: dict[str, Any]) -> None:
        name, slots = body.get("processor"), body.get("slots")
        if not isinstance(name, str) or not isinstance(slots, int) or slots < 0:
            return
        records: list[dict[str, Any]] = []
        processor = self.node.topology.processors.get(name)
        if (processor is not None and not processor.paused and not self.draining and not self.holding()
                and self.mesh.is_reachable(sender.node_id)):
            names = self.node.sockets_of.get(name, [])
            if self.node.plug_limits:  # calls whose plugs feed a full queue wait (back-pressure)
                names = [n for n in names if not self.node.plugs_blocked(n)]
            now = time.time()
            not_ours: list[tuple[str, str]] = []
            size = 0
            while len(records) < min(slots, CHUNK) and size < CHUNK_BYTES:
                taken = self.node.scheduler.take(names)
                if taken is None:
                    break
                record = self.node.active.get(taken[1])
                if record is None:
                    continue
                if record.get("leased_from"):  # leased here by another owner: it runs here
                    not_ours.append(taken)
                    continue
                C.mark_leased(record, sender.name or sender.node_id, now)
                self.leased_out[record["id"]] = (sender.node_id, time.monotonic(), record["attempts"])
                self.runners.setdefault(record["id"], set()).add(sender.node_id)
                if record.get("streamed"):
                    self.node.streams.started(record, runner=sender.node_id)
                records.append(record)
                size += record_size(record)
            for taken in reversed(not_ours):
                self.node.scheduler.push_front(*taken)
        more = sum(self.node.scheduler.depth(s) for s in self.node.sockets_of.get(name, ()))
        if not self.mesh.send(sender.node_id, protocol.LEASE,
                              {"processor": name, "slots": slots, "records": records, "more": more}):
            for record in records:  # the runner cannot be reached after all: keep them here
                self._requeue(record, "Requeued: the lease could not be sent")

    def _on_lease(self, sender: Member, body: dict[str, Any]) -> None:
        name = body.get("processor")
        self.credits.pop((sender.node_id, name), None) if isinstance(name, str) else None
        if isinstance(body.get("more"), int) and isinstance(sender.info.get("wants"), dict) and isinstance(name, str):
            sender.info["wants"][name] = body["more"]
        for rec in body.get("records") or ():
            if not _valid_record(rec) or rec["owner"] != sender.node_id:
                continue  # an owner leases its own calls only
            call_id = rec["id"]
            mine = self.node.active.get(call_id)
            if mine is not None:
                # already here: owned here now (a takeover the lessor has not heard of), or leased twice
                if not mine.get("leased_from") and freshness(mine) > freshness(rec):
                    self.mesh.send(sender.node_id, protocol.SYNCED, {"records": [mine], "last": False})
                elif mine.get("leased_from") != sender.node_id:
                    self.mesh.send(sender.node_id, protocol.COMPLETE, {"calls": [{
                        "call_id": call_id, "ok": False, "value": b"", "error": None,
                        "requeue": "Requeued: the runner holds the call already"}]})
                continue
            if self.draining or self.node.stopping or self.holding():
                self.outbox.setdefault(sender.node_id, []).append(({
                    "call_id": call_id, "ok": False, "value": b"", "error": None, "attempt": rec["attempts"],
                    "requeue": "Requeued: the runner cannot take calls now"}, "complete"))
                continue
            self._lease_replicas[call_id] = set(rec.get("replicas") or ())
            rec = {**rec, "leased_from": sender.node_id, "state": C.QUEUED, "lease_attempt": rec["attempts"]}
            rec["attempts"] = max(0, rec["attempts"] - 1)  # the runner counts the attempt it starts
            self.node.active[call_id] = rec
            self.leased_in[call_id] = sender.node_id
            self.node.scheduler.push_front(rec["socket"], call_id)

    def finish_leased(self, record: dict[str, Any], value: bytes | None, error: dict[str, str] | None,
                      requeue: str = "") -> None:
        """A call run here for another owner ended (or must go back): tell the owner, until it
        answers."""
        call_id = record["id"]
        owner = self.leased_in.pop(call_id, record.get("leased_from"))
        self.node.active.pop(call_id, None)
        body = {"call_id": call_id, "ok": error is None and not requeue, "value": value or b"",
                "error": error, "requeue": requeue, "attempt": record.get("lease_attempt")}
        if record.get("streamed"):
            body["streamed"] = True  # the value is the list of its items: the owner's plugs fire per item
        self.completions[call_id] = [owner, body, time.monotonic() + COMPLETE_RESEND]
        self.outbox.setdefault(owner, []).append((body, "complete"))

    def _on_complete(self, sender: Member, body: dict[str, Any]) -> None:
        calls = [c for c in body.get("calls") or () if isinstance(c, dict) and isinstance(c.get("call_id"), str)]
        if calls:
            self.mesh.send(sender.node_id, protocol.COMPLETED, {"calls": [c["call_id"] for c in calls]})
        for outcome in calls:
            self._complete_one(sender, outcome)

    def _complete_one(self, sender: Member, body: dict[str, Any]) -> None:
        call_id = body["call_id"]
        record = self.node.active.get(call_id)
        if record is None or record.get("leased_from") or call_id in self.node.finalizing:
            return  # finished already (another attempt), or not ours: the outcome is ignored
        lease = self.leased_out.get(call_id)
        if lease is not None and (lease[0] != sender.node_id or lease[2] != body.get("attempt")):
            return  # an earlier lease's outcome, after the call was leased again: the new one decides
        if lease is None and sender.node_id not in self.runners.get(call_id, ()):
            return  # never leased to that member: it has no outcome of this call to give
        self.leased_out.pop(call_id, None)
        if body.get("requeue"):
            if lease is not None:
                self._requeue(record, str(body["requeue"])[:200])
            return
        if lease is None and call_id in self.node.running:
            return  # running here too: the local attempt decides
        if lease is None:
            self.node.scheduler.discard(record["socket"], call_id)
        error = body.get("error") if isinstance(body.get("error"), dict) else None
        value = body.get("value") if isinstance(body.get("value"), bytes) else b"\xc0"
        if body.get("streamed") is True:
            record["streamed"] = True
        self.node.end_remote_attempt(call_id, None if error else value, error)

    def _on_completed(self, sender: Member, body: dict[str, Any]) -> None:
        for call_id in body.get("calls") or ():
            if isinstance(call_id, str):
                pending = self.completions.get(call_id)
                if pending is not None and pending[0] == sender.node_id:
                    self.completions.pop(call_id, None)
                    self._lease_replicas.pop(call_id, None)

    def _requeue(self, record: dict[str, Any], note: str) -> None:
        call_id = record["id"]
        self.leased_out.pop(call_id, None)
        if self.node.active.get(call_id) is not record or call_id in self.node.finalizing:
            return
        C.mark_requeued(record, note, refund=True)
        self.node.scheduler.push_front(record["socket"], call_id)

    # -- streams of leased calls ------------------------------------------------------------------

    def _on_streamed(self, sender: Member, body: dict[str, Any]) -> None:
        """Items of a streaming call leased to ``sender`` (this node owns it)."""
        call_id, attempt, start, items = body.get("call_id"), body.get("attempt"), body.get("start"), body.get("items")
        if not isinstance(call_id, str) or not _is_int(start) or not isinstance(items, list):
            return
        record = self.node.active.get(call_id)
        lease = self.leased_out.get(call_id)
        if record is None or lease is None or lease[0] != sender.node_id or lease[2] != attempt:
            return  # not (or no longer) its lease
        for offset, value in enumerate(items):
            if not isinstance(value, bytes):
                return
            why = self.node.streams.item(record, start + offset, value, runner=sender.node_id)
            if why:
                logger.warning("call %s streamed from %s: %s", call_id, sender.name, why)
                return

    def _on_stream_credit(self, sender: Member, body: dict[str, Any]) -> None:
        """The owner of a streaming call run here lets it go further (and says how many items
        it holds: any it lacks are sent again)."""
        found = self.node.streams.on_credit(sender.node_id, body)
        if found is not None:
            record, upto = found
            self.node.grant(record, "", int(record.get("lease_attempt") or 0), upto)

    # -- membership events ----------------------------------------------------------------------

    def on_member(self, member: Member, old: str, new: str) -> None:
        """A member changed state (``new`` is "restarted" for a new incarnation)."""
        if new in (DEAD, "restarted"):
            why = "died" if new == DEAD else "restarted"
            lost = [call_id for call_id, lease in self.leased_out.items() if lease[0] == member.node_id]
            for call_id in lost:
                if call_id in self.node.active:
                    self._requeue(self.node.active[call_id], f"Requeued: node {member.name} {why} during the call")
            if lost:
                logger.warning("requeued %d call(s) leased to node %s, which %s", len(lost), member.name, why)
            for key in [k for k in self.credits if k[0] == member.node_id]:
                del self.credits[key]
            for (_kind, call_id), gate in list(self.gates.items()):
                if member.node_id in gate.need:
                    self._ack(member.node_id, call_id, None)
            self._next_repair = 0.0
        if new == DEAD:
            self.takeover()
        if new == "restarted" or (new == ALIVE and old != ALIVE):
            self.sync_with(member)
            self._pay(member)
        self._show_finals()

    # -- takeover -------------------------------------------------------------------------------

    def takeover(self) -> None:
        """Own the calls of dead owners that this node is the first live replica of."""
        if not self.replicas or not self.mesh.has_quorum() or self.node.stopping:
            return
        dead = {m.node_id for m in self.mesh.members.values() if m.state == DEAD}
        if not dead:
            return
        taken: dict[str, list[str]] = {}
        records: list[dict[str, Any]] = []
        for call_id, held in list(self.replicas.items()):
            if held.owner not in dead:
                continue
            holders = [n for n in held.replicas if n not in dead and (n == self.me or n in self.mesh.members)]
            if self.me not in holders or min(holders) != self.me:
                continue
            record = self.node.wal.get(call_id)
            del self.replicas[call_id]
            if record is None or record["state"] in C.TERMINAL:
                continue
            old_owner = record["owner"]
            C.mark_moved(record, f"Taken over by node {self.node.config.name}",
                         refund=record["state"] == C.RUNNING)  # an interrupted attempt does not count
            C.set_replicas(record, self.pick_replicas(_run_key(record), exclude=(old_owner,)))
            record.update(owner=self.me, node=self.node.config.name, term=int(record.get("term") or 0) + 1,
                          version=1)
            running_here = call_id in self.node.running  # leased here by the lost owner: it goes on
            self.leased_in.pop(call_id, None)
            self.node.active[call_id] = record
            if running_here:
                C.mark_running(record, 0)
            else:
                self.node.scheduler.discard(record["socket"], call_id)
                self.node.own(record)
            taken.setdefault(old_owner, []).append(call_id)
            records.append(record)
        if not records:
            return
        self.taken_over += len(records)
        self.node.wal.submit(None, records)
        self.replicate(records)
        for record in records:  # outcomes this node ran for the lost owner are now its own
            pending = self.completions.pop(record["id"], None)
            if pending is not None and not pending[1].get("requeue"):
                body = pending[1]
                self.node.scheduler.discard(record["socket"], record["id"])
                if record["state"] != C.RUNNING:  # the run happened here, for the lost owner: say so
                    C.mark_running(record, 0)
                self.node.end_remote_attempt(record["id"], None if body["error"] else body["value"], body["error"])
        for old_owner, ids in taken.items():
            logger.warning("took over %d call(s) of lost node %s", len(ids), old_owner)
            for start in range(0, len(ids), CHUNK * 10):
                body = {"old_owner": old_owner, "new_owner": self.me, "calls": ids[start:start + CHUNK * 10]}
                for member in self.mesh.alive():
                    self.mesh.send(member.node_id, protocol.TAKEOVER, body)

    def _on_takeover(self, sender: Member, body: dict[str, Any]) -> None:
        new_owner, ids = body.get("new_owner"), body.get("calls")
        if not isinstance(new_owner, str) or not isinstance(ids, list):
            return
        if new_owner != sender.node_id:
            logger.warning("ignored a TAKEOVER from node %s in the name of %s", sender.name, new_owner[:40])
            return  # a member announces only its own takeovers
        for call_id in ids:
            if not isinstance(call_id, str) or not self._may_take_over(sender.node_id, call_id):
                continue
            if call_id in self.leased_in:
                self.leased_in[call_id] = new_owner
                record = self.node.active.get(call_id)
                if record is not None:
                    record["leased_from"] = new_owner
            pending = self.completions.get(call_id)
            if pending is not None:
                pending[0] = new_owner
                pending[2] = 0.0
            held = self.replicas.get(call_id)
            if held is not None:
                held.owner = new_owner
            mine = self.node.active.get(call_id)
            if mine is not None and not mine.get("leased_from") and new_owner != self.me \
                    and call_id not in self.node.finalizing:
                # this node was thought lost and its call was taken over: the new owner runs it
                logger.warning("call %s was taken over by another node; dropping it here", call_id)
                self.node.scheduler.discard(mine["socket"], call_id)
                self.node.active.pop(call_id, None)
                self.leased_out.pop(call_id, None)
                copy = {**mine, "owner": new_owner, "term": int(mine.get("term") or 0) + 1, "version": 0,
                        "events": list(mine["events"])}
                if copy["state"] == C.RUNNING:
                    C.mark_moved(copy, "Taken over by another node", refund=True)
                self.replicas[call_id] = _Replica(new_owner, copy["term"], 0, copy["seq"], [])
                self.node.wal.submit(None, [copy])

    def _may_take_over(self, node_id: str, call_id: str) -> bool:
        """A member takes over only calls it held a copy of (it is one of their replicas)."""
        held = self.replicas.get(call_id)
        record = self.node.active.get(call_id) or (self.node.wal.get(call_id) if held is not None else None)
        if record is not None:
            replicas = holders(record)
        elif held is not None:
            replicas = set(held.replicas)
        elif call_id in self.completions:
            replicas = self._lease_replicas.get(call_id, set())
        else:
            return False
        if node_id in replicas:
            return True
        logger.warning("ignored the takeover of call %s by node %s, which held no copy of it", call_id, node_id)
        return False

    # -- rejoin and partitions ------------------------------------------------------------------

    def start_hold(self) -> None:
        """After a restart: replicated calls this node owns wait until the nodes that held their
        copies said what they know (one of them may have taken them over), at most SYNC_HOLD.
        Outcomes written just before the stop are offered too: a replica may have run the call
        again after a takeover, and the copies must agree."""
        if not self.enabled:
            return
        self._held = {r["id"]: set(r["replicas"]) for r in self.node.active.values()
                      if r.get("replicas") and r.get("owner") == self.me}
        needed = {n for replicas in self._held.values() for n in replicas if n != self.me}
        _, recent = self.node.wal.recent(RESTART_FINALS, 0)
        now = time.monotonic()
        self._recent_finals = {r["id"]: (freshness(r), now) for r in recent
                               if r.get("owner") == self.me and r["state"] in C.TERMINAL and r.get("replicas")}
        needed |= {n for r in recent if r["id"] in self._recent_finals for n in r.get("replicas") or () if n != self.me}
        if needed:
            self.sync_needed = needed
            self.hold_until = time.monotonic() + SYNC_HOLD
            self._hold_unknown_until = time.monotonic() + SYNC_HOLD_UNKNOWN

    def note_final(self, record: dict[str, Any]) -> None:
        """A call of this node ended. If it is replicated and the mesh was not whole (a member
        dead or cut off), the call was taken over, or it was resumed without word from a replica,
        another node may have run it too or hold an older outcome: this outcome is offered in
        SYNCs for a while, so the copies agree once the nodes meet again. In a whole mesh, or
        for a call with no copies, this costs a lookup."""
        if self.runners:
            self.runners.pop(record["id"], None)
        unheard = self._outranked.pop(record["id"], None) if self._outranked else None
        for node_id in unheard or ():  # given to them as soon as they are back (_pay)
            self.owed.setdefault(node_id, set()).add(record["id"])
        if not unheard and (not record.get("replicas") or (int(record.get("term") or 0) == 0 and self._mesh_whole())):
            return
        self._recent_finals[record["id"]] = (freshness(record), time.monotonic())
        while len(self._recent_finals) > RECENT_FINALS:
            del self._recent_finals[next(iter(self._recent_finals))]

    def _mesh_whole(self) -> bool:
        now = time.monotonic()
        return all(m.state == ALIVE and now - m.direct <= 3 * self.mesh.interval for m in self.mesh.members.values())

    def _forget_old_finals(self, mono: float) -> None:
        for call_id in [cid for cid, (_, at) in self._recent_finals.items() if mono - at > FINAL_WATCH]:
            del self._recent_finals[call_id]

    def holding(self) -> bool:
        """True while a restarted node still waits for its peers' answers: until every node
        named as a replica answered or is found dead (at most SYNC_HOLD)."""
        if not self.hold_until:
            return False
        mono = time.monotonic()
        gone = {m.node_id for m in self.mesh.members.values() if m.state == DEAD}
        if mono >= self._hold_unknown_until:  # a replica nobody has heard of since the restart
            gone |= {n for n in self.sync_needed if n not in self.mesh.members}
        waiting = self.sync_needed - self.synced - gone
        if waiting and mono < self.hold_until:
            return True
        self.hold_until = 0.0
        self._asked.clear()
        if waiting:
            logger.warning("rejoin reconciliation: no answer from %d node(s) in %ds; resuming the calls owned here",
                           len(waiting), SYNC_HOLD)
        else:
            logger.info("rejoin reconciliation done; resuming the calls owned here")
        self._outrank(self.sync_needed - self.synced)
        return False

    def _outrank(self, unheard: set[str]) -> None:
        """Calls resumed without word from a replica (dead, or silent): that node may hold an
        outcome this node wrote just before it stopped (a copy leaves before the local fsync),
        as fresh as the one this run will write. Their version jumps, so the new outcome wins
        over that one on every node, and that node is given it when it is back (:meth:`_pay`):
        the copies agree on one result. (The term stays: a takeover made while this node was
        away still wins.)"""
        held, self._held = self._held, {}
        if not unheard:
            return
        for call_id, replicas in held.items():  # the replicas named in the log (a dead one may be replaced by now)
            record = self.node.active.get(call_id)
            if (record is not None and record.get("owner") == self.me and not record.get("leased_from")
                    and unheard & replicas):
                record["version"] = int(record.get("version") or 0) + RESUME_VERSION_GAP
                self._outranked[call_id] = unheard & replicas

    def _pay(self, member: Member) -> None:
        """Give ``member`` the outcomes of the calls resumed without its word (its copy may be an
        older outcome); re-sent until it acknowledges them (REPLICATED)."""
        owed = self.owed.get(member.node_id)
        if not owed:
            return
        records = []
        for call_id in list(owed):
            record = self.node.wal.get(call_id)
            if record is None or record["state"] not in C.TERMINAL:
                owed.discard(call_id)  # swept, or not ended here after all: nothing to give
            else:
                records.append(record)
        for group in chunks(records):
            self.mesh.send(member.node_id, protocol.REPLICATE, {"records": group})
        if not owed:
            del self.owed[member.node_id]

    def _resend_syncs(self, mono: float) -> None:
        """While holding: ask again the live peers that have not answered (a SYNC sent while a
        connection was still being made is dropped by ZeroMQ)."""
        for node_id in self.sync_needed - self.synced:
            member = self.mesh.members.get(node_id)
            sent_at, gap = self.sync_sent.get(node_id, (0.0, SYNC_RESEND / 2))
            if member is not None and member.state == ALIVE and mono - sent_at >= gap:
                self.sync_with(member, owned_only=True)
                self.sync_sent[node_id] = (mono, min(gap * 2, 8 * SYNC_RESEND))

    def sync_with(self, member: Member, periodic: bool = False, owned_only: bool = False) -> None:
        """Tell ``member`` which calls this node holds, so it sends fresher copies back (and,
        for those it holds staler copies of, asks for this node's). A whole SYNC (not
        ``periodic``; ``owned_only``: without the copies held for others) sent while this node
        holds its calls after a restart ends with a ``round`` that the answer's last SYNCED
        echoes: that answer tells it the member has said all it knows of its calls."""
        if owned_only:
            entries = []
        elif periodic:  # copies unchanged for a while only, a bounded number per round (in turn)
            now = time.monotonic()
            entries = list(itertools.islice(([cid, False, held.term, held.version]
                                             for cid, held in self.replicas.items()
                                             if now - held.since > RESYNC_AGE), CHUNK * 10))
            for cid, *_ in entries:  # checked: to the back of the line
                self.replicas[cid] = self.replicas.pop(cid)
        else:
            entries = [[cid, False, held.term, held.version] for cid, held in self.replicas.items()]
        entries += [[cid, *fresh] for cid, (fresh, _) in self._recent_finals.items()]
        whole = not periodic
        if whole:
            entries += [[cid, *freshness(rec)] for cid, rec in self.node.active.items()
                        if not rec.get("leased_from") and rec.get("replicas")]
            self.sync_sent[member.node_id] = (time.monotonic(), SYNC_RESEND)
        for start in range(0, max(1, len(entries)), CHUNK * 10):
            body: dict[str, Any] = {"calls": entries[start:start + CHUNK * 10],
                                    "last": start + CHUNK * 10 >= len(entries)}
            if body["last"] and whole and self.hold_until:  # only if no part was refused on the way
                body["round"] = round_ = next(self._rounds)
                self._asked.setdefault(member.node_id, set()).add(round_)
            whole = self.mesh.send(member.node_id, protocol.SYNC, body) and whole

    def _on_sync(self, sender: Member, body: dict[str, Any]) -> None:
        fresher: list[dict[str, Any]] = []
        staler: list[list[Any]] = []  # calls the sender holds fresher copies of: ask for them
        for entry in body.get("calls") or ():
            if not (isinstance(entry, list) and len(entry) == 4 and isinstance(entry[0], str)):
                continue
            record = self._known(entry[0])
            theirs = (bool(entry[1]), int(entry[2] or 0), int(entry[3] or 0))
            if record is not None and freshness(record) > theirs:
                fresher.append(record)
            elif record is not None and freshness(record) < theirs and not body.get("pull"):
                staler.append([entry[0], *freshness(record)])
        if staler:
            self.mesh.send(sender.node_id, protocol.SYNC, {"calls": staler, "last": False, "pull": True})
        for group in chunks(fresher):
            self.mesh.send(sender.node_id, protocol.SYNCED, {"records": group, "last": False})
        if body.get("last"):
            end: dict[str, Any] = {"records": [], "last": True}
            if _is_int(body.get("round")):
                end["round"] = body["round"]
            self.mesh.send(sender.node_id, protocol.SYNCED, end)

    def _on_synced(self, sender: Member, body: dict[str, Any]) -> None:
        writes = []
        ended = []
        for rec in body.get("records") or ():
            if _valid_record(rec) and self._entitled(sender, rec, "SYNCED"):
                record = self.adopt(rec)
                if record is not None:
                    writes.append(record)
                    if record["state"] in C.TERMINAL:
                        ended.append(record["id"])
        if writes:
            logger.info("took %d fresher call record(s) from node %s", len(writes), sender.name)
            self.node.wal.submit(("synced", ended), writes)
        round_ = body.get("round")
        if body.get("last") and _is_int(round_) and round_ in self._asked.get(sender.node_id, ()):
            self.sync_sent.pop(sender.node_id, None)
            self.synced.add(sender.node_id)

    # -- GETs for calls held elsewhere ----------------------------------------------------------

    def find(self, peer: Any, request_id: bytes, call_id: str, wait_ms: int) -> bool:
        """Ask the reachable peers about a call this node does not know; False if there are none."""
        members = self.mesh.reachable()
        if not members:
            return False
        token = uuid.uuid4().hex
        # answered before a client gives up on this node (it waits the GET's wait + 1.5 s)
        self.finds[token] = _Find(peer, request_id, call_id, {m.node_id for m in members},
                                  time.monotonic() + min(wait_ms, 60_000) / 1000 + 1.0)
        for member in members:
            self.mesh.send(member.node_id, protocol.FIND, {"token": token, "call_id": call_id, "wait_ms": wait_ms})
        return True

    def _on_find(self, sender: Member, body: dict[str, Any]) -> None:
        token, call_id, wait_ms = body.get("token"), body.get("call_id"), body.get("wait_ms")
        if not isinstance(token, str) or not isinstance(call_id, str) or not isinstance(wait_ms, int):
            return
        record = self._known(call_id)
        if record is None:
            self.mesh.send(sender.node_id, protocol.FOUND, {"token": token, "call_id": call_id, "known": False})
            return
        waiter = RemoteWaiter(sender.node_id, token, str(record.get("user") or ""))
        if record["state"] in C.TERMINAL:
            self.answer_remote(waiter, self.node.result_message(record))
        elif wait_ms <= 0:
            self.answer_remote(waiter, protocol.Pending(call_id=call_id, state=record["state"]))
        else:
            self.node.hold_get(waiter, b"", call_id, min(wait_ms, 60_000))

    def answer_remote(self, waiter: RemoteWaiter, message: Any) -> None:
        """Send the answer to a GET held here for another node (a RESULT or PENDING) as FOUND."""
        body: dict[str, Any] = {"token": waiter.token, "call_id": getattr(message, "call_id", ""), "known": True,
                                "user": waiter.user}
        if isinstance(message, protocol.Result):
            body["state"] = C.DONE if message.ok else C.FAILED
            body["result"] = {"call_id": message.call_id, "ok": message.ok, "value": message.value,
                              "error": message.error}
        elif isinstance(message, protocol.Pending):
            body["state"] = message.state
        else:
            body["known"] = False
        self.mesh.send(waiter.node_id, protocol.FOUND, body)

    def _on_found(self, sender: Member, body: dict[str, Any]) -> None:
        find = self.finds.get(body.get("token"))  # type: ignore[arg-type]
        if find is None or sender.node_id not in find.asked | find.answered:
            return
        principal = getattr(find.peer, "principal", None)
        if principal is not None and body.get("known") and not can_see_call(principal, {"user": body.get("user") or ""}):
            body = {"token": body["token"], "known": False}  # another user's call: not found for this one
        result = body.get("result")
        if isinstance(result, dict) and result.get("call_id") == find.call_id:
            del self.finds[body["token"]]
            self.node.reply(find.peer, protocol.Result(
                call_id=find.call_id, ok=bool(result.get("ok")), value=result.get("value") or b"",
                error=result.get("error"), request_id=find.request_id))
            return
        if body.get("known") and isinstance(body.get("state"), str):
            find.state = body["state"][:32]
        find.asked.discard(sender.node_id)
        find.answered.add(sender.node_id)
        if not find.asked:
            self._finish_find(body["token"], find)

    def _finish_find(self, token: str, find: _Find) -> None:
        self.finds.pop(token, None)
        silent = find.asked | {m.node_id for m in self.mesh.alive()} - find.answered
        if not find.state and silent:
            find.state = "unknown"  # a node that may hold the call did not answer: ask again later
        if find.state:
            self.node.reply(find.peer, protocol.Pending(call_id=find.call_id, state=find.state,
                                                        request_id=find.request_id))
        else:
            self.node.reply(find.peer, protocol.Error(code=protocol.E_NOT_FOUND,
                                                      reason=f"unknown call id '{find.call_id}'",
                                                      request_id=find.request_id))

    # -- drain ----------------------------------------------------------------------------------

    def set_draining(self, draining: bool) -> None:
        if draining == self.draining:
            return
        self.draining = draining
        if draining:
            self._drain_file.write_text("draining\n")
            logger.warning("draining: no new work here; queued calls move to peers")
        else:
            self._drain_file.unlink(missing_ok=True)
            for call_id in self.handoffs:  # offered but not taken: back in the queue here
                record = self.node.active.get(call_id)
                if record is not None and not record.get("leased_from"):
                    self.node.own(record)
            self.handoffs.clear()
            logger.info("undrained: this node takes work again")
        self.mesh.heartbeat_now()
        self.node.dispatch()

    @property
    def drained(self) -> bool:
        return self.draining and not self.owned_unfinished() and not self.node.running and not self.leased_in

    def owned_unfinished(self) -> int:
        return sum(1 for r in self.node.active.values() if not r.get("leased_from"))

    def _hand_off(self, now: float) -> None:
        """Offer this draining node's queued calls to peers. An offered call leaves the queue
        (nothing here starts it) and is offered again, to the same peer while it lives, until
        that peer answers HANDED."""
        targets = self._replica_candidates()
        if not targets:
            return
        by_target: dict[str, list[dict[str, Any]]] = {}
        # a run moves whole, once nothing of it runs here: its records stay on one owner (a
        # call that ends here makes its plug calls and next steps here, handed over after it)
        busy = {_run_key(r) for cid, r in self.node.active.items()
                if cid in self.node.running or cid in self.leased_out or cid in self.node.finalizing
                or (r["state"] == C.RUNNING and C.kind_of(r) != C.FLOW)}
        busy.update(_run_key(r) for r in self.node.finalizing.values())
        for call_id, record in list(self.node.active.items()):
            if record.get("leased_from") or _run_key(record) in busy:
                continue
            offered = self.handoffs.get(call_id)
            if offered is not None and offered[1] > now:
                continue
            target = offered[0] if offered is not None and self.mesh.is_reachable(offered[0]) else \
                _rendezvous(_run_key(record), [m.node_id for m in targets])
            self.node.scheduler.discard(record["socket"], call_id)
            self.handoffs[call_id] = (target, now + HANDOFF_RETRY)
            by_target.setdefault(target, []).append(record)
            if sum(len(v) for v in by_target.values()) >= CHUNK * 4:
                break
        for target, records in by_target.items():
            for group in chunks(records):
                self.mesh.send(target, protocol.HANDOFF, {"records": group})

    def ask_drain(self, member: Member, drain: bool) -> None:
        """Tell ``member`` to drain (or not), re-sent until its heartbeats say it does."""
        self.drain_requests[member.node_id] = (drain, time.monotonic() + DRAIN_ASK_FOR)
        self.mesh.send(member.node_id, protocol.DRAIN, {"drain": drain})

    def _resend_drains(self, mono: float) -> None:
        for node_id, (drain, until) in list(self.drain_requests.items()):
            member = self.mesh.members.get(node_id)
            if member is None or mono > until or bool(member.info.get("draining")) == drain:
                del self.drain_requests[node_id]
            else:
                self.mesh.send(node_id, protocol.DRAIN, {"drain": drain})

    def _on_drain(self, sender: Member, body: dict[str, Any]) -> None:
        if isinstance(body.get("drain"), bool):
            self.set_draining(body["drain"])

    def _on_handoff(self, sender: Member, body: dict[str, Any]) -> None:
        if self.draining or self.node.stopping:
            return  # the sender offers them elsewhere after HANDOFF_RETRY
        records: list[dict[str, Any]] = []
        answered: list[str] = []
        for rec in body.get("records") or ():
            if not _valid_record(rec) or rec["state"] in C.TERMINAL or rec["owner"] != sender.node_id:
                continue  # a node hands over only calls it owns
            call_id = rec["id"]
            current = self._current(call_id)
            if call_id in self.node.active or (current is not None and (
                    current["state"] in C.TERMINAL or int(current.get("term") or 0) > int(rec.get("term") or 0))):
                answered.append(call_id)  # offered again: it is ours already (or it ended)
                continue
            seq = current["seq"] if current is not None else self.node.wal.next_seq()
            record = {**rec, "seq": seq, "events": list(rec["events"])}
            C.set_replicas(record, self.pick_replicas(_run_key(rec), exclude=(sender.node_id,)))
            record.update(owner=self.me, node=self.node.config.name, term=int(rec.get("term") or 0) + 1, version=1)
            C.mark_moved(record, f"Handed over by draining node {sender.name}")
            self.replicas.pop(call_id, None)
            self.node.own(record)
            records.append(record)
        if answered:
            self.mesh.send(sender.node_id, protocol.HANDED, {"calls": answered})
        if records:
            self.node.wal.submit(("handed", (sender.node_id, [r["id"] for r in records])), records)
            self.replicate(records)

    def handed_committed(self, info: tuple[str, list[str]], error: Exception | None) -> None:
        sender, ids = info
        if error is None:
            self.mesh.send(sender, protocol.HANDED, {"calls": ids})

    def _on_handed(self, sender: Member, body: dict[str, Any]) -> None:
        writes = []
        for call_id in body.get("calls") or ():
            if not isinstance(call_id, str):
                continue
            record = self.node.active.get(call_id)
            self.handoffs.pop(call_id, None)
            if record is None or record.get("leased_from") or call_id in self.node.running:
                continue
            self.node.scheduler.discard(record["socket"], call_id)
            self.node.active.pop(call_id)
            record = {**record, "owner": sender.node_id, "term": int(record.get("term") or 0) + 1, "version": 0,
                      "events": list(record["events"])}
            C.mark_moved(record, f"Handed over to node {sender.name}")
            self.replicas[call_id] = _Replica(sender.node_id, record["term"], 0, record["seq"], [])
            writes.append(record)
        if writes:
            self.node.wal.submit(None, writes)

    # -- periodic work --------------------------------------------------------------------------

    def tick(self, mono: float) -> float:
        next_at = mono + 1.0
        # COMPLETEs not yet acknowledged
        for call_id, pending in list(self.completions.items()):
            owner, body, resend_at = pending[:3]
            if len(pending) == 3:
                pending.append(mono)
            if mono - pending[3] > COMPLETE_GIVE_UP:
                logger.warning("dropping the outcome of call %s: its owner has not answered for %ds",
                               call_id, COMPLETE_GIVE_UP)
                del self.completions[call_id]
                continue
            if resend_at <= mono:
                self.outbox.setdefault(owner, []).append((body, "complete"))
                pending[2] = mono + COMPLETE_RESEND
            next_at = min(next_at, pending[2])
        # replica waits that ran out: go on with the copies there are
        for (kind, call_id), gate in list(self.gates.items()):
            if gate.deadline <= mono:
                for node_id in list(gate.need):
                    self._ack(node_id, call_id, None)
            else:
                next_at = min(next_at, gate.deadline)
        # FINDs that got no full answer
        for token, find in list(self.finds.items()):
            if find.deadline <= mono:
                self._finish_find(token, find)
        if mono >= self._next_lease_check:
            self._next_lease_check = mono + LEASE_CHECK_EVERY
            self._check_leases(mono)
        if self.drain_requests:
            self._resend_drains(mono)
        if self.draining and not self.node.stopping:
            self._hand_off(mono)
            next_at = min(next_at, mono + 0.5)
        if mono >= self._next_repair:
            self._next_repair = mono + REPAIR_EVERY
            self._repair()
            self.takeover()
        if (self.replicas or self._recent_finals) and mono >= self._next_resync:
            # anti-entropy: copies held for others, and outcomes written while the mesh was not
            # whole, are checked with the mesh now and then, so that no copy waits for an outcome
            # written elsewhere and two nodes never keep two outcomes (after a partition)
            self._next_resync = mono + RESYNC_EVERY
            self._forget_old_finals(mono)
            for member in self.mesh.reachable(mono):
                self.sync_with(member, periodic=True)
                self._pay(member)
        if self.hold_until and self.holding():
            self._resend_syncs(mono)
            next_at = min(next_at, self.hold_until, mono + SYNC_RESEND)
        self._show_finals()
        return next_at

    def _check_leases(self, mono: float) -> None:
        """Leases that went astray come back: the runner has not been heard from directly for
        too long, or its heartbeats (which list the calls it holds for each owner) no longer
        list the call (the LEASE was lost, or the runner dropped it)."""
        for call_id, (runner, leased_at, _attempt) in list(self.leased_out.items()):
            record = self.node.active.get(call_id)
            member = self.mesh.members.get(runner)
            if record is None or member is None:
                self.leased_out.pop(call_id, None)
                continue
            if mono - member.direct > LEASE_UNREACHABLE:
                self._requeue(record, f"Requeued: node {member.name} unreachable during the call")
            elif member.info_at - leased_at > LEASE_GRACE and call_id not in member.info.get("leased", {}).get(self.me, ()):
                self._requeue(record, f"Requeued: node {member.name} does not hold the lease")
        for call_id in [c for c in self.runners if c not in self.node.active]:
            del self.runners[call_id]  # ended, or no longer owned here
        for call_id in [c for c in self._lease_replicas if c not in self.leased_in and c not in self.completions]:
            del self._lease_replicas[call_id]
        # runner side: calls leased here that cannot run here (draining, processor down) go back
        if self.leased_in and (self.draining or self.node.stopping):
            self.give_back()
        for call_id in list(self.leased_in):
            record = self.node.active.get(call_id)
            if record is None or call_id in self.node.running:
                continue
            runtime = self.node.runtimes.get(record.get("processor", ""))
            if runtime is None or runtime.status in ("failed", "stopped"):
                self.node.scheduler.discard(record["socket"], call_id)
                self.finish_leased(record, None, None, requeue="Requeued: the processor cannot run on the runner")

    def leases_held(self) -> dict[str, list[str]]:
        """Calls this node holds for other owners, per owner (shown in heartbeats)."""
        held: dict[str, list[str]] = {}
        for call_id, owner in self.leased_in.items():
            held.setdefault(owner, []).append(call_id)
        for call_id, pending in self.completions.items():
            held.setdefault(pending[0], []).append(call_id)
        return held

    def _repair(self) -> None:
        """Calls owned here whose replica died or drains get a new replica."""
        if not self.enabled or not self.mesh.members:
            return
        lost = {m.node_id for m in self.mesh.members.values() if m.state == DEAD or m.draining}
        if not lost:
            return
        records = []
        for record in self.node.active.values():
            replicas = record.get("replicas")
            if record.get("leased_from") or not replicas or not lost.intersection(replicas):
                continue
            keep = [n for n in replicas if n not in lost]
            extra = self.pick_replicas(_run_key(record), exclude=(*keep, *lost))[: max(0, self.wanted_replicas() - 1 - len(keep))]
            if not extra and keep == replicas:
                continue
            C.set_replicas(record, keep + extra)
            record["version"] = int(record.get("version") or 0) + 1
            records.append(record)
        if records:
            self.node.wal.submit(None, records)
            self.replicate(records)

    # -- dispatch -------------------------------------------------------------------------------

    def handle(self, msg: protocol.PeerMessage, key: str = "") -> None:
        """A peer message from the member holding ``key`` (its ZAP User-Id; "" in an insecure mesh)."""
        sender = self.mesh.handle(msg, key)
        if sender is None or msg.command in (protocol.HELLO, protocol.WELCOME, protocol.HEARTBEAT):
            return
        handler = self._HANDLERS.get(msg.command)
        if handler is None:
            logger.debug("ignoring peer command %s from %s", msg.name, sender.name)
            return
        try:
            handler(self, sender, msg.body)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            logger.warning("dropped a malformed %s from %s: %s", msg.name, sender.name, exc)
        finally:
            self._show_finals()

    def status(self) -> dict[str, Any]:
        reachable = len(self.mesh.reachable())
        want = self.wanted_replicas()
        return {
            "replicas": want, "available": min(want, 1 + reachable),
            "degraded": 1 + reachable < want, "require": self.node.config.require_replicas,
            "under_replicated": self.under_replicated, "held_for_others": len(self.replicas),
            "leased_out": len(self.leased_out), "leased_in": len(self.leased_in),
            "unacknowledged_completions": len(self.completions), "taken_over": self.taken_over,
            "draining": self.draining, "drained": self.drained, "holding": bool(self.hold_until),
            "refused_records": self.refused_records,
        }

    _HANDLERS: dict[int, Any] = {}


Cluster._HANDLERS = {
    protocol.REPLICATE: Cluster._on_replicate, protocol.REPLICATED: Cluster._on_replicated,
    protocol.CREDIT: Cluster._on_credit, protocol.LEASE: Cluster._on_lease,
    protocol.COMPLETE: Cluster._on_complete, protocol.COMPLETED: Cluster._on_completed,
    protocol.TAKEOVER: Cluster._on_takeover, protocol.SYNC: Cluster._on_sync, protocol.SYNCED: Cluster._on_synced,
    protocol.FIND: Cluster._on_find, protocol.FOUND: Cluster._on_found,
    protocol.DRAIN: Cluster._on_drain, protocol.HANDOFF: Cluster._on_handoff, protocol.HANDED: Cluster._on_handed,
    protocol.STREAMED: Cluster._on_streamed, protocol.STREAM_CREDIT: Cluster._on_stream_credit,
    protocol.SUBSCRIBE: lambda self, sender, body: self.node.bus.on_subscribe(sender.node_id, body),
    protocol.EVENT: lambda self, sender, body: self.node.bus.on_event(sender.node_id, body),
}


def read_incarnation(path: Path) -> int:
    """This start's incarnation: one more than the last, kept (fsynced) in ``path``."""
    try:
        last = int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        last = 0
    value = last + 1
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as handle:
        handle.write(f"{value}\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return value
