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
from p2pchat.core.events import TransferOffered, TransferProgress
from p2pchat.ui.app import ChatApp
from p2pchat.ui.messages import NodeEventArrived
from p2pchat.ui.screens.contacts import AddContactScreen
from p2pchat.ui.screens.files import OfferScreen, TransfersScreen
from p2pchat.ui.screens.help import HelpScreen
from p2pchat.ui.screens.main import MainScreen
from p2pchat.ui.screens.setup import FirstRunScreen
from p2pchat.ui.screens.verify import VerifyScreen
from p2pchat.ui.widgets import TransferCard

from .conftest import showing, still_cursors, until
from .scene import (
    DOWNLOADS,
    OFFER_FILES,
    OFFER_ID,
    SLIDES_ID,
    SLIDES_PROGRESS,
    UTC,
    Scene,
    add_offer,
    add_transfers,
    build_scene,
    frozen_clock,
)

SIZES = [
    pytest.param((120, 36), id="120x36"),
    pytest.param((80, 24), id="80x24"),
    pytest.param((60, 20), id="60x20"),
]

SnapCompare = Callable[..., bool]


@pytest.fixture
def scene(tmp_path: Path) -> Scene:
    return build_scene(tmp_path)


@pytest.fixture
def transfer_scene(tmp_path: Path) -> Scene:
    scene = build_scene(tmp_path)
    add_transfers(scene)
    return scene


async def settle_main(pilot: Pilot[Any], scene: Scene) -> MainScreen:
    """Main screen up, the nearby peer listed, bob's conversation open and read."""
    app = pilot.app
    await until(pilot, lambda: showing(app, MainScreen) and app.screen.ready)
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
        # A conversation that follows its newest row gets there a layout after a row
        # is added; a snapshot taken before would catch the scroll bar on its way.
        timeline = main.conversation.timeline
        await until(
            pilot,
            lambda: (
                not timeline.following
                or timeline.max_scroll_y <= 0
                or timeline.scroll_y == timeline.max_scroll_y
            ),
        )
        still_cursors(pilot.app)
        await pilot.pause()

    return run_before


async def nothing(pilot: Pilot[Any], main: MainScreen) -> None:
    return None


async def open_add_contact(pilot: Pilot[Any], main: MainScreen) -> None:
    await pilot.press("ctrl+n")
    await until(pilot, lambda: showing(pilot.app, AddContactScreen))


async def open_verify(pilot: Pilot[Any], main: MainScreen) -> None:
    await pilot.press("f2")
    await until(pilot, lambda: showing(pilot.app, VerifyScreen))


@pytest.mark.parametrize("size", SIZES)
def test_main_with_conversation(
    snap_compare: SnapCompare, scene: Scene, size: tuple[int, int]
) -> None:
    assert snap_compare(scene.app(), terminal_size=size, run_before=then(nothing, scene))


def test_main_light_theme(snap_compare: SnapCompare, scene: Scene) -> None:
    async def light(pilot: Pilot[Any], main: MainScreen) -> None:
        pilot.app.theme = "textual-light"
        await pilot.pause()

    assert snap_compare(scene.app(), terminal_size=(120, 36), run_before=then(light, scene))


@pytest.mark.parametrize("size", SIZES)
def test_add_contact_modal(snap_compare: SnapCompare, scene: Scene, size: tuple[int, int]) -> None:
    assert snap_compare(scene.app(), terminal_size=size, run_before=then(open_add_contact, scene))


@pytest.mark.parametrize("size", SIZES)
def test_verify_screen(snap_compare: SnapCompare, scene: Scene, size: tuple[int, int]) -> None:
    assert snap_compare(scene.app(), terminal_size=size, run_before=then(open_verify, scene))


async def open_help(pilot: Pilot[Any], main: MainScreen) -> None:
    await pilot.press("f1")
    await until(pilot, lambda: showing(pilot.app, HelpScreen))


@pytest.mark.parametrize("size", SIZES)
def test_help_screen(snap_compare: SnapCompare, scene: Scene, size: tuple[int, int]) -> None:
    assert snap_compare(scene.app(), terminal_size=size, run_before=then(open_help, scene))


@pytest.mark.parametrize("size", SIZES)
def test_first_run(snap_compare: SnapCompare, tmp_path: Path, size: tuple[int, int]) -> None:
    app = ChatApp(Paths(tmp_path / "new"), clock=frozen_clock, tz=UTC, network=False)

    async def run_before(pilot: Pilot[Any]) -> None:
        await until(pilot, lambda: showing(pilot.app, FirstRunScreen))
        await pilot.press(*"alice")
        still_cursors(pilot.app)
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=run_before)


# ------------------------------------------------------------- file drop
async def slides_half_way(pilot: Pilot[Any], main: MainScreen) -> None:
    """The node reports the slides' progress once; the card shows it at the next flush."""
    done, total, rate = SLIDES_PROGRESS
    event = TransferProgress(SLIDES_ID, main.current or "", "out", done, total, rate)
    main.post_message(NodeEventArrived(event))
    main.node.transfers.policy.downloads = Path(DOWNLOADS)
    card = main.conversation.card(SLIDES_ID)
    assert card is not None
    assert isinstance(card, TransferCard)
    await until(pilot, lambda: card.info.done == done)


async def offer_arrives(pilot: Pilot[Any], main: MainScreen) -> None:
    await slides_half_way(pilot, main)
    assert main.current is not None
    add_offer(main.node.store, main.current)
    total = sum(size for _, size in OFFER_FILES)
    event = TransferOffered(OFFER_ID, main.current or "", OFFER_FILES, total)
    main.post_message(NodeEventArrived(event))
    await until(pilot, lambda: showing(pilot.app, OfferScreen))
    # Behind the modal, the offer's card joins the conversation (laid out a refresh
    # later, on a busy machine after the modal is up; ``then`` waits for the scroll).
    await until(
        pilot, lambda: (card := main.conversation.card(OFFER_ID)) is not None and card.size.height
    )


async def open_transfers(pilot: Pilot[Any], main: MainScreen) -> None:
    await slides_half_way(pilot, main)
    await pilot.press("f3")
    await until(pilot, lambda: showing(pilot.app, TransfersScreen))


@pytest.mark.parametrize("size", SIZES)
def test_conversation_with_transfers(
    snap_compare: SnapCompare, transfer_scene: Scene, size: tuple[int, int]
) -> None:
    run_before = then(slides_half_way, transfer_scene)
    assert snap_compare(transfer_scene.app(), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_offer_modal(
    snap_compare: SnapCompare, transfer_scene: Scene, size: tuple[int, int]
) -> None:
    run_before = then(offer_arrives, transfer_scene)
    assert snap_compare(transfer_scene.app(), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_transfers_panel(
    snap_compare: SnapCompare, transfer_scene: Scene, size: tuple[int, int]
) -> None:
    run_before = then(open_transfers, transfer_scene)
    assert snap_compare(transfer_scene.app(), terminal_size=size, run_before=run_before)
