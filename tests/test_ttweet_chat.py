"""
netshare-ttweet as a chat client (issue 15, item 5): the real daemon
(C{twistd -n netshare}) and the real client program on a pseudo-terminal
of its own, as a user at a terminal runs it.

Proves: a prompt whose half-typed line survives a push drawn above it;
local timestamps on pushed and listed tweets at a terminal only (piped
output keeps the assignment's exact messages, C{--timestamps} adds them);
C{help}; history (Up recalls the previous line, also in the next session,
from a 0600 file); Ctrl-C typed at the prompt or at the password prompt,
and SIGINT from outside (at a terminal and on pipes), end with status 130
and the terminal put back; SIGTERM puts it back too; Ctrl-D says
C{bye bye}; the keep-alive keeps an idle prompt session past the server's
idle timeout, and a server shutdown is reported at the prompt; guests log
in whatever C{NETSHARE_PASSWORD} holds, registered names use it;
C{--version}.

Every read has a deadline; every process and connection is closed.
"""

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest

import netshare
from netshare.clients.ttweet import HELP
from tests.support import LineConn, ServerProcess, run_cli
from tests.test_e2e_ttweet import (
    LEGAL,
    SERVER_ARGS,
    SUCCESS,
    Session,
    client_command,
    client_env,
    run_client,
    tweet_line,
)

pytestmark = pytest.mark.timeout(180)

TIMEOUT = 15
#: A local time as the client prints it before a tweet (the date on another day).
STAMP = r"\[(\d{4}-\d\d-\d\d )?\d\d:\d\d\] "
#: Control sequences of the terminal (cursor moves, colours, modes).
ESCAPES = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>78]")
#: Runs the client as a session leader whose controlling terminal is the
#: pty (so that getpass and the terminal's own Ctrl-C behave as for a user).
LAUNCH = (
    "import fcntl, os, sys, termios; os.setsid(); "
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0); os.execvp(sys.argv[1], sys.argv[1:])"
)


