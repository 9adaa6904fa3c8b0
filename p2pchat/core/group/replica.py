"""One member's replica of one group: who may post, what it holds, what others lack.

The node stores message bodies (SQLite); this object keeps only what decisions need,
all of it bounded: the membership DAG, and per author three numbers and a few ranges:

* ``shown``: every seq up to here is *covered*: shown to the user, skipped because no
  member holds it any more, or dropped by retention.  Messages are shown strictly in
  per-author order, so ``shown`` only grows and each message is shown once.
* ``floor``: nothing at or below it is held here (retention dropped it, or it was
  skipped).  A summary carries it so others do not wait on this member for those.
* ``pending``: messages stored but not yet shown because an earlier one of the same
  author is missing (seq -> clock), at most ``limits.max_pending`` per group and
  ``limits.window`` ahead of ``shown``.

**Summary** (sent when two members meet, and to ask for more): the membership heads
and, per author, ``(shown, floor, extra ranges held above shown)``.  It is a few dozen
bytes per author however long the history.

**Plan** (the answer to a summary): the operations the other lacks, parents first, and
per author the seqs we hold that its summary does not cover; the node sends those in
clock order.  When the other's gap starts below our ``floor`` we send a *skip* with the
first message we can give: "nothing below this is held here".  A skip is honoured only
together with a valid message of that author just above it, so a lying member can make
others give up waiting only for messages older than one that really exists.

**Push**: a new message goes at once to the online members the node has not heard have
it; the frame lists (8-byte prefixes of) the members it is being pushed to, so a
receiver relays it only to online members outside that list: with everyone online and
connected, nothing is relayed, and members the author cannot reach get it through
those who can.  Receivers acknowledge with a ``have`` (their new ``shown``), which is
also what the delivery count is made of.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from p2pchat.core.budget import RateBudget
from p2pchat.core.errors import LocalProtocolError, RemoteProtocolError
from p2pchat.core.group.membership import GroupState, Membership, new_group
from p2pchat.core.group.messages import (
    MAX_CONTENT_BYTES,
    MAX_HEADS,
    GroupMessage,
    parse_message,
    sign_message,
)
from p2pchat.core.group.ops import NONCE_SIZE, Op, WireOp, parse_op
from p2pchat.core.group.ranges import Range, SeqSet

__all__ = [
    "AuthorSummary",
    "GroupLimits",
    "GroupReplica",
    "OpsReceipt",
    "Receipt",
    "Summary",
    "SyncPlan",
    "Verdict",
]

MAX_CLOCK = 2**53 - 1
PREFIX = 8
"""Bytes of a member key used in push fan-out lists (a hint: a collision only costs a
relay that would have helped)."""

Verdict = Literal["new", "duplicate", "later", "need_ops", "refused", "invalid"]
MessageRef = tuple[bytes, int]


@dataclass(frozen=True, slots=True)
class GroupLimits:
    """Bounds on what one group may make a member hold or do (docs/groups.md)."""

    window: int = 4096
    """A message is stored only up to this many seqs ahead of its author's ``shown``."""
    max_pending: int = 4096
    """Stored-but-not-shown messages per group (waiting for an earlier one)."""
    max_clock_jump: int = 2**24
    """How far a message's clock may run ahead of the largest one held."""
    max_summary_ranges: int = 8
    """Extra ranges per author in a summary (more are left out: costs duplicates only)."""
    max_summary_authors: int = 600
    ask_timeout: float = 30.0
    """After this long without an answer to our summary, a member may be asked again."""
    batch_bytes: int = 1 << 20
    """Message bytes sent in answer to one summary (the rest after the next summary)."""
    answer_rate: float = 4 << 20
    """Bytes per second a member may make us send by asking (token bucket refill)."""
    answer_burst: float = 16 << 20
    summary_rate: float = 4.0
    """Summaries per second we answer per member; more are ignored."""
    summary_burst: float = 16.0


