"""
An in-process netshare for tests: the real runtime on a temporary data dir,
any protocol class listening on a free loopback port (TCP or TLS), and a
complete cleanup.

Use::

    from tests.inprocess import make_runtime, runtime, listen, add_account  # fixtures too

    @pytest_twisted.inlineCallbacks
    def test_something(make_runtime):
        rt = make_runtime(idle_timeout=0.5)            # config overrides
        yield add_account(rt, "alice", "pw-alice")
        srv = yield listen(rt, MyProtocol, app=my_app)  # or tls=True
        client = yield srv.connect()                   # netshare.clients.protocol.ClientProtocol
        raw = yield srv.raw()                          # RawClient: exact bytes
        ...                                            # the fixture cleans up

The runtime is built by L{netshare.service.NetshareService.prepare} with every
built-in listener disabled, and started and stopped by that service, so the
orderly stop under test is the production one: listeners stop, every
connection gets C{421 shutting down} (or is aborted after
C{shutdown_timeout}), the request history is flushed, then the database pool
and the KDF pool stop.  Password hashing is cheap here (C{scrypt_n=1024}).

Databases: SQLite in the test's tmp dir by default; C{db="postgres"} or
C{db="mysql"} gets a private database created on the server named by
NETSHARE_TEST_POSTGRES / NETSHARE_TEST_MYSQL and dropped afterwards, so
tests never share tables with anyone else's.  The C{db_runtime} fixture runs
a test once per configured database.

Every wait has a timeout; everything started is stopped.
"""

import hashlib
import os
import uuid
from dataclasses import dataclass, field

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, task
from twisted.internet.endpoints import serverFromString

from netshare import config as configmod
from netshare.clients.protocol import connect as client_connect
from netshare.protocols.factory import CommandFactory
from netshare.protocols.line import CommandProtocol

#: Cheap hashing and quick batching for tests (documented settings), and
#: REGISTER open (the server's default is closed; a test sets it to check).
FAST = dict(
    scrypt_n=1024,
    file_scrypt_n=1024,
    history_flush=0.05,
    shutdown_timeout=3.0,
    registration="open",
)
#: Every built-in listener off: tests listen what they need with L{listen}.
NO_LISTENERS = dict(
    personnel=None, files=None, ttweet=None, manhole=None, manhole_ssh=None, web=None
)
TIMEOUT = 10


def reactor():
    from twisted.internet import reactor as r

    return r


# --- databases ------------------------------------------------------------


def db_kinds():
    """The databases configured for this run: sqlite always, plus postgres
    and mysql when their NETSHARE_TEST_* URL is set."""
    kinds = ["sqlite"]
    if os.environ.get("NETSHARE_TEST_POSTGRES"):
        kinds.append("postgres")
    if os.environ.get("NETSHARE_TEST_MYSQL"):
        kinds.append("mysql")
    return kinds


class PrivateDatabase:
    """A throw-away database on a PostgreSQL or MariaDB server."""

    def __init__(self, kind):
        import sqlalchemy as sa
        from sqlalchemy.engine import make_url

        base = os.environ[
            "NETSHARE_TEST_POSTGRES" if kind == "postgres" else "NETSHARE_TEST_MYSQL"
        ]
        self.kind = kind
        self.name = "nst_%s" % (uuid.uuid4().hex[:12],)
        self._admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
        with self._admin.connect() as conn:
            if kind == "mysql":
                conn.exec_driver_sql("CREATE DATABASE %s CHARACTER SET utf8mb4" % self.name)
            else:
                conn.exec_driver_sql("CREATE DATABASE %s" % self.name)
        self.url = make_url(base).set(database=self.name).render_as_string(hide_password=False)

    def drop(self):
        with self._admin.connect() as conn:
            if self.kind == "postgres":
                conn.exec_driver_sql("DROP DATABASE IF EXISTS %s WITH (FORCE)" % self.name)
            else:
                conn.exec_driver_sql("DROP DATABASE IF EXISTS %s" % self.name)
        self._admin.dispose()


# --- the runtime ----------------------------------------------------------


@dataclass
class _Harness:
    service: object
    private_db: object = None
    db_url: str = ""
    listeners: list = field(default_factory=list)
    protocols: list = field(default_factory=list)  # every server protocol built
    clients: list = field(default_factory=list)  # every client connection made here
    stopped: bool = False


