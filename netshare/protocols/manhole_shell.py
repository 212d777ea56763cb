"""
The admin's shell: a Python REPL in the running server whose every
statement is recorded (docs/protocol.md section 5).

Whoever has this shell runs arbitrary Python with the database, the TLS
keys and every connection within reach, so what they do is kept: every
statement is one request-history entry (service C{manhole}, under the
admin's name and account id, with the client's address) and one command log
event, with passwords redacted (L{RecordedManhole}, L{redact_command}).

The shell is the same for both ways in (L{netshare.protocols.manhole_telnet},
L{netshare.protocols.manhole_ssh}): L{shell_protocol} builds it, with a
fresh namespace of operator helpers per session (L{netshare.admin.namespace}):
nothing one operator defines leaks into another's session.
"""

import io
import time
import tokenize
from collections.abc import Callable
from typing import Any

from twisted.conch.insults import insults
from twisted.conch.manhole import ColoredManhole, ManholeInterpreter
from twisted.logger import Logger

from netshare.admin import SECRET_HELPERS, AdminRuntime, namespace
from netshare.deferreds import deferred
from netshare.logs import CommandLog
from netshare.services.accounts import Account
from netshare.services.history import HistoryRecorder
from netshare.text import escape_unsafe
from netshare.wire import now_ms

#: The service name of the manhole's history entries and log events.
SERVICE = "manhole"
#: A recorded statement is cut to this many characters (then a marker).
MAX_COMMAND = 1000

#: Keyword names whose value is masked wherever they appear (C{f(password=x)},
#: C{password = x}).
SECRET_KEYWORDS = frozenset({"password"})
REDACTED = "***"
UNTOKENIZABLE = "<untokenizable line>"

#: A replacement: (row, col) start, (row, col) end, the text put there.
_Edit = tuple[tuple[int, int], tuple[int, int], str]

_OPEN, _CLOSE = frozenset("([{"), frozenset(")]}")
_SKIPPED = frozenset({tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT})
# Python 3.12 splits f-strings into tokens (3.14 t-strings too): one
# literal runs from a *_START to its matching *_END.
_LITERAL_STARTS = {
    getattr(tokenize, start): getattr(tokenize, end)
    for start, end in (("FSTRING_START", "FSTRING_END"), ("TSTRING_START", "TSTRING_END"))
    if hasattr(tokenize, start)
}


def redact_command(source: str) -> str:
    """
    A statement typed in the shell as it may be recorded and shown: the
    text as typed, except that
     - inside a call to a helper taking a password (L{SECRET_HELPERS}:
       C{account_add(name, password, ...)}, C{account_passwd(name,
       password)}) every string literal after the first argument becomes
       C{'***'} (all of them when the arguments are unpacked, C{*args}),
       however deeply nested;
     - the value of any C{password=...} (a keyword argument, or an
       assignment) becomes C{***}, up to the next C{,}, C{;}, closing
       bracket or end of statement;
     - source that Python's C{tokenize} cannot split cleanly (an unclosed
       string or bracket, a stray character) becomes L{UNTOKENIZABLE}: it
       might hold anything.
    Lexical, so best effort: a password bound to a name on an earlier line
    (C{pw = "..."}) or passed through an alias of a helper is not seen.
    Pure: no I/O.
    """
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError, ValueError):  # IndentationError is a SyntaxError
        return UNTOKENIZABLE
    if any(t.type == tokenize.ERRORTOKEN for t in tokens):
        return UNTOKENIZABLE  # e.g. an unterminated '...' on Python 3.11
    edits: list[_Edit] = []
    # per open bracket: [call to a secret helper, argument index, unpacked]
    frames: list[list[Any]] = []
    prev = None  # the previous significant token
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        kind, text = tok.type, tok.string
        if kind == tokenize.OP and text in _OPEN:
            secret = (
                text == "("
                and prev is not None
                and prev.type == tokenize.NAME
                and prev.string in SECRET_HELPERS
            )
            frames.append([secret, 0, False])
        elif kind == tokenize.OP and text in _CLOSE:
            if frames:
                frames.pop()
        elif kind == tokenize.OP and text == "," and frames:
            frames[-1][1] += 1
        elif (
            kind == tokenize.OP
            and text in ("*", "**")
            and frames
            and frames[-1][0]
            and prev is not None
            and prev.string in ("(", ",")
        ):
            frames[-1][2] = True
        elif kind == tokenize.NAME and text in SECRET_KEYWORDS:
            j = _next_significant(tokens, i + 1)
            if j < len(tokens) and tokens[j].type == tokenize.OP and tokens[j].string == "=":
                start = _next_significant(tokens, j + 1)
                end = _value_end(tokens, start)
                if start < end:
                    edits.append((tokens[start].start, tokens[end - 1].end, REDACTED))
                    prev, i = tokens[end - 1], end
                    continue
        elif kind == tokenize.STRING or kind in _LITERAL_STARTS:
            last = _literal_end(tokens, i)
            if any(secret and (arg >= 1 or unpacked) for secret, arg, unpacked in frames):
                edits.append((tok.start, tokens[last].end, "'%s'" % (REDACTED,)))
            prev, i = tokens[last], last + 1
            continue
        if kind not in _SKIPPED:
            prev = tok
        i += 1
    return _apply(source, edits)


