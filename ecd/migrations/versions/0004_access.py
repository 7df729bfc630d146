"""Access of issue #12: node keys, users, roles, privileges, login sessions, the audit log.

Revision ID: 0004
Revises: 0003

Adds node.public_key (the node's CURVE public key; peers admit only registered keys), call.user
(who sent the call), and the tables users (argon2id hashes), role, user_roles, privilege (a right
given to a user or a role), login_session (a client key bound to a user until it expires), audit
and revoked_key. Plain ALTER TABLE ADD COLUMN on SQLite too.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
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
    with op.batch_alter_table("node", recreate="never") as batch:
        batch.add_column(sa.Column("public_key", sa.String(64), nullable=False, server_default=""))
    with op.batch_alter_table("call", recreate="never") as batch:
        batch.add_column(sa.Column("user", sa.String(200), nullable=True))
    op.create_index("ix_call_user", "call", ["user"])

    op.create_table(
        "users",
        *_common(),
        sa.Column("email", sa.String(320), nullable=True),
        sa.Column("password", sa.String(200), nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
    )
    op.create_table("role", *_common())
    op.create_table(
        "user_roles",
        sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id"), primary_key=True),
        sa.Column("role_id", sa.String(36), sa.ForeignKey("role.id"), primary_key=True),
    )
    op.create_index("ix_user_roles_role_id", "user_roles", ["role_id"])
    op.create_table(
        "privilege",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id"), nullable=True),
        sa.Column("role_id", sa.String(36), sa.ForeignKey("role.id"), nullable=True),
        sa.Column("right", sa.String(64), nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("by", sa.String(200), nullable=True),
    )
    op.create_index("ix_privilege_user_id", "privilege", ["user_id"])
    op.create_index("ix_privilege_role_id", "privilege", ["role_id"])
    op.create_table(
        "login_session",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("expires", sa.Float, nullable=False),
        sa.Column("node", sa.String(200), nullable=True),
    )
    op.create_index("ix_login_session_user_id", "login_session", ["user_id"])
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("user", sa.String(200), nullable=True),
        sa.Column("key", sa.String(64), nullable=True),
        sa.Column("node", sa.String(200), nullable=True),
        sa.Column("op", sa.String(64), nullable=False),
        sa.Column("object", sa.String(300), nullable=True),
        sa.Column("outcome", sa.String(300), nullable=False),
    )
    op.create_index("ix_audit_time", "audit", ["time"])
    op.create_index("ix_audit_user", "audit", ["user"])
    op.create_table(
        "revoked_key",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("time", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in ("revoked_key", "audit", "login_session", "privilege", "user_roles", "role", "users"):
        op.drop_table(table)
    op.drop_index("ix_call_user", table_name="call")
    with op.batch_alter_table("call", recreate="never") as batch:
        batch.drop_column("user")
    with op.batch_alter_table("node", recreate="never") as batch:
        batch.drop_column("public_key")
