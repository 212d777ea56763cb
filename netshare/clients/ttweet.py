"""
netshare-ttweet: the ttweet client (docs/protocol.md section 3).

Usage::

    netshare-ttweet [OPTIONS] <ServerIP> <ServerPort> <Username>
    netshare-ttweet [OPTIONS] [--user NAME] -u <ServerIP> <ServerPort> "<message>"
    netshare-ttweet [OPTIONS] -d <ServerIP> <ServerPort>
    netshare-ttweet --version | --help

    OPTIONS: --tls  --cafile CA.pem  --timestamps | --no-timestamps  --keepalive SECONDS

Interactive mode speaks the CS 3251 "ttweet" assignment's command set with
its exact messages::

    tweet "<message>" <Hashtag>     subscribe <Hashtag>     unsubscribe <Hashtag>
    timeline     getusers     gettweets <Username>     exit

plus C{help} (answered locally, never sent).  Tweets pushed by the server
print as they arrive, as C{<sender>: "<message>" <hashtags>} (without the
trailing space when a tweet has no hashtag); C{timeline} and C{gettweets}
print in the same format, C{getusers} one name a line.  Each command's
output appears in the order the commands were typed.  Errors before login
print and exit with status 1; after login they print and the session goes
on.  C{exit} (or end of input, Ctrl-D) prints C{bye bye}.  Ctrl-C (or
SIGINT) ends any mode at once with status 130 and one line on stderr.

Two ways to read the user, chosen at start:

 - B{A terminal} (stdin and stdout both are): a chat prompt
   (prompt_toolkit, C{<Username>> }) with line editing, history (Up/Down,
   Ctrl-R; kept in C{$XDG_STATE_HOME/netshare/ttweet_history}, default
   C{~/.local/state/...}, mode 0600, or in memory when that cannot be
   written) and Tab completion of command names; pushes are drawn above the
   line being typed, which stays as it was.  One command at a time: the
   next prompt comes once a command's output is printed (a few
   milliseconds), so the output of a command always follows its line.
   The finished line is erased by prompt_toolkit and written again as
   plain text with everything else (L{TerminalOutput}), so what stays on
   the screen reads as a plain transcript.

   How it runs without blocking the reactor: prompt_toolkit is an asyncio
   program, so in this mode Twisted runs on asyncio's event loop.  L{main}
   installs L{twisted.internet.asyncioreactor} on a new loop before
   anything imports the global reactor (nothing this module imports does:
   the tests check), and each prompt is C{PromptSession.prompt_async} run
   as an asyncio task, awaited from the Twisted side with
   L{Deferred.fromFuture}.  One loop serves both: the connection, the
   keep-alive and pushes go on while the prompt waits (no thread, no
   nested loop).  Signals: the prompt is told not to take SIGINT over
   (C{handle_sigint=False}: on leaving, it would put Python's default
   handler back in place of the program's); Ctrl-C typed at the prompt
   arrives as a key (the terminal is in raw mode) and ends the session,
   SIGINT from outside goes to the program's handler (L{_on_interrupt}).
   The KeyboardInterrupt prompt_toolkit raises for Ctrl-C is turned into
   L{Interrupted} inside the task, since a KeyboardInterrupt leaving an
   asyncio task stops the whole event loop.  Cursor position requests are
   off: they only size drop-down menus, which this prompt does not use
   (completions are listed readline-style), and a terminal that does not
   answer them would get a warning.
 - B{Anything else} (piped input): lines are read with Twisted's stdio
   (never a blocking input loop), on the default reactor, exactly as the
   assignment's tests expect, and pushes print while input waits.

Local timestamps: tweets printed (pushes, C{timeline}, C{gettweets}) are
prefixed with the local time of their C{ts} field (C{[14:05]}, or
C{[2026-11-20 14:05]} for an earlier day) when stdout is a terminal;
C{--timestamps} / C{--no-timestamps} force it either way.  Piped output
keeps the assignment's exact format.

An interactive session (either way) sends C{PING} every
L{KEEPALIVE_SECONDS} (C{--keepalive}; 0 sends none), so a user who only
reads is not closed by the server's idle timeout.

The one-shot modes of the original single-message ttweet: C{-u} uploads one
message as a tweet without hashtag, after logging in as C{--user} (default:
the local login name reduced to ASCII letters and digits, else
C{anonymous}; a guest unless that name holds an account); C{-d} prints the
most recent message, or C{Empty Message}, with no login at all.

Logging in (L{log_in}) always asks first without a password: a name with no
account is then a guest, whatever C{NETSHARE_PASSWORD} holds (the server
refuses a password given for a name without an account, docs/protocol.md
section 3.1, which is why exporting it once made every guest login fail).
Only when the server answers that the name is registered is the password
sent: from C{NETSHARE_PASSWORD}, or else asked for on the terminal (never
on the command line).  The price: a registered name's first C{LOGIN} is a
refusal, counted and paused like a failed one (the server's
C{--login-failure-delay}, 1 s by default).  C{--tls} verifies the server's
certificate against C{--cafile} (or the system trust store) and its name
or address.
"""

