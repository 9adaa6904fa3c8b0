"""Small programs the lab runs inside namespaces: ``python -m tests.netlab.tools CMD ...``.

They print one JSON line per result so tests can read them without parsing prose.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import signal
import socket
import sys
from typing import Any

MDNS_GROUP = "224.0.0.251"
MDNS_PORT = 5353


def _emit(value: Any) -> None:
    print(json.dumps(value), flush=True)


def _split(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host, int(port)


def udp_echo(ports: list[int]) -> None:
    """Answer every datagram with the source address it came from (a tiny STUN)."""
    socks = []
    for port in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", port))
        socks.append(s)
    _emit({"ready": ports})
    import selectors

    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            _, addr = sock.recvfrom(2048)
            sock.sendto(f"{addr[0]}:{addr[1]}".encode(), addr)


def udp_probe(bind: int, targets: list[str], timeout: float) -> None:
    """From one socket, ask each target which source address it sees."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", bind))
        s.settimeout(timeout)
        seen: list[str | None] = []
        for target in targets:
            reply: str | None = None
            for _ in range(3):
                s.sendto(b"probe", _split(target))
                try:
                    data, _ = s.recvfrom(2048)
                except TimeoutError:
                    continue
                reply = data.decode()
                break
            seen.append(reply)
        _emit({"local": s.getsockname()[1], "seen": seen})


def udp_listen(port: int, timeout: float) -> None:
    """Report the first datagram that reaches ``port`` (or that none did)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", port))
        s.settimeout(timeout)
        _emit({"ready": port})
        try:
            data, addr = s.recvfrom(2048)
        except TimeoutError:
            _emit({"received": None})
            return
        _emit({"received": data.decode(errors="replace"), "from": f"{addr[0]}:{addr[1]}"})


def mcast_listen(group: str, port: int, interface: str, timeout: float) -> None:
    """Join ``group`` on the interface that owns ``interface`` and report one datagram."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("", port))
        membership = socket.inet_aton(group) + socket.inet_aton(interface)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        s.settimeout(timeout)
        _emit({"ready": port})
        try:
            data, addr = s.recvfrom(2048)
        except TimeoutError:
            _emit({"received": None})
            return
        _emit({"received": data.decode(errors="replace"), "from": f"{addr[0]}:{addr[1]}"})


