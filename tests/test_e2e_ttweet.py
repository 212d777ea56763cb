"""
ttweet end to end: the real daemon (C{twistd -n netshare}) and the real
client program (C{netshare-ttweet}), driven through its stdin or, for the
password prompt, a pseudo-terminal.

Proves: every interactive command and every message of the assignment
(issue 5's list), the one-shot C{-u}/C{-d} modes, exit statuses (errors
before login exit 1, after login the session goes on), pushes printed while
the client waits for input, every refusal code of docs/protocol.md section 3 as
the client shows it (552, 501, 553, 555, 550, 535, 429; 530 on the raw
wire), TLS, and that tweets and a registered user's timeline survive a
restart of the daemon on every configured database.
"""

import os
import queue
import select
import subprocess
import sys
import threading
import time

import pytest

from tests.inprocess import PrivateDatabase, db_kinds
from tests.support import LineConn, ServerProcess, env, free_port, run_cli

pytestmark = pytest.mark.timeout(180)

CLIENT = os.path.join(os.path.dirname(sys.executable), "netshare-ttweet")
if not os.path.exists(CLIENT):  # not installed: the same program from the source tree
    CLIENT = None
TIMEOUT = 15
SERVER_ARGS = ["--login-failure-delay", "0.05", "--flood-burst", "8", "--flood-rate", "0.01"]

LEGAL = "username legal, connection established."
SUCCESS = "operation success"


def client_command(*args):
    if CLIENT:
        return [CLIENT, *args]
    return [sys.executable, "-m", "netshare.clients.ttweet", *args]


def client_env(password=None):
    e = env()
    e.pop("NETSHARE_PASSWORD", None)
    if password is not None:
        e["NETSHARE_PASSWORD"] = password
    return e


