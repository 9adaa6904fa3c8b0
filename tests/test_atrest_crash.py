"""Passphrase set/change/remove survive SIGKILL at any point: the home always opens,
with either the old passphrase or the new one, and every message is still there."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from p2pchat import cli
from p2pchat.atrest import open_home, recover
from p2pchat.config import Paths
from p2pchat.identity import WrongPassphrase, create_identity, is_sealed
from p2pchat.remote import RemoteNode
from p2pchat.store import Store, database_is_plaintext

from .daemons import Daemon, cli_env, free_udp_port, run_cli
from .history import fill_history, history_body

PEER = "b2" * 16
SMALL = 300


def seeded_home(root: Path, passphrase: str | None, messages: int = SMALL) -> Paths:
    """A home whose database holds one contact and ``messages`` messages with it."""
    paths = Paths(root / "home")
    paths.ensure()
    create_identity(paths.identity, passphrase)
    _, store = open_home(paths, passphrase)
    with store:
        store.add_contact(PEER, "Bob", now=1.0)
        fill_history(store, PEER, messages)
    return paths


def check_home(paths: Paths, old: str | None, new: str | None, messages: int = SMALL) -> str:
    """Assert the home is wholly in the old or the new state; return which."""
    recover(paths)
    leftovers = [p.name for p in paths.home.iterdir() if ".next" in p.name or "rekey" in p.name]
    assert leftovers == []
    sealed = is_sealed(paths.identity)
    assert database_is_plaintext(paths.database) is (not sealed)
    opened = []
    for label, secret in (("old", old), ("new", new)):
        if (secret is not None) != sealed:
            continue
        try:
            _, store = open_home(paths, secret)
        except WrongPassphrase:
            continue
        with store:
            assert store.encrypted is sealed
            bodies = [m.body for m in store.history(PEER)]
            assert bodies == [history_body(i) for i in range(messages)]
            contact = store.get_contact(PEER)
            assert contact is not None and contact.name == "Bob"
        opened.append(label)
    assert len(opened) == 1, f"opened with {opened}"
    return opened[0]


# Runs in one process per action and forks a child for each kill point: the child
# opens the home's node and SIGKILLs itself just before its k-th file-system step
# of the change (a write, fsync, rename or unlink), so every step is interrupted once.
_STEP_KILLER = textwrap.dedent(
    """
    import asyncio, json, os, shutil, signal, sys
    from pathlib import Path
    from p2pchat.config import Paths
    from p2pchat.node import Node

    template, root, old, new = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    old, new = old or None, new or None
    real = {n: getattr(os, n) for n in ("write", "fsync", "replace", "rename", "unlink")}

    def child(home, kill_at, count_file):
        node = Node(Paths(home), passphrase=old)
        steps = 0

        def hooked(fn):
            def step(*args, **kwargs):
                nonlocal steps
                steps += 1
                if steps == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                return fn(*args, **kwargs)
            return step

        for name, fn in real.items():
            setattr(os, name, hooked(fn))
        asyncio.run(node.change_passphrase(old, new))
        for name, fn in real.items():
            setattr(os, name, fn)
        count_file.write_text(str(steps))

    def run(home, kill_at):
        shutil.copytree(template, home)
        pid = os.fork()
        if pid == 0:
            try:
                child(home, kill_at, root / "steps")
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        return status

    assert run(root / "complete", 0) == 0
    total = int((root / "steps").read_text())
    homes = []
    for k in range(1, total + 1):
        status = run(root / f"kill{k}", k)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
        homes.append(str(root / f"kill{k}"))
    print(json.dumps({"complete": str(root / "complete"), "killed": homes}))
    """
)


@pytest.mark.parametrize(
    ("old", "new"),
    [(None, "new secret"), ("old secret", "new secret"), ("old secret", None)],
    ids=["set", "change", "remove"],
)
def test_sigkill_at_every_step(tmp_path: Path, old: str | None, new: str | None) -> None:
    """Count the steps of one full change, then kill a fresh copy before each of them."""
    template = seeded_home(tmp_path / "template", old)
    result = subprocess.run(
        [sys.executable, "-c", _STEP_KILLER, str(template.home), str(tmp_path), old or "",
         new or ""],
        capture_output=True, text=True, env=cli_env(), timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    runs = json.loads(result.stdout)
    assert check_home(Paths(Path(runs["complete"])), old, new) == "new"
    outcomes = [check_home(Paths(Path(home)), old, new) for home in runs["killed"]]
    # Early kills leave the old state, late ones the new: the commit is one point.
    first_new = outcomes.index("new")
    assert outcomes == ["old"] * first_new + ["new"] * (len(outcomes) - first_new)
    assert len(outcomes) >= 6 and 0 < first_new < len(outcomes)


def test_sigkill_at_random_moments_of_real_commands(tmp_path: Path) -> None:
    """`p2pchat passphrase set|change|remove` killed at random instants, round after
    round: each time the home opens in the old or the new state with every message.

    Half the kills fall anywhere in the command's run; the other half wait until
    the re-encrypted copy (or the new key file) appears, and strike while it is
    being written, synced and swapped in.
    """
    rng = random.Random(15)
    messages = 10_000
    paths = seeded_home(tmp_path, None, messages)
    started = time.monotonic()
    full = run_cli(paths.home, "passphrase", "set", env=cli_env(P2PCHAT_NEW_PASSPHRASE="p0"))
    duration = time.monotonic() - started
    assert full.returncode == 0, full.stderr
    copy_time = float(full.stdout.split(" in ")[-1].split()[0])
    current: str | None = "p0"
    outcomes: list[tuple[str, str, str]] = []

    def seen_enough() -> bool:
        killed = {(action, end) for action, _, end in outcomes if end != "completed"}
        return {end for _, end in killed} == {"killed, old", "killed, new"} and {
            action for action, _ in killed
        } == {"set", "change", "remove"}

    for round_ in range(1, 61):
        if round_ > 16 and seen_enough():
            break
        if current is None:
            action, new = "set", f"p{round_}"
        else:
            action = rng.choice(["change", "remove"])
            new = f"p{round_}" if action == "change" else None
        env = cli_env(
            **({"P2PCHAT_PASSPHRASE": current} if current else {}),
            **({"P2PCHAT_NEW_PASSPHRASE": new} if new else {}),
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "p2pchat", "--home", str(paths.home), "passphrase", action],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        mode = rng.choice(["anywhere", "during the swap"])
        if mode == "anywhere":
            time.sleep(rng.uniform(0, duration))
        else:
            sign = paths.home / ("p2pchat.db.next" if action != "change" else "identity.key.next")
            while proc.poll() is None and not sign.exists():
                time.sleep(0.001)
            # The copy, then its fsync, the commit and the renames.
            window = 1.5 * copy_time + 0.05 if action != "change" else 0.01
            time.sleep(rng.uniform(0, window))
        proc.kill()
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in (0, -9), err
        state = check_home(paths, current, new, messages)
        outcomes.append((action, mode, "completed" if proc.returncode == 0 else f"killed, {state}"))
        if state == "new":
            current = new
    assert seen_enough(), outcomes


def test_wrong_old_passphrase_changes_nothing(tmp_path: Path) -> None:
    paths = seeded_home(tmp_path, "right", messages=10)
    before = {p.name: p.read_bytes() for p in paths.home.iterdir() if p.is_file()}
    env = cli_env(P2PCHAT_PASSPHRASE="wrong", P2PCHAT_NEW_PASSPHRASE="other")
    for action in ("change", "remove"):
        result = run_cli(paths.home, "passphrase", action, env=env)
        assert result.returncode == cli.EXIT_PASSPHRASE
        assert result.stderr.strip().splitlines() == [
            f"p2pchat: error: wrong passphrase for identity file {paths.identity}"
        ]
    assert check_home(paths, "right", "other", 10) == "old"
    after = {p.name: p.read_bytes() for p in paths.home.iterdir() if p.is_file()}
    assert after["identity.key"] == before["identity.key"]


def test_command_misuse_is_explained(tmp_path: Path) -> None:
    paths = seeded_home(tmp_path, None, messages=1)
    remove = run_cli(paths.home, "passphrase", "remove")
    assert remove.returncode == 1 and "has no passphrase" in remove.stderr
    no_terminal = run_cli(paths.home, "passphrase", "set")
    assert no_terminal.returncode == 1 and "P2PCHAT_NEW_PASSPHRASE" in no_terminal.stderr
    done = run_cli(paths.home, "passphrase", "set", env=cli_env(P2PCHAT_NEW_PASSPHRASE="x"))
    assert done.returncode == 0, done.stderr
    again = run_cli(paths.home, "passphrase", "set", env=cli_env(P2PCHAT_NEW_PASSPHRASE="y"))
    assert again.returncode == 1 and "already has a passphrase" in again.stderr


def test_refused_while_another_process_has_the_database_open(tmp_path: Path) -> None:
    paths = seeded_home(tmp_path, None, messages=5)
    with Store(paths.database):
        busy = run_cli(paths.home, "passphrase", "set", env=cli_env(P2PCHAT_NEW_PASSPHRASE="x"))
    assert busy.returncode == 1
    assert "open in another p2pchat process" in busy.stderr and "Traceback" not in busy.stderr
    assert check_home(paths, None, "x", 5) == "old"


async def test_through_the_running_daemon(tmp_path: Path) -> None:
    """With a daemon running, the command is carried out by it: nothing stops, and
    the daemon keeps serving its history from the re-encrypted database."""
    paths = seeded_home(tmp_path, None, messages=50)
    daemon = Daemon(paths.home, f"127.0.0.1:{free_udp_port()}")
    await daemon.start()
    try:
        env = cli_env(P2PCHAT_NEW_PASSPHRASE="daemon secret")
        result = run_cli(paths.home, "passphrase", "set", "--json", env=env)
        assert result.returncode == 0, result.stderr
        change = json.loads(result.stdout)
        assert change["action"] == "set" and change["database"] == "encrypted"
        assert change["messages"] == 50 and "encrypted in" in change["summary"]
        assert database_is_plaintext(paths.database) is False
        history = await daemon.call("history", contact="Bob")
        assert [m["body"] for m in history] == [history_body(i) for i in range(50)]
        await daemon.call("send", contact="Bob", text="after the change")
        removed = run_cli(
            paths.home, "passphrase", "remove", env=cli_env(P2PCHAT_PASSPHRASE="daemon secret")
        )
        assert removed.returncode == 0, removed.stderr
        assert "decrypted in" in removed.stdout
    finally:
        await daemon.stop()
    with Store(paths.database) as store:
        assert store.history(PEER)[-1].body == "after the change"


async def test_an_attached_app_changes_it_through_the_daemon(tmp_path: Path) -> None:
    """The app attached to a daemon (RemoteNode) gets the same operation and errors."""
    paths = seeded_home(tmp_path, None, messages=20)
    daemon = Daemon(paths.home, f"127.0.0.1:{free_udp_port()}")
    await daemon.start()
    remote = RemoteNode(paths)
    await remote.start()
    try:
        change = await remote.change_passphrase(None, "attached")
        assert change.action == "set" and change.database == "encrypted"
        assert change.messages == 20
        with pytest.raises(WrongPassphrase):
            await remote.change_passphrase("not it", None)
        removed = await remote.change_passphrase("attached", None)
        assert removed.database == "decrypted"
        assert [m.body for m in remote.history("Bob")][-1] == history_body(19)
    finally:
        await remote.stop()
        await daemon.stop()
    assert check_home(paths, "attached", None, 20) == "new"
