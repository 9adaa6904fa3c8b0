#!/usr/bin/env python3
"""Terminal UI benchmark: input echo latency while messages and a file pour in.

Usage (from the repository root)::

    python3 benchmarks/tui.py [--keys N] [--messages M] [--file-mb S]

The real app runs headless (Textual's Pilot) for a real home, with its node
listening on 127.0.0.1, in this process: the app and its node share one
asyncio loop, as in normal use.  Its contact is a real ``p2pchat daemon`` in
a child process on 127.0.0.1 (``--no-mdns --no-dht``), driven over its
control socket.  The peer must live in another process: a sender in the same
loop would seal and push the file's bytes on the very loop that draws the
screen, which measures the sender rather than the UI.

Echo latency is the time from a key press until the typed character is in
the composer's rendered line (what the next frame draws; Textual then paints
at up to 60 frames a second).  A paced typist presses a key every 25 ms and
each key is timed from the moment it was due, so a stalled loop costs every
key that falls into the stall.  It is measured three times:

1. idle: nothing else happening;
2. messages: while the peer sends M messages that the open conversation
   appends as they arrive;
3. transfer: while the peer sends an S MB file (random bytes, written in
   chunks into a temporary folder) that the app's node receives over the
   direct TCP data channel (decrypting on the UI's loop, writing and hashing
   on a worker thread), and M messages arrive meanwhile.  Only keys typed
   while the bytes were moving count.

The figure that matters is the p99 under load: a chat client must never make
typing feel sticky.  Defaults take about two minutes on a two-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import string
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from textual import events  # noqa: E402
from textual.pilot import Pilot  # noqa: E402

from p2pchat.ui.app import ChatApp  # noqa: E402
from p2pchat.ui.screens.main import MainScreen  # noqa: E402
from p2pchat.ui.widgets import Composer, TransferCard  # noqa: E402
from tests.daemons import Daemon  # noqa: E402

MB = 1_000_000
ALPHABET = string.ascii_lowercase
# 40 keys a second: faster than anyone types, so every stall meets a key.
KEY_INTERVAL = 0.025


from tests.daemons import free_udp_port as free_port  # noqa: E402
from tests.daemons import make_home  # noqa: E402


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def wait(pilot: Pilot[object], predicate: object, timeout: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():  # type: ignore[operator]
        if loop.time() > deadline:
            raise TimeoutError("benchmark setup stalled")
        await pilot.pause(0.02)


async def echo(pilot: Pilot[object], composer: Composer, char: str, due: float) -> float:
    """Seconds from ``due`` (when the typist pressed the key) to the character in the
    rendered composer line.

    The key event is posted to the app exactly as Pilot's ``press`` does, but
    instead of Pilot's "wait until the app looks idle" (a heuristic with tens
    of milliseconds of slack) this polls the composer after every loop step.
    """
    expected = composer.text + char
    pilot.app.post_message(events.Key(char, char))
    while True:
        row = composer.cursor_location[0]
        if composer.text == expected and expected[-8:] in composer.render_line(row).text:
            return time.perf_counter() - due
        await asyncio.sleep(0)


async def typist(
    pilot: Pilot[object], composer: Composer, done: Callable[[], bool], least: int
) -> list[float]:
    """Type at a steady pace until ``done()`` (and at least ``least`` keys).

    Keys are due at fixed times, and each is timed from when it was due, not from
    when the loop got around to posting it: a loop stalled for 150 ms delays
    every key that falls in the stall, as it would for a person typing, instead
    of hiding behind a benchmark that waits for the stall to end before pressing.
    """
    samples: list[float] = []
    due = time.perf_counter()
    while len(samples) < least or not done():
        if len(composer.text) >= 40:
            composer.clear()
            await pilot.pause()
            due = max(due, time.perf_counter())
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        samples.append(await echo(pilot, composer, ALPHABET[len(samples) % 26], due))
        due += KEY_INTERVAL
    return samples


async def poll(predicate: Callable[[], bool], interval: float = 0.005) -> None:
    """Check the app's state between loop steps (the app runs on this very loop)."""
    while True:
        if predicate():
            return
        await asyncio.sleep(interval)


def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as fh:
        left = size
        while left:
            chunk = min(left, 4 << 20)
            fh.write(os.urandom(chunk))
            left -= chunk


def row(label: str, samples: list[float]) -> str:
    ms = [s * 1000 for s in samples]
    return (
        f"{label:<34} n={len(ms):<5} p50 {percentile(ms, 50):6.1f} ms"
        f"   p99 {percentile(ms, 99):6.1f} ms   max {max(ms):6.1f} ms"
    )


