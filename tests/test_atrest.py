"""Encryption at rest: the database of a home with a passphrase is SQLCipher, keyed by
the unlocked identity; a home without one keeps plain SQLite."""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from p2pchat import cli
from p2pchat.atrest import database_key, open_home
from p2pchat.config import Paths, save_settings
from p2pchat.identity import (
    Identity,
    Invite,
    WrongPassphrase,
    create_identity,
    key_from_peer_id,
    load_identity,
)
from p2pchat.node import Node
from p2pchat.store import (
    DatabaseBusy,
    DatabaseKeyError,
    Store,
    StoreLock,
    database_is_plaintext,
)

from .daemons import Daemon, cli_env, free_udp_port, run_cli
from .history import fill_history, history_body

BOB = "b2" * 16
SECRET = "the eagle lands at midnight"


def sealed_home(root: Path, name: str, passphrase: str = "correct horse") -> Paths:
    paths = Paths(root / name)
    paths.ensure()
    create_identity(paths.identity, passphrase)
    save_settings(paths, {"name": name, "listen": f"127.0.0.1:{free_udp_port()}"})
    return paths


def plain_home(root: Path, name: str) -> Paths:
    paths = Paths(root / name)
    paths.ensure()
    create_identity(paths.identity)
    return paths


def home_bytes(paths: Paths) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(paths.home.iterdir()) if p.is_file())


def test_database_key_is_a_domain_separated_function_of_the_seed() -> None:
    one, two = Identity(bytes(32)), Identity(bytes(31) + b"\x01")
    key = database_key(one)
    assert len(key) == 32 and key == database_key(Identity(bytes(32)))
    assert key != database_key(two)
    assert key not in (one.seed, one.public_key)


def test_a_home_with_a_passphrase_gets_an_encrypted_database(tmp_path: Path) -> None:
    paths = sealed_home(tmp_path, "alice")
    node = Node(paths, passphrase="correct horse")
    try:
        assert node.database_encrypted
        node.add_contact(Identity(bytes(32)).peer_id, name="Bobby Tables")
        node.store.queue_message(BOB, SECRET, now=1.0)
        # Not checkpointed yet: the pages sit in the WAL, which must be ciphertext too.
        wal = Path(f"{paths.database}-wal")
        assert wal.stat().st_size > 0
        assert node.store._connection().execute("PRAGMA temp_store").fetchone()[0] == 2
    finally:
        node.store.close()
    assert database_is_plaintext(paths.database) is False
    data = home_bytes(paths)
    for needle in (SECRET, "Bobby Tables", Identity(bytes(32)).peer_id, BOB):
        assert needle.encode() not in data
    with pytest.raises(sqlite3.DatabaseError), sqlite3.connect(paths.database) as raw:
        raw.execute("SELECT count(*) FROM messages").fetchone()
    again = Node(paths, passphrase="correct horse")
    try:
        assert [m.body for m in again.store.outbox(BOB)] == [SECRET]
        assert again.find_contact("Bobby Tables").peer_id == Identity(bytes(32)).peer_id
    finally:
        again.store.close()


def test_a_home_without_a_passphrase_keeps_plain_sqlite(tmp_path: Path) -> None:
    paths = plain_home(tmp_path, "carol")
    node = Node(paths)
    try:
        assert not node.database_encrypted
        node.store.queue_message(BOB, SECRET, now=1.0)
    finally:
        node.store.close()
    assert database_is_plaintext(paths.database) is True
    with sqlite3.connect(paths.database) as raw:
        assert raw.execute("SELECT body FROM messages").fetchall() == [(SECRET,)]


def test_the_key_must_fit_the_file(tmp_path: Path) -> None:
    encrypted, plain = tmp_path / "e.db", tmp_path / "p.db"
    Store(encrypted, key=bytes(32)).close()
    Store(plain).close()
    with pytest.raises(DatabaseKeyError, match="not encrypted by this identity"):
        Store(encrypted, key=bytes(31) + b"\x01")
    with pytest.raises(DatabaseKeyError, match="no passphrase"):
        Store(encrypted)
    with pytest.raises(DatabaseKeyError, match="not encrypted"):
        Store(plain, key=bytes(32))
    # Nothing was damaged by the failed attempts.
    Store(encrypted, key=bytes(32)).close()
    Store(plain).close()


