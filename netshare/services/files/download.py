"""
The download side of the blob store.

L{BlobStore.open_download} opens the blob and returns a L{BlobReader}, a
pull producer like Twisted's C{FileSender} but with 256 KiB reads (16 KiB
reads, FileSender's, were measured 1.8x slower; C{bench/file_transfer.py}
measures downloads), starting at C{offset}.  It reads on the
reactor thread only what the page cache holds (checked without blocking);
otherwise a worker has the kernel read it in first, so a cold disk never
stalls the reactor.  Deleting or
replacing a file removes the database row first and unlinks the old blob
afterwards.  A download already in flight keeps its open file descriptor,
and on POSIX an unlinked file stays readable through an open descriptor
until it is closed: so an in-flight download finishes on the old content
whole, and the space is freed when the last reader closes.  We rely on that
instead of reference-counting readers (this would not hold on Windows,
which netshare does not support as a server platform).
"""

from __future__ import annotations

import os
import threading

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPullProducer, IReactorFromThreads
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from netshare.errors import IntegrityFailure
from netshare.services.files.crypto import TAG_SIZE, BlobHeader, open_chunk
from netshare.services.files.disk import RWF_NOWAIT, fadvise

KiB = 1024
READ_CHUNK = 256 * KiB  # download read size (see the module docstring)


class DownloadStopped(Exception):
    """The consumer stopped the transfer (the connection went away)."""


