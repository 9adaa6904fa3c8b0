"""Widgets of the chat UI; each owns the Textual messages it sends."""

from p2pchat.ui.widgets.composer import Composer
from p2pchat.ui.widgets.conversation import (
    ChatLine,
    ConversationItem,
    ConversationView,
    DaySeparator,
    MessageItem,
)
from p2pchat.ui.widgets.error_line import ErrorLine
from p2pchat.ui.widgets.sidebar import ContactEntry, ContactList, NearbyEntry, RequestEntry
from p2pchat.ui.widgets.status import StatusBar, StatusInfo
from p2pchat.ui.widgets.transfers import PreparingCard, ProgressBoard, TransferCard

__all__ = [
    "ChatLine",
    "Composer",
    "ContactEntry",
    "ContactList",
    "ConversationItem",
    "ConversationView",
    "DaySeparator",
    "ErrorLine",
    "MessageItem",
    "NearbyEntry",
    "PreparingCard",
    "ProgressBoard",
    "RequestEntry",
    "StatusBar",
    "StatusInfo",
    "TransferCard",
]
