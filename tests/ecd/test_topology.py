"""Contract tests of ecd.topology.TopologyStore, run against every backend.

Backends are the params of the ``new_url`` fixture: a SQLite file in ``tmp_path``, and a fresh
database on the session's throwaway PostgreSQL server (``tests/pg.py``; skipped when the server
binaries are missing). Every test in the ``Test*Contract`` classes runs on both.
"""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from ecd import netspec
from ecd.errors import AlreadyExists, InvalidName, NotFound, StillReferenced, StoreUnavailable, TopologyError
from ecd.schema import Base
from ecd.topology import (
    KINDS,
    CHANGE_LOG_KEEP,
    DeploymentDef,
    FlowDef,
    NodeDef,
    PlugDef,
    ProcessorDef,
    QueueDef,
    SocketDef,
    Topology,
    TopologyDelta,
    TopologyStore,
)

ROOT = Path(__file__).resolve().parents[2]
GITREPO = "https://example.org/user/code.git"
HEAD = "0004"
BAD_NAMES = [
    "",
    "a" * 201,
    "it's",
    'say"hi"',
    "'; DROP TABLE processor; --",
    "x' OR '1'='1",
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
    "nul\x00byte",
    None,
    42,
]
#: Processor fields that add refuses, and what the message names.
PROCESSOR_ERRORS: list[tuple[dict[str, Any], str]] = [
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
    ({"tag": "-x"}, "tag"),
    ({"tag": "v 1"}, "tag"),
    ({"enabled": "yes"}, "enabled"),
    ({"paused": 1}, "paused"),
    ({"restarts": -1}, "restarts"),
    ({"description": "x" * 10_001}, "description"),
    ({"description": "nul\x00"}, "description"),
    ({"colour": "red"}, "unknown processor field"),
    ({"id": "x"}, "unknown processor field"),
]
#: Fields of other kinds that add refuses (with world() in place), and what the message names.
FIELD_ERRORS: list[tuple[str, dict[str, Any], str]] = [
    ("processor", {"module": "m"}, "missing processor field.*gitrepo"),
    ("socket", {"processor": "p1", "queue": "q1"}, "missing socket field.*function"),
    ("plug", {"source": "s1", "target": "s2"}, "missing plug field.*queue"),
    ("deployment", {"processor": "p1"}, "missing deployment field.*node"),
    ("plug", {"source": "s1", "target": "s2", "queue": "q1", "type": "result"}, "plug type"),
    ("plug", {"source": "s1", "target": "s2", "queue": "q1", "argument": "1x"}, "argument"),
    ("plug", {"source": "s1", "target": "s2", "queue": "q1", "argument": "class"}, "argument"),
    ("deployment", {"processor": "p1", "node": "n1", "cpus": 0}, "cpus"),
    ("node", {"cpus": 0}, "cpus"),
    ("node", {"endpoint": "tcp://a b"}, "endpoint"),
    ("node", {"last_seen": 1.0}, "unknown node field"),
    ("flow", {"processors": "p1"}, "processors"),
    ("flow", {"processors": [1]}, "processor name"),
    ("queue", {"description": 5}, "description"),
]
#: Free text that must be stored verbatim.
TEXTS = [
    "it's",
    'say "hi"',
    "'; DROP TABLE processor; --",
    "ünïcode 名前 🚀",
    "line1\nline2\ttab\r\n",
    "%s %(name)s {0} $1 ? :name \\",
    "x" * 10_000,
]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(params=["sqlite", "postgresql"])
def new_url(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], str]:
    """Factory of fresh, empty database URLs of one backend."""
    counter = iter(range(1_000_000))
    if request.param == "sqlite":
        return lambda: f"sqlite:///{tmp_path / f'topology-{next(counter)}.db'}"
    if request.param == "postgresql":
        server = request.getfixturevalue("postgres")
        return server.new_database
    raise AssertionError(f"unknown backend {request.param}")  # pragma: no cover


@pytest.fixture
def store_url(new_url: Callable[[], str]) -> str:
    """A fresh, empty database URL for each backend."""
    return new_url()


@pytest.fixture
def open_store() -> Iterator[Callable[[str], TopologyStore]]:
    """Factory of stores on any URL, schema ensured; all are closed at teardown."""
    stores: list[TopologyStore] = []

    def make(url: str) -> TopologyStore:
        store = TopologyStore(url)
        stores.append(store)
        store.ensure_schema()
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def make_store(store_url: str, open_store: Callable[[str], TopologyStore]) -> Callable[[], TopologyStore]:
    """Factory of stores on the same database."""
    return lambda: open_store(store_url)


@pytest.fixture
def store(make_store: Callable[[], TopologyStore]) -> TopologyStore:
    return make_store()


def populate(store: TopologyStore) -> None:
    store.add_queue("q1")
    store.add_processor("proc1", GITREPO, "pkg.mod", concurrency=2)
    store.add_socket("sock1", "proc1", "work", "q1")


def world(store: TopologyStore) -> None:
    """Something to reference: queue q1, node n1, processors p1 p2, sockets s1 s2 s3."""
    store.add("queue", name="q1")
    store.add("node", name="n1")
    store.add("processor", name="p1", gitrepo=GITREPO, module="pkg.one")
    store.add("processor", name="p2", gitrepo=GITREPO, module="pkg.two")
    store.add("socket", name="s1", processor="p1", function="f", queue="q1")
    store.add("socket", name="s2", processor="p2", function="g", queue="q1")
    store.add("socket", name="s3", processor="p2", function="h", queue="q1")


#: Per kind: fields for an add (besides the name), an update, and the Def class.
SAMPLES: dict[str, tuple[dict[str, Any], dict[str, Any], type]] = {
    "queue": ({"type": "fanout", "durable": False, "max_length": 5, "message_ttl": 60, "description": "d"},
              {"max_length": 7}, QueueDef),
    "node": ({"cpus": 4, "description": "rack 1"}, {"cpus": 8, "endpoint": "tcp://10.0.0.9:7700"}, NodeDef),
    "processor": ({"gitrepo": GITREPO, "module": "pkg.x", "tag": "v1.0", "rate_limit": "10/s", "paused": True,
                   "branch": "main", "timelimit": 5, "requirements": "requests\n"},
                  {"rate_limit": "5/m", "paused": False}, ProcessorDef),
    "socket": ({"processor": "p1", "function": "f", "queue": "q1", "cron": "*/5 * * * *", "catch_up": "all",
                "description": "sock"}, {"processor": "p2", "function": "other"}, SocketDef),
    "plug": ({"source": "s1", "target": "s2", "argument": "x", "type": "ERROR", "queue": "q1"},
             {"type": "RESULT", "target": "s3"}, PlugDef),
    "deployment": ({"processor": "p1", "node": "n1", "cpus": 2}, {"cpus": None, "processor": "p2"}, DeploymentDef),
    "flow": ({"processors": ["p2", "p1"], "description": "d"}, {"processors": ["p1"]}, FlowDef),
}  # fmt: skip


