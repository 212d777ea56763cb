"""
C{netshare-personnel}: the personnel client program (docs/protocol.md
section 4).

::

    netshare-personnel [--host H --port P --user U --tls --cafile F] COMMAND ...

    sync --db client1.sqlite     the long-running sync client
    console                      the operator menu
    list [TEXT] [--limit N] [--offset N]
    get SSN
    add SSN NAME SURNAME [--job J] [--salary S]
    update SSN [--name N] [--surname S] [--job J] [--salary S]
    delete SSN
    clients
    messages [--client C] [--limit N]
    send SSN|* CLIENT|*
    remove SSN|* CLIENT|*
    history [--limit N] [--for-user U]

The password comes from C{NETSHARE_PASSWORD} or a prompt.  One-shot commands
print tables, or JSON with C{--json}; exit statuses are those of
L{netshare.clients.common} (0 ok, 1 refused by the server, 2 usage,
3 connection problem).

This module is the command line: its options, the one-shot commands and
the operator console.  The sync client it starts lives in
L{netshare.clients.personnel_sync} (how it batches, acknowledges, applies
backpressure, logs and reconnects), its local database in
L{netshare.clients.syncdb}.  C{sync} options: C{--batch-max},
C{--batch-delay}, C{--retry-min}, C{--retry-max}; C{--log-level debug}
logs every change as well as one event per batch; C{--log-format json}
writes one JSON object per line.  A wrong password or a refused SYNC stops
it with status 1.
"""

from __future__ import annotations

import argparse
from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger

from netshare.clients import common
from netshare.clients.personnel_sync import SyncClient, SyncFailed
from netshare.clients.protocol import ClientProtocol, CommandFailed, connect, quote
from netshare.deferreds import deferred

DEFAULT_PORT = 7001

PERSON_COLUMNS = ["ssn", "name", "surname", "job", "salary", "updated"]
CLIENT_COLUMNS = ["client", "online", "pending", "acked", "last_seen"]
MESSAGE_COLUMNS = ["seq", "client", "action", "ssn", "created", "acked"]
HISTORY_COLUMNS = ["id", "ts", "user", "service", "command", "code"]


# ---------------------------------------------------------------------------
# The sync client (see netshare.clients.personnel_sync)


async def cmd_sync(reactor: Any, args: argparse.Namespace) -> int:
    from netshare.clients.syncdb import LocalStore

    if not args.user:
        raise common.UsageError("--user is required (or set NETSHARE_USER)")
    secret = common.password(args)
    common.start_logging(args.log_level, args.log_format)
    try:
        store = LocalStore(args.db)
    except Exception as e:
        raise common.UsageError("cannot open --db %s: %s" % (args.db, e)) from None

    def connector() -> defer.Deferred[ClientProtocol]:
        return connect(
            args.host,
            args.port,
            tls=args.tls,
            cafile=args.cafile,
            hostname=args.hostname,
            reactor=reactor,
            timeout=args.timeout,
        )

    client = SyncClient(
        reactor,
        store,
        connector,
        args.user,
        secret,
        retry_min=args.retry_min,
        retry_max=args.retry_max,
        batch_max=args.batch_max,
        batch_delay=args.batch_delay,
        log_each=args.log_level == "debug",
    )
    log = Logger(namespace="netshare.services.personnel.sync")
    log.info("sync client {user} on {db}", user=args.user, db=args.db)

    done: list[bool] = []

    @deferred
    async def shutdown() -> None:
        # SIGINT/SIGTERM stop the reactor; this runs first and (through the
        # Deferred it returns) delays the stop until a batch being applied
        # has committed.
        await client.stop()
        if not done:
            done.append(True)
            store.close()
            log.info(
                "sync client stopped: {applied} changes applied in {batches} batches",
                applied=client.applied,
                batches=client.batches,
            )

    trigger = reactor.addSystemEventTrigger("before", "shutdown", shutdown)
    code = common.EXIT_OK
    try:
        await client.start()
    except SyncFailed:
        code = common.EXIT_REFUSED
    finally:
        try:
            reactor.removeSystemEventTrigger(trigger)
        except (ValueError, KeyError):
            pass  # already running: the reactor is shutting down
        await shutdown()
    return code


