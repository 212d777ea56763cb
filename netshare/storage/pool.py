"""
The one way netshare talks to its database: L{DBPool.run} and L{DBPool.write}.

Every database call runs in a dedicated L{ThreadPool} (never the reactor's
shared pool, never the reactor thread), inside one transaction, and hands
back plain data.  Transient failures (SQLite busy, a lost or refused server
connection, a deadlock) are retried in the worker with a short bounded
backoff; when the database stays unreachable the caller gets
L{DatabaseUnavailable} (a C{451} reply) within a few seconds instead of a
hang, and the next call tries again, so service resumes by itself when the
database comes back.

Writes and the COMMIT whose answer is lost
==========================================

Retrying a transaction is right when it failed before its C{COMMIT} was
sent, and wrong after: when the connection drops between the server
receiving C{COMMIT} and us reading its answer, the transaction may well have
committed, and running it again is not the same operation (a second INSERT
meets the first one's row; a second SEND queues everything twice).  So a
write (L{DBPool.write}) carries an
identity: a random id the transaction itself stores in C{write_marks}.  When
the C{COMMIT} fails in a way that leaves its outcome unknown, the write is
I{in doubt}, and it is resolved, not re-run:

 - on a fresh connection the pool tries to insert the same id into
   C{write_marks}.  A duplicate-key error means the write committed: the
   caller gets its result.  If the insert goes in, the write did not commit
   (had its transaction still been in flight, the insert would have waited
   for it on the key's lock, a bounded wait): the probe is rolled back and
   the write is run once more, under a new id;
 - a call whose deadline (C{call_timeout}) passes while it is still
   running is abandoned: the worker rolls it back instead of committing, so
   C{451 database not answering} is the truth;
 - a call whose deadline passes while its C{COMMIT} is in flight or being
   resolved gets as long again to settle; if it still has not, the caller
   gets L{OutcomeUnknown} (C{451 outcome unknown; ...}), whose C{settled()}
   gives a Deferred of the write's result (or its failure) once the worker
   knows.  Callers that own something outside the database (a blob) keep
   it until then.

The ids are pruned after an hour (a write is resolved within seconds).

Group commit
============

A durable write costs one COMMIT, and on SQLite with C{synchronous=full}
(or PostgreSQL with C{synchronous_commit=on}) a COMMIT is an fsync: a few
milliseconds that do not grow with what the transaction wrote.  So writes
are committed in groups, the way PostgreSQL's WAL flush and Redis's
C{appendfsync always} do it, and without a timer: when a write arrives and
no group is being committed, a group of that one write starts at once;
every write that arrives while a group is in flight waits for the next one,
which starts the moment the previous one is answered.  Idle, a write costs
exactly one commit; under load, one commit carries everything that arrived
during the last (up to L{MAX_GROUP} writes).

Each write of a group runs in a SAVEPOINT of the group's transaction, so
one refused write (a L{NetshareError}, a constraint it did not expect) is
rolled back alone and answered alone, and the others commit; a failure of
the transaction itself (the connection, a deadlock, a full disk) is every
write's, retried or answered together.  A group is one write as far as the
in-doubt rules above go: one id, resolved once.  A group of one runs
without a savepoint, exactly as a write did before groups existed.

A write can carry its request-history entry: the stores wrap their function
with L{netshare.storage.history.journaled}, which inserts the entry in the
write's own transaction, so an acknowledged write and the record of it
survive a crash together or not at all.

Typing: L{DBPool.run} and L{DBPool.write} take C{fn} and the arguments of
C{fn} after its connection (a C{ParamSpec}), so C{pool.run(fn, *args)} is
checked against C{fn(conn, *args)} and gives a C{Deferred} of what C{fn}
returns.  They take no options of their own for that reason: what varies
between calls is the method (C{run} or C{write}) or the function.
"""

import functools
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, CursorResult, Engine, Result, Row
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorFromThreads, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from netshare.deferreds import deferred
from netshare.errors import DatabaseUnavailable, InsufficientStorage, NetshareError, OutcomeUnknown
from netshare.stats import DB_CALL_BUCKETS, Histogram
from netshare.storage import plainsql
from netshare.storage.engine import worker_threads
from netshare.storage.schema import write_marks

P = ParamSpec("P")
T = TypeVar("T")

