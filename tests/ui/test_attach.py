"""`p2pchat` while a daemon runs for the home: the app attaches to that node."""

from __future__ import annotations

from pathlib import Path

from p2pchat.ui.widgets import Composer

from ..conftest import StartNode, free_udp_port, make_home, wait_until
from ..daemons import Daemon
from .conftest import app_for, main_screen, until


async def test_app_attaches_to_the_running_daemon(start_node: StartNode, tmp_path: Path) -> None:
    home = make_home(tmp_path, "alice")
    daemon = Daemon(home.home, f"127.0.0.1:{free_udp_port()}")
    await daemon.start()
    bob = await start_node("bob")
    alice_id = (await daemon.call("info"))["peer_id"]
    await daemon.call("add", ref=bob.peer_id, name="bob", addresses=list(bob.addresses))
    bob.add_contact(alice_id, name="alice", addresses=[daemon.listen])
    await wait_until(lambda: bob.is_online(alice_id), timeout=20)
    app = app_for(home)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await main_screen(pilot)
            # The app runs no node of its own: the daemon still holds the home.
            assert app.node is not None and app.node.peer_id == alice_id
            screen.open_conversation(bob.peer_id)
            composer = screen.query_one(Composer)
            composer.focus()
            composer.text = "typed in the attached app"
            await pilot.press("enter")
            await until(
                pilot,
                lambda: [m.body for m in bob.history("alice")] == ["typed in the attached app"],
            )
            bob.send_message("alice", "acknowledged")
            await until(pilot, lambda: "acknowledged" in app.export_screenshot())
            await pilot.press("ctrl+q")
        info = await daemon.call("info")
        assert info["running"] is True  # leaving the app leaves the daemon running
    finally:
        await daemon.stop()
