"""Helpers for driving the real app with Pilot against real nodes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path

import nacl.signing
from textual.app import App
from textual.pilot import Pilot
from textual.widget import Widget
from textual.widgets import Input, TextArea

from p2pchat.config import Paths, save_settings
from p2pchat.identity import peer_id_from_key
from p2pchat.ui.app import ChatApp
from p2pchat.ui.screens.main import MainScreen

from ..conftest import free_udp_port


async def until(
    pilot: Pilot[object], predicate: Callable[[], object], timeout: float = 20.0
) -> None:
    """Let the app run until ``predicate`` holds; fail with a clear message otherwise."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await pilot.pause(0.02)


async def placed(pilot: Pilot[object], widget: Widget) -> None:
    """Wait until ``widget`` has its place on screen: a just-mounted widget has no region
    yet, and a line that appears (an error under a form) moves what is below it, so a
    click aimed before the layout that follows lands where the button used to be."""
    await until(pilot, lambda: widget.region.height > 0 and not widget.screen._layout_required)


async def press(pilot: Pilot[object], selector: str) -> None:
    """Click ``selector`` once it is laid out and can take the click: a button ignores
    clicks while it still shows its previous press (``-active``, 0.2 s on a timer that
    a loaded machine runs late)."""
    await until(pilot, lambda: bool(pilot.app.screen.query(selector)))
    widget = pilot.app.screen.query_one(selector)
    await placed(pilot, widget)
    await until(pilot, lambda: not widget.has_class("-active"))
    assert await pilot.click(selector), f"{selector} was covered"


def recording_opener(marker: Path) -> Callable[[str], list[str]]:
    """An ``opener_argv`` stand-in for the desktop's opener: a real process that writes
    what it was asked to open into ``marker``."""
    script = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_text(sys.argv[2])"

    def opener(target: str) -> list[str]:
        return [sys.executable, "-c", script, str(marker), target]

    return opener


async def main_screen(pilot: Pilot[object], timeout: float = 20.0) -> MainScreen:
    app = pilot.app
    await until(pilot, lambda: showing(app, MainScreen) and app.screen.ready, timeout)
    screen = app.screen
    assert isinstance(screen, MainScreen)
    return screen


def app_for(paths: Paths, **kwargs: object) -> ChatApp:
    """The app on a loopback port of its own (tests never listen beyond 127.0.0.1)."""
    listen = kwargs.pop("listen", f"127.0.0.1:{free_udp_port()}")
    return ChatApp(paths, listen=str(listen), **kwargs)  # type: ignore[arg-type]


def write_fixed_identity(paths: Paths, seed: bytes) -> str:
    """An identity from a fixed seed, in the plain key-file format, so IDs, invites,
    fingerprints and safety numbers are the same in every snapshot run."""
    paths.ensure()
    public = bytes(nacl.signing.SigningKey(seed).verify_key)
    doc = {"version": 1, "kind": "plain", "public_key": public.hex(), "seed": seed.hex()}
    paths.identity.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    paths.identity.chmod(0o600)
    return peer_id_from_key(public)


def fixed_home(root: Path, name: str, seed_byte: int, listen: str) -> tuple[Paths, str]:
    paths = Paths(root / name)
    peer_id = write_fixed_identity(paths, bytes([seed_byte]) * 32)
    save_settings(paths, {"name": name, "listen": listen})
    return paths, peer_id


def still_cursors(app: App[object]) -> None:
    """Blinking cursors would make a screenshot depend on the millisecond it is taken."""
    for text_area in app.screen.query(TextArea):
        text_area.cursor_blink = False
    for field in app.screen.query(Input):
        field.cursor_blink = False


def showing(app: App[object], screen_type: type[object]) -> bool:
    """``screen_type`` is on top and composed (pushed screens mount a moment later)."""
    screen = app.screen
    return isinstance(screen, screen_type) and screen.is_mounted
