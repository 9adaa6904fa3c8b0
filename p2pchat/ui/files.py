"""Pure helpers of the file drop UI: what a paste or ``/send`` names, what a card says.

Kept free of Textual (like ``format.py``) so the rules can be unit-tested
without an app: which pasted text counts as dropped files, how a transfer's
progress maps onto the whole offer after a resume, how the speed is smoothed
and what the card's status line reads in every state.
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from p2pchat.store import Transfer
from p2pchat.ui.format import human_size
from p2pchat.ui.safe import one_line

FINAL_STATES = frozenset({"done", "declined", "cancelled", "failed"})
# Bytes move (or are about to) in these states: the card shows a progress bar.
MOVING_STATES = frozenset({"accepted", "sending", "receiving"})
# A pasted text longer than this is a message, whatever it contains.
MAX_PASTE = 16_384
# The speed shown is smoothed over about this many seconds.
RATE_TAU = 2.0
OPEN_HINT = "press o to open folder"


# ------------------------------------------------------------------ parsing
def _path_from_token(token: str) -> Path | None:
    """An existing absolute file or folder named by one token of a paste, else None."""
    if token.startswith("file://"):
        parsed = urlparse(token)
        if parsed.netloc not in ("", "localhost"):
            return None
        token = unquote(parsed.path)
    try:
        path = Path(token).expanduser()
        if path.is_absolute() and (path.is_file() or path.is_dir()):
            return path
    except (OSError, ValueError):
        return None
    return None


def pasted_paths(text: str) -> list[Path]:
    """The files and folders a paste names, or ``[]`` when it is text to insert.

    Terminals paste a dropped file as its path: bare, quoted, with
    backslash-escaped spaces or as a ``file://`` URL, several of them separated
    by spaces or newlines.  The paste counts as dropped files only if *every*
    word of it names an existing absolute path, so prose that happens to
    contain a path stays prose.  A bare path with unescaped spaces (some
    terminals paste it so) is tried as a whole when the word split fails.
    """
    candidate = text.strip()
    if not candidate or len(candidate) > MAX_PASTE:
        return []
    try:
        tokens = shlex.split(candidate)
    except ValueError:
        tokens = []
    paths = [_path_from_token(token) for token in tokens]
    if tokens and all(p is not None for p in paths):
        return _unique([p for p in paths if p is not None])
    if "\n" not in candidate:
        whole = candidate
        if len(whole) >= 2 and whole[0] == whole[-1] and whole[0] in "'\"":
            whole = whole[1:-1]
        single = _path_from_token(whole)
        if single is not None:
            return [single]
    return []


def _unique(paths: Iterable[Path]) -> list[Path]:
    seen: set[Path] = set()
    out: list[Path] = []
    for path in paths:
        if path not in seen:
            seen.add(path)
            out.append(path)
    return out


def send_paths(args: str, cwd: Path | None = None) -> list[Path]:
    """The paths of ``/send PATH [PATH...]``: shell quoting, ``~``, relative to ``cwd``.

    Raises ``ValueError`` with a message for the user when a path does not
    exist or the quoting is broken.
    """
    try:
        words = shlex.split(args)
    except ValueError as exc:
        raise ValueError(f"cannot read the paths: {exc} (quote paths that contain spaces)") from exc
    if not words:
        raise ValueError("usage: /send PATH [PATH...]")
    base = cwd if cwd is not None else Path.cwd()
    paths: list[Path] = []
    for word in words:
        path = Path(word).expanduser()
        if not path.is_absolute():
            path = base / path
        if not path.exists():
            raise ValueError(f"{word}: no such file or folder")
        paths.append(path)
    return _unique(paths)


def describe_paths(paths: Sequence[Path]) -> str:
    """``report.pdf``, ``photos/`` or ``2 files and 1 folder``: what a question names."""
    if len(paths) == 1:
        path = paths[0]
        return f"{path.name}/" if path.is_dir() else path.name
    folders = sum(1 for p in paths if p.is_dir())
    files = len(paths) - folders
    parts = []
    if files:
        parts.append(f"{files} file{'s' if files != 1 else ''}")
    if folders:
        parts.append(f"{folders} folder{'s' if folders != 1 else ''}")
    return " and ".join(parts)


# --------------------------------------------------------------- transfers
@dataclass(frozen=True, slots=True)
class TransferInfo:
    """A transfer as a card shows it: the store's row plus the bytes done so far."""

    transfer_id: str
    peer_id: str
    direction: str
    state: str
    files: tuple[tuple[str, int], ...]
    total: int
    done: int
    created_at: float
    error: str | None = None
    folder: str | None = None
    saved: tuple[str, ...] = ()

    @property
    def incoming(self) -> bool:
        return self.direction == "in"

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def moving(self) -> bool:
        return self.state in MOVING_STATES

    @property
    def awaiting_answer(self) -> bool:
        """An incoming offer that waits for us to accept or decline."""
        return self.incoming and self.state == "pending"

    @property
    def cancellable(self) -> bool:
        return not self.finished and not self.awaiting_answer

    @property
    def title(self) -> str:
        return transfer_title(self.files)

    @classmethod
    def from_transfer(cls, t: Transfer, progress: tuple[int, int] | None = None) -> TransferInfo:
        """``progress`` is ``node.transfers.progress(id)``: the running attempt, if any."""
        accepted = [f for f in t.files if f.accepted]
        total = sum(f.size for f in accepted)
        if t.state == "done":
            done = total
        elif progress is not None:
            done = overall_done(total, *progress)
        elif t.state in MOVING_STATES or t.state in ("paused", "cancelled", "failed"):
            done = _stored_progress(t, total)
        else:
            done = 0
        saved = tuple(f.final for f in accepted if f.done and f.final)
        return cls(
            transfer_id=t.id,
            peer_id=t.peer_id,
            direction=t.direction,
            state=t.state,
            files=tuple((f.path, f.size) for f in t.files),
            total=total,
            done=done,
            created_at=t.created_at,
            error=t.error,
            folder=t.folder,
            saved=saved,
        )