#: Total time a call may spend retrying a transient error before giving up.
DEFAULT_RETRY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.5)
#: How long a write's id is kept (its doubt is resolved within seconds).
MARK_TTL = 3600.0
#: Seconds a probe may wait for the lock of an in-flight transaction.
PROBE_LOCK_WAIT = 5
#: The columns of a write's id row (see L{_insert_mark}).
_MARK_COLUMNS = ("id", "created_ms")


def _insert_mark(conn: Connection, wid: str) -> None:
    """The write's mark (plain SQL: once per write transaction)."""
    plainsql.run(conn, plainsql.insert_sql(conn, write_marks, _MARK_COLUMNS), (wid, _now_ms()))


#: Writes committed together, at most (a backlog is written in several
#: groups, never one huge transaction).
MAX_GROUP = 256


def is_transient(error: BaseException) -> bool:
    """Is this a failure worth retrying (the same transaction may succeed)?"""
    if is_disk_full(error):
        return False
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError))


#: How each database says its disk is full: SQLite's SQLITE_FULL, the SQLSTATE
#: of PostgreSQL's disk_full, MariaDB's "disk full" and "table is full".
_SQLITE_FULL = 13
_PG_DISK_FULL = "53100"
_MYSQL_DISK_FULL = (1021, 1114)


def is_disk_full(error: BaseException) -> bool:
    """The database cannot write for lack of space: a C{452}, at once (a
    retry only stalls the caller, and it is not an outage)."""
    orig = getattr(error, "orig", None)
    if orig is None:
        return False
    if getattr(orig, "sqlite_errorcode", None) == _SQLITE_FULL:
        return True
    if getattr(orig, "sqlstate", None) == _PG_DISK_FULL:
        return True
    args: tuple[object, ...] = getattr(orig, "args", ())
    return bool(args) and isinstance(args[0], int) and args[0] in _MYSQL_DISK_FULL


def _storage_error(error: Exception) -> None:
    """Re-raise a disk-full database error as the 452 it is; else do nothing."""
    if is_disk_full(error):
        raise InsufficientStorage("insufficient storage: the database disk is full") from error


# The phases of a call, as the worker moves it along.
QUEUED, RUNNING, COMMITTING, RESOLVING, DONE = (
    "queued",
    "running",
    "committing",
    "resolving",
    "done",
)


class _Abandoned(Exception):
    """The caller was answered at the deadline: roll back, do not commit."""


class _Call:
    """
    One call's state, shared by the reactor (its deadline) and the worker
    (its phase).  C{lock} is held only for a phase change or a decision on
    it, never across database work.
    """

    def __init__(self, write: bool):
        self.write = write
        self.lock = threading.Lock()
        self.phase = QUEUED
        self.abandoned = False
        self.wid: str | None = None
        #: The SQLAlchemy connection the worker is using.
        self.conn: Connection | None = None

    def cut(self) -> bool:
        """
        Shut down the socket of the connection this call is blocked on (from
        the reactor thread, at its deadline): a connection that stopped
        answering must not hold a worker thread beyond the deadline.  The
        driver's read then fails at once, the connection is discarded, and
        the next call gets a fresh one.  SQLite has no socket: nothing to do.
        """
        conn = self.conn
        try:
            fd = _socket_fd(conn.connection.dbapi_connection) if conn is not None else None
        except Exception:
            fd = None
        if fd is None:
            return False
        try:
            dup = socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM)
        except OSError:
            return False
        try:
            dup.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            dup.close()
        return True

    def enter(self, phase: str) -> None:
        """Move to C{phase}; @raise _Abandoned: the caller was answered."""
        with self.lock:
            if self.abandoned:
                raise _Abandoned()
            self.phase = phase


class _Outcome(Generic[T]):
    """The final result of a call, for any number of late listeners."""

    def __init__(self) -> None:
        self._outcome: tuple[T | Failure] | None = None  # (result,) once fired
        self._waiting: list[Deferred[T]] = []

    def listen(self) -> Deferred[T]:
        """A Deferred firing with the call's result, or failing with its
        failure, once the worker is done (at once if it is)."""
        if self._outcome is None:
            d: Deferred[T] = Deferred()
            self._waiting.append(d)
            return d
        (result,) = self._outcome
        return defer.fail(result) if isinstance(result, Failure) else defer.succeed(result)

    def fire(self, result: T | Failure) -> None:
        self._outcome = (result,)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)


