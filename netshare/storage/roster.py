"""
The server's own roster: the C{personnel} table, keyed by C{ssn}.

A module of its own because two parts of the personnel service use it: the
roster commands (LIST, GET, ADD, UPDATE, DELETE) through L{PersonnelStore},
and the sync outbox (L{netshare.storage.outbox}), which reads the roster
when it queues a SAVE and carries each person as the JSON this module
encodes (L{save_payloads}).

Salary is stored as text (C{String(32)}), exactly as the client sent it
("52000", "52000.00", "n/a"), and comes back as that same JSON string: the
wire gives us strings, and a numeric column would silently rewrite
"52000.00" as 52000 or fail on a currency suffix.

Everything here runs in a L{netshare.storage.pool.DBPool} worker: the
C{thd_*} functions take a connection inside an open transaction and return
plain data (L{netshare.storage.personnel.PersonnelStore} runs them).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from netshare import wire
from netshare.errors import BadArguments, Conflict, NotFound
from netshare.storage import plainsql
from netshare.storage.schema import TABLE_KW, AnyRow, metadata

#: Default and maximum number of rows of a listing (LIST, MESSAGES).
DEFAULT_LIST_LIMIT = 50
MAX_LIST_LIMIT = 1000

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

#: A person's columns in the order L{save_payloads} takes them.
PERSON_COLUMNS = (
    personnel.c.ssn,
    personnel.c.name,
    personnel.c.surname,
    personnel.c.job,
    personnel.c.salary,
    personnel.c.updated_ms,
)

#: One person as L{PERSON_COLUMNS} reads it: (ssn, name, surname, job,
#: salary, updated_ms).
PersonRow = tuple[str, str, str, str, str, int]


@dataclass(frozen=True)
class Person:
    ssn: str
    name: str
    surname: str
    job: str
    salary: str
    updated_ms: int

    def to_wire(self) -> dict[str, str]:
        """The person object of docs/protocol.md section 4."""
        return {
            "ssn": self.ssn,
            "name": self.name,
            "surname": self.surname,
            "job": self.job,
            "salary": self.salary,
            "updated": wire.iso_ms(self.updated_ms),
        }


def clamp_limit(
    limit: int | str | None, default: int = DEFAULT_LIST_LIMIT, maximum: int = MAX_LIST_LIMIT
) -> int:
    """A listing size between 1 and C{maximum}; C{None} means the default."""
    if limit is None:
        return default
    return max(1, min(int(limit), maximum))


def clamp_offset(offset: int | str | None) -> int:
    return max(0, int(offset or 0))


def person_payload(person: Person) -> str:
    """The JSON pushed with a SAVE message."""
    return wire.dumps(person.to_wire())


#: The JSON string literal of a str, exactly as C{json.dumps(...,
#: ensure_ascii=False)} writes it (the C implementation when available).
_json_string = json.encoder.encode_basestring

_SAVE_TEMPLATE = '{"ssn":%s,"name":%s,"surname":%s,"job":%s,"salary":%s,"updated":%s}'


def save_payloads(rows: Iterable[PersonRow]) -> list[str]:
    """
    The SAVE payloads of C{rows} of C{(ssn, name, surname, job, salary,
    updated_ms)}: the very text L{person_payload} gives (same keys, order,
    escaping, U+2028/U+2029 escaped as in L{wire.dumps}), built with one
    C-level string escape per field instead of a C{json.dumps} of a dict per
    person -- queueing 100 000 persons spends most of its time here.
    """
    enc = _json_string
    isos: dict[int, str] = {}
    out: list[str] = []
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


def _person(row: AnyRow) -> Person:
    return Person(row.ssn, row.name, row.surname, row.job, row.salary, row.updated_ms)


def thd_list_persons(
    conn: Connection,
    text: str | None = None,
    limit: int | str | None = None,
    offset: int | str | None = None,
    search_ssn: bool = True,
) -> list[Person]:
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
        names = (("ssn",) if search_ssn else ()) + ("name", "surname", "job")
        cols = [personnel.c[col] for col in names]
        matches = [sa.func.lower(c).contains(needle, autoescape=True) for c in cols]
        if needle != text:
            matches += [c.contains(text, autoescape=True) for c in cols]
        q = q.where(sa.or_(*matches))
    q = q.limit(clamp_limit(limit)).offset(clamp_offset(offset))
    return [_person(r) for r in conn.execute(q)]


def thd_count_persons(conn: Connection) -> int:
    return conn.execute(sa.select(sa.func.count()).select_from(personnel)).scalar_one()


def thd_get_person(conn: Connection, ssn: str) -> Person:
    row = conn.execute(sa.select(personnel).where(personnel.c.ssn == ssn)).first()
    if row is None:
        raise NotFound("no such person %s" % (ssn,))
    return _person(row)


def thd_person_rows(conn: Connection, ssn: str) -> list[PersonRow]:
    """The person C{ssn} as L{PERSON_COLUMNS} (for L{save_payloads});
    L{NotFound} (550) if there is none."""
    rows = conn.execute(sa.select(*PERSON_COLUMNS).where(personnel.c.ssn == ssn)).all()
    if not rows:
        raise NotFound("no such person %s" % (ssn,))
    return list(rows)


def thd_person_page(conn: Connection, after: str | None, page: int) -> list[PersonRow]:
    """At most C{page} persons as L{PERSON_COLUMNS}, in ssn order, after the
    ssn C{after} (keyset paging: C{WHERE ssn > after}; C{None}: from the
    start)."""
    q = sa.select(*PERSON_COLUMNS).order_by(personnel.c.ssn).limit(page)
    if after is not None:
        q = q.where(personnel.c.ssn > after)
    return list(conn.execute(q).all())


_INSERT_PERSON = ("ssn", "name", "surname", "job", "salary", "updated_ms")


def thd_add_person(conn: Connection, ssn: str, fields: Mapping[str, str], now_ms: int) -> Person:
    """Insert a new person; L{Conflict} (555) if the ssn exists."""
    values: dict[str, str | int] = {"job": "", "salary": ""}
    values.update(_only_person_fields(fields))
    values.update(ssn=ssn, updated_ms=now_ms)
    # One statement: the primary key refuses a second ADD of an ssn (its
    # transaction, or its savepoint in a group commit, is rolled back), and
    # the person is what was inserted.
    try:
        plainsql.run(
            conn,
            plainsql.insert_sql(conn, personnel, _INSERT_PERSON),
            tuple([values.get(c) for c in _INSERT_PERSON]),
        )
    except sa_exc.IntegrityError:
        raise Conflict("person %s already exists" % (ssn,)) from None
    return Person(
        ssn,
        str(values["name"]),
        str(values["surname"]),
        str(values["job"]),
        str(values["salary"]),
        now_ms,
    )


def thd_update_person(
    conn: Connection, ssn: str, fields: Mapping[str, str], now_ms: int
) -> Person:
    """Change some fields of a person; L{NotFound} (550) if there is none."""
    values: dict[str, str | int] = dict(_only_person_fields(fields))
    values["updated_ms"] = now_ms
    result = conn.execute(sa.update(personnel).where(personnel.c.ssn == ssn).values(**values))
    if result.rowcount == 0:
        raise NotFound("no such person %s" % (ssn,))
    return thd_get_person(conn, ssn)


def thd_delete_person(conn: Connection, ssn: str) -> None:
    """Delete from the server's own roster (never queues anything)."""
    result = conn.execute(sa.delete(personnel).where(personnel.c.ssn == ssn))
    if result.rowcount == 0:
        raise NotFound("no such person %s" % (ssn,))


def thd_demo_people(
    conn: Connection,
    people: Iterable[tuple[str, str, str, str, object]],
    now_ms: int | None = None,
) -> int:
    """
    Insert sample persons for C{netshare init --demo}: C{people} is a list of
    C{(ssn, name, surname, job, salary)}; those whose ssn is already there
    are left alone.  @return: how many were added.
    """
    if now_ms is None:
        now_ms = wire.now_ms()
    people = list(people)
    existing = {
        r.ssn
        for r in conn.execute(
            sa.select(personnel.c.ssn).where(personnel.c.ssn.in_([p[0] for p in people]))
        )
    }
    rows = [
        {
            "ssn": ssn,
            "name": name,
            "surname": surname,
            "job": job,
            "salary": str(salary),
            "updated_ms": now_ms,
        }
        for ssn, name, surname, job, salary in people
        if ssn not in existing
    ]
    if rows:
        conn.execute(sa.insert(personnel), rows)
    return len(rows)


def _only_person_fields(fields: Mapping[str, str]) -> dict[str, str]:
    unknown = set(fields) - set(PERSON_FIELDS)
    if unknown:
        raise BadArguments("unknown field %s" % (sorted(unknown)[0],))
    return dict(fields)
