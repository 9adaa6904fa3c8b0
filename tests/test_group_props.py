"""Property tests of the group core: convergence, exactly-once display, refusal, bounds."""

from __future__ import annotations

import itertools
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pchat.core.errors import LocalProtocolError
from p2pchat.core.group.frames import GroupSummary, encode_group
from p2pchat.core.group.membership import Membership
from p2pchat.core.group.messages import sign_message
from p2pchat.core.group.ops import parse_op
from p2pchat.core.group.replica import GroupLimits

from .group_sim import SimMember, meet, pull, push

SLOW = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

ACTIONS = ("add", "add_admin", "remove", "promote", "leave", "rename", "sync", "post")
steps = st.lists(
    st.tuples(
        st.integers(0, 4), st.sampled_from(ACTIONS), st.integers(0, 4), st.integers(0, 4)
    ),
    max_size=30,
)


def start(n: int = 5) -> list[SimMember]:
    members = [SimMember(f"m{i}") for i in range(n)]
    founder = members[0]
    replica = founder.found("props")
    for i, m in enumerate(members[1:4], start=1):
        replica.propose("add", at=1.0, target=m.key, role="admin" if i == 1 else "member")
    for m in members[1:]:
        m.join_from(founder)  # member 4 holds the operations but is not (yet) a member
    return members


def run(members: list[SimMember], script: list[tuple[int, str, int, int]]) -> None:
    for actor_i, action, target_i, other_i in script:
        actor, target = members[actor_i], members[target_i]
        replica = actor.replica
        assert replica is not None
        try:
            if action == "add":
                replica.propose("add", at=2.0, target=target.key, role="member")
            elif action == "add_admin":
                replica.propose("add", at=2.0, target=target.key, role="admin")
            elif action == "remove":
                replica.propose("remove", at=2.0, target=target.key)
            elif action == "promote":
                replica.propose("promote", at=2.0, target=target.key)
            elif action == "leave":
                replica.propose("leave", at=2.0)
            elif action == "rename":
                replica.propose("rename", at=2.0, name=f"name {other_i}")
            elif action == "post":
                actor.post(f"{actor.name} says {other_i}")
            else:
                pull(actor, members[other_i])
        except LocalProtocolError:
            pass  # not allowed in the actor's current view: it does not happen


def every_op(members: list[SimMember]) -> list[tuple[bytes, bytes]]:
    seen: dict[bytes, tuple[bytes, bytes]] = {}
    for m in members:
        assert m.replica is not None
        for op in m.replica.membership.ordered():
            seen.setdefault(op.id, op.wire)
    return list(seen.values())


@SLOW
@given(script=steps, seed=st.integers(0, 2**32 - 1))
def test_members_receiving_operations_in_any_order_converge(
    script: list[tuple[int, str, int, int]], seed: int
) -> None:
    members = start()
    run(members, script)
    wires = every_op(members)
    genesis = members[0].replica.membership.genesis  # type: ignore[union-attr]
    rest = [w for w in wires if parse_op(w).id != genesis.id]
    rng = random.Random(seed)
    states = []
    for _ in range(4):
        rng.shuffle(rest)
        fresh = Membership(genesis)
        for wire in rest:
            fresh.add(parse_op(wire))
        assert len(fresh) == len(wires), "an operation allowed where it was made was refused"
        states.append(fresh.state())
    assert all(s == states[0] for s in states)
    # The members themselves, once every operation reached them, agree too.
    for m in members:
        assert m.replica is not None
        m.replica.receive_ops(rest)
        assert m.replica.state() == states[0]


@SLOW
@given(script=steps)
def test_gossip_converges_and_removed_members_get_nothing_after(
    script: list[tuple[int, str, int, int]],
) -> None:
    members = start()
    run(members, script)
    # Everyone meets everyone twice: current members converge on one state.
    for _ in range(2):
        for a, b in itertools.permutations(members, 2):
            pull(a, b)
    reference = next((m for m in members if m.replica and m.replica.is_member()), None)
    if reference is None:
        return
    assert reference.replica is not None
    final = reference.replica.state()
    for m in members:
        assert m.replica is not None
        if m.replica.is_member():
            assert m.replica.state() == final
    # A member removed (or gone) never holds a message whose author knew it was out.
    for m in members:
        assert m.replica is not None
        if m.key in final.members:
            continue
        for message in m.store.values():
            if message.author == m.key:
                continue
            at_writing = reference.replica.membership.state_at(message.heads)
            assert m.key in at_writing.members, "got a message sent after its removal"


msg_steps = st.lists(
    st.one_of(
        st.tuples(st.just("post"), st.integers(0, 3), st.integers(0, 3)),
        st.tuples(st.just("pull"), st.integers(0, 3), st.integers(0, 3)),
        st.tuples(st.just("push"), st.integers(0, 3), st.integers(1, 15)),
        st.tuples(st.just("leak"), st.integers(0, 3), st.integers(0, 3)),
    ),
    max_size=60,
)


