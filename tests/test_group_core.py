"""The sans-IO group core: operations, the convergence rule, messages, sync, bounds."""

from __future__ import annotations

import random

import msgpack
import pytest

from p2pchat.core.errors import LocalProtocolError, RemoteProtocolError
from p2pchat.core.group.frames import (
    GroupEnd,
    GroupHave,
    GroupInvite,
    GroupMessages,
    GroupOps,
    GroupPeers,
    GroupSummary,
    decode_group,
    encode_group,
)
from p2pchat.core.group.membership import Membership
from p2pchat.core.group.messages import SIGN_PREFIX as MSG_PREFIX
from p2pchat.core.group.messages import parse_message, sign_message
from p2pchat.core.group.ops import parse_op, sign_op
from p2pchat.core.group.ranges import SeqSet
from p2pchat.core.group.replica import GroupLimits

from .group_sim import SimMember, meet, pull, push


def group_of(n: int, limits: GroupLimits | None = None) -> list[SimMember]:
    """A founder who added n-1 members (all hold the operations)."""
    members = [SimMember(f"m{i}") for i in range(n)]
    founder = members[0]
    replica = founder.found("friends", limits)
    for m in members[1:]:
        replica.propose("add", at=1.0, target=m.key, role="member")
    for m in members[1:]:
        m.join_from(founder, limits)
    return members


def ops_of(member: SimMember) -> list[tuple[bytes, bytes]]:
    assert member.replica is not None
    return member.replica.membership.wire()


# --------------------------------------------------------------------- ranges
def test_seqset_arithmetic() -> None:
    s = SeqSet([(1, 3), (7, 9)])
    s.add(4)
    s.add(6)
    assert s.ranges == ((1, 4), (6, 9))
    s.add(5)
    assert s.ranges == ((1, 9),)
    assert SeqSet([(1, 10)]).minus(SeqSet([(3, 4), (8, 20)])).ranges == ((1, 2), (5, 7))
    s.discard(5)
    assert s.ranges == ((1, 4), (6, 9))
    s.discard_below(3)
    assert s.ranges == ((3, 4), (6, 9))
    assert 6 in s and 5 not in s and len(s) == 6


# ------------------------------------------------------------------ operations
def test_founder_is_admin_and_members_join() -> None:
    a, b, c = group_of(3)
    assert a.replica is not None and b.replica is not None
    state = b.replica.state()
    assert state.name == "friends"
    assert state.members == {a.key: "admin", b.key: "member", c.key: "member"}
    assert b.replica.group_id == a.replica.group_id == a.replica.membership.genesis.id


def test_only_admins_change_membership() -> None:
    a, b, _c = group_of(3)
    outsider = SimMember("x")
    assert b.replica is not None and a.replica is not None
    with pytest.raises(LocalProtocolError, match="only an admin"):
        b.replica.propose("add", at=1.0, target=outsider.key, role="member")
    # A member who signs the operation anyway: every member refuses it.
    forged = sign_op(
        b.sign,
        group_id=a.replica.group_id,
        kind="add",
        author=b.key,
        parents=a.replica.membership.heads,
        at=1.0,
        target=outsider.key,
        role="admin",
    )
    receipt = a.replica.receive_ops([forged.wire])
    assert receipt.added == () and "not allowed" in receipt.invalid[0]
    assert not a.replica.is_member(outsider.key)
    # A stranger's operation, and one for another group, are refused too.
    stranger = sign_op(
        outsider.sign, group_id=a.replica.group_id, kind="rename", author=outsider.key,
        parents=a.replica.membership.heads, at=1.0, name="mine now",
    )
    assert "not allowed" in a.replica.receive_ops([stranger.wire]).invalid[0]
    other = SimMember("o")
    other_group = other.found("elsewhere")
    foreign = other_group.propose("add", at=1.0, target=outsider.key, role="member")
    assert "another group" in a.replica.receive_ops([foreign.wire]).invalid[0]


