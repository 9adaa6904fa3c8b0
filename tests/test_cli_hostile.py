"""Hostile text from peers through every CLI command, human and JSON output.

A contact (mallory) and a stranger (eve), both real nodes over real QUIC, put
markup, ANSI and OSC escapes, bidi controls, zero-width characters and a
10,000-character body into everything they control: display names, messages,
a request preview, a file name.  Alice runs a real daemon; her CLI must print
none of it as control bytes (human output), and give it back intact, as valid
JSON, to scripts.
"""

from __future__ import annotations

import asyncio
import json
import unicodedata
from pathlib import Path

from p2pchat.config import load_settings, save_settings
from p2pchat.names import repair_name

from .conftest import StartNode, free_udp_port, make_home, wait_until
from .daemons import Daemon, run_cli

MARKUP = "[red]x[/] [link=file:///etc/passwd]EVIL[/link] [@click=app.quit]q[/]"
ESCAPES = "\x1b[31mred\x1b[0m \x1b]52;c;cHduZWQ=\x07 \x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\"
BIDI = "\u202egnp.exe \u2066isolate\u2069 \u200fRLM"
INVISIBLE = "zero\u200bwidth\u200d\ufeff joiner\u2060"
BODY = (MARKUP + " " + ESCAPES + " " + BIDI + " " + INVISIBLE + " ") * 60
BODY = BODY[:10_000]
NAME = "[link=file:///etc/passwd][reverse]EVIL[/][/link] \u202egnp.exe"
FILE_NAME = "[red]x [reverse]EVIL [@click=app.quit]q.txt"  # no "/": it is a file name


def unsafe_chars(text: str) -> list[str]:
    """Characters a terminal would act on, or that hide or reorder text."""
    return sorted(
        {
            f"U+{ord(ch):04X}"
            for ch in text
            if ch not in "\n" and unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp")
        }
    )


async def test_every_command_neutralises_hostile_text(
    tmp_path: Path, start_node: StartNode
) -> None:
    home = make_home(tmp_path, "alice")
    daemon = Daemon(home.home, f"127.0.0.1:{free_udp_port()}")
    await daemon.start()
    # Names written the way an old or modified client would keep them; the node
    # repairs them by the name rule before they go out in Hello and invites.
    for who, name in (("mallory", NAME), ("eve", NAME + " (eve)")):
        paths = make_home(tmp_path, who)
        save_settings(paths, {**load_settings(paths), "name": name})
    mallory = await start_node("mallory")
    eve = await start_node("eve")
    try:
        alice_id = (await daemon.call("info"))["peer_id"]
        await daemon.call("add", ref=mallory.invite(), addresses=list(mallory.addresses))
        mallory.add_contact(alice_id, name="alice", addresses=[daemon.listen])
        await wait_until(lambda: mallory.is_online(alice_id), timeout=30)
        mallory.send_message("alice", BODY)
        mallory.send_message("alice", MARKUP + "\nsecond line " + ESCAPES)
        source = tmp_path / "out" / FILE_NAME
        source.parent.mkdir()
        source.write_bytes(b"payload")
        await mallory.offer_files("alice", [source])
        eve.add_contact(alice_id, name="alice", addresses=[daemon.listen])
        eve.send_message("alice", "knock " + ESCAPES + BIDI)

        async def call(*args: str) -> str:
            result = await asyncio.to_thread(run_cli, home.home, *args)
            assert result.returncode == 0, (args, result.stderr)
            assert unsafe_chars(result.stderr) == [], (args, result.stderr)
            return result.stdout

        async def ready() -> bool:
            history = json.loads(await call("history", NAME[:12], "--json"))
            requests = json.loads(await call("requests", "--json"))
            transfers = json.loads(await call("transfers", "--json"))
            return (
                len(history) == 2 and bool(requests and requests[0]["preview"]) and bool(transfers)
            )

        for _ in range(200):
            if await ready():
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("the hostile data did not arrive")

        mallory_name = repair_name(NAME)
        assert mallory_name is not None and "[link=file:///etc/passwd]" in mallory_name
        commands = [
            ("id",),
            ("contacts",),
            ("requests",),
            ("history", mallory_name),
            ("transfers",),
            ("nearby",),
            ("net",),
        ]
        outputs: dict[tuple[str, ...], str] = {}
        for command in commands:
            human = await call(*command)
            assert unsafe_chars(human) == [], (command, unsafe_chars(human))
            assert "\x1b" not in human
            data = json.loads(await call(*command, "--json"))  # valid JSON, always
            outputs[command] = json.dumps(data, ensure_ascii=False)
        # JSON gives scripts the text exactly as the peer sent it (names as the name
        # rule repaired them).
        history = json.loads(await call("history", mallory_name, "--json"))
        assert [m["body"] for m in history] == [BODY, MARKUP + "\nsecond line " + ESCAPES]
        contacts = json.loads(await call("contacts", "--json"))
        assert [c["name"] for c in contacts] == [mallory_name]
        request = json.loads(await call("requests", "--json"))[0]
        assert request["preview"] == ("knock " + ESCAPES + BIDI)[:200].strip()
        assert request["name"] == repair_name(NAME + " (eve)")
        [offer] = json.loads(await call("transfers", "--json"))
        assert offer["files"][0]["path"] == FILE_NAME
        human_history = await call("history", mallory_name)
        assert MARKUP in human_history  # shown as the characters it is
        assert "␛[31mred" in human_history  # ESC made visible, not obeyed
        assert "gnp.exe" in human_history and "\u202e" not in human_history
        assert len(human_history) > 9_000  # the long body is all there

        # Commands that print a peer's name or echo what they touched.
        for command in (
            ("msg", mallory_name, "hello " + ESCAPES, "--wait", "0"),
            ("mute", mallory_name),
            ("accept", eve.peer_id[:12]),
            ("block", eve.peer_id),
            ("blocked",),
            ("unblock", eve.peer_id),
            ("remove", mallory_name),
        ):
            human = await call(*command)
            assert unsafe_chars(human) == [], (command, unsafe_chars(human))
        for command in (("blocked", "--json"), ("contacts", "--json")):
            json.loads(await call(*command))
    finally:
        await daemon.stop()
