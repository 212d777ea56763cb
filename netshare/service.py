"""
The root service: listeners, shared runtime, and an orderly stop.

Start-up (all before the reactor serves anyone): the data dir must exist,
the database must be reachable and its schema current (else one clear line
and exit status 1), then each service's listener binds (a busy port: one
clear line, exit status 1).

Stop (SIGTERM, Ctrl-C): listeners stop accepting; every open connection is
told C{421 shutting down} as soon as its command in progress is answered;
after C{shutdown_timeout} stragglers are cut; service objects flush (tweets,
history); only then is the database pool stopped.  The pool is deliberately
*not* a child service: L{MultiService.stopService} stops all children at
once, so child order could not make the database outlive its users.
"""

import functools
import gc
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.error import CannotListenError, ReactorNotRunning
from twisted.logger import ILogObserver, Logger
from twisted.python.failure import Failure

from netshare.config import Config
from netshare.deferreds import deferred
from netshare.kdf import KDFPool
from netshare.listener import Listener, RefusedAddress
from netshare.logs import CommandLog, JsonLogFile, consoleObserver
from netshare.protocols.factory import CommandFactory
from netshare.protocols.files import FilesProtocol
from netshare.protocols.line import CommandProtocol
from netshare.protocols.personnel import PersonnelProtocol
from netshare.protocols.ttweet import TtweetProtocol
from netshare.services.accounts import AccountService, AccountWatch
from netshare.services.files.blobs import BlobStore
from netshare.services.files.lockout import PasswordLockout
from netshare.services.files.service import FilesService
from netshare.services.history import HistoryRecorder
from netshare.services.personnel.service import PersonnelService
from netshare.services.sessions import SessionService
from netshare.services.ttweet.hub import Hub
from netshare.storage import migrate
from netshare.storage.accounts import AccountStore
from netshare.storage.engine import EngineError, create_engine, describe
from netshare.storage.files import FileStore
from netshare.storage.history import HistoryStore
from netshare.storage.personnel import PersonnelStore
from netshare.storage.pool import DBPool
from netshare.storage.sessions import SessionStore
from netshare.storage.tweets import TweetStore
from netshare.throttle import LoginPolicy, Penalties

# --- the services, built explicitly (the composition root) ------------------


def build_files(runtime, blobs=None, lockout=None) -> FilesService:
    """The files service of a runtime: its blob store under C{<data>/files}
    (stale temporaries swept now, synchronously: nothing uploads before the
    reactor runs), the guessing limits and the metadata store."""
    cfg, clock = runtime.config, runtime.reactor
    if blobs is None:
        blobs = BlobStore(os.path.join(cfg.data, "files"), reactor=clock)
    blobs.sweep()
    if lockout is None:
        lockout = PasswordLockout(
            clock, cfg.file_lockout_failures, cfg.file_lockout_seconds, cfg.file_lockout_seconds
        )
    misses = Penalties(
        clock,
        free=cfg.misses_free,
        base=min(1.0, cfg.misses_max_delay),
        max_delay=cfg.misses_max_delay,
        max_wait=2 * cfg.misses_max_delay,
        decay=cfg.misses_forget,
        what="names not found",
    )
    file_guesses = Penalties(
        clock,
        free=cfg.file_guesses_free,
        base=min(2.0, cfg.file_guesses_max_delay),
        max_delay=cfg.file_guesses_max_delay,
        max_wait=2 * cfg.file_guesses_max_delay,
        decay=3 * cfg.misses_forget,
        what="wrong passwords for this file",
    )
    return FilesService(
        FileStore(runtime.pool),
        blobs,
        runtime.kdf,
        lockout,
        max_file_size=cfg.max_file_size,
        user_quota=cfg.user_quota,
        min_free_percent=cfg.min_free_percent,
        kdf_params=(cfg.file_scrypt_n, 8, 1),
        clock=clock,
        misses=misses,
        file_guesses=file_guesses,
        partial_ttl=cfg.upload_partial_ttl,
    )


def build_personnel(runtime) -> PersonnelService:
    cfg = runtime.config
    return PersonnelService(
        PersonnelStore(runtime.pool),
        runtime.reactor,
        page_size=cfg.sync_page,
        list_default=cfg.personnel_list_default,
        list_max=cfg.personnel_list_max,
    )


