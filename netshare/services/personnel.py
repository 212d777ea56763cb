"""
The personnel service: roster rules and the live sync machinery.

The line protocol (L{netshare.protocols.personnel}) parses commands and
formats replies; this module decides.  The operator shell calls the very
same methods, so a SEND typed in the manhole and a SEND on the wire take one
code path.

Decisions where PROTOCOL.md is silent:

 - B{ssn}: 1-32 ASCII letters, digits and C{-}, compared exactly (case
   matters).  A malformed ssn, an unknown or over-long field, a control
   character, a missing required field: C{501} (L{BadArguments}), as
   PROTOCOL.md lists 501 for ADD/UPDATE errors.
 - B{fields}: C{name} and C{surname} are required on ADD and may not be
   blank; C{job} and C{salary} default to C{""}.  C{name}/C{surname}/C{job}
   hold at most 255 characters, C{salary} 32.  Text is stored literally
   (no trimming, no normalisation); C0/C1 control characters, line
   separators and bidi overrides are refused so that a stored field can never
   forge a log line or reorder a terminal.
 - B{salary} is text: it comes back as the same JSON string the client sent
   (C{"52000.00"} stays C{"52000.00"}); a Python number given by the operator
   shell is stored as its C{str()}.
 - B{one stream per client}: a second SYNC for the same client replaces the
   first; the old stream is stopped and its sink's C{streamReplaced()} is
   called so the protocol can say C{421} and close it.  Nothing is lost:
   whatever the old stream sent but was not acknowledged is sent again by
   the new one.
 - B{SYNC after=N} does not acknowledge anything by itself; only ACK does.
   An C{after} above the highest seq ever queued for the client is C{501}:
   the client's copy then belongs to another server (or to this one before
   its database was recreated), and silently skipping the new messages up
   to that seq would lose them.
 - B{DELETE} of an unknown ssn is C{550}.  B{REMOVE} of a single ssn does not
   require the person to exist on the server (it may have been deleted
   already); B{SEND} of a single ssn does (C{550}).
"""

from __future__ import annotations

import functools
import re
from decimal import Decimal

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from netshare.errors import BadArguments, PermissionDenied
from netshare.storage.personnel import (
    DEFAULT_LIST_LIMIT,
    DELETE,
    DELETE_ALL,
    MAX_LIST_LIMIT,
    PERSON_FIELDS,
    SAVE,
)
from netshare.text import first_unsafe, is_username

#: Messages read from the outbox per query by one sync stream.
DEFAULT_PAGE_SIZE = 500

#: Seconds a sync stream waits before reading again after a database error.
DEFAULT_RETRY_DELAY = 5.0

#: A sync stream writes its pushes in blocks of about this many bytes: one
#: C{transport.write} per block instead of one per message, while the sink's
#: writability is still checked often enough that a page of large records
#: never lands in the connection's output at once.
DEFAULT_CHUNK_BYTES = 32 * 1024

#: Verbs only an admin may use (PROTOCOL.md section 4).
ADMIN_COMMANDS = frozenset({"ADD", "UPDATE", "DELETE", "CLIENTS", "MESSAGES", "SEND", "REMOVE"})

#: The push code of each message action.
PUSH_CODES = {SAVE: 610, DELETE: 611, DELETE_ALL: 612}

FIELD_LIMITS = {"name": 255, "surname": 255, "job": 255, "salary": 32}
REQUIRED_ON_ADD = ("name", "surname")

_SSN = re.compile(r"[A-Za-z0-9-]{1,32}\Z")


# ---------------------------------------------------------------------------
# Validation (pure functions: the protocol and the tests call them directly)


def check_ssn(ssn) -> str:
    if not isinstance(ssn, str) or not _SSN.match(ssn):
        raise BadArguments("invalid ssn: 1-32 letters, digits or '-'")
    return ssn


def check_client(name) -> str:
    """A SEND/REMOVE target: C{*} or an account name."""
    if name == "*":
        return name
    if not is_username(name):
        raise BadArguments("invalid client name: 1-32 letters or digits, or *")
    return name


def check_target_ssn(ssn) -> str:
    return ssn if ssn == "*" else check_ssn(ssn)


def check_field(name: str, value) -> str:
    """One person field, as it will be stored."""
    if name not in FIELD_LIMITS:
        raise BadArguments("unknown field %s (allowed: %s)" % (name, ", ".join(PERSON_FIELDS)))
    numeric = isinstance(value, (int, float, Decimal)) and not isinstance(value, bool)
    if name == "salary" and numeric:
        value = str(value)
    if not isinstance(value, str):
        raise BadArguments("%s must be text" % (name,))
    if len(value) > FIELD_LIMITS[name]:
        raise BadArguments("%s too long (at most %d characters)" % (name, FIELD_LIMITS[name]))
    if first_unsafe(value) is not None:
        raise BadArguments("%s contains a control character" % (name,))
    if name in REQUIRED_ON_ADD and not value.strip():
        raise BadArguments("%s may not be empty" % (name,))
    return value