from __future__ import annotations

import asyncio
import datetime
import getpass
import ipaddress
import json
import os
import re
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

from twisted.internet import defer, stdio, task
from twisted.internet import error as net_error
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

import netshare
from netshare.clients.common import EXIT_INTERRUPTED
from netshare.clients.protocol import (
    ClientProtocol,
    Response,
    connect,
    password_from_env_or_prompt,
    quote,
)
from netshare.deferreds import deferred
from netshare.lines import LinearLineReceiver
from netshare.text import escape_unsafe, is_username

PROG = "netshare-ttweet"
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
        "usage: netshare-ttweet [OPTIONS] <ServerIP> <ServerPort> <Username>",
        '       netshare-ttweet [OPTIONS] [--user NAME] -u <ServerIP> <ServerPort> "<message>"',
        "       netshare-ttweet [OPTIONS] -d <ServerIP> <ServerPort>",
        "       netshare-ttweet --version",
        "OPTIONS: --tls, --cafile CA.pem,",
        "         --timestamps | --no-timestamps (default: on when stdout is a terminal),",
        "         --keepalive SECONDS (default: %g; 0: none)" % (KEEPALIVE_SECONDS,),
        'commands: tweet "<message>" <Hashtag> | subscribe <Hashtag> | unsubscribe <Hashtag>',
        "          | timeline | getusers | gettweets <Username> | help | exit",
        "password of a registered name: NETSHARE_PASSWORD, else asked on the terminal",
    ]
)
#: The C{help} command's answer (local: never sent to the server).
HELP = "\n".join(
    [
        "commands:",
        '  tweet "<message>" <Hashtag>   publish 1-150 characters, 1-5 tags (#cs#3251)',
        "  subscribe <Hashtag>           get a tag's tweets as they come (#ALL; 3 at most)",
        "  unsubscribe <Hashtag>         stop getting them (#ALL: every subscription)",
        "  timeline                      the tweets delivered to you",
        "  getusers                      the users online",
        "  gettweets <Username>          that user's tweets",
        "  help                          this list",
        "  exit                          leave (also Ctrl-D; Ctrl-C leaves at once)",
    ]
)
COMMANDS = (
    "tweet",
    "subscribe",
    "unsubscribe",
    "timeline",
    "getusers",
    "gettweets",
    "help",
    "exit",
)


class Refused(Exception):
    """Stop before login: print C{message} (and C{detail} on stderr), exit 1."""

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class Interrupted(Exception):
    """Ctrl-C: the session ends with L{EXIT_INTERRUPTED}."""


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
    #: Local times before tweets: None means "when stdout is a terminal".
    timestamps: bool | None = None
    #: Seconds between keep-alive PINGs of an interactive session (0: none).
    keepalive: float = KEEPALIVE_SECONDS


class ShowVersion(Exception):
    """C{--version}: print the version, exit 0."""


def parse_args(argv: list[str]) -> Arguments:
    """
    @return: an L{Arguments}
    @raise Refused: with the assignment's message for what is wrong.
    @raise ShowVersion: for C{--version}.
    """
    a = Arguments()
    argv = list(argv)
    while argv and argv[0].startswith("--"):
        opt = argv.pop(0)
        if opt == "--tls":
            a.tls = True
        elif opt in ("--timestamps", "--no-timestamps"):
            a.timestamps = opt == "--timestamps"
        elif opt in ("--cafile", "--user", "--keepalive") and argv:
            value = argv.pop(0)
            if opt == "--cafile":
                a.cafile, a.tls = value, True
            elif opt == "--keepalive":
                a.keepalive = check_seconds(value)
            else:
                a.user = value
        elif opt == "--help":
            raise Refused(USAGE)
        elif opt == "--version":
            raise ShowVersion()
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


