"""This host's own unicast addresses, read from its interfaces (nothing is sent).

A node bound to a wildcard address (``0.0.0.0``, ``::``) is reachable on every
interface; invites, the DHT record and the NAT classification (an observer that sees
one of these addresses with our port means there is no NAT) need them spelled out.
"""

from __future__ import annotations

import ipaddress

import ifaddr

__all__ = ["interface_ips", "local_networks"]


def interface_ips(*, v6: bool) -> list[str]:
    """Unicast addresses of this host's interfaces, loopback last (reads, never sends)."""
    found: list[str] = []
    loop: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                addr = ipaddress.ip_address(ip.ip)
            elif v6:
                addr = ipaddress.ip_address(ip.ip[0].split("%")[0])
            else:
                continue
            if addr.is_link_local or addr.is_multicast or addr.is_unspecified:
                continue
            (loop if addr.is_loopback else found).append(str(addr))
    return list(dict.fromkeys(found + loop))


def local_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The subnets of our non-loopback interfaces: a peer in one of them is on our LAN."""
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            host = ip.ip if isinstance(ip.ip, str) else ip.ip[0].split("%")[0]
            try:
                net = ipaddress.ip_interface(f"{host}/{ip.network_prefix}").network
            except ValueError:
                continue
            if not net.is_loopback and not net.is_link_local:
                nets.append(net)
    return nets
