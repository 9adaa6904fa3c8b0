"""docs/self-hosting.md, run as written in the network lab.

The group's node runs on the lab's public host from the ``ExecStart`` line of
``contrib/p2pchat.service`` (systemd itself does not run here: its ``Environment`` is
applied and the line is run with bash), the guide's check commands run there, and two
friends, each behind a random-port NAT of their own (no hole can be punched between
them), run the guide's blocks: add the group's invite, start, add each other by peer ID,
chat.  They end up talking through the group's node.

Only what keeps the run inside the lab changes: ``/opt/p2pchat/bin/p2pchat`` and
``p2pchat`` are this checkout (``python -m p2pchat``), ``/var/lib/p2pchat`` and each
friend's home are temporary folders, ``sudo -u USER`` runs the command as is (the lab
runs as root), and the invite and peer IDs the guide leaves to the reader
(``$MY_NAME``, ``$GROUP_INVITE``, ``$FRIEND_ID``) are filled in.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, TypeVar

import pytest

from p2pchat.config import Paths
from p2pchat.identity import load_identity
from p2pchat.net.control import ControlClient

from .daemons import cli_env, until, wait_for_control
from .netlab import Host, Lab, list_namespaces, prepare, unavailable_reason
from .netlab.topologies import build_internet

REASON = unavailable_reason(need_nft=True)

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "self-hosting.md"
UNIT = ROOT / "contrib" / "p2pchat.service"
T = TypeVar("T")


def lab_blocks(tag: str) -> str:
    """The ``sh`` block after ``<!-- lab: TAG -->`` in the guide."""
    text = GUIDE.read_text(encoding="utf-8")
    match = re.search(rf"<!-- lab: {tag} -->\n```sh\n(.*?)```", text, re.DOTALL)
    assert match is not None, f"the guide has no '{tag}' block"
    return match.group(1)


def unit_service() -> tuple[dict[str, str], str]:
    """The unit's ``Environment=`` settings and its ``ExecStart`` command."""
    env: dict[str, str] = {}
    command = ""
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition("=")
        if key == "Environment":
            name, _, setting = value.partition("=")
            env[name] = setting
        elif key == "ExecStart":
            command = value
    assert command, "the unit has no ExecStart"
    return env, command


class Runner:
    """Runs guide text with bash inside a lab host, with the substitutions above."""

    def __init__(self, tmp: Path, node_home: Path) -> None:
        self.bin = tmp / "bin"
        self.bin.mkdir()
        launcher = self.bin / "p2pchat"
        launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m p2pchat "$@"\n')
        launcher.chmod(0o755)
        self.node_home = node_home

    def localise(self, text: str) -> str:
        text = text.replace("/opt/p2pchat/bin/p2pchat", str(self.bin / "p2pchat"))
        return text.replace("/var/lib/p2pchat", str(self.node_home))

    def env(self, **extra: str) -> dict[str, str]:
        env = cli_env(PATH=f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}", **extra)
        env.pop("P2PCHAT_BOOTSTRAP", None)  # friends name no bootstrap: the invite does
        return env

    def script(self, text: str) -> list[str]:
        prelude = 'sudo() { if [ "$1" = -u ]; then shift 2; fi; "$@"; }\n'
        return ["bash", "-euo", "pipefail", "-c", prelude + self.localise(text)]

    def run(self, host: Host, text: str, **env: str) -> str:
        result = host.lab.run(host.ns, "env", *self._env_args(env), *self.script(text),
                              check=False, timeout=120)  # fmt: skip
        assert result.returncode == 0, f"{text}\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def _env_args(self, extra: dict[str, str]) -> list[str]:
        return ["-i", *(f"{k}={v}" for k, v in self.env(**extra).items())]


