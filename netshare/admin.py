"""
Operator helpers for the admin shell (the manhole).

L{namespace} builds a fresh dictionary for every shell session.  Each helper
is a thin call into the same service objects the protocols use (the
personnel SEND/REMOVE path, the account service, the history recorder), never
a copy of their logic.  Helpers that touch the database return Deferreds; the
shell prints their result when it arrives, and the reactor never waits.

No sockets and no SQL here: the manhole's protocol modules
(L{netshare.protocols.manhole}) serve these helpers, as the other protocols
serve their services.

Type C{help()} in the shell for the list.
"""

from collections.abc import Iterable
from typing import Any, Protocol

from twisted.internet.defer import Deferred

from netshare.config import Config
from netshare.deferreds import deferred
from netshare.logs import CommandLog
from netshare.services.accounts import AccountService
from netshare.services.history import HistoryRecorder
from netshare.storage.accounts import Account


class AdminRuntime(Protocol):
    """
    What the helpers and the manhole use of the running server (the
    composition root's C{netshare.service.Runtime}).
    """

    config: Config
    reactor: Any
    accounts: AccountService
    history: HistoryRecorder
    #: Where one event per command goes; None: the global log publisher.
    commandLog: CommandLog | None
    #: The listener factories by service name (each has C{connections}).
    factories: dict[str, Any]
    #: The service objects by service name (personnel, files, ttweet).
    apps: dict[str, Any]

    def stats(self) -> dict[str, Any]: ...


class Helpers:
    """The operator's toolbox, bound to one running server and one admin."""

    def __init__(self, runtime: AdminRuntime, user: str):
        self.runtime = runtime
        self.user = user
        # History helpers take an explicit view (a name, "-" or "*"): the
        # admin's view, which needs no account id.
        self._caller = Account(0, user, "admin", "", 0)

    def _service(self, name: str, hint: str) -> Any:
        """The service object C{name}, or RuntimeError when it does not run."""
        app = self.runtime.apps.get(name)
        if app is None:
            raise RuntimeError("the %s service is not running (%s)" % (name, hint))
        return app

    # -- overview

    def help(self, obj: object = None) -> str:
        """help() lists the helpers; help(x) shows x's documentation."""
        if obj is not None:
            import pydoc  # (only for help(); a large import)

            return _Text(pydoc.plain(pydoc.render_doc(obj)))
        lines = [
            "netshare admin shell: every helper returns data or a Deferred (printed "
            "when it fires).",
            "",
        ]
        for name in HELPERS:
            doc = (getattr(self, name).__doc__ or "").strip().splitlines()[0]
            lines.append("  %-16s %s" % (name, doc))
        lines += ["", "Also: runtime (everything shared), config, services (service objects)."]
        return _Text("\n".join(lines))

    def stats(self) -> dict[str, Any]:
        """Live counters per service (connections, commands, bytes in/out) and the
        database pool queue."""
        out = self.runtime.stats()
        for name, app in self.runtime.apps.items():
            app_stats = getattr(app, "stats", None)
            if callable(app_stats):
                out.setdefault(name, {})["service"] = app_stats()
        return out

    def connections(self, service: str | None = None) -> list[tuple[str, str, str]]:
        """Open connections: [(service, user, peer)]; optionally of one service."""
        out = []
        for name, factory in self.runtime.factories.items():
            if service in (None, name):
                for p in getattr(factory, "connections", ()):
                    out.append((name, getattr(p, "user", None) or "-", getattr(p, "peer", "?")))
        return out

    # -- personnel (the same code paths as SEND / REMOVE on the personnel port)

    def _personnel(self) -> Any:
        return self._service("personnel", "--personnel none?")

    def show(self) -> Deferred[Any]:
        """Menu 0: personnel, sync clients and recent messages, in one overview."""
        return self._personnel().overview()

    def personnel(self, text: str | None = None, limit: int = 50) -> Deferred[Any]:
        """List personnel (optionally matching text)."""
        return self._personnel().list(text, limit, 0)

    def clients(self) -> Deferred[Any]:
        """Sync clients with online flag, pending and acknowledged counts."""
        return self._personnel().clients()

    def messages(self, client: str | None = None, limit: int = 50) -> Deferred[Any]:
        """Outbox messages, newest first (optionally of one client)."""
        return self._personnel().messages(client, limit)

    def send(self, ssn: str, client: str) -> Deferred[Any]:
        """Menu 1: queue SAVE of one person (ssn) to one client."""
        return self._personnel().send(ssn, client)

    def send_to_all(self, ssn: str) -> Deferred[Any]:
        """Menu 2: queue SAVE of one person to every known client."""
        return self._personnel().send(ssn, "*")

    def send_all(self, client: str = "*") -> Deferred[Any]:
        """Menu 3: queue SAVE of every person to all clients (or one client)."""
        return self._personnel().send("*", client)

    def remove(self, ssn: str, client: str) -> Deferred[Any]:
        """Menu 4: queue DELETE of one person from one client."""
        return self._personnel().remove(ssn, client)

    def remove_from_all(self, ssn: str) -> Deferred[Any]:
        """Menu 5: queue DELETE of one person from every known client."""
        return self._personnel().remove(ssn, "*")

    def remove_all(self, client: str = "*") -> Deferred[Any]:
        """Menu 6: queue DELETE_ALL to all clients (or one client)."""
        return self._personnel().remove("*", client)

    # -- accounts

    @deferred
    async def accounts(self) -> list[dict[str, object]]:
        """Every account: [{"user","role","created"}]."""
        return [a.to_wire() for a in await self.runtime.accounts.list()]

    @deferred
    async def account_add(
        self, name: str, password: str, admin: bool = False
    ) -> dict[str, object]:
        """Create an account (role admin with admin=True)."""
        account = await self.runtime.accounts.add(name, password, "admin" if admin else "user")
        return account.to_wire()

    @deferred
    async def account_passwd(self, name: str, password: str) -> str:
        """Set an account's password (its sessions end)."""
        ended = await self.runtime.accounts.passwd(name, password)
        return "ok (%d session%s ended)" % (ended, "" if ended == 1 else "s")

    @deferred
    async def account_remove(
        self, name: str, transfer_files_to: str | None = None
    ) -> dict[str, object]:
        """Remove an account: its files are deleted (or given to the account
        transfer_files_to), its timeline and pending sync records dropped,
        its history kept for admins; its connections are closed."""
        r = await self.runtime.accounts.remove(name, transfer_files_to)
        return {
            "removed": r.account.name,
            "files_deleted": r.files_deleted,
            "files_transferred": r.files_transferred,
            "timeline_deleted": r.timeline_deleted,
            "sync_messages_deleted": r.sync_messages_deleted,
        }

    def _sessions(self) -> Any:
        sessions = getattr(self.runtime, "sessions", None)
        if sessions is None:
            raise RuntimeError("sessions are not available in this server")
        return sessions

    @deferred
    async def _sessionCaller(self, user: str) -> Any:
        """Who a session helper acts as: the account C{user} itself (its own
        sessions), or this admin for everyone's ("*")."""
        from netshare.services.accounts import Caller

        if user == "*":
            return Caller(self._caller, "manhole")
        account = await self.runtime.accounts.store.get(user)
        if account is None:
            raise KeyError("no account %s" % (user,))
        return Caller(account, "manhole")

    @deferred
    async def sessions(self, user: str = "*") -> list[dict[str, object]]:
        """Session tokens (never the tokens themselves) of one account or
        everyone ("*"): [{"id","user","label","peer","created","last_used","expires"}]."""
        caller = await self._sessionCaller(user)
        found = await self._sessions().list(caller, None if user != "*" else "*")
        return [s.to_wire() for s in found]

    @deferred
    async def session_revoke(self, session_id: int | str, user: str = "*") -> int:
        """End one session (its id, any account's), or all of them
        (session_id="all") of one account or of everyone (user="*").
        Returns how many ended."""
        from netshare.services.accounts import Caller

        if str(session_id).lower() == "all":
            caller = await self._sessionCaller(user)
            return int(await self._sessions().revoke_all(caller, None if user != "*" else "*"))
        await self._sessions().revoke(Caller(self._caller, "manhole"), int(session_id))
        return 1

    # -- history

    @deferred
    async def history(self, user: str = "*", limit: int = 50) -> list[dict[str, object]]:
        """Request history, newest first: everyone (user="*"), one user, or "-"
        for commands sent before login."""
        return [e.to_wire() for e in await self.runtime.history.query(self._caller, user, limit)]

    def history_clear(self, user: str) -> Deferred[int]:
        """Delete the history of one user ("*": everyone). Returns the count."""
        return self.runtime.history.clear(self._caller, user)

    # -- files and ttweet

    @deferred
    async def files(self) -> dict[str, dict[str, int]]:
        """Files overview: count and bytes stored per owner."""
        # The file store has no per-owner totals (only usage() of one owner,
        # in bytes): this reads every file's row, public and hidden, and adds
        # up here.  Fine for an operator's occasional look; not for a hot path.
        store = self._service("files", "--files none?").files
        public = await store.list_public()
        hidden = await store.list_hidden()
        return files_per_owner(public + hidden)

    def ttweet(self) -> dict[str, Any]:
        """ttweet overview: users online, subscriptions per tag, counters."""
        hub = self._service("ttweet", "--ttweet none?")
        # The names last: stats() has an "online" count, which would hide them.
        return {**hub.stats(), "online": hub.online_users()}


