"""core: accounts and request history

Revision ID: 0001_core
Revises:
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0001_core"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Dialect options: free keywords of create_table (typed Any there).
KW: dict[str, Any] = dict(
    mysql_engine="InnoDB", mysql_charset="utf8mb4", mysql_collate="utf8mb4_bin"
)
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("name_key", sa.String(32), nullable=False),
        sa.Column("role", sa.String(8), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_accounts"),
        sa.UniqueConstraint("name", name="uq_accounts_name"),
        sa.UniqueConstraint("name_key", name="uq_accounts_name_key"),
        **KW,
    )
    op.create_table(
        "history",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("ts_ms", sa.BigInteger, nullable=False),
        sa.Column("service", sa.String(16), nullable=False),
        sa.Column("user", sa.String(32), nullable=True),
        sa.Column("peer", sa.String(64), nullable=False),
        sa.Column("command", sa.Text, nullable=False),
        sa.Column("code", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_history"),
        **KW,
    )
    op.create_index("ix_history_user_id", "history", ["user", "id"])


def downgrade() -> None:
    op.drop_index("ix_history_user_id", table_name="history")
    op.drop_table("history")
    op.drop_table("accounts")
