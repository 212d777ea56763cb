"""
Shared fixtures.

Storage tests take C{db_engine} / C{db_pool}: every such test runs on SQLite
always, and on PostgreSQL and MariaDB when NETSHARE_TEST_POSTGRES /
NETSHARE_TEST_MYSQL hold URLs.  When a URL is set but the server is
unreachable the tests *error*: CI sets both and must never silently skip.
"""

import contextlib
import os
import uuid

import pytest
import pytest_twisted
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from netshare.storage import migrate
from netshare.storage.engine import create_engine
from netshare.storage.pool import DBPool

# Fixtures of the in-process helpers, shared by every test module.
from tests.inprocess import db_runtime, make_runtime, runtime  # noqa: F401


def _db_params():
    params = [pytest.param("sqlite", id="sqlite")]
    if os.environ.get("NETSHARE_TEST_POSTGRES"):
        params.append(pytest.param("postgres", id="postgres"))
    if os.environ.get("NETSHARE_TEST_MYSQL"):
        params.append(pytest.param("mysql", id="mysql"))
    return params


DB_PARAMS = _db_params()


@pytest.fixture(scope="session")
def server_urls():
    """
    Per-session isolation on the shared servers: a schema of our own on
    PostgreSQL, a database of our own on MariaDB (so two test runs at once
    never drop each other's tables).  Created here, dropped at the end.
    """
    urls, cleanup = {}, []
    tag = "ns_test_%d" % os.getpid()
    pg = os.environ.get("NETSHARE_TEST_POSTGRES")
    if pg:
        base = sa.create_engine(pg, isolation_level="AUTOCOMMIT")
        with base.connect() as conn:
            conn.exec_driver_sql("DROP SCHEMA IF EXISTS %s CASCADE" % tag)
            conn.exec_driver_sql("CREATE SCHEMA %s" % tag)
        u = sa.engine.make_url(pg)
        urls["postgres"] = u.update_query_dict(
            {"options": "-csearch_path=%s" % tag}
        ).render_as_string(hide_password=False)
        cleanup.append((base, "DROP SCHEMA IF EXISTS %s CASCADE" % tag))
    my = os.environ.get("NETSHARE_TEST_MYSQL")
    if my:
        base = sa.create_engine(my, isolation_level="AUTOCOMMIT")
        with base.connect() as conn:
            conn.exec_driver_sql("DROP DATABASE IF EXISTS %s" % tag)
            conn.exec_driver_sql(
                "CREATE DATABASE %s CHARACTER SET utf8mb4 COLLATE utf8mb4_bin" % tag
            )
        urls["mysql"] = (
            sa.engine.make_url(my).set(database=tag).render_as_string(hide_password=False)
        )
        cleanup.append((base, "DROP DATABASE IF EXISTS %s" % tag))
    yield urls
    for base, sql in cleanup:
        with base.connect() as conn:
            conn.exec_driver_sql(sql)
        base.dispose()


def _reset(engine):
    """Drop every table so each test starts from an empty database."""
    md = sa.MetaData()
    with engine.begin() as conn:
        md.reflect(conn)
        md.drop_all(conn)


def empty_database_url(request, kind, directory):
    """For a server a module fixture starts: the URL of an empty database
    of C{kind} (a SQLite file in C{directory}, or this session's own
    PostgreSQL schema / MariaDB database, its tables dropped)."""
    if kind == "sqlite":
        return "sqlite:///" + str(directory / "server.db")
    url = request.getfixturevalue("server_urls")[kind]
    engine = create_engine(url)
    try:
        _reset(engine)
    finally:
        engine.dispose()
    return url


@pytest.fixture(params=DB_PARAMS)
def db_url(request, tmp_path):
    """A database URL: a SQLite file, or this session's own PostgreSQL
    schema / MariaDB database (see L{server_urls})."""
    kind = request.param
    if kind == "sqlite":
        return "sqlite:///" + str(tmp_path / "test.db")
    return request.getfixturevalue("server_urls")[kind]


@pytest.fixture
def db_engine(db_url):
    """An engine on a fresh schema at the newest migration."""
    engine = create_engine(db_url)
    _reset(engine)
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def db_pool(db_engine):
    """A started L{DBPool} on C{db_engine}, stopped after the test."""
    pool = DBPool(db_engine, retry_delays=(0.05, 0.1))
    pool.start()
    yield pool
    pytest_twisted.blockon(pool.stop())


# --- private scratch databases ---------------------------------------------------
#
# For tests that must not share the C{test} database with concurrently running
# test sessions (the end-to-end server, the CLI, the outage test).

ENV = {"postgres": "NETSHARE_TEST_POSTGRES", "mysql": "NETSHARE_TEST_MYSQL"}


def admin_engine(url):
    return sa.create_engine(
        url,
        isolation_level="AUTOCOMMIT",
        poolclass=sa.pool.NullPool,
        connect_args={"connect_timeout": 5},
    )


@contextlib.contextmanager
def scratch_database(url):
    """
    Create an empty database next to the one C{url} names, yield its URL,
    drop it afterwards.  For SQLite URLs, yields C{url} unchanged.
    """
    u = make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        yield url
        return
    name = "netshare_t_%s" % uuid.uuid4().hex[:12]
    admin = admin_engine(url)
    try:
        with admin.connect() as conn:
            if backend == "postgresql":
                conn.exec_driver_sql('CREATE DATABASE "%s"' % name)
            else:
                conn.exec_driver_sql(
                    "CREATE DATABASE `%s` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin" % name
                )
        yield u.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            if backend == "postgresql":
                conn.exec_driver_sql('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)
            else:
                conn.exec_driver_sql("DROP DATABASE IF EXISTS `%s`" % name)
        admin.dispose()


@pytest.fixture(params=DB_PARAMS)
def scratch_url(request, tmp_path):
    """A private empty database on each configured backend (SQLite always)."""
    if request.param == "sqlite":
        yield "sqlite:///" + str(tmp_path / "scratch.db")
        return
    with scratch_database(os.environ[ENV[request.param]]) as url:
        yield url


@pytest.fixture(autouse=True)
def client_sessions(tmp_path, monkeypatch):
    """The client programs keep session tokens (netshare.clients.sessions):
    in each test's own file, never the user's ~/.config, and never shared
    between tests (a port number reused by another test's server would
    otherwise meet a stale token)."""
    path = tmp_path / "client-sessions.json"
    monkeypatch.setenv("NETSHARE_SESSIONS", str(path))
    return path
