"""The file drop UI's rules, without an app: pastes, /send, progress, speed, wording."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pchat.store import Store, Transfer
from p2pchat.ui import files
from p2pchat.ui.files import (
    RateMeter,
    TransferInfo,
    describe_paths,
    eta,
    overall_done,
    pasted_paths,
    send_paths,
    status_text,
    transfer_title,
)
from p2pchat.ui.links import find_links

HASH = bytes(32)


@pytest.fixture
def drop(tmp_path: Path) -> tuple[Path, Path, Path]:
    photo = tmp_path / "holiday photo.jpg"
    photo.write_bytes(b"jpeg")
    notes = tmp_path / "notes.txt"
    notes.write_text("hi")
    folder = tmp_path / "album"
    folder.mkdir()
    return photo, notes, folder


def test_pasted_paths_in_the_forms_terminals_use(drop: tuple[Path, Path, Path]) -> None:
    photo, notes, folder = drop
    assert pasted_paths(str(photo)) == [photo]  # bare, spaces unescaped
    assert pasted_paths(f"'{photo}'") == [photo]
    assert pasted_paths(f'"{photo}" ') == [photo]
    assert pasted_paths(str(photo).replace(" ", "\\ ")) == [photo]
    assert pasted_paths(photo.as_uri()) == [photo]
    assert pasted_paths(f"{photo.as_uri()}\n{notes.as_uri()}\n") == [photo, notes]
    assert pasted_paths(f"'{photo}' {notes} {folder}") == [photo, notes, folder]
    assert pasted_paths(str(folder)) == [folder]  # folders are sent too
    assert pasted_paths(f"{notes} {notes}") == [notes]


def test_pasted_text_stays_text(drop: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, notes, _ = drop
    assert pasted_paths("just some words") == []
    assert pasted_paths(f"look at {notes}") == []  # one word is not a path: text
    assert pasted_paths(str(tmp_path / "missing.txt")) == []
    assert pasted_paths("notes.txt") == []  # relative: could be anything
    assert pasted_paths("file://otherhost/etc/passwd") == []
    assert pasted_paths("'unbalanced") == []
    assert pasted_paths("") == [] and pasted_paths("   \n") == []
    assert pasted_paths(f"{notes}\nand a second line") == []


def test_send_paths_quote_expand_and_check(
    drop: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photo, notes, folder = drop
    assert send_paths(f'"{photo}" {notes}') == [photo, notes]
    assert send_paths("notes.txt album", cwd=tmp_path) == [notes, folder]
    monkeypatch.setenv("HOME", str(tmp_path))
    assert send_paths("~/notes.txt") == [tmp_path / "notes.txt"]
    with pytest.raises(ValueError, match=r"missing\.bin: no such file"):
        send_paths(f"{notes} missing.bin", cwd=tmp_path)
    with pytest.raises(ValueError, match="quote paths"):
        send_paths('"half open')
    with pytest.raises(ValueError, match="usage"):
        send_paths("  ")


def test_describe_paths(drop: tuple[Path, Path, Path]) -> None:
    photo, notes, folder = drop
    assert describe_paths([photo]) == "holiday photo.jpg"
    assert describe_paths([folder]) == "album/"
    assert describe_paths([photo, notes]) == "2 files"
    assert describe_paths([photo, notes, folder]) == "2 files and 1 folder"


def test_transfer_titles() -> None:
    assert transfer_title([("report.pdf", 10)]) == "report.pdf"
    assert transfer_title([("album/a.jpg", 1), ("album/sub/b.jpg", 2)]) == "album/ (2 files)"
    assert transfer_title([("a.txt", 1), ("b.txt", 2), ("c.txt", 3)]) == "a.txt and 2 more"
    assert transfer_title([("a\x1b[2Jb.txt", 1)]) == "a␛[2Jb.txt"  # no escape reaches the screen


def test_progress_after_a_resume_counts_what_came_before() -> None:
    # 100 bytes offered, 60 held from an earlier attempt: this attempt moves 40.
    assert overall_done(100, 0, 40) == 60
    assert overall_done(100, 30, 40) == 90
    assert overall_done(100, 40, 40) == 100
    assert overall_done(100, 500, 40) == 100  # never past the total


def _stored(tmp_path: Path, state: str, direction: str = "in") -> Transfer:
    store = Store(tmp_path / "db.sqlite")
    try:
        store.create_transfer(
            "ab" * 16,
            "peer",
            direction=direction,
            state="pending",
            files=[("a/one.bin", 300, HASH, None), ("a/two.bin", 700, HASH, None)],
            now=1000.0,
        )
        part = tmp_path / "1.part"
        part.write_bytes(b"x" * 250)
        store.set_transfer_files(
            "ab" * 16,
            [(0, {"done": 1, "final": "/dl/a/one.bin"}), (1, {"part": str(part)})],
        )
        store.set_transfer_folder("ab" * 16, "/dl")
        store.set_transfer_state("ab" * 16, state, now=1001.0)
        t = store.get_transfer("ab" * 16)
        assert t is not None
        return t
    finally:
        store.close()


def test_info_from_the_store_and_from_a_running_attempt(tmp_path: Path) -> None:
    t = _stored(tmp_path, "receiving")
    stored = TransferInfo.from_transfer(t)
    assert stored.total == 1000 and stored.done == 300 + 250  # finished file + .part bytes
    assert stored.title == "a/ (2 files)" and stored.moving and stored.cancellable
    running = TransferInfo.from_transfer(t, (100, 700))  # this attempt: the second file
    assert running.done == 400
    done = TransferInfo.from_transfer(_stored(tmp_path / "d", "done"))
    assert done.done == done.total == 1000 and done.finished and not done.cancellable


def test_rate_meter_smooths_and_starts_with_the_first_sample() -> None:
    meter = RateMeter(tau=2.0)
    assert meter.update(10e6, now=0.0) == 10e6
    after = meter.update(20e6, now=0.25)
    assert 10e6 < after < 12e6  # a quarter second moves it about 12%
    for step in range(1, 60):
        value = meter.update(20e6, now=0.25 + step * 0.25)
    assert abs(value - 20e6) < 0.01e6


def test_eta_needs_a_speed() -> None:
    assert eta(50_000_000, None) is None
    assert eta(50_000_000, 0.0) is None
    assert eta(50_000_000, 10e6) == "5 s left"
    assert eta(600_000_000, 1e6) == "10 min 00 s left"
    assert eta(0, 10e6) is None


def _info(state: str, direction: str = "in", **kw: object) -> TransferInfo:
    fields: dict[str, object] = {
        "transfer_id": "ab" * 16,
        "peer_id": "peer",
        "direction": direction,
        "state": state,
        "files": (("report.pdf", 48_200_000),),
        "total": 48_200_000,
        "done": 31_500_000,
        "created_at": 0.0,
    }
    fields.update(kw)
    return TransferInfo(**fields)  # type: ignore[arg-type]


def test_status_lines_for_every_state() -> None:
    assert status_text(_info("pending"), "bob") == "waiting for your answer"
    assert status_text(_info("offered", "out"), "bob") == "waiting for bob to accept"
    assert (
        status_text(_info("receiving"), "bob", 12_400_000)
        == "receiving · 30.0 MiB / 46.0 MiB · 11.8 MiB/s · 2 s left"
    )
    assert status_text(_info("sending", "out"), "bob") == "sending · 30.0 MiB / 46.0 MiB"
    done = status_text(_info("done", folder="/srv/in"), "bob")
    assert done == "✓ done · saved to /srv/in — press o to open folder"
    assert status_text(_info("done", "out"), "bob") == "✓ done · bob has it"
    assert status_text(_info("declined", "out", error="declined"), "bob") == "declined by bob"
    assert status_text(_info("declined", error="timeout"), "bob") == "declined by you: timeout"
    assert status_text(_info("cancelled", error="cancelled"), "bob") == "cancelled"
    assert (
        status_text(_info("failed", error="a.bin: content hash mismatch"), "bob")
        == "✗ failed: a.bin: content hash mismatch"
    )


def test_folder_opener_needs_a_desktop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files.sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert files.opener_argv("/tmp") is None  # xdg-open could take over the terminal
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(files.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    assert files.opener_argv("/tmp") == ["/usr/bin/xdg-open", "/tmp"]
    monkeypatch.setattr(files.sys, "platform", "darwin")
    assert files.opener_argv("/tmp") == ["/usr/bin/open", "/tmp"]


def test_a_paused_transfer_says_so_without_a_speed() -> None:
    text = status_text(_info("paused", error="bob went offline"), "bob", 12_400_000)
    assert text == "paused: bob went offline · 30.0 MiB / 46.0 MiB · resumes when bob is back"


def test_files_that_run_code_are_not_opened(tmp_path: Path) -> None:
    for name in ("x.desktop", "setup.SH", "a.tar.exe", "tool.AppImage", "s.py"):
        assert files.runs_code(tmp_path / name), name
    plain = tmp_path / "photo.jpg"
    plain.write_bytes(b"x")
    assert not files.runs_code(plain) and not files.runs_code(tmp_path / "notes.tar.gz")
    plain.chmod(0o755)  # an executable bit makes any name a program
    assert files.runs_code(plain)


def test_links_are_web_links_only() -> None:
    text = (
        "see https://example.org/a_(b), and (http://x.y/z). file:///etc/passwd "
        "javascript:alert(1) https:// HTTPS://Q.com/?a=1! https://example.org/a_(b)"
    )
    assert find_links(text) == ["https://example.org/a_(b)", "http://x.y/z", "HTTPS://Q.com/?a=1"]
    assert find_links("https://a.b/\x1b[31mred") == ["https://a.b/"]
