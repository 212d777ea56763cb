"""
Password key derivation off the reactor, in a small bounded pool.

scrypt deliberately costs memory and time (at the account defaults, N=2**17,
r=8, p=1: about 128 MiB and 0.3 s on this machine).  Running it on the reactor
thread would stall every connection; running it in an unbounded pool would let
a login storm exhaust memory.  So: a dedicated L{ThreadPool} of a few threads
and a bounded queue in front of it; past the bound, callers get C{429} at once
instead of queueing without limit.

A thread only helps if the derivation releases the GIL while it runs.
C{hashlib.scrypt} (OpenSSL's EVP_PBE_scrypt) does; cryptography's C{Scrypt}
(46.x) does not: with it, each derivation at N=2**17 froze the reactor for
its full 0.3 s although it ran in a worker thread.  Both compute the same
standard scrypt (RFC 7914), so stored hashes are unaffected.

The queue is fair between sources (a source is the client's address; the
callers pass it).  A single FIFO would let one address that opens 150
connections fill the whole bound, and a legitimate LOGIN from anywhere else
would get C{429} at once, or wait behind the entire backlog.  So each source
has a FIFO of its own, and the threads are fed round-robin across sources,
one derivation per turn, a free thread going first to the sources with the
fewest derivations running (so one source cannot hold every thread while
another waits): a source that just arrived is served after at most one
derivation of each source already waiting, however long their queues.
The ThreadPool is handed only as many derivations as it has threads (its
own queue is a single FIFO, so everything handed to it would be served in
arrival order).  And each source may have at most C{maxPerSource}
derivations pending, so a storm from one address fills its own share and
gets C{429} past it, while the total bound still protects memory against a
storm from many addresses.  Internal callers (no address: C{source=None},
e.g. the operator shell) form one source of their own, bounded only by the
total.
"""

import hashlib
from collections import deque
from collections.abc import Callable, Hashable

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from netshare.errors import RateLimited


def scrypt(password: bytes, salt: bytes, n: int, r: int, p: int, length: int = 32) -> bytes:
    """Derive a key synchronously, releasing the GIL meanwhile (call only
    from a worker thread, or from a program without a reactor)."""
    # OpenSSL refuses to use more than maxmem (default 32 MiB): allow exactly
    # what these parameters need (128*r*(N+2) + 128*r*p bytes) plus slack.
    maxmem = 128 * r * (n + 2) + 128 * r * p + 2**16
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=length)


class _Job:
    """One accepted derivation: who asked, what to compute, whom to tell."""

    __slots__ = ("source", "args", "deferred", "running")

    def __init__(
        self,
        source: Hashable,
        args: tuple[bytes, bytes, int, int, int, int],
        cancel: Callable[["_Job"], None],
    ):
        self.source = source
        self.args = args
        # Cancelling it (the caller gave up) calls cancel(job).
        self.deferred: Deferred[bytes] = Deferred(lambda _: cancel(self))
        self.running = False


