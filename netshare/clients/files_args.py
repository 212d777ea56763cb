"""
The command line of C{netshare-files} (the program is
L{netshare.clients.files}).  Standard library only, so that the launcher
(L{netshare.clients.quick}) can parse it and answer a one-shot command over
a stored session without importing Twisted.
"""

from __future__ import annotations

import argparse

from netshare.clients.options import command_parser

PROG = "netshare-files"
DEFAULT_PORT = 7002


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
    which.add_argument("--hidden", action="store_true", help="hidden files (admin only)")

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
    return parser