def build_hub(runtime) -> Hub:
    """The ttweet hub of a runtime (not started: the root service starts it)."""
    cfg = runtime.config
    return Hub(
        TweetStore(runtime.pool),
        clock=runtime.reactor,
        flood_burst=cfg.flood_burst,
        flood_rate=cfg.flood_rate,
        flood_address_burst=cfg.flood_address_burst,
        flood_address_rate=cfg.flood_address_rate,
        timeline_limit=cfg.timeline_limit,
        batch_interval=cfg.ttweet_batch_interval,
    )


#: service name -> (its line protocol, what builds its service object)
SERVICES: dict[str, tuple[type[CommandProtocol], Callable[[Any], object]]] = {
    "personnel": (PersonnelProtocol, build_personnel),
    "files": (FilesProtocol, build_files),
    "ttweet": (TtweetProtocol, build_hub),
}


def _forgetBlobsOf(files: FilesService) -> Callable[[Any], None]:
    """A removal listener: a removed account's file contents go too."""

    def forget(removed: Any) -> None:
        files.forget_blobs(removed.blob_ids)
        files.forget_partials_of(removed.account.id)

    return forget


def make_factory(runtime, name: str) -> CommandFactory:
    """The listener factory of one service, with its service object built."""
    protocol, build = SERVICES[name]
    return CommandFactory(runtime, protocol, app=build(runtime))


@dataclass
class Runtime:
    """Everything the protocols and service objects share."""

    config: Config
    reactor: Any  # an IReactorTime + IReactorTCP: the real one, or a test's
    pool: DBPool
    kdf: KDFPool
    accounts: AccountService
    history: HistoryRecorder
    engine: Engine | None = None
    #: Session tokens (SESSION NEW / TOKEN); None where a test leaves them out.
    sessions: SessionService | None = None
    accountWatch: AccountWatch | None = None
    #: Where one event per command goes (the JSON log file); None: the
    #: global log publisher.  Kept off the console: at thousands of commands
    #: per second a console line each would cost more than the command.
    commandLog: CommandLog | None = None
    factories: dict[str, CommandFactory] = field(default_factory=dict)
    #: service name -> its service object (FilesService, Hub, PersonnelService)
    apps: dict[str, Any] = field(default_factory=dict)

    def connections(self) -> Iterator[Any]:
        """Every open connection of every listener."""
        for factory in self.factories.values():
            yield from factory.connections

    def stats(self) -> dict[str, dict]:
        out = {name: f.stats.snapshot() for name, f in self.factories.items()}
        out["database"] = self.pool.stats()
        out["history"] = self.history.stats()
        out["kdf"] = {
            "pending": self.kdf.pending,
            "sources": self.kdf.sources,
            "refused": self.kdf.refused,
        }
        return out


class StartupError(Exception):
    """Start-up cannot go on; the message is the one line the operator sees."""


def fatal(message: str):
    """
    Print one line and exit with status 1, at once.

    C{os._exit}, not C{SystemExit}: start-up may already have started
    worker threads (database, password hashing) that would keep a
    SystemExit'ed interpreter alive, and nothing has been served yet, so
    there is nothing to flush but our own output.
    """
    sys.stdout.flush()
    sys.stderr.write("netshare: %s\n" % (message,))
    sys.stderr.flush()
    os._exit(1)


