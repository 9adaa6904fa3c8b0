"""A malicious group member against real nodes: forged, replayed and fake-membership input
(a change it has no right to make, one forged in an admin's name, the whole operation log
replayed), and a sync flood.  Refused, memory bounded, and the group keeps working."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest

from p2pchat.core.errors import LocalProtocolError
from p2pchat.core.group.events import GroupMessageReceived
from p2pchat.core.group.frames import GroupMessages, GroupOps, GroupSummary, message_frames
from p2pchat.core.group.messages import SIGN_PREFIX as MSG_PREFIX
from p2pchat.core.group.messages import content_hash, sign_message
from p2pchat.core.group.ops import SIGN_PREFIX as OP_PREFIX
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
    # The default bounds (4,096 held per group) make the flood below thousands of signature
    # checks and writes: the same bounds, scaled down, keep this test short on a loaded
    # machine while the flood still overruns them more than twofold.
    replica.limits = dataclasses.replace(replica.limits, window=512, max_pending=512)
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
    # 3b. A removal of the victim in alice's name (alice is an admin), signed by mallory.
    signed: list[bytes] = []

    def capture(data: bytes) -> bytes:
        signed.append(data)
        return mallory.identity.sign(data)

    with pytest.raises(LocalProtocolError):  # sign_op checks its own work
        sign_op(
            capture, group_id=gid, kind="remove", author=a.identity.public_key,
            parents=heads, at=1.0, target=victim.identity.public_key,
        )
    conn.send(GroupOps(gid, ((signed[0][len(OP_PREFIX):], mallory.identity.sign(signed[0])),)))
    # 3c. Every operation of the group's history replayed: duplicates, nothing changes.
    conn.send(GroupOps(gid, tuple(mallory.groups.db.ops(gid))))
    await wait_until(lambda: replica.state().members.get(outsider.public_key) is None)
    theirs = victim.groups.session(mallory.peer_id)
    assert theirs is not None
    # forgery, fake change, forged admin removal (the replays are no offence)
    await wait_until(lambda: theirs.bad_frames >= 3, timeout=60)
    before = set(replica.state().members)
    assert before == {n.identity.public_key for n in nodes}
    # 4. A flood: thousands of her own messages (never her first, so none can be shown)
    # and a stream of summaries asking for everything.
    me = mallory.identity
    flood = [
        sign_message(
            me.sign, group_id=gid, author=me.public_key, seq=2 + i, clock=50 + i,
            at=1.0, heads=heads, kind="text", content=b"x" * 200,
        )
        for i in range(1200)
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
    assert set(replica.state().members) == before
    assert theirs.bad_frames == 3 and not theirs.closed
    assert texts(victim, group) == ["genuine from alice", "alice, after the attack"]
    shown = [e for e in log.of(GroupMessageReceived) if isinstance(e, GroupMessageReceived)]
    assert [e.message.text for e in shown] == ["alice, after the attack"]
    # Bounded: the flood waits in at most the pending budget, in memory and on disk.
    assert replica.pending_count == limit
    count, _ = victim.groups.db.usage(gid)
    assert count <= replica.limits.max_pending + 2
    assert set(replica.authors) <= {a.identity.public_key, mallory.identity.public_key}
    await log.close()
