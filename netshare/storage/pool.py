"""
The one way netshare talks to its database: L{DBPool.run}.

Every database call runs in a dedicated L{ThreadPool} (never the reactor's
shared pool, never the reactor thread), inside one transaction, and hands
back plain data.  Transient failures (SQLite busy, a lost or refused server
connection, a deadlock) are retried in the worker with a short bounded
backoff; when the database stays unreachable the caller gets
L{DatabaseUnavailable} (a C{451} reply) within a few seconds instead of a
hang, and the next call tries again, so service resumes by itself when the
database comes back.

A write can carry its request-history entry (C{journal=}): the entry is
inserted in the write's own transaction, so an acknowledged write and the
record of it survive a crash together or not at all.
"""

import time

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import CursorResult, Result, Row

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from netshare.errors import DatabaseUnavailable, NetshareError
from netshare.storage.schema import history

# Total time a call may spend retrying a transient error before giving up.
DEFAULT_RETRY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.5)


def is_transient(error: BaseException) -> bool:
    """Is this a failure worth retrying (the same transaction may succeed)?"""
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, (sa_exc.OperationalError, sa_exc.InterfaceError,
                              sa_exc.TimeoutError))


class DBPool:
    """
    A dedicated thread pool running database transactions.

    @ivar active: calls currently running in a worker.
    @ivar queued: calls waiting for a worker.
    @ivar calls: calls completed since start (for statistics).
    """

    log = Logger()

    def __init__(self, engine, threads: int | None = None, reactor=None,
                 retry_delays=DEFAULT_RETRY_DELAYS, call_timeout: float | None = None):
        if reactor is None:
            from twisted.internet import reactor
        self.engine = engine
        self._reactor = reactor
        self.threads = threads or getattr(engine, "optimal_thread_pool_size", 1)
        self._pool = ThreadPool(minthreads=1, maxthreads=self.threads, name="netshare-db")
        self.retry_delays = tuple(retry_delays)
        self.call_timeout = call_timeout
        self.timeouts = 0
        self._inflight = set()
        self.active = 0
        self.calls = 0
        self.failures = 0
        self.running = False
        self.stopping = False

    @property
    def queued(self) -> int:
        return max(0, len(self._inflight) - self.active)

    def start(self):
        if not self.running:
            self._pool.start()
            self.running = True

    def run(self, fn, *args, journal=None, **kwargs):
        """
        Run C{fn(conn, *args, **kwargs)} in a worker, in one transaction.

        @param journal: a request-history row (or a list of them) to insert
            in the same transaction, after C{fn} succeeded.
        @return: a Deferred firing with fn's result (plain data), or failing
            with the L{NetshareError} fn raised, or L{DatabaseUnavailable}.
        """
        if self.stopping or not self.running:
            return defer.fail(DatabaseUnavailable("database pool is stopped"))
        d = deferToThreadPool(self._reactor, self._pool, self._thd_call, fn, args, kwargs,
                              journal)
        self._inflight.add(d)

        def done(result):
            self._inflight.discard(d)
            self.calls += 1
            return result

        d.addBoth(done)
        if self.call_timeout:
            # A connection whose peer silently vanished can block a driver
            # call for minutes.  The caller gets 451 at the deadline; the
            # worker finishes (or fails) on its own and its result is dropped.
            d.addTimeout(self.call_timeout, self._reactor, onTimeoutCancel=self._timedOut)
        return d

    def _timedOut(self, result, timeout):
        self.timeouts += 1
        self.log.error("database call exceeded {timeout}s: answering 451", timeout=timeout)
        return Failure(DatabaseUnavailable("database not answering; try later"))

    def _thd_call(self, fn, args, kwargs, journal=None):
        delays = iter(self.retry_delays)
        while True:
            self.active += 1
            try:
                with self.engine.begin() as conn:
                    result = fn(conn, *args, **kwargs)
                    if journal:
                        conn.execute(history.insert(),
                                     journal if isinstance(journal, list) else [journal])
                assert not isinstance(result, (Result, CursorResult, Row)), (
                    "%r returned a %s: build plain data inside the thread" % (fn, type(result)))
                return result
            except NetshareError:
                raise
            except Exception as e:
                if not is_transient(e):
                    raise
                delay = next(delays, None)
                if delay is None or self.stopping:
                    self.failures += 1
                    self.log.error("database unavailable after retries: {error}",
                                   error=_short(e), function=getattr(fn, "__name__", repr(fn)))
                    raise DatabaseUnavailable() from e
                self.log.warn("transient database error, retrying in {delay}s: {error}",
                              delay=delay, error=_short(e))
                time.sleep(delay)
            finally:
                self.active -= 1

    @defer.inlineCallbacks
    def stop(self):
        """Refuse new calls, let in-flight calls finish, dispose the engine
        in a worker, then stop the threads."""
        if not self.running:
            return
        self.stopping = True
        if self._inflight:
            yield defer.DeferredList(list(self._inflight), consumeErrors=True)
        yield deferToThreadPool(self._reactor, self._pool, self.engine.dispose)
        self._pool.stop()
        self.running = False

    def stats(self) -> dict:
        return {"threads": self.threads, "active": self.active, "queued": self.queued,
                "calls": self.calls, "failures": self.failures, "timeouts": self.timeouts}


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else error.__class__.__name__
