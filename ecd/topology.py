"""Topology store: the network (queues, nodes, processors, sockets, plugs, deployments, flows) in SQL.

The tables are declared in :mod:`ecd.schema` and made by the Alembic migrations in
``ecd/migrations`` (:meth:`TopologyStore.ensure_schema`). The kinds, their fields and checks, and
apply/export of whole specs live in :mod:`ecd.netspec` (pure logic); this module stores.

Design choices:

* Every method opens its own short :class:`~sqlalchemy.orm.Session`, so one store can be used from
  several threads. Methods are synchronous; the daemon calls them off its event loop.
* Results are plain dicts of JSON-friendly values (references by name); times are UNIX seconds.
* Names are validated (1..200 of ``[A-Za-z0-9._-]``, starting with a letter or digit), stored
  verbatim and always bound as parameters. Free text (descriptions) is stored verbatim.
* Deleting something still referenced raises :class:`StillReferenced` naming every referrer:
  nothing disappears by cascade behind the user's back (:meth:`TopologyStore.remove_processor`
  is the one explicit cascade).
* Every write transaction first locks the ``meta`` row (SQLite: ``BEGIN IMMEDIATE``), so writers
  are serialised and checks such as plug cycles see everything committed before them. Each
  touched object moves ``meta.version`` by one and gets a ``change`` row with that version; on
  PostgreSQL ``pg_notify('ec_topology', '<version>')`` is sent in the same transaction (delivered
  at commit). The change log keeps the newest :data:`CHANGE_LOG_KEEP` versions, so a node can
  ask :meth:`TopologyStore.changes_since` for the objects changed after the version it holds.
* Updates that change nothing, and node heartbeats that only refresh ``last_seen``, do not move
  the version.
* Snapshots and deltas are read in one transaction (REPEATABLE READ on PostgreSQL).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, aliased, sessionmaker

from ecd import netspec
from ecd.accounts import ACCESS_KINDS, Accounts, RoleDef, SessionDef, UserDef, load_access, write_audit
from ecd.errors import AlreadyExists, InvalidName, KeyRefused, NotFound, StillReferenced, StoreUnavailable, TopologyError
from ecd.migrations import SCRIPT_LOCATION
from ecd.netspec import (
    FIELDS,
    KINDS,
    MAX_CPUS,
    PLUG_TYPES,
    QUEUE_TYPES,
    REFS,
    check_exclusive,
    check_fields,
    check_int,
    check_kind,
    check_name,
    check_token,
)
from ecd.schema import (
    ChangeModel,
    DeploymentModel,
    FlowModel,
    FlowProcessorModel,
    MetaModel,
    NodeModel,
    PlugModel,
    ProcessorModel,
    QueueModel,
    RevokedKeyModel,
    SocketModel,
)

__all__ = [
    "KINDS",
    "PLUG_TYPES",
    "QUEUE_TYPES",
    "DeploymentDef",
    "FlowDef",
    "NodeDef",
    "PlugDef",
    "ProcessorDef",
    "QueueDef",
    "SocketDef",
    "Topology",
    "TopologyDelta",
    "TopologyStore",
]

log = logging.getLogger(__name__)

#: Milliseconds SQLite waits for a lock before failing.
SQLITE_BUSY_TIMEOUT_MS = 10_000
#: Seconds a PostgreSQL connection attempt may take.
PG_CONNECT_TIMEOUT = 5
#: How many of the newest versions the change log keeps.
CHANGE_LOG_KEEP = 10_000
#: The PostgreSQL NOTIFY channel that carries the new version after each change.
NOTIFY_CHANNEL = "ec_topology"
#: pg_advisory_xact_lock key held while migrating (ASCII "ecschema").
SCHEMA_LOCK_KEY = 0x6563736368656D61

#: Alembic's command functions drive module-level proxies: one migration per process at a time.
_MIGRATE_LOCK = threading.Lock()


# --------------------------------------------------------------------------- snapshot types


@dataclasses.dataclass(frozen=True)
class QueueDef:
    """A queue as seen in a snapshot."""

    id: str
    name: str
    type: str
    durable: bool
    max_length: int | None
    message_ttl: int | None
    description: str | None


@dataclasses.dataclass(frozen=True)
class NodeDef:
    """A node as seen in a snapshot (``last_seen`` is left out: heartbeats do not change it)."""

    id: str
    name: str
    endpoint: str
    cpus: int
    version: str
    description: str | None
    key: str = ""  # its CURVE public key (Z85): peers admit only nodes with a registered key


@dataclasses.dataclass(frozen=True)
class ProcessorDef:
    """A processor as seen in a snapshot."""

    id: str
    name: str
    gitrepo: str
    module: str
    branch: str | None
    commit: str | None
    requirements: str | None
    concurrency: int
    retries: int
    retry_delay: float
    timelimit: float | None
    description: str | None
    enabled: bool
    tag: str | None
    rate_limit: str | None
    paused: bool
    restarts: int


@dataclasses.dataclass(frozen=True)
class SocketDef:
    """A socket as seen in a snapshot; ``processor`` and ``queue`` are names."""

    id: str
    name: str
    processor: str
    queue: str
    function: str
    interval: float | None
    cron: str | None
    description: str | None
    catch_up: str = "once"
    created: float = 0.0  # when it was added (a schedule's ticks start after it)


@dataclasses.dataclass(frozen=True)
class PlugDef:
    """A plug as seen in a snapshot; ``source``, ``target`` (sockets) and ``queue`` are names."""

    id: str
    name: str
    source: str
    target: str
    argument: str | None
    type: str
    queue: str
    description: str | None


@dataclasses.dataclass(frozen=True)
class DeploymentDef:
    """A deployment as seen in a snapshot; ``processor`` and ``node`` are names."""

    id: str
    name: str
    processor: str
    node: str
    cpus: int | None


@dataclasses.dataclass(frozen=True)
class FlowDef:
    """A flow as seen in a snapshot; ``processors`` are names, sorted."""

    id: str
    name: str
    description: str | None
    processors: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class TopologyDelta:
    """The objects changed after some version: ``changed[kind][name]`` is the new Def or None (deleted)."""

    version: int
    changed: dict[str, dict[str, Any]]
    epoch: str = ""


@dataclasses.dataclass(frozen=True)
class Topology:
    """A consistent view of the whole topology at change ``version``."""

    version: int
    epoch: str = ""  # the database's identity (meta.epoch): versions only compare within one
    queues: dict[str, QueueDef] = dataclasses.field(default_factory=dict)
    nodes: dict[str, NodeDef] = dataclasses.field(default_factory=dict)
    processors: dict[str, ProcessorDef] = dataclasses.field(default_factory=dict)
    sockets: dict[str, SocketDef] = dataclasses.field(default_factory=dict)
    plugs: dict[str, PlugDef] = dataclasses.field(default_factory=dict)
    deployments: dict[str, DeploymentDef] = dataclasses.field(default_factory=dict)
    flows: dict[str, FlowDef] = dataclasses.field(default_factory=dict)
    # access (issue #12): users with their roles and direct rights, roles, login sessions by key
    users: dict[str, UserDef] = dataclasses.field(default_factory=dict)
    roles: dict[str, RoleDef] = dataclasses.field(default_factory=dict)
    sessions: dict[str, SessionDef] = dataclasses.field(default_factory=dict)

    def apply(self, delta: TopologyDelta) -> Topology:
        """This topology with ``delta`` applied (a new object; this one is left alone)."""
        parts = {f"{kind}s": dict(getattr(self, f"{kind}s")) for kind in ALL_KINDS}
        for kind, items in delta.changed.items():
            target = parts[f"{kind}s"]
            for name, value in items.items():
                if value is None:
                    target.pop(name, None)
                else:
                    target[name] = value
        return Topology(version=delta.version, epoch=delta.epoch or self.epoch, **parts)


#: Every kind of the change log: the network's, then the access kinds (users, roles, sessions).
ALL_KINDS = (*KINDS, *ACCESS_KINDS)

_MODELS: dict[str, Any] = {
    "queue": QueueModel, "node": NodeModel, "processor": ProcessorModel, "socket": SocketModel,
    "plug": PlugModel, "deployment": DeploymentModel, "flow": FlowModel,
}  # fmt: skip
#: Key order of the dicts returned: common columns, then the fields as FIELDS lists them.
_FIELD_ORDER = {kind: ("id", "name", "created", "updated", *FIELDS[kind]) for kind in KINDS}
_DEFS: dict[str, type] = {
    "queue": QueueDef, "node": NodeDef, "processor": ProcessorDef, "socket": SocketDef,
    "plug": PlugDef, "deployment": DeploymentDef, "flow": FlowDef,
}  # fmt: skip


# --------------------------------------------------------------------------- reading rows


def _chunks(names: Iterable[str], size: int = 500) -> Iterator[list[str]]:
    items = sorted(names)
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _load(session: Session, kind: str, names: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Objects of ``kind`` as dicts (references by name), sorted by name; ``names`` filters."""
    if names is not None:
        return sorted((row for chunk in _chunks(names) for row in _load_where(session, kind, chunk)),
                      key=lambda row: row["name"])
    return _load_where(session, kind, None)


