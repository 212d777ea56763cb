"""
Property tests of every real service protocol against bad input:
arbitrary command lines, before and after LOGIN, against in-process
listeners built by the real composition root,
L{netshare.service.make_factory}.

For every example (a fresh connection, optionally logged in as a user or an
admin, then up to a few lines sent one at a time) the properties are:

 - every line the server sends is UTF-8 and starts with a 3-digit code;
 - every reply is well-formed: continuation lines (C{NNN-}) share the
   final line's code, a listing's items are JSON objects and its last line
   counts them (C{210 <n> items}), help ends with C{214 end}, pushes
   (C{6xx}) never appear inside a reply and are well-formed;
 - raw data is exactly what C{150}/C{350} announced, and is followed by a
   reply;
 - the connection is never left hanging: each command that is not blank
   gets its reply (within a timeout) or the server closes the connection,
   and a close comes only after a closing line (C{421}, C{221} or
   C{500 line too long});
 - no handler raises an unexpected exception: no C{451 internal error},
   and no failure, error or critical event is logged (captured with
   twisted.logger for the whole run).

Bounded: a modest C{max_examples} and short lines, C{deadline=None}, no
example database (nothing is written to the checkout), derandomized so a
run is reproducible.  SQLite always; PostgreSQL and MariaDB (fewer
examples) when NETSHARE_TEST_POSTGRES / NETSHARE_TEST_MYSQL are set.
"""

import json
import re
import shlex

import pytest
import pytest_twisted
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.logger import LogLevel, globalLogPublisher

from netshare.service import make_factory
from tests.inprocess import add_account, db_kinds, listen, reactor

pytestmark = pytest.mark.timeout(240, method="thread")

MAX_LINE = 4096
WAIT = 10
PASSWORDS = {"alice": "pw-alice", "root": "pw-root"}

#: The services under test, built by the real composition root.
SERVICES = ("personnel", "files", "ttweet")
#: Every code docs/protocol.md section 1 defines for a reply (6xx are pushes).
REPLY_CODES = {
    150,
    200,
    201,
    210,
    214,
    220,
    221,
    226,
    230,
    350,
    421,
    429,
    451,
    452,
    500,
    501,
    503,
    530,
    531,
    535,
    550,
    552,
    553,
    554,
    555,
}
PUSH_CODES = {"personnel": {"610", "611", "612"}, "files": set(), "ttweet": {"600"}}
CODE = re.compile(r"[0-9]{3}[ -]")

# --- strategies ------------------------------------------------------------------
#
# A line is either a command built from a template of the service's real
# grammar with every hole filled by a valid, borderline or hostile value (so
# the handlers themselves are reached, not only the parser), or free words
# after a (mostly real) verb, or raw bytes, or rarely a line over the cap.

BOUNDARIES = [
    0,
    1,
    -1,
    2,
    100,
    1000,
    1001,
    65536,
    65537,
    2**31 - 1,
    2**31,
    2**32,
    2**53,
    2**63 - 1,
    2**63,
    2**63 + 1,
    2**64,
    10**19 - 1,
    10**19,
    10**20,
    -(2**63),
    -(2**64),
]
numbers = st.one_of(
    st.sampled_from(BOUNDARIES), st.integers(-(2**70), 2**70), st.integers(0, 70000)
).map(str)
odd_numbers = st.sampled_from(
    [
        "1e9",
        "0x10",
        "+5",
        " 5",
        "5 ",
        "\uff15",
        "\u0665",
        "1_000",
        "007",
        "-0",
        "NaN",
        "inf",
        "1.5",
        "",
    ]
)
hostile = st.sampled_from(
    [
        "*",
        "..",
        "../etc/passwd",
        "a/../../b",
        "..\\..\\x",
        "%2e%2e%2f",
        "/abs",
        "C:\\x",
        "CON",
        "x" * 300,
        "a\u202eb",
        "\u2028",
        "a\x1b[31mb",
        "a\x00b",
        "a\rb",
        "a\tb",
        "a b",
        '"',
        "'",
        "\\",
        "=",
        "#",
        "##",
        "#ALL",
        "\ud7ff",
        "\ufeff",
        "e\u0301",
        "\U0001f600" * 40,
        "",
    ]
)
plain_text = st.text(max_size=24)
names = st.one_of(
    st.sampled_from(["alice", "root", "admin", "nobody", "a1", "x" * 33]),
    st.text(alphabet="abcXYZ019", min_size=1, max_size=8),
)
words = st.one_of(
    numbers,
    odd_numbers,
    hostile,
    plain_text,
    names,
    st.text(alphabet="abcdefgh0123-#", min_size=1, max_size=16),
)
OPTION_KEYS = [
    "limit",
    "offset",
    "user",
    "after",
    "visibility",
    "password",
    "sha256",
    "replace",
    "ssn",
    "name",
    "surname",
    "job",
    "salary",
    "client",
    "seq",
]
options = st.tuples(st.sampled_from(OPTION_KEYS), words).map(lambda kv: "%s=%s" % kv)
STYLES = ["raw"] * 6 + ["quote"] * 3 + ["dquote"] * 2 + ["unbalanced"]


