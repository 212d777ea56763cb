"""
Files metadata storage (netshare.storage.files): the thd_* functions on a
real database migrated to head (SQLite always; PostgreSQL / MariaDB when the
conftest's NETSHARE_TEST_* URLs are set), and the FileStore facade through a
real DBPool.
"""

import threading

import pytest
import pytest_twisted
import sqlalchemy as sa

from netshare.errors import Conflict, LimitExceeded, NotFound, PermissionDenied
from netshare.services.files.names import name_key, normalize_name
from netshare.storage import files as S

META = {
    "v": 1,
    "alg": "AES-256-GCM",
    "kdf": "scrypt",
    "n": 32768,
    "r": 8,
    "p": 1,
    "salt": "00" * 16,
    "verifier": "ab" * 32,
    "nonce_prefix": "11" * 8,
    "chunk_size": 65536,
}


def run(engine, fn, *args, **kw):
    with engine.begin() as conn:
        return fn(conn, *args, **kw)


#: Owners by account id (the table decides ownership by id, shows the name).
IDS = {"alice": 1, "bob": 2, "nobody": 99, **{"user%d" % i: 10 + i for i in range(4)}}


def row(
    name,
    owner="alice",
    size=10,
    blob=None,
    visibility="public",
    enc_meta=None,
    quota=None,
    created_ms=1_700_000_000_123,
):
    name = normalize_name(name)
    return dict(
        name=name,
        name_key=name_key(name),
        owner=owner,
        owner_id=IDS[owner],
        size=size,
        sha256="%064x" % size,
        visibility=visibility,
        blob_id=blob or ("%032x" % abs(hash((name, owner, size))))[:32],
        enc_meta=enc_meta,
        created_ms=created_ms,
        quota=quota,
    )


def test_insert_and_get(db_engine):
    rec = run(db_engine, S.thd_insert, **row("Report.txt", blob="a" * 32))
    assert rec.id > 0
    got = run(db_engine, S.thd_get, name_key("REPORT.TXT"))
    assert got == rec
    assert got.to_wire() == {
        "name": "Report.txt",
        "size": 10,
        "sha256": "%064x" % 10,
        "owner": "alice",
        "visibility": "public",
        "protected": False,
        "created": "2023-11-14T22:13:20.123Z",
    }
    assert run(db_engine, S.thd_get, name_key("other")) is None


def test_enc_meta_round_trip(db_engine):
    run(db_engine, S.thd_insert, **row("vault", enc_meta=META))
    got = run(db_engine, S.thd_get, "vault")
    assert got.enc_meta == META and got.protected
    assert got.to_wire()["protected"] is True
    assert "salt" not in got.to_wire() and "blob_id" not in got.to_wire()


def test_unicode_names_stored_exactly(db_engine):
    names = [
        "\U0001f600" * 63,
        "\u00e9" * 127 + "a",
        "'; DROP TABLE files;--",
        "100%_x",
        "caf\u00e9",
        "\u65e5\u672c\u8a9e.txt",
    ]
    for n in names:
        run(db_engine, S.thd_insert, **row(n))
    for n in names:
        got = run(db_engine, S.thd_get, name_key(n))
        assert got is not None and got.name == n
    # LIKE wildcards and quotes are data, not syntax
    assert run(db_engine, S.thd_get, name_key("100%x")) is None
    assert len(run(db_engine, S.thd_list_public)) == len(names)


def test_case_insensitive_conflict(db_engine):
    run(db_engine, S.thd_insert, **row("Stra\u00dfe", owner="alice"))
    for spelling in ("STRASSE", "strasse", "stra\u00dfe"):
        with pytest.raises(Conflict) as e:
            run(db_engine, S.thd_insert, **row(spelling, owner="bob"))
        assert e.value.code == 555
    assert run(db_engine, S.thd_get, name_key("strasse")).owner == "alice"


