"""Topology store: queues, processors, sockets and nodes in a SQL database.

This is the only module of ``ecd`` that imports SQLAlchemy. It keeps the user's object model
(``queue``, ``processor``, ``socket``, ``node``) and a one-row ``meta`` table whose ``version``
counter is incremented in the same transaction as every change, so a daemon can poll
:meth:`TopologyStore.version` cheaply and take a consistent :meth:`TopologyStore.snapshot` when it
moved.

Design choices:

* Every method opens its own short :class:`~sqlalchemy.orm.Session`, so one store can be used from
  several threads. Methods are synchronous; the daemon calls them off its event loop.
* Results are plain dicts of JSON-friendly values; times are UNIX seconds (float).
* Names are validated (1..200 of ``[A-Za-z0-9._-]``, starting with a letter or digit), stored
  verbatim and always bound as parameters.
* Deleting a queue or a processor still used by a socket raises :class:`StillReferenced`: the
  user deletes the sockets first (nothing disappears by cascade behind their back).
* :meth:`TopologyStore.register_node` bumps the version only when a node is new or its endpoint,
  cpus or version changed; a heartbeat that only refreshes ``last_seen`` does not.
* SQLite: foreign keys on, WAL journal, a busy timeout, and write transactions start with
  ``BEGIN IMMEDIATE`` so two processes on one file queue up instead of failing on lock upgrade.
  PostgreSQL: snapshots run at REPEATABLE READ; the version row lock serialises writers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import keyword
import logging
import math
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from ecd.errors import AlreadyExists, InvalidName, NotFound, StillReferenced, StoreUnavailable, TopologyError

__all__ = [
    "KINDS",
    "QUEUE_TYPES",
    "ProcessorDef",
    "QueueDef",
    "SocketDef",
    "Topology",
    "TopologyStore",
]

log = logging.getLogger(__name__)

#: Kinds accepted by get/list; delete accepts all but ``node``.
KINDS = ("queue", "processor", "socket", "node")
#: Allowed queue types.
QUEUE_TYPES = ("direct", "topic", "fanout")
#: Upper bounds of numeric fields.
MAX_CONCURRENCY = 1024
MAX_RETRIES = 1_000_000
MAX_INT32 = 2**31 - 1
MAX_SECONDS = 10.0 * 365 * 86400
#: Milliseconds SQLite waits for a lock before failing.
SQLITE_BUSY_TIMEOUT_MS = 10_000

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}", re.ASCII)
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
_COMMIT_RE = re.compile(r"[0-9a-fA-F]{4,64}", re.ASCII)


# --------------------------------------------------------------------------- models


class Base(DeclarativeBase):
    """Declarative base of the topology models."""


def _uuid() -> str:
    return str(uuid.uuid4())


class _Common:
    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True, default=_uuid, sort_order=-4)
    name: Mapped[str] = mapped_column(sa.String(200), unique=True, nullable=False, sort_order=-3)
    created: Mapped[float] = mapped_column(sa.Float, nullable=False, default=time.time, sort_order=-2)
    updated: Mapped[float] = mapped_column(sa.Float, nullable=False, default=time.time, sort_order=-1)


class MetaModel(Base):
    """The single change-counter row (id = 1)."""

    __tablename__ = "meta"
    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    version: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, default=0)


class NodeModel(_Common, Base):
    """An ecd daemon that registered itself."""

    __tablename__ = "node"
    endpoint: Mapped[str] = mapped_column(sa.String(500), nullable=False)
    cpus: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    version: Mapped[str] = mapped_column(sa.String(100), nullable=False)
    last_seen: Mapped[float] = mapped_column(sa.Float, nullable=False)


class QueueModel(_Common, Base):
    """A named queue calls are routed through."""

    __tablename__ = "queue"
    type: Mapped[str] = mapped_column(sa.String(20), nullable=False, default="direct")
    durable: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=True)
    max_length: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    message_ttl: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)


class ProcessorModel(_Common, Base):
    """User code loaded from git and run by workers."""

    __tablename__ = "processor"
    gitrepo: Mapped[str] = mapped_column(sa.String(2000), nullable=False)
    module: Mapped[str] = mapped_column(sa.String(200), nullable=False)
    branch: Mapped[str | None] = mapped_column(sa.String(255), nullable=True)
    commit: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    requirements: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    concurrency: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=1)
    retries: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
    retry_delay: Mapped[float] = mapped_column(sa.Float, nullable=False, default=1.0)
    timelimit: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    description: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    enabled: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=True)


class SocketModel(_Common, Base):
    """Binds a processor's function to a queue; callers address sockets by name."""

    __tablename__ = "socket"
    processor_id: Mapped[str] = mapped_column(sa.ForeignKey("processor.id"), nullable=False, index=True)
    queue_id: Mapped[str] = mapped_column(sa.ForeignKey("queue.id"), nullable=False, index=True)
    function: Mapped[str] = mapped_column(sa.String(200), nullable=False)
    interval: Mapped[float | None] = mapped_column(sa.Float, nullable=True)  # reserved
    cron: Mapped[str | None] = mapped_column(sa.String(100), nullable=True)  # reserved


