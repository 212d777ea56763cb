"""
The text rules every entry point shares: which characters are never stored
or shown as they are, and what a user name is.

One rule, so the services cannot drift apart (a personnel field once
accepted U+061C ARABIC LETTER MARK while file names and tweets refused it).
The files, ttweet and personnel services and the account system all check
with L{first_unsafe} and L{is_username}; history and logs escape with
L{escape_unsafe}; C{tests/test_text.py} runs the same characters through
every one of them.
"""

import re

#: Characters never stored or shown as they are, as one character class:
#:  - C0 and C1 controls and DEL (Unicode category Cc): NUL, CR, LF, ESC...
#:    would end, forge or recolour lines on a terminal, and PostgreSQL text
#:    cannot hold NUL;
#:  - U+2028 LINE SEPARATOR and U+2029 PARAGRAPH SEPARATOR (Zl, Zp), which
#:    some readers treat as line breaks;
#:  - the bidirectional formatting characters (U+061C, U+200E, U+200F,
#:    U+202A-U+202E, U+2066-U+2069): they reorder how text is displayed
#:    (C{"txt.exe"} shown as C{"exe.txt"}), so a listing could lie;
#:  - lone surrogates (Cs), which are not UTF-8.
#: Other format characters stay allowed: ZERO WIDTH JOINER builds emoji
#: sequences and tag characters build subdivision flags.
UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)

#: A user name: 1-32 ASCII letters or digits (C{str.isalnum} would admit any
#: script, and names must look the same to every operator).
USERNAME = re.compile(r"[A-Za-z0-9]{1,32}")
USERNAME_RULE = "1-32 ASCII letters or digits"


def first_unsafe(text: str) -> str | None:
    """The first character of C{text} that L{UNSAFE} refuses, or None."""
    m = UNSAFE.search(text)
    return None if m is None else m.group()


def escape_unsafe(text: str) -> str:
    """C{text} with every unsafe character replaced by a visible escape
    (C{\\x00}, C{\\u202e}): how history and logs show what a client sent."""
    if UNSAFE.search(text) is None:
        return text
    return UNSAFE.sub(
        lambda m: ("\\x%02x" if ord(m.group()) < 0x100 else "\\u%04x") % ord(m.group()), text
    )


def is_username(name: object) -> bool:
    """Whether C{name} is a well-formed user name (L{USERNAME})."""
    return isinstance(name, str) and USERNAME.fullmatch(name) is not None
