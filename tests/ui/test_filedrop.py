"""File drop in the app, driven with Pilot against real nodes on 127.0.0.1.

The peer is a real ``Node`` in the same process; bytes travel over the real
data channel (direct TCP on loopback) and land in temporary folders.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from textual import events
from textual.pilot import Pilot

from p2pchat.node import Node
from p2pchat.ui import files as files_module
from p2pchat.ui.app import ChatApp
from p2pchat.ui.files import TransferInfo
from p2pchat.ui.screens.files import (
    ConfirmSendScreen,
    FilePickerScreen,
    FileTree,
    OfferScreen,
    TransfersScreen,
)
from p2pchat.ui.screens.main import MainScreen
from p2pchat.ui.widgets import Composer, TransferCard

from ..conftest import StartNode, make_home, wait_until
from .conftest import app_for, main_screen, press, showing, until

MB = 1 << 20


@dataclass
class Pair:
    app: ChatApp
    pilot: Pilot[object]
    main: MainScreen
    node: Node
    peer: Node
    tmp: Path

    @property
    def downloads(self) -> Path:
        return self.tmp / "alice-downloads"

    def card(self, transfer_id: str) -> TransferCard | None:
        card = self.main.conversation.card(transfer_id)
        return card if isinstance(card, TransferCard) else None

    def state(self, transfer_id: str) -> str:
        return self.node.get_transfer(transfer_id).state


@pytest.fixture
async def pair(tmp_path: Path, start_node: StartNode) -> AsyncIterator[Pair]:
    """The app (alice) and bob, contacts of each other, online, bob's conversation open."""
    peer = await start_node("bob")
    peer.transfers.policy.downloads = tmp_path / "bob-downloads"
    app = app_for(make_home(tmp_path, "alice"))
    async with app.run_test(size=(120, 40)) as pilot:
        main = await main_screen(pilot)
        node = app.node
        assert node is not None
        node.transfers.policy.downloads = tmp_path / "alice-downloads"
        node.add_contact(peer.peer_id, name="bob", addresses=peer.addresses)
        peer.add_contact(node.peer_id, name="alice", addresses=node.addresses)
        await until(pilot, lambda: node.is_online(peer.peer_id) and peer.is_online(node.peer_id))
        await until(pilot, lambda: main.current == peer.peer_id)
        yield Pair(app, pilot, main, node, peer, tmp_path)


