"""
The shared SQLAlchemy Core metadata and the core tables (accounts, history).

Each service's storage module defines its own tables on this same
L{metadata}; the Alembic chain in C{migrations/versions/} creates them.

Conventions every table follows:
 - C{**TABLE_KW}: on MariaDB/MySQL, InnoDB with utf8mb4 and a *binary*
   collation, so string comparison and unique keys behave byte-exactly as on
   SQLite and PostgreSQL (the default MySQL collation would make "é" equal
   "e" and "A" equal "a").
 - L{ID}: a 64-bit integer key that still autoincrements on SQLite.
 - L{NEVER_REUSED}: on tables whose ids other rows refer to (accounts,
   files, history), SQLite's C{AUTOINCREMENT}, so a deleted row's id is
   never handed out again (a plain SQLite rowid key reuses the highest one:
   an account registered right after the newest one was removed would get
   its id, and with it everything that refers to it).  PostgreSQL sequences
   and MariaDB's AUTO_INCREMENT never reuse an id anyway.
 - timestamps are BigInteger epoch milliseconds in C{*_ms} columns.
"""

from typing import Any, Unpack

import sqlalchemy as sa

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Dialect options are free keywords of Table (typed Any there).
TABLE_KW: dict[str, Any] = dict(
    mysql_engine="InnoDB", mysql_charset="utf8mb4", mysql_collate="utf8mb4_bin"
)

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

NEVER_REUSED: dict[str, Any] = dict(sqlite_autoincrement=True)

#: A row of a query whose columns are not spelled out in its type (a
#: C{select(table)}): read by attribute, C{row.name}.
AnyRow = sa.Row[Unpack[tuple[Any, ...]]]


def inserted_id(result: sa.CursorResult[Unpack[tuple[Any, ...]]]) -> int:
    """The L{ID} the database gave the row an C{INSERT} of one row made."""
    key = result.inserted_primary_key
    assert key is not None, "not the result of an INSERT of one row"
    return int(key[0])


accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", ID, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(32), nullable=False, unique=True),
    sa.Column("name_key", sa.String(32), nullable=False, unique=True),
    sa.Column("role", sa.String(8), nullable=False),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    # The last successful LOGIN or TOKEN (None: never since migration 0008).
    sa.Column("last_login_ms", sa.BigInteger, nullable=True),
    **TABLE_KW,
    **NEVER_REUSED,
)

#: Session tokens (C{SESSION NEW}, docs/protocol.md section 1.7.1): only
#: a SHA-256 of each secret is stored (the secret is 32 random bytes, so a
#: fast hash is enough: nothing to guess from it), with the account, a
#: label the client chose, where it was made and when it expires.
sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", ID, primary_key=True, autoincrement=True),
    sa.Column("account_id", sa.BigInteger, nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("label", sa.String(64), nullable=False),
    sa.Column("peer", sa.String(64), nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("last_used_ms", sa.BigInteger, nullable=False),
    # Pushed forward on every use (a sliding lifetime); 0: never expires.
    sa.Column("expires_ms", sa.BigInteger, nullable=False),
    sa.Index("ix_sessions_account_id", "account_id"),
    **TABLE_KW,
    **NEVER_REUSED,
)

history = sa.Table(
    "history",
    metadata,
    sa.Column("id", ID, primary_key=True, autoincrement=True),
    sa.Column("ts_ms", sa.BigInteger, nullable=False),
    sa.Column("service", sa.String(16), nullable=False),
    # The name shown (the account's, or a ttweet guest's); NULL before login.
    sa.Column("user", sa.String(32), nullable=True),
    sa.Column("peer", sa.String(64), nullable=False),
    sa.Column("command", sa.Text, nullable=False),
    sa.Column("code", sa.Integer, nullable=False),
    # The account that sent it: a user's own view is by id, so an account
    # registered later under a removed account's name sees none of it.
    sa.Column("account_id", sa.BigInteger, nullable=True),
    # Cleared from the user's own view (HISTORY CLEAR / DELETE); an admin
    # still sees it until the retention period purges it.
    sa.Column("hidden", sa.Boolean, nullable=False, server_default=sa.false()),
    # The order entries were made in: microseconds since the epoch, strictly
    # increasing within a server.  Views are newest first by it, not by id:
    # an acknowledged write's entry is inserted with the write (ahead of
    # entries still waiting in the batch recorder), so ids are not in order.
    sa.Column("seq", sa.BigInteger, nullable=False, server_default="0"),
    sa.Index("ix_history_user_seq", "user", "seq"),
    sa.Index("ix_history_account_id_seq", "account_id", "seq"),
    sa.Index("ix_history_seq", "seq"),
    **TABLE_KW,
    **NEVER_REUSED,
)

#: One row per write transaction, by a random id the transaction stores
#: itself: how a write whose COMMIT answer was lost is found to have
#: committed or not (L{netshare.storage.pool}).  Pruned after an hour.
write_marks = sa.Table(
    "write_marks",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Index("ix_write_marks_created_ms", "created_ms"),
    **TABLE_KW,
)

#: Failed logins per key (C{account:<id>}, C{address:<ip>}): growing delays
#: and account lockouts that hold across connections, restarts and server
#: processes, and that an operator can list and lift with the CLI
#: (L{netshare.storage.accounts.thd_login_attempt}).
login_penalties = sa.Table(
    "login_penalties",
    metadata,
    sa.Column("key", sa.String(80), primary_key=True),
    # Failures, forgotten one per --login-forget seconds (a float: decayed).
    sa.Column("failures", sa.Float, nullable=False),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
    # The earliest time the next attempt under this key may be checked.
    sa.Column("next_slot_ms", sa.BigInteger, nullable=False),
    # An account locked out for remote sources until then (0: not locked).
    sa.Column("locked_until_ms", sa.BigInteger, nullable=False),
    **TABLE_KW,
)
