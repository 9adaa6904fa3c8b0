"""File transfers on the main screen: cards in the conversation, the offer dialog, the
F3 panel, progress, and what a card's buttons and keys ask for.

Progress events only record the latest figures (``ProgressBoard``); the
screen's periodic flush calls :meth:`TransferController.draw_progress`, which
redraws the affected cards, so a fast transfer costs a few redraws a second
whatever rate the node reports at.  Cards never call the node: they post
``TransferCard.Action`` and this carries it out, for the conversation's cards
and the panel's alike.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from p2pchat.core.events import TransferOffered, TransferProgress, TransferStateChanged
from p2pchat.node import NodeError
from p2pchat.remote import OwnerUnavailable
from p2pchat.store import Transfer
from p2pchat.ui import files
from p2pchat.ui.files import TransferInfo, describe_paths, send_paths, transfer_title
from p2pchat.ui.format import day_of, human_size
from p2pchat.ui.safe import one_line
from p2pchat.ui.screens.files import (
    ConfirmSendScreen,
    FilePickerScreen,
    FolderPickerScreen,
    OfferScreen,
    TransfersScreen,
    downloads_folder,
)
from p2pchat.ui.screens.guard import OwnerWatcher
from p2pchat.ui.screens.main.commands import Handler
from p2pchat.ui.widgets import Composer, PreparingCard, ProgressBoard, TransferCard

if TYPE_CHECKING:
    from p2pchat.ui.screens.main.screen import MainScreen

PaletteCommand = tuple[str, str, Callable[[], object]]

# How long to wait for the file manager opener before giving up on its exit code.
OPENER_TIMEOUT = 15.0
READ_ONLY = "Read-only: cannot send while another node runs"


class TransferListener(Protocol):
    """A screen with transfer cards of its own (the panel, an offer modal)."""

    def transfer_changed(self, info: TransferInfo) -> None: ...

    def transfer_progress(
        self, transfer_id: str, done: int, total: int, rate: float | None
    ) -> None: ...


class TransferController:
    def __init__(self, screen: MainScreen) -> None:
        self.screen = screen
        # Smoothed speeds, and the latest progress not drawn yet.
        self.progress = ProgressBoard()

    # ------------------------------------------------------------ cards
    def info(self, t: Transfer) -> TransferInfo:
        """The card's view of ``t``; only a moving transfer has a running attempt to ask about."""
        progress = None
        if t.state in ("accepted", "sending", "receiving"):
            progress = self.screen.node.transfers.progress(t.id) or self.progress.last(t.id)
        return TransferInfo.from_transfer(t, progress)

    def fresh_info(self, transfer_id: str) -> TransferInfo | None:
        try:
            return self.info(self.screen.node.get_transfer(transfer_id))
        except OwnerUnavailable:
            raise  # the screen's guard tells the app (screens/guard.py)
        except Exception:  # TransferError (p2pchat.net) or a closed store: nothing to show
            return None

    def card(self, info: TransferInfo) -> TransferCard:
        screen = self.screen
        name = screen.contacts.name_of(info.peer_id)
        return TransferCard(
            info,
            author=name if info.incoming else screen.node.name,
            peer_name=name,
            tz=screen.tz,
            rate=self.progress.rate(info.transfer_id),
        )

    def cards_of(self, peer: str) -> list[TransferCard]:
        """Every transfer with ``peer`` as a card, for the conversation's timeline."""
        return [self.card(self.info(t)) for t in self.screen.node.list_transfers(peer)]

    def _listeners(self) -> list[TransferListener]:
        return [
            screen
            for screen in self.screen.app.screen_stack
            if isinstance(screen, (TransfersScreen, OfferScreen))
        ]

    def _show(self, info: TransferInfo) -> None:
        """Bring every card of this transfer up to date (adding one to the open chat)."""
        screen = self.screen
        if info.peer_id == screen.current:
            card = screen.conversation.card(info.transfer_id)
            if isinstance(card, TransferCard):
                card.update_info(info)
            elif card is None:
                screen.conversation.add_item(self.card(info))
        for listener in self._listeners():
            listener.transfer_changed(info)

    # ------------------------------------------------------------ events
    def on_event(self, event: TransferOffered | TransferProgress | TransferStateChanged) -> None:
        if isinstance(event, TransferOffered):
            self._offered(event)
        elif isinstance(event, TransferProgress):
            self.progress.record(event, time.monotonic())
        else:
            self._state_changed(event)

    def _offered(self, event: TransferOffered) -> None:
        """A card in the conversation; the modal when it is on screen, else a notification."""
        screen = self.screen
        info = self.fresh_info(event.transfer_id)
        if info is None:
            return
        self._show(info)
        name = screen.contacts.name_of(event.peer_id)
        if not info.awaiting_answer:
            return  # accepted on its own (--accept-files-from) before we got here
        if event.peer_id == screen.current:
            screen.alerts.alert(
                f"offer:{event.transfer_id}", "File offer", f"{name} offers {info.title}"
            )
            screen.app.push_screen(OfferScreen(screen.node, info, name), self._offer_answered)
            return
        first = one_line(event.files[0][0], 40) if event.files else "?"
        more = f" and {len(event.files) - 1} more" if len(event.files) > 1 else ""
        screen.alerts.notice(
            f"offer:{event.transfer_id}",
            "File offer",
            f"{name} offers {first}{more} ({human_size(event.total)}). Click to answer (or F3).",
            severity="warning",
            timeout=30,
            target=f"offer:{event.transfer_id}",
        )

    def _offer_answered(self, answer: str | None) -> None:
        self.screen.composer.focus()

    def show_offer(self, transfer_id: str) -> None:
        """Open the offer's conversation and ask (the notification's and palette's action)."""
        screen = self.screen
        info = self.fresh_info(transfer_id)
        if info is None:
            return
        screen.open_conversation(info.peer_id)
        if not info.awaiting_answer:
            screen.notify(f"That offer is {info.state} already", timeout=4)
            return
        if any(
            isinstance(s, OfferScreen) and s.transfer_id == transfer_id
            for s in screen.app.screen_stack
        ):
            return
        screen.app.push_screen(
            OfferScreen(screen.node, info, screen.contacts.name_of(info.peer_id)),
            self._offer_answered,
        )

    def draw_progress(self) -> None:
        due = self.progress.due()
        if not due:
            return
        listeners = self._listeners()
        for transfer_id, (done, total) in due.items():
            rate = self.progress.rate(transfer_id)
            card = self.screen.conversation.card(transfer_id)
            if isinstance(card, TransferCard):
                card.set_progress(done, total, rate)
            for listener in listeners:
                listener.transfer_progress(transfer_id, done, total, rate)

    def check_stalls(self, now: float) -> None:
        """Once a second: moving transfers without bytes for a while say "stalled"."""
        for card in self.screen.conversation.cards():
            if isinstance(card, TransferCard):
                card.check_stall(now)
        for listener in self._listeners():
            if isinstance(listener, TransfersScreen):
                for card in listener.cards():
                    card.check_stall(now)

    def _state_changed(self, event: TransferStateChanged) -> None:
        info = self.fresh_info(event.transfer_id)
        if info is None:
            return
        if info.finished:
            self.progress.forget(info.transfer_id)
        self._show(info)
        if event.state in ("done", "declined", "cancelled", "failed"):
            self._ended(info, event)

    def _ended(self, info: TransferInfo, event: TransferStateChanged) -> None:
        """Say how it ended when the card is not in view."""
        screen = self.screen
        if info.peer_id == screen.current and screen.in_view():
            return
        name = screen.contacts.name_of(info.peer_id)
        title = one_line(info.title, 60)
        key, target = f"xfer:{info.transfer_id}", f"peer:{info.peer_id}"
        screen.notices.drop(f"offer:{info.transfer_id}")
        notice = screen.alerts.notice
        if event.state == "done":
            text = f"Received {title} from {name}" if info.incoming else f"{name} received {title}"
            notice(key, "File transfer", text, target=target, alert=False)
        elif event.state == "failed":
            notice(
                key,
                "File transfer failed",
                f"{title} ({name}): {event.error or 'failed'}",
                severity="error",
                timeout=15,
                target=target,
                alert=False,
            )
        elif event.state == "declined" and not info.incoming:
            notice(key, "File transfer", f"{name} declined {title}", target=target)
        elif event.state == "cancelled":
            notice(key, "File transfer", f"{title} ({name}): cancelled", target=target)

    # ----------------------------------------------------------- actions
    def card_action(self, event: TransferCard.Action) -> None:
        """A card's button, in the conversation or in the panel."""
        screen = self.screen
        info = event.card.info
        name = screen.contacts.name_of(info.peer_id)
        node = screen.node
        try:
            if event.action == "accept":
                node.accept_transfer(info.transfer_id)
            elif event.action == "decline":
                node.decline_transfer(info.transfer_id)
            elif event.action == "cancel":
                node.cancel_transfer(info.transfer_id)
            elif event.action == "save_as":
                self._save_as(info, name)
            elif event.action == "open":
                self.open_folder(info)
            elif event.action == "open_file":
                self.open_file(info)
        except OwnerUnavailable:
            raise  # the screen's guard tells the app (screens/guard.py)
        except Exception as exc:  # TransferError lives in p2pchat.net, which the UI may not import
            screen.notify(str(exc), severity="error", markup=False)

    def _save_as(self, info: TransferInfo, name: str) -> None:
        screen = self.screen

        def chosen(folder: Path | None) -> None:
            if folder is None:
                return
            try:
                screen.node.accept_transfer(info.transfer_id, folder=folder)
            except OwnerUnavailable:
                raise  # the screen's guard tells the app (screens/guard.py)
            except Exception as exc:  # see card_action
                screen.notify(str(exc), severity="error", markup=False)

        screen.app.push_screen(
            FolderPickerScreen(
                f"Save {name}'s files in…", initial=downloads_folder(screen.node) or Path.home()
            ),
            chosen,
        )

    def card_key(self, card: TransferCard, action: str) -> None:
        """A key on a card selected in the conversation: Enter opens the file, o the folder."""
        info = card.info
        if not (info.incoming and info.state == "done"):
            return
        if action == "open":
            self.open_file(info)
        elif action in ("open_link", "open_folder"):
            self.open_folder(info)

    def open_folder(self, info: TransferInfo) -> None:
        """Show where a received transfer went: the file manager if there is one."""
        folder = info.folder or (str(Path(info.saved[0]).parent) if info.saved else None)
        if folder is None:
            self.screen.notify("This transfer saved nothing", severity="warning")
            return
        self.open_target(folder, what="folder")

    def open_file(self, info: TransferInfo) -> None:
        """Open a received file with the desktop's program for its type; a transfer of
        several files opens their folder, and a file of a kind that runs code
        (``files.runs_code``: a peer chose its name) is only shown in its folder."""
        screen = self.screen
        if len(info.saved) != 1:
            self.open_folder(info)
            return
        path = Path(info.saved[0])
        if files.runs_code(path):
            screen.notify(
                f"{path.name} could run programs: showing its folder instead",
                severity="warning",
                markup=False,
            )
            self.open_folder(info)
            return
        if not path.is_file():
            screen.notify(f"{path} is no longer there", severity="warning", markup=False)
            return
        self.open_target(str(path), what="file")

    def open_target(self, target: str, *, what: str) -> None:
        """Hand a folder, a file or a web link to the desktop's opener, as one argument
        (never through a shell).  Without a desktop, say where it is (a link is also
        copied, for the terminal's clipboard)."""
        screen = self.screen
        argv = files.opener_argv(target)
        if argv is None:
            if what == "link":
                screen.app.copy_to_clipboard(target)
                screen.notify(
                    f"No browser here; the link was copied: {target}",
                    title="Link",
                    timeout=10,
                    markup=False,
                )
            else:
                where = "Saved in" if what == "folder" else "The file is"
                screen.notify(f"{where} {target}", title="Files", timeout=10, markup=False)
            return
        screen.run_worker(self._run_opener(argv, target, what), group="open", exclusive=False)

    async def _run_opener(self, argv: list[str], target: str, what: str) -> None:
        screen = self.screen
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            screen.notify(f"Cannot open {target}: {exc}", severity="warning", markup=False)
            return
        try:
            async with asyncio.timeout(OPENER_TIMEOUT):  # wait_for could swallow a cancel
                code = await proc.wait()
        except TimeoutError:
            return  # some openers stay until the program they started closes
        if code != 0:
            program = {"folder": "file manager", "link": "browser"}.get(what, "program")
            screen.notify(
                f"No {program} answered for {target}",
                severity="warning",
                timeout=10,
                markup=False,
            )

    # ----------------------------------------------------------- sending
    def offer_paths(self, peer: str, paths: list[Path]) -> None:
        """Offer files in a worker (hashing big files takes a while): "preparing…" meanwhile."""
        screen = self.screen
        if screen.mode == "read-only":
            screen.notify(READ_ONLY, severity="warning")
            return
        placeholder = PreparingCard(
            screen.clock(), author=screen.node.name, what=describe_paths(paths), tz=screen.tz
        )
        if peer == screen.current:
            screen.conversation.add_item(placeholder)
        screen.run_worker(self._offer(peer, paths, placeholder), group="offers")

    async def _offer(self, peer: str, paths: list[Path], placeholder: PreparingCard) -> None:
        screen = self.screen
        try:
            transfer = await screen.node.offer_files(peer, paths)
        except OwnerUnavailable as exc:
            watcher = screen.app
            if isinstance(watcher, OwnerWatcher):
                watcher.owner_unavailable(exc)
            return
        except Exception as exc:  # missing files, too many files, a closed store...
            screen.notify(f"Cannot send: {exc}", severity="error", markup=False)
            return
        finally:
            screen.conversation.remove_item(placeholder)
        if screen.detached:
            return
        if peer == screen.current and screen.conversation.card(transfer.id) is None:
            screen.conversation.add_item(self.card(self.info(transfer)))
        for listener in self._listeners():
            listener.transfer_changed(self.info(transfer))

    def path_pasted(self, event: Composer.PathPasted) -> None:
        """A drop (a paste of existing paths): ask before sending; "no" pastes the text."""
        screen = self.screen
        composer = event.composer
        peer = screen.current
        if peer is None or screen.mode == "read-only":
            composer.insert(event.text)
            return
        paths = event.paths

        def answered(send: bool | None) -> None:
            if send:
                self.offer_paths(peer, paths)
            else:
                composer.insert(event.text)
                composer.post_message(Composer.Typed())
            composer.focus()

        screen.app.push_screen(ConfirmSendScreen(paths, screen.contacts.name_of(peer)), answered)

    def pick_files(self) -> None:
        screen = self.screen
        peer = screen.current
        if peer is None:
            screen.notify("Open a conversation to send files", severity="warning")
            return
        if screen.mode == "read-only":
            screen.notify(READ_ONLY, severity="warning")
            return

        def picked(paths: list[Path] | None) -> None:
            if paths:
                self.offer_paths(peer, paths)
            screen.composer.focus()

        screen.app.push_screen(FilePickerScreen(screen.contacts.name_of(peer)), picked)

    def show_panel(self) -> None:
        screen = self.screen
        for shown in screen.app.screen_stack:
            if isinstance(shown, TransfersScreen):
                return
        infos = [self.info(t) for t in screen.node.list_transfers()]
        screen.app.push_screen(
            TransfersScreen(
                infos,
                names=screen.contacts.name_of,
                my_name=screen.node.name,
                rates=self.progress.rates,
                tz=screen.tz,
                today=day_of(screen.clock(), screen.tz),
                on_action=self.card_action,
            )
        )

    # ---------------------------------------------------------- commands
    def commands(self) -> dict[str, Handler]:
        return {"send": self._cmd_send, "transfers": lambda args: self.show_panel()}

    def _cmd_send(self, args: str) -> None:
        peer = self.screen.current
        if peer is None:
            raise NodeError("open a conversation first")
        self.offer_paths(peer, send_paths(args))

    # ----------------------------------------------------------- palette
    def palette_for_current(self, name: str) -> Iterator[PaletteCommand]:
        yield f"Send a file to {name}", "Pick a file or folder (Ctrl+O)", self.pick_files

    def palette(self) -> Iterator[PaletteCommand]:
        screen = self.screen
        yield "Transfers", "Every file transfer, with progress (F3)", self.show_panel
        for t in screen.node.list_transfers():
            if t.direction == "in" and t.state == "pending":
                names = [(f.path, f.size) for f in t.files]
                yield (
                    f"Answer file offer: {one_line(transfer_title(names), 40)}",
                    f"from {screen.contacts.name_of(t.peer_id)}",
                    partial(self.show_offer, t.id),
                )
