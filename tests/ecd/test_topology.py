"""Contract tests of ecd.topology.TopologyStore, run against every backend.

Backends are the params of the ``store_url`` fixture: a SQLite file in ``tmp_path`` now; a
PostgreSQL backend is added by appending a param (and a branch creating a database).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ecd.errors import AlreadyExists, InvalidName, NotFound, StillReferenced, StoreUnavailable, TopologyError
from ecd.topology import ProcessorDef, QueueDef, SocketDef, Topology, TopologyStore

GITREPO = "https://example.org/user/code.git"
BAD_NAMES = [
    "",
    "a" * 201,
    "it's",
    'say"hi"',
    "'; DROP TABLE processor; --",
    "ünïcode",
    "名前",
    "-leading-dash",
    ".hidden",
    "with space",
    "tab\tname",
    "new\nline",
    "trailing\n",
    "semi;colon",
    "slash/name",
    None,
    42,
]


@pytest.fixture(params=["sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database URL for each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'topology.db'}"
    raise AssertionError(f"unknown backend {request.param}")  # pragma: no cover


@pytest.fixture
def make_store(store_url: str) -> Iterator[Callable[[], TopologyStore]]:
    """Factory of stores on the same database; all are closed at teardown."""
    stores: list[TopologyStore] = []

    def make() -> TopologyStore:
        store = TopologyStore(store_url)
        store.create_schema()
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def store(make_store: Callable[[], TopologyStore]) -> TopologyStore:
    return make_store()


def populate(store: TopologyStore) -> None:
    store.add_queue("q1")
    store.add_processor("proc1", GITREPO, "pkg.mod", concurrency=2)
    store.add_socket("sock1", "proc1", "work", "q1")


class TestTopologyContract:
    def test_schema_is_idempotent_and_version_starts_at_zero(self, store: TopologyStore) -> None:
        store.create_schema()
        assert store.version() == 0
        assert store.list("queue") == store.list("processor") == store.list("socket") == []

    def test_queue_roundtrip(self, store: TopologyStore) -> None:
        q = store.add_queue("q1", type="topic", durable=False, max_length=10, message_ttl=500)
        assert q["name"] == "q1" and q["type"] == "topic" and q["durable"] is False
        assert q["max_length"] == 10 and q["message_ttl"] == 500
        assert isinstance(q["created"], float) and isinstance(q["updated"], float)
        assert len(q["id"]) == 36
        assert store.get("queue", "q1") == q
        store.add_queue("a0")
        assert [x["name"] for x in store.list("queue")] == ["a0", "q1"]
        assert store.get("queue", "a0")["type"] == "direct"
        assert store.get("queue", "a0")["durable"] is True
        assert store.delete("queue", "q1")["name"] == "q1"
        with pytest.raises(NotFound, match="queue 'q1' does not exist"):
            store.get("queue", "q1")

    def test_processor_roundtrip_and_update(self, store: TopologyStore) -> None:
        p = store.add_processor(
            "proc1", GITREPO, "pkg.mod", concurrency=4, branch="main", commit="abcdef12",
            retries=3, retry_delay=0.5, timelimit=30, requirements="requests==2.31\n", description="d",
        )  # fmt: skip
        expected = {
            "name": "proc1", "gitrepo": GITREPO, "module": "pkg.mod", "concurrency": 4, "branch": "main",
            "commit": "abcdef12", "retries": 3, "retry_delay": 0.5, "timelimit": 30.0,
            "requirements": "requests==2.31\n", "description": "d", "enabled": True,
        }  # fmt: skip
        assert {k: p[k] for k in expected} == expected
        assert store.get("processor", "proc1") == p
        v = store.version()
        u = store.update_processor("proc1", concurrency=8, enabled=False)
        assert u["concurrency"] == 8 and u["enabled"] is False and u["updated"] >= p["updated"]
        assert store.version() == v + 1
        store.update_processor("proc1", concurrency=8)  # no actual change
        assert store.version() == v + 1
        with pytest.raises(InvalidName, match="unknown processor field"):
            store.update_processor("proc1", colour="red")
        with pytest.raises(InvalidName, match="concurrency"):
            store.update_processor("proc1", concurrency=0)
        with pytest.raises(NotFound, match="processor 'nope' does not exist"):
            store.update_processor("nope", concurrency=2)
        assert store.get("processor", "proc1")["concurrency"] == 8
        store.delete("processor", "proc1")
        assert store.list("processor") == []

    def test_socket_roundtrip(self, store: TopologyStore) -> None:
        populate(store)
        s = store.get("socket", "sock1")
        assert s["processor"] == "proc1" and s["queue"] == "q1" and s["function"] == "work"
        assert s["interval"] is None and s["cron"] is None
        assert "processor_id" not in s and "queue_id" not in s
        assert store.list("socket") == [s]
        store.delete("socket", "sock1")
        assert store.list("socket") == []

    @pytest.mark.parametrize("kind", ["queue", "processor", "socket"])
    def test_duplicates(self, store: TopologyStore, kind: str) -> None:
        populate(store)
        v = store.version()
        add = {
            "queue": lambda: store.add_queue("q1"),
            "processor": lambda: store.add_processor("proc1", GITREPO, "m"),
            "socket": lambda: store.add_socket("sock1", "proc1", "f", "q1"),
        }[kind]
        name = {"queue": "q1", "processor": "proc1", "socket": "sock1"}[kind]
        with pytest.raises(AlreadyExists, match=f"{kind} '{name}' already exists"):
            add()
        assert store.version() == v

    def test_unknown_references(self, store: TopologyStore) -> None:
        populate(store)
        with pytest.raises(NotFound, match="processor 'x' does not exist"):
            store.add_socket("s2", "x", "f", "q1")
        with pytest.raises(NotFound, match="queue 'y' does not exist"):
            store.add_socket("s2", "proc1", "f", "y")
        for kind in ("queue", "processor", "socket", "node"):
            with pytest.raises(NotFound):
                store.get(kind, "missing")
        for kind in ("queue", "processor", "socket"):
            with pytest.raises(NotFound, match=f"{kind} 'missing' does not exist"):
                store.delete(kind, "missing")
        with pytest.raises(InvalidName, match="unknown kind"):
            store.list("table")
        with pytest.raises(InvalidName, match="unknown kind"):
            store.delete("node", "n1")

    def test_still_referenced(self, store: TopologyStore) -> None:
        populate(store)
        store.add_socket("a", "proc1", "f", "q1")
        v = store.version()
        with pytest.raises(StillReferenced, match=r"queue 'q1' is used by socket\(s\): a, sock1"):
            store.delete("queue", "q1")
        with pytest.raises(StillReferenced, match=r"processor 'proc1' is used by socket\(s\): a, sock1"):
            store.delete("processor", "proc1")
        assert store.version() == v
        store.delete("socket", "a")
        store.delete("socket", "sock1")
        store.delete("queue", "q1")
        store.delete("processor", "proc1")
        assert store.version() == v + 4

    @pytest.mark.parametrize("bad", BAD_NAMES, ids=repr)
    def test_bad_names_rejected(self, store: TopologyStore, bad: object) -> None:
        populate(store)
        v = store.version()
        attempts = [
            lambda: store.add_queue(bad),
            lambda: store.add_processor(bad, GITREPO, "m"),
            lambda: store.add_socket(bad, "proc1", "f", "q1"),
            lambda: store.add_socket("s2", bad, "f", "q1"),
            lambda: store.add_socket("s2", "proc1", "f", bad),
            lambda: store.get("processor", bad),
            lambda: store.delete("processor", bad),
            lambda: store.register_node(bad, "tcp://127.0.0.1:1", 1, "0.1"),
        ]
        for attempt in attempts:
            with pytest.raises(InvalidName):
                attempt()
        assert store.version() == v
        assert [p["name"] for p in store.list("processor")] == ["proc1"]
        assert [s["name"] for s in store.list("socket")] == ["sock1"]

    def test_name_limits_accepted(self, store: TopologyStore) -> None:
        for name in ("a" * 200, "0", "A.b_c-9"):
            assert store.add_queue(name)["name"] == name
        assert store.get("queue", "a" * 200)["name"] == "a" * 200

    @pytest.mark.parametrize(
        ("fields", "match"),
        [
            ({"module": "pkg..mod"}, "module"),
            ({"module": "os; rm"}, "module"),
            ({"module": "class.x"}, "module"),
            ({"module": ""}, "module"),
            ({"gitrepo": ""}, "gitrepo"),
            ({"gitrepo": "http://x y"}, "gitrepo"),
            ({"gitrepo": "a\x00b"}, "gitrepo"),
            ({"gitrepo": "-uexploit"}, "gitrepo"),
            ({"gitrepo": "x" * 2001}, "gitrepo"),
            ({"concurrency": 0}, "concurrency"),
            ({"concurrency": 1025}, "concurrency"),
            ({"concurrency": "2"}, "concurrency"),
            ({"concurrency": True}, "concurrency"),
            ({"retries": -1}, "retries"),
            ({"retry_delay": -0.1}, "retry_delay"),
            ({"retry_delay": float("nan")}, "retry_delay"),
            ({"timelimit": 0}, "timelimit"),
            ({"timelimit": float("inf")}, "timelimit"),
            ({"branch": "--upload-pack=x"}, "branch"),
            ({"commit": "not-a-sha"}, "commit"),
            ({"enabled": "yes"}, "enabled"),
            ({"colour": "red"}, "unknown processor field"),
        ],
    )
    def test_processor_validation(self, store: TopologyStore, fields: dict, match: str) -> None:
        args = {"name": "p", "gitrepo": GITREPO, "module": "m"} | fields
        with pytest.raises(InvalidName, match=match):
            store.add_processor(**args)
        assert store.list("processor") == [] and store.version() == 0

    def test_queue_and_socket_validation(self, store: TopologyStore) -> None:
        populate(store)
        for kwargs, match in [
            ({"type": "bogus"}, "queue type"),
            ({"durable": 1}, "durable"),
            ({"max_length": 0}, "max_length"),
            ({"message_ttl": -5}, "message_ttl"),
            ({"priority": 1}, "unknown queue field"),
        ]:
            with pytest.raises(InvalidName, match=match):
                store.add_queue("q2", **kwargs)
        for function in ("", "1abc", "a.b", "def", "f()", "fünf", None):
            with pytest.raises(InvalidName, match="function"):
                store.add_socket("s2", "proc1", function, "q1")  # type: ignore[arg-type]
        assert [q["name"] for q in store.list("queue")] == ["q1"]

    def test_snapshot_and_version(self, store: TopologyStore) -> None:
        assert store.snapshot() == Topology(version=0, processors={}, sockets={}, queues={})
        populate(store)
        assert store.version() == 3
        snap = store.snapshot()
        assert snap.version == 3
        assert snap.queues["q1"] == QueueDef(
            id=store.get("queue", "q1")["id"], name="q1", type="direct", durable=True, max_length=None, message_ttl=None
        )
        p = snap.processors["proc1"]
        assert isinstance(p, ProcessorDef) and p.concurrency == 2 and p.module == "pkg.mod" and p.enabled
        s = snap.sockets["sock1"]
        assert isinstance(s, SocketDef) and (s.processor, s.queue, s.function) == ("proc1", "q1", "work")
        with pytest.raises(AttributeError):
            p.concurrency = 5  # type: ignore[misc]
        # reads do not move the version
        for _ in range(3):
            store.list("socket"), store.get("queue", "q1"), store.snapshot()
        assert store.version() == 3
        assert store.snapshot() == snap
        store.update_processor("proc1", concurrency=3)
        assert store.version() == 4
        assert store.snapshot().processors["proc1"].concurrency == 3

    def test_register_node(self, store: TopologyStore) -> None:
        n = store.register_node("node1", "tcp://10.0.0.1:5555", 2, "0.1.0")
        assert n["name"] == "node1" and n["cpus"] == 2 and isinstance(n["last_seen"], float)
        assert store.version() == 1
        n2 = store.register_node("node1", "tcp://10.0.0.1:5555", 2, "0.1.0")  # heartbeat
        assert n2["id"] == n["id"] and n2["last_seen"] >= n["last_seen"]
        assert store.version() == 1
        store.register_node("node1", "tcp://10.0.0.1:5556", 4, "0.1.0")
        assert store.version() == 2
        assert store.get("node", "node1")["cpus"] == 4
        assert [x["name"] for x in store.list("node")] == ["node1"]
        with pytest.raises(InvalidName, match="cpus"):
            store.register_node("node2", "tcp://x:1", 0, "0.1.0")
        with pytest.raises(InvalidName, match="endpoint"):
            store.register_node("node2", "", 1, "0.1.0")

    def test_two_stores_see_each_other(self, make_store: Callable[[], TopologyStore]) -> None:
        a, b = make_store(), make_store()
        a.add_queue("q1")
        assert b.version() == 1 and b.get("queue", "q1")["name"] == "q1"
        b.add_processor("proc1", GITREPO, "m")
        assert a.version() == 2
        a.add_socket("s", "proc1", "f", "q1")
        with pytest.raises(AlreadyExists):
            b.add_socket("s", "proc1", "f", "q1")
        assert b.snapshot().sockets["s"].processor == "proc1"

    def test_concurrent_writers_from_threads(self, make_store: Callable[[], TopologyStore]) -> None:
        stores = [make_store(), make_store()]
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                for j in range(10):
                    stores[i % 2].add_queue(f"q{i}-{j}")
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        assert len(stores[0].list("queue")) == 40
        assert stores[1].version() == 40

    def test_unknown_kwargs_on_add(self, store: TopologyStore) -> None:
        with pytest.raises(InvalidName, match="unknown socket field"):
            store.add_socket("s", "p", "f", "q", schedule="x")


def test_sqlite_pragmas_and_intact_tables(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    store = TopologyStore(f"sqlite:///{path}")
    try:
        store.create_schema()
        with pytest.raises(InvalidName):
            store.add_processor("'; DROP TABLE processor; --", GITREPO, "m")
        store.add_queue("q1")
    finally:
        store.close()
    con = sqlite3.connect(path)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"node", "queue", "processor", "socket", "meta"} <= tables
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        con.close()


def test_unavailable_store(tmp_path: Path) -> None:
    store = TopologyStore(f"sqlite:///{tmp_path / 'missing-dir' / 't.db'}")
    try:
        with pytest.raises(StoreUnavailable, match="topology store unavailable"):
            store.create_schema()
        with pytest.raises(StoreUnavailable, match="topology store unavailable"):
            store.version()
    finally:
        store.close()
    with pytest.raises(StoreUnavailable):
        TopologyStore("nosuchdialect://x")


def test_schema_missing_is_unavailable(tmp_path: Path) -> None:
    store = TopologyStore(f"sqlite:///{tmp_path / 't.db'}")
    try:
        with pytest.raises(StoreUnavailable):
            store.version()
        with pytest.raises(TopologyError):
            store.add_queue("q1")
    finally:
        store.close()
