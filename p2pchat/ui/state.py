"""What the app remembers between runs that is nobody else's business: the UI's own file.

Kept apart from ``settings.json`` (the node's, which a daemon may rewrite) so the
app never races the node for that file: ``ui-state.json`` in the home holds
which conversation was open, so a restart opens it again rather than the
contact at the top of the list (a message once went to the wrong person that
way).  A damaged or missing file is an empty state, never an error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from p2pchat.config import Paths

STATE_FILE = "ui-state.json"


def state_path(paths: Paths) -> Path:
    return paths.home / STATE_FILE


def load_state(paths: Paths) -> dict[str, Any]:
    try:
        data = json.loads(state_path(paths).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_state(paths: Paths, **values: Any) -> None:
    """Merge ``values`` into the file (owner-only, replaced atomically); errors are ignored:
    losing this file costs a click, not data."""
    state = load_state(paths)
    if all(state.get(k) == v for k, v in values.items()):
        return
    state.update(values)
    path = state_path(paths)
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(state, fh)
        os.replace(tmp, path)
    except OSError:
        return


def last_conversation(paths: Paths) -> str | None:
    value = load_state(paths).get("conversation")
    return value if isinstance(value, str) else None
