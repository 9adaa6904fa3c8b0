"""The network lab itself: later tests (discovery, hole punching) are only as good as it is.

Everything here runs inside namespaces the lab creates; the machine's own
interfaces never see a packet.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from .netlab import (
    PREFIX,
    PUBLIC_ADDRESS,
    Lab,
    NatMode,
    list_namespaces,
    prepare,
    sweep_stale,
    unavailable_reason,
)

REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")
needs_nft = pytest.mark.skipif(
    shutil.which("nft") is None, reason="NAT lab needs nftables (`nft`): apt-get install nftables"
)


def root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def test_lan_hosts_talk_unicast_and_multicast_and_touch_nothing_outside(lab: Lab) -> None:
    before = root_links()
    lan = lab.lan(3)
    assert [h.address for h in lan.hosts] == ["10.77.0.11", "10.77.0.12", "10.77.0.13"]
    assert root_links() == before, "the lab must not create interfaces in the host namespace"
    echo, _ = lan.hosts[2].start_tool("udp-echo", "5000")
    (probe,) = lan.hosts[0].tool("udp-probe", "--bind", "40000", "10.77.0.13:5000")
    assert probe["seen"] == ["10.77.0.11:40000"]
    echo.terminate()
    # mDNS needs link-local multicast to flood across the bridge.
    listener, _ = lan.hosts[1].start_tool(
        "mcast-listen", "224.0.0.251", "5353", "--interface", lan.hosts[1].address
    )
    lan.hosts[0].tool("mcast-send", "224.0.0.251", "5353", "--interface", lan.hosts[0].address)
    out, _ = listener.communicate(timeout=10)
    assert '"from": "10.77.0.11:' in out


def test_link_flap(lab: Lab) -> None:
    lan = lab.lan(2)
    a, b = lan.hosts
    b.start_tool("udp-echo", "5000")
    b.link_down()
    (probe,) = a.tool("udp-probe", "--bind", "40000", "--timeout", "0.3", "10.77.0.12:5000")
    assert probe["seen"] == [None]
    b.link_up()
    (probe,) = a.tool("udp-probe", "--bind", "40000", "10.77.0.12:5000")
    assert probe["seen"] == ["10.77.0.11:40000"]


def test_teardown_kills_processes_and_removes_namespaces() -> None:
    lab = Lab()
    lan = lab.lan(2)
    sleeper = lan.hosts[0].popen(["sleep", "600"])
    names = list(lab.namespaces)
    assert set(names) <= set(list_namespaces())
    lab.close()
    assert sleeper.poll() is not None
    assert not set(names) & set(list_namespaces())


def test_sweeper_removes_only_namespaces_of_dead_runs() -> None:
    prepare()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = f"{PREFIX}{gone.pid}-dead00-x"
    alive = f"{PREFIX}{os.getpid()}-live00-x"
    for name in (stale, alive):
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        removed = sweep_stale()
        assert stale in removed and alive not in removed
        assert alive in list_namespaces() and stale not in list_namespaces()
    finally:
        for name in (stale, alive):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@needs_nft
@pytest.mark.parametrize("mode", ["preserving", "random"])
def test_nat_mapping_behaviour(lab: Lab, mode: NatMode) -> None:
    """What hole punching will rely on: the mapping kind each mode produces."""
    nat = lab.two_nats(mode)
    nat.public.start_tool("udp-echo", "3478", "3479")
    targets = (f"{PUBLIC_ADDRESS}:3478", f"{PUBLIC_ADDRESS}:3479")
    for side, router in nat.routers.items():
        host = nat.lans[side].hosts[0]
        (probe,) = host.tool("udp-probe", "--bind", "40000", *targets)
        seen = probe["seen"]
        assert all(s is not None and s.startswith(f"{router.wan_address}:") for s in seen), seen
        ports = [int(s.rsplit(":", 1)[1]) for s in seen]
        if mode == "preserving":
            assert ports == [40000, 40000], "one private socket keeps one public port"
        else:
            assert 40000 not in ports and ports[0] != ports[1], "a new port per destination"
    # Private addresses on the other side are unreachable: there is no route there.
    (probe,) = (
        nat.lans["a"]
        .hosts[0]
        .tool(
            "udp-probe",
            "--bind",
            "40001",
            "--timeout",
            "0.3",
            f"{nat.lans['b'].hosts[0].address}:9",
        )
    )
    assert probe["seen"] == [None]


@needs_nft
def test_nat_drops_unsolicited_inbound_but_passes_replies(lab: Lab) -> None:
    nat = lab.two_nats("preserving")
    host, router = nat.lans["a"].hosts[0], nat.routers["a"]
    echo, _ = nat.public.start_tool("udp-echo", "3478")
    host.tool("udp-probe", "--bind", "40000", f"{PUBLIC_ADDRESS}:3478")
    echo.terminate()
    echo.wait(5)
    mapped = f"{router.wan_address}:40000"
    listener, _ = host.start_tool("udp-listen", "40000", "--timeout", "1.5")
    nat.public.tool("udp-send", "--bind", "9999", mapped, "--payload", "stranger")
    out, _ = listener.communicate(timeout=10)
    assert '"received": null' in out, "a port nobody talked to must stay closed"
    listener, _ = host.start_tool("udp-listen", "40000", "--timeout", "3")
    nat.public.tool("udp-send", "--bind", "3478", mapped, "--payload", "reply")
    out, _ = listener.communicate(timeout=10)
    assert '"received": "reply"' in out, "the peer we talked to gets through"
