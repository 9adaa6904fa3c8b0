"""Modals of file drop: pick files to send, confirm a drop, answer an offer, list transfers."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Button, DirectoryTree, Input, Static, Tree

from p2pchat.node import Node
from p2pchat.remote import OwnerUnavailable
from p2pchat.ui.files import TransferInfo, describe_paths, display_folder, measure
from p2pchat.ui.format import clock_time, day_of, human_size
from p2pchat.ui.safe import clean, literal, one_line, shown_name
from p2pchat.ui.screens.guard import GuardedModal
from p2pchat.ui.widgets.error_line import ErrorLine
from p2pchat.ui.widgets.plain_input import PlainInput
from p2pchat.ui.widgets.transfers import TransferCard

# Offers list at most this many files in the modal; the rest are counted.
OFFER_LIST_LIMIT = 200
PANEL_LIMIT = 200


def downloads_folder(node: Node) -> Path | None:
    """Where accepted files go by default, when the node says (an attached view may not)."""
    policy = getattr(node.transfers, "policy", None)
    folder = getattr(policy, "downloads", None)
    return folder if isinstance(folder, Path) else None


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def _size_of(path: Path) -> str:
    try:
        return human_size(path.stat().st_size)
    except OSError:
        return "size unknown"


def _visible(paths: Iterable[Path]) -> list[Path]:
    return [p for p in paths if not p.name.startswith(".")]


class SafeTree(DirectoryTree):
    """A directory tree whose labels are literal.

    ``Tree`` parses ``str`` labels as markup, and file names in the downloads
    folder were chosen by whoever sent the files.
    """

    def process_label(self, label: str | Text) -> Text:
        if isinstance(label, Text):
            return Text(clean(label.plain))
        return Text(clean(label))


class FileTree(SafeTree):
    """Files and folders, hidden ones left out."""

    def filter_paths(self, paths: Iterable[Path]) -> Iterable[Path]:
        return _visible(paths)


class FolderTree(SafeTree):
    """Folders only: where received files may go."""

    def filter_paths(self, paths: Iterable[Path]) -> Iterable[Path]:
        return [p for p in _visible(paths) if _is_dir(p)]


def _typed_path(text: str, base: Path) -> Path:
    path = Path(text.strip()).expanduser()
    return path if path.is_absolute() else base / path


class FilePickerScreen(ModalScreen[list[Path] | None]):
    """Browse from the home folder: Enter on a file sends it; a button sends a folder.

    Dismisses with the paths to offer, or ``None``.
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Close")]

    def __init__(self, peer_name: str, *, start: Path | None = None) -> None:
        super().__init__()
        self.peer_name = shown_name(peer_name)
        self.start = start or Path.home()
        self.highlighted: Path | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="picker-card", classes="modal-card"):
            yield Static(literal(f"Send to {self.peer_name}"), classes="card-title")
            yield PlainInput(
                str(self.start), placeholder="type a path, Enter to go there", id="picker-path"
            )
            yield FileTree(self.start, id="picker-tree")
            yield Static(id="picker-hint")
            yield ErrorLine("", id="picker-error")
            with Horizontal(classes="buttons"):
                yield Button("Cancel", id="cancel", compact=True)
                yield Button("Send this folder", id="send-folder", compact=True)
                yield Button("Send file", id="send-file", variant="primary", compact=True)

    def on_mount(self) -> None:
        self.query_one(FileTree).focus()
        self._hint()

    @property
    def file_tree(self) -> FileTree:
        return self.query_one("#picker-tree", FileTree)

    def _folder(self) -> Path:
        """The folder "Send this folder" means: the highlighted one, or the file's."""
        path = self.highlighted
        if path is None:
            return Path(self.file_tree.path)
        return path if _is_dir(path) else path.parent

    def _hint(self) -> None:
        path = self.highlighted
        folder = display_folder(str(self._folder()))
        if path is not None and not _is_dir(path):
            text = f"Enter sends {path.name} ({_size_of(path)}) · the folder button sends {folder}"
        else:
            text = f"Enter on a file sends it · the folder button sends {folder}"
        self.query_one("#picker-hint", Static).update(literal(text))
        self.query_one("#send-file", Button).disabled = path is None or _is_dir(path)

    @on(Tree.NodeHighlighted, "#picker-tree")
    def _highlighted(self, event: Tree.NodeHighlighted[object]) -> None:
        data = event.node.data
        path = getattr(data, "path", None)
        self.highlighted = Path(path) if path is not None else None
        self._hint()

    @on(DirectoryTree.FileSelected, "#picker-tree")
    def _file_selected(self, event: DirectoryTree.FileSelected) -> None:
        event.stop()
        self.dismiss([event.path])

    @on(Button.Pressed, "#send-file")
    def _send_file(self) -> None:
        path = self.highlighted
        if path is not None and path.is_file():
            self.dismiss([path])

    @on(Button.Pressed, "#send-folder")
    def _send_folder(self) -> None:
        """A folder can hold a lot (the picker starts in the home folder): ask first,
        with its size and file count."""
        folder = self._folder()

        def answered(send: bool | None) -> None:
            if send:
                self.dismiss([folder])

        self.app.push_screen(
            ConfirmSendScreen([folder], self.peer_name, no_label="Cancel"), answered
        )

    @on(Input.Submitted, "#picker-path")
    def _typed(self, event: Input.Submitted) -> None:
        error = self.query_one("#picker-error", ErrorLine)
        path = _typed_path(event.value, Path(self.file_tree.path))
        if path.is_file():
            self.dismiss([path])
        elif path.is_dir():
            error.show("")
            self.file_tree.path = path
            self.highlighted = None
            self._hint()
            self.file_tree.focus()
        else:
            error.show(f"{event.value.strip()}: no such file or folder")

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class FolderPickerScreen(ModalScreen[Path | None]):
    """Where to save an offer: a folder tree and the path it fills in (or type one)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Close")]

    def __init__(self, title: str, *, initial: Path, start: Path | None = None) -> None:
        super().__init__()
        self.title_text = title
        self.initial = initial
        self.start = start or Path.home()

    def compose(self) -> ComposeResult:
        with Vertical(id="folder-card", classes="modal-card"):
            yield Static(literal(self.title_text), classes="card-title")
            yield PlainInput(
                str(self.initial), placeholder="a folder (created if missing)", id="folder-path"
            )
            yield FolderTree(self.start, id="folder-tree")
            yield ErrorLine("", id="folder-error")
            with Horizontal(classes="buttons"):
                yield Button("Cancel", id="cancel", compact=True)
                yield Button("Save here", id="save", variant="primary", compact=True)

    def on_mount(self) -> None:
        self.query_one("#folder-path", Input).focus()

    @on(Tree.NodeHighlighted, "#folder-tree")
    def _highlighted(self, event: Tree.NodeHighlighted[object]) -> None:
        path = getattr(event.node.data, "path", None)
        if path is not None:
            self.query_one("#folder-path", Input).value = str(path)

    @on(DirectoryTree.DirectorySelected, "#folder-tree")
    def _selected(self, event: DirectoryTree.DirectorySelected) -> None:
        event.stop()
        self.query_one("#folder-path", Input).value = str(event.path)

    @on(Input.Submitted, "#folder-path")
    @on(Button.Pressed, "#save")
    def _save(self) -> None:
        text = self.query_one("#folder-path", Input).value
        error = self.query_one("#folder-error", ErrorLine)
        if not text.strip():
            error.show("Type a folder, or pick one below.")
            return
        path = _typed_path(text, Path.home())
        if path.exists() and not path.is_dir():
            error.show(f"{path} is a file, not a folder.")
            return
        self.dismiss(path)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmSendScreen(ModalScreen[bool]):
    """A paste named files: send them, or paste the text after all (``False``)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "no", "Paste as text")]
    SHOWN = 8

    def __init__(
        self, paths: Sequence[Path], peer_name: str, *, no_label: str = "No, paste as text"
    ) -> None:
        super().__init__()
        self.paths = list(paths)
        self.peer_name = shown_name(peer_name)
        self.no_label = no_label

    def compose(self) -> ComposeResult:
        paths = self.paths
        count = len(paths)
        noun = "file" if count == 1 else "files"
        if any(_is_dir(p) for p in paths):
            noun = "item" if count == 1 else "items"
        listing = [
            f"{display_folder(str(p))}{'/' if _is_dir(p) else ''}" for p in paths[: self.SHOWN]
        ]
        if count > self.SHOWN:
            listing.append(f"… and {count - self.SHOWN} more")
        with Vertical(id="confirm-card", classes="modal-card"):
            yield Static(literal(f"Send {count} {noun} to {self.peer_name}?"), classes="card-title")
            yield Static(literal(describe_paths(paths)), classes="card-hint")
            yield Static(literal("\n".join(listing), multiline=True), id="confirm-paths")
            yield Static("counting files…", id="confirm-size", classes="card-hint")
            with Horizontal(classes="buttons"):
                yield Button(self.no_label, id="no", compact=True)
                yield Button("Send", id="yes", variant="primary", compact=True)

    def on_mount(self) -> None:
        self.query_one("#yes", Button).focus()
        self._count()

    @work(exclusive=True, group="count")
    async def _count(self) -> None:
        """Size and file count, from a thread: a big folder takes a while to walk."""
        found = await asyncio.to_thread(measure, self.paths)
        self.query_one("#confirm-size", Static).update(literal(f"In all: {found.describe()}"))

    @on(Button.Pressed, "#yes")
    def _yes(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#no")
    def action_no(self) -> None:
        self.dismiss(False)


class OfferScreen(GuardedModal[str | None]):
    """A contact offers files: the list with sizes, and Accept / Decline / Save as… / Later.

    Dismisses with ``"accepted"``, ``"declined"`` or ``None`` (answer later, from
    the card or the transfers panel).  The answer is given here, so an error
    (no disk space, the sender cancelled meanwhile) shows in place.  The list
    has the focus at first: a user typing when the offer pops up must not
    accept it with a stray Enter.
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "later", "Later")]

    def __init__(self, node: Node, info: TransferInfo, peer_name: str) -> None:
        super().__init__()
        self.node = node
        self.info = info
        self.peer_name = shown_name(peer_name)

    @property
    def transfer_id(self) -> str:
        return self.info.transfer_id

    def compose(self) -> ComposeResult:
        info = self.info
        count = len(info.files)
        files = f"{count} file{'s' if count != 1 else ''}"
        with Vertical(id="offer-card", classes="modal-card"):
            yield Static(
                literal(f"{self.peer_name} offers {one_line(info.title, 80)}"),
                classes="card-title",
            )
            yield Static(
                f"{files}, {human_size(info.total)} in all. Nothing is written to your disk "
                "unless you accept; every file is checked against its hash before it gets "
                "its name.",
                classes="card-text",
                markup=False,
            )
            with VerticalScroll(id="offer-files"):
                yield Static(self._listing(), id="offer-list")
            yield Static(self._target_line(), id="offer-target")
            yield ErrorLine("", id="offer-error")
            with Horizontal(classes="buttons"):
                yield Button("Later", id="later", compact=True)
                yield Button("Decline", id="decline", variant="error", compact=True)
                yield Button("Save as…", id="save-as", compact=True)
                yield Button("Accept", id="accept", variant="success", compact=True)

    def _listing(self) -> Content:
        shown = self.info.files[:OFFER_LIST_LIMIT]
        sizes = [human_size(size) for _, size in shown]
        width = max((len(s) for s in sizes), default=0)
        rows = [
            Content.assemble((s.rjust(width), "$text-muted"), "  ", one_line(path, 200))
            for (path, _), s in zip(shown, sizes, strict=True)
        ]
        extra = len(self.info.files) - len(shown)
        if extra > 0:
            rows.append(Content.styled(f"… and {extra} more", "$text-muted"))
        return Content("\n").join(rows)

    def _target_line(self) -> Content:
        folder = downloads_folder(self.node)
        where = display_folder(str(folder)) if folder else "the downloads folder"
        return Content.assemble(("Save to  ", "$text-muted"), (one_line(where, 200), "bold"))

    def on_mount(self) -> None:
        self.query_one("#offer-files", VerticalScroll).focus()

    def _answer(self, folder: Path | None) -> None:
        # The node raises TransferError, from p2pchat.net, which the UI may not import.
        try:
            self.node.accept_transfer(self.transfer_id, folder=folder)
        except OwnerUnavailable:
            raise  # the screen's guard tells the app (screens/guard.py)
        except Exception as exc:
            self.query_one("#offer-error", ErrorLine).show(str(exc))
            return
        self.dismiss("accepted")

    @on(Button.Pressed, "#accept")
    def _accept(self) -> None:
        self._answer(None)

    @on(Button.Pressed, "#save-as")
    def _save_as(self) -> None:
        def chosen(folder: Path | None) -> None:
            if folder is not None:
                self._answer(folder)

        self.app.push_screen(
            FolderPickerScreen(
                f"Save {self.peer_name}'s files in…",
                initial=downloads_folder(self.node) or Path.home(),
            ),
            chosen,
        )

    @on(Button.Pressed, "#decline")
    def _decline(self) -> None:
        try:
            self.node.decline_transfer(self.transfer_id)
        except OwnerUnavailable:
            raise  # the screen's guard tells the app (screens/guard.py)
        except Exception as exc:  # see _answer
            self.query_one("#offer-error", ErrorLine).show(str(exc))
            return
        self.dismiss("declined")

    @on(Button.Pressed, "#later")
    def action_later(self) -> None:
        self.dismiss(None)

    def transfer_changed(self, info: TransferInfo) -> None:
        """Answered elsewhere (CLI, card, panel) or cancelled by the sender: nothing to ask."""
        if info.transfer_id == self.transfer_id and not info.awaiting_answer and self.is_attached:
            self.dismiss(None)

    def transfer_progress(
        self, transfer_id: str, done: int, total: int, rate: float | None
    ) -> None:
        return None


class TransfersScreen(GuardedModal[None]):
    """Every transfer, newest first, with progress and the actions of each state.

    The main screen feeds it the same updates as the conversation's cards and
    carries out the cards' actions (``on_action``).
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,f3", "close", "Close")]

    def __init__(
        self,
        infos: Sequence[TransferInfo],
        *,
        names: Callable[[str], str],
        my_name: str,
        rates: dict[str, float],
        tz: dt.tzinfo | None,
        today: dt.date,
        on_action: Callable[[TransferCard.Action], None],
    ) -> None:
        super().__init__()
        self.infos = sorted(infos, key=lambda i: i.created_at, reverse=True)[:PANEL_LIMIT]
        self.names = names
        self.my_name = my_name
        self.rates = rates
        self.tz = tz
        self.today = today
        self.on_action = on_action
        self._cards: dict[str, TransferCard] = {}

    def compose(self) -> ComposeResult:
        with Vertical(id="transfers-card", classes="modal-card"):
            yield Static("Transfers", classes="card-title")
            yield Static(self._summary(), id="transfers-summary", classes="card-hint")
            with VerticalScroll(id="transfers-list"):
                for info in self.infos:
                    yield self._card(info)
                yield Static(
                    "No transfers yet. Send files with Ctrl+O, /send PATH or by dropping "
                    "them on the message box.",
                    id="transfers-empty",
                    classes="conv-empty",
                )
            with Horizontal(classes="buttons"):
                yield Button("Close", id="close", compact=True)

    def on_mount(self) -> None:
        self._show_empty()
        cards = list(self._cards.values())
        if cards:
            cards[0].focus()
        else:
            self.query_one("#close", Button).focus()

    def _summary(self) -> str:
        infos = self.infos
        active = sum(1 for i in infos if i.moving)
        waiting = sum(1 for i in infos if i.awaiting_answer)
        parts = [f"{len(infos)} transfer{'s' if len(infos) != 1 else ''}"]
        if active:
            parts.append(f"{active} active")
        if waiting:
            parts.append(f"{waiting} waiting for your answer")
        return " · ".join(parts)

    def _card(self, info: TransferInfo) -> TransferCard:
        name = self.names(info.peer_id)
        day = day_of(info.created_at, self.tz)
        when = (
            clock_time(info.created_at, self.tz)
            if day == self.today
            else f"{day.day} {day.strftime('%b')}"
        )
        card = TransferCard(
            info,
            author=name if info.incoming else self.my_name,
            peer_name=name,
            tz=self.tz,
            time_text=when,
            with_peer=True,
            rate=self.rates.get(info.transfer_id),
        )
        self._cards[info.transfer_id] = card
        return card

    def _show_empty(self) -> None:
        self.query_one("#transfers-empty", Static).display = not self._cards

    def card(self, transfer_id: str) -> TransferCard | None:
        return self._cards.get(transfer_id)

    def cards(self) -> list[TransferCard]:
        return list(self._cards.values())

    def transfer_changed(self, info: TransferInfo) -> None:
        card = self._cards.get(info.transfer_id)
        if card is not None:
            card.update_info(info)
        else:
            self.infos.insert(0, info)
            holder = self.query_one("#transfers-list", VerticalScroll)
            holder.mount(self._card(info), before=0)
            self._show_empty()
        self.infos = [info if i.transfer_id == info.transfer_id else i for i in self.infos]
        self.query_one("#transfers-summary", Static).update(self._summary())

    def transfer_progress(
        self, transfer_id: str, done: int, total: int, rate: float | None
    ) -> None:
        card = self._cards.get(transfer_id)
        if card is not None:
            card.set_progress(done, total, rate)

    @on(TransferCard.Action)
    def _action(self, event: TransferCard.Action) -> None:
        event.stop()
        self.on_action(event)

    @on(Button.Pressed, "#close")
    def action_close(self) -> None:
        self.dismiss(None)
