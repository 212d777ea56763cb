"""
Storage of the personnel service: the roster, the sync clients and their
outboxes.

Three tables on the shared L{metadata}:

 - C{personnel}: the server's own roster, keyed by C{ssn}.
 - C{sync_clients}: every account that has opened a SYNC stream or has been
   named as a SEND/REMOVE target.  C{next_seq} is the next sequence number
   to hand out for that client and C{acked_seq} the highest one the client
   acknowledged (acknowledgement is cumulative), so the number of pending
   messages is simply C{next_seq - 1 - acked_seq}: no COUNT over the outbox.
 - C{outbox}: one row per queued message, C{(client, seq)} as the key.  The
   payload is the full JSON of the message as it will be pushed, written at
   queueing time, so a message stays self-contained even if the person is
   changed or deleted afterwards.

Salary is stored as text (C{String(32)}), exactly as the client sent it
("52000", "52000.00", "n/a"), and comes back as that same JSON string: the
wire gives us strings, and a numeric column would silently rewrite
"52000.00" as 52000 or fail on a currency suffix.

Everything here runs in a L{netshare.storage.pool.DBPool} worker: the
C{thd_*} functions take a connection inside an open transaction and return
plain data; L{PersonnelStore} is the thin asynchronous facade.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from netshare import wire
from netshare.errors import BadArguments, ClosingConnection, Conflict, NotFound
from netshare.storage.schema import TABLE_KW, accounts, metadata

#: Default and maximum number of rows of a listing (LIST, MESSAGES).
DEFAULT_LIST_LIMIT = 50
MAX_LIST_LIMIT = 1000

#: Outbox rows written per executemany when queueing a batch.
ENQUEUE_CHUNK = 5000

#: Persons read per query when queueing SAVE of everyone: the roster is read
#: in pages (keyset on ssn), so a SEND * * never holds it all in memory.
ENQUEUE_PAGE = 5000

#: Message actions as stored in C{outbox.action} and sent on the wire.
SAVE, DELETE, DELETE_ALL = "SAVE", "DELETE", "DELETE_ALL"

#: The fields of a person an ADD/UPDATE may set (C{ssn} is the key).
PERSON_FIELDS = ("name", "surname", "job", "salary")

personnel = sa.Table(
    "personnel",
    metadata,
    sa.Column("ssn", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("surname", sa.String(255), nullable=False),
    sa.Column("job", sa.String(255), nullable=False, server_default=""),
    sa.Column("salary", sa.String(32), nullable=False, server_default=""),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
    **TABLE_KW,
)

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


# ---------------------------------------------------------------------------
# Plain data handed back to the reactor thread


@dataclass(frozen=True)
class Person:
    ssn: str
    name: str
    surname: str
    job: str
    salary: str
    updated_ms: int

    def to_wire(self) -> dict:
        """The PROTOCOL.md person object."""
        return {"ssn": self.ssn, "name": self.name, "surname": self.surname,
                "job": self.job, "salary": self.salary, "updated": wire.iso_ms(self.updated_ms)}


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

    def to_wire(self) -> dict:
        return {"seq": self.seq, "client": self.client, "action": self.action,
                "ssn": self.ssn, "created": wire.iso_ms(self.created_ms), "acked": self.acked}


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

    def to_wire(self, online: bool) -> dict:
        last = wire.iso_ms(self.last_seen_ms) if self.last_seen_ms is not None else None
        return {"client": self.name, "online": online, "pending": self.pending,
                "acked": self.acked_seq, "last_seen": last}


@dataclass(frozen=True)
class EnqueueResult:
    """What one SEND/REMOVE queued: C{count} messages in total and, per
    client that got any, the inclusive seq range C{(first, last)}."""

    count: int
    ranges: dict[str, tuple[int, int]] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# Helpers


def clamp_limit(limit, default: int = DEFAULT_LIST_LIMIT, maximum: int = MAX_LIST_LIMIT) -> int:
    """A listing size between 1 and C{maximum}; C{None} means the default."""
    if limit is None:
        return default
    return max(1, min(int(limit), maximum))


def clamp_offset(offset) -> int:
    return max(0, int(offset or 0))


def person_payload(person: Person) -> str:
    """The JSON pushed with a SAVE message."""
    return wire.dumps(person.to_wire())


#: The JSON string literal of a str, exactly as C{json.dumps(...,
#: ensure_ascii=False)} writes it (the C implementation when available).
_json_string = json.encoder.encode_basestring

_SAVE_TEMPLATE = '{"ssn":%s,"name":%s,"surname":%s,"job":%s,"salary":%s,"updated":%s}'


def save_payloads(rows) -> list[str]:
    """
    The SAVE payloads of C{rows} of C{(ssn, name, surname, job, salary,
    updated_ms)}: the very text L{person_payload} gives (same keys, order,
    escaping, U+2028/U+2029 escaped as in L{wire.dumps}), built with one
    C-level string escape per field instead of a C{json.dumps} of a dict per
    person -- queueing 100 000 persons spends most of its time here.
    """
    enc = _json_string
    isos = {}
    out = []
    append = out.append
    for ssn, name, surname, job, salary, updated_ms in rows:
        iso = isos.get(updated_ms)
        if iso is None:
            iso = isos[updated_ms] = enc(wire.iso_ms(updated_ms))
        text = _SAVE_TEMPLATE % (enc(ssn), enc(name), enc(surname), enc(job), enc(salary), iso)
        if "\u2028" in text or "\u2029" in text:
            text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
        append(text)
    return out


def _person(row) -> Person:
    return Person(row.ssn, row.name, row.surname, row.job, row.salary, row.updated_ms)


def _client(row) -> ClientInfo:
    return ClientInfo(row.name, row.first_seen_ms, row.last_seen_ms, row.acked_seq, row.next_seq)


def _insert_ignore(conn, table, values: dict):
    """Insert a row unless its primary key exists, without an error that
    would abort the surrounding transaction (PostgreSQL) and without a
    check-then-insert race."""
    dialect = conn.dialect.name
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
        stmt = insert(table).values(**values).on_conflict_do_nothing()
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
        stmt = insert(table).values(**values).on_conflict_do_nothing()
    elif dialect in ("mysql", "mariadb"):
        from sqlalchemy.dialects.mysql import insert
        key = table.primary_key.columns.values()[0]
        stmt = insert(table).values(**values).on_duplicate_key_update({key.name: key})
    else:  # pragma: no cover - other dialects are not supported by the engine
        keys = [c.name for c in table.primary_key.columns]
        where = [table.c[k] == values[k] for k in keys]
        if conn.execute(sa.select(table.c[keys[0]]).where(*where)).first() is not None:
            return
        stmt = sa.insert(table).values(**values)
    conn.execute(stmt)


# ---------------------------------------------------------------------------
# The roster


def thd_list_persons(conn, text: str | None = None, limit=None, offset=None,
                     search_ssn: bool = True) -> list[Person]:
    """
    Persons ordered by ssn; C{text} matches a substring of name, surname,
    job and (with C{search_ssn}) ssn, case-insensitively.

    The needle is bound and C{LIKE}-escaped (C{autoescape}), so C{%}, C{_}
    and the escape character itself match literally.  Case folding is done
    by the database's C{lower()}: full Unicode on PostgreSQL and MariaDB,
    ASCII only on SQLite; the text exactly as typed always matches too, so
    C{Ünïcødé} finds C{Ünïcødé} on SQLite as well.
    """
    q = sa.select(personnel).order_by(personnel.c.ssn)
    if text:
        needle = text.lower()
        cols = [personnel.c[col] for col in (("ssn",) if search_ssn else ()) + ("name", "surname",
                                                                               "job")]
        matches = [sa.func.lower(c).contains(needle, autoescape=True) for c in cols]
        if needle != text:
            matches += [c.contains(text, autoescape=True) for c in cols]
        q = q.where(sa.or_(*matches))
    q = q.limit(clamp_limit(limit)).offset(clamp_offset(offset))
    return [_person(r) for r in conn.execute(q)]


def thd_count_persons(conn) -> int:
    return conn.execute(sa.select(sa.func.count()).select_from(personnel)).scalar_one()


def thd_get_person(conn, ssn: str) -> Person:
    row = conn.execute(sa.select(personnel).where(personnel.c.ssn == ssn)).first()
    if row is None:
        raise NotFound("no such person %s" % (ssn,))
    return _person(row)


def thd_add_person(conn, ssn: str, fields: dict, now_ms: int) -> Person:
    """Insert a new person; L{Conflict} (555) if the ssn exists."""
    values = {"job": "", "salary": ""}
    values.update(_only_person_fields(fields))
    values.update(ssn=ssn, updated_ms=now_ms)
    exists = conn.execute(sa.select(personnel.c.ssn).where(personnel.c.ssn == ssn)).first()
    if exists is not None:
        raise Conflict("person %s already exists" % (ssn,))
    try:
        conn.execute(sa.insert(personnel).values(**values))
    except sa_exc.IntegrityError:
        # Lost a race with a concurrent ADD of the same ssn.
        raise Conflict("person %s already exists" % (ssn,)) from None
    return thd_get_person(conn, ssn)


def thd_update_person(conn, ssn: str, fields: dict, now_ms: int) -> Person:
    """Change some fields of a person; L{NotFound} (550) if there is none."""
    values = _only_person_fields(fields)
    values["updated_ms"] = now_ms
    result = conn.execute(sa.update(personnel).where(personnel.c.ssn == ssn).values(**values))
    if result.rowcount == 0:
        raise NotFound("no such person %s" % (ssn,))
    return thd_get_person(conn, ssn)


def thd_delete_person(conn, ssn: str) -> None:
    """Delete from the server's own roster (never queues anything)."""
    result = conn.execute(sa.delete(personnel).where(personnel.c.ssn == ssn))
    if result.rowcount == 0:
        raise NotFound("no such person %s" % (ssn,))


