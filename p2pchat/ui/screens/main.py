"""The main screen: contact list on the left, the open conversation on the right.

Everything it knows comes from the ``Node`` facade: a full read when it needs
one (opening a conversation, refreshing the list) and the node's events in
between.  Node calls here are short SQLite reads and writes that the node
itself also performs on this event loop; the slow work (unlocking a key,
starting the network, hashing files before an offer) happens in workers.

File transfers show as cards in the conversation (and in the F3 panel).
Progress events only record the latest figures; the periodic flush redraws
the affected cards, so a fast transfer costs a few redraws a second whatever
rate the node reports at.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import ClassVar, Literal, Protocol

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.widgets import Footer, Static

from p2pchat.core.events import (
    AwaitingAcceptance,
    BlockChanged,
    ContactAdded,
    ContactChanged,
    ContactRemoved,
    ContactRequestReceived,
    MessageDeleted,
    MessageEdited,
    MessageReceived,
    MessageSent,
    MessageStateChanged,
    NearbyPeerFound,
    NearbyPeerLost,
    NodeConnectionLost,
    NodeStarted,
    NodeStopped,
    PeerKeyMismatch,
    PeerOffline,
    PeerOnline,
    TransferOffered,
    TransferProgress,
    TransferStateChanged,
    TypingChanged,
)
from p2pchat.node import ContactView, Node, NodeError
from p2pchat.remote import OwnerGone, OwnerUnavailable
from p2pchat.store import Contact, ContactRequest, Message, StoreError, Transfer
from p2pchat.ui import heap
from p2pchat.ui.commands import CommandError, SlashCommand, message_text, parse_command
from p2pchat.ui.desktop import notify_desktop
from p2pchat.ui.files import (
    TransferInfo,
    describe_paths,
    opener_argv,
    send_paths,
    transfer_title,
)
from p2pchat.ui.format import (
    AlertLimiter,
    Clock,
    TypingSignal,
    TypingThrottle,
    day_of,
    human_size,
    relative_time,
    short_id,
)
from p2pchat.ui.messages import NodeEventArrived
from p2pchat.ui.safe import literal, one_line, shown_name
from p2pchat.ui.screens.contacts import AddContactScreen, RequestScreen
from p2pchat.ui.screens.files import (
    ConfirmSendScreen,
    FilePickerScreen,
    FolderPickerScreen,
    OfferScreen,
    TransfersScreen,
    downloads_folder,
)
from p2pchat.ui.screens.guard import GuardedScreen, OwnerWatcher
from p2pchat.ui.screens.help import HelpScreen
from p2pchat.ui.screens.verify import VerifyScreen
from p2pchat.ui.state import last_conversation, save_state
from p2pchat.ui.widgets import (
    ChatLine,
    Composer,
    ContactEntry,
    ContactList,
    ConversationView,
    NearbyEntry,
    PreparingCard,
    ProgressBoard,
    RequestEntry,
    StatusBar,
    StatusInfo,
    TransferCard,
)
from p2pchat.ui.widgets.notices import NoticeTray, Severity
from p2pchat.ui.widgets.sidebar import CONTACT, REQUEST, path_words

Mode = Literal["online", "offline", "read-only"]
PaletteCommand = tuple[str, str, Callable[[], object]]

HISTORY_LIMIT = 300
# Bursts of events (a reconnect replays a whole outbox) are coalesced: the list
# is redrawn and read receipts are sent at most this often.
FLUSH_INTERVAL = 0.15
# How long to wait for the file manager opener before giving up on its exit code.
OPENER_TIMEOUT = 15.0


class TransferListener(Protocol):
    """A screen with transfer cards of its own (the panel, an offer modal)."""

    def transfer_changed(self, info: TransferInfo) -> None: ...

    def transfer_progress(
        self, transfer_id: str, done: int, total: int, rate: float | None
    ) -> None: ...


class MainScreen(GuardedScreen[None]):
    AUTO_FOCUS = "#composer"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+n", "add_contact", "Add contact", id="add_contact"),
        Binding("f2", "verify", "Verify", id="verify"),
        Binding("ctrl+o", "send_file", "Send file", id="send_file"),
        Binding("f3", "transfers", "Transfers", id="transfers"),
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
        self._needs_read: set[str] = set()
        self._throttle = TypingThrottle()
        self._sidebar_dirty = False
        self._read_due = False
        self._last_minute = 0
        # Transfers: smoothed speeds, and the latest progress not drawn yet.
        self.progress = ProgressBoard()
        self._alerts = AlertLimiter()
        # Why our messages to a contact wait although it may be online (not accepted
        # yet, or its node deferred them), for the header.
        self._waiting: dict[str, str] = {}
        self._paths: dict[str, str] = {}
        self._muted: set[str] = set()
        self.ready = False
        self.detached = False
        self.suspended: str | None = None
        """Why the node cannot be used right now (an attached view's owner went away
        or does not answer); None while it can."""

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
        last = last_conversation(self.node.paths)
        if any(c.peer_id == last for c in contacts):
            self.open_conversation(str(last))
        elif contacts:
            self.open_conversation(contacts[0].peer_id)
        else:
            self._show_welcome()
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
        self._schedule_sidebar()
        self._schedule_read()

    def _app_focus_changed(self, focused: bool) -> None:
        if focused:
            self._schedule_read()

    # ----------------------------------------------------------- sidebar
    @property
    def live(self) -> bool:
        """The node can be called (not stopping, not lost)."""
        return not self.detached and self.suspended is None

    def refresh_sidebar(self) -> list[ContactEntry]:
        """Re-read contacts, requests and nearby peers; the list keeps its cursor."""
        self._sidebar_dirty = False
        if not self.live:
            return []
        views = self.node.contacts()
        entries = [self._entry(view) for view in views]
        entries.sort(key=lambda e: (-(e.last_activity or 0.0), e.name.casefold()))
        self.names = {view.peer_id: shown_name(view.name, short_id(view.peer_id)) for view in views}
        paths = {
            view.peer_id: path_words(view.path or view.route, view.rtt_ms, view.via)
            for view in views
        }
        if paths.get(self.current or "") != self._paths.get(self.current or ""):
            self._paths = paths
            self._refresh_header()
        self._paths = paths
        self._muted = {view.peer_id for view in views if view.muted}
        reasons = {view.peer_id: _waiting(view) for view in views}
        waiting = {peer: why for peer, why in reasons.items() if why}
        if waiting != self._waiting:
            self._waiting = waiting
            self._refresh_header()
        self._needs_read |= {view.peer_id for view in views if view.unread}
        for view in views:
            # The notice counts what the list counts, so the two never disagree.
            self.notices.set_count(f"msg:{view.peer_id}", view.unread)
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
            muted=view.muted,
            blocked=view.blocked,
            route=view.path or view.route,
            rtt_ms=view.rtt_ms,
            last_seen=view.last_seen,
        )

    def _schedule_sidebar(self) -> None:
        """Many events arrive in bursts (a reconnect replays the outbox): redraw once."""
        self._sidebar_dirty = True

    def _flush(self) -> None:
        """Apply what the last events asked for, at most once per interval."""
        self.notices.flush()
        if not self.live:
            return
        self.conversation.flush_pending()
        if self._sidebar_dirty:
            self.refresh_sidebar()
        if self._read_due:
            self._mark_read()
        self._draw_progress()

    def _update_status(self, online: int, contacts: int) -> None:
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
                alerts=" + ".join(self.alert_kinds()),
            )
        )

    def alert_kinds(self) -> list[str]:
        """The ways news reaches the user besides the notices: shown in the status bar."""
        return [
            kind
            for kind, on in (("bell", self.bell), ("desktop", self.desktop_notifications))
            if on
        ]

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
        save_state(self.node.paths, conversation=peer_id)
        self.notices.drop(f"msg:{peer_id}")
        self._alerts.forget(f"msg:{peer_id}")
        self.names[peer_id] = shown = shown_name(contact.name, short_id(peer_id))
        messages = self.node.history(peer_id, limit=HISTORY_LIMIT)
        cards = [self._card(self._info(t)) for t in self.node.list_transfers(peer_id)]
        self.conversation.show(
            peer_id,
            self._header(contact),
            [self._line(m, shown) for m in messages],
            cards=cards,
            today=day_of(self.clock(), self.tz),
            empty_hint=f"No messages with {shown} yet. Say hello!",
        )
        self.conversation.set_banner(self.warnings.get(peer_id))
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
            quote=self._quote(m.peer_id, m.reply_to),
            edited=m.edited_at is not None,
            deleted=m.deleted_at is not None,
        )

    def _quote(self, peer: str, reply_to: str | None) -> str | None:
        """``bob: the first words`` of the message ``reply_to`` answers, if we have it."""
        if not reply_to:
            return None
        original = self.node.get_message(reply_to, contact=peer)
        if original is None:
            return "a message not here"
        if original.deleted_at is not None:
            return "a deleted message"
        who = self.node.name if original.direction == "out" else self.name_of(peer)
        return f"{who}: {original.body}"

    def _header(self, contact: Contact) -> Content:
        online = self.node.is_online(contact.peer_id)
        parts: list[str | tuple[str, str]] = [
            (shown_name(contact.name, short_id(contact.peer_id)), "bold")
        ]
        if contact.verified:
            parts.append(("  ✔ verified", "$success"))
        else:
            parts.append(("  not verified (F2)", "$text-muted"))
        if online:
            parts.append(("  ● online", "$success"))
            path = self._paths.get(contact.peer_id, "")
            if path:
                parts.append((path, "$text-muted"))
        else:
            seen = relative_time(contact.last_seen, self.clock(), self.tz)
            parts.append((f"  ○ offline, last seen {seen}", "$text-muted"))
        waiting = self._waiting.get(contact.peer_id)
        if waiting:
            parts.append((f"  · {one_line(waiting, 60)}", "$text-warning"))
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
            composer.placeholder = literal(
                f"Message {name} (Enter sends, Ctrl+J new line, Ctrl+O file, /help)"
            )

    def _visible(self) -> bool:
        """The user can see the open conversation: our screen on top, terminal focused."""
        return self.is_current and self.app.app_focus

    def _schedule_read(self) -> None:
        self._read_due = True

    def _mark_read(self) -> None:
        self._read_due = False
        peer = self.current
        if (
            not self.live
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
        except OwnerUnavailable:
            raise  # the screen's guard tells the app (screens/guard.py)
        except (NodeError, StoreError):
            return
        self._schedule_sidebar()

    # ----------------------------------------------------------- composer
    @on(Composer.Submitted)
    def _submitted(self, event: Composer.Submitted) -> None:
        try:
            command = parse_command(event.text)
        except CommandError as exc:
            # Keep what was typed: it may be a message that starts with "/" (send it
            # with "//"), or a command with a typo to fix.
            event.composer.load_text(event.text)
            event.composer.move_cursor(event.composer.document.end)
            self.notify(f"{exc} (the text is still in the box)", severity="warning")
            return
        if command is not None:
            self.run_command(command)
        else:
            self.send_text(message_text(event.text), restore=event.composer)

    def send_text(
        self, text: str, *, restore: Composer | None = None, reply_to: str | None = None
    ) -> None:
        if self.mode == "read-only":
            self.notify("Read-only: cannot send while another node runs", severity="warning")
            return
        if not self.live:
            self.notify(f"Not sent: {self.suspended or 'the node is stopping'}", severity="warning")
            if restore is not None:
                restore.load_text(text)
            return
        peer = self.current
        if peer is None:
            self.notify("Pick a contact first (or /add one)", severity="warning")
            if restore is not None:
                restore.load_text(text)
            return
        self._send_typing(self._throttle.stop())
        try:
            if reply_to is None:
                message = self.node.send_message(peer, text)
            else:
                message = self.node.send_message(peer, text, reply_to=reply_to)
        except OwnerUnavailable:
            raise  # the screen's guard tells the app (screens/guard.py)
        except (NodeError, StoreError) as exc:
            self.notify(str(exc), severity="error", markup=False)
            if restore is not None:
                restore.load_text(text)
            return
        self.conversation.add_line(self._line(message, self.names.get(peer, "")))
        self._schedule_sidebar()

    @on(Composer.Typed)
    def _typed(self) -> None:
        if self.composer.text.lstrip().startswith(
            "/"
        ) and not self.composer.text.lstrip().startswith("//"):
            # A command is not a message: the contact is not told we type.
            self._send_typing(self._throttle.stop())
            return
        if self.current is not None and self.mode == "online" and self.live:
            self._send_typing(self._throttle.keystroke(self.current, time.monotonic()))

    @on(Composer.PathPasted)
    def _path_pasted(self, event: Composer.PathPasted) -> None:
        """A drop (a paste of existing paths): ask before sending; "no" pastes the text."""
        composer = event.composer
        peer = self.current
        if peer is None or self.mode == "read-only":
            composer.insert(event.text)
            return
        paths = event.paths

        def answered(send: bool | None) -> None:
            if send:
                self.offer_paths(peer, paths)
            else:
                composer.insert(event.text)
                composer.post_message(Composer.Typed())
            composer.focus()

        self.app.push_screen(ConfirmSendScreen(paths, self.name_of(peer)), answered)

    @on(Composer.ScrollRequested)
    def _scroll(self, event: Composer.ScrollRequested) -> None:
        log = self.conversation.timeline
        if event.direction < 0:
            log.scroll_page_up()
        else:
            log.scroll_page_down()

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
        self._throttle.stop()
        self.conversation.set_typing(None)
        self.conversation.forget_typing()
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
            self._send_typing(self._throttle.stop())
        self.detached = True

    def _send_typing(self, signals: list[TypingSignal]) -> None:
        for peer, active in signals:
            try:
                self.node.set_typing(peer, active)
            except OwnerUnavailable:
                raise  # the screen's guard tells the app (screens/guard.py)
            except (NodeError, StoreError):
                continue

    def _tick(self) -> None:
        """Once a second: stop our typing signal when idle, expire the peer's, age times."""
        if not self.live:
            return
        now = time.monotonic()
        self._send_typing(self._throttle.tick(now))
        self.conversation.expire_typing(now)
        for card in self.conversation.cards():
            if isinstance(card, TransferCard):
                card.check_stall(now)
        for listener in self._listeners():
            if isinstance(listener, TransfersScreen):
                for card in listener.cards():
                    card.check_stall(now)
        minute = int(now // 60)
        if minute != self._last_minute:
            self._last_minute = minute
            self._schedule_sidebar()

    # ----------------------------------------------------------- commands
    def run_command(self, command: SlashCommand) -> None:
        handler = getattr(self, f"_cmd_{command.name}")
        try:
            handler(command.args)
        except OwnerUnavailable:
            raise  # the screen's guard tells the app (screens/guard.py)
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

    def _cmd_mute(self, args: str) -> None:
        self._set_muted(True)

    def _cmd_unmute(self, args: str) -> None:
        self._set_muted(False)

    def _set_muted(self, muted: bool) -> None:
        peer = self._need_current()
        contact = self.node.set_muted(peer, muted)
        self.notices.drop(f"msg:{peer}")
        state = "muted: no notifications" if muted else "notifications on again"
        self.notify(f"{shown_name(contact.name)} {state}", timeout=3)
        self.refresh_sidebar()

    def _cmd_remove(self, args: str) -> None:
        peer = self._need_current()
        contact = self.node.remove_contact(peer)
        self.notify(
            f"Removed {shown_name(contact.name)}; the history stays. /block stops them "
            "from asking again.",
            timeout=6,
        )
        self._contact_gone(peer)

    def _cmd_block(self, args: str) -> None:
        ref = args or self._need_current()
        entry = self.node.block(ref)
        who = shown_name(entry.name, short_id(entry.peer_id))
        self.notify(f"Blocked {who}: no sessions, no requests. /unblock {who} undoes it.")
        self._contact_gone(entry.peer_id, keep=True)

    def _cmd_unblock(self, args: str) -> None:
        entry = self.node.unblock(args)
        self.notify(f"Unblocked {shown_name(entry.name, short_id(entry.peer_id))}", timeout=3)
        self.refresh_sidebar()

    def _need_current(self) -> str:
        if self.current is None:
            raise NodeError("open a conversation first")
        return self.current

    def _contact_gone(self, peer: str, *, keep: bool = False) -> None:
        """After a remove or block: the list again, and another conversation if it was open."""
        self.notices.drop_where(lambda n: n.target in (f"peer:{peer}", f"request:{peer}"))
        contacts = self.refresh_sidebar()
        if peer == self.current and not any(c.peer_id == peer for c in contacts):
            others = [c.peer_id for c in contacts if c.peer_id != peer]
            if others:
                self.open_conversation(others[0])
            else:
                self._show_welcome()
        elif peer == self.current and keep:
            self._refresh_header()

    def _cmd_reply(self, args: str) -> None:
        """Answer the contact's latest message, quoting it."""
        peer = self._need_current()
        theirs = [m for m in self.node.history(peer, limit=50) if m.direction == "in"]
        if not theirs:
            raise NodeError("nothing to reply to yet")
        self.send_text(args, reply_to=theirs[-1].id)

    def _cmd_edit(self, args: str) -> None:
        """Change the text of our latest message (for both sides)."""
        message = self._last_own()
        edited = self.node.edit_message(message.id, args)
        self.conversation.change_message(edited.id, body=edited.body)

    def _cmd_delete(self, args: str) -> None:
        """Delete our latest message for both sides."""
        message = self._last_own()
        self.node.delete_message(message.id)
        self.conversation.change_message(message.id, deleted=True)

    def _last_own(self) -> Message:
        peer = self._need_current()
        ours = [
            m
            for m in self.node.history(peer, limit=50)
            if m.direction == "out" and m.deleted_at is None
        ]
        if not ours:
            raise NodeError("you have no message here to change")
        return ours[-1]

    def _cmd_invite(self, args: str) -> None:
        self.action_add_contact()

    def _cmd_send(self, args: str) -> None:
        if self.current is None:
            raise NodeError("open a conversation first")
        self.offer_paths(self.current, send_paths(args))

    def _cmd_transfers(self, args: str) -> None:
        self.action_transfers()

    def _cmd_help(self, args: str) -> None:
        self.action_help()

    def _cmd_quit(self, args: str) -> None:
        self.run_worker(self.app.run_action("quit"), group="quit")

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

    def action_send_file(self) -> None:
        peer = self.current
        if peer is None:
            self.notify("Open a conversation to send files", severity="warning")
            return
        if self.mode == "read-only":
            self.notify("Read-only: cannot send while another node runs", severity="warning")
            return

        def picked(paths: list[Path] | None) -> None:
            if paths:
                self.offer_paths(peer, paths)
            self.composer.focus()

        self.app.push_screen(FilePickerScreen(self.name_of(peer)), picked)

    def action_transfers(self) -> None:
        for screen in self.app.screen_stack:
            if isinstance(screen, TransfersScreen):
                return
        infos = [self._info(t) for t in self.node.list_transfers()]
        self.app.push_screen(
            TransfersScreen(
                infos,
                names=self.name_of,
                my_name=self.node.name,
                rates=self.progress.rates,
                tz=self.tz,
                today=day_of(self.clock(), self.tz),
                on_action=self._card_action,
            )
        )

    def action_step_contact(self, delta: int) -> None:
        peer = self.contact_list.step_contact(delta, self.current)
        if peer is not None:
            self.open_conversation(peer)

    def _palette_command(self, name: str, args: str) -> None:
        self.run_command(SlashCommand(name, args))

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
            name = self.names.get(self.current, "this contact")
            yield f"Verify {name}", "Compare safety numbers", self.action_verify
            yield f"Send a file to {name}", "Pick a file or folder (Ctrl+O)", self.action_send_file
            muted = self.current in self._muted
            yield (
                f"{'Unmute' if muted else 'Mute'} {name}",
                "Notifications for this contact (/mute, /unmute)",
                partial(self._palette_command, "unmute" if muted else "mute", ""),
            )
            yield (
                f"Remove {name}",
                "History stays; they may ask again (/remove)",
                partial(self._palette_command, "remove", ""),
            )
            yield (
                f"Block {name}",
                "No sessions, no requests, no lookups (/block)",
                partial(self._palette_command, "block", ""),
            )
        yield "Transfers", "Every file transfer, with progress (F3)", self.action_transfers
        for t in self.node.list_transfers():
            if t.direction == "in" and t.state == "pending":
                yield (
                    f"Answer file offer: {one_line(transfer_title(_names(t)), 40)}",
                    f"from {self.name_of(t.peer_id)}",
                    partial(self.show_offer, t.id),
                )
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
        try:
            blocked = self.node.blocked()
        except (NodeError, StoreError):
            blocked = []
        for entry in blocked:
            label = shown_name(entry.name, short_id(entry.peer_id))
            yield (
                f"Unblock {label}",
                "Take them off the block list (/unblock)",
                partial(self._palette_command, "unblock", entry.peer_id),
            )
        yield "Help", "Keys and commands", self.action_help

    # ------------------------------------------------------- list events
    @on(ContactList.ContactHighlighted)
    def _contact_highlighted(self, event: ContactList.ContactHighlighted) -> None:
        highlighted = self.contact_list.highlighted_option
        if highlighted is not None and highlighted.id != CONTACT + event.peer_id:
            # Stale: the cursor moved on (a list refresh re-highlights the old row, and
            # the palette or a notification may open another conversation meanwhile).
            return
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
        if isinstance(event, NodeConnectionLost):
            watcher = self.app
            if isinstance(watcher, OwnerWatcher) and not self.detached:
                watcher.owner_unavailable(OwnerGone(event.reason))
            return
        if not self.live:
            return
        if isinstance(event, MessageReceived):
            self._incoming_message(event)
        elif isinstance(event, MessageSent):
            self._sent_elsewhere(event)
        elif isinstance(event, MessageStateChanged):
            if event.peer_id == self.current:
                self.conversation.set_state(event.message_id, event.state)
        elif isinstance(event, MessageEdited):
            if event.peer_id == self.current:
                self.conversation.change_message(event.message_id, body=event.body)
        elif isinstance(event, MessageDeleted):
            if event.peer_id == self.current:
                self.conversation.change_message(event.message_id, deleted=True)
        elif isinstance(event, AwaitingAcceptance):
            self._schedule_sidebar()
            if event.peer_id == self.current:
                self._refresh_header()
        elif isinstance(event, TypingChanged):
            name = self.name_of(event.peer_id)
            self.conversation.peer_typing(event.peer_id, name, event.active, time.monotonic())
        elif isinstance(event, (PeerOnline, PeerOffline)):
            self._schedule_sidebar()
            if event.peer_id == self.current:
                self._refresh_header()
            if isinstance(event, PeerOffline):
                self.conversation.peer_typing(event.peer_id, "", False, time.monotonic())
        elif isinstance(event, ContactRequestReceived):
            who = shown_name(event.name, short_id(event.peer_id))
            self._notice(
                f"req:{event.peer_id}",
                "Contact request",
                f"{who} wants to add you. Click here, or select the request in the list.",
                severity="warning",
                timeout=20,
                target=f"request:{event.peer_id}",
            )
            self._schedule_sidebar()
        elif isinstance(event, PeerKeyMismatch):
            self._on_key_mismatch(event)
        elif isinstance(event, (ContactAdded, ContactChanged)):
            self._schedule_sidebar()
            if event.peer_id == self.current:
                self._refresh_header()
            elif self.current is None and isinstance(event, ContactAdded):
                self.open_conversation(event.peer_id)
        elif isinstance(event, (ContactRemoved, BlockChanged)):
            if event.peer_id == self.current:
                self._contact_gone(event.peer_id, keep=True)
            else:
                self._schedule_sidebar()
        elif isinstance(event, (NearbyPeerFound, NearbyPeerLost)):
            self._schedule_sidebar()
        elif isinstance(event, (NodeStarted, NodeStopped)):
            self._schedule_sidebar()
        elif isinstance(event, TransferOffered):
            self._on_file_offer(event)
        elif isinstance(event, TransferProgress):
            self._on_transfer_progress(event)
        elif isinstance(event, TransferStateChanged):
            self._on_transfer_state(event)

    def _incoming_message(self, event: MessageReceived) -> None:
        peer = event.peer_id
        name = self.names.get(peer) or short_id(peer)
        self.conversation.peer_typing(peer, name, False, time.monotonic())
        self._needs_read.add(peer)
        if peer == self.current:
            # Drawn at the next flush, together with whatever else arrives by then.
            self.conversation.queue_line(
                ChatLine(
                    message_id=event.message_id,
                    outgoing=False,
                    author=name,
                    body=event.body,
                    at=event.received_at,
                    state="delivered",
                    quote=self._quote(peer, event.reply_to),
                )
            )
            self._schedule_read()
        if peer in self._muted:
            pass  # counted in the list, nothing else
        elif peer != self.current:
            self._notice(f"msg:{peer}", name, event.body, target=f"peer:{peer}")
        elif not self._visible():
            # Open but not in view (another window has the focus): no notice to
            # click, the conversation has it; the bell and the desktop may say so.
            self._alert(f"msg:{peer}", name, event.body)
        self._schedule_sidebar()

    def _sent_elsewhere(self, event: MessageSent) -> None:
        """A message of ours was stored: shown here unless this screen sent it (it was
        sent with ``p2pchat msg``, or from another view of the same node)."""
        self._schedule_sidebar()
        if event.peer_id != self.current or self.conversation.has_message(event.message_id):
            return
        self.conversation.add_line(
            ChatLine(
                message_id=event.message_id,
                outgoing=True,
                author=self.node.name,
                body=event.body,
                at=event.created_at,
                state="queued",
                quote=self._quote(event.peer_id, event.reply_to),
            )
        )

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
            self._notice(
                f"mismatch:{event.peer_id}",
                "Key mismatch",
                text,
                severity="error",
                timeout=30,
                target=f"peer:{event.peer_id}",
            )
        if event.peer_id == self.current:
            self.conversation.set_banner(text)
        self._schedule_sidebar()

    # ------------------------------------------------------------ transfers
    def name_of(self, peer_id: str) -> str:
        return self.names.get(peer_id) or short_id(peer_id)

    def _info(self, t: Transfer) -> TransferInfo:
        """The card's view of ``t``; only a moving transfer has a running attempt to ask about."""
        progress = None
        if t.state in ("accepted", "sending", "receiving"):
            progress = self.node.transfers.progress(t.id) or self.progress.last(t.id)
        return TransferInfo.from_transfer(t, progress)

    def _fresh_info(self, transfer_id: str) -> TransferInfo | None:
        try:
            return self._info(self.node.get_transfer(transfer_id))
        except OwnerUnavailable:
            raise  # the screen's guard tells the app (screens/guard.py)
        except Exception:  # TransferError (p2pchat.net) or a closed store: nothing to show
            return None

    def _card(self, info: TransferInfo) -> TransferCard:
        name = self.name_of(info.peer_id)
        return TransferCard(
            info,
            author=name if info.incoming else self.node.name,
            peer_name=name,
            tz=self.tz,
            rate=self.progress.rate(info.transfer_id),
        )

    def _listeners(self) -> list[TransferListener]:
        return [
            screen
            for screen in self.app.screen_stack
            if isinstance(screen, (TransfersScreen, OfferScreen))
        ]

    def _show_transfer(self, info: TransferInfo) -> None:
        """Bring every card of this transfer up to date (adding one to the open chat)."""
        if info.peer_id == self.current:
            card = self.conversation.card(info.transfer_id)
            if isinstance(card, TransferCard):
                card.update_info(info)
            elif card is None:
                self.conversation.add_item(self._card(info))
        for listener in self._listeners():
            listener.transfer_changed(info)

    def _on_file_offer(self, event: TransferOffered) -> None:
        """A card in the conversation; the modal when it is on screen, else a notification."""
        info = self._fresh_info(event.transfer_id)
        if info is None:
            return
        self._show_transfer(info)
        name = self.name_of(event.peer_id)
        if not info.awaiting_answer:
            return  # accepted on its own (--accept-files-from) before we got here
        if event.peer_id == self.current:
            self._alert(f"offer:{event.transfer_id}", "File offer", f"{name} offers {info.title}")
            self.app.push_screen(OfferScreen(self.node, info, name), self._offer_answered)
            return
        first = one_line(event.files[0][0], 40) if event.files else "?"
        more = f" and {len(event.files) - 1} more" if len(event.files) > 1 else ""
        self._notice(
            f"offer:{event.transfer_id}",
            "File offer",
            f"{name} offers {first}{more} ({human_size(event.total)}). Click to answer (or F3).",
            severity="warning",
            timeout=30,
            target=f"offer:{event.transfer_id}",
        )

    def _offer_answered(self, answer: str | None) -> None:
        self.composer.focus()

    def show_offer(self, transfer_id: str) -> None:
        """Open the offer's conversation and ask (the notification's and palette's action)."""
        info = self._fresh_info(transfer_id)
        if info is None:
            return
        self.open_conversation(info.peer_id)
        if not info.awaiting_answer:
            self.notify(f"That offer is {info.state} already", timeout=4)
            return
        if any(
            isinstance(s, OfferScreen) and s.transfer_id == transfer_id
            for s in self.app.screen_stack
        ):
            return
        self.app.push_screen(
            OfferScreen(self.node, info, self.name_of(info.peer_id)), self._offer_answered
        )

    def _on_transfer_progress(self, event: TransferProgress) -> None:
        self.progress.record(event, time.monotonic())

    def _draw_progress(self) -> None:
        due = self.progress.due()
        if not due:
            return
        listeners = self._listeners()
        for transfer_id, (done, total) in due.items():
            rate = self.progress.rate(transfer_id)
            card = self.conversation.card(transfer_id)
            if isinstance(card, TransferCard):
                card.set_progress(done, total, rate)
            for listener in listeners:
                listener.transfer_progress(transfer_id, done, total, rate)

    def _on_transfer_state(self, event: TransferStateChanged) -> None:
        info = self._fresh_info(event.transfer_id)
        if info is None:
            return
        if info.finished:
            self.progress.forget(info.transfer_id)
        self._show_transfer(info)
        if event.state in ("done", "declined", "cancelled", "failed"):
            self._transfer_ended(info, event)

    def _transfer_ended(self, info: TransferInfo, event: TransferStateChanged) -> None:
        """Say how it ended when the card is not in view."""
        if info.peer_id == self.current and self._visible():
            return
        name = self.name_of(info.peer_id)
        title = one_line(info.title, 60)
        key, target = f"xfer:{info.transfer_id}", f"peer:{info.peer_id}"
        self.notices.drop(f"offer:{info.transfer_id}")
        if event.state == "done":
            text = f"Received {title} from {name}" if info.incoming else f"{name} received {title}"
            self._notice(key, "File transfer", text, target=target, alert=False)
        elif event.state == "failed":
            self._notice(
                key,
                "File transfer failed",
                f"{title} ({name}): {event.error or 'failed'}",
                severity="error",
                timeout=15,
                target=target,
                alert=False,
            )
        elif event.state == "declined" and not info.incoming:
            self._notice(key, "File transfer", f"{name} declined {title}", target=target)
        elif event.state == "cancelled":
            self._notice(key, "File transfer", f"{title} ({name}): cancelled", target=target)

    @on(TransferCard.Action)
    def _card_action_message(self, event: TransferCard.Action) -> None:
        event.stop()
        self._card_action(event)

    def _card_action(self, event: TransferCard.Action) -> None:
        """A card's button, in the conversation or in the panel."""
        info = event.card.info
        name = self.name_of(info.peer_id)
        try:
            if event.action == "accept":
                self.node.accept_transfer(info.transfer_id)
            elif event.action == "decline":
                self.node.decline_transfer(info.transfer_id)
            elif event.action == "cancel":
                self.node.cancel_transfer(info.transfer_id)
            elif event.action == "save_as":
                self._save_as(info, name)
            elif event.action == "open":
                self.open_folder(info)
        except OwnerUnavailable:
            raise  # the screen's guard tells the app (screens/guard.py)
        except Exception as exc:  # TransferError lives in p2pchat.net, which the UI may not import
            self.notify(str(exc), severity="error", markup=False)

    def _save_as(self, info: TransferInfo, name: str) -> None:
        def chosen(folder: Path | None) -> None:
            if folder is None:
                return
            try:
                self.node.accept_transfer(info.transfer_id, folder=folder)
            except OwnerUnavailable:
                raise  # the screen's guard tells the app (screens/guard.py)
            except Exception as exc:  # see _card_action
                self.notify(str(exc), severity="error", markup=False)

        self.app.push_screen(
            FolderPickerScreen(
                f"Save {name}'s files in…", initial=downloads_folder(self.node) or Path.home()
            ),
            chosen,
        )

    def open_folder(self, info: TransferInfo) -> None:
        """Show where a received transfer went: the file manager if there is one."""
        folder = info.folder or (str(Path(info.saved[0]).parent) if info.saved else None)
        if folder is None:
            self.notify("This transfer saved nothing", severity="warning")
            return
        argv = opener_argv(folder)
        if argv is None:
            self.notify(f"Saved in {folder}", title="Files", timeout=10, markup=False)
            return
        self.run_worker(self._run_opener(argv, folder), group="open-folder")

    async def _run_opener(self, argv: list[str], folder: str) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            self.notify(f"Cannot open {folder}: {exc}", severity="warning", markup=False)
            return
        try:
            code = await asyncio.wait_for(proc.wait(), OPENER_TIMEOUT)
        except TimeoutError:
            return  # some openers stay until the file manager closes
        if code != 0:
            self.notify(
                f"No file manager answered; the files are in {folder}",
                severity="warning",
                timeout=10,
                markup=False,
            )

    def offer_paths(self, peer: str, paths: list[Path]) -> None:
        """Offer files in a worker (hashing big files takes a while): "preparing…" meanwhile."""
        if self.mode == "read-only":
            self.notify("Read-only: cannot send while another node runs", severity="warning")
            return
        placeholder = PreparingCard(
            self.clock(), author=self.node.name, what=describe_paths(paths), tz=self.tz
        )
        if peer == self.current:
            self.conversation.add_item(placeholder)
        self.run_worker(self._offer(peer, paths, placeholder), group="offers")

    async def _offer(self, peer: str, paths: list[Path], placeholder: PreparingCard) -> None:
        try:
            transfer = await self.node.offer_files(peer, paths)
        except OwnerUnavailable as exc:
            watcher = self.app
            if isinstance(watcher, OwnerWatcher):
                watcher.owner_unavailable(exc)
            return
        except Exception as exc:  # missing files, too many files, a closed store...
            self.notify(f"Cannot send: {exc}", severity="error", markup=False)
            return
        finally:
            self.conversation.remove_item(placeholder)
        if self.detached:
            return
        if peer == self.current and self.conversation.card(transfer.id) is None:
            self.conversation.add_item(self._card(self._info(transfer)))
        for listener in self._listeners():
            listener.transfer_changed(self._info(transfer))

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

    # ---------------------------------------------------------- notices
    def _notice(
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
        self.notices.post(key, title, text, severity=severity, timeout=timeout, target=target)
        if alert:
            self._alert(key, title, text)

    def _alert(self, key: str, title: str, body: str) -> None:
        """Bell and desktop notification, at most once per subject a minute (AlertLimiter)."""
        bell = self.bell
        desktop = self.desktop_notifications
        if not (bell or desktop) or not self._alerts.allow(key, time.monotonic()):
            return
        if bell:
            self.app.bell()
        if desktop:
            self.run_worker(notify_desktop(title, body), group="desktop", exclusive=False)

    @property
    def desktop_notifications(self) -> bool:
        try:
            return self.node.settings.get("desktop_notifications") is True
        except Exception:  # an attached view whose owner went away
            return False

    @on(NoticeTray.Activated)
    def _notice_clicked(self, event: NoticeTray.Activated) -> None:
        event.stop()
        kind, _, value = (event.target or "").partition(":")
        if kind == "peer":
            self.open_conversation(value)
        elif kind == "request":
            self.show_request(value)
        elif kind == "offer":
            self.show_offer(value)


def _names(t: Transfer) -> list[tuple[str, int]]:
    return [(f.path, f.size) for f in t.files]


def _waiting(view: ContactView) -> str:
    """What holds our messages to ``view`` back, in words ("" when nothing does)."""
    if view.awaiting_acceptance:
        return "they have not accepted you yet: messages wait"
    if view.deferred:
        return f"their node holds our messages back: {view.deferred}"
    return ""


def _message_time(m: Message) -> float:
    """Incoming messages sort and group by when they arrived here: the peer's clock
    may be wrong, and the conversation is shown in arrival order."""
    if m.direction == "in" and m.received_at is not None:
        return m.received_at
    return m.created_at
