"""SQLAlchemy models of every table of the topology database (the only place tables are declared).

Topology kinds, in dependency order: ``queue``, ``node``, ``processor``, ``socket``, ``plug``,
``deployment``, ``flow`` (with its ``flow_processor`` association). Every kind has a uuid ``id``,
a unique ``name`` and ``created``/``updated`` UNIX times. References are foreign keys to ``id``;
the store resolves them to names.

Access (issue #12): ``users`` (argon2id password hashes, never clear text), ``role``,
``user_roles``, ``privilege`` (a right given to a user or a role), ``login_session`` (a client's
CURVE public key bound to a user until it expires), ``audit`` (who did what, and every denial) and
``revoked_key`` (node keys an operator removed: a node cannot register them again by itself).

Bookkeeping: ``meta`` holds the one change-counter row (id = 1); ``change`` is the change log,
one row per version (``op`` is ``upsert`` or ``delete``). Call history: ``call``, one summary per
call with its events packed with msgpack (one row per call keeps the export cheap: see
ecd/history.py).

The schema is created and upgraded by the Alembic migrations in ``ecd/migrations`` only; the
autogenerate comparison of a migrated database against :data:`Base.metadata` must stay empty, so
any change here comes with a migration. Columns that later migrations add as ``NOT NULL`` carry a
``server_default`` so existing rows get a value.
"""

from __future__ import annotations

import time
import uuid

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "AuditModel",
    "Base",
    "CallModel",
    "ChangeModel",
    "DeploymentModel",
    "FlowModel",
    "FlowProcessorModel",
    "LoginSessionModel",
    "MetaModel",
    "NodeModel",
    "PlugModel",
    "PrivilegeModel",
    "ProcessorModel",
    "QueueModel",
    "RevokedKeyModel",
    "RoleModel",
    "SocketModel",
    "UserModel",
    "UserRoleModel",
]


class Base(DeclarativeBase):
    """Declarative base of every model; ``Base.metadata`` is the migrations' target."""


def _uuid() -> str:
    return str(uuid.uuid4())


class _Common:
    """Columns every topology kind has."""

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True, default=_uuid, sort_order=-4)
    name: Mapped[str] = mapped_column(sa.String(200), unique=True, nullable=False, sort_order=-3)
    created: Mapped[float] = mapped_column(sa.Float, nullable=False, default=time.time, sort_order=-2)
    updated: Mapped[float] = mapped_column(sa.Float, nullable=False, default=time.time, sort_order=-1)


# --------------------------------------------------------------------------- bookkeeping


class MetaModel(Base):
    """The single change-counter row (id = 1)."""

    __tablename__ = "meta"
    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    version: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, default=0)
    epoch: Mapped[str | None] = mapped_column(sa.String(36), nullable=True)  # set once, at creation


class ChangeModel(Base):
    """One change-log row per version: which object changed and how."""

    __tablename__ = "change"
    version: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(sa.String(20), nullable=False)
    name: Mapped[str] = mapped_column(sa.String(200), nullable=False)
    op: Mapped[str] = mapped_column(sa.String(10), nullable=False)
    time: Mapped[float] = mapped_column(sa.Float, nullable=False)


# --------------------------------------------------------------------------- topology kinds


class QueueModel(_Common, Base):
    """A named queue calls are routed through."""

    __tablename__ = "queue"
    type: Mapped[str] = mapped_column(sa.String(20), nullable=False, default="direct")
    durable: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=True)
    max_length: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    message_ttl: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    description: Mapped[str | None] = mapped_column(sa.Text, nullable=True)


class NodeModel(_Common, Base):
    """An ecd daemon: registered by itself, or declared by hand (empty endpoint and version)."""

    __tablename__ = "node"
    endpoint: Mapped[str] = mapped_column(sa.String(500), nullable=False)
    cpus: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    version: Mapped[str] = mapped_column(sa.String(100), nullable=False)
    last_seen: Mapped[float] = mapped_column(sa.Float, nullable=False)
    description: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    # added by 0004_access: the node's CURVE public key (Z85); peers admit only registered keys
    key: Mapped[str] = mapped_column("public_key", sa.String(64), nullable=False, default="", server_default="")


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
    # added by 0002_network
    tag: Mapped[str | None] = mapped_column(sa.String(255), nullable=True)
    rate_limit: Mapped[str | None] = mapped_column(sa.String(32), nullable=True)
    paused: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=False, server_default=sa.false())
    restarts: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0, server_default=sa.text("0"))


class SocketModel(_Common, Base):
    """Binds a processor's function to a queue; callers address sockets by name."""

    __tablename__ = "socket"
    processor_id: Mapped[str] = mapped_column(sa.ForeignKey("processor.id"), nullable=False, index=True)
    queue_id: Mapped[str] = mapped_column(sa.ForeignKey("queue.id"), nullable=False, index=True)
    function: Mapped[str] = mapped_column(sa.String(200), nullable=False)
    interval: Mapped[float | None] = mapped_column(sa.Float, nullable=True)  # reserved
    cron: Mapped[str | None] = mapped_column(sa.String(100), nullable=True)  # reserved
    # added by 0002_network
    description: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    # added by 0003_dataflow
    catch_up: Mapped[str] = mapped_column(sa.String(10), nullable=False, default="once", server_default="once")


