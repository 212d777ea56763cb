"""
The ttweet protocol (PROTOCOL.md section 3) on the base line protocol.

The wire side only: parse the words, call the L{netshare.services.ttweet.Hub}, turn
its answers into replies.  The hub decides everything else (validation,
subscriptions, fan-out, flood limit, timelines, the batch writer).  The
protocol object is the hub's session: it has C{username}, C{account_id} and
the base's C{sendPush}.

Login.  C{LOGIN <user> [password]}: a name that holds an account needs its
password (C{535} without it, after the same delay and failure count as a
wrong password, through the base's L{loginFailed}); a name without one logs
in as a I{guest}.  A password given for a name without an account is a
C{535} too, never a silent guest login (a typo in a registered name must not
become somebody else's guest session).  A guest has no account
(C{self.account} stays None): the ttweet verbs are let through for it by
L{isPublic}, C{HISTORY} needs an account (C{530}), C{WHOAMI} answers
C{200 <user> guest}.  C{LAST} needs no login at all (the one-shot C{-d} mode
of the client); C{TWEET} does (the client's one-shot C{-u} mode logs in as a
guest first).  A logged-in connection is exempt from the idle timeout only
while it has at least one subscription: it is then waiting for pushes.

Tweet acknowledgements.  C{200 ok} to a TWEET means the tweet is durable:
the hub fires its Deferred when the batch holding the tweet is committed
(at most C{ttweet_batch_interval} plus one commit later).  Subscribers get
their C{600} push at once, before that.  So that a publisher that pipelines
its tweets is not limited to one tweet per commit, a TWEET does not hold up
the commands after it: its reply is I{reserved} in a per-connection queue
(L{_held}) and the next command runs at once; every reply is released
strictly in command order, each as soon as everything before it is ready.
Pushes are not held (they may arrive before the acknowledgement of the very
tweet they carry, as they would on another connection).  The request
history records such a TWEET with the code it had when accepted (C{200});
if the store then fails for longer than the hub's C{fail_after}, the client
gets C{451} while the tweet stays queued and is stored when the database is
back (the hub's contract), and a warning is logged.  A client that keeps
pipelining while its acknowledgements wait stops being read beyond
C{MAX_HELD} reserved replies, so the queue is bounded.

Pushes.  The hub calls L{TtweetProtocol.sendPush} once per delivery with the
tweet's one serialised line; a connection collects what it gets during one
reactor turn and writes it as one chunk at the end of the turn
(L{_PushBatch}), so a burst of tweets costs each subscriber one trip through
the transport instead of one per tweet.  Everything written to a slow
reader still goes through the base's accounting, which drops the
connection at C{max_output}; nobody else waits for it.
"""

from collections import deque

from twisted.internet import defer
from twisted.logger import Logger

from netshare.errors import BadArguments, BadCredentials, BadSequence, Conflict, NetshareError
from netshare.protocols.line import CommandProtocol, Listing, Reply
from netshare.services import ttweet
from netshare.services.accounts import UNKNOWN_USER

#: The verbs a logged-in guest may use (besides the base's PUBLIC ones).
TTWEET_VERBS = frozenset({"TWEET", "SUBSCRIBE", "UNSUBSCRIBE", "TIMELINE", "GETUSERS",
                          "GETTWEETS", "LAST"})
#: Reserved replies after which a connection is not read until some are sent.
MAX_HELD = 4096


class _Slot:
    """A reply reserved in command order, filled in when it is known."""

    __slots__ = ("lines",)

    def __init__(self):
        self.lines = None


class _Reserved:
    """What a handler returns for a reply that will come later (via a slot)."""

    code = 200

    def lines(self):
        return []


_RESERVED = _Reserved()


class _PushBatch:
    """
    The pushes of one reactor turn, written once per connection.

    A publisher's pipelined tweets are fanned out one after the other within
    one turn; writing each push to each transport separately would cost one
    trip through the transport's write path per delivery.  Instead a
    connection's pushes are collected during the turn and written as one
    chunk at its end (C{callLater(0)}: before the reactor next waits, so no
    push is delayed by more than the turn that made it).  A push still
    precedes any reply written after it on the same connection, the
    slow-reader accounting sees every byte (at the end of the turn), and a
    single tweet is still the same bytes object for every recipient.
    One batch per listener (factory).
    """

    __slots__ = ("reactor", "dirty", "call")

    def __init__(self, reactor):
        self.reactor = reactor
        self.dirty = []
        self.call = None

    @classmethod
    def of(cls, factory):
        batch = factory.__dict__.get("_ttweetPushBatch")
        if batch is None:
            batch = factory._ttweetPushBatch = cls(factory.reactor)
        return batch

    def add(self, proto):
        self.dirty.append(proto)
        if self.call is None:
            self.call = self.reactor.callLater(0, self.flush)

    def flush(self):
        self.call = None
        dirty, self.dirty = self.dirty, []
        for proto in dirty:
            try:
                proto._sendPushes()
            except Exception:
                TtweetProtocol.log.failure("writing pushes to {peer}", peer=proto.peer)


