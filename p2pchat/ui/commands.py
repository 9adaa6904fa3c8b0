"""Slash commands typed in the composer.

The table below is the single source for parsing, ``/help`` and the help
screen, so a command cannot exist without being documented.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CommandSpec:
    name: str
    usage: str
    summary: str
    min_args: int = 0


COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec("add", "/add CODE_OR_ID [name]", "add a contact from an invite or a peer ID", 1),
    CommandSpec("accept", "/accept [who]", "accept a contact request (the selected or only one)"),
    CommandSpec("decline", "/decline [who]", "decline a contact request"),
    CommandSpec("verify", "/verify", "compare safety numbers with this contact"),
    CommandSpec("nick", "/nick NAME", "change your display name", 1),
    CommandSpec("rename", "/rename NAME", "rename this contact (only you see it)", 1),
    CommandSpec("reply", "/reply TEXT", "answer their latest message, quoting it", 1),
    CommandSpec("edit", "/edit TEXT", "change your latest message, for both sides", 1),
    CommandSpec("delete", "/delete", "delete your latest message, for both sides"),
    CommandSpec("search", "/search WORDS", "find messages in every conversation", 1),
    CommandSpec(
        "invite",
        "/invite [CONTACT]",
        "show your invite and fingerprint; in a group, invite CONTACT to it",
    ),
    CommandSpec("mute", "/mute", "no notifications, bell or desktop alerts for this contact"),
    CommandSpec("unmute", "/unmute", "notifications for this contact again"),
    CommandSpec(
        "remove",
        "/remove [MEMBER]",
        "remove this contact (history stays; they may ask again); in a group, remove MEMBER",
    ),
    CommandSpec(
        "block",
        "/block [who]",
        "block this contact (or a request, by name or ID): no contact at all",
    ),
    CommandSpec("unblock", "/unblock WHO", "take someone off the block list", 1),
    CommandSpec(
        "send",
        "/send PATH [PATH...]",
        "send files or folders to this contact (quote paths with spaces)",
        1,
    ),
    CommandSpec("transfers", "/transfers", "list file transfers (F3)"),
    CommandSpec("group", "/group create NAME", "start a group (you are its admin)", 1),
    CommandSpec("members", "/members", "who is in this group, who is online"),
    CommandSpec("leave", "/leave", "leave this group (its history stays)"),
    CommandSpec("help", "/help", "keys and commands"),
    CommandSpec("quit", "/quit", "leave p2pchat"),
)

BY_NAME = {spec.name: spec for spec in COMMANDS}


class CommandError(ValueError):
    """The text looked like a command but cannot be run as typed."""


@dataclass(frozen=True, slots=True)
class SlashCommand:
    name: str
    args: str

    @property
    def spec(self) -> CommandSpec:
        return BY_NAME[self.name]


def parse_command(text: str) -> SlashCommand | None:
    """A command, or ``None`` when the text is a message to send.

    ``//`` at the start escapes the slash so a message can begin with one
    (see :func:`message_text`).
    """
    stripped = text.strip()
    if not stripped.startswith("/") or stripped.startswith("//"):
        return None
    head, _, rest = stripped[1:].partition(" ")
    name = head.lower()
    if not name:
        raise CommandError("type a command after '/', or /help for the list")
    spec = BY_NAME.get(name)
    if spec is None:
        raise CommandError(f"unknown command /{head}; /help lists the commands")
    args = rest.strip()
    if spec.min_args and not args:
        raise CommandError(f"usage: {spec.usage}")
    return SlashCommand(name, args)


def message_text(text: str) -> str:
    """The body to send for text that is not a command (``//x`` sends ``/x``)."""
    stripped = text.lstrip()
    if stripped.startswith("//"):
        return stripped[1:]
    return text
