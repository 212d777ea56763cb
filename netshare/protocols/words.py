"""
Reading a command line: shell words, options, numbers, and the form a
command is written down in (history, logs) with its secrets taken out.

Pure functions, shared by every line protocol and its handlers.
"""

import re
import shlex
from collections.abc import Iterable, Sequence

from netshare.errors import BadArguments
from netshare.text import escape_unsafe

#: Options whose value is never recorded (C{password=...} becomes C{password=***}).
SECRET_OPTIONS = ("password",)
#: How an unknown verb is recorded in history and logs (it may be a secret).
UNKNOWN = "<unknown>"
#: How much of a command sent before login is recorded (after its verb).
PRELOGIN_RECORDED = 48

_QUOTING = re.compile(r"[\"'\\]")
_WORD = re.compile(r"[^ \t\r\n]+")
#: A word made of unquoted runs and double-quoted sections (no backslash, no
#: single quote: see tokenize).
_DQ_WORD = re.compile(r'(?:[^ \t\r\n"]+|"[^"]*")+')
_OPTION_LIKE = re.compile(r"[a-z][a-z0-9_]*=.*", re.S)


def tokenize(text: str) -> list[str]:
    """
    Split a command line into POSIX shell words (C{shlex.split}).

    Most lines have no quote and no backslash; for them shlex's result is
    exactly the runs of non-whitespace (shlex splits only on space, tab, CR
    and LF), at a fraction of shlex's cost on the hot path of every command.
    Lines whose only quoting is balanced double quotes have a fast path too.
    @raise ValueError: unbalanced quotes or a trailing backslash.
    """
    if _QUOTING.search(text) is None:
        return _WORD.findall(text)
    if "'" not in text and "\\" not in text and text.count('"') % 2 == 0:
        # Only balanced double quotes (every TWEET "..."): a word is a run of
        # unquoted pieces and quoted sections, the quotes removed -- what
        # shlex gives, at a tenth of its cost.
        return [w.replace('"', "") for w in _DQ_WORD.findall(text)]
    return shlex.split(text, posix=True)


def split_options(
    words: Iterable[str],
    allowed: Sequence[str] = (),
    positional: tuple[int, int | None] = (0, None),
) -> tuple[list[str], dict[str, str]]:
    """
    Separate C{key=value} options from positional words.

    Only keys in C{allowed} are options (so a tweet "a=b" stays a word).
    @param positional: the least and most positional words (None: no limit).
    @return: (positional list, {key: value})
    @raise BadArguments: unknown or repeated option, wrong count.
    """
    args: list[str] = []
    opts: dict[str, str] = {}
    for w in words:
        key, sep, value = w.partition("=")
        if sep and key in allowed:
            if key in opts:
                raise BadArguments("option %s given twice" % (key,))
            opts[key] = value
        else:
            args.append(w)
    lo, hi = positional
    if hi is not None and len(args) > hi and allowed:
        extra = args[hi]
        if _OPTION_LIKE.fullmatch(extra):
            raise BadArguments(
                "unknown option %s (allowed: %s)" % (extra.partition("=")[0], ", ".join(allowed))
            )
    if len(args) < lo or (hi is not None and len(args) > hi):
        if hi == lo:
            raise BadArguments("expected %d argument%s" % (lo, "" if lo == 1 else "s"))
        raise BadArguments("wrong number of arguments")
    return args, opts


def yes_no(value: str, name: str) -> bool:
    """A C{yes}/C{no} option (also C{true}/C{false}, C{1}/C{0});
    BadArguments (501) otherwise."""
    v = value.lower()
    if v in ("yes", "true", "1"):
        return True
    if v in ("no", "false", "0"):
        return False
    raise BadArguments("%s must be yes or no" % (name,))


def parse_int(text: str, name: str, lo: int = 0, hi: int | None = None) -> int:
    """An integer option within [lo, hi]; BadArguments (501) otherwise."""
    try:
        v = int(text, 10)
    except (TypeError, ValueError):
        raise BadArguments("%s must be a whole number" % (name,)) from None
    if v < lo or (hi is not None and v > hi):
        raise BadArguments("%s out of range" % (name,))
    return v


def bounded(recorded: str) -> str:
    """A command sent before login as it is recorded: its verb and a short
    prefix of the rest (the line may be 4 KiB of anything)."""
    verb, _, rest = recorded.partition(" ")
    if len(rest) <= PRELOGIN_RECORDED:
        return recorded
    return "%s %s..." % (verb, rest[:PRELOGIN_RECORDED])


def redact(verb: str, words: Sequence[str]) -> str:
    """
    The command as recorded in history and logs: no password anywhere.

    C{LOGIN}, C{REGISTER} and C{TOKEN} are recorded without any argument here: a user
    name may be a password typed in the wrong place (C{LOGIN <password>},
    swapped arguments), so their handlers record the name only once it is
    known to be an account's (L{CommandProtocol.recordAs}).  Elsewhere a
    C{password=} option is masked.
    """
    if verb in ("LOGIN", "REGISTER", "TOKEN"):
        return verb + " ***" if words else verb
    out = []
    for w in words:
        key, sep, _ = w.partition("=")
        if sep and key.lower() in SECRET_OPTIONS:
            out.append(key + "=***")
        else:
            out.append(shlex.quote(w))
    return escape_unsafe(" ".join([verb] + out))
