"""
netshare-ttweet: the ttweet client (docs/protocol.md section 3).

Usage::

    netshare-ttweet [--tls] [--cafile CA.pem] <ServerIP> <ServerPort> <Username>
    netshare-ttweet [--tls] [--cafile CA.pem] [--user NAME] -u <ServerIP> <ServerPort> "<message>"
    netshare-ttweet [--tls] [--cafile CA.pem] -d <ServerIP> <ServerPort>

Interactive mode speaks the CS 3251 "ttweet" assignment's command set with
its exact messages::

    tweet "<message>" <Hashtag>     subscribe <Hashtag>     unsubscribe <Hashtag>
    timeline     getusers     gettweets <Username>     exit

Tweets pushed by the server print as they arrive, as
C{<sender>: "<message>" <hashtags>} (without the trailing space when a tweet
has no hashtag); C{timeline} and C{gettweets} print in the same format,
C{getusers} one name a line.  Input is read with Twisted's stdio (never a
blocking input loop), so pushes print while the prompt is waiting.  Each
command's output appears in the order the commands were typed.  Errors
before login print and exit with status 1; after login they print and the
session goes on.  C{exit} (or end of input) prints C{bye bye}.

The one-shot modes of the original single-message ttweet: C{-u} uploads one
message as a tweet without hashtag, after logging in as C{--user} (default:
the local login name reduced to ASCII letters and digits, else
C{anonymous}; a guest unless that name holds an account); C{-d} prints the
most recent message, or C{Empty Message}, with no login at all.

A name that holds an account needs its password: from C{NETSHARE_PASSWORD},
or else asked for on the terminal after the server says it is needed
(never on the command line).  C{--tls} verifies the server's certificate
against C{--cafile} (or the system trust store) and its name or address.
"""

from __future__ import annotations

import getpass
import ipaddress
import json
import os
import re
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer, stdio, task
from twisted.internet import error as net_error
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from netshare.clients.protocol import (
    ClientProtocol,
    Response,
    connect,
    password_from_env_or_prompt,
    quote,
)
from netshare.deferreds import deferred
from netshare.lines import LinearLineReceiver
from netshare.text import is_username

MAX_MESSAGE = 150
#: An interactive session sends PING this often, so a user who only reads
#: (no subscription, nothing typed) is not closed by the server's idle
#: timeout (300 s by default).
KEEPALIVE_SECONDS = 60.0

HOST_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")

ARGS_INTERACTIVE = "error: args should contain <ServerIP>   <ServerPort>   <Username>"
ARGS_UPLOAD = 'error: args should contain -u <ServerIP>   <ServerPort>   "<message>"'
ARGS_DOWNLOAD = "error: args should contain -d <ServerIP>   <ServerPort>"
IP_INVALID = "error: server ip invalid, connection refused."
PORT_INVALID = "error: server port invalid, connection refused."
USER_FORMAT = "error: username has wrong format, connection refused."
USER_ILLEGAL = "username illegal, connection refused."
USER_LEGAL = "username legal, connection established."
MESSAGE_LENGTH = "message length illegal, connection refused."
MESSAGE_FORMAT = "message format illegal."
HASHTAG_FORMAT = "hashtag illegal format, connection refused."
SUCCESS = "operation success"
NO_USER = "no user %s in the system"
BYE = "bye bye"
USAGE = "\n".join(
    [
        "usage: netshare-ttweet [--tls] [--cafile CA.pem] <ServerIP> <ServerPort> <Username>",
        "       netshare-ttweet [--tls] [--cafile CA.pem] [--user NAME] -u <ServerIP> <ServerPort>"
        ' "<message>"',
        "       netshare-ttweet [--tls] [--cafile CA.pem] -d <ServerIP> <ServerPort>",
        'commands: tweet "<message>" <Hashtag> | subscribe <Hashtag> | unsubscribe <Hashtag>',
        "          | timeline | getusers | gettweets <Username> | exit",
        "password of a registered name: NETSHARE_PASSWORD, else asked on the terminal",
    ]
)


class Refused(Exception):
    """Stop before login: print C{message} (and C{detail} on stderr), exit 1."""

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


# --- arguments -------------------------------------------------------------


class Arguments:
    """The command line, checked."""

    mode = "interactive"
    tls = False
    cafile: str | None = None
    user: str | None = None
    host: str = ""
    port: int = 0
    name: str = ""
    message: str = ""


