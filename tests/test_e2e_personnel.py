"""
Personnel end to end: a real server (C{twistd -n netshare}), two real sync
clients (C{netshare-personnel sync}, separate processes with their own
SQLite files) and the real operator console (C{netshare-personnel console}),
on SQLite, PostgreSQL and MariaDB.

One server and its two clients are shared by the tests of one database
(module scope); every test starts from the same known state (L{fresh}):
both clients running and emptied, the server's roster replaced.  After each
operation the test waits until the server reports nothing pending for the
clients (a client acknowledges only after its local transaction committed),
then compares each client's SQLite file with what the server says that
client should hold (L{Model}, built from the server's own records).
"""

import json
import os
import select
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from netshare.clients.syncdb import FIELDS, LocalStore
from netshare.storage.engine import create_engine
from tests.conftest import DB_PARAMS, empty_database_url
from tests.support import ROOT, LineConn, ServerProcess, env

CLIENTS = ("client1", "client2")
PASSWORDS = {"client1": "pw-client1", "client2": "pw-client2", "admin": "adminpw"}
NASTY = {"x-1": "'; DROP TABLE personnel;--", "x-2": "100%", "x-3": "under_score"}
WAIT = 40


def wait_for(predicate, timeout=WAIT, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %s" % (what,))
        time.sleep(interval)


class SyncProc:
    """One C{netshare-personnel sync} process (JSON logs, one file per run)."""

    def __init__(self, stack, name, extra=()):
        self.stack = stack
        self.name = name
        self.db = str(stack.base / ("%s.sqlite" % name))
        self.extra = list(extra)
        self.proc = None
        self.runs = 0
        self._log = None

    def log_path(self, run):
        return str(self.stack.base / ("%s.run%d.log" % (self.name, run)))

    def start(self, *extra):
        assert self.proc is None or self.proc.poll() is not None
        self.runs += 1
        self._log = open(self.log_path(self.runs), "wb")
        cmd = [
            sys.executable,
            "-m",
            "netshare.clients.personnel",
            "--port",
            str(self.stack.port),
            "--user",
            self.name,
            "sync",
            "--db",
            self.db,
            "--retry-min",
            "0.05",
            "--retry-max",
            "0.5",
            "--log-format",
            "json",
            *self.extra,
            *extra,
        ]
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env(NETSHARE_PASSWORD=PASSWORDS[self.name]),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        """SIGTERM: the client finishes the batch in hand and exits 0."""
        if self.running():
            self.proc.send_signal(signal.SIGTERM)
            assert self.proc.wait(20) == 0, self.output()
        self._close()

    def kill(self):
        if self.running():
            self.proc.kill()
            self.proc.wait(20)
        self._close()

    def _close(self):
        if self._log is not None:
            self._log.close()
            self._log = None

    def output(self):
        with open(self.log_path(self.runs), "rb") as f:
            return f.read().decode("utf-8", "replace")[-4000:]

    def events(self, run=None):
        with open(self.log_path(run or self.runs), "rb") as f:
            for line in f:
                try:
                    yield json.loads(line)
                except ValueError:
                    pass

    def changes(self, run=None):
        """The changes logged as applied in one run, as (seq, action, ssn):
        the client logs one info event per committed batch, listing each
        change in its C{changes} field (C{"1 SAVE p1, 2 DELETE p2, ..."})."""
        out = []
        for e in self.events(run):
            if str(e.get("log_format", "")).startswith("applied {count} changes"):
                batch = [
                    (int(seq), action, ssn)
                    for seq, action, ssn in (item.split(" ") for item in e["changes"].split(", "))
                ]
                assert e["count"] == len(batch)
                assert (e["first"], e["last"]) == (batch[0][0], batch[-1][0])
                out += batch
        return out

    def applied(self, run=None):
        """The seqs logged as applied in one run."""
        return [seq for seq, action, ssn in self.changes(run)]

    def _query(self, fn):
        db = sqlite3.connect(self.db, timeout=10)
        try:
            return fn(db)
        finally:
            db.close()

    def snapshot(self):
        rows = self._query(
            lambda db: db.execute(
                "SELECT %s FROM personnel ORDER BY ssn" % ", ".join(FIELDS)
            ).fetchall()
        )
        return {r[0]: dict(zip(FIELDS, r, strict=True)) for r in rows}

    def last_seq(self):
        try:
            return self._query(
                lambda db: db.execute("SELECT last_seq FROM sync_state").fetchone()[0]
            )
        except sqlite3.OperationalError:  # not created yet
            return 0

    def integrity(self):
        return self._query(lambda db: db.execute("PRAGMA integrity_check").fetchone()[0])


class Stack:
    def __init__(self, server, base, kind):
        self.server = server
        self.base = base
        self.kind = kind
        self.port = server.ports["personnel"]
        self.clients = {n: SyncProc(self, n) for n in CLIENTS}

    def conn(self, user="admin"):
        c = LineConn(self.port, timeout=WAIT)
        assert c.readline().startswith("220 ")
        assert c.cmd("LOGIN %s %s" % (user, PASSWORDS[user]))[0].startswith("230 ")
        return c

    def cli(self, *args, user="admin", input=None):
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "netshare.clients.personnel",
                "--port",
                str(self.port),
                "--user",
                user,
                *args,
            ],
            cwd=ROOT,
            env=env(NETSHARE_PASSWORD=PASSWORDS[user]),
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture(scope="module", params=DB_PARAMS)
def stack(request, tmp_path_factory):
    kind = request.param
    base = tmp_path_factory.mktemp("personnel-e2e-%s" % kind)
    url = empty_database_url(request, kind, base)
    engine = create_engine(url)  # (the tests read the server's tables)
    server = ServerProcess(
        base / "data", db=url, extra_args=["--sync-page", "100", "--registration", "open"]
    )
    server.start()
    st = Stack(server, base, kind)
    st.engine = engine
    try:
        c = LineConn(st.port, timeout=WAIT)
        c.readline()
        for name in CLIENTS:
            assert c.cmd("REGISTER %s %s" % (name, PASSWORDS[name]))[0].startswith("201 ")
        c.close()
        for proc in st.clients.values():
            proc.start()
        yield st
    finally:
        for proc in st.clients.values():
            proc.kill()
        server.terminate()
        server.kill()
        engine.dispose()


