"""The contact side of the main screen: the list, requests, nearby peers and what is done
to a contact (add, accept, rename, mute, remove, block, verify).

It owns what the list shows and what other parts ask about contacts: display
names, muted contacts, key-mismatch warnings, and per contact how the session
runs and why messages wait (for the conversation header).  The list itself
(``widgets/sidebar.py``) only draws entries and posts what the user picked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING

from p2pchat.core.events import (
    AwaitingAcceptance,
    BlockChanged,
    ContactAdded,
    ContactChanged,
    ContactRemoved,
    ContactRequestReceived,
    NearbyPeerFound,
    NearbyPeerLost,
    NodeEvent,
    NodeStarted,
    NodeStopped,
    PeerKeyMismatch,
    PeerOffline,
    PeerOnline,
)
from p2pchat.node import ContactView, NodeError
from p2pchat.store import ContactRequest, StoreError
from p2pchat.ui.format import short_id
from p2pchat.ui.safe import shown_name
from p2pchat.ui.screens.contacts import AddContactScreen, RequestScreen
from p2pchat.ui.screens.main.chat import message_time
from p2pchat.ui.screens.main.commands import Handler
from p2pchat.ui.screens.verify import VerifyScreen
from p2pchat.ui.widgets import ContactEntry, ContactList, NearbyEntry, RequestEntry
from p2pchat.ui.widgets.sidebar import CONTACT, REQUEST, path_words

if TYPE_CHECKING:
    from p2pchat.ui.screens.main.screen import MainScreen

PaletteCommand = tuple[str, str, Callable[[], object]]


class ContactController:
    def __init__(self, screen: MainScreen) -> None:
        self.screen = screen
        self.names: dict[str, str] = {}
        self.warnings: dict[str, str] = {}
        self.muted: set[str] = set()
        # How the session with each contact runs (" · LAN · 3 ms"), and why our
        # messages to a contact wait although it may be online (not accepted yet, or
        # its node deferred them): both for the conversation header.
        self.paths: dict[str, str] = {}
        self.waiting: dict[str, str] = {}
        self._mismatches_seen: set[tuple[str, str]] = set()
        self._dirty = False

    @property
    def contact_list(self) -> ContactList:
        return self.screen.contact_list

    def name_of(self, peer_id: str) -> str:
        return self.names.get(peer_id) or short_id(peer_id)

    # -------------------------------------------------------------- list
    def refresh(self) -> list[ContactEntry]:
        """Re-read contacts, requests and nearby peers; the list keeps its cursor."""
        self._dirty = False
        screen = self.screen
        if not screen.live:
            return []
        node = screen.node
        views = node.contacts()
        entries = [self._entry(view) for view in views]
        entries.sort(key=lambda e: (-(e.last_activity or 0.0), e.name.casefold()))
        self.names = {view.peer_id: shown_name(view.name, short_id(view.peer_id)) for view in views}
        paths = {
            view.peer_id: path_words(view.path or view.route, view.rtt_ms, view.via)
            for view in views
        }
        current = screen.current or ""
        header_changed = paths.get(current) != self.paths.get(current)
        self.paths = paths
        self.muted = {view.peer_id for view in views if view.muted}
        reasons = {view.peer_id: _waiting(view) for view in views}
        waiting = {peer: why for peer, why in reasons.items() if why}
        if waiting != self.waiting:
            self.waiting = waiting
            header_changed = True
        if header_changed:
            screen.chat.refresh_header()
        screen.chat.note_unread({view.peer_id for view in views if view.unread})
        for view in views:
            # The notice counts what the list counts, so the two never disagree.
            screen.notices.set_count(f"msg:{view.peer_id}", view.unread)
        requests = [RequestEntry(r.peer_id, r.name, r.preview) for r in node.requests()]
        nearby = [
            NearbyEntry(p.peer_id, p.name, p.source, p.verified)
            for p in node.nearby()
            if not p.is_contact
        ]
        self.contact_list.show(
            entries, requests, nearby, now=screen.clock(), current=screen.current
        )
        screen.update_status(sum(e.online for e in entries), len(entries))
        return entries

    def _entry(self, view: ContactView) -> ContactEntry:
        node = self.screen.node
        last = node.history(view.peer_id, limit=1)
        activity = message_time(last[-1]) if last else view.last_seen
        return ContactEntry(
            peer_id=view.peer_id,
            name=view.name,
            verified=view.verified,
            online=node.is_online(view.peer_id),
            unread=view.unread,
            last_activity=activity,
            warning=view.peer_id in self.warnings,
            muted=view.muted,
            blocked=view.blocked,
            route=view.path or view.route,
            rtt_ms=view.rtt_ms,
            last_seen=view.last_seen,
        )

    def schedule(self) -> None:
        """Many events arrive in bursts (a reconnect replays the outbox): redraw once."""
        self._dirty = True

    def flush(self) -> None:
        if self._dirty:
            self.refresh()

    def highlighted(self, peer_id: str) -> None:
        """The list's cursor is on a contact: open it, unless the cursor moved on since."""
        highlighted = self.contact_list.highlighted_option
        if highlighted is not None and highlighted.id != CONTACT + peer_id:
            # Stale: the cursor moved on (a list refresh re-highlights the old row, and
            # the palette or a notification may open another conversation meanwhile).
            return
        self.screen.open_conversation(peer_id)

    def step(self, delta: int) -> None:
        peer = self.contact_list.step_contact(delta, self.screen.current)
        if peer is not None:
            self.screen.open_conversation(peer)

    # ---------------------------------------------------------- dialogs
    def show_request(self, peer_id: str) -> None:
        screen = self.screen
        request = next((r for r in screen.node.requests() if r.peer_id == peer_id), None)
        if request is None:
            self.schedule()
            return

        def answered(choice: str | None) -> None:
            self.refresh()
            if choice == "accept":
                screen.open_conversation(peer_id)

        screen.app.push_screen(RequestScreen(screen.node, request, tz=screen.tz), answered)

    def nearby_selected(self, peer_id: str) -> None:
        for peer in self.screen.node.nearby():
            if peer.peer_id == peer_id:
                self.add_contact(peer.peer_id, peer.name or "")
                return

    def add_contact(self, ref: str = "", name: str = "") -> None:
        screen = self.screen

        def added(peer_id: str | None) -> None:
            if peer_id:
                self.refresh()
                screen.open_conversation(peer_id)

        screen.app.push_screen(AddContactScreen(screen.node, ref=ref, name=name), added)

    def verify(self) -> None:
        screen = self.screen
        if screen.current is None:
            screen.notify("Open a conversation to verify that contact", severity="warning")
            return
        contact = screen.node.find_contact(screen.current)

        def done(_: bool | None) -> None:
            self.refresh()
            screen.chat.refresh_header()

        screen.app.push_screen(VerifyScreen(screen.node, contact), done)

    # ---------------------------------------------------------- commands
    def commands(self) -> dict[str, Handler]:
        return {
            "add": self._cmd_add,
            "accept": self._cmd_accept,
            "decline": self._cmd_decline,
            "verify": lambda args: self.verify(),
            "nick": self._cmd_nick,
            "rename": self._cmd_rename,
            "invite": lambda args: self.add_contact(),
            "mute": lambda args: self._set_muted(True),
            "unmute": lambda args: self._set_muted(False),
            "remove": self._cmd_remove,
            "block": self._cmd_block,
            "unblock": self._cmd_unblock,
        }

    def _cmd_add(self, args: str) -> None:
        ref, _, name = args.partition(" ")
        contact = self.screen.node.add_contact(ref, name=name.strip() or None)
        self.screen.notify(f"Added {contact.name}", timeout=3, markup=False)
        self.refresh()
        self.screen.open_conversation(contact.peer_id)

    def _cmd_accept(self, args: str) -> None:
        ref = args or self._pick_request().peer_id
        contact = self.screen.node.accept_request(ref)
        self.screen.notify(f"{contact.name} is now a contact", timeout=3, markup=False)
        self.refresh()
        self.screen.open_conversation(contact.peer_id)

    def _cmd_decline(self, args: str) -> None:
        ref = args or self._pick_request().peer_id
        self.screen.node.decline_request(ref)
        self.screen.notify("Request declined", timeout=3)
        self.refresh()

    def _pick_request(self) -> ContactRequest:
        """The highlighted request, else the only one; the node resolves typed names."""
        requests = self.screen.node.requests()
        highlighted = self.contact_list.highlighted_option
        option_id = highlighted.id if highlighted is not None else None
        if option_id and option_id.startswith(REQUEST):
            for request in requests:
                if request.peer_id == option_id[len(REQUEST) :]:
                    return request
        if len(requests) == 1:
            return requests[0]
        if not requests:
            raise NodeError("no pending contact requests")
        raise NodeError("several requests are pending: name one (/accept NAME) or select it")

    def _cmd_nick(self, args: str) -> None:
        screen = self.screen
        name = screen.node.set_name(args)
        screen.notify(f"You are now {name} (contacts see it when they next connect)", markup=False)
        self.refresh()
        if screen.current is not None:
            screen.open_conversation(screen.current, reload=True)

    def _cmd_rename(self, args: str) -> None:
        screen = self.screen
        contact = screen.node.rename_contact(screen.need_current(), args)
        screen.notify(f"Renamed to {contact.name}", timeout=3, markup=False)
        self.refresh()
        screen.open_conversation(contact.peer_id, reload=True)

    def _set_muted(self, muted: bool) -> None:
        screen = self.screen
        peer = screen.need_current()
        contact = screen.node.set_muted(peer, muted)
        screen.notices.drop(f"msg:{peer}")
        state = "muted: no notifications" if muted else "notifications on again"
        screen.notify(f"{shown_name(contact.name)} {state}", timeout=3)
        self.refresh()

    def _cmd_remove(self, args: str) -> None:
        screen = self.screen
        peer = screen.need_current()
        contact = screen.node.remove_contact(peer)
        screen.notify(
            f"Removed {shown_name(contact.name)}; the history stays. /block stops them "
            "from asking again.",
            timeout=6,
        )
        self.gone(peer)

    def _cmd_block(self, args: str) -> None:
        screen = self.screen
        ref = args or screen.need_current()
        entry = screen.node.block(ref)
        who = shown_name(entry.name, short_id(entry.peer_id))
        screen.notify(f"Blocked {who}: no sessions, no requests. /unblock {who} undoes it.")
        self.gone(entry.peer_id, keep=True)

    def _cmd_unblock(self, args: str) -> None:
        entry = self.screen.node.unblock(args)
        who = shown_name(entry.name, short_id(entry.peer_id))
        self.screen.notify(f"Unblocked {who}", timeout=3)
        self.refresh()

    def gone(self, peer: str, *, keep: bool = False) -> None:
        """After a remove or block: the list again, and another conversation if it was open."""
        screen = self.screen
        screen.notices.drop_where(lambda n: n.target in (f"peer:{peer}", f"request:{peer}"))
        contacts = self.refresh()
        if peer == screen.current and not any(c.peer_id == peer for c in contacts):
            others = [c.peer_id for c in contacts if c.peer_id != peer]
            if others:
                screen.open_conversation(others[0])
            else:
                screen.show_welcome()
        elif peer == screen.current and keep:
            screen.chat.refresh_header()

    # ------------------------------------------------------------ events
    def on_event(self, event: NodeEvent) -> None:
        """Node events about contacts, requests, presence and nearby peers."""
        screen = self.screen
        if isinstance(event, (AwaitingAcceptance, PeerOnline, PeerOffline, ContactChanged)):
            self.schedule()
            if event.peer_id == screen.current:
                screen.chat.refresh_header()
        elif isinstance(event, ContactAdded):
            self.schedule()
            if event.peer_id == screen.current:
                screen.chat.refresh_header()
            elif screen.current is None:
                screen.open_conversation(event.peer_id)
        elif isinstance(event, (ContactRemoved, BlockChanged)):
            if event.peer_id == screen.current:
                self.gone(event.peer_id, keep=True)
            else:
                self.schedule()
        elif isinstance(event, ContactRequestReceived):
            who = shown_name(event.name, short_id(event.peer_id))
            screen.alerts.notice(
                f"req:{event.peer_id}",
                "Contact request",
                f"{who} wants to add you. Click here, or select the request in the list.",
                severity="warning",
                timeout=20,
                target=f"request:{event.peer_id}",
            )
            self.schedule()
        elif isinstance(event, PeerKeyMismatch):
            self._key_mismatch(event)
        elif isinstance(event, (NearbyPeerFound, NearbyPeerLost, NodeStarted, NodeStopped)):
            self.schedule()

    def _key_mismatch(self, event: PeerKeyMismatch) -> None:
        screen = self.screen
        name = self.name_of(event.peer_id)
        text = (
            f"⚠ {event.address} answered with a different key than {name}'s. Someone may be "
            f"impersonating {name} (or the address now belongs to someone else). Nothing was "
            f"sent there; messages wait until the real {name} is reached."
        )
        self.warnings[event.peer_id] = text
        key = (event.peer_id, event.address)
        if key not in self._mismatches_seen:
            self._mismatches_seen.add(key)
            screen.alerts.notice(
                f"mismatch:{event.peer_id}",
                "Key mismatch",
                text,
                severity="error",
                timeout=30,
                target=f"peer:{event.peer_id}",
            )
        if event.peer_id == screen.current:
            screen.conversation.set_banner(text)
        self.schedule()

    # ----------------------------------------------------------- palette
    def palette_for_current(self, peer: str) -> Iterator[PaletteCommand]:
        """Palette entries about the open contact."""
        screen = self.screen
        name = self.names.get(peer, "this contact")
        run = screen.commands.runner
        yield f"Verify {name}", "Compare safety numbers", self.verify
        yield from screen.transfers.palette_for_current(name)
        muted = peer in self.muted
        yield (
            f"{'Unmute' if muted else 'Mute'} {name}",
            "Notifications for this contact (/mute, /unmute)",
            run("unmute" if muted else "mute"),
        )
        yield f"Remove {name}", "History stays; they may ask again (/remove)", run("remove")
        yield f"Block {name}", "No sessions, no requests, no lookups (/block)", run("block")

    def palette_others(self) -> Iterator[PaletteCommand]:
        """Palette entries to open any conversation, answer requests, unblock."""
        screen = self.screen
        for peer, name in sorted(self.names.items(), key=lambda item: item[1].casefold()):
            yield (
                f"Open conversation: {name}",
                short_id(peer, 12),
                partial(screen.open_conversation, peer),
            )
        for request in screen.node.requests():
            label = request.name or short_id(request.peer_id)
            yield (
                f"Answer request: {label}",
                "Accept or decline",
                partial(self.show_request, request.peer_id),
            )
        try:
            blocked = screen.node.blocked()
        except (NodeError, StoreError):
            blocked = []
        for entry in blocked:
            label = shown_name(entry.name, short_id(entry.peer_id))
            yield (
                f"Unblock {label}",
                "Take them off the block list (/unblock)",
                screen.commands.runner("unblock", entry.peer_id),
            )


def _waiting(view: ContactView) -> str:
    """What holds our messages to ``view`` back, in words ("" when nothing does)."""
    if view.awaiting_acceptance:
        return "they have not accepted you yet: messages wait"
    if view.deferred:
        return f"their node holds our messages back: {view.deferred}"
    return ""