def mcast_send(group: str, port: int, interface: str, payload: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
        s.sendto(payload.encode(), (group, port))
    _emit({"sent": f"{group}:{port}"})


def udp_send(bind: int, target: str, payload: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", bind))
        s.sendto(payload.encode(), _split(target))
    _emit({"sent": target})


async def mdns_announce(spec_path: str, interface: str) -> None:
    """Register the services described in a JSON file, as a hostile LAN host would.

    Each entry: ``instance``, ``port``, ``addresses`` and either ``txt`` (a list
    of [key, value-or-null] pairs, so duplicates and odd types survive) or
    ``raw_txt`` (hex of the TXT rdata, for malformed length bytes).  Probing is
    skipped (``cooperating_responders``), so an entry may reuse a name.
    """
    from zeroconf import IPVersion
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    zc = AsyncZeroconf(interfaces=[interface], ip_version=IPVersion.V4Only)
    infos = []
    for entry in spec:
        properties: bytes | dict[bytes, bytes | None]
        if "raw_txt" in entry:
            properties = bytes.fromhex(entry["raw_txt"])
        else:
            text = b""
            for key, value in entry["txt"]:
                item = key.encode() if value is None else f"{key}={value}".encode()
                text += bytes((len(item),)) + item
            properties = text
        service = "_p2pchat._udp.local."
        info = AsyncServiceInfo(
            service,
            f"{entry['instance']}.{service}",
            port=entry["port"],
            properties=properties,
            server=f"{entry.get('server', entry['instance'][:40])}.local.",
            addresses=[ipaddress.ip_address(a).packed for a in entry["addresses"]],
        )
        await zc.async_register_service(info, cooperating_responders=True, strict=False)
        infos.append(info)
    _emit({"registered": len(infos)})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await zc.async_close()


def mdns_raw(interface: str) -> None:
    """Multicast answers no well-behaved responder would send.

    A PTR to our service type whose instance carries a TXT with broken length
    bytes, an SRV pointing at a host with no address, a record of the wrong
    type under the service name, and plain garbage datagrams.
    """
    from zeroconf import DNSOutgoing, DNSPointer, DNSService, DNSText
    from zeroconf.const import (
        _CLASS_IN,
        _FLAGS_AA,
        _FLAGS_QR_RESPONSE,
        _TYPE_PTR,
        _TYPE_SRV,
        _TYPE_TXT,
    )

    service = "_p2pchat._udp.local."
    out = DNSOutgoing(_FLAGS_QR_RESPONSE | _FLAGS_AA)
    broken = f"broken-txt.{service}"
    out.add_answer_at_time(DNSPointer(service, _TYPE_PTR, _CLASS_IN, 120, broken), 0)
    out.add_answer_at_time(DNSText(broken, _TYPE_TXT, _CLASS_IN, 120, b"\xff\x01id"), 0)
    out.add_answer_at_time(
        DNSService(broken, _TYPE_SRV, _CLASS_IN, 120, 0, 0, 4001, "nowhere.local."), 0
    )
    wrong = f"wrong-type.{service}"
    out.add_answer_at_time(DNSPointer(service, _TYPE_PTR, _CLASS_IN, 120, wrong), 0)
    # A PTR where an SRV belongs, and a TXT claiming to be a PTR's target type.
    out.add_answer_at_time(DNSPointer(wrong, _TYPE_SRV, _CLASS_IN, 120, "x.local."), 0)
    out.add_answer_at_time(DNSText(wrong, _TYPE_PTR, _CLASS_IN, 120, b"\x05id=zz"), 0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
        for packet in out.packets():
            s.sendto(packet, (MDNS_GROUP, MDNS_PORT))
        for junk in (b"", b"\x00" * 12, b"\xff" * 600, bytes(range(256)) * 4):
            s.sendto(junk, (MDNS_GROUP, MDNS_PORT))
    _emit({"sent": True})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="netlab-tools")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("udp-echo")
    p.add_argument("ports", type=int, nargs="+")
    p = sub.add_parser("udp-probe")
    p.add_argument("--bind", type=int, required=True)
    p.add_argument("--timeout", type=float, default=1.0)
    p.add_argument("targets", nargs="+")
    p = sub.add_parser("udp-listen")
    p.add_argument("port", type=int)
    p.add_argument("--timeout", type=float, default=2.0)
    p = sub.add_parser("udp-send")
    p.add_argument("--bind", type=int, required=True)
    p.add_argument("target")
    p.add_argument("--payload", default="unsolicited")
    p = sub.add_parser("mcast-listen")
    p.add_argument("group")
    p.add_argument("port", type=int)
    p.add_argument("--interface", required=True)
    p.add_argument("--timeout", type=float, default=3.0)
    p = sub.add_parser("mcast-send")
    p.add_argument("group")
    p.add_argument("port", type=int)
    p.add_argument("--interface", required=True)
    p.add_argument("--payload", default="hello group")
    p = sub.add_parser("mdns-announce")
    p.add_argument("spec")
    p.add_argument("--interface", required=True)
    p = sub.add_parser("mdns-raw")
    p.add_argument("--interface", required=True)
    args = parser.parse_args(argv)
    if args.cmd == "udp-echo":
        udp_echo(args.ports)
    elif args.cmd == "udp-probe":
        udp_probe(args.bind, args.targets, args.timeout)
    elif args.cmd == "udp-listen":
        udp_listen(args.port, args.timeout)
    elif args.cmd == "udp-send":
        udp_send(args.bind, args.target, args.payload)
    elif args.cmd == "mcast-listen":
        mcast_listen(args.group, args.port, args.interface, args.timeout)
    elif args.cmd == "mcast-send":
        mcast_send(args.group, args.port, args.interface, args.payload)
    elif args.cmd == "mdns-announce":
        asyncio.run(mdns_announce(args.spec, args.interface))
    elif args.cmd == "mdns-raw":
        mdns_raw(args.interface)


if __name__ == "__main__":
    main(sys.argv[1:])