# ---------------------------------------------------------------------------
# One-shot commands


_one = common.one_command


async def cmd_list(reactor: Any, args: argparse.Namespace) -> None:
    words = ["LIST"] + ([args.text] if args.text is not None else [])
    if args.limit is not None:
        words.append("limit=%d" % args.limit)
    if args.offset is not None:
        words.append("offset=%d" % args.offset)
    resp = await _one(reactor, args, quote(*words))
    common.emit(args, resp.items, PERSON_COLUMNS)


async def cmd_get(reactor: Any, args: argparse.Namespace) -> None:
    resp = await _one(reactor, args, quote("GET", args.ssn))
    common.emit(args, resp.obj, PERSON_COLUMNS)


async def cmd_add(reactor: Any, args: argparse.Namespace) -> None:
    words = ["ADD", "ssn=" + args.ssn, "name=" + args.name, "surname=" + args.surname]
    for field in ("job", "salary"):
        if getattr(args, field) is not None:
            words.append("%s=%s" % (field, getattr(args, field)))
    resp = await _one(reactor, args, quote(*words))
    common.emit(args, resp.obj, PERSON_COLUMNS)


async def cmd_update(reactor: Any, args: argparse.Namespace) -> None:
    words = ["UPDATE", args.ssn]
    for field in ("name", "surname", "job", "salary"):
        if getattr(args, field) is not None:
            words.append("%s=%s" % (field, getattr(args, field)))
    if len(words) == 2:
        raise common.UsageError("update: give at least one of --name --surname --job --salary")
    resp = await _one(reactor, args, quote(*words))
    common.emit(args, resp.obj, PERSON_COLUMNS)


async def cmd_delete(reactor: Any, args: argparse.Namespace) -> None:
    await _one(reactor, args, quote("DELETE", args.ssn))
    common.emit(args, {"deleted": args.ssn}, text="deleted %s" % (args.ssn,))


async def cmd_clients(reactor: Any, args: argparse.Namespace) -> None:
    resp = await _one(reactor, args, "CLIENTS")
    common.emit(args, resp.items, CLIENT_COLUMNS)


async def cmd_messages(reactor: Any, args: argparse.Namespace) -> None:
    words = ["MESSAGES"]
    if args.client is not None:
        words.append("client=" + args.client)
    if args.limit is not None:
        words.append("limit=%d" % args.limit)
    resp = await _one(reactor, args, quote(*words))
    common.emit(args, resp.items, MESSAGE_COLUMNS)


async def _queue(reactor: Any, args: argparse.Namespace, verb: str) -> None:
    resp = await _one(reactor, args, quote(verb, args.ssn, args.client))
    count = int(resp.text.split()[-1])
    common.emit(
        args, {"queued": count}, text="queued %d message%s" % (count, "" if count == 1 else "s")
    )


async def cmd_send(reactor: Any, args: argparse.Namespace) -> None:
    await _queue(reactor, args, "SEND")


async def cmd_remove(reactor: Any, args: argparse.Namespace) -> None:
    await _queue(reactor, args, "REMOVE")


async def cmd_history(reactor: Any, args: argparse.Namespace) -> None:
    words = ["HISTORY"]
    if args.limit is not None:
        words.append("limit=%d" % args.limit)
    if args.for_user is not None:
        words.append("user=" + args.for_user)
    resp = await _one(reactor, args, quote(*words))
    common.emit(args, resp.items, HISTORY_COLUMNS)


# ---------------------------------------------------------------------------
# The operator console


MENU = """
  0  show personnel, clients and messages
  1  send one person to one client
  2  send one person to all clients
  3  send all personnel to all clients
  4  delete one person from one client
  5  delete one person from all clients
  6  delete all personnel from all clients
  7  exit
"""

USER_MENU = """
  0  show personnel
  7  exit
"""

PROMPT = "choice> "
#: Choices that change every client's copy at once: asked to confirm.
BULK = {"3": "send ALL personnel to ALL clients", "6": "delete ALL personnel from ALL clients"}