def payload(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        for _ in range(size // MB):
            fh.write(os.urandom(MB))
        fh.write(os.urandom(size % MB))
    return path


def watch(card: TransferCard) -> list[tuple[str, bool]]:
    """(state, progress bar on screen) after every update the card receives."""
    seen: list[tuple[str, bool]] = []
    update_info = card.update_info
    set_progress = card.set_progress

    def on_info(info: TransferInfo) -> None:
        update_info(info)
        seen.append((card.info.state, card.progress_bar is not None))

    def on_progress(done: int, total: int, rate: float | None) -> None:
        set_progress(done, total, rate)
        seen.append((card.info.state, card.progress_bar is not None))

    card.update_info = on_info  # type: ignore[method-assign]
    card.set_progress = on_progress  # type: ignore[method-assign]
    return seen


# ------------------------------------------------------------- receiving
async def test_offer_is_accepted_from_the_modal_and_lands_byte_identical(pair: Pair) -> None:
    pilot, app = pair.pilot, pair.app
    source = payload(pair.tmp / "outbox" / "holiday.mov", 6 * MB + 12345)
    offered = await pair.peer.offer_files("alice", [source])
    await until(pilot, lambda: showing(app, OfferScreen))
    modal = app.screen
    assert isinstance(modal, OfferScreen) and modal.transfer_id == offered.id
    listing = str(modal.query_one("#offer-list").render())
    assert "holiday.mov" in listing and "6.0 MiB" in listing
    card = pair.card(offered.id)
    assert card is not None and card.info.awaiting_answer  # the inline card came with it
    seen = watch(card)
    await pilot.pause()
    await press(pilot, "#accept")
    await until(pilot, lambda: app.screen is pair.main)
    await until(pilot, lambda: card.info.state == "done", 60)
    assert ("accepted", True) in seen or ("receiving", True) in seen  # a progress bar showed
    await until(pilot, lambda: card.progress_bar is None)  # and went away when done
    assert card.status.startswith("✓ done · saved to ") and str(pair.downloads) in card.status
    received = pair.downloads / "holiday.mov"
    assert received.read_bytes() == source.read_bytes()
    await wait_until(lambda: pair.peer.get_transfer(offered.id).state == "done")


async def test_decline_from_the_modal_reaches_the_sender(pair: Pair) -> None:
    pilot, app = pair.pilot, pair.app
    source = payload(pair.tmp / "outbox" / "spam.zip", 4096)
    offered = await pair.peer.offer_files("alice", [source])
    await until(pilot, lambda: showing(app, OfferScreen))
    await pilot.pause()
    await press(pilot, "#decline")
    await wait_until(lambda: pair.peer.get_transfer(offered.id).state == "declined")
    card = pair.card(offered.id)
    assert card is not None
    await until(pilot, lambda: card.status == "declined by you")
    assert not pair.downloads.exists() or not any(pair.downloads.iterdir())


async def test_offer_from_a_contact_off_screen_notifies_and_opens_it(
    pair: Pair, start_node: StartNode
) -> None:
    pilot, app, main, node = pair.pilot, pair.app, pair.main, pair.node
    carol = await start_node("carol")
    node.add_contact(carol.peer_id, name="carol", addresses=carol.addresses)
    carol.add_contact(node.peer_id, name="alice", addresses=node.addresses)
    await until(pilot, lambda: node.is_online(carol.peer_id))
    main.open_conversation(pair.peer.peer_id)
    offered = await carol.offer_files("alice", [payload(pair.tmp / "c" / "notes.txt", 100)])
    key = f"offer:{offered.id}"
    await until(pilot, lambda: key in main.notices.notices)
    assert app.screen is main and main.current == pair.peer.peer_id  # no modal for carol
    assert "notes.txt" in main.notices.notices[key].text
    titles = [title for title, _, _ in app.palette_commands()]
    assert "Answer file offer: notes.txt" in titles
    assert "Send a file to bob" in titles and "Transfers" in titles
    main.notices.activate(key)  # what a click on the notice does
    await until(pilot, lambda: showing(app, OfferScreen))
    assert main.current == carol.peer_id
    assert main.conversation.card(offered.id) is not None
    await pilot.press("escape")  # later: the card keeps the buttons
    await until(pilot, lambda: app.screen is main)
    card = main.conversation.card(offered.id)
    assert main.current == carol.peer_id, "conversation switched"
    assert isinstance(card, TransferCard)
    await press(pilot, f"#transfer-{offered.id} #tc-accept")
    await until(pilot, lambda: card.info.state == "done")
    assert (pair.downloads / "notes.txt").stat().st_size == 100


async def test_open_folder_runs_the_file_manager(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    pilot, app = pair.pilot, pair.app
    pair.peer.transfers.policy.accept_from = frozenset()
    pair.node.transfers.policy.accept_from = frozenset({"contacts"})
    marker = pair.tmp / "opened"
    script = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_text(sys.argv[2])"

    def opener(folder: str) -> list[str]:
        return [sys.executable, "-c", script, str(marker), folder]

    monkeypatch.setattr(files_module, "opener_argv", opener)
    offered = await pair.peer.offer_files("alice", [payload(pair.tmp / "o" / "a.txt", 10)])
    await until(pilot, lambda: pair.card(offered.id) is not None)
    card = pair.card(offered.id)
    assert card is not None
    await until(pilot, lambda: card.info.state == "done")
    assert card.status.endswith("press o to open folder")
    assert pair.main.composer.has_focus
    await pilot.press("shift+tab")  # the message box's neighbour: the latest card's Open
    assert card.has_focus_within
    await pilot.press("o")
    await until(pilot, lambda: marker.exists() and marker.read_text() == str(pair.downloads))
    assert app.screen is pair.main
    # Enter (its Open button) opens the received file itself.
    received = str(pair.downloads / "a.txt")
    await pilot.press("enter")
    await until(pilot, lambda: marker.read_text() == received)
    # Selected in the conversation (Ctrl+Up from the message box), Enter opens it too.
    marker.unlink()
    pair.main.composer.focus()
    await pilot.press("ctrl+up")
    view = pair.main.conversation
    await until(pilot, lambda: view.selected is card)
    assert "Enter open the file" in view.detail_text
    await pilot.press("enter")
    await until(pilot, lambda: marker.exists() and marker.read_text() == received)
    # A file of a kind that runs code when opened is only shown in its folder.
    risky = await pair.peer.offer_files("alice", [payload(pair.tmp / "o" / "run.desktop", 10)])
    await until(pilot, lambda: pair.card(risky.id) is not None)
    risky_card = pair.card(risky.id)
    assert isinstance(risky_card, TransferCard)
    await until(pilot, lambda: risky_card.info.state == "done")
    marker.unlink()
    risky_card.action_open_file()
    await until(pilot, lambda: marker.exists())
    assert marker.read_text() == str(pair.downloads)


# --------------------------------------------------------------- sending
async def test_send_command_with_a_quoted_path_goes_to_done(pair: Pair) -> None:
    pilot, main, peer = pair.pilot, pair.main, pair.peer
    peer.transfers.policy.accept_from = frozenset({"contacts"})
    source = payload(pair.tmp / "my files" / "annual report.pdf", 3 * MB)
    composer = main.query_one(Composer)
    composer.load_text(f'/send "{source}"')
    await pilot.press("enter")
    await until(pilot, lambda: bool(pair.node.list_transfers(peer.peer_id)))
    sent = pair.node.list_transfers(peer.peer_id)[0]
    await until(pilot, lambda: pair.card(sent.id) is not None)
    card = pair.card(sent.id)
    assert card is not None
    await until(pilot, lambda: card.info.state == "done", 60)
    assert card.status == "✓ done · bob has it"
    assert (peer.transfers.policy.downloads / "annual report.pdf").read_bytes() == (
        source.read_bytes()
    )
    # Cards come back from the store when the conversation is opened again.
    main.open_conversation(peer.peer_id, reload=True)
    await pilot.pause()
    again = pair.card(sent.id)
    assert again is not None and again is not card and again.info.state == "done"


async def test_send_command_reports_a_missing_file(pair: Pair) -> None:
    pilot, main, app = pair.pilot, pair.main, pair.app
    notes: list[str] = []
    notify = app.notify

    def record(message: str, **kwargs: object) -> None:
        notes.append(message)
        notify(message, **kwargs)  # type: ignore[arg-type]

    app.notify = record  # type: ignore[method-assign]
    main.query_one(Composer).load_text("/send /no/such/file.txt")
    await pilot.press("enter")
    await until(pilot, lambda: any("no such file" in n for n in notes))
    assert pair.node.list_transfers() == []


async def test_pasted_path_asks_then_sends(pair: Pair) -> None:
    pilot, app, main, peer = pair.pilot, pair.app, pair.main, pair.peer
    peer.transfers.policy.accept_from = frozenset({"contacts"})
    photo = payload(pair.tmp / "drop" / "photo one.jpg", 200_000)
    other = payload(pair.tmp / "drop" / "photo two.jpg", 300_000)
    composer = main.query_one(Composer)
    # As a terminal delivers a drop of two files: quoted, space separated.
    app.post_message(events.Paste(f"'{photo}' '{other}'"))
    await until(pilot, lambda: showing(app, ConfirmSendScreen))
    await pilot.pause()
    title = str(app.screen.query_one(".card-title").render())
    assert title == "Send 2 files to bob?"
    assert composer.text == ""  # nothing inserted while asking
    await press(pilot, "#yes")
    await until(pilot, lambda: app.screen is main)
    await until(pilot, lambda: bool(pair.node.list_transfers(peer.peer_id)))
    sent = pair.node.list_transfers(peer.peer_id)[0]
    assert [f.path for f in sent.files] == ["photo one.jpg", "photo two.jpg"]
    await until(pilot, lambda: pair.state(sent.id) == "done", 60)
    card = pair.card(sent.id)
    assert card is not None
    await until(pilot, lambda: card.info.state == "done")
    assert composer.text == ""


async def test_pasted_path_declined_is_inserted_as_text(pair: Pair) -> None:
    pilot, app, main = pair.pilot, pair.app, pair.main
    path = payload(pair.tmp / "drop" / "notes.txt", 10)
    composer = main.query_one(Composer)
    app.post_message(events.Paste(path.as_uri()))
    await until(pilot, lambda: showing(app, ConfirmSendScreen))
    await pilot.pause()
    await press(pilot, "#no")
    await until(pilot, lambda: composer.text == path.as_uri())
    assert pair.node.list_transfers() == []
    composer.clear()
    app.post_message(events.Paste("just some words"))
    await until(pilot, lambda: composer.text == "just some words")
    assert app.screen is main


async def test_file_picker_sends_the_file_under_the_cursor(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    pilot, app, main, peer = pair.pilot, pair.app, pair.main, pair.peer
    home = pair.tmp / "home"
    payload(home / "drawing.svg", 5000)
    monkeypatch.setenv("HOME", str(home))
    await pilot.press("ctrl+o")
    await until(pilot, lambda: showing(app, FilePickerScreen))
    tree = app.screen.query_one(FileTree)
    await until(pilot, lambda: len(tree.root.children) == 1)
    await pilot.press("down", "enter")
    await until(pilot, lambda: app.screen is main)
    await until(pilot, lambda: bool(pair.node.list_transfers(peer.peer_id)))
    sent = pair.node.list_transfers(peer.peer_id)[0]
    assert [f.path for f in sent.files] == ["drawing.svg"]
    card = pair.card(sent.id)
    assert card is not None and card.status == "waiting for bob to accept"


async def test_cancel_from_the_card_and_answers_from_the_panel(pair: Pair) -> None:
    pilot, app, main, peer = pair.pilot, pair.app, pair.main, pair.peer
    source = payload(pair.tmp / "outbox" / "draft.txt", 1000)
    main.offer_paths(peer.peer_id, [source])
    await until(pilot, lambda: bool(pair.node.list_transfers(peer.peer_id)))
    sent = pair.node.list_transfers(peer.peer_id)[0]
    await until(pilot, lambda: pair.card(sent.id) is not None)
    await wait_until(lambda: bool(peer.list_transfers()))
    await press(pilot, f"#transfer-{sent.id} #tc-cancel")
    await until(pilot, lambda: pair.state(sent.id) == "cancelled")
    await wait_until(lambda: peer.get_transfer(sent.id).state == "cancelled")
    # An offer answered from the F3 panel.
    main.open_conversation(peer.peer_id)
    await until(pilot, lambda: main.current == peer.peer_id)
    offered = await peer.offer_files("alice", [payload(pair.tmp / "p" / "list.csv", 2000)])
    await until(pilot, lambda: showing(app, OfferScreen))
    await pilot.press("escape")
    await until(pilot, lambda: app.screen is main)
    await pilot.press("f3")
    await until(pilot, lambda: showing(app, TransfersScreen))
    await pilot.pause()
    panel = app.screen
    assert isinstance(panel, TransfersScreen)
    assert panel.card(sent.id) is not None and panel.card(offered.id) is not None
    await press(pilot, f"#transfer-{offered.id} #tc-accept")
    card = panel.card(offered.id)
    assert card is not None
    await until(pilot, lambda: card.info.state == "done")
    assert (pair.downloads / "list.csv").stat().st_size == 2000
    await pilot.press("escape")
    await until(pilot, lambda: app.screen is main)