def check_fields(fields: dict, adding: bool) -> dict:
    """Validate ADD (C{adding}) or UPDATE fields, C{ssn} excluded."""
    if "ssn" in fields:
        raise BadArguments("ssn cannot be changed" if not adding else "ssn given twice")
    out = {k: check_field(k, v) for k, v in fields.items()}
    if adding:
        missing = [f for f in REQUIRED_ON_ADD if f not in out]
        if missing:
            raise BadArguments("missing field %s" % (missing[0],))
    elif not out:
        raise BadArguments("nothing to update")
    return out


def parse_int(value, what: str, minimum: int = 0) -> int:
    """An integer argument from the wire (text) or the shell (int)."""
    if isinstance(value, bool):
        raise BadArguments("%s must be an integer" % (what,))
    if isinstance(value, str):
        if not re.fullmatch(r"-?[0-9]{1,19}", value.strip()):
            raise BadArguments("%s must be an integer" % (what,))
        value = int(value)
    if not isinstance(value, int):
        raise BadArguments("%s must be an integer" % (what,))
    if value < minimum:
        raise BadArguments("%s must be at least %d" % (what, minimum))
    if value > MAX_INT64:  # every database column behind it is 64-bit
        raise BadArguments("%s out of range" % (what,))
    return value


MAX_INT64 = 2**63 - 1


def check_search_text(text: str) -> str:
    """LIST's search text: any characters a field may hold (a control
    character could match nothing, and PostgreSQL text cannot hold NUL)."""
    if len(text) > max(FIELD_LIMITS.values()):
        raise BadArguments("search text too long")
    if first_unsafe(text) is not None:
        raise BadArguments("search text contains a control character")
    return text


def mask_ssn(ssn: str) -> str:
    """The last four characters of an ssn, the rest replaced by C{*}
    (C{123-45-6789} -> C{*******6789}); an ssn of four characters or fewer
    is all C{*}: its last four would be all of it."""
    if len(ssn) <= 4:
        return "*" * len(ssn)
    return "*" * (len(ssn) - 4) + ssn[-4:]


def directory_view(person) -> dict:
    """What a non-admin account reads of a person (PROTOCOL.md section 4):
    name, surname and job, the ssn masked, no salary."""
    out = person.to_wire()
    out["ssn"] = mask_ssn(person.ssn)
    out["salary"] = None
    return out


def full_view(person) -> dict:
    """What an admin, the operator shell and a sync stream get: everything."""
    return person.to_wire()


def push_line(message) -> str | None:
    """The C{61x} push for an outbox message (without the line end)."""
    code = PUSH_CODES.get(message.action)
    if code is None:
        return None
    return "%d %d %s %s" % (code, message.seq, message.action, message.payload)


#: C{"<code> %d <ACTION> %s\r\n"} per action: a push is one C{%} away.
_PUSH_FORMATS = {action: "%d %%d %s %%s\r\n" % (code, action)
                 for action, code in PUSH_CODES.items()}


