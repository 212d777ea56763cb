"""
Interrupted resumable uploads: I{partials} (docs/protocol.md section 2.A.3).

An C{UPLOAD ... resume=yes} writes into C{tmp/<id>.part} like any upload,
but beside it, before C{350}, a small JSON I{sidecar} C{tmp/<id>.resume}
says whose upload it is and of what: owner (by account id), name and name
key, declared size, the declared SHA-256 if one was given up front, and a
protected upload's encryption parameters (never a key or a password).
When the connection is cut the content is fsynced and kept; the pair is a
partial until it is resumed to completion (the file is renamed into
C{blobs/}, the sidecar removed), fails (both removed), or expires.

Why on disk and not in a table: the bytes are on disk anyway, and a pair of
files cannot disagree with a row written in another transaction (a crash
between the two leaves at worst a lone file, which the start-up sweep
removes).  Nothing about a partial is shared between processes: one server
owns its data directory.  So the truth is the pair; this process keeps an
index of them in memory (L{PartialIndex}), rebuilt at start-up from the
sidecars (L{scan}), where a partial's length is what its file holds
(L{kept_of}).

A partial is never a file: no row, so never listed, never downloadable,
and its name is still free.  It counts in its owner's quota (the plaintext
bytes it keeps).  The functions here that touch the disk run in the blob
store's worker threads, never on the reactor.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred

from netshare.errors import IntegrityFailure
from netshare.services.files.crypto import (
    HEADER_SIZE,
    TAG_SIZE,
    BlobHeader,
    EncryptionParams,
    chunk_count,
    open_chunk,
)
from netshare.services.files.disk import (
    O_CLOEXEC,
    O_NOFOLLOW,
    fsync_dir,
    reraise_storage,
    write_all,
)
from netshare.services.files.names import check_sha256
from netshare.services.files.upload import ResumePoint

FORMAT = 1
PART = ".part"
SIDECAR = ".resume"
NEW = ".new"  # a sidecar being written (removed by the sweep if a crash leaves it)
READ = 1024 * 1024  # bytes per read when a prefix is hashed again


@dataclass(frozen=True)
class PartialMeta:
    """What a sidecar says: the identity of an interrupted upload."""

    owner_id: int
    owner: str  # the owner's name, for logs
    name: str
    key: str  # the name key (docs/protocol.md section 2.A.1)
    size: int  # declared plaintext size
    sha256: str | None  # declared up front, or None (sha256=trailer)
    enc_meta: dict[str, Any] | None  # a protected upload's parameters
    created_ms: int

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "v": FORMAT,
                "owner_id": self.owner_id,
                "owner": self.owner,
                "name": self.name,
                "key": self.key,
                "size": self.size,
                "sha256": self.sha256,
                "enc": self.enc_meta,
                "created_ms": self.created_ms,
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> PartialMeta:
        """@raise ValueError: not a sidecar of this format."""
        try:
            d = json.loads(data.decode("utf-8"))
            if not isinstance(d, dict) or d.get("v") != FORMAT:
                raise ValueError("unknown sidecar format")
            enc = d["enc"]
            if enc is not None and not isinstance(enc, dict):
                raise ValueError("bad encryption parameters")
            meta = cls(
                int(d["owner_id"]),
                str(d["owner"]),
                str(d["name"]),
                str(d["key"]),
                int(d["size"]),
                check_sha256(d["sha256"]) if d["sha256"] is not None else None,
                enc,
                int(d["created_ms"]),
            )
        except (KeyError, TypeError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError("bad sidecar: %s" % (e,)) from None
        except Exception as e:  # check_sha256's BadArguments
            raise ValueError("bad sidecar: %s" % (e,)) from None
        if meta.size < 0:
            raise ValueError("bad size")
        return meta

    @property
    def protected(self) -> bool:
        return self.enc_meta is not None

    @property
    def chunk_size(self) -> int:
        return int(self.enc_meta["chunk_size"]) if self.enc_meta is not None else 1


def on_disk_of(meta: PartialMeta, kept: int) -> int:
    """The length of a partial's file holding C{kept} plaintext bytes."""
    if meta.enc_meta is None:
        return kept
    chunks = kept // meta.chunk_size
    return HEADER_SIZE + chunks * (meta.chunk_size + TAG_SIZE) if chunks else 0