def thd_demo_people(conn, people, now_ms: int | None = None) -> int:
    """
    Insert sample persons for C{netshare init --demo}: C{people} is a list of
    C{(ssn, name, surname, job, salary)}; those whose ssn is already there
    are left alone.  @return: how many were added.
    """
    if now_ms is None:
        now_ms = wire.now_ms()
    existing = {r.ssn for r in conn.execute(
        sa.select(personnel.c.ssn).where(personnel.c.ssn.in_([p[0] for p in people])))}
    rows = [{"ssn": ssn, "name": name, "surname": surname, "job": job, "salary": str(salary),
             "updated_ms": now_ms}
            for ssn, name, surname, job, salary in people if ssn not in existing]
    if rows:
        conn.execute(sa.insert(personnel), rows)
    return len(rows)


def _only_person_fields(fields: dict) -> dict:
    unknown = set(fields) - set(PERSON_FIELDS)
    if unknown:
        raise BadArguments("unknown field %s" % (sorted(unknown)[0],))
    return dict(fields)


# ---------------------------------------------------------------------------
# Sync clients


def thd_register_client(conn, name: str, now_ms: int, account_id: int | None = None) -> ClientInfo:
    """
    Record that C{name} opened a SYNC stream (creating it if new).

    @param account_id: the id of the account opening it: refused
        (L{ClosingConnection}) unless that account still exists, so a
        connection of a removed account can never attach to the queue of a
        later account with the same name.
    """
    if account_id is not None and conn.execute(
            sa.select(accounts.c.id).where(accounts.c.id == account_id)).first() is None:
        raise ClosingConnection("account removed")
    _insert_ignore(conn, sync_clients, {"name": name, "first_seen_ms": now_ms,
                                        "last_seen_ms": now_ms, "acked_seq": 0, "next_seq": 1})
    conn.execute(sa.update(sync_clients).where(sync_clients.c.name == name)
                 .values(last_seen_ms=now_ms))
    return _client(conn.execute(sa.select(sync_clients).where(sync_clients.c.name == name)).one())