def render(word_and_style):
    word, style = word_and_style
    if style == "quote":
        return shlex.quote(word)
    if style == "dquote":
        return '"%s"' % (word.replace("\\", "\\\\").replace('"', '\\"'),)
    if style == "unbalanced":
        return '"' + word
    return word


def quoted(strategy):
    return st.tuples(strategy, st.sampled_from(STYLES)).map(render)


HOLES = {
    "n": quoted(st.one_of(numbers, numbers, odd_numbers)),
    "w": quoted(words),
    "user": quoted(names),
    "ssn": quoted(st.one_of(st.text(alphabet="abc123-", min_size=1, max_size=8), words)),
    "file": quoted(
        st.one_of(
            st.sampled_from(["a.txt", "b", "A.TXT", "caf\u00e9", "cafe\u0301"]),
            st.sampled_from(["a.txt", "b"]),
            words,
        )
    ),
    "size": quoted(
        st.one_of(st.integers(0, 300).map(str), st.integers(0, 300).map(str), numbers, odd_numbers)
    ),
    "vis": quoted(st.sampled_from(["public", "hidden", "secret", ""])),
    "yn": quoted(st.sampled_from(["yes", "no", "maybe", "1", "0"])),
    "sha": quoted(st.one_of(st.sampled_from(["0" * 64, "A" * 64, "g" * 64, "0" * 63]), words)),
    "which": quoted(st.sampled_from(["mine", "hidden", "all", "MINE", "*"])),
    "tag": quoted(
        st.one_of(
            st.sampled_from(
                [
                    "#ALL",
                    "#a",
                    "#cs3251",
                    "#a#b",
                    "#",
                    "##",
                    "#" + "x" * 15,
                    "#a#b#c#d#e#f",
                    "nohash",
                ]
            ),
            st.text(alphabet="#abZ09", max_size=20),
        )
    ),
    "msg": quoted(
        st.one_of(
            st.text(min_size=0, max_size=160),
            hostile,
            st.sampled_from(["x" * 150, "x" * 151, " ", "\U0001f600" * 150]),
        )
    ),
    "client": quoted(st.one_of(st.sampled_from(["*", "alice", "root"]), names)),
}
TEMPLATES = {
    None: [
        "HELP",
        "PING",
        "WHOAMI",
        "LOGIN {user} {w}",
        "LOGIN {user}",
        "REGISTER {user} {w}",
        "HISTORY",
        "HISTORY limit={n}",
        "HISTORY limit={n} user={user}",
        "HISTORY user={w}",
        "HISTORY DELETE {n}",
        "HISTORY CLEAR",
        "HISTORY CLEAR user={user}",
        "QUIT",
    ],
    "personnel": [
        "LIST",
        "LIST {w}",
        "LIST limit={n}",
        "LIST {w} limit={n} offset={n}",
        "LIST offset={n}",
        "GET {ssn}",
        "ADD ssn={ssn} name={w} surname={w}",
        "ADD ssn={ssn} name={w} surname={w} job={w} salary={n}",
        "ADD ssn={ssn} name={w}",
        "UPDATE {ssn} name={w}",
        "UPDATE {ssn} salary={n}",
        "UPDATE {ssn} ssn={ssn}",
        "DELETE {ssn}",
        "CLIENTS",
        "MESSAGES",
        "MESSAGES client={client} limit={n}",
        "SEND {ssn} {client}",
        "SEND * *",
        "REMOVE {ssn} {client}",
        "REMOVE * {client}",
        "SYNC",
        "SYNC after={n}",
        "ACK {n}",
    ],
    "files": [
        "LIST",
        "LIST {which}",
        "INFO {file}",
        "CHECKSUM {file}",
        "DELETE {file}",
        "UPLOAD {file} {size}",
        "UPLOAD {file} {size} visibility={vis}",
        "UPLOAD {file} {size} password={w} replace={yn}",
        "UPLOAD {file} {size} sha256={sha}",
        "UPLOAD {file} {size} {w}",
        "DOWNLOAD {file}",
        "DOWNLOAD {file} offset={n}",
        "DOWNLOAD {file} password={w}",
        "DOWNLOAD {file} {w}",
    ],
    "ttweet": [
        "TWEET {msg}",
        "TWEET {msg} {tag}",
        "TWEET {msg} {tag} {w}",
        "TWEET",
        "SUBSCRIBE {tag}",
        "UNSUBSCRIBE {tag}",
        "TIMELINE",
        "TIMELINE {w}",
        "GETUSERS",
        "GETTWEETS {user}",
        "GETTWEETS {w}",
        "LAST",
        "LOGIN {user}",
    ],
}


