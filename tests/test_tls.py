"""
TLS listeners: the client library verifies the certificate chain and the
host name before a single command is sent; plain text on a TLS port gets
nothing usable.  One end-to-end test runs the real `twistd netshare` with a
TLS listener made from the certificate `netshare init` wrote.
"""

import os

import pytest
import pytest_twisted

from twisted.internet import defer, task

from netshare.client import connect, login, quote
from netshare.protocols.base import CommandProtocol
from netshare.tls import make_self_signed
from tests.inprocess import (add_account, listen, make_runtime, reactor,  # noqa: F401
                             runtime, wait_for, with_timeouts)

pytestmark = pytest.mark.timeout(120, method="thread")


@pytest_twisted.inlineCallbacks
def test_client_connects_with_the_certificate_by_ip_and_by_name(runtime):
    yield add_account(runtime, "alice", "pw-alice")
    srv = yield listen(runtime, CommandProtocol, tls=True)
    for hostname in (None, "localhost"):  # IP SAN 127.0.0.1, DNS SAN localhost
        c = yield srv.connect(hostname=hostname)
        assert (yield c.command("PING")).line == "200 pong"
        assert (yield login(c, "alice", "pw-alice")).code == 230
        assert (yield c.command("WHOAMI")).line == "200 alice user"
        hist = yield c.command("HISTORY limit=2")
        assert [i["command"] for i in hist.items] == ["WHOAMI", "LOGIN alice ***"]
        yield c.close().addTimeout(10, reactor())
    from twisted.internet.interfaces import ISSLTransport
    assert all(ISSLTransport.providedBy(p.transport) for p in srv.protocols)


@pytest_twisted.inlineCallbacks
def test_wrong_hostname_fails_before_any_command(runtime):
    srv = yield listen(runtime, CommandProtocol, tls=True)
    with pytest.raises(Exception) as e:
        yield srv.connect(hostname="wrong.example.com")
    assert "wrong.example.com" in str(e.value) or "VerificationError" in repr(e.value)
    yield wait_for(lambda: srv.protocols and all(p.lost.called for p in srv.protocols))
    assert srv.factory.stats.bytes_in == 0 and srv.factory.stats.commands == 0


@pytest_twisted.inlineCallbacks
def test_untrusted_certificate_fails_before_any_command(runtime, tmp_path):
    srv = yield listen(runtime, CommandProtocol, tls=True)
    other_cert, other_key = str(tmp_path / "other.pem"), str(tmp_path / "other.key")
    make_self_signed(other_cert, other_key)  # same names, another key: not trusted
    with pytest.raises(Exception):
        yield srv.connect(cafile=other_cert)
    yield wait_for(lambda: srv.protocols and all(p.lost.called for p in srv.protocols))
    assert srv.factory.stats.bytes_in == 0 and srv.factory.stats.commands == 0


@pytest_twisted.inlineCallbacks
def test_plain_text_on_the_tls_port_gets_nothing_usable(runtime):
    srv = yield listen(runtime, CommandProtocol, tls=True)
    raw = yield srv.raw(greet=False)
    raw.send(b"PING\r\nLOGIN admin x\r\n")
    yield raw.wait_closed(timeout=2)  # refused within 2 s
    text = bytes(raw.buffer)
    assert b"220" not in text and b"pong" not in text and b"netshare" not in text
    assert srv.factory.stats.bytes_in == 0 and srv.factory.stats.commands == 0


@pytest_twisted.inlineCallbacks
def test_raw_transfers_pushes_and_close_over_tls(runtime, tmp_path):
    """The raw paths register producers on the transport: over TLS too."""
    import hashlib
    from tests.test_protocol_base import LabApp, LabProtocol, pattern
    srv = yield listen(runtime, LabProtocol, app=LabApp(), tls=True)
    c = yield srv.connect()
    got = []
    c.onPush = lambda code, text: got.append(code)
    size = 3 * 2**20 + 5
    with open(tmp_path / "d.bin", "wb") as sink:
        resp = yield c.download("GET %d 8" % size, sink)
    assert resp.code == 226 and (tmp_path / "d.bin").read_bytes() == pattern(size, seed=8)
    (tmp_path / "u.bin").write_bytes(pattern(size, seed=9))
    with open(tmp_path / "u.bin", "rb") as f:
        resp = yield c.upload("PUT %d" % size, f)
    assert resp.text == "stored %d bytes sha256=%s" % (
        size, hashlib.sha256(pattern(size, seed=9)).hexdigest())
    srv.protocols[0].sendPush("600 hello")
    assert (yield c.command("PING")).line == "200 pong"
    yield wait_for(lambda: got == [600])
    assert (yield c.command("QUIT")).line == "221 bye"
    yield c.closed.addTimeout(10, reactor())
    yield srv.protocols[0].lost.addTimeout(10, reactor())


