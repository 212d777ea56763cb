"""
Writes whose COMMIT answer is lost, on PostgreSQL and MariaDB.

A proxy between netshare and the database (L{tests.dbproxy.CommitProxy})
cuts the connection of one write transaction right at its COMMIT:

 - I{after} the COMMIT was forwarded and answered (the write committed, the
   answer is lost): the client must be told it succeeded, nothing may be
   written twice, and a file must be served with the acknowledged content;
 - I{before} the COMMIT reached the server (it rolled back): the write is
   run once more, succeeds, and nothing half-written remains.

Every durable writer is tried: new and replace uploads, file DELETE,
REGISTER, personnel ADD, UPDATE, DELETE, SEND and ACK, a registered user's
TWEET, HISTORY CLEAR.  And a COMMIT that is slow rather than cut: answered
late but within the grace period it is a plain success; later than that it
is C{451 outcome unknown}, the content stays, and a retry is answered
truthfully.
"""

import hashlib
import json
import os
import shlex

import pytest
import pytest_twisted
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from twisted.internet import defer

from netshare.protocols.files import FilesProtocol
from netshare.protocols.line import CommandProtocol
from netshare.protocols.personnel import PersonnelProtocol
from netshare.protocols.ttweet import TtweetProtocol
from netshare.service import build_files, build_hub, make_factory
from tests.dbproxy import CommitProxy
from tests.inprocess import PrivateDatabase, add_account, listen, stop_runtime

pytestmark = pytest.mark.timeout(120)

KINDS = [
    k
    for k, env in (("postgres", "NETSHARE_TEST_POSTGRES"), ("mysql", "NETSHARE_TEST_MYSQL"))
    if os.environ.get(env)
]
if not KINDS:
    pytestmark = [
        pytestmark,
        pytest.mark.skip(
            reason="needs NETSHARE_TEST_POSTGRES or NETSHARE_TEST_MYSQL (CI sets both)"
        ),
    ]
MODES = ["after", "before"]
PW = {"alice": "pw-alice", "root": "pw-root"}


def quote(*words):
    return " ".join(shlex.quote(str(w)) for w in words)


class Setup:
    """A private database, a CommitProxy in front of it, a runtime on the
    proxy, and a direct engine to look at what was really stored."""

    def __init__(self, make_runtime, kind, **config):
        self.db = PrivateDatabase(kind)
        u = make_url(self.db.url)
        self.proxy = CommitProxy(u.host or "127.0.0.1", u.port)
        via = u.set(host="127.0.0.1", port=self.proxy.port).render_as_string(hide_password=False)
        self.rt = make_runtime(db=via, **config)
        self.engine = sa.create_engine(self.db.url)

    def rows(self, sql, **params):
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql), params).all()

    def history(self, command_prefix):
        user = self.engine.dialect.identifier_preparer.quote("user")
        return [
            tuple(r)
            for r in self.rows(
                "SELECT command, code, %s FROM history WHERE command LIKE :p" % user,
                p=command_prefix + "%",
            )
        ]

    @defer.inlineCallbacks
    def close(self):
        """Stop the runtime first: its connections go through the proxy to
        the database dropped last."""
        yield stop_runtime(self.rt)
        self.engine.dispose()
        self.proxy.close()
        self.db.drop()


@pytest.fixture(params=KINDS or ["none"])
def setup(request, make_runtime):
    s = Setup(make_runtime, request.param)
    yield s
    pytest_twisted.blockon(s.close())


@defer.inlineCallbacks
def logged_in(srv, user):
    c = yield srv.raw()
    r = yield c.cmd(quote("LOGIN", user, PW[user]))
    assert r[0].startswith("230 "), r
    return c


@defer.inlineCallbacks
def upload(c, name, data, *options):
    r = yield c.cmd(quote("UPLOAD", name, len(data), *options))
    assert r[0].startswith("350 "), r
    c.send(data)
    line = yield c.readline()
    return line


