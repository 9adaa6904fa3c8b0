"""The open conversation: what it shows, sending, replies, edits and deletions, read
receipts and "typing…" both ways, older history paged in, the selected message's
actions (reply, edit, delete, open a link) and finding a message by search.

The pane (``widgets/conversation.py``) draws rows and keeps its own state
(which rows are shown, who is typing, messages waiting for the next flush);
this reads the node to fill it and tells the node what the user did.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from textual.content import Content

from p2pchat.core.events import (
    MessageDeleted,
    MessageEdited,
    MessageReceived,
    MessageSent,
    MessageStateChanged,
    NodeEvent,
    TypingChanged,
)
from p2pchat.node import NodeError
from p2pchat.remote import OwnerUnavailable
from p2pchat.store import Contact, Message, StoreError
from p2pchat.ui.format import TypingSignal, TypingThrottle, day_of, relative_time, short_id
from p2pchat.ui.safe import one_line, shown_name
from p2pchat.ui.screens.confirm import ChoiceScreen
from p2pchat.ui.screens.main.commands import Handler
from p2pchat.ui.screens.search import SearchScreen
from p2pchat.ui.widgets import ChatLine, Composer, ConversationView
from p2pchat.ui.widgets.composer import ComposeContext
from p2pchat.ui.widgets.conversation import MessageItem

if TYPE_CHECKING:
    from p2pchat.ui.screens.main.screen import MainScreen

HISTORY_LIMIT = 300
# Older history comes in pages of this many messages as the user scrolls up.
PAGE = 100
# A search result older than this many pages back is not paged in to be shown.
REVEAL_PAGES = 10


class ChatController:
    def __init__(self, screen: MainScreen) -> None:
        self.screen = screen
        self._throttle = TypingThrottle()
        # Conversations with messages we have not told the node we read.
        self._needs_read: set[str] = set()
        self._read_due = False

    # ---------------------------------------------------------- showing
    def open(self, peer_id: str, contact: Contact, *, reach: str | None = None) -> None:
        """Fill the pane with the conversation with ``contact``; with ``reach`` (a
        message id), page back until that message is in it (at most ``REVEAL_PAGES``)."""
        screen = self.screen
        screen.contacts.names[peer_id] = shown = shown_name(contact.name, short_id(peer_id))
        messages = screen.node.history(peer_id, limit=HISTORY_LIMIT)
        has_more = len(messages) >= HISTORY_LIMIT
        pages = 0
        while reach is not None and has_more and pages < REVEAL_PAGES:
            if any(m.id == reach for m in messages):
                break
            page = screen.node.history(peer_id, limit=PAGE, before=messages[0].id)
            messages = page + messages
            has_more = len(page) >= PAGE
            pages += 1
        unread = next(
            (m.id for m in messages if m.direction == "in" and m.state == "delivered"), None
        )
        screen.conversation.show(
            peer_id,
            self.header(contact),
            [self.line(m, shown) for m in messages],
            cards=screen.transfers.cards_of(peer_id),
            today=day_of(screen.clock(), screen.tz),
            empty_hint=f"No messages with {shown} yet. Say hello!",
            unread_from=unread,
            has_more=has_more,
            paged=pages > 0,
        )
        screen.conversation.set_banner(screen.contacts.warnings.get(peer_id))
        self.schedule_read()

    def older(self) -> None:
        """The user reached the top: the page of history before the first row."""
        screen = self.screen
        view = screen.conversation
        peer = screen.current
        first = view.oldest_message_id
        if peer is None or first is None or not view.has_more:
            # A group's pane: no paging there yet, so no promise of more either.
            view.prepend_lines([], has_more=False)
            return
        page = screen.node.history(peer, limit=PAGE, before=first)
        name = screen.contacts.names.get(peer, "")
        view.prepend_lines([self.line(m, name) for m in page], has_more=len(page) >= PAGE)

    def jump_latest(self) -> None:
        """To the newest message; a pane grown by paging is read afresh (its usual size)."""
        screen = self.screen
        view = screen.conversation
        if screen.current is not None and view.paged:
            screen.open_conversation(screen.current, reload=True)
        view.scroll_to_latest()
        screen.composer.focus()

    def reveal(self, message: Message) -> None:
        """Open the message's conversation with it selected, paging back to reach it."""
        screen = self.screen
        view = screen.conversation
        if not (screen.current == message.peer_id and view.has_message(message.id)):
            screen.open_conversation(message.peer_id, reload=True, reach=message.id)
        item = view.message(message.id)
        if item is None:
            screen.notify(
                "That message is further back than the app pages in; "
                "`p2pchat history` shows it all",
                severity="warning",
            )
            return
        # Selected once the rows are laid out (a fresh timeline mounts after this).
        view.call_after_refresh(view.select, item, focus=True)

    def line(self, m: Message, name: str) -> ChatLine:
        outgoing = m.direction == "out"
        return ChatLine(
            message_id=m.id,
            outgoing=outgoing,
            author=self.screen.node.name if outgoing else name,
            body=m.body,
            at=message_time(m),
            state=m.state,
            quote=self._quote(m.peer_id, m.reply_to),
            edited=m.edited_at is not None,
            deleted=m.deleted_at is not None,
        )

    def _quote(self, peer: str, reply_to: str | None) -> str | None:
        """``bob: the first words`` of the message ``reply_to`` answers, if we have it."""
        if not reply_to:
            return None
        screen = self.screen
        original = screen.node.get_message(reply_to, contact=peer)
        if original is None:
            return "a message not here"
        if original.deleted_at is not None:
            return "a deleted message"
        who = screen.node.name if original.direction == "out" else screen.contacts.name_of(peer)
        return f"{who}: {original.body}"

    def header(self, contact: Contact) -> Content:
        screen = self.screen
        online = screen.node.is_online(contact.peer_id)
        parts: list[str | tuple[str, str]] = [
            (shown_name(contact.name, short_id(contact.peer_id)), "bold")
        ]
        if contact.verified:
            parts.append(("  ✔ verified", "$success"))
        else:
            parts.append(("  not verified (F2)", "$text-muted"))
        if online:
            parts.append(("  ● online", "$success"))
            path = screen.contacts.paths.get(contact.peer_id, "")
            if path:
                parts.append((path, "$text-muted"))
        else:
            seen = relative_time(contact.last_seen, screen.clock(), screen.tz)
            parts.append((f"  ○ offline, last seen {seen}", "$text-muted"))
        waiting = screen.contacts.waiting.get(contact.peer_id)
        if waiting:
            parts.append((f"  · {one_line(waiting, 60)}", "$text-warning"))
        parts.append((f"  {short_id(contact.peer_id, 12)}", "$text-muted"))
        return Content.assemble(*parts)

    def refresh_header(self) -> None:
        screen = self.screen
        if screen.current is None:
            return
        try:
            contact = screen.node.find_contact(screen.current)
        except StoreError:
            return
        screen.conversation.set_header(self.header(contact))

    # ------------------------------------------------------ read receipts
    def note_unread(self, peers: set[str]) -> None:
        self._needs_read |= peers

    def schedule_read(self) -> None:
        self._read_due = True

    def flush(self) -> None:
        if self._read_due:
            self._mark_read()

    def _mark_read(self) -> None:
        self._read_due = False
        screen = self.screen
        peer = screen.current
        if (
            not screen.live
            or peer is None
            or screen.mode == "read-only"
            or peer not in self._needs_read
        ):
            return
        if not screen.in_view():
            return
        self._needs_read.discard(peer)
        try:
            screen.node.mark_read(peer)
        except OwnerUnavailable:
            raise  # the screen's guard tells the app (screens/guard.py)
        except (NodeError, StoreError):
            return
        screen.contacts.schedule()

    # ----------------------------------------------------------- sending
    def send_text(
        self, text: str, *, restore: Composer | None = None, reply_to: str | None = None
    ) -> None:
        screen = self.screen
        if screen.mode == "read-only":
            screen.notify("Read-only: cannot send while another node runs", severity="warning")
            return
        if not screen.live:
            why = screen.suspended or "the node is stopping"
            screen.notify(f"Not sent: {why}", severity="warning")
            if restore is not None:
                restore.load_text(text)
            return
        peer = screen.current
        if peer is None:
            screen.notify("Pick a contact first (or /add one)", severity="warning")
            if restore is not None:
                restore.load_text(text)
            return
        self.stop_typing()
        try:
            if reply_to is None:
                message = screen.node.send_message(peer, text)
            else:
                message = screen.node.send_message(peer, text, reply_to=reply_to)
        except OwnerUnavailable:
            raise  # the screen's guard tells the app (screens/guard.py)
        except (NodeError, StoreError) as exc:
            screen.notify(str(exc), severity="error", markup=False)
            if restore is not None:
                restore.load_text(text)
            return
        screen.conversation.add_line(self.line(message, screen.contacts.names.get(peer, "")))
        screen.contacts.schedule()

    # ------------------------------------------------------------ typing
    def typed(self, text: str) -> None:
        """The user changed the message box: maybe tell the contact we type."""
        screen = self.screen
        stripped = text.lstrip()
        if stripped.startswith("/") and not stripped.startswith("//"):
            # A command is not a message: the contact is not told we type.
            self.stop_typing()
            return
        if screen.current is not None and screen.mode == "online" and screen.live:
            self._send_typing(self._throttle.keystroke(screen.current, time.monotonic()))

    def stop_typing(self) -> None:
        self._send_typing(self._throttle.stop())

    def forget_typing(self) -> None:
        """The node went away: nothing to tell it, nobody's typing to show."""
        self._throttle.stop()
        self.screen.conversation.set_typing(None)
        self.screen.conversation.forget_typing()

    def _send_typing(self, signals: list[TypingSignal]) -> None:
        for peer, active in signals:
            try:
                self.screen.node.set_typing(peer, active)
            except OwnerUnavailable:
                raise  # the screen's guard tells the app (screens/guard.py)
            except (NodeError, StoreError):
                continue

    def tick(self, now: float) -> None:
        """Once a second: stop our typing signal when idle, expire the peer's."""
        self._send_typing(self._throttle.tick(now))
        self.screen.conversation.expire_typing(now)

    # ------------------------------------------------------------ events
    def on_event(self, event: NodeEvent) -> None:
        screen = self.screen
        conversation = screen.conversation
        if isinstance(event, MessageReceived):
            self._incoming(event)
        elif isinstance(event, MessageSent):
            self._sent_elsewhere(event)
        elif isinstance(event, MessageStateChanged):
            if event.peer_id == screen.current:
                conversation.set_state(event.message_id, event.state)
        elif isinstance(event, MessageEdited):
            if event.peer_id == screen.current:
                conversation.change_message(event.message_id, body=event.body)
        elif isinstance(event, MessageDeleted):
            if event.peer_id == screen.current:
                conversation.change_message(event.message_id, deleted=True)
        elif isinstance(event, TypingChanged):
            name = screen.contacts.name_of(event.peer_id)
            conversation.peer_typing(event.peer_id, name, event.active, time.monotonic())

    def peer_offline(self, peer: str) -> None:
        """A contact that went offline types no more."""
        self.screen.conversation.peer_typing(peer, "", False, time.monotonic())

    def _incoming(self, event: MessageReceived) -> None:
        screen = self.screen
        peer = event.peer_id
        name = screen.contacts.name_of(peer)
        screen.conversation.peer_typing(peer, name, False, time.monotonic())
        self._needs_read.add(peer)
        if peer == screen.current:
            # Drawn at the next flush, together with whatever else arrives by then.
            view = screen.conversation
            view.queue_line(
                ChatLine(
                    message_id=event.message_id,
                    outgoing=False,
                    author=name,
                    body=event.body,
                    at=event.received_at,
                    state="delivered",
                    quote=self._quote(peer, event.reply_to),
                ),
                unread=not screen.in_view() or not view.timeline.following,
            )
            self.schedule_read()
        if peer in screen.contacts.muted:
            pass  # counted in the list, nothing else
        elif peer != screen.current:
            screen.alerts.notice(f"msg:{peer}", name, event.body, target=f"peer:{peer}")
        elif not screen.in_view():
            # Open but not in view (another window has the focus): no notice to
            # click, the conversation has it; the bell and the desktop may say so.
            screen.alerts.alert(f"msg:{peer}", name, event.body)
        screen.contacts.schedule()

    def _sent_elsewhere(self, event: MessageSent) -> None:
        """A message of ours was stored: shown here unless this screen sent it (it was
        sent with ``p2pchat msg``, or from another view of the same node)."""
        screen = self.screen
        screen.contacts.schedule()
        if event.peer_id != screen.current or screen.conversation.has_message(event.message_id):
            return
        screen.conversation.add_line(
            ChatLine(
                message_id=event.message_id,
                outgoing=True,
                author=screen.node.name,
                body=event.body,
                at=event.created_at,
                state="queued",
                quote=self._quote(event.peer_id, event.reply_to),
            )
        )

    # ---------------------------------------------------------- commands
    def commands(self) -> dict[str, Handler]:
        return {
            "reply": self._cmd_reply,
            "edit": self._cmd_edit,
            "delete": self._cmd_delete,
            "search": self._cmd_search,
        }

    def _cmd_search(self, args: str) -> None:
        """Find messages in every conversation (full-text, newest first)."""
        screen = self.screen

        def chosen(found: Message | None) -> None:
            if found is not None:
                self.reveal(found)

        today = day_of(screen.clock(), screen.tz)
        screen.app.push_screen(SearchScreen(screen.node, args, today=today, tz=screen.tz), chosen)

    # --------------------------------------------------- the selected row
    def submit(self, text: str, composer: Composer) -> None:
        """Enter on text that is not a command: a reply or an edit if the box says so."""
        context = composer.context
        if context is None:
            self.send_text(text, restore=composer)
        elif context.kind == "reply":
            composer.set_context(None)
            self.send_text(text, restore=composer, reply_to=context.message_id)
        else:
            try:
                edited = self.screen.node.edit_message(context.message_id, text)
            except OwnerUnavailable:
                raise
            except (NodeError, StoreError) as exc:
                self.screen.notify(str(exc), severity="error", markup=False)
                composer.load_text(text)
                return
            composer.set_context(None)
            self.screen.conversation.change_message(edited.id, body=edited.body)

    def act(self, event: ConversationView.Acted) -> None:
        """A key on the selected message: reply, edit, delete, open its link."""
        item = event.item
        if not isinstance(item, MessageItem):
            return
        line = item.line
        screen = self.screen
        composer = screen.composer
        about = f"{line.author}: {line.body}"
        if screen.groups.is_open and event.action in ("reply", "edit", "delete"):
            return  # groups have no replies, edits or deletions yet
        if event.action == "reply" and not line.deleted:
            composer.set_context(ComposeContext("reply", line.message_id, about))
            composer.focus()
        elif event.action == "edit" and line.outgoing and not line.deleted:
            composer.set_context(ComposeContext("edit", line.message_id, about))
            composer.load_text(line.body)
            composer.move_cursor(composer.document.end)
            composer.focus()
        elif event.action == "delete" and line.outgoing and not line.deleted:
            self._confirm_delete(line)
        elif event.action in ("open_link", "open"):
            self._open_link(item)

    def _confirm_delete(self, line: ChatLine) -> None:
        screen = self.screen

        def chosen(answer: str | None) -> None:
            if answer != "delete":
                return
            try:
                screen.node.delete_message(line.message_id)
            except OwnerUnavailable:
                raise
            except (NodeError, StoreError) as exc:
                screen.notify(str(exc), severity="error", markup=False)
                return
            screen.conversation.change_message(line.message_id, deleted=True)

        screen.app.push_screen(
            ChoiceScreen(
                "Delete this message for both sides?",
                line.body,
                [("delete", "Delete for both"), ("keep", "Keep it")],
            ),
            chosen,
        )

    def _open_link(self, item: MessageItem) -> None:
        found = item.links
        if not found:
            self.screen.notify("No link in this message", severity="warning")
            return
        if len(found) == 1:
            self.screen.transfers.open_target(found[0], what="link")
            return

        def chosen(link: str | None) -> None:
            if link is not None:
                self.screen.transfers.open_target(link, what="link")

        self.screen.app.push_screen(
            ChoiceScreen("Open which link?", "", [(link, link) for link in found]), chosen
        )

    def _cmd_reply(self, args: str) -> None:
        """Answer the contact's latest message, quoting it."""
        peer = self.screen.need_current()
        theirs = [m for m in self.screen.node.history(peer, limit=50) if m.direction == "in"]
        if not theirs:
            raise NodeError("nothing to reply to yet")
        self.send_text(args, reply_to=theirs[-1].id)

    def _cmd_edit(self, args: str) -> None:
        """Change the text of our latest message (for both sides)."""
        message = self._last_own()
        edited = self.screen.node.edit_message(message.id, args)
        self.screen.conversation.change_message(edited.id, body=edited.body)

    def _cmd_delete(self, args: str) -> None:
        """Delete our latest message for both sides."""
        message = self._last_own()
        self.screen.node.delete_message(message.id)
        self.screen.conversation.change_message(message.id, deleted=True)

    def _last_own(self) -> Message:
        peer = self.screen.need_current()
        ours = [
            m
            for m in self.screen.node.history(peer, limit=50)
            if m.direction == "out" and m.deleted_at is None
        ]
        if not ours:
            raise NodeError("you have no message here to change")
        return ours[-1]


def message_time(m: Message) -> float:
    """Incoming messages sort and group by when they arrived here: the peer's clock
    may be wrong, and the conversation is shown in arrival order."""
    if m.direction == "in" and m.received_at is not None:
        return m.received_at
    return m.created_at
