"""`p2pchat` while a daemon runs for the home: the app attaches to that node."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from textual.widgets import Static

from p2pchat.node import Node
from p2pchat.remote import RemoteNode
from p2pchat.ui.app import ChatApp
from p2pchat.ui.screens.main import MainScreen
from p2pchat.ui.screens.setup import NodeBusyScreen
from p2pchat.ui.widgets import Composer

from ..conftest import StartNode, free_udp_port, make_home, wait_until
from ..daemons import Daemon
from .conftest import app_for, main_screen, showing, until


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
            await pilot.press("ctrl+q", "enter")
        info = await daemon.call("info")
        assert info["running"] is True  # leaving the app leaves the daemon running
    finally:
        await daemon.stop()


async def attached_pair(start_node: StartNode, tmp_path: Path) -> tuple[Daemon, Node, str]:
    """A daemon for alice's home with bob as a contact, online."""
    home = make_home(tmp_path, "alice")
    daemon = Daemon(home.home, f"127.0.0.1:{free_udp_port()}")
    await daemon.start()
    bob = await start_node("bob")
    alice_id = (await daemon.call("info"))["peer_id"]
    await daemon.call("add", ref=bob.peer_id, name="bob", addresses=list(bob.addresses))
    bob.add_contact(alice_id, name="alice", addresses=[daemon.listen])
    await wait_until(lambda: bob.is_online(alice_id), timeout=20)
    return daemon, bob, alice_id


def banner(screen: MainScreen) -> str:
    widget = screen.query_one("#owner-banner", Static)
    return str(widget.content) if widget.has_class("-visible") else ""


async def test_attached_app_takes_the_node_over_when_the_daemon_dies(
    start_node: StartNode, tmp_path: Path
) -> None:
    daemon, bob, _ = await attached_pair(start_node, tmp_path)
    # The app would listen where the daemon did, so bob finds the node again.
    app = ChatApp(daemon.paths, listen=daemon.listen)
    try:
        async with app.run_test(size=(120, 36)) as pilot:
            screen = await main_screen(pilot)
            assert isinstance(app.node, RemoteNode)
            screen.open_conversation(bob.peer_id)
            composer = screen.query_one(Composer)
            composer.focus()
            await pilot.press(*"half a thought")
            await daemon.kill()
            loop = asyncio.get_running_loop()
            killed = loop.time()
            await until(pilot, lambda: "went away" in banner(screen) or screen.live, 5)
            said = loop.time() - killed
            # Typing on meanwhile raises nothing (the node is not called while lost).
            await pilot.press(*" and more")
            await until(pilot, lambda: isinstance(app.node, Node) and screen.live, 30)
            assert app.node is not None and app.node.running
            assert composer.text == "half a thought and more"
            assert banner(screen) == ""
            assert "runs the node now" in screen.notices.notices["owner"].text
            await pilot.press("enter")
            await until(
                pilot,
                lambda: [m.body for m in bob.history("alice")][-1:] == ["half a thought and more"],
                40,
            )
            await until(pilot, lambda: app.node is not None and app.node.is_online(bob.peer_id))
            assert said < 5, f"the app said the node was gone only after {said:.1f} s"
    finally:
        await daemon.stop()


async def test_a_stopped_daemon_is_said_and_waited_for(
    start_node: StartNode, tmp_path: Path
) -> None:
    daemon, bob, _ = await attached_pair(start_node, tmp_path)
    app = app_for(daemon.paths)
    try:
        async with app.run_test(size=(120, 36)) as pilot:
            screen = await main_screen(pilot)
            screen.open_conversation(bob.peer_id)
            composer = screen.query_one(Composer)
            composer.focus()
            assert daemon.proc is not None
            os.kill(daemon.proc.pid, signal.SIGSTOP)
            try:
                await pilot.press(*"hello?")  # the typing signal finds nobody answering
                await until(pilot, lambda: "does not answer" in banner(screen), 15)
                assert composer.text == "hello?"
                await pilot.press("enter")  # not sent, kept
                await until(pilot, lambda: composer.text == "hello?")
            finally:
                os.kill(daemon.proc.pid, signal.SIGCONT)
            await until(pilot, lambda: screen.live and banner(screen) == "", 15)
            await pilot.press("enter")
            # The daemon has it (delivery to bob is the daemon's business, after
            # its session with bob recovers from the pause).
            node = app.node
            assert node is not None
            await until(pilot, lambda: composer.text == "" and screen.live, 15)
            await until(pilot, lambda: [m.body for m in node.history("bob")][-1:] == ["hello?"])
            assert composer.text == ""
    finally:
        await daemon.stop()


async def test_starting_beside_a_stopped_daemon_says_so_at_once(tmp_path: Path) -> None:
    home = make_home(tmp_path, "alice")
    daemon = Daemon(home.home, f"127.0.0.1:{free_udp_port()}")
    await daemon.start()
    assert daemon.proc is not None
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    app = app_for(home)
    try:
        async with app.run_test(size=(100, 30)) as pilot:
            loop = asyncio.get_running_loop()
            started = loop.time()
            await until(pilot, lambda: showing(app, NodeBusyScreen), 10)
            assert loop.time() - started < 10  # not a blank screen for 20 s
            os.kill(daemon.proc.pid, signal.SIGCONT)
            await pilot.click("#retry")
            await main_screen(pilot)
            assert isinstance(app.node, RemoteNode)
    finally:
        if daemon.proc is not None:
            os.kill(daemon.proc.pid, signal.SIGCONT)
        await daemon.stop()
