"""Groups on the main screen: the list's group rows and invitations, an open group's
conversation (per-message author, how many members hold each of our messages), the
member list, and what is done to a group (create, invite, remove, leave, answer an
invitation).

A group open on screen takes the conversation pane the way a contact does; then
``screen.current`` (the open contact) is None and ``open_id`` names the group.
Everything comes from ``node.groups`` (the node's group service, or the owner's
through the control socket when the app is attached): the UI never reaches the
network itself.  Names of groups and members and message texts are peer text and
reach the screen only through ``ui/safe.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING

from textual.content import Content

from p2pchat.core.events import NodeEvent
from p2pchat.core.group.errors import GroupError
from p2pchat.core.group.events import (
    GroupChanged,
    GroupDeliveryChanged,
    GroupInviteReceived,
    GroupMemberOnline,
    GroupMessageReceived,
    GroupMessageView,
    GroupView,
)
from p2pchat.node import NodeError
from p2pchat.remote import OwnerUnavailable
from p2pchat.store import StoreError
from p2pchat.ui.format import day_of, human_size, short_id
from p2pchat.ui.safe import literal, shown_name
from p2pchat.ui.screens.groups import GroupInviteScreen, GroupMembersScreen
from p2pchat.ui.screens.main.commands import Handler
from p2pchat.ui.widgets import ChatLine, Composer
from p2pchat.ui.widgets.group_rows import GROUP, GroupEntry

if TYPE_CHECKING:
    from p2pchat.ui.screens.main.screen import MainScreen

PaletteCommand = tuple[str, str, Callable[[], object]]

HISTORY_LIMIT = 300
GROUP_EVENTS = (
    GroupInviteReceived,
    GroupChanged,
    GroupMessageReceived,
    GroupDeliveryChanged,
    GroupMemberOnline,
)
# Commands that mean something else while a group is open (/invite CONTACT adds a
# member, /remove MEMBER removes one); without a group they keep their contact meaning.
IN_GROUP = ("invite", "remove")
STATUS_WORDS = {
    "left": "you left this group: its history stays readable",
    "removed": "you were removed from this group: nothing sent after that reaches you",
    "declined": "you declined this invitation",
}


def delivery(m: GroupMessageView) -> str | None:
    """``3/5``: members known to hold our message, of the group's current members."""
    return f"{m.delivered}/{m.members}" if m.mine else None


def body_of(m: GroupMessageView) -> str:
    if m.kind == "text" and m.text is not None:
        return m.text
    if m.kind == "files":
        names = ", ".join(f"{path} ({human_size(size)})" for path, size in m.files[:5])
        more = f" and {len(m.files) - 5} more" if len(m.files) > 5 else ""
        return f"offered files: {names}{more} (p2pchat transfers, accept-file)"
    return f"a {m.kind!r} message this version cannot show"


