"""
TLS listeners: the client library verifies the certificate chain and the
host name before a single command is sent; plain text on a TLS port gets
nothing usable.  One end-to-end test runs the real `twistd netshare` with a
TLS listener made from the certificate `netshare init` wrote.
"""

import os

import pytest
import pytest_twisted
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import defer, task
from twisted.internet.error import ConnectionDone, ConnectionLost

from netshare.clients.protocol import connect, login, quote
from netshare.protocols.line import CommandProtocol
from netshare.tls import make_certificates
from tests.inprocess import add_account, listen, reactor, wait_for, with_timeouts

pytestmark = pytest.mark.timeout(120, method="thread")

#: How a client sees a refused TLS handshake.
TLS_REFUSED = (SSL.Error, ConnectionDone, ConnectionLost)


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
    other_ca, _, _ = make_certificates(str(tmp_path))  # same names, another CA: not trusted
    with pytest.raises(TLS_REFUSED):
        yield srv.connect(cafile=other_ca)
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
        size,
        hashlib.sha256(pattern(size, seed=9)).hexdigest(),
    )
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
    sp.extra_args += [
        "--files",
        "ssl:%d:interface=127.0.0.1:privateKey=%s:certKey=%s" % (sp.ports["files"], key, cert),
    ]
    sp.start()
    yield sp, str(data / "tls" / "ca.pem")
    try:
        assert sp.terminate() == 0
        assert "netshare stopped" in sp.output()
    finally:
        sp.kill()


@pytest_twisted.inlineCallbacks
def test_real_server_tls_listener_with_the_init_certificate(tls_server):
    sp, cafile = tls_server
    port = sp.ports["files"]
    c = yield connect(
        "127.0.0.1", port, tls=True, cafile=cafile, hostname="localhost", reactor=reactor()
    )
    with_timeouts(c)
    try:
        assert (yield login(c, "admin", "Sekret-Admin-9")).code == 230
        assert (yield c.command("WHOAMI")).line == "200 admin admin"
        hist = yield c.command(quote("HISTORY", "limit=5"))
        assert hist.items[0]["command"] == "WHOAMI"
        assert all("Sekret" not in i["command"] for i in hist.items)
    finally:
        yield c.close().addTimeout(10, reactor())
    with pytest.raises(VerificationError):  # the name does not match
        yield connect(
            "127.0.0.1", port, tls=True, cafile=cafile, hostname="other.example", reactor=reactor()
        )
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


# --- hardening: suites, versions, the handshake deadline, the certificates ---------------


def _handshake(port, **context):
    """A stdlib TLS client handshake: the negotiated (version, cipher), or
    the SSLError."""
    import socket
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    for key, value in context.items():
        if key == "ciphers":
            ctx.set_ciphers(value)
        else:
            setattr(ctx, key, value)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw) as s:
                return s.version(), s.cipher()[0]
        except ssl.SSLError as e:
            return e


def test_only_aead_suites_over_tls_1_2_or_1_3(tls_server):
    """CBC suites with SHA-1 (or any CBC) are refused over TLS 1.2; AEAD
    suites and TLS 1.3 work; TLS 1.1 is refused."""
    import ssl

    port = tls_server[0].ports["files"]
    for cbc in ("ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384", "AES128-SHA"):
        got = _handshake(port, ciphers=cbc, maximum_version=ssl.TLSVersion.TLSv1_2)
        assert isinstance(got, ssl.SSLError), (cbc, got)
    assert _handshake(
        port, maximum_version=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256"
    ) == ("TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256")
    version, cipher = _handshake(port, minimum_version=ssl.TLSVersion.TLSv1_3)
    assert version == "TLSv1.3" and ("GCM" in cipher or "CHACHA20" in cipher)
    old = _handshake(
        port,
        minimum_version=ssl.TLSVersion.TLSv1,
        maximum_version=ssl.TLSVersion.TLSv1_1,
        ciphers="DEFAULT:@SECLEVEL=0",
    )
    assert isinstance(old, ssl.SSLError), old


@pytest_twisted.inlineCallbacks
def test_a_handshake_that_never_finishes_is_cut_at_its_deadline(make_runtime):
    """A client that connects to a TLS port and sends nothing (or half a
    handshake) is cut after --tls-handshake-timeout, well before the idle
    timeout; one that completes it is unaffected."""
    rt = make_runtime(tls_handshake_timeout=0.5, idle_timeout=60)
    srv = yield listen(rt, CommandProtocol, tls=True)
    raw = yield srv.raw(greet=False)
    raw.send(b"\x16\x03\x01\x00")  # the start of a ClientHello, no more
    started = reactor().seconds()
    yield raw.wait_closed(timeout=10)
    assert reactor().seconds() - started >= 0.4
    c = yield srv.connect()
    yield task.deferLater(reactor(), 1.0, lambda: None)
    assert (yield c.command("PING")).line == "200 pong"
    yield c.close().addTimeout(10, reactor())


def test_init_makes_a_local_ca_and_a_server_certificate_that_is_not_a_ca(tmp_path):
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca_path, cert_path, key_path = make_certificates(str(tmp_path))
    with open(ca_path, "rb") as f:
        ca = x509.load_pem_x509_certificate(f.read())
    with open(cert_path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    leaf = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert leaf.ca is False
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign is False
    assert (
        ExtendedKeyUsageOID.SERVER_AUTH
        in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    )
    assert cert.issuer == ca.subject and cert.subject != ca.subject
    ca.public_key().verify(
        cert.signature,
        cert.tbs_certificate_bytes,
        __import__("cryptography.hazmat.primitives.asymmetric.ec", fromlist=["ECDSA"]).ECDSA(
            cert.signature_hash_algorithm
        ),
    )
    for path in (key_path, os.path.join(str(tmp_path), "ca-key.pem")):
        assert os.stat(path).st_mode & 0o777 == 0o600
