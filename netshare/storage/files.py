"""
The C{files} table: one row per visible file (docs/protocol.md section 2).

A row exists only for content that is complete, verified and durable on
disk (L{netshare.services.files.blobs} writes the blob first); the row points at the blob
by its opaque id.  C{name} is the NFC spelling the owner gave; C{name_key}
(NFC + case folding, computed by L{netshare.services.files.names.name_key}) carries the
unique constraint, so two uploads of "Report.txt" and "REPORT.TXT" cannot
both win, on any of the three databases (the MySQL table uses a binary
collation: uniqueness is decided by our key, not by MySQL's idea of case).

C{enc_meta} holds the JSON of a protected file's encryption parameters
(salt, scrypt parameters, password verifier hash, nonce prefix, chunk size;
never a key or a password); NULL means not protected.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from twisted.internet.defer import Deferred

from netshare.errors import Conflict, LimitExceeded, NotFound, PermissionDenied
from netshare.storage.history import JournalRow, journaled
from netshare.storage.pool import DBPool
from netshare.storage.schema import ID, NEVER_REUSED, TABLE_KW, AnyRow, inserted_id, metadata
from netshare.wire import iso_ms

files = sa.Table(
    "files",
    metadata,
    sa.Column("id", ID, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("name_key", sa.String(255), nullable=False),
    sa.Column("owner", sa.String(32), nullable=False),  # the name shown
    # The owning account: ownership is decided by id, never by name.  NULL
    # only for files migrated from before ids whose owner had no account.
    sa.Column("owner_id", sa.BigInteger, nullable=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("visibility", sa.String(8), nullable=False),
    sa.Column("blob_id", sa.String(32), nullable=False),
    sa.Column("enc_meta", sa.Text, nullable=True),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("name_key", name="uq_files_name_key"),
    sa.Index("ix_files_owner", "owner"),
    sa.Index("ix_files_owner_id", "owner_id"),
    **TABLE_KW,
    **NEVER_REUSED,
)


@dataclass(frozen=True)
class FileRecord:
    """One file's metadata, as plain data."""

    id: int
    name: str
    name_key: str
    owner: str  # the owner's name, as shown
    owner_id: int | None  # the owning account: what ownership is decided by
    size: int
    sha256: str
    visibility: str
    blob_id: str
    enc_meta: dict[str, Any] | None
    created_ms: int

    @property
    def protected(self) -> bool:
        return self.enc_meta is not None

    @property
    def hidden(self) -> bool:
        return self.visibility == "hidden"

    def to_wire(self, reveal_sha256: bool = True) -> dict[str, object]:
        """The file object of docs/protocol.md section 2 (no blob id, no
        encryption details); C{sha256} null unless C{reveal_sha256} (see the
        files service)."""
        return {
            "name": self.name,
            "size": self.size,
            "sha256": self.sha256 if reveal_sha256 else None,
            "owner": self.owner,
            "visibility": self.visibility,
            "protected": self.protected,
            "created": iso_ms(self.created_ms),
        }


def _dump_meta(meta: dict[str, Any] | None) -> str | None:
    return None if meta is None else json.dumps(meta, sort_keys=True, separators=(",", ":"))


def _record(r: AnyRow) -> FileRecord:
    meta = json.loads(r.enc_meta) if r.enc_meta is not None else None
    return FileRecord(
        int(r.id),
        r.name,
        r.name_key,
        r.owner,
        int(r.owner_id) if r.owner_id is not None else None,
        int(r.size),
        r.sha256,
        r.visibility,
        r.blob_id,
        meta,
        int(r.created_ms),
    )


def thd_get(conn: Connection, name_key: str) -> FileRecord | None:
    r = conn.execute(sa.select(files).where(files.c.name_key == name_key)).first()
    return _record(r) if r is not None else None


def thd_list_public(
    conn: Connection, owner_id: int | None = None, limit: int | None = None
) -> list[FileRecord]:
    """Public files (of one owner, or everyone's), by name key."""
    return _list(conn, "public", owner_id, limit)


def thd_list_hidden(
    conn: Connection, owner_id: int | None = None, limit: int | None = None
) -> list[FileRecord]:
    """Hidden files (of one owner, or everyone's: admins), by name key."""
    return _list(conn, "hidden", owner_id, limit)


