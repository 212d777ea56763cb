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
"""

import hashlib

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from netshare.errors import RateLimited


def scrypt(password: bytes, salt: bytes, n: int, r: int, p: int, length: int = 32) -> bytes:
    """Derive a key synchronously, releasing the GIL meanwhile (call only
    from a worker thread, or from a program without a reactor)."""
    # OpenSSL refuses to use more than maxmem (default 32 MiB): allow exactly
    # what these parameters need (128*r*(N+2) + 128*r*p bytes) plus slack.
    maxmem = 128 * r * (n + 2) + 128 * r * p + 2**16
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=length)


class KDFPool:
    """
    Run scrypt derivations in at most C{threads} threads, with at most
    C{maxQueued} derivations waiting.

    @ivar pending: derivations accepted and not yet finished (running or queued).
    """

    log = Logger()

    def __init__(self, threads: int = 2, maxQueued: int = 64, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._threads = max(1, threads)
        self.maxQueued = maxQueued
        self._pool = ThreadPool(minthreads=0, maxthreads=self._threads, name="netshare-kdf")
        self.pending = 0
        self.started = False

    def start(self):
        if not self.started:
            self._pool.start()
            self.started = True

    def stop(self):
        if self.started:
            self.started = False
            self._pool.stop()

    def derive(self, password: bytes, salt: bytes, n: int, r: int, p: int, length: int = 32):
        """
        @return: a Deferred firing with the derived key, or failing with
            L{RateLimited} when too many derivations are already waiting.
        """
        if self.pending >= self._threads + self.maxQueued:
            self.log.warn("kdf queue full ({pending} pending): refusing", pending=self.pending)
            return defer.fail(RateLimited("server busy; try later"))
        self.start()
        self.pending += 1
        d = deferToThreadPool(self._reactor, self._pool, scrypt, password, salt, n, r, p, length)

        def done(result):
            self.pending -= 1
            return result

        d.addBoth(done)
        return d