class KDFPool:
    """
    Run scrypt derivations in at most C{threads} threads, with at most
    C{maxQueued} derivations waiting in all and at most C{maxPerSource}
    pending per source, served round-robin across sources.

    Everything here runs on the reactor thread except L{scrypt} itself.

    @ivar maxPerSource: derivations one source may have pending (waiting or
        running) before it gets C{429}; None: no per-source bound.
    @ivar refused: derivations refused with C{429} so far.
    """

    #: The key under which refusals for the total bound are logged.
    _TOTAL = object()

    log = Logger()

    def __init__(
        self, threads: int = 2, maxQueued: int = 64, maxPerSource: int | None = 8, reactor=None
    ):
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._threads = max(1, threads)
        self.maxQueued = maxQueued
        self.maxPerSource = maxPerSource
        self._pool = self._newThreadPool()
        self.started = False
        self._stopped = False
        # source -> deque of waiting _Jobs; only non-empty ones
        self._queues: dict[Hashable, deque[_Job]] = {}
        # the sources of _queues in line, the longest waiting first
        self._turns: deque[Hashable] = deque()
        # source -> pending (waiting + running); only non-zero ones
        self._perSource: dict[Hashable, int] = {}
        self._pending = 0
        self._running = 0
        # sources (or _TOTAL) refused and not yet given room again
        self._refusing: set[Hashable] = set()
        self.refused = 0

    def _newThreadPool(self):
        return ThreadPool(minthreads=0, maxthreads=self._threads, name="netshare-kdf")

    @property
    def pending(self) -> int:
        """Derivations accepted and not yet finished (running or waiting)."""
        return self._pending

    @property
    def sources(self) -> int:
        """Sources with at least one derivation pending."""
        return len(self._perSource)

    def start(self):
        """Start the threads (the first L{derive} does it too).  After
        L{stop}, this takes a new ThreadPool: a stopped one takes no work."""
        if self.started:
            return
        if self._pool is None:
            self._pool = self._newThreadPool()
        self._stopped = False
        self._pool.start()
        self.started = True

    def stop(self):
        """
        Refuse new derivations, fail the waiting ones with C{429} (no thread
        will run them; a caller would otherwise wait forever), and let the
        running ones finish: stopping the ThreadPool joins its threads, and
        their results reach their callers from the reactor afterwards.
        """
        self._stopped = True
        waiting = [job for source in self._turns for job in self._queues[source]]
        self._turns.clear()
        self._queues.clear()
        for job in waiting:
            self._release(job.source)
        if waiting:
            self.log.info("kdf stopping: {count} waiting derivations refused", count=len(waiting))
        for job in waiting:
            job.deferred.errback(RateLimited("server shutting down; try later"))
        if self.started:
            self.started = False
            pool, self._pool = self._pool, None
            pool.stop()

    def derive(
        self,
        password: bytes,
        salt: bytes,
        n: int,
        r: int,
        p: int,
        length: int = 32,
        source: Hashable = None,
    ) -> "Deferred[bytes]":
        """
        @param source: who asks, a hashable key: the client's address; None
            for an internal caller.  Derivations are shared fairly between
            sources, and bounded per source (except None).
        @return: a Deferred firing with the derived key, or failing with
            L{RateLimited} at once when too many derivations are already
            pending, in all or for this source, or when the pool is stopped.
            Cancelling it while the derivation waits frees its place.
        """
        if self._stopped:
            return defer.fail(RateLimited("server shutting down; try later"))
        if self._pending >= self._threads + self.maxQueued:
            return self._refuse(
                self._TOTAL,
                "kdf queue full ({pending} pending): refusing until one ends",
                pending=self._pending,
            )
        mine = self._perSource.get(source, 0)
        if source is not None and self.maxPerSource is not None and mine >= self.maxPerSource:
            return self._refuse(
                source,
                "kdf: {source} has {mine} derivations pending: refusing it until one ends",
                source=source,
                mine=mine,
            )
        self.start()
        job = _Job(source, (password, salt, n, r, p, length), self._cancel)
        self._perSource[source] = mine + 1
        self._pending += 1
        queue = self._queues.get(source)
        if queue is None:
            # A new turn, after every source already waiting.
            queue = self._queues[source] = deque()
            self._turns.append(source)
        queue.append(job)
        self._dispatch()
        return job.deferred

    def _refuse(self, key: Hashable, message: str, **fields: object) -> "Deferred[bytes]":
        """C{429} at once.  Logged once until the bound has room again, not
        once per refusal: a storm would otherwise flood the log."""
        self.refused += 1
        if key not in self._refusing:
            self._refusing.add(key)
            self.log.warn(message, **fields)
        return defer.fail(RateLimited("server busy; try later"))

    def _dispatch(self):
        """Hand waiting derivations to free threads, one per turn: to the
        first source in line among those with the fewest running, which then
        goes to the back of the line if it has more waiting."""
        while self._running < self._threads and self._turns:
            source = min(self._turns, key=self._runningFor)  # the first of the least served
            self._turns.remove(source)
            queue = self._queues[source]
            job = queue.popleft()
            if queue:
                self._turns.append(source)
            else:
                del self._queues[source]
            job.running = True
            self._running += 1
            # The module's scrypt looked up now, so that it can be swapped (tests, bench).
            d = deferToThreadPool(self._reactor, self._pool, scrypt, *job.args)
            d.addBoth(self._finished, job)

    def _runningFor(self, source):
        return self._perSource[source] - len(self._queues[source])

    def _finished(self, result, job):
        self._running -= 1
        self._release(job.source)
        self._dispatch()  # keep the threads busy before anyone's callbacks run
        if not job.deferred.called:  # else cancelled while running: nobody waits
            if isinstance(result, Failure):
                job.deferred.errback(result)
            else:
                job.deferred.callback(result)

    def _cancel(self, job):
        """The caller gave up (a timeout, a lost connection): a waiting
        derivation leaves its queue and frees its place.  A running one
        cannot be interrupted; it keeps its place until it ends."""
        if job.running:
            return
        queue = self._queues[job.source]
        queue.remove(job)
        if not queue:
            del self._queues[job.source]
            self._turns.remove(job.source)
        self._release(job.source)

    def _release(self, source):
        self._pending -= 1
        if self._refusing:
            self._refusing.discard(source)
            self._refusing.discard(self._TOTAL)
        left = self._perSource[source] - 1
        if left:
            self._perSource[source] = left
        else:
            del self._perSource[source]