def test_forged_and_tampered_operations_are_refused() -> None:
    a, b = group_of(2)
    assert a.replica is not None and b.replica is not None
    op = a.replica.propose("rename", at=2.0, name="renamed")
    body, sig = op.wire
    bad_sig = bytes([sig[0] ^ 1]) + sig[1:]
    assert "signature" in b.replica.receive_ops([(body, bad_sig)]).invalid[0]
    tampered = body.replace(b"renamed", b"hijack!")
    assert "signature" in b.replica.receive_ops([(tampered, sig)]).invalid[0]
    # Someone else's signature over the same body does not pass as the author's.
    assert "signature" in b.replica.receive_ops([(body, b.sign(body))]).invalid[0]
    assert b.replica.state().name == "friends"
    assert b.replica.receive_ops([op.wire]).changed
    assert b.replica.state().name == "renamed"
    # Replaying it changes nothing.
    assert b.replica.receive_ops([op.wire]).added == ()


def test_operation_parser_refuses_malformed_bodies() -> None:
    a, _ = group_of(2)
    assert a.replica is not None
    for junk in (b"", b"\xc1", msgpack.packb([1, 2, 3]), msgpack.packb({"a": 1})):
        with pytest.raises(RemoteProtocolError):
            parse_op((junk, bytes(64)))
    with pytest.raises(RemoteProtocolError):
        parse_op([b"x" * 2000, bytes(64)])
    with pytest.raises(RemoteProtocolError):
        parse_op("nope")


def test_operations_in_any_order_converge() -> None:
    a, b, c, _d = group_of(4)
    assert a.replica is not None and b.replica is not None
    a.replica.propose("promote", at=2.0, target=b.key)
    pull(b, a)
    b.replica.propose("remove", at=3.0, target=c.key)
    a.replica.propose("rename", at=3.0, name="late night")
    pull(a, b)
    every = ops_of(a)
    want = a.replica.state()
    rng = random.Random(7)
    for _ in range(20):
        order = every[1:]
        rng.shuffle(order)
        fresh = Membership(parse_op(every[0]))
        for wire in order:
            fresh.add(parse_op(wire))
        assert fresh.state() == want
        assert fresh.orphan_count == 0


def test_two_admins_adding_at_once_both_count() -> None:
    a, b, _c = group_of(3)
    assert a.replica is not None and b.replica is not None
    a.replica.propose("promote", at=2.0, target=b.key)
    pull(b, a)
    x, y = SimMember("x"), SimMember("y")
    a.replica.propose("add", at=3.0, target=x.key, role="member")
    b.replica.propose("add", at=3.0, target=y.key, role="member")
    meet(a, b)
    assert a.replica.state() == b.replica.state()
    assert {x.key, y.key} <= set(a.replica.state().members)


def test_removal_wins_over_a_concurrent_add_by_the_removed_admin() -> None:
    a, b, _c = group_of(3)
    assert a.replica is not None and b.replica is not None
    a.replica.propose("promote", at=2.0, target=b.key)
    pull(b, a)
    x = SimMember("x")
    a.replica.propose("remove", at=3.0, target=b.key)
    b.replica.propose("add", at=3.0, target=x.key, role="admin")  # concurrent
    meet(a, b)
    for m in (a, b):
        assert m.replica is not None
        state = m.replica.state()
        assert b.key not in state.members and x.key not in state.members


def test_mutual_removal_removes_both() -> None:
    a, b, c = group_of(3)
    assert a.replica is not None and b.replica is not None
    a.replica.propose("promote", at=2.0, target=b.key)
    pull(b, a)
    a.replica.propose("remove", at=3.0, target=b.key)
    b.replica.propose("remove", at=3.0, target=a.key)
    meet(a, b)
    pull(c, a)
    assert c.replica is not None
    assert a.replica.state() == b.replica.state() == c.replica.state()
    assert set(c.replica.state().members) == {c.key}