class NetshareService(MultiService):
    log = Logger()
    #: Built by L{prepare}.
    runtime: Runtime

    def __init__(self, config: Config, reactor: Any = None):
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self.reactor = reactor
        self.jsonLog: JsonLogFile | None = None
        self._jsonConsole: Any = None
        self._consoleOut: Any = None
        self._listeners: dict[str, Any] = {}
        self._stopRequested = False

    # -- building (synchronous, before the reactor runs)

    def prepare(self) -> "NetshareService":
        """Open the database, check the schema, build the runtime and the
        factories.  @raise StartupError: with the operator-facing line."""
        cfg, clock = self.config, self.reactor
        if not os.path.isdir(cfg.data):
            raise StartupError(
                "data directory %s does not exist: run `netshare init --data %s`"
                % (cfg.data, cfg.data)
            )
        engine = None
        try:
            engine = create_engine(
                cfg.db,
                cfg.data,
                sqlite_synchronous=cfg.sqlite_synchronous,
                pool_size=cfg.db_threads,
                call_timeout=cfg.db_timeout,
            )
            migrate.check(engine)
        except (EngineError, migrate.SchemaError) as e:
            raise StartupError("setting --db: %s" % (e,)) from None
        except Exception as e:
            raise StartupError(
                "cannot use database %s: %s"
                % (describe(engine) if engine else cfg.db, str(e).splitlines()[0])
            ) from None
        pool = DBPool(engine, reactor=clock, call_timeout=cfg.db_timeout)
        kdf = KDFPool(
            cfg.kdf_threads, cfg.kdf_queue, maxPerSource=cfg.kdf_per_source, reactor=clock
        )
        accounts = AccountService(
            AccountStore(pool),
            kdf,
            cfg.scrypt_n,
            cfg.scrypt_r,
            cfg.scrypt_p,
            registration_open=cfg.registration == "open",
            policy=LoginPolicy.from_config(cfg),
            lockout_exempt=cfg.lockout_exempt,
            clock=clock,
        )
        history = HistoryRecorder(
            HistoryStore(pool),
            clock,
            cfg.history_flush,
            prelogin=(cfg.prelogin_burst, cfg.prelogin_rate),
            prelogin_address=(cfg.prelogin_address_burst, cfg.prelogin_address_rate),
            max_entries=cfg.history_max_entries,
        )
        rt = self.runtime = Runtime(
            config=cfg,
            reactor=clock,
            pool=pool,
            kdf=kdf,
            accounts=accounts,
            history=history,
            engine=engine,
            sessions=SessionService(SessionStore(pool), accounts.store, cfg.session_ttl, clock),
        )
        watch = rt.accountWatch = AccountWatch(
            accounts.store, clock, cfg.account_check, rt.connections
        )
        rt.accounts.removal_listeners.append(
            lambda removed: watch.closeAccount(removed.account.id)
        )
        for name in SERVICES:
            endpoint = getattr(cfg, name)
            if endpoint is None:
                continue
            factory = make_factory(rt, name)
            rt.factories[name] = factory
            rt.apps[name] = factory.app
            if isinstance(factory.app, FilesService):  # a removed account's files go too
                rt.accounts.removal_listeners.append(_forgetBlobsOf(factory.app))
            listener = Listener(endpoint, factory, rt.reactor, backlog=cfg.listen_backlog)
            listener.setName(name)
            listener.setServiceParent(self)
            self._listeners[name] = listener
        if cfg.web is not None:
            self._addWeb()
        if cfg.manhole is not None or cfg.manhole_ssh is not None:
            self._addManhole()
        return self

    def _addWeb(self):
        """The HTTP API and web interface (docs/http.md): a twisted.web site
        over the same runtime and service objects as the line ports."""
        from netshare.web.site import build_site

        assert self.config.web is not None
        listener = Listener(
            self.config.web,
            build_site(self.runtime),
            self.runtime.reactor,
            backlog=self.config.listen_backlog,
        )
        listener.setName("web")
        listener.setServiceParent(self)
        self._listeners["web"] = listener

    def _addManhole(self):
        from netshare.protocols import manhole

        try:
            listeners = manhole.makeListeners(self.runtime)
        except manhole.ManholeConfigError as e:
            raise StartupError(str(e)) from None
        except OSError as e:
            raise StartupError("manhole: %s" % (e,)) from None
        for name, listener in listeners:
            listener.setServiceParent(self)
            self._listeners[name] = listener

    def setServiceParent(self, parent):
        # twistd's AppLogger uses an ILogObserver component of the
        # application if there is one: that is how --log-format json reaches
        # the console under twistd (twist has its own --log-format).
        if self.config.log_format == "json" and hasattr(parent, "setComponent"):
            # The stream itself, as it is now: twistd later points
            # sys.stdout at the log (print becomes an event).
            self._consoleOut = sys.stdout
            self._jsonConsole = consoleObserver("json", out=self._consoleOut)
            parent.setComponent(ILogObserver, self._jsonConsole)
        return super().setServiceParent(parent)

    # -- starting

    def privilegedStartService(self):
        # Bind first: a busy port must stop start-up before any thread runs.
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            self._cannotListen(e)
        except RefusedAddress as e:
            fatal(str(e))
        self._startShared()

    def startService(self):
        try:
            super().startService()
        except CannotListenError as e:
            self._cannotListen(e)
        except RefusedAddress as e:
            fatal(str(e))
        self._startShared()
        # The reactor installs its signal handlers while it starts up, after
        # this runs: take SIGTERM and SIGINT over once it has.
        self.runtime.reactor.addSystemEventTrigger("after", "startup", self._takeOverStopSignals)
        # Everything built so far lives as long as the process: move it out
        # of the collector's way, so full collections stay short with many
        # connections (measured: 50-150 ms pauses at 1000 connections, halved).
        gc.freeze()
        self.log.info(
            "netshare started: {listeners}",
            listeners=", ".join(
                "%s=%s" % (n, getattr(self.config, n, n)) for n in self._listeners
            ),
        )

    def _takeOverStopSignals(self):
        """
        Stop on SIGTERM and SIGINT with C{reactor.stop()}, as the reactor's
        own handlers do, but (1) as a success: twistd and twist re-raise the
        signal that stopped the reactor after the shutdown, which makes the
        exit status "killed by SIGTERM" although every connection was
        answered and everything was written; and (2) only once: a second
        signal while the orderly stop runs (a second Ctrl-C, or `make`
        passing its own on) is logged, not a traceback from stopping a
        reactor that is already stopping.  The stop is bounded by
        C{--shutdown-timeout} anyway; SIGKILL remains for the impatient.

        Only where the reactor installed handlers of its own (twistd, twist):
        an embedding program keeps its signals.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            if signal.getsignal(signum) not in (
                signal.SIG_DFL,
                signal.SIG_IGN,
                None,
                signal.default_int_handler,
            ):
                signal.signal(signum, self._onStopSignal)

    def _onStopSignal(self, signum, frame):
        name = signal.Signals(signum).name
        if self._stopRequested:
            self.log.info(
                "received {signal} again: already stopping (at most {timeout} s)",
                signal=name,
                timeout=self.config.shutdown_timeout,
            )
            return
        self._stopRequested = True
        self.log.info("received {signal}: stopping in order", signal=name)
        self.runtime.reactor.callFromThread(self._stopReactor)

    def _stopReactor(self):
        try:
            self.runtime.reactor.stop()
        except ReactorNotRunning:  # already stopping for another reason
            pass

    def _cannotListen(self, e):
        reason = getattr(e.socketError, "strerror", None) or e.socketError
        fatal("cannot listen on %s:%s (%s)" % (e.interface or "*", e.port, reason))

    def _startShared(self):
        rt = self.runtime
        if rt.pool.running:
            return
        self.jsonLog = JsonLogFile(
            os.path.join(self.config.data, "logs"),
            max_bytes=self.config.log_max_bytes,
            keep=self.config.log_keep,
            clock=rt.reactor,
        )
        self.jsonLog.start()
        # Per-command events: always the JSON log file; the console too when
        # it is JSON (for log shippers), never the human-oriented text console.
        writers = [self.jsonLog.writeText]
        if self._consoleOut is not None:
            writers.append(functools.partial(_writeTo, self._consoleOut))
        rt.commandLog = CommandLog(writers, rt.reactor)
        rt.pool.start()
        rt.kdf.start()
        rt.history.startRetention(self.config.history_retention)
        if rt.accountWatch is not None:
            rt.accountWatch.start()
        for name, app in rt.apps.items():
            start = getattr(app, "start", None)
            if start is not None:
                d = defer.maybeDeferred(start)
                d.addErrback(self._startFailed, name)

    def _startFailed(self, failure: Failure, name: str) -> None:
        self.log.failure("starting {service}", failure, service=name)

    # -- stopping

    @deferred
    async def stopService(self) -> None:
        rt = self.runtime
        self.log.info("netshare stopping")
        await super().stopService()  # listeners stop accepting
        # Every listener's connections are told at once; one that fails to
        # close in order must not stop the others (or the flush below).
        closing = [
            defer.maybeDeferred(f.shutdown, self.config.shutdown_timeout)
            for f in rt.factories.values()
        ]
        results = await defer.DeferredList(closing, consumeErrors=True)
        for name, (ok, failure) in zip(rt.factories, results, strict=True):
            if not ok:
                self.log.failure("closing the {service} connections", failure, service=name)
        for name, app in rt.apps.items():
            stop = getattr(app, "stop", None)
            if stop is not None:
                try:
                    await defer.maybeDeferred(stop)
                except Exception:
                    self.log.failure("stopping {service}", service=name)
        if rt.accountWatch is not None:
            rt.accountWatch.stop()
        await rt.history.stop()
        await rt.pool.stop()
        rt.kdf.stop()
        self.log.info("netshare stopped")
        if rt.commandLog is not None:
            rt.commandLog.stop()
        if self.jsonLog is not None:
            self.jsonLog.stop()


def _writeTo(out: Any, text: str) -> None:
    """The JSON console's share of the command log (L{CommandLog})."""
    out.write(text)
    out.flush()