def test_wrong_passphrase_is_one_clear_line(tmp_path: Path) -> None:
    paths = sealed_home(tmp_path, "alice")
    with pytest.raises(WrongPassphrase):
        open_home(paths, "wrong")
    for env in (
        cli_env(P2PCHAT_PASSPHRASE="wrong"),
        cli_env(),  # no passphrase at all, and no terminal to ask on
    ):
        result = run_cli(paths.home, "contacts", env=env)
        assert result.returncode == cli.EXIT_PASSPHRASE
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert "passphrase" in result.stderr
    ok = run_cli(paths.home, "contacts", env=cli_env(P2PCHAT_PASSPHRASE="correct horse"))
    assert ok.returncode == 0, ok.stderr


def test_daemon_with_wrong_passphrase_says_so_once(tmp_path: Path) -> None:
    paths = sealed_home(tmp_path, "alice")
    argv = [sys.executable, "-m", "p2pchat", "--home", str(paths.home), "daemon"]
    done = subprocess.run(
        [*argv, "--no-mdns", "--no-dht", "--listen", f"127.0.0.1:{free_udp_port()}"],
        capture_output=True,
        text=True,
        env=cli_env(P2PCHAT_PASSPHRASE="wrong"),
        timeout=60,
    )
    assert done.returncode == cli.EXIT_PASSPHRASE
    assert done.stderr.strip().splitlines() == [
        f"p2pchat: error: wrong passphrase for identity file {paths.identity}"
    ]


def test_plaintext_database_of_a_sealed_identity_is_encrypted_on_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A home from before encryption existed: sealed key file, plaintext history."""
    paths = sealed_home(tmp_path, "alice")
    with Store(paths.database) as old:
        old.add_contact(BOB, "Bob", now=1.0)
        for i in range(50):
            old.queue_message(BOB, f"{SECRET} {i}", now=2.0)
    with caplog.at_level(logging.WARNING, logger="p2pchat.atrest"):
        identity, store = open_home(paths, "correct horse")
    try:
        assert store.encrypted
        assert len(store.outbox(BOB)) == 50
    finally:
        store.close()
    assert any("50 messages" in r.message and "encrypted in" in r.message for r in caplog.records)
    assert database_is_plaintext(paths.database) is False
    assert SECRET.encode() not in home_bytes(paths)
    assert identity == load_identity(paths.identity, "correct horse")


def test_encryption_on_open_waits_for_sole_access(tmp_path: Path) -> None:
    """Another process holding the plaintext file open: open it as it is, encrypt later."""
    paths = sealed_home(tmp_path, "alice")
    with Store(paths.database) as other:
        other.queue_message(BOB, SECRET, now=1.0)
        _, store = open_home(paths, "correct horse")
        assert not store.encrypted
        assert [m.body for m in store.outbox(BOB)] == [SECRET]
        store.close()
    _, store = open_home(paths, "correct horse")
    assert store.encrypted
    store.close()


def test_the_lock_excludes_a_swap_while_any_store_is_open(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    with Store(path):
        lock = StoreLock(path)
        with pytest.raises(DatabaseBusy, match="open in another p2pchat process"):
            lock.exclusive()
        lock.release()
    swapping = StoreLock(path)
    swapping.exclusive()
    opener = StoreLock(path)
    try:
        with pytest.raises(DatabaseBusy, match="being re-encrypted"):
            opener.shared(timeout=0.2)
    finally:
        opener.release()
        swapping.release()


def test_core_dumps_are_off_for_an_encrypted_home(tmp_path: Path) -> None:
    paths = sealed_home(tmp_path, "alice")
    code = (
        "import resource, sys\n"
        "from p2pchat.atrest import open_home\n"
        "from pathlib import Path\n"
        "from p2pchat.config import Paths\n"
        f"_, store = open_home(Paths(Path({str(paths.home)!r})), 'correct horse')\n"
        "print(resource.getrlimit(resource.RLIMIT_CORE)[0])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=cli_env()
    )
    assert out.stdout.strip() == "0", out.stderr


class SealedDaemon(Daemon):
    """A daemon for a home with a passphrase, logging everything it logs at -vv."""

    def __init__(self, paths: Paths, passphrase: str, extra: list[str]) -> None:
        env = cli_env(P2PCHAT_PASSPHRASE=passphrase)
        super().__init__(paths.home, f"127.0.0.1:{free_udp_port()}", extra=extra, env=env)
        self.output = ""

    def argv(self) -> list[str]:
        argv = super().argv()
        return [*argv[:3], "-vv", *argv[3:]]


def regular_files(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()]


def leaks(folder: Path, needles: dict[str, bytes]) -> list[str]:
    """Every (file, needle) pair where a needle occurs in a file's bytes."""
    found = []
    for path in regular_files(folder):
        data = path.read_bytes()
        found += [f"{path.name}: {what}" for what, needle in needles.items() if needle in data]
    return found