def _next_significant(tokens: list[tokenize.TokenInfo], i: int) -> int:
    while i < len(tokens) and tokens[i].type in _SKIPPED:
        i += 1
    return i


def _literal_end(tokens: list[tokenize.TokenInfo], i: int) -> int:
    """The index of the last token of the string literal starting at C{i}."""
    end = _LITERAL_STARTS.get(tokens[i].type)
    if end is None:
        return i
    depth = 0
    for k in range(i, len(tokens)):
        if tokens[k].type == tokens[i].type:
            depth += 1
        elif tokens[k].type == end:
            depth -= 1
            if depth == 0:
                return k
    return len(tokens) - 1


def _value_end(tokens: list[tokenize.TokenInfo], i: int) -> int:
    """The index just past the expression starting at C{i}: the first C{,}
    or C{;}, bracket closing an enclosing one, or end of statement outside
    brackets opened within it."""
    depth = 0
    for k in range(i, len(tokens)):
        kind, text = tokens[k].type, tokens[k].string
        if kind == tokenize.OP and text in _OPEN:
            depth += 1
        elif kind == tokenize.OP and text in _CLOSE:
            if depth == 0:
                return k
            depth -= 1
        elif depth == 0 and (
            kind in (tokenize.NEWLINE, tokenize.ENDMARKER)
            or (kind == tokenize.OP and text in (",", ";"))
        ):
            return k
    return len(tokens)


def _apply(source: str, edits: list[_Edit]) -> str:
    """C{source} with each (start, end) span, in tokenize's (row, col)
    coordinates, replaced."""
    if not edits:
        return source
    starts, offset = [0, 0], 0  # rows count from 1
    for line in io.StringIO(source):
        offset += len(line)
        starts.append(offset)
    out, done = [], 0
    for (srow, scol), (erow, ecol), replacement in sorted(edits):
        a, b = starts[srow] + scol, starts[erow] + ecol
        out += [source[done:a], replacement]
        done = b
    out.append(source[done:])
    return "".join(out)


def command_text(source: str) -> str:
    """What the history holds for a statement: redacted, control characters
    escaped, cut to L{MAX_COMMAND} characters with a marker."""
    text = escape_unsafe(redact_command(source))
    if len(text) > MAX_COMMAND:
        text = "%s... [cut: %d characters]" % (text[:MAX_COMMAND], len(text))
    return text


#: History codes for a statement: ran, did not compile, raised.
RAN, SYNTAX_ERROR, RAISED = 200, 500, 451


