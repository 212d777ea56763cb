"""
One SQLAlchemy engine per database URL, set up for how netshare uses it.

SQLite (the embedded default) is used from exactly one worker thread: WAL so
readers in other processes (backups, the operator CLI) never block us, a busy
timeout so a concurrent writer is waited for instead of failing, every
transaction C{BEGIN IMMEDIATE} so a read-then-write transaction can never hit
a lock upgrade deadlock, and C{synchronous=FULL} by default because an
acknowledged write must survive a power loss (WAL+NORMAL may roll the last
commits back).

PostgreSQL and MariaDB get a small connection pool with C{pool_recycle}
(MySQL drops idle connections after 8 h), short connect timeouts so an
unreachable server surfaces as an error in seconds, and driver-level bounds
(TCP keepalive, unacknowledged-data and read timeouts) so a connection that
stops answering fails on its own; a server restart costs the first call one
retry on a fresh connection (see L{netshare.storage.pool}).
"""

import os
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.pool import QueuePool, StaticPool

from netshare.storage import plainsql

SQLITE_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")


class EngineError(ValueError):
    """The database URL or its settings are unusable."""


def resolve_url(url: str, data_dir: str | None = None) -> str:
    """Make a relative SQLite path relative to the data dir, not the cwd."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
        if not os.path.isabs(u.database) and data_dir:
            u = u.set(database=os.path.join(data_dir, u.database))
    return u.render_as_string(hide_password=False)


def create_engine(
    url: str,
    data_dir: str | None = None,
    *,
    sqlite_synchronous: str = "FULL",
    busy_timeout_ms: int = 5000,
    pool_size: int = 5,
    connect_timeout: int = 3,
    call_timeout: float | None = None,
) -> Engine:
    """
    Build the engine for C{url} (L{worker_threads} says how many threads
    should use it).
    """
    try:
        u = make_url(resolve_url(url, data_dir))
    except Exception as e:
        raise EngineError("invalid database URL: %s" % (e,)) from None
    backend = u.get_backend_name()
    if backend == "sqlite":
        engine = _sqlite_engine(u, sqlite_synchronous.upper(), busy_timeout_ms)
    elif backend in ("postgresql", "mysql", "mariadb"):
        # No pre-ping: a stale connection (the server restarted) fails on its
        # first statement, before any COMMIT, which the pool retries on a
        # fresh one (SQLAlchemy then discards the whole stale pool); and a
        # ping of a connection that stopped answering would block outside
        # the reach of the pool's deadline.
        kw: dict[str, Any] = dict(
            pool_recycle=1800,
            pool_size=pool_size,
            max_overflow=0,
            pool_timeout=connect_timeout + 2,
        )
        # A connection that stops answering fails on its own within a call's
        # deadline and grace (the pool also cuts its socket at the deadline):
        # TCP keepalive for an idle peer that vanished, and a bound on how
        # long data may go unacknowledged (PostgreSQL) or a read may wait
        # (MariaDB).
        patience = int(2 * call_timeout + 5) if call_timeout else 30
        if backend == "postgresql":
            kw["connect_args"] = {
                "connect_timeout": connect_timeout,
                "keepalives": 1,
                "keepalives_idle": 10,
                "keepalives_interval": 5,
                "keepalives_count": 3,
                "tcp_user_timeout": patience * 1000,
            }
        else:
            kw["connect_args"] = {
                "connect_timeout": connect_timeout,
                "read_timeout": patience,
                "write_timeout": patience,
                "charset": "utf8mb4",
            }
        try:
            engine = sa.create_engine(u, **kw)
        except Exception as e:
            raise EngineError(
                "cannot use database URL %s: %s" % (u.render_as_string(), e)
            ) from None
    else:
        raise EngineError("unsupported database %r (use sqlite, postgresql or mysql)" % (backend,))
    return engine


def worker_threads(engine: Engine) -> int:
    """
    How many worker threads the L{netshare.storage.pool.DBPool} should give
    C{engine}: 1 for SQLite (one writer at a time; an in-memory database is
    one shared connection), the connection pool's size otherwise (no
    overflow: a thread never waits for a connection).
    """
    if engine.dialect.name == "sqlite":
        return 1
    pool = engine.pool
    return pool.size() if isinstance(pool, QueuePool) else 1


def _sqlite_engine(u: URL, synchronous: str, busy_timeout_ms: int) -> Engine:
    if synchronous not in SQLITE_SYNCHRONOUS:
        raise EngineError("sqlite synchronous must be one of %s" % ", ".join(SQLITE_SYNCHRONOUS))
    path = u.database if u.database != ":memory:" else None
    memory = not path
    if not path:
        # One shared connection, or every checkout would see a new empty db.
        engine = sa.create_engine(
            u, poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
    else:
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise EngineError("SQLite directory %s does not exist" % (directory,))
        private_file(path)
        engine = sa.create_engine(
            u,
            pool_size=1,
            max_overflow=2,
            connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000.0},
        )

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_conn: Any, record: object) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide where transactions
        # begin (the sqlite3 module would defer BEGIN until the first write).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        if not memory:
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=%s" % synchronous)
        cur.execute("PRAGMA busy_timeout=%d" % int(busy_timeout_ms))
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: sa.Connection) -> None:
        plainsql.run(conn, "BEGIN IMMEDIATE")

    return engine


def private_file(path: str) -> None:
    """
    Make the SQLite file readable by its owner only (0600), creating it so
    if it does not exist.  SQLite gives its C{-wal} and C{-shm} files the
    mode of the database file, so they follow; existing ones are fixed too.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    for p in (path, path + "-wal", path + "-shm", path + "-journal"):
        try:
            if os.stat(p).st_mode & 0o077:
                os.chmod(p, 0o600)
        except FileNotFoundError:
            pass


def describe(engine: Engine) -> str:
    """The URL without its password, for logs and messages."""
    return engine.url.render_as_string(hide_password=True)
