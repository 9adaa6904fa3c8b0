"""Screenshots of the real app, in a real conversation between real nodes on 127.0.0.1.

Run ``python3 screenshots/generate.py``.  It writes SVG files (Textual's own
export) and PNG versions next to this script.  PNG conversion uses, in order
of fidelity, headless Chromium, CairoSVG or rsvg-convert; see docs/ui.md for
what to install.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from textual.pilot import Pilot  # noqa: E402

from p2pchat.config import Paths  # noqa: E402
from p2pchat.node import Node  # noqa: E402
from p2pchat.ui.app import ChatApp  # noqa: E402
from p2pchat.ui.screens.contacts import AddContactScreen  # noqa: E402
from p2pchat.ui.screens.files import OfferScreen  # noqa: E402
from p2pchat.ui.screens.main import MainScreen  # noqa: E402
from p2pchat.ui.screens.search import SearchScreen  # noqa: E402
from p2pchat.ui.screens.setup import FirstRunScreen  # noqa: E402
from p2pchat.ui.screens.verify import VerifyScreen  # noqa: E402
from p2pchat.ui.widgets import TransferCard  # noqa: E402

OUT = Path(__file__).resolve().parent
SIZE = (120, 36)
MB = 1_000_000


from tests.daemons import free_udp_port as free_port  # noqa: E402
from tests.daemons import make_home  # noqa: E402


async def until(pilot: Pilot[object], predicate: Callable[[], object], timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError("the scripted conversation stalled")
        await pilot.pause(0.05)


def still(app: ChatApp) -> None:
    """No blinking cursor caught half-way, no toast covering the conversation."""
    from textual.widgets import Input, TextArea

    for area in app.screen.query(TextArea):
        area.cursor_blink = False
    for field in app.screen.query(Input):
        field.cursor_blink = False
    app.clear_notifications()
    if isinstance(app.screen, MainScreen):
        app.screen.notices.drop_where(lambda notice: True)
        app.screen.notices.flush()


async def shoot(pilot: Pilot[object], name: str) -> Path:
    app = pilot.app
    assert isinstance(app, ChatApp)
    still(app)
    await pilot.pause(0.3)
    path = OUT / f"{name}.svg"
    app.save_screenshot(path.name, str(OUT))
    print(f"wrote {path.relative_to(ROOT)}")
    return path


def random_file(path: Path, size: int) -> Path:
    """Incompressible content, written in chunks (the clip is a few hundred MB)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        left = size
        while left:
            chunk = min(left, 1 << 22)
            fh.write(os.urandom(chunk))
            left -= chunk
    return path


async def file_drop(pilot: Pilot[object], main: MainScreen, bob: Node, root: Path) -> list[Path]:
    """Alice sends a PDF, then bob offers a folder with a large clip: the offer, and
    the transfer half way."""
    app = pilot.app
    alice = main.node
    bob.set_typing("alice", False)
    await until(pilot, lambda: not main.conversation.typing_text)
    # Folders show as ~/… on screen, as on a real desktop.
    home = root / "home" / "alice"
    os.environ["HOME"] = str(home)
    alice.transfers.policy.downloads = home / "Downloads"
    bob.transfers.policy.downloads = root / "bob-downloads"
    bob.transfers.policy.accept_from = frozenset({"contacts"})
    recipe = random_file(root / "outbox" / "recipe-book.pdf", 2_400_000)
    await pilot.press(*f"/send {recipe}")
    await pilot.press("enter")
    await until(pilot, lambda: any(t.state == "done" for t in alice.list_transfers("bob")), 60)
    bob.send_message("alice", "got it, thanks! and here are the photos from the trip")
    await until(pilot, lambda: len(main.conversation.message_items()) == 6)
    holiday = root / "bob-outbox" / "holiday"
    for name, size in (("IMG_2041.jpg", 3_180_112), ("IMG_2042.jpg", 2_904_551)):
        random_file(holiday / name, size)
    random_file(holiday / "clip.mp4", 640 * MB)
    offered = await bob.offer_files("alice", [holiday])
    await until(pilot, lambda: isinstance(app.screen, OfferScreen))
    shots = [await shoot(pilot, "file-offer")]
    await pilot.click("#accept")
    await until(pilot, lambda: app.screen is main)
    card = main.conversation.card(offered.id)
    assert isinstance(card, TransferCard)

    def half_way() -> bool:
        info = card.info
        return info.state == "receiving" and card.rate is not None and 0.3 < info.done / info.total

    await until(pilot, half_way, 120)
    shots.append(await shoot(pilot, "transfer"))
    await until(pilot, lambda: card.info.state == "done", 300)
    return shots


