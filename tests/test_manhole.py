"""
The manhole (docs/protocol.md section 5) through the real server process:
telnet-style login for admins only, a working shell with live statistics,
refusals for users / wrong passwords / unknown names, loopback-only by
default, and the SSH variant with authorized keys.
"""

import json
import os
import re
import socket
import subprocess
import time

import pytest
import pytest_twisted

from tests.manhole_clients import TelnetClient, run_ssh
from tests.support import ROOT, ServerProcess, env, free_port, run_cli, twistd_command


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("manhole") / "data"
    srv = ServerProcess(data, manhole=True, extra_args=["--login-failure-delay", "0.2"])
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


@pytest.mark.parametrize(
    "user,password",
    [
        ("alice", "alicepw"),  # a user, not an admin
        ("admin", "wrong"),  # wrong password
        ("nobody", "whatever"),
    ],
)  # unknown name
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
    r = subprocess.run(
        twistd_command(*args), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=30
    )
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
    srv = ServerProcess(
        tmp_path / "data",
        extra_args=[
            "--manhole-ssh",
            "tcp:%d:interface=127.0.0.1" % port,
            "--manhole-keys",
            str(tmp_path / "authorized_keys"),
        ],
    )
    srv.ports["manhole-ssh"] = port
    srv.start()
    try:
        mode = os.stat(tmp_path / "data" / "ssh_host_key").st_mode & 0o777
        assert mode == 0o600
        ok = run_ssh(port, "admin", str(tmp_path / "good"), ["stats()"], "'database'")
        assert ok["code"] == 0, ok
        assert "'connections'" in ok["output"]
        # SSH sessions are recorded too: the admin's account id, the client's address.
        recorded = run_ssh(
            port,
            "admin",
            str(tmp_path / "good"),
            [
                "x = 6 * 7",
                "runtime.history.flush().addCallback(lambda _: runtime.accounts.store.get(whoami))"
                ".addCallback(lambda a: runtime.history.store.list(5, own=a.id))"
                ".addCallback(lambda rows: [(e.service, e.user, e.peer, e.command, e.code) "
                "for e in rows])",
            ],
            "'x = 6 * 7', 200)",
        )
        assert recorded["code"] == 0, recorded
        assert re.search(
            r"\('manhole', 'admin', '127\.0\.0\.1:\d+', 'x = 6 \* 7', 200\)", recorded["output"]
        ), recorded
        refused = run_ssh(port, "admin", str(tmp_path / "bad"), ["stats()"], "'database'")
        assert refused["auth"] is None and refused["code"] == 3, refused
        # a listed key, but for a name that is not an admin account
        not_admin = run_ssh(port, "alice", str(tmp_path / "good"), ["stats()"], "'database'")
        assert not_admin["auth"] is None, not_admin
    finally:
        srv.terminate()
        srv.kill()


def test_shell_send_reaches_a_connected_sync_client(server):
    """Log in over telnet, call stats(), queue a personnel send to a
    connected sync client, see the client receive it."""
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
    r = subprocess.run(
        twistd_command(*args), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=30
    )
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
    from netshare.protocols.manhole import check_bound_address

    wide = Listener(
        "tcp:0:interface=0.0.0.0", protocol.ServerFactory(), reactor, check=check_bound_address
    )
    with pytest.raises(RefusedAddress, match="bound 0.0.0.0"):
        wide.privilegedStartService()
    assert wide.port is None  # the port was closed again
    local = Listener(
        "tcp:0:interface=127.0.0.1", protocol.ServerFactory(), reactor, check=check_bound_address
    )
    local.privilegedStartService()
    assert local.port.getHost().host == "127.0.0.1"
    yield local.stopService()