@SLOW
@given(script=msg_steps, seed=st.integers(0, 2**32 - 1))
def test_messages_shown_exactly_once_in_author_order_and_one_causal_order(
    script: list[tuple[str, int, int]], seed: int
) -> None:
    members = start(4)
    rng = random.Random(seed)
    for action, x, y in script:
        if action == "post":
            members[x].post(f"{x}:{len(members[x].authored)}")
        elif action == "pull":
            pull(members[x], members[y])
        elif action == "push" and members[x].authored:
            online = [m for i, m in enumerate(members) if y >> i & 1 or i == x]
            push(members[x], members[x].authored[-1][0], online)
        elif action == "leak" and members[y].store:
            # A message from anywhere in y's store turns up at x, in any order.
            message = rng.choice(list(members[y].store.values()))
            receiver = members[x]
            assert receiver.replica is not None
            receiver.take(receiver.replica.receive_batch([message.wire]))
    for _ in range(2):
        for a, b in itertools.permutations(members, 2):
            pull(a, b)
    posted = {(m.author, m.seq) for member in members for m, _ in member.authored}
    orders = []
    for member in members:
        assert len(member.shown) == len(set(member.shown)), "a message was shown twice"
        assert set(member.shown) == posted
        for author in {a for a, _ in posted}:
            seqs = [s for a, s in member.shown if a == author]
            assert seqs == list(range(1, len(seqs) + 1))
        stored = sorted(member.store.values(), key=lambda m: (m.clock, m.author, m.seq))
        orders.append([m.id for m in stored])
        # Causal: everything an author had shown sorts before what it then wrote.
        position = {(m.author, m.seq): i for i, m in enumerate(stored)}
        for message, before in member.authored:
            for ref in before:
                assert position[ref] < position[(message.author, message.seq)]
    assert all(o == orders[0] for o in orders)


@SLOW
@given(
    position=st.integers(0, 10_000),
    mask=st.integers(1, 255),
    part=st.sampled_from([0, 1, 2]),
)
def test_any_altered_byte_of_a_message_or_operation_is_refused(
    position: int, mask: int, part: int
) -> None:
    a, b = start(2)
    assert a.replica is not None and b.replica is not None
    message = a.post("an honest message")
    fields = list(message.wire)
    data = bytearray(fields[part])
    if data:
        data[position % len(data)] ^= mask
        fields[part] = bytes(data)
        assert b.replica.receive(tuple(fields)).verdict in ("invalid", "need_ops")
        assert b.replica.shown(a.key) == 0
    op = a.replica.propose("rename", at=3.0, name="renamed")
    body, sig = op.wire
    target = bytearray(body if part != 1 else sig)
    target[position % len(target)] ^= mask
    altered = (bytes(target), sig) if part != 1 else (body, bytes(target))
    receipt = b.replica.receive_ops([altered])
    assert receipt.added == ()
    assert b.replica.state().name == "props"


@SLOW
@given(
    flood=st.lists(
        st.tuples(st.integers(1, 10**7), st.integers(1, 2**40), st.binary(max_size=64)),
        max_size=300,
    )
)
def test_memory_stays_bounded_under_a_flood(flood: list[tuple[int, int, bytes]]) -> None:
    """A member signs messages with any seq and clock it likes, and spams summaries."""
    limits = GroupLimits(window=64, max_pending=32)
    members = start(3)
    for m in members[1:]:
        m.join_from(members[0], limits)
    attacker, victim = members[1], members[2]
    assert victim.replica is not None and attacker.replica is not None
    heads = victim.replica.membership.heads
    wires = [
        sign_message(
            attacker.sign, group_id=victim.replica.group_id, author=attacker.key, seq=seq,
            clock=clock, at=1.0, heads=heads, kind="text", content=content.hex().encode(),
        ).wire
        for seq, clock, content in flood
    ]
    for i in range(0, len(wires), 50):
        victim.take(victim.replica.receive_batch(wires[i : i + 50]))
    assert victim.replica.pending_count <= limits.max_pending
    assert len(victim.replica.authors) <= 2
    summary = victim.replica.summary()
    assert len(encode_group(GroupSummary(victim.replica.group_id, summary))) < 2048
    # Summary spam: answered at the configured rate, nothing more.
    answered = sum(
        victim.replica.peer_summary(attacker.key, summary, now=0.0) is not None
        for _ in range(200)
    )
    assert answered == int(limits.summary_burst)
    # And the group keeps working for honest members.
    honest = members[0]
    hello = honest.post("still here")
    victim.take(victim.replica.receive_batch([hello.wire]))
    assert (honest.key, 1) in victim.shown
    meet(honest, victim)
