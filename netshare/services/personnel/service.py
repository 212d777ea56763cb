"""
The personnel service: the roster, SEND/REMOVE queueing and the registry of
live sync streams.

The line protocol (L{netshare.protocols.personnel}) parses commands and
formats replies; this module decides (with the rules of
L{netshare.services.personnel.rules}; a stream is a
L{SyncFeed<netshare.services.personnel.syncfeed.SyncFeed>}).  The operator
shell calls the very same methods, so a SEND typed in the manhole and a SEND
on the wire take one code path.

Decisions where docs/protocol.md is silent (section 4.1), besides the
field rules:

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

import builtins
from collections.abc import Mapping
from typing import Any, Protocol

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from netshare.deferreds import deferred
from netshare.errors import BadArguments, PermissionDenied
from netshare.services.clock import default_clock
from netshare.services.personnel.rules import (
    ADMIN_COMMANDS,
    check_client,
    check_fields,
    check_search_text,
    check_ssn,
    check_target_ssn,
    directory_view,
    full_view,
    parse_int,
)
from netshare.services.personnel.syncfeed import (
    DEFAULT_PAGE_SIZE,
    DEFAULT_RETRY_DELAY,
    OutboxReader,
    SyncFeed,
    SyncSink,
)
from netshare.storage.history import JournalRow
from netshare.storage.outbox import (
    DELETE,
    SAVE,
    ClientInfo,
    EnqueueResult,
    MessageInfo,
)
from netshare.storage.roster import DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT, Person

#: A JSON object of docs/protocol.md section 4.  (Inside the classes below,
#: C{list} is the LIST method: the builtin is spelt C{builtins.list}.)
WireObject = dict[str, Any]


class PersonnelStore(OutboxReader, Protocol):
    """The store calls the service makes (L{netshare.storage.personnel.PersonnelStore})."""

    def list(
        self, text: str | None, limit: int, offset: int, /, *, search_ssn: bool
    ) -> Deferred[builtins.list[Person]]: ...

    def count(self) -> Deferred[int]: ...

    def get(self, ssn: str, /) -> Deferred[Person]: ...

    def add(
        self, ssn: str, fields: Mapping[str, str], now_ms: int, /, *, journal: JournalRow | None
    ) -> Deferred[Person]: ...

    def update(
        self, ssn: str, fields: Mapping[str, str], now_ms: int, /, *, journal: JournalRow | None
    ) -> Deferred[Person]: ...

    def delete(self, ssn: str, /, *, journal: JournalRow | None) -> Deferred[None]: ...

    def clients(self) -> Deferred[builtins.list[ClientInfo]]: ...

    def messages(
        self, client: str | None, limit: int, /
    ) -> Deferred[builtins.list[MessageInfo]]: ...

    def enqueue(
        self,
        persons: str,
        clients: str,
        action: str,
        now_ms: int,
        /,
        *,
        journal: JournalRow | None,
    ) -> Deferred[EnqueueResult]: ...

    def register_client(
        self, name: str, now_ms: int, account_id: int | None, /
    ) -> Deferred[ClientInfo]: ...

    def ack(self, client: str, seq: int, /, *, journal: JournalRow | None) -> Deferred[int]: ...

    def prune_acked(self, before_ms: int, /) -> Deferred[int]: ...


class PersonnelService:
    """
    Roster CRUD, SEND/REMOVE queueing and the registry of live sync streams.

    Every public method returns a Deferred (validation errors included, as a
    failed Deferred of a L{netshare.errors.NetshareError}), except
    L{authorize}, L{isOnline} and L{onlineClients}, which answer at once.
    Listings come back as lists of docs/protocol.md JSON objects (dicts).

    @param store: the L{PersonnelStore}.
    @param clock: an C{IReactorTime}, the global reactor by default.
    """

    log = Logger()

    def __init__(
        self,
        store: PersonnelStore,
        clock: IReactorTime | None = None,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        list_default: int = DEFAULT_LIST_LIMIT,
        list_max: int = MAX_LIST_LIMIT,
        retry_delay: float = DEFAULT_RETRY_DELAY,
    ):
        self.store = store
        self.clock = default_clock(clock)
        self.page_size = page_size
        self.list_default = list_default
        self.list_max = min(list_max, MAX_LIST_LIMIT)
        self.retry_delay = retry_delay
        self._streams: dict[str, SyncFeed] = {}

    # -- helpers ------------------------------------------------------------

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    def authorize(self, verb: str, role: str | None) -> None:
        """Raise L{PermissionDenied} (531) unless C{role} may use C{verb}."""
        if verb.upper() in ADMIN_COMMANDS and role != "admin":
            raise PermissionDenied("permission denied: %s needs admin" % (verb.upper(),))

    def _limit(self, limit: object) -> int:
        if limit is None:
            return self.list_default
        return max(1, min(parse_int(limit, "limit"), self.list_max))

    # -- the roster ---------------------------------------------------------

    @deferred
    async def list(
        self,
        text: str | None = None,
        limit: object = None,
        offset: object = None,
        full: bool = True,
    ) -> builtins.list[WireObject]:
        """LIST.  C{full}: the whole record (admins, the operator shell);
        otherwise the directory view (L{directory_view}), and the search
        text matches name, surname and job only: matching it against the
        ssn would let a substring search read the ssn back digit by digit."""
        start = parse_int(offset, "offset") if offset is not None else 0
        if text:
            check_search_text(text)
        persons = await self.store.list(text or None, self._limit(limit), start, search_ssn=full)
        view = full_view if full else directory_view
        return [view(p) for p in persons]

    @deferred
    async def get(self, ssn: str, full: bool = True) -> WireObject:
        person = await self.store.get(check_ssn(ssn))
        return full_view(person) if full else directory_view(person)

    # add, update and delete are callback chains, not coroutines: every
    # acknowledged personnel write passes here, and a coroutine's frame and
    # Deferred per call measured about a tenth of the reactor thread at 100
    # writers (bench/peers.py --only add, py-spy).  A refusal before the
    # store is reached fails the Deferred, as a coroutine's would.

    def add(
        self, fields: Mapping[str, Any], journal: JournalRow | None = None
    ) -> Deferred[WireObject]:
        """ADD: C{fields} holds C{ssn}, C{name}, C{surname}[, C{job}, C{salary}].
        C{journal} (here and in every write): the command's history row,
        written in the write's transaction."""
        try:
            values = dict(fields)
            ssn = check_ssn(values.pop("ssn", None))
            d = self.store.add(
                ssn, check_fields(values, adding=True), self.now_ms(), journal=journal
            )
        except Exception:
            return fail()
        # (No log event of its own: the ADD is in the history and the command
        # log already; a JSON event per ADD cost a tenth of the reactor at
        # 100 writers and put a person's ssn in the log file.)
        return d.addCallback(Person.to_wire)

    def update(
        self, ssn: str, fields: Mapping[str, Any], journal: JournalRow | None = None
    ) -> Deferred[WireObject]:
        try:
            ssn = check_ssn(ssn)
            values = check_fields(dict(fields), adding=False)
            d = self.store.update(ssn, values, self.now_ms(), journal=journal)
        except Exception:
            return fail()
        return d.addCallback(Person.to_wire)

    def delete(self, ssn: str, journal: JournalRow | None = None) -> Deferred[None]:
        """Delete from the server's own roster; sync clients keep their copy
        until a REMOVE is queued for them."""
        try:
            d = self.store.delete(check_ssn(ssn), journal=journal)
        except Exception:
            return fail()
        return d.addCallback(lambda _: None)

    @deferred
    async def count(self) -> int:
        return await self.store.count()

    # -- operator listings --------------------------------------------------

    def isOnline(self, client: str) -> bool:
        return client in self._streams

    def onlineClients(self) -> builtins.list[str]:
        return sorted(self._streams)

    @deferred
    async def clients(self) -> builtins.list[WireObject]:
        infos = await self.store.clients()
        return [c.to_wire(online=self.isOnline(c.name)) for c in infos]

    @deferred
    async def messages(
        self, client: str | None = None, limit: object = None
    ) -> builtins.list[WireObject]:
        if client is not None:
            client = check_client(client)
            if client == "*":
                client = None
        rows = await self.store.messages(client, self._limit(limit))
        return [m.to_wire() for m in rows]

    @deferred
    async def overview(self, limit: int = 20) -> WireObject:
        """
        One snapshot for an operator console: person count and the first
        persons, every client with its online flag, the newest messages.
        """
        persons = await self.list(limit=limit)
        total = await self.count()
        clients = await self.clients()
        messages = await self.messages(limit=limit)
        return {
            "persons": persons,
            "person_count": total,
            "clients": clients,
            "messages": messages,
            "online": self.onlineClients(),
        }

    # -- queueing -----------------------------------------------------------

    @deferred
    async def send(self, persons: str, clients: str, journal: JournalRow | None = None) -> int:
        """SEND: queue SAVE of one person or C{*} to one client or C{*}.
        @return: a Deferred firing with the number of messages queued."""
        return await self._enqueue(check_target_ssn(persons), check_client(clients), SAVE, journal)

    @deferred
    async def remove(self, persons: str, clients: str, journal: JournalRow | None = None) -> int:
        """REMOVE: queue DELETE of one person (or DELETE_ALL for C{*})."""
        return await self._enqueue(
            check_target_ssn(persons), check_client(clients), DELETE, journal
        )

    async def _enqueue(
        self, persons: str, clients: str, action: str, journal: JournalRow | None
    ) -> int:
        result = await self.store.enqueue(persons, clients, action, self.now_ms(), journal=journal)
        self.log.info(
            "queued {count} {action} messages ({persons} to {clients})",
            count=result.count,
            action=action,
            persons=persons,
            clients=clients,
        )
        for name in result.ranges:
            feed = self._streams.get(name)
            if feed is not None:
                feed.notify()
        return result.count

    @deferred
    async def prune(self, days: float) -> int:
        """Forget acknowledged messages older than C{days}."""
        return await self.store.prune_acked(self.now_ms() - int(days * 86400 * 1000))

    # -- sync streams -------------------------------------------------------

    @deferred
    async def openSync(
        self, client: str, sink: SyncSink, after: object = 0, account_id: int | None = None
    ) -> SyncFeed:
        """
        SYNC: make C{sink} the sync stream of C{client} (the logged-in
        account's name).

        @return: a Deferred firing with the L{SyncFeed}, not yet started: the
            protocol writes C{200 syncing}, then calls C{feed.start()}, and
            calls C{feed.stop()} when the connection closes (also if it
            closed before this Deferred fired).
        """
        start = parse_int(after, "after")
        info = await self.store.register_client(client, self.now_ms(), account_id)
        if start > info.highest_seq:
            # The client's copy is ahead of this server's outbox (say the
            # server's database was recreated): starting there would skip
            # every new message up to that seq without a word.
            raise BadArguments(
                "after=%d is beyond the last message queued for %s (%d): "
                "the local copy does not belong to this server" % (start, client, info.highest_seq)
            )
        feed = SyncFeed(
            self.store,
            client,
            sink,
            start,
            page_size=self.page_size,
            clock=self.clock,
            retry_delay=self.retry_delay,
            on_stop=self._feedStopped,
        )
        old = self._streams.get(client)
        self._streams[client] = feed
        if old is not None:
            self.log.info("sync stream of {client} replaced by a newer one", client=client)
            old.stop()
            old.sink.streamReplaced()
        self.log.info(
            "sync stream of {client} opened after {after}, {pending} pending",
            client=client,
            after=start,
            pending=info.pending,
        )
        return feed

    def _feedStopped(self, feed: SyncFeed) -> None:
        if self._streams.get(feed.client) is feed:
            del self._streams[feed.client]

    @deferred
    async def ack(self, client: str, seq: object, journal: JournalRow | None = None) -> int:
        """ACK: cumulative. @return: a Deferred of the acknowledged seq."""
        return await self.store.ack(client, parse_int(seq, "seq"), journal=journal)

    def stop(self) -> None:
        """Stop every live stream (the root service calls it before the
        database pool stops)."""
        for feed in list(self._streams.values()):
            feed.stop()
