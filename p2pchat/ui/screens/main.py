"""The main screen: contact list on the left, the open conversation on the right.

Everything it knows comes from the ``Node`` facade: a full read when it needs
one (opening a conversation, refreshing the list) and the node's events in
between.  Node calls here are short SQLite reads and writes that the node
itself also performs on this event loop; the slow work (unlocking a key,
starting the network) happens in workers before this screen exists.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import ClassVar, Literal

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.screen import Screen
from textual.widgets import Footer

from p2pchat.core.events import (
    ContactAdded,
    ContactChanged,
    ContactRequestReceived,
    MessageReceived,
    MessageStateChanged,
    NearbyPeerFound,
    NearbyPeerLost,
    NodeStarted,
    NodeStopped,
    PeerKeyMismatch,
    PeerOffline,
    PeerOnline,
    TransferOffered,
    TypingChanged,
)
from p2pchat.node import ContactView, Node, NodeError
from p2pchat.store import Contact, ContactRequest, Message, StoreError
from p2pchat.ui.commands import CommandError, SlashCommand, message_text, parse_command
from p2pchat.ui.format import (
    Clock,
    TypingSignal,
    TypingThrottle,
    day_of,
    human_size,
    one_line,
    relative_time,
    short_id,
)
from p2pchat.ui.messages import NodeEventArrived
from p2pchat.ui.screens.contacts import AddContactScreen, RequestScreen
from p2pchat.ui.screens.help import HelpScreen
from p2pchat.ui.screens.verify import VerifyScreen
from p2pchat.ui.widgets import (
    ChatLine,
    Composer,
    ContactEntry,
    ContactList,
    ConversationView,
    NearbyEntry,
    RequestEntry,
    StatusBar,
    StatusInfo,
)
from p2pchat.ui.widgets.sidebar import REQUEST

Mode = Literal["online", "offline", "read-only"]
PaletteCommand = tuple[str, str, Callable[[], object]]

HISTORY_LIMIT = 300
# A peer that stops typing without saying so (crash, lost link) should not
# look busy forever; peers repeat "typing" every few seconds while they type.
REMOTE_TYPING_TTL = 8.0
# Bursts of events (a reconnect replays a whole outbox) are coalesced: the list
# is redrawn and read receipts are sent at most this often.
FLUSH_INTERVAL = 0.15


class MainScreen(Screen[None]):
    AUTO_FOCUS = "#composer"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+n", "add_contact", "Add contact", id="add_contact"),
        Binding("f2", "verify", "Verify", id="verify"),
        Binding("alt+down", "step_contact(1)", "Next chat", id="next_contact", show=False),
        Binding("alt+up", "step_contact(-1)", "Previous chat", id="prev_contact", show=False),
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
        self.names: dict[str, str] = {}
        self.warnings: dict[str, str] = {}
        self._mismatches_seen: set[tuple[str, str]] = set()
        self._remote_typing: dict[str, float] = {}
        self._needs_read: set[str] = set()
        self._throttle = TypingThrottle()
        self._sidebar_dirty = False
        self._read_due = False
        self._last_minute = 0
        self.ready = False
        self.detached = False

    # ------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            with Vertical(id="sidebar"):
                yield ContactList(tz=self.tz, id="contacts")
            with Vertical(id="chat"):
                yield ConversationView(tz=self.tz, id="conversation")
                yield Composer(id="composer")
        yield StatusBar(id="status")
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

    def on_mount(self) -> None:
        contacts = self.refresh_sidebar()
        if contacts:
            self.open_conversation(contacts[0].peer_id)
        else:
            self._show_welcome()
        self._update_composer()
        self.composer.focus()
        self.set_interval(1.0, self._tick)
        self.set_interval(FLUSH_INTERVAL, self._flush)
        self.watch(self.app, "app_focus", self._app_focus_changed, init=False)
        self.ready = True

    def on_screen_resume(self) -> None:
        self._schedule_sidebar()
        self._schedule_read()

    def _app_focus_changed(self, focused: bool) -> None:
        if focused:
            self._schedule_read()

    # ----------------------------------------------------------- sidebar
    def refresh_sidebar(self) -> list[ContactEntry]:
        """Re-read contacts, requests and nearby peers; the list keeps its cursor."""
        self._sidebar_dirty = False
        if self.detached:
            return []
        views = self.node.contacts()
        entries = [self._entry(view) for view in views]
        entries.sort(key=lambda e: (-(e.last_activity or 0.0), e.name.casefold()))
        self.names = {view.peer_id: view.name for view in views}
        self._needs_read |= {view.peer_id for view in views if view.unread}
        requests = [RequestEntry(r.peer_id, r.name, r.preview) for r in self.node.requests()]
        nearby = [
            NearbyEntry(p.peer_id, p.name, p.source, p.verified)
            for p in self.node.nearby()
            if not p.is_contact
        ]
        self.contact_list.show(entries, requests, nearby, now=self.clock(), current=self.current)
        self._update_status(sum(e.online for e in entries), len(entries))
        return entries

    def _entry(self, view: ContactView) -> ContactEntry:
        last = self.node.history(view.peer_id, limit=1)
        activity = _message_time(last[-1]) if last else view.last_seen
        return ContactEntry(
            peer_id=view.peer_id,
            name=view.name,
            verified=view.verified,
            online=self.node.is_online(view.peer_id),
            unread=view.unread,
            last_activity=activity,
            warning=view.peer_id in self.warnings,
        )

    def _schedule_sidebar(self) -> None:
        """Many events arrive in bursts (a reconnect replays the outbox): redraw once."""
        self._sidebar_dirty = True

    def _flush(self) -> None:
        """Apply what the last events asked for, at most once per interval."""
        if self._sidebar_dirty:
            self.refresh_sidebar()
        if self._read_due:
            self._mark_read()

    def _update_status(self, online: int, contacts: int) -> None:
        if self.mode == "read-only":
            network, detail = "read-only", self.detail
        elif self.node.running:
            network, detail = "online", ""
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
            )
        )

    # ------------------------------------------------------ conversation
    def open_conversation(self, peer_id: str, *, reload: bool = False) -> None:
        if peer_id == self.current and not reload:
            return
        try:
            contact = self.node.find_contact(peer_id)
        except StoreError:
            return
        if peer_id != self.current:
            self._send_typing(self._throttle.stop())
        self.current = peer_id
        self.names[peer_id] = contact.name
        messages = self.node.history(peer_id, limit=HISTORY_LIMIT)
        self.conversation.show(
            peer_id,
            self._header(contact),
            [self._line(m, contact.name) for m in messages],
            today=day_of(self.clock(), self.tz),
            empty_hint=f"No messages with {contact.name} yet. Say hello!",
        )
        self.conversation.set_banner(self.warnings.get(peer_id))
        self._show_remote_typing()
        self.contact_list.select_contact(peer_id)
        self._update_composer()
        self._schedule_read()

    def _line(self, m: Message, name: str) -> ChatLine:
        outgoing = m.direction == "out"
        return ChatLine(
            message_id=m.id,
            outgoing=outgoing,
            author=self.node.name if outgoing else name,
            body=m.body,
            at=_message_time(m),
            state=m.state,
        )

    def _header(self, contact: Contact) -> Content:
        online = self.node.is_online(contact.peer_id)
        parts: list[str | tuple[str, str]] = [(contact.name, "bold")]
        if contact.verified:
            parts.append(("  ✔ verified", "$success"))
        else:
            parts.append(("  not verified (F2)", "$text-muted"))
        if online:
            parts.append(("  ● online", "$success"))
        else:
            seen = relative_time(contact.last_seen, self.clock(), self.tz)
            parts.append((f"  ○ offline, last seen {seen}", "$text-muted"))
        parts.append((f"  {short_id(contact.peer_id, 12)}", "$text-muted"))
        return Content.assemble(*parts)

    def _refresh_header(self) -> None:
        if self.current is None:
            return
        try:
            contact = self.node.find_contact(self.current)
        except StoreError:
            return
        self.conversation.set_header(self._header(contact))

    def _show_welcome(self) -> None:
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
            name = self.names.get(self.current, short_id(self.current))
            composer.placeholder = f"Message {name} (Enter sends, Ctrl+J new line, /help)"

    def _visible(self) -> bool:
        """The user can see the open conversation: our screen on top, terminal focused."""
        return self.is_current and self.app.app_focus

    def _schedule_read(self) -> None:
        self._read_due = True

    def _mark_read(self) -> None:
        self._read_due = False
        peer = self.current
        if (
            self.detached
            or peer is None
            or self.mode == "read-only"
            or peer not in self._needs_read
        ):
            return
        if not self._visible():
            return
        self._needs_read.discard(peer)
        try:
            self.node.mark_read(peer)
        except (NodeError, StoreError):
            return
        self._schedule_sidebar()

    # ----------------------------------------------------------- composer
    @on(Composer.Submitted)
    def _submitted(self, event: Composer.Submitted) -> None:
        try:
            command = parse_command(event.text)
        except CommandError as exc:
            self.notify(str(exc), severity="warning", markup=False)
            return
        if command is not None:
            self.run_command(command)
        else:
            self.send_text(message_text(event.text), restore=event.composer)

    def send_text(self, text: str, *, restore: Composer | None = None) -> None:
        if self.mode == "read-only":
            self.notify("Read-only: cannot send while another node runs", severity="warning")
            return
        peer = self.current
        if peer is None:
            self.notify("Pick a contact first (or /add one)", severity="warning")
            if restore is not None:
                restore.load_text(text)
            return
        self._send_typing(self._throttle.stop())
        try:
            message = self.node.send_message(peer, text)
        except (NodeError, StoreError) as exc:
            self.notify(str(exc), severity="error", markup=False)
            if restore is not None:
                restore.load_text(text)
            return
        self.conversation.add_line(self._line(message, self.names.get(peer, "")))
        self._schedule_sidebar()

    @on(Composer.Typed)
    def _typed(self) -> None:
        if self.current is not None and self.mode == "online":
            self._send_typing(self._throttle.keystroke(self.current, time.monotonic()))

    @on(Composer.PathPasted)
    def _path_pasted(self, event: Composer.PathPasted) -> None:
        """File drop hooks in here (offer ``event.path`` to the open contact).

        Until file transfer exists the pasted path stays what it is: text.
        """

    @on(Composer.ScrollRequested)
    def _scroll(self, event: Composer.ScrollRequested) -> None:
        log = self.conversation.timeline
        if event.direction < 0:
            log.scroll_page_up()
        else:
            log.scroll_page_down()

    def detach(self) -> None:
        """The node is about to stop: say we stopped typing, then touch it no more.

        The periodic flush would otherwise read from a closed store while the
        app winds down.
        """
        self._send_typing(self._throttle.stop())
        self.detached = True

    def _send_typing(self, signals: list[TypingSignal]) -> None:
        for peer, active in signals:
            try:
                self.node.set_typing(peer, active)
            except (NodeError, StoreError):
                continue

    def _tick(self) -> None:
        """Once a second: stop our typing signal when idle, expire the peer's, age times."""
        if self.detached:
            return
        now = time.monotonic()
        self._send_typing(self._throttle.tick(now))
        expired = [peer for peer, until in self._remote_typing.items() if until <= now]
        for peer in expired:
            del self._remote_typing[peer]
        if expired:
            self._show_remote_typing()
        minute = int(now // 60)
        if minute != self._last_minute:
            self._last_minute = minute
            self._schedule_sidebar()

    def _show_remote_typing(self) -> None:
        peer = self.current
        if peer is not None and peer in self._remote_typing:
            self.conversation.set_typing(f"{self.names.get(peer, short_id(peer))} is typing…")
        else:
            self.conversation.set_typing(None)

    # ----------------------------------------------------------- commands
    def run_command(self, command: SlashCommand) -> None:
        handler = getattr(self, f"_cmd_{command.name}")
        try:
            handler(command.args)
        except (ValueError, NodeError, StoreError) as exc:
            self.notify(str(exc), severity="error", markup=False)

    def _cmd_add(self, args: str) -> None:
        ref, _, name = args.partition(" ")
        contact = self.node.add_contact(ref, name=name.strip() or None)
        self.notify(f"Added {contact.name}", timeout=3, markup=False)
        self.refresh_sidebar()
        self.open_conversation(contact.peer_id)

    def _cmd_accept(self, args: str) -> None:
        ref = args or self._pick_request().peer_id
        contact = self.node.accept_request(ref)
        self.notify(f"{contact.name} is now a contact", timeout=3, markup=False)
        self.refresh_sidebar()
        self.open_conversation(contact.peer_id)

    def _cmd_decline(self, args: str) -> None:
        ref = args or self._pick_request().peer_id
        self.node.decline_request(ref)
        self.notify("Request declined", timeout=3)
        self.refresh_sidebar()

    def _pick_request(self) -> ContactRequest:
        """The highlighted request, else the only one; the node resolves typed names."""
        requests = self.node.requests()
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

    def _cmd_verify(self, args: str) -> None:
        self.action_verify()

    def _cmd_nick(self, args: str) -> None:
        name = self.node.set_name(args)
        self.notify(f"You are now {name} (contacts see it when they next connect)", markup=False)
        self.refresh_sidebar()
        if self.current is not None:
            self.open_conversation(self.current, reload=True)

    def _cmd_rename(self, args: str) -> None:
        if self.current is None:
            raise NodeError("open a conversation first")
        contact = self.node.rename_contact(self.current, args)
        self.notify(f"Renamed to {contact.name}", timeout=3, markup=False)
        self.refresh_sidebar()
        self.open_conversation(contact.peer_id, reload=True)

    def _cmd_invite(self, args: str) -> None:
        self.action_add_contact()

    def _cmd_help(self, args: str) -> None:
        self.action_help()

    def _cmd_quit(self, args: str) -> None:
        self.app.exit()

    # ------------------------------------------------------------ actions
    def action_add_contact(self, ref: str = "", name: str = "") -> None:
        def added(peer_id: str | None) -> None:
            if peer_id:
                self.refresh_sidebar()
                self.open_conversation(peer_id)

        self.app.push_screen(AddContactScreen(self.node, ref=ref, name=name), added)

    def action_verify(self) -> None:
        if self.current is None:
            self.notify("Open a conversation to verify that contact", severity="warning")
            return
        contact = self.node.find_contact(self.current)

        def done(_: bool | None) -> None:
            self.refresh_sidebar()
            self._refresh_header()

        self.app.push_screen(VerifyScreen(self.node, contact), done)

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen(self.key_help()))

    def action_step_contact(self, delta: int) -> None:
        peer = self.contact_list.step_contact(delta, self.current)
        if peer is not None:
            self.open_conversation(peer)

    def key_help(self) -> list[tuple[str, str]]:
        seen: set[str] = set()
        rows: list[tuple[str, str]] = []
        for active in self.active_bindings.values():
            binding = active.binding
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
            name = self.names.get(self.current, "this contact")
            yield f"Verify {name}", "Compare safety numbers", self.action_verify
        for peer, name in sorted(self.names.items(), key=lambda item: item[1].casefold()):
            yield (
                f"Open conversation: {name}",
                short_id(peer, 12),
                partial(self.open_conversation, peer),
            )
        for request in self.node.requests():
            label = request.name or short_id(request.peer_id)
            yield (
                f"Answer request: {label}",
                "Accept or decline",
                partial(self.show_request, request.peer_id),
            )
        yield "Help", "Keys and commands", self.action_help

    # ------------------------------------------------------- list events
    @on(ContactList.ContactHighlighted)
    def _contact_highlighted(self, event: ContactList.ContactHighlighted) -> None:
        self.open_conversation(event.peer_id)

    @on(ContactList.RequestSelected)
    def _request_selected(self, event: ContactList.RequestSelected) -> None:
        self.show_request(event.peer_id)

    @on(ContactList.NearbySelected)
    def _nearby_selected(self, event: ContactList.NearbySelected) -> None:
        for peer in self.node.nearby():
            if peer.peer_id == event.peer_id:
                self.action_add_contact(peer.peer_id, peer.name or "")
                return

    def show_request(self, peer_id: str) -> None:
        request = next((r for r in self.node.requests() if r.peer_id == peer_id), None)
        if request is None:
            self._schedule_sidebar()
            return

        def answered(choice: str | None) -> None:
            self.refresh_sidebar()
            if choice == "accept":
                self.open_conversation(peer_id)

        self.app.push_screen(RequestScreen(self.node, request, tz=self.tz), answered)

    # -------------------------------------------------------- node events
    @on(NodeEventArrived)
    def _node_event(self, message: NodeEventArrived) -> None:
        event = message.event
        if self.detached:
            return
        if isinstance(event, MessageReceived):
            self._incoming_message(event)
        elif isinstance(event, MessageStateChanged):
            if event.peer_id == self.current:
                self.conversation.set_state(event.message_id, event.state)
        elif isinstance(event, TypingChanged):
            if event.active:
                self._remote_typing[event.peer_id] = time.monotonic() + REMOTE_TYPING_TTL
            else:
                self._remote_typing.pop(event.peer_id, None)
            if event.peer_id == self.current:
                self._show_remote_typing()
        elif isinstance(event, (PeerOnline, PeerOffline)):
            self._schedule_sidebar()
            if event.peer_id == self.current:
                self._refresh_header()
            if isinstance(event, PeerOffline):
                self._remote_typing.pop(event.peer_id, None)
                self._show_remote_typing()
        elif isinstance(event, ContactRequestReceived):
            who = event.name or short_id(event.peer_id)
            self.notify(
                f"{who} wants to add you. Select the request in the list to answer.",
                title="Contact request",
                severity="warning",
                markup=False,
            )
            self._ring()
            self._schedule_sidebar()
        elif isinstance(event, PeerKeyMismatch):
            self._on_key_mismatch(event)
        elif isinstance(event, (ContactAdded, ContactChanged)):
            self._schedule_sidebar()
            if event.peer_id == self.current:
                self._refresh_header()
            elif self.current is None and isinstance(event, ContactAdded):
                self.open_conversation(event.peer_id)
        elif isinstance(event, (NearbyPeerFound, NearbyPeerLost)):
            self._schedule_sidebar()
        elif isinstance(event, (NodeStarted, NodeStopped)):
            self._schedule_sidebar()
        elif isinstance(event, TransferOffered):
            self._on_file_offer(event)

    def _incoming_message(self, event: MessageReceived) -> None:
        peer = event.peer_id
        name = self.names.get(peer) or short_id(peer)
        self._remote_typing.pop(peer, None)
        self._needs_read.add(peer)
        if peer == self.current:
            self.conversation.add_line(
                ChatLine(
                    message_id=event.message_id,
                    outgoing=False,
                    author=name,
                    body=event.body,
                    at=event.received_at,
                    state="delivered",
                )
            )
            self._show_remote_typing()
            self._schedule_read()
        if peer != self.current or not self._visible():
            self.notify(one_line(event.body, 120), title=name, markup=False)
            self._ring()
        self._schedule_sidebar()

    def _on_key_mismatch(self, event: PeerKeyMismatch) -> None:
        name = self.names.get(event.peer_id) or short_id(event.peer_id)
        text = (
            f"⚠ {event.address} answered with a different key than {name}'s. Someone may be "
            f"impersonating {name} (or the address now belongs to someone else). Nothing was "
            f"sent there; messages wait until the real {name} is reached."
        )
        self.warnings[event.peer_id] = text
        key = (event.peer_id, event.address)
        if key not in self._mismatches_seen:
            self._mismatches_seen.add(key)
            self.notify(text, title="Key mismatch", severity="error", timeout=30, markup=False)
            self._ring()
        if event.peer_id == self.current:
            self.conversation.set_banner(text)
        self._schedule_sidebar()

    def _on_file_offer(self, event: TransferOffered) -> None:
        """Files wait for an answer; until the transfer UI exists, say where to give it."""
        name = self.names.get(event.peer_id) or short_id(event.peer_id)
        first = one_line(event.files[0][0], 40) if event.files else "?"
        more = f" and {len(event.files) - 1} more" if len(event.files) > 1 else ""
        self.notify(
            f"{name} offers {first}{more} ({human_size(event.total)}). Answer with "
            f"`p2pchat accept-file {event.transfer_id}` or `decline-file` in a shell.",
            title="File offer",
            severity="warning",
            timeout=30,
            markup=False,
        )
        self._ring()

    def _ring(self) -> None:
        if self.bell:
            self.app.bell()


def _message_time(m: Message) -> float:
    """Incoming messages sort and group by when they arrived here: the peer's clock
    may be wrong, and the conversation is shown in arrival order."""
    if m.direction == "in" and m.received_at is not None:
        return m.received_at
    return m.created_at
