"""kill -9 of ecd while thousands of acknowledged calls are queued or running: after a restart
every acknowledged call completes, with exactly one result, and none is lost."""

from __future__ import annotations

import itertools
import random
import threading
from typing import Any

import pytest

from ecctl import Client
from tests.conftest import EcdProcess, wait_for
from tests.e2e.history import History, check

SUBMITTERS = 4


def _submitter(endpoint: str, history: History, counter: Any, limit: int, stop: threading.Event) -> None:
    import uuid

    with Client(endpoint, timeout=2.0, connect_timeout=5.0) as client:
        while not stop.is_set():
            i = next(counter)
            if i >= limit:
                return
            call_id = str(uuid.uuid4())
            history.invoke(call_id, {"args": [i], "kwargs": {}})
            try:
                client.submit("sample.tasks.echo", [i], call_id=call_id)
            except Exception:
                history.fail(call_id)
                return
            history.ok(call_id)


def _round(node: EcdProcess, history: History, start: int, count: int, kill_after: int) -> None:
    """Submit ``count`` calls from several clients; kill -9 the node once ``kill_after`` more are
    acknowledged (some queued, some running, some mid-submission)."""
    counter = itertools.count(start)
    stop = threading.Event()
    acked_before = len(history.acked)
    threads = [threading.Thread(target=_submitter, args=(node.endpoint, history, counter, start + count, stop))
               for _ in range(SUBMITTERS)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(history.acked) - acked_before >= kill_after, 120, what="calls acknowledged")
    node.kill9()
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive()


@pytest.mark.timeout(400)
def test_kill9_loses_no_acknowledged_call(sample_node: EcdProcess) -> None:
    history = History()
    rng = random.Random(7)
    rounds = 3
    for n in range(rounds):
        _round(sample_node, history, start=n * 10_000, count=3000, kill_after=rng.randint(600, 2000))
        sample_node.start()
    assert len(history.acked) >= 1800

    completed: dict[str, Any] = {}
    executions: dict[str, int] = {}
    with Client(sample_node.endpoint, timeout=30) as client:
        for call_id in sorted(history.acked):
            completed[call_id] = client.result(call_id, timeout=120)
        for call_id in completed:
            events = client.ls_call(call_id)["events"]
            executions[call_id] = sum(1 for e in events if e["name"] == "prerun")
        # calls whose CALL was in flight at the kill may or may not have been stored; those that
        # were must complete too
        for call_id in sorted(history.ambiguous):
            try:
                completed[call_id] = client.result(call_id, timeout=120)
                executions[call_id] = sum(1 for e in client.ls_call(call_id)["events"] if e["name"] == "prerun")
            except Exception as exc:  # unknown call id: it never reached the log
                assert "unknown call id" in str(exc)

    # results are exactly-once per call id: a restart does not change any of them
    sample_node.terminate()
    sample_node.start()
    with Client(sample_node.endpoint, timeout=30) as client:
        reread = {call_id: client.result(call_id, timeout=60) for call_id in completed}
        status = client.status()
    verdict = check(history, completed, executions, reread)
    assert verdict.ok, str(verdict)
    assert status["calls"]["active"] == 0


def test_checker_detects_loss_and_duplicates() -> None:
    """Negative control: a history with a lost call and a changed result fails the checker."""
    history = History()
    for call_id, value in (("a", 1), ("b", 2), ("c", 3)):
        history.invoke(call_id, value)
        history.ok(call_id)
    verdict = check(history, completed={"a": 1, "b": 2}, executions={"a": 1, "b": 2}, reread={"a": 1, "b": 5})
    assert not verdict.ok
    assert verdict.lost == {"c"}
    assert verdict.divergent == {"b"}
    verdict = check(history, completed={"a": 1, "b": 9, "c": 3}, executions={"a": 2, "b": 1, "c": 0})
    assert verdict.wrong == {"b"} and verdict.unattempted == {"c"} and verdict.duplicate_executions == {"a": 2}
