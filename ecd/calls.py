"""Call records and their life cycle: queued -> running -> done | retrying -> ... | failed.

A call record is a plain dict (it is what the write-ahead log stores, as msgpack). The functions
here are the only place that changes a record's state, so every transition appends its event
with a timestamp and keeps ``attempts``, ``started``, ``finished`` and ``error`` consistent.

Records are of three kinds (``kind``; a record without one is a call):

* ``call``: a call of a socket's function, run by a worker;
* ``flow``: a workflow (pipeline / parallel / funnel) submitted as one record: it is ``running``
  until its last step ends, holds its graph and the results of the steps that ended, and is
  never run by a worker (:mod:`ecd.workflow`);
* ``join``: a call of a target socket whose named arguments arrive through plugs; it is
  ``waiting`` until all of them are there, then becomes a queued call (:mod:`ecd.dataflow`).

Provenance: every record names its ``parent`` (the call whose end made it, None for a call a
client sent), its ``root`` (the first call of its run) and ``via`` (what made it: ``plug NAME``,
``step PATH``, ``tick TIME``); a finished record lists the ``children`` its end made.
"""

from __future__ import annotations

import hashlib
import re
import time
from typing import Any

WAITING = "waiting"
QUEUED = "queued"
RUNNING = "running"
RETRYING = "retrying"
DONE = "done"
FAILED = "failed"
TERMINAL = frozenset({DONE, FAILED})
#: Every state a record may be in.
STATES = frozenset({WAITING, QUEUED, RUNNING, RETRYING, DONE, FAILED})

CALL = "call"
FLOW = "flow"
JOIN = "join"
KINDS = frozenset({CALL, FLOW, JOIN})

#: Fields of a record shown to users (``ecctl ls call``); the rest are internal.
PUBLIC_FIELDS = (
    "id", "seq", "owner", "node", "socket", "processor", "function", "state", "attempts",
    "max_retries", "created", "started", "finished", "worker", "error", "parent", "root",
    "kind", "via", "children", "flow", "step", "parents", "user",
)


def kind_of(record: dict[str, Any]) -> str:
    """``call``, ``flow`` or ``join`` (records written before kinds existed are calls)."""
    return record.get("kind") or CALL


def runnable(record: dict[str, Any]) -> bool:
    """Does this record wait for a worker (a call, or a join with all its arguments)?"""
    return kind_of(record) != FLOW and record.get("state") in (QUEUED, RETRYING, RUNNING)


#: Ids of records the daemons make (plug calls, joins, workflow steps, ticks): clients may
#: not send calls with such ids (they would stand in for the records the daemons make).
DERIVED_ID_RE = re.compile(r"[pjst]-[0-9a-f]{32}")


def derived_id(prefix: str, *parts: str) -> str:
    """A call id made from what caused the call (``prefix`` + 32 hex digits): the same causes
    always give the same id, so a cause that happens twice (an upstream call that ran again)
    still makes one call."""
    digest = hashlib.blake2b("\x00".join(parts).encode("utf-8"), digest_size=16).hexdigest()
    return f"{prefix}-{digest}"


