"""
The request history: every command on every port, written in batches.

L{HistoryRecorder.record} only appends to a list; a timer writes the list
with one batched INSERT off the reactor at most every C{interval} seconds,
so recording never slows a reply.  Queries and deletions first flush, so a
caller always sees its own latest commands.  A failed write keeps the
entries and is retried; a clean stop flushes everything.

Ownership rules (PROTOCOL.md section 1, made precise): without C{user=},
everyone (admins included) sees and clears their own entries; an admin may
name any user with C{user=NAME}, the entries of unauthenticated commands
with C{user=-}, and everyone with C{user=*}.
"""

from twisted.internet import defer
from twisted.logger import Logger

from netshare.accounts import USERNAME_RE
from netshare.errors import BadArguments, DatabaseUnavailable, NotFound, PermissionDenied

MAX_BUFFERED = 200_000  # beyond this (database down for long) the oldest go


class HistoryRecorder:
    """
    @ivar dropped: entries dropped because the buffer was full.
    """

    log = Logger()

    def __init__(self, store, clock=None, interval=0.2, batch=1000, max_buffered=MAX_BUFFERED):
        if clock is None:
            from twisted.internet import reactor as clock
        self.store = store
        self.clock = clock
        self.interval = interval
        self.batch = batch
        self.max_buffered = max_buffered
        # (sequence number, row), oldest first; every entry in flight is
        # older than every pending one.
        self._pending = []       # recorded, not being written yet
        self._inflight = []      # the batch being written now
        self._waiters = []       # (sequence number to pass, Deferred)
        self._recorded = 0       # entries ever recorded (the next sequence number)
        self._timer = None
        self._writing = False
        self._stopped = False    # no more timers (a flush() still writes)
        self.dropped = 0

    def record(self, ts_ms, service, user, peer, command, code):
        self._pending.append((self._recorded, {
            "ts_ms": ts_ms, "service": service, "user": user, "peer": peer[:64],
            "command": command, "code": code}))
        self._recorded += 1
        excess = len(self._pending) + len(self._inflight) - self.max_buffered
        if excess > 0 and self._pending:
            # The database is down or slower than the traffic: keep memory
            # bounded and lose the oldest waiting entries (not those in flight).
            excess = min(excess, len(self._pending))
            del self._pending[:excess]
            if self.dropped == 0 or (self.dropped + excess) // 10000 > self.dropped // 10000:
                self.log.error("history buffer full: {dropped} oldest entries dropped so far",
                               dropped=self.dropped + excess)
            self.dropped += excess
            self._wakeWaiters()
        if self._timer is None and not self._writing and not self._stopped:
            self._timer = self.clock.callLater(self.interval, self._tick)

    def _tick(self):
        self._timer = None
        self.flush().addErrback(lambda f: None)

    def _unsettled(self):
        """The sequence number of the oldest entry not yet written (or dropped)."""
        if self._inflight:
            return self._inflight[0][0]
        if self._pending:
            return self._pending[0][0]
        return self._recorded

    def flush(self):
        """
        @return: a Deferred that fires once everything recorded before this
            call is written (later records do not delay it, however fast they
            come), or fails if a write failed (entries are kept and retried
            later).
        """
        d = defer.Deferred()
        if self._unsettled() >= self._recorded:
            d.callback(None)
            return d
        self._waiters.append((self._recorded, d))
        if not self._writing:
            self._writeNext()
        return d

    def _wakeWaiters(self):
        done = self._unsettled()
        ready = [w for w in self._waiters if w[0] <= done]
        if ready:
            self._waiters = [w for w in self._waiters if w[0] > done]
            for _, d in ready:
                d.callback(None)

    def _writeNext(self):
        if not self._pending:
            return
        self._writing = True
        batch = self._inflight = self._pending[:self.batch]
        del self._pending[:len(batch)]

        def written(_):
            self._inflight = []
            self._writing = False
            self._wakeWaiters()
            if self._waiters or len(self._pending) >= self.batch:
                self._writeNext()  # someone waits, or a full batch is ready
            elif self._pending and self._timer is None and not self._stopped:
                self._timer = self.clock.callLater(self.interval, self._tick)

        def failed(f):
            if not f.check(DatabaseUnavailable) and len(batch) > 0:
                # Not an outage: the database refused some row.  Write the
                # batch row by row and drop only what it refuses, so one bad
                # entry can never block the history for good.
                return self._salvage(batch).addCallbacks(written, failed)
            self._inflight = []
            self._writing = False
            self._pending[:0] = batch  # back in front, in order, to be retried
            self.log.warn("history write failed ({n} entries kept, retrying): {error}",
                          n=len(self._pending), error=f.getErrorMessage())
            if self._timer is None and not self._stopped:
                self._timer = self.clock.callLater(max(1.0, self.interval), self._tick)
            waiters, self._waiters = self._waiters, []
            for _, w in waiters:
                w.errback(f)

        self.store.insert_many([row for _, row in batch]).addCallbacks(written, failed)

    @defer.inlineCallbacks
    def _salvage(self, batch):
        """Insert C{batch} one row at a time, dropping rows the database
        refuses; an outage part-way puts the unwritten rest back in front."""
        dropped = 0
        for i, (_, row) in enumerate(batch):
            try:
                yield self.store.insert_many([row])
            except DatabaseUnavailable:
                del batch[:i]
                raise
            except Exception as e:
                dropped += 1
                self.dropped += 1
                self.log.error("history: the database refused an entry ({service}, code "
                               "{code}): dropped: {error}", service=row.get("service"),
                               code=row.get("code"), error=str(e).splitlines()[0][:200])
        del batch[:]

    @defer.inlineCallbacks
    def stop(self, attempts=3):
        """Write everything before the database goes away (a clean stop loses nothing)."""
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        for _ in range(attempts):
            try:
                yield self.flush()
                return
            except Exception:
                pass
        if self._pending or self._inflight:
            self.log.error("history: {n} entries could not be written at shutdown",
                           n=len(self._pending) + len(self._inflight))

    def _target(self, caller, user):
        """Whose entries a query/clear addresses: a name, None (unauthenticated) or ALL."""
        if user is None or user == caller.name:
            return caller.name
        if not caller.is_admin:
            raise PermissionDenied("only an admin may see other users' history")
        if user == "*":
            return ALL
        if user == "-":
            return None
        if not USERNAME_RE.fullmatch(user):
            raise BadArguments("user= must be an account name, - or *")
        return user

    @defer.inlineCallbacks
    def query(self, caller, user, limit):
        target = self._target(caller, user)
        yield self.flush()
        entries = yield self.store.list(None if target is ALL else target, limit) \
            if target is not None else self.store.list_anonymous(limit)
        return entries

    @defer.inlineCallbacks
    def delete(self, caller, entry_id):
        yield self.flush()
        exists, owner = yield self.store.get_owner(entry_id)
        if not exists:
            raise NotFound("no history entry %d" % (entry_id,))
        if owner != caller.name and not caller.is_admin:
            raise PermissionDenied("not your history entry")
        yield self.store.delete(entry_id)

    @defer.inlineCallbacks
    def clear(self, caller, user):
        target = self._target(caller, user)
        yield self.flush()
        if target is ALL:
            n = yield self.store.clear(None)
        elif target is None:
            n = yield self.store.clear_anonymous()
        else:
            n = yield self.store.clear(target)
        return n


class _All:
    def __repr__(self):
        return "ALL"


ALL = _All()
