"""
The files service: it decides every LIST/INFO/CHECKSUM/UPLOAD/DOWNLOAD/DELETE
and QUOTA (docs/protocol.md sections 2 and 2.A).  No SQL here (the metadata
rows live behind an injected L{FileStore}) and no wire format (the protocol
in C{netshare.protocols.files} parses commands and formats replies).
Content goes through the L{netshare.services.files.blobs.BlobStore};
interrupted resumable uploads are kept as partials
(L{netshare.services.files.partials}), indexed here.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet import task
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from netshare.deferreds import deferred
from netshare.errors import (
    BadArguments,
    BadCredentials,
    Conflict,
    IntegrityFailure,
    LimitExceeded,
    LoginRequired,
    NotFound,
    OutcomeUnknown,
)
from netshare.kdf import KDFPool
from netshare.services.accounts import Caller
from netshare.services.clock import default_clock
from netshare.services.files.blobs import BlobStore
from netshare.services.files.crypto import (
    FILE_SCRYPT,
    EncryptionParams,
    encrypted_size,
    params_from_meta,
    prepare_encryption,
    unlock,
)
from netshare.services.files.download import BlobReader
from netshare.services.files.lockout import PasswordLockout
from netshare.services.files.names import (
    VISIBILITIES,
    check_file_password,
    check_sha256,
    name_key,
    normalize_name,
)
from netshare.services.files.partials import Partial, PartialIndex, PartialMeta, kept_of
from netshare.services.files.upload import Suspended, UploadSink
from netshare.storage.accounts import Account
from netshare.storage.files import FileRecord, Usage
from netshare.storage.history import JournalRow
from netshare.throttle import Penalties
from netshare.wire import iso_ms

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


class FileStore(Protocol):
    """The store calls the service makes (L{netshare.storage.files.FileStore})."""

    def get(self, name_key: str, /) -> Deferred[FileRecord | None]: ...

    def list_public(
        self, *, owner_id: int | None = ...
    ) -> Deferred[builtins.list[FileRecord]]: ...

    def list_hidden(
        self, *, owner_id: int | None = ...
    ) -> Deferred[builtins.list[FileRecord]]: ...

    def usage(self, owner_id: int, /) -> Deferred[int]: ...

    def account_usage(self, owner_id: int, /) -> Deferred[Usage]: ...

    def insert(self, journal: JournalRow | None = ..., **row: Any) -> Deferred[FileRecord]: ...

    def replace(
        self, journal: JournalRow | None = ..., **row: Any
    ) -> Deferred[tuple[FileRecord, str | None]]: ...

    def delete(
        self, name_key: str, /, *, owner_id: int | None, journal: JournalRow | None
    ) -> Deferred[FileRecord]: ...

    def all_blob_ids(self) -> Deferred[set[str]]: ...

    def names_of_blobs(self, blob_ids: Iterable[str], /) -> Deferred[builtins.list[str]]: ...


@dataclass
class PendingUpload:
    """
    An accepted UPLOAD, between C{350} and C{226}.

    The protocol sends C{350 send <raw_size> bytes}, registers its producer
    on C{sink}, writes the body into it, then calls L{complete} (after
    exactly C{raw_size} bytes) or L{abort} (connection lost: a resumable
    upload is then kept as a partial).
    """

    service: FilesService
    sink: UploadSink
    name: str
    key: str
    owner: Account  # the uploader
    size: int
    visibility: str | None
    replace: bool
    offset: int = 0  # where the content continues (a resumed upload)
    partial: Partial | None = None  # a resumable upload's partial

    @property
    def raw_size(self) -> int:
        """The raw bytes the client sends: the content from C{offset}, then
        the trailer if any."""
        return self.sink.size + self.sink.trailer_size

    def complete(self, journal: JournalRow | None = None) -> Deferred[FileRecord]:
        """@return: Deferred[FileRecord] once durable and recorded (226).
        C{journal}: the UPLOAD's history row, written with the file's row."""
        return self.service.complete_upload(self, journal)

    def abort(self) -> Deferred[None]:
        return self.sink.abort()


@dataclass
class PreparedDownload:
    """
    An accepted DOWNLOAD: send C{150 <remaining> bytes sha256=<sha256>},
    then C{reader.beginFileTransfer(transport)}, then C{226 transfer
    complete}.  If the transfer will not start, call C{reader.close()}.
    """

    record: FileRecord
    reader: BlobReader

    @property
    def remaining(self) -> int:
        return self.reader.remaining

    @property
    def sha256(self) -> str:
        return self.record.sha256


@dataclass(frozen=True)
class FileView:
    """A file as one caller may see it: C{sha256} is None for a protected
    file unless the caller owns it, is an admin or gave its password."""

    record: FileRecord
    reveal_sha256: bool

    @property
    def sha256(self) -> str | None:
        return self.record.sha256 if self.reveal_sha256 else None

    def to_wire(self) -> dict[str, object]:
        return self.record.to_wire(reveal_sha256=self.reveal_sha256)


@dataclass(frozen=True)
class QuotaView:
    """QUOTA's answer: what the caller stores and the limits that apply to
    them.  C{quota} is None when there is no per-account quota
    (C{--user-quota 0}).  Interrupted uploads kept to be resumed count
    (C{partials}, C{partial_bytes}: the bytes they keep), so C{bytes} is
    their bytes plus the files'."""

    usage: Usage
    quota: int | None
    max_file_size: int
    partials: int = 0
    partial_bytes: int = 0

    def to_wire(self) -> dict[str, object]:
        """The object of C{200 {...}} (docs/protocol.md section 2)."""
        return {
            "files": self.usage.files,
            "bytes": self.usage.bytes + self.partial_bytes,
            "quota": self.quota,
            "max_file_size": self.max_file_size,
            "partials": self.partials,
            "partial_bytes": self.partial_bytes,
        }