@pytest.mark.skipif(REASON is not None, reason=REASON or "")
@pytest.mark.timeout(300)
async def test_the_self_hosting_guide_ends_with_two_natted_friends_chatting(
    tmp_path: Path,
) -> None:
    if shutil.which("nft") is None:
        pytest.skip("NAT lab needs nftables")
    prepare()
    lab = Lab()
    clients: list[ControlClient] = []
    try:
        net = build_internet(lab, {"alice": "random", "bob": "random"}, port=47474)
        node_home = tmp_path / "var-lib-p2pchat"
        node_home.mkdir(mode=0o700)
        runner = Runner(tmp_path, node_home)
        # The group's node: the unit's ExecStart, with the unit's environment.
        unit_env, command = unit_service()
        env = runner.env(**{k: runner.localise(v) for k, v in unit_env.items()})
        log = (tmp_path / "node.log").open("w")
        node = net.public.popen(
            ["bash", "-c", "exec " + runner.localise(command)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        paths = Paths(node_home)
        group = await wait_for_control(
            paths, node, output=lambda: (tmp_path / "node.log").read_text(), timeout=90
        )
        clients.append(group)
        # The guide's checks on the node; the last line is the invite for the group.
        out = runner.run(net.public, lab_blocks("node"))
        invite = out.strip().splitlines()[-1]
        assert invite.startswith("p2pchat:"), out
        assert "rendezvous: for" in out and "(relay: anyone)" in out
        group_id = load_identity(paths.identity).peer_id
        # Each friend: join with the invite, start.
        friends: dict[str, Path] = {}
        for name in ("alice", "bob"):
            friends[name] = tmp_path / name
            runner.run(
                net.sites[name].host,
                lab_blocks("friend"),
                P2PCHAT_HOME=str(friends[name]),
                GROUP_INVITE=invite,
                MY_NAME=name,
            )
        ids = {n: load_identity(Paths(h).identity).peer_id for n, h in friends.items()}
        views: dict[str, ControlClient] = {}
        for name, home in friends.items():
            views[name] = ControlClient(Paths(home).control_socket)
            await views[name].connect()
            clients.append(views[name])

        async def registered(name: str) -> bool:
            status = await views[name].call("network_status", {})
            dht = await views[name].call("dht_status", {})
            regs = status["reachability"]["registrations"]
            return any(
                r["peer_id"] == group_id and r["state"] == "registered" for r in regs
            ) and bool(dht["record"]["stored"])

        for name in friends:
            await until(lambda n=name: registered(n), 60, f"{name} registered with the node")
            dht = await views[name].call("dht_status", {})
            assert dht["bootstrap"] == ["198.51.100.100:47474"], dht["bootstrap"]
        # They add each other by peer ID and say hello.
        for name, other in (("alice", "bob"), ("bob", "alice")):
            runner.run(
                net.sites[name].host,
                lab_blocks("talk"),
                P2PCHAT_HOME=str(friends[name]),
                FRIEND_ID=ids[other],
            )

        async def delivered(name: str) -> bool:
            history: list[dict[str, Any]] = await views[name].call("history", {"contact": "friend"})
            return any(
                m["direction"] == "out" and m["state"] in ("delivered", "read") for m in history
            )

        for name in friends:
            await until(lambda n=name: delivered(n), 90, f"{name}'s hello delivered")
        for name, other in (("alice", "bob"), ("bob", "alice")):
            contacts = await views[name].call("contacts", {})
            (friend,) = [c for c in contacts if c["peer_id"] == ids[other]]
            assert friend["path"] == "relayed" and friend["via"] == group_id, friend
            history = await views[name].call("history", {"contact": "friend"})
            got = [m["body"] for m in history if m["direction"] == "in"]
            assert got == ["hello through the group's node"], got
        status = await group.call("network_status", {})
        served = status["reachability"]
        assert served["rendezvous"]["registrations"] >= 2, served["rendezvous"]
        assert served["relaying"]["serving"]["channels"] >= 1, served["relaying"]
    finally:
        for client in clients:
            await client.close()
        lab.close()
        assert [ns for ns in list_namespaces() if ns.startswith(lab.run_id)] == []


def test_the_unit_runs_the_documented_command() -> None:
    """The guide shows the unit's command: they must not drift apart."""
    _, command = unit_service()
    shown = GUIDE.read_text(encoding="utf-8")
    words = shlex.split(command)[1:]
    flat = " ".join(shown.replace("\\\n", " ").split())
    assert "p2pchat " + " ".join(words) in flat
