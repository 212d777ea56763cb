"""
The command line every netshare client program shares: connection options,
output options, C{--version}, sub-commands (see L{netshare.clients.common}
for the programs' shape).

Standard library only, like L{netshare.clients.output} and
L{netshare.clients.quick}: a one-shot command that a stored session
answers parses its command line and prints its result without importing
Twisted (whose import alone costs a few hundred milliseconds).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable


class UsageError(Exception):
    """A bad command line found after parsing (exit status 2)."""


def add_connection_options(parser: argparse.ArgumentParser, default_port: int) -> None:
    """
    C{--host --port --user --tls --cafile --hostname --timeout}, with
    defaults from C{NETSHARE_HOST}, C{NETSHARE_PORT} and C{NETSHARE_USER}.
    """
    env = os.environ
    g = parser.add_argument_group("connection")
    g.add_argument(
        "--host",
        default=env.get("NETSHARE_HOST", "127.0.0.1"),
        help="server address [default: %(default)s; env NETSHARE_HOST]",
    )
    g.add_argument(
        "--port",
        type=_port,
        default=_port(env.get("NETSHARE_PORT", default_port)),
        help="server port [default: %(default)s; env NETSHARE_PORT]",
    )
    g.add_argument(
        "--user",
        default=env.get("NETSHARE_USER"),
        help="account name [env NETSHARE_USER]; the password comes from "
        "NETSHARE_PASSWORD or a prompt",
    )
    g.add_argument(
        "--tls",
        action="store_true",
        help="connect with TLS, verifying the certificate and host name",
    )
    g.add_argument(
        "--cafile",
        help="CA certificate (PEM) to trust; implies --tls [default: the system trust store]",
    )
    g.add_argument("--hostname", help="name the TLS certificate must match [default: --host]")
    g.add_argument(
        "--no-session",
        dest="session",
        action="store_false",
        help="log in with the password and keep no session token [default: keep one in "
        "~/.config/netshare/sessions.json and use it until it expires; env "
        "NETSHARE_SESSIONS=off]",
    )
    g.add_argument(
        "--timeout",
        type=_seconds,
        default=10.0,
        help="seconds to wait for the connection and greeting [default: %(default)s]",
    )


def add_output_options(parser: argparse.ArgumentParser, suppress: bool = False) -> None:
    """C{--json}.  Give C{suppress=True} on sub-parsers so that a C{--json}
    before the command is not reset by the sub-parser's default."""
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="print JSON instead of tables",
    )
    parser.add_argument(
        "--bytes",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="sizes in bytes in tables [default: 1.5 MiB and the like; JSON is always bytes]",
    )


def command_parser(
    prog: str,
    description: str,
    default_port: int,
) -> tuple[argparse.ArgumentParser, Callable[[str, str], argparse.ArgumentParser]]:
    """
    The command line every sub-command client shares: connection and output
    options before the command (as in every netshare client), then one
    sub-command.

    @return: (parser, command) where C{command(name, help)} adds a
        sub-command parser that also accepts the output options.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_version_option(parser)
    add_connection_options(parser, default_port)
    # netshare-files talks to the files service, and so on: the greeting
    # must say so (see netshare.clients.protocol.connect).
    parser.set_defaults(
        service=prog.rsplit("-", 1)[-1] if prog.startswith("netshare-") else None, prog=prog
    )
    add_output_options(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        add_output_options(p, suppress=True)
        return p

    return parser, command


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def add_version_option(parser: argparse.ArgumentParser) -> None:
    """C{--version}: the program's name and netshare's version."""
    from netshare import __version__

    parser.add_argument(
        "--version", action="version", version="%(prog)s (netshare) " + __version__
    )


def _port(text: str | int) -> int:
    try:
        port = int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError("port must be a number") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError("port must be 1-65535")
    return port
