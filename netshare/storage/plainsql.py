"""
Plain SQL for the statements run once per command: the driver's own
execute and executemany, parameters as tuples.

SQLAlchemy Core builds a cache key for every statement it executes and
processes every parameter of every row in Python; for the inserts that run
for each command (a history row, a tweet and its timeline rows) that cost
more than the insert itself, in the database thread, holding the GIL the
reactor thread needs (bench/peers.py, py-spy).  These statements are built
once per dialect from the same L{sqlalchemy.Table} objects, quoted by the
dialect, so they follow the schema; everything else stays in Core.

They run on the DB-API cursor of the SQLAlchemy connection's own
transaction (L{execute}), not through C{exec_driver_sql}: SQLAlchemy's
execution context, result set-up and events cost about 40 us a statement
on these machines, against 2-3 us for sqlite3 itself, and an acknowledged
write runs four of them (BEGIN, the replay check, the row, its history
row).  Errors are wrapped exactly as SQLAlchemy wraps them (an
L{sqlalchemy.exc.DBAPIError} subclass with C{.orig}; a lost connection
invalidated and flagged), so the pool's retry and in-doubt rules see no
difference.  C{bench/db_floor.py} measures the three ways side by side.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

#: Placeholder by DB-API paramstyle (sqlite: qmark; psycopg, pymysql: %s).
_MARKS = {"qmark": "?", "format": "%s", "pyformat": "%s"}
_CACHE: dict[tuple[Any, ...], str] = {}


def execute(conn: Connection, sql: str, params: Sequence[Any] = (), *, many: bool = False) -> Any:
    """
    Run C{sql} (in the driver's paramstyle) on the DB-API cursor of
    C{conn}'s transaction; return the cursor (the caller fetches and
    closes it: L{fetch_column} does both).

    @raise sqlalchemy.exc.DBAPIError: the driver's error, wrapped as
        SQLAlchemy wraps it (parameters hidden: they are user data); when it
        means the connection is gone, the connection is invalidated first.
    """
    dbapi_conn = conn.connection.dbapi_connection
    assert dbapi_conn is not None  # (None only once the connection is closed)
    cursor = dbapi_conn.cursor()
    try:
        if many:
            cursor.executemany(sql, params)
        elif params:
            cursor.execute(sql, params)
        else:
            cursor.execute(sql)
    except conn.dialect.loaded_dbapi.Error as e:
        _close_quietly(cursor)
        gone = conn.dialect.is_disconnect(e, dbapi_conn, cursor)
        if gone:
            conn.invalidate(e)
        raise sa_exc.DBAPIError.instance(
            sql,
            None,
            e,
            conn.dialect.loaded_dbapi.Error,
            hide_parameters=True,
            connection_invalidated=gone,
            dialect=conn.dialect,
            ismulti=many,
        ) from e
    return cursor


def run(conn: Connection, sql: str, params: Sequence[Any] = (), *, many: bool = False) -> None:
    """L{execute} a statement whose result nobody reads."""
    execute(conn, sql, params, many=many).close()


def fetch_column(conn: Connection, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    """The first column of every row C{sql} returns."""
    cursor = execute(conn, sql, params)
    try:
        return [r[0] for r in cursor.fetchall()]
    finally:
        cursor.close()


def _close_quietly(cursor: Any) -> None:
    try:
        cursor.close()
    except Exception:
        pass


def _names(conn: Connection, table: sa.Table, columns: Sequence[str]) -> tuple[str, str]:
    quote = conn.dialect.identifier_preparer.quote
    return quote(table.name), ", ".join(quote(c) for c in columns)


def mark(conn: Connection) -> str:
    return _MARKS[conn.dialect.paramstyle]


def insert_sql(conn: Connection, table: sa.Table, columns: Sequence[str]) -> str:
    """C{INSERT INTO table (columns) VALUES (?, ...)} for this dialect."""
    key = ("insert", conn.dialect.name, table.name, tuple(columns))
    sql = _CACHE.get(key)
    if sql is None:
        name, cols = _names(conn, table, columns)
        sql = _CACHE[key] = "INSERT INTO %s (%s) VALUES (%s)" % (
            name,
            cols,
            ", ".join([mark(conn)] * len(columns)),
        )
    return sql


#: Bound parameters per multi-row INSERT on SQLite: under the 999 of the
#: oldest SQLite builds (newer ones allow 32766).
_SQLITE_VARIABLES = 900


def insert_tuples(
    conn: Connection, table: sa.Table, columns: Sequence[str], rows: list[tuple[Any, ...]]
) -> None:
    """
    Insert C{rows} (tuples in C{columns} order): the driver's executemany,
    or on SQLite multi-row C{INSERT ... VALUES (...), (...), ...} statements.

    Python's sqlite3 steps an executemany once a row and releases the GIL
    around every step, so N rows hand the GIL to and from the reactor
    thread about 2N times (each a futex wake-up and a context switch); a
    multi-row statement binds its rows in one C loop and steps once, and
    costs SQLite less than half the CPU per row (1.1 against 2.2-2.5 us a
    history row with its three indexes, measured).  psycopg pipelines an
    executemany and PyMySQL rewrites it into multi-row VALUES itself.
    """
    if not rows:
        return
    if len(rows) == 1:
        run(conn, insert_sql(conn, table, columns), rows[0])
        return
    if conn.dialect.name != "sqlite":
        run(conn, insert_sql(conn, table, columns), rows, many=True)
        return
    per = max(1, _SQLITE_VARIABLES // len(columns))
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        run(
            conn,
            _insert_values_sql(conn, table, columns, len(chunk)),
            tuple(itertools.chain.from_iterable(chunk)),
        )


def _insert_values_sql(
    conn: Connection, table: sa.Table, columns: Sequence[str], nrows: int
) -> str:
    key = ("values", conn.dialect.name, table.name, tuple(columns), nrows)
    sql = _CACHE.get(key)
    if sql is None:
        name, cols = _names(conn, table, columns)
        one = "(%s)" % (", ".join([mark(conn)] * len(columns)),)
        sql = "INSERT INTO %s (%s) VALUES %s" % (name, cols, ", ".join([one] * nrows))
        if len(_CACHE) < 4096:  # (a full chunk and the remainders: bounded)
            _CACHE[key] = sql
    return sql


def select_in(conn: Connection, table: sa.Table, column: str, values: Sequence[Any]) -> list[Any]:
    """The values of C{column} among C{values} (at most a few hundred: one
    bound parameter each) that C{table} holds."""
    if not values:
        return []
    key = ("in", conn.dialect.name, table.name, column, len(values))
    sql = _CACHE.get(key)
    if sql is None:
        name, col = _names(conn, table, [column])
        sql = "SELECT %s FROM %s WHERE %s IN (%s)" % (
            col,
            name,
            col,
            ", ".join([mark(conn)] * len(values)),
        )
        if len(_CACHE) < 4096:  # (one per chunk size: bounded anyway)
            _CACHE[key] = sql
    return fetch_column(conn, sql, tuple(values))