# -- the model: what each client should hold ---------------------------------------


class Model:
    """Per client, the persons it should hold, from the server's records."""

    def __init__(self, admin):
        self.admin = admin
        self.expected = {n: {} for n in CLIENTS}

    def server_people(self):
        return {p["ssn"]: p for p in all_people(self.admin)}

    def send(self, ssn, client):
        people = self.server_people()
        chosen = people if ssn == "*" else {ssn: people[ssn]}
        for name in CLIENTS if client == "*" else (client,):
            self.expected[name].update(chosen)

    def remove(self, ssn, client):
        for name in CLIENTS if client == "*" else (client,):
            if ssn == "*":
                self.expected[name].clear()
            else:
                self.expected[name].pop(ssn, None)


def all_people(admin):
    people = []
    while True:
        page = admin.cmd("LIST limit=1000 offset=%d" % len(people))
        people += [json.loads(line[4:]) for line in page[:-1]]
        if len(page) - 1 < 1000:
            return people


def pending(admin):
    items = [json.loads(line[4:]) for line in admin.cmd("CLIENTS")[:-1]]
    return {c["client"]: c for c in items}


def converged(stack, admin, names=CLIENTS):
    """Wait until the server has nothing pending for C{names} and they are online."""

    def done():
        info = pending(admin)
        return all(n in info and info[n]["online"] and info[n]["pending"] == 0 for n in names)

    wait_for(done, what="clients to acknowledge everything")


def check(stack, model, admin, names=CLIENTS):
    converged(stack, admin, names)
    for name in names:
        assert stack.clients[name].snapshot() == model.expected[name], name


def fresh(stack, people=5):
    """Both clients running and empty; the server roster is C{people}
    persons p1..pN plus the L{NASTY} names, written straight into the
    server's database in one transaction (fast; ADD itself is tested
    elsewhere)."""
    import sqlalchemy as sa

    from netshare.storage.roster import personnel, thd_demo_people

    admin = stack.conn()
    for proc in stack.clients.values():
        if not proc.running():
            proc.start()
    with stack.engine.begin() as conn:
        conn.execute(sa.delete(personnel))
        rows = [
            ("p%d" % i, "Name%d" % i, "Sur%d" % i, "job%d" % i, str(1000 * i))
            for i in range(1, people + 1)
        ]
        rows += [(ssn, text, "S", "", "") for ssn, text in NASTY.items()]
        assert thd_demo_people(conn, rows) == people + len(NASTY)
    assert admin.cmd("REMOVE * *")[0].startswith("200 queued")
    model = Model(admin)
    check(stack, model, admin)
    return admin, model


