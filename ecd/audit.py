"""The audit log's buffer: denials (and failed logins) reach the database in batches.

Admin changes, logins and logouts are written in the transaction of the change itself (see
:mod:`ecd.accounts`). What is refused never reaches the database on its own, so the node keeps
those rows here and writes them every :data:`FLUSH_EVERY` seconds on its database thread, like the
call history: while the database is away they wait, and they are written at stop when it is there.

A flood of refusals is one row per kind and second, not one per request: denials that repeat
(the same user and key, op, object and outcome; for keys nobody logged in with, the same op and
outcome whatever the key) are counted into the first one's row (``... (x1234)``). At most
:data:`MAX_PENDING` rows wait; past that new ones are dropped and counted.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any, Callable

from .accounts import audit_row
from .background import Background
from .errors import StoreUnavailable

logger = logging.getLogger(__name__)

#: Seconds between two batches.
FLUSH_EVERY = 1.0
#: Rows kept at most while the database is away.
MAX_PENDING = 10_000
#: Rows per batch.
BATCH = 5000


class AuditLog:
    """Rows of the audit log not yet in the database (loop thread)."""

    def __init__(self, bg: Background, write: Callable[[list[dict[str, Any]]], None], node: str) -> None:
        self.bg = bg
        self.write = write
        self.node = node
        self.pending: deque[dict[str, Any]] = deque()
        self._open: dict[tuple[str, ...], dict[str, Any]] = {}  # rows of this interval by what they say
        self.written = 0
        self.dropped = 0
        self.coalesced = 0
        self._inflight = False
        self._next = 0.0

    def record(self, *, user: str, key: str, op: str, object: str, outcome: str) -> None:
        anonymous = user == "anonymous"
        same = ("anonymous", op, outcome) if anonymous else (user, key, op, object, outcome)
        row = self._open.get(same)
        if row is not None:
            row["count"] += 1
            self.coalesced += 1
            return
        if len(self.pending) >= MAX_PENDING:
            self.dropped += 1
            if self.dropped in (1, 100, 10_000) or self.dropped % 100_000 == 0:
                logger.warning("audit: %d row(s) dropped: more kinds of refusals than the log holds while it "
                               "waits for the database", self.dropped)
            return
        row = audit_row(time=time.time(), user=user, key=key, node=self.node, op=op, object=object, outcome=outcome)
        row["count"] = 1
        self._open[same] = row
        self.pending.append(row)

    def row(self, *, user: str, key: str, op: str, object: str, outcome: str = "ok") -> dict[str, Any]:
        """An audit row for a change written with it (in its transaction)."""
        return audit_row(time=time.time(), user=user, key=key, node=self.node, op=op, object=object, outcome=outcome)

    def tick(self, mono: float) -> float:
        if self.pending and not self._inflight and mono >= self._next:
            self._flush(mono)
        return self._next if self.pending else mono + FLUSH_EVERY

    def _take(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Rows to write now (a row's count goes into its outcome); the interval starts over."""
        self._open.clear()
        count = len(self.pending) if limit is None else min(limit, len(self.pending))
        batch = []
        for _ in range(count):
            row = dict(self.pending.popleft())
            times = row.pop("count", 1)
            if times > 1:
                row["outcome"] = f"{row['outcome'][:280]} (x{times})"
            batch.append(row)
        return batch

    def _flush(self, mono: float) -> None:
        batch = self._take(BATCH)
        self._inflight = True

        def done(_: Any, error: BaseException | None) -> None:
            self._inflight = False
            self._next = time.monotonic() + FLUSH_EVERY
            if error is None:
                self.written += len(batch)
                return
            if isinstance(error, StoreUnavailable):
                self.pending.extendleft(reversed(batch))  # kept until the database is back
            else:
                logger.error("audit: dropped %d row(s) the database refused: %r", len(batch), error)
                self.dropped += len(batch)

        self.bg.submit(lambda: self.write(batch), done)

    def then(self, read: Callable[[], Any], callback: Callable[[Any, BaseException | None], None]) -> None:
        """Run ``read`` on the database thread after writing what is pending (``ls audit`` sees
        every denial so far)."""
        batch = self._take()

        def work() -> Any:
            if batch:
                self.write(batch)
            return read()

        def done(result: Any, error: BaseException | None) -> None:
            if batch:
                if error is not None:
                    self.pending.extendleft(reversed(batch))
                else:
                    self.written += len(batch)
            callback(result, error)

        self.bg.submit(work, done)

    def write_pending(self) -> None:
        """At stop: write what is pending now, on the calling thread."""
        rows = self._take()
        if rows:
            self.write(rows)
            self.written += len(rows)

    def status(self) -> dict[str, Any]:
        return {"pending": len(self.pending), "written": self.written, "dropped": self.dropped,
                "coalesced": self.coalesced}