def thd_list_clients(conn) -> list[ClientInfo]:
    return [_client(r) for r in conn.execute(sa.select(sync_clients).order_by(sync_clients.c.name))]


def thd_get_client(conn, name: str) -> ClientInfo | None:
    row = conn.execute(sa.select(sync_clients).where(sync_clients.c.name == name)).first()
    return _client(row) if row is not None else None


def _resolve_target(conn, name: str, now_ms: int) -> str:
    """
    The sync client a SEND/REMOVE names: an existing sync client, or an
    account that has never connected (its row is created now, under the
    account's own spelling of the name, so its first SYNC finds the queue).
    """
    row = conn.execute(sa.select(sync_clients.c.name).where(sync_clients.c.name == name)).first()
    if row is not None:
        return row.name
    account = conn.execute(sa.select(accounts.c.name)
                           .where(accounts.c.name_key == name.lower())).first()
    if account is None:
        raise NotFound("no such client %s" % (name,))
    _insert_ignore(conn, sync_clients, {"name": account.name, "first_seen_ms": now_ms,
                                        "last_seen_ms": None, "acked_seq": 0, "next_seq": 1})
    return account.name


def _lock_clients(conn, names: list[str] | None) -> list[tuple[str, int]]:
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


_PERSON_COLUMNS = (personnel.c.ssn, personnel.c.name, personnel.c.surname, personnel.c.job,
                   personnel.c.salary, personnel.c.updated_ms)


