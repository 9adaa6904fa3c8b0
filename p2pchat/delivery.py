"""How chat messages move between this node and its contacts, under budgets.

The outbox and the receive window (``store/``, ``core/window.py``) make delivery
exactly-once and in order; this module decides *when* frames go out and what a
contact may make us spend:

* **Resends** (everything the outbox sends again: when a session becomes active,
  on a ``gap`` request, after a deferral) draw on byte and message budgets per
  contact and in total.  What a budget does not cover now is not dropped: the
  resend pauses and continues, in order, as the budget refills (``tick``).  A
  session may also honour only so many ``gap`` requests (a burst, then one every
  few seconds), whatever state the connection is in: before, a ``pending`` frame
  followed by a ``gap`` got the whole outbox resent every time.
* **Refusals we receive** (``defer`` frames): the contact's node could not store a
  message (its database failed) or we used up our daily allowance there.  Our
  messages stay queued, sending to that contact pauses for the time it asked
  (bounded), the user is told why (``DeliveryDeferred``), then the outbox is
  resent from the refused message.
* **Refusals we send**: a message we cannot store (``StoreError``: disk full, I/O
  error) or that is over the contact's daily quota is not acknowledged; the
  contact gets one ``defer`` naming a retry time (growing with repeated storage
  failures, at most a few seconds, so a conversation recovers promptly once space
  returns), and whatever it sends before then is dropped unread, without touching
  the database.  The user sees ``StorageProblem`` / ``IncomingDeferred``.

**Group commit.**  Work that arrives in one event-loop turn is applied together
at the end of the turn (``_flush_turn``, which the node schedules through
``schedule``): the text messages received from each contact are made durable by one
append to the store's message journal (``Store.receive_messages``), and only then
does each contact get one cumulative ``Ack`` for everything stored (its frames
leave together, in shared QUIC packets) and does the user see the events.  The
journal is folded into the tables by the next commit, with the bookkeeping of our
own messages (the messages the user queued, durable already in the same journal,
``sent`` marks, acks received): that commit (``flush``, one transaction,
``Store.batch``) waits for up to ``MARK_DELAY`` (or ``FOLD_AT`` messages), or runs
before any read of the store, so a conversation costs no transaction per message on
its path.  A store that cannot journal (not the node's, or too much pending)
receives in the turn's transaction instead, as does an ack that only the tables can
check.  A crash before the append loses nothing that was acknowledged; a crash
after it and before the ack leaves the messages stored (the next opening folds
them) and unacknowledged, and the sender's resend is then a duplicate that is
acknowledged again.  The turn's end comes early for datagrams: the node applies
what they brought as soon as the socket's queued ones are read
(``flush_turn_now``).

Nothing here owns sockets or tasks: the node calls in with frames and on its
dial-loop tick, and every decision reads an injected clock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from p2pchat.core import chat
from p2pchat.core.budget import RateBudget
from p2pchat.core.events import (
    DeliveryDeferred,
    IncomingDeferred,
    MessageDeleted,
    MessageEdited,
    MessageReceived,
    MessageStateChanged,
    NodeEvent,
    StorageProblem,
)
from p2pchat.store import Message, ReceiveResult, Store, StoreError

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_DAILY_MESSAGE_BYTES",
    "Delivery",
    "daily_quota_setting",
]

# Resends per contact: a burst that covers a large outbox once, then a steady pace.
RESEND_BYTES_BURST = 4 * 1024 * 1024
RESEND_BYTES_RATE = 256 * 1024
RESEND_MESSAGES_BURST = 1024
RESEND_MESSAGES_RATE = 64
# Resends to all contacts together.
GLOBAL_RESEND_BYTES_BURST = 16 * 1024 * 1024
GLOBAL_RESEND_BYTES_RATE = 1024 * 1024
GLOBAL_RESEND_MESSAGES_BURST = 4096
GLOBAL_RESEND_MESSAGES_RATE = 256
# Gap requests one session may have honoured: a burst, then one every 5 s.
GAPS_PER_SESSION_BURST = 64
GAPS_PER_SESSION_RATE = 0.2
# What a resent message costs beyond its body: frame, msgpack fields, seal.
MESSAGE_OVERHEAD = 96
# Refusing after a storage failure: the first retry after 0.5 s, doubling to 4 s.
STORAGE_RETRY_MIN = 0.5
STORAGE_RETRY_MAX = 4.0
# We drop a refused contact's messages unread for this share of the time we asked it
# to wait, so its retry (timed by its own clock) never lands inside the window.
REFUSE_SHARE = 0.75
# Pauses a contact can ask of us: at least this short, at most a day.
MIN_PAUSE = 0.5
MAX_PAUSE = 86400.0
DEFAULT_DAILY_MESSAGE_BYTES = 8 * 1024 * 1024
"""Message bytes each contact may have stored here per UTC day (``settings.json``:
``max_message_bytes_per_day``; 0 means no limit)."""
QUOTA_SETTING = "max_message_bytes_per_day"
# How long transmitted messages may wait to be marked ``sent`` in the store, and
# journaled ones to be folded into it (see ``_request_marks``); the ``sent`` event
# waits with them, unless the contact's ack comes first (it usually does: it is
# announced from memory, ``on_ack``).  A fold is one commit of everything since the
# last one; it runs in the event loop and delays whatever is under way then, so the
# fewer the better: at 200 ms a lively conversation (a message and reply each ms) meets
# one in fewer than one round trip in a hundred (docs/performance.md).
MARK_DELAY = 0.2
# Journaled messages that are folded at the end of the turn without waiting for
# ``MARK_DELAY`` (a burst: the commit stays a few ms, the memory they hold bounded).
FOLD_AT = 1024
# An ack of a single message waits this long for a message of ours to ride on (see
# ``_owe_ack``): below the 25 ms ``max_ack_delay`` QUIC announces, like its ACKs.
ACK_WAIT = 0.02
# Transmitted messages remembered per contact so an ack is announced from memory
# (see ``on_ack``); beyond this many unacknowledged, acks wait for the commit.
MAX_REMEMBERED = 16384
STORAGE_REASON = "the contact's device cannot store messages right now (is its disk full?)"


class Cancellable(Protocol):
    """What ``schedule`` returns: ``asyncio.Handle`` and ``TimerHandle`` are."""

    def cancel(self) -> None: ...


def daily_quota_setting(settings: dict[str, Any]) -> int | None:
    """The per-contact daily message quota in bytes, or None for no limit."""
    value = settings.get(QUOTA_SETTING)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value or None
    return DEFAULT_DAILY_MESSAGE_BYTES


class Link(Protocol):
    """What delivery needs of a contact's session (``net.peer.PeerConnection``)."""

    peer_id: str | None
    held_as_request: bool
    closed: bool

    def send(self, frame: chat.ChatFrame) -> bool: ...