class GroupController:
    def __init__(self, screen: MainScreen) -> None:
        self.screen = screen
        self.open_id: str | None = None
        self.views: dict[str, GroupView] = {}
        self._dirty = True
        self._read_due = False

    @property
    def is_open(self) -> bool:
        return self.open_id is not None

    def name_of(self, group_id: str) -> str:
        view = self.views.get(group_id)
        return shown_name(view.name if view else "", short_id(group_id))

    # -------------------------------------------------------------- list
    def schedule(self) -> None:
        self._dirty = True

    def flush(self) -> None:
        if self._dirty:
            self.refresh()
        if self._read_due:
            self._mark_read()

    def refresh(self) -> None:
        """Re-read every group and give the list its rows (unread counts, presence)."""
        self._dirty = False
        screen = self.screen
        if not screen.live:
            return
        views = [
            v
            for v in screen.node.groups.all()
            if v.status != "declined" and (v.status != "invited" or v.members)
        ]
        self.views = {v.group_id: v for v in views}
        views.sort(key=lambda v: (-v.unread, v.name.casefold()))
        entries = [
            GroupEntry(
                group_id=v.group_id,
                name=v.name,
                status=v.status,
                members=v.members,
                online=v.online,
                unread=v.unread,
                inviter=screen.contacts.name_of(v.inviter) if v.inviter else None,
            )
            for v in views
        ]
        for v in views:
            screen.notices.set_count(f"group:{v.group_id}", v.unread)
        screen.contact_list.set_groups(entries, open_group=self.open_id)
        if self.open_id is not None:
            view = self.views.get(self.open_id)
            if view is not None:
                screen.conversation.set_header(self.header(view))
                if view.unread:
                    self.schedule_read()

    # ---------------------------------------------------------- showing
    def open(self, group_id: str) -> None:
        """Show the group's conversation in the pane (the contact one closes)."""
        screen = self.screen
        try:
            view = screen.node.groups.get(group_id)
        except (GroupError, NodeError, StoreError):
            return
        if screen.current is not None:
            screen.chat.stop_typing()
        screen.current = None
        self.open_id = group_id
        self.views[group_id] = view
        screen.notices.drop(f"group:{group_id}")
        screen.alerts.forget(f"group:{group_id}")
        messages = screen.node.groups.history(group_id, limit=HISTORY_LIMIT)
        name = self.name_of(group_id)
        screen.conversation.show(
            "group:" + group_id,
            self.header(view),
            [self.line(m) for m in messages],
            today=day_of(screen.clock(), screen.tz),
            empty_hint=f"No messages in {name} yet. /invite CONTACT adds members.",
        )
        screen.conversation.set_banner(STATUS_WORDS.get(view.status))
        screen.contact_list.select_group(group_id)
        composer = screen.composer
        if screen.mode != "read-only":
            composer.placeholder = literal(
                f"Message the group {name} (Enter sends, /members, /invite, /leave, /help)"
            )
        self.schedule_read()

    def close(self) -> None:
        """A contact's conversation takes the pane."""
        self.open_id = None

    def line(self, m: GroupMessageView) -> ChatLine:
        return ChatLine(
            message_id=m.message_id,
            outgoing=m.mine,
            author=self.screen.node.name if m.mine else m.author_name,
            body=body_of(m),
            at=m.sent_at if m.mine else m.received_at,
            state="delivered",
            delivery=delivery(m),
        )

    def header(self, view: GroupView) -> Content:
        parts: list[str | tuple[str, str]] = [
            ("# ", "$text-muted"),
            (shown_name(view.name, short_id(view.group_id)), "bold"),
        ]
        if view.status == "joined":
            parts.append((f"  {view.members} members", "$text-muted"))
            style = "$success" if view.online else "$text-muted"
            parts.append((f"  ● {view.online} online", style))
            if view.role == "admin":
                parts.append(("  you are admin", "$text-muted"))
            parts.append(("  /members", "$text-muted"))
        else:
            parts.append((f"  {view.status}", "$text-warning"))
        parts.append((f"  {short_id(view.group_id, 12)}", "$text-muted"))
        return Content.assemble(*parts)

    def _refresh_open(self) -> None:
        if self.open_id is None:
            return
        try:
            view = self.screen.node.groups.get(self.open_id)
        except (GroupError, NodeError, StoreError):
            return
        self.views[view.group_id] = view
        self.screen.conversation.set_header(self.header(view))
        self.screen.conversation.set_banner(STATUS_WORDS.get(view.status))

    # ------------------------------------------------------ read marks
    def schedule_read(self) -> None:
        self._read_due = True

    def _mark_read(self) -> None:
        self._read_due = False
        screen = self.screen
        gid = self.open_id
        if gid is None or not screen.live or screen.mode == "read-only":
            return
        view = self.views.get(gid)
        if view is None or not view.unread or not screen.in_view():
            return
        try:
            screen.node.groups.mark_read(gid)
        except OwnerUnavailable:
            raise  # the screen's guard tells the app (screens/guard.py)
        except (GroupError, NodeError, StoreError):
            return
        self.views[gid] = replace(view, unread=0)
        self.schedule()

    # ----------------------------------------------------------- sending
    def send_text(self, text: str, *, restore: Composer | None = None) -> None:
        screen = self.screen
        gid = self.open_id
        if gid is None:
            return
        if screen.mode == "read-only" or not screen.live:
            why = "read-only" if screen.mode == "read-only" else screen.suspended
            screen.notify(f"Not sent: {why or 'the node is stopping'}", severity="warning")
            if restore is not None:
                restore.load_text(text)
            return
        try:
            message = screen.node.groups.send(gid, text)
        except OwnerUnavailable:
            raise  # the screen's guard tells the app (screens/guard.py)
        except (GroupError, NodeError, StoreError, ValueError) as exc:
            screen.notify(str(exc), severity="error", markup=False)
            if restore is not None:
                restore.load_text(text)
            return
        screen.conversation.add_line(self.line(message))
        self.schedule()

    # ------------------------------------------------------------ events
    def on_event(self, event: NodeEvent) -> None:
        screen = self.screen
        if isinstance(event, GroupInviteReceived):
            who = screen.contacts.name_of(event.inviter)
            name = shown_name(event.name, short_id(event.group_id))
            screen.alerts.notice(
                f"ginvite:{event.group_id}",
                "Group invitation",
                f"{who} invited you to {name}. Click here, or select it in the list.",
                severity="warning",
                timeout=20,
                target=f"groupinvite:{event.group_id}",
            )
            self.schedule()
        elif isinstance(event, GroupMessageReceived):
            self._incoming(event.message)
        elif isinstance(event, GroupDeliveryChanged):
            if event.group_id == self.open_id:
                screen.conversation.set_delivery(
                    event.message_id, f"{event.delivered}/{event.members}"
                )
        elif isinstance(event, GroupChanged):
            self.schedule()
            if event.group_id == self.open_id:
                self._refresh_open()
        elif isinstance(event, GroupMemberOnline):
            self.schedule()

    def _incoming(self, m: GroupMessageView) -> None:
        screen = self.screen
        gid = m.group_id
        if gid == self.open_id:
            screen.conversation.queue_line(self.line(m))
            self.schedule_read()
            if not screen.in_view():
                screen.alerts.alert(f"group:{gid}", self.name_of(gid), body_of(m))
        elif not m.mine:
            who = shown_name(m.author_name, short_id(m.author))
            screen.alerts.notice(
                f"group:{gid}",
                self.name_of(gid),
                f"{who}: {body_of(m)}",
                target=f"group:{gid}",
            )
        self.schedule()

    def notice_clicked(self, kind: str, group_id: str) -> None:
        if kind == "groupinvite":
            self.show_invite(group_id)
        else:
            self.open(group_id)

    def highlighted(self, group_id: str) -> None:
        """The list's cursor is on a group: open it, unless the cursor moved on since."""
        highlighted = self.screen.contact_list.highlighted_option
        if highlighted is not None and highlighted.id != GROUP + group_id:
            return
        if group_id != self.open_id:
            self.open(group_id)

    # ---------------------------------------------------------- dialogs
    def show_invite(self, group_id: str) -> None:
        screen = self.screen
        try:
            view = screen.node.groups.get(group_id)
        except (GroupError, NodeError, StoreError):
            self.schedule()
            return
        if view.status != "invited":
            self.schedule()
            return
        inviter = screen.contacts.name_of(view.inviter) if view.inviter else "A member"

        def answered(choice: str | None) -> None:
            screen.notices.drop(f"ginvite:{group_id}")
            self.refresh()
            if choice == "accept":
                self.open(group_id)

        screen.app.push_screen(GroupInviteScreen(screen.node, view, inviter), answered)

    def show_members(self) -> None:
        screen = self.screen
        gid = self._need_open()
        view = screen.node.groups.get(gid)
        if view.status != "joined":
            raise GroupError("you are not taking part in this group: no member list")
        members = screen.node.groups.members(gid)
        screen.app.push_screen(GroupMembersScreen(view, members))

    # ---------------------------------------------------------- commands
    def commands(self) -> dict[str, Handler]:
        return {
            "group": self._cmd_group,
            "leave": lambda args: self._leave(),
            "members": lambda args: self.show_members(),
        }

    def in_group(self, name: str) -> Handler | None:
        """The handler for ``/name`` while a group is open, if it means something else
        there (``IN_GROUP``); None otherwise."""
        if self.open_id is None or name not in IN_GROUP:
            return None
        return {"invite": self._cmd_invite, "remove": self._cmd_remove}[name]

    def _need_open(self) -> str:
        if self.open_id is None:
            raise GroupError("open a group first (select it in the list)")
        return self.open_id

    def _cmd_group(self, args: str) -> None:
        action, _, rest = args.partition(" ")
        if action.lower() != "create" or not rest.strip():
            raise GroupError("usage: /group create NAME")
        view = self.screen.node.groups.create(rest.strip(), [])
        self.screen.notify(
            f"Created {shown_name(view.name)}: /invite CONTACT adds members",
            timeout=5,
            markup=False,
        )
        self.refresh()
        self.open(view.group_id)

    def _cmd_invite(self, args: str) -> None:
        if not args:
            self.screen.contacts.add_contact()  # /invite alone: our own invite, as always
            return
        gid = self._need_open()
        view = self.screen.node.groups.add_member(gid, args)
        who = self.screen.contacts.name_of(self.screen.node.find_contact(args).peer_id)
        self.screen.notify(
            f"Invited {who} to {shown_name(view.name)}: they join when they accept",
            timeout=5,
            markup=False,
        )
        self.refresh()

    def _cmd_remove(self, args: str) -> None:
        gid = self._need_open()
        if not args:
            raise GroupError("usage in a group: /remove MEMBER (a name or peer ID)")
        view = self.screen.node.groups.remove_member(gid, args)
        self.screen.notify(
            f"Removed {shown_name(args)} from {shown_name(view.name)}", timeout=5, markup=False
        )
        self.refresh()

    def _leave(self) -> None:
        gid = self._need_open()
        view = self.screen.node.groups.leave(gid)
        self.screen.notify(
            f"You left {shown_name(view.name)}; its history stays", timeout=5, markup=False
        )
        self.refresh()
        self._refresh_open()

    # ----------------------------------------------------------- palette
    def palette(self) -> Iterator[PaletteCommand]:
        screen = self.screen
        run = screen.commands.runner
        if self.open_id is not None:
            name = self.name_of(self.open_id)
            yield f"Members of {name}", "Who is in the group, who is online (/members)", (
                self.show_members
            )
            yield f"Leave {name}", "Stop taking part; the history stays (/leave)", run("leave")
        for gid, view in sorted(self.views.items(), key=lambda item: item[1].name.casefold()):
            name = self.name_of(gid)
            if view.status == "invited":
                yield f"Answer group invitation: {name}", "Join or decline", partial(
                    self.show_invite, gid
                )
            else:
                yield f"Open group: {name}", short_id(gid, 12), partial(self.open, gid)
