"""The Textual application: boots a node for one home and hands it to the main screen.

The app owns the node's lifetime.  It opens the identity (asking for a
passphrase or running the first-run setup when needed), starts the network
inside the app's own event loop, forwards ``Node.events()`` to whichever
screen is in front, and stops the node when the app exits.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, cast

from textual import work
from textual.app import App
from textual.binding import Binding, BindingType
from textual.notifications import SeverityLevel
from textual.screen import Screen
from textual.theme import Theme

from p2pchat.config import (
    ConfigError,
    NodeAlreadyRunning,
    NodeLock,
    Paths,
    load_settings,
    save_settings,
)
from p2pchat.identity import IdentityError, PassphraseRequired, WrongPassphrase
from p2pchat.node import Node, NodeError
from p2pchat.owner import answers, hand_off, start_owned
from p2pchat.remote import (
    OwnerGone,
    OwnerNotResponding,
    OwnerUnavailable,
    RemoteNode,
    attach_or_own,
)
from p2pchat.store import StoreError
from p2pchat.ui.format import Clock
from p2pchat.ui.messages import NodeEventArrived
from p2pchat.ui.palette import ChatCommands, PaletteCommand
from p2pchat.ui.safe import clean, one_line
from p2pchat.ui.screens.main import MainScreen, Mode
from p2pchat.ui.screens.passphrase import passphrase_command
from p2pchat.ui.screens.quit import QuitScreen
from p2pchat.ui.screens.setup import (
    FatalScreen,
    FirstRunScreen,
    InviteScreen,
    NodeBusyScreen,
    PassphraseScreen,
    StartingScreen,
)

log = logging.getLogger(__name__)

DARK_THEME = "textual-dark"
ATTACHED = "attached to the running daemon"
# How often a stopped owner is asked again whether it answers.
OWNER_PROBE_INTERVAL = 1.0
# A toast says what happened in a few lines; the rest of a long error is noise.
NOTIFY_LIMIT = 400
LIGHT_THEME = "textual-light"


class ChatApp(App[int]):
    """p2pchat in the terminal.

    ``clock`` and ``tz`` exist so tests and screenshots can pin what time the
    screen shows; ``network=False`` opens the store without going online
    (snapshot tests use it; so does the read-only fallback).
    ``start_options`` go to ``Node.start`` as they are: LAN discovery and DHT
    options are built by the caller, since the UI may not import the network
    package that defines them.
    """

    CSS_PATH = "app.tcss"
    TITLE = "p2pchat"
    COMMANDS = App.COMMANDS | {ChatCommands}
    # Textual types this as an instance attribute, so it cannot be annotated ClassVar here.
    HORIZONTAL_BREAKPOINTS = [  # noqa: RUF012
        (0, "-tiny"),
        (72, "-narrow"),
        (110, "-wide"),
    ]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (32, "-tall")]  # noqa: RUF012
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+t", "toggle_theme", "Theme", id="toggle_theme"),
        Binding("ctrl+q", "quit", "Quit", id="quit", priority=True),
    ]

    def __init__(
        self,
        paths: Paths,
        *,
        passphrase: str | None = None,
        listen: str | None = None,
        clock: Clock = time.time,
        tz: dt.tzinfo | None = None,
        network: bool = True,
        start_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.paths = paths
        self.passphrase = passphrase
        self.listen = listen
        self.clock = clock
        self.tz = tz
        self.network = network
        self.start_options = dict(start_options or {})
        self.node: Node | None = None
        self.main: MainScreen | None = None
        self.bell_enabled = False
        self._stopping = False
        self._recovering = False
        # The passphrase typed at start (for a hand-off to a daemon).
        self._passphrase_used: str | None = None

    # -------------------------------------------------------------- boot
    def on_mount(self) -> None:
        self.theme_changed_signal.subscribe(self, self._theme_changed)
        self.push_screen(StartingScreen())
        self._boot()

    def _starting(self, text: str) -> None:
        screen = self.screen
        if isinstance(screen, StartingScreen):
            screen.say(text)

    @work(exclusive=True, group="boot")
    async def _boot(self) -> None:
        """Identity, node, network, then the main screen; every failure ends on a screen."""
        try:
            settings = load_settings(self.paths)
        except ConfigError as exc:
            await self._fatal("Cannot read the settings", str(exc))
            return
        self.apply_settings(settings)
        mode: Mode = "online" if self.network else "offline"
        detail = ""
        while self.network and NodeLock(self.paths).is_held_elsewhere():
            if await self._attach_to_daemon():
                return
            choice = await self.push_screen_wait(
                NodeBusyScreen(str(self.paths.home), self._lock_detail())
            )
            if choice == "retry":
                continue
            if choice != "read-only":
                self.exit(0)
                return
            mode, detail = "read-only", "a p2pchat daemon runs for this home"
            break
        first_run = not self.paths.identity.exists()
        passphrase = self.passphrase
        if first_run:
            if mode == "read-only":
                await self._fatal("No identity", f"There is no identity in {self.paths.home}.")
                return
            result = await self.push_screen_wait(FirstRunScreen(self.paths))
            if result is None:
                self.exit(0)
                return
            passphrase = result.passphrase
        self._starting("Opening your identity…")
        node = await self._open_node(passphrase)
        if node is None:
            return
        self.node = node
        self.apply_settings(node.settings)
        self._pump_events(node)
        # Let the pump subscribe before the node can emit anything.
        for _ in range(3):
            await asyncio.sleep(0)
        if mode == "online":
            self._starting("Starting the network…")
            mode, detail = await self._start_network(node)
        if first_run:
            await self.push_screen_wait(
                InviteScreen(node.name, node.invite(), node.identity.fingerprint)
            )
        self.main = MainScreen(
            node, clock=self.clock, tz=self.tz, mode=mode, detail=detail, bell=self.bell_enabled
        )
        await self.switch_screen(self.main)

    async def _attach_to_daemon(self) -> bool:
        """A daemon runs for this home: become its face instead of a second node."""
        self._starting("Attaching to the running node…")
        # Asked without blocking first: RemoteNode's calls block, and a stopped
        # owner (SIGSTOP) would freeze this screen until they time out.
        if not await answers(self.paths):
            log.warning("the running node does not answer on its control socket")
            return False
        remote = RemoteNode(self.paths, clock=self.clock)
        try:
            await remote.start()
        except (NodeError, OSError) as exc:
            log.warning("cannot attach to the running node: %s", exc)
            return False
        # RemoteNode offers every Node method the app uses, with the same types.
        node = cast(Node, remote)
        self.node = node
        self.apply_settings(remote.settings)
        self._pump_events(node)
        self.main = MainScreen(
            node,
            clock=self.clock,
            tz=self.tz,
            mode="online",
            detail=ATTACHED,
            bell=self.bell_enabled,
        )
        await self.switch_screen(self.main)
        return True

    def _lock_detail(self) -> str:
        try:
            pid = self.paths.lock.read_text(encoding="utf-8").strip()
        except OSError:
            pid = ""
        where = f"Home: {self.paths.home}"
        return f"{where}\nProcess: {pid}" if pid else where

    async def _open_node(self, passphrase: str | None) -> Node | None:
        async def unlock(secret: str | None) -> Node:
            # Unsealing runs Argon2id: a thread keeps the screen responsive meanwhile.
            node = await asyncio.to_thread(Node, self.paths, passphrase=secret, clock=self.clock)
            self._passphrase_used = secret
            return node

        error: str | None = None
        try:
            return await unlock(passphrase)
        except PassphraseRequired:
            pass
        except WrongPassphrase:
            error = "Wrong passphrase, try again."
        except (IdentityError, ConfigError, StoreError, OSError) as exc:
            await self._fatal("Cannot open your identity", str(exc))
            return None
        node = await self.push_screen_wait(PassphraseScreen(str(self.paths.home), unlock, error))
        if node is None:
            self.exit(0)
        return node

    async def _start_network(self, node: Node) -> tuple[Mode, str]:
        try:
            # The app that starts the node owns it: it serves the control socket too,
            # so the CLI and other views attach to this node.
            await start_owned(node, listen=self.listen, **self.start_options)
        except NodeAlreadyRunning as exc:
            self.notify(str(exc), title="Read-only", severity="warning", markup=False)
            return "read-only", "a p2pchat daemon runs for this home"
        except Exception as exc:  # the socket layer reports bind failures in several types
            log.warning("network did not start: %s", exc)
            self.notify(
                f"{exc}. Messages will be queued and sent by the next node that runs.",
                title="Offline",
                severity="error",
                timeout=15,
                markup=False,
            )
            return "offline", f"cannot listen: {exc}"
        return "online", ""

    async def _fatal(self, title: str, detail: str) -> None:
        await self.push_screen_wait(FatalScreen(title, detail))
        self.exit(1, return_code=1)

    @work(exclusive=True, group="events")
    async def _pump_events(self, node: Node) -> None:
        async for event in node.events():
            if self.main is not None:
                self.main.post_message(NodeEventArrived(event))

    # ------------------------------------------------- losing an attached node
    def owner_unavailable(self, error: OwnerUnavailable) -> None:
        """The attached node's owner went away or does not answer (``GuardedScreen``).

        Gone: take the node over (run it here, or attach to whoever owns it now).
        Not answering (stopped, hung): say so and wait, asking without blocking,
        until it answers again or goes away.
        """
        main = self.main
        if main is None or main.detached or self._recovering:
            return
        self._recovering = True
        if isinstance(error, OwnerNotResponding):
            main.suspend(
                "The node this app is attached to does not answer (is the daemon stopped?). "
                "What you type stays here; waiting for it…"
            )
            self._wait_for_owner()
        else:
            main.suspend(
                f"The node this app was attached to went away ({error}). "
                "Taking it over… what you type stays here."
            )
            self._take_over()

    @work(exclusive=True, group="recover")
    async def _wait_for_owner(self) -> None:
        while True:
            await asyncio.sleep(OWNER_PROBE_INTERVAL)
            if await answers(self.paths):
                if self.main is not None and self.node is not None:
                    try:
                        self.main.resume()
                    except OwnerUnavailable:
                        # The view's own connection still counts the owner as silent
                        # for a moment after a timeout: try again at the next probe.
                        continue
                self._recovering = False
                return
            if not NodeLock(self.paths).is_held_elsewhere():
                self._recovering = False
                self.owner_unavailable(OwnerGone("its process ended"))
                return

    @work(exclusive=True, group="recover")
    async def _take_over(self) -> None:
        old = self.node
        self.workers.cancel_group(self, "events")
        delay = 1.0
        while True:
            try:
                new = await self._take_over_once(old, self.passphrase)
            except (PassphraseRequired, WrongPassphrase):
                asked = await self._ask_passphrase_for_take_over(old)
                if asked is None:
                    return
                new = asked
            except (NodeError, IdentityError, ConfigError, StoreError, OSError) as exc:
                if self.main is not None:
                    self.main.suspend(
                        f"Cannot take the node over yet: {exc}. Trying again in {delay:.0f} s…"
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            break
        self._adopt(new)

    async def _take_over_once(self, old: Node | None, passphrase: str | None) -> Node | RemoteNode:
        if isinstance(old, RemoteNode):
            return await old.take_over(
                passphrase=passphrase, listen=self.listen, **self.start_options
            )
        return await attach_or_own(
            self.paths,
            passphrase=passphrase,
            clock=self.clock,
            listen=self.listen,
            **self.start_options,
        )

    async def _ask_passphrase_for_take_over(self, old: Node | None) -> Node | RemoteNode | None:
        async def unlock(secret: str) -> Node:
            return cast(Node, await self._take_over_once(old, secret))

        node = await self.push_screen_wait(
            PassphraseScreen(
                str(self.paths.home),
                unlock,
                "The node's owner went away: unlock the identity to run it here.",
            )
        )
        if node is None:
            self.exit(0)
        return node

    def _adopt(self, new: Node | RemoteNode) -> None:
        """The node (ours now, or a new owner's) replaces the lost one; the screen stays."""
        node = cast(Node, new)
        self.node = node
        self._recovering = False
        self._pump_events(node)
        main = self.main
        if main is None:
            return
        if isinstance(new, RemoteNode):
            main.resume(node, mode="online", detail=ATTACHED)
            text = "Attached to the node's new owner."
        else:
            main.resume(node, mode="online", detail="")
            text = "This app runs the node now: quitting it takes you offline."
        main.notices.post("owner", "Node taken over", text, timeout=10)

    # ---------------------------------------------------------- shutdown
    async def action_quit(self) -> None:
        """Say what quitting does (offline or not, transfers), then quit or hand off."""
        top = self.screen
        if isinstance(top, QuitScreen):
            top.dismiss("quit")  # Ctrl+Q twice
            return
        main, node = self.main, self.node
        if main is None or node is None or not main.live or main.mode == "read-only":
            await self.stop_node()
            self.exit(0)
            return
        owns = not isinstance(node, RemoteNode)
        if owns and not node.running:
            await self.stop_node()
            self.exit(0)
            return
        try:
            running = len(node.running_transfers())
        except OwnerUnavailable:
            running = 0
        self.push_screen(QuitScreen(owns_node=owns, running_transfers=running), self._quit_answered)

    def _quit_answered(self, choice: str | None) -> None:
        if choice == "quit":
            self.run_worker(self._quit(), group="quit")
        elif choice == "background":
            self.run_worker(self._quit_to_background(), group="quit")

    async def _quit(self) -> None:
        await self.stop_node()
        self.exit(0)

    async def _quit_to_background(self) -> None:
        """Hand the node to a daemon (``owner.hand_off``), then leave: still reachable."""
        node = self.node
        if node is None or isinstance(node, RemoteNode):
            await self._quit()
            return
        if self.main is not None:
            self.main.detach()
        self.workers.cancel_group(self, "events")
        self.notify("Starting a daemon to keep the node running…", timeout=30)
        try:
            pid = await hand_off(node, passphrase=self.passphrase or self._passphrase_used)
        except (NodeError, OSError) as exc:
            self.node = None
            await self._fatal(
                "The node could not be handed to a daemon",
                f"{exc}\n\nThe node is stopped; start p2pchat (or p2pchat daemon) again.",
            )
            return
        self.node = None
        self.exit(
            0,
            message=(
                f"p2pchat keeps running in the background (daemon, pid {pid}): you stay "
                "reachable. Run p2pchat to open it again, or p2pchat stop to stop it."
            ),
        )

    async def on_unmount(self) -> None:
        await self.stop_node()

    async def stop_node(self) -> None:
        """Say we stopped typing, stop the node, release the home (idempotent)."""
        node, self.node = self.node, None
        if node is None:
            return
        if self.main is not None:
            self.main.detach()
        self.workers.cancel_group(self, "events")
        await node.stop()

    # ------------------------------------------------------ notifications
    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = True,
    ) -> None:
        """Every toast of the app, shown as literal text whatever ``markup`` says.

        Toasts carry names, file names and error words that peers chose; as
        markup, ``[`` in any of them would restyle the toast, run an action or
        raise ``MarkupError``.  Widgets' and screens' ``notify`` land here too.
        """
        super().notify(
            clean(message, multiline=True, limit=NOTIFY_LIMIT),
            title=one_line(title, 80),
            severity=severity,
            timeout=timeout,
            markup=False,
        )

    # ---------------------------------------------------------- settings
    def apply_settings(self, settings: dict[str, Any]) -> None:
        """Theme, key bindings and bell from ``settings.json`` (see docs/ui.md)."""
        theme = settings.get("theme")
        if isinstance(theme, str) and theme in self.available_themes:
            self.theme = theme
        keys = settings.get("keys")
        if isinstance(keys, dict):
            keymap = {k: v for k, v in keys.items() if isinstance(k, str) and isinstance(v, str)}
            self.set_keymap(keymap)
        self.bell_enabled = settings.get("bell") is True

    def save_setting(self, key: str, value: object) -> None:
        """Write one setting through the node's own dict, so neither overwrites the other.

        The node rewrites the whole settings file when it changes its own keys;
        writing a separate copy here would be lost at its next save.
        """
        if self.node is not None:
            if self.node.settings.get(key) != value:
                try:
                    self.node.update_settings(**{key: value})
                except OSError as exc:
                    self.notify(f"Cannot save settings: {exc}", severity="error", markup=False)
            return
        else:
            try:
                settings = load_settings(self.paths)
            except ConfigError:
                return
        if settings.get(key) == value:
            return
        settings[key] = value
        try:
            save_settings(self.paths, settings)
        except OSError as exc:
            self.notify(f"Cannot save settings: {exc}", severity="error", markup=False)

    def _theme_changed(self, theme: Theme) -> None:
        if self.node is not None:
            self.save_setting("theme", theme.name)

    def action_toggle_theme(self) -> None:
        self.theme = LIGHT_THEME if self.current_theme.dark else DARK_THEME

    def action_toggle_bell(self) -> None:
        self.bell_enabled = not self.bell_enabled
        if self.main is not None:
            self.main.bell = self.bell_enabled
        self.save_setting("bell", self.bell_enabled)
        self._alerts_changed()

    def action_toggle_desktop(self) -> None:
        on = not self._desktop_enabled()
        self.save_setting("desktop_notifications", on)
        self._alerts_changed()

    def _desktop_enabled(self) -> bool:
        settings = self.node.settings if self.node is not None else {}
        return settings.get("desktop_notifications") is True

    def _alerts_changed(self) -> None:
        """The status bar says which alerts are on; a toast confirms the change."""
        bell = "on" if self.bell_enabled else "off"
        desktop = "on" if self._desktop_enabled() else "off"
        if self.main is not None and not self.main.detached:
            self.main.refresh_sidebar()
        self.notify(f"Bell {bell}, desktop notifications {desktop}", timeout=3)

    def action_show_offer(self, transfer_id: str) -> None:
        """The file offer notification's link: open that conversation and ask."""
        if self.main is not None and not self.main.detached:
            self.main.show_offer(transfer_id)

    def palette_commands(self, screen: Screen[Any] | None = None) -> Iterator[PaletteCommand]:
        if screen is None:
            screen = self.screen
        if isinstance(screen, MainScreen):
            yield from screen.palette_commands()
        yield "Toggle light/dark theme", "Saved in settings.json", self.action_toggle_theme
        bell = "on" if self.bell_enabled else "off"
        desktop = "on" if self._desktop_enabled() else "off"
        yield (
            f"Toggle bell (now {bell})",
            "Ring the terminal bell on news outside the open conversation",
            self.action_toggle_bell,
        )
        yield (
            f"Toggle desktop notifications (now {desktop})",
            "Also show news as desktop notifications (notify-send, osascript)",
            self.action_toggle_desktop,
        )
        if self.node is not None:
            yield passphrase_command(self, self.node)
        yield "Quit p2pchat", "Says first whether it takes you offline", self._quit_from_palette

    def _quit_from_palette(self) -> None:
        self.run_worker(self.action_quit(), group="quit")
