"""One node per home, many views: owning, attaching, losing the owner, taking over.

Real daemons (child processes killed with SIGKILL or stopped with SIGSTOP), real
control sockets, real nodes on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from p2pchat.config import NodeLock, Paths
from p2pchat.core.events import NodeConnectionLost, NodeEvent
from p2pchat.node import Node
from p2pchat.owner import answers, hand_off, start_owned
from p2pchat.remote import (
    OwnerGone,
    OwnerNotResponding,
    OwnerUnavailable,
    RemoteNode,
    attach_or_own,
)

from .conftest import free_udp_port, make_home, wait_until
from .daemons import Daemon, cli_env, run_cli

T = TypeVar("T")


class LoopThread:
    """An event loop in a thread: another "process" for views in this test.

    RemoteNode calls block (they are quick against a real owner), so a view and
    the owner it attaches to cannot share one loop.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Watch:
    """A view's event stream, collected in the background."""

    def __init__(self, remote: RemoteNode) -> None:
        self.events: list[NodeEvent] = []
        self.task = asyncio.ensure_future(self._run(remote))

    async def _run(self, remote: RemoteNode) -> None:
        async for event in remote.events():
            self.events.append(event)

    def lost(self) -> list[NodeConnectionLost]:
        return [e for e in self.events if isinstance(e, NodeConnectionLost)]

    async def close(self) -> None:
        self.task.cancel()
        with_exc = await asyncio.gather(self.task, return_exceptions=True)
        assert all(isinstance(e, (asyncio.CancelledError, type(None))) for e in with_exc)


async def attached(tmp_path: Path) -> tuple[Paths, Daemon, RemoteNode, Watch]:
    """A daemon for a fresh home and a view attached to it, watching its events."""
    home = make_home(tmp_path, "alice")
    daemon = Daemon(home.home, f"127.0.0.1:{free_udp_port()}")
    await daemon.start()
    remote = RemoteNode(home)
    await remote.start()
    return home, daemon, remote, Watch(remote)


async def test_a_killed_owner_is_noticed_and_calls_fail_cleanly(tmp_path: Path) -> None:
    _home, daemon, remote, watch = await attached(tmp_path)
    try:
        assert remote.contacts() == []
        killed_at = time.monotonic()
        await daemon.kill()
        await wait_until(lambda: bool(watch.lost()), timeout=5)
        # Well within a second on an idle machine; 5 s is only a liveness bound.
        assert time.monotonic() - killed_at < 5
        assert watch.task.done()  # NodeConnectionLost is the stream's last event
        assert remote.lost is not None and not remote.running
        for call in (
            lambda: remote.set_typing("bob", True),
            remote.contacts,
            lambda: remote.send_message("bob", "hi"),
        ):
            with pytest.raises(OwnerGone):
                call()
    finally:
        await watch.close()
        await remote.stop()
        await daemon.stop()


async def test_a_stopped_owner_gives_a_clear_error_quickly(tmp_path: Path) -> None:
    home = make_home(tmp_path, "alice")
    daemon = Daemon(home.home, f"127.0.0.1:{free_udp_port()}")
    await daemon.start()
    assert daemon.proc is not None
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    try:
        began = time.monotonic()
        with pytest.raises(OwnerNotResponding):
            await RemoteNode(home).start()
        assert time.monotonic() - began < 10  # was ~20 s, then a misleading screen
        began = time.monotonic()
        with pytest.raises(OwnerNotResponding):
            await attach_or_own(home, wait=1.0)
        assert time.monotonic() - began < 15
        cli = run_cli(home.home, "contacts")
        assert cli.returncode == 7 and "did not answer" in cli.stderr, cli.stderr
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)
        await daemon.stop()


async def test_take_over_after_the_owner_quits(tmp_path: Path) -> None:
    """Two views on one home: the app that owns the node quits, the other takes it."""
    home = make_home(tmp_path, "alice")
    app_one, app_three = LoopThread(), LoopThread()
    try:
        first = await app_one.run(attach_or_own(home, wait=5))
        assert isinstance(first, Node)
        second = await attach_or_own(home, wait=5)
        assert isinstance(second, RemoteNode) and second.peer_id == first.peer_id
        watch = Watch(second)
        await app_one.run(first.stop())
        await wait_until(lambda: bool(watch.lost()), timeout=5)
        with pytest.raises(OwnerGone):
            second.contacts()
        taken = await second.take_over(wait=10)
        try:
            assert isinstance(taken, Node) and taken.running
            assert taken.peer_id == first.peer_id
            # The new owner serves the control socket: a third view attaches to it.
            third = await app_three.run(attach_or_own(home, wait=5))
            assert isinstance(third, RemoteNode)
            await app_three.run(third.stop())
        finally:
            await watch.close()
            await taken.stop()
    finally:
        app_one.close()
        app_three.close()


