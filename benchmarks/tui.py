#!/usr/bin/env python3
"""Terminal UI benchmark: input echo latency while messages pour in.

Usage (from the repository root)::

    python3 benchmarks/tui.py [--keys N] [--messages M]

The real app runs headless (Textual's Pilot) for a real home, with its node
listening on 127.0.0.1; a second real node on 127.0.0.1 is its contact.  Both
share one asyncio loop, as the app and its node do in normal use, so the
peer's work is counted against the UI too: a pessimistic setting.

Echo latency is the time from handing a key press to Pilot until the typed
character is in the composer's rendered line (what the next frame draws;
Textual then paints at up to 60 frames a second).  It is measured twice:
with nothing else happening (idle), and while the peer sends M messages that
the open conversation appends as they arrive.  The figure that matters is the
p99 under load: a chat client must never make typing feel sticky.

The file transfer part of the load (a 1 GB transfer while typing) will be
added when file drop exists.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import string
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("P2PCHAT_KDF_FAST", "1")

from textual import events  # noqa: E402
from textual.pilot import Pilot  # noqa: E402

from p2pchat.config import Paths, save_settings  # noqa: E402
from p2pchat.identity import create_identity  # noqa: E402
from p2pchat.node import Node  # noqa: E402
from p2pchat.ui.app import ChatApp  # noqa: E402
from p2pchat.ui.screens.main import MainScreen  # noqa: E402
from p2pchat.ui.widgets import Composer  # noqa: E402


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_home(root: Path, name: str) -> Paths:
    paths = Paths(root / name)
    paths.ensure()
    create_identity(paths.identity)
    save_settings(paths, {"name": name, "listen": f"127.0.0.1:{free_port()}"})
    return paths


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


async def echo(pilot: Pilot[object], composer: Composer, char: str) -> float:
    """Seconds from the key press to the character in the rendered composer line.

    The key event is posted to the app exactly as Pilot's ``press`` does, but
    instead of Pilot's "wait until the app looks idle" (a heuristic with tens
    of milliseconds of slack) this polls the composer after every loop step.
    """
    if len(composer.text) >= 40:
        composer.clear()
        await pilot.pause()
    expected = composer.text + char
    start = time.perf_counter()
    pilot.app.post_message(events.Key(char, char))
    while True:
        row = composer.cursor_location[0]
        if composer.text == expected and expected[-8:] in composer.render_line(row).text:
            return time.perf_counter() - start
        await asyncio.sleep(0)


async def run(keys: int, messages: int) -> None:
    with tempfile.TemporaryDirectory(prefix="p2pchat-tui-bench-") as tmp:
        root = Path(tmp)
        peer = Node(make_home(root, "bob"))
        await peer.start(control=False)
        app = ChatApp(make_home(root, "alice"), listen=f"127.0.0.1:{free_port()}")
        try:
            async with app.run_test(size=(120, 40)) as pilot:
                await wait(pilot, lambda: isinstance(app.screen, MainScreen) and app.screen.ready)
                main = app.screen
                assert isinstance(main, MainScreen) and app.node is not None
                node = app.node
                node.add_contact(peer.invite(), name="bob")
                peer.add_contact(node.invite(), name="alice")
                await wait(
                    pilot, lambda: node.is_online(peer.peer_id) and main.current == peer.peer_id
                )
                composer = main.query_one(Composer)
                composer.focus()
                alphabet = string.ascii_lowercase

                idle = [await echo(pilot, composer, alphabet[i % 26]) for i in range(keys)]

                async def pour() -> None:
                    # Spread over the typing window, the way a chatty peer sends.
                    for i in range(messages):
                        peer.send_message("alice", f"message {i:03d} " + "x" * (i % 60))
                        await asyncio.sleep(0.01)

                async def shown() -> float:
                    while True:
                        if len(main.conversation.message_items()) >= messages:
                            return time.perf_counter() - started
                        await asyncio.sleep(0.005)

                started = time.perf_counter()
                sender = asyncio.ensure_future(pour())
                watcher = asyncio.ensure_future(shown())
                loaded: list[float] = []
                # Keep typing for as long as messages are still arriving.
                while len(loaded) < keys or not watcher.done():
                    loaded.append(await echo(pilot, composer, alphabet[len(loaded) % 26]))
                    await asyncio.sleep(0.005)  # a fast typist: ~100 keys a second at most
                await sender
                elapsed = await watcher
        finally:
            await peer.stop()

    def row(label: str, samples: list[float]) -> str:
        ms = [s * 1000 for s in samples]
        return (
            f"{label:<28} n={len(ms):<4} p50 {percentile(ms, 50):6.1f} ms"
            f"   p99 {percentile(ms, 99):6.1f} ms   max {max(ms):6.1f} ms"
        )

    print("p2pchat TUI input echo latency (Pilot key press -> character rendered)")
    print(row("idle", idle))
    print(row(f"{messages} messages arriving", loaded))
    ratio = percentile(loaded, 99) / max(percentile(idle, 99), 1e-9)
    print(f"p99 under load / idle p99: {ratio:.2f}x")
    print(f"all {messages} messages shown in the open conversation {elapsed:.2f} s after the first")
    print(f"mean echo under load {statistics.fmean(loaded) * 1000:.1f} ms")
    print("transfer load: not included")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=200, help="key presses per phase")
    parser.add_argument("--messages", type=int, default=100, help="messages from the peer")
    args = parser.parse_args()
    asyncio.run(run(args.keys, args.messages))


if __name__ == "__main__":
    main()