async def test_no_history_in_the_home_folder_after_real_traffic(tmp_path: Path) -> None:
    """Two daemons with passphrases talk and send a file; then neither home folder
    holds, anywhere in its bytes, a message, a contact's name, display name or key,
    or a transferred file's name, whether the nodes are running (live WAL) or stopped."""
    pa = sealed_home(tmp_path, "Alfreda Display", "pass a")
    pb = sealed_home(tmp_path, "Roberto Display", "pass b")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    outgoing = tmp_path / "outgoing" / "quarterly-secret-plans.txt"
    outgoing.parent.mkdir()
    outgoing.write_bytes(b"file contents are the user's own\n" * 100)
    a = SealedDaemon(pa, "pass a", ["--downloads", str(downloads)])
    b = SealedDaemon(
        pb, "pass b", ["--downloads", str(downloads), "--accept-files-from", "contacts"]
    )
    await a.start()
    await b.start()
    try:
        ida, idb = (await a.call("info"))["peer_id"], (await b.call("info"))["peer_id"]
        await a.call("add", ref=idb, name="Bobby Contactname", addresses=[b.listen])
        # Bob redeems a one-time invite: the token waits for the first session.
        invite = (await a.call("info", one_time=True))["invite"]
        await b.call("add", ref=invite, name="Allie Contactname", addresses=[a.listen])
        texts = [f"alpha secret number {i}" for i in range(20)]
        texts += [f"bravo secret number {i}" for i in range(20)]
        for i in range(20):
            await a.call("send", contact="Bobby Contactname", text=texts[i])
            await b.call("send", contact="Allie Contactname", text=texts[20 + i])
        transfer = await a.call("send_files", contact="Bobby Contactname", paths=[str(outgoing)])

        async def settled() -> bool:
            hist_a = await a.call("history", contact="Bobby Contactname")
            hist_b = await b.call("history", contact="Allie Contactname")
            state = await a.call("transfer", id=transfer["id"])
            return (
                len(hist_a) == len(hist_b) == 40
                and all(m["state"] != "queued" and m["state"] != "sent" for m in hist_a + hist_b)
                and state["state"] == "done"
            )

        deadline = asyncio.get_running_loop().time() + 60
        while not await settled():
            assert asyncio.get_running_loop().time() < deadline, "traffic did not settle"
            await asyncio.sleep(0.2)
        assert (downloads / outgoing.name).read_bytes() == outgoing.read_bytes()

        def needles(peer_id: str, contact_name: str, display: str) -> dict[str, bytes]:
            key = key_from_peer_id(peer_id)
            found = {text: text.encode() for text in texts}
            found |= {
                "contact's peer ID": peer_id.encode(),
                "contact's key (hex)": key.hex().encode(),
                "contact's key": key,
                "contact name": contact_name.encode(),
                "contact's display name": display.encode(),
                "transferred file's name": outgoing.name.encode(),
            }
            return found

        for_a = needles(idb, "Bobby Contactname", "Roberto Display")
        for_b = needles(ida, "Allie Contactname", "Alfreda Display")
        assert Path(f"{pa.database}-wal").exists()
        assert leaks(pa.home, for_a) == [] and leaks(pb.home, for_b) == []
    finally:
        a.output, b.output = await a.stop(), await b.stop()
    assert leaks(pa.home, for_a) == [] and leaks(pb.home, for_b) == []
    # The logs (here at -vv) carry no message text either.
    for text in texts:
        assert text not in a.output and text not in b.output


