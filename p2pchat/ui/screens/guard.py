"""Screens that call the node survive losing it.

An app attached to another process's node (``RemoteNode``) can lose it at any
moment: the owner quits, crashes or is stopped.  Every node call may then raise
``OwnerUnavailable`` (``OwnerGone``, or ``OwnerNotResponding`` after a few
seconds).  Rather than wrapping each of the many calls, screens that talk to
the node handle it where Textual runs every handler: the interrupted handler
stops, and the app is told (``owner_unavailable``) so it can say so, wait for
the owner to answer again or take the node over.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

from textual.message import Message
from textual.screen import ModalScreen, Screen

from p2pchat.remote import OwnerUnavailable

ResultType = TypeVar("ResultType")


@runtime_checkable
class OwnerWatcher(Protocol):
    def owner_unavailable(self, error: OwnerUnavailable) -> None: ...


def _tell(screen: Screen[Any], error: OwnerUnavailable) -> None:
    app = screen.app
    if isinstance(app, OwnerWatcher):
        app.owner_unavailable(error)


class GuardedScreen(Screen[ResultType]):
    """A screen whose handlers may call an attached node that went away."""

    def guarded(self, callback: Callable[[], object]) -> Callable[[], None]:
        """``callback`` for a timer: timers call it directly, not through a handler."""

        def run() -> None:
            try:
                callback()
            except OwnerUnavailable as exc:
                _tell(self, exc)

        return run

    async def _on_message(self, message: Message) -> None:
        try:
            await super()._on_message(message)
        except OwnerUnavailable as exc:
            _tell(self, exc)


class GuardedModal(ModalScreen[ResultType]):
    """The same for dialogs (verify, requests, offers, transfers...)."""

    async def _on_message(self, message: Message) -> None:
        try:
            await super()._on_message(message)
        except OwnerUnavailable as exc:
            _tell(self, exc)
