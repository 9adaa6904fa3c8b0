"""The cheap Argon2id of the test suite is not reachable in production: the old
``P2PCHAT_KDF_FAST=1`` variable (or anything else in the environment) does not lower
the cost of a sealed key file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nacl.pwhash.argon2id

from ..conftest import FAST_KDF


def test_the_environment_cannot_weaken_a_sealed_key(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2PCHAT_")}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != FAST_KDF
    )
    env["P2PCHAT_KDF_FAST"] = "1"
    env["P2PCHAT_PASSPHRASE"] = "correct horse"
    home = tmp_path / "home"
    done = subprocess.run(
        [sys.executable, "-m", "p2pchat", "--home", str(home), "init"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads((home / "identity.key").read_text())
    assert doc["kind"] == "argon2id-secretbox"
    assert doc["opslimit"] == nacl.pwhash.argon2id.OPSLIMIT_MODERATE
    assert doc["memlimit"] == nacl.pwhash.argon2id.MEMLIMIT_MODERATE


def test_the_suites_own_processes_seal_cheaply(tmp_path: Path) -> None:
    """The speed-up the suite relies on still works for its daemons and CLI runs."""
    from ..daemons import cli_env, run_cli

    home = tmp_path / "fast"
    assert run_cli(home, "init", env=cli_env(P2PCHAT_PASSPHRASE="pw")).returncode == 0
    doc = json.loads((home / "identity.key").read_text())
    assert doc["opslimit"] == nacl.pwhash.argon2id.OPSLIMIT_MIN