class TtweetProtocol(CommandProtocol):
    """One ttweet connection; see the module docstring."""

    log = Logger()
    service = "ttweet"
    HELP = dict(CommandProtocol.HELP)
    HELP.update({
        "LOGIN": "LOGIN <user> [password]: a registered name needs its password; "
                 "any other name logs in as a guest",
        "WHOAMI": "WHOAMI: 200 <user> <role|guest>",
        "TWEET": 'TWEET "<message>" [<#tag#tag...>]: 1-150 characters, 1-5 tags',
        "SUBSCRIBE": "SUBSCRIBE <#tag>: at most 3 (#ALL: every tweet); pushes 600 <tweet>",
        "UNSUBSCRIBE": "UNSUBSCRIBE <#tag>: #ALL drops every subscription",
        "TIMELINE": "TIMELINE: the tweets delivered to you, oldest first",
        "GETUSERS": "GETUSERS: the users online",
        "GETTWEETS": "GETTWEETS <user>: that user's tweets, oldest first",
        "LAST": "LAST: the most recent message (no login needed)",
    })

    def __init__(self):
        super().__init__()
        #: The hub's session identity: set at login (guest or account).
        self.username = None
        self._held = deque()          # _Slot (pending or filled) or ready line lists
        self._heldWaiters = []        # Deferreds fired when _held empties
        self._heldPaused = False      # reading stopped because _held is too long
        self._closePending = False    # a close waits for the reserved replies
        self._gone = False
        self._pushBuf = None          # pushes queued during this reactor turn

    @property
    def hub(self):
        return self.factory.app

    # -- access

    def isPublic(self, verb):
        return verb == "LAST" or (self.username is not None and verb in TTWEET_VERBS)

    # -- login

    def cmd_LOGIN(self, args):
        if not 1 <= len(args) <= 2:
            raise BadArguments("usage: LOGIN <user> [password]")
        if self.username is not None:
            raise BadSequence("already logged in as %s" % (self.username,))
        # The name goes into the history only once it is known to be an
        # account's or a guest's (a password typed as the name must not).
        self.recordAs("LOGIN %s%s" % (UNKNOWN_USER, " ***" if len(args) == 2 else ""))
        name = ttweet.check_username(args[0])
        if self.hub.is_online(name):
            self.recordAs("LOGIN %s%s" % (name, " ***" if len(args) == 2 else ""))
            raise Conflict("username illegal")
        if len(args) == 2:
            return self.authenticate(name, args[1])
        return self._guestLogin(name)

    @defer.inlineCallbacks
    def _guestLogin(self, name):
        account = yield self.runtime.accounts.store.get(name)
        if account is not None:
            self.recordAs("LOGIN %s" % (account.name,))
            yield self.loginFailed()
            raise BadCredentials("%s is registered: password required" % (account.name,))
        if self.username is not None or self._gone:
            raise BadSequence("already logged in")
        self._enterHub(name)
        self.recordAs("LOGIN %s" % (name,))
        self.log.info("guest {user} logged in", service=self.service, user=name, peer=self.peer)
        return Reply(230, "logged in as %s (guest)" % (name,))

    def loggedIn(self):
        # The base's authenticate() just set self.account.
        try:
            if self._gone:            # closed while the password was checked
                raise BadSequence("connection closed")
            self._enterHub(self.account.name)
        except NetshareError:
            self.account = None
            raise

    @property
    def account_id(self):
        """The hub's session identity: the account's id, None for a guest."""
        return self.account.id if self.account is not None else None

    def isLoggedIn(self) -> bool:
        return self.username is not None

    def _enterHub(self, name):
        self.username = name
        try:
            self.hub.login(self)      # 555 username illegal when online already
        except NetshareError:
            self.username = None
            raise
        self.loginDone()

    def cmd_WHOAMI(self, args):
        if self.account is None and self.username is not None:
            return Reply(200, "%s guest" % (self.username,))
        return super().cmd_WHOAMI(args)

    def connectionClosed(self):
        self._gone = True
        self._held.clear()
        self._pushBuf = None
        if self.username is not None:
            self.hub.logout(self)

    # -- pushes (see _PushBatch)

    def sendPush(self, data):
        """
        Queue a push for the end of this reactor turn (one call per delivery
        on the fan-out path: an append, after the first push of the turn).
        """
        buf = self._pushBuf
        if buf is not None:
            buf.append(data)
            return
        if self._closing or self._gone:
            return
        self._pushBuf = [data]
        _PushBatch.of(self.factory).add(self)

    def _sendPushes(self):
        """Write the pushes queued this turn as one chunk."""
        buf, self._pushBuf = self._pushBuf, None
        if not buf or self._gone:
            return
        data = buf[0] if len(buf) == 1 else b"".join(buf)
        stats = self.factory.stats
        if self._output.full or self._closing or self._sendingRaw is not None \
                or self._rawRemaining:
            # The base's path: queueing, accounting against max_output, and
            # the slow-reader drop (it counts one push).
            stats.pushes += len(buf) - 1
            return CommandProtocol.sendPush(self, data)
        stats.pushes += len(buf)
        stats.bytes_out += len(data)
        self.transport.write(data)

    # -- ttweet commands

    def cmd_TWEET(self, args):
        if not args:
            raise BadArguments("message format illegal")
        if len(args) > 2:
            raise BadArguments('usage: TWEET "<message>" [<hashtags>]')
        d = self.hub.publish(self, args[0], args[1] if len(args) == 2 else "",
                             journal=self.journal(200))
        return self._reserve(d)

    def cmd_SUBSCRIBE(self, args):
        if len(args) != 1:
            raise BadArguments("usage: SUBSCRIBE <#tag>")
        self.hub.subscribe(self, args[0])
        self.setIdleExempt(True)
        return Reply(200, "operation success")

    def cmd_UNSUBSCRIBE(self, args):
        if len(args) != 1:
            raise BadArguments("usage: UNSUBSCRIBE <#tag>")
        self.hub.unsubscribe(self, args[0])
        if not self.hub.subscriptions(self):
            self.setIdleExempt(False)
        return Reply(200, "operation success")

    def cmd_TIMELINE(self, args):
        if args:
            raise BadArguments("usage: TIMELINE")
        return self.hub.timeline(self).addCallback(Listing)

    def cmd_GETUSERS(self, args):
        if args:
            raise BadArguments("usage: GETUSERS")
        return Listing([{"user": name} for name in self.hub.online_users()])

    def cmd_GETTWEETS(self, args):
        if len(args) != 1:
            raise BadArguments("usage: GETTWEETS <user>")
        return self.hub.tweets_by(args[0]).addCallback(Listing)

    def cmd_LAST(self, args):
        if args:
            raise BadArguments("usage: LAST")
        return self.hub.last().addCallback(
            lambda message: Reply(200, "Empty Message" if message is None else message))

    # -- replies reserved in command order (see the module docstring)

    def _reserve(self, d):
        """Reply later with what C{d} gives, without holding up later commands."""
        if d.called:              # already durable (or failed): answer as usual
            return d.addCallback(lambda _: Reply(200, "ok"))
        slot = _Slot()
        self._held.append(slot)
        d.addCallbacks(self._acked, self._ackFailed)
        d.addCallback(self._fill, slot)
        if len(self._held) >= MAX_HELD and not self._heldPaused:
            self._heldPaused = True
            self.pauseProducing()
        return _RESERVED

    def _acked(self, tweet):
        return ["200 ok"]

    def _ackFailed(self, failure):
        if isinstance(failure.value, NetshareError):
            self.log.warn("tweet acknowledged late with {code}: {text}", service=self.service,
                          user=self.username, peer=self.peer, code=failure.value.code,
                          text=failure.value.text)
            return [failure.value.replyLine()]
        self.log.failure("tweet acknowledgement failed", failure, service=self.service,
                         user=self.username, peer=self.peer)
        return ["451 internal error"]

    def _fill(self, lines, slot):
        slot.lines = lines
        self._releaseHeld()

    def _write(self, lines):
        # Every reply goes through here: behind a reserved one, it waits;
        # pushes queued before it go first (the order things happened in).
        if self._held and lines:
            self._held.append(lines)
            return
        if self._pushBuf:
            self._sendPushes()
        CommandProtocol._write(self, lines)

    def _releaseHeld(self):
        if self._gone:
            return
        held = self._held
        while held:
            head = held[0]
            lines = head.lines if isinstance(head, _Slot) else head
            if lines is None:
                break
            held.popleft()
            if not self._closing:
                if self._pushBuf:
                    self._sendPushes()
                CommandProtocol._write(self, lines)
        if self._heldPaused and len(held) < MAX_HELD // 2:
            self._heldPaused = False
            if not (self._closePending or self._closing or self._waitingForDrain
                    or self._current is not None):
                self.resumeProducing()
        if not held and self._heldWaiters:
            waiters, self._heldWaiters = self._heldWaiters, []
            for w in waiters:
                w.callback(None)

    def resumeProducing(self):
        if self._heldPaused or self._closePending:
            return  # resumed by _releaseHeld once the reserved replies are out
        CommandProtocol.resumeProducing(self)

    def _whenReleased(self):
        if not self._held:
            return defer.succeed(None)
        d = defer.Deferred()
        self._heldWaiters.append(d)
        return d

    def cmd_QUIT(self, args):
        # 221 comes after every reserved acknowledgement, then the close.
        if self._held:
            return self._whenReleased().addCallback(lambda _: CommandProtocol.cmd_QUIT(self, args))
        return CommandProtocol.cmd_QUIT(self, args)

    def _closeWith(self, line):
        # A close (421 shutting down, idle timeout, line too long) waits for
        # the reserved replies before it, so an acknowledged tweet is never
        # left unacknowledged by an orderly close; nothing more is read.
        if self._held and not self._closing and not self._gone:
            if self._closePending:
                return
            self._closePending = True
            if not self.paused:
                self.pauseProducing()
            self._whenReleased().addCallback(lambda _: self._closeWith(line))
            return
        if self._pushBuf and not self._closing:
            self._sendPushes()
        CommandProtocol._closeWith(self, line)