def test_a_peer_off_loopback_is_refused_without_the_opt_in():
    from types import SimpleNamespace

    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import MemoryReactorClock

    from netshare.config import defaults
    from netshare.protocols.manhole_telnet import ManholeFactory

    runtime = SimpleNamespace(config=defaults(), reactor=MemoryReactorClock())
    factory = ManholeFactory(runtime, the_portal=None)
    assert factory.buildProtocol(IPv4Address("TCP", "192.0.2.7", 4000)) is None
    assert factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4000)) is not None
    opened = ManholeFactory(
        SimpleNamespace(config=defaults(manhole_allow_remote=True), reactor=MemoryReactorClock()),
        the_portal=None,
    )
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


# -- every manhole command in the request history, passwords redacted ----------------


def _called_back(client, pattern=rb"called back: (\[[^\n]*\])\r*\n"):
    """Wait for a Deferred's result printed by the shell; return it parsed."""
    import ast

    start = client._pos
    client.expect(pattern)
    return ast.literal_eval(re.compile(pattern).search(client.text, start).group(1).decode())


def _my_manhole_entries(shell):
    """(service, user, peer, command, code) of the logged-in admin's own
    entries, found by account id (newest first; this query's own entry may
    be among them or not, depending on when the batch was written)."""
    shell.send(
        "runtime.history.flush().addCallback(lambda _: runtime.accounts.store.get(whoami))"
        ".addCallback(lambda a: runtime.history.store.list(50, own=a.id))"
        ".addCallback(lambda rows: [(e.service, e.user, e.peer, e.command, e.code) "
        "for e in rows])"
    )
    return _called_back(shell)


def test_every_manhole_command_is_recorded_under_the_admin_with_passwords_redacted(server):
    c = TelnetClient(server.ports["manhole"])
    try:
        c.login("admin", server.admin_password)
        c.expect(rb">>> ")
        peer = "127.0.0.1:%d" % c.sock.getsockname()[1]
        c.send('account_add("eve", "Sekret-Eve-9")')
        c.expect(rb"called back: \{[^}]*'eve'")
        c.send("x = 1 + 1")
        c.send("x")
        c.expect(rb"\n2\r*\n")
        c.send("1 +* 2")
        c.expect(rb"SyntaxError")
        c.send("1 / 0")
        c.expect(rb"ZeroDivisionError")
        c.send("")  # blank lines are not recorded
        c.send("   ")
        # A statement over two lines is one entry, recorded once complete.
        c.send("account_passwd('eve',")
        c.expect(rb"\.\.\. ")
        c.send("    password='Sekret-Eve-10')")
        c.expect(rb"called back: 'ok \(0 sessions ended\)'")
        rows = _my_manhole_entries(c)
        mine = [r for r in rows if r[2] == peer and not r[3].startswith("runtime.history")]
        assert [(r[3], r[4]) for r in reversed(mine)] == [
            ("account_add(\"eve\", '***')", 200),
            ("x = 1 + 1", 200),
            ("x", 200),
            ("1 +* 2", 500),
            ("1 / 0", 451),
            ("account_passwd('eve',\\x0a    password=***)", 200),
        ]
        assert all(r[:2] == ("manhole", "admin") for r in mine)
        # The admin's name view (the history() helper) shows them too.
        c.send("history('admin', 50)")
        wire = _called_back(c)
        commands = {(e["service"], e["user"], e["command"], e["code"]) for e in wire}
        assert ("manhole", "admin", "account_add(\"eve\", '***')", 200) in commands
        assert ("manhole", "admin", "1 +* 2", 500) in commands
        c.send("history('*', 500)")
        everything = _called_back(c)
        assert "Sekret-Eve" not in repr(everything)
    finally:
        c.close()
    # One command event per statement in the JSON log (flushed every 0.5 s),
    # and the password nowhere in the logs.
    log_path = os.path.join(server.data, "logs", "netshare.jsonl")
    deadline = time.monotonic() + 10
    while True:
        with open(log_path, encoding="utf-8") as f:
            events = [json.loads(line) for line in f if '"manhole"' in line]
        codes = [
            e["code"]
            for e in events
            if e.get("event") == "command"
            and e.get("service") == "manhole"
            and e.get("user") == "admin"
            and e.get("peer") == peer
        ]
        if len(codes) >= 6:
            break
        assert time.monotonic() < deadline, "no command events in the log: %r" % (events[-5:],)
        time.sleep(0.1)
    assert sorted(set(codes)) == [200, 451, 500]
    with open(log_path, encoding="utf-8") as f:
        assert "Sekret-Eve" not in f.read()
    assert "Sekret-Eve" not in server.output()


