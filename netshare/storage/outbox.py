"""
The sync outbox: the sync clients and the messages queued for each.

A module of its own, apart from the roster (L{netshare.storage.roster}):
the roster is what the server knows, the outbox is what each sync client
has yet to be told, and the outbox is the part built for volume (a SEND of
every person to every client queues rows by the hundred thousand, and a
sync stream reads them back a page at a time).

Two tables on the shared L{metadata}:

 - C{sync_clients}: every account that has opened a SYNC stream or has been
   named as a SEND/REMOVE target.  C{next_seq} is the next sequence number
   to hand out for that client and C{acked_seq} the highest one the client
   acknowledged (acknowledgement is cumulative), so the number of pending
   messages is simply C{next_seq - 1 - acked_seq}: no COUNT over the outbox.
 - C{outbox}: one row per queued message, C{(client, seq)} as the key.  The
   payload is the full JSON of the message as it will be pushed, written at
   queueing time, so a message stays self-contained even if the person is
   changed or deleted afterwards.

Everything here runs in a L{netshare.storage.pool.DBPool} worker: the
C{thd_*} functions take a connection inside an open transaction and return
plain data (L{netshare.storage.personnel.PersonnelStore} runs them).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.sql.compiler import SQLCompiler

from netshare import wire
from netshare.errors import BadArguments, ClosingConnection, NotFound
from netshare.storage.roster import clamp_limit, save_payloads, thd_person_page, thd_person_rows
from netshare.storage.schema import TABLE_KW, AnyRow, accounts, metadata

#: Outbox rows written per executemany when queueing a batch.
ENQUEUE_CHUNK = 5000

#: Persons read per query when queueing SAVE of everyone: the roster is read
#: in pages (keyset on ssn), so a SEND * * never holds it all in memory.
ENQUEUE_PAGE = 5000

#: Message actions as stored in C{outbox.action} and sent on the wire.
SAVE, DELETE, DELETE_ALL = "SAVE", "DELETE", "DELETE_ALL"

sync_clients = sa.Table(
    "sync_clients",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    # When the row was created: first SYNC or first time named as a target.
    sa.Column("first_seen_ms", sa.BigInteger, nullable=False),
    # Last SYNC; NULL for a client that was targeted but never connected.
    sa.Column("last_seen_ms", sa.BigInteger, nullable=True),
    sa.Column("acked_seq", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("next_seq", sa.BigInteger, nullable=False, server_default="1"),
    **TABLE_KW,
)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("client", sa.String(32), primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("action", sa.String(12), nullable=False),
    sa.Column("ssn", sa.String(32), nullable=True),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    # MESSAGES without a client filter lists newest first.
    sa.Index("ix_outbox_created_ms", "created_ms"),
    **TABLE_KW,
)

#: One message before it is queued: (action, ssn or None, payload).
Draft = tuple[str, str | None, str]


class Message(NamedTuple):
    """One queued message, as the sync stream pushes it.  A named tuple, not
    a dataclass: a sync stream builds one per row it reads (a 100 000-record
    push builds 100 000 of them), and a tuple is several times cheaper."""

    client: str
    seq: int
    action: str
    ssn: str | None
    payload: str
    created_ms: int


@dataclass(frozen=True)
class MessageInfo:
    """One row of the MESSAGES listing."""

    seq: int
    client: str
    action: str
    ssn: str | None
    created_ms: int
    acked: bool

    def to_wire(self) -> dict[str, object]:
        return {
            "seq": self.seq,
            "client": self.client,
            "action": self.action,
            "ssn": self.ssn,
            "created": wire.iso_ms(self.created_ms),
            "acked": self.acked,
        }


@dataclass(frozen=True)
class ClientInfo:
    name: str
    first_seen_ms: int
    last_seen_ms: int | None
    acked_seq: int
    next_seq: int

    @property
    def pending(self) -> int:
        """Queued but not yet acknowledged (seqs have no gaps, acks are
        cumulative)."""
        return self.next_seq - 1 - self.acked_seq

    @property
    def highest_seq(self) -> int:
        return self.next_seq - 1

    def to_wire(self, online: bool) -> dict[str, object]:
        last = wire.iso_ms(self.last_seen_ms) if self.last_seen_ms is not None else None
        return {
            "client": self.name,
            "online": online,
            "pending": self.pending,
            "acked": self.acked_seq,
            "last_seen": last,
        }


@dataclass(frozen=True)
class EnqueueResult:
    """What one SEND/REMOVE queued: C{count} messages in total and, per
    client that got any, the inclusive seq range C{(first, last)}."""

    count: int
    ranges: dict[str, tuple[int, int]] = field(default_factory=dict)


def _client(row: AnyRow) -> ClientInfo:
    return ClientInfo(row.name, row.first_seen_ms, row.last_seen_ms, row.acked_seq, row.next_seq)


def _insert_ignore(conn: Connection, table: sa.Table, values: dict[str, Any]) -> None:
    """Insert a row unless its primary key exists, without an error that
    would abort the surrounding transaction (PostgreSQL) and without a
    check-then-insert race."""
    dialect = conn.dialect.name
    stmt: sa.Executable
    if dialect == "sqlite":
        stmt = sqlite.insert(table).values(**values).on_conflict_do_nothing()
    elif dialect == "postgresql":
        stmt = postgresql.insert(table).values(**values).on_conflict_do_nothing()
    elif dialect in ("mysql", "mariadb"):
        key = list(table.primary_key.columns)[0]
        stmt = mysql.insert(table).values(**values).on_duplicate_key_update({key.name: key})
    else:  # pragma: no cover - other dialects are not supported by the engine
        keys = [c.name for c in table.primary_key.columns]
        where = [table.c[k] == values[k] for k in keys]
        if conn.execute(sa.select(table.c[keys[0]]).where(*where)).first() is not None:
            return
        stmt = sa.insert(table).values(**values)
    conn.execute(stmt)


# ---------------------------------------------------------------------------
# Sync clients


def thd_register_client(
    conn: Connection, name: str, now_ms: int, account_id: int | None = None
) -> ClientInfo:
    """
    Record that C{name} opened a SYNC stream (creating it if new).

    @param account_id: the id of the account opening it: refused
        (L{ClosingConnection}) unless that account still exists, so a
        connection of a removed account can never attach to the queue of a
        later account with the same name.
    """
    if (
        account_id is not None
        and conn.execute(sa.select(accounts.c.id).where(accounts.c.id == account_id)).first()
        is None
    ):
        raise ClosingConnection("account removed")
    _insert_ignore(
        conn,
        sync_clients,
        {
            "name": name,
            "first_seen_ms": now_ms,
            "last_seen_ms": now_ms,
            "acked_seq": 0,
            "next_seq": 1,
        },
    )
    conn.execute(
        sa.update(sync_clients).where(sync_clients.c.name == name).values(last_seen_ms=now_ms)
    )
    return _client(conn.execute(sa.select(sync_clients).where(sync_clients.c.name == name)).one())


def thd_list_clients(conn: Connection) -> list[ClientInfo]:
    q = sa.select(sync_clients).order_by(sync_clients.c.name)
    return [_client(r) for r in conn.execute(q)]


def thd_get_client(conn: Connection, name: str) -> ClientInfo | None:
    row = conn.execute(sa.select(sync_clients).where(sync_clients.c.name == name)).first()
    return _client(row) if row is not None else None


def _resolve_target(conn: Connection, name: str, now_ms: int) -> str:
    """
    The sync client a SEND/REMOVE names: an existing sync client, or an
    account that has never connected (its row is created now, under the
    account's own spelling of the name, so its first SYNC finds the queue).
    """
    row = conn.execute(sa.select(sync_clients.c.name).where(sync_clients.c.name == name)).first()
    if row is not None:
        return str(row.name)
    account = conn.execute(
        sa.select(accounts.c.name).where(accounts.c.name_key == name.lower())
    ).first()
    if account is None:
        raise NotFound("no such client %s" % (name,))
    _insert_ignore(
        conn,
        sync_clients,
        {
            "name": account.name,
            "first_seen_ms": now_ms,
            "last_seen_ms": None,
            "acked_seq": 0,
            "next_seq": 1,
        },
    )
    return str(account.name)


def _lock_clients(conn: Connection, names: list[str] | None) -> list[tuple[str, int]]:
    """
    Read (name, next_seq) of the target clients with their rows locked
    (C{SELECT ... FOR UPDATE} on PostgreSQL/MariaDB; SQLite's single writer
    already serialises), in name order so that two concurrent batches lock
    in the same order and cannot deadlock.  C{None} means every client.
    """
    q = sa.select(sync_clients.c.name, sync_clients.c.next_seq).order_by(sync_clients.c.name)
    if names is not None:
        q = q.where(sync_clients.c.name.in_(names))
    return [(r.name, r.next_seq) for r in conn.execute(q.with_for_update())]


# ---------------------------------------------------------------------------
# Queueing


def _message_pages(
    conn: Connection, persons: str, action: str, page: int
) -> Iterator[list[Draft]]:
    """
    The (action, ssn, payload) lists each target client gets, a page at a
    time: SAVE of everyone reads the roster in ssn order, C{page} persons per
    query, so memory holds one page, not the roster.  Anything else is a
    single page of one message.
    """
    if action == SAVE:
        if persons != "*":
            rows = thd_person_rows(conn, persons)
            yield [(SAVE, persons, save_payloads(rows)[0])]
            return
        last = None
        while True:
            rows = thd_person_page(conn, last, page)
            if not rows:
                return
            yield list(zip(itertools.repeat(SAVE), [r[0] for r in rows], save_payloads(rows)))
            if len(rows) < page:
                return
            last = rows[-1][0]
    elif action == DELETE:
        if persons == "*":
            yield [(DELETE_ALL, None, "{}")]
        else:
            yield [(DELETE, persons, wire.dumps({"ssn": persons}))]
    else:
        raise ValueError("unknown action %r" % (action,))


def thd_enqueue(
    conn: Connection,
    persons: str,
    clients: str,
    action: str,
    now_ms: int,
    chunk: int = ENQUEUE_CHUNK,
    page: int = ENQUEUE_PAGE,
) -> EnqueueResult:
    """
    Queue C{action} (L{SAVE} or L{DELETE}) of one person or C{"*"} (every
    person at this moment; C{DELETE} of C{"*"} is a single L{DELETE_ALL})
    for one client or C{"*"} (every known sync client), in one transaction.

    Seqs are allocated per client under a row lock on its C{sync_clients}
    row, taken first and held to the commit, so they rise without gaps even
    with concurrent batches; C{next_seq} is moved past the batch at the end.
    The roster is read a page (C{page} persons) at a time and each payload
    is encoded once for every client; the outbox rows go in with one
    executemany per C{chunk} rows, through the DB-API directly (the
    statement is compiled once by SQLAlchemy for the dialect): 10 000
    persons for 10 clients is about twenty statements, not 100 000, and no
    per-row work in SQLAlchemy.
    """
    if clients == "*":
        targets = _lock_clients(conn, None)
    else:
        targets = _lock_clients(conn, [_resolve_target(conn, clients, now_ms)])
    if not targets:
        # Nothing to queue, but an unknown single person is still an error.
        for _ in _message_pages(conn, persons, action, 1):
            break
        return EnqueueResult(0, {})
    insert = _BulkInsert(conn, outbox, ("client", "seq", "action", "ssn", "payload", "created_ms"))
    n = 0
    for msgs in _message_pages(conn, persons, action, page):
        for name, first in targets:
            base = first + n
            insert.add(
                [
                    (name, base + i, act, ssn, payload, now_ms)
                    for i, (act, ssn, payload) in enumerate(msgs)
                ],
                chunk,
            )
        n += len(msgs)
    insert.flush()
    if not n:
        return EnqueueResult(0, {})
    ranges = {name: (first, first + n - 1) for name, first in targets}
    conn.execute(
        sa.update(sync_clients)
        .where(sync_clients.c.name == sa.bindparam("b_name"))
        .values(next_seq=sa.bindparam("b_next")),
        [{"b_name": name, "b_next": last + 1} for name, (_, last) in ranges.items()],
    )
    return EnqueueResult(n * len(ranges), ranges)


class _BulkInsert:
    """
    C{INSERT INTO table (columns) VALUES (...)} with many rows per
    C{cursor.executemany}: the statement is compiled by SQLAlchemy for the
    connection's dialect (table and column quoting, the DB-API's parameter
    style), the rows are handed to the driver as they are.  Core's own
    executemany builds a parameter dict per row, which costs as much as the
    database's insert itself here.
    """

    def __init__(self, conn: Connection, table: sa.Table, columns: Sequence[str]):
        self.conn = conn
        compiled = (
            sa.insert(table)
            .values({c: sa.bindparam(c) for c in columns})
            .compile(dialect=conn.dialect)
        )
        assert isinstance(compiled, SQLCompiler)
        self.sql = str(compiled)
        order = compiled.positiontup if compiled.positional else None
        #: Where each of the statement's parameters is in a row, when the
        #: dialect orders them otherwise (positional styles).
        self.index: list[int] | None = None
        if order is not None and tuple(order) != tuple(columns):
            self.index = [list(columns).index(c) for c in order]
        #: The parameter names, for the named styles (a dict per row).
        self.columns: Sequence[str] | None = None if compiled.positional else columns
        self.rows: list[tuple[Any, ...]] = []

    def add(self, rows: list[tuple[Any, ...]], chunk: int) -> None:
        self.rows.extend(rows)
        while len(self.rows) >= chunk:
            batch, self.rows = self.rows[:chunk], self.rows[chunk:]
            self._execute(batch)

    def flush(self) -> None:
        if self.rows:
            batch, self.rows = self.rows, []
            self._execute(batch)

    def _execute(self, rows: list[tuple[Any, ...]]) -> None:
        params: list[tuple[Any, ...]] | list[dict[str, Any]] = rows
        if self.columns is not None:
            columns = self.columns
            params = [dict(zip(columns, r, strict=True)) for r in rows]
        elif self.index is not None:
            index = self.index
            params = [tuple(r[i] for i in index) for r in rows]
        self.conn.exec_driver_sql(self.sql, params)


# ---------------------------------------------------------------------------
# The sync stream and the operator's views


def thd_pending_page(conn: Connection, client: str, after_seq: int, limit: int) -> list[Message]:
    """
    The next page of messages for C{client}: seq above both C{after_seq} and
    the client's acknowledged seq, in seq order, at most C{limit} rows.  The
    sync stream reads one page at a time, so a client with a million queued
    messages never has them all in memory.
    """
    acked = conn.execute(
        sa.select(sync_clients.c.acked_seq).where(sync_clients.c.name == client)
    ).scalar()
    start = max(int(after_seq), acked or 0)
    q = (
        sa.select(
            outbox.c.client,
            outbox.c.seq,
            outbox.c.action,
            outbox.c.ssn,
            outbox.c.payload,
            outbox.c.created_ms,
        )
        .where(outbox.c.client == client, outbox.c.seq > start)
        .order_by(outbox.c.seq)
        .limit(max(1, int(limit)))
    )
    return list(map(Message._make, conn.execute(q)))


def thd_ack(conn: Connection, client: str, seq: int) -> int:
    """
    Acknowledge every message of C{client} up to C{seq} (cumulative).

    A seq below the current acknowledgement changes nothing (acks can arrive
    late or twice); a seq that was never queued is L{BadArguments}, because a
    client claiming it applied messages that do not exist is confused and
    must not silently hide later messages.

    @return: the client's acknowledged seq after this call.
    """
    info = thd_get_client(conn, client)
    if info is None:
        raise NotFound("no such client %s" % (client,))
    if seq > info.highest_seq:
        raise BadArguments("seq %d was never queued (highest is %d)" % (seq, info.highest_seq))
    if seq <= info.acked_seq:
        return info.acked_seq
    # The WHERE keeps a concurrent larger ack from being moved backwards.
    conn.execute(
        sa.update(sync_clients)
        .where(sync_clients.c.name == client, sync_clients.c.acked_seq < seq)
        .values(acked_seq=seq)
    )
    return seq


def thd_list_messages(
    conn: Connection, client: str | None = None, limit: int | str | None = None
) -> list[MessageInfo]:
    """Outbox rows, newest first, with whether their client acknowledged them."""
    q = sa.select(
        outbox.c.seq,
        outbox.c.client,
        outbox.c.action,
        outbox.c.ssn,
        outbox.c.created_ms,
        sync_clients.c.acked_seq,
    ).select_from(outbox.join(sync_clients, outbox.c.client == sync_clients.c.name))
    if client is not None:
        q = q.where(outbox.c.client == client).order_by(outbox.c.seq.desc())
    else:
        q = q.order_by(outbox.c.created_ms.desc(), outbox.c.seq.desc(), outbox.c.client)
    q = q.limit(clamp_limit(limit))
    return [
        MessageInfo(r.seq, r.client, r.action, r.ssn, r.created_ms, r.seq <= r.acked_seq)
        for r in conn.execute(q)
    ]


def thd_prune_acked(conn: Connection, before_ms: int) -> int:
    """Delete acknowledged outbox rows created before C{before_ms}; pending
    rows are never touched.  @return: the number of rows deleted."""
    acked = (
        sa.select(sync_clients.c.acked_seq)
        .where(sync_clients.c.name == outbox.c.client)
        .scalar_subquery()
    )
    result = conn.execute(
        sa.delete(outbox).where(outbox.c.created_ms < before_ms, outbox.c.seq <= acked)
    )
    return result.rowcount