def test_backdated_removal_by_a_removed_admin_is_void() -> None:
    a, b, c, d = group_of(4)
    assert a.replica is not None and b.replica is not None
    a.replica.propose("promote", at=2.0, target=b.key)
    pull(b, a)
    old_heads = b.replica.membership.heads
    a.replica.propose("remove", at=3.0, target=b.key)
    # b, already removed, signs a removal of d naming its old heads (claiming concurrency).
    backdated = sign_op(
        b.sign, group_id=a.replica.group_id, kind="remove", author=b.key,
        parents=old_heads, at=3.0, target=d.key, cutoff=0,
    )
    assert a.replica.receive_ops([backdated.wire]).invalid == ()  # stored: allowed there
    state = a.replica.state()
    assert d.key in state.members and b.key not in state.members
    # Only against its own remover does backdating bite: mutual removal, both go.
    revenge = sign_op(
        b.sign, group_id=a.replica.group_id, kind="remove", author=b.key,
        parents=old_heads, at=3.0, target=a.key, cutoff=0,
    )
    a.replica.receive_ops([revenge.wire])
    assert set(a.replica.state().members) == {c.key, d.key}


def test_removal_beats_a_concurrent_re_add() -> None:
    a, b, c = group_of(3)
    assert a.replica is not None and b.replica is not None
    a.replica.propose("promote", at=2.0, target=b.key)
    a.replica.propose("remove", at=2.5, target=c.key)
    meet(a, b)
    b.replica.propose("add", at=3.0, target=c.key, role="member")  # b re-adds c...
    a.replica.propose("remove", at=3.0, target=b.key)  # ...while a removes b
    meet(a, b)
    assert a.replica.state() == b.replica.state()
    assert c.key not in a.replica.state().members


def test_leave_and_rejoin() -> None:
    a, b = group_of(2)
    assert a.replica is not None and b.replica is not None
    b.post("hello")
    b.post("bye")
    b.replica.propose("leave", at=3.0)
    pull(a, b)
    state = a.replica.state()
    assert b.key not in state.members and state.removed[b.key] == 2
    with pytest.raises(LocalProtocolError):
        b.replica.author(b"still here?", at=4.0)
    a.replica.propose("add", at=5.0, target=b.key, role="member")
    pull(b, a)
    assert b.replica.is_member()


def test_operation_log_and_orphans_are_bounded() -> None:
    a, _b = group_of(2)
    assert a.replica is not None
    fresh = Membership(parse_op(ops_of(a)[0]), max_orphans=4, max_ops=6)
    # Orphans (parents unknown) beyond the cap push out the oldest.
    x = SimMember("x")
    chain = Membership(parse_op(ops_of(a)[0]))
    for wire in ops_of(a)[1:]:
        chain.add(parse_op(wire))
    later = []
    for i in range(8):
        later.append(chain.propose(a.sign, kind="rename", author=a.key, at=3.0, name=f"n{i}"))
    for op in reversed(later):
        fresh.add(op)
    assert fresh.orphan_count == 4
    assert x.key not in fresh.state().members
    # The log refuses operations beyond its size.
    for wire in ops_of(a)[1:]:
        fresh.add(parse_op(wire))
    for op in later:
        try:
            fresh.add(op)
        except RemoteProtocolError as exc:
            assert "full" in str(exc)
    assert len(fresh) <= 6


# --------------------------------------------------------------------- messages
def test_messages_reach_everyone_in_per_author_order() -> None:
    a, b, c = group_of(3)
    for i in range(5):
        a.post(f"a{i}")
        b.post(f"b{i}")
    meet(a, b)
    meet(b, c)
    meet(a, c)
    for m in (a, b, c):
        assert sorted(m.shown) == sorted(set(m.shown)) and len(m.shown) == 10
        for author in (a.key, b.key):
            seqs = [s for (k, s) in m.shown if k == author]
            assert seqs == sorted(seqs) == list(range(1, 6))


def test_out_of_order_messages_wait_and_are_shown_once() -> None:
    a, b = group_of(2)
    sent = [a.post(f"m{i}") for i in range(6)]
    assert b.replica is not None
    for m in (sent[3], sent[1], sent[5], sent[3]):
        b.take(b.replica.receive_batch([m.wire]))
    assert b.shown == []
    assert b.replica.pending_count == 3
    b.take(b.replica.receive_batch([sent[0].wire]))
    assert [s for _, s in b.shown] == [1, 2]
    b.take(b.replica.receive_batch([sent[4].wire, sent[2].wire]))
    assert [s for _, s in b.shown] == [1, 2, 3, 4, 5, 6]
    assert b.replica.pending_count == 0
    assert b.replica.receive(sent[2].wire).verdict == "duplicate"