HELPERS = (
    "help",
    "stats",
    "connections",
    "show",
    "personnel",
    "clients",
    "messages",
    "send",
    "send_to_all",
    "send_all",
    "remove",
    "remove_from_all",
    "remove_all",
    "accounts",
    "account_add",
    "account_passwd",
    "account_remove",
    "sessions",
    "session_revoke",
    "history",
    "history_clear",
    "files",
    "ttweet",
)


#: The helpers taking a password (after their first argument): the shell
#: records calls to them with every string literal there masked
#: (L{netshare.protocols.manhole_shell.redact_command}).
SECRET_HELPERS = frozenset({"account_add", "account_passwd"})


def files_per_owner(records: Iterable[Any]) -> dict[str, dict[str, int]]:
    """{owner: {"files": count, "bytes": total size}} of file records
    (anything with C{owner} and C{size}), owners in name order."""
    out: dict[str, dict[str, int]] = {}
    for rec in records:
        entry = out.setdefault(rec.owner, {"files": 0, "bytes": 0})
        entry["files"] += 1
        entry["bytes"] += rec.size
    return dict(sorted(out.items()))


class _Text(str):
    """Shown as itself (not as a quoted repr) by the shell."""

    def __repr__(self) -> str:
        return str(self)


def namespace(runtime: AdminRuntime, user: str) -> dict[str, object]:
    """A fresh namespace for one shell session."""
    helpers = Helpers(runtime, user)
    ns: dict[str, object] = {name: getattr(helpers, name) for name in HELPERS}
    ns.update(
        runtime=runtime,
        config=runtime.config,
        services=dict(runtime.apps),
        whoami=user,
        __name__="netshare-admin",
    )
    return ns
