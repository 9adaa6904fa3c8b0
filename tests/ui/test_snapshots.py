"""Screenshots of the main screens compared with the accepted ones in ``__snapshots__``.

Regenerate after an intended visual change with
``python3 -m pytest tests/ui/test_snapshots.py --snapshot-update`` and review
the SVG files before committing them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from p2pchat.config import Paths
from p2pchat.ui.app import ChatApp
from p2pchat.ui.screens.contacts import AddContactScreen
from p2pchat.ui.screens.main import MainScreen
from p2pchat.ui.screens.setup import FirstRunScreen
from p2pchat.ui.screens.verify import VerifyScreen

from .conftest import still_cursors, until
from .scene import UTC, Scene, build_scene, frozen_clock

SIZES = [pytest.param((120, 40), id="120x40"), pytest.param((80, 24), id="80x24")]

SnapCompare = Callable[..., bool]


@pytest.fixture
def scene(tmp_path: Path) -> Scene:
    return build_scene(tmp_path)


async def settle_main(pilot: Pilot[Any], scene: Scene) -> MainScreen:
    """Main screen up, the nearby peer listed, bob's conversation open and read."""
    app = pilot.app
    await until(pilot, lambda: isinstance(app.screen, MainScreen) and app.screen.ready)
    main = app.screen
    assert isinstance(main, MainScreen)
    node = main.node
    node.peer_discovered(scene.erin, ["127.0.0.1:47478"], source="mdns", name="erin")
    await until(
        pilot, lambda: any((o.id or "").startswith("n:") for o in main.contact_list.options)
    )
    await until(
        pilot, lambda: main.current == scene.bob and node.store.unread_count(scene.bob) == 0
    )
    main.refresh_sidebar()
    still_cursors(app)
    await pilot.pause()
    return main


def then(
    action: Callable[[Pilot[Any], MainScreen], Awaitable[None]], scene: Scene
) -> Callable[[Pilot[Any]], Awaitable[None]]:
    async def run_before(pilot: Pilot[Any]) -> None:
        main = await settle_main(pilot, scene)
        await action(pilot, main)
        still_cursors(pilot.app)
        await pilot.pause()

    return run_before


async def nothing(pilot: Pilot[Any], main: MainScreen) -> None:
    return None


async def open_add_contact(pilot: Pilot[Any], main: MainScreen) -> None:
    await pilot.press("ctrl+n")
    await until(pilot, lambda: isinstance(pilot.app.screen, AddContactScreen))


async def open_verify(pilot: Pilot[Any], main: MainScreen) -> None:
    await pilot.press("f2")
    await until(pilot, lambda: isinstance(pilot.app.screen, VerifyScreen))


@pytest.mark.parametrize("size", SIZES)
def test_main_with_conversation(
    snap_compare: SnapCompare, scene: Scene, size: tuple[int, int]
) -> None:
    assert snap_compare(scene.app(), terminal_size=size, run_before=then(nothing, scene))


def test_main_light_theme(snap_compare: SnapCompare, scene: Scene) -> None:
    async def light(pilot: Pilot[Any], main: MainScreen) -> None:
        pilot.app.theme = "textual-light"
        await pilot.pause()

    assert snap_compare(scene.app(), terminal_size=(120, 40), run_before=then(light, scene))


@pytest.mark.parametrize("size", SIZES)
def test_add_contact_modal(snap_compare: SnapCompare, scene: Scene, size: tuple[int, int]) -> None:
    assert snap_compare(scene.app(), terminal_size=size, run_before=then(open_add_contact, scene))


@pytest.mark.parametrize("size", SIZES)
def test_verify_screen(snap_compare: SnapCompare, scene: Scene, size: tuple[int, int]) -> None:
    assert snap_compare(scene.app(), terminal_size=size, run_before=then(open_verify, scene))


@pytest.mark.parametrize("size", SIZES)
def test_first_run(snap_compare: SnapCompare, tmp_path: Path, size: tuple[int, int]) -> None:
    app = ChatApp(Paths(tmp_path / "new"), clock=frozen_clock, tz=UTC, network=False)

    async def run_before(pilot: Pilot[Any]) -> None:
        await until(pilot, lambda: isinstance(pilot.app.screen, FirstRunScreen))
        await pilot.press(*"alice")
        still_cursors(pilot.app)
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=run_before)
