"""Groups between real nodes over real UDP/QUIC on 127.0.0.1, with real SQLite."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from p2pchat.core.events import ContactRequestReceived
from p2pchat.core.group.events import (
    GroupInviteReceived,
    GroupMessageReceived,
    GroupMessageView,
)
from p2pchat.identity import key_from_peer_id
from p2pchat.net.endpoint import EndpointError
from p2pchat.net.groups import GroupError
from p2pchat.node import Node

from .conftest import EventLog, StartNode, wait_until


async def eventually(predicate: Callable[[], bool], timeout: float = 90.0) -> None:
    """A liveness bound, generous: these tests run many real nodes on a shared machine."""
    await wait_until(predicate, timeout=timeout)


def befriend(a: Node, b: Node) -> None:
    a.add_contact(b.peer_id, name=b.name, addresses=b.addresses)
    b.add_contact(a.peer_id, name=a.name, addresses=a.addresses)


def texts(node: Node, group: str) -> list[str]:
    return [m.text or "" for m in node.groups.history(group)]


async def accept_when_invited(node: Node, group_id: str) -> None:
    await eventually(lambda: any(v.group_id == group_id for v in node.groups.invites()))
    node.groups.accept(group_id)


async def test_invite_accept_and_talk(start_node: StartNode) -> None:
    a = await start_node("alice")
    b = await start_node("bob")
    befriend(a, b)
    log_b = EventLog(b)
    await eventually(lambda: a.is_online(b.peer_id) and b.is_online(a.peer_id))
    view = a.groups.create("friends", ["bob"])
    assert view.status == "joined" and view.members == 2
    a.groups.send(view.group_id, "before bob accepted")
    await accept_when_invited(b, view.group_id)
    invites = [e for e in log_b.of(GroupInviteReceived) if isinstance(e, GroupInviteReceived)]
    assert invites and invites[0].name == "friends" and invites[0].inviter == a.peer_id
    await eventually(lambda: texts(b, view.group_id) == ["before bob accepted"])
    b.groups.send(view.group_id, "hi all")
    a.groups.send(view.group_id, "welcome")
    await eventually(lambda: texts(a, view.group_id) == texts(b, view.group_id)
                     and len(texts(a, view.group_id)) == 3)
    received = [e for e in log_b.of(GroupMessageReceived) if isinstance(e, GroupMessageReceived)]
    assert [e.message.text for e in received] == ["before bob accepted", "welcome"]
    await log_b.close()


async def trio(start_node: StartNode) -> tuple[Node, Node, Node, str]:
    """alice, bob and carol in one group; bob and carol are no contacts of each other
    and have found each other through alice's hints (a group session)."""
    a = await start_node("alice")
    b = await start_node("bob")
    c = await start_node("carol")
    befriend(a, b)
    befriend(a, c)
    await eventually(lambda: a.is_online(b.peer_id) and a.is_online(c.peer_id))
    group = a.groups.create("trio", ["bob", "carol"]).group_id
    await accept_when_invited(b, group)
    await accept_when_invited(c, group)
    await eventually(lambda: b.groups.session(c.peer_id) is not None)
    return a, b, c, group


async def test_members_who_are_not_contacts_talk_without_a_request(
    start_node: StartNode,
) -> None:
    _, b, c, group = await trio(start_node)
    log_b, log_c = EventLog(b), EventLog(c)
    b.groups.send(group, "hello carol")
    await eventually(lambda: "hello carol" in texts(c, group))
    assert b.store.get_contact(c.peer_id) is None and c.store.get_contact(b.peer_id) is None
    assert not log_b.of(ContactRequestReceived) and not log_c.of(ContactRequestReceived)
    assert b.requests() == [] and c.requests() == []
    await log_b.close()
    await log_c.close()


async def test_blocking_a_member_ends_the_group_session_and_it_is_not_redialled(
    start_node: StartNode,
) -> None:
    _, b, c, _ = await trio(start_node)
    b.block(c.peer_id)
    await eventually(
        lambda: b.groups.session(c.peer_id) is None and c.groups.session(b.peer_id) is None
    )
    assert b._dialer is not None
    for _ in range(15):  # bob's group loop runs every tick: it never dials carol again
        await asyncio.sleep(0.2)
        assert b.groups.session(c.peer_id) is None and not b._dialer.busy(c.peer_id)


class Members:
    """Nodes that come and go, each keeping its home; events of every run collected."""

    def __init__(self, start_node: StartNode) -> None:
        self.start_node = start_node
        self.nodes: dict[str, Node] = {}
        self.logs: dict[str, list[EventLog]] = {}

    async def up(self, name: str) -> Node:
        node = await self.start_node(name)
        self.nodes[name] = node
        self.logs.setdefault(name, []).append(EventLog(node))
        return node

    async def down(self, name: str) -> None:
        node = self.nodes.pop(name)
        await node.stop()
        await self.logs[name][-1].close()

    def online(self) -> list[str]:
        return sorted(self.nodes)

    def received(self, name: str) -> list[str]:
        return [
            e.message.message_id
            for log in self.logs[name]
            for e in log.events
            if isinstance(e, GroupMessageReceived)
        ]