def parse_args(argv: list[str]) -> Arguments:
    """
    @return: an L{Arguments}
    @raise Refused: with the assignment's message for what is wrong.
    """
    a = Arguments()
    argv = list(argv)
    while argv and argv[0].startswith("--"):
        opt = argv.pop(0)
        if opt == "--tls":
            a.tls = True
        elif opt in ("--cafile", "--user") and argv:
            value = argv.pop(0)
            if opt == "--cafile":
                a.cafile, a.tls = value, True
            else:
                a.user = value
        elif opt == "--help":
            raise Refused(USAGE)
        else:
            raise Refused("error: unknown or incomplete option %s\n%s" % (opt, USAGE))
    if argv and argv[0] in ("-u", "-d", "-h"):
        flag = argv.pop(0)
        if flag == "-h":
            raise Refused(USAGE)
        a.mode = "upload" if flag == "-u" else "download"
    wanted = {"interactive": 3, "upload": 3, "download": 2}[a.mode]
    if len(argv) != wanted:
        raise Refused(
            {"interactive": ARGS_INTERACTIVE, "upload": ARGS_UPLOAD, "download": ARGS_DOWNLOAD}[
                a.mode
            ]
        )
    a.host = check_host(argv[0])
    a.port = check_port(argv[1])
    if a.mode == "interactive":
        if not is_username(argv[2]):
            raise Refused(USER_FORMAT)
        a.name = argv[2]
    elif a.mode == "upload":
        a.message = argv[2]
        check_message(a.message)
        a.user = a.user if a.user is not None else default_user()
        if not is_username(a.user):
            raise Refused(USER_FORMAT)
    return a


def check_host(text: str) -> str:
    """An IPv4/IPv6 address, or a host name (needed to verify a TLS certificate)."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    labels = text.rstrip(".").split(".")
    if (
        0 < len(text) <= 253
        and all(HOST_LABEL_RE.fullmatch(x) for x in labels)
        and not labels[-1].isdigit()
    ):
        return text
    raise Refused(IP_INVALID)


def check_port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise Refused(PORT_INVALID)
    return int(text)


def check_message(message: str) -> None:
    """The checks the client can make before sending (the server makes them all)."""
    if len(message) > MAX_MESSAGE:
        raise Refused(MESSAGE_LENGTH)
    if not message.strip():
        raise Refused(MESSAGE_FORMAT)


def default_user() -> str:
    try:
        name = getpass.getuser()
    except Exception:
        name = ""
    name = re.sub(r"[^A-Za-z0-9]", "", name)[:32]
    return name or "anonymous"


def format_tweet(tweet: dict[str, Any]) -> str:
    """C{<sender>: "<message>" <hashtags>} (no trailing space without hashtags)."""
    line = '%s: "%s"' % (tweet.get("user"), tweet.get("message"))
    if tweet.get("hashtags"):
        line += " " + tweet["hashtags"]
    return line


# --- connecting and logging in -------------------------------------------


async def open_session(reactor: Any, args: Arguments) -> ClientProtocol:
    """Connect; map connection failures to the assignment's messages."""
    try:
        proto = await connect(
            args.host,
            args.port,
            tls=args.tls,
            cafile=args.cafile,
            reactor=reactor,
            service="ttweet",
        )
    except net_error.DNSLookupError:
        raise Refused(IP_INVALID) from None
    except (
        net_error.ConnectError,
        net_error.ConnectionLost,
        net_error.ConnectionDone,
        defer.TimeoutError,
        OSError,
    ) as e:
        raise Refused(PORT_INVALID, _reason(e)) from None
    except Exception as e:  # TLS verification and the like
        raise Refused("error: cannot connect: %s, connection refused." % (_reason(e),)) from None
    return proto


def _reason(e: BaseException) -> str:
    text = str(e).strip() or e.__class__.__name__
    return text.splitlines()[0][:200]


async def log_in(proto: ClientProtocol, name: str) -> Response:
    """
    LOGIN as C{name}: with NETSHARE_PASSWORD if set; else first without a
    password (a guest), and with one asked on the terminal only if the
    server says the name is registered.
    """
    password = os.environ.get("NETSHARE_PASSWORD")
    if password is not None:
        resp = await proto.command(quote("LOGIN", name, password))
    else:
        resp = await proto.command(quote("LOGIN", name))
        if resp.code == 535:
            password = password_from_env_or_prompt("Password for %s: " % (name,))
            resp = await proto.command(quote("LOGIN", name, password))
    if resp.code == 230:
        return resp
    if resp.code == 553:
        raise Refused(USER_FORMAT)
    if resp.code == 555:
        raise Refused(USER_ILLEGAL)
    raise Refused("error: %s, connection refused." % (resp.text,))


