"""
The sync client's local SQLite copy: idempotent, atomic batches.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from netshare.clients.syncdb import LocalStore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def save(seq, ssn, name="N", **extra):
    person = {
        "ssn": ssn,
        "name": name,
        "surname": "S",
        "job": "",
        "salary": "",
        "updated": "2026-01-01T00:00:00.000Z",
    }
    person.update(extra)
    return (seq, "SAVE", json.dumps(person))


@pytest.fixture
def store(tmp_path):
    store = LocalStore(str(tmp_path / "local.db"))
    yield store
    store.close()


def test_fresh_store(store):
    assert store.last_seq() == 0 and store.snapshot() == [] and store.count() == 0
    mode = store._db.execute("PRAGMA journal_mode").fetchone()[0]
    sync = store._db.execute("PRAGMA synchronous").fetchone()[0]
    assert (mode, sync) == ("wal", 2)  # 2 = FULL


def test_apply_and_snapshot(store):
    assert (
        store.apply_batch(
            [save(1, "b", salary="52000.00"), save(2, "a"), save(3, "b", name="Bea")]
        )
        == 3
    )
    assert store.last_seq() == 3
    assert store.snapshot() == [
        {
            "ssn": "a",
            "name": "N",
            "surname": "S",
            "job": "",
            "salary": "",
            "updated": "2026-01-01T00:00:00.000Z",
        },
        # A SAVE carries the whole person: the later one replaces every field.
        {
            "ssn": "b",
            "name": "Bea",
            "surname": "S",
            "job": "",
            "salary": "",
            "updated": "2026-01-01T00:00:00.000Z",
        },
    ]


def test_applying_twice_changes_nothing(store):
    batch = [save(1, "a"), save(2, "b"), (3, "DELETE", '{"ssn":"a"}')]
    assert store.apply_batch(batch) == 3
    before = store.snapshot()
    assert [p["ssn"] for p in before] == ["b"]
    # Redelivered (e.g. not acknowledged before a reconnect): all skipped, so
    # the SAVE of "a" does not resurrect the deleted person.
    assert store.apply_batch(batch) == 0
    assert store.snapshot() == before and store.last_seq() == 3
    # A partly redelivered batch applies only the new tail.
    assert store.apply_batch([save(2, "b", name="stale"), save(3, "a"), save(4, "c")]) == 1
    assert [p["ssn"] for p in store.snapshot()] == ["b", "c"]
    assert store.snapshot()[0]["name"] == "N" and store.last_seq() == 4


def test_delete_unknown_and_delete_all_in_order(store):
    assert store.apply_batch([(1, "DELETE", {"ssn": "ghost"})]) == 1
    assert (
        store.apply_batch(
            [
                save(2, "a"),
                save(3, "b"),
                (4, "DELETE_ALL", "{}"),
                save(5, "c"),
                (6, "DELETE", {"ssn": "c"}),
                save(7, "d"),
            ]
        )
        == 6
    )
    assert [p["ssn"] for p in store.snapshot()] == ["d"] and store.last_seq() == 7
    assert store.apply_batch([]) == 0 and store.last_seq() == 7


def test_malformed_message_rolls_back_the_whole_batch(store):
    store.apply_batch([save(1, "a")])
    for bad in [
        (3, "SAVE", '{"ssn":"x"}'),
        (3, "DELETE", "{}"),
        (3, "RENAME", "{}"),
        (3, "SAVE", "not json"),
        (3, "SAVE", "[1]"),
    ]:
        with pytest.raises(ValueError):
            store.apply_batch([save(2, "b"), bad, save(4, "c")])
        assert [p["ssn"] for p in store.snapshot()] == ["a"] and store.last_seq() == 1


def test_large_batches_match_one_statement_per_message(store, tmp_path):
    """Runs longer than UPSERT_ROWS go in multi-row statements: the result
    is the one of applying each message alone, in order -- repeated ssns
    inside a statement and across statements, DELETE and DELETE_ALL in
    between included."""
    import random

    from netshare.clients import syncdb

    rng = random.Random(7)
    batch, seq = [], 0
    for _run in range(12):
        kind = rng.choice(["SAVE", "SAVE", "SAVE", "DELETE", "DELETE_ALL"])
        for _ in range(
            rng.choice(
                [1, 5, syncdb.UPSERT_ROWS - 1, syncdb.UPSERT_ROWS, syncdb.UPSERT_ROWS * 2 + 3]
            )
        ):
            seq += 1
            ssn = "p%d" % rng.randrange(150)
            if kind == "SAVE":
                batch.append(save(seq, ssn, name="v%d" % seq))
            elif kind == "DELETE":
                batch.append((seq, "DELETE", json.dumps({"ssn": ssn})))
            else:
                batch.append((seq, "DELETE_ALL", "{}"))
                break
    for _ in range(syncdb.UPSERT_ROWS + 7):  # end with people left
        seq += 1
        batch.append(save(seq, "p%d" % rng.randrange(150), name="v%d" % seq))
    assert sum(1 for m in batch if m[1] == "SAVE") > 3 * syncdb.UPSERT_ROWS
    assert store.apply_batch(batch) == len(batch)
    one_by_one = LocalStore(str(tmp_path / "reference.db"))
    try:
        for message in batch:
            assert one_by_one.apply_batch([message]) == 1
        assert store.snapshot() == one_by_one.snapshot() and store.snapshot()
        assert store.last_seq() == one_by_one.last_seq() == seq
    finally:
        one_by_one.close()


def test_payload_text_is_decoded_like_json_loads(store):
    # Surrounding whitespace is fine (as for json.loads); anything after the
    # object is not, and rolls the batch back.
    assert store.apply_batch([(1, "SAVE", ' {"ssn":"a","name":"N","surname":"S"}\n')]) == 1
    assert store.apply_batch([(2, "DELETE", b'{"ssn":"a"}')]) == 1
    for bad in ('{"ssn":"b","name":"N","surname":"S"} x', '{"ssn":"b"}{"ssn":"c"}', ""):
        with pytest.raises(ValueError):
            store.apply_batch([save(3, "z"), (4, "SAVE", bad)])
    assert store.snapshot() == [] and store.last_seq() == 2


def test_exception_mid_batch_applies_nothing(store):
    store.apply_batch([save(1, "a")])

    def messages():
        # Statements for these have been executed when the failure hits.
        yield save(2, "b")
        yield save(3, "c")
        yield (4, "DELETE", {"ssn": "a"})
        yield (5, "DELETE_ALL", {})
        raise RuntimeError("connection lost mid-batch")

    with pytest.raises(RuntimeError):
        store.apply_batch(messages())
    assert [p["ssn"] for p in store.snapshot()] == ["a"] and store.last_seq() == 1
    assert store.apply_batch([save(2, "b")]) == 1  # and the store still works


def test_survives_reopen(tmp_path):
    path = str(tmp_path / "local.db")
    store = LocalStore(path)
    store.apply_batch([save(1, "a"), save(2, "b")])
    store.close()
    store = LocalStore(path)
    try:
        assert store.last_seq() == 2 and store.count() == 2
    finally:
        store.close()


_CRASH_CHILD = r"""
import json, sys
from netshare.clients.syncdb import LocalStore
store = LocalStore(sys.argv[1])
seq = store.last_seq()
print("ready", flush=True)
while True:
    # Each batch overlaps the previous one by 100 messages (a redelivery).
    start = max(1, seq - 100)
    batch = [(s, "SAVE", json.dumps({"ssn": "p%08d" % s, "name": "N", "surname": "S"}))
             for s in range(start, seq + 5000)]
    store.apply_batch(batch)
    seq = seq + 4999
