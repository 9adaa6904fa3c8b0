"""The shapes of network the tests need: one LAN, and two LANs behind home-style NATs.

Addresses: LAN ``k`` is 10.77.k.0/24 (router .1, hosts .11, .12, ...); the
"internet" segment is 198.51.100.0/24 (TEST-NET-2, never routed anywhere),
routers at .1 and .2, the public host at .100.  All of them exist only inside the
lab's namespaces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .lab import Host, Lab

NatMode = Literal["preserving", "random"]

INTERNET = "198.51.100"
PUBLIC_ADDRESS = f"{INTERNET}.100"


@dataclass
class Lan:
    """A bridge (in its own "switch" namespace) and the hosts plugged into it."""

    switch: str
    hosts: list[Host]
    network: str
    gateway: str | None = None


@dataclass
class Router:
    """A NAT router: ``lan0`` faces its LAN, ``wan0`` the internet segment."""

    lab: Lab
    ns: str
    lan_address: str
    wan_address: str

    def link_down(self) -> None:
        self.lab.set_link(self.ns, "wan0", up=False)

    def link_up(self) -> None:
        self.lab.set_link(self.ns, "wan0", up=True)

    def ruleset(self) -> str:
        return self.lab.run(self.ns, "nft", "list", "ruleset").stdout


@dataclass
class TwoNats:
    """Two LANs, each behind its own NAT, meeting on a segment with one public host."""

    mode: NatMode
    internet: str
    public: Host
    routers: dict[str, Router]
    lans: dict[str, Lan]


def build_lan(
    lab: Lab, n: int, *, subnet: int = 0, role: str | None = None, gateway: bool = False
) -> Lan:
    role = role or f"lan{subnet}"
    switch = lab.netns(f"{role}-sw")
    lab.bridge(switch)
    network = f"10.77.{subnet}"
    gw = f"{network}.1" if gateway else None
    hosts = [
        lab.host(f"{role}-h{i}", switch, f"{network}.{10 + i}/24", gateway=gw)
        for i in range(1, n + 1)
    ]
    return Lan(switch, hosts, f"{network}.0/24", gw)


def _nat_rules(mode: NatMode) -> str:
    """A home router: masquerade out, and nothing in that we did not ask for.

    ``masquerade`` keeps the source port when it is free (so one private socket
    keeps one public port whoever it talks to); ``masquerade random`` picks a
    port per flow, which is what endpoint-dependent (symmetric) NATs look like
    to hole punching.
    """
    masq = "masquerade random" if mode == "random" else "masquerade"
    return f"""
table inet p2pt_filter {{
    chain input {{
        type filter hook input priority 0; policy drop;
        ct state established,related accept
        iifname {{ "lo", "lan0" }} accept
    }}
    chain forward {{
        type filter hook forward priority 0; policy drop;
        ct state established,related accept
        iifname "lan0" oifname "wan0" accept
    }}
}}
table ip p2pt_nat {{
    chain postrouting {{
        type nat hook postrouting priority 100; policy accept;
        oifname "wan0" {masq}
    }}
}}
"""


def build_two_nats(lab: Lab, mode: NatMode, *, hosts_per_lan: int = 1) -> TwoNats:
    internet = lab.netns("inet-sw")
    lab.bridge(internet)
    public = lab.host("pub", internet, f"{PUBLIC_ADDRESS}/24")
    routers: dict[str, Router] = {}
    lans: dict[str, Lan] = {}
    for index, side in enumerate(("a", "b"), start=1):
        lan = build_lan(lab, hosts_per_lan, subnet=index, role=f"nat{side}", gateway=True)
        router = lab.netns(f"nat{side}-rt")
        lab.plug(lan.switch, "p-router", router, "lan0")
        lab.ip(router, "addr", "add", f"10.77.{index}.1/24", "dev", "lan0")
        lab.plug(internet, f"p-rt{side}", router, "wan0")
        wan = f"{INTERNET}.{index}"
        lab.ip(router, "addr", "add", f"{wan}/24", "dev", "wan0")
        lab.sysctl(router, "net.ipv4.ip_forward", "1")
        lab.run(router, "nft", "-f", "-", input=_nat_rules(mode))
        routers[side] = Router(lab, router, f"10.77.{index}.1", wan)
        lans[side] = lan
    return TwoNats(mode, internet, public, routers, lans)