class _Write:
    """A write waiting for its group."""

    __slots__ = ("fn", "args", "kwargs", "deferred", "arrived")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        deferred: Deferred[Any],
        arrived: float,
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.deferred = deferred
        self.arrived = arrived


#: What the worker reports for each write of a group: (True, its result) or
#: (False, the failure it was rolled back with).
_Outcomes = list[tuple[bool, Any]]


_SAVEPOINT = "SAVEPOINT ns_write"
_ROLLBACK_TO = "ROLLBACK TO SAVEPOINT ns_write"
_RELEASE = "RELEASE SAVEPOINT ns_write"


def _thd_group(conn: Connection, group: list[_Write]) -> _Outcomes:
    """Run a group's writes in one transaction (see the module docstring)."""
    if len(group) == 1:
        # No savepoint: a failure rolls the whole (one-write) transaction
        # back and is the group's, as a lone write always was.
        w = group[0]
        result = w.fn(conn, *w.args, **w.kwargs)
        _check_plain(w.fn, result)
        return [(True, result)]
    outcomes: _Outcomes = []
    for w in group:
        for attempt in (1, 2):
            # Plain SAVEPOINT statements (the same SQL as begin_nested, whose
            # bookkeeping cost more than the statements: a quarter of the
            # database thread at 100 writers).
            plainsql.run(conn, _SAVEPOINT)
            try:
                result = w.fn(conn, *w.args, **w.kwargs)
                _check_plain(w.fn, result)
            except Exception as e:
                _storage_error(e)
                if isinstance(e, _Abandoned) or (
                    isinstance(e, sa_exc.DBAPIError) and e.connection_invalidated
                ):
                    raise  # the transaction's failure: every write's
                # One write's failure: its savepoint is rolled back (if that
                # fails, the connection is gone and the group fails).  A
                # transient error (a deadlock, say) gets one more try; a
                # write that fails again fails alone, so one poisoned write
                # cannot make the group retry until its deadline.
                plainsql.run(conn, _ROLLBACK_TO)
                plainsql.run(conn, _RELEASE)
                if attempt == 1 and is_transient(e):
                    continue
                outcomes.append((False, Failure()))
                break
            plainsql.run(conn, _RELEASE)
            outcomes.append((True, result))
            break
    return outcomes


def _pick(outcomes: _Outcomes, index: int) -> Any:
    ok, value = outcomes[index]
    if not ok:
        value.raiseException()
    return value


