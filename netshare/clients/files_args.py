"""
The command line of C{netshare-files} (the program is
L{netshare.clients.files}).  Standard library only, so that the launcher
(L{netshare.clients.quick}) can parse it and answer a one-shot command over
a stored session without importing Twisted.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from netshare.clients.options import command_parser
from netshare.clients.output import emit
from netshare.clients.replies import Response, quote

PROG = "netshare-files"
DEFAULT_PORT = 7002
FILE_COLUMNS = ["name", "size", "owner", "visibility", "protected", "created"]
INFO_COLUMNS = ["name", "size", "sha256", "owner", "visibility", "protected", "created"]
HISTORY_COLUMNS = ["id", "ts", "user", "service", "command", "code"]
SESSION_COLUMNS = ["id", "label", "peer", "created", "last_used", "expires"]


def _count(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return v


def build_parser() -> argparse.ArgumentParser:
    parser, command = command_parser(
        PROG,
        "netshare files client. The account password comes from NETSHARE_PASSWORD "
        "or a prompt; a file password from NETSHARE_FILE_PASSWORD or a prompt.",
        DEFAULT_PORT,
    )

    p = command("list", "list public files")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--mine", action="store_true", help="only your own public files")
    which.add_argument(
        "--hidden", action="store_true", help="hidden files: your own; an admin sees all"
    )

    p = command("info", "show a file's details")
    p.add_argument("name")

    p = command("upload", "upload a file")
    p.add_argument("path")
    p.add_argument("--name", help="name on the server [default: the file's name]")
    p.add_argument(
        "--hidden", action="store_true", help="hidden: never listed, reachable by its exact name"
    )
    p.add_argument(
        "--protect",
        action="store_true",
        help="protect with a file password (asked for; stored encrypted)",
    )
    p.add_argument("--replace", action="store_true", help="replace your existing file")

    p = command("download", "download a file (verified, resumable)")
    p.add_argument("name")
    p.add_argument("-o", "--output", help="destination file or directory [default: ./NAME]")

    p = command("delete", "delete a file (owner or admin)")
    p.add_argument("name")

    p = command("checksum", "the server's sha256 of a file, compared with PATH if given")
    p.add_argument("name")
    p.add_argument("path", nargs="?")

    command("register", "create the account given by --user (password as for login)")

    p = command("history", "your request history (an admin may name another user)")
    p.add_argument("--limit", type=_count)
    p.add_argument("--for-user", help="whose history (admin; * for everyone)")

    command("sessions", "your session tokens on this server (what the programs log in with)")
    command("logout", "end the session kept for --user on this server and forget it")
    return parser


# -- simple commands: one request, one reply ---------------------------------------


class Simple:
    """
    A command that is one request line and one reply, shown by C{present}
    (which may return an exit status).  The full program
    (L{netshare.clients.files}) and the quick path (L{netshare.clients.quick})
    both run these, so both print the same.  C{quick} says whether these
    arguments can take the quick path (a local file to read cannot).
    """

    __slots__ = ("request", "present", "quick")

    def __init__(
        self,
        request: Callable[[argparse.Namespace], str],
        present: Callable[[argparse.Namespace, Response], int | None],
        quick: Callable[[argparse.Namespace], bool] = lambda args: True,
    ) -> None:
        self.request = request
        self.present = present
        self.quick = quick


def _list_request(args: argparse.Namespace) -> str:
    return quote(*(["LIST"] + (["mine"] if args.mine else ["hidden"] if args.hidden else [])))


def _history_request(args: argparse.Namespace) -> str:
    words = ["HISTORY"]
    if args.limit is not None:
        words.append("limit=%d" % args.limit)
    if args.for_user is not None:
        words.append("user=" + args.for_user)
    return quote(*words)


def _deleted(args: argparse.Namespace, resp: Response) -> None:
    emit(args, {"deleted": args.name}, text="deleted %s" % (args.name,))


def _remote_checksum(args: argparse.Namespace, resp: Response) -> None:
    remote = resp.text.split()[-1]
    emit(args, {"name": args.name, "sha256": remote}, text=remote)


SIMPLE: dict[str, Simple] = {
    "list": Simple(_list_request, lambda args, r: emit(args, r.items, FILE_COLUMNS)),
    "info": Simple(
        lambda args: quote("INFO", args.name), lambda args, r: emit(args, r.obj, INFO_COLUMNS)
    ),
    "delete": Simple(lambda args: quote("DELETE", args.name), _deleted),
    "checksum": Simple(
        lambda args: quote("CHECKSUM", args.name),
        _remote_checksum,
        quick=lambda args: args.path is None,
    ),
    "history": Simple(_history_request, lambda args, r: emit(args, r.items, HISTORY_COLUMNS)),
    "sessions": Simple(
        lambda args: "SESSION LIST", lambda args, r: emit(args, r.items, SESSION_COLUMNS)
    ),
}
