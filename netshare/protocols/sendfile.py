"""
Downloads at the speed of the kernel: C{os.sendfile} from a blob file to a
plain TCP connection, in a worker thread.

A download of an unprotected file sends the file's own bytes, so they need
not pass through Python at all: C{sendfile(2)} copies them from the page
cache to the socket inside the kernel.  L{KernelCopy} does that for a
connection whose transport is plain TCP (TLS must encrypt in user space;
a password-protected file must be decrypted: both keep the producer of
L{netshare.services.files.download}).

How it fits Twisted's flow control without touching the transport's
internals: L{KernelCopy} registers as a pull producer.  The transport calls
C{resumeProducing} once when it registers (ignored: the C{150} line written
just before is still in the transport's buffer) and again once that buffer
has been written out; from then on nothing else writes to the connection
(the command in progress is the download, and the receiver reads no further
command), so a worker thread owns the socket's sending side until the last
byte.  The worker uses its own duplicate of the socket's descriptor, so a
connection closed meanwhile cannot make it write to a reused descriptor; it
waits for room with C{poll} (never blocking the reactor), reports progress
to the reactor thread every chunk (byte counts and the stall timer), and
stops within C{POLL_WAIT} when the connection goes away.
"""

from __future__ import annotations

import os
import select
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IPullProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from netshare.errors import IntegrityFailure

#: Bytes per sendfile call: progress is reported (and a stop noticed) at
#: least this often.
CHUNK = 8 * 2**20
#: Seconds a worker waits for room in the socket before checking for a stop.
POLL_WAIT = 0.1


class CopyStopped(Exception):
    """The connection went away during the copy."""


@implementer(IPullProducer)
class KernelCopy:
    """
    Copy C{count} bytes of file C{fd} from C{offset} to C{transport}'s
    socket; see the module docstring.

    @param release: called (in the reactor thread) once the worker no
        longer uses C{fd}, whatever the outcome: the owner closes it then.
    @param wrote: called with each chunk's byte count.
    """

    #: Copies running at once, at most (each holds a thread of the
    #: reactor's pool for its duration); beyond it downloads use the
    #: producer path.
    MAX_RUNNING = 8
    running = 0

    def __init__(
        self,
        transport: Any,
        reactor: Any,
        fd: int,
        offset: int,
        count: int,
        release: Callable[[], object],
        wrote: Callable[[int], None],
    ) -> None:
        self.transport = transport
        self.reactor = reactor
        self.fd = fd
        self.offset = offset
        self.count = count
        self.release = release
        self.wrote = wrote
        self.sent = 0
        self._registering = False
        self._started = False
        self._stop = False
        self._done: defer.Deferred[int] | None = None

    @classmethod
    def available(cls) -> bool:
        return hasattr(os, "sendfile") and cls.running < cls.MAX_RUNNING

    def start(self) -> defer.Deferred[int]:
        """@return: fires with the bytes sent, or fails (L{CopyStopped},
        L{IntegrityFailure}, an C{OSError} of the socket)."""
        done = self._done = defer.Deferred()
        KernelCopy.running += 1
        self._registering = True
        try:
            # (A transport already gone calls stopProducing at once: done
            # has then failed with CopyStopped already.)
            self.transport.registerProducer(self, False)
        finally:
            self._registering = False
        return done

    # -- the transport's side (reactor thread)

    def resumeProducing(self) -> None:
        if self._registering or self._started or self._stop:
            return  # (the first call: the 150 line is still buffered)
        self._started = True
        try:
            sock = os.dup(self.transport.fileno())
        except OSError:
            self._finished(0, Failure())
            return
        self.reactor.callInThread(self._copy, sock)

    def pauseProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        """The connection is going away: the worker stops at its next check."""
        self._stop = True
        if not self._started:
            self._started = True
            self._finished(0, None)

    # -- the worker

    def _copy(self, sock: int) -> None:
        sent = 0
        failure = None
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        try:
            while sent < self.count and not self._stop:
                try:
                    n = os.sendfile(
                        sock, self.fd, self.offset + sent, min(CHUNK, self.count - sent)
                    )
                except BlockingIOError:
                    poller.poll(int(POLL_WAIT * 1000))
                    continue
                if n == 0:
                    raise IntegrityFailure("stored file ended early")
                sent += n
                self.reactor.callFromThread(self._progress, n)
        except (BrokenPipeError, ConnectionResetError):
            self._stop = True  # the client hung up: reported as CopyStopped
        except Exception:
            failure = Failure()
        finally:
            os.close(sock)
        self.reactor.callFromThread(self._finished, sent, failure)

    # -- back in the reactor thread

    def _progress(self, n: int) -> None:
        self.sent += n
        self.wrote(n)

    def _finished(self, sent: int, failure: Failure | None) -> None:
        KernelCopy.running -= 1
        try:
            self.transport.unregisterProducer()
        except Exception:
            pass
        self.release()
        d, self._done = self._done, None
        if d is None:
            return
        if sent >= self.count:
            # Every byte went out: a close that raced the end (the client
            # hung up once it had all it asked for) is not a failure.
            d.callback(sent)
        elif failure is not None:
            d.errback(failure)
        else:
            d.errback(CopyStopped("connection closed during the download"))