_MODELS: dict[str, type[_Common]] = {
    "queue": QueueModel,
    "processor": ProcessorModel,
    "socket": SocketModel,
    "node": NodeModel,
}


# --------------------------------------------------------------------------- snapshot


@dataclasses.dataclass(frozen=True)
class QueueDef:
    """A queue as seen in a snapshot."""

    id: str
    name: str
    type: str
    durable: bool
    max_length: int | None
    message_ttl: int | None


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


@dataclasses.dataclass(frozen=True)
class Topology:
    """A consistent view of the whole topology at change ``version``."""

    version: int
    processors: dict[str, ProcessorDef]
    sockets: dict[str, SocketDef]
    queues: dict[str, QueueDef]


# --------------------------------------------------------------------------- validation


def _check_name(value: Any, what: str = "name") -> str:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise InvalidName(
            f"invalid {what} {value!r}: use 1..200 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def _check_module(value: Any) -> str:
    parts = value.split(".") if isinstance(value, str) else []
    if (
        not parts
        or len(value) > 200
        or not all(_IDENT_RE.fullmatch(p) and not keyword.iskeyword(p) for p in parts)
    ):
        raise InvalidName(f"invalid module {value!r}: expected a dotted python path like 'pkg.mod'")
    return value


def _check_function(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 200 or not _IDENT_RE.fullmatch(value) or keyword.iskeyword(value):
        raise InvalidName(f"invalid function {value!r}: expected a python identifier")
    return value


def _check_token(value: Any, what: str, max_len: int, optional: bool) -> str | None:
    """A non-empty string without whitespace or control characters."""
    if value is None and optional:
        return None
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= max_len
        or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value)
    ):
        raise InvalidName(f"invalid {what} {value!r}: 1..{max_len} characters, no whitespace or control characters")
    if value.startswith("-"):
        raise InvalidName(f"invalid {what} {value!r}: must not start with '-'")
    return value


def _check_text(value: Any, what: str, max_len: int = 100_000) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_len or "\x00" in value:
        raise InvalidName(f"invalid {what}: expected text of at most {max_len} characters")
    return value


