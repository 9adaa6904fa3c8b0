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
SiteKind = Literal["none", "preserving", "changing", "random", "double", "hairpin"]

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

    def set_nat(self, mode: NatMode) -> None:
        """Another kind of NAT from now on, as after a firmware change and a reboot:
        the new rules, and every old mapping forgotten (the WAN link drops)."""
        self.lab.run(self.ns, "nft", "flush", "ruleset")
        self.lab.run(self.ns, "nft", "-f", "-", input=_nat_rules(mode))
        self.link_down()
        self.link_up()

    def renumber(self, new_wan: str, prefix: int = 24) -> None:
        """The ISP hands the router another public address, as a PPPoE or DHCP
        reconnect does: the WAN link drops (masquerade forgets every mapping made
        through it) and comes back with the new address."""
        self.lab.set_link(self.ns, "wan0", up=False)
        self.lab.ip(self.ns, "addr", "del", f"{self.wan_address}/{prefix}", "dev", "wan0")
        self.lab.ip(self.ns, "addr", "add", f"{new_wan}/{prefix}", "dev", "wan0")
        self.lab.set_link(self.ns, "wan0", up=True)
        self.wan_address = new_wan


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


def _nat_rules(mode: str, *, changed: tuple[str, int, str, int] | None = None) -> str:
    """A home router: masquerade out, and nothing in that we did not ask for.

    ``masquerade`` keeps the source port when it is free (so one private socket
    keeps one public port whoever it talks to); ``masquerade random`` picks a
    port per flow, which is what endpoint-dependent (symmetric) NATs look like
    to hole punching.  ``changed`` = (host, port, wan, public port): that host's
    socket gets one fixed other public port for every destination, as an
    endpoint-independent NAT does when the host's own port is taken on the router.
    """
    masq = "masquerade random" if mode == "random" else "masquerade"
    if changed is not None:
        host, port, wan, public = changed
        masq = (
            f'ip saddr {host} udp sport {port} oifname "wan0" snat to {wan}:{public}\n'
            f'        oifname "wan0" masquerade'
        )
        return _ruleset(masq, plain=True)
    return _ruleset(masq)


def _ruleset(masq: str, *, plain: bool = False) -> str:
    postrouting = masq if plain else f'oifname "wan0" {masq}'
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
        {postrouting}
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


#: One site per NAT kind of the matrix, two where a pair of one kind is tested.
MATRIX_SITES: dict[str, SiteKind] = {
    "n1": "none",
    "n2": "none",
    "p1": "preserving",
    "p2": "preserving",
    "c1": "changing",
    "c2": "changing",
    "r1": "random",
}
#: Every pair of NAT kinds but random x random (left to relays), as site names.
MATRIX_PAIRS: dict[str, tuple[str, str]] = {
    "none-none": ("n1", "n2"),
    "none-preserving": ("n1", "p1"),
    "none-changing": ("n1", "c1"),
    "none-random": ("n1", "r1"),
    "preserving-preserving": ("p1", "p2"),
    "preserving-changing": ("p1", "c1"),
    "preserving-random": ("p1", "r1"),
    "changing-changing": ("c1", "c2"),
    "changing-random": ("c1", "r1"),
}


@dataclass
class Site:
    """One place on the lab's internet: hosts, and the router(s) in front of them."""

    kind: SiteKind
    hosts: list[Host]
    router: Router | None = None
    outer: Router | None = None
    """The second router of a double NAT (the one facing the internet)."""

    @property
    def host(self) -> Host:
        return self.hosts[0]


@dataclass
class Internet:
    """A public host and any number of sites on one internet segment."""

    switch: str
    public: Host
    sites: dict[str, Site]


def _router(
    lab: Lab, role: str, lan_switch: str, lan_cidr: str, wan_switch: str, wan_cidr: str, rules: str
) -> Router:
    ns = lab.netns(role)
    lab.plug(lan_switch, "p-router", ns, "lan0")
    lab.ip(ns, "addr", "add", lan_cidr, "dev", "lan0")
    lab.plug(wan_switch, f"p-{role}"[:15], ns, "wan0")
    lab.ip(ns, "addr", "add", wan_cidr, "dev", "wan0")
    lab.sysctl(ns, "net.ipv4.ip_forward", "1")
    lab.run(ns, "nft", "-f", "-", input=rules)
    return Router(lab, ns, lan_cidr.split("/")[0], wan_cidr.split("/")[0])


def build_internet(lab: Lab, sites: dict[str, SiteKind], *, port: int = 4001) -> Internet:
    """The public host at 198.51.100.100 and one site per entry of ``sites``.

    Site ``i`` (from 1, in order) gets LAN 10.77.i.0/24 (hosts .11, .12) and router
    WAN 198.51.100.i; a ``none`` site is a host at 198.51.100.(100+i) with no router.
    ``changing`` maps the host's ``port`` to ``port + 20000``; ``double`` puts an
    inner router (10.77.i.1, WAN 100.64.i.2) behind an outer one (100.64.i.1, WAN
    198.51.100.i); ``hairpin`` has two hosts behind one port-preserving router.
    """
    internet = lab.netns("inet-sw")
    lab.bridge(internet)
    public = lab.host("pub", internet, f"{PUBLIC_ADDRESS}/24")
    out: dict[str, Site] = {}
    for index, (name, kind) in enumerate(sites.items(), start=1):
        if kind == "none":
            host = lab.host(f"{name}-h", internet, f"{INTERNET}.{100 + index}/24")
            out[name] = Site(kind, [host])
            continue
        hosts_per_lan = 2 if kind == "hairpin" else 1
        lan = build_lan(lab, hosts_per_lan, subnet=index, role=name, gateway=True)
        wan = f"{INTERNET}.{index}"
        if kind == "double":
            middle = lab.netns(f"{name}-mid")
            lab.bridge(middle)
            inner = _router(
                lab, f"{name}-in", lan.switch, f"10.77.{index}.1/24",
                middle, f"100.64.{index}.2/24", _nat_rules("preserving"),
            )  # fmt: skip
            lab.ip(inner.ns, "route", "add", "default", "via", f"100.64.{index}.1")
            outer = _router(
                lab, f"{name}-out", middle, f"100.64.{index}.1/24",
                internet, f"{wan}/24", _nat_rules("preserving"),
            )  # fmt: skip
            out[name] = Site(kind, lan.hosts, inner, outer)
            continue
        if kind == "changing":
            rules = _nat_rules(
                "preserving", changed=(lan.hosts[0].address, port, wan, port + 20000)
            )
        else:
            rules = _nat_rules("random" if kind == "random" else "preserving")
        router = _router(
            lab, f"{name}-rt", lan.switch, f"10.77.{index}.1/24", internet, f"{wan}/24", rules
        )
        out[name] = Site(kind, lan.hosts, router)
    return Internet(internet, public, out)
