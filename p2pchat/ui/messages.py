"""Messages that cross the UI as a whole rather than belonging to one widget."""

from __future__ import annotations

from textual.message import Message

from p2pchat.core.events import NodeEvent


class NodeEventArrived(Message):
    """One event from ``Node.events()``, delivered on the UI's message queue.

    Going through the queue (instead of calling the screen from the event
    pump) keeps node events in order with key presses and lets any screen
    that cares handle them with an ordinary ``on_node_event_arrived``.
    """

    def __init__(self, event: NodeEvent) -> None:
        super().__init__()
        self.event = event