def _deferred(method):
    """Run a service method so that a validation error becomes a failed
    Deferred, like every other failure of the call."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        return defer.maybeDeferred(method, *args, **kwargs)
    return wrapper


# ---------------------------------------------------------------------------
# One live sync stream


class SyncFeed:
    """
    Drives one SYNC stream: reads the client's pending messages a page at a
    time and pushes them to C{sink}, then waits for L{notify}.

    The sink (the protocol) provides C{sendPushes(data: bytes, count: int)}
    (C{count} complete push lines, CRLF-terminated, in one write),
    C{writable() -> bool}, C{streamReplaced()} and optionally
    C{streamFailed()} (the feed stopped on an unexpected error); it calls
    L{resume} when its output has drained and L{stop} when the connection
    closes.

    A page is written in blocks of about C{chunk_bytes}: each block is the
    push lines of consecutive messages, encoded once and handed to the sink
    in one call (the payload is the outbox's JSON text as stored: nothing is
    decoded or re-encoded).  Writability is checked before every block.

    Memory stays bounded by two pages: the one being written and the next
    one, read ahead while the current one is still being written or waits
    for the sink to drain (so the database round trip overlaps the
    network instead of adding to it).  No further page is read until the
    current one is written.  If the sink stops being writable in the middle
    of a page, the rest of that page waits in C{_backlog} until L{resume},
    so a page of large records never piles up in the connection's output
    (which would get the reader dropped as a slow reader).  A notify that
    arrives while a page is being read is remembered, so a message queued
    during that read is never missed.

    @ivar lastSent: the highest seq pushed so far (or the start point).
    @ivar sent: how many messages this stream pushed.
    """

    log = Logger()

    def __init__(self, store, client: str, sink, after: int = 0, *,
                 page_size: int = DEFAULT_PAGE_SIZE, clock=None,
                 retry_delay: float = DEFAULT_RETRY_DELAY, on_stop=None,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES):
        if clock is None:
            from twisted.internet import reactor as clock
        self.store = store
        self.client = client
        self.sink = sink
        self.lastSent = after
        self.sent = 0
        self.page_size = page_size
        self.chunk_bytes = max(1, chunk_bytes)
        self.clock = clock
        self.retry_delay = retry_delay
        self.stopped = False
        self._on_stop = on_stop
        self._started = False
        self._wanted = True      # there may be messages we have not read yet
        self._fetching = False   # a page read is in flight
        self._pumping = False    # guards against re-entering the pump loop
        self._retry = None       # delayed call after a database error
        self._backlog = []       # rest of the page being written (the sink was full)
        self._ahead = None       # the next page, read ahead, not yet being written
        self._readUpTo = after   # the highest seq read so far: the next read starts there

    @property
    def caughtUp(self) -> bool:
        """Everything queued so far has been pushed; waiting for L{notify}."""
        return (self._started and not self._wanted and not self._fetching
                and not self._backlog and not self._ahead)

    def start(self):
        """Begin pushing (call after the C{200 syncing} reply is written)."""
        self._started = True
        self._pump()

    def notify(self):
        """New messages were queued for this client."""
        self._wanted = True
        self._pump()

    def resume(self):
        """The sink's output drained: continue if there is more to send."""
        self._pump()

    def stop(self):
        """The connection closed or the stream was replaced: push nothing more."""
        if self.stopped:
            return
        self.stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._backlog = []
        self._ahead = None
        if self._on_stop is not None:
            self._on_stop(self)

    def _pump(self):
        # A loop rather than recursion: with a store whose Deferreds fire
        # synchronously, _gotPage runs inside this loop and only stores the
        # page.
        if self._pumping:
            return
        self._pumping = True
        try:
            while self._started and not self.stopped:
                if not self._backlog and self._ahead is not None:
                    self._backlog, self._ahead = self._ahead, None
                if self._backlog:
                    self._write(self._backlog)
                    if self.stopped:
                        return
                    if not self._backlog and self._ahead is not None:
                        continue    # the page ahead becomes the current one
                if (self._wanted and not self._fetching and self._ahead is None
                        and self._retry is None):
                    # Read the next page now, even if the sink is full: at
                    # most one page ahead of the one being written.
                    self._wanted = False
                    self._fetching = True
                    d = self.store.pending_page(self.client, self._readUpTo, self.page_size)
                    d.addCallbacks(self._gotPage, self._pageFailed)
                    d.addErrback(self._bug)
                    continue    # the page may be here already
                return
        except Exception:
            self._bug(Failure())
        finally:
            self._pumping = False

    def _gotPage(self, messages):
        self._fetching = False
        if self.stopped:
            return
        if len(messages) >= self.page_size:
            self._wanted = True
        if messages:
            self._readUpTo = messages[-1].seq
            self._ahead = messages
        self._pump()

    def _write(self, messages):
        """Push C{messages} in blocks while the sink is writable; keep the
        rest in C{_backlog}."""
        formats = _PUSH_FORMATS
        limit = self.chunk_bytes
        i, n = 0, len(messages)
        while i < n:
            if self.stopped:
                # The sink dropped its connection while we were writing
                # (e.g. a slow reader over its output limit).
                self._backlog = []
                return
            if not self.sink.writable():
                self._backlog = messages[i:]
                return
            lines, size = [], 0
            while i < n and size < limit:
                message = messages[i]
                i += 1
                fmt = formats.get(message.action)
                if fmt is None:
                    if lines:
                        i -= 1    # send what precedes it first, in seq order
                        break
                    self.log.error("skipping outbox message {client}/{seq} with unknown "
                                   "action {action}", client=self.client, seq=message.seq,
                                   action=message.action)
                    self.lastSent = message.seq
                    continue
                line = fmt % (message.seq, message.payload)
                lines.append(line)
                size += len(line)
            if lines:
                self.sink.sendPushes("".join(lines).encode("utf-8"), len(lines))
                self.sent += len(lines)
                self.lastSent = messages[i - 1].seq
        self._backlog = []

    def _pageFailed(self, failure):
        self._fetching = False
        self._wanted = True
        if self.stopped:
            return
        self.log.warn("sync stream for {client} cannot read its outbox, retrying in {delay}s: "
                      "{error}", client=self.client, delay=self.retry_delay,
                      error=failure.getErrorMessage())
        self._retry = self.clock.callLater(self.retry_delay, self._retryNow)

    def _retryNow(self):
        self._retry = None
        self._pump()

    def _bug(self, failure):
        # An unexpected error writing a page: stop, rather than read the
        # same page again and again.  The sink closes the connection; the
        # client reconnects and gets everything unacknowledged again.
        self.log.failure("sync stream for {client} failed", failure, client=self.client)
        if not self.stopped:
            self.stop()
            failed = getattr(self.sink, "streamFailed", None)
            if failed is not None:
                failed()