@dataclass(slots=True)
class _Resend:
    next_seq: int


@dataclass(slots=True)
class _Pause:
    until: float
    from_seq: int
    why: str
    reason: str


def _cost(message: Message) -> int:
    return len(message.body.encode("utf-8")) + MESSAGE_OVERHEAD


class Delivery:
    """Chat message flow for one node: see the module docstring."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], float],
        emit: Callable[[NodeEvent], None],
        active: Callable[[str], Link | None],
        daily_quota: Callable[[], int | None],
        monotonic: Callable[[], float] = time.monotonic,
        schedule: Callable[[float, Callable[[], None]], Cancellable | None] | None = None,
    ) -> None:
        """``schedule(delay, callback)`` asks for one call ``delay`` seconds from now, 0
        meaning the end of the current event-loop turn (the node uses ``loop.call_soon``
        and ``call_later``), and returns what cancels that call (None: no need); without
        it every call happens at once."""
        self.store = store
        self._thread: int | None = None
        """The node's event-loop thread, once it runs (``run_on_this_thread``)."""
        self._schedule = schedule
        self.clock = clock
        self.monotonic = monotonic
        self._emit = emit
        self._active = active
        self._daily_quota = daily_quota
        self._peer_bytes = RateBudget(rate=RESEND_BYTES_RATE, burst=RESEND_BYTES_BURST)
        self._peer_messages = RateBudget(rate=RESEND_MESSAGES_RATE, burst=RESEND_MESSAGES_BURST)
        self._all_bytes = RateBudget(
            rate=GLOBAL_RESEND_BYTES_RATE, burst=GLOBAL_RESEND_BYTES_BURST, max_keys=1
        )
        self._all_messages = RateBudget(
            rate=GLOBAL_RESEND_MESSAGES_RATE, burst=GLOBAL_RESEND_MESSAGES_BURST, max_keys=1
        )
        self._gap_budgets: dict[Link, RateBudget] = {}
        self._gaps_sent: dict[Link, int] = {}
        self._resends: dict[Link, _Resend] = {}
        self._paused: dict[str, _Pause] = {}
        self._refusing: dict[str, float] = {}
        self._storage_failures: dict[str, int] = {}
        # Waiting for the end of this loop turn (see the module docstring).
        self._incoming: dict[Link, list[chat.ChatMessage]] = {}
        self._sent: dict[str, tuple[int, int]] = {}
        """Per contact: the seq range transmitted this turn, not yet marked sent."""
        self._acks: dict[str, int] = {}
        """Per contact: the highest cumulative ack received this turn."""
        self._transmitted: dict[str, deque[tuple[int, str, str]]] = {}
        """Per contact: (seq, id, kind) of what this process transmitted and no ack
        has covered yet, in seq order without holes (see ``on_ack``)."""
        self._announced: dict[str, set[str]] = {}
        """Per contact: ids announced ``delivered`` whose ack waits for the commit."""
        self._acks_out: dict[Link, int] = {}
        """Per session: the cumulative ack we owe (see ``_owe_ack``)."""
        self._acks_sent: dict[Link, int] = {}
        self._ack_asked: set[Link] = set()
        """Sessions that sent ``AckNow`` with this turn's messages (see ``on_ack_now``)."""
        self._acks_soon = False
        self._ack_timer: Cancellable | None = None
        self._flush_requested = False
        self._acks_need_store = False
        """An ack of this turn covers what only the tables know (see ``on_ack``)."""
        self._fold_due = False
        """``FOLD_AT`` journaled messages wait: this turn's end folds them."""
        self._marks_timer: Cancellable | None = None
        """The pending ``MARK_DELAY`` flush, cancelled by any flush that comes first."""
        self.storage_error: str | None = None
        self.counters: dict[str, int] = {
            "resent_messages": 0,
            "resent_bytes": 0,
            "resends_waiting_for_budget": 0,
            "gaps_refused": 0,
            "deferred_by_contacts": 0,
            "refused_storage": 0,
            "refused_quota": 0,
            "dropped_while_refusing": 0,
        }

    # ------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        return {
            **self.counters,
            "storage_error": self.storage_error,
            "paused_contacts": len(self._paused),
            "resends_in_progress": len(self._resends),
            "daily_quota": self._daily_quota(),
        }

    def paused_reason(self, peer_id: str) -> str | None:
        """Why our messages to ``peer_id`` wait, if the contact asked us to wait."""
        pause = self._paused.get(peer_id)
        return None if pause is None else pause.reason

    # ------------------------------------------------------------ sessions
    def session_active(self, conn: Link, peer: str) -> None:
        """A session became the contact's active one: the outbox goes out again.

        A pause the contact asked for on an earlier session ends: a new session
        is a fresh start on both sides, and the contact asks again if it must.
        """
        self._paused.pop(peer, None)
        self.resend(conn, peer, from_seq=0)

    def connection_closed(self, conn: Link) -> None:
        self._acks_out.pop(conn, None)  # the next session acks what is stored
        self._acks_sent.pop(conn, None)
        self._ack_asked.discard(conn)
        self._resends.pop(conn, None)
        self._gap_budgets.pop(conn, None)
        self._gaps_sent.pop(conn, None)

    # ------------------------------------------------------------ outbound
    def send_new(self, conn: Link, messages: list[Message]) -> bool:
        """Messages the user just wrote (in seq order): straight out, unless a resend
        or a pause for this contact is in progress (then they go out in order behind
        it).  True if they went out now (they are marked ``sent`` at the end of the
        loop turn)."""
        if not messages or messages[0].peer_id in self._paused:
            return False
        resend = self._resends.get(conn)
        if resend is not None:
            self._pump(conn, resend)
            return False
        return self._transmit(conn, messages)

    def resend(self, conn: Link, peer: str, *, from_seq: int) -> None:
        """Send the outbox again from ``from_seq``, as the budgets allow."""
        resend = self._resends.get(conn)
        if resend is None:
            resend = self._resends[conn] = _Resend(from_seq)
        else:
            resend.next_seq = min(resend.next_seq, from_seq)
        self._pump(conn, resend)

    def on_gap(self, conn: Link, peer: str, want: int) -> None:
        """The contact misses messages from ``want`` on."""
        conn.held_as_request = False  # answering a gap is how a request is accepted
        resend = self._resends.get(conn)
        if resend is not None and want >= resend.next_seq:
            return  # already on its way
        budget = self._gap_budgets.get(conn)
        if budget is None:
            budget = self._gap_budgets[conn] = RateBudget(
                rate=GAPS_PER_SESSION_RATE, burst=GAPS_PER_SESSION_BURST, max_keys=1
            )
        if not budget.allow("", self.monotonic()):
            self.counters["gaps_refused"] += 1
            log.info("gap request from %s ignored: over this session's budget", peer)
            return
        self.resend(conn, peer, from_seq=want)

    def on_defer(self, conn: Link, peer: str, frame: chat.Defer) -> None:
        """The contact cannot take message ``frame.seq`` now: pause, then resend."""
        if frame.seq > self.store.send_seq(peer):
            return  # names a message we never sent: a confused or lying peer
        delay = min(MAX_PAUSE, max(MIN_PAUSE, frame.retry_after))
        before = self._paused.get(peer)
        self._paused[peer] = _Pause(
            self.monotonic() + delay, min(frame.seq, before.from_seq) if before else frame.seq,
            frame.why, frame.reason,
        )  # fmt: skip
        self._resends.pop(conn, None)
        self.counters["deferred_by_contacts"] += 1
        if before is None or (before.why, before.reason) != (frame.why, frame.reason):
            log.info("%s defers our messages for %.1f s: %s", peer, delay, frame.reason)
            self._emit(DeliveryDeferred(peer, frame.why, frame.reason, self.clock() + delay))

    def tick(self) -> None:
        """Called about once a second: end pauses that are over, continue resends."""
        now = self.monotonic()
        for peer, pause in list(self._paused.items()):
            if now < pause.until:
                continue
            del self._paused[peer]
            conn = self._active(peer)
            if conn is not None:
                self.resend(conn, peer, from_seq=pause.from_seq)
        for conn, resend in list(self._resends.items()):
            self._pump(conn, resend)
        for peer, until in list(self._refusing.items()):
            if now >= until:
                del self._refusing[peer]

    def _pump(self, conn: Link, resend: _Resend) -> None:
        peer = conn.peer_id
        if peer is None or conn.closed or self._active(peer) is not conn:
            self._resends.pop(conn, None)
            return
        if conn.held_as_request or peer in self._paused:
            return
        now = self.monotonic()
        # Read only what the budgets can cover now (plus one, to see whether more
        # waits): a resend in progress must not read the whole outbox per message.
        can = int(
            min(
                self._peer_messages.available(peer, now),
                self._all_messages.available("", now),
                RESEND_MESSAGES_BURST,
            )
        )
        pending = self.store.outbox(peer, from_seq=resend.next_seq, limit=can + 1)
        batch: list[Message] = []
        for message in pending:
            cost = _cost(message)
            if (
                self._peer_bytes.available(peer, now) < cost
                or self._all_bytes.available("", now) < cost
                or self._peer_messages.available(peer, now) < 1
                or self._all_messages.available("", now) < 1
            ):
                self.counters["resends_waiting_for_budget"] += 1
                break
            self._peer_bytes.spend(peer, cost, now)
            self._all_bytes.spend("", cost, now)
            self._peer_messages.spend(peer, 1, now)
            self._all_messages.spend("", 1, now)
            self.counters["resent_messages"] += 1
            self.counters["resent_bytes"] += cost
            batch.append(message)
        if batch:
            self._transmit(conn, batch)
            resend.next_seq = batch[-1].seq + 1
        if len(batch) == len(pending) and len(pending) <= can:
            self._resends.pop(conn, None)

    def _transmit(self, conn: Link, messages: list[Message]) -> bool:
        if conn.held_as_request or not messages:
            return False  # the peer has not accepted us: keep them in the outbox
        self.ack_now(conn)  # rides in the messages' bundle
        peer = messages[0].peer_id
        base = self.store.outbox_base(peer)
        sent_any = False
        for m in messages:
            # (positional: keywords cost a measurable share of a burst)
            frame = chat.ChatMessage(
                m.id, m.seq, base, m.created_at, m.body, m.reply_to, m.kind, m.target
            )
            sent_any = conn.send(frame) or sent_any
        if not sent_any:
            return False
        self._remember(peer, messages)
        first, last = messages[0].seq, messages[-1].seq
        before = self._sent.get(peer)
        if before is not None:
            first, last = min(first, before[0]), max(last, before[1])
        self._sent[peer] = (first, last)
        self._request_marks()
        return True

    def fold_soon(self) -> None:
        """The store journaled a message (durable already).  Folding it into the tables
        is bookkeeping, like a ``sent`` mark: it waits up to ``MARK_DELAY`` for a flush
        that commits anyway (the contact's ack, a message from it), so a message sent
        on its own costs no commit of its own and a burst's are folded by the flushes
        of its acks.  Any read folds first, so nothing can tell the difference.  Once
        ``FOLD_AT`` wait, the end of this turn folds them."""
        if self._schedule is not None and self.store.pending_messages >= FOLD_AT:
            self._fold_due = True
            self._request_flush()
            return
        self._request_marks()

    def _remember(self, peer: str, messages: list[Message]) -> None:
        sent = self._transmitted.get(peer)
        if sent is None:
            sent = self._transmitted[peer] = deque()
        for m in messages:
            if sent and m.seq <= sent[-1][0]:
                continue  # a resend: remembered already
            if sent and m.seq != sent[-1][0] + 1:
                sent.clear()  # a hole (cannot happen: the outbox is a run of seqs)
            if len(sent) >= MAX_REMEMBERED:
                return  # acks beyond this wait for the commit
            sent.append((m.seq, m.id, m.kind))

    def forget_transmitted(self, peer: str) -> None:
        """The contact did not store what we transmitted (it holds us as a request)."""
        self._transmitted.pop(peer, None)

    def on_ack(self, peer: str, seq: int) -> None:
        """A cumulative ack from the contact.

        An ack covering only messages this process transmitted is announced at once,
        from memory (``MessageStateChanged(..., "delivered")``), and written like a
        ``sent`` mark, by the next commit (at most ``MARK_DELAY`` later): the contact
        has the messages whatever we remember, and should we die before that commit
        they are sent again and acknowledged again as duplicates.  Anything else (an
        ack for what an earlier run sent, or beyond what was ever transmitted, which
        is refused) goes through the store at the end of the turn, as before."""
        if seq <= self._acks.get(peer, 0):
            return
        self._acks[peer] = seq
        sent = self._transmitted.get(peer)
        if not sent or seq > sent[-1][0]:
            self._acks_need_store = True
            self._request_flush()
            return
        announced = self._announced.setdefault(peer, set())
        unmarked = self._sent.get(peer, (0, -1))  # their "sent" waits for the commit
        while sent and sent[0][0] <= seq:
            number, message_id, kind = sent.popleft()
            if kind == "text":  # edits and deletions are bookkeeping nobody shows
                announced.add(message_id)
                if unmarked[0] <= number <= unmarked[1]:
                    self._emit(MessageStateChanged(peer, message_id, "sent"))
                self._emit(MessageStateChanged(peer, message_id, "delivered"))
        self._request_marks()

    def settle(self) -> None:
        """Write acks announced from memory now: before reading message states.

        Only on the node's own thread: a store read in a worker thread (there is none
        today) sees what is committed, and events are never emitted from there."""
        if self._acks and self._thread in (None, threading.get_ident()):
            self.flush()

    def run_on_this_thread(self) -> None:
        """The node's loop runs on the calling thread from now on."""
        self._thread = threading.get_ident()

    # ------------------------------------------------------------ inbound
    def on_message(self, conn: Link, peer: str, frame: chat.ChatMessage) -> None:
        """A message from a contact: stored (or refused) and answered at the end of
        the turn, together with every other message of the turn."""
        now = self.monotonic()
        until = self._refusing.get(peer)
        if until is not None:
            if now < until:
                self.counters["dropped_while_refusing"] += 1
                return  # the contact was told when to come back
            del self._refusing[peer]
        self._incoming.setdefault(conn, []).append(frame)
        self._request_flush()

    # ------------------------------------------------------------ group commit
    def _request_flush(self) -> None:
        if self._schedule is None:
            self.flush()
        elif not self._flush_requested:
            self._flush_requested = True
            self._schedule(0.0, self._flush_turn)

    def flush_turn_now(self) -> None:
        """The datagrams of this turn were all read: what they brought is applied now
        (``_flush_turn``), not one loop turn later, and the turn's scheduled call finds
        nothing left.  Saves a loop turn on each side of a conversation."""
        if self._flush_requested:
            self._flush_turn()

    def _flush_turn(self) -> None:
        """The end of a turn that brought messages (or an ack the tables must check):
        the messages are journaled and answered now; the bookkeeping waits for the
        next commit (``_request_marks``) unless this turn needs one anyway."""
        if not self._flush_requested:
            return  # done already, when the turn's datagrams were read
        self._flush_requested = False
        if self._acks_need_store or self._fold_due or not self.store.journals_receipts:
            self.flush()
            return
        incoming, self._incoming = self._incoming, {}
        asked, self._ack_asked = self._ack_asked, set()
        wall = self.clock()
        quota = self._daily_quota()
        received: list[tuple[Link, str, list[tuple[chat.ChatMessage, ReceiveResult]]]] = []
        for conn, frames in incoming.items():
            try:
                self._store_incoming(conn, frames, wall, quota, received)
            except StoreError as exc:
                self.storage_failed(exc)
                self._storage_refusal(conn, frames[0].seq, exc)
        self._answer_all(received, asked, wall)

    def _store_incoming(
        self,
        conn: Link,
        frames: list[chat.ChatMessage],
        wall: float,
        quota: int | None,
        received: list[tuple[Link, str, list[tuple[chat.ChatMessage, ReceiveResult]]]],
    ) -> None:
        """One contact's messages of this turn, stored (journaled, or in the batch under
        way) and kept in ``received`` for the answer; dropped unread while it is
        refused (it was told earlier this turn when to come back)."""
        peer = conn.peer_id
        assert peer is not None
        if peer in self._refusing:
            self.counters["dropped_while_refusing"] += len(frames)
            return
        results = self.store.receive_messages(peer, frames, now=wall, daily_quota=quota)
        received.append((conn, peer, list(zip(frames, results, strict=False))))

    def _request_marks(self) -> None:
        """``sent`` marks are bookkeeping: they wait up to ``MARK_DELAY`` for a flush that
        writes anyway (the contact's ack, its messages), so a message costs no commit
        of its own for them; in a burst they ride on the flushes of the acks."""
        if self._schedule is None:
            self.flush()
        elif self._marks_timer is None:
            timer = self._schedule(MARK_DELAY, self.flush)
            if self._sent or self.store.pending:  # (without a loop: flushed at once)
                self._marks_timer = timer

    def flush(self) -> None:
        """Apply everything this turn brought and all pending bookkeeping in one
        transaction, then answer it."""
        self._flush_requested = False
        self._acks_need_store = False
        self._fold_due = False
        if not (self._incoming or self._sent or self._acks or self.store.pending):
            return
        if self._marks_timer is not None:
            # This flush writes the marks: the timer would only wake the loop for
            # nothing, or (armed a turn ago for the next message) commit that
            # message's mark on its own instead of with the ack that is coming.
            self._marks_timer.cancel()
            self._marks_timer = None
        incoming, self._incoming = self._incoming, {}
        asked, self._ack_asked = self._ack_asked, set()
        sent, self._sent = self._sent, {}
        acks, self._acks = self._acks, {}
        wall = self.clock()
        quota = self._daily_quota()
        received: list[tuple[Link, str, list[tuple[chat.ChatMessage, ReceiveResult]]]] = []
        marked: list[tuple[str, list[str]]] = []
        delivered: list[tuple[str, list[str]]] = []
        try:
            with self.store.batch():
                for conn, frames in incoming.items():
                    self._store_incoming(conn, frames, wall, quota, received)
                for peer, (first, last) in sent.items():
                    marked.append((peer, self.store.mark_sent(peer, last, wall, from_seq=first)))
                for peer, seq in acks.items():
                    delivered.append((peer, self.store.ack_outgoing(peer, seq, wall)))
        except StoreError as exc:
            self.storage_failed(exc)
            for conn, frames in incoming.items():
                self._storage_refusal(conn, frames[0].seq, exc)
            for peer, seq in acks.items():  # tried again by the next commit
                self._acks[peer] = max(seq, self._acks.get(peer, 0))
            return  # sent marks are only bookkeeping
        self._answer_all(received, asked, wall)
        announced = {peer: self._announced.pop(peer, set()) for peer in acks}
        for peer, ids in marked:
            told = announced.get(peer, ())
            for message_id in ids:
                if message_id not in told:  # delivered already
                    self._emit(MessageStateChanged(peer, message_id, "sent"))
        for peer, ids in delivered:
            told = announced.get(peer, ())
            for message_id in ids:
                if message_id not in told:
                    self._emit(MessageStateChanged(peer, message_id, "delivered"))

    def _answer_all(
        self,
        received: list[tuple[Link, str, list[tuple[chat.ChatMessage, ReceiveResult]]]],
        asked: set[Link],
        wall: float,
    ) -> None:
        """Each contact's messages of this turn are stored: answer them."""
        stored = {
            peer for _conn, peer, answered in received
            if any(result.verdict == "accept" for _frame, result in answered)
        }  # fmt: skip
        if stored:
            # Only a stored message proves the database writes again: a batch of
            # gaps or duplicates commits nothing, and succeeds on a full disk too.
            self.storage_ok()
        for conn, peer, answered in received:
            if peer in stored:
                self._storage_failures.pop(peer, None)
            self._answer(conn, peer, answered, wall, now=conn in asked)

    def _answer(
        self,
        conn: Link,
        peer: str,
        results: list[tuple[chat.ChatMessage, ReceiveResult]],
        wall: float,
        *,
        now: bool = False,
    ) -> None:
        """After the commit or journal append: one cumulative ack for everything stored, then a gap
        request or a refusal if the batch ended in one, then the events.

        The ack itself waits (``_owe_ack``) for a message of ours to ride on, so a
        conversation costs one datagram per message instead of two.  A gap request or
        a refusal takes the ack with it at once, in order."""
        ack = 0
        for _frame, result in results:
            if result.verdict in ("accept", "duplicate"):
                ack = max(ack, result.recv_seq)
        if ack:
            self._owe_ack(conn, ack, now=now)
        for frame, result in results:
            if result.verdict in ("gap", "quota"):
                self.ack_now(conn)
            if result.verdict == "gap":
                want = result.recv_seq + 1
                if self._gaps_sent.get(conn) != want:
                    self._gaps_sent[conn] = want
                    conn.send(chat.Gap(want))
            elif result.verdict == "quota":
                assert result.retry_at is not None
                delay = min(MAX_PAUSE, max(1.0, result.retry_at - wall))
                reason = (
                    f"daily message allowance used up ({self._daily_quota()} bytes a day); "
                    "the rest is accepted from 00:00 UTC"
                )
                self.counters["refused_quota"] += 1
                self._refuse(conn, peer, frame.seq, delay, "quota", reason, reason)
        for _frame, result in results:
            if result.verdict != "accept" or result.message is None:
                continue
            m = result.message
            if m.kind == "text":
                self._emit(
                    MessageReceived(peer, m.id, m.seq, m.body, m.created_at, wall, m.reply_to)
                )
            elif result.changed is None:
                # Its sequence number is used up (acked above), the change is not made.
                log.warning("%s sent an %s of a message it did not write to us", peer, m.kind)
            elif m.kind == "edit":
                self._emit(MessageEdited(peer, m.target or "", "in", result.changed.body, wall))
            else:
                self._emit(MessageDeleted(peer, m.target or "", "in", wall))

    def on_ack_now(self, conn: Link) -> None:
        """The contact waits for our ack (someone there waits for ``delivered``): the
        ack of the messages that came with this frame does not wait for a reply, and
        one owed already leaves now.  Costs nothing beyond the ack it asks for."""
        if conn in self._incoming:
            self._ack_asked.add(conn)
        else:
            self.ack_now(conn)

    def _owe_ack(self, conn: Link, seq: int, *, now: bool = False) -> None:
        """Send ``Ack(seq)`` with our next message to the contact, or without one: in
        the next loop turn if it acknowledges several messages, else after
        ``ACK_WAIT``.

        Delayed acknowledgement, as TCP and QUIC do it: a reply (a person typing fast,
        a bot, a script on the node's API, the next message of a conversation between
        programs) usually follows within that time and carries the ack, so a
        conversation costs one datagram and one commit on each side per message
        instead of two.  An ack of a batch (a burst, a resend) does not wait: it
        frees the sender's outbox, and the next turn is after the events of this
        one, so a reply written on seeing them still carries it; nor does one the
        contact asked for with ``AckNow`` (``now``).  A contact waits at
        most ``ACK_WAIT`` longer for a ``delivered`` it would otherwise get at once."""
        self._acks_out[conn] = max(seq, self._acks_out.get(conn, 0))
        if self._schedule is None:
            self._send_owed_acks()
        elif now or seq - self._acks_sent.get(conn, 0) >= 2:
            if not self._acks_soon:
                self._acks_soon = True
                self._schedule(0.0, self._send_owed_acks)
        elif self._ack_timer is None:
            self._ack_timer = self._schedule(ACK_WAIT, self._send_owed_acks)

    def ack_now(self, conn: Link) -> None:
        """The ack we owe the contact leaves now, ahead of a frame that must follow it."""
        owed = self._acks_out.pop(conn, None)
        if owed is not None:
            self._send_ack(conn, owed)

    def _send_owed_acks(self) -> None:
        self._acks_soon = False
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        owed, self._acks_out = self._acks_out, {}
        for conn, seq in owed.items():
            self._send_ack(conn, seq)

    def _send_ack(self, conn: Link, seq: int) -> None:
        if conn.send(chat.Ack(seq)):
            self._acks_sent[conn] = max(seq, self._acks_sent.get(conn, 0))

    def _storage_refusal(self, conn: Link, seq: int, exc: StoreError) -> None:
        peer = conn.peer_id
        assert peer is not None
        failures = self._storage_failures.get(peer, 0) + 1
        self._storage_failures[peer] = failures
        delay = min(STORAGE_RETRY_MAX, STORAGE_RETRY_MIN * 2 ** (failures - 1))
        self.counters["refused_storage"] += 1
        self._refuse(conn, peer, seq, delay, "storage", STORAGE_REASON, str(exc))

    def _refuse(
        self, conn: Link, peer: str, seq: int, delay: float, why: str, reason: str, local: str
    ) -> None:
        self._refusing[peer] = self.monotonic() + delay * REFUSE_SHARE
        conn.send(chat.Defer(seq=seq, retry_after=delay, why=why, reason=reason))
        log.warning("refused message %d from %s for %.1f s: %s", seq, peer, delay, local)
        self._emit(IncomingDeferred(peer, why, local))

    # ------------------------------------------------------------ storage state
    def storage_failed(self, exc: StoreError) -> None:
        error = str(exc)
        if error != self.storage_error:
            log.error("the database failed: %s", error)
            self.storage_error = error
            self._emit(StorageProblem(error))

    def storage_ok(self) -> None:
        if self.storage_error is not None:
            log.warning("the database works again")
            self.storage_error = None
            self._emit(StorageProblem(None))
