"""The running side of a processor on this node: its prepared code, its worker processes, which
of them are idle, which call each busy one runs, and its status (pending, running, paused,
failed, stopped) with a reason users can read. Workers carry the generation they were started
in; a roll (new code, ``ecctl proc restart``) bumps the processor's generation, and older workers
retire as soon as they have no call.

The node owns the event loop; a :class:`ProcessorRuntime` only keeps the bookkeeping and starts or
stops processes when told to.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .repos import CodeSpec, PreparedCode
from .workers import ProcessRegistry, WorkerProcess

logger = logging.getLogger(__name__)

PENDING = "pending"  # code being cloned / installed, or workers starting
RUNNING = "running"
PAUSED = "paused"  # shown only: a running processor whose definition says paused (runs no call)
FAILED = "failed"
STOPPED = "stopped"

#: Seconds between respawns of a worker that keeps dying, doubling up to the maximum.
RESPAWN_BACKOFF = 0.2
RESPAWN_BACKOFF_MAX = 10.0


@dataclass
class WorkerSlot:
    """One worker process and the calls handed to it: the head runs, the others (prefetched
    under backlog) wait in the worker's pipe and start as soon as the head ends."""

    process: WorkerProcess
    ready: bool = False
    calls: deque[str] = field(default_factory=deque)
    deadline: float | None = None  # time limit of the running (head) call
    spawned: float = field(default_factory=time.monotonic)
    generation: int = 0  # the processor's worker generation when this worker started

    @property
    def call_id(self) -> str | None:
        """The running call, if any."""
        return self.calls[0] if self.calls else None


@dataclass
class ProcessorRuntime:
    """Bookkeeping for one processor's workers on this node."""

    definition: Any  # topology.ProcessorDef
    status: str = PENDING
    reason: str = ""
    code: PreparedCode | None = None
    slots: dict[int, WorkerSlot] = field(default_factory=dict)  # by pid
    idle: list[int] = field(default_factory=list)  # pids of ready, idle workers
    respawn_at: float | None = None
    backoff: float = RESPAWN_BACKOFF
    prepare_at: float | None = None  # when to try preparing the code again after a failure
    generation: int = 0  # bumps on every (re)prepare so stale results are ignored
    avg_duration: float = 0.0  # moving average of call run times (seconds)
    observed: int = 0  # calls folded into avg_duration
    early_exits: int = 0  # workers in a row that died before their module was imported
    worker_generation: int = 0  # bumps on every roll; workers of older generations retire
    next_start: float = 0.0  # with a rate limit: the earliest monotonic time the next call may start

    @property
    def name(self) -> str:
        return self.definition.name

    def code_spec(self) -> CodeSpec:
        d = self.definition
        commit = d.commit or (f"refs/tags/{d.tag}" if getattr(d, "tag", None) else None)
        return CodeSpec(gitrepo=d.gitrepo, branch=d.branch, commit=commit, requirements=d.requirements)

    @property
    def start_interval(self) -> float:
        """Seconds between call starts its rate limit allows (``"10/s"`` -> 0.1); 0 = no limit.
        Starts are spaced evenly on this node (a token bucket of one)."""
        limit = getattr(self.definition, "rate_limit", None)
        if not limit:
            return 0.0
        count, _, unit = limit.partition("/")
        return {"s": 1.0, "m": 60.0, "h": 3600.0}[unit] / int(count)

    def may_start(self, mono: float) -> bool:
        return self.next_start <= mono

    def started(self, mono: float) -> None:
        """A call started: the next may start one interval later."""
        interval = self.start_interval
        if interval:
            self.next_start = max(self.next_start, mono) + interval

    @property
    def paused(self) -> bool:
        return bool(getattr(self.definition, "paused", False))

    def stale(self, slot: WorkerSlot) -> bool:
        """Was ``slot`` started before the last roll?"""
        return slot.generation != self.worker_generation

    @property
    def busy(self) -> int:
        return sum(1 for slot in self.slots.values() if slot.call_id is not None)

    def wanted_workers(self) -> int:
        return 0 if self.status in (FAILED, STOPPED) or self.code is None else self.definition.concurrency

    def spawn_missing(self, support_dir: Path, registry: ProcessRegistry,
                      on_line: Callable[[int, str, str], None] | None = None) -> list[WorkerSlot]:
        """Start workers until ``concurrency`` are alive; returns the new ones. ``on_line`` gets
        each line a worker prints (pid, stream, text)."""
        started: list[WorkerSlot] = []
        while self.code is not None and len(self.slots) < self.wanted_workers():
            process = WorkerProcess(
                processor=self.name,
                slot=len(self.slots),
                code=self.code,
                module=self.definition.module,
                support_dir=support_dir,
                registry=registry,
                on_line=on_line,
            )
            process.spawn()
            slot = WorkerSlot(process, generation=self.worker_generation)
            self.slots[process.pid] = slot
            started.append(slot)
        return started

    def take_idle(self) -> WorkerSlot | None:
        while self.idle:
            pid = self.idle.pop()
            slot = self.slots.get(pid)
            if slot is not None and slot.ready and slot.call_id is None and not self.stale(slot):
                return slot
        return None

    def mark_idle(self, slot: WorkerSlot) -> None:
        """The worker has nothing left to run: offer it to the scheduler again."""
        slot.deadline = None
        if not slot.calls and slot.process.pid not in self.idle:
            self.idle.append(slot.process.pid)

    def forget(self, pid: int) -> WorkerSlot | None:
        slot = self.slots.pop(pid, None)
        if pid in self.idle:
            self.idle.remove(pid)
        return slot

    def observe(self, duration: float) -> None:
        """Fold one call's run time into the moving average."""
        self.avg_duration += 0.2 * (duration - self.avg_duration)
        self.observed += 1

    def schedule_respawn(self, now: float) -> None:
        self.respawn_at = now + self.backoff
        self.backoff = min(self.backoff * 2, RESPAWN_BACKOFF_MAX)

    def healthy(self) -> None:
        """A worker came up: reset the crash-loop backoff."""
        self.backoff = RESPAWN_BACKOFF
        self.early_exits = 0

    def fail(self, reason: str, retry_after: float | None) -> None:
        self.status = FAILED
        self.early_exits = 0
        self.reason = reason
        self.prepare_at = None if retry_after is None else time.monotonic() + retry_after
        logger.error("processor %s failed: %s", self.name, reason)

    def view(self) -> dict[str, Any]:
        """Runtime fields merged into ``ecctl ls processors`` / ``ecctl status``."""
        busy = self.busy
        return {
            "status": PAUSED if self.status == RUNNING and self.paused else self.status,
            "reason": self.reason,
            "resolved_commit": self.code.commit if self.code else None,
            "workers": len(self.slots),
            "busy": busy,
            "idle": sum(1 for slot in self.slots.values() if slot.ready and not slot.calls),
            "starting": sum(1 for slot in self.slots.values() if not slot.ready),
            "pids": sorted(self.slots),
        }