def test_forged_messages_are_refused() -> None:
    a, b, c = group_of(3)
    assert a.replica is not None and c.replica is not None
    real = a.post("pay bob")
    header, sig, content = real.wire
    verdicts = [
        c.replica.receive((header, sig, b"pay eve")),  # content swapped
        c.replica.receive((header, bytes(64), content)),  # no signature
        c.replica.receive((header, b.sign(MSG_PREFIX + header), content)),  # b signs as a
    ]
    assert [r.verdict for r in verdicts] == ["invalid"] * 3
    outsider = SimMember("x")
    fake = sign_message(
        outsider.sign, group_id=a.replica.group_id, author=outsider.key, seq=1, clock=1,
        at=1.0, heads=a.replica.membership.heads, kind="text", content=b"let me in",
    )
    assert c.replica.receive(fake.wire).verdict == "invalid"
    other = SimMember("o").found("elsewhere")
    elsewhere = other.author(b"hi", at=1.0)
    assert c.replica.receive(elsewhere.wire).verdict == "invalid"
    assert c.replica.receive(real.wire).verdict == "new"
    assert c.replica.receive(real.wire).verdict == "duplicate"  # a replay


def test_message_parser_refuses_malformed_input() -> None:
    for junk in ("x", [b"", b"", b""], [b"\x90", bytes(64), b""], [b"a", b"b"]):
        with pytest.raises(RemoteProtocolError):
            parse_message(junk)


def test_messages_naming_unknown_operations_wait_for_them() -> None:
    a, _b, c = group_of(3)
    assert a.replica is not None and c.replica is not None
    d = SimMember("d")
    a.replica.propose("add", at=2.0, target=d.key, role="member")
    d.join_from(a)
    hello = d.post("hi, I am new")
    assert c.replica.receive(hello.wire).verdict == "need_ops"
    pull(c, a)
    assert c.replica.receive(hello.wire).verdict == "new"


def test_removed_member_gets_nothing_sent_after_its_removal() -> None:
    a, b, c = group_of(3)
    assert a.replica is not None and c.replica is not None
    before = b.post("before")
    meet(a, b)
    meet(a, c)
    a.replica.propose("remove", at=3.0, target=c.key)
    after = a.post("after the removal")
    b_late = b.post("b did not know yet")  # concurrent with the removal
    pull(b, a)
    after_b = b.post("b knows now")
    # c meets everyone, again and again: it gets the removal, and nothing after it.
    for _ in range(3):
        meet(c, a)
        meet(c, b)
    assert not c.replica.is_member()
    assert (after.author, after.seq) not in c.store
    assert (after_b.author, after_b.seq) not in c.store
    assert (before.author, before.seq) in c.store
    # Live pushes skip it too.
    push(a, a.post("more"), [a, b, c])
    assert len([k for k in c.store if k[0] == a.key]) == 0
    # b's concurrent message may reach c only from someone who did not know either.
    assert b_late is not None


def test_messages_after_leaving_are_refused_up_to_the_cutoff() -> None:
    a, b = group_of(2)
    assert a.replica is not None and b.replica is not None
    kept = b.post("one")
    b.replica.propose("leave", at=3.0)
    pull(a, b)
    assert a.replica.receive(kept.wire).verdict == "duplicate"
    # A message b signs later, naming its old heads, is refused.
    late = sign_message(
        b.sign, group_id=a.replica.group_id, author=b.key, seq=2, clock=99, at=4.0,
        heads=(a.replica.membership.genesis.id,), kind="text", content=b"sneaky",
    )
    assert a.replica.receive(late.wire).verdict in ("refused", "invalid")


def test_shared_display_order_respects_causality() -> None:
    a, b, c = group_of(3)
    q = a.post("question?")
    meet(a, b)
    r = b.post("answer!")
    pull(c, b)  # c gets both from b
    assert r.clock > q.clock
    meet(a, b)
    orders = []
    for m in (a, b, c):
        stored = sorted(m.store.values(), key=lambda x: (x.clock, x.author, x.seq))
        orders.append([x.id for x in stored])
    assert orders[0] == orders[1] == orders[2]