def _list(
    conn: Connection, visibility: str, owner_id: int | None, limit: int | None
) -> list[FileRecord]:
    q = sa.select(files).where(files.c.visibility == visibility)
    if owner_id is not None:
        q = q.where(files.c.owner_id == owner_id)
    q = q.order_by(files.c.name_key)
    if limit is not None:
        q = q.limit(limit)
    return [_record(r) for r in conn.execute(q)]


def thd_usage(conn: Connection, owner_id: int) -> int:
    """Bytes stored by the account C{owner_id} (the quota measure: plaintext sizes)."""
    total: int = conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(files.c.size), 0)).where(
            files.c.owner_id == owner_id
        )
    ).scalar_one()
    return int(total)


@dataclass(frozen=True)
class Usage:
    """What one account stores: how many files (public, hidden and
    protected alike) and their plaintext bytes."""

    files: int
    bytes: int


def thd_account_usage(conn: Connection, owner_id: int) -> Usage:
    """The account C{owner_id}'s file count and bytes, in one SELECT (so the
    two always describe the same moment)."""
    row = conn.execute(
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(files.c.size), 0))
        .select_from(files)
        .where(files.c.owner_id == owner_id)
    ).one()
    return Usage(int(row[0]), int(row[1]))


def _check_quota(
    conn: Connection,
    owner_id: int,
    size: int,
    quota: int | None,
    freed: int = 0,
    pending: int = 0,
) -> None:
    """Re-check the quota inside the writing transaction (the check before
    C{350} can be raced by a parallel upload of the same user).  C{pending}:
    bytes the account holds outside this table that count too (its
    interrupted uploads, kept on disk by the files service)."""
    if quota is None:
        return
    used = thd_usage(conn, owner_id) - freed + pending
    if used + size > quota:
        raise LimitExceeded("quota exceeded: %d of %d bytes used" % (used, quota))


def thd_insert(
    conn: Connection,
    *,
    name: str,
    name_key: str,
    owner: str,
    owner_id: int,
    size: int,
    sha256: str,
    visibility: str,
    blob_id: str,
    enc_meta: dict[str, Any] | None,
    created_ms: int,
    quota: int | None = None,
    pending: int = 0,
) -> FileRecord:
    """
    Add a new file.  @raise Conflict: (555) the name key exists, including
    when a parallel upload of the same name committed first.
    @raise LimitExceeded: (552) over C{quota} (counting C{pending} bytes
    held elsewhere, see L{_check_quota}).
    """
    _check_quota(conn, owner_id, size, quota, pending=pending)
    values = dict(
        name=name,
        name_key=name_key,
        owner=owner,
        owner_id=owner_id,
        size=size,
        sha256=sha256,
        visibility=visibility,
        blob_id=blob_id,
        enc_meta=_dump_meta(enc_meta),
        created_ms=created_ms,
    )
    try:
        with conn.begin_nested():
            result = conn.execute(files.insert().values(**values))
    except sa_exc.IntegrityError:
        raise Conflict("file exists") from None
    return FileRecord(
        inserted_id(result),
        name,
        name_key,
        owner,
        owner_id,
        size,
        sha256,
        visibility,
        blob_id,
        enc_meta,
        created_ms,
    )


def thd_replace(
    conn: Connection,
    *,
    name: str,
    name_key: str,
    owner: str,
    owner_id: int,
    size: int,
    sha256: str,
    visibility: str | None,
    blob_id: str,
    enc_meta: dict[str, Any] | None,
    created_ms: int,
    quota: int | None = None,
    pending: int = 0,
) -> tuple[FileRecord, str | None]:
    """
    Point an existing file of C{owner} at new content, in one transaction
    (the row is locked, so a parallel replace or delete waits), or insert it
    when there is none (C{replace=yes} on a new name).

    The row takes the new spelling of the name, the new content, protection
    and creation time; C{visibility=None} keeps the old visibility.

    @return: (the new record, the old blob id to delete or None).
    @raise Conflict: (555) the file belongs to someone else.
    """
    old = conn.execute(
        sa.select(files).where(files.c.name_key == name_key).with_for_update()
    ).first()
    if old is None:
        rec = thd_insert(
            conn,
            name=name,
            name_key=name_key,
            owner=owner,
            owner_id=owner_id,
            size=size,
            sha256=sha256,
            visibility=visibility or "public",
            blob_id=blob_id,
            enc_meta=enc_meta,
            created_ms=created_ms,
            quota=quota,
            pending=pending,
        )
        return rec, None
    if old.owner_id != owner_id:
        raise Conflict("file exists and belongs to someone else")
    _check_quota(conn, owner_id, size, quota, freed=int(old.size), pending=pending)
    visibility = visibility or old.visibility
    conn.execute(
        files.update()
        .where(files.c.id == old.id)
        .values(
            name=name,
            size=size,
            sha256=sha256,
            visibility=visibility,
            blob_id=blob_id,
            enc_meta=_dump_meta(enc_meta),
            created_ms=created_ms,
        )
    )
    rec = FileRecord(
        int(old.id),
        name,
        name_key,
        owner,
        owner_id,
        size,
        sha256,
        visibility,
        blob_id,
        enc_meta,
        created_ms,
    )
    return rec, old.blob_id