# -- the console ----------------------------------------------------------------------


class ConsoleProc:
    """C{netshare-personnel console} on pipes, driven prompt by prompt."""

    PROMPT = b"choice> "

    def __init__(self, stack):
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "netshare.clients.personnel",
                "--port",
                str(stack.port),
                "--user",
                "admin",
                "console",
            ],
            cwd=ROOT,
            env=env(NETSHARE_PASSWORD="adminpw"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.buf = b""
        self.banner = self.read_until(self.PROMPT)

    def read_until(self, marker, timeout=WAIT):
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while marker not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("console: no %r in %r" % (marker, self.buf[-500:]))
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(
                        "console exited: %r %r"
                        % (self.buf[-500:], self.proc.stderr.read()[-2000:])
                    )
                self.buf += chunk
        end = self.buf.index(marker) + len(marker)
        text, self.buf = self.buf[:end], self.buf[end:]
        return text.decode("utf-8")

    def choose(self, *answers):
        """Type C{answers} (a menu choice and what it asks for); return the
        output up to the next menu prompt."""
        self.proc.stdin.write("".join(a + "\n" for a in answers).encode("utf-8"))
        self.proc.stdin.flush()
        return self.read_until(self.PROMPT)

    def exit(self):
        self.proc.stdin.write(b"7\n")
        self.proc.stdin.flush()
        out, err = self.proc.communicate(timeout=WAIT)
        return self.proc.returncode, (self.buf + out).decode("utf-8"), err.decode("utf-8")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=WAIT)


# -- the tests -------------------------------------------------------------------------


def test_every_console_operation_reaches_both_clients(stack):
    admin, model = fresh(stack)
    console = ConsoleProc(stack)
    try:
        assert "7  exit" in console.banner
        out = console.choose("0")
        assert "'; DROP TABLE personnel;--" in out and "Name1" in out
        assert "client1" in out and "client2" in out

        # 3: all personnel to all clients.
        assert "queued 16 messages" in console.choose("3", "y")  # confirmed
        model.send("*", "*")
        check(stack, model, admin)
        assert len(model.expected["client1"]) == 8

        # 2: one (changed) person to all clients.
        assert admin.cmd("UPDATE p2 job=diver salary=1")[0].startswith("200 ")
        assert "queued 2 messages" in console.choose("2", "p2")
        model.send("p2", "*")
        check(stack, model, admin)
        assert stack.clients["client2"].snapshot()["p2"]["job"] == "diver"

        # 4: one person from one client.
        assert "queued 1 message\n" in console.choose("4", "p1", "client1")
        model.remove("p1", "client1")
        check(stack, model, admin)
        assert "p1" in stack.clients["client2"].snapshot()

        # 5: one person from all clients.
        assert "queued 2 messages" in console.choose("5", "x-1")
        model.remove("x-1", "*")
        check(stack, model, admin)

        # 6: all personnel from all clients.
        assert "queued 2 messages" in console.choose("6", "yes")
        model.remove("*", "*")
        check(stack, model, admin)
        assert stack.clients["client1"].snapshot() == {}

        # 1: one person to one client (a name with SQL in it).
        assert "queued 1 message\n" in console.choose("1", "x-1", "client2")
        model.send("x-1", "client2")
        check(stack, model, admin)
        assert stack.clients["client2"].snapshot()["x-1"]["name"] == NASTY["x-1"]
        assert stack.clients["client1"].snapshot() == {}

        # 2 again, for the % and _ names, then 4 on the other client.
        for ssn in ("x-2", "x-3"):
            assert "queued 2 messages" in console.choose("2", ssn)
            model.send(ssn, "*")
        assert "queued 1 message\n" in console.choose("4", "x-2", "client2")
        model.remove("x-2", "client2")
        check(stack, model, admin)
        assert sorted(stack.clients["client1"].snapshot()) == ["x-2", "x-3"]
        assert sorted(stack.clients["client2"].snapshot()) == ["x-1", "x-3"]

        # Bad input is answered and the menu goes on.
        assert "choose a number from 0 to 7" in console.choose("9")
        assert "choose a number from 0 to 7" in console.choose("send everything")
        assert "error: 550 no such person nobody" in console.choose("1", "nobody", "client1")
        assert "error: 550 no such client ghost" in console.choose("4", "p3", "ghost")
        assert "error: 501" in console.choose("2", "not an ssn")
        assert "nothing entered" in console.choose("5", "")
        check(stack, model, admin)

        # 0 shows the queue too; 7 exits cleanly.
        out = console.choose("0")
        assert "DELETE_ALL" in out and "SAVE" in out
        code, out, err = console.exit()
        assert code == 0 and "bye" in out, err
    finally:
        console.kill()
    admin.close()


