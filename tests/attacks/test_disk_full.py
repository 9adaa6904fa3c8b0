"""A full disk on the receiver: messages are refused cleanly, not lost, and the
conversation recovers by itself within seconds once space returns (it used to stay
stuck until a restart)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..daemons import Daemon, free_udp_port, run_cli

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
