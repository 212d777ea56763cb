"""
What one statement and one acknowledged write cost in the database thread,
three ways side by side (issue 14: why netshare.storage.plainsql runs the
per-command statements on the DB-API cursor).

  core      Connection.exec_driver_sql (SQLAlchemy's execution context,
            result set-up and events around the driver's execute)
  plainsql  netshare.storage.plainsql.run (the driver's cursor inside the
            same SQLAlchemy transaction, errors wrapped as SQLAlchemy does)
  kept      (per write only) as plainsql, on one connection kept between
            transactions, as each DBPool worker keeps one: no pool checkout,
            return and reset per transaction
  dbapi     the driver alone (sqlite3), no SQLAlchemy at all

Per statement: one history-row INSERT, N times in one transaction.  Per
write: one ttweet batch of one tweet with its history row in its own
transaction (BEGIN IMMEDIATE ... COMMIT), as the ttweet hub stores an
acknowledged tweet on an idle server, through the project's engine (its
BEGIN hook, which runs on the cursor in every column) and store function,
each transaction with engine.begin() (a pool checkout) except `kept`;
`dbapi` runs the same SQL on a bare sqlite3 connection.  SQLite in a scratch dir under --dir, with
synchronous=OFF (CPU only) and FULL (the default: one fsync a commit).
Prints microseconds per statement / per write, the median of --reps.

  .venv/bin/python bench/db_floor.py
  .venv/bin/python bench/db_floor.py --statements 20000 --writes 3000 --reps 5
"""

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netshare.storage import history as H  # noqa: E402
from netshare.storage import plainsql  # noqa: E402
from netshare.storage import tweets as T  # noqa: E402
from netshare.storage.engine import create_engine  # noqa: E402
from netshare.storage.migrate import upgrade  # noqa: E402
from netshare.storage.schema import history  # noqa: E402


def history_row(i):
    return H.journal_row(i, i, "ttweet", "u%d" % (i % 7), "127.0.0.1:40000", 'TWEET "x"', 200, 1)


def history_tuple(i):
    row = history_row(i)
    return tuple(row[c] for c in H._COLUMNS)


def per_statement(engine, n, way):
    """Microseconds per history-row INSERT, n of them in one transaction."""
    with engine.begin() as conn:
        sql = plainsql.insert_sql(conn, history, H._COLUMNS)
        rows = [history_tuple(i) for i in range(n)]
        raw = conn.connection.dbapi_connection
        start = time.perf_counter()
        if way == "core":
            for r in rows:
                conn.exec_driver_sql(sql, r)
        elif way == "plainsql":
            for r in rows:
                plainsql.run(conn, sql, r)
        else:
            for r in rows:
                raw.execute(sql, r)
        return (time.perf_counter() - start) / n * 1e6


def per_write(engine, path, n, way, first_id):
    """Microseconds per one-tweet transaction (the idle server's TWEET)."""

    def batch(i):
        tweet = {"id": i, "user": "u", "message": "x" * 100, "hashtags": "", "ts_ms": i}
        return [tweet], [], [(i, history_row(i))]

    if way == "dbapi":
        con = sqlite3.connect(path, isolation_level=None)
        con.execute("PRAGMA synchronous=%s" % engine.sync)
        cols = ", ".join(H._COLUMNS)
        marks = ", ".join("?" * len(H._COLUMNS))
        start = time.perf_counter()
        for i in range(first_id, first_id + n):
            con.execute("BEGIN IMMEDIATE")
            con.execute("SELECT id FROM tweets WHERE id IN (?)", (i,)).fetchall()
            con.execute(
                "INSERT INTO tweets (id, user, message, hashtags, ts_ms) VALUES (?, ?, ?, ?, ?)",
                (i, "u", "x" * 100, "", i),
            )
            con.execute("INSERT INTO history (%s) VALUES (%s)" % (cols, marks), history_tuple(i))
            con.execute("COMMIT")
        elapsed = time.perf_counter() - start
        con.close()
        return elapsed / n * 1e6
    save = T.thd_save_batch
    if way == "core":
        save = core_save_batch
    if way == "kept":
        with engine.connect() as conn:
            start = time.perf_counter()
            for i in range(first_id, first_id + n):
                with conn.begin():
                    save(conn, *batch(i))
            return (time.perf_counter() - start) / n * 1e6
    start = time.perf_counter()
    for i in range(first_id, first_id + n):
        with engine.begin() as conn:
            save(conn, *batch(i))
    return (time.perf_counter() - start) / n * 1e6


def core_save_batch(conn, tweet_rows, entries, journals):
    """thd_save_batch's statements through exec_driver_sql (the old way)."""
    (t,) = tweet_rows
    conn.exec_driver_sql("SELECT id FROM tweets WHERE id IN (?)", (t["id"],)).all()
    conn.exec_driver_sql(
        "INSERT INTO tweets (id, user, message, hashtags, ts_ms) VALUES (?, ?, ?, ?, ?)",
        (t["id"], t["user"], t["message"], t["hashtags"], t["ts_ms"]),
    )
    (_, row) = journals[0]
    conn.exec_driver_sql(
        plainsql.insert_sql(conn, history, H._COLUMNS), tuple(row[c] for c in H._COLUMNS)
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--statements", type=int, default=10000)
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--dir", default=None, help="scratch dir (a real disk for FULL)")
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="db_floor.", dir=args.dir)
    ways = ("core", "plainsql", "dbapi")
    try:
        print("# per statement (history-row INSERT), microseconds, median of %d" % args.reps)
        for sync in ("OFF", "FULL"):
            path = os.path.join(scratch, "s-%s.db" % sync)
            engine = create_engine("sqlite:///" + path, sqlite_synchronous=sync)
            upgrade(engine)
            engine.sync = sync
            figures = {
                w: statistics.median(
                    per_statement(engine, args.statements, w) for _ in range(args.reps)
                )
                for w in ways
            }
            print(
                "synchronous=%-4s  " % sync
                + "  ".join("%s %.1f us" % (w, figures[w]) for w in ways)
            )
            engine.dispose()
        print("# per write (one tweet + its history row, own transaction), microseconds")
        for sync in ("OFF", "FULL"):
            path = os.path.join(scratch, "w-%s.db" % sync)
            engine = create_engine("sqlite:///" + path, sqlite_synchronous=sync)
            upgrade(engine)
            engine.sync = sync
            next_id = 1
            per_write(engine, path, 200, "plainsql", next_id)  # warm-up
            next_id += 200
            figures = {}
            for w in ways[:2] + ("kept",) + ways[2:]:
                runs = []
                for _ in range(args.reps):
                    runs.append(per_write(engine, path, args.writes, w, next_id))
                    next_id += args.writes
                figures[w] = statistics.median(runs)
            print(
                "synchronous=%-4s  " % sync
                + "  ".join("%s %.0f us" % (w, v) for w, v in figures.items())
            )
            engine.dispose()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