def test_offline_client_converges_after_100_changes(stack):
    admin, model = fresh(stack, people=10)
    assert admin.cmd("SEND * *")[0] == "200 queued 26"
    model.send("*", "*")
    check(stack, model, admin)
    stack.clients["client2"].stop()
    wait_for(lambda: not pending(admin)["client2"]["online"], what="client2 offline")

    lines = []
    for i in range(100):
        kind = i % 4
        if kind == 0:  # change a person, send the new version
            ssn = "p%d" % (i % 10 + 1)
            lines += ["UPDATE %s job=j%d salary=%d" % (ssn, i, i), "SEND %s client2" % ssn]
        elif kind == 1:  # a new person for everyone
            lines += ["ADD ssn=n%d name=New%d surname=S" % (i, i), "SEND n%d *" % i]
        elif kind == 2:  # take one away from client2
            lines += ["REMOVE p%d client2" % (i % 10 + 1)]
        else:  # and send one back to everyone
            lines += ["SEND p%d *" % ((i * 7) % 10 + 1)]
    # Applied to the model in the same order, from the server's records.
    for line in lines:
        reply = admin.cmd(line)[0]
        assert reply[0] == "2", (line, reply)
        verb, *args = line.split()
        if verb == "SEND":
            model.send(args[0], args[1])
        elif verb == "REMOVE":
            model.remove(args[0], args[1])
    info = pending(admin)["client2"]
    assert info["pending"] == 100 and not info["online"]
    check(stack, model, admin, names=("client1",))
    stack.clients["client2"].start()
    check(stack, model, admin)
    applied = stack.clients["client2"].applied()
    assert len(applied) == 100 and applied == sorted(set(applied))
    # Each change is in the log with its action and person.
    removed = ["p%d" % (i % 10 + 1) for i in range(100) if i % 4 == 2]
    assert [
        ssn for seq, action, ssn in stack.clients["client2"].changes() if action == "DELETE"
    ] == removed


def test_a_message_delivered_twice_changes_nothing(stack):
    admin, model = fresh(stack)
    client1 = stack.clients["client1"]
    client1.stop()
    after = client1.last_seq()
    assert admin.cmd("SEND * client1")[0] == "200 queued 8"
    model.send("*", "client1")

    def receive():
        # What the sync client does, by hand: SYNC, read the pushes, apply
        # them in one local transaction; then the connection is lost before
        # any ACK.
        c = stack.conn("client1")
        assert c.cmd("SYNC after=%d" % after) == ["200 syncing"]
        pushes = [c.readline().split(" ", 3) for _ in range(8)]
        c.close()
        assert [int(p[1]) for p in pushes] == list(range(after + 1, after + 9))
        local = LocalStore(client1.db)
        try:
            return local.apply_batch([(int(p[1]), p[2], p[3]) for p in pushes])
        finally:
            local.close()

    assert receive() == 8
    before = client1.snapshot()
    assert before == model.expected["client1"]
    assert receive() == 0  # delivered twice: nothing applied
    assert client1.snapshot() == before
    wait_for(lambda: not pending(admin)["client1"]["online"], what="client1 offline")
    assert pending(admin)["client1"]["pending"] == 8
    # The real client resumes after its last applied seq and acknowledges
    # it (its ACK was lost): nothing pending, nothing applied again.
    client1.start()
    check(stack, model, admin)
    assert client1.snapshot() == before and client1.applied() == []
    assert client1.last_seq() == after + 8


