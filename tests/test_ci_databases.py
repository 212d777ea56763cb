"""
The databases CI promises are really there.

C{.ci/run} exports NETSHARE_TEST_POSTGRES and NETSHARE_TEST_MYSQL; every
storage test then runs on SQLite, PostgreSQL and MariaDB.  If one of those
servers were unreachable the storage tests would error anyway, but this file
says so in one obvious line.
"""

import os

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.conftest import DB_PARAMS, ENV, admin_engine, scratch_database


@pytest.mark.parametrize("kind", sorted(ENV))
def test_configured_database_is_reachable(kind):
    url = os.environ.get(ENV[kind])
    if not url:
        pytest.skip("%s is not set (CI sets it: see .ci/run)" % ENV[kind])
    assert any(p.values[0] == kind for p in DB_PARAMS), (
        "%s is set but the storage fixtures do not run on %s" % (ENV[kind], kind)
    )
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={"connect_timeout": 5})
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
    admin = admin_engine(url)
    with admin.connect() as conn:
        if kind == "postgres":
            left = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_database WHERE datname = %(n)s", {"n": name}
            ).scalar_one()
        else:
            left = conn.exec_driver_sql(
                "SELECT count(*) FROM information_schema.schemata WHERE schema_name = %(n)s",
                {"n": name},
            ).scalar_one()
    admin.dispose()
    assert left == 0