@defer.inlineCallbacks
def download(c, name):
    r = yield c.cmd(quote("DOWNLOAD", name))
    assert r[0].startswith("150 "), r
    body = yield c.read_exactly(int(r[0].split()[1]))
    assert (yield c.readline()) == "226 transfer complete"
    return body


@defer.inlineCallbacks
def files_server(setup):
    rt = setup.rt
    yield add_account(rt, "alice", PW["alice"])
    app = build_files(rt)
    srv = yield listen(rt, FilesProtocol, app=app)
    return srv, app


def blob_ids(app):
    return app.blobs.all_blob_ids()


# -- files ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest_twisted.inlineCallbacks
def test_new_upload(setup, mode):
    srv, app = yield files_server(setup)
    alice = yield logged_in(srv, "alice")
    data = os.urandom(200_000)
    setup.proxy.arm(b"INSERT INTO files", mode)
    line = yield upload(alice, "victim-new.bin", data)
    assert setup.proxy.fired == 1
    assert line.startswith('226 stored {"name":"victim-new.bin"'), line
    assert setup.rows("SELECT COUNT(*) FROM files")[0][0] == 1
    assert (yield download(alice, "victim-new.bin")) == data
    assert len(blob_ids(app)) == 1
    assert setup.history("UPLOAD victim-new.bin") == [
        ("UPLOAD victim-new.bin %d" % len(data), 226, "alice")
    ]


@pytest.mark.parametrize("mode", MODES)
@pytest_twisted.inlineCallbacks
def test_replace_upload(setup, mode):
    srv, app = yield files_server(setup)
    alice = yield logged_in(srv, "alice")
    assert (yield upload(alice, "doc", b"old content")).startswith("226 ")
    new = os.urandom(50_000)
    setup.proxy.arm(b"UPDATE files", mode)
    line = yield upload(alice, "doc", new, "replace=yes")
    assert setup.proxy.fired == 1
    assert (
        line.startswith("226 stored ")
        and json.loads(line[11:])["sha256"] == hashlib.sha256(new).hexdigest()
    )
    assert (yield download(alice, "doc")) == new
    assert setup.rows("SELECT COUNT(*) FROM files")[0][0] == 1
    assert len(blob_ids(app)) == 1  # the old content went, the new one stayed


@pytest.mark.parametrize("mode", MODES)
@pytest_twisted.inlineCallbacks
def test_delete(setup, mode):
    srv, app = yield files_server(setup)
    alice = yield logged_in(srv, "alice")
    assert (yield upload(alice, "gone.txt", b"bye")).startswith("226 ")
    setup.proxy.arm(b"DELETE FROM files", mode)
    assert (yield alice.cmd("DELETE gone.txt")) == ["200 deleted"]
    assert setup.proxy.fired == 1
    assert setup.rows("SELECT COUNT(*) FROM files")[0][0] == 0
    assert (yield alice.cmd("INFO gone.txt"))[0].startswith("550 ")
    for _ in range(100):  # the content goes after the row
        if not blob_ids(app):
            break
        yield deferLater(0.02)
    assert blob_ids(app) == set()
    assert setup.history("DELETE gone.txt") == [("DELETE gone.txt", 200, "alice")]


# -- accounts ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest_twisted.inlineCallbacks
def test_register(setup, mode):
    srv = yield listen(setup.rt, CommandProtocol)
    c = yield srv.raw()
    setup.proxy.arm(b"INSERT INTO accounts", mode)
    assert (yield c.cmd("REGISTER zed pw-zed")) == ["201 registered zed"]
    assert setup.proxy.fired == 1
    assert setup.rows("SELECT name FROM accounts") == [("zed",)]
    assert (yield c.cmd("LOGIN zed pw-zed"))[0] == "230 logged in as zed (user)"
    assert setup.history("REGISTER") == [("REGISTER zed ***", 201, None)]


# -- personnel -------------------------------------------------------------------------


@defer.inlineCallbacks
def personnel_server(setup):
    rt = setup.rt
    yield add_account(rt, "root", PW["root"], role="admin")
    yield add_account(rt, "alice", PW["alice"])
    factory = make_factory(rt, "personnel")
    srv = yield listen(rt, PersonnelProtocol, app=factory.app)
    root = yield logged_in(srv, "root")
    return srv, root


