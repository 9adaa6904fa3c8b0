"""A full disk on the receiver: messages and file drops are refused cleanly, not
lost, and the conversation and transfers recover by themselves within seconds once
space returns (they used to stay stuck until a restart)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from p2pchat.node import Node
from p2pchat.store import StoreError

from ..conftest import wait_until
from ..daemons import Daemon, free_udp_port, make_home, run_cli

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="mounting a small tmpfs for the receiver's home needs root"
)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    """Take every free byte of the file system under ``folder``."""
    filler = folder / "filler"
    # Unbuffered: a write the disk refuses fails here, and nothing is left in a
    # buffer for close() to fail on.
    with open(filler, "wb", buffering=0) as fh:
        block = b"\0" * 65536
        while True:
            try:
                fh.write(block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    with contextlib.suppress(OSError), open(filler, "ab", buffering=0) as fh:
        for _ in range(64):  # and the last partial blocks
            fh.write(b"\0" * 512)
    return filler


async def test_disk_full_then_freed_delivers_within_10_s(tmp_path: Path, small_disk: Path) -> None:
    bob_home = small_disk / "bob"
    alice_home = tmp_path / "alice"
    for home, name in ((alice_home, "alice"), (bob_home, "bob")):
        assert run_cli(home, "init", "--name", name).returncode == 0
    alice = Daemon(alice_home, f"127.0.0.1:{free_udp_port()}")
    bob = Daemon(bob_home, f"127.0.0.1:{free_udp_port()}")
    await alice.start()
    await bob.start()
    try:
        a_info, b_info = await alice.call("info"), await bob.call("info")
        await alice.call("add", ref=b_info["invite"], name="bob")
        await bob.call("add", ref=a_info["invite"], name="alice")
        first = await alice.call("send", contact="bob", text="before", wait=20)
        assert first["state"] == "delivered"
        filler = fill(small_disk)
        sent = []
        for i in range(300):
            reply = await alice.call("send", contact="bob", text=f"{i} " + "z" * 2000)
            sent.append(reply["message"]["id"])

        async def bob_storage_error() -> str | None:
            status = await bob.call("network_status")
            return status["messages"]["storage_error"]

        deadline = asyncio.get_running_loop().time() + 30
        while await bob_storage_error() is None:
            assert asyncio.get_running_loop().time() < deadline, "bob's disk never filled"
            await asyncio.sleep(0.2)
        # Alice is told why her messages wait; nothing is lost or marked delivered.
        contacts = await alice.call("contacts")
        assert contacts[0]["deferred"] is not None
        shown = run_cli(alice_home, "contacts")
        assert "messages held: the contact's device cannot store messages" in shown.stdout
        assert "the database failed" in run_cli(bob_home, "id").stdout
        assert "refused_storage" in run_cli(bob_home, "net").stdout
        history = await alice.call("history", contact="bob")
        assert any(m["state"] != "delivered" for m in history)
        # Space returns: the stuck conversation delivers by itself.
        filler.unlink()
        loop = asyncio.get_running_loop()
        freed = loop.time()

        async def all_delivered() -> bool:
            states = [m["state"] for m in await alice.call("history", contact="bob")]
            return all(s in ("delivered", "read") for s in states)

        while not await all_delivered():
            assert loop.time() - freed < 10, "messages still stuck 10 s after space returned"
            await asyncio.sleep(0.2)
        received = [m["body"] for m in await bob.call("history", contact="alice")]
        assert received == ["before"] + [f"{i} " + "z" * 2000 for i in range(300)]
        assert await bob_storage_error() is None
    finally:
        await alice.stop()
        await bob.stop()


class Escapes:
    """What reached the event loop's exception handler or was logged with a
    traceback: a ``StoreError`` must end at the step that hit it, never here."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def loop_handler(self, _loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.seen.append(f"{context.get('message')}: {context.get('exception')!r}")

    def check(self, records: list[logging.LogRecord]) -> None:
        traced = [
            f"{r.name}: {r.getMessage()}: {r.exc_info[1]!r}"
            for r in records
            if r.exc_info is not None and isinstance(r.exc_info[1], StoreError)
        ]
        assert not self.seen + traced, self.seen + traced


