"""Data flows of issue #5: scheduled sockets' catch-up and call provenance in the history.

Revision ID: 0003
Revises: 0002

Adds socket.catch_up (what a scheduled socket does about ticks missed while no node ran it:
``once`` or ``all``), call.kind and call.via (what made a call: a plug, a workflow step, a
tick) and an index on call.root (``ecctl ls call --flow`` finds every call of a run). Plain
ALTER TABLE ADD COLUMN, on SQLite too.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("socket", recreate="never") as batch:
        batch.add_column(sa.Column("catch_up", sa.String(10), nullable=False, server_default="once"))
    with op.batch_alter_table("call", recreate="never") as batch:
        batch.add_column(sa.Column("kind", sa.String(10), nullable=True))
        batch.add_column(sa.Column("via", sa.String(300), nullable=True))
    op.create_index("ix_call_root", "call", ["root"])


def downgrade() -> None:
    op.drop_index("ix_call_root", table_name="call")
    with op.batch_alter_table("call", recreate="never") as batch:
        batch.drop_column("via")
        batch.drop_column("kind")
    with op.batch_alter_table("socket", recreate="never") as batch:
        batch.drop_column("catch_up")