@implementer(IPullProducer)
class BlobReader:
    """
    Stream a blob (or its decryption) from C{offset} to a consumer: a pull
    producer like C{twisted.protocols.basic.FileSender}, with 256 KiB reads
    (see the module docstring).

    Every read happens in C{resumeProducing}; with a C{pool} (what
    L{BlobStore.open_download} gives) only once the page cache holds the
    piece, so the reactor thread never waits for the disk.  Before each
    read a one-byte C{preadv(RWF_NOWAIT)} of the piece's last byte (which
    never blocks) says whether it is cached, as it almost always is: the
    file was just read or written, or the kernel's read-ahead (widened with
    C{POSIX_FADV_SEQUENTIAL}) is ahead of us.  When it is not (a cold disk,
    or an upload just written behind, L{WriteBehind}), a job in the pool
    reads one byte at the current offset, which blocks that worker (not the
    reactor) until the kernel has read the piece in and restarted its
    read-ahead; then the reactor reads it (about 30 such waits per GiB
    here).  The worker only waits: the bytes never cross threads, so there
    is no buffer to bound and no lock on the data path.  Where
    C{RWF_NOWAIT} does not exist (or without a pool) reads simply happen in
    C{resumeProducing}, as in FileSender.

    @ivar remaining: plaintext bytes still to send; before the transfer it is
        the count for the C{150} line.
    @ivar size: the whole file's plaintext size.
    """

    def __init__(
        self,
        fd: int,
        size: int,
        offset: int,
        read_size: int = READ_CHUNK,
        key: bytes | None = None,
        header: BlobHeader | None = None,
        pool: ThreadPool | None = None,
        reactor: IReactorFromThreads | None = None,
    ):
        self._fd = fd
        self.size = size
        self.offset = offset
        self.remaining = size - offset
        self.sent = 0
        self._read_size = read_size
        self.consumer: IConsumer | None = None
        self.deferred: Deferred[int] | None = None
        self._header = header
        if header is not None:
            if key is None:
                raise ValueError("an encrypted blob needs its key")
            self._aead = AESGCM(key)
            self._header_bytes = header.pack()
            self._index = offset // header.chunk_size
            self._skip = offset - self._index * header.chunk_size
            if self.remaining == 0:
                self._index = header.chunks
            pos = header.cipher_offset(self._index)
        else:
            pos = offset
        os.lseek(fd, pos, os.SEEK_SET)
        if fadvise is not None and self.remaining:
            fadvise(fd, pos, 0, os.POSIX_FADV_SEQUENTIAL)  # a wider kernel read-ahead
        self._pos = pos  # file offset of the next read
        self._probe = bytearray(1)
        # Workers wait for the disk only where a probe can tell and where
        # the reactor can be woken; otherwise reads happen as in FileSender.
        self._pool = pool if RWF_NOWAIT is not None and reactor is not None else None
        self._reactor = reactor
        self._lock = threading.Lock()
        # guarded by _lock (a waiting worker job uses the descriptor):
        self._waiting = False
        self._closing = False
        self._fd_closed = False

    def limit(self, count: int) -> None:
        """Send only C{count} bytes from the offset (an HTTP range), not
        the rest of the file; before the transfer starts."""
        if self.sent or not 0 <= count <= self.size - self.offset:
            raise ValueError("limit %d from offset %d of %d" % (count, self.offset, self.size))
        self.remaining = count

    def kernelSource(self) -> tuple[int, int, int] | None:
        """
        C{(fd, offset, count)} when the bytes to send are the file's own
        (an unprotected blob), so the connection may have the kernel copy
        them (L{netshare.protocols.sendfile}) instead of calling
        L{beginFileTransfer}; the caller then calls L{close} once done.
        None for an encrypted blob or nothing to send.
        """
        if self._header is not None or self.remaining <= 0:
            return None
        return self._fd, self._pos, self.remaining

    def beginFileTransfer(self, consumer: IConsumer) -> Deferred[int]:
        """
        @return: Deferred firing with the number of bytes sent once the last
            byte was written to C{consumer}; fails with L{IntegrityFailure} on
            a damaged or tampered blob (the caller must then drop the
            connection: fewer bytes than announced were sent), or with
            L{DownloadStopped} when the consumer stops it.
        """
        self.consumer = consumer
        d: Deferred[int] = Deferred()
        self.deferred = d
        consumer.registerProducer(self, False)
        return d

    # reading

    def _read(self, n: int) -> bytes:
        parts = []
        while n > 0:
            data = os.read(self._fd, n)
            if not data:
                raise IntegrityFailure("stored file is truncated")
            parts.append(data)
            n -= len(data)
            self._pos += len(data)
        return b"".join(parts)

    def _next_span(self) -> int:
        """How many file bytes the next L{_next} reads."""
        if self._header is None:
            return min(self._read_size, self.remaining)
        h = self._header
        last = min(h.chunks, self._index + max(1, self._read_size // h.chunk_size))
        return sum(h.plain_len(i) + TAG_SIZE for i in range(self._index, last))

    def _cached(self, span: int) -> bool:
        """Is the piece of C{span} bytes at the current offset in the page
        cache?  Never blocks."""
        if span <= 0 or RWF_NOWAIT is None:
            return True
        try:
            return os.preadv(self._fd, [self._probe], self._pos + span - 1, RWF_NOWAIT) == 1
        except BlockingIOError:
            return False
        except OSError:
            self._pool = None  # not supported here: read like FileSender
            return True

    def _next(self) -> bytes:
        """The next piece of plaintext (at most C{remaining} bytes)."""
        if self._header is None:
            return self._read(min(self._read_size, self.remaining))
        h = self._header
        per_read = max(1, self._read_size // h.chunk_size)
        plain = []
        for _ in range(per_read):
            if self._index >= h.chunks:
                break
            sealed = self._read(h.plain_len(self._index) + TAG_SIZE)
            plain.append(open_chunk(self._aead, h, self._header_bytes, self._index, sealed))
            self._index += 1
        data = b"".join(plain)
        if self._skip:
            data = data[self._skip :]
            self._skip = 0
        return data[: self.remaining]

    def _await_pages(self, pos: int) -> None:
        """Worker: wait until the kernel has read in the piece at C{pos}
        (and started reading ahead); then wake the reactor side."""
        with self._lock:
            closing = self._closing
        if not closing:
            try:
                os.pread(self._fd, 1, pos)  # blocks until it is read in
            except OSError:
                pass  # the real read will say
        with self._lock:
            self._waiting = False
            if self._closing:
                self._close_fd_locked()
                return
        assert self._reactor is not None  # a pool is used only with a reactor
        self._reactor.callFromThread(self._wake)

    # the consumer's side (reactor thread)

    def _wake(self) -> None:
        if self.consumer is not None:
            self.resumeProducing()

    def resumeProducing(self) -> None:
        if self.consumer is None or self.deferred is None or self._waiting:
            return
        if self.remaining > 0:
            if self._pool is not None:
                span = self._next_span()
                if not self._cached(span):
                    with self._lock:
                        self._waiting = True
                    self._pool.callInThread(self._await_pages, self._pos)
                    return
            try:
                data = self._next()
                if not data:
                    raise IntegrityFailure("stored file ended early")
            except Exception:
                self._end(Failure())
                return
            self.remaining -= len(data)
            self.sent += len(data)
            self.consumer.write(data)
        if self.remaining <= 0 and self.deferred is not None:
            self._end(None)

    def pauseProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        d, self.deferred = self.deferred, None
        self.consumer = None
        self._close()
        if d is not None:
            d.errback(DownloadStopped("consumer stopped the transfer"))

    def _close_fd_locked(self) -> None:
        if not self._fd_closed:
            self._fd_closed = True
            os.close(self._fd)

    def _close(self) -> None:
        """Close the file now, or let the waiting worker job close it."""
        with self._lock:
            self._closing = True
            if not self._waiting:
                self._close_fd_locked()

    def _end(self, failure: Failure | None) -> None:
        self._close()
        consumer, self.consumer = self.consumer, None
        if consumer is not None:
            consumer.unregisterProducer()
        d, self.deferred = self.deferred, None
        if d is None:
            return
        if failure is None:
            d.callback(self.sent)
        else:
            d.errback(failure)

    def close(self) -> None:
        """Release the file when the transfer will not be started after all
        (or is over: then this changes nothing)."""
        self._close()