async def test_file_drop_on_a_full_disk_recovers_by_itself(
    tmp_path: Path, small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An offer, a data channel and a closed session each meet a database that cannot
    write: each is refused cleanly (nothing reaches aioquic's event handler or a task),
    and once space returns the transfers finish without restarting the receiver."""
    caplog.set_level(logging.INFO)
    escapes = Escapes()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(escapes.loop_handler)
    alice_paths = make_home(tmp_path, "alice")
    alice = Node(alice_paths)
    bob = Node(make_home(small_disk, "bob"))
    downloads = tmp_path / "downloads"
    bob.transfers.policy.downloads = downloads
    await alice.start()
    await bob.start()
    try:
        alice.add_contact(bob.peer_id, name="bob", addresses=bob.addresses)
        bob.add_contact(alice.peer_id, name="alice", addresses=alice.addresses)
        await wait_until(lambda: alice.is_online(bob.peer_id) and bob.is_online(alice.peer_id))
        sources = [tmp_path / "src" / f"{n}.bin" for n in ("one", "two")]
        for src in sources:
            src.parent.mkdir(exist_ok=True)
            src.write_bytes(os.urandom(3 << 20))

        def store_errors() -> int:
            return int(bob.network_status()["file_drop"]["store_errors"])

        def state(node: Node, transfer_id: str) -> str | None:
            t = node.store.get_transfer(transfer_id)
            return t.state if t is not None else None

        # 1. The offer arrives on a full disk: not stored, not lost.
        filler = fill(small_disk)
        offer = await alice.offer_files("bob", [sources[0]])
        await wait_until(lambda: store_errors() >= 1)
        assert state(bob, offer.id) is None
        assert bob.network_status()["messages"]["storage_error"] is not None  # the user sees why
        message = alice.send_message("bob", "while the disk was full")
        filler.unlink()
        await wait_until(lambda: state(bob, offer.id) == "pending", timeout=10)
        assert await alice.wait_for_delivery(message.id, 10) == "delivered"

        # 2. Its data channel arrives on a full disk (the accept itself was written).
        failures = store_errors()
        bob.accept_transfer(offer.id)
        filler = fill(small_disk)  # before the loop runs again: before any channel
        await wait_until(lambda: store_errors() > failures)
        assert state(alice, offer.id) != "done"
        filler.unlink()
        assert await alice.wait_transfer(offer.id, 10) == "done"
        await wait_until(lambda: state(bob, offer.id) == "done", timeout=10)
        assert (downloads / "one.bin").read_bytes() == sources[0].read_bytes()

        # 3. The session closes on a full disk while a transfer waits for its data.
        second = await alice.offer_files("bob", [sources[1]])
        await wait_until(lambda: state(bob, second.id) == "pending")
        bob.accept_transfer(second.id)
        filler = fill(small_disk)
        failures = store_errors()
        await wait_until(lambda: store_errors() > failures)
        await alice.stop()
        await wait_until(lambda: not bob.is_online(alice.peer_id))
        filler.unlink()
        alice = Node(alice_paths)
        await alice.start()
        assert await alice.wait_transfer(second.id, 20) == "done"
        await wait_until(lambda: state(bob, second.id) == "done", timeout=10)
        assert (downloads / "two.bin").read_bytes() == sources[1].read_bytes()
        assert sorted(p.name for p in downloads.iterdir()) == ["one.bin", "two.bin"]
        await wait_until(lambda: bob.network_status()["messages"]["storage_error"] is None)
        assert bob.network_status()["file_drop"]["store_retries_waiting"] == 0
        escapes.check(caplog.records)
    finally:
        loop.set_exception_handler(None)
        await alice.stop()
        await bob.stop()