"""


def test_kill_9_mid_batch_loses_nothing_applies_nothing_twice(tmp_path):
    path = str(tmp_path / "crash.db")
    env = dict(os.environ, PYTHONPATH=ROOT)
    for round_ in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", _CRASH_CHILD, path],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout.readline().strip() == "ready"
            time.sleep(0.3 + 0.2 * round_)
            assert child.poll() is None, child.stderr.read()
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(10)
            child.stdout.close()
            child.stderr.close()
        store = LocalStore(path)
        try:
            last = store.last_seq()
            people = store.snapshot()
            # Every message up to last_seq is there, none beyond it.
            assert last > 0 and len(people) == last
            assert people[-1]["ssn"] == "p%08d" % last
            assert store._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            store.close()


def test_apply_rate_100k(store):
    """The sync client aims at >= 100k rows/s (bench/README.md); printed, not asserted
    (the machine is shared and noisy)."""
    n = 100_000
    batch = [
        save(i + 1, "p%06d" % i, name="Name %d" % i, job="clerk", salary=str(i)) for i in range(n)
    ]
    started = time.perf_counter()
    assert store.apply_batch(batch) == n
    elapsed = time.perf_counter() - started
    print("\nsyncdb: applied %d SAVE messages in %.3f s = %.0f rows/s" % (n, elapsed, n / elapsed))
    started = time.perf_counter()
    assert store.apply_batch([(s + n, a, p) for s, a, p in batch]) == n  # all updates
    elapsed = time.perf_counter() - started
    print("syncdb: re-applied %d as upserts in %.3f s = %.0f rows/s" % (n, elapsed, n / elapsed))
    assert store.count() == n and store.last_seq() == 2 * n
