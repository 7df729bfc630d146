"""The call history exporter against a database that is away: notes stay bounded, and what
was pending is written once the database can take it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from ecd.exporter import HistoryExporter
from ecd.history import HistoryStore
from ecd.topology import TopologyStore
from tests.conftest import free_port, wait_for


def record(i: int, finished: bool = True) -> dict:
    now = time.time()
    return {"id": f"c{i:06d}", "seq": i, "owner": "o", "node": "n", "socket": "s", "processor": "p",
            "function": "f", "state": "done" if finished else "queued", "attempts": 1, "created": now,
            "started": now, "finished": now if finished else None, "worker": 1, "error": None,
            "parent": None, "root": f"c{i:06d}", "events": [["received", now, "r"]]}


def test_pending_notes_stay_bounded_while_the_database_is_away() -> None:
    engine = sa.create_engine(f"postgresql+psycopg://ec@127.0.0.1:{free_port()}/none",
                              connect_args={"connect_timeout": 1})
    exporter = HistoryExporter(HistoryStore(engine), interval=0.01, max_pending=1000)
    try:
        for i in range(5000):
            exporter.note(record(i))
        assert len(exporter.pending) <= 1000
        assert exporter.dropped >= 4000
        assert "c004999" in exporter.pending  # the newest are kept
        exporter.tick(time.monotonic())
        wait_for(lambda: (exporter.drain(), exporter.failed_batches)[1] >= 1, 30, what="a failed batch")
        assert len(exporter.pending) <= 1000 and exporter.exported == 0  # put back, not lost
    finally:
        exporter.close()
        engine.dispose()


@pytest.fixture
def store(tmp_path: Path) -> TopologyStore:
    store = TopologyStore(f"sqlite:///{tmp_path / 'topology.db'}")
    store.ensure_schema()
    yield store
    store.close()


def test_unfinished_calls_wait_one_interval_finished_ones_go_at_once(store: TopologyStore) -> None:
    history = HistoryStore(store.engine)
    exporter = HistoryExporter(history, interval=0.3)
    try:
        exporter.note(record(1, finished=True))
        exporter.note(record(2, finished=False))
        exporter.tick(time.monotonic())
        wait_for(lambda: (exporter.drain(), exporter.exported)[1] == 1, 30, what="the finished call exported")
        assert history.get("c000001") is not None and history.get("c000002") is None
        wait_for(lambda: (exporter.drain(), exporter.tick(time.monotonic()), exporter.exported)[2] == 2, 30,
                 what="the unfinished call exported after one interval")
        assert history.get("c000002")["state"] == "queued"
    finally:
        exporter.close()


def test_an_outage_holds_no_payloads() -> None:
    engine = sa.create_engine(f"postgresql+psycopg://ec@127.0.0.1:{free_port()}/none",
                              connect_args={"connect_timeout": 1})
    exporter = HistoryExporter(HistoryStore(engine), interval=0.01)
    try:
        big = {**record(1), "args": b"x" * 1_000_000, "result": b"y" * 1_000_000}
        exporter.note(big)
        exporter.tick(time.monotonic())
        wait_for(lambda: (exporter.drain(), exporter.failed_batches)[1] >= 1, 30, what="a failed batch")
        kept, _ = exporter.pending["c000001"]
        assert "args" not in kept and "result" not in kept and kept["state"] == "done"
        exporter.note({**record(2), "args": b"z" * 1_000_000})  # noted during the outage
        assert "args" not in exporter.pending["c000002"][0]
    finally:
        exporter.close()
        engine.dispose()