async def test_five_members_never_all_online_get_every_message_once(
    start_node: StartNode,
) -> None:
    m = Members(start_node)
    names = ["alice", "bob", "carol", "dave", "erin"]
    a = await m.up("alice")
    for name in names[1:]:
        x = await m.up(name)
        befriend(a, x)
        await m.down(name)
    group = a.groups.create("five", names[1:]).group_id
    # Each accepts while only it and alice are up.
    for name in names[1:]:
        x = await m.up(name)
        await accept_when_invited(x, group)
        await eventually(lambda x=x: x.groups.get(group).members == 5)
        await m.down(name)
        assert len(m.online()) <= 2

    async def posts(name: str, *texts_: str) -> None:
        for t in texts_:
            m.nodes[name].groups.send(group, t)

    def has(name: str, *wanted: str) -> bool:
        got = texts(m.nodes[name], group)
        return all(w in got for w in wanted)

    # alice and bob talk; then alice leaves and the others pass her words along.
    await m.up("bob")
    await posts("alice", "a1", "a2", "a3")
    await posts("bob", "b1")
    await eventually(lambda: has("alice", "b1") and has("bob", "a1", "a2", "a3"))
    await m.down("alice")
    await m.up("carol")
    await eventually(lambda: has("carol", "a1", "a2", "a3", "b1"))
    await posts("carol", "c1")
    await eventually(lambda: has("bob", "c1"))
    await m.down("bob")
    await m.up("dave")
    await eventually(lambda: has("dave", "a1", "a2", "a3", "b1", "c1"))
    await posts("dave", "d1")
    await eventually(lambda: has("carol", "d1"))
    await m.down("carol")
    await m.up("erin")
    await eventually(lambda: has("erin", "a1", "a2", "a3", "b1", "c1", "d1"))
    # alice (offline all along) is the author of what carol, dave and erin just got.
    assert "alice" not in m.online()
    await posts("erin", "e1")
    await eventually(lambda: has("dave", "e1"))
    await m.down("dave")
    everything = ["a1", "a2", "a3", "b1", "c1", "d1", "e1"]
    final: dict[str, list[GroupMessageView]] = {}

    async def settle(name: str) -> None:
        await eventually(lambda: has(name, *everything))
        final[name] = m.nodes[name].groups.history(group)

    await settle("erin")
    # The rest catch up from erin one at a time: never more than two up.
    for name in ("alice", "bob", "carol", "dave"):
        await m.up(name)
        assert m.online() == sorted([name, "erin"])
        await settle(name)
        await m.down(name)
    for name in names:
        history = final[name]
        assert sorted(h.text or "" for h in history) == everything
        for author in {h.author for h in history}:
            seqs = [h.seq for h in history if h.author == author]
            assert seqs == list(range(1, len(seqs) + 1)), f"{name}: per-author order"
        ids = m.received(name)
        assert len(ids) == len(set(ids)), f"{name} was shown a message twice"
        mine = {h.message_id for h in history if h.mine}
        assert set(ids) == {h.message_id for h in history} - mine
    # One shared order everywhere.
    assert len({tuple(h.message_id for h in final[n]) for n in names}) == 1


async def group_of(start_node: StartNode, names: list[str]) -> tuple[list[Node], str]:
    """Real nodes, all contacts of the first, in one group everyone accepted."""
    nodes = [await start_node(n) for n in names]
    admin = nodes[0]
    for x in nodes[1:]:
        befriend(admin, x)
    await eventually(lambda: all(admin.is_online(x.peer_id) for x in nodes[1:]))
    group = admin.groups.create("crowd", names[1:]).group_id
    for x in nodes[1:]:
        await accept_when_invited(x, group)
    await eventually(
        lambda: all(x.groups.get(group).members == len(nodes) for x in nodes)
    )
    return nodes, group


async def restart(start_node: StartNode, name: str) -> Node:
    """Start a stopped node again on its port, once the old socket is really gone
    (asyncio closes a transport's socket on the next loop iteration)."""
    for _ in range(100):
        try:
            return await start_node(name)
        except EndpointError:
            await asyncio.sleep(0.02)
    raise AssertionError(f"{name}'s port stayed busy")


def members_of(node: Node, group: str) -> list[str]:
    return sorted(v.peer_id for v in node.groups.members(group))


