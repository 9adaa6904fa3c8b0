"""Groups between real nodes over real UDP/QUIC on 127.0.0.1, with real SQLite."""

from __future__ import annotations

from p2pchat.core.events import ContactRequestReceived
from p2pchat.core.group.events import (
    GroupInviteReceived,
    GroupMessageReceived,
    GroupMessageView,
)
from p2pchat.node import Node

from .conftest import EventLog, StartNode, wait_until


def befriend(a: Node, b: Node) -> None:
    a.add_contact(b.peer_id, name=b.name, addresses=b.addresses)
    b.add_contact(a.peer_id, name=a.name, addresses=a.addresses)


def texts(node: Node, group: str) -> list[str]:
    return [m.text or "" for m in node.groups.history(group)]


async def accept_when_invited(node: Node, group_id: str) -> None:
    await wait_until(lambda: any(v.group_id == group_id for v in node.groups.invites()))
    node.groups.accept(group_id)


async def test_invite_accept_and_talk(start_node: StartNode) -> None:
    a = await start_node("alice")
    b = await start_node("bob")
    befriend(a, b)
    log_b = EventLog(b)
    await wait_until(lambda: a.is_online(b.peer_id) and b.is_online(a.peer_id))
    view = a.groups.create("friends", ["bob"])
    assert view.status == "joined" and view.members == 2
    a.groups.send(view.group_id, "before bob accepted")
    await accept_when_invited(b, view.group_id)
    invites = [e for e in log_b.of(GroupInviteReceived) if isinstance(e, GroupInviteReceived)]
    assert invites and invites[0].name == "friends" and invites[0].inviter == a.peer_id
    await wait_until(lambda: texts(b, view.group_id) == ["before bob accepted"])
    b.groups.send(view.group_id, "hi all")
    a.groups.send(view.group_id, "welcome")
    await wait_until(lambda: texts(a, view.group_id) == texts(b, view.group_id)
                     and len(texts(a, view.group_id)) == 3)
    received = [e for e in log_b.of(GroupMessageReceived) if isinstance(e, GroupMessageReceived)]
    assert [e.message.text for e in received] == ["before bob accepted", "welcome"]
    await log_b.close()


async def test_members_who_are_not_contacts_talk_without_a_request(
    start_node: StartNode,
) -> None:
    a = await start_node("alice")
    b = await start_node("bob")
    c = await start_node("carol")
    befriend(a, b)
    befriend(a, c)  # b and c do not know each other
    log_b, log_c = EventLog(b), EventLog(c)
    await wait_until(lambda: a.is_online(b.peer_id) and a.is_online(c.peer_id))
    view = a.groups.create("trio", ["bob", "carol"])
    await accept_when_invited(b, view.group_id)
    await accept_when_invited(c, view.group_id)
    # b and c find each other through a's hints and open a group session.
    await wait_until(lambda: b.groups.session(c.peer_id) is not None, timeout=30)
    b.groups.send(view.group_id, "hello carol")
    await wait_until(lambda: "hello carol" in texts(c, view.group_id))
    assert b.store.get_contact(c.peer_id) is None and c.store.get_contact(b.peer_id) is None
    assert not log_b.of(ContactRequestReceived) and not log_c.of(ContactRequestReceived)
    assert b.requests() == [] and c.requests() == []
    await log_b.close()
    await log_c.close()


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
        await wait_until(lambda x=x: x.groups.get(group).members == 5)
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
    await wait_until(lambda: has("alice", "b1") and has("bob", "a1", "a2", "a3"))
    await m.down("alice")
    await m.up("carol")
    await wait_until(lambda: has("carol", "a1", "a2", "a3", "b1"), timeout=40)
    await posts("carol", "c1")
    await wait_until(lambda: has("bob", "c1"))
    await m.down("bob")
    await m.up("dave")
    await wait_until(lambda: has("dave", "a1", "a2", "a3", "b1", "c1"), timeout=40)
    await posts("dave", "d1")
    await wait_until(lambda: has("carol", "d1"))
    await m.down("carol")
    await m.up("erin")
    await wait_until(lambda: has("erin", "a1", "a2", "a3", "b1", "c1", "d1"), timeout=40)
    # alice (offline all along) is the author of what carol, dave and erin just got.
    assert "alice" not in m.online()
    await posts("erin", "e1")
    await wait_until(lambda: has("dave", "e1"))
    await m.down("dave")
    everything = ["a1", "a2", "a3", "b1", "c1", "d1", "e1"]
    final: dict[str, list[GroupMessageView]] = {}

    async def settle(name: str) -> None:
        await wait_until(lambda: has(name, *everything), timeout=40)
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
