"""
What ttweet accepts: user names, messages and hashtag strings.

Pure functions raising L{netshare.errors.NetshareError}s with the reply
texts of docs/protocol.md section 3, so the hub, the protocol and the tests
share one copy of every rule.

Decisions where the contract is silent (docs/protocol.md section 3.1):
 - A whitespace-only message is C{501 message format illegal}, like an empty
   one; so is a message holding control characters (Unicode category Cc) or
   line/paragraph separators (Zl, Zp), which would let a tweet forge lines in
   C{LAST}, or lone surrogates (not encodable as UTF-8): the characters
   L{netshare.text.UNSAFE} refuses everywhere.
 - Length is counted in Unicode code points: an emoji is 1, a combining
   mark is 1 more.  An empty message is 501 even though "0 characters" is
   also a length problem: emptiness is a format error in the assignment.
 - Tags are case-sensitive (C{#cs} and C{#CS} differ); only the exact
   C{#ALL} is special, C{#all} is an ordinary tag.  A tag repeated inside
   one tweet (C{#a#a}) is allowed; it is still delivered once.
 - C{GETTWEETS <user>}: a name that is not even a well-formed username is
   C{553 username has wrong format} (never echoed).
 - C{UNSUBSCRIBE} of a malformed tag is C{553 hashtag illegal format}.
"""

import re

from netshare.errors import BadArguments, LimitExceeded, NameNotAllowed
from netshare.text import first_unsafe, is_username

#: The subscription that receives every tweet; it may not be tweeted to.
ALL = "#ALL"
MAX_MESSAGE = 150
MAX_TAGS = 5
MAX_SUBSCRIPTIONS = 3
MAX_TAG_STRING = MAX_TAGS * 15  # "#" + 14 per unit

_UNIT_RE = re.compile(r"[A-Za-z0-9]{1,14}")
_TAG_RE = re.compile(r"#[A-Za-z0-9]{1,14}")

_USER_FORMAT = "username has wrong format"
_MESSAGE_LENGTH = "message length illegal"
_MESSAGE_FORMAT = "message format illegal"
_HASHTAG_FORMAT = "hashtag illegal format"
SUBSCRIPTION_REFUSED = "operation failed: sub %s failed, already exists or exceeds 3 limitation"


def check_username(name: str | None) -> str:
    """A user name (L{netshare.text.USERNAME}), else 553."""
    if name is None or not is_username(name):
        raise NameNotAllowed(_USER_FORMAT)
    return name


def check_message(text: str) -> str:
    """
    1-150 Unicode code points, not blank, no control characters.

    The cheap checks run first so a 4 KiB line is refused without scanning
    its characters one by one.
    """
    if not isinstance(text, str) or not text:
        raise BadArguments(_MESSAGE_FORMAT)
    if len(text) > MAX_MESSAGE:
        raise LimitExceeded(_MESSAGE_LENGTH)
    if text.isspace():
        raise BadArguments(_MESSAGE_FORMAT)
    if not text.isprintable() and first_unsafe(text) is not None:
        # (isprintable() is False for spaces other than " " too: it is only
        # the cheap test that nothing needs a closer look.)
        raise BadArguments(_MESSAGE_FORMAT)
    return text


def parse_hashtags(s: str | None) -> tuple[str, ...]:
    """
    C{"#cs#3251"} -> C{("#cs", "#3251")}; C{""} (or None) -> no tags.

    1-5 units, each C{#} + 1-14 ASCII letters/digits, written together;
    C{#ALL} may not be tweeted to.
    """
    if not s:
        return ()
    if not isinstance(s, str) or len(s) > MAX_TAG_STRING or s[0] != "#":
        raise NameNotAllowed(_HASHTAG_FORMAT)
    units = s[1:].split("#")
    if len(units) > MAX_TAGS:
        raise NameNotAllowed(_HASHTAG_FORMAT)
    tags = []
    for unit in units:
        if _UNIT_RE.fullmatch(unit) is None or unit == "ALL":
            raise NameNotAllowed(_HASHTAG_FORMAT)
        tags.append("#" + unit)
    return tuple(tags)


def check_subscription_tag(tag: str) -> str:
    """One unit (C{#ALL} allowed); returns it unchanged."""
    if not isinstance(tag, str) or _TAG_RE.fullmatch(tag) is None:
        raise NameNotAllowed(_HASHTAG_FORMAT)
    return tag
