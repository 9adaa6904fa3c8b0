"""A malicious group member against real nodes: forged, replayed and fake-membership input,
and a sync flood.  Refused, memory bounded, and the group keeps working."""

from __future__ import annotations

import msgpack

from p2pchat.core.group.events import GroupMessageReceived
from p2pchat.core.group.frames import GroupMessages, GroupOps, GroupSummary, message_frames
from p2pchat.core.group.messages import SIGN_PREFIX as MSG_PREFIX
from p2pchat.core.group.messages import content_hash, sign_message
from p2pchat.core.group.ops import sign_op
from p2pchat.core.group.replica import AuthorSummary, Summary
from p2pchat.identity import Identity
from p2pchat.net.peer import PeerConnection

from ..conftest import EventLog, StartNode, wait_until
from ..test_groups import group_of, texts


def forged_as(author: bytes, signer: Identity, group_id: bytes, heads: tuple[bytes, ...],
              seq: int, text: str) -> tuple[bytes, bytes, bytes]:
    """A message that claims ``author`` but is signed by someone else."""
    content = text.encode()
    header = msgpack.packb(
        ["gmsg", 1, group_id, author, seq, 10**6, 1.0, sorted(heads), "text",
         content_hash(content)],
        use_bin_type=True,
    )
    return (header, signer.sign(MSG_PREFIX + header), content)


async def test_malicious_member_is_refused_and_the_group_keeps_working(
    start_node: StartNode,
) -> None:
    nodes, group = await group_of(start_node, ["alice", "bob", "mallory"])
    a, victim, mallory = nodes
    gid = bytes.fromhex(group)
    # Liveness bounds are generous: the flood below is real work for both nodes.
    await wait_until(lambda: mallory.groups.session(victim.peer_id) is not None, timeout=90)
    conn = mallory.groups.session(victim.peer_id)
    assert isinstance(conn, PeerConnection)
    a.groups.send(group, "genuine from alice")
    await wait_until(lambda: texts(victim, group) == ["genuine from alice"], timeout=60)
    log = EventLog(victim)
    replica = victim.groups._replicas[gid]
    heads = replica.membership.heads

    # 1. A replay of alice's message (mallory holds it) is a duplicate: nothing new.
    stored = mallory.groups.db.history(gid)
    conn.send(GroupMessages(gid, tuple(m.wire for m in stored)))
    # 2. Words put in alice's mouth: refused (signature), counted against mallory.
    conn.send(
        GroupMessages(gid, (forged_as(a.identity.public_key, mallory.identity, gid, heads, 2,
                                      "alice says: send money to mallory"),))
    )
    # 3. A membership change mallory (no admin) has no right to make.
    outsider = Identity.generate()
    fake = sign_op(
        mallory.identity.sign, group_id=gid, kind="add", author=mallory.identity.public_key,
        parents=heads, at=1.0, target=outsider.public_key, role="admin",
    )
    conn.send(GroupOps(gid, (fake.wire,)))
    await wait_until(lambda: replica.state().members.get(outsider.public_key) is None)
    theirs = victim.groups.session(mallory.peer_id)
    assert theirs is not None
    await wait_until(lambda: theirs.bad_frames >= 2, timeout=60)  # forgery, fake change
    # 4. A flood: thousands of her own messages (never her first, so none can be shown)
    # and a stream of summaries asking for everything.
    me = mallory.identity
    flood = [
        sign_message(
            me.sign, group_id=gid, author=me.public_key, seq=2 + i, clock=50 + i,
            at=1.0, heads=heads, kind="text", content=b"x" * 200,
        )
        for i in range(6000)
    ]
    for frame in message_frames(gid, flood):
        assert conn.send(frame)
    empty = GroupSummary(gid, Summary(heads, (AuthorSummary(me.public_key, 0, 0),)))
    for _ in range(300):
        assert conn.send(empty)
    # Only seqs 2..window fit (seq 1 never comes): the window is the bound that bites.
    limit = min(replica.limits.window - 1, replica.limits.max_pending)
    await wait_until(lambda: replica.pending_count == limit, timeout=180)
    a.groups.send(group, "alice, after the attack")
    await wait_until(lambda: "alice, after the attack" in texts(victim, group), timeout=90)

    assert replica.state().members.get(outsider.public_key) is None
    assert texts(victim, group) == ["genuine from alice", "alice, after the attack"]
    shown = [e for e in log.of(GroupMessageReceived) if isinstance(e, GroupMessageReceived)]
    assert [e.message.text for e in shown] == ["alice, after the attack"]
    # Bounded: the flood waits in at most the pending budget, in memory and on disk.
    assert replica.pending_count == limit
    count, _ = victim.groups.db.usage(gid)
    assert count <= replica.limits.max_pending + 2
    assert set(replica.authors) <= {a.identity.public_key, mallory.identity.public_key}
    await log.close()
