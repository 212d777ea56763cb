"""
The databases CI promises are really there.

C{.ci/run} exports NETSHARE_TEST_POSTGRES and NETSHARE_TEST_MYSQL; every
storage test then runs on SQLite, PostgreSQL and MariaDB.  If one of those
servers were unreachable the storage tests would error anyway, but this file
says so in one obvious line.  It also holds L{scratch_database}: a private,
throw-away database on the same server for tests that must not share the
C{test} database with concurrently running test sessions (the end-to-end
server, the CLI, the outage test).
"""

import contextlib
import os
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.conftest import DB_PARAMS

ENV = {"postgres": "NETSHARE_TEST_POSTGRES", "mysql": "NETSHARE_TEST_MYSQL"}


def _admin_engine(url):
    return sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool,
                            connect_args={"connect_timeout": 5})


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
    admin = _admin_engine(url)
    try:
        with admin.connect() as conn:
            if backend == "postgresql":
                conn.exec_driver_sql('CREATE DATABASE "%s"' % name)
            else:
                conn.exec_driver_sql("CREATE DATABASE `%s` CHARACTER SET utf8mb4 "
                                     "COLLATE utf8mb4_bin" % name)
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


@pytest.mark.parametrize("kind", sorted(ENV))
def test_configured_database_is_reachable(kind):
    url = os.environ.get(ENV[kind])
    if not url:
        pytest.skip("%s is not set (CI sets it: see .ci/run)" % ENV[kind])
    assert any(p.values[0] == kind for p in DB_PARAMS), \
        "%s is set but the storage fixtures do not run on %s" % (ENV[kind], kind)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool,
                              connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT 1").scalar_one() == 1
            version = conn.exec_driver_sql("SELECT version()").scalar_one()
    except sa.exc.OperationalError as e:
        pytest.fail("%s=%s is unreachable: %s" % (ENV[kind], url, str(e).splitlines()[0]))
    finally:
        engine.dispose()
    print("%s: %s" % (kind, version))


@pytest.mark.parametrize("kind", sorted(ENV))
def test_scratch_database_is_created_and_dropped(kind):
    url = os.environ.get(ENV[kind])
    if not url:
        pytest.skip("%s is not set (CI sets it: see .ci/run)" % ENV[kind])
    with scratch_database(url) as scratch:
        name = make_url(scratch).database
        assert name != make_url(url).database
        engine = sa.create_engine(scratch, poolclass=sa.pool.NullPool)
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
            assert conn.exec_driver_sql("SELECT x FROM t").scalar_one() == 1
        engine.dispose()
    admin = _admin_engine(url)
    with admin.connect() as conn:
        if kind == "postgres":
            left = conn.exec_driver_sql("SELECT count(*) FROM pg_database WHERE datname = %(n)s",
                                        {"n": name}).scalar_one()
        else:
            left = conn.exec_driver_sql("SELECT count(*) FROM information_schema.schemata "
                                        "WHERE schema_name = %(n)s", {"n": name}).scalar_one()
    admin.dispose()
    assert left == 0
