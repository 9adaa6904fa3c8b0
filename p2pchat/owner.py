"""Owning a home's node: starting it with its control socket, and handing it on.

One node runs per home (``NodeLock``).  Whichever process starts first (the
daemon, or the terminal app) owns it; every other view or CLI command reaches
it over the control socket.  ``Node`` is only the facade and
``net/control.py`` only a socket server, and neither knows the other: this
module composes them.  So the import direction is owner -> node, rpc, net and
never back.

It also hands a node on: ``hand_off`` stops the app's own node and leaves a
``p2pchat daemon`` running for the home in its place (the app quits, the node
stays reachable), and ``spawn_daemon`` is what ``p2pchat daemon --detach`` uses.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from p2pchat import rpc
from p2pchat.config import PASSPHRASE_ENV, Paths
from p2pchat.identity import IdentityError, is_sealed
from p2pchat.net.control import ControlClient, ControlError, ControlServer
from p2pchat.net.dht import DhtOptions
from p2pchat.net.mdns import MdnsOptions
from p2pchat.node import Node, NodeError

log = logging.getLogger(__name__)

READY_TIMEOUT = 30.0
LOG_NAME = "daemon.log"
# Popen objects of daemons we started and will not wait for: kept so they are not
# collected (and warned about) while this process lives.
_detached: list[subprocess.Popen[bytes]] = []


class HandOffError(NodeError):
    """The daemon meant to take the node over did not come up."""


def control_server(node: Node, *, shutdown: Callable[[], None] | None = None) -> ControlServer:
    """The control socket for ``node``: ``rpc`` operations and the event stream.

    ``shutdown`` answers the ``shutdown`` operation (``p2pchat stop``); an owner
    without one (the terminal app) refuses it, since quitting is the user's call.
    """

    async def handle(op: str, args: dict[str, Any]) -> Any:
        if op == "shutdown":
            if shutdown is None:
                raise NodeError("this node belongs to the terminal app: quit it there")
            shutdown()
            return "stopping"
        return await rpc.call(node, op, args)

    def events() -> AsyncIterator[dict[str, Any]]:
        # Subscribed here, when the server takes the request, not at the first
        # iteration: the server acknowledges the subscription before it iterates, and
        # an event emitted in between would reach nobody.
        stream = node.events()

        async def as_json() -> AsyncIterator[dict[str, Any]]:
            try:
                async for event in stream:
                    yield rpc.event_to_json(event)
            finally:
                await stream.aclose()

        return as_json()

    return ControlServer(node.paths.control_socket, handle, events)


async def start_owned(
    node: Node, *, shutdown: Callable[[], None] | None = None, **start_options: Any
) -> None:
    """Start ``node`` (``Node.start`` options) and serve its control socket.

    The server stops first when the node stops (``Node.on_stop``), so views
    attached to this node learn at once that it is going away.
    """
    await node.start(**start_options)
    server = control_server(node, shutdown=shutdown)
    try:
        await server.start()
    except BaseException:
        await node.stop()
        raise
    node.on_stop(server.stop)


def daemon_args(node: Node) -> list[str]:
    """``p2pchat daemon`` options that run a node the way ``node`` was started."""
    options = node.start_options
    args: list[str] = []
    listen = node.listen_address
    if listen:
        args += ["--listen", listen]
    downloads = options.get("downloads")
    if downloads is not None:
        args += ["--downloads", str(downloads)]
    accept = options.get("accept_files_from") or ()
    for ref in (accept,) if isinstance(accept, str) else accept:
        args += ["--accept-files-from", str(ref)]
    mdns = options.get("mdns")
    if isinstance(mdns, MdnsOptions):
        for interface in mdns.interfaces:
            args += ["--mdns-interface", interface]
        if mdns.hidden:
            args.append("--mdns-hidden")
        if mdns.share_name:
            args.append("--mdns-share-name")
    else:
        args.append("--no-mdns")
    dht = options.get("dht")
    if isinstance(dht, DhtOptions):
        # No bootstrap node means the first node of a swarm: it names itself.
        for entry in dht.bootstrap or ((listen,) if listen else ()):
            args += ["--bootstrap", entry]
    else:
        args.append("--no-dht")
    for entry in options.get("rendezvous") or ():
        args += ["--rendezvous", str(entry)]
    if options.get("relay"):
        args.append("--relay")
    return args


async def spawn_daemon(
    paths: Paths,
    args: Sequence[str] = (),
    *,
    passphrase: str | None = None,
    timeout: float = READY_TIMEOUT,
) -> int:
    """Start ``p2pchat daemon ARGS`` for ``paths`` in its own session; return its pid
    once its control socket answers.

    The daemon outlives this process (it is not our child in any way that
    matters: new session, no terminal, output appended to ``daemon.log`` in the
    home, or discarded when the identity has a passphrase).  A sealed identity's
    passphrase reaches it through its environment, which only the same user can
    read.  If it exits before it is ready, the end of its log is in the error.
    """
    paths.ensure()
    log_path: Path | None = paths.home / LOG_NAME
    if _has_passphrase(paths):
        # Log lines name contacts (key mismatches, repaired names): a home whose
        # history is encrypted at rest keeps none in clear (docs/storage.md).
        log_path = None
    env = dict(os.environ)
    env.pop(PASSPHRASE_ENV, None)
    if passphrase:
        env[PASSPHRASE_ENV] = passphrase
    argv = [sys.executable, "-m", "p2pchat", "--home", str(paths.home), "daemon", *args]
    fd = (
        os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        if log_path is not None
        else os.open(os.devnull, os.O_WRONLY)
    )
    try:
        # Not asyncio's subprocess: that ties the child to this loop's watcher, and
        # this child must outlive the loop.  Popen only forks and execs here.
        proc = subprocess.Popen(  # noqa: ASYNC220
            argv,
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(fd)
    _detached.append(proc)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if proc.poll() is not None:
            why = (
                _tail(log_path)
                if log_path is not None
                else "run `p2pchat daemon` in a terminal to see why (a home with a "
                "passphrase keeps no daemon.log)"
            )
            raise HandOffError(f"the daemon exited ({proc.returncode}) before it was ready: {why}")
        if await answers(paths):
            return proc.pid
        if loop.time() > deadline:
            proc.terminate()
            raise HandOffError(f"the daemon did not answer within {timeout:g} s")
        await asyncio.sleep(0.05)


async def answers(paths: Paths) -> bool:
    """Whether a node answers on the home's control socket right now."""
    client = ControlClient(paths.control_socket, timeout=2.0)
    try:
        await client.connect()
        await client.call("info", {})
    except (OSError, ControlError):
        return False
    finally:
        await client.close()
    return True


async def hand_off(
    node: Node, *, passphrase: str | None = None, timeout: float = READY_TIMEOUT
) -> int:
    """Stop this process's node and leave a daemon running it; return the daemon's pid.

    For an app that quits while the user wants to stay reachable (or a transfer
    is running: it resumes from the ``.part`` files).  The daemon gets the
    node's options (listen address, LAN discovery, DHT, downloads); it can only
    take the home's lock once this node released it, so the node stops first.
    """
    if not node.running:
        raise NodeError("this node is not running: there is nothing to hand off")
    args = daemon_args(node)
    paths = node.paths
    await node.stop()
    return await spawn_daemon(paths, args, passphrase=passphrase, timeout=timeout)


def _has_passphrase(paths: Paths) -> bool:
    try:
        return is_sealed(paths.identity)
    except IdentityError:
        return False  # the daemon itself will say what is wrong with the key file


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return " | ".join(line for line in text.strip().splitlines()[-lines:]) or "(empty log)"
