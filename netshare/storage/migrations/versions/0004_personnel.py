"""personnel: roster, sync clients and their outboxes

Revision ID: 0004_personnel
Revises: 0003_ttweet

Mirrors the Table objects of L{netshare.storage.roster} and
L{netshare.storage.outbox} (same names, types, keys and index names, as the
metadata's naming convention would give them), so a migrated database and
C{metadata.create_all} agree.
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0004_personnel"
down_revision: str | None = "0003_ttweet"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Dialect options: free keywords of create_table (typed Any there).
KW: dict[str, Any] = dict(
    mysql_engine="InnoDB", mysql_charset="utf8mb4", mysql_collate="utf8mb4_bin"
)


def upgrade() -> None:
    op.create_table(
        "personnel",
        sa.Column("ssn", sa.String(32), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("surname", sa.String(255), nullable=False),
        sa.Column("job", sa.String(255), nullable=False, server_default=""),
        sa.Column("salary", sa.String(32), nullable=False, server_default=""),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("ssn", name="pk_personnel"),
        **KW,
    )
    op.create_table(
        "sync_clients",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("first_seen_ms", sa.BigInteger, nullable=False),
        sa.Column("last_seen_ms", sa.BigInteger, nullable=True),
        sa.Column("acked_seq", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("next_seq", sa.BigInteger, nullable=False, server_default="1"),
        sa.PrimaryKeyConstraint("name", name="pk_sync_clients"),
        **KW,
    )
    op.create_table(
        "outbox",
        sa.Column("client", sa.String(32), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("action", sa.String(12), nullable=False),
        sa.Column("ssn", sa.String(32), nullable=True),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("client", "seq", name="pk_outbox"),
        **KW,
    )
    op.create_index("ix_outbox_created_ms", "outbox", ["created_ms"])


def downgrade() -> None:
    op.drop_index("ix_outbox_created_ms", table_name="outbox")
    op.drop_table("outbox")
    op.drop_table("sync_clients")
    op.drop_table("personnel")
