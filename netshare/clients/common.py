"""
Plumbing shared by the netshare client programs (C{netshare-personnel},
C{netshare-files}, C{netshare-ttweet}).

Every program has the same shape::

    netshare-X [--host H] [--port P] [--user U] [--tls] [--cafile F] [--json] COMMAND ...

 - connection options come before the command (L{add_connection_options});
   C{--json} may come before or after it (L{add_output_options} on both the
   main parser and each sub-parser);
 - the password comes from C{NETSHARE_PASSWORD} or an interactive prompt,
   never from the command line (L{password});
 - a command runs as a coroutine under L{run}, which maps failures to exit
   codes and one line on stderr: L{EXIT_OK}, L{EXIT_REFUSED} (the server
   answered 4xx/5xx: the reply line is printed), L{EXIT_USAGE},
   L{EXIT_CONNECT} (no connection, TLS failure, connection lost);
 - results are tables on the terminal (L{format_table}) or JSON with
   C{--json} (L{emit});
 - L{LineInput} reads an interactive terminal (or a pipe) line by line
   without blocking the reactor; L{ProgressBar} draws transfer progress on
   stderr when it is a terminal.

Example (a complete program)::

    def main(argv=None):
        parser = argparse.ArgumentParser(prog="netshare-x")
        add_connection_options(parser, default_port=7002)
        add_output_options(parser)
        ...
        args = parser.parse_args(argv)
        run(args, lambda reactor: do_it(reactor, args))

    async def do_it(reactor, args):
        proto = await open_session(reactor, args)
        try:
            resp = checked(await proto.command("LIST"))
            emit(args, resp.items, columns=["name", "size"])
        finally:
            await close(proto)
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import IO, Any

from twisted.internet import defer
from twisted.internet import error as ierror
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import connectionDone
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from netshare.clients import sessions
from netshare.clients.options import (
    UsageError as UsageError,
)
from netshare.clients.options import (
    add_connection_options as add_connection_options,
)
from netshare.clients.options import (
    add_output_options as add_output_options,
)
from netshare.clients.options import (
    add_version_option as add_version_option,
)
from netshare.clients.options import (
    command_parser as command_parser,
)
from netshare.clients.output import (
    emit as emit,
)
from netshare.clients.output import (
    format_object as format_object,
)
from netshare.clients.output import (
    format_table as format_table,
)
from netshare.clients.output import (
    human_size as human_size,
)
from netshare.clients.output import (
    printable as printable,
)
from netshare.clients.protocol import (
    ClientProtocol,
    CommandFailed,
    Response,
    connect,
    login,
    password_from_env_or_prompt,
    quote,
)

#: Exit statuses of every client program.
EXIT_OK = 0
EXIT_REFUSED = 1  # the server refused a command (4xx/5xx), reply on stderr
EXIT_USAGE = 2  # bad command line (argparse uses 2 as well)
EXIT_CONNECT = 3  # cannot connect, TLS failure, connection lost
EXIT_INTERRUPTED = 130


# -- command line ---------------------------------------------------------------


def password(args: argparse.Namespace, prompt: str | None = None) -> str:
    """The password of C{args.user}: C{NETSHARE_PASSWORD} or a prompt (a
    usage error, exit 2, when there is neither: no terminal, or end of input)."""
    try:
        return password_from_env_or_prompt(prompt or "Password for %s: " % (args.user,))
    except EOFError:
        sys.stderr.write("\n")
        raise UsageError(
            "no password for %s: set NETSHARE_PASSWORD or type it at a terminal" % (args.user,)
        ) from None


# -- sessions -------------------------------------------------------------------


async def open_session(
    reactor: Any, args: argparse.Namespace, secret: str | None = None
) -> ClientProtocol:
    """
    Connect, wait for the greeting and log in as C{args.user}: with the
    session token kept for this server and account if there is one
    (L{netshare.clients.sessions}), else with the password (C{secret}, or
    C{NETSHARE_PASSWORD}, or a prompt), after which a new token is asked
    for and kept (unless C{--no-session}).
    @return: a logged-in L{netshare.clients.protocol.ClientProtocol}.
    """
    if not args.user:
        raise UsageError("--user is required (or set NETSHARE_USER)")
    store = sessions.path() if getattr(args, "session", True) else None
    which = sessions.key(args.host, args.port, args.user)
    token = sessions.load(store, which)
    if secret is None and token is None:
        secret = password(args)
    proto = await connect(
        args.host,
        args.port,
        tls=args.tls or bool(args.cafile),  # a CA file only makes sense with TLS
        cafile=args.cafile,
        hostname=args.hostname,
        reactor=reactor,
        timeout=args.timeout,
        service=getattr(args, "service", None),
    )
    try:
        if token is not None:
            resp = await proto.command(quote("TOKEN", token))
            if resp.code == 230:
                return proto
            sessions.forget(store, which)  # expired or revoked: log in anew
        if secret is None:
            secret = password(args)
        await login(proto, args.user, secret)
        if store is not None:
            await _keep_session(proto, store, which, getattr(args, "prog", None))
    except BaseException:
        proto.abort()
        raise
    return proto


async def _keep_session(proto: ClientProtocol, store: str, which: str, prog: str | None) -> None:
    """Ask for a session token and keep it; a server that refuses (an older
    one, say) costs nothing but the next password login."""
    label = "%s@%s" % (prog or os.path.basename(sys.argv[0]) or "netshare", socket.gethostname())
    label = "".join(c for c in label if c.isprintable())[:64]
    resp = await proto.command(quote("SESSION", "NEW", "label=" + label))
    made = resp.obj if resp.code == 201 else None
    if isinstance(made, dict) and isinstance(made.get("token"), str):
        sessions.save(store, which, made["token"], made.get("expires"))


async def close(proto: ClientProtocol) -> None:
    """QUIT politely and wait (briefly) for the server to close; drop the
    connection instead if a command is still unanswered (an interrupted
    transfer, say)."""
    if not proto.isOpen:
        return
    if proto.busy:
        proto.abort()
        return
    try:
        await proto.command("QUIT")
    except Exception:
        pass
    await proto.close()


def checked(response: Response) -> Response:
    """@return: C{response} if it is a success; raise L{CommandFailed} otherwise."""
    if not response.ok:
        raise CommandFailed(response)
    return response


# -- running a program -----------------------------------------------------------


async def one_command(reactor: Any, args: argparse.Namespace, line: str) -> Response:
    """Log in, run one command, QUIT. @return: the (successful) response;
    a refusal raises as L{checked} does."""
    proto = await open_session(reactor, args)
    try:
        return checked(await proto.command(line))
    finally:
        await close(proto)


def run(
    args: argparse.Namespace,
    main: Callable[[Any], Awaitable[int | None] | int | None],
    prog: str | None = None,
) -> None:
    """
    Run C{main(reactor)} (a coroutine function or one returning a Deferred)
    under L{twisted.internet.task.react} and exit with its status: the int
    it returns (C{None} is 0), or the status of the failure (see the module
    docstring).  Never returns.
    """
    from twisted.internet import task

    prog = prog or os.path.basename(sys.argv[0]) or "netshare"

    async def wrapped(reactor: Any) -> None:
        interrupted: list[bool] = []
        try:
            # (main runs up to its first wait right here, before the reactor
            # does: a Ctrl-C at a password prompt is a KeyboardInterrupt.)
            d = defer.maybeDeferred(main, reactor)
            reactor.callWhenRunning(_onInterrupt, reactor, d, interrupted)
            code = await d
        except (KeyboardInterrupt, defer.CancelledError) as e:
            if not interrupted and not isinstance(e, KeyboardInterrupt):
                raise
            _err(prog, "interrupted")
            code = EXIT_INTERRUPTED
        except CommandFailed as e:
            _err(prog, e.response.line)
            code = EXIT_REFUSED
        except UsageError as e:
            _err(prog, str(e))
            code = EXIT_USAGE
        except (defer.TimeoutError, ierror.TimeoutError):
            _err(prog, "no answer from %s:%s within %gs" % (args.host, args.port, args.timeout))
            code = EXIT_CONNECT
        except (
            ConnectionError,
            ierror.ConnectError,
            ierror.ConnectionLost,
            ierror.ConnectionDone,
        ) as e:
            _err(prog, "cannot talk to %s:%s: %s" % (args.host, args.port, _reason(e)))
            code = EXIT_CONNECT
        except OSError as e:
            if e.filename is not None:  # a local file: ours, not the network's
                _err(prog, "%s: %s" % (e.filename, e.strerror or _reason(e)))
                code = EXIT_REFUSED
            else:
                _err(prog, "cannot talk to %s:%s: %s" % (args.host, args.port, _reason(e)))
                code = EXIT_CONNECT
        except Exception as e:
            name = type(e).__name__
            if type(e).__module__.startswith(("OpenSSL", "service_identity")) or "SSL" in name:
                hint = "" if args.cafile else " (a self-signed server needs --cafile)"
                _err(prog, "TLS failure with %s:%s: %s%s" % (args.host, args.port, e, hint))
                code = EXIT_CONNECT
            else:
                raise
        raise SystemExit(code or 0)

    task.react(lambda reactor: defer.ensureDeferred(wrapped(reactor)))


def _onInterrupt(reactor: Any, d: defer.Deferred[Any], interrupted: list[bool]) -> None:
    """Once the reactor runs: Ctrl-C cancels the program's work (its
    C{finally} blocks run: a connection is closed, a partial download kept
    and reported by the program) and L{run} exits with L{EXIT_INTERRUPTED}."""
    import signal

    def handler(signum: int, frame: object) -> None:
        interrupted.append(True)
        reactor.callFromThread(d.cancel)

    signal.signal(signal.SIGINT, handler)


def _err(prog: str, text: str) -> None:
    sys.stderr.write("%s: %s\n" % (prog, text))
    sys.stderr.flush()


def _reason(e: BaseException) -> str:
    text = str(e).strip()
    return text or type(e).__name__


def start_logging(level: str = "info", fmt: str = "text", stream: IO[str] | None = None) -> None:
    """
    Send C{twisted.logger} events at C{level} or above to C{stream}
    (stderr by default) as text lines or JSON (one event per line, with all
    its fields).
    """
    stream = stream or sys.stderr
    if fmt == "json":
        observer = jsonFileLogObserver(stream, recordSeparator="")
    else:
        observer = textFileLogObserver(stream)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(observer, [predicate])], redirectStandardIO=False
    )


# -- interactive input --------------------------------------------------------------


@implementer(IHalfCloseableProtocol)
class LineInput(LineReceiver):
    """
    Lines typed on standard input, one Deferred at a time, without blocking
    the reactor.  Use with C{twisted.internet.stdio.StandardIO(LineInput())};
    write all output through L{write} (standard output is the same
    non-blocking stream).

    The end of input (Ctrl-D, a closed pipe) makes every later L{ask} fire
    with C{None}; what is still queued is answered first, and output keeps
    working until L{close}.
    """

    delimiter = b"\n"

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._waiting: defer.Deferred[str | None] | None = None
        self.eof = False
        self.done: defer.Deferred[None] = defer.Deferred()

    def lineReceived(self, line: bytes) -> None:
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        if self._waiting is not None:
            d, self._waiting = self._waiting, None
            d.callback(text)
        else:
            self._lines.append(text)

    def ask(self, prompt: str = "") -> defer.Deferred[str | None]:
        """Show C{prompt}; fire with the next line (without its end), or
        C{None} at the end of input."""
        if prompt:
            self.write(prompt)
        if self._lines:
            return defer.succeed(self._lines.pop(0))
        if self.eof:
            return defer.succeed(None)
        self._waiting = defer.Deferred()
        return self._waiting

    def write(self, text: str) -> None:
        if self.transport is not None:
            self.transport.write(text.encode("utf-8"))

    def readConnectionLost(self) -> None:
        self.eof = True
        if self._waiting is not None:
            d, self._waiting = self._waiting, None
            d.callback(None)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.readConnectionLost()
        if not self.done.called:
            self.done.callback(None)

    def close(self) -> defer.Deferred[None]:
        """Flush the output and close; fires when closed."""
        if self.transport is not None:
            self.transport.loseConnection()
        return self.done


class ProgressBar:
    """
    C{[#####-----]  45%  12.3 MB/s} on stderr, redrawn at most every 0.2 s,
    only when stderr is a terminal (or C{force}).  Call it with each chunk's
    byte count (it is a valid C{progress} callable for
    L{netshare.clients.protocol.ClientProtocol.upload}/C{download}); L{finish} at the end.
    """

    def __init__(
        self,
        total: int,
        label: str = "",
        stream: IO[str] | None = None,
        force: bool = False,
        clock: Callable[[], float] = time.monotonic,
        width: int = 30,
    ) -> None:
        self.total = max(0, int(total))
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = force or (hasattr(self.stream, "isatty") and self.stream.isatty())
        self.clock = clock
        self.width = width
        self.done = 0
        self.started = clock()
        self._drawn = 0.0

    def __call__(self, nbytes: int) -> None:
        self.done += nbytes
        now = self.clock()
        if self.enabled and (now - self._drawn >= 0.2 or self.done >= self.total):
            self._drawn = now
            self._draw(now)

    def render(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        frac = 1.0 if self.total == 0 else min(1.0, self.done / self.total)
        filled = int(frac * self.width)
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed / 1e6
        return "%s[%s%s] %3d%%  %.1f MB/s" % (
            self.label + " " if self.label else "",
            "#" * filled,
            "-" * (self.width - filled),
            int(frac * 100),
            rate,
        )

    def _draw(self, now: float) -> None:
        self.stream.write("\r" + self.render(now))
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self._draw(self.clock())
            self.stream.write("\n")
            self.stream.flush()