def thd_delete(conn: Connection, name_key: str, owner_id: int | None = None) -> FileRecord:
    """
    Remove a file's row.  With C{owner_id}, only that account's file (the
    caller passes None for an admin).

    @return: the deleted record (its C{blob_id} is for the caller to unlink).
    @raise NotFound: (550).  @raise PermissionDenied: (531) not the owner.
    """
    r = conn.execute(
        sa.select(files).where(files.c.name_key == name_key).with_for_update()
    ).first()
    if r is None:
        raise NotFound("no such file")
    if owner_id is not None and r.owner_id != owner_id:
        raise PermissionDenied("only the owner or an admin may delete this file")
    conn.execute(files.delete().where(files.c.id == r.id))
    return _record(r)


def thd_names_of_blobs(conn: Connection, blob_ids: Iterable[str]) -> list[str]:
    """The names of the files whose content is one of C{blob_ids}."""
    names: list[str] = []
    ids = list(blob_ids)
    for i in range(0, len(ids), 500):
        names += [
            r.name
            for r in conn.execute(
                sa.select(files.c.name).where(files.c.blob_id.in_(ids[i : i + 500]))
            )
        ]
    return sorted(names)


def thd_all_blob_ids(conn: Connection) -> set[str]:
    """Every blob id a row points at (start-up removes the other blobs)."""
    return {r.blob_id for r in conn.execute(sa.select(files.c.blob_id))}


class FileStore:
    """The C{files} table seen from the reactor thread: every method runs one
    C{thd_*} function in the L{DBPool} and returns a Deferred of plain data."""

    def __init__(self, pool: DBPool):
        self.pool = pool

    def get(self, name_key: str) -> Deferred[FileRecord | None]:
        return self.pool.run(thd_get, name_key)

    def list_public(
        self, owner_id: int | None = None, limit: int | None = None
    ) -> Deferred[list[FileRecord]]:
        return self.pool.run(thd_list_public, owner_id, limit)

    def list_hidden(
        self, owner_id: int | None = None, limit: int | None = None
    ) -> Deferred[list[FileRecord]]:
        return self.pool.run(thd_list_hidden, owner_id, limit)

    def usage(self, owner_id: int) -> Deferred[int]:
        return self.pool.run(thd_usage, owner_id)

    def account_usage(self, owner_id: int) -> Deferred[Usage]:
        """File count and bytes of one account (QUOTA)."""
        return self.pool.run(thd_account_usage, owner_id)

    # Writes (DBPool.write): run twice after a lost COMMIT answer they would
    # answer "file exists" / "no such file" for what they did themselves.

    def insert(self, journal: JournalRow | None = None, **row: Any) -> Deferred[FileRecord]:
        """See L{thd_insert} for the keywords."""
        return self.pool.write(journaled(thd_insert, journal), **row)

    def replace(
        self, journal: JournalRow | None = None, **row: Any
    ) -> Deferred[tuple[FileRecord, str | None]]:
        """(the new record, the old blob id or None); see L{thd_replace}."""
        return self.pool.write(journaled(thd_replace, journal), **row)

    def delete(
        self, name_key: str, owner_id: int | None = None, journal: JournalRow | None = None
    ) -> Deferred[FileRecord]:
        """The deleted row (its blob is the caller's to unlink)."""
        return self.pool.write(journaled(thd_delete, journal), name_key, owner_id)

    def all_blob_ids(self) -> Deferred[set[str]]:
        return self.pool.run(thd_all_blob_ids)

    def names_of_blobs(self, blob_ids: Iterable[str]) -> Deferred[list[str]]:
        return self.pool.run(thd_names_of_blobs, blob_ids)