def _load_where(session: Session, kind: str, names: list[str] | None) -> list[dict[str, Any]]:
    model = _MODELS[kind]
    stmt = sa.select(model)
    for field, ref_kind in REFS[kind].items():
        ref = aliased(_MODELS[ref_kind])
        stmt = stmt.join(ref, getattr(model, f"{field}_id") == ref.id).add_columns(ref.name)
    if names is not None:
        stmt = stmt.where(model.name.in_(names))
    skip = {f"{field}_id" for field in REFS[kind]}
    columns = [c.key for c in sa.inspect(model).column_attrs if c.key not in skip]
    out = []
    for row in session.execute(stmt.order_by(model.name)):
        values = {key: getattr(row[0], key) for key in columns}
        values.update(zip(REFS[kind], row[1:]))
        item = {key: values[key] for key in _FIELD_ORDER[kind] if key in values}  # user's order
        item.update(values)
        out.append(item)
    if kind == "flow" and out:
        members: dict[str, list[str]] = {item["id"]: [] for item in out}
        for flow_id, proc in session.execute(
            sa.select(FlowProcessorModel.flow_id, ProcessorModel.name)
            .join(ProcessorModel, FlowProcessorModel.processor_id == ProcessorModel.id)
            .where(FlowProcessorModel.flow_id.in_(list(members)))
        ):
            members[flow_id].append(proc)
        for item in out:
            item["processors"] = sorted(members[item["id"]])
    return out


