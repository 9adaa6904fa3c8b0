"""Issue 9, hole 5: fake QUIC Initials must not lock contacts out.

A stranger sends 1,200-byte Initials with random payload from many source ports.
Before the admission gate (``p2pchat/net/admission.py``) every one of them built a
server connection that lived until its idle timeout, the table filled up, and a
new contact could not connect for the whole flood while RSS climbed.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.daemons import Daemon, make_home, rss_kib

FLOOD_RATE = 2000
FLOOD_PORTS = 64


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Daemon, Daemon]]:
    daemons = []
    for name in ("victim", "friend"):
        paths = make_home(tmp_path, name)
        listen = json.loads(paths.settings.read_text())["listen"]
        daemons.append(Daemon(paths.home, listen))
    try:
        for d in daemons:
            await d.start()
        yield daemons[0], daemons[1]
    finally:
        for d in daemons:
            await d.stop()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc for RSS")
async def test_initial_flood_does_not_keep_a_new_contact_out(
    pair: tuple[Daemon, Daemon],
) -> None:
    victim, friend = pair
    assert victim.proc is not None
    rss_before = rss_kib(victim.proc.pid)
    flood = subprocess.Popen(
        [
            sys.executable, "-m", "tests.attacks.attackers", "quic-flood", victim.listen,
            "--rate", str(FLOOD_RATE), "--ports", str(FLOOD_PORTS), "--duration", "60",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert flood.stdout is not None and "ready" in flood.stdout.readline()
        # The flood is on when the victim has counted a few thousand fake Initials.
        deadline = time.monotonic() + 30
        while True:
            hs = (await victim.call("network_status"))["handshakes"]
            seen = hs.get("retry_sent", 0) + hs.get("initial_undecryptable", 0)
            # (under_load is a rate over the last second, read at one instant: wait for
            # it rather than trusting the one sample that crossed the count)
            if seen >= 2 * FLOOD_RATE and hs["under_load"] is True:
                break
            assert time.monotonic() < deadline, (
                f"flood never reached the victim or never put it under load: {hs}"
            )
            await asyncio.sleep(0.2)
        victim_id = (await victim.call("info"))["peer_id"]
        friend_id = (await friend.call("info"))["peer_id"]
        # The victim knows the friend by ID only: the friend has to get in.
        await victim.call("add", ref=friend_id, name="friend")
        started = time.monotonic()
        await friend.call("add", ref=victim_id, name="victim", addresses=[victim.listen])
        sent = await friend.call("send", contact="victim", text="through the flood", wait=5)
        took = time.monotonic() - started
        assert sent["state"] == "delivered", f"not delivered within 5 s of adding ({took:.1f} s)"
        history = await victim.call("history", contact="friend")
        assert [m["body"] for m in history] == ["through the flood"]
        # Keep flooding a while longer: memory stays flat, nothing piles up.
        await asyncio.sleep(5)
        hs = (await victim.call("network_status"))["handshakes"]
        assert hs["pending"] <= 1, hs
        assert hs["retry_token_valid"] >= 1, "the friend validated its address"
        rss_after = rss_kib(victim.proc.pid)
        assert rss_after - rss_before < 20 * 1024, (rss_before, rss_after)
    finally:
        flood.kill()
        flood.wait(10)
        if flood.stdout is not None:
            flood.stdout.close()
