"""
The ttweet protocol (docs/protocol.md section 3) on the base line protocol.

The wire side only: parse the words, call the L{netshare.services.ttweet.hub.Hub}, turn
its answers into replies.  The hub decides everything else (validation,
subscriptions, fan-out, flood limit, timelines, the batch writer).  The
protocol object is the hub's session: it has C{username}, C{account_id} and
the base's C{sendPush} (see L{netshare.services.ttweet} for the hub's
side of that seam).

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
(group commit: a batch starts at once when none is being written, else the
moment the one in flight is committed, so a tweet waits at most two
commits).  Subscribers get
their C{600} push at once, before that.  So that a publisher that pipelines
its tweets is not limited to one tweet per commit, a TWEET does not hold up
the commands after it: it answers with a L{Later}, so its reply is
reserved in command order and the next command runs at once; every reply
is released strictly in command order, each as soon as everything before
it is ready (the base protocol does this, see L{netshare.protocols.output}).
Pushes are not held (they may arrive before the acknowledgement of the very
tweet they carry, as they would on another connection).  The request
history records such a TWEET with the code it had when accepted (C{200});
if the store then fails for longer than the hub's C{fail_after}, the client
gets C{451} while the tweet stays queued and is stored when the database is
back (the hub's contract), and a warning is logged.  A client that keeps
pipelining while its acknowledgements wait stops being read beyond
C{MAX_HELD} reserved replies, so the queue is bounded.  An orderly close
(C{QUIT}, C{421}) waits for the reserved replies before it.

Pushes.  The hub calls L{TtweetProtocol.sendPush} once per delivery with the
tweet's one serialised line; with C{batchPushes} a connection collects what
it gets during one reactor turn and writes it as one chunk at the end of
the turn, so a burst of tweets costs each subscriber one trip through the
transport instead of one per tweet.  Everything written to a slow
reader still goes through the base's accounting, which drops the
connection at C{max_output}; nobody else waits for it.
"""

from twisted.logger import Logger

from netshare.deferreds import deferred
from netshare.errors import BadArguments, BadCredentials, BadSequence, Conflict, NetshareError
from netshare.protocols.line import CommandProtocol
from netshare.protocols.replies import Later, Listing, Reply
from netshare.services.accounts import UNKNOWN_USER
from netshare.services.ttweet import rules

#: The verbs a logged-in guest may use (besides the base's PUBLIC ones).
TTWEET_VERBS = frozenset(
    {"TWEET", "SUBSCRIBE", "UNSUBSCRIBE", "TIMELINE", "GETUSERS", "GETTWEETS", "LAST"}
)


def _ok_reply(_: object) -> Reply:
    return Reply(200, "ok")


class TtweetProtocol(CommandProtocol):
    """One ttweet connection; see the module docstring."""

    log = Logger()
    service = "ttweet"
    batchPushes = True
    HELP = dict(CommandProtocol.HELP)
    HELP.update(
        {
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
        }
    )

    def __init__(self):
        super().__init__()
        #: The hub's session identity: set at login (guest or account).
        self.username = None
        self._gone = False

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
        name = rules.check_username(args[0])
        if self.hub.is_online(name):
            self.recordAs("LOGIN %s%s" % (name, " ***" if len(args) == 2 else ""))
            raise Conflict("username illegal")
        if len(args) == 2:
            return self.authenticate(name, args[1])
        return self._guestLogin(name)

    @deferred
    async def _guestLogin(self, name: str) -> Reply:
        account = await self.runtime.accounts.store.get(name)
        if account is not None:
            self.recordAs("LOGIN %s" % (account.name,))
            await self.loginFailed()
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
            if self._gone:  # closed while the password was checked
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
            self.hub.login(self)  # 555 username illegal when online already
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
        if self.username is not None:
            self.hub.logout(self)

    # -- ttweet commands

    def cmd_TWEET(self, args):
        if not args:
            raise BadArguments("message format illegal")
        if len(args) > 2:
            raise BadArguments('usage: TWEET "<message>" [<hashtags>]')
        d = self.hub.publish(
            self, args[0], args[1] if len(args) == 2 else "", journal=self.journal(200)
        )
        # The reply waits for the tweet's batch to commit; the next command
        # does not (see the module docstring).  A callback: once per tweet.
        return Later(d.addCallback(_ok_reply))

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
            lambda message: Reply(200, "Empty Message" if message is None else message)
        )
