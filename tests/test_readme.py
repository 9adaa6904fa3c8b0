"""The README's scripting examples run as written.

Every ``sh`` block of README.md that starts a daemon is run with bash, unchanged but
for what keeps it inside this machine and this test: ``$HOME`` is a temporary folder
(so ``~/alice`` is too), each loopback port is swapped for a free one, daemons get
``--no-mdns``, and ``P2PCHAT_BOOTSTRAP`` names a loopback port of our own, so a block
without ``--bootstrap`` never reaches the public DHT.  ``p2pchat`` on the ``PATH`` is
this checkout (``python -m p2pchat``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from p2pchat.config import NodeLock, Paths

from .daemons import cli_env, free_udp_port

README = Path(__file__).resolve().parent.parent / "README.md"


def daemon_blocks() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)
    return [b for b in blocks if " daemon " in b]


def localise(block: str) -> str:
    ports = {port: str(free_udp_port()) for port in re.findall(r"127\.0\.0\.1:(\d+)", block)}
    block = re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{ports[m.group(1)]}", block)
    return re.sub(r"(p2pchat --home \S+\s+daemon)\b", r"\1 --no-mdns", block)


def run_block(block: str, home: Path) -> subprocess.CompletedProcess[str]:
    shim = home / "bin"
    shim.mkdir(parents=True)
    launcher = shim / "p2pchat"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m p2pchat "$@"\n')
    launcher.chmod(0o755)
    env = cli_env(
        HOME=str(home),
        PATH=f"{shim}{os.pathsep}{os.environ.get('PATH', '')}",
        P2PCHAT_BOOTSTRAP=f"127.0.0.1:{free_udp_port()}",
    )
    try:
        return subprocess.run(
            ["bash", "-euo", "pipefail", "-c", localise(block)],
            capture_output=True,
            text=True,
            env=env,
            cwd=home,
            timeout=240,
        )
    finally:
        for folder in home.iterdir():
            if NodeLock(Paths(folder)).is_held_elsewhere():  # a block that failed half way
                subprocess.run(
                    [sys.executable, "-m", "p2pchat", "--home", str(folder), "stop"],
                    env=env,
                    capture_output=True,
                    timeout=60,
                )


def test_the_readme_has_the_examples() -> None:
    blocks = daemon_blocks()
    assert len(blocks) == 2
    assert all("--detach" in b and " stop" in b for b in blocks)  # ready, then cleaned up


def test_two_people_on_one_machine(tmp_path: Path) -> None:
    block = next(b for b in daemon_blocks() if "accept bob" in b)
    result = run_block(block, tmp_path)
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr}"
    assert "waiting for alice to accept your request" in out
    assert re.search(r"^delivered \(", out, re.MULTILINE)
    assert "accepted bob" in out
    history = out[out.index("accepted bob") :]
    assert "hi alice" in history and "thanks!" in history
    assert out.count("stopped") == 2


@pytest.mark.timeout(300)
def test_private_dht_swarm(tmp_path: Path) -> None:
    block = next(b for b in daemon_blocks() if "dht status" in b)
    result = run_block(block, tmp_path)
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr}"
    assert "routing table:" in out
    assert out.count("stopped") == 3


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run must call exactly the test command the README gives."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Run the tests") :]
    command = re.search(r"```sh\n(.*?)\n```", section, re.DOTALL)
    assert command is not None
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()
    assert ci[-1] == command.group(1).strip()
