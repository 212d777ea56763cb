"""
What the personnel service accepts, and what each reader may see.

Pure functions raising L{netshare.errors.NetshareError}s: the service, the
protocol and the tests call them directly.

Decisions where docs/protocol.md is silent (section 4.1):

 - B{ssn}: 1-32 ASCII letters, digits and C{-}, compared exactly (case
   matters).  A malformed ssn, an unknown or over-long field, a control
   character, a missing required field: C{501} (L{BadArguments}), as
   docs/protocol.md lists 501 for ADD/UPDATE errors.
 - B{fields}: C{name} and C{surname} are required on ADD and may not be
   blank; C{job} and C{salary} default to C{""}.  C{name}/C{surname}/C{job}
   hold at most 255 characters, C{salary} 32.  Text is stored literally
   (no trimming, no normalisation); the characters L{netshare.text.UNSAFE}
   refuses everywhere (C0/C1 controls, line separators, bidi formatting)
   are refused, so that a stored field can never forge a log line or
   reorder a terminal.
 - B{salary} is text: it comes back as the same JSON string the client sent
   (C{"52000.00"} stays C{"52000.00"}); a Python number given by the operator
   shell is stored as its C{str()}.
 - B{directory view}: an account that is not an admin reads name, surname
   and job, the ssn masked, no salary (L{directory_view}).
"""

import re
from decimal import Decimal
from typing import Any

from netshare.errors import BadArguments
from netshare.storage.roster import PERSON_FIELDS, Person
from netshare.text import first_unsafe, is_username

#: Verbs only an admin may use (docs/protocol.md section 4).
ADMIN_COMMANDS = frozenset({"ADD", "UPDATE", "DELETE", "CLIENTS", "MESSAGES", "SEND", "REMOVE"})

#: The longest text each field holds (the columns' sizes).
FIELD_LIMITS = {"name": 255, "surname": 255, "job": 255, "salary": 32}
REQUIRED_ON_ADD = ("name", "surname")

#: Every database column behind an integer argument is 64-bit.
MAX_INT64 = 2**63 - 1

_SSN = re.compile(r"[A-Za-z0-9-]{1,32}\Z")
_INT = re.compile(r"-?[0-9]{1,19}")


def check_ssn(ssn: object) -> str:
    if not isinstance(ssn, str) or not _SSN.match(ssn):
        raise BadArguments("invalid ssn: 1-32 letters, digits or '-'")
    return ssn


def check_client(name: str) -> str:
    """A SEND/REMOVE target: C{*} or an account name."""
    if name == "*":
        return name
    if not is_username(name):
        raise BadArguments("invalid client name: 1-32 letters or digits, or *")
    return name


def check_target_ssn(ssn: str) -> str:
    return ssn if ssn == "*" else check_ssn(ssn)


def check_field(name: str, value: object) -> str:
    """One person field, as it will be stored."""
    if name not in FIELD_LIMITS:
        raise BadArguments("unknown field %s (allowed: %s)" % (name, ", ".join(PERSON_FIELDS)))
    numeric = isinstance(value, (int, float, Decimal)) and not isinstance(value, bool)
    if name == "salary" and numeric:
        value = str(value)
    if not isinstance(value, str):
        raise BadArguments("%s must be text" % (name,))
    if len(value) > FIELD_LIMITS[name]:
        raise BadArguments("%s too long (at most %d characters)" % (name, FIELD_LIMITS[name]))
    if first_unsafe(value) is not None:
        raise BadArguments("%s contains a control character" % (name,))
    if name in REQUIRED_ON_ADD and not value.strip():
        raise BadArguments("%s may not be empty" % (name,))
    return value


def check_fields(fields: dict[str, Any], adding: bool) -> dict[str, str]:
    """Validate ADD (C{adding}) or UPDATE fields, C{ssn} excluded."""
    if "ssn" in fields:
        raise BadArguments("ssn cannot be changed" if not adding else "ssn given twice")
    out = {k: check_field(k, v) for k, v in fields.items()}
    if adding:
        missing = [f for f in REQUIRED_ON_ADD if f not in out]
        if missing:
            raise BadArguments("missing field %s" % (missing[0],))
    elif not out:
        raise BadArguments("nothing to update")
    return out


def parse_int(value: object, what: str, minimum: int = 0) -> int:
    """An integer argument from the wire (text) or the shell (int)."""
    if isinstance(value, bool):
        raise BadArguments("%s must be an integer" % (what,))
    if isinstance(value, str):
        if not _INT.fullmatch(value.strip()):
            raise BadArguments("%s must be an integer" % (what,))
        value = int(value)
    if not isinstance(value, int):
        raise BadArguments("%s must be an integer" % (what,))
    if value < minimum:
        raise BadArguments("%s must be at least %d" % (what, minimum))
    if value > MAX_INT64:
        raise BadArguments("%s out of range" % (what,))
    return value


def check_search_text(text: str) -> str:
    """LIST's search text: any characters a field may hold (a control
    character could match nothing, and PostgreSQL text cannot hold NUL)."""
    if len(text) > max(FIELD_LIMITS.values()):
        raise BadArguments("search text too long")
    if first_unsafe(text) is not None:
        raise BadArguments("search text contains a control character")
    return text


def mask_ssn(ssn: str) -> str:
    """The last four characters of an ssn, the rest replaced by C{*}
    (C{123-45-6789} -> C{*******6789}); an ssn of four characters or fewer
    is all C{*}: its last four would be all of it."""
    if len(ssn) <= 4:
        return "*" * len(ssn)
    return "*" * (len(ssn) - 4) + ssn[-4:]


def directory_view(person: Person) -> dict[str, Any]:
    """What a non-admin account reads of a person (docs/protocol.md
    section 4): name, surname and job, the ssn masked, no salary."""
    out: dict[str, Any] = person.to_wire()
    out["ssn"] = mask_ssn(person.ssn)
    out["salary"] = None
    return out


def full_view(person: Person) -> dict[str, Any]:
    """What an admin, the operator shell and a sync stream get: everything."""
    return person.to_wire()