def template_line(template):
    holes = re.findall(r"\{(\w+)\}", template)

    def fill(values):
        out = template
        for hole, value in zip(holes, values, strict=True):
            out = out.replace("{%s}" % hole, value, 1)
        return out

    return st.tuples(*[HOLES[h] for h in holes]).map(fill)


def grammar_lines(service):
    templates = TEMPLATES[None] + TEMPLATES[service] * 3  # mostly the service's own
    verb_case = st.sampled_from([str, str.lower, str.title])
    return st.tuples(st.sampled_from(templates).flatmap(template_line), verb_case).map(
        lambda lc: (lambda v, rest: lc[1](v) + rest)(*_split_verb(lc[0])).encode("utf-8")
    )


def _split_verb(line):
    verb, sep, rest = line.partition(" ")
    return verb, sep + rest


def free_lines(service):
    verbs = [t.split()[0] for t in TEMPLATES[None] + TEMPLATES[service]]
    verb = st.one_of(
        st.sampled_from(verbs),
        st.sampled_from(verbs),
        st.sampled_from(verbs),
        st.text(min_size=1, max_size=12),
    )
    args = st.lists(quoted(st.one_of(words, options)), max_size=5)
    return st.tuples(verb, args).map(lambda va: " ".join([va[0]] + va[1]).encode("utf-8"))


def lines_for(service):
    long_line = st.sampled_from([b"X" * (MAX_LINE + 1), b"PING " + b"a" * 6000])
    line = st.one_of(
        grammar_lines(service),
        grammar_lines(service),
        grammar_lines(service),
        free_lines(service),
        st.binary(max_size=200),
        st.integers(0, 30).flatmap(lambda n: long_line if n == 0 else grammar_lines(service)),
    )
    ending = st.sampled_from([b"\r\n", b"\n"])
    return st.tuples(line, ending).map(lambda le: le[0].replace(b"\n", b" ") + le[1])


def examples(service):
    return st.tuples(
        st.sampled_from(["alice", "root", "alice", "root", None]),
        st.lists(lines_for(service), min_size=1, max_size=8),
    )


# --- the model of one reply ------------------------------------------------------


def expects_reply(line: bytes) -> bool:
    """Whether the server must answer this line (docs/protocol.md section 1: a
    blank line is not a command; anything else gets a reply or a close)."""
    body = line[:-1] if line.endswith(b"\n") else line
    body = body[:-1] if body.endswith(b"\r") else body
    if len(body) > MAX_LINE:
        return True
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return True
    try:
        return bool(shlex.split(text))
    except ValueError:
        return True