async def conversation(root: Path) -> list[Path]:
    alice_paths = make_home(root, "alice")
    bob = Node(make_home(root, "bob"))
    carol = Node(make_home(root, "carol"))
    await bob.start()
    await carol.start()
    shots: list[Path] = []
    app = ChatApp(alice_paths, listen=f"127.0.0.1:{free_port()}")
    try:
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: isinstance(app.screen, MainScreen) and app.screen.ready)
            main = app.screen
            assert isinstance(main, MainScreen) and app.node is not None
            alice = app.node
            for peer in (carol, bob):
                alice.add_contact(peer.invite(), name=peer.name)
                peer.add_contact(alice.invite(), name="alice")
            await until(
                pilot, lambda: alice.is_online(bob.peer_id) and alice.is_online(carol.peer_id)
            )
            carol.send_message("alice", "are you coming to the meetup on Thursday?")
            await until(pilot, lambda: bool(carol.history("alice")))
            main.open_conversation(bob.peer_id)
            bob.send_message("alice", "hey! did you get home ok?")
            await until(pilot, lambda: len(main.conversation.message_items()) == 1)
            await pilot.press(*"yes, just arrived. thanks for dinner!")
            await pilot.press("enter")
            bob.mark_read("alice")
            bob.send_message("alice", "anytime 🙂 next time it's on you")
            bob.send_message("alice", "here's the recipe:\n1. onions\n2. patience")
            await until(pilot, lambda: len(main.conversation.message_items()) == 4)
            await pilot.press(*"deal. I'll verify your key next time we meet")
            await pilot.press("enter")
            await until(pilot, lambda: main.conversation.message_items()[-1].state == "delivered")
            bob.set_typing("alice", True)
            await until(pilot, lambda: "typing" in main.conversation.typing_text)
            shots.append(await shoot(pilot, "main-dark"))
            app.theme = "textual-light"
            shots.append(await shoot(pilot, "main-light"))
            app.theme = "textual-dark"
            await pilot.press("ctrl+n")
            await until(pilot, lambda: isinstance(app.screen, AddContactScreen))
            shots.append(await shoot(pilot, "add-contact"))
            await pilot.press("escape")
            await pilot.press("f2")
            await until(pilot, lambda: isinstance(app.screen, VerifyScreen))
            shots.append(await shoot(pilot, "verify"))
            await pilot.press("escape")
            await until(pilot, lambda: app.screen is main)
            # A message selected (its full date and time, what the keys do).
            view = main.conversation
            await pilot.press("ctrl+up", "up")
            await until(pilot, lambda: "r reply" in view.detail_text)
            shots.append(await shoot(pilot, "message-selected"))
            await pilot.press("escape")
            await until(pilot, lambda: main.composer.has_focus)
            await pilot.press(*"/search dinner")
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, SearchScreen) and app.screen.results)
            shots.append(await shoot(pilot, "search"))
            await pilot.press("escape")
            await until(pilot, lambda: app.screen is main)
            shots += await file_drop(pilot, main, bob, root)
    finally:
        await bob.stop()
        await carol.stop()
    return shots


async def first_run(root: Path) -> Path:
    app = ChatApp(Paths(root / "newcomer"), listen=f"127.0.0.1:{free_port()}")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: isinstance(app.screen, FirstRunScreen))
        await pilot.press(*"alice")
        return await shoot(pilot, "first-run")


# ------------------------------------------------------------------ PNG
def svg_size(svg: Path) -> tuple[int, int]:
    match = re.search(r'viewBox="0 0 ([0-9.]+) ([0-9.]+)"', svg.read_text(encoding="utf-8"))
    if match is None:
        raise ValueError(f"{svg} has no viewBox")
    return math.ceil(float(match.group(1))), math.ceil(float(match.group(2)))


def chromium_png(svg: Path, png: Path) -> bool:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        return False
    width, height = svg_size(svg)
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--force-device-scale-factor=1",
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                f"--screenshot={png}",
                svg.as_uri(),
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )
    return result.returncode == 0 and png.exists()


def cairo_png(svg: Path, png: Path) -> bool:
    try:
        import cairosvg  # type: ignore[import-not-found]
    except ImportError:
        return False
    cairosvg.svg2png(url=str(svg), write_to=str(png))
    return True


def rsvg_png(svg: Path, png: Path) -> bool:
    tool = shutil.which("rsvg-convert")
    if tool is None:
        return False
    return subprocess.run([tool, "-o", str(png), str(svg)], check=False).returncode == 0


def to_png(svg: Path) -> str | None:
    png = svg.with_suffix(".png")
    for name, convert in (("chromium", chromium_png), ("cairosvg", cairo_png), ("rsvg", rsvg_png)):
        if convert(svg, png):
            return name
    return None


async def main() -> int:
    with tempfile.TemporaryDirectory(prefix="p2pchat-shots-") as tmp:
        root = Path(tmp)
        shots = await conversation(root)
        shots.append(await first_run(root))
    tools = {to_png(svg) for svg in shots}
    if None in tools:
        print("no SVG to PNG converter found: see docs/ui.md (PNG screenshots)", file=sys.stderr)
        return 1
    print(f"PNG files made with {', '.join(sorted(t for t in tools if t))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
