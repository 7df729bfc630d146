"""Call history: the calls every node ran, in the topology database (tables ``call``, ``call_event``).

Nodes export a summary of each call as it progresses (:class:`ecd.exporter.HistoryExporter`) and
operators page through them (``ecctl ls calls``). The write-ahead log of the node that owns a call
stays the authority on it; the history is a view that may lag behind by one export interval.

* :meth:`HistoryStore.write` upserts summaries (``INSERT .. ON CONFLICT (id) DO UPDATE``: the
  newest summary of a call replaces the previous one) and inserts its events
  (``ON CONFLICT (call_id, idx) DO NOTHING``: an event already stored is not stored twice), all in
  one transaction. A summary is a dict with the keys of :data:`FIELDS` plus ``events``
  (``[[name, time, note], ...]`` as the daemon keeps them; list position = ``idx``).
  ``error`` is a dict or None and is stored as JSON text.
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
import math
from collections.abc import Iterable, Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite

from ecd.errors import InvalidName, StoreUnavailable, TopologyError
from ecd.schema import CallEventModel, CallModel

__all__ = ["FIELDS", "FINISHED_STATES", "HistoryStore"]

log = logging.getLogger(__name__)

#: Columns of a call summary, in table order.
FIELDS = ("id", "seq", "owner", "node", "socket", "processor", "function", "state", "attempts",
          "created", "started", "finished", "worker", "error", "parent", "root")
#: States after which a call does not change any more.
FINISHED_STATES = ("done", "failed")
#: Rows per INSERT statement (keeps every statement under the drivers' bind-parameter limits).
CHUNK = 500

_CALL = CallModel.__table__
_EVENT = CallEventModel.__table__
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
                with conn.begin():
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
        """Upsert the summaries and insert the events not stored yet, in one transaction."""
        rows: dict[str, dict[str, Any]] = {}
        events: dict[tuple[str, int], dict[str, Any]] = {}
        for call in calls:
            row = _row(call)
            rows[row["id"]] = row  # a later summary of the same call wins
            for idx, event in enumerate(call.get("events") or ()):
                events[(row["id"], idx)] = _event_row(row["id"], idx, event)
        if not rows:
            return
        upsert = self._insert(_CALL)
        upsert = upsert.on_conflict_do_update(
            index_elements=[_CALL.c.id],
            set_={name: upsert.excluded[name] for name in FIELDS if name != "id"},
        )
        add_events = self._insert(_EVENT).on_conflict_do_nothing(index_elements=[_EVENT.c.call_id, _EVENT.c.idx])
        with self._begin(write=True) as conn:
            # Sorted by key: concurrent writers take row locks in one order (no deadlocks).
            for chunk in _chunks([rows[k] for k in sorted(rows)]):
                conn.execute(upsert, chunk)
            for chunk in _chunks([events[k] for k in sorted(events)]):
                conn.execute(add_events, chunk)

    def prune(self, before: float) -> int:
        """Delete finished calls with ``finished < before`` and their events; returns how many."""
        old = sa.select(_CALL.c.id).where(_CALL.c.finished.is_not(None), _CALL.c.finished < float(before))
        with self._begin(write=True) as conn:
            conn.execute(sa.delete(_EVENT).where(_EVENT.c.call_id.in_(old)))
            result = conn.execute(sa.delete(_CALL).where(_CALL.c.id.in_(old)))
        count = int(result.rowcount or 0)
        if count:
            log.debug("pruned %d call(s) finished before %s", count, before)
        return count

    # ------------------------------------------------------------------ reading

    def page(self, page: int, rows: int, *, unfinished: bool = False, socket: str | None = None) -> dict[str, Any]:
        """One page of summaries, newest first: ``{"total", "page", "pages", "rows", "calls"}``.

        ``pages`` is at least 1; a page past the last one has no calls. ``unfinished`` keeps the
        calls not done or failed; ``socket`` keeps the calls on that socket.
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

    def get(self, call_id: str) -> dict[str, Any] | None:
        """The call's summary with its ``events`` (``[[name, time, note], ...]``), or None."""
        with self._begin(snapshot=True) as conn:
            found = conn.execute(sa.select(*(_CALL.c[name] for name in FIELDS)).where(_CALL.c.id == call_id)).first()
            if found is None:
                return None
            events = conn.execute(
                sa.select(_EVENT.c.name, _EVENT.c.time, _EVENT.c.note)
                .where(_EVENT.c.call_id == call_id)
                .order_by(_EVENT.c.idx)
            ).all()
        out = _summary(found._mapping)
        out["events"] = [[name, time, note] for name, time, note in events]
        return out


# --------------------------------------------------------------------------- rows


def _row(call: dict[str, Any]) -> dict[str, Any]:
    """A summary dict as a ``call`` row (``error`` as JSON text)."""
    call_id = call.get("id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidName(f"call history: a call summary needs an id, not {call_id!r}")
    row = {name: call.get(name) for name in FIELDS}
    error = row["error"]
    row["error"] = None if error is None else json.dumps(error, default=str)
    if row["attempts"] is None:
        row["attempts"] = 0
    return row


def _event_row(call_id: str, idx: int, event: Any) -> dict[str, Any]:
    """``[name, time, note]`` (or a ``{"name", "time", "note"}`` dict) as a ``call_event`` row."""
    if isinstance(event, dict):
        name, when, note = event.get("name"), event.get("time"), event.get("note")
    else:
        name, when, note = (list(event) + [None, None, None])[:3]
    return {"call_id": call_id, "idx": idx, "name": str(name), "time": float(when or 0.0),
            "note": None if note is None else str(note)}


def _summary(row: Any) -> dict[str, Any]:
    """A ``call`` row as a summary dict (``error`` decoded)."""
    out = {name: row[name] for name in FIELDS}
    if out["error"] is not None:
        try:
            out["error"] = json.loads(out["error"])
        except ValueError:
            out["error"] = {"type": "Error", "message": out["error"], "traceback": ""}
    return out


def _chunks(items: list[dict[str, Any]]) -> Iterable[list[dict[str, Any]]]:
    for start in range(0, len(items), CHUNK):
        yield items[start:start + CHUNK]


def _first_line(error: sa_exc.DBAPIError | sa_exc.SQLAlchemyError) -> str:
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__