def rows(store: TopologyStore, sql: str) -> list[Any]:
    with store.engine.connect() as conn:
        return list(conn.execute(sa.text(sql)).all())


def schema_diff(store: TopologyStore) -> list[Any]:
    with store.engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)


# --------------------------------------------------------------------------- #2 contract, kept


class TestTopologyContract:
    def test_schema_is_idempotent_and_version_starts_at_zero(self, store: TopologyStore) -> None:
        assert store.create_schema() == HEAD
        assert store.version() == 0
        for kind in KINDS:
            assert store.list(kind) == []

    def test_queue_roundtrip(self, store: TopologyStore) -> None:
        q = store.add_queue("q1", type="topic", durable=False, max_length=10, message_ttl=500)
        assert q["name"] == "q1" and q["type"] == "topic" and q["durable"] is False
        assert q["max_length"] == 10 and q["message_ttl"] == 500 and q["description"] is None
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
            "tag": None, "rate_limit": None, "paused": False, "restarts": 0,
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
        assert s["interval"] is None and s["cron"] is None and s["description"] is None
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
        for kind in KINDS:
            with pytest.raises(NotFound, match=f"{kind} 'missing' does not exist"):
                store.get(kind, "missing")
            with pytest.raises(NotFound, match=f"{kind} 'missing' does not exist"):
                store.delete(kind, "missing")
            with pytest.raises(NotFound, match=f"{kind} 'missing' does not exist"):
                store.update(kind, "missing", description="x") if kind != "deployment" else store.update(
                    kind, "missing", cpus=1)
        for bad_kind in ("table", "queues", None):
            with pytest.raises(InvalidName, match="unknown kind"):
                store.list(bad_kind)  # type: ignore[arg-type]
            with pytest.raises(InvalidName, match="unknown kind"):
                store.delete(bad_kind, "n1")  # type: ignore[arg-type]
            with pytest.raises(InvalidName, match="unknown kind"):
                store.add(bad_kind, name="n1")  # type: ignore[arg-type]

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

    def test_bad_names_rejected(self, store: TopologyStore) -> None:
        world(store)
        v = store.version()
        for bad in BAD_NAMES:
            self._bad_name_rejected(store, bad)
        assert store.version() == v
        assert [p["name"] for p in store.list("processor")] == ["p1", "p2"]
        assert [s["name"] for s in store.list("socket")] == ["s1", "s2", "s3"]
        for kind in ("plug", "deployment", "flow"):
            assert store.list(kind) == []

    @staticmethod
    def _bad_name_rejected(store: TopologyStore, bad: object) -> None:
        attempts = [
            lambda: store.add_queue(bad),
            lambda: store.add_processor(bad, GITREPO, "m"),
            lambda: store.add_socket(bad, "p1", "f", "q1"),
            lambda: store.add_socket("s9", bad, "f", "q1"),
            lambda: store.add_socket("s9", "p1", "f", bad),
            lambda: store.add("plug", name="pl", source=bad, target="s2", queue="q1"),
            lambda: store.add("plug", name="pl", source="s1", target=bad, queue="q1"),
            lambda: store.add("deployment", name="d", processor="p1", node=bad),
            lambda: store.add("flow", name="f", processors=["p1", bad]),
            lambda: store.update("socket", "s1", queue=bad),
            lambda: store.remove_processor(bad),
            lambda: store.register_node(bad, "tcp://127.0.0.1:1", 1, "0.1"),
        ]
        for kind in KINDS:
            attempts += [
                lambda kind=kind: store.add(kind, name=bad, **SAMPLES[kind][0]),
                lambda kind=kind: store.get(kind, bad),
                lambda kind=kind: store.delete(kind, bad),
                lambda kind=kind: store.update(kind, bad, **SAMPLES[kind][1]),
            ]
        for i, attempt in enumerate(attempts):
            with pytest.raises(InvalidName):
                attempt()

    def test_name_limits_accepted(self, store: TopologyStore) -> None:
        for name in ("a" * 200, "0", "A.b_c-9"):
            assert store.add_queue(name)["name"] == name
        assert store.get("queue", "a" * 200)["name"] == "a" * 200

    def test_processor_validation(self, store: TopologyStore) -> None:
        for fields, match in PROCESSOR_ERRORS:
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
        for kwargs, match in [
            ({"interval": 0}, "interval"),
            ({"cron": "* * *"}, "cron"),
            ({"cron": "* * * * * * *"}, "cron"),
            ({"cron": "*; rm * * * *"}, "cron"),
        ]:
            with pytest.raises(InvalidName, match=match):
                store.add_socket("s2", "proc1", "f", "q1", **kwargs)
        assert [q["name"] for q in store.list("queue")] == ["q1"]
        assert [s["name"] for s in store.list("socket")] == ["sock1"]

    def test_snapshot_and_version(self, store: TopologyStore) -> None:
        snapshot = store.snapshot()
        assert len(snapshot.epoch) == 36  # the database's identity, set when it was created
        assert snapshot == Topology(version=0, epoch=snapshot.epoch, processors={}, sockets={}, queues={})
        populate(store)
        assert store.version() == 3
        snap = store.snapshot()
        assert snap.version == 3
        assert snap.queues["q1"] == QueueDef(
            id=store.get("queue", "q1")["id"], name="q1", type="direct", durable=True, max_length=None,
            message_ttl=None, description=None,
        )  # fmt: skip
        p = snap.processors["proc1"]
        assert isinstance(p, ProcessorDef) and p.concurrency == 2 and p.module == "pkg.mod" and p.enabled
        assert not p.paused and p.restarts == 0 and p.tag is None and p.rate_limit is None
        s = snap.sockets["sock1"]
        assert isinstance(s, SocketDef) and (s.processor, s.queue, s.function) == ("proc1", "q1", "work")
        with pytest.raises(AttributeError):
            p.concurrency = 5  # type: ignore[misc]
        # reads do not move the version
        for _ in range(3):
            store.list("socket"), store.get("queue", "q1"), store.snapshot(), store.export()
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
        # a hand-declared node is taken over by the daemon of that name; its description stays
        store.add("node", name="node3", description="spare")
        declared = store.get("node", "node3")
        assert (declared["endpoint"], declared["version"], declared["last_seen"]) == ("", "", 0.0)
        taken = store.register_node("node3", "tcp://10.0.0.3:1", 8, "0.2.0")
        assert taken["description"] == "spare" and taken["cpus"] == 8 and taken["last_seen"] > 0

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
        # one change row per version, no gaps
        assert [r[0] for r in rows(stores[0], "SELECT version FROM change ORDER BY version")] == list(range(1, 41))

    def test_unknown_kwargs_on_add(self, store: TopologyStore) -> None:
        with pytest.raises(InvalidName, match="unknown socket field"):
            store.add_socket("s", "p", "f", "q", schedule="x")