def test_author_clock_must_grow_with_seq() -> None:
    a, b = group_of(2)
    assert a.replica is not None and b.replica is not None
    first = a.post("one")
    b.take(b.replica.receive_batch([first.wire]))
    bad = sign_message(
        a.sign, group_id=a.replica.group_id, author=a.key, seq=2, clock=first.clock,
        at=2.0, heads=a.replica.membership.heads, kind="text", content=b"two",
    )
    assert b.replica.receive(bad.wire).verdict == "refused"
    assert b.replica.shown(a.key) == 1


def test_window_and_pending_are_bounded() -> None:
    limits = GroupLimits(window=16, max_pending=8)
    a, b = group_of(2, limits)
    assert a.replica is not None and b.replica is not None
    sent = [a.post(str(i)) for i in range(40)]
    receipts = [b.replica.receive(m.wire) for m in sent[1:]]
    b.take(receipts)
    verdicts = [r.verdict for r in receipts]
    assert verdicts.count("new") == 8  # the pending cap
    assert set(verdicts) == {"new", "later"}
    assert b.replica.pending_count == 8
    # Once the gap fills, everything follows.
    pull(b, a)
    assert b.replica.shown(a.key) == 40 and b.replica.pending_count == 0


def test_clock_jump_is_bounded() -> None:
    a, b = group_of(2, GroupLimits(max_clock_jump=1000))
    assert a.replica is not None and b.replica is not None
    far = sign_message(
        a.sign, group_id=a.replica.group_id, author=a.key, seq=1, clock=5000,
        at=1.0, heads=a.replica.membership.heads, kind="text", content=b"x",
    )
    assert b.replica.receive(far.wire).verdict == "later"


# ------------------------------------------------------------------------ sync
def test_retention_floor_and_skip() -> None:
    a, b, c = group_of(3)
    assert a.replica is not None and c.replica is not None
    sent = [a.post(f"m{i}") for i in range(10)]
    meet(a, b)
    # b keeps only the newest 4 of a's messages.
    assert b.replica is not None
    for m in sent[:6]:
        del b.store[(m.author, m.seq)]
    b.replica.dropped(a.key, 6)
    summary = b.replica.summary()
    entry = next(e for e in summary.authors if e.author == a.key)
    assert (entry.shown, entry.floor) == (10, 6)
    # c, who never met a, gets what b holds and stops waiting for the rest.
    pull(c, b)
    assert [s for k, s in c.shown if k == a.key] == [7, 8, 9, 10]
    # a still has them all, but c has moved past: nothing is shown twice or out of order.
    pull(c, a)
    assert [s for k, s in c.shown if k == a.key] == [7, 8, 9, 10]


def test_a_skip_needs_a_real_message_above_it() -> None:
    a, b = group_of(2)
    assert a.replica is not None and b.replica is not None
    sent = [a.post(f"m{i}") for i in range(3)]
    # A lying member says "nothing of a below 1000": without message 1001 it is ignored.
    b.take(b.replica.receive_batch([sent[2].wire], {a.key: 1000}))
    assert b.replica.shown(a.key) == 0
    # With message 3, a skip to 2 is honoured.
    b.take(b.replica.receive_batch([sent[2].wire], {a.key: 2}))
    assert b.replica.shown(a.key) == 3


def test_summary_answers_are_rate_limited_and_budgeted() -> None:
    limits = GroupLimits(summary_rate=1.0, summary_burst=2.0, answer_rate=1000.0,
                         answer_burst=2000.0, batch_bytes=1500)
    a, b = group_of(2, limits)
    assert a.replica is not None and b.replica is not None
    for i in range(20):
        a.post(f"message {i}")
    summary = b.replica.summary()
    plans = [a.replica.peer_summary(b.key, summary, now=0.0) for _ in range(3)]
    assert [p is not None for p in plans] == [True, True, False]
    first = plans[0]
    assert first is not None and first.budget == 1500
    a.replica.spent(b.key, 2000, now=0.0)  # the whole burst
    later = a.replica.peer_summary(b.key, summary, now=1.0)
    assert later is not None and later.budget == 1000
    much_later = a.replica.peer_summary(b.key, summary, now=10.0)
    assert much_later is not None and much_later.budget == 1500