def check_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 86400:
        raise Refused("error: --keepalive needs a number of seconds (0: none)")
    return value


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


def format_tweet(tweet: dict[str, Any], stamp: bool = False) -> str:
    """
    C{<sender>: "<message>" <hashtags>} (no trailing space without
    hashtags); with C{stamp}, after the local time of the tweet's C{ts}
    (when it has a readable one).
    """
    line = '%s: "%s"' % (tweet.get("user"), tweet.get("message"))
    if tweet.get("hashtags"):
        line += " " + tweet["hashtags"]
    if stamp:
        when = local_time(tweet.get("ts"))
        if when:
            line = "[%s] %s" % (when, line)
    return line


def local_time(ts: object, now: datetime.datetime | None = None) -> str:
    """
    The server's ISO 8601 UTC time (docs/protocol.md section 3, C{ts}) as a
    local time: C{HH:MM} today, C{YYYY-MM-DD HH:MM} another day; C{""}
    when it is missing or unreadable.
    """
    if not isinstance(ts, str):
        return ""
    try:
        when = datetime.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return ""
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    when = when.astimezone()
    today = (now or datetime.datetime.now().astimezone()).date()
    return when.strftime("%H:%M" if when.date() == today else "%Y-%m-%d %H:%M")


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
    except defer.CancelledError:
        raise  # Ctrl-C, not a connection failure
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


#: True while the program waits in a blocking read of the terminal (the
#: password prompt): SIGINT must then raise at once, the reactor being stuck.
_blocking_read = [False]


@contextmanager
def blocking_read() -> Iterator[None]:
    _blocking_read[0] = True
    try:
        yield
    finally:
        _blocking_read[0] = False


async def log_in(proto: ClientProtocol, name: str) -> Response:
    """
    LOGIN as C{name}: first without a password, so that a name without an
    account is a guest whatever C{NETSHARE_PASSWORD} holds (the server
    refuses a password for such a name: docs/protocol.md section 3.1).  Only
    when the server answers C{535} (the name is registered) is the password
    sent, from C{NETSHARE_PASSWORD} or else asked on the terminal.
    """
    resp = await proto.command(quote("LOGIN", name))
    if resp.code == 535:
        with blocking_read():
            password = password_from_env_or_prompt("Password for %s: " % (name,))
        resp = await proto.command(quote("LOGIN", name, password))
    if resp.code == 230:
        return resp
    if resp.code == 553:
        raise Refused(USER_FORMAT)
    if resp.code == 555:
        raise Refused(USER_ILLEGAL)
    raise Refused("error: %s, connection refused." % (resp.text,))


async def _log_in_or_close(proto: ClientProtocol, name: str) -> None:
    try:
        await log_in(proto, name)
    except BaseException as e:
        await _quit(proto, drop=_interrupting(e))
        raise


# --- one-shot modes --------------------------------------------------------


async def run_upload(reactor: Any, args: Arguments, out: Callable[[str], None]) -> None:
    proto = await open_session(reactor, args)
    try:
        await log_in(proto, args.user or "")
        resp = await proto.command(quote("TWEET", args.message))
    except BaseException as e:
        await _quit(proto, drop=_interrupting(e))
        raise
    await _quit(proto)
    if resp.code != 200:
        raise Refused(_tweet_error(resp))


async def run_download(reactor: Any, args: Arguments, out: Callable[[str], None]) -> None:
    proto = await open_session(reactor, args)
    try:
        resp = await proto.command("LAST")
    except BaseException as e:
        await _quit(proto, drop=_interrupting(e))
        raise
    await _quit(proto)
    if resp.code != 200:
        raise Refused("error: %s" % (resp.text,))
    out(resp.text)


def _interrupting(e: BaseException) -> bool:
    """Whether C{e} is Ctrl-C's (SIGINT cancels the work, L{_on_interrupt})."""
    return isinstance(e, (defer.CancelledError, KeyboardInterrupt))


async def _quit(proto: ClientProtocol, drop: bool = False) -> None:
    """QUIT and wait for the close; with C{drop} (Ctrl-C), drop the
    connection at once instead (a command may still be unanswered)."""
    if not proto.isOpen:
        return
    if drop:
        proto.abort()
        await proto.closed
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


# --- interactive mode: the commands ----------------------------------------


