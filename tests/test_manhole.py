"""
The manhole (PROTOCOL.md section 5, issue 7) through the real server process:
telnet-style login for admins only, a working shell with live statistics,
refusals for users / wrong passwords / unknown names, loopback-only by
default, and the SSH variant with authorized keys.
"""

import os
import socket
import subprocess
import time

import pytest
import pytest_twisted

from tests.manhole_clients import TelnetClient, run_ssh
from tests.support import ServerProcess, run_cli, twistd_command, ROOT, env, free_port


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("manhole") / "data"
    srv = ServerProcess(data, manhole=True,
                        extra_args=["--login-failure-delay", "0.2"])
    r = run_cli("user", "add", "alice", "--data", str(data), NETSHARE_PASSWORD="alicepw")
    assert r.returncode == 0, r.stderr
    srv.start()
    yield srv
    srv.terminate()
    srv.kill()


def test_admin_gets_a_shell_with_stats(server):
    c = TelnetClient(server.ports["manhole"])
    try:
        c.login("admin", server.admin_password)
        c.expect(rb">>> ")
        c.send("stats()")
        text = c.expect(rb"'database': \{[^}]*'queued'")
        assert b"'personnel': {" in text and b"'connections'" in text and b"'bytes_in'" in text
        c.send("x = 41 + 1")
        c.send("x")
        c.expect(rb"\n42\r*\n")
        c.send("accounts()")
        text = c.expect(rb"Deferred #\d+ called back: \[.*'alice'")
        assert b"'admin'" in text
    finally:
        c.close()


def test_fresh_namespace_per_session(server):
    first = TelnetClient(server.ports["manhole"])
    second = TelnetClient(server.ports["manhole"])
    try:
        first.login("admin", server.admin_password)
        first.expect(rb">>> ")
        first.send("leaked = 'secret-value'")
        first.send("leaked")
        first.expect(rb"'secret-value'")
        second.login("admin", server.admin_password)
        second.expect(rb">>> ")
        second.send("leaked")
        second.expect(rb"NameError")
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("user,password", [("alice", "alicepw"),   # a user, not an admin
                                           ("admin", "wrong"),      # wrong password
                                           ("nobody", "whatever")])  # unknown name
def test_refused_logins(server, user, password):
    c = TelnetClient(server.ports["manhole"])
    try:
        c.login(user, password)
        c.expect(rb"Authentication failed")
        assert b">>> " not in c.text
    finally:
        c.close()


def test_three_failures_close_and_are_recorded(server):
    c = TelnetClient(server.ports["manhole"])
    try:
        for _ in range(3):
            c.login("admin", "wrong")
            if _ < 2:
                c.expect(rb"Authentication failed")
        c.expect(rb"too many failures")
        assert c.closed(timeout=10)
    finally:
        c.close()
    # The attempts are in the request history (read through an admin shell).
    s = TelnetClient(server.ports["manhole"])
    try:
        s.login("admin", server.admin_password)
        s.expect(rb">>> ")
        s.send("history('-', 20)")
        text = s.expect(rb"called back: \[.*'service': 'manhole'.*\]")
        assert b"'command': 'LOGIN admin ***', 'code': 535" in text
        assert b"wrong" not in text.split(b"history(")[-1]
    finally:
        s.close()


def test_a_password_typed_at_the_username_prompt_is_never_recorded(server):
    c = TelnetClient(server.ports["manhole"])
    try:
        c.login("Sekret-Manhole-7", "whatever")
        c.expect(rb"Authentication failed")
    finally:
        c.close()
    s = TelnetClient(server.ports["manhole"])
    try:
        s.login("admin", server.admin_password)
        s.expect(rb">>> ")
        s.send("history('-', 5)")
        text = s.expect(rb"called back: \[.*'service': 'manhole'.*\]")
        assert b"'command': 'LOGIN <unknown user> ***', 'code': 535" in text
    finally:
        s.close()
    assert b"Sekret-Manhole-7" not in s.text
    assert "Sekret-Manhole-7" not in server.output()
    with open(os.path.join(server.data, "logs", "netshare.jsonl"), encoding="utf-8") as f:
        assert "Sekret-Manhole-7" not in f.read()