class Violation(AssertionError):
    pass


def check(cond, what, *context):
    if not cond:
        raise Violation("%s: %r" % (what, context))


def check_push(service, line):
    code = line[:3]
    check(code in PUSH_CODES[service], "unexpected push code", line)
    if code == "600":
        obj = json.loads(line[4:])
        check(
            isinstance(obj, dict) and {"id", "user", "message", "hashtags", "ts"} <= set(obj),
            "malformed 600 push",
            line,
        )
    else:
        m = re.fullmatch(r"61[012] ([0-9]+) (SAVE|DELETE|DELETE_ALL) (\{.*\})", line)
        check(m is not None, "malformed sync push", line)
        check(isinstance(json.loads(m.group(3)), dict), "sync push payload", line)


def check_reply(lines):
    """One complete reply (pushes already taken out)."""
    last = lines[-1]
    code = last[:3]
    check(int(code) in REPLY_CODES, "unknown reply code", last)
    check(last[3:4] == " ", "last line of a reply must have a space after the code", lines)
    for line in lines[:-1]:
        check(line[:4] == code + "-", "continuation line of another code", lines)
    check(code != "451", "451: an unexpected exception in a handler", lines)
    if code == "210":
        items = [json.loads(line[4:]) for line in lines[:-1]]
        check(all(isinstance(i, dict) for i in items), "listing items must be JSON objects", lines)
        check(last == "210 %d items" % (len(items),), "listing count", lines)
    elif code == "214":
        check(last == "214 end", "help must end with 214 end", lines)
    else:
        check(len(lines) == 1, "only listings and help have several lines", lines)


# --- one example on the wire ----------------------------------------------------


@defer.inlineCallbacks
def read_line(c, service, pushes):
    """The next non-push line (pushes collected), checked for a code."""
    while True:
        line = yield c.readline(WAIT)
        check(CODE.match(line) is not None, "line without a 3-digit code", line)
        if line[:1] == "6":
            check_push(service, line)
            pushes.append(line)
            continue
        return line


@defer.inlineCallbacks
def read_reply(c, service, pushes):
    first = yield read_line(c, service, pushes)
    lines = [first]
    while lines[-1][3:4] == "-":
        line = yield c.readline(WAIT)
        check(CODE.match(line) is not None, "line without a 3-digit code", line)
        check(line[:1] != "6", "a push inside a multi-line reply", lines + [line])
        lines.append(line)
    check_reply(lines)
    return lines


def closes(reply):
    last = reply[-1]
    return last[:3] in ("421", "221") or last == "500 line too long"


@defer.inlineCallbacks
def run_example(srv, service, user, lines):
    """Send C{lines} one at a time on a fresh connection and check every
    reply.  @return: the transcript (for the failure message)."""
    transcript = []
    pushes = []
    before = len(srv.protocols)
    c = yield srv.raw()
    try:
        if user is not None:
            c.send(("LOGIN %s %s\r\n" % (user, PASSWORDS[user])).encode())
            reply = yield read_reply(c, service, pushes)
            check(reply[0].startswith("230 "), "login", reply)
        for line in lines:
            transcript.append(line)
            c.send(line)
            if not expects_reply(line):
                continue
            try:
                reply = yield read_reply(c, service, pushes)
            except ConnectionError:
                raise Violation(
                    "closed without a closing reply after %r" % (transcript,)
                ) from None
            transcript.append(reply)
            if reply[0].startswith("350 "):
                n = int(reply[0].split()[2])
                c.send(b"\xa5" * n)
                reply = yield read_reply(c, service, pushes)
                transcript.append(reply)
            elif reply[0].startswith("150 "):
                n = int(reply[0].split()[1])
                yield c.read_exactly(n, WAIT)
                reply = yield read_reply(c, service, pushes)
                transcript.append(reply)
                check(reply == ["226 transfer complete"], "raw send must end with 226", reply)
            if closes(reply):
                yield c.wait_closed(WAIT)
                break
    except Violation as e:
        raise Violation("%s\ntranscript: %r" % (e, transcript)) from None
    except defer.TimeoutError as e:
        raise Violation(
            "no reply (hanging connection): %s\ntranscript: %r" % (e, transcript)
        ) from None
    finally:
        if c.transport.connected:
            c.transport.loseConnection()
        yield c.wait_closed(WAIT)
        # The server side is gone too (a ttweet name is free again, a SYNC
        # stream is closed) before the next example starts.
        mine = srv.protocols[before:]
        yield defer.DeferredList([p.lost for p in mine]).addTimeout(WAIT, reactor())
    # Every command is recorded in the request history (docs/protocol.md section
    # 1): whatever was sent, the recorder can write it.
    try:
        yield srv.runtime.history.flush().addTimeout(WAIT, reactor())
    except Exception as e:
        raise Violation(
            "the request history could not record these commands: %s\n"
            "transcript: %r" % (str(e).splitlines()[0][:300], transcript)
        ) from None
    return transcript


