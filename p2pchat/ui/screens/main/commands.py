"""Slash commands: what Enter in the message box does with text that starts with ``/``.

Parsing is ``p2pchat.ui.commands`` (the table that is also the help).  Here the
parsed command goes to the part of the main screen that owns it: each part
(contacts, conversation, transfers, the screen itself) hands over a mapping of
command name to handler, and every command of the table must have exactly one
owner, checked when the screen is built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from p2pchat.core.group.errors import GroupError
from p2pchat.node import NodeError
from p2pchat.remote import OwnerUnavailable
from p2pchat.store import StoreError
from p2pchat.ui.commands import COMMANDS, CommandError, SlashCommand, message_text, parse_command
from p2pchat.ui.widgets import Composer

if TYPE_CHECKING:
    from p2pchat.ui.screens.main.screen import MainScreen

Handler = Callable[[str], None]


class CommandDispatcher:
    def __init__(self, screen: MainScreen, *owners: Mapping[str, Handler]) -> None:
        self.screen = screen
        self.handlers: dict[str, Handler] = {}
        for owner in owners:
            for name, handler in owner.items():
                if name in self.handlers:
                    raise ValueError(f"/{name} has two owners")
                self.handlers[name] = handler
        missing = {spec.name for spec in COMMANDS} - self.handlers.keys()
        if missing:
            raise ValueError(f"commands without a handler: {sorted(missing)}")

    def submitted(self, composer: Composer, text: str) -> None:
        """Enter in the message box: a command runs, anything else is a message."""
        try:
            command = parse_command(text)
        except CommandError as exc:
            # Keep what was typed: it may be a message that starts with "/" (send it
            # with "//"), or a command with a typo to fix.
            composer.load_text(text)
            composer.move_cursor(composer.document.end)
            self.screen.notify(f"{exc} (the text is still in the box)", severity="warning")
            return
        if command is not None:
            self.run(command)
        elif self.screen.groups.is_open:
            self.screen.groups.send_text(message_text(text), restore=composer)
        else:
            self.screen.chat.submit(message_text(text), composer)

    def run(self, command: SlashCommand) -> None:
        # A few commands mean something else while a group is open (/invite, /remove).
        handler = self.screen.groups.in_group(command.name) or self.handlers[command.name]
        try:
            handler(command.args)
        except OwnerUnavailable:
            raise  # the screen's guard tells the app (screens/guard.py)
        except (ValueError, NodeError, StoreError, GroupError) as exc:
            self.screen.notify(str(exc), severity="error", markup=False)

    def runner(self, name: str, args: str = "") -> Callable[[], None]:
        """The command as a palette entry's callback."""
        return lambda: self.run(SlashCommand(name, args))