def new_record(
    *,
    call_id: str,
    seq: int,
    owner: str,
    node: str,
    socket: str,
    processor: str,
    function: str,
    args: bytes,
    kwargs: bytes,
    retries: int,
    retry_delay: float,
    timelimit: float | None,
    now: float | None = None,
    parent: str | None = None,
    root: str | None = None,
    via: str | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """A freshly received call, already queued. ``parent``, ``root`` and ``via`` are its
    provenance when another call's end made it (``note``: its first event's text)."""
    now = time.time() if now is None else now
    received = note or f"Received call {socket}"
    return {
        "id": call_id,
        "seq": seq,
        "owner": owner,
        "node": node,
        "socket": socket,
        "processor": processor,
        "function": function,
        "args": args,
        "kwargs": kwargs,
        "state": QUEUED,
        "attempts": 0,
        "max_retries": retries,
        "retry_delay": retry_delay,
        "timelimit": timelimit,
        "created": now,
        "started": None,
        "finished": None,
        "not_before": 0.0,
        "worker": None,
        "error": None,
        "result": None,
        "parent": parent,
        "root": root or call_id,
        "events": [["received", now, received], ["queued", now, f"Queued on {socket}"]],
        "kind": CALL,
        "via": via,
    }


def _event(record: dict[str, Any], name: str, note: str, now: float) -> None:
    record["events"].append([name, now, note])


def mark_running(record: dict[str, Any], worker_pid: int, now: float | None = None) -> None:
    now = time.time() if now is None else now
    record["state"] = RUNNING
    record["attempts"] += 1
    record["started"] = now
    record["worker"] = worker_pid
    _event(record, "prerun", f"Attempt {record['attempts']} on worker {worker_pid}", now)


def mark_started(record: dict[str, Any], note: str, now: float | None = None) -> None:
    """A workflow record starts: it runs until its last step ends (no worker runs it)."""
    now = time.time() if now is None else now
    record["state"] = RUNNING
    record["started"] = now
    _event(record, "prerun", note, now)


def mark_leased(record: dict[str, Any], node: str, now: float | None = None) -> None:
    """An attempt starts on another node of the mesh (its owner leased the call to it)."""
    now = time.time() if now is None else now
    record["state"] = RUNNING
    record["attempts"] += 1
    record["started"] = now
    record["worker"] = node
    _event(record, "prerun", f"Attempt {record['attempts']} leased to node {node}", now)


def mark_done(record: dict[str, Any], value: bytes, now: float | None = None) -> None:
    now = time.time() if now is None else now
    record["state"] = DONE
    record["finished"] = now
    record["result"] = value
    record["error"] = None
    _event(record, "postrun", "Finished", now)


def mark_error(record: dict[str, Any], error: dict[str, str], now: float | None = None) -> bool:
    """Record a failed attempt. Returns True when the call will be retried, False when it failed
    for good (it is then dead-lettered: state ``failed``)."""
    now = time.time() if now is None else now
    record["error"] = error
    summary = f"{error.get('type', 'Error')}: {error.get('message', '')}"[:200]
    if record["attempts"] <= record["max_retries"]:
        record["state"] = RETRYING
        record["not_before"] = now + float(record.get("retry_delay") or 0.0)
        _event(record, "retried", f"Attempt {record['attempts']} failed ({summary}); retrying", now)
        return True
    record["state"] = FAILED
    record["finished"] = now
    _event(record, "failed", summary, now)
    return False


def mark_failed(record: dict[str, Any], error: dict[str, str], now: float | None = None) -> None:
    """The call can never run (its socket was deleted): it fails for good without an attempt."""
    now = time.time() if now is None else now
    record["error"] = error
    record["state"] = FAILED
    record["finished"] = now
    _event(record, "failed", f"{error.get('type', 'Error')}: {error.get('message', '')}"[:200], now)


def mark_waiting(record: dict[str, Any], note: str, now: float | None = None) -> None:
    """A join call still misses some of its arguments."""
    now = time.time() if now is None else now
    record["state"] = WAITING
    _event(record, "waiting", note, now)


def mark_ready(record: dict[str, Any], note: str, now: float | None = None) -> None:
    """A waiting join call got its last argument: it is queued like any call."""
    now = time.time() if now is None else now
    record["state"] = QUEUED
    _event(record, "queued", note, now)


def mark_requeued(record: dict[str, Any], note: str, now: float | None = None, refund: bool = False) -> None:
    """Put a started call back in its queue (shutdown, recovery). With ``refund`` the attempt it
    was on does not count (it was interrupted, not failed)."""
    now = time.time() if now is None else now
    if refund and record["attempts"] > 0:
        record["attempts"] -= 1
    record["state"] = QUEUED
    record["worker"] = None
    _event(record, "queued", note, now)


def mark_moved(record: dict[str, Any], note: str, now: float | None = None, refund: bool = False) -> None:
    """The record changed owner (a takeover or a handoff). A call goes back to its queue (with
    ``refund``, the attempt it was on does not count); a workflow and a waiting join keep their
    state."""
    if kind_of(record) == FLOW or record["state"] == WAITING:
        _event(record, "moved", note, time.time() if now is None else now)
        return
    mark_requeued(record, note, now, refund)


def set_replicas(record: dict[str, Any], replicas: list[str]) -> None:
    """Give the record new replicas. ``holders`` keeps every node that ever held a copy of the
    call (its owners and replicas, old and new): who may take it over or relay its copies
    (:mod:`ecd.integrity`), even after the owner replaced a replica it lost."""
    holders = set(record.get("holders") or ()) | set(record.get("replicas") or ()) | set(replicas)
    if isinstance(record.get("owner"), str):
        holders.add(record["owner"])
    record["holders"] = sorted(holders)
    record["replicas"] = list(replicas)


def error_dict(type_: str, message: str, traceback: str = "") -> dict[str, str]:
    return {"type": type_, "message": message, "traceback": traceback}


def public_view(record: dict[str, Any]) -> dict[str, Any]:
    """The user-facing form of a record (``ecctl ls call``)."""
    view = {name: record.get(name) for name in PUBLIC_FIELDS}
    view["kind"] = kind_of(record)
    view["children"] = list(record.get("children") or ())
    view["events"] = [{"name": n, "time": t, "note": note} for n, t, note in record.get("events", [])]
    return view


def summary_view(record: dict[str, Any]) -> dict[str, Any]:
    """One row of ``ecctl ls calls``."""
    return {
        name: record.get(name)
        for name in ("id", "socket", "state", "attempts", "created", "started", "finished", "node",
                     "parent", "root", "via", "user")
    } | {"kind": kind_of(record)}
