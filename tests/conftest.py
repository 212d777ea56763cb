"""
Shared fixtures.

Storage tests take C{db_engine} / C{db_pool}: every such test runs on SQLite
always, and on PostgreSQL and MariaDB when NETSHARE_TEST_POSTGRES /
NETSHARE_TEST_MYSQL hold URLs.  When a URL is set but the server is
unreachable the tests *error*: CI sets both and must never silently skip.
"""

import os

import pytest
import pytest_twisted
import sqlalchemy as sa

from netshare.storage import migrate
from netshare.storage.engine import create_engine
from netshare.storage.pool import DBPool


def _db_params():
    params = [pytest.param("sqlite", id="sqlite")]
    if os.environ.get("NETSHARE_TEST_POSTGRES"):
        params.append(pytest.param("postgres", id="postgres"))
    if os.environ.get("NETSHARE_TEST_MYSQL"):
        params.append(pytest.param("mysql", id="mysql"))
    return params


DB_PARAMS = _db_params()


def _reset(engine):
    """Drop every table so each test starts from an empty database."""
    md = sa.MetaData()
    with engine.begin() as conn:
        md.reflect(conn)
        md.drop_all(conn)


@pytest.fixture(params=DB_PARAMS)
def db_url(request, tmp_path):
    kind = request.param
    if kind == "sqlite":
        return "sqlite:///" + str(tmp_path / "test.db")
    return os.environ["NETSHARE_TEST_POSTGRES" if kind == "postgres" else "NETSHARE_TEST_MYSQL"]


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
