"""failed logins per account and per address, kept in the database

Revision ID: 0007_login_penalties
Revises: 0006_write_marks
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_login_penalties"
down_revision = "0006_write_marks"
branch_labels = None
depends_on = None

KW = dict(mysql_engine="InnoDB", mysql_charset="utf8mb4", mysql_collate="utf8mb4_bin")


def upgrade():
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


def downgrade():
    op.drop_table("login_penalties")
