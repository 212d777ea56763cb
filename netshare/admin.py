"""
Operator helpers for the admin shell (the manhole).

L{namespace} builds a fresh dictionary for every shell session.  Each helper
is a thin call into the same service objects the protocols use (the
personnel SEND/REMOVE path, the account service, the history recorder), never
a copy of their logic.  Helpers that touch the database return Deferreds; the
shell prints their result when it arrives, and the reactor never waits.

Type C{help()} in the shell for the list.
"""

import pydoc

from twisted.internet import defer

from netshare.storage.accounts import Account


class Helpers:
    """The operator's toolbox, bound to one running server and one admin."""

    def __init__(self, runtime, user):
        self.runtime = runtime
        self.user = user
        # History helpers take an explicit view (a name, "-" or "*"): the
        # admin's view, which needs no account id.
        self._caller = Account(0, user, "admin", "", 0)

    # -- overview

    def help(self, obj=None):
        """help() lists the helpers; help(x) shows x's documentation."""
        if obj is not None:
            return _Text(pydoc.render_doc(obj, renderer=pydoc.plaintext))
        lines = ["netshare admin shell: every helper returns data or a Deferred (printed "
                 "when it fires).", ""]
        for name in HELPERS:
            doc = (getattr(self, name).__doc__ or "").strip().splitlines()[0]
            lines.append("  %-16s %s" % (name, doc))
        lines += ["", "Also: runtime (everything shared), config, services (service objects)."]
        return _Text("\n".join(lines))

    def stats(self):
        """Live counters per service (connections, commands, bytes in/out) and the
        database pool queue."""
        out = self.runtime.stats()
        for name, app in self.runtime.apps.items():
            app_stats = getattr(app, "stats", None)
            if callable(app_stats):
                out.setdefault(name, {})["service"] = app_stats()
        return out

    def connections(self, service=None):
        """Open connections: [(service, user, peer)]; optionally of one service."""
        out = []
        for name, factory in self.runtime.factories.items():
            if service in (None, name):
                for p in getattr(factory, "connections", ()):
                    out.append((name, getattr(p, "user", None) or "-", getattr(p, "peer", "?")))
        return out

    # -- personnel (the same code paths as SEND / REMOVE on the personnel port)

    def _personnel(self):
        svc = self.runtime.apps.get("personnel")
        if svc is None:
            raise RuntimeError("the personnel service is not running (--personnel none?)")
        return svc

    def show(self):
        """Menu 0: personnel, sync clients and recent messages, in one overview."""
        return self._personnel().overview()

    def personnel(self, text=None, limit=50):
        """List personnel (optionally matching text)."""
        return self._personnel().list(text, limit, 0)

    def clients(self):
        """Sync clients with online flag, pending and acknowledged counts."""
        return self._personnel().clients()

    def messages(self, client=None, limit=50):
        """Outbox messages, newest first (optionally of one client)."""
        return self._personnel().messages(client, limit)

    def send(self, ssn, client):
        """Menu 1: queue SAVE of one person (ssn) to one client."""
        return self._personnel().send(ssn, client)

    def send_to_all(self, ssn):
        """Menu 2: queue SAVE of one person to every known client."""
        return self._personnel().send(ssn, "*")

    def send_all(self, client="*"):
        """Menu 3: queue SAVE of every person to all clients (or one client)."""
        return self._personnel().send("*", client)

    def remove(self, ssn, client):
        """Menu 4: queue DELETE of one person from one client."""
        return self._personnel().remove(ssn, client)

    def remove_from_all(self, ssn):
        """Menu 5: queue DELETE of one person from every known client."""
        return self._personnel().remove(ssn, "*")

    def remove_all(self, client="*"):
        """Menu 6: queue DELETE_ALL to all clients (or one client)."""
        return self._personnel().remove("*", client)

    # -- accounts

    def accounts(self):
        """Every account: [{"user","role","created"}]."""
        return self.runtime.accounts.list().addCallback(lambda rows: [a.to_wire() for a in rows])

    def account_add(self, name, password, admin=False):
        """Create an account (role admin with admin=True)."""
        d = self.runtime.accounts.add(name, password, "admin" if admin else "user")
        return d.addCallback(lambda a: a.to_wire())

    def account_passwd(self, name, password):
        """Set an account's password."""
        return self.runtime.accounts.passwd(name, password).addCallback(lambda _: "ok")

    def account_remove(self, name, transfer_files_to=None):
        """Remove an account: its files are deleted (or given to the account
        transfer_files_to), its timeline and pending sync records dropped,
        its history kept for admins; its connections are closed."""
        d = self.runtime.accounts.remove(name, transfer_files_to)
        return d.addCallback(lambda r: {
            "removed": r.account.name, "files_deleted": r.files_deleted,
            "files_transferred": r.files_transferred, "timeline_deleted": r.timeline_deleted,
            "sync_messages_deleted": r.sync_messages_deleted})

    # -- history

    def history(self, user="*", limit=50):
        """Request history, newest first: everyone (user="*"), one user, or "-"
        for commands sent before login."""
        d = self.runtime.history.query(self._caller, user, limit)
        return d.addCallback(lambda rows: [e.to_wire() for e in rows])

    def history_clear(self, user):
        """Delete the history of one user ("*": everyone). Returns the count."""
        return self.runtime.history.clear(self._caller, user)

    # -- files and ttweet

    def files(self):
        """Files overview: count and bytes stored per owner."""
        # The file store has no per-owner totals (only usage() of one owner,
        # in bytes): this reads every file's row, public and hidden, and adds
        # up here.  Fine for an operator's occasional look; not for a hot path.
        app = self.runtime.apps.get("files")
        if app is None:
            raise RuntimeError("the files service is not running (--files none?)")
        store = app.files
        d = defer.gatherResults([store.list_public(), store.list_hidden()],
                                consumeErrors=True)
        d.addErrback(lambda f: f.value.subFailure if f.check(defer.FirstError) else f)
        return d.addCallback(lambda lists: files_per_owner(lists[0] + lists[1]))

    def ttweet(self):
        """ttweet overview: users online, subscriptions per tag, counters."""
        hub = self.runtime.apps.get("ttweet")
        if hub is None:
            raise RuntimeError("the ttweet service is not running")
        # The names last: stats() has an "online" count, which would hide them.
        return {**hub.stats(), "online": hub.online_users()}


