"""The network of issue #3: plugs, deployments, flows, the change log and the call history.

Revision ID: 0002
Revises: 0001

Adds processor.tag/rate_limit/paused/restarts, a description to queue, node and socket, and
meta.epoch (the database's identity)
(plain ALTER TABLE ADD COLUMN, on SQLite too), then creates plug, deployment, flow, flow_processor,
change and call (the call history; its events msgpack-packed in the call row).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _common() -> list[sa.Column]:
    return [
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("updated", sa.Float, nullable=False),
    ]


def upgrade() -> None:
    # recreate="never": plain ALTER TABLE ADD COLUMN on SQLite too (a table rebuild would trip
    # over the foreign keys of existing rows, and is not needed to add nullable/defaulted columns)
    with op.batch_alter_table("processor", recreate="never") as batch:
        batch.add_column(sa.Column("tag", sa.String(255), nullable=True))
        batch.add_column(sa.Column("rate_limit", sa.String(32), nullable=True))
        batch.add_column(sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("restarts", sa.Integer, nullable=False, server_default=sa.text("0")))
    for table in ("queue", "node", "socket"):
        with op.batch_alter_table(table, recreate="never") as batch:
            batch.add_column(sa.Column("description", sa.Text, nullable=True))
    # the database's identity: a node that sees it change (dropped and made again) reloads all
    with op.batch_alter_table("meta", recreate="never") as batch:
        batch.add_column(sa.Column("epoch", sa.String(36), nullable=True))

    op.create_table(
        "plug",
        *_common(),
        sa.Column("source_id", sa.String(36), sa.ForeignKey("socket.id"), nullable=False),
        sa.Column("target_id", sa.String(36), sa.ForeignKey("socket.id"), nullable=False),
        sa.Column("argument", sa.String(200), nullable=True),
        sa.Column("type", sa.String(10), nullable=False),
        sa.Column("queue_id", sa.String(36), sa.ForeignKey("queue.id"), nullable=False),
        sa.Column("description", sa.Text, nullable=True),
    )
    for column in ("source_id", "target_id", "queue_id"):
        op.create_index(f"ix_plug_{column}", "plug", [column])
    op.create_table(
        "deployment",
        *_common(),
        sa.Column("processor_id", sa.String(36), sa.ForeignKey("processor.id"), nullable=False),
        sa.Column("node_id", sa.String(36), sa.ForeignKey("node.id"), nullable=False),
        sa.Column("cpus", sa.Integer, nullable=True),
    )
    op.create_index("ix_deployment_processor_id", "deployment", ["processor_id"])
    op.create_index("ix_deployment_node_id", "deployment", ["node_id"])
    op.create_table(
        "flow",
        *_common(),
        sa.Column("description", sa.Text, nullable=True),
    )
    op.create_table(
        "flow_processor",
        sa.Column("flow_id", sa.String(36), sa.ForeignKey("flow.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("processor_id", sa.String(36), sa.ForeignKey("processor.id"), primary_key=True),
    )
    op.create_index("ix_flow_processor_processor_id", "flow_processor", ["processor_id"])

    op.create_table(
        "change",
        sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("op", sa.String(10), nullable=False),
        sa.Column("time", sa.Float, nullable=False),
    )

    op.create_table(
        "call",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("node", sa.String(200), nullable=True),
        sa.Column("socket", sa.String(200), nullable=True),
        sa.Column("processor", sa.String(200), nullable=True),
        sa.Column("function", sa.String(200), nullable=True),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("started", sa.Float, nullable=True),
        sa.Column("finished", sa.Float, nullable=True),
        sa.Column("worker", sa.Integer, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("parent", sa.String(64), nullable=True),
        sa.Column("root", sa.String(64), nullable=True),
        sa.Column("events", sa.LargeBinary, nullable=True),
    )
    op.create_index("ix_call_created", "call", ["created"])
    op.create_index("ix_call_finished", "call", ["finished"])


def downgrade() -> None:
    for table in ("call", "change", "flow_processor", "flow", "deployment", "plug"):
        op.drop_table(table)  # their indexes go with them
    # ALTER TABLE DROP COLUMN (SQLite >= 3.35): no table rebuild, so rows keep their references
    for table in ("socket", "node", "queue"):
        with op.batch_alter_table(table, recreate="never") as batch:
            batch.drop_column("description")
    with op.batch_alter_table("meta", recreate="never") as batch:
        batch.drop_column("epoch")
    with op.batch_alter_table("processor", recreate="never") as batch:
        for column in ("restarts", "paused", "rate_limit", "tag"):
            batch.drop_column(column)