def _stored_progress(t: Transfer, total: int) -> int:
    """Bytes done when no attempt runs: finished files, plus the receiver's ``.part`` sizes
    (every byte in them was authenticated); the sender only knows what it pushed."""
    if t.direction == "out":
        return min(t.bytes_moved, total)
    done = 0
    for f in t.files:
        if not f.accepted:
            continue
        if f.done:
            done += f.size
        elif f.part:
            try:
                done += min(os.stat(f.part).st_size, f.size)
            except OSError:
                continue
    return min(done, total)


def overall_done(total: int, attempt_done: int, attempt_total: int) -> int:
    """An attempt after a resume moves only what was missing: count what came before it."""
    before = max(0, total - attempt_total)
    return max(0, min(total, before + attempt_done))


def transfer_title(files: Sequence[tuple[str, int]]) -> str:
    """``report.pdf``, ``photos/ (24 files)`` or ``a.txt and 2 more``."""
    if not files:
        return "nothing"
    names = [one_line(path, 200) for path, _ in files]
    if len(names) == 1:
        return names[0]
    roots = {name.split("/", 1)[0] for name in names}
    if len(roots) == 1 and all("/" in name for name in names):
        return f"{roots.pop()}/ ({len(names)} files)"
    return f"{names[0]} and {len(names) - 1} more"


@dataclass(slots=True)
class RateMeter:
    """Smooths the node's per-interval speeds so the number does not flicker.

    An exponential moving average whose weight follows the time between
    samples (``tau`` seconds to forget): bursty event timing does not bias it.
    The first sample is taken as it is.
    """

    tau: float = RATE_TAU
    rate: float | None = None
    at: float = 0.0

    def update(self, sample: float, now: float) -> float:
        sample = max(0.0, sample)
        if self.rate is None:
            self.rate = sample
        else:
            weight = 1.0 - math.exp(-max(0.0, now - self.at) / self.tau)
            self.rate += weight * (sample - self.rate)
        self.at = now
        return self.rate


def human_rate(rate: float) -> str:
    return f"{human_size(int(rate))}/s"


