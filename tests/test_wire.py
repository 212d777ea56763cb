"""netshare.wire: the timestamps every reply and push carries."""

import datetime
import random

from netshare.wire import iso_ms


def _reference(ms):
    dt = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(
        milliseconds=ms
    )
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (dt.microsecond // 1000)


def test_iso_ms_matches_datetime_everywhere():
    rng = random.Random(14)
    values = [0, 1, 999, 1000, -1, -1000, 1_764_493_200_123, 253_402_300_799_999]
    values += [rng.randrange(-(10**11), 253_402_300_799_999) for _ in range(2000)]
    for ms in values:
        assert iso_ms(ms) == _reference(ms), ms
    assert iso_ms(1_764_493_200_123) == "2025-11-30T09:00:00.123Z"


def test_iso_ms_within_one_second_and_across_its_edges():
    """Milliseconds of the same second reuse the second's text; the next
    second, the previous one and a jump back all render afresh."""
    base = 1_764_493_200_000
    sequence = [base + 5, base + 999, base + 1000, base + 999, base, base - 1, base + 86_400_000]
    for ms in sequence + [base + i for i in range(0, 3000, 7)]:
        assert iso_ms(ms) == _reference(ms), ms


def test_dumps_is_compact_utf8_and_escapes_line_separators():
    from netshare.wire import dumps

    assert dumps({"a": [1, "é"], "b": None}) == '{"a":[1,"é"],"b":null}'
    assert dumps("x\u2028y\u2029z\n") == '"x\\u2028y\\u2029z\\n"'
