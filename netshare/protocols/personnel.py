"""
The personnel protocol (docs/protocol.md section 4) on the base line protocol.

This module only parses arguments and shapes replies; every decision is
L{netshare.services.personnel.PersonnelService}'s.  Admin-only verbs are checked
before their arguments, so a C{user} account gets C{531} for ADD, UPDATE,
DELETE, CLIENTS, MESSAGES, SEND and REMOVE whatever it typed after them.

A connection becomes a sync stream with C{SYNC [after=N]}:

 - C{200 syncing}, then the client's pending messages as C{610/611/612}
   pushes in seq order, a page at a time (written in blocks of many pushes,
   see L{netshare.services.personnel.SyncFeed}), then live ones as they are queued;
 - the connection is the feed's sink: the feed stops reading the outbox while
   the transport's buffer is full and resumes from L{PersonnelProtocol.onDrain};
 - the stream is exempt from the idle timeout (it only waits for pushes);
 - C{ACK <seq>} is answered C{200 ok}; it is refused (C{503}) on a
   connection that is not a sync stream and (C{501}) for a seq this stream
   has not pushed yet, so a confused client can never acknowledge messages
   it never saw;
 - a second C{SYNC} on the same connection is C{503}; a C{SYNC} for the
   same account on another connection replaces this stream, which is told
   C{421 stream replaced by a new SYNC} and closed.
"""

from netshare.errors import BadArguments, BadSequence
from netshare.protocols.line import CommandProtocol
from netshare.protocols.replies import Listing, ObjectReply, Reply
from netshare.protocols.words import parse_int, split_options
from netshare.services.personnel.rules import PERSON_FIELDS
from netshare.services.personnel.service import PersonnelService
from netshare.services.personnel.syncfeed import SyncFeed

HELP = {
    "LIST": "LIST [<text>] [limit=N] [offset=N]: people whose name, surname, ssn or job "
    "contains text",
    "GET": "GET <ssn>",
    "ADD": "ADD ssn=.. name=.. surname=.. [job=..] [salary=..] (admin)",
    "UPDATE": "UPDATE <ssn> field=value ... (admin; fields: name, surname, job, salary)",
    "DELETE": "DELETE <ssn>: from the server's own database only (admin)",
    "CLIENTS": "CLIENTS: sync clients with online, pending, acked, last_seen (admin)",
    "MESSAGES": "MESSAGES [client=NAME] [limit=N]: queued messages, newest first (admin)",
    "SEND": "SEND <ssn|*> <client|*>: queue SAVE of one or all people (admin)",
    "REMOVE": "REMOVE <ssn|*> <client|*>: queue DELETE of one or all people (admin)",
    "SYNC": "SYNC [after=<seq>]: make this connection your sync stream (610/611/612 pushes)",
    "ACK": "ACK <seq>: on a sync stream, acknowledge every message up to seq",
}


