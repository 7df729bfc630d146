"""Scheduled sockets: a socket with an ``interval`` (seconds) or a ``cron`` expression gets a call
at every tick, exactly once in the whole mesh however many nodes host it.

* **Tick times** are the same on every node: an interval's ticks are the multiples of it since
  the UNIX epoch, a cron's come from croniter (5 fields, or 6 with seconds last). A tick's call
  has an id derived from (socket, tick time): ``t-hash``; whoever makes it, it is one call.
* **One node fires.** The *leader* is the live, non-draining node with the smallest node id
  that sees a strict majority of the mesh (any single node is its own leader; a node cut off
  in a minority fires nothing, so a partition never fires a tick on both sides). Only the
  leader makes tick calls; the others learn from its heartbeats (``ticks``: socket -> last tick
  fired) and take over at its death. Tick calls are replicated to the nodes next in line, so a
  new leader holds the calls of the ticks its predecessor fired and never fires them again.
* **Handover.** A node that becomes the leader in a mesh fires only after it stayed the leader
  for :data:`SETTLE_BEATS` heartbeats: by then the previous leader (which stops as soon as it
  sees a smaller node, or loses its majority: 3 beats before the others find it dead) has
  stopped, and its heartbeats told which ticks it fired last, so no tick fires on both.
* **Durable first.** A tick counts as fired (``last``, saved and gossiped) only once its call
  is durable in the log: a crash in between leaves the tick to fire again, never lost.
* **Catch-up.** After downtime (no node ran, or no leader) a socket's missed ticks fire *once*:
  one call, for the latest tick due. With ``catch_up = "all"``, one call per missed tick (at most
  :data:`MAX_CATCH_UP`). Ticks from before the socket was made never fire.

The last tick fired of each socket is kept in ``<data-dir>/ticks.json`` and gossiped; the log
stays the authority (a tick whose call exists is never fired again).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from croniter import croniter

from . import calls as C
from .mesh import DEAD

if TYPE_CHECKING:
    from .node import Node

logger = logging.getLogger(__name__)

#: Most missed ticks of one socket fired at once with ``catch_up = "all"``.
MAX_CATCH_UP = 1000
#: Longest the ticker sleeps between looks at its sockets (a new or changed socket is seen by then).
MAX_SLEEP = 1.0
#: Heartbeat intervals a new leader waits before it fires (see "Handover").
SETTLE_BEATS = 2


def tick_id(socket: str, tick: float) -> str:
    return C.derived_id("t", socket, repr(round(tick, 6)))


def _stamp(tick: float) -> str:
    return datetime.fromtimestamp(tick, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Schedule:
    """The tick times of one socket."""

    def __init__(self, interval: float | None, cron: str | None) -> None:
        self.interval = interval
        self.cron = cron

    def latest(self, now: float) -> float:
        """The last tick at or before ``now``."""
        if self.interval:
            return math.floor(now / self.interval) * self.interval
        return float(croniter(self.cron, now + 1e-6).get_prev(float))

    def next(self, after: float) -> float:
        """The first tick after ``after``."""
        if self.interval:
            return (math.floor(after / self.interval) + 1) * self.interval
        return float(croniter(self.cron, after).get_next(float))

    def between(self, start: float, end: float, limit: int) -> list[float]:
        """Ticks in ``(start, end]``: the last ``limit`` of them."""
        if self.interval:
            first = max(math.floor(start / self.interval) + 1, math.floor(end / self.interval) - limit + 1)
            return [k * self.interval for k in range(first, math.floor(end / self.interval) + 1)]
        out: list[float] = []
        it = croniter(self.cron, end + 1e-6)
        while len(out) < limit:
            tick = float(it.get_prev(float))
            if tick <= start:
                break
            out.append(tick)
        return sorted(out)


class Ticker:
    """Fires this node's scheduled sockets when it leads (the loop thread owns it)."""

    def __init__(self, node: "Node", path: Path) -> None:
        self.node = node
        self.path = Path(path)
        self.last: dict[str, float] = self._load()  # socket -> last tick whose call is durable
        self.pending: dict[str, float] = {}  # socket -> last tick fired, its call not yet durable
        self._unstored: list[tuple[str, float, list[str]]] = []  # ticks whose commit failed: written again
        self.fired = 0
        self._schedules: dict[str, tuple[Any, Schedule]] = {}
        self._topology: Any = None
        self._next = 0.0  # wall-clock time of the next look
        self._dirty = False
        self._leading_since: float | None = None  # monotonic time this node became the leader

    def _load(self) -> dict[str, float]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable %s: %s", self.path, exc)
            return {}
        return {k: float(v) for k, v in data.items() if isinstance(k, str) and isinstance(v, (int, float))} \
            if isinstance(data, dict) else {}

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(self.last, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError as exc:
            logger.warning("cannot save %s: %s", self.path, exc)
        self._dirty = False

    def advertised(self) -> dict[str, float]:
        """Socket -> last tick fired, for heartbeats."""
        return {name: self.last[name] for name in self._scheduled() if name in self.last}

    def _scheduled(self) -> dict[str, tuple[Any, Schedule]]:
        topology = self.node.topology
        if topology is not self._topology:
            self._topology = topology
            self._schedules = {name: (s, Schedule(s.interval, s.cron)) for name, s in topology.sockets.items()
                               if s.interval or s.cron}
            self._next = 0.0  # look at the new schedules now
        return self._schedules

    def leader(self) -> bool:
        """Does this node fire the ticks? (The live, non-draining node with the smallest id.)"""
        node = self.node
        if node.cluster.draining or node.stopping:
            return False
        members = node.mesh.members.values()
        return node.mesh.has_quorum() and all(
            m.node_id > node.node_id for m in members if m.state != DEAD and not m.draining)

    def _settling(self) -> float | None:
        """None when this node is not the leader; else the seconds it still waits before it
        fires (0.0: it may fire): :data:`SETTLE_BEATS` heartbeats from when it became the
        leader, in a mesh."""
        if not self.leader():
            self._leading_since = None
            return None
        mesh = self.node.mesh
        if not mesh.enabled:  # no mesh: nobody else fires
            return 0.0
        mono = time.monotonic()
        if self._leading_since is None:
            self._leading_since = mono
        return max(0.0, SETTLE_BEATS * mesh.interval - (mono - self._leading_since))

    def _ready(self) -> bool:
        """In a mesh, fire only once every live member was heard (its last ticks are known) and
        a restarted node has reconciled with its peers."""
        node = self.node
        if node.cluster.hold_until and node.cluster.holding():
            return False
        return all(m.info_at for m in node.mesh.members.values() if m.state != DEAD)

    def due(self, now: float) -> bool:
        """Is there anything to look at now (a new topology, or the next look's time)?"""
        return now >= self._next or self.node.topology is not self._topology

    @property
    def next_look(self) -> float:
        """The wall-clock time of the next look."""
        return self._next

    def tick(self, now: float) -> None:
        """Fire what is due; :attr:`next_look` says when to look again."""
        self._next = now + MAX_SLEEP  # whatever happens below, look again then (never in a tight loop)
        schedules = self._scheduled()
        if not schedules:
            return
        for member in self.node.mesh.members.values():  # what the others fired
            ticks = member.info.get("ticks")
            for name, last in (ticks.items() if isinstance(ticks, dict) else ()):
                if name in schedules and isinstance(last, (int, float)) and last > self.last.get(name, 0.0):
                    self.last[name] = float(last)
                    self._dirty = True
        if self._unstored:  # at most once per look: a failing disk is not hammered
            retry, self._unstored = self._unstored, []
            for name, due, ids in retry:
                self.node.wal.submit(("tick", [(name, due, ids)]),
                                     [self.node.active[i] for i in ids if i in self.node.active])
        wake = now + MAX_SLEEP
        settling = self._settling()
        if settling:  # a new leader waits for the previous one to stop
            wake = min(wake, now + settling)
        elif settling is not None and self._ready():
            for name, (socket, schedule) in schedules.items():
                try:
                    self._fire_due(name, socket, schedule, now)
                    wake = min(wake, schedule.next(now))
                except Exception:  # noqa: BLE001 - one bad schedule must not stop the others
                    logger.exception("scheduled socket %s", name)
        if self._dirty:
            self._save()
        self._next = max(wake, now + 0.001)

    def _fire_due(self, name: str, socket: Any, schedule: Schedule, now: float) -> None:
        due = schedule.latest(now)
        last = max(self.last.get(name, 0.0), self.pending.get(name, 0.0))
        baseline = max(last, float(getattr(socket, "created", 0.0) or 0.0))
        if due <= baseline:
            return
        between = schedule.between(baseline, due, MAX_CATCH_UP) if last else []
        ticks = between if socket.catch_up == "all" and last else [due]  # missed ticks fire once
        missed = max(0, len(between) - 1) if socket.catch_up != "all" else 0
        records = [r for r in (self._make(name, tick, missed) for tick in ticks) if r is not None]
        self.pending[name] = due
        node = self.node
        for record in records:
            node.own(record)
        node.wal.submit(("tick", [(name, due, [record["id"] for record in records])]), records)
        for record in records:
            if node.history is not None:
                node.history.note(record)
        replicated = [record for record in records if record.get("replicas")]
        if replicated:
            node.cluster.replicate(replicated)
        self.fired += len(records)

    def committed(self, ticks: list[tuple[str, float, list[str]]], error: BaseException | None) -> None:
        """The calls of these ticks are durable; with ``error`` they are not: they are written
        again at the next look, and until then the tick stays pending (not saved, not gossiped)."""
        for name, due, ids in ticks:
            if error is not None:
                logger.error("tick of %s not stored (retrying): %s", name, error)
                self._unstored.append((name, due, ids))
                continue
            if self.pending.get(name) == due:
                del self.pending[name]
            if due > self.last.get(name, 0.0):
                self.last[name] = due
                self._dirty = True
        if self._dirty:
            self._save()

    def _make(self, name: str, tick: float, missed: int) -> dict[str, Any] | None:
        """The call of a tick, or None if it exists (fired by this node, or a leader before it)."""
        node = self.node
        call_id = tick_id(name, tick)
        if node.holds(call_id):
            return None
        socket = node.topology.sockets[name]
        processor = node.topology.processors[socket.processor]
        note = f"Tick {_stamp(tick)} of {name}" + (f" (covers {missed} missed tick(s))" if missed else "")
        record = C.new_record(
            call_id=call_id, seq=node.wal.next_seq(), owner=node.node_id, node=node.config.name, socket=name,
            processor=processor.name, function=socket.function, args=b"\x90", kwargs=b"\x80",
            retries=processor.retries, retry_delay=processor.retry_delay, timelimit=processor.timelimit,
            via=f"tick {_stamp(tick)}", note=note)
        record["tick"] = tick
        if node.mesh.members:  # copies go to the next leaders: whoever fires next knows this tick
            order = sorted(m.node_id for m in node.mesh.reachable() if not m.draining)
            record.update(term=0, version=1)
            C.set_replicas(record, order[: max(0, node.cluster.wanted_replicas() - 1)])
        logger.debug("fired %s", note)
        return record

    def status(self) -> dict[str, Any]:
        return {"leader": self.leader(), "fired": self.fired,
                "sockets": {name: {"last": self.last.get(name)} for name in self._scheduled()}}