async def test_racing_views_get_one_owner(tmp_path: Path) -> None:
    home = make_home(tmp_path, "alice")
    apps = [LoopThread() for _ in range(3)]
    try:
        views = await asyncio.gather(*(app.run(attach_or_own(home, wait=10)) for app in apps))
        assert sum(isinstance(v, Node) for v in views) == 1
        assert sum(isinstance(v, RemoteNode) for v in views) == 2
        for app, view in sorted(
            zip(apps, views, strict=True), key=lambda p: isinstance(p[1], Node)
        ):
            await app.run(view.stop())
    finally:
        for app in apps:
            app.close()


async def test_take_over_attaches_to_a_new_daemon(tmp_path: Path) -> None:
    home, daemon, remote, watch = await attached(tmp_path)
    await daemon.kill()
    await wait_until(lambda: bool(watch.lost()), timeout=5)
    again = Daemon(home.home, f"127.0.0.1:{free_udp_port()}")
    await again.start()
    taken: Node | RemoteNode | None = None
    try:
        taken = await remote.take_over(wait=5)
        assert isinstance(taken, RemoteNode) and taken.running
        assert taken.peer_id == (await again.call("info"))["peer_id"]
    finally:
        await watch.close()
        if taken is not None:
            await taken.stop()
        await again.stop()


async def test_hand_off_leaves_a_daemon_running(tmp_path: Path) -> None:
    home = make_home(tmp_path, "alice")
    node = Node(home)
    listen = f"127.0.0.1:{free_udp_port()}"
    await start_owned(node, listen=listen)
    assert node.running_transfers() == []
    pid = await hand_off(node)
    try:
        assert not node.running
        assert NodeLock(home).is_held_elsewhere()
        remote = RemoteNode(home)
        await remote.start()
        assert remote.addresses == (listen,)  # the daemon took the node's own address
        assert remote.running_transfers() == []
        await remote.stop()
        stopped = run_cli(home.home, "stop")
        assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stderr
        assert not NodeLock(home).is_held_elsewhere()
    finally:
        with_pid_gone(pid)


def with_pid_gone(pid: int) -> None:
    """Reap (or, if a test failed half way, kill) a daemon this process started."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


async def test_daemon_detach_creates_the_identity_and_answers_at_once(tmp_path: Path) -> None:
    home = tmp_path / "fresh"
    port = free_udp_port()
    started = run_cli(home, "daemon", "--detach", "--name", "fresh", "--listen",
                      f"127.0.0.1:{port}", "--no-mdns", "--no-dht")  # fmt: skip
    try:
        assert started.returncode == 0, started.stderr
        assert f"listening on 127.0.0.1:{port}" in started.stdout
        assert "created a new identity" in started.stderr
        info = json.loads(run_cli(home, "id", "--json").stdout)
        assert info["name"] == "fresh" and info["addresses"] == [f"127.0.0.1:{port}"]
        assert await answers(Paths(home))
    finally:
        stopped = run_cli(home, "stop")
    assert stopped.returncode == 0, stopped.stderr
    nothing = run_cli(home, "stop")
    assert nothing.returncode == 7 and "no node runs" in nothing.stderr


async def test_an_app_owned_node_refuses_a_remote_shutdown(tmp_path: Path) -> None:
    home = make_home(tmp_path, "alice")
    node = Node(home)
    await start_owned(node)
    try:
        result = await asyncio.to_thread(run_cli, home.home, "stop", env=cli_env())
        assert result.returncode == 1 and "terminal app" in result.stderr
        assert node.running
    finally:
        await node.stop()


def test_owner_unavailable_is_a_node_error() -> None:
    from p2pchat.node import NodeError

    assert issubclass(OwnerUnavailable, NodeError)
