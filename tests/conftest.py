"""Shared fixtures: real state folders, real nodes on 127.0.0.1, real UDP/QUIC."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nacl.pwhash.argon2id
import pytest

import p2pchat.identity
from p2pchat.config import Paths
from p2pchat.core.events import NodeEvent
from p2pchat.node import Node

from .daemons import free_udp_port, make_home
from .netlab import Lab, list_namespaces, open_lab, prepare

# Sealing key files at full Argon2id cost takes a second and 256 MiB each: the suite
# lowers it in this process and, through tests/fastkdf/sitecustomize.py, in the
# processes it starts.  The package has no switch for it.
p2pchat.identity.KDF_COST = (nacl.pwhash.argon2id.OPSLIMIT_MIN, nacl.pwhash.argon2id.MEMLIMIT_MIN)
FAST_KDF = str(Path(__file__).resolve().parent / "fastkdf")
if FAST_KDF not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [FAST_KDF, os.environ.get("PYTHONPATH")])
    )
__all__ = [
    "EventLog",
    "StartNode",
    "free_udp_port",
    "friends",
    "make_home",
    "wait_until",
]


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A network lab (tests/netlab) whose namespaces are all gone afterwards."""
    prepare()
    with open_lab() as lab:
        yield lab
    assert [ns for ns in list_namespaces() if ns.startswith(lab.run_id)] == []


async def wait_until(
    predicate: Callable[[], bool], timeout: float = 20.0, interval: float = 0.02
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


class EventLog:
    """Collects a node's events in the background for assertions."""

    def __init__(self, node: Node) -> None:
        self.events: list[NodeEvent] = []
        # Subscribed here, not when the task first runs: an event the test causes
        # right after creating the log is in it.
        self._task = asyncio.ensure_future(self._run(node.events()))

    async def _run(self, stream: AsyncIterator[NodeEvent]) -> None:
        async for event in stream:
            self.events.append(event)

    def of(self, kind: type[NodeEvent]) -> list[NodeEvent]:
        return [e for e in self.events if isinstance(e, kind)]

    async def close(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


StartNode = Callable[..., Awaitable[Node]]
"""``start(name, **options)``: options go to ``Node.start``."""


@pytest.fixture
async def start_node(tmp_path: Path) -> AsyncIterator[StartNode]:
    """Start real nodes listening on 127.0.0.1 (each its own home); stop them all after."""
    nodes: list[Node] = []

    async def start(name: str, **options: Any) -> Node:
        home = tmp_path / name
        paths = Paths(home) if (home / "identity.key").exists() else make_home(tmp_path, name)
        node = Node(paths)
        await node.start(**options)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        await node.stop()


async def friends(start_node: StartNode) -> tuple[Node, Node]:
    """alice and bob: real nodes, contacts of each other, both online."""
    a = await start_node("alice")
    b = await start_node("bob")
    a.add_contact(b.peer_id, name="bob", addresses=b.addresses)
    b.add_contact(a.peer_id, name="alice", addresses=a.addresses)
    await wait_until(lambda: a.is_online(b.peer_id) and b.is_online(a.peer_id))
    return a, b