@pytest.mark.parametrize("mode", MODES)
@pytest_twisted.inlineCallbacks
def test_personnel_add_update_delete(setup, mode):
    srv, root = yield personnel_server(setup)
    setup.proxy.arm(b"INSERT INTO personnel", mode)
    r = yield root.cmd("ADD ssn=X1 name=Ada surname=Lovelace")
    assert setup.proxy.fired == 1 and r[0].startswith('201 {"ssn":"X1"'), r
    setup.proxy.arm(b"UPDATE personnel", mode)
    r = yield root.cmd("UPDATE X1 job=engineer")
    assert setup.proxy.fired == 1 and '"job":"engineer"' in r[0], r
    setup.proxy.arm(b"DELETE FROM personnel", mode)
    assert (yield root.cmd("DELETE X1")) == ["200 deleted"]
    assert setup.proxy.fired == 1
    assert setup.rows("SELECT COUNT(*) FROM personnel")[0][0] == 0
    assert [h[:2] for h in setup.history("ADD ssn=X1")] == [
        ("ADD ssn=X1 name=Ada surname=Lovelace", 201)
    ]
    assert len(setup.history("UPDATE X1")) == 1 and len(setup.history("DELETE X1")) == 1


@pytest.mark.parametrize("mode", MODES)
@pytest_twisted.inlineCallbacks
def test_personnel_send_and_ack(setup, mode):
    srv, root = yield personnel_server(setup)
    assert (yield root.cmd("ADD ssn=S1 name=A surname=B"))[0].startswith("201 ")
    setup.proxy.arm(b"INSERT INTO outbox", mode)
    assert (yield root.cmd("SEND S1 alice")) == ["200 queued 1"]
    assert setup.proxy.fired == 1
    assert setup.rows("SELECT seq FROM outbox") == [(1,)]  # queued once, not twice
    alice = yield logged_in(srv, "alice")
    assert (yield alice.cmd("SYNC")) == ["200 syncing"]
    push = yield alice.readline()
    assert push.startswith("610 1 SAVE ")
    setup.proxy.arm(b"UPDATE sync_clients", mode)
    assert (yield alice.cmd("ACK 1")) == ["200 ok"]
    assert setup.proxy.fired == 1
    assert setup.rows("SELECT acked_seq FROM sync_clients") == [(1,)]
    assert len(setup.history("ACK 1")) == 1


# -- ttweet and history -------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest_twisted.inlineCallbacks
def test_tweet(setup, mode):
    rt = setup.rt
    yield add_account(rt, "alice", PW["alice"])
    hub = build_hub(rt)
    srv = yield listen(rt, TtweetProtocol, app=hub)
    alice = yield logged_in(srv, "alice")
    assert (yield alice.cmd("SUBSCRIBE #t")) == ["200 operation success"]
    setup.proxy.arm(b"INSERT INTO tweets", mode)
    assert (yield alice.cmd('TWEET "once only" #t')) == ["200 ok"]
    assert setup.proxy.fired == 1
    assert setup.rows("SELECT message FROM tweets") == [("once only",)]
    assert setup.rows("SELECT COUNT(*) FROM timelines")[0][0] == 1
    assert len(setup.history("TWEET")) == 1
    timeline = yield alice.cmd("TIMELINE")
    assert len(timeline) == 2 and '"message":"once only"' in timeline[0]


@pytest.mark.parametrize("mode", MODES)
@pytest_twisted.inlineCallbacks
def test_history_clear(setup, mode):
    rt = setup.rt
    yield add_account(rt, "alice", PW["alice"])
    srv = yield listen(rt, CommandProtocol)
    alice = yield logged_in(srv, "alice")
    for _ in range(3):
        assert (yield alice.cmd("PING")) == ["200 pong"]
    yield rt.history.flush()
    setup.proxy.arm(b"SET hidden", mode)  # `history` is quoted on MariaDB
    assert (yield alice.cmd("HISTORY CLEAR")) == ["200 4 deleted"]
    assert setup.proxy.fired == 1
    assert setup.history("HISTORY CLEAR") == [("HISTORY CLEAR", 200, "alice")]


