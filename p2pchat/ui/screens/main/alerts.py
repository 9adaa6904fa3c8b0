"""News from outside the open conversation: the notice tray, the bell, desktop notifications.

Every part of the main screen that has news (a message, a request, an offer, a
finished transfer, a key mismatch) says it here, so the rules live in one
place: one notice per subject updated in place (``NoticeTray``), and the bell
and the desktop at most once per subject a minute (``AlertLimiter``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from p2pchat.ui.desktop import notify_desktop
from p2pchat.ui.format import AlertLimiter
from p2pchat.ui.widgets.notices import Severity

if TYPE_CHECKING:
    from p2pchat.ui.screens.main.screen import MainScreen


class Alerts:
    def __init__(self, screen: MainScreen) -> None:
        self.screen = screen
        self._limiter = AlertLimiter()

    def notice(
        self,
        key: str,
        title: str,
        text: str,
        *,
        severity: Severity = "information",
        timeout: float = 8.0,
        target: str | None = None,
        alert: bool = True,
    ) -> None:
        """One notice per subject (``key``), updated in place; the first may also alert."""
        self.screen.notices.post(
            key, title, text, severity=severity, timeout=timeout, target=target
        )
        if alert:
            self.alert(key, title, text)

    def alert(self, key: str, title: str, body: str) -> None:
        """Bell and desktop notification, at most once per subject a minute (AlertLimiter)."""
        bell = self.screen.bell
        desktop = self.desktop_notifications
        if not (bell or desktop) or not self._limiter.allow(key, time.monotonic()):
            return
        if bell:
            self.screen.app.bell()
        if desktop:
            self.screen.run_worker(notify_desktop(title, body), group="desktop", exclusive=False)

    def forget(self, key: str) -> None:
        """The user looked at the subject: its next news may alert again."""
        self._limiter.forget(key)

    @property
    def desktop_notifications(self) -> bool:
        try:
            return self.screen.node.settings.get("desktop_notifications") is True
        except Exception:  # an attached view whose owner went away
            return False

    def kinds(self) -> list[str]:
        """The ways news reaches the user besides the notices: shown in the status bar."""
        return [
            kind
            for kind, on in (("bell", self.screen.bell), ("desktop", self.desktop_notifications))
            if on
        ]
