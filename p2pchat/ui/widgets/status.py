"""One line at the bottom: who I am, where I listen, how many are online."""

from __future__ import annotations

from dataclasses import dataclass, replace

from textual.content import Content
from textual.widgets import Static

from p2pchat.ui.format import short_id
from p2pchat.ui.safe import one_line

NETWORK_STYLES = {
    "online": "$success",
    "starting": "$warning",
    "offline": "$text-muted",
    "read-only": "$warning",
    "error": "$error",
    "lost": "$error",
}


@dataclass(frozen=True, slots=True)
class StatusInfo:
    name: str
    peer_id: str
    addresses: tuple[str, ...]
    online: int
    contacts: int
    network: str
    detail: str = ""
    alerts: str = ""
    """What else tells the user about news: "bell", "desktop", both, or "" (neither)."""


class StatusBar(Static):
    """Facts that change rarely; ``network`` grows richer once NAT traversal lands."""

    DEFAULT_CSS = """
    StatusBar { height: 1; padding: 0 1; background: $panel; color: $text; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, markup=False)
        self.info: StatusInfo | None = None

    def show(self, info: StatusInfo) -> None:
        if info == self.info:
            return
        self.info = info
        # Every part may carry outside text (a name from settings, an error's words).
        name = one_line(info.name, 32)
        addresses = one_line(", ".join(info.addresses), 80) or "not listening"
        network = one_line(info.network + (f": {info.detail}" if info.detail else ""), 120)
        self.update(
            Content.assemble(
                (name, "bold"),
                (f" {short_id(info.peer_id)}", "$text-muted"),
                ("  │  ", "$text-muted"),
                addresses,
                ("  │  ", "$text-muted"),
                (f"{info.online}/{info.contacts} online", ""),
                ("  │  ", "$text-muted"),
                ("net ", "$text-muted"),
                (network, NETWORK_STYLES.get(info.network, "")),
                ("  │  ", "$text-muted"),
                ("alerts ", "$text-muted"),
                (info.alerts or "off", ""),
            )
        )

    def show_state(self, network: str, detail: str) -> None:
        """Only the network part changed (the node went away, or came back)."""
        if self.info is not None:
            self.show(replace(self.info, network=network, detail=detail))
