"""
L{netshare.logs.CommandLog}: one JSON line per command, buffered and
written in bulk, never lost on a clean stop.
"""

import json

from twisted.internet.task import Clock

from netshare.logs import COMMAND_FIELDS, CommandLog


def test_command_lines_are_buffered_then_written_in_one_piece():
    clock, written = Clock(), []
    log = CommandLog([written.append], clock, interval=0.2)
    log.command("files", "alice", "127.0.0.1:5", "LIST", 210, 0.25, 0)
    log.command("files", None, "127.0.0.1:6", "PING", 200, 1.5, 12)
    assert written == []  # nothing formatted or written per command
    clock.advance(0.2)
    assert len(written) == 1  # both lines, one write
    events = [json.loads(line) for line in written[0].splitlines()]
    assert [(e["verb"], e["code"], e["user"], e["bytes"]) for e in events] == [
        ("LIST", 210, "alice", 0),
        ("PING", 200, None, 12),
    ]
    assert all(set(COMMAND_FIELDS) <= set(e) and e["event"] == "command" for e in events)
    assert events[1]["duration_ms"] == 1.5 and events[0]["service"] == "files"
    clock.advance(10)
    assert len(written) == 1  # no timer runs while idle
    assert clock.getDelayedCalls() == []


def test_every_text_stays_one_valid_json_line():
    clock, written = Clock(), []
    log = CommandLog([written.append], clock)
    nasty = ['"quoted" \\ back', "line\nbreak", "sep\u2028arator", "Zo\u00eb \U0001f600", "\x00"]
    for text in nasty:
        log.command("ttweet", text, text, text, 500, 0.0, 0)
    log.stop()  # a clean stop writes what waits, at once
    lines = written[0].splitlines()
    assert len(lines) == len(nasty)
    assert [json.loads(line)["user"] for line in lines] == nasty


def test_each_writer_gets_the_same_text():
    clock, a, b = Clock(), [], []
    log = CommandLog([a.append, b.append], clock)
    log.command("personnel", "-", "p", "ADD", 201, 3.0, 0)
    log.flush()
    assert a == b and len(a) == 1
    log.flush()
    assert len(a) == 1  # nothing waiting: nothing written


def test_a_busy_log_is_written_in_slices_on_the_next_turn():
    """Past C{slice} waiting events the flush runs on the next reactor turn,
    not at the interval: no one flush formats a whole interval of a busy
    server while every connection waits."""
    clock, written = Clock(), []
    log = CommandLog([written.append], clock, interval=0.2, slice=3)
    for _ in range(2):
        log.command("files", "u", "p", "PING", 200, 0.1, 0)
    clock.advance(0)
    assert written == []  # under the slice: the interval still applies
    log.command("files", "u", "p", "PING", 200, 0.1, 0)
    clock.advance(0)
    assert len(written) == 1 and len(written[0].splitlines()) == 3
    log.command("files", "u2", "p2", "LIST", 210, 0.1, 0)
    clock.advance(0.1)
    assert len(written) == 1
    clock.advance(0.1)
    assert [json.loads(x)["user"] for x in written[1].splitlines()] == ["u2"]
    assert clock.getDelayedCalls() == []
