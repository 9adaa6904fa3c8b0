"""Garbage collector settings for the app's lifetime.

CPython's full (generation 2) collection walks every tracked object.  A
running Textual app holds about 90,000 of them (widgets, styles, caches,
modules), so a full collection stops the event loop for 70-150 ms on a busy
two-core machine: every key typed during it waits (``benchmarks/tui.py`` saw
them as the p99 of echo latency while a file was received).  Once the app is
up, the objects that exist then live as long as the app; :func:`settle`
moves them out of the collector's sight (``gc.freeze``) and makes full
collections ten times rarer.  Young objects are collected as before.
:func:`release` undoes both when the app leaves, so a process that runs the
app several times (the tests) does not keep the old apps' objects.
"""

from __future__ import annotations

import gc

# Full collections after this many collections of the middle generation
# (CPython's default is 10).
FULL_COLLECTION_EVERY = 100

_saved: tuple[int, int, int] | None = None


def settle() -> None:
    """Freeze what exists now and space out full collections (idempotent)."""
    global _saved
    if _saved is not None:
        return
    threshold = gc.get_threshold()
    _saved = (threshold[0], threshold[1], threshold[2])
    gc.collect()
    gc.freeze()
    if _saved[2] > 0:
        gc.set_threshold(_saved[0], _saved[1], max(_saved[2], FULL_COLLECTION_EVERY))


def release() -> None:
    """Back to the interpreter's settings; frozen objects become collectable again."""
    global _saved
    if _saved is None:
        return
    gc.unfreeze()
    gc.set_threshold(*_saved)
    _saved = None