def test_redaction_of_helper_passwords():
    from netshare.protocols.manhole_shell import UNTOKENIZABLE
    from netshare.protocols.manhole_shell import redact_command as redact

    # positional passwords: every string literal after the first argument
    assert redact('account_add("eve", "pw1")') == "account_add(\"eve\", '***')"
    assert (
        redact("account_add('eve', 'pw1', admin=True)") == "account_add('eve', '***', admin=True)"
    )
    assert redact("account_passwd('eve', 'pw' + 'x')") == "account_passwd('eve', '***' + '***')"
    assert redact("account_add(\"eve\", f'pw{1}')") == "account_add(\"eve\", '***')"
    # keyword passwords, anywhere, whatever the value
    assert (
        redact('account_add(name="eve", password="pw1")')
        == 'account_add(name="eve", password=***)'
    )
    assert (
        redact('account_add(password="pw1", name="eve")')
        == "account_add(password=***, name='***')"
    )
    assert redact('f(password=g(1, "pw1"), other="kept")') == 'f(password=***, other="kept")'
    assert redact('password = "pw1"; y = "kept"') == 'password = ***; y = "kept"'
    # nested calls, inside and around the helpers
    assert (
        redact('print(account_add("eve", str("pw1")))')
        == "print(account_add(\"eve\", str('***')))"
    )
    assert redact('account_add(pick("a", "b"), "pw1")') == 'account_add(pick("a", "b"), \'***\')'
    assert (
        redact('[account_passwd("a", "pw1"), account_add("b", "pw2")]')
        == "[account_passwd(\"a\", '***'), account_add(\"b\", '***')]"
    )
    assert redact('account_add(*["eve", "pw1"])') == "account_add(*['***', '***'])"
    assert redact("account_add('eve',\n    'pw1')") == "account_add('eve',\n    '***')"
    # other helpers and code are untouched
    for line in (
        'history("admin", 5)',
        "send('555-01-0001', 'alice')",
        'x = {"password": 1}',
        "password == 'x'",
        'account_remove("eve")',
        "s = 'a\\x00b'  # comment",
        "if True:\n    y = 'z'\n",
    ):
        assert redact(line) == line
    # what tokenize cannot split might hold anything
    for line in (
        'account_add("eve", "pw1"',
        'account_add("eve", "pw1',
        "x $ y",
        "'''open",
        "  x = 1\n y = 2",
    ):
        assert redact(line) == UNTOKENIZABLE


def test_the_helpers_taking_passwords_are_helpers():
    from netshare.admin import HELPERS, SECRET_HELPERS

    assert SECRET_HELPERS <= set(HELPERS)


def test_recorded_command_text_is_escaped_and_bounded():
    from netshare.protocols.manhole_shell import MAX_COMMAND, command_text

    assert command_text("x = '\x1b[31m'") == "x = '\\x1b[31m'"
    long = command_text("x = " + "1" * 5000)
    assert len(long) < MAX_COMMAND + 40 and long.startswith("x = 111")
    assert long.endswith("... [cut: 5004 characters]")


def test_the_interpreter_reports_each_statement_and_its_outcome():
    """The outcome code comes from the interpreter's own hooks."""
    from netshare.protocols.manhole_shell import RecordingInterpreter

    class Output:
        def addOutput(self, data, isAsync=None):
            pass

    done = []
    interp = RecordingInterpreter(Output(), {}, lambda source, code: done.append((source, code)))
    for line in (
        b"x = 1",
        b"x",
        b"1 +* 2",
        b"1 / 0",
        b"undefined_name",
        b"if x:",
        b"    y = 2",
        b"",
        b"y",
    ):
        interp.push(line)
    assert done == [
        ("x = 1", 200),
        ("x", 200),
        ("1 +* 2", 500),
        ("1 / 0", 451),
        ("undefined_name", 451),
        ("if x:\n    y = 2\n", 200),
        ("y", 200),
    ]