class RecordingInterpreter(ManholeInterpreter):
    """
    The manhole's interpreter, telling C{done(source, code)} the outcome of
    every complete statement it was handed.

    The outcome comes from the hooks L{code.InteractiveInterpreter} calls
    for exactly these cases: C{showsyntaxerror} when the source does not
    compile, C{showtraceback} when running it raised; neither means it ran.
    A statement still incomplete (C{runsource} answers "more") is not done
    yet: it is reported, whole, once its last line arrives.
    """

    def __init__(
        self,
        handler: ColoredManhole,
        locals: dict[str, object] | None,
        done: Callable[[str, int], None],
    ):
        super().__init__(handler, locals)
        self._done = done
        self._outcome = RAN

    def runsource(self, source: str, filename: str = "<input>", symbol: str = "single") -> bool:
        self._outcome = RAN
        try:
            more = super().runsource(source, filename, symbol)
        except BaseException:  # SystemExit: runcode lets it through
            self._done(source, RAISED)
            raise
        if not more:
            self._done(source, self._outcome)
        return more

    def showsyntaxerror(self, *args: Any, **kwargs: Any) -> None:
        self._outcome = SYNTAX_ERROR
        return super().showsyntaxerror(*args, **kwargs)

    def showtraceback(self, *args: Any, **kwargs: Any) -> None:
        self._outcome = RAISED
        return super().showtraceback(*args, **kwargs)


class RecordedManhole(ColoredManhole):
    """
    The admin shell (telnet and SSH): a L{ColoredManhole} whose every
    statement is one request-history entry and one command log event.

    Entries: service C{manhole}, the admin's name and account id, the
    client's C{host:port}, the statement as L{command_text} renders it, and
    C{200} (ran), C{500} (a syntax error) or C{451} (raised).  Blank lines
    are not recorded; a multi-line statement is one entry, recorded when it
    is complete (one abandoned with ^C never ran and is not recorded).  The
    code is the statement's own: a Deferred it returned that fails later is
    shown in the shell but does not change the entry.

    @param history: the L{netshare.services.history.HistoryRecorder}.
    @param log: the per-command log (C{runtime.commandLog}), or None.
    """

    fallbackLog = Logger()

    def __init__(
        self,
        namespace: dict[str, object],
        *,
        history: HistoryRecorder,
        user: str,
        account_id: int | None,
        peer: str,
        log: CommandLog | None = None,
    ):
        super().__init__(namespace)
        self.history = history
        self.user = user
        self.account_id = account_id
        self.peer = peer
        self.commandLog = log
        self._started = (now_ms(), time.monotonic())  # of the line being run

    def connectionMade(self) -> None:
        super().connectionMade()
        self.interpreter = RecordingInterpreter(self, self.namespace, self.statementDone)

    def lineReceived(self, line: bytes) -> None:
        self._started = (now_ms(), time.monotonic())
        super().lineReceived(line)

    def statementDone(self, source: str, code: int) -> None:
        if not source.strip():
            return
        ts_ms, started = self._started
        self.history.record(
            ts_ms,
            SERVICE,
            self.user,
            self.peer,
            command_text(source.rstrip("\n")),
            code,
            self.account_id,
        )
        # The statement itself stays out of the log: the history holds it.
        duration = round((time.monotonic() - started) * 1000.0, 3)
        if self.commandLog is not None:
            self.commandLog.command(SERVICE, self.user, self.peer, "python", code, duration, 0)
        else:
            self.fallbackLog.info(
                "{verb} -> {code}",
                service=SERVICE,
                user=self.user,
                peer=self.peer,
                verb="python",
                code=code,
                duration_ms=duration,
                bytes=0,
            )


def peer_text(address: object) -> str:
    """C{host:port} of a peer (an SSH address is unwrapped first)."""
    address = getattr(address, "address", address)  # SSHTransportAddress
    return "%s:%s" % (getattr(address, "host", "?"), getattr(address, "port", "?"))


def shell_protocol(
    runtime: AdminRuntime, user: str, account_id: int | None, peer: str
) -> insults.ServerProtocol:
    """The terminal protocol of one admin session."""
    return insults.ServerProtocol(
        RecordedManhole,
        namespace(runtime, user),
        history=runtime.history,
        user=user,
        account_id=account_id,
        peer=peer,
        log=runtime.commandLog,
    )


@deferred
async def admin_account(runtime: AdminRuntime, user: str, log: Logger) -> Account | None:
    """The account of an admin who just logged in (None if it cannot be
    read: the shell is given all the same, its history entries without an
    account id)."""
    try:
        return await runtime.accounts.store.get(user)
    except Exception as e:
        log.warn("manhole: cannot look up {user}: {error}", user=user, error=str(e))
        return None