@pytest_twisted.inlineCallbacks
def test_reader_that_never_reads_over_tls_is_dropped(make_runtime):
    rt = make_runtime(max_output=256 * 1024)
    srv = yield listen(rt, CommandProtocol, tls=True)
    silent = yield srv.connect()
    silent.transport.pauseProducing()  # never reads again
    other = yield srv.connect()
    server = srv.protocols[0]
    push = "600 " + "p" * 4090
    sent = 0

    def flood():
        nonlocal sent
        for _ in range(8):
            if not server.lost.called:
                server.sendPush(push)
                sent += len(push)

    loop = task.LoopingCall(flood)
    loop.clock = reactor()
    loop.start(0.001)
    try:
        while not server.lost.called and sent < 256 * 2**20:
            assert (yield other.command("PING")).line == "200 pong"
    finally:
        loop.stop()
    assert server.lost.called and srv.factory.stats.slow_drops == 1
    assert (yield other.command("PING")).line == "200 pong"


@pytest.fixture
def tls_server(tmp_path):
    """The real server, its files listener on TLS with the init certificate."""
    from tests.support import ServerProcess, free_port
    data = tmp_path / "data"
    sp = ServerProcess(data, admin_password="Sekret-Admin-9")
    cert, key = str(data / "tls" / "cert.pem"), str(data / "tls" / "key.pem")
    assert os.path.exists(cert) and os.path.exists(key)
    sp.ports["files"] = free_port()
    sp.extra_args += ["--files", "ssl:%d:interface=127.0.0.1:privateKey=%s:certKey=%s"
                      % (sp.ports["files"], key, cert)]
    sp.start()
    yield sp, cert
    try:
        # twistd re-raises the SIGTERM after its orderly stop: -15 is clean.
        assert sp.terminate() in (0, -15)
        assert "netshare stopped" in sp.output()
    finally:
        sp.kill()


@pytest_twisted.inlineCallbacks
def test_real_server_tls_listener_with_the_init_certificate(tls_server):
    sp, cert = tls_server
    port = sp.ports["files"]
    c = yield connect("127.0.0.1", port, tls=True, cafile=cert, hostname="localhost",
                      reactor=reactor())
    with_timeouts(c)
    try:
        assert (yield login(c, "admin", "Sekret-Admin-9")).code == 230
        assert (yield c.command("WHOAMI")).line == "200 admin admin"
        hist = yield c.command(quote("HISTORY", "limit=5"))
        assert hist.items[0]["command"] == "WHOAMI"
        assert all("Sekret" not in i["command"] for i in hist.items)
    finally:
        yield c.close().addTimeout(10, reactor())
    with pytest.raises(Exception):
        yield connect("127.0.0.1", port, tls=True, cafile=cert, hostname="other.example",
                      reactor=reactor())
    # Plain text against it: no greeting.
    with pytest.raises(defer.TimeoutError):
        yield connect("127.0.0.1", port, tls=False, reactor=reactor(), timeout=1)
    # Let the reactor finish the aborted connections before the fixture stops
    # the server (an abort closes the socket on the next reactor turn).
    yield task.deferLater(reactor(), 0.05, lambda: None)
    # The JSON log of the real server: one object per line, no password.
    import json
    with open(os.path.join(sp.data, "logs", "netshare.jsonl"), encoding="utf-8") as f:
        text = f.read()
    assert "Sekret" not in text
    events = [json.loads(line) for line in text.splitlines()]
    assert any(e.get("verb") == "LOGIN" and e.get("code") == 230 for e in events)
