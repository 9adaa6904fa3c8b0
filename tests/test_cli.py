"""The CLI contract: commands, JSON output, exit codes, real processes."""

from __future__ import annotations

import json
import socket
import stat
from pathlib import Path

from p2pchat import cli
from p2pchat.store import Store

from .conftest import free_udp_port, wait_until
from .daemons import Daemon, cli_env, run_cli


def init(home: Path, name: str, **env: str) -> str:
    port = free_udp_port()
    result = run_cli(
        home, "init", "--name", name, "--listen", f"127.0.0.1:{port}", env=cli_env(**env)
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_init_is_idempotent_and_key_is_private(tmp_path: Path) -> None:
    home = tmp_path / "alice"
    peer_id = init(home, "alice")
    assert len(peer_id) == 52
    assert init(home, "alice") == peer_id
    assert stat.S_IMODE((home / "identity.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    info = json.loads(run_cli(home, "id", "--json").stdout)
    assert info["peer_id"] == peer_id and info["name"] == "alice"
    assert info["invite"].startswith("p2pchat:") and info["fingerprint"]


def test_error_exit_codes(tmp_path: Path) -> None:
    missing = run_cli(tmp_path / "nobody", "id")
    assert missing.returncode == cli.EXIT_NO_IDENTITY and "init" in missing.stderr
    home = tmp_path / "alice"
    init(home, "alice")
    bad = run_cli(home, "add", "not-a-peer-id")
    assert bad.returncode == cli.EXIT_BAD_ID, bad.stderr
    unknown = run_cli(home, "msg", "nobody", "hello", "--wait", "0")
    assert unknown.returncode == cli.EXIT_UNKNOWN_CONTACT, unknown.stderr
    assert "nobody" in unknown.stderr
    history = run_cli(home, "history", "nobody")
    assert history.returncode == cli.EXIT_UNKNOWN_CONTACT


def test_passphrase(tmp_path: Path) -> None:
    home = tmp_path / "sealed"
    init(home, "sealed", P2PCHAT_PASSPHRASE="correct horse")
    ok = run_cli(home, "id", "--json", env=cli_env(P2PCHAT_PASSPHRASE="correct horse"))
    assert ok.returncode == 0, ok.stderr
    wrong = run_cli(home, "id", env=cli_env(P2PCHAT_PASSPHRASE="wrong"))
    assert wrong.returncode == cli.EXIT_PASSPHRASE and "passphrase" in wrong.stderr.lower()
    none = run_cli(home, "id")
    assert none.returncode == cli.EXIT_PASSPHRASE


async def test_port_in_use_and_one_node_per_home(tmp_path: Path) -> None:
    home = tmp_path / "alice"
    init(home, "alice")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        busy = run_cli(home, "daemon", "--listen", f"127.0.0.1:{port}", "--no-mdns", "--no-dht")
        assert busy.returncode == cli.EXIT_NETWORK and "in use" in busy.stderr
    daemon = Daemon(home, f"127.0.0.1:{free_udp_port()}")
    await daemon.start()
    try:
        second = run_cli(home, "daemon", "--listen", f"127.0.0.1:{free_udp_port()}", "--no-mdns")
        assert second.returncode == cli.EXIT_NETWORK and "already running" in second.stderr
    finally:
        out = await daemon.stop()
    assert "stopped" in out


async def test_queued_then_delivered_through_the_cli(tmp_path: Path) -> None:
    alice_home, bob_home = tmp_path / "alice", tmp_path / "bob"
    init(alice_home, "alice")
    bob_id = init(bob_home, "bob")
    alice = Daemon(alice_home, f"127.0.0.1:{free_udp_port()}")
    await alice.start()
    bob: Daemon | None = None
    try:
        invite = json.loads(run_cli(alice_home, "id", "--json").stdout)["invite"]
        added = run_cli(bob_home, "add", invite, "--json")
        assert added.returncode == 0, added.stderr
        assert json.loads(added.stdout)["name"] == "alice"
        # No node runs for Bob: a short-lived one tries, Alice does not know Bob yet.
        sent = run_cli(bob_home, "msg", "alice", "hello from bob", "--wait", "3", "--json")
        assert sent.returncode == 0, sent.stderr
        assert json.loads(sent.stdout)["state"] != "delivered"
        requests = json.loads(run_cli(alice_home, "requests", "--json").stdout)
        assert [r["peer_id"] for r in requests] == [bob_id]
        assert requests[0]["preview"] == "hello from bob"
        accepted = run_cli(alice_home, "accept", "bob")
        assert accepted.returncode == 0, accepted.stderr
        # Bob's node comes up and delivers what was queued.
        bob = Daemon(bob_home, f"127.0.0.1:{free_udp_port()}")
        await bob.start()

        def delivered() -> bool:
            hist = json.loads(run_cli(bob_home, "history", "alice", "--json").stdout)
            return [m["state"] for m in hist] == ["delivered"]

        await wait_until(delivered, timeout=40, interval=0.5)
        incoming = json.loads(run_cli(alice_home, "history", "bob", "--json").stdout)
        assert [(m["direction"], m["body"]) for m in incoming] == [("in", "hello from bob")]
        reply = run_cli(alice_home, "msg", "bob", "hi bob", "--json")
        assert json.loads(reply.stdout)["state"] == "delivered", reply.stdout + reply.stderr
        contacts = json.loads(run_cli(alice_home, "contacts", "--json").stdout)
        assert contacts[0]["online"] is True and contacts[0]["peer_id"] == bob_id
    finally:
        await alice.stop()
        if bob is not None:
            await bob.stop()


def test_transfers_are_listed_newest_first_in_pages(tmp_path: Path) -> None:
    home = tmp_path / "alice"
    init(home, "alice")
    peer = "b" * 52
    with Store(home / "p2pchat.db") as store:
        for n in range(5):
            store.create_transfer(
                f"{n:02d}" + "0" * 30, peer, direction="in", state="declined",
                files=[(f"file{n}.txt", n, bytes(32), None)], now=1000.0 + n,
            )  # fmt: skip
    page = json.loads(run_cli(home, "transfers", "--limit", "2", "--json").stdout)
    assert [t["files"][0]["path"] for t in page] == ["file4.txt", "file3.txt"]
    plain = run_cli(home, "transfers", "--limit", "2")
    assert plain.returncode == 0, plain.stderr
    hint = "older transfers: p2pchat transfers --before 030000000000"
    assert plain.stdout.splitlines()[-1] == hint
    rest = json.loads(run_cli(home, "transfers", "--before", "0300", "--json").stdout)
    assert [t["files"][0]["path"] for t in rest] == ["file2.txt", "file1.txt", "file0.txt"]
    last = run_cli(home, "transfers", "--before", "0300")
    assert "older transfers" not in last.stdout


def test_offers_waiting_for_an_answer_are_listed_before_any_page(tmp_path: Path) -> None:
    """An offer older than a page of finished transfers is still shown, first."""
    home = tmp_path / "alice"
    init(home, "alice")
    peer = "b" * 52
    with Store(home / "p2pchat.db") as store:
        store.create_transfer(
            "ff" + "0" * 30, peer, direction="in", state="pending",
            files=[("wanted.txt", 1, bytes(32), None)], now=999.0,
        )  # fmt: skip
        for n in range(60):
            store.create_transfer(
                f"{n:02d}" + "1" * 30, peer, direction="in", state="declined",
                files=[(f"old{n}.txt", 1, bytes(32), None)], now=1000.0 + n,
            )  # fmt: skip
    page = json.loads(run_cli(home, "transfers", "--json").stdout)
    assert len(page) == 50 and "wanted.txt" not in {t["files"][0]["path"] for t in page}
    pending = json.loads(run_cli(home, "transfers", "--pending", "--json").stdout)
    assert [t["files"][0]["path"] for t in pending] == ["wanted.txt"]
    plain = run_cli(home, "transfers").stdout.splitlines()
    assert plain[0].startswith("waiting for your answer (1;")
    assert plain[1].startswith("ff000000 <- bbbbbbbb  pending") and "wanted.txt" in plain[1]
    assert plain[2] == "transfers:"
    assert sum("wanted.txt" in line for line in plain) == 1
    assert run_cli(home, "transfers", "--pending").stdout.count("wanted.txt") == 1