def _message_pages(conn, persons: str, action: str, page: int):
    """
    The (action, ssn, payload) lists each target client gets, a page at a
    time: SAVE of everyone reads the roster in ssn order, C{page} persons per
    query (keyset: C{WHERE ssn > last}), so memory holds one page, not the
    roster.  Anything else is a single page of one message.
    """
    if action == SAVE:
        if persons != "*":
            rows = conn.execute(sa.select(*_PERSON_COLUMNS)
                                .where(personnel.c.ssn == persons)).all()
            if not rows:
                raise NotFound("no such person %s" % (persons,))
            yield [(SAVE, persons, save_payloads(rows)[0])]
            return
        last = None
        while True:
            q = sa.select(*_PERSON_COLUMNS).order_by(personnel.c.ssn).limit(page)
            if last is not None:
                q = q.where(personnel.c.ssn > last)
            rows = conn.execute(q).all()
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


def thd_enqueue(conn, persons: str, clients: str, action: str, now_ms: int,
                chunk: int = ENQUEUE_CHUNK, page: int = ENQUEUE_PAGE) -> EnqueueResult:
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
    insert = _BulkInsert(conn, outbox, ("client", "seq", "action", "ssn", "payload",
                                        "created_ms"))
    n = 0
    for msgs in _message_pages(conn, persons, action, page):
        for name, first in targets:
            base = first + n
            insert.add([(name, base + i, act, ssn, payload, now_ms)
                        for i, (act, ssn, payload) in enumerate(msgs)], chunk)
        n += len(msgs)
    insert.flush()
    if not n:
        return EnqueueResult(0, {})
    ranges = {name: (first, first + n - 1) for name, first in targets}
    conn.execute(sa.update(sync_clients)
                 .where(sync_clients.c.name == sa.bindparam("b_name"))
                 .values(next_seq=sa.bindparam("b_next")),
                 [{"b_name": name, "b_next": last + 1} for name, (_, last) in ranges.items()])
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

    def __init__(self, conn, table, columns):
        self.conn = conn
        compiled = sa.insert(table).values({c: sa.bindparam(c) for c in columns}).compile(
            dialect=conn.dialect)
        self.sql = str(compiled)
        order = compiled.positiontup if compiled.positional else None
        if order is not None and tuple(order) != tuple(columns):
            self.index = [columns.index(c) for c in order]
        else:
            self.index = None
        self.columns = None if compiled.positional else columns
        self.rows = []

    def add(self, rows, chunk):
        self.rows.extend(rows)
        while len(self.rows) >= chunk:
            batch, self.rows = self.rows[:chunk], self.rows[chunk:]
            self._execute(batch)

    def flush(self):
        if self.rows:
            batch, self.rows = self.rows, []
            self._execute(batch)

    def _execute(self, rows):
        if self.columns is not None:
            rows = [dict(zip(self.columns, r)) for r in rows]
        elif self.index is not None:
            rows = [tuple(r[i] for i in self.index) for r in rows]
        self.conn.exec_driver_sql(self.sql, rows)


