"""
One rule for unsafe characters (L{netshare.text}), the same at every entry
point: a file name, a tweet, a personnel field and an account name refuse
exactly the characters the rule refuses (U+061C included, which personnel
once accepted) and accept the others.
"""

import pytest

from netshare.errors import NetshareError
from netshare.services.accounts import check_username
from netshare.services.files.names import normalize_name
from netshare.services.personnel.rules import check_field
from netshare.services.ttweet.rules import check_message
from netshare.text import escape_unsafe, first_unsafe

UNSAFE = [
    "\x00",
    "\x1b",
    "\x7f",
    "\x85",
    "\u061c",  # ARABIC LETTER MARK (the rule that had drifted)
    "\u200e",
    "\u200f",
    "\u2028",
    "\u2029",
    "\u202a",
    "\u202e",
    "\u2066",
    "\u2069",
    "\ud800",
]
SAFE = ["e", "\u00e9", "\u4e2d", "\U0001f600", "\u200d", "\u00a0", "\U000e0067"]

ENTRY_POINTS = {
    "files": normalize_name,
    "ttweet": check_message,
    "personnel": lambda text: check_field("name", text),
}


def refused(check, text):
    try:
        check(text)
    except NetshareError:
        return True
    return False


@pytest.mark.parametrize("char", UNSAFE, ids=lambda c: "U+%04X" % ord(c))
def test_every_entry_point_refuses_an_unsafe_character(char):
    text = "a" + char + "b"
    assert first_unsafe(text) == char
    for name, check in ENTRY_POINTS.items():
        assert refused(check, text), (name, char)
    assert refused(check_username, text)
    # What history and logs show of it is escaped, never the character.
    assert char not in escape_unsafe(text) and escape_unsafe(text).startswith("a\\")


@pytest.mark.parametrize("char", SAFE, ids=lambda c: "U+%04X" % ord(c))
def test_every_entry_point_accepts_a_safe_character(char):
    text = "a" + char + "b"
    assert first_unsafe(text) is None and escape_unsafe(text) == text
    for name, check in ENTRY_POINTS.items():
        assert not refused(check, text), (name, char)
    # Account names are narrower on purpose (ASCII letters and digits).
    assert refused(check_username, text) == (not char.isascii())