@dataclass(frozen=True, slots=True)
class AuthorSummary:
    author: bytes
    shown: int
    floor: int
    extra: tuple[Range, ...] = ()

    def coverage(self) -> SeqSet:
        covered = SeqSet(self.extra)
        if self.shown:
            covered.add_range(1, self.shown)
        return covered


@dataclass(frozen=True, slots=True)
class Summary:
    heads: tuple[bytes, ...]
    authors: tuple[AuthorSummary, ...]


@dataclass(frozen=True, slots=True)
class SyncPlan:
    """What to send a member that sent us its summary.  ``wants``: per author, the seqs
    we hold that it lacks; ``skips``: author -> floor, to send along with message
    ``floor + 1``; ``budget``: message bytes we may send now."""

    ops: tuple[WireOp, ...] = ()
    wants: tuple[tuple[bytes, SeqSet], ...] = ()
    skips: dict[bytes, int] = field(default_factory=dict)
    budget: int = 0


@dataclass(frozen=True, slots=True)
class Receipt:
    """What happened to one received message.  ``new``: store it (it may be shown at
    once or wait); ``shown``: messages (author, seq) that can now be shown, in order;
    ``dropped``: stored messages that must be deleted (they broke their author's clock
    order, or were passed by a skip before they could be shown)."""

    verdict: Verdict
    message: GroupMessage | None = None
    shown: tuple[MessageRef, ...] = ()
    dropped: tuple[MessageRef, ...] = ()
    reason: str = ""


@dataclass(frozen=True, slots=True)
class OpsReceipt:
    added: tuple[Op, ...]
    invalid: tuple[str, ...]
    changed: bool
    """The resolved state (name, members, roles) differs from before."""
    state: GroupState


@dataclass(slots=True)
class _AuthorLog:
    shown: int = 0
    shown_clock: int = 0
    floor: int = 0
    pending: dict[int, int] = field(default_factory=dict)  # seq -> clock

    def coverage(self) -> SeqSet:
        covered = SeqSet((s, s) for s in self.pending)
        if self.shown:
            covered.add_range(1, self.shown)
        return covered

    def held(self) -> SeqSet:
        held = SeqSet((s, s) for s in self.pending)
        if self.shown > self.floor:
            held.add_range(self.floor + 1, self.shown)
        return held


@dataclass(slots=True)
class _PeerView:
    told: dict[bytes, SeqSet] = field(default_factory=dict)
    """What the member said it covers (its last summary, then its acknowledgements)."""
    sent: dict[bytes, SeqSet] = field(default_factory=dict)
    """What we pushed to it since, not yet confirmed."""
    heads: tuple[bytes, ...] = ()
    asked_at: float | None = None
    """When we last sent it our summary and are waiting for its answer."""
    deferred: Summary | None = None
    """Its summary, kept while it named operations we lack and was no member to us:
    answered once those operations make it one (``deferred_plans``)."""

    def has(self, author: bytes, seq: int) -> bool:
        return seq in self.told.get(author, SeqSet()) or seq in self.sent.get(author, SeqSet())


