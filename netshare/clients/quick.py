"""
One-shot commands over a kept session, without Twisted.

A command such as C{netshare-files list} is one request and one reply.  With
a session token kept (L{netshare.clients.sessions}) it needs no password
hash on the server, and then what is left of its cost is the client's own
start-up, where importing Twisted and the TLS stack takes a few hundred
milliseconds on these machines: more than the rest of the command.  So the
programs' entry points (L{files_main}) parse the command line with the
standard-library parsers (L{netshare.clients.options}), and a simple
command (L{netshare.clients.files_args.SIMPLE}) with a kept token runs here
over a blocking socket: connect, check the greeting's service, C{TOKEN},
the command, C{QUIT}.  Its output and exit status are the full program's,
by construction: the request and the presentation are the same functions.

Everything else falls back to the full (Twisted) program, before the
command is sent, so a command never runs twice: no token, a token the
server refuses (expired, revoked: it is forgotten), a server that cannot be
reached or is not the right service (the full program then says exactly
what is wrong), a transfer, an interactive session.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Callable

from netshare.clients import sessions
from netshare.clients.replies import Response, final_response, quote, split_reply_line

EXIT_REFUSED = 1
EXIT_CONNECT = 3
EXIT_INTERRUPTED = 130


class FallBack(Exception):
    """Not for this path: let the full program run the command."""


class LineClient:
    """A blocking client of the line protocol, for one command or two."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def readline(self) -> str:
        while b"\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("connection closed by the server")
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.rstrip(b"\r").decode("utf-8", "replace")

    def reply(self) -> Response:
        """The next reply: continuation lines (C{210-...}) up to the final
        one; pushes (6xx) and C{421} notices before it are skipped."""
        lines: list[str] = []
        while True:
            text = self.readline()
            parts = split_reply_line(text)
            if parts is None:
                continue
            code, sep, rest = parts
            if 600 <= code < 700:
                continue
            lines.append(text)
            if sep == "-":
                continue
            return final_response(code, rest, lines)

    def command(self, line: str) -> Response:
        self.sock.sendall(line.encode("utf-8") + b"\r\n")
        return self.reply()

    def close(self) -> None:
        try:
            self.sock.sendall(b"QUIT\r\n")
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.sock.close()


def open_client(args: argparse.Namespace) -> LineClient:
    """Connect (with TLS when asked) and check the greeting names
    C{args.service}; L{FallBack} for anything unusual."""
    try:
        sock = socket.create_connection((args.host, args.port), timeout=args.timeout)
    except OSError as e:
        raise FallBack(str(e)) from None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if args.tls or args.cafile:
            import ssl

            context = ssl.create_default_context(cafile=args.cafile)
            sock = context.wrap_socket(sock, server_hostname=args.hostname or args.host)
        client = LineClient(sock)
        words = client.readline().split()
    except (OSError, ValueError) as e:
        sock.close()
        raise FallBack(str(e)) from None
    if words[:3] != ["220", "netshare", args.service]:
        sock.close()
        raise FallBack("greeting")
    return client


def logged_in(
    args: argparse.Namespace, then: str | None = None
) -> tuple[LineClient, Response | None]:
    """
    A connection logged in with the kept token, and the reply to C{then}
    if given: sent right behind the C{TOKEN} line, in the same packet,
    which saves a round trip.  That is safe because a connection that is
    not logged in has every such command refused (C{530}) with no effect:
    if the token is refused, C{then} did nothing and the full program runs
    it.  L{FallBack} if there is no token or the server refuses it (then it
    is forgotten).
    """
    store = sessions.path() if args.session else None
    which = sessions.key(args.host, args.port, args.user) if args.user else ""
    token = sessions.load(store, which) if args.user else None
    if token is None:
        raise FallBack("no session")
    client = open_client(args)
    try:
        lines = quote("TOKEN", token) + "\r\n" + (then + "\r\n" if then is not None else "")
        client.sock.sendall(lines.encode("utf-8"))
        resp = client.reply()
        if resp.code != 230:
            client.close()
            sessions.forget(store, which)
            raise FallBack(resp.line)
    except OSError as e:
        client.close()
        raise FallBack(str(e)) from None
    try:
        answer = client.reply() if then is not None else None
    except BaseException:
        client.close()
        raise
    return client, answer


Request = Callable[[argparse.Namespace], str]
Present = Callable[[argparse.Namespace, Response], "int | None"]


def run_simple(args: argparse.Namespace, request: Request, present: Present) -> int:
    """Run one simple command here.  @return: the exit status.
    @raise FallBack: before anything was sent but the login."""
    try:
        client, answer = logged_in(args, then=request(args))
    except OSError as e:  # (after the login: the command may have run)
        _err(args, "cannot talk to %s:%s: %s" % (args.host, args.port, str(e) or type(e).__name__))
        return EXIT_CONNECT
    client.close()
    assert answer is not None
    resp = answer
    if not resp.ok:
        _err(args, resp.line)
        return EXIT_REFUSED
    return present(args, resp) or 0


def logout(args: argparse.Namespace) -> int:
    """End the kept session on the server and forget it here."""
    store = sessions.path()
    if not args.user:
        _err(args, "--user is required (or set NETSHARE_USER)")
        return 2
    which = sessions.key(args.host, args.port, args.user)
    token = sessions.load(store, which)
    if token is None:
        print("no session kept for %s" % (which,))
        return 0
    session_id = token.split(".")[1] if token.count(".") == 2 else ""
    told = ""
    try:
        client, _ = logged_in(args)
    except FallBack:
        told = " (the server could not be told: it was refused or unreachable)"
    else:
        try:
            client.command(quote("SESSION", "REVOKE", session_id))
        except OSError:
            told = " (the server could not be told)"
        finally:
            client.close()
    sessions.forget(store, which)
    print("logged out of %s: session %s ended%s" % (which, session_id, told))
    return 0


def _err(args: argparse.Namespace, text: str) -> None:
    sys.stderr.write("%s: %s\n" % (getattr(args, "prog", None) or "netshare", text))
    sys.stderr.flush()


def files_main(argv: list[str] | None = None) -> None:
    """C{netshare-files}: a simple command over a kept session here, the
    rest by the full program (L{netshare.clients.files})."""
    from netshare.clients import files_args

    args = files_args.build_parser().parse_args(argv)
    try:
        if args.command == "logout":
            raise SystemExit(logout(args))
        simple = files_args.SIMPLE.get(args.command)
        if simple is not None and simple.quick(args):
            raise SystemExit(run_simple(args, simple.request, simple.present))
    except FallBack:
        pass
    except KeyboardInterrupt:
        _err(args, "interrupted")
        raise SystemExit(EXIT_INTERRUPTED) from None
    from netshare.clients import files

    files.main(argv)


if __name__ == "__main__":
    files_main()