class PersonnelProtocol(CommandProtocol):
    service = "personnel"
    HELP = dict(CommandProtocol.HELP, **HELP)

    def __init__(self):
        super().__init__()
        self.feed: SyncFeed | None = None  # once SYNC succeeded
        self._syncing = False  # SYNC asked for (pending or open) on this connection
        self._gone = False  # connectionClosed ran

    @property
    def app(self) -> PersonnelService:
        return self.factory.app

    def _admin(self, verb):
        self.app.authorize(verb, self.account.role)

    # -- reading

    def cmd_LIST(self, args):
        pos, opts = split_options(args, allowed=("limit", "offset"), positional=(0, 1))
        d = self.app.list(
            pos[0] if pos else None,
            opts.get("limit"),
            opts.get("offset"),
            full=self.account.is_admin,
        )
        return d.addCallback(Listing)

    def cmd_GET(self, args):
        pos, _ = split_options(args, positional=(1, 1))
        return self.app.get(pos[0], full=self.account.is_admin).addCallback(ObjectReply)

    # -- writing (admin)

    def cmd_ADD(self, args):
        self._admin("ADD")
        _, opts = split_options(args, allowed=("ssn",) + PERSON_FIELDS, positional=(0, 0))
        if "ssn" not in opts:
            raise BadArguments("usage: ADD ssn=.. name=.. surname=.. [job=..] [salary=..]")
        return self.app.add(opts, journal=self.journal(201)).addCallback(
            lambda person: ObjectReply(person, code=201)
        )

    def cmd_UPDATE(self, args):
        self._admin("UPDATE")
        pos, opts = split_options(args, allowed=PERSON_FIELDS, positional=(1, 1))
        return self.app.update(pos[0], opts, journal=self.journal(200)).addCallback(ObjectReply)

    def cmd_DELETE(self, args):
        self._admin("DELETE")
        pos, _ = split_options(args, positional=(1, 1))
        return self.app.delete(pos[0], journal=self.journal(200)).addCallback(
            lambda _: Reply(200, "deleted")
        )

    # -- operator commands (admin)

    def cmd_CLIENTS(self, args):
        self._admin("CLIENTS")
        split_options(args, positional=(0, 0))
        return self.app.clients().addCallback(Listing)

    def cmd_MESSAGES(self, args):
        self._admin("MESSAGES")
        _, opts = split_options(args, allowed=("client", "limit"), positional=(0, 0))
        return self.app.messages(opts.get("client"), opts.get("limit")).addCallback(Listing)

    def cmd_SEND(self, args):
        self._admin("SEND")
        pos, _ = split_options(args, positional=(2, 2))
        return self.app.send(pos[0], pos[1], journal=self.journal(200)).addCallback(self._queued)

    def cmd_REMOVE(self, args):
        self._admin("REMOVE")
        pos, _ = split_options(args, positional=(2, 2))
        return self.app.remove(pos[0], pos[1], journal=self.journal(200)).addCallback(self._queued)

    @staticmethod
    def _queued(count):
        return Reply(200, "queued %d" % (count,))

    # -- the sync stream

    def cmd_SYNC(self, args):
        _, opts = split_options(args, allowed=("after",), positional=(0, 0))
        if self._syncing:
            raise BadSequence("this connection is already a sync stream")
        after = parse_int(opts.get("after", "0"), "after")
        self._syncing = True
        d = self.app.openSync(self.accountName, self, after, account_id=self.account.id)

        def opened(feed):
            if self._gone:
                # The connection closed while the stream was being opened.
                feed.stop()
                return Reply(200, "syncing")
            self.feed = feed
            self.setIdleExempt(True)
            # Start after the 200 line is written (the base protocol writes
            # the reply right after this callback returns).
            self.factory.reactor.callLater(0, self._startFeed, feed)
            return Reply(200, "syncing")

        def failed(f):
            self._syncing = False
            return f

        return d.addCallbacks(opened, failed)

    def _startFeed(self, feed: SyncFeed) -> None:
        if self.feed is feed and not feed.stopped:
            feed.start()

    def cmd_ACK(self, args):
        pos, _ = split_options(args, positional=(1, 1))
        seq = parse_int(pos[0], "seq")
        if self.feed is None:
            raise BadSequence("ACK needs a sync stream: send SYNC first")
        if seq > self.feed.lastSent:
            raise BadArguments(
                "seq %d has not been sent on this stream (last sent %d)"
                % (seq, self.feed.lastSent)
            )
        return self.app.ack(self.accountName, seq, journal=self.journal(200)).addCallback(
            lambda _: Reply(200, "ok")
        )

    # -- the sink interface of SyncFeed (writable comes from the base)

    def sendPushes(self, data: bytes, count: int):
        """C{count} push lines (CRLF-terminated) in one write: the base's
        C{sendPush} with its backpressure and slow-reader limit, counted as
        C{count} pushes."""
        self.sendPush(data, count)

    def streamReplaced(self):
        self.feed = None
        self.log.info(
            "sync stream of {user} replaced; closing {peer}",
            service=self.service,
            user=self.user,
            peer=self.peer,
        )
        self.closeWith("421 stream replaced by a new SYNC")

    def streamFailed(self):
        self.feed = None
        self.closeWith("421 sync stream failed; reconnect")

    def onDrain(self):
        if self.feed is not None:
            self.feed.resume()

    def connectionClosed(self):
        self._gone = True
        feed, self.feed = self.feed, None
        if feed is not None:
            feed.stop()
