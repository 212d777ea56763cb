"""failed logins per account and per address, kept in the database

Revision ID: 0007_login_penalties
Revises: 0006_write_marks
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0007_login_penalties"
down_revision: str | None = "0006_write_marks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Dialect options: free keywords of create_table (typed Any there).
KW: dict[str, Any] = dict(
    mysql_engine="InnoDB", mysql_charset="utf8mb4", mysql_collate="utf8mb4_bin"
)


def upgrade() -> None:
    op.create_table(
        "login_penalties",
        sa.Column("key", sa.String(80), nullable=False),
        sa.Column("failures", sa.Float, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
        sa.Column("next_slot_ms", sa.BigInteger, nullable=False),
        sa.Column("locked_until_ms", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_login_penalties"),
        **KW,
    )


def downgrade() -> None:
    op.drop_table("login_penalties")