class DBPool:
    """
    A dedicated thread pool running database transactions.

    @ivar active: calls currently running in a worker.
    @ivar queued: calls waiting for a worker.
    @ivar calls: calls completed since start (for statistics).
    @ivar in_doubt: writes whose COMMIT answer was lost (then resolved).
    @ivar writes: writes answered since start; C{groups}: the commits that
        carried them (L{write}'s group commit).
    """

    log = Logger()

    def __init__(
        self,
        engine: Engine,
        threads: int | None = None,
        reactor: IReactorTime | None = None,
        retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS,
        call_timeout: float | None = None,
    ):
        """
        @param threads: worker threads; by default what the engine wants
            (L{netshare.storage.engine.worker_threads}).
        @param reactor: an C{IReactorTime} that also provides
            C{IReactorFromThreads}; the global reactor by default.
        @param call_timeout: a call's deadline in seconds (none by default).
        """
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = IReactorTime(global_reactor)
        self.engine = engine
        self._reactor = reactor
        self._fromThreads = IReactorFromThreads(reactor)
        self.threads = threads or worker_threads(engine)
        self._pool = ThreadPool(minthreads=1, maxthreads=self.threads, name="netshare-db")
        self.retry_delays = tuple(retry_delays)
        self.call_timeout = call_timeout
        self.timeouts = 0
        self.in_doubt = 0
        self.outcome_unknown = 0
        self._inflight: set[Deferred[Any]] = set()
        self._pruner: LoopingCall | None = None
        self.active = 0
        self.calls = 0
        self.failures = 0
        #: Seconds from a call's submission (queueing included) to its
        #: answer, per call (a write group is one call); /metrics exports it.
        self.latency = Histogram(DB_CALL_BUCKETS)
        self.running = False
        self.stopping = False
        self._kept = threading.local()  # each worker's connection (_thd_connection)
        self._keptAll: set[Connection] = set()
        self._keptLock = threading.Lock()
        self._waitingWrites: list[_Write] = []  # for the next group
        self._committing = False  # a group is in flight
        self._idle: list[Deferred[None]] = []  # stop() waiting for the groups
        self.writes = 0
        self.groups = 0

    @property
    def kept(self) -> int:
        """Connections the workers keep between calls (at most one each),
        checked out of the engine's pool whether a call is using one or not."""
        return len(self._keptAll)

    @property
    def queued(self) -> int:
        return max(0, len(self._inflight) - self.active) + len(self._waitingWrites)

    def start(self) -> None:
        if not self.running:
            self._pool.start()
            self.running = True
            self._pruner = LoopingCall(self._pruneMarks)
            self._pruner.clock = self._reactor
            self._pruner.start(MARK_TTL / 4, now=False).addErrback(
                lambda f: self.log.failure("pruning write ids stopped", f)
            )

    # -- the two entry points (the hot path: no coroutine per call)

    def run(
        self, fn: Callable[Concatenate[Connection, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> Deferred[T]:
        """
        Run C{fn(conn, *args, **kwargs)} in a worker, in one transaction:
        reads, and writes that are safe to run twice (replay-safe by their
        own keys).

        @return: a Deferred firing with fn's result (plain data), or failing
            with the L{NetshareError} fn raised, or L{DatabaseUnavailable}.
        """
        return self._submit(_Call(write=False), fn, args, kwargs)

    def write(
        self, fn: Callable[Concatenate[Connection, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> Deferred[T]:
        """
        Run a write that must happen at most once: as L{run}, but the
        transaction stores an id of its own, so a COMMIT whose answer is lost
        is resolved instead of re-run (see the module docstring).

        @return: as L{run}; or failing with L{OutcomeUnknown} when the
            deadline passed while the outcome was still unknown.
        """
        if self.stopping or not self.running:
            return defer.fail(DatabaseUnavailable("database pool is stopped"))
        d: Deferred[T] = Deferred()
        self._waitingWrites.append(_Write(fn, args, kwargs, d, self._reactor.seconds()))
        if not self._committing:
            self._commitGroup()
        return d

    def _commitGroup(self) -> None:
        """Start a group of the writes waiting (see the module docstring)."""
        self._committing = True  # (callbacks run below join the queue)
        if self.call_timeout:
            # A write that already waited its whole deadline behind a slow
            # group is answered now, not sent: 451, as at any deadline.
            late = self._reactor.seconds() - self.call_timeout
            expired = [w for w in self._waitingWrites if w.arrived <= late]
            if expired:
                self._waitingWrites = [w for w in self._waitingWrites if w.arrived > late]
                self.timeouts += len(expired)
                for w in expired:
                    w.deferred.errback(DatabaseUnavailable("database not answering; try later"))
            if not self._waitingWrites:
                self._committing = False
                self._wakeIdle()
                return
        group = self._waitingWrites[:MAX_GROUP]
        del self._waitingWrites[:MAX_GROUP]
        self.groups += 1
        # A callback, not a coroutine: every durable write passes here.
        self._call(_Call(write=True), _thd_group, (group,), {}).addBoth(self._groupAnswered, group)

    def _groupAnswered(self, result: _Outcomes | Failure, group: list[_Write]) -> None:
        # Still "committing" while the callers' callbacks run: a write they
        # make joins the next group instead of starting one beside it.
        self.writes += len(group)
        try:
            if isinstance(result, Failure):
                unknown = result.value if isinstance(result.value, OutcomeUnknown) else None
                for i, w in enumerate(group):
                    if unknown is not None:
                        w.deferred.errback(
                            Failure(
                                OutcomeUnknown(
                                    settled=functools.partial(_settledShare, unknown, i)
                                )
                            )
                        )
                    else:
                        w.deferred.errback(result)
            else:
                for w, (ok, value) in zip(group, result, strict=True):
                    if ok:
                        w.deferred.callback(value)
                    else:
                        w.deferred.errback(value)
        finally:
            # The next group starts the moment this one is answered, with
            # whatever arrived meanwhile (also while stopping: those writes
            # were accepted).
            if self._waitingWrites:
                self._commitGroup()
            else:
                self._committing = False
                self._wakeIdle()

    def _wakeIdle(self) -> None:
        """No group in flight, none waiting: tell stop()."""
        idle, self._idle = self._idle, []
        for d in idle:
            d.callback(None)

    def _submit(
        self, call: _Call, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Deferred[T]:
        if self.stopping or not self.running:
            return defer.fail(DatabaseUnavailable("database pool is stopped"))
        return self._call(call, fn, args, kwargs)

    def _call(
        self, call: _Call, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Deferred[T]:
        inner = deferToThreadPool(
            self._fromThreads, self._pool, self._thd_call, call, fn, args, kwargs
        )
        self._inflight.add(inner)
        outer: Deferred[T] = Deferred()
        settled: _Outcome[T] = _Outcome()  # the worker's final word, for OutcomeUnknown
        timers: list[IDelayedCall] = []
        started = time.monotonic()

        def finished(result: T | Failure) -> None:
            self._inflight.discard(inner)
            self.calls += 1
            self.latency.observe(time.monotonic() - started)
            for t in timers:
                if t.active():
                    t.cancel()
            if not outer.called:
                if isinstance(result, Failure):
                    outer.errback(result)
                else:
                    outer.callback(result)
            elif not isinstance(result, Failure) or call.phase != QUEUED:
                outcome = result.getErrorMessage() if isinstance(result, Failure) else "ok"
                self.log.info(
                    "a database call answered late ({outcome}) after its caller was told {told}",
                    outcome=outcome,
                    told="451",
                )
            settled.fire(result)

        # A callback, not a coroutine: this is every database call's path.
        inner.addBoth(finished)
        if self.call_timeout:
            timers.append(
                self._reactor.callLater(
                    self.call_timeout, self._deadline, call, outer, settled, timers
                )
            )
        return outer

    def _deadline(
        self, call: _Call, outer: Deferred[T], settled: _Outcome[T], timers: list[IDelayedCall]
    ) -> None:
        """The call's deadline: abandon it if it has not reached its COMMIT;
        give a COMMIT in flight as long again to settle."""
        if outer.called:
            return
        with call.lock:
            committing = call.phase in (COMMITTING, RESOLVING)
            if not committing:
                call.abandoned = True
        self.timeouts += 1
        if not committing:
            cut = call.phase == RUNNING and call.cut()
            self.log.error(
                "database call exceeded {timeout}s: answering 451{cut}",
                timeout=self.call_timeout,
                cut="; its connection was cut" if cut else "",
            )
            outer.errback(Failure(DatabaseUnavailable("database not answering; try later")))
            return
        assert self.call_timeout is not None  # a deadline was set
        timers.append(
            self._reactor.callLater(self.call_timeout, self._unknown, call, outer, settled)
        )

    def _unknown(self, call: _Call, outer: Deferred[T], settled: _Outcome[T]) -> None:
        if outer.called:
            return
        call.cut()  # a COMMIT still unanswered: its answer will not come
        self.outcome_unknown += 1
        self.log.error(
            "a write's COMMIT is still unconfirmed after {timeout}s: answering "
            "451 outcome unknown",
            timeout=2 * (self.call_timeout or 0),
        )
        outer.errback(Failure(OutcomeUnknown(settled=settled.listen)))

    # -- in the worker

    def _thd_call(
        self, call: _Call, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        self.active += 1
        try:
            call.enter(RUNNING)
            if call.write:
                return self._thd_write(call, fn, args, kwargs)
            return self._thd_read(call, fn, args, kwargs)
        except _Abandoned:
            raise DatabaseUnavailable("database not answering; try later") from None
        finally:
            call.phase = DONE
            self.active -= 1

    def _retrying(self, error: Exception, delays: Iterator[float], fn: Callable[..., Any]) -> None:
        """After a transient failure: sleep (then the caller tries again), or
        raise L{DatabaseUnavailable}."""
        delay = next(delays, None)
        if delay is None or self.stopping:
            self.failures += 1
            self.log.error(
                "database unavailable after retries: {error}",
                error=_short(error),
                function=getattr(fn, "__name__", repr(fn)),
            )
            raise DatabaseUnavailable() from error
        self.log.warn(
            "transient database error, retrying in {delay}s: {error}",
            delay=delay,
            error=_short(error),
        )
        time.sleep(delay)

    # Each worker keeps its connection between calls (checked out of the
    # engine's pool once, not per call): a checkout, its return and the
    # pool's reset cost about 70 us a transaction here, as much as SQLite
    # takes for the statements of an acknowledged write
    # (bench/db_floor.py).  A call that fails in any way other than a
    # refusal (NetshareError, after a clean rollback) discards it, so a
    # retry, the in-doubt probe and the next call start on a fresh one, as
    # they did with a checkout per call; stop() closes the kept ones (_thd_shut).

    def _thd_connection(self) -> Connection:
        """This worker's connection (see above)."""
        conn: Connection | None = getattr(self._kept, "conn", None)
        if conn is None or conn.closed or conn.invalidated:
            if conn is not None:
                self._thd_discard(conn)
            conn = self.engine.connect()
            self._kept.conn = conn
            with self._keptLock:
                self._keptAll.add(conn)
        return conn

    def _thd_discard(self, conn: Connection) -> None:
        """Close a worker's connection; the worker's next call opens one."""
        if getattr(self._kept, "conn", None) is conn:
            self._kept.conn = None
        with self._keptLock:
            self._keptAll.discard(conn)
        _quietly(conn.close)

    def _thd_shut(self) -> None:
        """At stop, with every worker idle: close what they kept, then the
        engine's pool."""
        with self._keptLock:
            kept, self._keptAll = self._keptAll, set()
        for conn in kept:
            _quietly(conn.close)
        self.engine.dispose()

    def _thd_read(
        self, call: _Call, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        delays = iter(self.retry_delays)
        while True:
            conn: Connection | None = None
            keep = False
            try:
                conn = call.conn = self._thd_connection()
                with conn.begin():
                    result = fn(conn, *args, **kwargs)
                keep = True
                _check_plain(fn, result)
                return result
            except NetshareError:
                keep = True  # refused and rolled back: the connection is fine
                raise
            except Exception as e:
                _storage_error(e)
                if not is_transient(e):
                    raise
                if call.abandoned:  # answered at the deadline: do not start over
                    raise _Abandoned() from e
                self._retrying(e, delays, fn)
            finally:
                call.conn = None
                if conn is not None and not keep:
                    self._thd_discard(conn)

    def _thd_write(
        self, call: _Call, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        delays = iter(self.retry_delays)
        reruns = 0
        while True:
            wid = call.wid = secrets.token_hex(16)
            conn = call.conn = self._thd_connection()
            keep = False
            try:
                trans = conn.begin()
                try:
                    result = fn(conn, *args, **kwargs)
                    _check_plain(fn, result)
                    _insert_mark(conn, wid)
                    call.enter(COMMITTING)
                except BaseException as e:
                    try:
                        trans.rollback()
                        # a refusal, cleanly rolled back: the connection is fine
                        keep = isinstance(e, NetshareError)
                    except Exception:
                        pass
                    if not isinstance(e, Exception):
                        raise
                    _storage_error(e)
                    if isinstance(e, (NetshareError, _Abandoned)) or not is_transient(e):
                        raise
                    if call.abandoned:  # answered at the deadline: do not start over
                        raise _Abandoned() from e
                    self._retrying(e, delays, fn)  # before COMMIT: safe to run again
                    continue
                try:
                    trans.commit()
                    keep = True
                    return result
                except Exception as e:
                    _storage_error(e)  # a full disk fails the COMMIT: rolled back
                    if not is_transient(e):
                        raise
                    first_error = e
            finally:
                call.conn = None
                if not keep:
                    self._thd_discard(conn)
            # The COMMIT was sent and its answer lost: in doubt.
            self.in_doubt += 1
            call.phase = RESOLVING
            self.log.warn(
                "a write's COMMIT answer was lost ({error}): checking whether it committed",
                error=_short(first_error),
            )
            if self._thd_committed(wid, fn):
                self.log.info("the write had committed: answering with its result")
                return result
            if reruns:
                raise DatabaseUnavailable() from first_error
            reruns += 1
            self.log.info("the write had not committed: running it once more")
            call.enter(RUNNING)

    def _thd_committed(self, wid: str, fn: Callable[..., Any]) -> bool:
        """
        Did the transaction that stored C{wid} commit?  Probe by inserting
        the same id: a duplicate means yes; success means no (and the probe
        is rolled back).  A transaction still in flight holds the key's lock,
        so the probe waits for its outcome (bounded); on failure it tries
        again until the retries are spent.
        @raise DatabaseUnavailable: the outcome could not be learnt.
        """
        delays = iter(self.retry_delays + self.retry_delays)
        while True:
            try:
                with self.engine.connect() as conn:
                    trans = conn.begin()
                    restore = _bound_lock_wait(conn)
                    try:
                        _insert_mark(conn, wid)
                        committed = False
                    except sa_exc.IntegrityError:
                        committed = True
                    finally:
                        _quietly(trans.rollback)
                        _quietly(restore)
                    return committed
            except Exception as e:
                if not is_transient(e):
                    raise
                self._retrying(e, delays, fn)

    # -- housekeeping

    @deferred
    async def _pruneMarks(self) -> None:
        try:
            await self.run(_thd_prune_marks, _now_ms() - int(MARK_TTL * 1000))
        except Exception as e:
            self.log.warn("pruning old write ids failed: {error}", error=str(e))

    @deferred
    async def stop(self) -> None:
        """Refuse new calls, let in-flight calls finish, dispose the engine
        in a worker, then stop the threads."""
        if not self.running:
            return
        self.stopping = True
        if self._pruner is not None and self._pruner.running:
            self._pruner.stop()
        if self._committing:  # accepted writes are committed, not dropped
            idle: Deferred[None] = Deferred()
            self._idle.append(idle)
            await idle
        if self._inflight:
            await defer.DeferredList(list(self._inflight), consumeErrors=True)
        await deferToThreadPool(self._fromThreads, self._pool, self._thd_shut)
        self._pool.stop()
        self.running = False

    def stats(self) -> dict[str, int]:
        return {
            "threads": self.threads,
            "active": self.active,
            "queued": self.queued,
            "calls": self.calls,
            "failures": self.failures,
            "timeouts": self.timeouts,
            "in_doubt": self.in_doubt,
            "outcome_unknown": self.outcome_unknown,
            "writes": self.writes,
            "groups": self.groups,
            "kept": self.kept,
        }


def _settledShare(unknown: OutcomeUnknown, index: int) -> Deferred[Any]:
    """One write's part of its group's settled outcome."""
    d: Deferred[Any] = unknown.settled()
    return d.addCallback(_pick, index)


def _thd_prune_marks(conn: Connection, before_ms: int) -> int:
    """Forget the ids of writes older than C{before_ms} (resolved long ago)."""
    return conn.execute(write_marks.delete().where(write_marks.c.created_ms < before_ms)).rowcount


def _socket_fd(dbapi_connection: object) -> int | None:
    """The file descriptor of a DB-API connection's socket, or None: psycopg
    and PyMySQL expose it; SQLite has none."""
    fileno = getattr(dbapi_connection, "fileno", None)  # psycopg 3
    if callable(fileno):
        return int(fileno())
    sock = getattr(dbapi_connection, "_sock", None)  # PyMySQL
    if sock is not None:
        return int(sock.fileno())
    return None


def _check_plain(fn: Callable[..., Any], result: object) -> None:
    assert not isinstance(result, (Result, CursorResult, Row)), (
        "%r returned a %s: build plain data inside the thread" % (fn, type(result))
    )


def _bound_lock_wait(conn: Connection) -> Callable[[], object]:
    """Make the probe's wait for an in-flight transaction's lock bounded.
    @return: what puts the connection's own setting back (it is pooled)."""
    name = conn.dialect.name
    if name == "postgresql":  # LOCAL: ends with the probe's transaction
        conn.exec_driver_sql("SET LOCAL lock_timeout = '%ds'" % PROBE_LOCK_WAIT)
    elif name in ("mysql", "mariadb"):
        conn.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = %d" % PROBE_LOCK_WAIT)
        return lambda: conn.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = DEFAULT")
    return lambda: None


def _quietly(fn: Callable[[], object]) -> None:
    try:
        fn()
    except Exception:
        pass


def _now_ms() -> int:
    return int(time.time() * 1000)


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else error.__class__.__name__
