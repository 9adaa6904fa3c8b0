"""Groups through the command line, against real daemons (and a group file drop)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .daemons import Daemon, free_udp_port, run_cli
from .test_cli import init


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 30) -> None:
    """Poll a daemon through its control socket (cheaper than a CLI process per poll)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


def cli_json(home: Path, *args: str) -> Any:
    done = run_cli(home, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def test_group_commands_between_daemons(tmp_path: Path) -> None:
    homes = {name: tmp_path / name for name in ("alice", "bob", "carol")}
    for name, home in homes.items():
        init(home, name)
    daemons = {
        name: Daemon(home, f"127.0.0.1:{free_udp_port()}", extra=["--downloads", str(home / "dl")])
        for name, home in homes.items()
    }  # fmt: skip
    for d in daemons.values():
        await d.start()
    try:
        alice = homes["alice"]
        for other in ("bob", "carol"):  # contacts of alice (set up without the CLI)
            invite = (await daemons[other].call("info"))["invite"]
            await daemons["alice"].call("add", ref=invite)
            back = (await daemons["alice"].call("info"))["invite"]
            await daemons[other].call("add", ref=back)
        created = cli_json(alice, "group", "create", "book club", "--member", "bob")
        group = created["group_id"]
        assert created["members"] == 2 and created["role"] == "admin"
        added = cli_json(alice, "group", "add", "book club", "carol")
        assert added["members"] == 3

        for name in ("bob", "carol"):

            async def invited(d: Daemon = daemons[name]) -> bool:
                return any(g["status"] == "invited" for g in await d.call("groups"))

            await eventually(invited)
            joined = cli_json(homes[name], "group", "accept", group[:8])
            assert joined["status"] == "joined"
        sent = cli_json(alice, "group", "msg", "book club", "chapter one?", "--wait", "20")
        assert sent["delivered"] >= 2, sent

        for name in ("bob", "carol"):

            async def arrived(d: Daemon = daemons[name]) -> bool:
                got = await d.call("group_history", group=group)
                return [m["text"] for m in got] == ["chapter one?"]

            await eventually(arrived)
        history = cli_json(homes["carol"], "group", "history", "book club")
        assert [(m["author_name"], m["text"]) for m in history] == [("alice", "chapter one?")]
        members = cli_json(homes["bob"], "group", "members", "book club")
        roles = sorted((m["role"], m["is_me"], m["is_contact"]) for m in members)
        # alice (admin, a contact), bob himself, carol (a member bob never added)
        assert roles == [("admin", False, True), ("member", False, False), ("member", True, False)]
        # A file to the group: bob (not carol's contact) offers, carol accepts hers.
        (tmp_path / "notes.txt").write_text("margin notes\n")
        shared = cli_json(homes["bob"], "group", "send", "book club", str(tmp_path / "notes.txt"))
        assert len(shared["transfers"]) == 2

        async def offer_for_carol() -> str | None:
            for m in await daemons["carol"].call("group_history", group=group):
                if m["kind"] == "files" and m["transfer_id"]:
                    return str(m["transfer_id"])
            return None

        async def offered() -> bool:
            return await offer_for_carol() is not None

        await eventually(offered)
        tid = await offer_for_carol()
        assert tid is not None
        accepted = run_cli(homes["carol"], "accept-file", tid)
        assert accepted.returncode == 0, accepted.stderr

        async def done() -> bool:
            return bool((await daemons["carol"].call("transfer", id=tid))["state"] == "done")

        await eventually(done, timeout=40)
        assert (homes["carol"] / "dl" / "notes.txt").read_text() == "margin notes\n"
        # carol leaves; alice removes bob; what remains converges.
        assert cli_json(homes["carol"], "group", "leave", "book club")["status"] == "left"
        cli_json(alice, "group", "remove", "book club", "bob")

        async def settled() -> bool:
            mine = await daemons["alice"].call("group", group=group)
            bobs = await daemons["bob"].call("group", group=group)
            return bool(mine["members"] == 1 and bobs["status"] == "removed")

        await eventually(settled)
        failed = run_cli(homes["bob"], "group", "msg", "book club", "hello?")
        assert failed.returncode == 1 and "not taking part" in failed.stderr
        unknown = run_cli(alice, "group", "history", "no such group")
        assert unknown.returncode == 5
    finally:
        for d in daemons.values():
            await d.stop()
