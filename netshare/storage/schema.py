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
 - timestamps are BigInteger epoch milliseconds in C{*_ms} columns.
"""

import sqlalchemy as sa

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

TABLE_KW = dict(mysql_engine="InnoDB", mysql_charset="utf8mb4", mysql_collate="utf8mb4_bin")

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", ID, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(32), nullable=False, unique=True),
    sa.Column("name_key", sa.String(32), nullable=False, unique=True),
    sa.Column("role", sa.String(8), nullable=False),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    **TABLE_KW,
)

history = sa.Table(
    "history",
    metadata,
    sa.Column("id", ID, primary_key=True, autoincrement=True),
    sa.Column("ts_ms", sa.BigInteger, nullable=False),
    sa.Column("service", sa.String(16), nullable=False),
    sa.Column("user", sa.String(32), nullable=True),
    sa.Column("peer", sa.String(64), nullable=False),
    sa.Column("command", sa.Text, nullable=False),
    sa.Column("code", sa.Integer, nullable=False),
    sa.Index("ix_history_user_id", "user", "id"),
    **TABLE_KW,
)