# --- one-shot modes --------------------------------------------------------


async def run_upload(reactor: Any, args: Arguments, out: Callable[[str], None]) -> None:
    proto = await open_session(reactor, args)
    try:
        await log_in(proto, args.user or "")
        resp = await proto.command(quote("TWEET", args.message))
    finally:
        await _quit(proto)
    if resp.code != 200:
        raise Refused(_tweet_error(resp))


async def run_download(reactor: Any, args: Arguments, out: Callable[[str], None]) -> None:
    proto = await open_session(reactor, args)
    try:
        resp = await proto.command("LAST")
    finally:
        await _quit(proto)
    if resp.code != 200:
        raise Refused("error: %s" % (resp.text,))
    out(resp.text)


async def _quit(proto: ClientProtocol) -> None:
    if not proto.isOpen:
        return
    try:
        await proto.command("QUIT")
    except Exception:
        pass
    if proto.isOpen:
        proto.close()
    await proto.closed


def _tweet_error(resp: Response) -> str:
    if resp.code == 552:
        return MESSAGE_LENGTH
    if resp.code == 501:
        return MESSAGE_FORMAT
    if resp.code == 553:
        return HASHTAG_FORMAT
    return "error: %s" % (resp.text,)


# --- interactive mode ------------------------------------------------------