async def run(keys: int, messages: int, file_mb: int) -> None:
    with tempfile.TemporaryDirectory(prefix="p2pchat-tui-bench-") as tmp:
        root = Path(tmp)
        source = root / "outbox" / "big.bin"
        source.parent.mkdir()
        started = time.perf_counter()
        write_random(source, file_mb * MB)
        print(f"wrote a {file_mb} MB file in {time.perf_counter() - started:.1f} s", flush=True)
        peer = Daemon(make_home(root, "bob").home, f"127.0.0.1:{free_port()}")
        await peer.start()
        app = ChatApp(make_home(root, "alice"), listen=f"127.0.0.1:{free_port()}")
        try:
            async with app.run_test(size=(120, 40)) as pilot:
                await wait(pilot, lambda: isinstance(app.screen, MainScreen) and app.screen.ready)
                main = app.screen
                assert isinstance(main, MainScreen) and app.node is not None
                node = app.node
                node.transfers.policy.downloads = root / "downloads"
                node.transfers.policy.accept_from = frozenset({"contacts"})
                info = await peer.call("info")
                node.add_contact(info["invite"], name="bob")
                await peer.call("add", ref=node.invite(), name="alice")
                peer_id = info["peer_id"]
                await wait(pilot, lambda: node.is_online(peer_id) and main.current == peer_id)
                composer = main.query_one(Composer)
                composer.focus()

                async def pour(interval: float) -> None:
                    for i in range(messages):
                        text = f"message {i:03d} " + "x" * (i % 60)
                        await peer.call("send", contact="alice", text=text)
                        await asyncio.sleep(interval)

                async def shown(count: int) -> float:
                    await poll(lambda: len(main.conversation.message_items()) >= count)
                    return time.perf_counter() - since

                # 1. idle
                idle = await typist(pilot, composer, lambda: True, keys)

                # 2. messages arriving (spread over the typing window, as a chatty peer sends)
                since = time.perf_counter()
                sender = asyncio.ensure_future(pour(0.01))
                watcher = asyncio.ensure_future(shown(messages))
                chatty = await typist(pilot, composer, watcher.done, keys)
                await sender
                chat_elapsed = await watcher

                # 3. a file transfer, with messages arriving meanwhile
                composer.clear()
                offer_started = time.perf_counter()
                offer = await peer.call("send_files", contact="alice", paths=[str(source)])
                hashed = time.perf_counter() - offer_started
                transfer_id = offer["id"]
                await wait(pilot, lambda: main.conversation.card(transfer_id) is not None)
                card = main.conversation.card(transfer_id)
                assert isinstance(card, TransferCard)
                loop = asyncio.get_running_loop()
                moving = loop.create_future()
                finished = loop.create_future()

                async def follow() -> None:
                    await poll(lambda: card.info.state in ("receiving", "done", "failed"), 0.002)
                    moving.set_result(time.perf_counter())
                    await poll(lambda: card.info.finished)
                    finished.set_result(time.perf_counter())

                follower = asyncio.ensure_future(follow())
                await moving
                since = time.perf_counter()
                sender = asyncio.ensure_future(pour(0.03))
                during = await typist(pilot, composer, finished.done, 1)
                # Only keys typed while bytes moved: the last one may end after the finish.
                await follower
                end = finished.result()
                await sender
                await wait(pilot, lambda: len(main.conversation.message_items()) >= 2 * messages)
                state = node.get_transfer(transfer_id).state
                seconds = end - moving.result()
                received = root / "downloads" / source.name
                intact = received.exists() and received.stat().st_size == source.stat().st_size
        finally:
            await peer.stop()

    print("p2pchat TUI input echo latency (Pilot key press -> character rendered)")
    print("peer: a p2pchat daemon in another process, on 127.0.0.1")
    print(row("idle", idle))
    print(row(f"{messages} messages arriving", chatty))
    print(row(f"{file_mb} MB transfer + {messages} messages", during))
    for label, samples in (("messages", chatty), ("transfer", during)):
        ratio = percentile(samples, 99) / max(percentile(idle, 99), 1e-9)
        print(f"p99 under {label} load / idle p99: {ratio:.2f}x")
    print(f"all {messages} messages shown {chat_elapsed:.2f} s after the first was sent")
    print(
        f"transfer: {state}, {file_mb} MB in {seconds:.1f} s "
        f"({file_mb / seconds:.0f} MB/s while typing; the peer hashed it in {hashed:.1f} s)"
        + ("" if intact else "  [the received file is missing or short!]")
    )
    print(
        f"mean echo: idle {statistics.fmean(idle) * 1000:.1f} ms, "
        f"transfer {statistics.fmean(during) * 1000:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=200, help="key presses per phase")
    parser.add_argument("--messages", type=int, default=100, help="messages from the peer")
    parser.add_argument("--file-mb", type=int, default=1000, help="size of the file sent")
    args = parser.parse_args()
    asyncio.run(run(args.keys, args.messages, args.file_mb))


if __name__ == "__main__":
    main()
