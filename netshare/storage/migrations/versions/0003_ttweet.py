"""ttweet: tweets and registered users' timelines

Revision ID: 0003_ttweet
Revises: 0002_files

Written out in full (not imported from netshare.storage.tweets) so this
revision keeps creating exactly these tables whatever the live schema later
becomes.
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0003_ttweet"
down_revision: str | None = "0002_files"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Dialect options: free keywords of create_table (typed Any there).
KW: dict[str, Any] = dict(
    mysql_engine="InnoDB", mysql_charset="utf8mb4", mysql_collate="utf8mb4_bin"
)
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "tweets",
        sa.Column("id", ID, autoincrement=False, nullable=False),
        sa.Column("user", sa.String(32), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("hashtags", sa.String(80), nullable=False),
        sa.Column("ts_ms", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tweets"),
        **KW,
    )
    op.create_index("ix_tweets_user_id", "tweets", ["user", "id"])
    op.create_table(
        "timelines",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("user", sa.String(32), nullable=False),
        sa.Column("tweet_id", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_timelines"),
        **KW,
    )
    op.create_index("ix_timelines_user_id", "timelines", ["user", "id"])


def downgrade() -> None:
    op.drop_index("ix_timelines_user_id", table_name="timelines")
    op.drop_table("timelines")
    op.drop_index("ix_tweets_user_id", table_name="tweets")
    op.drop_table("tweets")