class GroupReplica:
    """Sans-IO: operations and messages in, decisions out; ``now`` only for budgets."""

    def __init__(
        self,
        membership: Membership,
        me: bytes,
        sign: Callable[[bytes], bytes],
        *,
        limits: GroupLimits | None = None,
    ) -> None:
        self.membership = membership
        self.me = me
        self._sign = sign
        self.limits = limits or GroupLimits()
        self._logs: dict[bytes, _AuthorLog] = {}
        self._pending_total = 0
        self.max_clock = 0
        self._peers: dict[bytes, _PeerView] = {}
        self._summaries = RateBudget(
            rate=self.limits.summary_rate, burst=self.limits.summary_burst, max_keys=1024
        )
        self._answers = RateBudget(
            rate=self.limits.answer_rate, burst=self.limits.answer_burst, max_keys=1024
        )

    @classmethod
    def found(
        cls,
        sign: Callable[[bytes], bytes],
        me: bytes,
        name: str,
        *,
        at: float,
        limits: GroupLimits | None = None,
        nonce: bytes | None = None,
    ) -> GroupReplica:
        """A new group with ``me`` as its founding admin."""
        membership = new_group(
            sign, author=me, name=name, at=at, nonce=nonce or secrets.token_bytes(NONCE_SIZE)
        )
        return cls(membership, me, sign, limits=limits)

    @classmethod
    def from_ops(
        cls,
        group_id: bytes,
        wires: Sequence[WireOp],
        me: bytes,
        sign: Callable[[bytes], bytes],
        *,
        limits: GroupLimits | None = None,
        trusted: bool = False,
    ) -> GroupReplica:
        """A replica from a group's operations (from our store, or an invitation).

        The first must be the create operation whose id is ``group_id``; operations
        that do not verify are refused with ``RemoteProtocolError`` unless ``trusted``
        (our own store), where they were checked on arrival."""
        if not wires:
            raise RemoteProtocolError("a group needs its create operation")
        genesis = parse_op(wires[0])
        if genesis.kind != "create" or genesis.id != group_id:
            raise RemoteProtocolError("the first operation is not this group's create")
        replica = cls(Membership(genesis), me, sign, limits=limits)
        for wire in wires[1:]:
            replica.membership.add(parse_op(wire), trusted=trusted)
        return replica

    # ------------------------------------------------------------- reading
    @property
    def group_id(self) -> bytes:
        return self.membership.group_id

    def state(self) -> GroupState:
        return self.membership.state()

    def is_member(self, key: bytes | None = None) -> bool:
        return self.state().is_member(self.me if key is None else key)

    def shown(self, author: bytes) -> int:
        log = self._logs.get(author)
        return log.shown if log else 0

    def author_state(self, author: bytes) -> tuple[int, int, int, dict[int, int]]:
        """(shown, shown_clock, floor, pending) of one author, for persistence."""
        log = self._logs.get(author, _AuthorLog())
        return (log.shown, log.shown_clock, log.floor, dict(log.pending))

    @property
    def authors(self) -> tuple[bytes, ...]:
        return tuple(self._logs)

    @property
    def pending_count(self) -> int:
        return self._pending_total

    def known_coverage(self, peer: bytes, author: bytes) -> SeqSet:
        """What a member told us it covers of ``author``'s messages."""
        view = self._peers.get(peer)
        covered = view.told.get(author) if view else None
        return covered.copy() if covered else SeqSet()

    def coverage(self, author: bytes) -> SeqSet:
        log = self._logs.get(author)
        return log.coverage() if log else SeqSet()

    def delivered_to(self, author: bytes, seq: int) -> tuple[bytes, ...]:
        """Current members known to hold message (author, seq): ourselves if we do, and
        every member whose summary or acknowledgement said so."""
        state = self.state()
        holders = [
            peer
            for peer, view in self._peers.items()
            if state.is_member(peer) and seq in view.told.get(author, SeqSet())
        ]
        if seq <= self.shown(author) or seq in self._logs.get(author, _AuthorLog()).pending:
            holders.append(self.me)
        return tuple(sorted(set(holders)))

    # ------------------------------------------------------------ restoring
    def restore_author(
        self, author: bytes, *, shown: int, shown_clock: int, floor: int, pending: dict[int, int]
    ) -> None:
        """Reload one author's counters from the store after a restart."""
        old = self._logs.get(author)
        if old is not None:
            self._pending_total -= len(old.pending)
        self._logs[author] = _AuthorLog(shown, shown_clock, floor, dict(pending))
        self._pending_total += len(pending)
        self.max_clock = max(self.max_clock, shown_clock, *pending.values(), 0)

    def met(self, peer: bytes) -> bool:
        """We have synced with this member before (this run, or marks stored from one)."""
        return peer in self._peers

    def restore_peer(self, peer: bytes, coverage: dict[bytes, int]) -> None:
        """Reload what a member was last known to hold (author -> shown)."""
        view = self._peers.setdefault(peer, _PeerView())
        for author, shown in coverage.items():
            if shown > 0:
                view.told.setdefault(author, SeqSet()).add_range(1, shown)

    def dropped(self, author: bytes, upto: int) -> None:
        """Retention removed this author's shown messages up to ``upto``."""
        log = self._logs.get(author)
        if log is not None:
            log.floor = max(log.floor, min(upto, log.shown))

    # ------------------------------------------------------------ operations
    def receive_ops(self, wires: Iterable[object]) -> OpsReceipt:
        """Verify and store operations; each bad one is listed and skipped."""
        before = self.state()
        added: list[Op] = []
        invalid: list[str] = []
        for wire in wires:
            try:
                added.extend(self.membership.add(parse_op(wire)))
            except RemoteProtocolError as exc:
                invalid.append(str(exc))
        after = self.state()
        return OpsReceipt(tuple(added), tuple(invalid), after != before, after)

    def propose(self, kind: str, *, at: float, target: bytes | None = None,
                role: str | None = None, name: str | None = None) -> Op:
        """Sign a membership change as ``me`` (``LocalProtocolError`` if not allowed).

        A removal records the highest seq of the removed member we have seen (its
        messages up to there stay valid); a leave records our own last seq."""
        cutoff = 0
        if kind == "remove" and target is not None:
            cutoff = self.shown(target)
        elif kind == "leave":
            cutoff = self.shown(self.me)
        if kind not in ("add", "remove", "leave", "rename", "promote"):
            raise LocalProtocolError(f"unknown membership change {kind!r}")
        if role not in (None, "admin", "member"):
            raise LocalProtocolError(f"unknown role {role!r}")
        return self.membership.propose(
            self._sign,
            kind=kind,  # type: ignore[arg-type]
            author=self.me,
            at=at,
            target=target,
            role=role,  # type: ignore[arg-type]
            name=name,
            cutoff=cutoff,
        )

    # ------------------------------------------------------------ messages
    def author(self, content: bytes, *, at: float, kind: str = "text") -> GroupMessage:
        """Sign our next message (already shown to us: store it and push it)."""
        if not self.is_member():
            raise LocalProtocolError("not a member of this group")
        if len(content) > MAX_CONTENT_BYTES:
            raise LocalProtocolError(f"a group message is at most {MAX_CONTENT_BYTES} bytes")
        log = self._logs.setdefault(self.me, _AuthorLog())
        if log.pending:
            raise LocalProtocolError("our own earlier messages are still arriving; try again")
        seq = log.shown + 1
        clock = min(MAX_CLOCK, max(self.max_clock, log.shown_clock) + 1)
        message = sign_message(
            self._sign,
            group_id=self.group_id,
            author=self.me,
            seq=seq,
            clock=clock,
            at=at,
            heads=self.membership.heads[:MAX_HEADS],
            kind=kind,
            content=content,
        )
        log.shown, log.shown_clock = seq, clock
        self.max_clock = max(self.max_clock, clock)
        return message

    def receive(self, wire: object) -> Receipt:
        return self.receive_batch([wire])[0]

    def receive_batch(
        self, wires: Sequence[object], skips: dict[bytes, int] | None = None
    ) -> list[Receipt]:
        """Check and take in messages (one receipt each, in order).

        ``skips`` (author -> floor) came with the batch; each is honoured only if the
        batch holds a valid message of that author with seq ``floor + 1``.  A message
        with a bad signature or form, another group's, or one whose author was not a
        member at the operations it names gets verdict ``invalid``: no honest member
        passes such a message on, so the node counts it against the sender."""
        parsed: list[GroupMessage | Receipt] = []
        for wire in wires:
            try:
                message = parse_message(wire)
                problem = self._admissible(message)
            except RemoteProtocolError as exc:
                parsed.append(Receipt("invalid", reason=str(exc)))
                continue
            parsed.append(problem if problem is not None else message)
        carried: dict[bytes, tuple[list[MessageRef], list[MessageRef]]] = {}
        for author, floor in (skips or {}).items():
            if type(floor) is int and any(
                isinstance(m, GroupMessage) and m.author == author and m.seq == floor + 1
                for m in parsed
            ):
                carried[author] = self._skip(author, floor)
        receipts: list[Receipt] = []
        for item in parsed:
            if isinstance(item, Receipt):
                receipts.append(item)
                continue
            receipt = self._accept(item)
            extra = carried.pop(item.author, None)
            if extra is not None:
                receipt = Receipt(
                    receipt.verdict,
                    item,
                    shown=(*extra[0], *receipt.shown),
                    dropped=(*extra[1], *receipt.dropped),
                    reason=receipt.reason,
                )
            receipts.append(receipt)
        return receipts

    def _admissible(self, m: GroupMessage) -> Receipt | None:
        """Membership checks (None: the message may be taken); raises for a message no
        honest member would have passed on."""
        if m.group_id != self.group_id:
            raise RemoteProtocolError("message belongs to another group")
        if not self.membership.knows(m.heads):
            return Receipt("need_ops", m, reason="names membership operations we lack")
        if not self.membership.state_at(m.heads).is_member(m.author):
            raise RemoteProtocolError("message author was not a member where it claims")
        state = self.state()
        if not state.is_member(m.author) and m.seq > state.removed.get(m.author, 0):
            return Receipt("refused", m, reason="written after its author left the group")
        return None

    def _accept(self, m: GroupMessage) -> Receipt:
        log = self._logs.get(m.author)
        if log is None:
            log = self._logs[m.author] = _AuthorLog()
        if m.seq <= log.shown or m.seq in log.pending:
            return Receipt("duplicate", m)
        if m.seq > log.shown + self.limits.window:
            return Receipt("later", m, reason="too far ahead of its author's earlier messages")
        if m.clock > self.max_clock + self.limits.max_clock_jump:
            return Receipt("later", m, reason="clock too far ahead")
        if m.seq == log.shown + 1:
            if m.clock <= log.shown_clock:
                # The author's fault, not the sender's: refused, not counted against it.
                return Receipt("refused", m, reason="clock does not grow with seq")
            log.shown, log.shown_clock = m.seq, m.clock
            self.max_clock = max(self.max_clock, m.clock)
            shown, dropped = self._cascade(m.author, log)
            return Receipt("new", m, shown=((m.author, m.seq), *shown), dropped=tuple(dropped))
        if self._pending_total >= self.limits.max_pending:
            return Receipt("later", m, reason="too many messages waiting for earlier ones")
        log.pending[m.seq] = m.clock
        self._pending_total += 1
        self.max_clock = max(self.max_clock, m.clock)
        return Receipt("new", m)

    def _cascade(self, author: bytes, log: _AuthorLog) -> tuple[list[MessageRef], list[MessageRef]]:
        """Show waiting messages that now follow on."""
        shown: list[MessageRef] = []
        dropped: list[MessageRef] = []
        while log.shown + 1 in log.pending:
            seq = log.shown + 1
            clock = log.pending.pop(seq)
            self._pending_total -= 1
            if clock <= log.shown_clock:
                dropped.append((author, seq))
                break  # the author broke its own order: wait for a skip past it
            log.shown, log.shown_clock = seq, clock
            shown.append((author, seq))
        return shown, dropped

    def _skip(self, author: bytes, floor: int) -> tuple[list[MessageRef], list[MessageRef]]:
        """The member we asked holds nothing of this author up to ``floor``: show what we
        hold among those in order and stop waiting for the rest."""
        log = self._logs.get(author)
        if log is None:
            log = self._logs[author] = _AuthorLog()
        shown: list[MessageRef] = []
        dropped: list[MessageRef] = []
        if floor <= log.shown:
            return shown, dropped
        for seq in sorted(s for s in log.pending if s <= floor):
            clock = log.pending.pop(seq)
            self._pending_total -= 1
            if clock <= log.shown_clock:
                dropped.append((author, seq))
                continue
            log.shown, log.shown_clock = seq, clock
            shown.append((author, seq))
        log.shown = floor
        log.floor = max(log.floor, floor)
        more, gone = self._cascade(author, log)
        return shown + more, dropped + gone

    # --------------------------------------------------------------- sync
    def summary(self) -> Summary:
        """Our heads and, per author, what we cover (for the member we meet)."""
        entries: list[AuthorSummary] = []
        for author, log in sorted(self._logs.items()):
            if len(entries) >= self.limits.max_summary_authors:
                break
            extra = SeqSet((s, s) for s in log.pending).ranges[: self.limits.max_summary_ranges]
            entries.append(AuthorSummary(author, log.shown, log.floor, extra))
        return Summary(self.membership.heads, tuple(entries))

    def peer_summary(self, peer: bytes, summary: Summary, now: float) -> SyncPlan | None:
        """A member sent its summary: what to send it (None: over its rate, ignored).

        Messages go only to current members; a member we know was removed is sent just
        the operations that removed it (and their ancestors), so it learns it is out and
        nothing more."""
        if not self._summaries.allow(peer.hex(), now):
            return None
        view = self._peers.setdefault(peer, _PeerView())
        view.heads = summary.heads
        view.told = {e.author: e.coverage() for e in summary.authors}
        view.sent = {}
        view.deferred = None
        state = self.state()
        if not state.is_member(peer):
            if not self.membership.knows(summary.heads):
                view.deferred = summary  # perhaps added by an operation still on its way
            return SyncPlan(ops=self.removal_of(peer))
        return self._plan(peer, view, summary, state, now)

    def removal_of(self, peer: bytes) -> tuple[WireOp, ...]:
        """What a member we know was removed is sent: the operations that removed it and
        those of their ancestors its last summary did not name, so it learns it is out
        and nothing more (nothing when it was not removed)."""
        ops = self.membership.ordered()
        removals = [op.id for op in ops if op.is_removal and op.target == peer]
        if not removals:
            return ()
        view = self._peers.get(peer)
        missing = self.membership.missing_for(view.heads if view else (), upto=removals)
        return tuple(op.wire for op in missing)

    def deferred_plans(self, now: float) -> list[tuple[bytes, SyncPlan]]:
        """Answers to summaries set aside because their senders were not members to
        us, for those that now are (call after ``receive_ops`` changed the state)."""
        state = self.state()
        out: list[tuple[bytes, SyncPlan]] = []
        for peer, view in self._peers.items():
            if view.deferred is not None and state.is_member(peer):
                summary, view.deferred = view.deferred, None
                out.append((peer, self._plan(peer, view, summary, state, now)))
        return out

    def _plan(
        self, peer: bytes, view: _PeerView, summary: Summary, state: GroupState, now: float
    ) -> SyncPlan:
        ops = tuple(op.wire for op in self.membership.missing_for(summary.heads))
        theirs_shown = {e.author: e.shown for e in summary.authors}
        wants: list[tuple[bytes, SeqSet]] = []
        skips: dict[bytes, int] = {}
        for author, log in self._logs.items():
            lacking = log.held().minus(view.told.get(author, SeqSet()))
            if not state.is_member(author):
                cut = state.removed.get(author, 0)
                lacking = lacking.minus(SeqSet([(cut + 1, MAX_CLOCK)]))
            if not lacking:
                continue
            wants.append((author, lacking))
            if lacking.first() == log.floor + 1 and log.floor > theirs_shown.get(author, 0):
                skips[author] = log.floor
        budget = int(min(self._answers.available(peer.hex(), now), self.limits.batch_bytes))
        return SyncPlan(ops=ops, wants=tuple(wants), skips=skips, budget=budget)

    def spent(self, peer: bytes, nbytes: int, now: float) -> None:
        """The node sent ``nbytes`` of messages in answer to this member's summary."""
        self._answers.spend(peer.hex(), nbytes, now)

    def sent(self, peer: bytes, refs: Iterable[MessageRef]) -> None:
        """Messages (author, seq) handed to this member's session (not pushed again)."""
        view = self._peers.setdefault(peer, _PeerView())
        for author, seq in refs:
            view.sent.setdefault(author, SeqSet()).add(seq)

    def peer_has(self, peer: bytes, author: bytes, shown: int, now: float) -> bool:
        """A member acknowledged or announced covering ``author``'s messages up to
        ``shown``.  True if it holds some we lack and we are not already waiting for
        its answer: the node should then send it our summary (and call ``asking``)."""
        view = self._peers.setdefault(peer, _PeerView())
        if shown <= 0:
            return False
        view.told.setdefault(author, SeqSet()).add_range(1, shown)
        if not SeqSet([(1, shown)]).minus(self.coverage(author)) or not self.is_member(peer):
            return False
        return not self._waiting(view, now)

    def lacks_from(self, peer: bytes, summary: Summary, now: float) -> bool:
        """The member's summary shows operations or messages it holds that we lack (and
        we are not already waiting for its answer): the node should ask it."""
        view = self._peers.setdefault(peer, _PeerView())
        if self._waiting(view, now) or not self.is_member(peer):
            return False
        if not self.membership.knows(summary.heads):
            return True
        for entry in summary.authors:
            held = entry.coverage().minus(SeqSet([(1, entry.floor)]) if entry.floor else SeqSet())
            if held.minus(self.coverage(entry.author)):
                return True
        return False

    def _waiting(self, view: _PeerView, now: float) -> bool:
        return view.asked_at is not None and now - view.asked_at < self.limits.ask_timeout

    def asking(self, peer: bytes, now: float) -> None:
        """We sent this member our summary and wait for its answer."""
        self._peers.setdefault(peer, _PeerView()).asked_at = now

    def peer_done(self, peer: bytes, more: bool, now: float) -> bool:
        """A member finished answering our summary.  True: ask again (it said there is
        more, and it is still a member)."""
        view = self._peers.setdefault(peer, _PeerView())
        view.asked_at = None
        return more and self.is_member(peer)

    def peer_gone(self, peer: bytes) -> None:
        """The member's session ended: what we pushed it is no longer assumed held."""
        view = self._peers.get(peer)
        if view is not None:
            view.asked_at = None
            view.sent = {}

    def push_targets(
        self, message: GroupMessage, online: Iterable[bytes], *, source: bytes | None = None,
        fanout: Iterable[bytes] = (),
    ) -> list[bytes]:
        """Online members to push a new message to: members (now) other than us, its
        author and whoever gave it to us, not named in the fan-out list that came with
        it, and not known to hold it already."""
        state = self.state()
        named = {bytes(p[:PREFIX]) for p in fanout}
        out: list[bytes] = []
        for peer in online:
            if peer in (self.me, message.author, source) or not state.is_member(peer):
                continue
            if peer[:PREFIX] in named:
                continue
            view = self._peers.get(peer)
            if view is not None and view.has(message.author, message.seq):
                continue
            out.append(peer)
        return sorted(out)

    def forget_peer(self, peer: bytes) -> None:
        self._peers.pop(peer, None)

    def peers_known(self) -> dict[bytes, dict[bytes, int]]:
        """Per member, per author, the highest seq up to which it told us it covers
        everything (for persistence and delivery counts)."""
        out: dict[bytes, dict[bytes, int]] = {}
        for peer, view in self._peers.items():
            marks = {}
            for author, covered in view.told.items():
                first = covered.ranges[0] if covered.ranges else None
                if first is not None and first[0] == 1:
                    marks[author] = first[1]
            out[peer] = marks
        return out


def prefixes(keys: Iterable[bytes]) -> list[bytes]:
    """The fan-out list as it travels: sorted, distinct 8-byte key prefixes."""
    return sorted({bytes(k[:PREFIX]) for k in keys})
