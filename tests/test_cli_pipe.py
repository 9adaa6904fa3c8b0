"""Messages from a pipe: ``msg CONTACT -`` and ``msg CONTACT --lines`` through a daemon."""

from __future__ import annotations

import json
from pathlib import Path

from p2pchat import cli

from .conftest import free_udp_port, wait_until
from .daemons import Daemon, run_cli


def _init(home: Path, name: str) -> dict[str, str]:
    listen = f"127.0.0.1:{free_udp_port()}"
    done = run_cli(home, "init", "--name", name, "--listen", listen)
    assert done.returncode == 0, done.stderr
    info = json.loads(run_cli(home, "id", "--json").stdout)
    return {"invite": info["invite"], "listen": listen}


async def test_stdin_message_and_lines_arrive_in_order(tmp_path: Path) -> None:
    alice_home, bob_home = tmp_path / "alice", tmp_path / "bob"
    alice, bob = _init(alice_home, "alice"), _init(bob_home, "bob")
    assert run_cli(alice_home, "add", bob["invite"]).returncode == 0
    assert run_cli(bob_home, "add", alice["invite"]).returncode == 0
    a = Daemon(alice_home, alice["listen"])
    b = Daemon(bob_home, bob["listen"])
    await a.start()
    await b.start()
    try:
        secret = run_cli(alice_home, "msg", "bob", "-", "--json", input="not in ps\n")
        assert secret.returncode == 0, secret.stderr
        assert json.loads(secret.stdout)["state"] == "delivered"
        # 12,000 lines: more than one control call's worth, with blank lines between.
        lines = [f"line {i:05d}" for i in range(12_000)]
        piped = "\n\n".join(lines) + "\n"
        sent = run_cli(alice_home, "msg", "bob", "--lines", "--json", "--wait", "60", input=piped)
        assert sent.returncode == 0, sent.stderr
        reply = json.loads(sent.stdout)
        assert len(reply["ids"]) == len(lines) and reply["state"] == "delivered"

        def received() -> list[str]:
            history = run_cli(bob_home, "history", "alice", "--json")
            return [m["body"] for m in json.loads(history.stdout)]

        await wait_until(lambda: len(received()) >= len(lines) + 1, timeout=60, interval=0.5)
        assert received() == ["not in ps", *lines]
        usage = run_cli(alice_home, "msg", "bob", "text", "--lines", input="x\n")
        assert usage.returncode == cli.EXIT_USAGE
        empty = run_cli(alice_home, "msg", "bob", "--lines", input="\n\n")
        assert empty.returncode == cli.EXIT_USAGE and "no lines" in empty.stderr
        too_long = run_cli(alice_home, "msg", "bob", "--lines", input="ok\n" + "x" * 70_000)
        assert too_long.returncode != 0 and "too long" in too_long.stderr
    finally:
        await a.stop()
        await b.stop()