def run_client(*args, password=None, timeout=60):
    """A one-shot run: (exit status, stdout lines, stderr)."""
    r = subprocess.run(
        client_command(*args),
        env=client_env(password),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return r.returncode, r.stdout.splitlines(), r.stderr


class Session:
    """An interactive client on pipes: lines in, printed lines out."""

    def __init__(self, port, name, password=None, extra=()):
        self.proc = subprocess.Popen(
            client_command(*extra, "127.0.0.1", str(port), name),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=client_env(password),
        )
        self.out = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for raw in self.proc.stdout:
            self.out.put(raw.decode("utf-8").rstrip("\n"))
        self.out.put(None)

    def send(self, line):
        self.proc.stdin.write(line.encode("utf-8") + b"\n")
        self.proc.stdin.flush()

    def line(self, timeout=TIMEOUT):
        try:
            got = self.out.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no output within %ss" % timeout) from None
        if got is None:
            raise AssertionError("client ended: %s" % self.stderr())
        return got

    def expect(self, *lines):
        got = [self.line() for _ in lines]
        assert got == list(lines)

    def do(self, command, *lines):
        self.send(command)
        self.expect(*lines)

    def finish(self, timeout=TIMEOUT):
        """Wait for the end: (status, remaining lines)."""
        status = self.proc.wait(timeout)
        rest = []
        while True:
            got = self.out.get(timeout=timeout)
            if got is None:
                return status, rest
            rest.append(got)

    def exit(self):
        self.send("exit")
        status, rest = self.finish()
        assert (status, rest) == (0, ["bye bye"]), self.stderr()

    def stderr(self):
        if self.proc.poll() is None:
            return "(running)"
        return self.proc.stderr.read().decode("utf-8", "replace")[-2000:]

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except Exception:
                pass


@pytest.fixture
def sessions():
    made = []

    def make(*args, **kw):
        s = Session(*args, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("ttweet") / "data"
    srv = ServerProcess(data, extra_args=SERVER_ARGS)
    r = run_cli("user", "add", "reg", "--data", str(data), NETSHARE_PASSWORD="pw-reg")
    assert r.returncode == 0, r.stderr
    srv.start()
    yield srv
    srv.terminate()
    srv.kill()


def tweet_line(user, message, tags=""):
    return '%s: "%s"%s' % (user, message, " " + tags if tags else "")


# --- arguments, before any connection ----------------------------------------


def test_arguments_are_checked_before_connecting():
    """The assignment's messages for bad arguments, exit status 1, nothing
    contacted (the port given is not listening)."""
    port = str(free_port())
    cases = [
        ((), "error: args should contain <ServerIP>   <ServerPort>   <Username>"),
        (("127.0.0.1", port), "error: args should contain <ServerIP>   <ServerPort>   <Username>"),
        (
            ("127.0.0.1", port, "a", "b"),
            "error: args should contain <ServerIP>   <ServerPort>   <Username>",
        ),
        (("1.2.3", port, "alice"), "error: server ip invalid, connection refused."),
        (("999.1.1.1", port, "alice"), "error: server ip invalid, connection refused."),
        (("not_a_host", port, "alice"), "error: server ip invalid, connection refused."),
        (("127.0.0.1", "port", "alice"), "error: server port invalid, connection refused."),
        (("127.0.0.1", "70000", "alice"), "error: server port invalid, connection refused."),
        (("127.0.0.1", port, "al-ice"), "error: username has wrong format, connection refused."),
        (("127.0.0.1", port, "x" * 33), "error: username has wrong format, connection refused."),
        (("-u", "127.0.0.1", port, "m" * 151), "message length illegal, connection refused."),
        (("-u", "127.0.0.1", port, ""), "message format illegal."),
        (
            ("-u", "127.0.0.1", port),
            'error: args should contain -u <ServerIP>   <ServerPort>   "<message>"',
        ),
        (("-d", "127.0.0.1"), "error: args should contain -d <ServerIP>   <ServerPort>"),
    ]
    for args, message in cases:
        status, out, _ = run_client(*args)
        assert (status, out) == (1, [message]), args
    # well-formed, but nothing listens there
    status, out, err = run_client("127.0.0.1", port, "alice")
    assert (status, out) == (1, ["error: server port invalid, connection refused."])
    assert "refused" in err.lower()
    status, out, _ = run_client("--help")
    assert status == 0 and out[0].startswith("usage: netshare-ttweet")


# --- the interactive client --------------------------------------------------


def test_interactive_every_command_and_message(server, sessions):
    """Every interactive command and message, pushes printed while the
    client waits for input, errors after login keep the session going."""
    port = server.ports["ttweet"]
    alice = sessions(port, "alice")
    alice.expect(LEGAL)
    dup = sessions(port, "alice")
    assert dup.finish() == (1, ["username illegal, connection refused."])

    alice.do("subscribe #a", SUCCESS)
    alice.do(
        "subscribe #a", "operation failed: sub #a failed, already exists or exceeds 3 limitation"
    )
    alice.do("subscribe #b", SUCCESS)
    alice.do("subscribe #ALL", SUCCESS)
    alice.do(
        "subscribe #c", "operation failed: sub #c failed, already exists or exceeds 3 limitation"
    )
    alice.do("subscribe c", "hashtag illegal format, connection refused.")
    alice.do("subscribe #x#y", "hashtag illegal format, connection refused.")
    alice.do("unsubscribe #b", SUCCESS)
    alice.do("unsubscribe #zz", SUCCESS)
    alice.do("unsubscribe bad", "hashtag illegal format, connection refused.")

    bob = sessions(port, "bob")
    bob.expect(LEGAL)
    bob.do('tweet "hello alice" #a')  # prints nothing ...
    alice.expect(tweet_line("bob", "hello alice", "#a"))  # ... alice gets it unprompted
    bob.do("getusers", "alice", "bob")  # ... and nothing came before this
    bob.do("tweet hello #a", "message format illegal.")
    bob.do('tweet "" #a', "message format illegal.")
    bob.do('tweet "   " #a', "message format illegal.")
    bob.do('tweet "%s" #a' % ("m" * 151), "message length illegal, connection refused.")
    bob.do('tweet "%s" #a' % ("\u00e9" * 150))  # 150 characters, 300 bytes: fine
    alice.expect(tweet_line("bob", "\u00e9" * 150, "#a"))
    bob.do('tweet "x" #ALL', "hashtag illegal format, connection refused.")
    bob.do('tweet "x" #a#b#c#d#e#f', "hashtag illegal format, connection refused.")
    bob.do('tweet "x" nohash', "hashtag illegal format, connection refused.")
    bob.do('tweet "x"', "hashtag illegal format, connection refused.")
    bob.do('tweet "say "hi" now" #cs#3251')  # quotes inside the message
    alice.expect(tweet_line("bob", 'say "hi" now', "#cs#3251"))  # via #ALL
    alice.do('tweet "my own" #zz')  # subscribed to #ALL: gets its own
    alice.expect(tweet_line("alice", "my own", "#zz"))
    bob.do(
        "frobnicate",
        "error: unknown command frobnicate (commands: tweet, subscribe, "
        "unsubscribe, timeline, getusers, gettweets, exit)",
    )

    alice.do(
        "timeline",
        tweet_line("bob", "hello alice", "#a"),
        tweet_line("bob", "\u00e9" * 150, "#a"),
        tweet_line("bob", 'say "hi" now', "#cs#3251"),
        tweet_line("alice", "my own", "#zz"),
    )
    bob.do("timeline")  # bob subscribed to nothing
    bob.do("gettweets alice", tweet_line("alice", "my own", "#zz"))
    bob.do("gettweets nobody", "no user nobody in the system")
    bob.do("gettweets no-body", "no user no-body in the system")
    bob.do("getusers", "alice", "bob")
    bob.exit()
    alice.do("getusers", "alice")
    alice.exit()


def test_flood_limit_and_end_of_input(server, sessions):
    """429 as the client shows it (the session goes on), and end of input
    ends the session like exit."""
    port = server.ports["ttweet"]
    flood = sessions(port, "flooder")
    flood.expect(LEGAL)
    for i in range(8):  # the server's --flood-burst
        flood.send('tweet "f%d" #flood' % i)
    flood.do('tweet "one too many" #flood', "error: too many tweets; try later")
    flood.do("gettweets flooder", *[tweet_line("flooder", "f%d" % i, "#flood") for i in range(8)])
    flood.proc.stdin.close()
    assert flood.finish() == (0, ["bye bye"])


def test_raw_refusal_codes_on_the_real_service(server):
    """The codes themselves on the daemon's wire (the client shows them as
    the messages above): 530 before login, 553, 555, 535, 501, 552, 550."""
    port = server.ports["ttweet"]
    a, b = LineConn(port), LineConn(port)
    try:
        assert a.readline().startswith("220 netshare ttweet ")
        b.readline()
        assert a.cmd('TWEET "x"') == ["530 login required"]
        assert a.cmd("LAST")[0].startswith("200 ")
        assert a.cmd("LOGIN a-b") == ["553 username has wrong format"]
        assert a.cmd("LOGIN rawa") == ["230 logged in as rawa (guest)"]
        assert b.cmd("LOGIN rawa") == ["555 username illegal"]
        assert b.cmd("LOGIN reg")[0].startswith("535 ")
        assert b.cmd("LOGIN reg wrong") == ["535 bad credentials"]
        assert a.cmd("HISTORY") == ["530 login required"]
        assert a.cmd('TWEET ""') == ["501 message format illegal"]
        assert a.cmd('TWEET "%s"' % ("y" * 151)) == ["552 message length illegal"]
        assert a.cmd('TWEET "y" #ALL') == ["553 hashtag illegal format"]
        assert a.cmd("GETTWEETS zzz") == ["550 no user zzz in the system"]
        assert a.cmd("QUIT") == ["221 bye"]
    finally:
        a.close()
        b.close()


def test_registered_user_password_from_env(server, sessions):
    """A registered name logs in with NETSHARE_PASSWORD; a wrong one is a
    refusal before login (exit 1)."""
    port = server.ports["ttweet"]
    status, out, _ = run_client("127.0.0.1", str(port), "reg", password="wrong")
    assert (status, out) == (1, ["error: bad credentials, connection refused."])
    reg = sessions(port, "reg", password="pw-reg")
    reg.expect(LEGAL)
    reg.do("getusers", "reg")
    reg.exit()


def test_registered_user_password_prompt_on_a_terminal(server):
    """Without NETSHARE_PASSWORD the client asks on the terminal (never the
    command line), without echo, once the server says a password is needed."""
    port = server.ports["ttweet"]
    launch = (
        "import fcntl, os, sys, termios; os.setsid(); "
        "fcntl.ioctl(0, termios.TIOCSCTTY, 0); os.execvp(sys.argv[1], sys.argv[1:])"
    )
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", launch, *client_command("127.0.0.1", str(port), "reg")],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=client_env(),
        close_fds=True,
    )
    os.close(slave)
    seen = b""

    def until(text, timeout=TIMEOUT):
        nonlocal seen
        deadline = time.monotonic() + timeout
        while text.encode() not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([master], [], [], left)[0]:
                raise AssertionError("%r not seen; got %r" % (text, seen[-500:]))
            try:
                seen += os.read(master, 4096)
            except OSError:
                raise AssertionError("terminal closed; got %r" % (seen[-500:],)) from None

    try:
        until("Password for reg: ")
        os.write(master, b"pw-reg\n")
        until(LEGAL)
        assert b"pw-reg" not in seen  # not echoed
        os.write(master, b"getusers\n")
        until("\r\nreg\r\n")
        os.write(master, b"exit\n")
        until("bye bye")
        assert proc.wait(TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)


def test_tls(tmp_path):
    """--tls --cafile: the one-shot and interactive modes over TLS; without
    the right CA the handshake fails and the client refuses (exit 1)."""
    data = tmp_path / "data"
    srv = ServerProcess(data)
    cert, key = data / "tls" / "cert.pem", data / "tls" / "key.pem"
    srv.extra_args = [
        "--ttweet",
        "ssl:%d:interface=127.0.0.1:privateKey=%s:certKey=%s" % (srv.ports["ttweet"], key, cert),
    ]
    srv.start()
    try:
        port = str(srv.ports["ttweet"])
        tls = ("--tls", "--cafile", str(data / "tls" / "ca.pem"))
        assert run_client(*tls, "-d", "127.0.0.1", port)[:2] == (0, ["Empty Message"])
        assert run_client(*tls, "--user", "tlsuser", "-u", "127.0.0.1", port, "over tls")[:2] == (
            0,
            [],
        )
        assert run_client(*tls, "-d", "localhost", port)[:2] == (0, ["over tls"])
        status, out, _ = run_client("--tls", "-d", "127.0.0.1", port)  # system CAs only
        assert status == 1 and out[0].startswith("error: cannot connect")
        s = Session(int(port), "tlsi", extra=tls)
        try:
            s.expect(LEGAL)
            s.do("gettweets tlsuser", tweet_line("tlsuser", "over tls"))
            s.exit()
        finally:
            s.kill()
    finally:
        srv.terminate()
        srv.kill()


# --- restart -------------------------------------------------------------------


@pytest.mark.parametrize("db", db_kinds())
def test_tweets_and_registered_timeline_survive_restart(tmp_path, db, sessions):
    """Issue item 4 with the real daemon: after SIGTERM and a new start on
    the same database, LAST (-d), GETTWEETS and a registered user's timeline
    are all there; a guest's timeline was only for its session.  Also the
    one-shot modes (-d before any tweet, -u with the default and a given
    --user), and an open session told of the shutdown (exit status 1)."""
    private = PrivateDatabase(db) if db != "sqlite" else None
    data = tmp_path / "data"
    try:
        srv = ServerProcess(data, db=private.url if private else None, extra_args=SERVER_ARGS)
        r = run_cli(
            "user", "add", "reg", "--data", str(data), *srv.db_args(), NETSHARE_PASSWORD="pw-reg"
        )
        assert r.returncode == 0, r.stderr
        srv.start()
        port = srv.ports["ttweet"]
        try:
            assert run_client("-d", "127.0.0.1", str(port))[:2] == (0, ["Empty Message"])
            reg = sessions(port, "reg", password="pw-reg")
            reg.expect(LEGAL)
            reg.do("subscribe #news", SUCCESS)
            gst = sessions(port, "gst")
            gst.expect(LEGAL)
            gst.do("subscribe #news", SUCCESS)
            pub = sessions(port, "pub")
            pub.expect(LEGAL)
            pub.do('tweet "before restart" #news')
            reg.expect(tweet_line("pub", "before restart", "#news"))
            gst.expect(tweet_line("pub", "before restart", "#news"))
            pub.do('tweet "not for reg" #other')
            assert run_client("--user", "upl", "-u", "127.0.0.1", str(port), "uploaded")[:2] == (
                0,
                [],
            )
            assert run_client("-u", "127.0.0.1", str(port), "by default user")[:2] == (0, [])
            for s in (reg, pub):
                s.exit()
        finally:
            assert srv.terminate() == 0
            srv.kill()
        # a session still open when the server stops: told, and exits 1
        assert gst.finish() == (1, ["error: connection closed by the server (shutting down)"])

        srv.start()
        try:
            assert run_client("-d", "127.0.0.1", str(port))[:2] == (0, ["by default user"])
            reg = sessions(port, "reg", password="pw-reg")
            reg.expect(LEGAL)
            reg.do("timeline", tweet_line("pub", "before restart", "#news"))
            reg.do(
                "gettweets pub",
                tweet_line("pub", "before restart", "#news"),
                tweet_line("pub", "not for reg", "#other"),
            )
            reg.do("gettweets upl", tweet_line("upl", "uploaded"))
            gst = sessions(port, "gst")
            gst.expect(LEGAL)
            gst.do("timeline")  # a new session: empty
            gst.do("getusers", "reg", "gst")
            gst.exit()
            reg.exit()
        finally:
            assert srv.terminate() == 0
            srv.kill()
    finally:
        if private is not None:
            private.drop()