class Terminal:
    """
    The client on a pseudo-terminal (120x40): keys in, what the screen was
    sent out.  L{expect} searches what was printed since the last match,
    control sequences and carriage returns removed.
    """

    def __init__(self, *args, password=None, state=None):
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        environ = client_env(password)
        environ["TERM"] = "xterm"
        if state is not None:
            environ["XDG_STATE_HOME"] = str(state)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, *client_command(*args)],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=environ,
            close_fds=True,
        )
        os.close(slave)
        self.master = master
        self.raw = b""
        self.pos = 0  # in plain(): where the next expect starts

    def plain(self):
        return ESCAPES.sub(b"", self.raw).replace(b"\r", b"").decode("utf-8", "replace")

    def _read(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([self.master], [], [], left)[0]:
            return False
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the client closed the terminal
            data = b""
        if not data:
            return None
        self.raw += data
        return True

    def expect(self, pattern, timeout=TIMEOUT, next=False):
        """Wait for C{pattern} (a regular expression) in what was printed
        after the last match (with C{next}: right after it); @return: the
        match."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            find = regex.match if next else regex.search
            m = find(self.plain(), self.pos)
            if m:
                self.pos = m.end()
                return m
            got = self._read(deadline)
            if not got:
                raise AssertionError(
                    "%r not seen (%s); after the last match: %r"
                    % (
                        pattern,
                        "timeout" if got is False else "terminal closed",
                        self.plain()[self.pos :][-1500:],
                    )
                )

    def at_prompt(self, name):
        """Wait until the prompt is drawn again (the terminal is then the
        prompt's: keys typed earlier would meet the line discipline)."""
        self.expect(re.escape(name + ">"))  # (its trailing space is a cursor move)

    def type(self, keys):
        os.write(self.master, keys.encode("utf-8") if isinstance(keys, str) else keys)

    def finish(self, timeout=TIMEOUT):
        """Read to the end; @return: the exit status."""
        deadline = time.monotonic() + timeout
        while self._read(deadline):
            pass
        return self.proc.wait(max(0.1, deadline - time.monotonic()))

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self.master)


def assert_terminal_restored(term):
    """The client put the terminal back as it was: echo, lines."""
    lflag = termios.tcgetattr(term.master)[3]
    assert lflag & termios.ECHO and lflag & termios.ICANON


@pytest.fixture
def terminals():
    made = []

    def make(*args, **kw):
        t = Terminal(*args, **kw)
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


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
    data = tmp_path_factory.mktemp("ttweet-chat") / "data"
    srv = ServerProcess(data, extra_args=SERVER_ARGS)
    r = run_cli("user", "add", "reg", "--data", str(data), NETSHARE_PASSWORD="pw-reg")
    assert r.returncode == 0, r.stderr
    srv.start()
    yield srv
    srv.terminate()
    srv.kill()


def login(port, name):
    """A raw connection logged in as guest C{name}."""
    conn = LineConn(port)
    assert conn.readline().startswith("220 netshare ttweet ")
    assert conn.cmd("LOGIN %s" % name)[0].startswith("230 ")
    return conn


def chat(terminals, port, name, tmp_path, *options):
    term = terminals(*options, "127.0.0.1", str(port), name, state=tmp_path / "state")
    term.expect(re.escape(LEGAL))
    term.at_prompt(name)
    return term


# --- the prompt -------------------------------------------------------------------


def test_a_push_is_drawn_above_a_half_typed_line(server, terminals, tmp_path):
    port = server.ports["ttweet"]
    alice = chat(terminals, port, "alice", tmp_path)
    alice.type("subscribe #chat\r")
    alice.expect(r"alice> subscribe #chat\n%s\n" % SUCCESS)
    alice.at_prompt("alice")
    alice.type("tim")
    alice.expect(r"tim")  # drawn on the prompt line
    bob = login(port, "bob")
    try:
        assert bob.cmd('TWEET "hi there" #chat') == ["200 ok"]
        # above the prompt, with a local time; then the prompt drawn again
        # with the half-typed line as it was
        pushed = STAMP + re.escape(tweet_line("bob", "hi there", "#chat")) + r"\n"
        alice.expect(pushed)
        alice.expect(r"alice> tim")
        alice.type("eline\r")
        alice.expect(r"alice> timeline\n")
        alice.expect(pushed, next=True)
        alice.at_prompt("alice")
        alice.type("gettweets bob\r")
        alice.expect(r"alice> gettweets bob\n" + pushed)
        alice.at_prompt("alice")
        alice.type("exit\r")
        alice.expect(r"alice> exit\nbye bye\n")
        assert alice.finish() == 0
        assert bob.cmd("QUIT") == ["221 bye"]
    finally:
        bob.close()


def test_help_history_and_ctrl_d(server, terminals, tmp_path):
    port = server.ports["ttweet"]
    carol = chat(terminals, port, "carol", tmp_path)
    carol.type("help\r")
    listed = carol.expect(r"carol> help\ncommands:\n(  .*\n){8}").group(0)
    for command in ("tweet", "subscribe", "unsubscribe", "timeline", "getusers", "gettweets"):
        assert "\n  %s " % command in listed
    assert "\n  help " in listed and "\n  exit " in listed
    carol.at_prompt("carol")
    carol.type("getusers\r")
    carol.expect(r"carol> getusers\ncarol\n")
    carol.at_prompt("carol")
    carol.type("\x1b[A\r")  # Up: the previous line again
    carol.expect(r"carol> getusers\ncarol\n")
    carol.at_prompt("carol")
    carol.type("\x1b[A\x1b[A\r")  # Up twice: the one before
    carol.expect(r"carol> help\ncommands:\n(  .*\n){8}")
    carol.at_prompt("carol")
    carol.type("\x04")  # Ctrl-D on an empty line
    carol.expect(r"carol> \nbye bye\n")
    assert carol.finish() == 0
    # the history is kept for the next session, readable by its owner only
    history = tmp_path / "state" / "netshare" / "ttweet_history"
    assert "+getusers" in history.read_text()
    assert history.stat().st_mode & 0o777 == 0o600
    carol = chat(terminals, port, "carol", tmp_path)
    carol.type("\x1b[A\r")  # the last line of the session before
    carol.expect(r"carol> help\ncommands:\n")
    carol.at_prompt("carol")
    carol.type("exit\r")
    carol.expect(r"bye bye\n")
    assert carol.finish() == 0


def test_ctrl_c_at_the_prompt_exits_130(server, terminals, tmp_path):
    port = server.ports["ttweet"]
    dave = chat(terminals, port, "dave", tmp_path)
    dave.type("half a li")
    dave.expect("half a li")
    dave.type("\x03")
    dave.expect(r"dave> half a li\^C\n")
    dave.expect(r"netshare-ttweet: interrupted\n")
    assert dave.finish() == 130
    assert "Traceback" not in dave.plain()
    assert_terminal_restored(dave)
    # the name is free again: the connection is gone
    conn = login(port, "dave")
    conn.close()


def test_sigint_exits_130(server, terminals, tmp_path):
    port = server.ports["ttweet"]
    erin = chat(terminals, port, "erin", tmp_path)
    erin.type("getusers\r")
    erin.expect(r"erin> getusers\nerin\n")
    erin.at_prompt("erin")
    erin.proc.send_signal(signal.SIGINT)
    erin.expect(r"netshare-ttweet: interrupted\n")
    assert erin.finish() == 130
    assert "Traceback" not in erin.plain()
    assert_terminal_restored(erin)


def test_sigterm_puts_the_terminal_back(server, terminals, tmp_path):
    port = server.ports["ttweet"]
    fay = chat(terminals, port, "fay", tmp_path)
    fay.type("half")
    fay.expect("half")
    fay.proc.send_signal(signal.SIGTERM)
    fay.finish()
    assert "Traceback" not in fay.plain() and "error" not in fay.plain()
    assert_terminal_restored(fay)


def test_ctrl_c_at_the_password_prompt_exits_130(server, terminals, tmp_path):
    reg = terminals("127.0.0.1", str(server.ports["ttweet"]), "reg", state=tmp_path)
    reg.expect("Password for reg: ")
    reg.type("pw-r\x03")
    reg.expect(r"netshare-ttweet: interrupted\n")
    assert reg.finish() == 130
    assert "Traceback" not in reg.plain() and "pw-r" not in reg.plain()
    assert_terminal_restored(reg)


def test_sigint_in_piped_mode_exits_130(server, sessions):
    port = server.ports["ttweet"]
    s = sessions(port, "piped")
    s.expect(LEGAL)
    s.do("getusers", "piped")
    s.proc.send_signal(signal.SIGINT)
    status, rest = s.finish()
    assert (status, rest) == (130, [])
    assert s.stderr().strip() == "netshare-ttweet: interrupted"


def test_keepalive_outlives_the_idle_timeout_and_a_shutdown_is_told(tmp_path, terminals):
    """
    The server closes idle connections after 2 s: a raw connection made
    after the prompt session's last command is closed (the proof that the
    prompt session, idle longer, would be too), while the prompt session,
    pinging every 0.3 s, is still there.  Then the server stops: the prompt
    says so and the client exits 1.
    """
    srv = ServerProcess(tmp_path / "data", extra_args=SERVER_ARGS + ["--idle-timeout", "2"])
    srv.start()
    try:
        port = srv.ports["ttweet"]
        frank = chat(terminals, port, "frank", tmp_path, "--keepalive", "0.3")
        idle = login(port, "idle")
        try:
            assert idle.closed(timeout=TIMEOUT)
            assert idle.buf.startswith(b"421 idle timeout")
        finally:
            idle.close()
        frank.type("getusers\r")
        frank.expect(r"frank> getusers\nfrank\n")
        frank.at_prompt("frank")
        assert srv.terminate() == 0
        frank.expect(r"error: connection closed by the server \(shutting down\)\n")
        assert frank.finish() == 1
        assert "Traceback" not in frank.plain()
    finally:
        srv.terminate()
        srv.kill()


# --- piped input and output keep the assignment's messages ---------------------


def test_piped_mode_prints_no_timestamps_unless_asked(server, sessions):
    port = server.ports["ttweet"]
    plain = sessions(port, "pipea")
    plain.expect(LEGAL)
    plain.do("subscribe #pipe", SUCCESS)
    stamped = sessions(port, "pipeb", extra=("--timestamps",))
    stamped.expect(LEGAL)
    stamped.do("subscribe #pipe", SUCCESS)
    stamped.do('tweet "piped" #pipe')
    plain.expect(tweet_line("pipeb", "piped", "#pipe"))  # exactly the assignment's line
    assert re.fullmatch(STAMP + re.escape(tweet_line("pipeb", "piped", "#pipe")), stamped.line())
    plain.do("timeline", tweet_line("pipeb", "piped", "#pipe"))
    plain.do("help", *HELP.splitlines())  # local: nothing sent
    plain.exit()
    stamped.exit()


def test_terminal_output_without_timestamps(server, terminals, tmp_path):
    port = server.ports["ttweet"]
    gina = chat(terminals, port, "gina", tmp_path, "--no-timestamps")
    gina.type('tweet "mine" #g\r')
    gina.expect(r'gina> tweet "mine" #g\n')
    gina.at_prompt("gina")
    gina.type("gettweets gina\r")
    gina.expect(r"gina> gettweets gina\n" + re.escape(tweet_line("gina", "mine", "#g")) + r"\n")
    gina.at_prompt("gina")
    gina.type("exit\r")
    gina.expect("bye bye")
    assert gina.finish() == 0


# --- logging in ---------------------------------------------------------------------


def test_netshare_password_does_not_break_guests(server, sessions):
    """With NETSHARE_PASSWORD set, a name with no account is a guest (-u
    and interactive alike), and a registered name logs in with it."""
    port = str(server.ports["ttweet"])
    status, out, err = run_client(
        "--user", "guestpw", "-u", "127.0.0.1", port, "a guest tweet", password="pw-reg"
    )
    assert (status, out) == (0, []), err
    assert run_client("-d", "127.0.0.1", port)[:2] == (0, ["a guest tweet"])
    status, out, err = run_client(
        "--user", "reg", "-u", "127.0.0.1", port, "a registered tweet", password="pw-reg"
    )
    assert (status, out) == (0, []), err
    status, out, _ = run_client(
        "--user", "reg", "-u", "127.0.0.1", port, "wrong password", password="nope"
    )
    assert (status, out) == (1, ["error: bad credentials, connection refused."])
    guest = sessions(int(port), "guesti", password="pw-reg")
    guest.expect(LEGAL)
    guest.do("gettweets guestpw", tweet_line("guestpw", "a guest tweet"))
    guest.do("gettweets reg", tweet_line("reg", "a registered tweet"))
    guest.exit()


def test_timestamps_are_local_times():
    """The tweet's C{ts} (UTC) in the local time zone: the time alone today,
    with the date another day (a +05:30 zone, in a process of its own)."""
    code = (
        "import datetime as d; from netshare.clients.ttweet import local_time as t; "
        "ts = '2026-11-21T05:15:35.120Z'; "
        "now = d.datetime(2026, 11, 21, 12, 0).astimezone(); "
        "print(t(ts, now), '|', t(ts, now + d.timedelta(days=1)), '|', t('junk'), '|', t(None))"
    )
    environ = client_env()
    environ["TZ"] = "IST-5:30"  # POSIX form: UTC+05:30, no tz database needed
    r = subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=60
    )
    assert r.stdout.split("|") == ["10:45 ", " 2026-11-21 10:45 ", "  ", " \n"], r.stderr


def test_importing_the_client_installs_no_reactor():
    """The terminal mode must be able to choose Twisted's asyncio reactor
    (netshare.clients.ttweet.main): nothing it imports may install one."""
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, netshare.clients.ttweet; "
            "assert 'twisted.internet.reactor' not in sys.modules",
        ],
        env=client_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr


def test_version():
    status, out, err = run_client("--version")
    assert (status, out) == (0, ["netshare-ttweet %s" % netshare.__version__]), err
