"""Call history export: call records and events reach the database in batches, off the call path.

The loop notes a call each time its durable record changes (:meth:`HistoryExporter.note`, a
reference kept in a dict); notes of one call coalesce, and an unfinished call's note waits one
interval, so a call that is accepted and finishes within it is written once. Every ``interval``
seconds one batch is written on the exporter's own thread, never on the loop's (the rows are
built there too, from the records: the loop copies nothing). If the database is unreachable the
notes stay pending (bounded by ``max_pending``: the oldest tenth is dropped at once, with a
warning) and are written when it returns. History is an operator's view; the write-ahead log
stays the authority on every call.

Retention: finished calls older than ``retention`` seconds are pruned once a minute (more often
when the retention itself is short); 0 keeps them forever.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any, Callable

from .background import Background
from .errors import StoreUnavailable
from .history import FIELDS

logger = logging.getLogger(__name__)

#: Seconds between retention sweeps.
PRUNE_EVERY = 60.0
#: Longest backoff after a failed batch (seconds).
MAX_BACKOFF = 10.0


class HistoryExporter:
    """Batches call summaries into a :class:`~ecd.history.HistoryStore` on a background thread.

    The loop only keeps a reference to each noted record (O(1)); summaries are built on the
    history thread. A note of an unfinished call waits one interval before it is written, so a
    call that ends within it is written once, finished.
    """

    def __init__(self, history: Any, *, interval: float = 0.5, batch: int = 5000,
                 retention: float = 7 * 86400.0, max_pending: int = 200_000) -> None:
        self.history = history
        self.interval = interval
        self.batch = batch
        self.retention = retention
        self.max_pending = max_pending
        self.bg = Background(threads=1, name="ecd-history")
        self.pending: dict[str, tuple[dict[str, Any], float]] = {}  # id -> (record, noted at)
        self.exported = 0
        self.failed_batches = 0
        self.dropped = 0
        self._inflight = False
        self._next_flush = 0.0
        # a short retention is swept as often as it needs (tests, small disks); else once a minute
        self.prune_every = min(PRUNE_EVERY, max(retention / 4, 0.5))
        self._next_prune = time.monotonic() + self.prune_every
        self._backoff = interval
        self._down = False  # the last batch found the database away

    @property
    def wake_fd(self) -> int:
        return self.bg.wake_fd

    def drain(self) -> None:
        self.bg.drain()

    def note(self, record: dict[str, Any]) -> None:
        """The call's durable record changed (loop thread). While the database is away the note
        is a copy without the call's arguments and result, so a long outage holds no payloads."""
        self.pending[record["id"]] = (_slim(record) if self._down else record, time.monotonic())
        if len(self.pending) > self.max_pending:
            self._shed()

    def tick(self, mono: float) -> float:
        """Write a batch or prune when due; returns when to look again (monotonic)."""
        if not self._inflight:
            if self.pending and mono >= self._next_flush:
                self._flush(mono)
            elif mono >= self._next_prune and self.retention > 0:
                self._prune(mono)
        if self.pending and not self._inflight:
            return max(self._next_flush, mono)
        return min(self._next_prune, mono + self.interval)

    def then(self, fn: Callable[[], Any], callback: Callable[[Any, BaseException | None], None]) -> None:
        """Run ``fn`` on the history thread after writing what is pending, so a reader sees every
        call noted so far (read-your-writes for ``ecctl ls calls``)."""
        batch = self._take(lambda record, noted: True)

        def work() -> Any:
            if batch:
                self.history.write([record for record, _ in batch])
            return fn()

        def done(result: Any, error: BaseException | None) -> None:
            if batch:
                if error is not None:
                    self._put_back(batch)  # the regular flush writes (or drops) it
                else:
                    self.exported += len(batch)
            callback(result, error)

        self.bg.submit(work, done)

    def write_pending(self) -> None:
        """Write everything pending now, on the calling thread (at stop)."""
        batch = self._take(lambda record, noted: True, limit=None)
        if batch:
            self.history.write([record for record, _ in batch])
            self.exported += len(batch)

    def close(self) -> None:
        self.bg.close(wait=False)

    def status(self) -> dict[str, Any]:
        return {"enabled": True, "pending": len(self.pending), "exported": self.exported,
                "failed_batches": self.failed_batches, "dropped": self.dropped,
                "retention": self.retention}

    # -- internals ------------------------------------------------------------------------------

    def _take(self, ready: Callable[[dict[str, Any], float], bool],
              limit: int | None = -1) -> list[tuple[dict[str, Any], float]]:
        """Remove and return up to ``limit`` (default: the batch size) pending notes that are
        ``ready``."""
        cap = self.batch if limit == -1 else limit
        batch = []
        for entry in self.pending.values():
            if ready(*entry):
                batch.append(entry)
                if cap is not None and len(batch) >= cap:
                    break
        for record, _ in batch:
            del self.pending[record["id"]]
        return batch

    def _put_back(self, batch: list[tuple[dict[str, Any], float]]) -> None:
        for record, noted in batch:  # a newer note of the call wins; no payloads kept waiting
            self.pending.setdefault(record["id"], (_slim(record), noted))

    def _flush(self, mono: float) -> None:
        settled = mono - self.interval
        batch = self._take(lambda record, noted: record.get("finished") is not None or noted <= settled)
        if not batch:
            self._next_flush = mono + self.interval
            return
        self._inflight = True

        def done(_: Any, error: BaseException | None) -> None:
            self._inflight = False
            now = time.monotonic()
            if error is None:
                self.exported += len(batch)
                self._down = False
                self._backoff = self.interval
                self._next_flush = now + (0 if len(batch) >= self.batch else self.interval)
                return
            self.failed_batches += 1
            if not isinstance(error, StoreUnavailable):
                # not an outage: something in the batch the database refuses; retrying it forever
                # would hold back every later call, so it is logged and dropped
                logger.error("call history: dropped a batch of %d call(s) the database refused: %r", len(batch), error)
                self.dropped += len(batch)
                self._next_flush = now + self.interval
                return
            self._down = True
            self._put_back(batch)
            if self.failed_batches == 1 or self._backoff < MAX_BACKOFF:
                logger.warning("call history not exported (%d pending, retrying): %s",
                               len(self.pending), getattr(error, "message", error))
            self._backoff = min(self._backoff * 2, MAX_BACKOFF)
            self._next_flush = now + self._backoff

        self.bg.submit(lambda: self.history.write([record for record, _ in batch]), done)

    def _prune(self, mono: float) -> None:
        self._next_prune = mono + self.prune_every
        self._inflight = True
        before = time.time() - self.retention

        def done(count: Any, error: BaseException | None) -> None:
            self._inflight = False
            if error is not None:
                logger.info("call history not pruned: %s", getattr(error, "message", error))
            elif count:
                logger.info("pruned %d call(s) from the history", count)

        self.bg.submit(lambda: self.history.prune(before), done)

    def _shed(self) -> None:
        """Too much pending (the database has been away long): drop the oldest tenth in one pass
        (a dropped unfinished call is noted again when it ends)."""
        excess = len(self.pending) - self.max_pending + self.max_pending // 10
        for call_id in list(itertools.islice(self.pending, excess)):
            del self.pending[call_id]
        self.dropped += excess
        logger.warning("call history: dropped the %d oldest note(s) the database could not take (%d so far)",
                       excess, self.dropped)


def _slim(record: dict[str, Any]) -> dict[str, Any]:
    """What the history keeps of a call: its summary fields and events (no payloads)."""
    slim = {key: record.get(key) for key in FIELDS}
    slim["events"] = [list(event) for event in record.get("events") or ()]
    return slim
