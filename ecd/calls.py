"""Call records and their life cycle: queued -> running -> done | retrying -> ... | failed.

A call record is a plain dict (it is what the write-ahead log stores, as msgpack). The functions
here are the only place that changes a record's state, so every transition appends its event
with a timestamp and keeps ``attempts``, ``started``, ``finished`` and ``error`` consistent.
"""

from __future__ import annotations

import time
from typing import Any

QUEUED = "queued"
RUNNING = "running"
RETRYING = "retrying"
DONE = "done"
FAILED = "failed"
TERMINAL = frozenset({DONE, FAILED})

#: Fields of a record shown to users (``ecctl ls call``); the rest are internal.
PUBLIC_FIELDS = (
    "id", "seq", "owner", "node", "socket", "processor", "function", "state", "attempts",
    "max_retries", "created", "started", "finished", "worker", "error", "parent", "root",
)


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
) -> dict[str, Any]:
    """A freshly received call, already queued."""
    now = time.time() if now is None else now
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
        "parent": None,
        "root": call_id,
        "events": [["received", now, f"Received call {socket}"], ["queued", now, f"Queued on {socket}"]],
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


def mark_requeued(record: dict[str, Any], note: str, now: float | None = None, refund: bool = False) -> None:
    """Put a started call back in its queue (shutdown, recovery). With ``refund`` the attempt it
    was on does not count (it was interrupted, not failed)."""
    now = time.time() if now is None else now
    if refund and record["attempts"] > 0:
        record["attempts"] -= 1
    record["state"] = QUEUED
    record["worker"] = None
    _event(record, "queued", note, now)


def error_dict(type_: str, message: str, traceback: str = "") -> dict[str, str]:
    return {"type": type_, "message": message, "traceback": traceback}


def public_view(record: dict[str, Any]) -> dict[str, Any]:
    """The user-facing form of a record (``ecctl ls call``)."""
    view = {name: record.get(name) for name in PUBLIC_FIELDS}
    view["events"] = [{"name": n, "time": t, "note": note} for n, t, note in record.get("events", [])]
    return view


def summary_view(record: dict[str, Any]) -> dict[str, Any]:
    """One row of ``ecctl ls calls``."""
    return {
        name: record.get(name)
        for name in ("id", "socket", "state", "attempts", "created", "started", "finished", "node")
    }