def start_runtime(tmp_path, db=None, reactor_=None, **config_overrides):
    """
    Build and start a L{netshare.service.Runtime} on C{tmp_path/data}.

    @param db: None or C{"sqlite"} (a file in the data dir), C{"postgres"} or
        C{"mysql"} (a private database), or any database URL.
    @param config_overrides: values for L{netshare.config.defaults}, e.g.
        C{idle_timeout=0.5, max_per_ip=2, registration="closed"}.
    @return: the started runtime; stop it with L{stop_runtime}.
    """
    from netshare.service import NetshareService
    from netshare.storage import migrate
    from netshare.storage.engine import create_engine

    reactor_ = reactor_ or reactor()
    data = os.path.join(str(tmp_path), "data")
    for sub in ("", "logs", "files", "tls"):
        os.makedirs(os.path.join(data, sub), mode=0o700, exist_ok=True)
    private = None
    if db in (None, "sqlite"):
        url = "sqlite:///netshare.db"
    elif db in ("postgres", "mysql"):
        private = PrivateDatabase(db)
        url = private.url
    else:
        url = db
    settings = dict(FAST, data=data, db=url, **NO_LISTENERS)
    settings.update(config_overrides)
    cfg = configmod.defaults(**settings)
    try:
        engine = create_engine(cfg.db, cfg.data, sqlite_synchronous=cfg.sqlite_synchronous)
        try:
            migrate.upgrade(engine)
        finally:
            engine.dispose()
        service = NetshareService(cfg, reactor=reactor_).prepare()
        service.startService()
    except BaseException:
        if private is not None:
            private.drop()
        raise
    rt = service.runtime
    rt.harness = _Harness(service, private, db_url=cfg.db)
    return rt


@defer.inlineCallbacks
def stop_runtime(rt, close_clients=True):
    """Stop listening, close every connection and wait, flush history, stop
    the pools (the database itself stays until L{drop_private_db}).

    @param close_clients: close this harness's client connections first; with
        False the server's orderly stop (C{421 shutting down}) closes them."""
    h = rt.harness
    if h.stopped:
        return
    h.stopped = True
    for lst in h.listeners:
        yield _bounded(defer.maybeDeferred(lst.port.stopListening))
    if close_clients:
        for c in h.clients:
            if c.transport is not None and c.transport.connected:
                c.transport.loseConnection()
    # Factories shut down, history flushed, pools stopped:
    yield _bounded(defer.maybeDeferred(h.service.stopService), 30 + rt.config.shutdown_timeout)
    for p in h.protocols:  # refused connections included
        if p.transport is not None and p.transport.connected:
            p.transport.abortConnection()
    waits = [p.lost for p in h.protocols] + [c.closed for c in h.clients]
    yield _bounded(defer.DeferredList(waits, consumeErrors=True))


def drop_private_db(rt):
    """Drop the runtime's private PostgreSQL/MariaDB database (after L{stop_runtime})."""
    h = rt.harness
    if h.private_db is not None:
        h.private_db.drop()
        h.private_db = None


def _bounded(d, timeout=TIMEOUT):
    return d.addTimeout(timeout, reactor())


@defer.inlineCallbacks
def add_account(rt, name, password, role="user"):
    """Create an account through the account service (hashing off the reactor)."""
    account = yield _bounded(rt.accounts.add(name, password, role))
    return account


# --- listeners ------------------------------------------------------------