# --------------------------------------------------------------------------- #3: every kind


class TestKindsContract:
    @pytest.mark.parametrize("kind", KINDS)
    def test_add_get_list_update_delete(self, store: TopologyStore, kind: str) -> None:
        world(store)
        fields, changes, def_cls = SAMPLES[kind]
        v = store.version()
        added = store.add(kind, name="obj1", **fields)
        assert store.version() == v + 1
        assert added["name"] == "obj1" and len(added["id"]) == 36 and isinstance(added["created"], float)
        for key, value in fields.items():
            expected = sorted(value) if key == "processors" else value
            assert added[key] == expected, key
        assert store.get(kind, "obj1") == added
        assert "obj1" in [row["name"] for row in store.list(kind)]
        names = [row["name"] for row in store.list(kind)]
        assert names == sorted(names)
        snap = store.snapshot()
        item = getattr(snap, f"{kind}s")["obj1"]
        assert isinstance(item, def_cls)
        assert {f: getattr(item, f) for f in fields} == {
            f: tuple(sorted(x)) if f == "processors" else x for f, x in fields.items()}
        with pytest.raises(AlreadyExists, match=f"{kind} 'obj1' already exists"):
            store.add(kind, name="obj1", **fields)

        updated = store.update(kind, "obj1", **changes)
        assert store.version() == v + 2
        for key, value in changes.items():
            assert updated[key] == value, key
        assert updated["updated"] >= added["updated"] and updated["created"] == added["created"]
        assert store.update(kind, "obj1", **changes) == updated  # no-op
        assert store.update(kind, "obj1") == updated
        assert store.version() == v + 2
        with pytest.raises(InvalidName, match=f"unknown {kind} field"):
            store.update(kind, "obj1", colour="red")
        with pytest.raises(InvalidName, match="renaming is not supported"):
            store.update(kind, "obj1", name="obj2")
        assert store.update(kind, "obj1", name="obj1") == updated

        assert store.delete(kind, "obj1") == updated
        assert store.version() == v + 3
        with pytest.raises(NotFound, match=f"{kind} 'obj1' does not exist"):
            store.get(kind, "obj1")
        assert "obj1" not in getattr(store.snapshot(), f"{kind}s")

    def test_defaults(self, store: TopologyStore) -> None:
        world(store)
        node = store.get("node", "n1")
        assert {k: node[k] for k in ("endpoint", "cpus", "version", "last_seen", "description")} == {
            "endpoint": "", "cpus": 1, "version": "", "last_seen": 0.0, "description": None}
        plug = store.add("plug", name="pl", source="s1", target="s2", queue="q1")
        assert (plug["type"], plug["argument"], plug["description"]) == ("RESULT", None, None)
        dep = store.add("deployment", name="d", processor="p1", node="n1")
        assert dep["cpus"] is None
        flow = store.add("flow", name="f")
        assert flow["processors"] == [] and flow["description"] is None

    def test_field_validation(self, store: TopologyStore) -> None:
        world(store)
        v = store.version()
        for kind, fields, match in FIELD_ERRORS:
            with pytest.raises(InvalidName, match=match):
                store.add(kind, name="x", **fields)
        assert store.version() == v

    def test_commit_and_tag_are_exclusive(self, store: TopologyStore) -> None:
        with pytest.raises(InvalidName, match="mutually exclusive"):
            store.add("processor", name="p", gitrepo=GITREPO, module="m", commit="abcd", tag="v1")
        store.add("processor", name="p", gitrepo=GITREPO, module="m", commit="abcd", branch="main")
        v = store.version()
        with pytest.raises(InvalidName, match="mutually exclusive"):
            store.update("processor", "p", tag="v1")
        assert store.version() == v
        p = store.update("processor", "p", tag="v1", commit=None)
        assert (p["tag"], p["commit"], p["branch"]) == ("v1", None, "main")
        with pytest.raises(InvalidName, match="mutually exclusive"):
            store.update("processor", "p", commit="abcdef")

    def test_rate_limit_format(self, store: TopologyStore) -> None:
        for i, value in enumerate(["1/s", "100/m", "5/h", "999999999/s", None]):
            assert store.add("processor", name=f"p{i}", gitrepo=GITREPO, module="m", rate_limit=value)[
                "rate_limit"] == value
        assert store.update("processor", "p0", rate_limit="7/h")["rate_limit"] == "7/h"
        v = store.version()
        for value in ["0/s", "10", "10/d", "1.5/s", "-1/s", " 1/s", "1/s ", "1/S", "01/s", "1000000000/s", 5, ""]:
            with pytest.raises(InvalidName, match="rate_limit"):
                store.add("processor", name="p", gitrepo=GITREPO, module="m", rate_limit=value)
            with pytest.raises(InvalidName, match="rate_limit"):
                store.update("processor", "p0", rate_limit=value)
        assert store.version() == v

    def test_reference_errors(self, store: TopologyStore) -> None:
        world(store)
        v = store.version()
        cases = [
            (lambda: store.add("plug", name="pl", source="nope", target="s2", queue="q1"), "socket 'nope'"),
            (lambda: store.add("plug", name="pl", source="s1", target="s2", queue="nope"), "queue 'nope'"),
            (lambda: store.add("deployment", name="d", processor="p1", node="nope"), "node 'nope'"),
            (lambda: store.add("deployment", name="d", processor="nope", node="n1"), "processor 'nope'"),
            (lambda: store.add("flow", name="f", processors=["p1", "nope"]), "processor 'nope'"),
            (lambda: store.update("socket", "s1", queue="nope"), "queue 'nope'"),
            (lambda: store.update("socket", "s1", processor="nope"), "processor 'nope'"),
        ]
        for attempt, what in cases:
            with pytest.raises(NotFound, match=f"{what} does not exist"):
                attempt()
        assert store.version() == v
        assert store.list("flow") == [] and store.get("socket", "s1")["queue"] == "q1"

    def test_still_referenced_names_every_referrer(self, store: TopologyStore) -> None:
        world(store)
        store.add("socket", name="s0", processor="p1", function="f", queue="q1")
        store.add("plug", name="pl1", source="s1", target="s2", queue="q1")
        store.add("plug", name="pl2", source="s3", target="s1", queue="q1")
        store.add("deployment", name="d1", processor="p1", node="n1")
        store.add("flow", name="f1", processors=["p1", "p2"])
        store.add("flow", name="f0", processors=["p1"])
        v = store.version()
        expected = {
            ("processor", "p1"): "processor 'p1' is used by socket(s): s0, s1; deployment(s): d1; flow(s): f0, f1",
            ("processor", "p2"): "processor 'p2' is used by socket(s): s2, s3; flow(s): f1",
            ("queue", "q1"): "queue 'q1' is used by socket(s): s0, s1, s2, s3; plug(s): pl1, pl2",
            ("socket", "s1"): "socket 's1' is used by plug(s): pl1, pl2",
            ("node", "n1"): "node 'n1' is used by deployment(s): d1",
        }
        for (kind, name), message in expected.items():
            with pytest.raises(StillReferenced) as info:
                store.delete(kind, name)
            assert str(info.value) == message
        assert store.version() == v
        for kind, name in [("plug", "pl1"), ("plug", "pl2"), ("flow", "f1"), ("flow", "f0"), ("deployment", "d1"),
                           ("socket", "s1"), ("socket", "s0"), ("processor", "p1"), ("node", "n1")]:
            store.delete(kind, name)
        assert store.version() == v + 9

    def test_concurrent_restarts_each_count(self, make_store: Callable[[], TopologyStore]) -> None:
        first, second = make_store(), make_store()
        first.add("processor", name="p1", gitrepo=GITREPO, module="pkg.mod")
        threads = [threading.Thread(target=store.restart_processor, args=("p1",)) for store in (first, second) * 3]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert first.get("processor", "p1")["restarts"] == 6
        with pytest.raises(NotFound, match="processor 'nope' does not exist"):
            first.restart_processor("nope")

    def test_remove_processor(self, store: TopologyStore) -> None:
        world(store)
        store.add("socket", name="s0", processor="p1", function="f", queue="q1")
        store.add("plug", name="pl1", source="s1", target="s2", queue="q1")
        store.add("plug", name="pl2", source="s3", target="s0", queue="q1")
        store.add("plug", name="pl3", source="s2", target="s3", queue="q1")  # not touching p1
        store.add("deployment", name="d1", processor="p1", node="n1")
        store.add("deployment", name="d2", processor="p2", node="n1")
        store.add("flow", name="f1", processors=["p1", "p2"])
        store.add("flow", name="f2", processors=["p2"])
        before = store.snapshot()
        assert store.remove_processor("p1") == {
            "processor": "p1", "sockets": ["s0", "s1"], "plugs": ["pl1", "pl2"], "deployments": ["d1"],
            "flows": ["f1"]}
        snap = store.snapshot()
        assert set(snap.processors) == {"p2"} and set(snap.sockets) == {"s2", "s3"}
        assert set(snap.plugs) == {"pl3"} and set(snap.deployments) == {"d2"}
        assert snap.flows["f1"].processors == ("p2",) and snap.flows["f2"].processors == ("p2",)
        assert snap.version == before.version + 7  # 4 deletes besides the processor, 1 flow, the processor
        delta = store.changes_since(before.version)
        assert delta is not None and before.apply(delta) == snap
        assert delta.changed["socket"] == {"s0": None, "s1": None}
        with pytest.raises(NotFound, match="processor 'p1' does not exist"):
            store.remove_processor("p1")
        assert store.remove_processor("p2")["sockets"] == ["s2", "s3"]

    def test_plug_cycles_refused(self, store: TopologyStore) -> None:
        world(store)
        store.add("socket", name="s4", processor="p1", function="f", queue="q1")
        store.add("plug", name="a", source="s1", target="s2", queue="q1")
        store.add("plug", name="b", source="s2", target="s3", queue="q1")
        store.add("plug", name="twin", source="s1", target="s2", queue="q1")  # parallel plugs are fine
        store.add("plug", name="c", source="s1", target="s3", queue="q1")  # a diamond is no cycle (shortest path shown)
        v = store.version()
        with pytest.raises(TopologyError, match="plug 'x' would make a cycle: s3 -> s1 -> s3"):
            store.add("plug", name="x", source="s3", target="s1", queue="q1")
        with pytest.raises(TopologyError, match="plug 'self' would make a cycle: s4 -> s4"):
            store.add("plug", name="self", source="s4", target="s4", queue="q1")
        store.add("plug", name="d", source="s3", target="s4", queue="q1")
        with pytest.raises(TopologyError, match="plug 'd' would make a cycle: s3 -> s2 -> s3"):
            store.update("plug", "d", target="s2")
        with pytest.raises(TopologyError, match="cycle"):
            store.apply({"plugs": [{"name": "e", "source": "s4", "target": "s1", "queue": "q1"}]})
        assert store.version() == v + 1
        assert store.get("plug", "d")["target"] == "s4"

    def test_concurrent_plugs_cannot_close_a_cycle(self, make_store: Callable[[], TopologyStore]) -> None:
        a, b = make_store(), make_store()
        world(a)
        for attempt in range(5):
            start = threading.Barrier(2, timeout=30)
            outcome: dict[str, Any] = {}

            def add(store: TopologyStore, name: str, source: str, target: str) -> None:
                start.wait()
                try:
                    outcome[name] = store.add("plug", name=name, source=source, target=target, queue="q1")
                except BaseException as e:  # noqa: BLE001 - checked below
                    outcome[name] = e

            threads = [threading.Thread(target=add, args=(a, f"x{attempt}", "s1", "s2")),
                       threading.Thread(target=add, args=(b, f"y{attempt}", "s2", "s1"))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
            assert not any(t.is_alive() for t in threads)
            failures = [v for v in outcome.values() if isinstance(v, BaseException)]
            assert len(failures) == 1 and "cycle" in str(failures[0]), outcome
            for name, value in outcome.items():
                if not isinstance(value, BaseException):
                    a.delete("plug", name)

    def test_text_stored_verbatim(self, store: TopologyStore) -> None:
        world(store)
        for i, text in enumerate(TEXTS):
            for kind in ("queue", "node", "processor", "socket", "plug", "flow"):
                fields = {**SAMPLES[kind][0], "description": text}
                assert store.add(kind, name=f"t{i}", **fields)["description"] == text
                assert store.get(kind, f"t{i}")["description"] == text
            store.update("queue", "q1", description=text)
            assert store.get("queue", "q1")["description"] == text
            p = store.update("processor", "p1", requirements=text)
            assert p["requirements"] == text
        snap = store.snapshot()
        for i, text in enumerate(TEXTS):
            for kind in ("queue", "node", "processor", "socket", "plug", "flow"):
                assert getattr(snap, f"{kind}s")[f"t{i}"].description == text
        spec = store.export()
        assert spec["processors"][[e["name"] for e in spec["processors"]].index("p1")]["requirements"] == TEXTS[-1]
        assert [e["description"] for e in spec["queues"] if e["name"].startswith("t")] == TEXTS
        assert store.apply(spec)["changes"] == []
        # the tables are intact
        assert len(store.list("processor")) == 2 + len(TEXTS)


# --------------------------------------------------------------------------- change log and deltas


class TestChangesContract:
    def test_change_rows(self, store: TopologyStore) -> None:
        world(store)
        store.update("queue", "q1", description="x")
        store.update("queue", "q1", description="x")  # no change, no row
        store.delete("socket", "s3")
        store.register_node("n1", "tcp://1.2.3.4:5", 2, "0.3")
        store.register_node("n1", "tcp://1.2.3.4:5", 2, "0.3")  # heartbeat: no row
        log = rows(store, "SELECT version, kind, name, op FROM change ORDER BY version")
        assert [tuple(r) for r in log] == [
            (1, "queue", "q1", "upsert"), (2, "node", "n1", "upsert"), (3, "processor", "p1", "upsert"),
            (4, "processor", "p2", "upsert"), (5, "socket", "s1", "upsert"), (6, "socket", "s2", "upsert"),
            (7, "socket", "s3", "upsert"), (8, "queue", "q1", "upsert"), (9, "socket", "s3", "delete"),
            (10, "node", "n1", "upsert"),
        ]  # fmt: skip
        assert store.version() == 10

    def test_changes_since(self, store: TopologyStore) -> None:
        world(store)
        base = store.snapshot()
        assert store.changes_since(base.version) == TopologyDelta(version=base.version, changed={}, epoch=base.epoch)
        assert store.changes_since(base.version, "another-database") is None  # dropped and made again
        store.update("processor", "p1", concurrency=3)
        store.delete("socket", "s3")
        store.add("flow", name="f", processors=["p1"])
        delta = store.changes_since(base.version)
        assert delta is not None and delta.version == base.version + 3
        assert delta.changed == {
            "processor": {"p1": store.snapshot().processors["p1"]},
            "socket": {"s3": None},
            "flow": {"f": FlowDef(id=store.get("flow", "f")["id"], name="f", description=None, processors=("p1",))},
        }
        assert base.apply(delta) == store.snapshot()
        assert base.version == delta.version - 3 and "s3" in base.sockets  # apply made a new object
        assert store.changes_since(delta.version + 1) is None  # ahead of the store
        assert store.changes_since(-1) is None
        # an object added and deleted in between shows as deleted
        store.add("queue", name="tmp")
        store.delete("queue", "tmp")
        later = store.changes_since(delta.version)
        assert later is not None and later.changed == {"queue": {"tmp": None}}
        assert base.apply(delta).apply(later) == store.snapshot()

    def test_deltas_rebuild_every_snapshot(self, store: TopologyStore) -> None:
        """A random walk of changes: from any earlier snapshot, snapshot + delta == fresh snapshot."""
        rng = random.Random(1234)
        history = [store.snapshot()]
        names = [f"o{i}" for i in range(4)]

        def pick(kind: str) -> str:
            existing = [row["name"] for row in store.list(kind)]
            return rng.choice(existing or names)

        operations: list[Callable[[], Any]] = [
            lambda: store.add("queue", name=rng.choice(names), max_length=rng.randint(1, 9)),
            lambda: store.add("node", name=rng.choice(names), cpus=rng.randint(1, 9)),
            lambda: store.register_node(rng.choice(names), f"tcp://h:{rng.randint(1, 3)}", 2, "1"),
            lambda: store.add("processor", name=rng.choice(names), gitrepo=GITREPO, module="m"),
            lambda: store.update("processor", pick("processor"), concurrency=rng.randint(1, 4),
                                 paused=rng.random() < 0.5),
            lambda: store.add("socket", name=rng.choice(names), processor=pick("processor"), function="f",
                              queue=pick("queue")),
            lambda: store.add("plug", name=rng.choice(names), source=pick("socket"), target=pick("socket"),
                              queue=pick("queue")),
            lambda: store.add("deployment", name=rng.choice(names), processor=pick("processor"), node=pick("node")),
            lambda: store.add("flow", name=rng.choice(names), processors=[pick("processor")]),
            lambda: store.update("flow", pick("flow"), processors=[pick("processor"), pick("processor")]),
            lambda: store.delete(rng.choice(KINDS), rng.choice(names)),
            lambda: store.remove_processor(pick("processor")),
        ]
        for _ in range(120):
            try:
                rng.choice(operations)()
            except TopologyError:
                pass  # NotFound, AlreadyExists, StillReferenced, cycles: part of the walk
            history.append(store.snapshot())
        final = store.snapshot()
        assert final.version > 30
        assert sum(len(getattr(final, f"{kind}s")) for kind in KINDS) > 5
        for base in history:
            delta = store.changes_since(base.version)
            assert delta is not None and delta.version == final.version
            assert base.apply(delta) == final

    def test_trimmed_change_log(self, store: TopologyStore) -> None:
        store.change_log_keep = 5
        for i in range(8):
            store.add_queue(f"q{i}")
        assert [r[0] for r in rows(store, "SELECT version FROM change ORDER BY version")] == [4, 5, 6, 7, 8]
        assert store.changes_since(2) is None  # version 3 is gone: take a snapshot
        assert store.changes_since(0) is None
        delta = store.changes_since(3)
        assert delta is not None and sorted(delta.changed["queue"]) == ["q3", "q4", "q5", "q6", "q7"]
        # the trimming counts versions, so one big apply trims in one go
        store.apply({"queues": [{"name": f"z{i}"} for i in range(7)]})
        assert [r[0] for r in rows(store, "SELECT version FROM change ORDER BY version")] == list(range(11, 16))
        assert store.changes_since(9) is None and store.changes_since(10) is not None

    def test_big_delta(self, store: TopologyStore) -> None:
        """One apply of 1,200 objects: a delta that names more objects than one IN list holds."""
        assert CHANGE_LOG_KEEP == 10_000 == store.change_log_keep
        base = store.snapshot()
        store.apply({"queues": {f"q{i}": {"max_length": i + 1} for i in range(1_200)}})
        delta = store.changes_since(base.version)
        assert delta is not None and len(delta.changed["queue"]) == 1_200 and delta.version == 1_200
        assert base.apply(delta) == store.snapshot()
        assert rows(store, "SELECT min(version), max(version), count(*) FROM change")[0] == (1, 1_200, 1_200)

    def test_version_is_not_moved_by_reads_or_failures(self, store: TopologyStore) -> None:
        world(store)
        v = store.version()
        for attempt in (
            lambda: store.add("queue", name="q1"),
            lambda: store.delete("processor", "p1"),
            lambda: store.update("socket", "s1", function="1"),
            lambda: store.apply({"queues": [{"name": "new"}, {"name": "q1", "type": "nope"}]}),
        ):
            with pytest.raises(TopologyError):
                attempt()
        store.snapshot(), store.export(), store.list("plug"), store.changes_since(0)
        assert store.version() == v
        assert rows(store, "SELECT max(version) FROM change")[0][0] == v
        assert "new" not in {q["name"] for q in store.list("queue")}

    def test_notify_on_every_change(self, store: TopologyStore, store_url: str) -> None:
        if store.dialect != "postgresql":
            pytest.skip("NOTIFY is PostgreSQL's")
        import psycopg

        with psycopg.connect(store_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute("LISTEN ec_topology")
            store.add_queue("q1")
            store.update("queue", "q1", type="direct")  # no change: no notification
            store.apply({"queues": [{"name": "q2"}, {"name": "q3"}]})  # one transaction, one notification
            store.apply({"queues": [{"name": "q2"}]}, dry_run=True)
            store.add_queue("q4", description="last")
            got = [(n.channel, n.payload) for n in conn.notifies(timeout=30, stop_after=3)]
        assert got == [("ec_topology", "1"), ("ec_topology", "3"), ("ec_topology", "4")]


# --------------------------------------------------------------------------- apply / export

SPEC: dict[str, Any] = {
    "queues": [{"name": "q1"}, {"name": "q2", "type": "fanout", "description": "fan out"}],
    "nodes": {"n1": {"endpoint": "tcp://10.0.0.1:7700", "cpus": 8}},
    "processors": [
        {"name": "p1", "gitrepo": GITREPO, "module": "pkg.one", "concurrency": 2, "rate_limit": "10/s"},
        {"name": "p2", "gitrepo": GITREPO, "module": "pkg.two", "tag": "v1", "timelimit": 30},
    ],
    "sockets": [
        {"name": "s1", "processor": "p1", "function": "f", "queue": "q1"},
        {"name": "s2", "processor": "p2", "function": "g", "queue": "q2"},
    ],
    "plugs": [{"name": "pl1", "source": "s1", "target": "s2", "argument": "one", "type": "RESULT", "queue": "q1"}],
    "deployments": [{"name": "d1", "processor": "p1", "node": "n1", "cpus": 2}],
    "flows": [{"name": "f1", "processors": ["p2", "p1"], "description": "both"}],
}
SPEC_ORDER = [("queue", "q1"), ("queue", "q2"), ("node", "n1"), ("processor", "p1"), ("processor", "p2"),
              ("socket", "s1"), ("socket", "s2"), ("plug", "pl1"), ("deployment", "d1"), ("flow", "f1")]


class TestApplyContract:
    def test_dry_run_writes_nothing(self, store: TopologyStore) -> None:
        result = store.apply(SPEC, dry_run=True)
        assert result["applied"] is False and result["version"] == 0
        assert [(c["action"], c["kind"], c["name"]) for c in result["changes"]] == [
            ("add", kind, name) for kind, name in SPEC_ORDER]
        assert store.version() == 0
        for kind in KINDS:
            assert store.list(kind) == []
        assert rows(store, "SELECT count(*) FROM change")[0][0] == 0

    def test_apply_is_idempotent(self, store: TopologyStore) -> None:
        planned = store.apply(SPEC, dry_run=True)["changes"]
        result = store.apply(SPEC)
        assert result["applied"] is True and result["version"] == 10 == store.version()
        assert result["changes"] == planned
        add_p2 = result["changes"][4]
        assert add_p2["fields"]["tag"] == [None, "v1"] and add_p2["fields"]["timelimit"] == [None, 30.0]
        assert add_p2["fields"]["concurrency"] == [None, 1]  # defaults are shown too
        assert "id" not in add_p2["fields"] and "restarts" not in add_p2["fields"]
        assert result["changes"][-1]["fields"]["processors"] == [None, ["p1", "p2"]]
        assert store.get("plug", "pl1")["argument"] == "one"
        assert store.get("flow", "f1")["processors"] == ["p1", "p2"]
        again = store.apply(SPEC)
        assert again == {"changes": [], "applied": True, "version": 10}
        assert store.apply(SPEC, dry_run=True)["changes"] == []

    def test_apply_updates_only_given_fields(self, store: TopologyStore) -> None:
        store.apply(SPEC)
        store.update("processor", "p1", description="kept")
        v = store.version()
        result = store.apply({"processors": {"p1": {"concurrency": 3}}, "flows": [{"name": "f1", "processors": ["p1"]}]})
        assert result["changes"] == [
            {"action": "update", "kind": "processor", "name": "p1", "fields": {"concurrency": [2, 3]}},
            {"action": "update", "kind": "flow", "name": "f1", "fields": {"processors": [["p1", "p2"], ["p1"]]}},
        ]
        assert result["version"] == v + 2
        p1 = store.get("processor", "p1")
        assert p1["concurrency"] == 3 and p1["description"] == "kept" and p1["rate_limit"] == "10/s"

    def test_prune(self, store: TopologyStore) -> None:
        store.apply(SPEC)
        store.add("queue", name="extra")
        smaller = {
            "queues": SPEC["queues"],
            "nodes": {},
            "processors": SPEC["processors"][:1],
            "sockets": SPEC["sockets"][:1],
            "plugs": [],
            "flows": [{"name": "f1", "processors": ["p1"], "description": "both"}],
        }
        dry = store.apply(smaller, prune=True, dry_run=True)
        result = store.apply(smaller, prune=True)
        assert dry["changes"] == result["changes"]
        assert [(c["action"], c["kind"], c["name"]) for c in result["changes"]] == [
            ("update", "flow", "f1"),
            ("delete", "plug", "pl1"), ("delete", "socket", "s2"), ("delete", "processor", "p2"),
            ("delete", "queue", "extra"),
        ]  # fmt: skip
        assert result["changes"][1]["fields"]["source"] == ["s1", None]
        assert [n["name"] for n in store.list("node")] == ["n1"]  # nodes are never pruned
        assert [d["name"] for d in store.list("deployment")] == ["d1"]  # section not listed
        assert store.apply(smaller, prune=True)["changes"] == []

    def test_prune_refuses_to_orphan(self, store: TopologyStore) -> None:
        store.apply(SPEC)
        v = store.version()
        with pytest.raises(StillReferenced, match=r"processor 'p2' is used by socket\(s\): s2"):
            store.apply({"processors": SPEC["processors"][:1]}, prune=True)
        assert store.version() == v and len(store.list("processor")) == 2

    def test_export_round_trips(self, store: TopologyStore, new_url: Callable[[], str],
                                open_store: Callable[[str], TopologyStore]) -> None:
        store.apply(SPEC)
        store.register_node("n2", "tcp://10.0.0.2:7700", 4, "0.3.0")
        store.update("processor", "p1", restarts=3, paused=True)
        spec = store.export()
        assert list(spec) == list(netspec.SECTIONS)
        assert spec["nodes"] == [
            {"name": "n1", "endpoint": "tcp://10.0.0.1:7700", "cpus": 8, "description": None, "key": ""},
            {"name": "n2", "endpoint": "tcp://10.0.0.2:7700", "cpus": 4, "description": None, "key": ""},
        ]
        p1 = spec["processors"][0]
        assert p1["name"] == "p1" and p1["paused"] is True and p1["rate_limit"] == "10/s"
        for section in spec.values():
            for entry in section:
                assert not {"id", "created", "updated", "last_seen", "restarts", "version"} & set(entry)
        assert spec["flows"] == [{"name": "f1", "description": "both", "processors": ["p1", "p2"]}]
        assert store.apply(spec) == {"changes": [], "applied": True, "version": store.version()}
        assert store.apply(spec, prune=True)["changes"] == []
        other = open_store(new_url())
        assert len(other.apply(spec)["changes"]) == 11
        assert other.export() == spec
        assert other.apply(spec)["changes"] == []

    def test_map_and_list_sections_are_equivalent(self, store: TopologyStore) -> None:
        as_maps = {
            section: {e["name"]: {k: v for k, v in e.items() if k != "name"} for e in entries}
            if isinstance(entries, list) else entries
            for section, entries in SPEC.items()
        }
        as_maps["queues"]["q1"] = None  # no fields at all: defaults
        store.apply(as_maps)
        assert store.apply(SPEC)["changes"] == []

    @pytest.mark.parametrize(
        ("spec", "error", "match"),
        [
            ([], InvalidName, "expected a map of sections"),
            ({"tables": []}, InvalidName, "unknown spec section"),
            ({"queues": "q1"}, InvalidName, "expected a list or a map"),
            ({"queues": [{"type": "direct"}]}, InvalidName, "expected a map with a name"),
            ({"queues": ["q1"]}, InvalidName, "expected a map with a name"),
            ({"queues": [{"name": "q1"}, {"name": "q1"}]}, InvalidName, "listed twice"),
            ({"queues": {"q1": {"name": "q2"}}}, InvalidName, "name field says"),
            ({"queues": {"q1": 5}}, InvalidName, "expected a map of fields"),
            ({"queues": [{"name": "bad name"}]}, InvalidName, "invalid queue name"),
            ({"queues": [{"name": 7}]}, InvalidName, "invalid queue name"),
            ({"queues": [{"name": "q1", "colour": "red"}]}, InvalidName, "unknown queue field"),
            ({"sockets": [{"name": "s", "processor": "p", "function": "f", "queue": "q"}]}, NotFound,
             "processor 'p' does not exist"),
        ],
    )
    def test_bad_specs_change_nothing(self, store: TopologyStore, spec: Any, error: type, match: str) -> None:
        with pytest.raises(error, match=match):
            store.apply(spec)
        assert store.version() == 0 and store.list("queue") == []

    def test_failed_apply_rolls_back_everything(self, store: TopologyStore) -> None:
        store.apply({"queues": [{"name": "q0"}]})
        bad = {**SPEC, "deployments": [{"name": "d1", "processor": "p1", "node": "missing"}]}
        with pytest.raises(NotFound, match="node 'missing'"):
            store.apply(bad)
        assert store.version() == 1 and [q["name"] for q in store.list("queue")] == ["q0"]
        assert store.list("processor") == []


# --------------------------------------------------------------------------- migrations


def _v01_metadata() -> sa.MetaData:
    """The tables ecd 0.1 (issue #2) made with create_all, copied from its models."""
    md = sa.MetaData()

    def common() -> list[sa.Column]:
        return [sa.Column("id", sa.String(36), primary_key=True),
                sa.Column("name", sa.String(200), unique=True, nullable=False),
                sa.Column("created", sa.Float, nullable=False), sa.Column("updated", sa.Float, nullable=False)]

    sa.Table("meta", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
             sa.Column("version", sa.BigInteger, nullable=False))
    sa.Table("node", md, *common(), sa.Column("endpoint", sa.String(500), nullable=False),
             sa.Column("cpus", sa.Integer, nullable=False), sa.Column("version", sa.String(100), nullable=False),
             sa.Column("last_seen", sa.Float, nullable=False))
    sa.Table("queue", md, *common(), sa.Column("type", sa.String(20), nullable=False),
             sa.Column("durable", sa.Boolean, nullable=False), sa.Column("max_length", sa.Integer),
             sa.Column("message_ttl", sa.Integer))
    sa.Table("processor", md, *common(), sa.Column("gitrepo", sa.String(2000), nullable=False),
             sa.Column("module", sa.String(200), nullable=False), sa.Column("branch", sa.String(255)),
             sa.Column("commit", sa.String(64)), sa.Column("requirements", sa.Text),
             sa.Column("concurrency", sa.Integer, nullable=False), sa.Column("retries", sa.Integer, nullable=False),
             sa.Column("retry_delay", sa.Float, nullable=False), sa.Column("timelimit", sa.Float),
             sa.Column("description", sa.Text), sa.Column("enabled", sa.Boolean, nullable=False))
    sa.Table("socket", md, *common(),
             sa.Column("processor_id", sa.String(36), sa.ForeignKey("processor.id"), nullable=False, index=True),
             sa.Column("queue_id", sa.String(36), sa.ForeignKey("queue.id"), nullable=False, index=True),
             sa.Column("function", sa.String(200), nullable=False), sa.Column("interval", sa.Float),
             sa.Column("cron", sa.String(100)))
    return md


def _make_v01_database(url: str) -> None:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        md = _v01_metadata()
        md.create_all(engine)
        t = md.tables
        with engine.begin() as conn:
            conn.execute(t["meta"].insert().values(id=1, version=17))
            conn.execute(t["queue"].insert().values(id="q-id", name="q1", created=1.0, updated=1.0, type="direct",
                                                    durable=True))
            conn.execute(t["processor"].insert().values(
                id="p-id", name="p1", created=1.0, updated=2.0, gitrepo=GITREPO, module="pkg.mod", concurrency=3,
                retries=1, retry_delay=0.5, enabled=False))
            conn.execute(t["socket"].insert().values(id="s-id", name="s1", created=1.0, updated=1.0,
                                                     processor_id="p-id", queue_id="q-id", function="f"))
            conn.execute(t["node"].insert().values(id="n-id", name="n1", created=1.0, updated=1.0,
                                                   endpoint="tcp://x:1", cpus=2, version="0.1.0", last_seen=5.0))
    finally:
        engine.dispose()


class TestMigrationsContract:
    def test_empty_database_to_head(self, store_url: str, open_store: Callable[[str], TopologyStore]) -> None:
        store = open_store(store_url)  # ensure_schema on an empty database
        assert rows(store, "SELECT version_num FROM alembic_version") == [(HEAD,)]
        assert schema_diff(store) == []
        assert store.version() == 0
        store.add_queue("q1")
        # head again: a no-op that keeps the data
        assert store.ensure_schema() == HEAD
        assert rows(store, "SELECT version_num FROM alembic_version") == [(HEAD,)]
        assert store.version() == 1 and store.get("queue", "q1")["name"] == "q1"
        assert schema_diff(store) == []

    def test_v01_database_is_stamped_and_upgraded(self, store_url: str,
                                                  open_store: Callable[[str], TopologyStore]) -> None:
        _make_v01_database(store_url)
        store = open_store(store_url)
        assert rows(store, "SELECT version_num FROM alembic_version") == [(HEAD,)]
        assert schema_diff(store) == []
        assert store.version() == 17
        p1 = store.get("processor", "p1")
        assert (p1["concurrency"], p1["enabled"], p1["paused"], p1["restarts"], p1["tag"]) == (3, False, False, 0, None)
        assert store.get("socket", "s1") | {} == {
            "id": "s-id", "name": "s1", "created": 1.0, "updated": 1.0, "processor": "p1", "function": "f",
            "queue": "q1", "interval": None, "cron": None, "description": None, "catch_up": "once"}
        assert store.get("queue", "q1")["description"] is None
        assert store.get("node", "n1")["endpoint"] == "tcp://x:1"
        # the change log starts now: older versions are not in it
        assert store.changes_since(17) == TopologyDelta(version=17, changed={}, epoch=store.snapshot().epoch)
        assert store.changes_since(16) is None
        store.add("flow", name="f", processors=["p1"])
        delta = store.changes_since(17)
        assert delta is not None and list(delta.changed) == ["flow"] and delta.version == 18
        # an ecd 0.1 still running on the upgraded database moves the version without a change row
        with store.engine.begin() as conn:
            conn.execute(sa.text("UPDATE meta SET version = version + 1"))
        assert store.changes_since(18) is None and store.changes_since(17) is None
        assert store.snapshot().version == 19

    def test_migrations_up_and_down(self, store_url: str, open_store: Callable[[str], TopologyStore]) -> None:
        from alembic import command
        from alembic.config import Config

        from ecd.migrations import SCRIPT_LOCATION

        store = open_store(store_url)
        populate(store)
        store.update("processor", "proc1", tag="v2", paused=True)
        config = Config()
        config.set_main_option("script_location", SCRIPT_LOCATION)
        with store.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0001")
        tables = set(sa.inspect(store.engine).get_table_names())
        assert tables == {"alembic_version", "meta", "node", "queue", "processor", "socket"}
        assert store.ensure_schema() == HEAD
        assert schema_diff(store) == []
        proc = store.get("processor", "proc1")  # kept its rows; the new columns are back at their defaults
        assert (proc["concurrency"], proc["tag"], proc["paused"]) == (2, None, False)
        assert store.get("socket", "sock1")["processor"] == "proc1" and store.version() == 4
        for kind in ("socket", "processor", "queue"):
            store.delete(kind, {"socket": "sock1", "processor": "proc1", "queue": "q1"}[kind])
        with store.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "base")
        assert set(sa.inspect(store.engine).get_table_names()) == {"alembic_version"}

    def test_many_daemons_migrate_at_once(self, store_url: str, open_store: Callable[[str], TopologyStore]) -> None:
        script = "import sys\nfrom ecd.topology import TopologyStore\nprint(TopologyStore(sys.argv[1]).ensure_schema())"
        procs = [subprocess.Popen([sys.executable, "-c", script, store_url], cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(3)]
        outputs = []
        try:
            for proc in procs:
                outputs.append(proc.communicate(timeout=90))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        assert [p.returncode for p in procs] == [0] * 3, outputs
        assert [out.strip() for out, _ in outputs] == [HEAD] * 3
        store = open_store(store_url)
        assert rows(store, "SELECT version_num FROM alembic_version") == [(HEAD,)]
        assert rows(store, "SELECT id, version FROM meta") == [(1, 0)]
        assert schema_diff(store) == []

    def test_schema_missing_is_unavailable(self, store_url: str) -> None:
        store = TopologyStore(store_url)
        try:
            with pytest.raises(StoreUnavailable, match="topology store unavailable"):
                store.version()
            with pytest.raises(StoreUnavailable):
                store.add_queue("q1")
            with pytest.raises(StoreUnavailable):
                store.snapshot()
        finally:
            store.close()


# --------------------------------------------------------------------------- backend specifics


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
        assert {"node", "queue", "processor", "socket", "meta", "plug", "deployment", "flow", "flow_processor",
                "change", "call", "alembic_version"} <= tables
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


def test_postgresql_urls_use_psycopg_and_hide_the_password() -> None:
    store = TopologyStore("postgresql://ec:s3cret@127.0.0.1:1/topology")
    try:
        assert store.engine.url.drivername == "postgresql+psycopg"
        assert store.dialect == "postgresql"
        assert "s3cret" not in store.url and store.url.startswith("postgresql+psycopg://ec:***@127.0.0.1:1/")
        with pytest.raises(StoreUnavailable, match="topology store unavailable"):
            store.version()  # nothing listens on port 1
        with pytest.raises(StoreUnavailable, match="topology store unavailable"):
            store.ensure_schema()
    finally:
        store.close()


def test_kinds_and_sections_agree() -> None:
    assert tuple(netspec.SECTIONS.values()) == KINDS == tuple(netspec.FIELDS) == tuple(netspec.REFS)
    assert Topology(version=0) == Topology(version=0, queues={}, flows={})