@implementer(IHalfCloseableProtocol)
class Console(LinearLineReceiver):
    """
    The user's side, read by Twisted's stdio: one line in, one command; its
    output printed in typed order (each command waits for the one before
    it), pushes at once.  L{Chat} drives the same commands from a prompt.
    """

    MAX_LENGTH = 64 * 1024

    def __init__(
        self, conn: ClientProtocol, done: defer.Deferred[int], stamp: bool = False
    ) -> None:
        super().__init__()
        self.conn = conn
        self.done = done  # fires with the exit status
        self.stamp = stamp  # local times before tweets
        # The commands typed, in order: each is chained behind the one
        # before it (a queue of Deferreds, whatever the typing speed), so
        # their output never interleaves.
        self._chain: defer.Deferred[None] = defer.succeed(None)
        self._exiting = False
        self._status = 0
        conn.onPush = self.pushed
        conn.closed.addCallback(self._serverClosed)

    @property
    def exiting(self) -> bool:
        return self._exiting

    # output

    def say(self, text: str) -> None:
        if self.transport is not None:
            self.transport.write(text.encode("utf-8", "replace") + b"\n")

    def tweet(self, tweet: dict[str, Any]) -> str:
        return format_tweet(tweet, self.stamp)

    def pushed(self, code: int, text: str) -> None:
        if code == 600:
            try:
                self.say(self.tweet(json.loads(text)))
            except (ValueError, AttributeError):
                self.say("error: unreadable tweet from the server")

    # input

    def lineReceived(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r")
        if self._exiting or not text.strip():
            return
        self._chain.addCallback(lambda _: self.run(text))
        self._chain.addErrback(self.failed)

    def lineLengthExceeded(self, line: bytes) -> None:
        # Far beyond any command: refuse it locally (what was received of
        # it, and after it, is dropped with it).
        self._chain.addCallback(lambda _: self.say(MESSAGE_LENGTH))

    def failed(self, failure: Failure) -> None:
        if not self._exiting:
            self.say("error: %s" % (failure.getErrorMessage(),))

    def readConnectionLost(self) -> None:
        # End of input: like exit, after the commands already typed.
        self._chain.addCallback(lambda _: self.run("exit"))
        self._chain.addErrback(self.failed)

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

    def quiet(self) -> None:
        """Ending: run no more commands, report nothing more."""
        self._exiting = True

    def interrupt(self) -> None:
        """Ctrl-C: stop at once with L{EXIT_INTERRUPTED}, nothing more printed."""
        if not self._exiting:
            self._exiting = True
            self._status = EXIT_INTERRUPTED
            self._closeConsole()

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

    async def do_help(self, rest: str) -> None:
        for line in HELP.splitlines():
            self.say(line)

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
        await self._listing("TIMELINE", self.tweet)

    async def do_getusers(self, rest: str) -> None:
        if rest:
            self.say("error: usage: getusers")
            return
        await self._listing("GETUSERS", lambda item: str(item.get("user")))

    async def do_gettweets(self, rest: str) -> None:
        if not rest or " " in rest:
            self.say("error: usage: gettweets <Username>")
            return
        await self._listing(quote("GETTWEETS", rest), self.tweet, NO_USER % (rest,))

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


# --- interactive mode: the terminal ----------------------------------------


class TerminalOutput:
    """
    Lines for the terminal while a prompt may be shown: above it (the
    prompt hidden, the line written, the prompt and what was typed drawn
    again: prompt_toolkit's C{run_in_terminal}) while it is, straight to
    stdout when it is not; in the order written either way.
    """

    def __init__(self, write: Callable[[str], None]) -> None:
        self._write = write
        self._last: asyncio.Future[None] | None = None  # the last line still to write

    def line(self, text: str) -> None:
        from prompt_toolkit.application import get_app_or_none

        data = text + "\n"
        app = get_app_or_none()
        waiting = self._last is not None and not self._last.done()
        if (app is not None and app.is_running) or waiting:
            self._last = asyncio.ensure_future(self._later(self._last, data))
        else:
            self._write(data)

    async def _later(self, before: asyncio.Future[None] | None, data: str) -> None:
        from prompt_toolkit.application import run_in_terminal

        if before is not None:
            await asyncio.wait({before})
        await run_in_terminal(lambda: self._write(data), in_executor=False)

    @deferred
    async def drained(self) -> None:
        """Wait until every line is written."""
        while self._last is not None and not self._last.done():
            await defer.Deferred.fromFuture(asyncio.ensure_future(asyncio.wait({self._last})))


def _stdout_write(data: str) -> None:
    sys.stdout.write(data)
    sys.stdout.flush()


def history_path() -> str:
    """C{$XDG_STATE_HOME/netshare/ttweet_history} (default state home:
    C{~/.local/state})."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(state, "netshare", "ttweet_history")


def open_history() -> Any:
    """The prompt's history: a file only its owner may read (what was typed
    is kept), else in memory."""
    from prompt_toolkit.history import FileHistory, InMemoryHistory

    path = history_path()
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            if os.fstat(fd).st_mode & 0o077:
                os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
    except OSError:
        return InMemoryHistory()
    return FileHistory(path)


def command_completer() -> Any:
    """Tab completion of the command name (the first word only)."""
    from prompt_toolkit.completion import Completer, Completion

    class CommandNames(Completer):
        def get_completions(self, document: Any, complete_event: Any) -> Iterator[Any]:
            word = document.text_before_cursor.lstrip()
            if " " in word:
                return
            for name in COMMANDS:
                if name.startswith(word.lower()):
                    yield Completion(name + " ", start_position=-len(word))

    return CommandNames()


class Chat(Console):
    """
    The commands of L{Console}, typed at a prompt_toolkit prompt (see the
    module docstring): one command at a time, the next prompt once its
    output is printed; pushes drawn above the prompt.
    """

    def __init__(
        self,
        conn: ClientProtocol,
        done: defer.Deferred[int],
        name: str,
        stamp: bool = True,
        history: Any = None,
    ) -> None:
        super().__init__(conn, done, stamp)
        from prompt_toolkit import PromptSession
        from prompt_toolkit.output.vt100 import Vt100_Output
        from prompt_toolkit.shortcuts import CompleteStyle

        output = Vt100_Output.from_pty(sys.stdout)
        output.enable_cpr = False  # (see the module docstring)
        self.prompt = "%s> " % (name,)
        self.session: Any = PromptSession(
            self.prompt,
            history=history,
            output=output,
            completer=command_completer(),
            complete_while_typing=False,
            complete_style=CompleteStyle.READLINE_LIKE,
            # The finished line is erased and written again as plain text
            # (L{_echo}), in order with everything else printed.
            erase_when_done=True,
        )
        self.out = TerminalOutput(_stdout_write)
        self._prompt: asyncio.Future[str] | None = None
        self._loop: defer.Deferred[None] | None = None

    def say(self, text: str) -> None:
        # What the server sent is shown, never obeyed: no control character
        # reaches the terminal (the server refuses them in tweets anyway).
        self.out.line(escape_unsafe(text))

    def _closeConsole(self) -> None:
        self._finish(self._status)

    def start(self) -> None:
        self._loop = self._read()

    @deferred
    async def _read(self) -> None:
        while not self._exiting:
            self._prompt = asyncio.ensure_future(self._ask())
            try:
                text = await defer.Deferred.fromFuture(self._prompt)
            except Interrupted:  # Ctrl-C typed at the prompt
                self._echo(self.session.default_buffer.text + "^C")
                self.interrupt()
                return
            except EOFError:  # Ctrl-D on an empty line
                self._echo("")
                text = "exit"
            except (defer.CancelledError, asyncio.CancelledError):
                return
            else:
                self._echo(text)
            finally:
                self._prompt = None
            if not text.strip():
                continue
            try:
                await self.run(text)
            except Exception:
                self.failed(Failure())

    async def _ask(self) -> str:
        """One line from the prompt (an asyncio coroutine)."""
        try:
            text: str = await self.session.prompt_async(
                handle_sigint=False, set_exception_handler=False
            )
        except KeyboardInterrupt:
            # Out of an asyncio task, a KeyboardInterrupt would stop the
            # event loop itself.
            raise Interrupted() from None
        return text

    def _echo(self, text: str) -> None:
        """The prompt and what was typed, where prompt_toolkit erased them."""
        self.out.line(self.prompt + text)

    @deferred
    async def stop(self) -> None:
        """End the prompt (the terminal put back as it was) and print what is left."""
        prompt = self._prompt
        if prompt is not None and not prompt.done():
            prompt.cancel()
            await defer.Deferred.fromFuture(asyncio.ensure_future(asyncio.wait({prompt})))
        if self._loop is not None:
            try:
                await self._loop
            except Exception:
                pass
        await self.out.drained()


def can_chat(reactor: Any) -> bool:
    """Whether the prompt can run: a terminal both ways, and Twisted on
    asyncio (what L{main} installs for it)."""
    try:
        from twisted.internet.asyncioreactor import AsyncioSelectorReactor
    except ImportError:
        return False
    return (
        isinstance(reactor, AsyncioSelectorReactor) and sys.stdin.isatty() and sys.stdout.isatty()
    )


async def run_interactive(reactor: Any, args: Arguments, out: Callable[[str], None]) -> None:
    proto = await open_session(reactor, args)
    await _log_in_or_close(proto, args.name)
    out(USER_LEGAL)
    stamp = sys.stdout.isatty() if args.timestamps is None else args.timestamps
    done: defer.Deferred[int] = defer.Deferred()
    console: Console
    chat: Chat | None = None
    if can_chat(reactor):
        console = chat = Chat(proto, done, args.name, stamp, open_history())
        chat.start()
        # A reactor stopped from outside (SIGTERM) still puts the terminal
        # back first (the prompt holds it in raw mode).
        reactor.addSystemEventTrigger("before", "shutdown", _stopping, chat)
    else:
        console = Console(proto, done, stamp)
        stdio.StandardIO(console, reactor=reactor)
    keepalive = start_keepalive(proto, reactor, args.keepalive) if args.keepalive else None
    try:
        status = await done
    finally:
        # (Also when cancelled by SIGINT: the connection is then dropped
        # without a word about it.)
        console.quiet()
        if keepalive is not None and keepalive.running:
            keepalive.stop()
        if proto.isOpen:
            proto.abort()
        if chat is not None:
            await chat.stop()
    if status == EXIT_INTERRUPTED:
        raise Interrupted()
    if status:
        raise SystemExit(status)


def _stopping(chat: Chat) -> defer.Deferred[None]:
    chat.quiet()  # the connections are closed next: not the server's doing
    return chat.stop()


# --- entry point -----------------------------------------------------------


def _print(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


Runner = Callable[[Any, Arguments, Callable[[str], None]], Coroutine[Any, Any, None]]


async def _main(reactor: Any, args: Arguments) -> None:
    runners: dict[str, Runner] = {
        "interactive": run_interactive,
        "upload": run_upload,
        "download": run_download,
    }
    interrupted: list[bool] = []
    work = defer.Deferred.fromCoroutine(runners[args.mode](reactor, args, _print))
    reactor.callWhenRunning(_on_interrupt, reactor, work, interrupted)
    try:
        await work
    except Refused as e:
        _print(e.message)
        if e.detail:
            sys.stderr.write("%s: %s\n" % (PROG, e.detail))
        raise SystemExit(1) from None
    except (KeyboardInterrupt, Interrupted, defer.CancelledError) as e:
        if isinstance(e, defer.CancelledError) and not interrupted:
            raise
        sys.stderr.write("%s: interrupted\n" % (PROG,))
        sys.stderr.flush()
        raise SystemExit(EXIT_INTERRUPTED) from None


def _on_interrupt(reactor: Any, work: defer.Deferred[None], interrupted: list[bool]) -> None:
    """Once the reactor runs (its own handler installed): SIGINT cancels
    the work (its C{finally} blocks close the connection and the prompt),
    or, in a blocking read of the terminal, raises there at once."""

    def handler(signum: int, frame: object) -> None:
        interrupted.append(True)
        if _blocking_read[0]:
            raise KeyboardInterrupt()
        reactor.callFromThread(work.cancel)

    signal.signal(signal.SIGINT, handler)


def _use_asyncio_reactor() -> None:
    """Run Twisted on a new asyncio loop (for the prompt), unless a reactor
    is already installed (then the stdio path is used)."""
    if "twisted.internet.reactor" in sys.modules:
        return
    from twisted.internet import asyncioreactor

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)


def main(argv: list[str] | None = None) -> int | None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_args(argv)
    except ShowVersion:
        _print("%s %s" % (PROG, netshare.__version__))
        return 0
    except Refused as e:
        _print(e.message)
        return 0 if e.message == USAGE else 1
    if args.mode == "interactive" and sys.stdin.isatty() and sys.stdout.isatty():
        _use_asyncio_reactor()
    task.react(_main, (args,))
    return None


if __name__ == "__main__":
    sys.exit(main())
