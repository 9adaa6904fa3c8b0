"""An in-memory set of group members driving the sans-IO group core, for tests.

Each member has its own key, replica and message store (a dict), and exchanges the
same frames a node sends (encoded and decoded, so the wire format is exercised too),
in the same order: summary, then the answer's operations, messages and end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import nacl.signing

from p2pchat.core.group.frames import (
    GroupMessages,
    GroupOps,
    decode_group,
    encode_group,
    message_frames,
    op_frames,
)
from p2pchat.core.group.messages import GroupMessage
from p2pchat.core.group.replica import GroupLimits, GroupReplica, Receipt, prefixes


@dataclass
class SimMember:
    name: str
    signing: nacl.signing.SigningKey = field(default_factory=nacl.signing.SigningKey.generate)
    replica: GroupReplica | None = None
    store: dict[tuple[bytes, int], GroupMessage] = field(default_factory=dict)
    shown: list[tuple[bytes, int]] = field(default_factory=list)
    authored: list[tuple[GroupMessage, frozenset[tuple[bytes, int]]]] = field(
        default_factory=list
    )
    bytes_in: int = 0

    @property
    def key(self) -> bytes:
        return bytes(self.signing.verify_key)

    def sign(self, data: bytes) -> bytes:
        return bytes(self.signing.sign(data).signature)

    def found(self, name: str, limits: GroupLimits | None = None) -> GroupReplica:
        self.replica = GroupReplica.found(self.sign, self.key, name, at=1.0, limits=limits)
        return self.replica

    def join_from(self, other: SimMember, limits: GroupLimits | None = None) -> None:
        """Take the group's operations from ``other`` (what an invitation carries)."""
        assert other.replica is not None
        self.replica = GroupReplica.from_ops(
            other.replica.group_id, other.replica.membership.wire(), self.key, self.sign,
            limits=limits,
        )

    def post(self, text: str, at: float = 2.0) -> GroupMessage:
        assert self.replica is not None
        before = frozenset(self.shown)
        m = self.replica.author(text.encode(), at=at)
        self.store[(m.author, m.seq)] = m
        self.shown.append((m.author, m.seq))
        self.authored.append((m, before))
        return m

    def take(self, receipts: list[Receipt]) -> None:
        for r in receipts:
            if r.verdict == "new":
                assert r.message is not None
                self.store[(r.message.author, r.message.seq)] = r.message
            for ref in r.dropped:
                self.store.pop(ref, None)
            for ref in r.shown:
                assert ref in self.store, "shown a message that is not stored"
                self.shown.append(ref)

    def texts(self) -> list[str]:
        return [self.store[ref].content.decode() for ref in self.shown if ref in self.store]


def wire(frame: object) -> object:
    """Through the codec and back, as on a session."""
    return decode_group(encode_group(frame))  # type: ignore[arg-type]


def pull(receiver: SimMember, sender: SimMember, now: float = 0.0, rounds: int = 100) -> int:
    """``receiver`` sends its summary to ``sender`` and takes the answers until done.
    Returns the number of messages transferred."""
    assert receiver.replica is not None and sender.replica is not None
    moved = 0
    for _ in range(rounds):
        summary = receiver.replica.summary()
        plan = sender.replica.peer_summary(receiver.key, summary, now)
        if plan is None:
            return moved
        for frame in op_frames(sender.replica.group_id, list(plan.ops)):
            got = wire(frame)
            assert isinstance(got, GroupOps)
            receiver.replica.receive_ops(got.ops)
        wanted = sorted(
            (sender.store[(author, seq)] for author, seqs in plan.wants for seq in seqs
             if (author, seq) in sender.store),
            key=lambda m: (m.clock, m.author, m.seq),
        )
        chosen: list[GroupMessage] = []
        spent = 0
        for m in wanted:
            if spent + m.size > plan.budget and chosen:
                break
            chosen.append(m)
            spent += m.size
        more = len(chosen) < len(wanted)
        for frame in message_frames(sender.replica.group_id, chosen, skips=plan.skips):
            got = wire(frame)
            assert isinstance(got, GroupMessages)
            receiver.bytes_in += len(encode_group(frame))
            receiver.take(receiver.replica.receive_batch(list(got.messages), dict(got.skips)))
        sender.replica.spent(receiver.key, spent, now)
        moved += len(chosen)
        if not more and not plan.ops:
            return moved
        if not more and not chosen:
            return moved
    return moved


def meet(a: SimMember, b: SimMember, now: float = 0.0) -> None:
    """Two members meet: each asks the other for what it lacks."""
    pull(a, b, now)
    pull(b, a, now)


def push(author: SimMember, message: GroupMessage, online: list[SimMember]) -> None:
    """Live delivery: the author pushes to online members, who relay to members outside
    the fan-out list."""
    assert author.replica is not None
    by_key = {m.key: m for m in online}
    queue = [(author, message, None, ())]
    while queue:
        sender, m, source, fanout = queue.pop()
        assert sender.replica is not None
        targets = sender.replica.push_targets(m, by_key, source=source, fanout=fanout)
        if not targets:
            continue
        out = tuple(prefixes([*targets, sender.key, *fanout]))
        for t in targets:
            sender.replica.sent(t, [(m.author, m.seq)])
            receiver = by_key[t]
            assert receiver.replica is not None
            receipts = receiver.replica.receive_batch([m.wire])
            receiver.take(receipts)
            if receipts[0].verdict == "new":
                queue.append((receiver, m, sender.key, out))