@dataclass(frozen=True)
class PartialView:
    """
    PARTIAL's answer: how much of an upload of C{name} with C{size} bytes
    the caller's interrupted upload keeps (C{offset}: 0 when there is none
    to continue), whether it is protected (a resumed protected upload needs
    the same file password), the SHA-256 of those C{offset} bytes when the
    server knows it without reading them (so the client can check its own
    prefix before sending anything), and when it expires.
    """

    name: str
    size: int
    offset: int
    protected: bool = False
    sha256: str | None = None
    prefix_sha256: str | None = None
    expires_ms: int | None = None

    def to_wire(self) -> dict[str, object]:
        return {
            "name": self.name,
            "size": self.size,
            "offset": self.offset,
            "protected": self.protected,
            "sha256": self.sha256,
            "prefix_sha256": self.prefix_sha256,
            "expires": iso_ms(self.expires_ms) if self.expires_ms is not None else None,
        }


class _NoPenalties:
    """The L{Penalties} interface, limiting nothing (a file's owner)."""

    free = 0

    def attempt(self, *keys: object) -> float:
        return 0.0

    def succeeded(self, *keys: object) -> None:
        pass

    def failures(self, key: object) -> float:
        return 0.0


_NO_PENALTIES = _NoPenalties()


class FilesService:
    """
    Decides every files command; the protocol only parses and replies.

    Every method takes the L{Caller} asking (its account decides ownership
    by id, its address keys the guessing limits), and every command returns
    a Deferred.

    @param files: the metadata L{FileStore}.
    @param blobs: the L{BlobStore}.
    @param kdf: the L{KDFPool} file passwords are derived in.
    @param user_quota: bytes per user, 0 for unlimited.
    @param misses: the L{Penalties} of names not found (C{550} on INFO,
        CHECKSUM and DOWNLOAD), per account and per address: guessing the
        name of a hidden file costs seconds per try after a few misses.
    @param file_guesses: the L{Penalties} of wrong passwords per protected
        file from every account together (on top of the per-account
        L{PasswordLockout}), so extra accounts do not buy extra guesses.
    @param partial_ttl: seconds an interrupted resumable upload is kept
        after its last byte (0: until resumed); C{upload_partial_ttl}.
    """

    log = Logger()

    def __init__(
        self,
        files: FileStore,
        blobs: BlobStore,
        kdf: KDFPool,
        lockout: PasswordLockout | None = None,
        max_file_size: int = 64 * GiB,
        user_quota: int = 100 * GiB,
        min_free_percent: float = 5.0,
        kdf_params: tuple[int, int, int] = FILE_SCRYPT,
        clock: IReactorTime | None = None,
        misses: Penalties | None = None,
        file_guesses: Penalties | None = None,
        partial_ttl: float = 24 * 3600.0,
    ):
        clock = default_clock(clock)
        self.files = files
        self.blobs = blobs
        self.kdf = kdf
        self.clock = clock
        self.lockout = lockout if lockout is not None else PasswordLockout(clock)
        self.misses = misses if misses is not None else Penalties(clock, what="names not found")
        self.file_guesses = (
            file_guesses
            if file_guesses is not None
            else Penalties(
                clock,
                base=2.0,
                max_delay=180.0,
                max_wait=360.0,
                decay=180.0,
                what="wrong passwords for this file",
            )
        )
        self.max_file_size = max_file_size
        self.user_quota = user_quota
        self.min_free_percent = min_free_percent
        n, r, p = kdf_params
        self.kdf_params = (n, r, p)
        #: Who waits for start-up housekeeping (L{whenReady}); None once over.
        self._ready_waiters: builtins.list[Deferred[None]] | None = None
        self.partial_ttl = partial_ttl
        #: Interrupted resumable uploads, by (owner id, name key).
        self.partials = PartialIndex()
        self._expiry: task.LoopingCall | None = None

    def _now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    @property
    def _quota(self) -> int | None:
        return self.user_quota or None

    # -- lifecycle (the root service calls start and stop)

    @deferred
    async def start(self) -> None:
        """
        Start-up housekeeping once the database pool runs: remove stale
        temporaries and orphaned blobs (content no row names), and report
        rows whose content is missing.  Uploads wait for it (L{whenReady}),
        so the orphan scan can never race an upload recording its row.
        Never fails: orphans only waste space, the next start retries.
        """
        self._ready_waiters = []
        try:
            counts = await self.startup()
        except Exception:
            self.log.failure("files start-up housekeeping failed")
        else:
            self.log.info(
                "files ready: removed {temporaries} stale temporaries and "
                "{orphans} orphaned blobs; {missing} files without content; "
                "{partials} interrupted uploads kept to be resumed ({expired} expired)",
                **counts,
            )
        finally:
            waiters, self._ready_waiters = self._ready_waiters, None
            for d in waiters or ():
                d.callback(None)
        if self.partial_ttl and self._expiry is None:
            # Partials expire within a tenth of their lifetime (at most 5
            # minutes late); the check itself is a walk over this index.
            self._expiry = task.LoopingCall(self.expire_partials)
            self._expiry.clock = self.clock
            self._expiry.start(min(300.0, max(1.0, self.partial_ttl / 10)), now=False)

    def whenReady(self) -> Deferred[None]:
        """A Deferred that fires once start-up housekeeping is over."""
        if self._ready_waiters is None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._ready_waiters.append(d)
        return d

    def stop(self) -> None:
        if self._expiry is not None:
            if self._expiry.running:
                self._expiry.stop()
            self._expiry = None
        self.blobs.stop()

    @deferred
    async def startup(self) -> dict[str, int]:
        """
        Start-up housekeeping, before the listener accepts uploads: remove
        stale temporaries and orphaned blobs; index the interrupted
        resumable uploads on disk (expired ones are removed).
        @return: Deferred[dict] with the counts C{temporaries}, C{orphans},
            C{missing}, C{partials} and C{expired}.
        """
        self.blobs.sweep()  # (again: the service's builder swept before listening)
        swept = self.blobs.swept
        partials, expired = await self._load_partials()
        known = await self.files.all_blob_ids()
        orphans = await self.blobs.remove_orphans(known)
        missing = known - self.blobs.all_blob_ids()
        if missing:
            names = await self.files.names_of_blobs(sorted(missing))
            self.log.error(
                "{n} files have no content on disk (a DOWNLOAD answers 554; "
                "`netshare db check` lists them): {names}",
                n=len(missing),
                names=", ".join(names[:20]) + (" ..." if len(names) > 20 else ""),
            )
        return {
            "temporaries": swept,
            "orphans": orphans,
            "missing": len(missing),
            "partials": partials,
            "expired": expired,
        }

    async def _load_partials(self) -> tuple[int, int]:
        """Index the partials on disk (after a restart: their bytes are
        hashed again when resumed).  Their age counts from their content
        file's last write.  @return: (indexed, removed as expired)."""
        found = await self.blobs.find_partials()
        known = {p.blob_id for p in self.partials}
        wall, now = time.time(), self.clock.seconds()
        indexed = expired = 0
        for f in sorted(found, key=lambda f: f.mtime):  # the newest of a name wins
            if f.blob_id in known:
                continue
            age = max(0.0, wall - f.mtime)
            older = self.partials.get(f.meta.owner_id, f.meta.key)
            if self.partial_ttl and age >= self.partial_ttl:
                await self.blobs.discard_partial(f.blob_id)
                expired += 1
                continue
            if older is not None and older.idle:
                self.partials.remove(older)
                await self.blobs.discard_partial(older.blob_id)
                indexed -= 1
            self.partials.add(
                Partial(f.blob_id, f.meta, kept_of(f.meta, f.on_disk), None, now - age)
            )
            indexed += 1
        return indexed, expired

    @deferred
    async def expire_partials(self, now: float | None = None) -> int:
        """
        Remove the partials idle for C{partial_ttl} seconds or more (as of
        C{now}, clock seconds; default: now), content and sidecar.  Runs
        periodically once started.  @return: Deferred[int] removed.
        """
        if not self.partial_ttl:
            return 0
        now = self.clock.seconds() if now is None else now
        removed = 0
        for p in self.partials:
            if p.idle and p.last_active + self.partial_ttl <= now:
                self.partials.remove(p)
                await self.blobs.discard_partial(p.blob_id)
                self.log.info(
                    "interrupted upload of {name} by {owner} expired ({kept} bytes removed)",
                    name=p.meta.name,
                    owner=p.meta.owner,
                    kept=p.kept,
                )
                removed += 1
        return removed

    @deferred
    async def forget_partials_of(self, owner_id: int) -> int:
        """A removed account's interrupted uploads go (content and sidecar).
        @return: Deferred[int] removed."""
        removed = 0
        for p in self.partials.of_owner(owner_id):
            if p.idle:
                self.partials.remove(p)
                await self.blobs.discard_partial(p.blob_id)
                removed += 1
        return removed

    def forget_blobs(self, blob_ids: Iterable[str]) -> Deferred[builtins.list[tuple[bool, bool]]]:
        """Unlink blobs whose rows are gone for good (a removed account's
        files, deleted in the committed removal)."""
        return DeferredList([self.blobs.delete(b) for b in blob_ids])

    # -- looking a name up, at the pace the guessing limits allow

    def _miss_keys(self, caller: Caller) -> tuple[tuple[str, object], ...]:
        return (("account", caller.id), ("address", caller.address))

    async def _find(self, caller: Caller, name: str) -> FileRecord:
        """
        The record of C{name} for INFO, CHECKSUM and DOWNLOAD.  A caller that
        missed too often waits first (every lookup, found or not, so the
        answer time tells nothing) or gets C{429}; a miss counts.  Admins
        are not slowed: they may list every hidden file anyway.
        """
        key = name_key(normalize_name(name))
        if caller.is_admin:
            rec = await self.files.get(key)
        else:
            keys = self._miss_keys(caller)
            wait = self.misses.attempt(*keys)  # a miss until found
            if wait:
                await task.deferLater(self.clock, wait, lambda: None)
            try:
                rec = await self.files.get(key)
            except BaseException:
                self.misses.succeeded(*keys)  # not a miss: the database failed
                raise
            if rec is not None:
                self.misses.succeeded(*keys)
            elif max(self.misses.failures(k) for k in keys) == self.misses.free + 1:
                self.log.warn(
                    "{user} from {address}: {n} names not found; every further "
                    "lookup is slowed down",
                    user=caller.name,
                    address=caller.address,
                    n=self.misses.free + 1,
                )
        if rec is None:
            raise NotFound("no such file")
        return rec

    def _reveals(self, caller: Caller, rec: FileRecord) -> bool:
        return not rec.protected or caller.is_admin or rec.owner_id == caller.id

    # -- commands

    @deferred
    async def info(self, caller: Caller, name: str, password: str | None = None) -> FileView:
        """INFO and CHECKSUM: any logged-in user, hidden files included.  A
        protected file's sha256 is shown only to its owner, an admin or a
        caller giving the right C{password} (a wrong one is C{535} and counts
        like a wrong DOWNLOAD password).  @return: Deferred[L{FileView}];
        550, 553, 535, 429."""
        rec = await self._find(caller, name)
        reveal = self._reveals(caller, rec)
        if rec.protected and password is not None and not reveal:
            await self._unlock(caller, rec, password)
            reveal = True
        return FileView(rec, reveal)

    @deferred
    async def list(self, caller: Caller, which: str | None = None) -> builtins.list[FileView]:
        """LIST (public), LIST mine (own public), LIST hidden (an admin's:
        every hidden file; anyone else's: their own).
        @return: Deferred[list of L{FileView}]."""
        if which is None:
            recs = await self.files.list_public()
        elif which == "mine":
            recs = await self.files.list_public(owner_id=caller.id)
        elif which == "hidden":
            recs = await self.files.list_hidden(owner_id=None if caller.is_admin else caller.id)
        else:
            raise BadArguments("LIST takes nothing, mine or hidden")
        return [FileView(r, self._reveals(caller, r)) for r in recs]

    @deferred
    async def quota(self, caller: Caller) -> QuotaView:
        """QUOTA: the caller's own files (public, hidden and protected, as
        the quota counts them: plaintext sizes) and the limits UPLOAD checks
        against.  Only one's own: an admin has no view of another account's
        usage here.  @return: Deferred[L{QuotaView}]; 530 before login."""
        owner = caller.account
        if owner is None:
            raise LoginRequired()
        usage = await self.files.account_usage(owner.id)
        mine = self.partials.of_owner(owner.id)
        return QuotaView(
            usage,
            self._quota,
            self.max_file_size,
            len(mine),
            sum(self._kept_now(p) for p in mine),
        )

    @staticmethod
    def _kept_now(p: Partial) -> int:
        """What a partial keeps now (at least), idle or being continued."""
        if isinstance(p.user, PendingUpload):
            return p.user.sink.kept_so_far
        return p.kept

    @deferred
    async def partial(
        self, caller: Caller, name: str, size: int, sha256: str | None = None
    ) -> PartialView:
        """
        PARTIAL: how much of an upload of C{name} with C{size} bytes (and,
        if given, content C{sha256}) the caller's interrupted upload keeps,
        so a client can continue it (C{UPLOAD ... resume=yes offset=N}).
        Only the caller's own: nobody else's partials can be seen or used.
        @return: Deferred[L{PartialView}]; offset 0 when there is none.
        """
        owner = caller.account
        if owner is None:
            raise LoginRequired()
        name = normalize_name(name)
        if not isinstance(size, int) or size < 0:
            raise BadArguments("size must be a whole number of bytes")
        expected = check_sha256(sha256)
        p = self.partials.get(owner.id, name_key(name))
        if p is None or not self._continues(p, size, expected, None):
            return PartialView(name, size, 0)
        expires = None
        if p.idle and self.partial_ttl:
            expires = int((p.last_active + self.partial_ttl) * 1000)
        return PartialView(
            p.meta.name,
            size,
            self._kept_now(p),
            p.meta.protected,
            p.meta.sha256,
            p.prefix_sha256(),
            expires,
        )

    @staticmethod
    def _continues(p: Partial, size: int, sha256: str | None, protected: bool | None) -> bool:
        """Whether an upload of C{size} bytes (content C{sha256} if known,
        protected or not if known) may continue the partial C{p}."""
        if p.meta.size != size:
            return False
        if sha256 is not None and p.meta.sha256 is not None and sha256 != p.meta.sha256:
            return False
        return protected is None or protected == p.meta.protected

    @deferred
    async def begin_upload(
        self,
        caller: Caller,
        name: str,
        size: int,
        visibility: str | None = None,
        password: str | None = None,
        sha256: str | None = None,
        replace: bool = False,
        *,
        resume: bool = False,
        offset: int = 0,
        trailer: bool = False,
    ) -> PendingUpload:
        """
        Everything that must be checked before C{350}: 553 bad name, 501 bad
        arguments, 552 size limit, 555 exists (or someone else's), 550 no
        interrupted upload to continue at C{offset}, 552 quota, 452 disk
        space, then the key derivation for a protected file (429 when the
        KDF pool is saturated; 535 when a resumed one's password differs).
        C{visibility=None} means public for a new file and unchanged for a
        replaced one.

        With C{resume}, the upload is kept as a partial if its connection is
        cut (docs/protocol.md section 2.A.3); it needs C{sha256} or
        C{trailer}, so the whole is verified at the end.  C{offset} > 0
        continues the caller's partial of this name and size from there
        (its bytes beyond are dropped); C{offset} 0 replaces any partial of
        this name.  An upload still continuing that partial on another
        connection is cut first (the newest connection wins; 555 if it is
        already completing).  With C{trailer}, the content is followed by
        its hex SHA-256.
        @return: Deferred[L{PendingUpload}].
        """
        owner = caller.account
        if owner is None:
            raise LoginRequired()
        name = normalize_name(name)
        key = name_key(name)
        if not isinstance(size, int) or size < 0:
            raise BadArguments("size must be a whole number of bytes")
        if visibility is not None and visibility not in VISIBILITIES:
            raise BadArguments("visibility must be public or hidden")
        expected = check_sha256(sha256)
        if trailer and expected is not None:
            raise BadArguments("sha256= is 64 hex digits or trailer, not both")
        check_file_password(password)
        if not isinstance(offset, int) or offset < 0:
            raise BadArguments("bad offset")
        if offset and not resume:
            raise BadArguments("offset= needs resume=yes")
        if resume and expected is None and not trailer:
            raise BadArguments("resume=yes needs sha256=<hex> or sha256=trailer")
        if offset > size:
            raise BadArguments("bad offset: must be from 0 to %d" % size)
        if size > self.max_file_size:
            raise LimitExceeded("file too large: the limit is %d bytes" % self.max_file_size)
        existing = await self.files.get(key)
        if existing is not None:
            if existing.owner_id != owner.id:
                raise Conflict("file exists and belongs to someone else")
            if not replace:
                raise Conflict("file exists (use replace=yes)")
        claim = object()
        partial = await self._claim(owner, key, claim) if resume else None
        try:
            return await self._begin(
                caller,
                owner,
                name,
                key,
                size,
                visibility,
                password,
                expected,
                bool(replace),
                existing,
                partial,
                claim,
                resume,
                offset,
                trailer,
            )
        except BaseException:
            if partial is not None and partial.user is claim:
                partial.release()
            raise

    async def _claim(self, owner: Account, key: str, claim: object) -> Partial | None:
        """Hold the owner's partial of C{key} for a new resumable upload
        (cutting an upload still continuing it); None if there is none."""
        p = self.partials.get(owner.id, key)
        if p is None:
            return None
        if isinstance(p.user, PendingUpload):
            if p.user.sink.finishing:
                raise Conflict("an upload of this name is completing on another connection")
            self.log.info(
                "{owner}: another connection continues the upload of {name}; cutting the old one",
                owner=owner.name,
                name=p.meta.name,
            )
            await p.user.sink.cut()
            if self.partials.get(owner.id, key) is not p:
                return None  # not kept (a disk error): start afresh
        if not p.idle:
            raise Conflict("an upload of this name is starting on another connection")
        p.user = claim
        return p

    async def _begin(
        self,
        caller: Caller,
        owner: Account,
        name: str,
        key: str,
        size: int,
        visibility: str | None,
        password: str | None,
        expected: str | None,
        replace: bool,
        existing: FileRecord | None,
        partial: Partial | None,
        claim: object,
        resume: bool,
        offset: int,
        trailer: bool,
    ) -> PendingUpload:
        """L{begin_upload} once the caller's partial of this name (if any,
        when resuming) is held by C{claim}."""
        if offset:
            if (
                partial is None
                or not self._continues(partial, size, expected, password is not None)
                or offset > partial.kept
            ):
                raise NotFound(
                    "no interrupted upload of this name and size keeps %d bytes "
                    "(PARTIAL tells what is kept)" % offset
                )
            if partial.meta.protected and offset % partial.meta.chunk_size:
                raise BadArguments(
                    "offset must be a multiple of %d for a protected upload"
                    % partial.meta.chunk_size
                )
        if self._quota is not None:
            used = await self.files.usage(owner.id)
            if existing is not None:
                used -= existing.size
            # Interrupted uploads count, except the one this one continues
            # or replaces.
            used += self.partials.idle_bytes(owner.id, except_key=key)
            if used + size > self._quota:
                raise LimitExceeded("quota exceeded: %d of %d bytes used" % (used, self._quota))
        left = size - offset
        on_disk = encrypted_size(left) if password is not None else left
        self.blobs.check_space(on_disk, self.min_free_percent)
        encryption: EncryptionParams | None = None
        if offset and partial is not None and partial.meta.enc_meta is not None:
            assert password is not None
            try:
                enc_key = await unlock(
                    partial.meta.enc_meta, password, self.kdf, source=caller.address
                )
            except BadCredentials:
                raise BadCredentials(
                    "wrong file password: the interrupted upload has another one"
                ) from None
            encryption = params_from_meta(partial.meta.enc_meta, enc_key)
        elif password is not None:
            n, r, p = self.kdf_params
            encryption = await prepare_encryption(
                password, self.kdf, n, r, p, source=caller.address
            )
        if not resume:
            sink = self.blobs.open_upload(size, expected, encryption, trailer=trailer)
            return PendingUpload(self, sink, name, key, owner, size, visibility, replace)
        if offset:
            assert partial is not None
            hasher = partial.hasher if offset == partial.kept else None
            try:
                point = await self.blobs.prepare_partial(
                    partial.blob_id, partial.meta, offset, hasher, encryption
                )
            except IntegrityFailure:
                self.partials.remove(partial)
                partial.release()
                await self.blobs.discard_partial(partial.blob_id)
                raise IntegrityFailure(
                    "the interrupted upload is damaged and was removed; upload from the start"
                ) from None
        else:
            if partial is not None:  # another size, content or password: start afresh
                self.partials.remove(partial)
                partial.release()
                await self.blobs.discard_partial(partial.blob_id)
            meta = PartialMeta(
                owner.id,
                owner.name,
                name,
                key,
                size,
                expected,
                encryption.meta() if encryption is not None else None,
                self._now_ms(),
            )
            blob_id = await self.blobs.create_partial(meta)
            older = self.partials.get(owner.id, key)
            if older is not None:  # made meanwhile by another connection
                if not older.idle:
                    await self.blobs.discard_partial(blob_id)
                    raise Conflict("an upload of this name is starting on another connection")
                self.partials.remove(older)
                await self.blobs.discard_partial(older.blob_id)
            partial = Partial(blob_id, meta, 0, None, self.clock.seconds(), user=claim)
            self.partials.add(partial)
            point = None
        try:
            sink = self.blobs.open_upload(
                size, expected, encryption, partial=partial.blob_id, resume=point, trailer=trailer
            )
        except BaseException:
            if offset == 0:  # the pair made above
                self.partials.remove(partial)
                self.blobs.discard_partial(partial.blob_id)
            raise
        up = PendingUpload(
            self, sink, name, key, owner, size, visibility, replace, offset, partial
        )
        partial.user = up
        partial.hasher = None  # the writer's now; given back if it is cut again
        sink.settled().addCallback(lambda _: self._resumable_settled(up))
        return up

    def _resumable_settled(self, up: PendingUpload) -> None:
        """A resumable upload is over: keep its partial (cut: L{Suspended})
        or forget it (stored, failed: its pair is gone)."""
        p = up.partial
        if p is None or p.user is not up:
            return
        outcome = up.sink.outcome
        if isinstance(outcome, Suspended) and outcome.kept == 0:
            # Nothing to continue from: not worth keeping.
            self.partials.remove(p)
            self.blobs.discard_partial(p.blob_id)
        elif isinstance(outcome, Suspended):
            p.kept, p.hasher = outcome.kept, outcome.hasher
            p.last_active = self.clock.seconds()
            self.log.info(
                "kept {kept} of {size} bytes of {name} for {owner} to be resumed",
                kept=outcome.kept,
                size=p.meta.size,
                name=p.meta.name,
                owner=p.meta.owner,
            )
        else:
            self.partials.remove(p)
        p.release()

    @deferred
    async def complete_upload(
        self, up: PendingUpload, journal: JournalRow | None = None
    ) -> FileRecord:
        """The body of L{PendingUpload.complete}: make the blob durable,
        then record its row (with the UPLOAD's history row, C{journal})."""
        stored = await up.sink.finish()
        # Interrupted uploads count in the quota (this one's own is gone,
        # and one of this name is superseded: see below).
        pending = self.partials.idle_bytes(up.owner.id, except_key=up.key)
        row = dict(
            name=up.name,
            name_key=up.key,
            owner=up.owner.name,
            owner_id=up.owner.id,
            size=stored.size,
            sha256=stored.sha256,
            visibility=up.visibility,
            blob_id=stored.blob_id,
            enc_meta=stored.enc_meta,
            created_ms=self._now_ms(),
            quota=self._quota,
            pending=pending,
        )
        old_blob: str | None = None
        try:
            if up.replace:
                record, old_blob = await self.files.replace(**row, journal=journal)
            else:
                row["visibility"] = up.visibility or "public"
                record = await self.files.insert(**row, journal=journal)
        except OutcomeUnknown as e:
            # A committed row may point at the new content: keep it (held,
            # so no orphan sweep takes it) until the database knows.
            self._settle_upload(e, stored.blob_id, up.replace)
            raise
        except BaseException:
            await self.blobs.delete(stored.blob_id)
            raise
        self.blobs.release(stored.blob_id)
        if old_blob is not None:
            await self.blobs.delete(old_blob)
        superseded = self.partials.get(up.owner.id, up.key)
        if superseded is not None and superseded.idle:
            # An interrupted upload of the name just stored is of no use.
            self.partials.remove(superseded)
            await self.blobs.discard_partial(superseded.blob_id)
        self.log.info(
            "stored {name} ({size} bytes) for {owner}",
            name=up.name,
            size=stored.size,
            owner=up.owner.name,
        )
        return record

    @deferred
    async def _settle_upload(self, unknown: OutcomeUnknown, blob_id: str, replaced: bool) -> None:
        """After an upload's row write ended in L{OutcomeUnknown}: once the
        database knows, release the new content (committed) or remove it."""
        try:
            result = await unknown.settled()
        except Exception:
            self.log.info(
                "an upload whose outcome was unknown had not committed: removing its content"
            )
            await self.blobs.delete(blob_id)
            return
        self.log.info("an upload whose outcome was unknown had committed")
        self.blobs.release(blob_id)
        old_blob = result[1] if replaced else None
        if old_blob is not None:
            await self.blobs.delete(old_blob)

    @deferred
    async def open_download(
        self, caller: Caller, name: str, password: str | None = None, offset: int = 0
    ) -> PreparedDownload:
        """
        Everything before C{150}: 553/550 name, 501 bad offset, 429 locked
        out, 535 missing or wrong file password (checked before any byte).
        @return: Deferred[L{PreparedDownload}].
        """
        if not isinstance(offset, int) or offset < 0:
            raise BadArguments("bad offset")
        tried = None
        while True:
            rec = await self._find(caller, name)
            if offset > rec.size:
                raise BadArguments("bad offset: must be from 0 to %d" % rec.size)
            key = None
            if rec.enc_meta is not None:
                key = await self._unlock(caller, rec, password)
            try:
                reader = self.blobs.open_download(rec.blob_id, offset, key, rec.size)
            except NotFound:
                if tried == rec.blob_id:
                    # The row still names it: the content is gone from disk.
                    self.log.error(
                        "{name}: its content {blob} is missing from disk "
                        "(netshare db check lists every such file)",
                        name=rec.name,
                        blob=rec.blob_id,
                    )
                    raise IntegrityFailure(
                        "stored file is missing; the operator is told"
                    ) from None
                # The row we read was replaced or deleted before we opened its
                # blob: look again once (a replace leaves a new row).
                tried = rec.blob_id
                continue
            return PreparedDownload(rec, reader)

    async def _unlock(self, caller: Caller, rec: FileRecord, password: str | None) -> bytes:
        """
        A protected file's key.  Wrong passwords are limited twice: per
        (account, file) by the L{PasswordLockout} (429 for 15 minutes after
        5), and per file across all accounts by L{file_guesses} (every try
        waits once the file has seen a few wrong passwords, then 429), so
        self-registered extra accounts do not buy extra guesses.
        """
        self.lockout.check(caller.id, rec.name_key)
        if password is None:
            raise BadCredentials("file is protected: password required")
        # The owner is no sybil: only their own lockout applies to them, so
        # guessers cannot keep the owner from their file.
        file_key = ("file", rec.id)
        guesses: Penalties | _NoPenalties = (
            self.file_guesses if rec.owner_id != caller.id else _NO_PENALTIES
        )
        wait = guesses.attempt(file_key)  # a wrong password until proved right
        self.lockout.begin(caller.id, rec.name_key)
        try:
            if wait:
                await task.deferLater(self.clock, wait, lambda: None)
            key = await unlock(rec.enc_meta, password, self.kdf, source=caller.address)
        except BadCredentials:
            self.lockout.end(caller.id, rec.name_key)
            if self.lockout.failure(caller.id, rec.name_key):
                self.log.warn(
                    "{user} locked out of {name} after wrong passwords",
                    user=caller.name,
                    name=rec.name,
                )
            failures = guesses.failures(file_key)
            if failures >= guesses.free:
                self.log.warn(
                    "{name}: {n} recent wrong passwords from all accounts; every "
                    "further try waits (last from {user} at {address})",
                    name=rec.name,
                    n=int(failures),
                    user=caller.name,
                    address=caller.address,
                )
            raise
        except BaseException:
            self.lockout.end(caller.id, rec.name_key)
            guesses.succeeded(file_key)  # not a wrong password
            raise
        self.lockout.end(caller.id, rec.name_key)
        guesses.succeeded(file_key)
        self.lockout.success(caller.id, rec.name_key)
        return key

    @deferred
    async def delete(
        self, caller: Caller, name: str, journal: JournalRow | None = None
    ) -> FileRecord:
        """DELETE: owner or admin (531), 550.  The row goes first (with the
        command's history row, C{journal}), then the blob.
        @return: Deferred[FileRecord] of the deleted file."""
        key = name_key(normalize_name(name))
        try:
            rec = await self.files.delete(
                key, owner_id=None if caller.is_admin else caller.id, journal=journal
            )
        except OutcomeUnknown as e:
            # The content goes only once its row is known to be gone.
            self._settle_delete(e)
            raise
        await self.blobs.delete(rec.blob_id)
        self.log.info("{user} deleted {name}", user=caller.name, name=rec.name)
        return rec

    @deferred
    async def _settle_delete(self, unknown: OutcomeUnknown) -> None:
        """After a DELETE's row write ended in L{OutcomeUnknown}: remove the
        content once the row is known to be gone (never if it is not)."""
        try:
            gone = await unknown.settled()
        except Exception:
            return
        await self.blobs.delete(gone.blob_id)