class ConsoleIO(Protocol):
    """Where the console reads and writes: L{netshare.clients.common.LineInput}
    on a terminal."""

    def ask(self, prompt: str = "") -> defer.Deferred[str | None]: ...

    def write(self, text: str) -> None: ...


class Console:
    """The operator menu of the original server, over the protocol."""

    def __init__(
        self, proto: ClientProtocol, io: ConsoleIO, show_limit: int = 20, confirm: bool = True
    ) -> None:
        self.proto = proto
        self.io = io
        self.show_limit = show_limit
        self.confirm = confirm  # ask before the bulk choices (BULK); --yes: do not
        self.admin = True  # learnt from WHOAMI when the console starts

    def say(self, text: str = "") -> None:
        self.io.write(text if text.endswith("\n") else text + "\n")

    async def run(self) -> None:
        whoami = await self.proto.command("WHOAMI")
        self.admin = whoami.ok and whoami.text.split()[-1:] == ["admin"]
        menu = MENU if self.admin else USER_MENU
        self.say("netshare personnel console" + menu.rstrip("\n"))
        while True:
            choice = await self.io.ask(PROMPT)
            if choice is None:
                self.say()
                return
            choice = choice.strip()
            if choice == "7":
                self.say("bye")
                return
            if choice == "":
                continue
            if choice not in ("0", "1", "2", "3", "4", "5", "6"):
                self.say("please choose a number from 0 to 7" + menu.rstrip("\n"))
                continue
            if choice != "0" and not self.admin:
                self.say("only an admin may send or delete; choose 0 or 7" + menu.rstrip("\n"))
                continue
            if not self.proto.isOpen:
                raise ConnectionError("the server closed the connection")
            try:
                await self.do(choice)
            except CommandFailed as e:
                self.say("error: %s" % (e.response.line,))

    async def _ask(self, prompt: str) -> str | None:
        answer = await self.io.ask(prompt)
        if answer is None:
            return None
        answer = answer.strip()
        if not answer:
            self.say("nothing entered; back to the menu")
            return None
        return answer

    async def do(self, choice: str) -> None:
        if choice == "0":
            return await self.show()
        if choice in BULK and self.confirm:
            answer = await self.io.ask("%s? [y/N] " % (BULK[choice],))
            if (answer or "").strip().lower() not in ("y", "yes"):
                self.say("not confirmed; back to the menu")
                return
        ssn: str | None = "*"
        client: str | None = "*"
        if choice in ("1", "2", "4", "5"):
            ssn = await self._ask("ssn: ")
            if ssn is None:
                return
        if choice in ("1", "4"):
            client = await self._ask("client: ")
            if client is None:
                return
        verb = "SEND" if choice in ("1", "2", "3") else "REMOVE"
        resp = common.checked(await self.proto.command(quote(verb, ssn, client)))
        count = int(resp.text.split()[-1])
        self.say("queued %d message%s" % (count, "" if count == 1 else "s"))

    async def show(self) -> None:
        people = common.checked(await self.proto.command("LIST limit=%d" % self.show_limit))
        if not self.admin:  # clients and messages are for admins
            self.say("personnel (first %d):" % (self.show_limit,))
            self.say(common.format_table(people.items or [], PERSON_COLUMNS[:5]).rstrip("\n"))
            return
        clients = common.checked(await self.proto.command("CLIENTS"))
        messages = common.checked(await self.proto.command("MESSAGES limit=%d" % self.show_limit))
        self.say("personnel (first %d):" % (self.show_limit,))
        self.say(common.format_table(people.items or [], PERSON_COLUMNS[:5]).rstrip("\n"))
        self.say("clients:")
        self.say(common.format_table(clients.items or [], CLIENT_COLUMNS).rstrip("\n"))
        self.say("messages (newest %d):" % (self.show_limit,))
        self.say(common.format_table(messages.items or [], MESSAGE_COLUMNS).rstrip("\n"))


