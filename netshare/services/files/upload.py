"""
The upload side of the blob store.

L{BlobStore.open_upload} returns an L{UploadSink}, a Twisted C{IConsumer}.
The protocol registers its raw-input side (a push producer that pauses the
socket) and C{write()}s each received chunk.  The sink only queues the chunk
and hands the queue to one job at a time in a small dedicated thread pool,
which hashes it (SHA-256 of the plaintext), encrypts it when the file is
protected, and writes it to the temporary file (everything queued at once,
one C{writev} of up to 1 MiB).  Large uploads are written behind
(L{WriteBehind}): handed to the disk in 8 MiB pieces as they arrive, and
dropped from the page cache once written, so an upload keeps at most about
64 MiB of dirty pages and the final fsync has little left to do.  When more than
C{high_water} bytes (4 MiB) are queued the sink pauses the producer, and it
resumes it once the queue is down to half of that: memory per upload stays
flat whatever the size, and the reactor thread never touches the disk.
C{finish()} (after exactly the declared size) checks the size and optional
SHA-256, then fsyncs the file, renames it into C{blobs/}, and fsyncs that
directory, all in the worker; only then may the caller insert the database
row and answer C{226}.  A mismatch removes the temporary file
(C{554 checksum mismatch}).  C{abort()} (connection dropped) removes it
too.  A crash leaves at worst a stale C{tmp/*.part} (removed by
L{BlobStore.sweep} at start-up) or a finished blob without a row (kill -9
between rename and insert; removed by L{BlobStore.remove_orphans} at
start-up).  Nothing partial is ever visible.

A I{resumable} upload (C{UPLOAD ... resume=yes}, docs/protocol.md section
2.A.3) writes into a temporary file that already exists beside a small
sidecar (L{netshare.services.files.partials}).  When its connection is cut,
C{abort()} does not remove the file: the worker writes what was queued,
fsyncs, and settles with a L{Suspended} (the plaintext bytes kept and the
SHA-256 state after exactly those bytes).  A later upload continues it from
a L{ResumePoint}.  With C{trailer}, the last 64 raw bytes after the content
are the hex SHA-256 the content is checked against (the client computes it
while sending).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IDelayedCall, IProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from netshare.deferreds import deferred
from netshare.errors import BadArguments, Conflict, InsufficientStorage, IntegrityFailure
from netshare.services.files.crypto import (
    HEADER_SIZE,
    BlobHeader,
    ChunkEncryptor,
    EncryptionParams,
)
from netshare.services.files.disk import (
    O_CLOEXEC,
    O_NOFOLLOW,
    WriteBehind,
    ensure_real_dir,
    fsync_dir,
    reraise_storage,
    write_all,
)
from netshare.services.files.names import check_sha256

KiB = 1024
MiB = 1024 * KiB
HIGH_WATER = 4 * MiB  # upload bytes queued before the socket is paused
WRITE_BATCH = 1 * MiB  # upload bytes the worker takes per writev
TRAILER = 64  # the hex SHA-256 after the content of an UPLOAD sha256=trailer


@dataclass(frozen=True)
class StoredBlob:
    """A finished, durable blob: C{sha256} and C{size} are of the plaintext."""

    blob_id: str
    size: int
    sha256: str
    enc_meta: dict[str, Any] | None


@dataclass(frozen=True)
class ResumePoint:
    """
    Where a resumable upload's content continues: the temporary file holds
    C{kept} plaintext bytes in its first C{on_disk} bytes (encrypted files:
    the header and C{kept / chunk size} sealed chunks), and C{hasher} is the
    SHA-256 state after exactly those C{kept} bytes (the writer owns it).
    """

    kept: int
    on_disk: int
    hasher: Any


@dataclass(frozen=True)
class Suspended:
    """
    A resumable upload cut before its last byte: its temporary file is
    fsynced and holds C{kept} plaintext bytes; C{hasher} is the SHA-256 state
    after exactly those bytes (so resuming needs no re-read while this
    process runs).
    """

    blob_id: str
    kept: int
    hasher: Any


class BlobWriter:
    """
    The worker-thread half of an upload.  Only one worker job touches it at
    a time (L{UploadSink} guarantees that), so it needs no lock.
    """

    def __init__(
        self,
        tmp_path: str,
        shard_dir: str,
        final_path: str,
        blob_id: str,
        size: int,
        encryption: EncryptionParams | None,
        fsync: bool,
        write_behind: bool = True,
        sidecar_path: str | None = None,
        resume: ResumePoint | None = None,
    ):
        """
        @param sidecar_path: a resumable upload's sidecar: its temporary file
            already exists (maybe holding C{resume.kept} bytes) and is kept
            by L{suspend}; L{finalize} and L{discard} remove the sidecar too.
        @param resume: where the content continues (None: from byte 0).
        """
        self.tmp_path = tmp_path
        self.write_behind = write_behind
        self.shard_dir = shard_dir
        self.final_path = final_path
        self.blob_id = blob_id
        self.size = size
        self.fsync = fsync
        self.encryption = encryption
        self.sidecar_path = sidecar_path
        self.hasher: Any = resume.hasher if resume is not None else hashlib.sha256()
        self.count = resume.kept if resume is not None else 0  # plaintext bytes, kept included
        self.count_at_start = self.count
        # bytes of the file (ciphertext if encrypted)
        self.on_disk = resume.on_disk if resume is not None else 0
        self.behind: WriteBehind | None = None
        self.fd: int | None = None
        self.encryptor: ChunkEncryptor | None = None
        if encryption is not None:
            if self.count % encryption.chunk_size:
                raise ValueError("a protected upload resumes at a chunk boundary")
            header = BlobHeader(
                encryption.chunk_size, size, encryption.salt, encryption.nonce_prefix
            )
            # The encryptor hashes what it seals: the hash then always
            # covers exactly the chunks on disk (see Suspended).
            self.encryptor = ChunkEncryptor(
                encryption.key, header, self.count // encryption.chunk_size, self.hasher
            )

    @property
    def resumable(self) -> bool:
        return self.sidecar_path is not None

    def _open(self) -> int:
        if self.fd is None:
            if self.resumable:
                # The file exists (made with the sidecar); continue after
                # what it keeps.
                self.fd = os.open(self.tmp_path, os.O_WRONLY | O_NOFOLLOW | O_CLOEXEC)
                os.ftruncate(self.fd, self.on_disk)
                os.lseek(self.fd, self.on_disk, os.SEEK_SET)
            else:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_CLOEXEC
                self.fd = os.open(self.tmp_path, flags, 0o600)
            if self.encryptor is not None and self.on_disk == 0:
                write_all(self.fd, self.encryptor.header_bytes)
                self.on_disk = HEADER_SIZE
            if self.write_behind:
                self.behind = WriteBehind(self.fd, self.on_disk)
        return self.fd

    def write_many(self, chunks: list[bytes]) -> None:
        """Hash, (encrypt,) and append C{chunks} with one C{writev}."""
        try:
            fd = self._open()
            for chunk in chunks:
                self.count += len(chunk)
            if self.encryptor is None:
                for chunk in chunks:
                    self.hasher.update(chunk)
                out = chunks
            else:
                out = []
                for chunk in chunks:
                    out.extend(self.encryptor.feed(chunk))
            write_all(fd, out)
            self.on_disk += sum(len(c) for c in out)
            if self.behind is not None:
                self.behind.advance(self.on_disk)
        except OSError as e:
            self.discard()
            reraise_storage(e)

    def finalize(self, expected_sha256: str | None, parent_dir: str) -> StoredBlob:
        """Verify, make durable, and move into place; on any failure the
        temporary file is removed."""
        try:
            fd = self._open()
            if self.encryptor is not None:
                write_all(fd, self.encryptor.finish())
            digest = self.hasher.hexdigest()
            if self.count != self.size:
                raise IntegrityFailure(
                    "size mismatch: received %d of %d bytes" % (self.count, self.size)
                )
            if expected_sha256 is not None and not hmac.compare_digest(digest, expected_sha256):
                raise IntegrityFailure("checksum mismatch")
            if self.fsync:
                os.fsync(fd)
            if self.behind is not None:
                self.behind.finish()
            os.close(fd)
            self.fd = None
            if ensure_real_dir(self.shard_dir) and self.fsync:
                fsync_dir(parent_dir)
            os.rename(self.tmp_path, self.final_path)
            if self.fsync:
                fsync_dir(self.shard_dir)
            self._unlink_sidecar()
        except OSError as e:
            self.discard()
            reraise_storage(e)
        except BaseException:
            self.discard()
            raise
        meta = self.encryption.meta() if self.encryption is not None else None
        return StoredBlob(self.blob_id, self.size, digest, meta)

    def suspend(self) -> Suspended:
        """
        A resumable upload was cut: make what is written durable and keep
        it.  An encrypted upload keeps only its sealed chunks (the bytes the
        encryptor still buffers are dropped: the client sends them again).
        On failure the temporary file and the sidecar are removed.
        """
        try:
            if self.fd is not None:
                if self.fsync:
                    os.fsync(self.fd)
                os.close(self.fd)
                self.fd = None
        except OSError as e:
            self.discard()
            reraise_storage(e)
        if self.encryptor is None:
            kept = self.count
        else:
            assert self.encryption is not None
            kept = self.encryptor.sealed * self.encryption.chunk_size
        return Suspended(self.blob_id, kept, self.hasher)

    def _unlink_sidecar(self) -> None:
        if self.sidecar_path is not None:
            try:
                os.unlink(self.sidecar_path)
            except FileNotFoundError:
                pass

    def discard(self) -> None:
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None
        try:
            os.unlink(self.tmp_path)
        except FileNotFoundError:
            pass
        self._unlink_sidecar()


@implementer(IConsumer)
class UploadSink:
    """
    Receives an upload body on the reactor thread and writes it from a
    worker thread; see the module docstring.

    Use: C{registerProducer(transportSide, True)}, C{write()} each chunk,
    then C{finish()} after exactly C{size} bytes (plus the trailer, if
    any), or C{abort()} when the connection drops.  Writes after a worker
    failure (disk full) are discarded, so the protocol can still consume the
    rest of the body and get the error from C{finish()}.

    A resumable upload's C{abort()} keeps its content (L{Suspended}, see
    the module docstring); L{cut} does the same for another connection that
    continues it.

    @param parent_dir: the directory holding the blob's shard directory
        (fsynced when the shard directory is new).
    @param on_settled: called on the reactor thread with the blob id and
        whether the blob was stored, once the upload is over either way.
    @param reactor: provides C{IReactorTime} and C{IReactorFromThreads}.
    @param trailer: the content is followed by L{TRAILER} bytes, the hex
        SHA-256 it must match (C{sha256=trailer}).
    @ivar size: content bytes expected from the client (a resumed upload's
        kept bytes excluded).
    @ivar received: content bytes accepted so far.
    @ivar outcome: once settled: a L{StoredBlob}, a L{Suspended}, a
        L{Failure}, or None (aborted).
    """

    log = Logger()

    def __init__(
        self,
        writer: BlobWriter,
        expected_sha256: str | None,
        reactor: Any,
        pool: ThreadPool,
        high_water: int,
        parent_dir: str,
        on_settled: Callable[[str, bool], object],
        trailer: bool = False,
    ):
        self.blob_id = writer.blob_id
        self.size = writer.size - writer.count
        self.received = 0
        self.trailer_size = TRAILER if trailer else 0
        self._trailer = bytearray()
        self._cut = False
        self._finishing = False
        self._parent_dir = parent_dir
        self._on_settled = on_settled
        self._writer = writer
        self._expected = expected_sha256
        self._reactor = reactor
        self._pool = pool
        self._high = high_water
        self._low = high_water // 2
        self._lock = threading.Lock()
        # guarded by _lock:
        self._queue: deque[bytes] = deque()
        self._queued = 0  # bytes queued or being written
        self._running = False  # a worker job owns the writer
        self._state = "open"  # open -> finishing | aborting | suspending -> done
        self._paused = False
        self._resume_pending = False
        # worker-owned until settled:
        self._error: Failure | None = None
        # reactor-only:
        self._overflow = False
        self._producer: Any = None  # a push (streaming) or pull producer
        self._streaming = True
        self._pull_call: IDelayedCall | None = None
        self._outcome: StoredBlob | Suspended | Failure | None = None
        self._settled = False
        self._waiters: list[Deferred[None]] = []

    # IConsumer

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._producer = producer
        self._streaming = bool(streaming)
        if not streaming:
            self._want_more()

    def unregisterProducer(self) -> None:
        """Forget the producer, resuming it first if the sink had paused it:
        the sink never leaves a socket paused behind it (the same happens in
        L{finish} and L{abort})."""
        producer, self._producer = self._producer, None
        if self._pull_call is not None and self._pull_call.active():
            self._pull_call.cancel()
        self._pull_call = None
        with self._lock:
            was_paused, self._paused = self._paused, False
        if producer is not None and self._streaming and was_paused:
            producer.resumeProducing()

    def write(self, data: bytes) -> None:
        if self._state != "open" or not data:
            return
        room = self.size - self.received
        if len(data) > room:
            extra = data[room:]
            data = data[:room]
            take = self.trailer_size - len(self._trailer)
            self._trailer += extra[:take]
            if len(extra) > take:
                self._overflow = True
        self.received += len(data)
        if not data or self._error is not None:
            return
        chunk = bytes(data)
        with self._lock:
            self._queue.append(chunk)
            self._queued += len(chunk)
            start = not self._running
            self._running = True
            pause = not self._paused and self._queued > self._high
            if pause:
                self._paused = True
        if start:
            self._pool.callInThread(self._work)
        if pause:
            if self._producer is not None and self._streaming:
                self._producer.pauseProducing()
        elif not self._streaming:
            self._want_more()

    # flow control (reactor thread)

    def _want_more(self) -> None:
        if self._producer is None or self._state != "open":
            return
        if self._streaming:
            self._producer.resumeProducing()
        elif self._pull_call is None or not self._pull_call.active():
            self._pull_call = self._reactor.callLater(0, self._pull)

    def _pull(self) -> None:
        self._pull_call = None
        if self._producer is not None and not self._paused and self._state == "open":
            self._producer.resumeProducing()

    def _resume(self) -> None:
        with self._lock:
            self._resume_pending = False
            if not self._paused or self._queued > self._low:
                return
            self._paused = False
        self._want_more()

    # the worker

    def _work(self) -> None:
        """Drain the queue; when finishing/aborting and drained, settle."""
        while True:
            with self._lock:
                if self._queue:
                    # Take what is queued (up to WRITE_BATCH bytes): one
                    # writev for many socket reads.
                    chunks, taken = [], 0
                    while self._queue and taken < WRITE_BATCH:
                        chunk = self._queue.popleft()
                        chunks.append(chunk)
                        taken += len(chunk)
                    final = None
                else:
                    final = self._state
                    if final == "open":
                        self._running = False
                        return
            if final is not None:
                break
            if self._error is None:
                try:
                    self._writer.write_many(chunks)
                except Exception:
                    self._error = Failure()
            with self._lock:
                self._queued -= taken
                wake = self._paused and not self._resume_pending and self._queued <= self._low
                if wake:
                    self._resume_pending = True
            if wake:
                self._reactor.callFromThread(self._resume)
        if final == "aborting" or self._error is not None:
            self._writer.discard()
            outcome: Any = self._error
        elif final == "suspending":
            try:
                outcome = self._writer.suspend()
            except Exception:
                outcome = Failure()
        else:
            try:
                outcome = self._writer.finalize(self._expected, self._parent_dir)
            except Exception:
                outcome = Failure()
        self._reactor.callFromThread(self._settle, outcome)

    def _enter(self, state: str) -> None:
        with self._lock:
            self._state = state
            start = not self._running
            self._running = True
        if start:
            self._pool.callInThread(self._work)

    def _settle(self, outcome: StoredBlob | Suspended | Failure | None) -> None:
        with self._lock:
            self._state = "done"
            self._running = False
        if isinstance(outcome, Failure):
            outcome.cleanFailure()
            if not outcome.check(IntegrityFailure, InsufficientStorage):
                self.log.failure("upload {blob} failed", outcome, blob=self.blob_id)
        self._settled = True
        self._outcome = outcome
        self._on_settled(self.blob_id, isinstance(outcome, StoredBlob))
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def _when_settled(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self._settled:
            d.callback(None)
        else:
            self._waiters.append(d)
        return d

    # the caller's side

    def settled(self) -> Deferred[None]:
        """A Deferred fired (with None) once the upload is over, either way
        (see L{outcome})."""
        return self._when_settled()

    @property
    def outcome(self) -> StoredBlob | Suspended | Failure | None:
        return self._outcome

    @property
    def resumable(self) -> bool:
        return self._writer.resumable

    @property
    def finishing(self) -> bool:
        """Whether the last byte is in (the upload can no longer be cut)."""
        return self._finishing

    @property
    def kept_so_far(self) -> int:
        """
        Plaintext bytes a resumable upload would keep if cut now, at least:
        what is received (an encrypted one keeps whole sealed chunks only,
        and a chunk is sealed once a byte beyond it is in).
        """
        total = self._writer.count_at_start + self.received
        enc = self._writer.encryption
        if enc is None:
            return total
        return max(0, (total - 1) // enc.chunk_size) * enc.chunk_size

    @property
    def queued(self) -> int:
        """Bytes received and not yet on disk (bounded by about C{high_water})."""
        return self._queued

    @property
    def paused(self) -> bool:
        """Whether the sink has asked its producer to pause."""
        return self._paused

    @deferred
    async def finish(self) -> StoredBlob:
        """
        Complete the upload after exactly C{size} bytes.

        @return: Deferred[L{StoredBlob}], fired once the blob is durable in
            C{blobs/}; fails with L{IntegrityFailure} (554) on a size or
            checksum mismatch, L{InsufficientStorage} (452) on a full disk.
        """
        if self._state != "open":
            if self._cut:
                raise Conflict("this upload was continued by another connection")
            raise RuntimeError("finish() after finish() or abort()")
        self._finishing = True
        self.unregisterProducer()
        if self.received != self.size or self._overflow or len(self._trailer) != self.trailer_size:
            got, size = self.received, self.size
            self._enter("aborting")
            await self._when_settled()
            raise IntegrityFailure("size mismatch: received %d of %d bytes" % (got, size))
        if self.trailer_size:
            try:
                self._expected = check_sha256(bytes(self._trailer).decode("ascii"))
            except (UnicodeDecodeError, BadArguments):
                self._enter("aborting")
                await self._when_settled()
                raise BadArguments("the sha256 trailer must be 64 hex digits") from None
        self._enter("finishing")
        await self._when_settled()
        outcome = self._outcome
        if isinstance(outcome, Failure):
            outcome.raiseException()
        assert isinstance(outcome, StoredBlob)  # settled while finishing: stored or failed
        return outcome

    def abort(self) -> Deferred[None]:
        """
        The connection dropped: remove the temporary file, or, for a
        resumable upload, keep what arrived (L{Suspended}).

        After C{finish()} this changes nothing (the last byte is in; the
        upload completes).  @return: Deferred[None] fired when settled.
        """
        self.unregisterProducer()
        if self._state == "open":
            self.log.info(
                "upload {blob} {what} after {received} of {size} bytes",
                blob=self.blob_id,
                what="suspended" if self.resumable else "aborted",
                received=self.received,
                size=self.size,
            )
            self._enter("suspending" if self.resumable else "aborting")
        return self._when_settled()

    def cut(self) -> Deferred[None]:
        """
        Another connection continues this resumable upload: stop reading
        this one (its connection is closed; a C{finish()} that still comes
        fails with C{555}) and keep what arrived.
        @return: Deferred[None] fired when settled.
        """
        producer = self._producer
        if self._state == "open":
            self._cut = True
        d = self.abort()
        if producer is not None:
            producer.stopProducing()
        return d
