"""
Schema upgrades of existing databases, on every configured database.

A database as the previous release (schema 0004) wrote it, with rows that
refer to accounts by name, is upgraded with the real C{netshare db upgrade}
command; nothing is lost, every row is attributed to its account by id, and
ids are never handed out again.
"""

import pytest
import sqlalchemy as sa

from netshare.storage import migrate
from netshare.storage.engine import create_engine
from tests.conftest import _reset
from tests.support import run_cli

PREVIOUS = "0004_personnel"


def _seed_previous_release(engine):
    """Rows as schema 0004 held them: owners, history users and timeline
    recipients by name."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO accounts (name, name_key, role, password_hash, created_ms) VALUES "
                "('admin', 'admin', 'admin', 'x', 1), ('alice', 'alice', 'user', 'x', 2), "
                "('Bob', 'bob', 'user', 'x', 3)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO files (name, name_key, owner, size, sha256, visibility, blob_id, "
                "enc_meta, created_ms) VALUES "
                "('a.txt', 'a.txt', 'alice', 1, :h, 'public', :b1, NULL, 10), "
                "('b.txt', 'b.txt', 'Bob', 2, :h, 'hidden', :b2, NULL, 11), "
                "('orphan', 'orphan', 'gone', 3, :h, 'public', :b3, NULL, 12)"
            ),
            {"h": "0" * 64, "b1": "1" * 32, "b2": "2" * 32, "b3": "3" * 32},
        )
        user = engine.dialect.identifier_preparer.quote("user")
        conn.execute(
            sa.text(
                "INSERT INTO history (ts_ms, service, %s, peer, command, code) VALUES "
                "(1, 'files', 'alice', 'p', 'LIST', 210), (2, 'files', NULL, 'p', 'PING', 200), "
                "(3, 'ttweet', 'Bob', 'p', 'TIMELINE', 210), "
                "(4, 'ttweet', 'guest7', 'p', 'LAST', 200)" % user
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO tweets (id, %s, message, hashtags, ts_ms) VALUES "
                "(1, 'alice', 'hi', '#a', 5), (2, 'guest7', 'yo', '', 6)" % user
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO timelines (%s, tweet_id) VALUES ('Bob', 1), ('alice', 2), "
                "('gone', 1)" % user
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO sync_clients (name, first_seen_ms, last_seen_ms, acked_seq, "
                "next_seq) VALUES ('alice', 1, 1, 0, 2)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO outbox (client, seq, action, ssn, payload, created_ms) VALUES "
                "('alice', 1, 'DELETE_ALL', NULL, '{}', 1)"
            )
        )


def test_db_upgrade_from_the_previous_release_keeps_everything(db_url, tmp_path):
    engine = create_engine(db_url)
    try:
        _reset(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
        migrate.upgrade(engine, PREVIOUS)
        _seed_previous_release(engine)
        assert migrate.status(engine) == "old"

        r = run_cli("db", "upgrade", "--data", str(tmp_path), "--db", db_url)
        assert r.returncode == 0, r.stderr
        assert r.stdout == "schema %s -> %s\n" % (PREVIOUS, migrate.head())
        assert migrate.status(engine) == "current"

        with engine.connect() as conn:
            ids = dict(conn.execute(sa.text("SELECT name, id FROM accounts")).all())
            files = {
                r.name: (r.owner, r.owner_id)
                for r in conn.execute(sa.text("SELECT name, owner, owner_id FROM files"))
            }
            user = engine.dialect.identifier_preparer.quote("user")
            history = conn.execute(
                sa.text("SELECT command, %s, account_id, hidden FROM history ORDER BY id" % user)
            ).all()
            timelines = sorted(
                conn.execute(sa.text("SELECT account_id, tweet_id FROM timelines")).all()
            )
            tweets = conn.execute(sa.text("SELECT COUNT(*) FROM tweets")).scalar()
            outbox = conn.execute(sa.text("SELECT COUNT(*) FROM outbox")).scalar()
        assert files == {
            "a.txt": ("alice", ids["alice"]),
            "b.txt": ("Bob", ids["Bob"]),
            "orphan": ("gone", None),
        }
        assert [tuple(h) for h in history] == [
            ("LIST", "alice", ids["alice"], False),
            ("PING", None, None, False),
            ("TIMELINE", "Bob", ids["Bob"], False),
            ("LAST", "guest7", None, False),
        ]
        # Timeline rows of names without an account could not be read by anyone.
        assert timelines == sorted([(ids["Bob"], 1), (ids["alice"], 2)])
        assert (tweets, outbox) == (2, 1)

        # Ids are never handed out again, on every database.
        with engine.begin() as conn:
            newest = max(ids.values())
            conn.execute(sa.text("DELETE FROM accounts WHERE id = :i"), {"i": newest})
            conn.execute(
                sa.text(
                    "INSERT INTO accounts (name, name_key, role, password_hash, created_ms) "
                    "VALUES ('carol', 'carol', 'user', 'x', 4)"
                )
            )
            carol = conn.execute(sa.text("SELECT id FROM accounts WHERE name = 'carol'")).scalar()
        assert carol > newest
    finally:
        engine.dispose()


def test_the_head_is_known_without_alembic_and_every_file_names_its_revision():
    """L{migrate.check} reads the head off the file names (a server whose
    schema is current starts without importing Alembic): every migration
    file is C{NNNN_name.py} with C{revision = "NNNN_name"}, and the newest
    file is Alembic's head."""
    import os
    import re

    names = sorted(f[:-3] for f in os.listdir(migrate._VERSIONS) if f[:4].isdigit())
    assert names
    for name in names:
        with open(os.path.join(migrate._VERSIONS, name + ".py")) as f:
            declared = re.search(r'^revision(?::\s*str)?\s*=\s*"([^"]+)"', f.read(), re.M)
        assert declared and declared.group(1) == name
    assert migrate.newest_file_revision() == names[-1] == migrate.head()


def test_check_tells_a_current_schema_from_a_missing_an_old_and_a_newer_one(tmp_path):
    engine = create_engine("sqlite:///" + str(tmp_path / "m.db"))
    try:
        with pytest.raises(migrate.SchemaError, match="netshare init"):
            migrate.check(engine)
        migrate.upgrade(engine)
        migrate.check(engine)  # current: no error
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0007_login_penalties'")
        with pytest.raises(migrate.SchemaError, match="older"):
            migrate.check(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999_future'")
        with pytest.raises(migrate.SchemaError, match="newer"):
            migrate.check(engine)
    finally:
        engine.dispose()
