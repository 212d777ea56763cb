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

from netshare.errors import NotFound, PermissionDenied

MAX_BUFFERED = 200_000  # beyond this (database down for long) the oldest go


class HistoryRecorder:
    log = Logger()

    def __init__(self, store, clock=None, interval=0.2, batch=1000):
        if clock is None:
            from twisted.internet import reactor as clock
        self.store = store
        self.clock = clock
        self.interval = interval
        self.batch = batch
        self._pending = []
        self._waiters = []
        self._timer = None
        self._writing = False
        self.dropped = 0

    def record(self, ts_ms, service, user, peer, command, code):
        self._pending.append({"ts_ms": ts_ms, "service": service, "user": user,
                              "peer": peer[:64], "command": command, "code": code})
        if len(self._pending) > MAX_BUFFERED and not self._writing:
            excess = len(self._pending) - MAX_BUFFERED
            del self._pending[:excess]
            self.dropped += excess
            self.log.error("history buffer full: dropped {n} oldest entries", n=excess)
        if self._timer is None and not self._writing:
            self._timer = self.clock.callLater(self.interval, self._tick)

    def _tick(self):
        self._timer = None
        self.flush().addErrback(lambda f: None)

    def flush(self):
        """
        @return: a Deferred that fires once everything recorded before this
            call is written, or fails if a write failed (entries are kept and
            retried later).
        """
        d = defer.Deferred()
        self._waiters.append(d)
        if not self._writing:
            self._writeNext()
        return d

    def _writeNext(self):
        if not self._pending:
            waiters, self._waiters = self._waiters, []
            for w in waiters:
                w.callback(None)
            return
        self._writing = True
        rows = self._pending[:self.batch]

        def written(_):
            del self._pending[:len(rows)]  # newer entries were appended after these
            self._writing = False
            self._writeNext()

        def failed(f):
            self._writing = False
            self.log.warn("history write failed ({n} entries kept, retrying): {error}",
                          n=len(self._pending), error=f.getErrorMessage())
            if self._timer is None:
                self._timer = self.clock.callLater(max(1.0, self.interval), self._tick)
            waiters, self._waiters = self._waiters, []
            for w in waiters:
                w.errback(f)

        self.store.insert_many(rows).addCallbacks(written, failed)

    @defer.inlineCallbacks
    def stop(self, attempts=3):
        """Write everything before the database goes away (a clean stop loses nothing)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        for _ in range(attempts):
            try:
                yield self.flush()
                return
            except Exception:
                pass
        if self._pending:
            self.log.error("history: {n} entries could not be written at shutdown",
                           n=len(self._pending))

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
