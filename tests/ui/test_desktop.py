"""Desktop notifications go through the desktop's own tool, with the text as data."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from p2pchat.ui.desktop import _quote, notifier_command, notify_desktop


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS uses osascript")
async def test_notify_send_gets_title_and_body_as_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = tmp_path / "args"
    tool = tmp_path / "notify-send"
    tool.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\n')
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert await notify_desktop("bob", "hi; $(rm -rf ~) `x` <b>\x1b[2J")
    assert record.read_text().splitlines() == [
        "--app-name=p2pchat",
        "--",
        "bob",
        "hi; $(rm -rf ~) `x` &lt;b&gt;␛[2J",
    ]


def test_no_tool_no_notification(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert notifier_command("a", "b") is None


def test_applescript_quoting() -> None:
    assert _quote('say "hi" \\ bye') == '"say \\"hi\\" \\\\ bye"'