class FailureLog:
    """Every failure, error or critical event logged while installed."""

    def __init__(self):
        self.events = []

    def __call__(self, event):
        if event.get("log_failure") is not None or event.get("log_level") in (
            LogLevel.error,
            LogLevel.critical,
        ):
            self.events.append(event)

    def describe(self):
        out = []
        for e in self.events:
            f = e.get("log_failure")
            out.append("%s %s" % (e.get("log_format"), f.getTraceback() if f else ""))
        return "\n".join(out)


# --- the tests ---------------------------------------------------------------------


@pytest.fixture
def served(make_runtime, service, db):
    """A listener of the real protocol class of C{service}, built by its
    C{netshare.service.make_factory}, with accounts alice (user) and root (admin)."""
    rt = make_runtime(
        db=None if db == "sqlite" else db,
        login_failure_delay=0.01,
        idle_timeout=60,
        max_file_size=65536,
        user_quota=2**20,
        flood_burst=1000,
    )
    pytest_twisted.blockon(add_account(rt, "alice", PASSWORDS["alice"]))
    pytest_twisted.blockon(add_account(rt, "root", PASSWORDS["root"], role="admin"))
    factory = make_factory(rt, service)
    return pytest_twisted.blockon(listen(rt, factory.protocol, app=factory.app))


@pytest.fixture
def failures():
    """Failures, errors and critical events logged during the test."""
    log = FailureLog()
    globalLogPublisher.addObserver(log)
    yield log
    globalLogPublisher.removeObserver(log)


#: Tests that fail because of a bug outside the tests (see the reason).
#: (service, database) -> reason, for a fuzz test that must fail until a
#: known bug is fixed (strict xfail).  None at the moment.
KNOWN_BUGS = {}


def _fuzz_test(service, db):
    """One test function per (service, database): pytest-twisted rewraps a
    hypothesis test's inner function on every call, so one function object
    must not serve several parametrized items."""

    marks = (
        [pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[(service, db)])]
        if (service, db) in KNOWN_BUGS
        else []
    )
    remote = db != "sqlite"

    @pytest.mark.parametrize("service,db", [pytest.param(service, db, id=db, marks=marks)])
    @settings(
        max_examples=40 if remote else 100,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        # Shrinking on a database server is slow; SQLite shrinks.
        phases=[Phase.explicit, Phase.generate] if remote else list(Phase),
    )
    @given(data=st.data())
    @pytest_twisted.inlineCallbacks
    def test(served, failures, service, db, data):
        user, lines = data.draw(examples(service), label="user, lines")
        yield run_example(served, service, user, lines)
        assert not failures.events, failures.describe()

    test.__name__ = "test_arbitrary_lines_on_%s" % (service,)
    test.__doc__ = (
        "Arbitrary lines before and after LOGIN on the %s port: well-formed "
        "replies or a close, never a hang, never an unexpected exception." % (service,)
    )
    return test


for _service in sorted(SERVICES):
    for _db in db_kinds():
        globals()["test_arbitrary_lines_on_%s_%s" % (_service, _db)] = _fuzz_test(_service, _db)
del _service, _db
