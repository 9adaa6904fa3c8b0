"""The receive-window rule that makes delivery exactly-once and in order.

Each direction of a conversation numbers its messages 1, 2, 3, ... (``seq``).
A sender keeps every message in its outbox until the receiver acknowledges it
cumulatively and always transmits its outbox in ``seq`` order; each message also
carries ``base``, the lowest ``seq`` still unacknowledged at the sender when it
was sent.  Everything below ``base`` was acknowledged, and an acknowledgement is
only ever given after the receiver stored the message durably.

The receiver keeps ``recv_seq``, the highest ``seq`` it has stored.  Then:

* ``seq <= recv_seq``: a duplicate (a resend after a lost ack); acknowledge again.
* ``seq == recv_seq + 1``: the next message; store it.
* ``seq == base > recv_seq``: everything before it was acknowledged earlier
  (for example by a previous installation of the receiver); store it.
* anything else: an earlier message is missing (it was in flight on a session
  that died); refuse it and ask for ``recv_seq + 1`` so the sender resends.

This is TCP's idea applied across sessions and restarts, so two racing QUIC
connections or a SIGKILL at any instant can neither reorder nor duplicate.
"""

from __future__ import annotations

from typing import Literal

Verdict = Literal["accept", "duplicate", "gap"]


def classify_incoming(seq: int, base: int, recv_seq: int) -> Verdict:
    """Decide what to do with message ``seq`` given the sender's ``base``."""
    if seq <= recv_seq:
        return "duplicate"
    if seq == recv_seq + 1 or seq == base:
        return "accept"
    return "gap"
