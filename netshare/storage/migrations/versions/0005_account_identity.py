"""accounts by identity: data refers to account ids, not names; history entries can be hidden

Revision ID: 0005_account_identity
Revises: 0004_personnel

Before this revision everything an account owned referred to it by name, so
a removed account's name, registered again, inherited its files, history,
timeline and pending sync records.  Now:

 - C{files.owner_id}: the owning account's id (C{owner} stays as the name
   shown); ownership is decided by the id.
 - C{history.account_id}: the account that sent the command (NULL before
   login and for ttweet guests); a user's own view is by id.  C{hidden}: the
   user cleared the entry from their view (an admin still sees it until
   the retention period purges it).  C{seq}: the order entries were made
   in (views are by it, not by id: an acknowledged write's entry is now
   written in the write's own transaction, ahead of entries still waiting
   in the batch recorder).
 - C{timelines.account_id} replaces C{timelines.user}.
 - On SQLite, C{accounts}, C{files} and C{history} are rebuilt with
   C{AUTOINCREMENT}: a plain rowid key hands the highest id out again after
   it is deleted, so an account registered right after the newest one was
   removed would have got its id.

Existing rows are attributed to the account holding the name when the
migration runs; a file whose owner name has no account keeps a NULL owner
(only an admin can delete it), and timeline rows of names without an
account are dropped (nobody can read them).

Written out rather than imported from the live schema, like every revision.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_account_identity"
down_revision: str | None = "0004_personnel"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _account_id(name_column: str) -> sa.TextClause:
    """A correlated subquery: the id of the account whose name is C{name_column}."""
    return sa.text("(SELECT accounts.id FROM accounts WHERE accounts.name = %s)" % name_column)


def upgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.add_column(sa.Column("owner_id", sa.BigInteger, nullable=True))
        batch.create_index("ix_files_owner_id", ["owner_id"])
    op.execute(sa.text("UPDATE files SET owner_id = %s" % _account_id("files.owner").text))

    with op.batch_alter_table("history") as batch:
        batch.add_column(sa.Column("account_id", sa.BigInteger, nullable=True))
        batch.add_column(
            sa.Column("hidden", sa.Boolean, nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("seq", sa.BigInteger, nullable=False, server_default="0"))
        batch.drop_index("ix_history_user_id")
        batch.create_index("ix_history_user_seq", ["user", "seq"])
        batch.create_index("ix_history_account_id_seq", ["account_id", "seq"])
        batch.create_index("ix_history_seq", ["seq"])
    # The old order was by id; ids within one millisecond stay in order.
    op.execute(sa.text("UPDATE history SET seq = ts_ms * 1000 + id % 1000"))
    # Only entries of logged-in commands name a user (history.user is NULL
    # before login); manhole and ttweet entries name accounts as well.
    op.execute(
        sa.text(
            "UPDATE history SET account_id = %s WHERE history.%s IS NOT NULL"
            % (_account_id("history.%s" % _q("user")).text, _q("user"))
        )
    )

    with op.batch_alter_table("timelines") as batch:
        batch.add_column(sa.Column("account_id", sa.BigInteger, nullable=True))
    op.execute(
        sa.text(
            "UPDATE timelines SET account_id = %s" % _account_id("timelines.%s" % _q("user")).text
        )
    )
    op.execute(sa.text("DELETE FROM timelines WHERE account_id IS NULL"))
    with op.batch_alter_table("timelines") as batch:
        batch.drop_index("ix_timelines_user_id")
        batch.drop_column("user")
        batch.alter_column("account_id", existing_type=sa.BigInteger, nullable=False)
        batch.create_index("ix_timelines_account_id_id", ["account_id", "id"])
    # Last: a later batch operation on these tables would rebuild them again
    # without the option.
    if op.get_bind().dialect.name == "sqlite":
        for table in ("accounts", "files", "history"):
            with op.batch_alter_table(
                table, recreate="always", table_kwargs={"sqlite_autoincrement": True}
            ):
                pass


def _q(name: str) -> str:
    """A column name quoted for the running dialect (C{user} is reserved)."""
    return op.get_bind().dialect.identifier_preparer.quote(name)


def downgrade() -> None:
    with op.batch_alter_table("timelines") as batch:
        batch.add_column(sa.Column("user", sa.String(32), nullable=True))
    op.execute(
        sa.text(
            "UPDATE timelines SET %s = (SELECT accounts.name FROM accounts "
            "WHERE accounts.id = timelines.account_id)" % _q("user")
        )
    )
    op.execute(sa.text("DELETE FROM timelines WHERE %s IS NULL" % _q("user")))
    with op.batch_alter_table("timelines") as batch:
        batch.drop_index("ix_timelines_account_id_id")
        batch.drop_column("account_id")
        batch.alter_column("user", existing_type=sa.String(32), nullable=False)
        batch.create_index("ix_timelines_user_id", ["user", "id"])
    with op.batch_alter_table("history") as batch:
        batch.drop_index("ix_history_seq")
        batch.drop_index("ix_history_account_id_seq")
        batch.drop_index("ix_history_user_seq")
        batch.drop_column("seq")
        batch.create_index("ix_history_user_id", ["user", "id"])
        batch.drop_column("hidden")
        batch.drop_column("account_id")
    with op.batch_alter_table("files") as batch:
        batch.drop_index("ix_files_owner_id")
        batch.drop_column("owner_id")
