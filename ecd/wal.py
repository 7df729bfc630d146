"""Write-ahead log of calls: LMDB storage plus a group-commit writer thread.

This is the only module of ElasticCode that imports :mod:`lmdb`.

Layout (one environment at ``<data-dir>/wal/``, ``sync=True, metasync=True``)::

    calls    call id (utf-8)              -> record
    byseq    seq (8 bytes, big endian)    -> call id
    pending  seq                          -> call id      non-terminal records only
    dead     seq                          -> call id      records in state ``failed``
    meta     b"node_id", b"seq"           -> str, int     (seq: saved before each sweep)

Each commit touches as few databases as it can (each one costs pages to fsync): there is no
expiry index; the sweep walks byseq from the oldest record and stops at the first one created
after the TTL cutoff.

Every stored value is ``crc32(body)`` (4 bytes, big endian) followed by ``body``, the msgpack
encoding of the value; a mismatch raises :class:`~ecd.errors.CorruptRecord` on read.

Concurrency model:

* The event-loop thread calls :meth:`Wal.next_seq`, :meth:`Wal.submit` and :meth:`Wal.drain`.
  ``submit`` validates and packs the records at once (so the caller may mutate its dicts
  afterwards) and never waits for the disk.
* One writer thread takes everything queued (up to ``batch_records``, never splitting a
  submit), applies it in a single write transaction, commits (fsync) and only then reports the
  tokens through ``drain()`` plus one byte on ``wake_fd``. A commit that fails reports a
  :class:`~ecd.errors.CommitFailed` for every token of the batch; none is acknowledged. An
  EIO-like failure also sets :attr:`Wal.fatal`: after it nothing is ever acknowledged again.
* Reads (``get``, ``pending``, ``recent``, ``stats``, ``copy``) use short read transactions
  under ``_read_lock``; the writer takes the same lock around ``set_mapsize`` because LMDB
  requires that no transaction is active in the process while the map is resized.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import msgpack

from ecd.errors import CommitFailed, CorruptRecord, WalError

__all__ = ["Wal", "TERMINAL_STATES", "DEFAULT_MAP_SIZE", "DEFAULT_RESULT_TTL"]

log = logging.getLogger(__name__)

#: Initial LMDB map size; doubled whenever a write hits ``MapFullError``.
DEFAULT_MAP_SIZE = 256 << 20
#: Seconds a finished record is kept before the writer sweeps it.
DEFAULT_RESULT_TTL = 86400.0
#: Upper bound of records per write transaction (a single submit is never split).
DEFAULT_BATCH_RECORDS = 2000
#: Seconds between sweeps of expired records.
DEFAULT_SWEEP_INTERVAL = 5.0
#: Longest a batch of lingering submits waits for company before its commit (seconds).
LINGER_S = 0.0005
#: Largest map the writer will grow to before giving up on a batch.
MAX_MAP_SIZE = 1 << 40
#: Records read per read transaction while iterating ``pending()``.
_PENDING_CHUNK = 512
#: Expired records deleted per sweep transaction.
_SWEEP_CHUNK = 1000
#: Sweep transactions per writer wake-up, so that a large backlog does not starve commits.
_SWEEP_MAX_CHUNKS = 10

TERMINAL_STATES = frozenset({"done", "failed"})

_DB_NAMES = (b"calls", b"byseq", b"pending", b"dead", b"meta")
_META_NODE_ID = b"node_id"
_META_SEQ = b"seq"
_MAX_SEQ = (1 << 64) - 1
_FATAL_ERRNOS = frozenset({errno.EIO})
# After a failed write or fsync the state of the page cache is unknown (fsyncgate): stop acking.
# LMDB reports a short write (a full disk) as EIO; ENOSPC (DiskError) is treated the same.
_FATAL_TYPES = (lmdb.PanicError, lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.DiskError)
_STOP = object()


# --------------------------------------------------------------------------- encoding


def _pack(obj: Any) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return zlib.crc32(body).to_bytes(4, "big") + body


def _unpack(value: bytes, what: str) -> Any:
    if len(value) < 5:
        raise CorruptRecord(f"{what}: value too short ({len(value)} bytes)")
    body = value[4:]
    if zlib.crc32(body) != int.from_bytes(value[:4], "big"):
        raise CorruptRecord(f"{what}: checksum mismatch")
    try:
        return msgpack.unpackb(body, raw=False)
    except Exception as e:  # checksum matched but the body is not msgpack: still corrupt
        raise CorruptRecord(f"{what}: undecodable body: {e}") from e


def _seq_key(seq: int) -> bytes:
    return seq.to_bytes(8, "big")


class _Item:
    """One packed record, ready for the writer."""

    __slots__ = ("id_b", "seq", "state", "finished", "value")

    def __init__(self, rec: dict) -> None:
        call_id, seq, state, finished = (rec.get(k) for k in ("id", "seq", "state", "finished"))
        if not isinstance(call_id, str) or not 0 < len(call_id.encode("utf-8")) <= 511:
            raise ValueError(f"record id must be a str of 1..511 utf-8 bytes, got {call_id!r}")
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= _MAX_SEQ:
            raise ValueError(f"record {call_id!r}: seq must be an int in [0, 2**64), got {seq!r}")
        if not isinstance(state, str):
            raise ValueError(f"record {call_id!r}: state must be a str, got {state!r}")
        if finished is not None and not isinstance(finished, (int, float)):
            raise ValueError(f"record {call_id!r}: finished must be a number or None")
        self.id_b = call_id.encode("utf-8")
        self.seq = seq
        self.state = state
        self.finished = float(finished) if finished is not None else None
        self.value = _pack(rec)  # TypeError here for unpackable values, in the caller


# --------------------------------------------------------------------------- the log


class Wal:
    """LMDB write-ahead log of call records with a group-commit writer thread."""

    def __init__(
        self,
        path: Path,
        *,
        map_size: int = DEFAULT_MAP_SIZE,
        result_ttl: float = DEFAULT_RESULT_TTL,
        batch_records: int = DEFAULT_BATCH_RECORDS,
        sweep_interval: float = DEFAULT_SWEEP_INTERVAL,
    ) -> None:
        self.path = Path(path)
        self.result_ttl = float(result_ttl)
        self.batch_records = max(1, int(batch_records))
        self.sweep_interval = float(sweep_interval)
        self.fatal = False
        self.fatal_error: str | None = None
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self._env = lmdb.open(str(self.path), map_size=map_size, max_dbs=len(_DB_NAMES) + 2,
                                  subdir=True, sync=True, metasync=True, lock=True)
        except lmdb.Error as e:
            raise WalError(f"cannot open write-ahead log {self.path}: {e}") from e
        try:
            stale = self._env.reader_check()
            if stale:
                log.warning("wal: cleared %d stale reader slot(s) in %s", stale, self.path)
            self._map_size = int(self._env.info()["map_size"])
            self._dbs = {name.decode(): self._env.open_db(name) for name in _DB_NAMES}
            self.node_id, self._seq = self._load_meta()
            self._committed_seq = self._seq
            self._sweep_from = b""  # byseq key the next sweep chunk starts from
        except BaseException as e:
            self._env.close()
            if isinstance(e, lmdb.Error):
                raise WalError(f"cannot open write-ahead log {self.path}: {e}") from e
            raise
        self._read_lock = threading.Lock()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._done: list[tuple[object, Exception | None]] = []
        self._done_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.wake_fd = self._wake_r
        self._thread: threading.Thread | None = None
        self._closing = False
        self._closed = False
        self._counters = {
            "commits": 0, "records": 0, "submits": 0, "failed_commits": 0, "map_grows": 0,
            "sweeps": 0, "swept": 0, "max_batch": 0,
        }
        self._last_commit_s = 0.0
        log.info("wal: opened %s node_id=%s seq=%d map=%d", self.path, self.node_id, self._seq,
                 self._map_size)

    # ----------------------------------------------------------------- open helpers

    def _load_meta(self) -> tuple[str, int]:
        meta = self._dbs["meta"]
        with self._env.begin(write=True) as txn:
            raw = txn.get(_META_NODE_ID, db=meta)
            if raw is None:
                node_id = str(uuid.uuid4())
                txn.put(_META_NODE_ID, _pack(node_id), db=meta)
                log.info("wal: new node id %s", node_id)
            else:
                node_id = _unpack(raw, "meta node_id")
            raw = txn.get(_META_SEQ, db=meta)
            seq = 0
            if raw is not None:
                try:
                    seq = int(_unpack(raw, "meta seq"))
                except CorruptRecord:
                    log.error("wal: meta seq is corrupt; recomputing from the indexes")
            for name in ("byseq", "pending", "dead"):
                cur = txn.cursor(db=self._dbs[name])
                if cur.last():
                    seq = max(seq, int.from_bytes(cur.key(), "big"))
        return node_id, seq

    # ----------------------------------------------------------------- loop-thread API

    def start(self) -> None:
        """Start the writer thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._writer, name="wal-writer", daemon=True)
            self._thread.start()

    def next_seq(self) -> int:
        """Return the next sequence number; monotonic across restarts. Loop thread only."""
        self._seq += 1
        return self._seq

    def submit(self, token: object, records: list[dict], linger: bool = False) -> None:
        """Queue ``records`` for one atomic commit; ``token`` comes back through :meth:`drain`.

        The records are validated and packed now (ValueError / TypeError in the caller), so the
        dicts may be mutated afterwards. Never blocks on the disk.

        ``linger`` says a follow-up write is expected very soon (a call accepted while a worker
        is already running it): when everything queued lingers, the writer waits up to
        ``LINGER_S`` for company before committing, so one fsync can cover both writes. A
        submit without ``linger`` ends the wait at once.
        """
        if self._closing:
            raise WalError("write-ahead log is closed")
        items = [_Item(rec) for rec in records]
        self._queue.put((token, items, linger))

    def drain(self) -> list[tuple[object, Exception | None]]:
        """Return ``(token, None | CommitFailed)`` for every batch finished since the last call,
        in commit order, and empty the wake pipe."""
        if not self._closed:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except (BlockingIOError, OSError):
                pass
        with self._done_lock:
            done, self._done = self._done, []
        return done

    # ----------------------------------------------------------------- reads

    def get(self, call_id: str) -> dict | None:
        """Return the record of ``call_id`` or None; CorruptRecord if its checksum fails."""
        with self._read_lock, self._env.begin() as txn:
            raw = txn.get(call_id.encode("utf-8"), db=self._dbs["calls"])
        return None if raw is None else _unpack(raw, f"call {call_id}")

    def pending(self) -> Iterator[dict]:
        """Yield every non-terminal record in seq order; corrupt ones are logged and skipped.

        Reads in chunks, each in its own short read transaction, so the caller may take its
        time between items without pinning old pages.
        """
        after = b""
        while True:
            chunk: list[tuple[bytes, bytes, bytes | None]] = []
            with self._read_lock, self._env.begin() as txn:
                cur = txn.cursor(db=self._dbs["pending"])
                found = cur.set_range(after) if after else cur.first()
                if found and after and cur.key() == after:
                    found = cur.next()
                while found and len(chunk) < _PENDING_CHUNK:
                    key, id_raw = cur.item()
                    rec_raw = None
                    try:
                        id_b = _unpack(id_raw, "pending index").encode("utf-8")
                        rec_raw = txn.get(id_b, db=self._dbs["calls"])
                    except CorruptRecord as e:
                        log.error("wal: skipping pending seq %d: %s",
                                  int.from_bytes(key, "big"), e)
                    chunk.append((key, id_raw, rec_raw))
                    found = cur.next()
            if not chunk:
                return
            for key, _id_raw, rec_raw in chunk:
                if rec_raw is None:
                    continue
                try:
                    rec = _unpack(rec_raw, f"pending seq {int.from_bytes(key, 'big')}")
                except CorruptRecord as e:
                    log.error("wal: skipping corrupt record: %s", e)
                    continue
                yield rec
            after = chunk[-1][0]

    def recent(self, limit: int, offset: int, unfinished: bool = False) -> tuple[int, list[dict]]:
        """Return ``(total, records)`` newest first (by seq); ``unfinished`` lists only
        non-terminal records. Corrupt records are logged and skipped."""
        db = self._dbs["pending" if unfinished else "byseq"]
        out: list[dict] = []
        with self._read_lock, self._env.begin() as txn:
            total = int(txn.stat(db)["entries"])
            cur = txn.cursor(db=db)
            found = cur.last()
            skip = max(0, offset)
            while found and skip:
                skip -= 1
                found = cur.prev()
            raws: list[tuple[int, bytes | None]] = []
            while found and len(raws) < max(0, limit):
                key, id_raw = cur.item()
                seq = int.from_bytes(key, "big")
                try:
                    id_b = _unpack(id_raw, "seq index").encode("utf-8")
                    raws.append((seq, txn.get(id_b, db=self._dbs["calls"])))
                except CorruptRecord as e:
                    log.error("wal: skipping seq %d: %s", seq, e)
                found = cur.prev()
        for seq, raw in raws:
            if raw is None:
                continue
            try:
                out.append(_unpack(raw, f"seq {seq}"))
            except CorruptRecord as e:
                log.error("wal: skipping corrupt record: %s", e)
        return total, out

    def stats(self) -> dict:
        """Counters and sizes, for the ``status`` admin op and benchmarks."""
        out: dict[str, Any] = dict(self._counters)
        out.update(path=str(self.path), node_id=self.node_id, seq=self._seq,
                   map_size=self._map_size, fatal=self.fatal, fatal_error=self.fatal_error,
                   queued=self._queue.qsize(), result_ttl=self.result_ttl,
                   last_commit_ms=round(self._last_commit_s * 1000, 3))
        if not self._closed:
            with self._read_lock:
                info = self._env.info()
                stat = self._env.stat()
                with self._env.begin() as txn:
                    for name in ("calls", "pending", "dead"):
                        out[name] = int(txn.stat(self._dbs[name])["entries"])
            out["expiry"] = out["calls"] - out["pending"]  # finished records waiting for the sweep
            out["used_bytes"] = (int(info["last_pgno"]) + 1) * int(stat["psize"])
        return out

    def copy(self, path: Path) -> None:
        """Hot backup: write a compacted copy of the environment into directory ``path``.

        Holds the read lock for the duration, so a concurrent map growth waits for it.
        """
        target = Path(path)
        target.mkdir(parents=True, exist_ok=True)
        with self._read_lock:
            self._env.copy(str(target), compact=True)

    # ----------------------------------------------------------------- shutdown

    def close(self) -> None:
        """Commit everything submitted so far, stop the writer and close the environment.

        Outcomes of the final batches stay available through :meth:`drain`; ``wake_fd`` is
        closed, so unregister it from any poller first.
        """
        if self._closed:
            return
        self._closing = True
        self.start()  # so that whatever was submitted before start() still gets committed
        self._queue.put(_STOP)
        assert self._thread is not None
        self._thread.join()
        self._closed = True
        with self._read_lock:
            self._env.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        log.info("wal: closed %s", self.path)

    def __enter__(self) -> Wal:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- writer thread

    def _writer(self) -> None:
        last_sweep = time.monotonic()
        stopping = False
        while not stopping:
            timeout = max(0.05, self.sweep_interval - (time.monotonic() - last_sweep))
            try:
                nxt = self._queue.get(timeout=timeout)
            except queue.Empty:
                nxt = None
            batch: list[tuple[object, list[_Item]]] = []
            n = 0
            lingering = True
            linger_until = 0.0
            while nxt is not None:
                if nxt is _STOP:
                    stopping = True
                    break
                token, items, linger = nxt
                batch.append((token, items))
                n += len(items)
                lingering = lingering and linger
                if n >= self.batch_records:
                    break
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    nxt = None
                    if lingering and LINGER_S > 0:
                        now = time.monotonic()
                        linger_until = linger_until or now + LINGER_S
                        if now < linger_until:
                            try:
                                nxt = self._queue.get(timeout=linger_until - now)
                            except queue.Empty:
                                nxt = None
            try:
                if batch:
                    self._commit_batch(batch, n)
                if not stopping and time.monotonic() - last_sweep >= self.sweep_interval:
                    more = self._sweep_safely()
                    # with more left, come back soon (not after every commit: a sweep round
                    # is bounded work, but it runs in the writer, ahead of the next commit)
                    last_sweep = time.monotonic() - (self.sweep_interval * 0.9 if more else 0.0)
            except Exception:  # noqa: BLE001 - a dead writer would hang every caller
                log.exception("wal: writer error")
        while True:  # submits racing with close(): report them, never drop them silently
            try:
                late = self._queue.get_nowait()
            except queue.Empty:
                break
            if late is not _STOP:
                self._report([late[:2]], CommitFailed("write-ahead log closed"))

    def _commit_batch(self, batch: list[tuple[object, list[_Item]]], n: int) -> None:
        error: CommitFailed | None = None
        if self.fatal:
            error = CommitFailed(f"write-ahead log is unusable: {self.fatal_error}")
        else:
            try:
                self._write_with_growth(batch)
            except Exception as e:  # noqa: BLE001 - every failure must become a CommitFailed
                error = CommitFailed(f"commit of {len(batch)} submit(s) failed: {e}")
                self._counters["failed_commits"] += 1
                if isinstance(e, _FATAL_TYPES) or getattr(e, "code", None) in _FATAL_ERRNOS \
                        or getattr(e, "errno", None) in _FATAL_ERRNOS:
                    self.fatal = True
                    self.fatal_error = f"{type(e).__name__}: {e}"
                    log.critical("wal: FATAL storage error, no further commits: %s", e)
                else:
                    log.error("wal: commit failed: %s", e)
        if error is None:
            self._counters["commits"] += 1
            self._counters["records"] += n
            self._counters["max_batch"] = max(self._counters["max_batch"], n)
        self._report(batch, error)

    def _report(self, batch: list[tuple[object, list[_Item]]], error: CommitFailed | None) -> None:
        self._counters["submits"] += len(batch)
        with self._done_lock:
            if error is None:
                self._done.extend((token, None) for token, _ in batch)
            else:
                self._done.extend((token, CommitFailed(error.message)) for token, _ in batch)
        try:
            os.write(self._wake_w, b"\x01")
        except BlockingIOError:
            pass  # the pipe is full, so it is readable already

    def _write_with_growth(self, batch: list[tuple[object, list[_Item]]]) -> None:
        while True:
            try:
                t0 = time.perf_counter()
                with self._env.begin(write=True) as txn:
                    self._apply(txn, batch)
                self._last_commit_s = time.perf_counter() - t0
                return
            except lmdb.MapFullError:
                self._grow()

    def _grow(self) -> None:
        new_size = self._map_size * 2
        if new_size > MAX_MAP_SIZE:
            raise WalError(f"map would exceed {MAX_MAP_SIZE} bytes")
        with self._read_lock:
            self._env.set_mapsize(new_size)
        self._map_size = new_size
        self._counters["map_grows"] += 1
        log.info("wal: map grown to %d bytes", new_size)

    def _apply(self, txn: Any, batch: list[tuple[object, list[_Item]]]) -> None:
        d = self._dbs
        calls, byseq, pending, dead, meta = (d[n.decode()] for n in _DB_NAMES)
        max_seq = 0
        for _token, items in batch:
            for it in items:
                skey = _seq_key(it.seq)
                fresh = txn.get(it.id_b, db=calls) is None
                # The common rewrite (same call, same seq, previously unfinished) only needs its
                # pending entry dropped or kept: no need to decode the old record.
                was_pending = not fresh and txn.get(skey, db=pending) is not None
                if not fresh and not was_pending:
                    self._unindex(txn, it.id_b, txn.get(it.id_b, db=calls), it.seq)
                txn.put(it.id_b, it.value, db=calls)
                id_val = _pack(it.id_b.decode("utf-8")) if not was_pending or it.state == "failed" else b""
                if not was_pending:
                    txn.put(skey, id_val, db=byseq)
                if it.state in TERMINAL_STATES:
                    if was_pending:
                        txn.delete(skey, db=pending)
                    if it.state == "failed":
                        txn.put(skey, id_val, db=dead)
                    elif not fresh and not was_pending:
                        txn.delete(skey, db=dead)
                else:
                    if not was_pending:
                        txn.put(skey, id_val, db=pending)
                    if not fresh and not was_pending:
                        txn.delete(skey, db=dead)
                max_seq = max(max_seq, it.seq)
        # The highest seq is not written here: every record's seq is in byseq, and open takes
        # the maximum from there (one DB fewer per commit, so one fewer page to fsync). The
        # sweep, which may delete the newest records, writes it to meta first.
        self._committed_seq = max(self._committed_seq, max_seq)

    def _save_seq(self, txn: Any) -> None:
        """Keep meta's seq at least the highest committed one (seq never goes back)."""
        meta = self._dbs["meta"]
        raw = txn.get(_META_SEQ, db=meta)
        try:
            stored = int(_unpack(raw, "meta seq")) if raw is not None else 0
        except CorruptRecord:
            stored = 0
        if self._committed_seq > stored:
            txn.put(_META_SEQ, _pack(self._committed_seq), db=meta)

    def _unindex(self, txn: Any, id_b: bytes, old_raw: bytes, new_seq: int) -> None:
        """Drop the index entries of a record about to be overwritten, where they differ."""
        try:
            old = _unpack(old_raw, "old record")
        except CorruptRecord:
            return  # its index entries are overwritten or swept later
        old_seq = old.get("seq")
        if isinstance(old_seq, int) and old_seq != new_seq and 0 <= old_seq <= _MAX_SEQ:
            k = _seq_key(old_seq)
            for name in ("byseq", "pending", "dead"):
                txn.delete(k, db=self._dbs[name])

    # ----------------------------------------------------------------- sweep

    def _sweep_safely(self) -> bool:
        """Run one bounded sweep; True when expired records are left for the next round."""
        if self.fatal:
            return False
        try:
            return self._sweep(time.time(), _SWEEP_MAX_CHUNKS)[1]
        except Exception as e:  # noqa: BLE001 - the sweep must not kill the writer
            log.error("wal: sweep failed: %s", e)
            return False

    def sweep(self, now: float | None = None) -> int:
        """Delete terminal records whose ``finished + result_ttl`` is before ``now``; return
        how many. The writer does this by itself; call it only while the writer is not running.
        """
        return self._sweep(time.time() if now is None else now, 0)[0]

    def _sweep(self, now: float, max_chunks: int) -> tuple[int, bool]:
        """Sweep in transactions of ``_SWEEP_CHUNK`` records, at most ``max_chunks`` of them
        (0: no limit) so that commits are not starved. Returns (deleted, more left)."""
        cutoff_ms = int((now - self.result_ttl) * 1000)
        total, chunks, more = 0, 0, False
        while not max_chunks or chunks < max_chunks:
            chunks += 1
            try:
                n, more = self._sweep_chunk(cutoff_ms)
            except lmdb.MapFullError:
                self._grow()
                continue
            total += n
            if not more:
                break
        self._counters["sweeps"] += 1
        self._counters["swept"] += total
        if total:
            log.info("wal: swept %d expired record(s)", total)
        return total, more

    def _sweep_chunk(self, cutoff_ms: int) -> tuple[int, bool]:
        """Walk byseq from the oldest record: delete finished records whose ``finished`` is
        before the cutoff; stop at the first record *created* after the cutoff (everything later
        is newer still). Unfinished old records are kept and stepped over."""
        calls, byseq = self._dbs["calls"], self._dbs["byseq"]
        deleted = scanned = 0
        with self._env.begin(write=True) as txn:
            self._save_seq(txn)
            cur = txn.cursor(db=byseq)
            # resume where the last chunk stopped: old unfinished records are stepped over once
            # per pass, not once per chunk
            found = cur.set_range(self._sweep_from) if self._sweep_from else cur.first()
            while found:
                if deleted >= _SWEEP_CHUNK or scanned >= 4 * _SWEEP_CHUNK:
                    self._sweep_from = cur.key()
                    return deleted, True
                scanned += 1
                key = cur.key()
                try:
                    id_b = str(_unpack(cur.value(), "byseq index")).encode("utf-8")
                    raw = txn.get(id_b, db=calls)
                    record = _unpack(raw, "swept record") if raw is not None else None
                except CorruptRecord:
                    found = cur.next()  # left for an operator to look at
                    continue
                if record is None:  # an index entry without its record
                    cur.delete()
                    found = bool(cur.key())
                    continue
                created = record.get("created")
                if isinstance(created, (int, float)) and created * 1000 >= cutoff_ms:
                    self._sweep_from = b""  # a full pass is done: the next one starts over
                    return deleted, False
                finished = record.get("finished")
                if (record.get("state") in TERMINAL_STATES and isinstance(finished, (int, float))
                        and finished * 1000 < cutoff_ms):
                    txn.delete(id_b, db=calls)
                    for name in ("pending", "dead"):
                        txn.delete(key, db=self._dbs[name])
                    cur.delete()  # moves to the next entry, if any
                    found = bool(cur.key())
                    deleted += 1
                else:
                    found = cur.next()
        self._sweep_from = b""
        return deleted, False
