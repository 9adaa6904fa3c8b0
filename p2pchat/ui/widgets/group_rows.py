"""Group rows of the left-hand list: the groups we take part in (or took part in) and
the invitations waiting for an answer.

A group's name is chosen by whichever admin named it last, and an invitation names
its inviter as the inviter's own node claims: both are peer text, shown through
``one_line`` inside ``Content`` (never markup).
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.content import Content

from p2pchat.ui.safe import one_line

GROUP = "g:"
GROUP_INVITE = "gi:"
NAME_CHARS = 18
PREVIEW_CHARS = 20


@dataclass(frozen=True, slots=True)
class GroupEntry:
    """One group as the list shows it (from ``GroupView``)."""

    group_id: str
    name: str
    status: str
    """``joined``, ``left``, ``removed``, ``declined`` or ``invited``."""
    members: int
    online: int
    unread: int
    inviter: str | None = None
    """For an invitation: who invited us (their name as a contact, else a short ID)."""


def group_prompt(g: GroupEntry) -> Content:
    """``# book club  3`` over ``5 members · 2 online`` (or why it is read-only)."""
    mark = ("# ", "$success") if g.status == "joined" and g.online else ("# ", "$text-muted")
    parts: list[str | tuple[str, str]] = [mark, (one_line(g.name, NAME_CHARS), "bold")]
    if g.unread:
        parts.append((" ", ""))
        parts.append((f" {g.unread} ", "$text on $accent bold"))
    if g.status == "joined":
        second = f"{g.members} member{'s' if g.members != 1 else ''} · {g.online} online"
    else:
        second = {"left": "you left", "removed": "you were removed"}.get(g.status, g.status)
    return Content.assemble(*parts, ("\n  " + second, "$text-muted"))


def invite_prompt(g: GroupEntry) -> Content:
    """``? # book club`` over ``invited by alice``."""
    who = one_line(g.inviter or "a member", PREVIEW_CHARS)
    return Content.assemble(
        ("? # ", "$warning bold"),
        (one_line(g.name, NAME_CHARS), "bold"),
        ("\n  invited by " + who, "$text-muted"),
    )