def _check_int(value: Any, what: str, lo: int, hi: int, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidName(f"invalid {what} {value!r}: expected an integer in {lo}..{hi}")
    return value


def _check_float(value: Any, what: str, lo: float, positive: bool = False, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < lo
        or (positive and value <= 0)
        or value > MAX_SECONDS
    ):
        rel = "> 0" if positive else f">= {lo}"
        raise InvalidName(f"invalid {what} {value!r}: expected a number {rel} and <= {MAX_SECONDS:.0f}")
    return float(value)


def _check_bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidName(f"invalid {what} {value!r}: expected true or false")
    return value


def _check_commit(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _COMMIT_RE.fullmatch(value):
        raise InvalidName(f"invalid commit {value!r}: expected 4..64 hex digits")
    return value


_PROCESSOR_CHECKS: dict[str, Any] = {
    "gitrepo": lambda v: _check_token(v, "gitrepo", 2000, optional=False),
    "module": _check_module,
    "branch": lambda v: _check_token(v, "branch", 255, optional=True),
    "commit": _check_commit,
    "concurrency": lambda v: _check_int(v, "concurrency", 1, MAX_CONCURRENCY),
    "retries": lambda v: _check_int(v, "retries", 0, MAX_RETRIES),
    "retry_delay": lambda v: _check_float(v, "retry_delay", 0.0),
    "timelimit": lambda v: _check_float(v, "timelimit", 0.0, positive=True, optional=True),
    "requirements": lambda v: _check_text(v, "requirements"),
    "description": lambda v: _check_text(v, "description", 10_000),
    "enabled": lambda v: _check_bool(v, "enabled"),
}


def _reject_unknown(kind: str, unknown: dict[str, Any]) -> None:
    if unknown:
        raise InvalidName(f"unknown {kind} field(s): {', '.join(sorted(unknown))}")


def _check_kind(kind: Any, allowed: tuple[str, ...] = KINDS) -> str:
    if kind not in allowed:
        raise InvalidName(f"unknown kind {kind!r}: expected one of {', '.join(allowed)}")
    return kind


# --------------------------------------------------------------------------- store


class TopologyStore:
    """Thread-safe access to the topology database at ``url`` (SQLAlchemy URL)."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        try:
            self._engine = sa.create_engine(url, pool_pre_ping=True, echo=echo)
        except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError, ImportError) as e:
            raise StoreUnavailable(f"topology store unavailable: bad database url: {e}") from e
        self._sqlite = self._engine.dialect.name == "sqlite"
        if self._sqlite:
            sa.event.listen(self._engine, "connect", _sqlite_on_connect)
            sa.event.listen(self._engine, "begin", _sqlite_on_begin)
        self._write_engine = self._engine.execution_options(ecd_write=True)
        self._read = sessionmaker(self._engine, expire_on_commit=False)
        self._write = sessionmaker(self._write_engine, expire_on_commit=False)

    @property
    def url(self) -> str:
        """The database URL with any password masked."""
        return self._engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        """Dispose of the connection pool."""
        self._engine.dispose()

    # ------------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def _session(self, write: bool = False) -> Iterator[Session]:
        """A session in one transaction; commits on success, maps driver errors."""
        try:
            with (self._write if write else self._read)() as session, session.begin():
                yield session
        except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError) as e:
            detail = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
            log.warning("topology store unavailable (%s): %s", self.url, detail)
            raise StoreUnavailable(f"topology store unavailable: {detail}") from e
        except sa_exc.DBAPIError as e:
            if e.connection_invalidated:
                raise StoreUnavailable(f"topology store unavailable: {e.orig}") from e
            raise

    @staticmethod
    def _bump(session: Session) -> None:
        result = session.execute(
            sa.update(MetaModel).where(MetaModel.id == 1).values(version=MetaModel.version + 1)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise StoreUnavailable("topology store unavailable: schema missing (call create_schema)")

    @staticmethod
    def _find(session: Session, kind: str, name: str) -> Any:
        model = _MODELS[kind]
        return session.scalars(sa.select(model).where(model.name == name)).one_or_none()

    def _require(self, session: Session, kind: str, name: str) -> Any:
        obj = self._find(session, kind, name)
        if obj is None:
            raise NotFound(f"{kind} {name!r} does not exist")
        return obj

    def _insert(self, kind: str, obj: Any, refs: dict[str, str] | None = None) -> dict[str, Any]:
        """Insert ``obj`` (name checked unique, ``refs`` kind -> name resolved to ids)."""
        try:
            with self._session(write=True) as session:
                if self._find(session, kind, obj.name) is not None:
                    raise AlreadyExists(f"{kind} {obj.name!r} already exists")
                for ref_kind, ref_name in (refs or {}).items():
                    setattr(obj, f"{ref_kind}_id", self._require(session, ref_kind, ref_name).id)
                now = time.time()
                obj.created = obj.updated = now
                session.add(obj)
                session.flush()
                self._bump(session)
                out = self._to_dict(session, kind, obj)
        except sa_exc.IntegrityError as e:
            # Lost a race with another writer: say which constraint in user terms.
            with self._session() as session:
                if self._find(session, kind, obj.name) is not None:
                    raise AlreadyExists(f"{kind} {obj.name!r} already exists") from e
                for ref_kind, ref_name in (refs or {}).items():
                    self._require(session, ref_kind, ref_name)
            raise TopologyError(f"cannot add {kind} {obj.name!r}: {e.orig}") from e
        log.info("added %s %r", kind, obj.name)
        return out

    @staticmethod
    def _to_dict(session: Session, kind: str, obj: Any) -> dict[str, Any]:
        if kind == "socket":
            return _socket_dict(*_socket_rows(session, SocketModel.id == obj.id)[0])
        return {c.key: getattr(obj, c.key) for c in sa.inspect(type(obj)).column_attrs}

    # ------------------------------------------------------------------ schema / version

    def create_schema(self) -> None:
        """Create missing tables and the version row (idempotent)."""
        try:
            Base.metadata.create_all(self._engine)
        except (sa_exc.OperationalError, sa_exc.InterfaceError) as e:
            raise StoreUnavailable(f"topology store unavailable: {e.orig}") from e
        try:
            with self._session(write=True) as session:
                if session.get(MetaModel, 1) is None:
                    session.add(MetaModel(id=1, version=0))
        except sa_exc.IntegrityError:
            pass  # another process created it first

    def version(self) -> int:
        """The change counter: it moves on every change and never on reads."""
        with self._session() as session:
            value = session.scalar(sa.select(MetaModel.version).where(MetaModel.id == 1))
        if value is None:
            raise StoreUnavailable("topology store unavailable: schema missing (call create_schema)")
        return int(value)

    # ------------------------------------------------------------------ writes

    def add_queue(
        self,
        name: str,
        type: str = "direct",  # noqa: A002 - the user-facing field name
        durable: bool = True,
        max_length: int | None = None,
        message_ttl: int | None = None,
        **unknown: Any,
    ) -> dict[str, Any]:
        """Add a queue; returns its dict."""
        _reject_unknown("queue", unknown)
        if type not in QUEUE_TYPES:
            raise InvalidName(f"invalid queue type {type!r}: expected one of {', '.join(QUEUE_TYPES)}")
        obj = QueueModel(
            name=_check_name(name, "queue name"),
            type=type,
            durable=_check_bool(durable, "durable"),
            max_length=_check_int(max_length, "max_length", 1, MAX_INT32, optional=True),
            message_ttl=_check_int(message_ttl, "message_ttl", 1, MAX_INT32, optional=True),
        )
        return self._insert("queue", obj)

    def add_processor(
        self,
        name: str,
        gitrepo: str,
        module: str,
        concurrency: int = 1,
        branch: str | None = None,
        commit: str | None = None,
        retries: int = 0,
        retry_delay: float = 1.0,
        timelimit: float | None = None,
        requirements: str | None = None,
        description: str | None = None,
        enabled: bool = True,
        **unknown: Any,
    ) -> dict[str, Any]:
        """Add a processor; returns its dict."""
        _reject_unknown("processor", unknown)
        fields = {
            "gitrepo": gitrepo, "module": module, "concurrency": concurrency, "branch": branch,
            "commit": commit, "retries": retries, "retry_delay": retry_delay, "timelimit": timelimit,
            "requirements": requirements, "description": description, "enabled": enabled,
        }  # fmt: skip
        checked = {key: _PROCESSOR_CHECKS[key](value) for key, value in fields.items()}
        obj = ProcessorModel(name=_check_name(name, "processor name"), **checked)
        return self._insert("processor", obj)

    def add_socket(self, name: str, processor: str, function: str, queue: str, **unknown: Any) -> dict[str, Any]:
        """Add a socket binding ``processor``'s ``function`` to ``queue`` (both by name)."""
        _reject_unknown("socket", unknown)
        obj = SocketModel(name=_check_name(name, "socket name"), function=_check_function(function))
        refs = {"processor": _check_name(processor, "processor name"), "queue": _check_name(queue, "queue name")}
        return self._insert("socket", obj, refs)

    def update_processor(self, name: str, **fields: Any) -> dict[str, Any]:
        """Change some fields of a processor (validated like add); returns its new dict.

        The version moves only when a value actually changed. Renaming is not supported.
        """
        _check_name(name, "processor name")
        _reject_unknown("processor", {k: v for k, v in fields.items() if k not in _PROCESSOR_CHECKS})
        checked = {key: _PROCESSOR_CHECKS[key](value) for key, value in fields.items()}
        with self._session(write=True) as session:
            obj = self._require(session, "processor", name)
            changed = [key for key, value in checked.items() if getattr(obj, key) != value]
            if changed:
                for key in changed:
                    setattr(obj, key, checked[key])
                obj.updated = time.time()
                session.flush()
                self._bump(session)
            out = self._to_dict(session, "processor", obj)
        if changed:
            log.info("updated processor %r: %s", name, ", ".join(changed))
        return out

    def delete(self, kind: str, name: str) -> dict[str, Any]:
        """Delete a queue, processor or socket; returns the deleted object's dict.

        A queue or processor still used by sockets raises StillReferenced naming them.
        """
        _check_kind(kind, ("queue", "processor", "socket"))
        _check_name(name, f"{kind} name")
        try:
            with self._session(write=True) as session:
                obj = self._require(session, kind, name)
                if kind in ("queue", "processor"):
                    column = SocketModel.queue_id if kind == "queue" else SocketModel.processor_id
                    users = session.scalars(
                        sa.select(SocketModel.name).where(column == obj.id).order_by(SocketModel.name)
                    ).all()
                    if users:
                        raise StillReferenced(f"{kind} {name!r} is used by socket(s): {', '.join(users)}")
                out = self._to_dict(session, kind, obj)
                session.delete(obj)
                session.flush()
                self._bump(session)
        except sa_exc.IntegrityError as e:
            raise StillReferenced(f"{kind} {name!r} is still used by a socket") from e
        log.info("deleted %s %r", kind, name)
        return out

    def register_node(self, name: str, endpoint: str, cpus: int, version: str) -> dict[str, Any]:
        """Insert or update a node and refresh its ``last_seen``."""
        _check_name(name, "node name")
        values = {
            "endpoint": _check_token(endpoint, "endpoint", 500, optional=False),
            "cpus": _check_int(cpus, "cpus", 1, 65536),
            "version": _check_token(version, "version", 100, optional=False),
        }
        for attempt in (1, 2):
            try:
                with self._session(write=True) as session:
                    now = time.time()
                    obj = self._find(session, "node", name)
                    if obj is None:
                        obj = NodeModel(name=name, created=now, updated=now, last_seen=now, **values)
                        session.add(obj)
                        changed = True
                    else:
                        changed = any(getattr(obj, k) != v for k, v in values.items())
                        for key, value in values.items():
                            setattr(obj, key, value)
                        obj.last_seen = now
                        if changed:
                            obj.updated = now
                    session.flush()
                    if changed:
                        self._bump(session)
                    return self._to_dict(session, "node", obj)
            except sa_exc.IntegrityError as e:
                if attempt == 2:
                    raise TopologyError(f"cannot register node {name!r}: {e.orig}") from e
                # a concurrent first registration won: update it instead
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ reads

    def get(self, kind: str, name: str) -> dict[str, Any]:
        """One object by name; NotFound when missing."""
        _check_kind(kind)
        _check_name(name, f"{kind} name")
        with self._session() as session:
            return self._to_dict(session, kind, self._require(session, kind, name))

    def list(self, kind: str) -> list[dict[str, Any]]:
        """All objects of a kind, sorted by name."""
        _check_kind(kind)
        model = _MODELS[kind]
        with self._session() as session:
            if kind == "socket":
                return [_socket_dict(*row) for row in _socket_rows(session)]
            objs = session.scalars(sa.select(model).order_by(model.name)).all()
            return [self._to_dict(session, kind, obj) for obj in objs]

    def snapshot(self) -> Topology:
        """Every queue, processor and socket plus the version, read in one transaction."""
        with self._session() as session:
            if not self._sqlite:
                session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            version = session.scalar(sa.select(MetaModel.version).where(MetaModel.id == 1))
            if version is None:
                raise StoreUnavailable("topology store unavailable: schema missing (call create_schema)")
            queues = {q.name: _as_def(QueueDef, vars(q)) for q in session.scalars(sa.select(QueueModel))}
            processors = {p.name: _as_def(ProcessorDef, vars(p)) for p in session.scalars(sa.select(ProcessorModel))}
            sockets = {row[0].name: _as_def(SocketDef, _socket_dict(*row)) for row in _socket_rows(session)}
        return Topology(version=int(version), processors=processors, sockets=sockets, queues=queues)


def _as_def(cls: type[Any], values: dict[str, Any]) -> Any:
    """Build a frozen ``*Def`` from the matching keys of ``values``."""
    return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})


def _socket_rows(session: Session, *where: Any) -> list[Any]:
    """(SocketModel, processor name, queue name) rows sorted by socket name."""
    return list(
        session.execute(
            sa.select(SocketModel, ProcessorModel.name, QueueModel.name)
            .join(ProcessorModel, SocketModel.processor_id == ProcessorModel.id)
            .join(QueueModel, SocketModel.queue_id == QueueModel.id)
            .where(*where)
            .order_by(SocketModel.name)
        ).all()
    )


def _socket_dict(sock: SocketModel, processor: str, queue: str) -> dict[str, Any]:
    out = {c.key: getattr(sock, c.key) for c in sa.inspect(SocketModel).column_attrs}
    del out["processor_id"], out["queue_id"]
    out["processor"] = processor
    out["queue"] = queue
    return out


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
