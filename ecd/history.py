"""Call history: the calls every node ran, in the topology database (table ``call``).

Nodes export a summary of each call as it progresses (:class:`ecd.exporter.HistoryExporter`) and
operators page through them (``ecctl ls calls``). The write-ahead log of the node that owns a call
stays the authority on it; the history is a view that may lag behind by one export interval.

* :meth:`HistoryStore.write` upserts summaries (``INSERT .. ON CONFLICT (id) DO UPDATE``: the
  newest summary of a call replaces the previous one), in one transaction. A summary is a dict
  with the keys of :data:`FIELDS` plus ``events`` (``[[name, time, note], ...]`` as the daemon
  keeps them). ``error`` (a dict or None) is stored as JSON text and ``events`` packed with
  msgpack: one row per call, built mostly in C and sent in multi-row statements, is what keeps
  the export off the daemon's critical path (a row per event, or events as JSON, cost the node a
  sixth to a third of its throughput).
* :meth:`HistoryStore.page` lists summaries newest first (``created`` desc, then ``id``), without
  their events; :meth:`HistoryStore.get` returns one summary with its events.
* :meth:`HistoryStore.prune` deletes finished calls (and their events) older than a time.

The store works on the engine of a :class:`~ecd.topology.TopologyStore` (same database, SQLite or
PostgreSQL; the schema comes from the migrations). Every method runs in its own short
transaction, so one store can be used from several threads. Driver errors that mean the database
cannot be reached (or has no schema) raise :class:`~ecd.errors.StoreUnavailable`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import itertools
import math
import operator
from collections.abc import Iterator
from typing import Any

import msgpack
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite

from ecd.errors import InvalidName, StoreUnavailable, TopologyError
from ecd.schema import CallModel

__all__ = ["FIELDS", "FINISHED_STATES", "HistoryStore"]

log = logging.getLogger(__name__)

#: Columns of a call summary, in table order.
FIELDS = ("id", "seq", "owner", "node", "socket", "processor", "function", "state", "attempts",
          "created", "started", "finished", "worker", "error", "parent", "root", "kind", "via", "user")
#: States after which a call does not change any more.
FINISHED_STATES = ("done", "failed")

_CALL = CallModel.__table__
#: Rows per multi-row INSERT (17 columns: well under SQLite's 32,766 and PostgreSQL's 65,535
#: bind parameters).
ROWS_PER_STATEMENT = 500
_FIELD_VALUES = operator.itemgetter(*FIELDS)
_ERROR = FIELDS.index("error")
_ATTEMPTS = FIELDS.index("attempts")
#: SQLSTATEs of "undefined table" and "undefined column" (PostgreSQL): not migrated (yet).
_NOT_MIGRATED = ("42P01", "42703")
_SCHEMA_MISSING = "topology store unavailable: schema missing (run `ecd db migrate`)"


class HistoryStore:
    """Call summaries and events in the topology database (see the module docstring)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        if self.dialect == "postgresql":
            self._insert: Any = postgresql.insert
        elif self.dialect == "sqlite":
            self._insert = sqlite.insert
        else:
            raise TopologyError(f"call history: unsupported database {self.dialect!r} (sqlite or postgresql)")
        self._upserts: dict[int, str] = {}

    # ------------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def _begin(self, *, write: bool = False, snapshot: bool = False) -> Iterator[sa.Connection]:
        """One transaction; commits on success and maps driver errors like the topology store.

        ``write``: on a TopologyStore's SQLite engine the transaction starts with ``BEGIN
        IMMEDIATE`` (its ``ecd_write`` option), so writers queue on the busy timeout.
        ``snapshot``: PostgreSQL reads at REPEATABLE READ (count and rows agree).
        """
        engine = self.engine.execution_options(ecd_write=True) if write else self.engine
        try:
            with engine.connect() as conn:
                if snapshot and self.dialect == "postgresql":
                    conn = conn.execution_options(isolation_level="REPEATABLE READ")
                if write and self.dialect == "sqlite":
                    with _lazy_sqlite_sync(conn), conn.begin():
                        yield conn
                    return
                with conn.begin():
                    if write:
                        # the history is a view of the nodes' logs, which stay the authority: its
                        # commits need not wait for the disk (and must not delay the logs' fsyncs)
                        conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
                    yield conn
        except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError) as e:
            detail = _first_line(e)
            if "no such table" in detail or "no such column" in detail:
                raise StoreUnavailable(_SCHEMA_MISSING) from e
            log.debug("call history unavailable (%s): %s", self._url(), detail)  # callers report it
            raise StoreUnavailable(f"topology store unavailable: {detail}") from e
        except sa_exc.ProgrammingError as e:
            if getattr(e.orig, "sqlstate", None) in _NOT_MIGRATED:
                raise StoreUnavailable(_SCHEMA_MISSING) from e
            raise
        except sa_exc.DBAPIError as e:
            if e.connection_invalidated:
                raise StoreUnavailable(f"topology store unavailable: {_first_line(e)}") from e
            raise

    def _url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    # ------------------------------------------------------------------ writing

    def write(self, calls: list[dict[str, Any]]) -> None:
        """Upsert the summaries (with their events), in one transaction.

        Rows go in multi-row ``INSERT .. VALUES (..), (..)`` statements of :data:`ROWS_PER_STATEMENT`:
        one driver call per statement rather than per row keeps the writing thread from taking
        the interpreter lock back from the daemon's loop thousands of times per batch.
        """
        rows: dict[str, tuple[Any, ...]] = {}
        for call in calls:
            row = _row(call)
            rows[row[0]] = row  # a later summary of the same call wins
        if not rows:
            return
        # Sorted by key: concurrent writers take row locks in one order (no deadlocks).
        ordered = [rows[k] for k in sorted(rows)]
        with self._begin(write=True) as conn:
            start = 0
            while start < len(ordered):
                # full statements, then the tail in power-of-two sizes: a handful of statement
                # texts, built once, whatever the batch sizes
                left = len(ordered) - start
                size = ROWS_PER_STATEMENT if left >= ROWS_PER_STATEMENT else 1 << (left.bit_length() - 1)
                chunk = ordered[start:start + size]
                conn.exec_driver_sql(self._upsert_sql(size), tuple(itertools.chain.from_iterable(chunk)))
                start += size

    def _upsert_sql(self, rows: int) -> str:
        sql = self._upserts.get(rows)
        if sql is None:
            preparer = self.engine.dialect.identifier_preparer
            columns = (*FIELDS, "events")
            mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
            names = ", ".join(preparer.quote(c) for c in columns)
            one = "(" + ", ".join(mark for _ in columns) + ")"
            updates = ", ".join(f"{preparer.quote(c)} = excluded.{preparer.quote(c)}" for c in columns if c != "id")
            sql = (f"INSERT INTO {preparer.quote(_CALL.name)} ({names}) VALUES {', '.join([one] * rows)} "
                   f"ON CONFLICT ({preparer.quote('id')}) DO UPDATE SET {updates}")
            self._upserts[rows] = sql  # at most 10 sizes: ROWS_PER_STATEMENT and powers of two
        return sql

    def prune(self, before: float) -> int:
        """Delete finished calls with ``finished < before``; returns how many."""
        with self._begin(write=True) as conn:
            result = conn.execute(
                sa.delete(_CALL).where(_CALL.c.finished.is_not(None), _CALL.c.finished < float(before)))
        count = int(result.rowcount or 0)
        if count:
            log.debug("pruned %d call(s) finished before %s", count, before)
        return count

    # ------------------------------------------------------------------ reading

    def page(self, page: int, rows: int, *, unfinished: bool = False, socket: str | None = None,
             user: str | None = None) -> dict[str, Any]:
        """One page of summaries, newest first: ``{"total", "page", "pages", "rows", "calls"}``.

        ``pages`` is at least 1; a page past the last one has no calls. ``unfinished`` keeps the
        calls not done or failed; ``socket`` keeps the calls on that socket, ``user`` those that
        user sent.
        """
        if isinstance(page, bool) or not isinstance(page, int) or page < 1:
            raise InvalidName(f"page must be an integer >= 1, not {page!r}")
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise InvalidName(f"rows must be an integer >= 1, not {rows!r}")
        where: list[Any] = []
        if unfinished:
            where.append(_CALL.c.state.not_in(FINISHED_STATES))
        if socket is not None:
            where.append(_CALL.c.socket == socket)
        if user is not None:
            where.append(_CALL.c.user == user)
        query = (
            sa.select(*(_CALL.c[name] for name in FIELDS))
            .where(*where)
            .order_by(_CALL.c.created.desc(), _CALL.c.id)
            .limit(rows)
            .offset((page - 1) * rows)
        )
        with self._begin(snapshot=True) as conn:
            total = int(conn.execute(sa.select(sa.func.count()).select_from(_CALL).where(*where)).scalar_one())
            calls = [_summary(r._mapping) for r in conn.execute(query)]
        return {"total": total, "page": page, "pages": max(1, math.ceil(total / rows)), "rows": rows,
                "calls": calls}

    def run(self, root: str, limit: int = 5000) -> list[dict[str, Any]]:
        """The summaries of every call of the run whose root call is ``root`` (the root too),
        oldest first, at most ``limit``."""
        query = (sa.select(*(_CALL.c[name] for name in FIELDS))
                 .where(sa.or_(_CALL.c.root == root, _CALL.c.id == root))
                 .order_by(_CALL.c.created, _CALL.c.id).limit(limit))
        with self._begin(snapshot=True) as conn:
            return [_summary(r._mapping) for r in conn.execute(query)]

    def get(self, call_id: str) -> dict[str, Any] | None:
        """The call's summary with its ``events`` (``[[name, time, note], ...]``), or None."""
        with self._begin(snapshot=True) as conn:
            found = conn.execute(
                sa.select(*(_CALL.c[name] for name in FIELDS), _CALL.c.events).where(_CALL.c.id == call_id)
            ).first()
        if found is None:
            return None
        out = _summary(found._mapping)
        try:
            events = msgpack.unpackb(found.events, raw=False) if found.events else []
        except (ValueError, msgpack.UnpackException):
            events = []
        out["events"] = [list(event) for event in events if isinstance(event, list)]
        return out