class PlugModel(_Common, Base):
    """Feeds the result (or error) of calls on ``source`` into ``target`` through ``queue``."""

    __tablename__ = "plug"
    source_id: Mapped[str] = mapped_column(sa.ForeignKey("socket.id"), nullable=False, index=True)
    target_id: Mapped[str] = mapped_column(sa.ForeignKey("socket.id"), nullable=False, index=True)
    argument: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    type: Mapped[str] = mapped_column(sa.String(10), nullable=False, default="RESULT")
    queue_id: Mapped[str] = mapped_column(sa.ForeignKey("queue.id"), nullable=False, index=True)
    description: Mapped[str | None] = mapped_column(sa.Text, nullable=True)


class DeploymentModel(_Common, Base):
    """Places a processor on a node with a number of cpus (None = the processor's concurrency)."""

    __tablename__ = "deployment"
    processor_id: Mapped[str] = mapped_column(sa.ForeignKey("processor.id"), nullable=False, index=True)
    node_id: Mapped[str] = mapped_column(sa.ForeignKey("node.id"), nullable=False, index=True)
    cpus: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)


class FlowModel(_Common, Base):
    """A named group of processors (members in ``flow_processor``)."""

    __tablename__ = "flow"
    description: Mapped[str | None] = mapped_column(sa.Text, nullable=True)


class FlowProcessorModel(Base):
    """Membership of a processor in a flow."""

    __tablename__ = "flow_processor"
    flow_id: Mapped[str] = mapped_column(sa.ForeignKey("flow.id", ondelete="CASCADE"), primary_key=True)
    processor_id: Mapped[str] = mapped_column(sa.ForeignKey("processor.id"), primary_key=True, index=True)


# --------------------------------------------------------------------------- access (0004)


class UserModel(_Common, Base):
    """A user of the seed's model; ``password`` is an argon2id hash."""

    __tablename__ = "users"
    email: Mapped[str | None] = mapped_column(sa.String(320), nullable=True)
    password: Mapped[str] = mapped_column(sa.String(200), nullable=False)
    enabled: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=True)


class RoleModel(_Common, Base):
    """A named set of rights given to users."""

    __tablename__ = "role"


class UserRoleModel(Base):
    """A user's membership of a role."""

    __tablename__ = "user_roles"
    user_id: Mapped[str] = mapped_column(sa.ForeignKey("users.id"), primary_key=True)
    role_id: Mapped[str] = mapped_column(sa.ForeignKey("role.id"), primary_key=True, index=True)


class PrivilegeModel(Base):
    """A right given to a user or to a role (exactly one of ``user_id`` and ``role_id``)."""

    __tablename__ = "privilege"
    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True, default=_uuid)
    user_id: Mapped[str | None] = mapped_column(sa.ForeignKey("users.id"), nullable=True, index=True)
    role_id: Mapped[str | None] = mapped_column(sa.ForeignKey("role.id"), nullable=True, index=True)
    right: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    created: Mapped[float] = mapped_column(sa.Float, nullable=False, default=time.time)
    by: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)


class LoginSessionModel(Base):
    """A login: requests from the client CURVE key ``key`` act as ``user_id`` until ``expires``."""

    __tablename__ = "login_session"
    key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(sa.ForeignKey("users.id"), nullable=False, index=True)
    created: Mapped[float] = mapped_column(sa.Float, nullable=False)
    expires: Mapped[float] = mapped_column(sa.Float, nullable=False)
    node: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)


class AuditModel(Base):
    """One audited event: an admin change, a login or logout, or a denial."""

    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    time: Mapped[float] = mapped_column(sa.Float, nullable=False, index=True)
    user: Mapped[str | None] = mapped_column(sa.String(200), nullable=True, index=True)
    key: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    node: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    op: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    object: Mapped[str | None] = mapped_column(sa.String(300), nullable=True)
    outcome: Mapped[str] = mapped_column(sa.String(300), nullable=False)


class RevokedKeyModel(Base):
    """A node key an operator replaced or removed: registration with it is refused."""

    __tablename__ = "revoked_key"
    key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    name: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    time: Mapped[float] = mapped_column(sa.Float, nullable=False)


# --------------------------------------------------------------------------- call history


class CallModel(Base):
    """The summary of one call, exported by the node that owns it (upserted as it progresses)."""

    __tablename__ = "call"
    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    owner: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    node: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    socket: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    processor: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    function: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    state: Mapped[str] = mapped_column(sa.String(20), nullable=False)
    attempts: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0, server_default=sa.text("0"))
    created: Mapped[float] = mapped_column(sa.Float, nullable=False, index=True)
    started: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    finished: Mapped[float | None] = mapped_column(sa.Float, nullable=True, index=True)
    worker: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(sa.Text, nullable=True)  # JSON text
    parent: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    root: Mapped[str | None] = mapped_column(sa.String(64), nullable=True, index=True)
    events: Mapped[bytes | None] = mapped_column(sa.LargeBinary, nullable=True)  # msgpack [[name, time, note], ...]
    # added by 0003_dataflow
    kind: Mapped[str | None] = mapped_column(sa.String(10), nullable=True)
    via: Mapped[str | None] = mapped_column(sa.String(300), nullable=True)
    # added by 0004_access: who sent the call (its run's); ``ls calls`` shows users their own
    user: Mapped[str | None] = mapped_column(sa.String(200), nullable=True, index=True)
