"""mDNS announcements are claims from strangers: strict parsing, silent drops, no network here.

The lab tests (``test_netlab_mdns.py``) run the real thing inside namespaces;
these check the rules without sending a packet.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from pathlib import Path

import pytest

from p2pchat import cli
from p2pchat.identity import Identity
from p2pchat.net import mdns
from p2pchat.net.mdns import Claim, MdnsOptions, MdnsService, parse_claim, parse_txt
from p2pchat.node import Node

from .conftest import make_home

LAN = [ipaddress.ip_network("10.77.0.0/24")]
PEER = Identity.generate().peer_id


def txt(*items: str | bytes) -> bytes:
    out = b""
    for item in items:
        raw = item.encode() if isinstance(item, str) else item
        out += bytes((len(raw),)) + raw
    return out


def good(**overrides: str | None) -> bytes:
    fields: dict[str, str | None] = {"id": PEER, "v": "1", "port": "4001"}
    fields.update(overrides)
    return txt(*(k if v is None else f"{k}={v}" for k, v in fields.items() if v != "<absent>"))


def claim(
    text: bytes, port: int | None = 4001, addresses: Iterable[str] = ("10.77.0.12",)
) -> Claim | None:
    return parse_claim(text, port, addresses, networks=LAN, family=4)


def test_a_well_formed_announcement_is_a_claim() -> None:
    assert claim(good()) == Claim(PEER, ("10.77.0.12:4001",), None)
    named = claim(good(name="Alice ✓"))
    assert named is not None and named.name == "Alice ✓"


def test_txt_parsing_follows_rfc_6763() -> None:
    assert parse_txt(b"") == {}
    assert parse_txt(txt("ID=a", "id=b", "flag", "=ignored")) == {"id": b"a", "flag": None}
    assert parse_txt(b"\x05id=a") is None  # length runs past the end
    assert parse_txt(txt(b"\xffkey=1")) is None  # keys are printable ASCII
    assert parse_txt(txt(*[f"k{i}={'x' * 240}" for i in range(5)])) is None  # too large


@pytest.mark.parametrize(
    "text",
    [
        good(v="2"),
        good(v=None),
        good(v="<absent>"),
        good(id="<absent>"),
        good(id=None),
        good(id="not-a-peer-id"),
        good(id=PEER.upper()),  # forgiven for humans, not on the wire
        good(id=PEER[:-1]),
        good(id="1" * 52),
        good(port="http"),
        good(port="0"),
        good(port="70000"),
        good(port="-1"),
        good(port="4002"),  # disagrees with the SRV record
        txt(b"id=" + PEER.encode() + b"\xff", "v=1", "port=4001"),
        txt("id=" + "y" * 52, "id=" + PEER, "v=1", "port=4001"),  # first occurrence wins
        b"\xff\x01id",
        txt(*(f"pad{i}={'x' * 240}" for i in range(30))) + good(),
    ],
)
def test_malformed_announcements_are_dropped(text: bytes) -> None:
    assert claim(text) is None


def test_ports_and_addresses_are_checked() -> None:
    assert claim(good(), port=70000) is None
    assert claim(good(port="<absent>"), port=None) is None
    only_srv = claim(good(port="<absent>"), port=5000)
    assert only_srv is not None and only_srv.addresses == ("10.77.0.12:5000",)
    only_txt = claim(good(), port=0)
    assert only_txt is not None and only_txt.addresses == ("10.77.0.12:4001",)
    for hostile in (
        ["127.0.0.1"],
        ["0.0.0.0"],
        ["224.0.0.251"],
        ["255.255.255.255"],
        ["192.0.2.1"],  # not on any of our links
        ["fe80::1"],
        ["not an address"],
        [],
    ):
        assert claim(good(), addresses=hostile) is None, hostile
    mixed = claim(good(), addresses=["127.0.0.1", "10.77.0.12", "10.77.0.12", "10.77.0.13"])
    assert mixed is not None and mixed.addresses == ("10.77.0.12:4001", "10.77.0.13:4001")
    v6 = parse_claim(good(), 4001, ["fd00::5", "10.0.0.1"], networks=None, family=6)
    assert v6 is not None and v6.addresses == ("[fd00::5]:4001",)
    many = [f"10.77.0.{i}" for i in range(20, 60)]
    capped = claim(good(), addresses=many)
    assert capped is not None and len(capped.addresses) == mdns.MAX_ADDRESSES


def test_names_are_bounded_and_may_be_garbage() -> None:
    bad_utf8 = claim(txt("id=" + PEER, "v=1", "port=4001", b"name=\xff\xfe"))
    assert bad_utf8 is not None and bad_utf8.name is None
    long = claim(good(name="n" * 240))
    assert long is not None and long.name is None
    assert mdns._encode_name("é" * 150).decode("utf-8") == "é" * (mdns.MAX_NAME_BYTES // 2)


class Owner:
    """Records what the service tells the node."""

    peer_id = Identity.generate().peer_id
    name = "me"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, tuple[str, ...]]] = []

    def peer_discovered(
        self, peer_id: str, addresses: Iterable[str], *, source: str, name: str | None = None
    ) -> None:
        assert source == "mdns"
        self.calls.append(("found", peer_id, tuple(addresses)))

    def peer_lost(self, peer_id: str, *, source: str) -> None:
        assert source == "mdns"
        self.calls.append(("lost", peer_id, ()))


async def test_two_services_claiming_one_id_are_merged_until_both_are_gone() -> None:
    owner = Owner()
    service = MdnsService(owner, MdnsOptions())
    service._claims["a"] = Claim(PEER, ("10.77.0.12:4001",), None)
    service._publish(PEER)
    service._claims["b"] = Claim(PEER, ("10.77.0.66:4001",), "liar")
    service._publish(PEER)
    assert owner.calls[-1] == ("found", PEER, ("10.77.0.12:4001", "10.77.0.66:4001"))
    service._drop("b")
    assert owner.calls[-1] == ("found", PEER, ("10.77.0.12:4001",))
    service._drop("a")
    assert owner.calls[-1] == ("lost", PEER, ())
    service._drop("a")
    assert len(owner.calls) == 4


def test_daemon_flags() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["daemon"])
    assert not args.no_mdns and not args.mdns_hidden and not args.mdns_share_name
    args = parser.parse_args(
        ["daemon", "--mdns-interface", "eth0", "--mdns-interface", "10.0.0.2",
         "--mdns-hidden", "--mdns-share-name"]
    )  # fmt: skip
    assert args.mdns_interface == ["eth0", "10.0.0.2"] and args.mdns_hidden
    assert args.mdns_share_name


async def test_nodes_started_in_process_stay_off_the_lan(tmp_path: Path) -> None:
    """``Node.start()`` defaults to no mDNS, so the other tests never multicast."""
    node = Node(make_home(tmp_path, "quiet"))
    await node.start()
    try:
        assert node._mdns is None
    finally:
        await node.stop()


async def test_an_unknown_interface_is_a_clear_error(tmp_path: Path) -> None:
    node = Node(make_home(tmp_path, "picky"))
    with pytest.raises(mdns.MdnsError, match="no-such-if0"):
        await node.start(mdns=MdnsOptions(interfaces=("no-such-if0",)))
    assert not node.running and node._endpoint is None
    await node.stop()