# --------------------------------------------------------------------------- rows


def _row(call: dict[str, Any]) -> tuple[Any, ...]:
    """A summary dict (or a whole call record: only :data:`FIELDS` and ``events`` are read) as a
    ``call`` row: the values of :data:`FIELDS` then ``events``, with ``error`` as JSON text and
    ``events`` packed. This runs once per exported call, so the common case stays in C."""
    try:
        values = list(_FIELD_VALUES(call))
    except KeyError:
        values = [call.get(name) for name in FIELDS]
    if not isinstance(values[0], str) or not values[0]:
        raise InvalidName(f"call history: a call summary needs an id, not {values[0]!r}")
    if values[_ERROR] is not None:
        values[_ERROR] = json.dumps(values[_ERROR], default=str)
    if values[_ATTEMPTS] is None:
        values[_ATTEMPTS] = 0
    events = call.get("events") or ()
    if events and (type(events[0]) is not list or len(events[0]) != 3):
        events = [_event(event) for event in events]  # not the daemon's [name, time, note] lists
    values.append(msgpack.packb(events, use_bin_type=True, default=str))
    return tuple(values)




def _event(event: Any) -> list[Any]:
    """``[name, time, note]`` (or a ``{"name", "time", "note"}`` dict) as stored."""
    if isinstance(event, dict):
        name, when, note = event.get("name"), event.get("time"), event.get("note")
    else:
        name, when, note = (list(event) + [None, None, None])[:3]
    return [str(name), float(when or 0.0), None if note is None else str(note)]


def _summary(row: Any) -> dict[str, Any]:
    """A ``call`` row as a summary dict (``error`` decoded)."""
    out = {name: row[name] for name in FIELDS}
    if out["error"] is not None:
        try:
            out["error"] = json.loads(out["error"])
        except ValueError:
            out["error"] = {"type": "Error", "message": out["error"], "traceback": ""}
    return out


@contextlib.contextmanager
def _lazy_sqlite_sync(conn: sa.Connection) -> Iterator[None]:
    """SQLite commits without fsync (``synchronous = NORMAL``: WAL-safe, may lose the newest
    history on power loss) for one transaction; the pooled connection gets ``FULL`` back after,
    so topology writes on it stay fully durable."""
    raw = conn.connection.driver_connection
    raw.execute("PRAGMA synchronous = NORMAL")
    try:
        yield
    finally:
        raw.execute("PRAGMA synchronous = FULL")


def _first_line(error: sa_exc.DBAPIError | sa_exc.SQLAlchemyError) -> str:
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__
