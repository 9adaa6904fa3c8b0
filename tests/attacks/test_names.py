"""Bad display names against real daemons: refused at input, repaired from old homes,
and never able to break a session when a peer announces one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from p2pchat import cli
from p2pchat.config import Paths, load_settings, save_settings
from p2pchat.core import chat
from p2pchat.names import InvalidName, normalise_name
from p2pchat.node import Node
from p2pchat.store import Store

from ..conftest import StartNode, wait_until
from ..daemons import Daemon, free_udp_port, run_cli
from .attackers import HostilePeer, bad_hello

BAD_NAMES = [
    "x" * 70,
    "evil\x1b[31mred",
    "line\nbreak",
    "abc\u202edcba",  # right-to-left override
    "zero\u200bwidth",
    "",
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_init_refuses_a_bad_name_before_creating_anything(tmp_path: Path, name: str) -> None:
    home = tmp_path / "h"
    result = run_cli(home, "init", "--name", name)
    assert result.returncode == cli.EXIT_USAGE, result.stderr
    assert "name" in result.stderr
    assert not (home / "identity.key").exists()


def test_one_rule_normalises_what_people_type() -> None:
    assert normalise_name("  Ａlice   Smith ") == "Alice Smith"
    assert normalise_name("❤️ Zoë") == "❤ Zoë"
    with pytest.raises(InvalidName, match="U\\+202E"):
        normalise_name("abc\u202edcba")


async def test_an_old_home_with_bad_names_still_chats(tmp_path: Path) -> None:
    """An older version stored the name unchecked: Hello failed to encode, the peer
    closed with "no hello" every 10 s, and `id` refused to print.  Now the home is
    repaired when it is loaded and both daemons talk at once."""
    homes = {}
    for who in ("alice", "bob"):
        home = tmp_path / who
        assert run_cli(home, "init", "--name", who).returncode == 0
        homes[who] = Paths(home)
    alice_id = json.loads(run_cli(homes["alice"].home, "id", "--json").stdout)["peer_id"]
    bob = Daemon(homes["bob"].home, f"127.0.0.1:{free_udp_port()}")
    await bob.start()
    alice: Daemon | None = None
    try:
        invite = (await bob.call("info"))["invite"]
        assert run_cli(homes["alice"].home, "add", invite).returncode == 0
        await bob.call("add", ref=alice_id, name="alice")
        # What an older version left behind: a display name and a contact name that
        # break the rule, written straight into the files.
        settings = load_settings(homes["alice"])
        settings["name"] = "A" * 80 + "\x1b[2J"
        save_settings(homes["alice"], settings)
        with Store(homes["alice"].database) as store:
            with store._write() as db:
                db.execute("UPDATE contacts SET name = ?", ("bob\u202e\x07",))
        shown = run_cli(homes["alice"].home, "id")
        assert shown.returncode == 0, shown.stderr
        alice = Daemon(homes["alice"].home, f"127.0.0.1:{free_udp_port()}")
        await alice.start()
        info = await alice.call("info")
        assert info["name"] == "A" * 64
        [contact] = await alice.call("contacts")
        assert contact["name"] == "bob"
        reply = await alice.call("send", contact="bob", text="hello", wait=20)
        assert reply["state"] == "delivered"
        # Bob learns the repaired name in the session's Hello, nothing else.
        assert load_settings(homes["alice"])["name"] == "A" * 64
    finally:
        await bob.stop()
        if alice is not None:
            await alice.stop()


async def test_a_peers_bad_name_never_breaks_its_session(start_node: StartNode) -> None:
    """A stranger announcing a hostile name still leaves a request (the Hello counted),
    under a repaired name, and a contact with one still gets its messages stored."""
    bob = await start_node("bob")
    mallory = HostilePeer()
    await mallory.start()
    try:
        link = await mallory.connect(
            bob.addresses[0], hello=bad_hello(0)
        )
        await wait_until(lambda: bool(bob.requests()), timeout=10)
        [request] = bob.requests()
        assert request.name == "M" * 64
        assert link.of(chat.RequestPending)
        link.close()
        bob.add_contact(mallory.peer_id, name="mallory")
        link = await mallory.connect(
            bob.addresses[0], hello=bad_hello(1)
        )
        link.send(
            chat.ChatMessage(id=os.urandom(16).hex(), seq=1, base=1, sent_at=1e9, body="hi")
        )
        await wait_until(lambda: bool(link.of(chat.Ack)), timeout=10)
        assert [m.body for m in bob.history("mallory")] == ["hi"]
        assert link.terminated is None
    finally:
        mallory.close()


async def test_names_typed_into_the_node_follow_the_rule(start_node: StartNode) -> None:
    alice = await start_node("alice")
    bob = await start_node("bob")
    for bad in BAD_NAMES:
        with pytest.raises(InvalidName):
            alice.set_name(bad)
        with pytest.raises(InvalidName):
            alice.add_contact(bob.peer_id, name=bad)
    alice.add_contact(bob.peer_id, name="bob")
    with pytest.raises(InvalidName):
        alice.rename_contact("bob", "b\u200bob")
    assert alice.set_name("  Alice  ") == "Alice"
    assert Node.name.fget is not None and alice.name == "Alice"