@implementer(IHalfCloseableProtocol)
class Console(LinearLineReceiver):
    """
    The user's side: one line in, one command; its output printed in typed
    order (each command waits for the one before it), pushes at once.
    """

    MAX_LENGTH = 64 * 1024

    def __init__(self, conn: ClientProtocol, done: defer.Deferred[int]) -> None:
        super().__init__()
        self.conn = conn
        self.done = done  # fires with the exit status
        # The commands typed, in order: each is chained behind the one
        # before it (a queue of Deferreds, whatever the typing speed), so
        # their output never interleaves.
        self._chain: defer.Deferred[None] = defer.succeed(None)
        self._exiting = False
        self._status = 0
        conn.onPush = self.pushed
        conn.closed.addCallback(self._serverClosed)

    # output

    def say(self, text: str) -> None:
        if self.transport is not None:
            self.transport.write(text.encode("utf-8", "replace") + b"\n")

    def pushed(self, code: int, text: str) -> None:
        if code == 600:
            try:
                self.say(format_tweet(json.loads(text)))
            except (ValueError, AttributeError):
                self.say("error: unreadable tweet from the server")

    # input

    def lineReceived(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r")
        if self._exiting or not text.strip():
            return
        self._chain.addCallback(lambda _: self.run(text))
        self._chain.addErrback(self._failed)

    def lineLengthExceeded(self, line: bytes) -> None:
        # Far beyond any command: refuse it locally (what was received of
        # it, and after it, is dropped with it).
        self._chain.addCallback(lambda _: self.say(MESSAGE_LENGTH))

    def _failed(self, failure: Failure) -> None:
        if not self._exiting:
            self.say("error: %s" % (failure.getErrorMessage(),))

    def readConnectionLost(self) -> None:
        # End of input: like exit, after the commands already typed.
        self._chain.addCallback(lambda _: self.run("exit"))
        self._chain.addErrback(self._failed)

    def writeConnectionLost(self) -> None:
        self._finish(self._status)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._finish(self._status)

    def _finish(self, status: int) -> None:
        if not self.done.called:
            self.done.callback(status)

    def _serverClosed(self, _: object) -> None:
        if not self._exiting:
            self._exiting = True
            self._status = 1
            reason = " ".join(text for code, text in self.conn.pushes if code == 421)
            self.say(
                "error: connection closed by the server%s" % ((" (%s)" % reason) if reason else "")
            )
            self._closeConsole()

    def _closeConsole(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()  # flushes what is written, then closes
        else:
            self._finish(self._status)

    # commands

    @deferred
    async def run(self, text: str) -> None:
        """Run one typed line (a no-op once exiting)."""
        if self._exiting:
            return
        word, _, rest = text.strip().partition(" ")
        handler = getattr(self, "do_" + word.lower(), None)
        if handler is None:
            self.say(
                "error: unknown command %s (commands: tweet, subscribe, unsubscribe, "
                "timeline, getusers, gettweets, exit)" % (word[:40],)
            )
            return
        await handler(rest.strip())

    def _send(self, line: str) -> defer.Deferred[Response]:
        return self.conn.command(line)

    async def do_tweet(self, rest: str) -> None:
        first, last = rest.find('"'), rest.rfind('"')
        if not rest.startswith('"') or first == last:
            self.say(MESSAGE_FORMAT)
            return
        message, hashtag = rest[first + 1 : last], rest[last + 1 :].strip()
        if len(message) > MAX_MESSAGE:
            self.say(MESSAGE_LENGTH)
            return
        if not message:
            self.say(MESSAGE_FORMAT)
            return
        if not hashtag or " " in hashtag:
            self.say(HASHTAG_FORMAT)
            return
        resp = await self._send(quote("TWEET", message, hashtag))
        if resp.code != 200:
            self.say(_tweet_error(resp))

    async def _subscription(self, verb: str, rest: str) -> None:
        if not rest or " " in rest:
            self.say(HASHTAG_FORMAT)
            return
        resp = await self._send(quote(verb, rest))
        if resp.code == 200:
            self.say(SUCCESS)
        elif resp.code == 553:
            self.say(HASHTAG_FORMAT)
        else:
            self.say(resp.text if resp.code == 552 else "error: %s" % (resp.text,))

    async def do_subscribe(self, rest: str) -> None:
        await self._subscription("SUBSCRIBE", rest)

    async def do_unsubscribe(self, rest: str) -> None:
        await self._subscription("UNSUBSCRIBE", rest)

    async def _listing(
        self, line: str, show: Callable[[dict[str, Any]], str], missing: str | None = None
    ) -> None:
        resp = await self._send(line)
        if resp.code == 210:
            for item in resp.items or []:
                self.say(show(item))
        elif missing is not None and resp.code in (550, 553):
            self.say(missing)
        else:
            self.say("error: %s" % (resp.text,))

    async def do_timeline(self, rest: str) -> None:
        if rest:
            self.say("error: usage: timeline")
            return
        await self._listing("TIMELINE", format_tweet)

    async def do_getusers(self, rest: str) -> None:
        if rest:
            self.say("error: usage: getusers")
            return
        await self._listing("GETUSERS", lambda item: str(item.get("user")))

    async def do_gettweets(self, rest: str) -> None:
        if not rest or " " in rest:
            self.say("error: usage: gettweets <Username>")
            return
        await self._listing(quote("GETTWEETS", rest), format_tweet, NO_USER % (rest,))

    async def do_exit(self, rest: str) -> None:
        self._exiting = True
        await _quit(self.conn)
        self.say(BYE)
        self._closeConsole()


def start_keepalive(
    proto: ClientProtocol, clock: Any, interval: float = KEEPALIVE_SECONDS
) -> task.LoopingCall:
    """PING every C{interval} seconds while the connection is open (the
    answer is not shown; a failure is the connection's, reported there)."""

    def ping() -> None:
        if proto.isOpen:
            proto.command("PING").addErrback(lambda _: None)

    call = task.LoopingCall(ping)
    call.clock = clock
    call.start(interval, now=False)
    return call


async def run_interactive(reactor: Any, args: Arguments, out: Callable[[str], None]) -> None:
    proto = await open_session(reactor, args)
    try:
        await log_in(proto, args.name)
    except BaseException:
        await _quit(proto)
        raise
    out(USER_LEGAL)
    done: defer.Deferred[int] = defer.Deferred()
    stdio.StandardIO(Console(proto, done), reactor=reactor)
    keepalive = start_keepalive(proto, reactor)
    try:
        status = await done
    finally:
        if keepalive.running:
            keepalive.stop()
    if proto.isOpen:
        proto.abort()
    if status:
        raise SystemExit(status)


# --- entry point -----------------------------------------------------------


def _print(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


Runner = Callable[[Any, Arguments, Callable[[str], None]], Awaitable[None]]


async def _main(reactor: Any, args: Arguments) -> None:
    runners: dict[str, Runner] = {
        "interactive": run_interactive,
        "upload": run_upload,
        "download": run_download,
    }
    try:
        await runners[args.mode](reactor, args, _print)
    except Refused as e:
        _print(e.message)
        if e.detail:
            sys.stderr.write("netshare-ttweet: %s\n" % (e.detail,))
        raise SystemExit(1) from None


def main(argv: list[str] | None = None) -> int | None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_args(argv)
    except Refused as e:
        _print(e.message)
        return 0 if e.message == USAGE else 1
    task.react(_main, (args,))


if __name__ == "__main__":
    sys.exit(main())