# ---------------------------------------------------------------------------
# The service


class PersonnelService:
    """
    Roster CRUD, SEND/REMOVE queueing and the registry of live sync streams.

    Every public method returns a Deferred (validation errors included, as a
    failed Deferred of a L{netshare.errors.NetshareError}).  Listings come
    back as lists of PROTOCOL.md JSON objects (dicts).

    @param store: a L{netshare.storage.personnel.PersonnelStore} (or any
        object with the same methods).
    @param clock: an C{IReactorTime}, the global reactor by default.
    """

    log = Logger()

    def __init__(self, store, clock=None, *, page_size: int = DEFAULT_PAGE_SIZE,
                 list_default: int = DEFAULT_LIST_LIMIT, list_max: int = MAX_LIST_LIMIT,
                 retry_delay: float = DEFAULT_RETRY_DELAY):
        if clock is None:
            from twisted.internet import reactor as clock
        self.store = store
        self.clock = clock
        self.page_size = page_size
        self.list_default = list_default
        self.list_max = min(list_max, MAX_LIST_LIMIT)
        self.retry_delay = retry_delay
        self._streams: dict[str, SyncFeed] = {}

    # -- helpers ------------------------------------------------------------

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    def authorize(self, verb: str, role: str | None):
        """Raise L{PermissionDenied} (531) unless C{role} may use C{verb}."""
        if verb.upper() in ADMIN_COMMANDS and role != "admin":
            raise PermissionDenied("permission denied: %s needs admin" % (verb.upper(),))

    def _limit(self, limit) -> int:
        if limit is None:
            return self.list_default
        return max(1, min(parse_int(limit, "limit"), self.list_max))

    # -- the roster ---------------------------------------------------------

    @_deferred
    def list(self, text: str | None = None, limit=None, offset=None, full: bool = True):
        """LIST.  C{full}: the whole record (admins, the operator shell);
        otherwise the directory view (L{directory_view}), and the search
        text matches name, surname and job only: matching it against the
        ssn would let a substring search read the ssn back digit by digit."""
        offset = parse_int(offset, "offset") if offset is not None else 0
        if text:
            check_search_text(text)
        d = self.store.list(text or None, self._limit(limit), offset, search_ssn=full)
        view = full_view if full else directory_view
        return d.addCallback(lambda persons: [view(p) for p in persons])

    @_deferred
    def get(self, ssn: str, full: bool = True):
        view = full_view if full else directory_view
        return self.store.get(check_ssn(ssn)).addCallback(view)

    @_deferred
    def add(self, fields: dict, journal=None):
        """ADD: C{fields} holds C{ssn}, C{name}, C{surname}[, C{job}, C{salary}].
        C{journal} (here and in every write): the command's history row,
        written in the write's transaction."""
        fields = dict(fields)
        ssn = check_ssn(fields.pop("ssn", None))
        values = check_fields(fields, adding=True)
        d = self.store.add(ssn, values, self.now_ms(), journal=journal)

        def added(person):
            self.log.info("person {ssn} added", ssn=ssn)
            return person.to_wire()
        return d.addCallback(added)

    @_deferred
    def update(self, ssn: str, fields: dict, journal=None):
        ssn = check_ssn(ssn)
        values = check_fields(dict(fields), adding=False)
        d = self.store.update(ssn, values, self.now_ms(), journal=journal)
        return d.addCallback(lambda p: p.to_wire())

    @_deferred
    def delete(self, ssn: str, journal=None):
        """Delete from the server's own roster; sync clients keep their copy
        until a REMOVE is queued for them."""
        ssn = check_ssn(ssn)
        return self.store.delete(ssn, journal=journal).addCallback(lambda _: None)

    @_deferred
    def count(self):
        return self.store.count()

    # -- operator listings --------------------------------------------------

    def isOnline(self, client: str) -> bool:
        return client in self._streams

    def onlineClients(self) -> list[str]:
        return sorted(self._streams)

    @_deferred
    def clients(self):
        return self.store.clients().addCallback(
            lambda infos: [c.to_wire(online=self.isOnline(c.name)) for c in infos])

    @_deferred
    def messages(self, client: str | None = None, limit=None):
        if client is not None:
            client = check_client(client)
            if client == "*":
                client = None
        d = self.store.messages(client, self._limit(limit))
        return d.addCallback(lambda rows: [m.to_wire() for m in rows])

    @defer.inlineCallbacks
    def overview(self, limit: int = 20):
        """
        One snapshot for an operator console: person count and the first
        persons, every client with its online flag, the newest messages.
        """
        persons = yield self.list(limit=limit)
        total = yield self.count()
        clients = yield self.clients()
        messages = yield self.messages(limit=limit)
        return {"persons": persons, "person_count": total, "clients": clients,
                "messages": messages, "online": self.onlineClients()}

    # -- queueing -----------------------------------------------------------

    @_deferred
    def send(self, persons: str, clients: str, journal=None):
        """SEND: queue SAVE of one person or C{*} to one client or C{*}.
        @return: a Deferred firing with the number of messages queued."""
        return self._enqueue(check_target_ssn(persons), check_client(clients), SAVE, journal)

    @_deferred
    def remove(self, persons: str, clients: str, journal=None):
        """REMOVE: queue DELETE of one person (or DELETE_ALL for C{*})."""
        return self._enqueue(check_target_ssn(persons), check_client(clients), DELETE, journal)

    def _enqueue(self, persons, clients, action, journal=None):
        d = self.store.enqueue(persons, clients, action, self.now_ms(), journal=journal)

        def queued(result):
            self.log.info("queued {count} {action} messages ({persons} to {clients})",
                          count=result.count, action=action, persons=persons, clients=clients)
            for name in result.ranges:
                feed = self._streams.get(name)
                if feed is not None:
                    feed.notify()
            return result.count
        return d.addCallback(queued)

    @_deferred
    def prune(self, days: float):
        """Forget acknowledged messages older than C{days}."""
        before = self.now_ms() - int(days * 86400 * 1000)
        return self.store.prune_acked(before)

    # -- sync streams -------------------------------------------------------

    @_deferred
    def openSync(self, client: str, sink, after=0, account_id: int | None = None):
        """
        SYNC: make C{sink} the sync stream of C{client} (the logged-in
        account's name).

        @return: a Deferred firing with the L{SyncFeed}, not yet started: the
            protocol writes C{200 syncing}, then calls C{feed.start()}, and
            calls C{feed.stop()} when the connection closes (also if it
            closed before this Deferred fired).
        """
        after = parse_int(after, "after")
        d = self.store.register_client(client, self.now_ms(), account_id)

        def registered(info):
            if after > info.highest_seq:
                # The client's copy is ahead of this server's outbox (say the
                # server's database was recreated): starting there would skip
                # every new message up to that seq without a word.
                raise BadArguments("after=%d is beyond the last message queued for %s (%d): "
                                   "the local copy does not belong to this server"
                                   % (after, client, info.highest_seq))
            feed = SyncFeed(self.store, client, sink, after, page_size=self.page_size,
                            clock=self.clock, retry_delay=self.retry_delay,
                            on_stop=self._feedStopped)
            old = self._streams.get(client)
            self._streams[client] = feed
            if old is not None:
                self.log.info("sync stream of {client} replaced by a newer one", client=client)
                old.stop()
                old.sink.streamReplaced()
            self.log.info("sync stream of {client} opened after {after}, {pending} pending",
                          client=client, after=after, pending=info.pending)
            return feed
        return d.addCallback(registered)

    def _feedStopped(self, feed: SyncFeed):
        if self._streams.get(feed.client) is feed:
            del self._streams[feed.client]

    @_deferred
    def ack(self, client: str, seq, journal=None):
        """ACK: cumulative. @return: a Deferred of the acknowledged seq."""
        return self.store.ack(client, parse_int(seq, "seq"), journal=journal)

    def stopStreams(self):
        """Stop every live stream (service shutdown)."""
        for feed in list(self._streams.values()):
            feed.stop()

    def stop(self):
        """Called by the root service before the database pool stops."""
        self.stopStreams()