def test_files_helper_totals_per_owner():
    from types import SimpleNamespace as NS

    from twisted.internet import defer

    from netshare.admin import Helpers

    public = [NS(owner="bob", size=10), NS(owner="alice", size=5)]
    hidden = [NS(owner="bob", size=7)]
    store = NS(
        list_public=lambda: defer.succeed(public), list_hidden=lambda: defer.succeed(hidden)
    )
    runtime = NS(apps={"files": NS(files=store)})
    result = []
    Helpers(runtime, "admin").files().addBoth(result.append)
    assert result == [{"alice": {"files": 1, "bytes": 5}, "bob": {"files": 2, "bytes": 17}}]
    failed = []
    Helpers(NS(apps={}), "admin").files().addErrback(failed.append)
    assert failed[0].check(RuntimeError) and "not running" in failed[0].getErrorMessage()


def _answer(shell, name, call):
    """Run one helper call in the shell; return the repr of its answer (a
    value, or the result or failure of the Deferred it returned)."""
    # The marker is built at run time, so the echo of the typed line cannot
    # match it; the answer is printed as the repr of a tuple, then a prompt.
    shell.send(
        "__import__('twisted.internet.defer').internet.defer.maybeDeferred("
        "lambda: %s).addBoth(lambda r: ('END' + '-%s', r))" % (call, name)
    )
    marker = ("('END-%s', " % name).encode()
    shell.expect(re.escape(marker))
    start = shell.text.rindex(marker) + len(marker)
    shell.expect(rb"\n>>> ")
    return shell.text[start : shell._pos].decode("utf-8", "replace").replace("\r", "")