@dataclass
class Listener:
    runtime: object
    factory: CommandFactory
    port: object
    tls: bool = False
    cafile: str | None = None

    @property
    def host(self):
        return self.port.getHost().host

    @property
    def number(self):
        return self.port.getHost().port

    @property
    def protocols(self):
        """Server-side protocols of this listener, in connection order."""
        return [p for p in self.runtime.harness.protocols if p.factory is self.factory]

    @defer.inlineCallbacks
    def connect(self, hostname=None, cafile=None, tls=None, timeout=TIMEOUT):
        """A L{netshare.clients.protocol.ClientProtocol}, greeted (TLS verified against
        the listener's certificate unless C{cafile} says otherwise)."""
        tls = self.tls if tls is None else tls
        proto = yield client_connect(
            self.host,
            self.number,
            tls=tls,
            cafile=cafile or self.cafile,
            hostname=hostname,
            reactor=reactor(),
            timeout=timeout,
        )
        self.runtime.harness.clients.append(proto)
        return with_timeouts(proto, timeout)

    @defer.inlineCallbacks
    def raw(self, bind=None, greet=True):
        """A L{RawClient} on this port (plain TCP), greeting read unless not C{greet}."""
        from twisted.internet.endpoints import TCP4ClientEndpoint

        ep = TCP4ClientEndpoint(
            reactor(),
            self.host,
            self.number,
            timeout=TIMEOUT,
            bindAddress=(bind, 0) if bind else None,
        )
        client = yield _bounded(ep.connect(_RawFactory()))
        self.runtime.harness.clients.append(client)
        if greet:
            line = yield client.readline()
            client.greeting = line
        return client


@defer.inlineCallbacks
def listen(rt, protocol_class=CommandProtocol, app=None, tls=False, endpoint=None):
    """
    Listen C{protocol_class} (a L{CommandProtocol} subclass) on a free
    loopback port, over TLS with a self-signed certificate if C{tls}.

    The factory is registered in C{rt.factories} so that the service's
    orderly stop shuts its connections down.
    @return: Deferred[L{Listener}]
    """
    factory = CommandFactory(rt, protocol_class, app=app)
    cafile = None
    if endpoint is None:
        endpoint = "tcp:0:interface=127.0.0.1"
        if tls:
            ca, cert, key = tls_material(rt)
            endpoint = "ssl:0:interface=127.0.0.1:privateKey=%s:certKey=%s" % (
                _escape(key),
                _escape(cert),
            )
            cafile = ca
    build = factory.buildProtocol

    def tracked(addr):
        p = build(addr)
        if p is not None:
            rt.harness.protocols.append(p)
        return p

    factory.buildProtocol = tracked
    key_name = factory.service
    n = 1
    while key_name in rt.factories:
        n += 1
        key_name = "%s#%d" % (factory.service, n)
    if app is not None and not any(a is app for a in rt.apps.values()):
        rt.apps[key_name] = app  # stopped by the service's orderly stop
        start = getattr(app, "start", None)
        if start is not None:  # started before accepting, as the service does
            yield _bounded(defer.maybeDeferred(start))
    if endpoint.startswith("ssl:"):  # served as the server serves it
        from netshare.tls import server_endpoint

        ep = server_endpoint(rt.reactor, endpoint)
    else:
        ep = serverFromString(rt.reactor, endpoint)
    port = yield _bounded(ep.listen(factory))
    lst = Listener(rt, factory, port, tls=tls, cafile=cafile)
    rt.harness.listeners.append(lst)
    rt.factories[key_name] = factory
    return lst


def with_timeouts(proto, timeout=TIMEOUT):
    """Make every command, upload and download of a client time out, so a
    test that goes wrong fails instead of hanging."""
    for name in ("command", "upload", "download"):
        method = getattr(proto, name)

        def timed(*args, _method=method, **kwargs):
            return _method(*args, **kwargs).addTimeout(timeout, reactor())

        setattr(proto, name, timed)
    return proto


def tls_material(rt):
    """The runtime's local CA and server certificate (made once, as `netshare
    init` does): (ca, cert, key) paths."""
    from netshare.tls import make_certificates

    tls_dir = os.path.join(rt.config.data, "tls")
    if not os.path.exists(os.path.join(tls_dir, "cert.pem")):
        return make_certificates(tls_dir)
    return tuple(os.path.join(tls_dir, f) for f in ("ca.pem", "cert.pem", "key.pem"))


def _escape(path):
    return path.replace("\\", "\\\\").replace(":", "\\:")


# --- a raw client for exact bytes ----------------------------------------