def human_duration(seconds: float) -> str:
    seconds = max(0, math.ceil(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def eta(remaining: int, rate: float | None) -> str | None:
    """Time left at the smoothed speed; None while the speed says nothing yet."""
    if rate is None or rate < 1.0 or remaining <= 0:
        return None
    return f"{human_duration(remaining / rate)} left"


def progress_text(info: TransferInfo, rate: float | None) -> str:
    """``31.5 MB / 48.2 MB · 12.4 MB/s · 2 s left``."""
    parts = [f"{human_size(info.done)} / {human_size(info.total)}"]
    if rate is not None and info.state in ("sending", "receiving"):
        parts.append(human_rate(rate))
        left = eta(info.total - info.done, rate)
        if left:
            parts.append(left)
    return " · ".join(parts)


def status_text(
    info: TransferInfo, peer: str, rate: float | None = None, stalled_for: float | None = None
) -> str:
    """The card's status line for every state, from this side's point of view.

    ``stalled_for``: seconds since bytes last moved, once that is long enough to
    say so (the other side vanished, or the link broke): no speed or time left
    is claimed then.
    """
    state = info.state
    if stalled_for is not None and info.moving:
        done = f"{human_size(info.done)} / {human_size(info.total)}"
        return f"stalled · nothing moved for {human_duration(stalled_for)} · {done}"
    if state == "pending":
        return "waiting for your answer" if info.incoming else f"waiting for {peer}"
    if state == "offered":
        return f"waiting for {peer} to accept"
    if state == "accepted":
        return "starting… · " + progress_text(info, rate)
    if state in ("sending", "receiving"):
        return f"{state} · " + progress_text(info, rate)
    if state == "paused":
        done = f"{human_size(info.done)} / {human_size(info.total)}"
        reason = _reason(info.error, ("paused",))
        return f"paused{reason} · {done} · resumes when {peer} is back"
    if state == "done":
        if info.incoming:
            where = display_folder(info.folder) if info.folder else "the downloads folder"
            return f"✓ done · saved to {where}{_renamed(info)} — {OPEN_HINT}"
        return f"✓ done · {peer} has it"
    if state == "declined":
        who = "you" if info.incoming else peer
        reason = _reason(info.error, ("declined",))
        return f"declined by {who}{reason}"
    if state == "cancelled":
        reason = _reason(info.error, ("cancelled",))
        return f"cancelled{reason}"
    if state == "failed":
        return f"✗ failed: {one_line(info.error or 'unknown error', 160)}"
    return state


def _renamed(info: TransferInfo) -> str:
    """Files saved under another name (a file of that name was there): say which."""
    offered = {Path(path).name for path, _ in info.files}
    renamed = [Path(saved).name for saved in info.saved if Path(saved).name not in offered]
    if not renamed:
        return ""
    if len(renamed) == 1:
        return f" as {one_line(renamed[0], 60)} (the name was taken)"
    return f" · {len(renamed)} renamed, like {one_line(renamed[0], 60)}"


def _reason(error: str | None, boring: tuple[str, ...]) -> str:
    if not error or error in boring:
        return ""
    return f": {one_line(error, 120)}"


def display_folder(folder: str) -> str:
    """The home folder as ``~``, the way people read paths in a terminal."""
    home = str(Path.home())
    if home not in ("", "/") and (folder == home or folder.startswith(home + os.sep)):
        return "~" + folder[len(home) :]
    return folder


# Kinds of file that run code when "opened" on some desktop (a launcher, a script,
# a program): a received file of these kinds is shown in its folder instead.
RUNS_CODE = frozenset(
    ".desktop .sh .bash .zsh .csh .ksh .fish .command .tool .run .bin .appimage .deb .rpm "
    ".exe .com .bat .cmd .msi .scr .ps1 .vbs .vbe .js .jse .wsf .wsh .hta .lnk .jar .py "
    ".pyw .pl .rb .php .app .pkg .dmg .apk .reg .cpl .inf .scf .url .webloc".split()
)


def runs_code(path: Path) -> bool:
    """Opening this file could run a program (by its kind, or its executable bit)."""
    if any(suffix.lower() in RUNS_CODE for suffix in path.suffixes[-2:]):
        return True
    try:
        return path.is_file() and bool(path.stat().st_mode & 0o111)
    except OSError:
        return False


def opener_argv(folder: str) -> list[str] | None:
    """The command that opens ``folder`` (or a file, or a web link) with the desktop's
    program for it (the file manager, a viewer, the browser), if there is one.

    On Linux ``xdg-open`` needs a graphical session: without one it may start a
    text browser on the very terminal the app is drawing on.  (``/usr/bin/open``
    on Linux is ``openvt``, so ``open`` is used on macOS only.)
    """
    if sys.platform == "darwin":
        tool = shutil.which("open")
        return [tool, folder] if tool else None
    if sys.platform.startswith("win"):
        return None
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return None
    tool = shutil.which("xdg-open")
    return [tool, folder] if tool else None


@dataclass(frozen=True, slots=True)
class Measure:
    """How much a set of paths holds, counted up to a limit (a home folder can be huge)."""

    files: int
    size: int
    complete: bool

    def describe(self) -> str:
        more = "" if self.complete else "more than "
        noun = "file" if self.files == 1 else "files"
        return f"{more}{self.files:,} {noun}, {more}{human_size(self.size)}"


def measure(paths: Sequence[Path], limit: int = 20_000) -> Measure:
    """Files and bytes under ``paths`` (hidden entries included, links not followed);
    stops counting after ``limit`` files.  Blocking: run it in a thread."""
    files = size = 0
    stack = list(paths)
    while stack:
        path = stack.pop()
        try:
            if path.is_symlink():
                continue
            if path.is_dir():
                stack.extend(path.iterdir())
                continue
            size += path.stat().st_size
        except OSError:
            continue
        files += 1
        if files >= limit:
            return Measure(files, size, complete=False)
    return Measure(files, size, complete=True)