HELPERS = ("help", "stats", "connections", "show", "personnel", "clients", "messages", "send",
           "send_to_all", "send_all", "remove", "remove_from_all", "remove_all", "accounts",
           "account_add", "account_passwd", "account_remove", "history", "history_clear",
           "files", "ttweet")


#: The helpers taking a password (after their first argument): the shell
#: records calls to them with every string literal there masked
#: (L{netshare.protocols.manhole.redact_command}).
SECRET_HELPERS = frozenset({"account_add", "account_passwd"})


def files_per_owner(records) -> dict:
    """{owner: {"files": count, "bytes": total size}} of file records
    (anything with C{owner} and C{size}), owners in name order."""
    out = {}
    for rec in records:
        entry = out.setdefault(rec.owner, {"files": 0, "bytes": 0})
        entry["files"] += 1
        entry["bytes"] += rec.size
    return dict(sorted(out.items()))


class _Text(str):
    """Shown as itself (not as a quoted repr) by the shell."""

    def __repr__(self):
        return str(self)


def namespace(runtime, user):
    """A fresh namespace for one shell session."""
    helpers = Helpers(runtime, user)
    ns = {name: getattr(helpers, name) for name in HELPERS}
    ns.update(runtime=runtime, config=runtime.config, services=dict(runtime.apps),
              whoami=user, __name__="netshare-admin")
    return ns