async def cmd_console(reactor: Any, args: argparse.Namespace) -> None:
    from twisted.internet import stdio

    proto = await common.open_session(reactor, args)
    io = common.LineInput()
    stdio.StandardIO(io, reactor=reactor)
    try:
        await Console(proto, io, args.show_limit, confirm=not args.yes).run()
    finally:
        await io.close()
        await common.close(proto)


# ---------------------------------------------------------------------------
# Command line


COMMANDS = {
    "sync": cmd_sync,
    "console": cmd_console,
    "list": cmd_list,
    "get": cmd_get,
    "add": cmd_add,
    "update": cmd_update,
    "delete": cmd_delete,
    "clients": cmd_clients,
    "messages": cmd_messages,
    "send": cmd_send,
    "remove": cmd_remove,
    "history": cmd_history,
}


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a whole number") from None
    if v < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return v


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a number of seconds") from None
    if not 0 <= v < 86400:
        raise argparse.ArgumentTypeError("out of range")
    return v


def build_parser() -> argparse.ArgumentParser:
    parser, command = common.command_parser(
        "netshare-personnel",
        "netshare personnel client: one-shot commands, the operator console and "
        "the sync client. The password comes from NETSHARE_PASSWORD or a prompt.",
        DEFAULT_PORT,
    )

    p = command("sync", "keep a local SQLite copy of what the server sends this account")
    p.add_argument("--db", required=True, help="local SQLite file (created if missing)")
    p.add_argument(
        "--retry-min",
        type=_seconds,
        default=1.0,
        help="first reconnect delay, doubled after each failure [%(default)s s]",
    )
    p.add_argument(
        "--retry-max", type=_seconds, default=30.0, help="longest reconnect delay [%(default)s s]"
    )
    p.add_argument(
        "--batch-max",
        type=_positive,
        default=500,
        help="most messages applied in one local transaction [%(default)s]",
    )
    p.add_argument(
        "--batch-delay",
        type=_seconds,
        default=0.005,
        help="wait this long for more pushes before applying a batch [%(default)s s]",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warn", "error"],
        help="log level on stderr [%(default)s]",
    )
    p.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="log format on stderr [%(default)s]",
    )

    p = command(
        "console", "the operator menu (send/delete one or all people to one or all clients)"
    )
    p.add_argument(
        "--show-limit",
        type=_positive,
        default=20,
        help="rows of each table shown by choice 0 [%(default)s]",
    )
    p.add_argument(
        "--yes",
        action="store_true",
        help="do not ask before sending or deleting all personnel (choices 3 and 6)",
    )

    p = command("list", "list people (TEXT matches name, surname, ssn or job)")
    p.add_argument("text", nargs="?")
    p.add_argument("--limit", type=_positive)
    p.add_argument("--offset", type=_positive)

    p = command("get", "show one person")
    p.add_argument("ssn")

    p = command("add", "add a person (admin)")
    p.add_argument("ssn")
    p.add_argument("name")
    p.add_argument("surname")
    p.add_argument("--job")
    p.add_argument("--salary")

    p = command("update", "change fields of a person (admin)")
    p.add_argument("ssn")
    for field in ("name", "surname", "job", "salary"):
        p.add_argument("--" + field)

    p = command("delete", "delete a person from the server's database (admin)")
    p.add_argument("ssn")

    command("clients", "sync clients and their queues (admin)")

    p = command("messages", "queued messages, newest first (admin)")
    p.add_argument("--client")
    p.add_argument("--limit", type=_positive)

    for name, verb in (
        ("send", "queue SAVE of one person or * to one client or *"),
        ("remove", "queue DELETE of one person or * from one client or *"),
    ):
        p = command(name, verb + " (admin)")
        p.add_argument("ssn", help="an ssn, or * for everyone")
        p.add_argument("client", help="a client (account) name, or * for every known client")

    p = command("history", "your request history (an admin may name another user)")
    p.add_argument("--limit", type=_positive)
    p.add_argument("--for-user", help="whose history (admin; * for everyone)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    handler = COMMANDS[args.command]
    common.run(args, lambda reactor: handler(reactor, args), prog="netshare-personnel")


if __name__ == "__main__":
    main()
