"""Pure helpers that turn node data into what the screen shows.

Kept free of Textual so the rules (tick symbols, day boundaries, how typing
notifications are throttled) can be unit-tested without running an app, and
so a time zone and a clock can be injected: snapshot tests need the same
output on every machine.  The file drop rules live beside it in ``files.py``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from p2pchat.core.events import MessageState
from p2pchat.identity import key_fingerprint, key_from_peer_id

Clock = Callable[[], float]

STATE_RANK: dict[MessageState, int] = {"queued": 0, "sent": 1, "delivered": 2, "read": 3}
TICKS: dict[MessageState, str] = {"queued": "…", "sent": "✓", "delivered": "✓✓", "read": "✓✓"}
STATE_LABELS: dict[MessageState, str] = {
    "queued": "queued",
    "sent": "sent",
    "delivered": "delivered",
    "read": "read",
}


def advance_state(current: MessageState, new: MessageState) -> MessageState:
    """States move forward (events can arrive after a fresher read of the store), with
    one exception: "sent" back to "queued", which the node reports when the session a
    message went out on died before the contact acknowledged it (it waits in the
    outbox again, and the tick must not claim otherwise)."""
    if current == "sent" and new == "queued":
        return new
    return new if STATE_RANK[new] > STATE_RANK[current] else current


def human_size(size: float) -> str:
    """Binary units, exactly as the CLI prints them (``12.4 MiB``), so both agree."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def short_id(peer_id: str, length: int = 8) -> str:
    return peer_id[:length]


def fingerprint_of(peer_id: str) -> str:
    """The contact's key fingerprint, exactly as their own screen prints it."""
    return key_fingerprint(key_from_peer_id(peer_id))


def local_datetime(ts: float, tz: dt.tzinfo | None) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, tz) if tz is not None else dt.datetime.fromtimestamp(ts)


def clock_time(ts: float, tz: dt.tzinfo | None) -> str:
    return local_datetime(ts, tz).strftime("%H:%M")


def full_time(ts: float, tz: dt.tzinfo | None) -> str:
    """A message's date and time in full, with the zone: ``Mon 30 Nov 2026, 14:03:22 UTC``."""
    when = local_datetime(ts, tz)
    if tz is None:
        when = when.astimezone()
    zone = when.tzname() or when.strftime("%z")
    return f"{when.strftime('%a')} {when.day} {when.strftime('%b %Y, %H:%M:%S')} {zone}"


def day_of(ts: float, tz: dt.tzinfo | None) -> dt.date:
    return local_datetime(ts, tz).date()


def day_label(day: dt.date, today: dt.date) -> str:
    """Readable day separators: recent days by name, older ones by date."""
    delta = (today - day).days
    if delta == 0:
        return "Today"
    if delta == 1:
        return "Yesterday"
    if 1 < delta < 7:
        return day.strftime("%A")
    if day.year == today.year:
        return f"{day.strftime('%a')} {day.day} {day.strftime('%B')}"
    return f"{day.day} {day.strftime('%B %Y')}"


def relative_time(ts: float | None, now: float, tz: dt.tzinfo | None) -> str:
    """How long ago, coarse enough that the list does not need constant redraws."""
    if ts is None:
        return "never"
    seconds = max(0.0, now - ts)
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    today = day_of(now, tz)
    day = day_of(ts, tz)
    if day == today:
        return clock_time(ts, tz)
    if (today - day).days == 1:
        return "yesterday"
    if day.year == today.year:
        return f"{day.day} {day.strftime('%b')}"
    return f"{day.day} {day.strftime('%b %Y')}"


def safety_rows(number: str, per_row: int = 4) -> list[str]:
    """Lay the 12 groups out in rows that are easy to read aloud one row at a time."""
    groups = number.split()
    return [" ".join(groups[i : i + per_row]) for i in range(0, len(groups), per_row)]


def fingerprint_rows(fingerprint: str, per_row: int = 4) -> list[str]:
    return safety_rows(fingerprint, per_row)


@dataclass(slots=True)
class InputHistory:
    """Up/Down recall of what was sent, like a shell, keeping the unsent draft."""

    limit: int = 200
    entries: list[str] = field(default_factory=list)
    _index: int | None = None
    _draft: str = ""

    @property
    def browsing(self) -> bool:
        return self._index is not None

    def add(self, text: str) -> None:
        entries = self.entries
        if text and (not entries or entries[-1] != text):
            entries.append(text)
            del entries[: max(0, len(entries) - self.limit)]
        self.reset()

    def reset(self) -> None:
        self._index = None
        self._draft = ""

    def previous(self, current: str) -> str | None:
        entries = self.entries
        if not entries:
            return None
        if self._index is None:
            self._draft = current
            self._index = len(entries) - 1
        elif self._index > 0:
            self._index -= 1
        else:
            return None
        return entries[self._index]

    def next(self) -> str | None:
        if self._index is None:
            return None
        if self._index < len(self.entries) - 1:
            self._index += 1
            return self.entries[self._index]
        draft = self._draft
        self.reset()
        return draft


TypingSignal = tuple[str, bool]


@dataclass(slots=True)
class TypingThrottle:
    """Decide when to tell a peer we type, so a fast typist costs one frame per few seconds.

    ``resend_after``: while typing continues, repeat "typing" this often so the
    peer's indicator (which expires on its own) stays up.  ``idle_after``:
    without keystrokes for this long we say "stopped".
    """

    resend_after: float = 3.0
    idle_after: float = 5.0
    peer: str | None = None
    last_sent: float = 0.0
    last_key: float = 0.0

    def keystroke(self, peer: str, now: float) -> list[TypingSignal]:
        signals: list[TypingSignal] = []
        if self.peer is not None and self.peer != peer:
            signals.append((self.peer, False))
            self.peer = None
        self.last_key = now
        if self.peer is None or now - self.last_sent >= self.resend_after:
            self.peer = peer
            self.last_sent = now
            signals.append((peer, True))
        return signals

    def tick(self, now: float) -> list[TypingSignal]:
        if self.peer is not None and now - self.last_key >= self.idle_after:
            return self.stop()
        return []

    def stop(self) -> list[TypingSignal]:
        if self.peer is None:
            return []
        peer, self.peer = self.peer, None
        return [(peer, False)]


@dataclass(slots=True)
class AlertLimiter:
    """Decide when a notice may also ring the bell or show a desktop notification.

    A contact who sends 500 messages is one event for the user: alert once for
    a subject (``key``), then stay quiet about it for ``per_key`` seconds; and
    never alert more often than every ``gap`` seconds overall.
    """

    per_key: float = 60.0
    gap: float = 3.0
    last: dict[str, float] = field(default_factory=dict)
    last_any: float | None = None

    def allow(self, key: str, now: float) -> bool:
        if self.last_any is not None and now - self.last_any < self.gap:
            return False
        previous = self.last.get(key)
        if previous is not None and now - previous < self.per_key:
            return False
        self.last[key] = now
        self.last_any = now
        if len(self.last) > 1024:  # forget the oldest subjects
            for old in sorted(self.last, key=self.last.__getitem__)[:512]:
                del self.last[old]
        return True

    def forget(self, key: str) -> None:
        """The user looked at the subject: its next news may alert again."""
        self.last.pop(key, None)
