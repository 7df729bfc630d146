"""The issue #2 schema: meta (change counter), node, queue, processor, socket.

Revision ID: 0001
Revises: (none)

Exactly the tables ecd 0.1 made with ``create_all``; a database made that way is stamped at this
revision by ``TopologyStore.ensure_schema`` and upgraded from here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
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
    meta = op.create_table(
        "meta",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("version", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "node",
        *_common(),
        sa.Column("endpoint", sa.String(500), nullable=False),
        sa.Column("cpus", sa.Integer, nullable=False),
        sa.Column("version", sa.String(100), nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
    )
    op.create_table(
        "queue",
        *_common(),
        sa.Column("type", sa.String(20), nullable=False),
        sa.Column("durable", sa.Boolean, nullable=False),
        sa.Column("max_length", sa.Integer, nullable=True),
        sa.Column("message_ttl", sa.Integer, nullable=True),
    )
    op.create_table(
        "processor",
        *_common(),
        sa.Column("gitrepo", sa.String(2000), nullable=False),
        sa.Column("module", sa.String(200), nullable=False),
        sa.Column("branch", sa.String(255), nullable=True),
        sa.Column("commit", sa.String(64), nullable=True),
        sa.Column("requirements", sa.Text, nullable=True),
        sa.Column("concurrency", sa.Integer, nullable=False),
        sa.Column("retries", sa.Integer, nullable=False),
        sa.Column("retry_delay", sa.Float, nullable=False),
        sa.Column("timelimit", sa.Float, nullable=True),
        sa.Column("description", sa.Text, nullable=True),
        sa.Column("enabled", sa.Boolean, nullable=False),
    )
    op.create_table(
        "socket",
        *_common(),
        sa.Column("processor_id", sa.String(36), sa.ForeignKey("processor.id"), nullable=False),
        sa.Column("queue_id", sa.String(36), sa.ForeignKey("queue.id"), nullable=False),
        sa.Column("function", sa.String(200), nullable=False),
        sa.Column("interval", sa.Float, nullable=True),
        sa.Column("cron", sa.String(100), nullable=True),
    )
    op.create_index("ix_socket_processor_id", "socket", ["processor_id"])
    op.create_index("ix_socket_queue_id", "socket", ["queue_id"])
    op.bulk_insert(meta, [{"id": 1, "version": 0}])


def downgrade() -> None:
    op.drop_index("ix_socket_queue_id", table_name="socket")
    op.drop_index("ix_socket_processor_id", table_name="socket")
    for table in ("socket", "processor", "queue", "node", "meta"):
        op.drop_table(table)
