"""write ids: how a write whose COMMIT answer was lost is resolved

Revision ID: 0006_write_marks
Revises: 0005_account_identity

Every write transaction stores a random id of its own in C{write_marks};
when the answer to its COMMIT is lost, the pool learns whether it committed
by trying to insert the same id again (a duplicate means it did).
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0006_write_marks"
down_revision: str | None = "0005_account_identity"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Dialect options: free keywords of create_table (typed Any there).
KW: dict[str, Any] = dict(
    mysql_engine="InnoDB", mysql_charset="utf8mb4", mysql_collate="utf8mb4_bin"
)


def upgrade() -> None:
    op.create_table(
        "write_marks",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_write_marks"),
        **KW,
    )
    op.create_index("ix_write_marks_created_ms", "write_marks", ["created_ms"])


def downgrade() -> None:
    op.drop_index("ix_write_marks_created_ms", table_name="write_marks")
    op.drop_table("write_marks")