def test_conflict_leaves_the_transaction_usable(db_engine):
    """The clash is caught in a savepoint: PostgreSQL would otherwise abort
    the whole transaction."""
    run(db_engine, S.thd_insert, **row("x"))

    def both(conn):
        with pytest.raises(Conflict):
            S.thd_insert(conn, **row("X"))
        return S.thd_insert(conn, **row("y"))

    assert run(db_engine, both).name == "y"
    assert {r.name for r in run(db_engine, S.thd_list_public)} == {"x", "y"}


def test_parallel_inserts_of_one_name_exactly_one_wins(db_engine):
    barrier = threading.Barrier(4)
    outcomes = []

    def upload(owner):
        barrier.wait(10)
        try:
            run(db_engine, S.thd_insert, **row("same.bin", owner=owner))
            outcomes.append("won")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=upload, args=("user%d" % i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert sorted(outcomes) == ["conflict", "conflict", "conflict", "won"]
    assert len(run(db_engine, S.thd_list_public)) == 1


def test_replace_by_owner_swaps_content(db_engine):
    old = run(db_engine, S.thd_insert, **row("doc", size=5, blob="1" * 32, visibility="hidden"))
    new, old_blob = run(
        db_engine,
        S.thd_replace,
        **dict(
            row("DOC", size=7, blob="2" * 32, enc_meta=META, created_ms=1_800_000_000_000),
            visibility=None,
        ),
    )
    assert old_blob == "1" * 32
    assert (new.id, new.name, new.size, new.blob_id, new.visibility) == (
        old.id,
        "DOC",
        7,
        "2" * 32,
        "hidden",
    )
    assert run(db_engine, S.thd_get, "doc") == new
    assert new.enc_meta == META and new.created_ms == 1_800_000_000_000


def test_replace_refuses_someone_elses_file(db_engine):
    run(db_engine, S.thd_insert, **row("doc", owner="alice", blob="1" * 32))
    with pytest.raises(Conflict):
        run(db_engine, S.thd_replace, **row("doc", owner="bob", blob="2" * 32))
    assert run(db_engine, S.thd_get, "doc").blob_id == "1" * 32


def test_replace_of_a_new_name_inserts(db_engine):
    rec, old_blob = run(db_engine, S.thd_replace, **dict(row("fresh"), visibility=None))
    assert old_blob is None and rec.visibility == "public"
    assert run(db_engine, S.thd_get, "fresh") == rec


def test_quota_checked_in_the_transaction(db_engine):
    run(db_engine, S.thd_insert, **row("a", size=60, quota=100))
    with pytest.raises(LimitExceeded) as e:
        run(db_engine, S.thd_insert, **row("b", size=41, quota=100))
    assert e.value.code == 552
    run(db_engine, S.thd_insert, **row("b", size=40, quota=100))
    # a replace frees the old size first
    run(db_engine, S.thd_replace, **row("a", size=60, quota=100))
    with pytest.raises(LimitExceeded):
        run(db_engine, S.thd_replace, **row("a", size=61, quota=100))
    run(db_engine, S.thd_insert, **row("c", owner="bob", size=100, quota=100))


def test_usage(db_engine):
    assert run(db_engine, S.thd_usage, IDS["alice"]) == 0
    run(db_engine, S.thd_insert, **row("big", size=5 * 2**40))
    run(db_engine, S.thd_insert, **row("small", size=3))
    run(db_engine, S.thd_insert, **row("bobs", owner="bob", size=7))
    assert run(db_engine, S.thd_usage, IDS["alice"]) == 5 * 2**40 + 3
    assert run(db_engine, S.thd_usage, IDS["bob"]) == 7


def test_listings(db_engine):
    run(db_engine, S.thd_insert, **row("b", owner="alice"))
    run(db_engine, S.thd_insert, **row("A", owner="bob"))
    run(db_engine, S.thd_insert, **row("c", owner="alice"))
    run(db_engine, S.thd_insert, **row("h1", owner="alice", visibility="hidden"))
    run(db_engine, S.thd_insert, **row("H0", owner="bob", visibility="hidden"))
    assert [r.name for r in run(db_engine, S.thd_list_public)] == ["A", "b", "c"]
    assert [r.name for r in run(db_engine, S.thd_list_public, IDS["alice"])] == ["b", "c"]
    assert [r.name for r in run(db_engine, S.thd_list_public, None, 2)] == ["A", "b"]
    assert [r.name for r in run(db_engine, S.thd_list_hidden)] == ["H0", "h1"]
    assert [r.name for r in run(db_engine, S.thd_list_hidden, IDS["alice"])] == ["h1"]
    assert run(db_engine, S.thd_list_public, IDS["nobody"]) == []


def test_delete(db_engine):
    run(db_engine, S.thd_insert, **row("d", owner="alice", blob="d" * 32))
    with pytest.raises(NotFound) as e:
        run(db_engine, S.thd_delete, "nothing")
    assert e.value.code == 550
    with pytest.raises(PermissionDenied) as e:
        run(db_engine, S.thd_delete, "d", IDS["bob"])
    assert e.value.code == 531
    assert run(db_engine, S.thd_get, "d") is not None
    rec = run(db_engine, S.thd_delete, "d", IDS["alice"])
    assert rec.blob_id == "d" * 32 and run(db_engine, S.thd_get, "d") is None
    run(db_engine, S.thd_insert, **row("e", owner="alice"))
    assert run(db_engine, S.thd_delete, "e", None).name == "e"  # admin


def test_all_blob_ids(db_engine):
    assert run(db_engine, S.thd_all_blob_ids) == set()
    run(db_engine, S.thd_insert, **row("a", blob="a" * 32))
    run(db_engine, S.thd_insert, **row("b", blob="b" * 32))
    assert run(db_engine, S.thd_all_blob_ids) == {"a" * 32, "b" * 32}


def test_migration_matches_the_table(db_engine):
    """The migrations create exactly what the Table object declares."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    def only_files(obj, name, type_, reflected, compare_to):
        table = obj if type_ == "table" else getattr(obj, "table", None)
        return table is not None and table.name == "files"

    with db_engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"include_object": only_files, "compare_type": True}
        )
        diff = compare_metadata(ctx, S.files.metadata)
        columns = {c["name"]: c for c in sa.inspect(conn).get_columns("files")}
        uniques = sa.inspect(conn).get_unique_constraints("files")
        indexes = sa.inspect(conn).get_indexes("files")
    assert diff == []
    assert set(columns) == {c.name for c in S.files.columns}
    assert columns["enc_meta"]["nullable"] and not columns["name_key"]["nullable"]
    assert any(u["column_names"] == ["name_key"] for u in uniques) or any(
        i["column_names"] == ["name_key"] and i["unique"] for i in indexes
    )
    assert any(i["column_names"] == ["owner_id"] for i in indexes)


@pytest_twisted.inlineCallbacks
def test_facade_through_the_pool(db_pool):
    from twisted.internet import reactor

    store = S.FileStore(db_pool)
    rec = yield store.insert(**row("f", size=4)).addTimeout(10, reactor)
    got = yield store.get("f").addTimeout(10, reactor)
    assert got == rec
    usage = yield store.usage(IDS["alice"]).addTimeout(10, reactor)
    assert usage == 4
    new, old = yield store.replace(**row("f", size=5, blob="e" * 32)).addTimeout(10, reactor)
    assert old == rec.blob_id and new.size == 5
    ids = yield store.all_blob_ids().addTimeout(10, reactor)
    assert ids == {"e" * 32}
    listed = yield store.list_public(owner_id=IDS["alice"]).addTimeout(10, reactor)
    assert listed == [new]
    hidden = yield store.list_hidden().addTimeout(10, reactor)
    assert hidden == []
    gone = yield store.delete("f", owner_id=IDS["alice"]).addTimeout(10, reactor)
    assert gone == new
    with pytest.raises(Conflict):
        yield store.insert(**row("g")).addTimeout(10, reactor)
        yield store.insert(**row("G")).addTimeout(10, reactor)
