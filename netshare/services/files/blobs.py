"""
Content by opaque id on disk: the blob store.

Layout::

    <root>/blobs/<first 2 hex digits>/<32 hex digit id>   finished content
    <root>/tmp/<32 hex digit id>.part                    uploads in progress
    <root>/tmp/<32 hex digit id>.resume                  ... and resumable ones' sidecars

Writing a blob is L{netshare.services.files.upload}, reading one
L{netshare.services.files.download}, interrupted resumable uploads are
L{netshare.services.files.partials}; this module names blobs, keeps the
directories and the space reservation, and sweeps what a crash left.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from netshare.deferreds import deferred
from netshare.errors import BadArguments, InsufficientStorage, IntegrityFailure, NotFound
from netshare.services.files import partials
from netshare.services.files.crypto import (
    HEADER_SIZE,
    BlobHeader,
    EncryptionParams,
    encrypted_size,
)
from netshare.services.files.disk import O_CLOEXEC, O_NOFOLLOW, ensure_real_dir
from netshare.services.files.download import READ_CHUNK, BlobReader
from netshare.services.files.names import check_sha256
from netshare.services.files.partials import PartialMeta
from netshare.services.files.upload import HIGH_WATER, BlobWriter, ResumePoint, UploadSink

_BLOB_ID = re.compile(r"[0-9a-f]{32}", re.ASCII)

T = TypeVar("T")


class BlobStore:
    """
    Content by opaque id under C{root}.  Paths come only from L{path_of},
    which accepts nothing but 32 lowercase hex digits.

    Disk work of uploads and deletions runs in a small dedicated thread pool
    (its own unless one is given), started on first use; call L{stop} at
    shutdown (it is also registered as a reactor shutdown trigger).

    @param fsync: make uploads durable (fsync the file and directories);
        only tests and benchmarks on tmpfs turn it off.
    @param write_behind: hand uploads to the disk while they arrive and keep
        their page cache bounded (L{netshare.services.files.disk.WriteBehind}).
    @param reactor: provides C{IReactorTime}, C{IReactorCore} and
        C{IReactorFromThreads}; the global reactor by default.
    """

    log = Logger()

    def __init__(
        self,
        root: str,
        threadpool: ThreadPool | None = None,
        reactor: Any = None,
        fsync: bool = True,
        high_water: int = HIGH_WATER,
        read_size: int = READ_CHUNK,
        threads: int = 4,
        write_behind: bool = True,
    ):
        self.root = os.path.abspath(root)
        #: Stale temporaries removed by L{sweep} since this store was made.
        self.swept = 0
        self.write_behind = write_behind
        self.blobs_dir = os.path.join(self.root, "blobs")
        self.tmp_dir = os.path.join(self.root, "tmp")
        os.makedirs(self.root, mode=0o700, exist_ok=True)  # may be a symlink (operator's choice)
        for path in (self.blobs_dir, self.tmp_dir):
            ensure_real_dir(path)
        self.fsync = fsync
        self.high_water = high_water
        self.read_size = read_size
        self._reactor = reactor
        self._given_pool = threadpool
        self._threads = threads
        self._own_pool = ThreadPool(minthreads=0, maxthreads=threads, name="netshare-blobs")
        self._started = False
        self._trigger: Any = None
        self._uploading: dict[str, UploadSink] = {}  # open sinks (space reservation)
        self._held: set[str] = set()  # ids not to treat as stale/orphaned

    # lifecycle

    def _get_reactor(self, reactor: Any = None) -> Any:
        if reactor is not None:
            return reactor
        if self._reactor is None:
            from twisted.internet import reactor as global_reactor

            self._reactor = global_reactor
        return self._reactor

    def _pool(self) -> ThreadPool:
        if self._given_pool is not None:
            return self._given_pool
        if not self._started:
            self._own_pool.start()
            self._started = True
            self._trigger = self._get_reactor().addSystemEventTrigger(
                "during", "shutdown", self.stop
            )
        return self._own_pool

    def stop(self) -> None:
        """Stop our own worker threads (waits for running jobs)."""
        if self._started:
            self._started = False
            if self._trigger is not None:
                try:
                    self._get_reactor().removeSystemEventTrigger(self._trigger)
                except (ValueError, KeyError):
                    pass
                self._trigger = None
            self._own_pool.stop()
            self._own_pool = ThreadPool(
                minthreads=0, maxthreads=self._threads, name="netshare-blobs"
            )

    def _run(self, fn: Callable[..., T], *args: object) -> Deferred[T]:
        return deferToThreadPool(self._get_reactor(), self._pool(), fn, *args)

    # paths

    @staticmethod
    def new_id() -> str:
        return secrets.token_hex(16)

    def path_of(self, blob_id: str) -> str:
        """The content path of C{blob_id}; anything but 32 lowercase hex
        digits is refused, so no outside string ever reaches a path."""
        if not isinstance(blob_id, str) or not _BLOB_ID.fullmatch(blob_id):
            raise ValueError("invalid blob id %r" % (blob_id,))
        return os.path.join(self.blobs_dir, blob_id[:2], blob_id)

    def _tmp_path(self, blob_id: str) -> str:
        self.path_of(blob_id)
        return partials.part_path(self.tmp_dir, blob_id)

    @staticmethod
    def is_blob_id(text: str) -> bool:
        return bool(_BLOB_ID.fullmatch(text))

    # start-up housekeeping

    def sweep(self) -> int:
        """
        Remove stale temporary files (uploads cut by a crash).  Called
        synchronously at start-up; uploads in progress in this process are
        left alone, so it is also safe later.  Interrupted resumable uploads
        (a content file with a valid sidecar: L{partials}) are kept.
        @return: files removed.
        """
        removed = 0
        keep: set[str] = set()
        for found in partials.scan(self.tmp_dir, self.is_blob_id):
            keep.add(found.blob_id + partials.PART)
            keep.add(found.blob_id + partials.SIDECAR)
        with os.scandir(self.tmp_dir) as entries:
            for entry in entries:
                blob_id = entry.name.split(".", 1)[0]
                if blob_id in self._held or entry.name in keep:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    self.log.warn(
                        "sweep: leaving unexpected directory {name} in tmp", name=entry.name
                    )
                    continue
                try:
                    os.unlink(entry.path)
                    removed += 1
                except FileNotFoundError:
                    pass
        if removed:
            self.log.info("sweep: removed {count} stale temporary files", count=removed)
        self.swept += removed
        return removed

    def all_blob_ids(self) -> set[str]:
        """Every blob id on disk (worker or start-up only: it lists directories)."""
        found = set()
        with os.scandir(self.blobs_dir) as shards:
            for shard in shards:
                if not shard.is_dir(follow_symlinks=False) or len(shard.name) != 2:
                    continue
                with os.scandir(shard.path) as entries:
                    for entry in entries:
                        if _BLOB_ID.fullmatch(entry.name) and entry.name[:2] == shard.name:
                            found.add(entry.name)
        return found

    def _remove_orphans(self, known: frozenset[str]) -> int:
        removed = 0
        for blob_id in self.all_blob_ids() - known:
            if blob_id in self._held:
                continue
            try:
                os.unlink(self.path_of(blob_id))
                removed += 1
            except FileNotFoundError:
                pass
        return removed

    @deferred
    async def remove_orphans(self, known_ids: Iterable[str]) -> int:
        """
        Remove blobs that no database row names (kill -9 between the rename
        into C{blobs/} and the row insert).  C{known_ids} may be read from
        the database after this process started accepting uploads: an
        upload's blob is held from L{open_upload} until the caller
        L{release}s it (its row is written) or it is deleted, and held blobs
        are never removed.  Runs in the worker.
        @return: Deferred[int] blobs removed.
        """
        n = await self._run(self._remove_orphans, frozenset(known_ids))
        if n:
            self.log.warn("removed {count} orphaned blobs (no database row)", count=n)
        return n

    # space

    def check_space(self, size: int, min_free_percent: float) -> None:
        """
        Refuse (452) if storing C{size} more bytes, on top of the uploads in
        progress, would leave less than C{min_free_percent} of the disk free.
        One statvfs call: cheap enough for the reactor thread.
        """
        st = os.statvfs(self.root)
        total = st.f_blocks * st.f_frsize
        free = st.f_bavail * st.f_frsize
        reserved = sum(max(0, s.size - s.received) for s in self._uploading.values())
        if free - reserved - size < total * (min_free_percent / 100.0):
            self.log.warn(
                "refusing {size} bytes: {free} free of {total}, {reserved} reserved",
                size=size,
                free=free,
                total=total,
                reserved=reserved,
            )
            raise InsufficientStorage("insufficient storage")

    # upload

    def open_upload(
        self,
        size: int,
        sha256_hex: str | None = None,
        encryption: EncryptionParams | None = None,
        reactor: Any = None,
        *,
        partial: str | None = None,
        resume: ResumePoint | None = None,
        trailer: bool = False,
    ) -> UploadSink:
        """
        Start receiving a blob of exactly C{size} plaintext bytes.

        @param partial: the id of a resumable upload's pair (made by
            L{create_partial}): its content goes there and is kept if cut.
        @param resume: where that content continues (L{prepare_partial});
            the sink then expects only the bytes after it.
        @param trailer: the content is followed by its hex SHA-256.
        """
        if not isinstance(size, int) or size < 0:
            raise BadArguments("size must be a whole number of bytes")
        expected = check_sha256(sha256_hex)
        blob_id = partial if partial is not None else self.new_id()
        writer = BlobWriter(
            self._tmp_path(blob_id),
            os.path.dirname(self.path_of(blob_id)),
            self.path_of(blob_id),
            blob_id,
            size,
            encryption,
            self.fsync,
            self.write_behind,
            sidecar_path=(
                partials.sidecar_path(self.tmp_dir, blob_id) if partial is not None else None
            ),
            resume=resume,
        )
        sink = UploadSink(
            writer,
            expected,
            self._get_reactor(reactor),
            self._pool(),
            self.high_water,
            self.blobs_dir,
            self._upload_settled,
            trailer=trailer,
        )
        self._uploading[blob_id] = sink
        self._held.add(blob_id)
        return sink

    def _upload_settled(self, blob_id: str, stored: bool) -> None:
        """An upload's sink is done: a stored blob stays held until the
        caller L{release}s it; a failed one's id is forgotten."""
        self._uploading.pop(blob_id, None)
        if not stored:
            self._held.discard(blob_id)

    def release(self, blob_id: str) -> None:
        """The blob's row is written (or the blob deleted): stop protecting it."""
        self._held.discard(blob_id)

    # interrupted resumable uploads (netshare.services.files.partials)

    def create_partial(self, meta: PartialMeta) -> Deferred[str]:
        """Make the pair of a new resumable upload (in the worker).
        @return: Deferred[str] its id, for L{open_upload}C{(partial=)}."""
        blob_id = self.new_id()

        def make() -> str:
            partials.create(self.tmp_dir, blob_id, meta, self.fsync)
            return blob_id

        return self._run(make)

    def find_partials(self) -> Deferred[list[partials.Found]]:
        """Every interrupted resumable upload on disk (in the worker)."""
        return self._run(partials.scan, self.tmp_dir, self.is_blob_id)

    def prepare_partial(
        self,
        blob_id: str,
        meta: PartialMeta,
        kept: int,
        hasher: Any = None,
        encryption: EncryptionParams | None = None,
    ) -> Deferred[ResumePoint]:
        """Ready a partial to continue after C{kept} bytes (see
        L{partials.prepare}; in the worker)."""
        path = self._tmp_path(blob_id)
        return self._run(partials.prepare, path, meta, kept, hasher, encryption, self.fsync)

    @deferred
    async def discard_partial(self, blob_id: str) -> bool:
        """Remove a partial's pair (in the worker).  Never fails: an error
        is logged (the next start-up's sweep or expiry retries).
        @return: Deferred[bool] whether its content file was there."""
        self.path_of(blob_id)
        try:
            return await self._run(partials.remove, self.tmp_dir, blob_id)
        except Exception:
            self.log.failure("could not remove partial upload {blob}", blob=blob_id)
            return False

    # download

    def open_download(
        self,
        blob_id: str,
        offset: int = 0,
        key: bytes | None = None,
        expected_size: int | None = None,
    ) -> BlobReader:
        """
        Open a blob for streaming from C{offset} (plaintext position).

        The file is opened now, so a later delete or replace cannot take it
        away from this reader (see L{netshare.services.files.download}).
        Symlinks are not followed.  @raise NotFound: the blob is gone (deleted meanwhile).
        @raise BadArguments: (501) offset outside 0..size.
        @raise IntegrityFailure: (554) the blob's length or header is wrong.
        """
        path = self.path_of(blob_id)
        try:
            fd = os.open(path, os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound("no such file") from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                self.log.error("blob {blob} is a symlink: refusing it", blob=blob_id)
                raise IntegrityFailure("stored file is damaged") from None
            raise
        try:
            return self._reader(fd, blob_id, offset, key, expected_size)
        except BaseException:
            os.close(fd)
            raise

    def _reader(
        self, fd: int, blob_id: str, offset: int, key: bytes | None, expected_size: int | None
    ) -> BlobReader:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IntegrityFailure("stored file is damaged")
        header = None
        if key is None:
            size = st.st_size
        else:
            header = BlobHeader.unpack(os.pread(fd, HEADER_SIZE, 0))
            size = header.size
            if st.st_size != encrypted_size(size, header.chunk_size):
                self.log.error(
                    "blob {blob} has {actual} bytes, expected {expected}",
                    blob=blob_id,
                    actual=st.st_size,
                    expected=encrypted_size(size, header.chunk_size),
                )
                raise IntegrityFailure("stored file is truncated or damaged")
        if expected_size is not None and size != expected_size:
            self.log.error(
                "blob {blob} holds {actual} bytes, its row says {expected}",
                blob=blob_id,
                actual=size,
                expected=expected_size,
            )
            raise IntegrityFailure("stored file has the wrong size")
        if not isinstance(offset, int) or not 0 <= offset <= size:
            raise BadArguments("bad offset: must be from 0 to %d" % size)
        return BlobReader(
            fd,
            size,
            offset,
            self.read_size,
            key,
            header,
            pool=self._pool(),
            reactor=self._get_reactor(),
        )

    # delete

    def _unlink(self, blob_id: str) -> bool:
        try:
            os.unlink(self.path_of(blob_id))
            return True
        except FileNotFoundError:
            return False

    def unlink_now(self, blob_id: str) -> bool:
        """Unlink a blob synchronously: for programs without a reactor (the
        operator CLI), never for a server."""
        return self._unlink(blob_id)

    @deferred
    async def delete(self, blob_id: str) -> bool:
        """
        Unlink a blob (in the worker).  Readers that already opened it keep
        reading the old content until they close it (POSIX semantics, see
        L{netshare.services.files.download}).  Never fails: an error is
        logged (the blob becomes an orphan, removed at the next start-up).
        @return: Deferred[bool] whether a file was removed.
        """
        self.path_of(blob_id)
        try:
            removed = await self._run(self._unlink, blob_id)
        except Exception:
            self.log.failure("could not delete blob {blob}", blob=blob_id)
            return False
        self.release(blob_id)
        return removed