def _non_loopback_address():
    """An address of this machine that is not loopback, or None."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent for a UDP connect
            addr = s.getsockname()[0]
        return None if addr.startswith("127.") else addr
    except OSError:
        return None


def test_default_listener_not_reachable_off_loopback(server):
    addr = _non_loopback_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback address")
    with pytest.raises(OSError):
        socket.create_connection((addr, server.ports["manhole"]), timeout=2).close()


def test_non_loopback_manhole_needs_opt_in(tmp_path):
    srv = ServerProcess(tmp_path / "d", extra_args=[])
    args = [a for a in srv.args()]
    i = args.index("--manhole")
    args[i + 1] = "tcp:0"  # every interface
    r = subprocess.run(twistd_command(*args), cwd=ROOT, env=env(), capture_output=True,
                       text=True, timeout=30)
    assert r.returncode != 0
    last = (r.stderr or r.stdout).strip().splitlines()[-1]
    assert "--manhole" in last and "allow-remote" in last


def test_ssh_accepts_listed_key_and_refuses_another(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from twisted.conch.ssh import keys
    good, bad = (keys.Key(ed25519.Ed25519PrivateKey.generate()) for _ in range(2))
    for name, key in (("good", good), ("bad", bad)):
        with open(tmp_path / name, "wb") as f:
            f.write(key.toString("openssh"))
        os.chmod(tmp_path / name, 0o600)
    with open(tmp_path / "authorized_keys", "wb") as f:
        f.write(good.public().toString("openssh") + b" operator\n")
    from tests.support import free_port
    port = free_port()
    srv = ServerProcess(tmp_path / "data", extra_args=[
        "--manhole-ssh", "tcp:%d:interface=127.0.0.1" % port,
        "--manhole-keys", str(tmp_path / "authorized_keys")])
    srv.ports["manhole-ssh"] = port
    srv.start()
    try:
        mode = os.stat(tmp_path / "data" / "ssh_host_key").st_mode & 0o777
        assert mode == 0o600
        ok = run_ssh(port, "admin", str(tmp_path / "good"), ["stats()"], "'database'")
        assert ok["code"] == 0, ok
        assert "'connections'" in ok["output"]
        refused = run_ssh(port, "admin", str(tmp_path / "bad"), ["stats()"], "'database'")
        assert refused["auth"] is None and refused["code"] == 3, refused
        # a listed key, but for a name that is not an admin account
        not_admin = run_ssh(port, "alice", str(tmp_path / "good"), ["stats()"], "'database'")
        assert not_admin["auth"] is None, not_admin
    finally:
        srv.terminate()
        srv.kill()


def test_shell_send_reaches_a_connected_sync_client(server):
    """Issue 7, must-show 1: log in over telnet, call stats(), queue a
    personnel send to a connected sync client, see the client receive it."""
    import json
    from tests.support import LineConn
    port = server.ports["personnel"]
    admin = LineConn(port)
    sync = LineConn(port)
    shell = TelnetClient(server.ports["manhole"])
    try:
        admin.readline()
        assert admin.cmd("LOGIN admin %s" % server.admin_password)[0].startswith("230")
        reply = admin.cmd("ADD ssn=555-01-0001 name=Grace surname=Hopper job=admiral")
        assert reply[0].startswith("201"), reply
        sync.readline()
        assert sync.cmd("LOGIN alice alicepw")[0].startswith("230")
        assert sync.cmd("SYNC")[0].startswith("200")
        shell.login("admin", server.admin_password)
        shell.expect(rb">>> ")
        shell.send("stats()")
        shell.expect(rb"'database': \{")
        shell.send("send('555-01-0001', 'alice')")
        shell.expect(rb"called back: 1\b")
        push = sync.readline()
        code, seq, action, body = push.split(" ", 3)
        assert (code, action) == ("610", "SAVE"), push
        person = json.loads(body)
        assert person["ssn"] == "555-01-0001" and person["surname"] == "Hopper"
        assert sync.cmd("ACK %s" % seq) == ["200 ok"]
    finally:
        shell.close()
        sync.close()
        admin.close()


# -- the loopback rule is enforced on the address bound and on every peer -----------

def test_an_endpoint_naming_a_second_interface_is_refused(tmp_path):
    """`interface=127.0.0.1:interface=0.0.0.0` binds the last one: refused
    before anyone can connect, and nothing is left listening."""
    srv = ServerProcess(tmp_path / "d", extra_args=[])
    args = srv.args()
    port = free_port()
    args[args.index("--manhole") + 1] = "tcp:%d:interface=127.0.0.1:interface=0.0.0.0" % port
    r = subprocess.run(twistd_command(*args), cwd=ROOT, env=env(), capture_output=True,
                       text=True, timeout=30)
    assert r.returncode != 0
    last = (r.stderr or r.stdout).strip().splitlines()[-1]
    assert last.startswith("netshare: ") and "0.0.0.0" in last and "allow-remote" in last
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


@pytest_twisted.inlineCallbacks
def test_the_address_actually_bound_is_checked():
    """Whatever the endpoint text says, the check sees the bound address."""
    from twisted.internet import protocol, reactor
    from netshare.listener import Listener, RefusedAddress
    from netshare.manhole import check_bound_address
    wide = Listener("tcp:0:interface=0.0.0.0", protocol.ServerFactory(), reactor,
                    check=check_bound_address)
    with pytest.raises(RefusedAddress, match="bound 0.0.0.0"):
        wide.privilegedStartService()
    assert wide.port is None              # the port was closed again
    local = Listener("tcp:0:interface=127.0.0.1", protocol.ServerFactory(), reactor,
                     check=check_bound_address)
    local.privilegedStartService()
    assert local.port.getHost().host == "127.0.0.1"
    yield local.stopService()


def test_a_peer_off_loopback_is_refused_without_the_opt_in():
    from types import SimpleNamespace
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import MemoryReactorClock
    from netshare.config import defaults
    from netshare.manhole import ManholeFactory
    runtime = SimpleNamespace(config=defaults(), reactor=MemoryReactorClock())
    factory = ManholeFactory(runtime, the_portal=None)
    assert factory.buildProtocol(IPv4Address("TCP", "192.0.2.7", 4000)) is None
    assert factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4000)) is not None
    opened = ManholeFactory(SimpleNamespace(config=defaults(manhole_allow_remote=True),
                                            reactor=MemoryReactorClock()), the_portal=None)
    assert opened.buildProtocol(IPv4Address("TCP", "192.0.2.7", 4000)) is not None


def test_the_manhole_has_the_connection_caps_of_every_listener(tmp_path):
    data = tmp_path / "data"
    srv = ServerProcess(data, manhole=True, extra_args=["--max-per-ip", "2"])
    held = []
    try:
        srv.start()
        for _ in range(2):
            held.append(TelnetClient(srv.ports["manhole"]))
            held[-1].expect(rb"Username: ")
        extra = TelnetClient(srv.ports["manhole"])
        held.append(extra)
        extra.expect(rb"421 too many connections")
        assert extra.closed(5)
        held[0].close()
        # A freed slot is usable again (once the server has seen the close).
        deadline = time.monotonic() + 10
        while True:
            again = TelnetClient(srv.ports["manhole"])
            held.append(again)
            text = again.expect(rb"Username: |421 too many")
            if text.endswith(b"Username: "):
                break
            assert time.monotonic() < deadline, "the freed slot was never given back"
            time.sleep(0.1)
    finally:
        for c in held:
            c.close()
        srv.terminate()
        srv.kill()
