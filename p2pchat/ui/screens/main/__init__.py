"""The main screen, split by what each part owns (see ``screen.py``)."""

from p2pchat.ui.screens.main.screen import MainScreen, Mode

__all__ = ["MainScreen", "Mode"]
