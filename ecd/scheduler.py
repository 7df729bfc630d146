"""Micro-scheduling: which queued call runs next, and on which CPU slot.

Pure logic, no I/O. Calls wait in one FIFO per socket (delayed retries in a heap until they are
due). The node asks :meth:`Scheduler.assign` for work whenever a worker frees up; the scheduler
hands out calls round-robin across sockets, only to sockets whose processor has an idle worker,
and never lets the number of busy slots exceed the node's CPU count.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from typing import Callable, Iterator


class Scheduler:
    """Ready queues, delayed calls and CPU slot accounting for one node."""

    def __init__(self, cpus: int) -> None:
        if cpus < 1:
            raise ValueError("cpus must be at least 1")
        self.cpus = cpus
        self.busy = 0
        self._ready: dict[str, deque[str]] = {}
        self._order: deque[str] = deque()  # sockets with ready calls, in round-robin order
        self._delayed: list[tuple[float, int, str, str]] = []
        self._tiebreak = itertools.count()
        self._delayed_count: dict[str, int] = {}

    # -- queueing -------------------------------------------------------------------------------

    def push(self, socket: str, call_id: str, due: float = 0.0, now: float = 0.0) -> None:
        """Queue ``call_id`` on ``socket``; with ``due`` in the future it waits until then."""
        if due > now:
            heapq.heappush(self._delayed, (due, next(self._tiebreak), socket, call_id))
            self._delayed_count[socket] = self._delayed_count.get(socket, 0) + 1
            return
        self._push_ready(socket, call_id, front=False)

    def push_front(self, socket: str, call_id: str) -> None:
        """Put a call back at the head of its queue (it was taken but could not run)."""
        self._push_ready(socket, call_id, front=True)

    def _push_ready(self, socket: str, call_id: str, front: bool) -> None:
        queue = self._ready.get(socket)
        if queue is None:
            queue = self._ready[socket] = deque()
        if not queue:
            self._order.append(socket)
        if front:
            queue.appendleft(call_id)
        else:
            queue.append(call_id)

    def promote_due(self, now: float) -> float | None:
        """Move delayed calls that are due into their ready queues; return the next due time."""
        while self._delayed and self._delayed[0][0] <= now:
            _, _, socket, call_id = heapq.heappop(self._delayed)
            self._delayed_count[socket] -= 1
            self._push_ready(socket, call_id, front=False)
        return self._delayed[0][0] if self._delayed else None

    # -- assignment -----------------------------------------------------------------------------

    def assign(self, can_run: Callable[[str], bool]) -> Iterator[tuple[str, str]]:
        """Yield ``(socket, call_id)`` pairs to start now.

        ``can_run(socket)`` says whether the socket's processor has an idle worker right now; the
        caller must start each yielded call before asking for the next (so ``can_run`` sees the
        worker taken). Stops when every CPU slot is busy or nothing more can run.
        """
        skipped = 0
        while self.busy < self.cpus and self._order and skipped < len(self._order):
            socket = self._order[0]
            self._order.rotate(-1)
            if not can_run(socket):
                skipped += 1
                continue
            queue = self._ready[socket]
            call_id = queue.popleft()
            if not queue:
                self._order.remove(socket)
            skipped = 0
            self.busy += 1
            yield socket, call_id

    def take(self, sockets: list[str]) -> tuple[str, str] | None:
        """Pop the next ready call of any of ``sockets`` without taking a CPU slot (the caller
        queues it behind a call that holds one). Rotates, so the sockets share fairly."""
        for socket in sockets:
            queue = self._ready.get(socket)
            if queue:
                call_id = queue.popleft()
                if not queue:
                    self._order.remove(socket)
                elif self._order and self._order[0] == socket:
                    self._order.rotate(-1)
                return socket, call_id
        return None

    def runnable(self, can_run: Callable[[str], bool]) -> bool:
        """True if some socket with ready calls could start one now (given a CPU slot)."""
        return any(can_run(socket) for socket in self._order)

    def release(self) -> None:
        """A call that held a slot has ended (or was put back)."""
        if self.busy <= 0:
            raise RuntimeError("release() without a busy slot")
        self.busy -= 1

    # -- inspection -----------------------------------------------------------------------------

    def depth(self, socket: str) -> int:
        """Calls waiting on ``socket`` (ready and delayed), not counting running ones."""
        return len(self._ready.get(socket, ())) + self._delayed_count.get(socket, 0)

    def depths(self) -> dict[str, int]:
        names = set(self._ready) | {s for s, n in self._delayed_count.items() if n}
        return {name: self.depth(name) for name in sorted(names)}

    def discard(self, socket: str, call_id: str) -> bool:
        """Remove a ready call (e.g. when it was cancelled); True if it was queued."""
        queue = self._ready.get(socket)
        if not queue or call_id not in queue:
            return False
        queue.remove(call_id)
        if not queue:
            self._order.remove(socket)
        return True

    def drop(self, socket: str) -> list[str]:
        """Remove every call queued on ``socket`` (ready or delayed); returns their ids."""
        dropped = list(self._ready.pop(socket, ()))
        if socket in self._order:
            self._order.remove(socket)
        if self._delayed_count.pop(socket, 0):
            dropped += [entry[3] for entry in self._delayed if entry[2] == socket]
            self._delayed = [entry for entry in self._delayed if entry[2] != socket]
            heapq.heapify(self._delayed)
        return dropped

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._ready.values()) + len(self._delayed)