# -- a slow COMMIT ------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_a_commit_answered_late_within_the_grace_is_a_plain_success(make_runtime):
    kind = KINDS[0]
    s = Setup(make_runtime, kind, db_timeout=1.0)
    try:
        srv, app = yield files_server(s)
        alice = yield logged_in(srv, "alice")
        s.proxy.arm(b"INSERT INTO files", "stall", stall=1.4)  # deadline 1 s, grace 1 s
        line = yield upload(alice, "slow.bin", b"slow but sure")
        assert line.startswith("226 stored "), line
        assert (yield download(alice, "slow.bin")) == b"slow but sure"
    finally:
        yield s.close()


@pytest_twisted.inlineCallbacks
def test_a_commit_answered_after_the_grace_is_outcome_unknown_and_a_retry_is_truthful(
    make_runtime,
):
    kind = KINDS[0]
    s = Setup(make_runtime, kind, db_timeout=0.5)
    try:
        srv, app = yield files_server(s)
        alice = yield logged_in(srv, "alice")
        s.proxy.arm(b"INSERT INTO files", "stall", stall=2.5)  # deadline 0.5 s + 0.5 s
        line = yield upload(alice, "late.bin", b"it did get stored")
        assert line.startswith("451 outcome unknown"), line
        # The COMMIT went through after all: the file is there, whole, and
        # its content was kept for it; a retry is told the truth.
        for _ in range(300):
            if s.rows("SELECT COUNT(*) FROM files")[0][0]:
                break
            yield deferLater(0.02)
        assert (yield download(alice, "late.bin")) == b"it did get stored"
        r = yield alice.cmd(quote("UPLOAD", "late.bin", 17))
        assert r[0].startswith("555 file exists"), r
        assert s.rows("SELECT COUNT(*) FROM files")[0][0] == 1
        assert len(blob_ids(app)) == 1
    finally:
        yield s.close()


def deferLater(seconds):
    from twisted.internet import reactor, task

    return task.deferLater(reactor, seconds, lambda: None)


# -- connections that stop answering -------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS or ["none"])
@pytest_twisted.inlineCallbacks
def test_connections_that_stop_answering_are_replaced_without_outside_help(make_runtime, kind):
    """A middlebox silences every connection the pool holds (nothing passes,
    nothing closes) while new connections work: a call on a silenced
    connection is answered 451 at its 1 s deadline and that connection is cut
    (its worker thread is free again), and within a few calls the pool works
    on fresh connections, with no restart and no help from outside."""
    s = Setup(make_runtime, kind, db_timeout=1.0, db_threads=3)
    try:
        rt = s.rt
        yield add_account(rt, "alice", PW["alice"])
        srv = yield listen(rt, CommandProtocol)
        clients = []
        for _ in range(3):
            clients.append((yield logged_in(srv, "alice")))
        # Every pooled connection in use at once, so all of them exist.
        yield defer.gatherResults([c.cmd("HISTORY limit=1") for c in clients])
        s.proxy.silence()
        answers = []
        for _ in range(12):
            r = yield clients[0].cmd("HISTORY limit=1", timeout=30)
            answers.append(r[-1][:3])
            if answers[-1] == "210":
                break
        assert answers[-1] == "210", answers
        assert set(answers[:-1]) <= {"451"}
        assert rt.pool.timeouts >= answers.count("451")
        # No worker stays stuck on a silenced connection (background writes,
        # such as the history batch, may be running a moment longer).
        for _ in range(250):
            if rt.pool.active == 0:
                break
            yield deferLater(0.02)
        assert rt.pool.active == 0
        for c in clients[1:]:  # everyone is served again
            assert (yield c.cmd("PING")) == ["200 pong"]
            assert (yield c.cmd("HISTORY limit=1"))[-1].startswith("210 ")
    finally:
        yield s.close()