async def test_concurrent_changes_by_two_admins_converge(start_node: StartNode) -> None:
    nodes, group = await group_of(start_node, ["alice", "bob", "carol", "dave"])
    a, b, c, d = nodes
    a.groups.promote(group, b.peer_id)
    await eventually(lambda: b.groups.get(group).role == "admin")
    x = await start_node("xavier")
    befriend(a, x)
    await eventually(lambda: a.is_online(x.peer_id))
    # Neither admin has seen the other's change when making its own.
    a.groups.add_member(group, "xavier")
    a.groups.rename(group, "renamed by alice")
    b.groups.remove_member(group, c.peer_id)
    b.groups.rename(group, "renamed by bob")
    await accept_when_invited(x, group)
    everyone = [a, b, d, x]
    expected = sorted([a.peer_id, b.peer_id, d.peer_id, x.peer_id])
    await eventually(lambda: all(members_of(n, group) == expected for n in everyone))
    await eventually(lambda: len({n.groups.get(group).name for n in everyone}) == 1)
    assert a.groups.get(group).name in ("renamed by alice", "renamed by bob")
    await eventually(lambda: c.groups.get(group).status == "removed")


async def test_a_removed_member_learns_it_from_a_member_other_than_the_remover(
    start_node: StartNode,
) -> None:
    """The admin who removes carol reaches her through nobody (no session yet); alice,
    her contact, passes the removal on to her although carol is no member any more."""
    nodes, group = await group_of(start_node, ["alice", "bob", "carol"])
    a, b, c = nodes
    a.groups.promote(group, b.peer_id)
    await eventually(lambda: b.groups.get(group).role == "admin")
    carol = key_from_peer_id(c.peer_id)
    send = b.groups._send

    def not_to_carol(key: bytes, frame: Any) -> bool:
        return key != carol and send(key, frame)

    b.groups._send = not_to_carol  # type: ignore[method-assign]
    b.groups.remove_member(group, c.peer_id)
    b.groups.rename(group, "without carol")
    await eventually(lambda: members_of(a, group) == sorted([a.peer_id, b.peer_id]))
    await eventually(lambda: c.groups.get(group).status == "removed", timeout=30)
    await eventually(lambda: a.groups.get(group).name == "without carol")
    await asyncio.sleep(0.5)
    assert c.groups.get(group).name == "crowd"  # her removal, nothing after it


async def test_removed_member_gets_nothing_sent_after_its_removal(
    start_node: StartNode,
) -> None:
    nodes, group = await group_of(start_node, ["alice", "bob", "carol", "dave"])
    a, b, c, d = nodes
    befriend(b, c)
    c.groups.send(group, "carol, before")
    await eventually(lambda: all("carol, before" in texts(n, group) for n in nodes))
    # carol writes and goes offline; the removal races her message and dave's.
    c.groups.send(group, "carol, racing")
    await c.stop()
    a.groups.remove_member(group, c.peer_id)
    d.groups.send(group, "dave, racing")
    a.groups.send(group, "alice, after")
    remaining = [a, b, d]
    await eventually(lambda: all("alice, after" in texts(n, group) for n in (b, d)))
    b.groups.send(group, "bob, after")
    d.groups.send(group, "dave, after")
    for n in remaining:
        await eventually(lambda n=n: {"bob, after", "dave, after"} <= set(texts(n, group)))
    expected = sorted(n.peer_id for n in remaining)
    assert all(members_of(n, group) == expected for n in remaining)
    # carol comes back believing she is a member and asks everyone she knows.
    c = await restart(start_node, "carol")
    await eventually(lambda: c.groups.get(group).status == "removed")
    await eventually(lambda: b.is_online(c.peer_id) and a.is_online(c.peer_id))
    await asyncio.sleep(1)  # a grace period for anything that should not come
    got = set(texts(c, group))
    assert not got & {"alice, after", "bob, after", "dave, after"}
    assert {"carol, before", "carol, racing"} <= got
    assert c.peer_id not in members_of(c, group)
    with pytest.raises(GroupError):
        c.groups.send(group, "let me back in")


async def test_storage_per_group_is_bounded_and_newcomers_skip_what_is_gone(
    start_node: StartNode,
) -> None:
    a = await start_node("alice")
    b = await start_node("bob")
    a.update_settings(group_max_messages=5)
    group = a.groups.create("small", []).group_id
    for i in range(12):
        a.groups.send(group, f"m{i}")
    assert texts(a, group) == [f"m{i}" for i in range(7, 12)]
    # bob joins late: he gets what alice still holds, in order, and does not wait for
    # the rest (alice's summary says it is gone).
    befriend(a, b)
    await eventually(lambda: a.is_online(b.peer_id))
    a.groups.add_member(group, "bob")
    await accept_when_invited(b, group)
    await eventually(lambda: texts(b, group) == [f"m{i}" for i in range(7, 12)])
    a.groups.send(group, "m12")
    await eventually(lambda: texts(b, group)[-1:] == ["m12"])
    assert [m.seq for m in b.groups.history(group)] == list(range(8, 14))