class RawClient(protocol.Protocol):
    """
    Bytes in, bytes out, no interpretation: for tests of framing and limits.

    C{readline()} / C{reply()} / C{read_exactly()} return Deferreds with a
    timeout; C{closed} fires when the connection is gone; C{received} counts
    bytes; C{buffer} (a bytearray) holds what has not been consumed yet.
    Set C{discard} to count incoming bytes without keeping them.
    """

    def __init__(self):
        self.buffer = bytearray()
        self.received = 0
        self.discard = False
        self.closed = defer.Deferred()
        self.reason = None
        self.greeting = None
        self.pushes = []
        self._waiter = None

    def connectionLost(self, reason):
        self.reason = reason
        self._wake()
        self.closed.callback(None)

    def dataReceived(self, data):
        self.received += len(data)
        if not self.discard:
            self.buffer += data
        self._wake()

    def _wake(self):
        w, self._waiter = self._waiter, None
        if w is not None and not w.called:
            w.callback(None)

    def send(self, data: bytes):
        self.transport.write(data)

    @defer.inlineCallbacks
    def _wait(self, ready, timeout, what):
        deadline = reactor().seconds() + timeout
        while not ready():
            if self.closed.called:
                raise ConnectionError(
                    "closed while waiting for %s; buffered %r" % (what, bytes(self.buffer[:200]))
                )
            left = deadline - reactor().seconds()
            if left <= 0:
                raise defer.TimeoutError(
                    "no %s within %ss; buffered %r" % (what, timeout, bytes(self.buffer[:200]))
                )
            self._waiter = defer.Deferred()
            try:
                yield self._waiter.addTimeout(left, reactor())
            except defer.TimeoutError:
                pass

    @defer.inlineCallbacks
    def readline(self, timeout=TIMEOUT):
        """The next CRLF-terminated line, decoded; ConnectionError if closed first."""
        yield self._wait(lambda: b"\r\n" in self.buffer, timeout, "line")
        end = self.buffer.index(b"\r\n")
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        return line.decode("utf-8")

    @defer.inlineCallbacks
    def read_exactly(self, n, timeout=TIMEOUT):
        """Exactly n raw bytes."""
        yield self._wait(lambda: len(self.buffer) >= n, timeout, "%d bytes" % n)
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    @defer.inlineCallbacks
    def reply(self, timeout=TIMEOUT):
        """Every line of the next reply; 6xx pushes before it go to C{pushes}."""
        lines = []
        while True:
            line = yield self.readline(timeout)
            if line[:1] == "6" and not lines:
                self.pushes.append(line)
                continue
            lines.append(line)
            if line[3:4] != "-":
                return lines

    def cmd(self, line, timeout=TIMEOUT):
        self.send(line.encode("utf-8") + b"\r\n")
        return self.reply(timeout)

    def wait_closed(self, timeout=TIMEOUT):
        d = defer.Deferred()
        self.closed.addBoth(lambda r: d.callback(None) if not d.called else None)
        return d.addTimeout(timeout, reactor())


class _RawFactory(protocol.Factory):
    protocol = RawClient
    noisy = False


# --- small waiting helpers ------------------------------------------------


@defer.inlineCallbacks
def wait_for(predicate, timeout=TIMEOUT, interval=0.01, what="condition"):
    """Poll C{predicate()} until true; TimeoutError after C{timeout} seconds."""
    deadline = reactor().seconds() + timeout
    while not predicate():
        if reactor().seconds() > deadline:
            raise defer.TimeoutError("%s not reached within %ss" % (what, timeout))
        yield task.deferLater(reactor(), interval, lambda: None)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- fixtures -------------------------------------------------------------


@pytest.fixture
def make_runtime(tmp_path):
    """A factory: C{make_runtime(db=None, **config_overrides)} -> started
    runtime; each is stopped (and its private database dropped) afterwards."""
    made = []

    def make(db=None, **overrides):
        sub = tmp_path / ("rt%d" % len(made))
        sub.mkdir()
        rt = start_runtime(sub, db=db, **overrides)
        made.append(rt)
        return rt

    yield make
    errors = []
    for rt in reversed(made):
        try:
            pytest_twisted.blockon(stop_runtime(rt))
        except Exception as e:  # stop the others, then report
            errors.append(e)
        try:
            drop_private_db(rt)
        except Exception as e:
            errors.append(e)
    if errors:
        raise errors[0]


@pytest.fixture
def runtime(make_runtime):
    """A started runtime on SQLite with the test defaults."""
    return make_runtime()


@pytest.fixture(params=db_kinds())
def db_runtime(request, make_runtime):
    """A started runtime, once per configured database (sqlite, postgres, mysql)."""
    return make_runtime(db=request.param)
