"""The main screen: contact list on the left, the open conversation on the right.

This module is composition and routing: it lays the widgets out, keeps what
every part shares (the node, the open conversation, whether the node can be
called), sends node events and widget messages to the part that owns them,
and runs the periodic flush.  The parts:

- ``chat.py``: the open conversation (showing, sending, read receipts, typing);
- ``contacts.py``: the list, requests, nearby peers, contact actions;
- ``groups.py``: group rows and invitations, an open group, group actions;
- ``transfers.py``: file transfer cards, offers, progress, the F3 panel;
- ``commands.py``: slash commands, dispatched to the part that owns each;
- ``alerts.py``: notices, bell and desktop notifications.

Everything it knows comes from the ``Node`` facade: a full read when it needs
one (opening a conversation, refreshing the list) and the node's events in
between.  Node calls are short SQLite reads and writes that the node itself
also performs on this event loop; the slow work (unlocking a key, starting the
network, hashing files before an offer) happens in workers.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar, Literal

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.widgets import Footer, Static

from p2pchat.core.events import (
    MessageDeleted,
    MessageEdited,
    MessageReceived,
    MessageSent,
    MessageStateChanged,
    NodeConnectionLost,
    PeerOffline,
    TransferOffered,
    TransferProgress,
    TransferStateChanged,
    TypingChanged,
)
from p2pchat.node import Node, NodeError
from p2pchat.remote import OwnerGone, OwnerUnavailable
from p2pchat.store import StoreError
from p2pchat.ui import heap
from p2pchat.ui.format import Clock, short_id
from p2pchat.ui.messages import NodeEventArrived
from p2pchat.ui.safe import literal
from p2pchat.ui.screens.guard import GuardedScreen, OwnerWatcher
from p2pchat.ui.screens.help import HelpScreen
from p2pchat.ui.screens.main.alerts import Alerts
from p2pchat.ui.screens.main.chat import ChatController
from p2pchat.ui.screens.main.commands import CommandDispatcher, Handler
from p2pchat.ui.screens.main.contacts import ContactController
from p2pchat.ui.screens.main.groups import GROUP_EVENTS, GroupController
from p2pchat.ui.screens.main.transfers import TransferController
from p2pchat.ui.state import last_conversation, save_conversation
from p2pchat.ui.widgets import (
    Composer,
    ContactEntry,
    ContactList,
    ConversationView,
    StatusBar,
    StatusInfo,
    TransferCard,
)
from p2pchat.ui.widgets.notices import NoticeTray

Mode = Literal["online", "offline", "read-only"]
PaletteCommand = tuple[str, str, Callable[[], object]]

# Bursts of events (a reconnect replays a whole outbox) are coalesced: the list
# is redrawn and read receipts are sent at most this often.
FLUSH_INTERVAL = 0.15

CHAT_EVENTS = (
    MessageReceived,
    MessageSent,
    MessageStateChanged,
    MessageEdited,
    MessageDeleted,
    TypingChanged,
)
TRANSFER_EVENTS = (TransferOffered, TransferProgress, TransferStateChanged)


class MainScreen(GuardedScreen[None]):
    AUTO_FOCUS = "#composer"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+n", "add_contact", "Add contact", id="add_contact"),
        Binding("f2", "verify", "Verify", id="verify"),
        Binding("ctrl+o", "send_file", "Send file", id="send_file"),
        Binding("f3", "transfers", "Transfers", id="transfers"),
        Binding("alt+down", "step_contact(1)", "Next chat", id="next_contact", show=False),
        Binding("alt+up", "step_contact(-1)", "Previous chat", id="prev_contact", show=False),
        Binding("ctrl+up", "select_message", "Select a message", id="select_message", show=False),
        Binding("ctrl+end", "latest", "Jump to the latest", id="latest", show=False),
        Binding("f1", "help", "Help", id="help"),
    ]

    def __init__(
        self,
        node: Node,
        *,
        clock: Clock,
        tz: dt.tzinfo | None,
        mode: Mode,
        detail: str = "",
        bell: bool = False,
    ) -> None:
        super().__init__()
        self.node = node
        self.clock = clock
        self.tz = tz
        self.mode: Mode = mode
        self.detail = detail
        self.bell = bell
        self.current: str | None = None
        self._last_minute = 0
        self._saved_conversation: str | None = None
        self.ready = False
        self.detached = False
        self.suspended: str | None = None
        """Why the node cannot be used right now (an attached view's owner went away
        or does not answer); None while it can."""
        self.alerts = Alerts(self)
        self.contacts = ContactController(self)
        self.chat = ChatController(self)
        self.transfers = TransferController(self)
        self.groups = GroupController(self)
        self.commands = CommandDispatcher(
            self,
            self.contacts.commands(),
            self.groups.commands(),
            self.chat.commands(),
            self.transfers.commands(),
            self._commands(),
        )

    # ------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            with Vertical(id="sidebar"):
                yield ContactList(tz=self.tz, id="contacts")
            with Vertical(id="chat"):
                yield ConversationView(tz=self.tz, id="conversation")
                yield Static(id="owner-banner")
                yield Composer(id="composer")
        yield StatusBar(id="status")
        yield NoticeTray(id="notices")
        yield Footer()

    @property
    def contact_list(self) -> ContactList:
        return self.query_one("#contacts", ContactList)

    @property
    def conversation(self) -> ConversationView:
        return self.query_one("#conversation", ConversationView)

    @property
    def composer(self) -> Composer:
        return self.query_one("#composer", Composer)

    @property
    def notices(self) -> NoticeTray:
        return self.query_one("#notices", NoticeTray)

    def on_mount(self) -> None:
        contacts = self.refresh_sidebar()
        # The conversation open when the app last ran, else the most recent one.
        last = last_conversation(self.node)
        self._saved_conversation = last
        if any(c.peer_id == last for c in contacts):
            self.open_conversation(str(last))
        elif contacts:
            self.open_conversation(contacts[0].peer_id)
        else:
            self.show_welcome()
        self._update_composer()
        self.composer.intercept_paths = self.mode != "read-only"
        self.composer.focus()
        self.set_interval(1.0, self.guarded(self._tick))
        self.set_interval(FLUSH_INTERVAL, self.guarded(self._flush))
        self.watch(self.app, "app_focus", self._app_focus_changed, init=False)
        # Once the first screen is drawn, the app's long-lived objects exist.
        self.call_after_refresh(heap.settle)
        self.ready = True

    def on_unmount(self) -> None:
        heap.release()

    def on_resize(self) -> None:
        # A narrow key bar has no room for the padding between keys, nor for the
        # palette's key (F1 lists it with the others).
        footer = self.query_one(Footer)
        narrow = self.size.width < 100
        footer.compact = narrow
        footer.show_command_palette = not narrow

    def on_screen_resume(self) -> None:
        self.contacts.schedule()
        self.groups.schedule()
        self.chat.schedule_read()
        self.groups.schedule_read()

    def _app_focus_changed(self, focused: bool) -> None:
        if focused:
            self.chat.schedule_read()
            self.groups.schedule_read()

    # ------------------------------------------------------------ shared
    @property
    def live(self) -> bool:
        """The node can be called (not stopping, not lost)."""
        return not self.detached and self.suspended is None

    def in_view(self) -> bool:
        """The user can see the open conversation: our screen on top, terminal focused."""
        return self.is_current and self.app.app_focus

    def need_current(self) -> str:
        if self.current is None:
            raise NodeError("open a conversation first")
        return self.current

    def refresh_sidebar(self) -> list[ContactEntry]:
        """Re-read contacts, requests and nearby peers (the app calls this too)."""
        return self.contacts.refresh()

    def show_offer(self, transfer_id: str) -> None:
        self.transfers.show_offer(transfer_id)

    def show_request(self, peer_id: str) -> None:
        self.contacts.show_request(peer_id)

    def offer_paths(self, peer: str, paths: list[Path]) -> None:
        self.transfers.offer_paths(peer, paths)

    def _flush(self) -> None:
        """Apply what the last events asked for, at most once per interval.

        The notices come last: a message notice counts one more per event, and the
        list's refresh sets it to the unread count the store has, which an event
        still queued may already be part of; drawn after it, a card never shows
        the count one event ahead."""
        if self.live:
            self.conversation.flush_pending()
            self.contacts.flush()
            self.groups.flush()
            self.chat.flush()
            self.transfers.draw_progress()
        self.notices.flush()

    def _tick(self) -> None:
        """Once a second: typing signals expire, stalled transfers say so, times age."""
        if not self.live:
            return
        now = time.monotonic()
        self.chat.tick(now)
        self.transfers.check_stalls(now)
        minute = int(now // 60)
        if minute != self._last_minute:
            self._last_minute = minute
            self.contacts.schedule()

    def update_status(self, online: int, contacts: int) -> None:
        if self.mode == "read-only":
            network, detail = "read-only", self.detail
        elif self.node.running:
            network, detail = "online", self._network_detail()
        else:
            network, detail = ("error" if self.detail else "offline"), self.detail
        self.query_one("#status", StatusBar).show(
            StatusInfo(
                name=self.node.name,
                peer_id=self.node.peer_id,
                addresses=self.node.addresses,
                online=online,
                contacts=contacts,
                network=network,
                detail=detail,
                alerts=" + ".join(self.alerts.kinds()),
            )
        )

    def _network_detail(self) -> str:
        """LAN peers, DHT size and NAT kind, as far as the node knows them."""
        try:
            status = self.node.network_status()
        except Exception:  # an attached daemon that went away: keep the bar quiet
            return ""
        parts = []
        if status.get("mdns"):
            parts.append(f"LAN {status.get('nearby', 0)} nearby")
        dht = status.get("dht")
        if dht:
            parts.append(f"DHT {dht.get('nodes') or 0} nodes")
            if dht.get("nat"):
                parts.append(f"NAT {dht['nat']}")
        return " · ".join(parts)

    # ------------------------------------------------------ conversation
    def open_conversation(
        self, peer_id: str, *, reload: bool = False, reach: str | None = None
    ) -> None:
        if peer_id == self.current and not reload:
            return
        try:
            contact = self.node.find_contact(peer_id)
        except StoreError:
            return
        if peer_id != self.current:
            self.chat.stop_typing()
        self.groups.close()
        self.current = peer_id
        if self.mode != "read-only" and peer_id != self._saved_conversation:
            save_conversation(self.node, peer_id)
            self._saved_conversation = peer_id
        self.notices.drop(f"msg:{peer_id}")
        self.alerts.forget(f"msg:{peer_id}")
        self.chat.open(peer_id, contact, reach=reach)
        self.contact_list.select_contact(peer_id)
        self._update_composer()

    def show_welcome(self) -> None:
        self.current = None
        self.conversation.show_placeholder(
            Content.assemble(
                ("No conversation yet.\n\n", "bold"),
                "Add a contact with Ctrl+N (or type /add followed by their invite).\n",
                "The same window shows your own invite to send to a friend.\n\n",
                "F1 lists keys and commands; Ctrl+P opens the command palette.",
            )
        )

    def _update_composer(self) -> None:
        composer = self.composer
        if self.mode == "read-only":
            composer.disabled = True
            composer.placeholder = "Read-only: another p2pchat node owns this identity"
        elif self.current is None:
            composer.placeholder = "/add CODE_OR_ID to add a contact · /help"
        else:
            name = self.contacts.names.get(self.current, short_id(self.current))
            composer.placeholder = literal(
                f"Message {name} (Enter sends, Ctrl+J new line, Ctrl+O file, /help)"
            )

    # ------------------------------------------------------------ routing
    @on(Composer.Submitted)
    def _submitted(self, event: Composer.Submitted) -> None:
        self.commands.submitted(event.composer, event.text)

    @on(Composer.Typed)
    def _typed(self) -> None:
        self.chat.typed(self.composer.text)

    @on(Composer.PathPasted)
    def _path_pasted(self, event: Composer.PathPasted) -> None:
        self.transfers.path_pasted(event)

    @on(ConversationView.Acted)
    def _acted(self, event: ConversationView.Acted) -> None:
        event.stop()
        if isinstance(event.item, TransferCard):
            self.transfers.card_key(event.item, event.action)
        else:
            self.chat.act(event)

    @on(ConversationView.Left)
    def _left_timeline(self, event: ConversationView.Left) -> None:
        event.stop()
        self.composer.focus()

    @on(ConversationView.LatestWanted)
    def _latest_wanted(self, event: ConversationView.LatestWanted) -> None:
        event.stop()
        self.chat.jump_latest()

    @on(ConversationView.OlderWanted)
    def _older_wanted(self, event: ConversationView.OlderWanted) -> None:
        event.stop()
        if self.live:
            self.chat.older()
        else:
            self.conversation.older_requested = False

    @on(Composer.ScrollRequested)
    def _scroll(self, event: Composer.ScrollRequested) -> None:
        log = self.conversation.timeline
        if event.direction < 0:
            log.scroll_page_up()
        else:
            log.scroll_page_down()

    @on(TransferCard.Action)
    def _card_action(self, event: TransferCard.Action) -> None:
        event.stop()
        self.transfers.card_action(event)

    @on(ContactList.ContactHighlighted)
    def _contact_highlighted(self, event: ContactList.ContactHighlighted) -> None:
        self.contacts.highlighted(event.peer_id)

    @on(ContactList.RequestSelected)
    def _request_selected(self, event: ContactList.RequestSelected) -> None:
        self.contacts.show_request(event.peer_id)

    @on(ContactList.GroupHighlighted)
    def _group_highlighted(self, event: ContactList.GroupHighlighted) -> None:
        self.groups.highlighted(event.group_id)

    @on(ContactList.GroupInviteSelected)
    def _group_invite_selected(self, event: ContactList.GroupInviteSelected) -> None:
        self.groups.show_invite(event.group_id)

    @on(ContactList.NearbySelected)
    def _nearby_selected(self, event: ContactList.NearbySelected) -> None:
        self.contacts.nearby_selected(event.peer_id)

    @on(NoticeTray.Activated)
    def _notice_clicked(self, event: NoticeTray.Activated) -> None:
        event.stop()
        kind, _, value = (event.target or "").partition(":")
        if kind == "peer":
            self.open_conversation(value)
        elif kind == "request":
            self.contacts.show_request(value)
        elif kind == "offer":
            self.transfers.show_offer(value)
        elif kind in ("group", "groupinvite"):
            self.groups.notice_clicked(kind, value)

    @on(NodeEventArrived)
    def _node_event(self, message: NodeEventArrived) -> None:
        event = message.event
        if isinstance(event, NodeConnectionLost):
            watcher = self.app
            if isinstance(watcher, OwnerWatcher) and not self.detached:
                watcher.owner_unavailable(OwnerGone(event.reason))
            return
        if not self.live:
            return
        if isinstance(event, CHAT_EVENTS):
            self.chat.on_event(event)
        elif isinstance(event, TRANSFER_EVENTS):
            self.transfers.on_event(event)
        elif isinstance(event, GROUP_EVENTS):
            self.groups.on_event(event)
        else:
            self.contacts.on_event(event)
        if isinstance(event, PeerOffline):
            self.chat.peer_offline(event.peer_id)

    # ------------------------------------------------------ losing the node
    def suspend(self, why: str) -> None:
        """The node cannot be used now: say why above the message box, touch it no more.

        What is typed stays in the message box; sending waits until
        :meth:`resume`.
        """
        self.suspended = why
        banner = self.query_one("#owner-banner", Static)
        banner.update(literal(why, multiline=True))
        banner.add_class("-visible")
        self.chat.forget_typing()
        self.query_one("#status", StatusBar).show_state("lost", why)

    def resume(
        self, node: Node | None = None, *, mode: Mode | None = None, detail: str = ""
    ) -> None:
        """The node answers again, or another one replaced it (taken over, new owner)."""
        if node is not None:
            self.node = node
        if mode is not None:
            self.mode = mode
            self.detail = detail
        why, self.suspended = self.suspended, None
        try:
            self.refresh_sidebar()
            if self.current is not None:
                self.open_conversation(self.current, reload=True)
        except OwnerUnavailable:
            self.suspended = why  # not yet after all
            raise
        self.query_one("#owner-banner", Static).remove_class("-visible")
        self.composer.intercept_paths = self.mode != "read-only"
        self._update_composer()

    def detach(self) -> None:
        """The node is about to stop: say we stopped typing, then touch it no more.

        The periodic flush would otherwise read from a closed store while the
        app winds down.
        """
        if self.live:
            self.chat.stop_typing()
        self.detached = True

    # ------------------------------------------------------------ actions
    def _commands(self) -> dict[str, Handler]:
        """The commands that belong to the screen as a whole."""
        return {
            "help": lambda args: self.action_help(),
            "quit": lambda args: self._quit(),
        }

    def _quit(self) -> None:
        self.run_worker(self.app.run_action("quit"), group="quit")

    def action_add_contact(self, ref: str = "", name: str = "") -> None:
        self.contacts.add_contact(ref, name)

    def action_verify(self) -> None:
        self.contacts.verify()

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen(self.key_help()))

    def action_send_file(self) -> None:
        self.transfers.pick_files()

    def action_transfers(self) -> None:
        self.transfers.show_panel()

    def action_step_contact(self, delta: int) -> None:
        self.contacts.step(delta)

    def action_select_message(self) -> None:
        """From the message box to the messages: the newest one selected (again: the
        one above)."""
        view = self.conversation
        if view.timeline.has_focus:
            view.step(-1)
        else:
            view.step(0)
            view.timeline.focus()

    def action_latest(self) -> None:
        self.chat.jump_latest()

    def key_help(self) -> list[tuple[str, str]]:
        seen: set[str] = set()
        rows: list[tuple[str, str]] = []
        for active in self.active_bindings.values():
            binding = active.binding
            # Only the app's and this screen's keys: the focused widget's own keys
            # (the message box's cursor and selection keys) are not p2pchat's to list.
            if active.node not in (self, self.app):
                continue
            if not binding.description or binding.description in seen:
                continue
            seen.add(binding.description)
            rows.append((self.app.get_key_display(binding), binding.description))
        return rows

    def palette_commands(self) -> Iterator[PaletteCommand]:
        """What the command palette offers on this screen."""
        yield "Add contact", "Paste an invite or a peer ID", self.action_add_contact
        yield "Show my invite", "Your invite and fingerprint, with copy", self.action_add_contact
        if self.current is not None:
            yield from self.contacts.palette_for_current(self.current)
        yield from self.transfers.palette()
        yield from self.groups.palette()
        yield from self.contacts.palette_others()
        yield "Help", "Keys and commands", self.action_help
