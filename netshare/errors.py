"""
The one error family that becomes a reply line.

Service objects and protocols raise a L{NetshareError} subclass; the base
protocol (L{netshare.protocols.line}) turns it into C{"<code> <text>"} in
exactly one place.  Anything that is not a NetshareError is a bug: it is
logged once with its traceback and answered C{451 internal error}.

Codes and their meaning are the ones of docs/protocol.md section 1.6.
"""


class NetshareError(Exception):
    """
    An error with a wire reply code.

    @ivar code: the 3-digit reply code.
    @ivar text: the reply text, sent after the code.  Never put a secret in it.
    """

    code = 451
    default_text = "temporary server error"

    def __init__(self, text=None, code=None):
        self.text = text if text is not None else self.default_text
        if code is not None:
            self.code = code
        super().__init__(self.code, self.text)

    def replyLine(self):
        return "%d %s" % (self.code, self.text)


class ClosingConnection(NetshareError):
    """421: the server closes this connection after the reply."""

    code = 421
    default_text = "closing connection"


class RateLimited(NetshareError):
    code = 429
    default_text = "rate limited; try later"


class TemporaryError(NetshareError):
    """451: try later (database unreachable, overload)."""

    code = 451
    default_text = "temporary server error; try later"


class DatabaseUnavailable(TemporaryError):
    default_text = "database unavailable; try later"


class OutcomeUnknown(TemporaryError):
    """
    451: a write's COMMIT was sent, and the database did not say whether it
    committed before the call's deadline.  C{settled()} returns a Deferred
    of the write's result, or of its failure, once that is known (whoever
    owns something outside the database, such as a file's content, waits
    for it before cleaning up).
    """

    default_text = "outcome unknown: the database did not confirm; check before retrying"

    def __init__(self, text=None, code=None, settled=None):
        super().__init__(text, code)
        self.settled = settled


class InsufficientStorage(NetshareError):
    code = 452
    default_text = "insufficient storage"


class SyntaxError_(NetshareError):
    """500: unknown command, line too long, bad quoting, bad UTF-8."""

    code = 500
    default_text = "syntax error"


class BadArguments(NetshareError):
    code = 501
    default_text = "bad arguments"


class BadSequence(NetshareError):
    code = 503
    default_text = "bad sequence of commands"


class LoginRequired(NetshareError):
    code = 530
    default_text = "login required"


class PermissionDenied(NetshareError):
    code = 531
    default_text = "permission denied"


class BadCredentials(NetshareError):
    """
    535.  C{account}: the name of the existing account the attempt was
    about, or None when no account has that name.  What was typed as a name
    is recorded in history and logs only when it is an account's name: a
    password typed in the wrong place (C{LOGIN <password>}, swapped
    arguments, the manhole's C{Username:} prompt) is never written down.
    """

    code = 535
    default_text = "bad credentials"

    def __init__(self, text=None, code=None, account=None):
        super().__init__(text, code)
        self.account = account


class NotFound(NetshareError):
    code = 550
    default_text = "no such item"


class LimitExceeded(NetshareError):
    code = 552
    default_text = "limit exceeded"


class NameNotAllowed(NetshareError):
    code = 553
    default_text = "name or format not allowed"


class IntegrityFailure(NetshareError):
    code = 554
    default_text = "integrity failure"


class Conflict(NetshareError):
    code = 555
    default_text = "already exists"
