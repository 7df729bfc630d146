"""Contract tests of ecd.history.HistoryStore, run against every backend (SQLite file, PostgreSQL).

The store works on the engine of a real TopologyStore whose schema the migrations created. The
PostgreSQL backend uses the throwaway server of tests/pg.py; its outage test stops and restarts
that server.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import sqlalchemy as sa

from ecd.errors import InvalidName, StoreUnavailable
from ecd.history import HistoryStore
from ecd.topology import TopologyStore
from tests.conftest import free_port, wait_for

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database for each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'topology.db'}"
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture
def make_history(db_url: str) -> Iterator[Callable[[], HistoryStore]]:
    """Factory of history stores on the (migrated) database; every engine is disposed after."""
    stores: list[TopologyStore] = []

    def make() -> HistoryStore:
        store = TopologyStore(db_url)
        stores.append(store)
        store.ensure_schema()
        return HistoryStore(store.engine)

    yield make
    for store in stores:
        store.engine.dispose()


@pytest.fixture
def history(make_history: Callable[[], HistoryStore]) -> HistoryStore:
    return make_history()


def call(call_id: str, *, state: str = "queued", created: float = 1000.0, finished: float | None = None,
         socket: str = "s1", events: list[list[Any]] | None = None, **fields: Any) -> dict[str, Any]:
    """A call summary as the exporter sends it."""
    summary: dict[str, Any] = {
        "id": call_id, "seq": fields.pop("seq", 1), "owner": "owner-uuid", "node": "n1", "socket": socket,
        "processor": "p1", "function": "f", "state": state, "attempts": 0, "created": created,
        "started": None, "finished": finished, "worker": None, "error": None, "parent": None,
        "root": call_id, "kind": "call", "via": None,
        "events": events if events is not None else [["received", created, f"Received call {socket}"],
                                                     ["queued", created, f"Queued on {socket}"]],
    }
    summary.update(fields)
    return summary


def event_rows(history: HistoryStore, call_id: str | None = None) -> int:
    """Events stored (of one call, or of all), read straight from the table."""
    query = sa.text('SELECT events FROM "call"' + (" WHERE id = :id" if call_id else ""))
    with history.engine.connect() as conn:
        return sum(len(msgpack.unpackb(packed) if packed else [])
                   for packed in conn.execute(query, {"id": call_id} if call_id else {}).scalars())


# --------------------------------------------------------------------------- write / get


def test_write_then_get_round_trips_every_field(history: HistoryStore) -> None:
    error = {"type": "ValueError", "message": "it's \"bad\"; DROP TABLE call; --", "traceback": "Traceback...\nÜ"}
    summary = call("c1", state="failed", created=1000.5, started=1001.25, finished=1002.75, attempts=3,
                   worker=4242, error=error, parent="c0", root="c-root", seq=17, kind="join", via="plug p1",
                   user="joe",
                   events=[["received", 1000.5, "r"], ["prerun", 1001.25, None], ["failed", 1002.75, "ValueError: x"]])
    history.write([summary])
    assert history.get("c1") == summary
    assert history.get("nope") is None


def test_run_lists_every_call_of_a_run(history: HistoryStore) -> None:
    history.write([call("r", created=1.0), call("a", created=2.0, parent="r", root="r", via="plug p"),
                   call("b", created=3.0, parent="a", root="r", via="step 0"), call("other", created=4.0)])
    assert [(row["id"], row["parent"], row["via"]) for row in history.run("r")] == [
        ("r", None, None), ("a", "r", "plug p"), ("b", "a", "step 0")]
    assert [row["id"] for row in history.run("r", limit=2)] == ["r", "a"]
    assert history.run("nothing") == []


def test_upsert_replaces_the_summary(history: HistoryStore) -> None:
    history.write([call("c1", state="queued")])
    history.write([call("c1", state="running", started=1001.0, worker=99, attempts=1)])
    got = history.get("c1")
    assert got is not None
    assert (got["state"], got["started"], got["worker"], got["attempts"]) == ("running", 1001.0, 99, 1)
    history.write([call("c1", state="done", started=1001.0, finished=1003.0, worker=None, attempts=1)])
    got = history.get("c1")
    assert got is not None
    assert (got["state"], got["finished"], got["worker"]) == ("done", 1003.0, None)
    assert history.page(1, 10)["total"] == 1


def test_events_are_not_duplicated_when_a_call_is_written_again(history: HistoryStore) -> None:
    first = [["received", 1.0, "r"], ["queued", 1.0, "q"]]
    history.write([call("c1", events=first)])
    history.write([call("c1", events=first)])
    assert event_rows(history, "c1") == 2
    more = first + [["prerun", 2.0, "started"], ["postrun", 3.0, "done"]]
    history.write([call("c1", state="done", finished=3.0, events=more)])
    history.write([call("c1", state="done", finished=3.0, events=more)])
    got = history.get("c1")
    assert got is not None and got["events"] == more
    assert event_rows(history, "c1") == 4


def test_the_last_summary_of_a_call_in_one_batch_wins(history: HistoryStore) -> None:
    history.write([call("c1", state="queued"), call("c2"),
                   call("c1", state="done", finished=5.0, events=[["received", 1.0, "r"], ["postrun", 5.0, "ok"]])])
    got = history.get("c1")
    assert got is not None and got["state"] == "done" and len(got["events"]) == 2
    assert history.page(1, 10)["total"] == 2


def test_write_of_nothing_is_a_no_op(history: HistoryStore) -> None:
    history.write([])
    assert history.page(1, 10)["total"] == 0


def test_a_large_batch_is_written_in_one_call(history: HistoryStore) -> None:
    calls = [call(f"c{i:05d}", created=float(i), seq=i) for i in range(3000)]
    history.write(calls)
    assert history.page(1, 1)["total"] == 3000
    assert event_rows(history) == 6000


def test_a_batch_is_one_transaction(history: HistoryStore) -> None:
    history.write([call("c1")])
    bad = call("c2")
    bad["state"] = None  # NOT NULL: the whole batch must be refused
    with pytest.raises(sa.exc.IntegrityError):
        history.write([call("c1", state="done", finished=2.0), bad])
    got = history.get("c1")
    assert got is not None and got["state"] == "queued"
    assert history.get("c2") is None


# --------------------------------------------------------------------------- page


def test_page_of_an_empty_history(history: HistoryStore) -> None:
    assert history.page(1, 10) == {"total": 0, "page": 1, "pages": 1, "rows": 10, "calls": []}


def test_pages_are_newest_first(history: HistoryStore) -> None:
    history.write([call(f"c{i:02d}", created=1000.0 + i, seq=i) for i in range(25)])
    first = history.page(1, 10)
    assert (first["total"], first["page"], first["pages"], first["rows"]) == (25, 1, 3, 10)
    assert [c["id"] for c in first["calls"]] == [f"c{i:02d}" for i in range(24, 14, -1)]
    assert "events" not in first["calls"][0]
    last = history.page(3, 10)
    assert [c["id"] for c in last["calls"]] == [f"c{i:02d}" for i in range(4, -1, -1)]
    beyond = history.page(4, 10)
    assert (beyond["pages"], beyond["calls"]) == (3, [])
    everything = [c["id"] for p in (1, 2, 3) for c in history.page(p, 10)["calls"]]
    assert len(everything) == len(set(everything)) == 25
    assert history.page(1, 25)["pages"] == 1
    assert history.page(1, 24)["pages"] == 2


def test_same_created_time_is_ordered_by_id(history: HistoryStore) -> None:
    history.write([call(i, created=5.0) for i in ("b", "c", "a")] + [call("z", created=6.0)])
    assert [c["id"] for c in history.page(1, 10)["calls"]] == ["z", "a", "b", "c"]


def test_unfinished_and_socket_filters(history: HistoryStore) -> None:
    history.write([
        call("q1", state="queued", created=1.0, socket="s1"),
        call("r1", state="running", created=2.0, socket="s2"),
        call("t1", state="retrying", created=3.0, socket="s1"),
        call("d1", state="done", created=4.0, finished=4.5, socket="s1"),
        call("f1", state="failed", created=5.0, finished=5.5, socket="s2"),
    ])
    unfinished = history.page(1, 10, unfinished=True)
    assert unfinished["total"] == 3
    assert [c["id"] for c in unfinished["calls"]] == ["t1", "r1", "q1"]
    on_s2 = history.page(1, 10, socket="s2")
    assert [c["id"] for c in on_s2["calls"]] == ["f1", "r1"]
    both = history.page(1, 10, unfinished=True, socket="s1")
    assert [c["id"] for c in both["calls"]] == ["t1", "q1"] and both["total"] == 2
    assert history.page(1, 10, socket="nope") == {"total": 0, "page": 1, "pages": 1, "rows": 10, "calls": []}
    # the filter values are bound, never spliced into SQL
    assert history.page(1, 10, socket="s1' OR '1'='1")["total"] == 0


@pytest.mark.parametrize("page, rows", [(0, 10), (-1, 10), (1, 0), (1, -5), ("1", 10), (1, 2.5), (True, 10)])
def test_bad_page_arguments_are_refused(history: HistoryStore, page: Any, rows: Any) -> None:
    with pytest.raises(InvalidName):
        history.page(page, rows)


# --------------------------------------------------------------------------- prune


def test_prune_deletes_old_finished_calls_and_their_events(history: HistoryStore) -> None:
    history.write([
        call("old-done", state="done", created=1.0, finished=10.0),
        call("old-failed", state="failed", created=2.0, finished=20.0),
        call("new-done", state="done", created=3.0, finished=200.0),
        call("running", state="running", created=0.5),  # old but unfinished: kept
    ])
    assert history.prune(100.0) == 2
    assert {c["id"] for c in history.page(1, 10)["calls"]} == {"new-done", "running"}
    assert history.get("old-done") is None
    assert event_rows(history, "old-done") == 0 and event_rows(history, "old-failed") == 0
    assert event_rows(history) == 4
    assert history.prune(100.0) == 0
    assert history.prune(201.0) == 1
    assert [c["id"] for c in history.page(1, 10)["calls"]] == ["running"]


def test_prune_of_an_empty_history(history: HistoryStore) -> None:
    assert history.prune(1e12) == 0


# --------------------------------------------------------------------------- concurrency


def test_two_stores_write_at_once(make_history: Callable[[], HistoryStore]) -> None:
    stores = [make_history(), make_history()]
    errors: list[BaseException] = []

    def export(n: int, store: HistoryStore) -> None:
        try:
            for batch in range(20):
                store.write([call(f"n{n}-{batch}-{i}", created=float(batch), seq=i) for i in range(25)])
                store.page(1, 5)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=export, args=(n, s)) for n, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "writers did not finish within 60s"
    assert errors == []
    assert stores[0].page(1, 1)["total"] == 2 * 20 * 25


# --------------------------------------------------------------------------- unavailable


def test_missing_schema_is_store_unavailable(db_url: str) -> None:
    store = TopologyStore(db_url)  # no ensure_schema
    try:
        history = HistoryStore(store.engine)
        with pytest.raises(StoreUnavailable, match="topology store unavailable"):
            history.page(1, 10)
        with pytest.raises(StoreUnavailable, match="topology store unavailable"):
            history.write([call("c1")])
    finally:
        store.engine.dispose()


@pytest.mark.parametrize("url", [
    "sqlite:///{tmp}/no/such/dir/topology.db",
    "postgresql://ec@127.0.0.1:{port}/nothing?connect_timeout=5",
], ids=["sqlite", "postgresql"])
def test_unreachable_database_is_store_unavailable(url: str, tmp_path: Path) -> None:
    store = TopologyStore(url.format(tmp=tmp_path, port=free_port()))
    try:
        history = HistoryStore(store.engine)
        for operation in (lambda: history.write([call("c1")]), lambda: history.page(1, 10),
                          lambda: history.get("c1"), lambda: history.prune(1.0)):
            with pytest.raises(StoreUnavailable, match="^topology store unavailable: "):
                operation()
    finally:
        store.engine.dispose()


def test_postgresql_outage_and_recovery(postgres: Any) -> None:
    store = TopologyStore(postgres.new_database())
    try:
        store.ensure_schema()
        history = HistoryStore(store.engine)
        history.write([call("before")])
        postgres.stop()
        try:
            with pytest.raises(StoreUnavailable, match="^topology store unavailable: "):
                history.write([call("during")])
            with pytest.raises(StoreUnavailable, match="^topology store unavailable: "):
                history.page(1, 10)
        finally:
            postgres.start()

        def written() -> bool:
            try:
                history.write([call("after")])
            except StoreUnavailable:
                return False  # a pooled connection from before the restart
            return True

        wait_for(written, 30, what="history writes after PostgreSQL restarted")
        assert [c["id"] for c in history.page(1, 10)["calls"]] == ["after", "before"]  # same time: by id
    finally:
        store.engine.dispose()
