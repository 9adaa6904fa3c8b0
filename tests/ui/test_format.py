"""The pure rules behind the UI: ticks, times, typing throttle, history, commands, paths."""

from __future__ import annotations

import datetime as dt

import pytest

from p2pchat.identity import Identity
from p2pchat.ui.commands import CommandError, message_text, parse_command
from p2pchat.ui.format import (
    InputHistory,
    TypingThrottle,
    advance_state,
    day_label,
    fingerprint_of,
    relative_time,
    safety_rows,
)
from p2pchat.ui.safe import clean, one_line

UTC = dt.UTC
NOW = dt.datetime(2025, 3, 14, 15, 30, tzinfo=UTC).timestamp()


def test_states_only_move_forward() -> None:
    assert advance_state("sent", "queued") == "queued"  # the session died before the ack
    assert advance_state("delivered", "queued") == "delivered"
    assert advance_state("queued", "delivered") == "delivered"
    assert advance_state("read", "delivered") == "read"


def test_peer_text_cannot_drive_the_terminal() -> None:
    hostile = "hi\x1b[2J\x07 \u202eevil\u202c\r\nnext\tline"
    assert clean(hostile, multiline=True) == "hi␛[2J␇ evil\nnext    line"
    assert one_line("a\n\nb  c", 80) == "a b c"
    assert one_line("x" * 10, 5) == "xxxx…"


def test_fingerprint_matches_the_identity_module() -> None:
    identity = Identity.generate()
    assert fingerprint_of(identity.peer_id) == identity.fingerprint


def test_day_labels_and_relative_times() -> None:
    today = dt.date(2025, 3, 14)
    assert day_label(today, today) == "Today"
    assert day_label(dt.date(2025, 3, 13), today) == "Yesterday"
    assert day_label(dt.date(2025, 3, 10), today) == "Monday"
    assert day_label(dt.date(2025, 1, 2), today) == "Thu 2 January"
    assert day_label(dt.date(2024, 12, 31), today) == "31 December 2024"
    assert relative_time(None, NOW, UTC) == "never"
    assert relative_time(NOW - 30, NOW, UTC) == "just now"
    assert relative_time(NOW - 600, NOW, UTC) == "10 min ago"
    assert relative_time(NOW - 5 * 3600, NOW, UTC) == "10:30"
    assert relative_time(NOW - 86400, NOW, UTC) == "yesterday"
    assert relative_time(NOW - 30 * 86400, NOW, UTC) == "12 Feb"


def test_safety_rows_keep_every_group() -> None:
    number = " ".join(f"{i:05d}" for i in range(12))
    assert safety_rows(number, 4) == [
        "00000 00001 00002 00003",
        "00004 00005 00006 00007",
        "00008 00009 00010 00011",
    ]


def test_typing_throttle() -> None:
    throttle = TypingThrottle(resend_after=3, idle_after=5)
    assert throttle.keystroke("bob", 0.0) == [("bob", True)]
    assert throttle.keystroke("bob", 1.0) == []
    assert throttle.keystroke("bob", 3.5) == [("bob", True)]
    assert throttle.tick(6.0) == []
    assert throttle.tick(8.6) == [("bob", False)]
    assert throttle.tick(20.0) == []
    assert throttle.keystroke("bob", 21.0) == [("bob", True)]
    assert throttle.keystroke("carol", 21.5) == [("bob", False), ("carol", True)]
    assert throttle.stop() == [("carol", False)]
    assert throttle.stop() == []


def test_input_history_keeps_the_draft() -> None:
    history = InputHistory()
    assert history.previous("draft") is None
    history.add("one")
    history.add("two")
    history.add("two")
    assert history.previous("draft") == "two"
    assert history.previous("two") == "one"
    assert history.previous("one") is None
    assert history.next() == "two"
    assert history.next() == "draft"
    assert not history.browsing


def test_commands() -> None:
    assert parse_command("hello") is None
    assert parse_command("//not a command") is None
    assert message_text("//not a command") == "/not a command"
    command = parse_command("/ADD p2pchat:abc my friend")
    assert command is not None and command.name == "add" and command.args == "p2pchat:abc my friend"
    accept = parse_command("/accept")
    assert accept is not None and accept.args == ""
    with pytest.raises(CommandError, match="usage: /nick NAME"):
        parse_command("/nick")
    with pytest.raises(CommandError, match="unknown command /frob"):
        parse_command("/frob x")


def test_path_words_name_the_route_and_round_trip() -> None:
    from p2pchat.ui.widgets.sidebar import path_words

    assert path_words("lan", 2.6) == " · LAN · 3 ms"
    assert path_words("punched", None) == " · punched"
    assert path_words("relayed", 41.2) == " · relayed · 41 ms"
    assert path_words(None, None) == ""