def thd_pending_page(conn, client: str, after_seq: int, limit: int) -> list[Message]:
    """
    The next page of messages for C{client}: seq above both C{after_seq} and
    the client's acknowledged seq, in seq order, at most C{limit} rows.  The
    sync stream reads one page at a time, so a client with a million queued
    messages never has them all in memory.
    """
    acked = conn.execute(sa.select(sync_clients.c.acked_seq)
                         .where(sync_clients.c.name == client)).scalar()
    start = max(int(after_seq), acked or 0)
    q = (sa.select(outbox.c.client, outbox.c.seq, outbox.c.action, outbox.c.ssn,
                   outbox.c.payload, outbox.c.created_ms)
         .where(outbox.c.client == client, outbox.c.seq > start)
         .order_by(outbox.c.seq).limit(max(1, int(limit))))
    return list(map(Message._make, conn.execute(q)))


def thd_ack(conn, client: str, seq: int) -> int:
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
    conn.execute(sa.update(sync_clients)
                 .where(sync_clients.c.name == client, sync_clients.c.acked_seq < seq)
                 .values(acked_seq=seq))
    return seq


def thd_list_messages(conn, client: str | None = None, limit=None) -> list[MessageInfo]:
    """Outbox rows, newest first, with whether their client acknowledged them."""
    q = (sa.select(outbox.c.seq, outbox.c.client, outbox.c.action, outbox.c.ssn,
                   outbox.c.created_ms, sync_clients.c.acked_seq)
         .select_from(outbox.join(sync_clients, outbox.c.client == sync_clients.c.name)))
    if client is not None:
        q = q.where(outbox.c.client == client).order_by(outbox.c.seq.desc())
    else:
        q = q.order_by(outbox.c.created_ms.desc(), outbox.c.seq.desc(), outbox.c.client)
    q = q.limit(clamp_limit(limit))
    return [MessageInfo(r.seq, r.client, r.action, r.ssn, r.created_ms, r.seq <= r.acked_seq)
            for r in conn.execute(q)]


def thd_prune_acked(conn, before_ms: int) -> int:
    """Delete acknowledged outbox rows created before C{before_ms}; pending
    rows are never touched.  @return: the number of rows deleted."""
    acked = (sa.select(sync_clients.c.acked_seq)
             .where(sync_clients.c.name == outbox.c.client).scalar_subquery())
    result = conn.execute(sa.delete(outbox).where(outbox.c.created_ms < before_ms,
                                                  outbox.c.seq <= acked))
    return result.rowcount


# ---------------------------------------------------------------------------
# The asynchronous facade


class PersonnelStore:
    """
    The personnel tables seen from the reactor thread: every method runs one
    C{thd_*} function in the L{DBPool} and returns a Deferred of plain data.

    Methods that write take C{now_ms} (epoch milliseconds) so the service's
    injected clock, not the worker's wall clock, stamps the rows.
    """

    def __init__(self, pool):
        self.pool = pool

    def list(self, text=None, limit=None, offset=None, search_ssn=True):
        return self.pool.run(thd_list_persons, text, limit, offset, search_ssn)

    def count(self):
        return self.pool.run(thd_count_persons)

    def get(self, ssn):
        return self.pool.run(thd_get_person, ssn)

    # Writes (DBPool.write): run twice after a lost COMMIT answer, an ADD
    # would answer "exists", a DELETE "no such person", a SEND queue twice.

    def add(self, ssn, fields, now_ms, journal=None):
        return self.pool.write(thd_add_person, ssn, fields, now_ms, journal=journal)

    def update(self, ssn, fields, now_ms, journal=None):
        return self.pool.write(thd_update_person, ssn, fields, now_ms, journal=journal)

    def delete(self, ssn, journal=None):
        return self.pool.write(thd_delete_person, ssn, journal=journal)

    def clients(self):
        return self.pool.run(thd_list_clients)

    def messages(self, client=None, limit=None):
        return self.pool.run(thd_list_messages, client, limit)

    def enqueue(self, persons, clients, action, now_ms, journal=None):
        return self.pool.write(thd_enqueue, persons, clients, action, now_ms, journal=journal)

    def register_client(self, name, now_ms, account_id=None):
        return self.pool.run(thd_register_client, name, now_ms, account_id)

    def pending_page(self, client, after_seq, limit):
        return self.pool.run(thd_pending_page, client, after_seq, limit)

    def ack(self, client, seq, journal=None):
        return self.pool.write(thd_ack, client, seq, journal=journal)

    def prune_acked(self, before_ms):
        return self.pool.run(thd_prune_acked, before_ms)
