"""Another account on the same machine: it cannot keep the daemon of a deep home from
starting by creating the control socket's folder first; and a node restarted right
after ``stop()`` finds its UDP port free."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from p2pchat.config import Paths
from p2pchat.node import Node

from ..daemons import Daemon, free_udp_port, make_home, run_cli

NOBODY = 65534


def deep_home(tmp_path: Path) -> Path:
    home = tmp_path / ("h" * 60) / ("o" * 50)
    assert len(os.fsencode(home / "control.sock")) > 100
    return home


@pytest.mark.skipif(os.geteuid() != 0, reason="creating another user's folder needs root")
async def test_another_user_cannot_squat_the_socket_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared_tmp = tmp_path / "tmp"
    shared_tmp.mkdir(mode=0o1777)
    monkeypatch.setenv("TMPDIR", str(shared_tmp))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    # What the other account prepares: the folder the old fixed name pointed at.
    squat = shared_tmp / f"p2pchat-{os.getuid()}"
    squat.mkdir(mode=0o755)
    os.chown(squat, NOBODY, NOBODY)
    home = deep_home(tmp_path)
    assert run_cli(home, "init", "--name", "deep").returncode == 0
    daemon = Daemon(home, f"127.0.0.1:{free_udp_port()}")
    await daemon.start()
    try:
        sock = Paths(home).control_socket
        assert sock.parent != squat and sock.parent.parent == shared_tmp
        mode = sock.parent.lstat()
        assert mode.st_uid == os.getuid() and stat.S_IMODE(mode.st_mode) == 0o700
        shown = run_cli(home, "id", "--json")
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["running"] is True
    finally:
        await daemon.stop()


def test_a_private_runtime_dir_is_used_and_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    # A short runtime path of its own: under pytest's numbered temp folders the socket
    # path could itself pass the length limit once the run counter grows.
    runtime = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(runtime, ignore_errors=True))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    paths = Paths(deep_home(tmp_path))
    paths.ensure()
    assert paths.control_socket.parent == runtime / "p2pchat"
    assert stat.S_IMODE((runtime / "p2pchat").stat().st_mode) == 0o700
    # A runtime dir others may write to is not used: a private mkdtemp folder is.
    os.chmod(runtime, 0o777)
    other = Paths(deep_home(tmp_path / "second"))
    other.ensure()
    folder = other.control_socket.parent
    assert folder.parent != runtime and folder.name.startswith("p2pchat-")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert Path(other.socket_pointer.read_text().strip()) == folder
    other.ensure()  # stable across calls
    assert other.control_socket.parent == folder


def test_a_pointer_to_a_folder_not_ours_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    paths = Paths(deep_home(tmp_path))
    paths.ensure()
    first = paths.control_socket.parent
    os.chmod(first, 0o755)  # no longer private: somebody else could use it
    assert paths.control_socket == paths.home / "control.sock"
    paths.ensure()
    assert paths.control_socket.parent not in (first, paths.home)


async def test_restart_right_after_stop_finds_the_port_free(tmp_path: Path) -> None:
    paths = make_home(tmp_path, "quick")
    for _ in range(3):
        node = Node(paths)
        await node.start()
        await node.stop()
