"""Errors of group operations the user asks for, shared by the node's group service,
the control socket's client and the app (which never imports ``p2pchat.net``)."""

from __future__ import annotations


class GroupError(Exception):
    """A group operation the user asked for cannot be done (the CLI prints it)."""


class UnknownGroup(GroupError):
    """No group (or invitation) of ours matches the name or id given."""