def _as_def(kind: str, item: dict[str, Any]) -> Any:
    """Build the frozen ``*Def`` of ``kind`` from the matching keys of ``item``."""
    cls = _DEFS[kind]
    values = {f.name: item[f.name] for f in dataclasses.fields(cls) if f.name in item}
    if kind == "flow":
        values["processors"] = tuple(values["processors"])
    return cls(**values)


# --------------------------------------------------------------------------- one write transaction


class _Writer:
    """The writes of one transaction; records what it touched for the change log."""

    def __init__(self, session: Session, postgres: bool, keep: int) -> None:
        self.session = session
        self.postgres = postgres
        self.keep = keep
        self.version = 0
        self.touched: dict[tuple[str, str], str] = {}

    def lock(self) -> None:
        """Take the writers' lock (the meta row) and read the current version."""
        version = self.session.scalar(sa.select(MetaModel.version).where(MetaModel.id == 1).with_for_update())
        if version is None:
            raise StoreUnavailable("topology store unavailable: schema missing (run ensure_schema)")
        self.version = int(version)

    @property
    def accounts(self) -> Accounts:
        """The access writes of this transaction (users, roles, privileges, sessions)."""
        return Accounts(self)

    def touch(self, kind: str, name: str, op: str) -> None:
        self.touched.pop((kind, name), None)
        self.touched[(kind, name)] = op

    def finish(self) -> None:
        """One version and one change row per touched object; NOTIFY; trim the log."""
        if not self.touched:
            return
        session, first = self.session, self.version + 1
        self.version += len(self.touched)
        session.execute(sa.update(MetaModel).where(MetaModel.id == 1).values(version=self.version))
        now = time.time()
        session.execute(sa.insert(ChangeModel), [
            {"version": first + i, "kind": kind, "name": name, "op": op, "time": now}
            for i, ((kind, name), op) in enumerate(self.touched.items())
        ])  # fmt: skip
        session.execute(sa.delete(ChangeModel).where(ChangeModel.version <= self.version - self.keep))
        if self.postgres:
            session.execute(sa.select(sa.func.pg_notify(NOTIFY_CHANNEL, str(self.version))))

    # ------------------------------------------------------------------ lookups

    def find(self, kind: str, name: str) -> Any:
        model = _MODELS[kind]
        return self.session.scalars(sa.select(model).where(model.name == name)).one_or_none()

    def require(self, kind: str, name: str) -> Any:
        obj = self.find(kind, name)
        if obj is None:
            raise NotFound(f"{kind} {name!r} does not exist")
        return obj

    def get(self, kind: str, name: str) -> dict[str, Any]:
        rows = _load(self.session, kind, [name])
        if not rows:
            raise NotFound(f"{kind} {name!r} does not exist")
        return rows[0]

    def list(self, kind: str) -> list[dict[str, Any]]:
        return _load(self.session, kind)

    def _names(self, model: Any, *where: Any) -> list[str]:
        return list(self.session.scalars(sa.select(model.name).where(*where).order_by(model.name)))

    # ------------------------------------------------------------------ changes

    def add(self, kind: str, fields: dict[str, Any]) -> dict[str, Any]:
        fields = dict(fields)
        name = check_name(fields.pop("name", None), f"{kind} name")
        values = check_fields(kind, fields, add=True)
        if self.find(kind, name) is not None:
            raise AlreadyExists(f"{kind} {name!r} already exists")
        check_exclusive(kind, name, values)
        now = time.time()
        obj = _MODELS[kind](name=name, created=now, updated=now)
        if kind == "node":
            obj.last_seen = 0.0
        self._assign(kind, obj, values)
        self.session.add(obj)
        self.session.flush()
        self._after_write(kind, obj, values)
        self.touch(kind, name, "upsert")
        log.info("added %s %r", kind, name)
        out = {"id": obj.id, "name": name, "created": now, "updated": now, **values}
        if kind == "node":
            out["last_seen"] = 0.0
        return {key: out[key] for key in _FIELD_ORDER[kind]} | out  # what get() would read back

    def update(self, kind: str, name: str, fields: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list[Any]]]:
        """Change some fields; returns the new dict and ``{field: [old, new]}`` of what changed."""
        check_name(name, f"{kind} name")
        fields = dict(fields)
        if "name" in fields and fields.pop("name") != name:
            raise InvalidName(f"cannot rename {kind} {name!r}: renaming is not supported")
        values = check_fields(kind, fields, add=False)
        obj = self.require(kind, name)
        old = self.get(kind, name)
        diff = {key: [old[key], value] for key, value in values.items() if old[key] != value}
        if not diff:
            return old, {}
        check_exclusive(kind, name, {**old, **values})
        changed = {key: values[key] for key in diff}
        self._assign(kind, obj, changed)
        obj.updated = time.time()
        self.session.flush()
        self._after_write(kind, obj, changed, old_key=old.get("key") or "")
        self.touch(kind, name, "upsert")
        log.info("updated %s %r: %s", kind, name, ", ".join(diff))
        return self.get(kind, name), diff

    def _assign(self, kind: str, obj: Any, values: dict[str, Any]) -> None:
        refs = REFS[kind]
        for key, value in values.items():
            if key in refs:
                setattr(obj, f"{key}_id", self.require(refs[key], value).id)
            elif key != "processors":
                setattr(obj, key, value)

    def _after_write(self, kind: str, obj: Any, values: dict[str, Any], old_key: str = "") -> None:
        if kind == "node" and "key" in values:
            # an operator's key: admitted again if it was revoked; the key it replaces is revoked
            # (the node that holds it cannot register it again by itself)
            if values["key"]:
                self.session.execute(sa.delete(RevokedKeyModel).where(RevokedKeyModel.key == values["key"]))
            if old_key and old_key != values["key"]:
                self.revoke_key(old_key, obj.name)
        if kind == "flow" and "processors" in values:
            ids = [self.require("processor", proc).id for proc in values["processors"]]
            self.session.execute(sa.delete(FlowProcessorModel).where(FlowProcessorModel.flow_id == obj.id))
            if ids:
                self.session.execute(sa.insert(FlowProcessorModel),
                                     [{"flow_id": obj.id, "processor_id": pid} for pid in ids])
        if kind == "plug" and ("source" in values or "target" in values):
            self._check_cycle(obj)

    def _check_cycle(self, plug: PlugModel) -> None:
        """Refuse ``plug`` when its target already reaches its source through plugs."""
        edges: dict[str, set[str]] = {}
        for source, target in self.session.execute(sa.select(PlugModel.source_id, PlugModel.target_id)):
            edges.setdefault(source, set()).add(target)
        parent: dict[str, str | None] = {plug.target_id: None}
        frontier = [plug.target_id]
        while frontier and plug.source_id not in parent:
            nxt = []
            for node in frontier:
                for target in sorted(edges.get(node, ())):
                    if target not in parent:
                        parent[target] = node
                        nxt.append(target)
            frontier = nxt
        if plug.source_id not in parent:
            return
        path, at = [], plug.source_id
        while at is not None:
            path.append(at)
            at = parent[at]
        path = [plug.source_id, *reversed(path)]
        rows = self.session.execute(sa.select(SocketModel.id, SocketModel.name).where(SocketModel.id.in_(path)))
        names = {socket_id: name for socket_id, name in rows}
        raise TopologyError(f"plug {plug.name!r} would make a cycle: {' -> '.join(names[i] for i in path)}")

    def referrers(self, kind: str, obj: Any) -> dict[str, list[str]]:
        """Who references ``obj``: ``{referring kind: [names]}`` in kind order, only non-empty."""
        out: dict[str, list[str]] = {}
        for other in KINDS:
            model = _MODELS[other]
            columns = [getattr(model, f"{field}_id") for field, ref in REFS[other].items() if ref == kind]
            names = self._names(model, sa.or_(*(c == obj.id for c in columns))) if columns else []
            if other == "flow" and kind == "processor":
                member = sa.select(FlowProcessorModel.flow_id).where(FlowProcessorModel.processor_id == obj.id)
                names = self._names(FlowModel, FlowModel.id.in_(member))
            if names:
                out[other] = names
        return out

    def delete(self, kind: str, name: str) -> dict[str, Any]:
        obj = self.require(kind, name)
        users = self.referrers(kind, obj)
        if users:
            used = "; ".join(f"{other}(s): {', '.join(names)}" for other, names in users.items())
            raise StillReferenced(f"{kind} {name!r} is used by {used}")
        out = self.get(kind, name)
        if kind == "flow":
            self.session.execute(sa.delete(FlowProcessorModel).where(FlowProcessorModel.flow_id == obj.id))
        if kind == "node" and out.get("key"):
            self.revoke_key(out["key"], name)
        self.session.delete(obj)
        self.session.flush()
        self.touch(kind, name, "delete")
        log.info("deleted %s %r", kind, name)
        return out

    def remove_processor(self, name: str) -> dict[str, Any]:
        proc = self.require("processor", name)
        socket_ids = sa.select(SocketModel.id).where(SocketModel.processor_id == proc.id)
        gone = {
            "plug": self._names(PlugModel, sa.or_(PlugModel.source_id.in_(socket_ids),
                                                  PlugModel.target_id.in_(socket_ids))),
            "socket": self._names(SocketModel, SocketModel.processor_id == proc.id),
            "deployment": self._names(DeploymentModel, DeploymentModel.processor_id == proc.id),
        }
        member = sa.select(FlowProcessorModel.flow_id).where(FlowProcessorModel.processor_id == proc.id)
        flows = self._names(FlowModel, FlowModel.id.in_(member))
        for kind in ("plug", "socket", "deployment"):
            for item in gone[kind]:
                self.delete(kind, item)
        self.session.execute(sa.delete(FlowProcessorModel).where(FlowProcessorModel.processor_id == proc.id))
        for flow in flows:
            self.touch("flow", flow, "upsert")
        self.delete("processor", name)
        return {"processor": name, "sockets": gone["socket"], "plugs": gone["plug"],
                "deployments": gone["deployment"], "flows": flows}

    def revoke_key(self, key: str, name: str) -> None:
        if self.session.get(RevokedKeyModel, key) is None:
            self.session.add(RevokedKeyModel(key=key, name=name, time=time.time()))
            log.info("node key of %r revoked", name)

    def register_node(self, name: str, values: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        obj = self.find("node", name)
        key = values.get("key") or ""
        if key and self.session.get(RevokedKeyModel, key) is not None:
            raise KeyRefused(f"the key of this node was revoked for node {name!r}: peers refuse it; "
                             f"admit it again with `ecctl add node -n {name} --key {key}` (or update node)")
        if obj is not None and obj.key and key and obj.key != key:
            raise KeyRefused(f"node {name!r} is registered with another key: peers refuse this one; "
                             f"if this node is {name!r}, run `ecctl update node -n {name} --key {key}`")
        if obj is not None and obj.key and not key:
            values = {k: v for k, v in values.items() if k != "key"}  # an insecure node keeps the key
        if obj is None:
            obj = NodeModel(name=name, created=now, updated=now, last_seen=now, **values)
            self.session.add(obj)
            changed = True
        else:
            changed = any(getattr(obj, key) != value for key, value in values.items())
            for key, value in values.items():
                setattr(obj, key, value)
            obj.last_seen = now
            if changed:
                obj.updated = now
        self.session.flush()
        if changed:
            self.touch("node", name, "upsert")
        return self.get("node", name)


class _Rollback(Exception):
    """Raised inside a dry-run transaction to undo it."""


# --------------------------------------------------------------------------- store


class TopologyStore:
    """Thread-safe access to the topology database at ``url`` (SQLAlchemy URL)."""

    #: How many of the newest versions the change log keeps (:data:`CHANGE_LOG_KEEP`).
    change_log_keep: int = CHANGE_LOG_KEEP

    def __init__(self, url: str, *, echo: bool = False) -> None:
        try:
            parsed = sa.make_url(url)
            connect_args: dict[str, Any] = {}
            if parsed.drivername == "postgresql":
                parsed = parsed.set(drivername="postgresql+psycopg")
            if parsed.get_backend_name() == "postgresql":
                connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT
                # a silent peer (pulled cable, partition) is noticed within ~25 s, not hours
                connect_args.update(keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3)
            self.engine = sa.create_engine(parsed, pool_pre_ping=True, echo=echo, connect_args=connect_args)
        except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError, ImportError, ValueError) as e:
            raise StoreUnavailable(f"topology store unavailable: bad database url: {e}") from e
        self.dialect: str = self.engine.dialect.name
        if self.dialect == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_on_connect)
            sa.event.listen(self.engine, "begin", _sqlite_on_begin)
        self._write_engine = self.engine.execution_options(ecd_write=True)
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(self._write_engine, expire_on_commit=False)

    @property
    def url(self) -> str:
        """The database URL with any password masked."""
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        """Dispose of the connection pool."""
        self.engine.dispose()

    # ------------------------------------------------------------------ plumbing

    def _unavailable(self, e: Exception) -> StoreUnavailable:
        detail = (str(getattr(e, "orig", None) or e).strip().splitlines() or ["unknown error"])[0]
        log.warning("topology store unavailable (%s): %s", self.url, detail)
        return StoreUnavailable(f"topology store unavailable: {detail}")

    @contextlib.contextmanager
    def _session(self, write: bool = False) -> Iterator[Session]:
        """A session in one transaction; commits on success, maps driver errors."""
        try:
            with (self._write if write else self._read)() as session, session.begin():
                yield session
        except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError) as e:
            raise self._unavailable(e) from e
        except sa_exc.ProgrammingError as e:
            # 42P01 undefined table, 42703 undefined column: not migrated (yet)
            if getattr(e.orig, "sqlstate", None) in ("42P01", "42703"):
                raise self._unavailable(e) from e
            raise
        except sa_exc.DBAPIError as e:
            if e.connection_invalidated:
                raise self._unavailable(e) from e
            raise

    @contextlib.contextmanager
    def _writing(self, dry_run: bool = False, audit: dict[str, Any] | None = None) -> Iterator[_Writer]:
        """One write transaction (rolled back when ``dry_run``); ``audit`` is a row of the audit
        log written in it (the change and its record commit together)."""
        try:
            with self._session(write=True) as session:
                writer = _Writer(session, self.dialect == "postgresql", self.change_log_keep)
                writer.lock()
                yield writer
                if dry_run:
                    raise _Rollback
                writer.finish()
                if audit is not None:
                    write_audit(session, [audit])
        except _Rollback:
            pass
        except sa_exc.IntegrityError as e:
            raise TopologyError(f"conflicting change: {str(e.orig).strip().splitlines()[0]}") from e

    def writing(self, audit: dict[str, Any] | None = None) -> contextlib.AbstractContextManager[_Writer]:
        """One write transaction for other parts of the store (:mod:`ecd.accounts`)."""
        return self._writing(audit=audit)

    def session(self) -> contextlib.AbstractContextManager[Session]:
        """One read (or plain write) transaction for other parts of the store."""
        return self._session(write=True)

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Session]:
        """A read transaction that sees one consistent state."""
        with self._session() as session:
            if self.dialect == "postgresql":
                session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            yield session

    @staticmethod
    def _version(session: Session) -> int:
        value = session.scalar(sa.select(MetaModel.version).where(MetaModel.id == 1))
        if value is None:
            raise StoreUnavailable("topology store unavailable: schema missing (run ensure_schema)")
        return int(value)

    @staticmethod
    def _epoch(session: Session) -> str:
        return session.scalar(sa.select(MetaModel.epoch).where(MetaModel.id == 1)) or ""

    # ------------------------------------------------------------------ schema / version

    def ensure_schema(self) -> str:
        """Upgrade the schema to the newest migration; returns its revision.

        A database made by ecd 0.1 (tables but no ``alembic_version``) is stamped ``0001`` first.
        On PostgreSQL a transaction-scoped advisory lock serialises ecds starting together; on
        SQLite ``BEGIN IMMEDIATE`` does. DDL is transactional on both: all or nothing.
        """
        config = Config()
        config.set_main_option("script_location", SCRIPT_LOCATION)
        head = ScriptDirectory.from_config(config).get_current_head() or ""
        try:
            with _MIGRATE_LOCK, self._write_engine.begin() as conn:
                if self.dialect == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
                config.attributes["connection"] = conn
                tables = set(sa.inspect(conn).get_table_names())
                if "meta" in tables and "alembic_version" not in tables:
                    log.info("stamping an ecd 0.1 topology database at revision 0001")
                    command.stamp(config, "0001")
                command.upgrade(config, "head")
                self._private_files()
                if conn.scalar(sa.select(MetaModel.version).where(MetaModel.id == 1)) is None:
                    conn.execute(sa.insert(MetaModel).values(id=1, version=0, epoch=str(uuid.uuid4())))
                elif conn.scalar(sa.select(MetaModel.epoch).where(MetaModel.id == 1)) is None:
                    conn.execute(sa.update(MetaModel).where(MetaModel.id == 1).values(epoch=str(uuid.uuid4())))
        except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError) as e:
            raise self._unavailable(e) from e
        except sa_exc.DBAPIError as e:
            raise TopologyError(f"cannot migrate the topology schema: {e.orig}") from e
        return head

    create_schema = ensure_schema

    def _private_files(self) -> None:
        """An SQLite database file (and its journal files) readable by its owner only: it holds
        the users' password hashes."""
        if self.dialect != "sqlite" or not self.engine.url.database or self.engine.url.database == ":memory:":
            return
        for suffix in ("", "-wal", "-shm"):
            path = self.engine.url.database + suffix
            try:
                os.chmod(path, 0o600)
            except FileNotFoundError:
                continue
            except OSError as exc:  # not ours to change (a shared file): say so, once per start
                log.warning("cannot make %s private: %s", path, exc.strerror)

    def version(self) -> int:
        """The change counter: it moves on every change and never on reads."""
        with self._session() as session:
            return self._version(session)

    # ------------------------------------------------------------------ writes

    def add(self, kind: str, /, *, audit: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        """Add an object of ``kind`` (``name`` plus its fields; defaults for the rest). ``audit``
        (here and below) is the audit row written in the same transaction."""
        check_kind(kind)
        with self._writing(audit=audit) as writer:
            return writer.add(kind, fields)

    def update(self, kind: str, name: str, /, *, audit: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        """Change some fields of an object; the version moves only when a value changed."""
        check_kind(kind)
        with self._writing(audit=audit) as writer:
            return writer.update(kind, name, fields)[0]

    def delete(self, kind: str, name: str, *, audit: dict[str, Any] | None = None) -> dict[str, Any]:
        """Delete an object; StillReferenced names every referrer. Returns the deleted dict."""
        check_kind(kind)
        check_name(name, f"{kind} name")
        with self._writing(audit=audit) as writer:
            return writer.delete(kind, name)

    def restart_processor(self, name: str, *, audit: dict[str, Any] | None = None) -> dict[str, Any]:
        """Bump the processor's ``restarts`` counter (every node rolls its workers), atomically:
        two restarts at once are two restarts."""
        check_name(name, "processor name")
        with self._writing(audit=audit) as writer:
            current = writer.get("processor", name)
            return writer.update("processor", name, {"restarts": int(current.get("restarts") or 0) + 1})[0]

    def remove_processor(self, name: str, *, audit: dict[str, Any] | None = None) -> dict[str, Any]:
        """Delete a processor with its sockets, the plugs on them, its deployments and flow memberships."""
        check_name(name, "processor name")
        with self._writing(audit=audit) as writer:
            return writer.remove_processor(name)

    def register_node(self, name: str, endpoint: str, cpus: int, version: str, key: str = "") -> dict[str, Any]:
        """Insert or update a node and refresh its ``last_seen`` (bumps only on change). ``key``
        (the node's CURVE public key) is registered when the node has none yet; KeyRefused when
        an operator revoked it or registered another one for this name."""
        check_name(name, "node name")
        values = {
            "endpoint": check_token(endpoint, "endpoint", 500),
            "cpus": check_int(cpus, "cpus", 1, MAX_CPUS),
            "version": check_token(version, "version", 100),
            "key": netspec.check_key(key),
        }
        with self._writing() as writer:
            return writer.register_node(name, values)

    def apply(self, spec: dict[str, Any], *, dry_run: bool = False, prune: bool = False,
              allowed: Any = None, audit: dict[str, Any] | None = None) -> dict[str, Any]:
        """Make the database match ``spec`` in one transaction (see :mod:`ecd.netspec`).
        ``allowed(changes)`` (if given) sees the changes before they commit and raises to refuse
        them all (the caller's rights)."""
        plan = netspec.parse(spec)
        with self._writing(dry_run=dry_run, audit=None if dry_run else audit) as writer:
            changes = netspec.run(writer, plan, prune=prune)
            if allowed is not None:
                allowed(changes)
        return {"changes": changes, "applied": not dry_run, "version": writer.version}

    # wrappers kept from #2

    def add_queue(self, name: str, **fields: Any) -> dict[str, Any]:
        """Add a queue; returns its dict."""
        return self.add("queue", name=name, **fields)

    def add_processor(self, name: str, gitrepo: str, module: str, **fields: Any) -> dict[str, Any]:
        """Add a processor; returns its dict."""
        return self.add("processor", name=name, gitrepo=gitrepo, module=module, **fields)

    def add_socket(self, name: str, processor: str, function: str, queue: str, **fields: Any) -> dict[str, Any]:
        """Add a socket binding ``processor``'s ``function`` to ``queue`` (both by name)."""
        return self.add("socket", name=name, processor=processor, function=function, queue=queue, **fields)

    def update_processor(self, name: str, **fields: Any) -> dict[str, Any]:
        """Change some fields of a processor; returns its new dict."""
        return self.update("processor", name, **fields)

    # ------------------------------------------------------------------ reads

    def get(self, kind: str, name: str) -> dict[str, Any]:
        """One object by name; NotFound when missing."""
        check_kind(kind)
        check_name(name, f"{kind} name")
        with self._session() as session:
            rows = _load(session, kind, [name])
        if not rows:
            raise NotFound(f"{kind} {name!r} does not exist")
        return rows[0]

    def list(self, kind: str) -> list[dict[str, Any]]:
        """All objects of a kind, sorted by name."""
        check_kind(kind)
        with self._session() as session:
            return _load(session, kind)

    def snapshot(self) -> Topology:
        """Every object plus the version, read in one transaction."""
        with self._reading() as session:
            version = self._version(session)
            epoch = self._epoch(session)
            parts = {f"{kind}s": {row["name"]: _as_def(kind, row) for row in _load(session, kind)} for kind in KINDS}
            parts.update({f"{kind}s": load_access(session, kind) for kind in ACCESS_KINDS})
        return Topology(version=version, epoch=epoch, **parts)

    def changes_since(self, version: int, epoch: str | None = None) -> TopologyDelta | None:
        """The objects changed after ``version``; None when the change log no longer reaches back
        that far, ``version`` is ahead of the store, or (given ``epoch``) the database is not the
        one that version belongs to (dropped and made again): the caller takes a :meth:`snapshot`."""
        with self._reading() as session:
            current = self._version(session)
            store_epoch = self._epoch(session)
            if epoch is not None and epoch != store_epoch:
                return None
            if version == current:
                return TopologyDelta(version=current, changed={}, epoch=store_epoch)
            oldest = session.scalar(sa.select(sa.func.min(ChangeModel.version)))
            if version > current or oldest is None or oldest > version + 1:
                return None
            log_rows = session.execute(
                sa.select(ChangeModel.kind, ChangeModel.name).where(ChangeModel.version > version)
            ).all()
            if len(log_rows) != current - version or any(kind not in ALL_KINDS for kind, _ in log_rows):
                return None  # versions without a row (an ecd 0.1 wrote) or unknown kinds: reload all
            wanted: dict[str, set[str]] = {}
            for kind, name in log_rows:
                wanted.setdefault(kind, set()).add(name)
            changed = {}
            for kind, names in wanted.items():
                if kind in ACCESS_KINDS:
                    found = load_access(session, kind, names)
                else:
                    found = {row["name"]: _as_def(kind, row) for row in _load(session, kind, names)}
                changed[kind] = {name: found.get(name) for name in sorted(names)}
        return TopologyDelta(version=current, changed=changed, epoch=store_epoch)

    def export(self) -> dict[str, Any]:
        """The whole network as an apply spec (see :func:`ecd.netspec.export`)."""
        with self._reading() as session:
            return netspec.export({kind: _load(session, kind) for kind in KINDS})


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    """Per-connection SQLite setup; transactions are begun by :func:`_sqlite_on_begin`."""
    dbapi_connection.isolation_level = None  # let us emit BEGIN ourselves
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_MS)}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Any) -> None:
    """Reads get a snapshot transaction; writes take the write lock up front."""
    immediate = conn.get_execution_options().get("ecd_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