def test_push_reaches_members_the_author_cannot_reach() -> None:
    a, b, c, d = group_of(4)
    m = a.post("live")
    # a reaches only b; b relays to c and d, who are outside a's fan-out.
    assert a.replica is not None
    push(a, m, [a, b])
    assert (a.key, 1) in b.store
    assert b.replica is not None
    targets = b.replica.push_targets(m, [c.key, d.key, a.key], source=a.key,
                                     fanout=[a.key[:8], b.key[:8]])
    assert targets == sorted([c.key, d.key])
    # With everyone online and reached by the author, nobody relays.
    n = a.post("everyone")
    push(a, n, [a, b, c, d])
    for member in (b, c, d):
        assert (a.key, 2) in member.store


def test_delivery_is_counted_from_acknowledgements() -> None:
    a, b, _c = group_of(3)
    assert a.replica is not None
    m = a.post("count me")
    assert a.replica.delivered_to(a.key, m.seq) == (a.key,)
    pull(b, a)
    assert b.replica is not None
    assert not a.replica.peer_has(b.key, a.key, b.replica.shown(a.key), now=0.0)
    assert set(a.replica.delivered_to(a.key, m.seq)) == {a.key, b.key}


def test_have_from_a_member_with_more_triggers_one_ask() -> None:
    a, b = group_of(2)
    assert a.replica is not None and b.replica is not None
    a.post("x")
    assert b.replica.peer_has(a.key, a.key, 1, now=0.0)
    b.replica.asking(a.key, now=0.0)
    assert not b.replica.peer_has(a.key, a.key, 1, now=1.0)  # already asked
    assert b.replica.peer_has(a.key, a.key, 1, now=100.0)  # no answer for long: ask again
    assert not b.replica.peer_done(a.key, more=False, now=100.0)


# ---------------------------------------------------------------------- frames
def test_frames_round_trip_and_refuse_junk() -> None:
    a, b = group_of(2)
    assert a.replica is not None
    m = a.post("hi")
    gid = a.replica.group_id
    frames = [
        GroupSummary(gid, a.replica.summary()),
        GroupOps(gid, tuple(ops_of(a))),
        GroupMessages(gid, (m.wire,), ((a.key, 3),), (a.key[:8],)),
        GroupEnd(gid, True),
        GroupHave(gid, ((a.key, 1),)),
        GroupInvite(gid, "friends"),
        GroupPeers(gid, ((b.key, ("127.0.0.1:4000",)),)),
    ]
    for frame in frames:
        assert decode_group(encode_group(frame)) == frame
    bad = [
        {"t": "gsum", "g": gid, "o": [], "a": [[a.key, 5, 6, []]]},  # floor above shown
        {"t": "gsum", "g": gid, "o": [], "a": [[a.key, 5, 0, [[3, 9]]]]},  # range below shown
        {"t": "gend", "g": gid, "more": 1},
        {"t": "ghave", "g": gid[:5], "a": [[a.key, 1]]},
        {"t": "ginvite", "g": gid, "n": "bad\x1bname"},
        {"t": "gpeers", "g": gid, "p": [[b.key, ["x" * 300]]]},
        {"t": "gmsgs", "g": gid, "m": []},
    ]
    for m_ in bad:
        with pytest.raises(RemoteProtocolError):
            decode_group(msgpack.packb(m_, use_bin_type=True))


def test_a_summary_from_a_member_we_do_not_know_yet_is_answered_once_we_do() -> None:
    a, b = group_of(2)
    assert a.replica is not None and b.replica is not None
    b.post("history")
    newcomer = SimMember("new")
    a.replica.propose("add", at=2.0, target=newcomer.key, role="member")
    newcomer.join_from(a)
    assert newcomer.replica is not None
    # b has not heard of the newcomer: its summary gets nothing yet, but is kept.
    plan = b.replica.peer_summary(newcomer.key, newcomer.replica.summary(), now=0.0)
    assert plan is not None and not plan.wants
    assert b.replica.deferred_plans(now=0.0) == []
    pull(b, newcomer)  # the newcomer's operations reach b
    deferred = b.replica.deferred_plans(now=0.0)
    assert [peer for peer, _ in deferred] == [newcomer.key]
    assert deferred[0][1].wants[0][0] == b.key
