"""The one rule for names people choose: display names, contact names, announced names.

A name travels everywhere: into Hello frames, invites, mDNS announcements, the
contact list, terminal lines.  So every way in (``init --name``, ``rename``,
``add --name``, the app's inputs, a peer's Hello, an invite, an old home's
database) goes through this module and nowhere else decides what a name may be.

The rule is the PRECIS Nickname profile (RFC 8266) with case preserved, through
the maintained ``precis-i18n`` package rather than hand-written tables:

* width and compatibility forms folded (NFKC), non-ASCII spaces mapped to a
  space, leading and trailing spaces trimmed, runs of spaces collapsed;
* no control characters, no formatting or invisible characters: bidi overrides
  and isolates, zero-width spaces and joiners, soft hyphens, unassigned code
  points are all refused (PRECIS disallows Default_Ignorable_Code_Point and
  every Cc/Cf character);
* at least one visible character, at most ``MAX_NAME_CHARS`` characters after
  normalisation.

Variation selectors (U+FE00-FE0F, U+E0100-E01EF) are dropped before the check:
they only pick a glyph style (the "️" in "❤️") and cannot hide or reorder text,
so refusing a name for one would only puzzle the user.

Two entry points, for the two kinds of source:

* ``normalise_name`` for what the user typed: the normalised name, or
  ``InvalidName`` saying exactly why not, so the UI or CLI can show the reason.
* ``repair_name`` for names that come from elsewhere (a peer, an invite, an old
  settings file): never raises, returns the valid name, a repaired one (bad
  characters removed, clipped to length), or None when nothing usable is left.
  ``name_problem`` says what was wrong, for a log line or a notice.

This module has no I/O and imports nothing from ``p2pchat``, so the sans-IO
cores, the node and the UI can all use it.
"""

from __future__ import annotations

import functools
import unicodedata

import precis_i18n

__all__ = [
    "MAX_NAME_CHARS",
    "MAX_RAW_NAME_CHARS",
    "InvalidName",
    "name_problem",
    "normalise_name",
    "repair_name",
]

MAX_NAME_CHARS = 64
"""Characters in a valid name, counted after normalisation."""
MAX_RAW_NAME_CHARS = 1024
"""A foreign name longer than this is not even looked at beyond this point."""

_PROFILE = precis_i18n.get_profile("NicknameCasePreserved")
_VARIATION_SELECTORS = frozenset([*range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)])
_REASONS = {
    "controls": "a control character",
    "precis_ignorable_properties": "an invisible or formatting character",
    "zero_width_joiner": "an invisible joining character",
    "zero_width_nonjoiner": "an invisible joining character",
    "unassigned": "an unassigned character",
    "has_compat": "a compatibility character",
    "old_hangul_jamo": "an archaic Hangul character",
    "other": "a character not allowed in names",
}


class InvalidName(ValueError):
    """A name breaks the rule; the message says why, in words a user understands."""


def _strip_selectors(text: str) -> str:
    return "".join(ch for ch in text if ord(ch) not in _VARIATION_SELECTORS)


def _explain(error: UnicodeError) -> str:
    reason = getattr(error, "reason", "")
    kind = reason.rsplit("/", 1)[-1] if isinstance(reason, str) else ""
    if kind == "empty":
        return "a name needs at least one visible character"
    text = getattr(error, "object", "")
    start = getattr(error, "start", -1)
    what = _REASONS.get(kind, "a character not allowed in names")
    if isinstance(text, str) and 0 <= start < len(text):
        ch = text[start]
        label = unicodedata.name(ch, "")
        return f"a name must not contain {what} (U+{ord(ch):04X}{' ' + label if label else ''})"
    return f"a name must not contain {what}"


def normalise_name(text: str) -> str:
    """The normalised form of a name a person typed; ``InvalidName`` says why not."""
    if not isinstance(text, str):
        raise InvalidName("a name must be text")
    if len(text) > MAX_RAW_NAME_CHARS:
        raise InvalidName(f"a name must be at most {MAX_NAME_CHARS} characters")
    try:
        name: str = _PROFILE.enforce(_strip_selectors(text))
    except UnicodeError as exc:
        raise InvalidName(_explain(exc)) from None
    if len(name) > MAX_NAME_CHARS:
        raise InvalidName(
            f"a name must be at most {MAX_NAME_CHARS} characters (this one has {len(name)})"
        )
    return name


def name_problem(text: object) -> str | None:
    """Why ``text`` is not a valid name as it stands, or None if it is one.

    A valid but unnormalised name (extra spaces, fullwidth letters) is not a
    problem: ``normalise_name`` fixes it silently.
    """
    if not isinstance(text, str):
        return "a name must be text"
    try:
        normalise_name(text)
    except InvalidName as exc:
        return str(exc)
    return None


@functools.lru_cache(maxsize=4096)
def _allowed(ch: str) -> bool:
    try:
        _PROFILE.enforce("x" + ch)
    except UnicodeError:
        return False
    return True


def repair_name(text: object) -> str | None:
    """A usable name from a foreign one, never raising: valid names come back
    normalised; otherwise forbidden characters go (line breaks and other
    controls become spaces), the rest is clipped to ``MAX_NAME_CHARS``, and
    None means nothing usable was left."""
    if not isinstance(text, str):
        return None
    text = text[:MAX_RAW_NAME_CHARS]
    try:
        return normalise_name(text)
    except InvalidName:
        pass
    kept = []
    for ch in _strip_selectors(text):
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            kept.append(" ")
        elif _allowed(ch):
            kept.append(ch)
    candidate = "".join(kept)
    for _ in range(2):
        try:
            name: str = _PROFILE.enforce(candidate)
        except UnicodeError:
            return None
        if len(name) <= MAX_NAME_CHARS:
            return name
        # NFKC may lengthen the text, so clip the normalised form and check again.
        candidate = name[:MAX_NAME_CHARS]
    return None