def test_every_helper_answers_through_a_real_session(tmp_path):
    """Each helper in HELPERS (the list help() shows), called in a shell on a
    server with every listener on, gives the answer it documents: none
    answers with a traceback, a failure or "not running", and each answer
    shows the data the test put there."""
    from netshare.admin import HELPERS
    from tests.support import LineConn

    srv = ServerProcess(tmp_path / "data", manhole=True)
    srv.start()
    shell = tweeter = None
    try:
        admin = LineConn(srv.ports["personnel"])
        files = LineConn(srv.ports["files"])
        try:
            admin.readline()
            assert admin.cmd("LOGIN admin %s" % srv.admin_password)[0].startswith("230")
            assert admin.cmd("ADD ssn=555-02-0001 name=Ada surname=Lovelace")[0].startswith("201")
            files.readline()
            assert files.cmd("LOGIN admin %s" % srv.admin_password)[0].startswith("230")
            assert files.cmd("UPLOAD notes.txt 5")[0].startswith("350")
            files.send(b"hello")
            assert files.readline().startswith("226")
        finally:
            admin.close()
            files.close()
        tweeter = LineConn(srv.ports["ttweet"])  # online while the shell looks
        tweeter.readline()
        assert tweeter.cmd("LOGIN admin %s" % srv.admin_password)[0].startswith("230")
        shell = TelnetClient(srv.ports["manhole"])
        shell.login("admin", srv.admin_password)
        shell.expect(rb">>> ")
        answers = {}

        def ask(name, call):
            answers[name] = _answer(shell, name, call)
            return answers[name]

        help_text = ask("help", "help()")
        assert all("\n  %-16s " % name in help_text for name in HELPERS), help_text
        assert "'manhole': {'connections': 1," in ask("stats", "stats()")
        assert "'database': {" in answers["stats"]
        assert re.search(
            r"\('manhole', 'admin', '127\.0\.0\.1:\d+'\)", ask("connections", "connections()")
        ), answers["connections"]
        assert "('ttweet', 'admin', " in answers["connections"]
        assert "{'user': 'admin', 'role': 'admin'," in ask("accounts", "accounts()")
        assert "{'user': 'helperx', 'role': 'user'," in ask(
            "account_add", "account_add('helperx', 'helper-pw-1')"
        )
        assert (
            ask("account_passwd", "account_passwd('helperx', 'helper-pw-2')")
            == "'ok (0 sessions ended)')\n>>> "
        )
        # The new password works (and helperx now has history of its own).
        helperx = LineConn(srv.ports["personnel"])
        try:
            helperx.readline()
            assert helperx.cmd("LOGIN helperx helper-pw-2")[0].startswith("230")
            made = json.loads(helperx.cmd("SESSION NEW label=phone")[0][4:])
        finally:
            helperx.close()
        assert "'label': 'phone'" in ask("sessions", "sessions('helperx')")
        assert ask("session_revoke", "session_revoke(%d)" % made["id"]) == "1)\n>>> "
        assert "[]" in ask("sessions", "sessions('helperx')")
        assert "'persons': [{'ssn': '555-02-0001', 'name': 'Ada'," in ask("show", "show()")
        assert "[{'ssn': '555-02-0001', 'name': 'Ada', 'surname': 'Lovelace'," in ask(
            "personnel", "personnel()"
        )
        # Each queues one message per person and client: one person, one client.
        for name, call in (
            ("send", "send('555-02-0001', 'helperx')"),
            ("send_to_all", "send_to_all('555-02-0001')"),
            ("send_all", "send_all('helperx')"),
            ("remove", "remove('555-02-0001', 'helperx')"),
            ("remove_from_all", "remove_from_all('555-02-0001')"),
            ("remove_all", "remove_all('helperx')"),
        ):
            assert ask(name, call).startswith("1)"), (name, answers[name])
        assert "'helperx'" in ask("clients", "clients()")
        messages = ask("messages", "messages('helperx')")
        for action in ("'SAVE'", "'DELETE'", "'DELETE_ALL'"):
            assert action in messages, messages
        assert "'service': 'manhole'" in ask("history", "history('*', 50)")
        assert "'user': 'helperx'" in answers["history"]
        assert re.match(r"[1-9]\d*\)", ask("history_clear", "history_clear('helperx')")), answers[
            "history_clear"
        ]
        assert "{'removed': 'helperx', " in ask("account_remove", "account_remove('helperx')")
        assert ask("files", "files()").startswith("{'admin': {'files': 1, 'bytes': 5}})")
        assert "'online': ['admin']" in ask("ttweet", "ttweet()")  # the names, not a count
        assert sorted(answers) == sorted(HELPERS)
        for name, text in answers.items():
            assert "Traceback" not in text and "Failure" not in text, (name, text)
            assert "is not running" not in text, (name, text)
    finally:
        for conn in (shell, tweeter):
            if conn is not None:
                conn.close()
        srv.terminate()
        srv.kill()


def test_removing_an_admin_closes_its_shell(server):
    """The account a shell serves is known from login on (the realm reads
    it): removing it in another shell closes this one at once."""
    ops = TelnetClient(server.ports["manhole"])
    other = None
    try:
        ops.login("admin", server.admin_password)
        ops.expect(rb">>> ")
        ops.send("account_add('opsdel', 'Opsdel-pw-4', admin=True)")
        ops.expect(rb"called back: \{[^}]*'opsdel'")
        other = TelnetClient(server.ports["manhole"])
        other.login("opsdel", "Opsdel-pw-4")
        other.expect(rb">>> ")
        other.send("whoami")
        other.expect(rb"'opsdel'")
        ops.send("account_remove('opsdel')")
        ops.expect(rb"called back: \{'removed': 'opsdel'")
        other.expect(rb"421 account removed")
        assert other.closed(5)
    finally:
        ops.close()
        if other is not None:
            other.close()