def test_a_waiting_invite_token_names_no_contact_in_clear(tmp_path: Path) -> None:
    """The token of a redeemed invite waits for the inviter to be reachable; the
    inviter's peer ID it is filed under stays inside the encrypted database."""
    inviter = Identity(bytes(32))
    paths = sealed_home(tmp_path, "bob")
    node = Node(paths, passphrase="correct horse")
    try:
        invite = Invite(inviter.peer_id, ("127.0.0.1:9",), token="tok-waiting", name="Al")
        node.add_contact(invite.encode())
        assert node._pending_token(inviter.peer_id) == "tok-waiting"
    finally:
        node.store.close()
    assert leaks(paths.home, {"peer ID": inviter.peer_id.encode(), "token": b"tok-waiting"}) == []


def test_tokens_kept_in_settings_by_older_versions_move_into_the_database(
    tmp_path: Path,
) -> None:
    paths = plain_home(tmp_path, "bob")
    peer = Identity(bytes(32)).peer_id
    save_settings(paths, {"name": "bob", "pending_tokens": {peer: "tok-old"}})
    node = Node(paths)
    try:
        assert node._pending_token(peer) == "tok-old"
        assert "pending_tokens" not in paths.settings.read_text()
    finally:
        node.store.close()


def test_a_detached_daemon_of_an_encrypted_home_keeps_no_log(tmp_path: Path) -> None:
    """Log lines can name contacts; an encrypted home gets no daemon.log in clear."""
    paths = sealed_home(tmp_path, "alice")
    listen = ("--listen", f"127.0.0.1:{free_udp_port()}", "--no-mdns", "--no-dht")
    wrong = run_cli(paths.home, "daemon", "--detach", *listen,
                    env=cli_env(P2PCHAT_PASSPHRASE="wrong"))  # fmt: skip
    assert wrong.returncode == cli.EXIT_PASSPHRASE and "wrong passphrase" in wrong.stderr
    env = cli_env(P2PCHAT_PASSPHRASE="correct horse")
    started = run_cli(paths.home, "daemon", "--detach", *listen, env=env)
    try:
        assert started.returncode == 0, started.stderr
        contacts = run_cli(paths.home, "contacts", "--json")  # answered by the daemon
        assert contacts.returncode == 0, contacts.stderr
    finally:
        stopped = run_cli(paths.home, "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not (paths.home / "daemon.log").exists()


def test_migrating_a_store_of_100000_messages(tmp_path: Path) -> None:
    """`passphrase set` on a home with 100,000 plaintext messages: all of them come
    through, none stays readable on disk, and the command says how long it took."""
    count = 100_000
    paths = plain_home(tmp_path, "alice")
    with Store(paths.database) as store:
        store.add_contact(BOB, "Bobbington Contactname", now=1.0)
        fill_history(store, BOB, count)
    assert history_body(count - 1).encode() in paths.database.read_bytes()
    result = run_cli(
        paths.home, "passphrase", "set", env=cli_env(P2PCHAT_NEW_PASSPHRASE="long history")
    )
    assert result.returncode == 0, result.stderr
    match = re.fullmatch(
        r"passphrase set; the database \(100,000 messages, [0-9.]+ MiB\) was encrypted in "
        r"([0-9.]+) s\n",
        result.stdout,
    )
    assert match, result.stdout
    data = home_bytes(paths)
    assert not any(history_body(i).encode() in data for i in range(0, count, 997))
    assert b"Bobbington Contactname" not in data
    _, store = open_home(paths, "long history")
    with store:
        bodies = [m.body for m in store.history(BOB)]
    assert bodies == [history_body(i) for i in range(count)]
