"""The app names the relay a conversation runs through (real nodes on 127.0.0.1).

The app's node registers with a relaying node; a contact whose dialer may only relay
(loopback would always punch, ``tests/test_relay_net.py``) reaches it through that
relay, and the conversation's header says ``relayed via`` and the relay's peer ID.
"""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Static

from p2pchat.node import Node
from p2pchat.ui.format import short_id
from p2pchat.ui.widgets.sidebar import path_words

from ..conftest import make_home
from ..test_relay_net import address_of, registered, relay_only
from .conftest import app_for, main_screen, until


async def test_the_header_of_a_relayed_conversation_names_the_relay(tmp_path: Path) -> None:
    relay = Node(make_home(tmp_path, "relay"))
    dialer = Node(make_home(tmp_path, "dialer"))
    await relay.start(relay=True)
    await dialer.start()
    try:
        relay_only(dialer)
        app = app_for(
            make_home(tmp_path, "alice"),
            start_options={"rendezvous": [f"{relay.peer_id}@{address_of(relay)}"]},
        )
        async with app.run_test(size=(140, 40)) as pilot:
            main = await main_screen(pilot)
            node = app.node
            assert node is not None
            await registered(node)
            node.add_contact(dialer.peer_id, name="dialer")
            dialer.add_contact(node.peer_id, name="alice")
            dialer.peer_discovered(
                node.peer_id, [], source="dht", rendezvous=[address_of(relay)], nat="unknown"
            )
            sent = dialer.send_message("alice", "through the relay")
            # (alice's app may have read it already: the receipt carries the ack along)
            assert await dialer.wait_for_delivery(sent.id, 20) in ("delivered", "read")
            main.open_conversation(dialer.peer_id)
            header = main.conversation.query_one("#conv-header", Static)
            shown = f"relayed via {short_id(relay.peer_id)}"
            await until(pilot, lambda: shown in str(header.content))
            (view,) = node.contacts()
            assert view.path == "relayed" and view.via == relay.peer_id, view
    finally:
        await dialer.stop()
        await relay.stop()


def test_only_a_relayed_path_names_its_relay() -> None:
    relay_id = "abcdefghijklmnop"
    assert path_words("relayed", 41.2, relay_id) == " · relayed via abcdefgh · 41 ms"
    assert path_words("punched", 41.2, relay_id) == " · punched · 41 ms"
    assert path_words("relayed", None) == " · relayed"