def kept_of(meta: PartialMeta, on_disk: int) -> int:
    """
    The plaintext bytes a partial's file of C{on_disk} bytes can be trusted
    to keep: everything for plain content (at most the declared size); whole
    sealed chunks only for encrypted content, and never the last chunk (it
    is sealed as last only when the upload completes).  A torn tail (a crash
    mid-write) is cut off when the partial is resumed.
    """
    if meta.enc_meta is None:
        return min(on_disk, meta.size)
    chunk = meta.chunk_size
    if on_disk < HEADER_SIZE or chunk < 1:
        return 0
    chunks = (on_disk - HEADER_SIZE) // (chunk + TAG_SIZE)
    return min(chunks, chunk_count(meta.size, chunk) - 1) * chunk


@dataclass
class Partial:
    """
    One partial, as this process knows it (reactor thread only).

    @ivar kept: plaintext bytes its file keeps (while idle).
    @ivar hasher: the SHA-256 state after exactly C{kept} bytes, when this
        process wrote them (None after a restart: resuming reads them again).
    @ivar last_active: clock seconds of its last byte (expiry counts from it).
    @ivar user: what holds it: None (idle), or the upload continuing it, or
        a claim of an upload being set up.
    """

    blob_id: str
    meta: PartialMeta
    kept: int = 0
    hasher: Any = None
    last_active: float = 0.0
    user: Any = None
    waiters: list[Deferred[None]] = field(default_factory=list)

    @property
    def idle(self) -> bool:
        return self.user is None

    def prefix_sha256(self) -> str | None:
        """The SHA-256 of the kept bytes, if known without reading them."""
        if self.hasher is None or not self.idle:
            return None
        return str(self.hasher.copy().hexdigest())

    def release(self) -> None:
        """No upload holds it any more: wake who waits for it."""
        self.user = None
        waiters, self.waiters = self.waiters, []
        for d in waiters:
            d.callback(None)

    def when_released(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self.idle:
            d.callback(None)
        else:
            self.waiters.append(d)
        return d


class PartialIndex:
    """Every partial of this server, by (owner id, name key): an owner has
    at most one partial per name."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[int, str], Partial] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self):
        return iter(list(self._by_key.values()))

    def get(self, owner_id: int, key: str) -> Partial | None:
        return self._by_key.get((owner_id, key))

    def add(self, p: Partial) -> None:
        self._by_key[(p.meta.owner_id, p.meta.key)] = p

    def remove(self, p: Partial) -> None:
        k = (p.meta.owner_id, p.meta.key)
        if self._by_key.get(k) is p:
            del self._by_key[k]

    def of_owner(self, owner_id: int) -> list[Partial]:
        return [p for p in self._by_key.values() if p.meta.owner_id == owner_id]

    def idle_bytes(self, owner_id: int, except_key: str | None = None) -> int:
        """The bytes the quota counts for C{owner_id}'s idle partials (one
        being continued by an upload is counted by that upload instead)."""
        return sum(
            p.kept
            for p in self._by_key.values()
            if p.meta.owner_id == owner_id and p.idle and p.meta.key != except_key
        )


# -- on disk (worker threads)


def part_path(tmp_dir: str, blob_id: str) -> str:
    return os.path.join(tmp_dir, blob_id + PART)


def sidecar_path(tmp_dir: str, blob_id: str) -> str:
    return os.path.join(tmp_dir, blob_id + SIDECAR)


def create(tmp_dir: str, blob_id: str, meta: PartialMeta, fsync: bool) -> None:
    """
    Make the pair of a new resumable upload: its empty content file, then
    its sidecar (written aside, fsynced, renamed, directory fsynced), so a
    crash leaves either nothing the sweep keeps or a complete pair.
    """
    part = part_path(tmp_dir, blob_id)
    side = sidecar_path(tmp_dir, blob_id)
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
    os.close(fd)
    try:
        fd = os.open(
            side + NEW, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600
        )
        try:
            write_all(fd, meta.to_json())
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(side + NEW, side)
        if fsync:
            fsync_dir(tmp_dir)
    except OSError as e:
        remove(tmp_dir, blob_id)
        reraise_storage(e)  # a full disk is 452
    except BaseException:
        remove(tmp_dir, blob_id)
        raise


def remove(tmp_dir: str, blob_id: str) -> bool:
    """Remove a partial's pair (and a half-written sidecar).
    @return: whether its content file was there."""
    found = False
    for path in (part_path(tmp_dir, blob_id), sidecar_path(tmp_dir, blob_id)):
        try:
            os.unlink(path)
            found = found or path.endswith(PART)
        except FileNotFoundError:
            pass
    try:
        os.unlink(sidecar_path(tmp_dir, blob_id) + NEW)
    except FileNotFoundError:
        pass
    return found


@dataclass(frozen=True)
class Found:
    """A partial found on disk at start-up."""

    blob_id: str
    meta: PartialMeta
    on_disk: int
    mtime: float  # of its content file: its last byte


def read_pair(tmp_dir: str, blob_id: str) -> Found | None:
    """The partial C{blob_id} if its pair is whole and its sidecar valid."""
    try:
        with open(sidecar_path(tmp_dir, blob_id), "rb") as f:
            meta = PartialMeta.from_json(f.read(64 * 1024))
        st = os.lstat(part_path(tmp_dir, blob_id))
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return Found(blob_id, meta, st.st_size, st.st_mtime)


def scan(tmp_dir: str, is_blob_id: Any) -> list[Found]:
    """Every valid partial under C{tmp_dir} (C{is_blob_id} tells a blob id)."""
    found = []
    with os.scandir(tmp_dir) as entries:
        names = [e.name for e in entries]
    for name in names:
        if name.endswith(SIDECAR) and is_blob_id(name[: -len(SIDECAR)]):
            pair = read_pair(tmp_dir, name[: -len(SIDECAR)])
            if pair is not None:
                found.append(pair)
    return found


def prepare(
    path: str,
    meta: PartialMeta,
    kept: int,
    hasher: Any,
    encryption: EncryptionParams | None,
    fsync: bool,
) -> ResumePoint:
    """
    Make a partial's file ready to continue after C{kept} plaintext bytes:
    cut anything beyond them (a torn tail, or bytes the client will send
    again), hash them again unless C{hasher} (the state after exactly
    C{kept} bytes) is given, and fsync, so the offset the upload continues
    from is durable before the client sends a byte.  An encrypted prefix is
    decrypted to be hashed (its chunks are authenticated on the way).
    @raise IntegrityFailure: the file holds less than that, or a chunk
        fails authentication.
    """
    on_disk = on_disk_of(meta, kept)
    try:
        fd = os.open(path, os.O_RDWR | O_NOFOLLOW | O_CLOEXEC)
    except OSError:  # gone, or not a regular file: nothing to continue
        raise IntegrityFailure("the interrupted upload's content is missing") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size < on_disk:
            raise IntegrityFailure("the interrupted upload keeps fewer bytes than that")
        if hasher is not None:
            h = hasher.copy()
        elif encryption is None:
            h = _hash_plain(fd, kept)
        else:
            h = _hash_sealed(fd, meta, kept, encryption)
        if st.st_size != on_disk:
            os.ftruncate(fd, on_disk)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    return ResumePoint(kept, on_disk, h)


def _hash_plain(fd: int, length: int) -> Any:
    h = hashlib.sha256()
    pos = 0
    while pos < length:
        block = os.pread(fd, min(READ, length - pos), pos)
        if not block:
            raise IntegrityFailure("the interrupted upload keeps fewer bytes than that")
        h.update(block)
        pos += len(block)
    return h


def _hash_sealed(fd: int, meta: PartialMeta, kept: int, enc: EncryptionParams) -> Any:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    h = hashlib.sha256()
    header = BlobHeader(enc.chunk_size, meta.size, enc.salt, enc.nonce_prefix)
    header_bytes = header.pack()
    if kept and os.pread(fd, HEADER_SIZE, 0) != header_bytes:
        raise IntegrityFailure("the interrupted upload's header is damaged")
    aead = AESGCM(enc.key)
    for index in range(kept // enc.chunk_size):
        want = enc.chunk_size + TAG_SIZE
        sealed = os.pread(fd, want, header.cipher_offset(index))
        if len(sealed) != want:
            raise IntegrityFailure("the interrupted upload keeps fewer bytes than that")
        h.update(open_chunk(aead, header, header_bytes, index, sealed))
    return h