def test_server_killed_between_queueing_and_acknowledgement_loses_nothing(stack):
    admin, model = fresh(stack, people=400)
    stack.clients["client1"].stop()  # offline: cannot have acknowledged
    wait_for(lambda: not pending(admin)["client1"]["online"], what="client1 offline")
    assert admin.cmd("SEND * *")[0] == "200 queued 806"
    stack.server.kill()  # kill -9 right after the commit
    admin.close()
    model.admin = None
    stack.server.start()
    admin = stack.conn()
    model.admin = admin
    model.send("*", "*")
    stack.clients["client1"].start()
    check(stack, model, admin)
    info = pending(admin)
    assert info["client1"]["acked"] == stack.clients["client1"].last_seq()
    assert info["client2"]["acked"] == stack.clients["client2"].last_seq()
    assert len(stack.clients["client2"].snapshot()) == 403
    admin.close()


def test_sync_client_killed_mid_batch_loses_nothing_and_applies_nothing_twice(stack):
    admin, model = fresh(stack, people=1500)
    client1 = stack.clients["client1"]
    client1.stop()
    base = client1.last_seq()
    assert admin.cmd("SEND * client1")[0] == "200 queued 1503"
    model.send("*", "client1")
    order = sorted(model.expected["client1"])  # SEND * queues in ssn order
    client1.start("--batch-max", "25")
    wait_for(lambda: client1.last_seq() > base + 25, interval=0.005, what="some batches")
    client1.kill()  # kill -9 while batches are being applied
    first_run = client1.runs
    assert client1.integrity() == "ok"
    done = client1.last_seq() - base
    assert 0 < done < 1503, "the client finished before it was killed"
    # The recorded seq and the data agree: exactly the first `done` messages.
    assert sorted(client1.snapshot()) == order[:done]
    client1.start()
    check(stack, model, admin)
    applied = client1.applied(first_run) + client1.applied()
    assert len(applied) == len(set(applied))  # nothing applied twice
    assert set(client1.applied()) == set(range(base + done + 1, base + 1504))
    assert client1.last_seq() == base + 1503
    admin.close()


def test_user_account_reads_but_every_write_is_refused(stack):
    admin, model = fresh(stack)
    r = stack.cli("--json", "list", "%", user="client1")
    assert r.returncode == 0, r.stderr
    assert [p["name"] for p in json.loads(r.stdout)] == [NASTY["x-2"]]
    r = stack.cli("--json", "list", "_", user="client1")
    assert [p["name"] for p in json.loads(r.stdout)] == [NASTY["x-3"]]
    r = stack.cli("get", "x-1", "--json", user="client1")
    got = json.loads(r.stdout)
    assert got["name"] == NASTY["x-1"]
    assert (got["ssn"], got["salary"]) == ("***", None)  # the directory view
    # A write, a queueing and a listing operator command through the program
    # (all seven verbs are checked on the wire in test_personnel_protocol).
    for args in [("add", "z", "A", "B"), ("send", "*", "*"), ("clients",)]:
        r = stack.cli(*args, user="client1")
        assert r.returncode == 1 and "531 permission denied" in r.stderr, (args, r)
    assert admin.cmd("GET p1")[0].startswith("200 ")
    assert pending(admin)["client1"]["pending"] == 0
    # The admin's own one-shot commands, as tables and JSON.
    r = stack.cli("add", "z-9", "Zed", "Last", "--salary", "10.50")
    assert r.returncode == 0 and "salary : 10.50" in r.stdout.replace("salary:", "salary :")
    r = stack.cli("send", "z-9", "client1")
    assert (r.returncode, r.stdout) == (0, "queued 1 message\n")
    model.send("z-9", "client1")
    check(stack, model, admin)
    r = stack.cli("--json", "clients")
    assert {c["client"] for c in json.loads(r.stdout)} == set(CLIENTS)
    r = stack.cli("messages", "--limit", "1")
    assert r.returncode == 0 and "z-9" in r.stdout and "(1 item)" in r.stdout
    r = stack.cli("history", "--limit", "3", "--json")
    # Newest first: this login (with the session token the first call kept),
    # the QUIT and the MESSAGES of the previous call.
    assert [e["command"].split()[0] for e in json.loads(r.stdout)] == ["TOKEN", "QUIT", "MESSAGES"]
    r = stack.cli("get", "nobody")
    assert r.returncode == 1 and "550" in r.stderr
    admin.close()
