"""Interoperability with libtorrent's DHT, the most widespread Mainline implementation.

Two of our nodes (``DhtService`` on real endpoints) and one libtorrent session form a
swarm on 127.0.0.1; libtorrent's only bootstrap node is ours. Each side stores BEP 44
mutable items the other reads and verifies, announces peers the other finds, and finds
the other's node in lookups.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import nacl.signing
import pytest

from p2pchat.dht.bencode import bencode
from p2pchat.dht.records import PEER_RECORD_SALT, PeerRecord, read_record_item
from p2pchat.dht.storage import Item
from p2pchat.identity import Identity
from p2pchat.net.dht import DhtOptions, DhtService
from p2pchat.net.endpoint import Endpoint

from .conftest import free_udp_port

lt: Any = pytest.importorskip(
    "libtorrent",
    reason="libtorrent's Python bindings are not installed (pip install libtorrent)",
)

pytestmark = pytest.mark.timeout(60)


@dataclass
class Ours:
    identity: Identity
    endpoint: Endpoint
    dht: DhtService

    @property
    def addr(self) -> tuple[str, int]:
        assert self.endpoint.local_address is not None
        return self.endpoint.local_address


@dataclass
class Libtorrent:
    """A libtorrent session whose alerts are copied out as soon as they are popped
    (an alert object is freed by the next ``pop_alerts``)."""

    session: Any
    port: int
    seen: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def pump(self) -> None:
        for alert in self.session.pop_alerts():
            self.seen.append((type(alert).__name__, _copy(alert)))

    async def wait_for(
        self, kind: str, check: Callable[[dict[str, Any]], bool] = lambda a: True
    ) -> dict[str, Any]:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            self.pump()
            for name, alert in self.seen:
                if name == kind and check(alert):
                    return alert
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {kind} from libtorrent: {[n for n, _ in self.seen]}")


def _copy(alert: Any) -> dict[str, Any]:
    name = type(alert).__name__
    if name == "dht_mutable_item_alert":
        return {
            "key": bytes(alert.key),
            "salt": bytes(alert.salt),
            "seq": int(alert.seq),
            "item": alert.item,
            "signature": bytes(alert.signature),
            "authoritative": bool(alert.authoritative),
        }
    if name == "dht_put_alert":
        return {"public_key": bytes(alert.public_key), "num_success": int(alert.num_success)}
    if name == "dht_get_peers_reply_alert":
        return {"info_hash": bytes(alert.info_hash.to_bytes()), "peers": list(alert.peers())}
    if name == "dht_live_nodes_alert":
        return {"nodes": list(alert.nodes)}
    return {"message": alert.message()}


async def our_node(bootstrap: tuple[str, ...] = ()) -> Ours:
    identity = Identity.generate()
    endpoint = Endpoint(identity)
    await endpoint.start("127.0.0.1", 0)
    dht = DhtService(endpoint, identity, DhtOptions(bootstrap=bootstrap))
    await dht.start()
    return Ours(identity, endpoint, dht)


@pytest.fixture
async def swarm() -> AsyncIterator[tuple[Ours, Ours, Libtorrent]]:
    a = await our_node()
    b = await our_node((f"127.0.0.1:{a.addr[1]}",))
    assert await b.dht.wait_ready(10)
    port = free_udp_port()
    cat = lt.alert.category_t
    session = lt.session(
        {
            "listen_interfaces": f"127.0.0.1:{port}",
            "enable_dht": True,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            "dht_bootstrap_nodes": f"127.0.0.1:{a.addr[1]}",
            # One IP for every node and no BEP 42 IDs on loopback: relax what the
            # public-DHT defaults guard against.
            "dht_restrict_routing_ips": False,
            "dht_restrict_search_ips": False,
            "dht_prefer_verified_node_ids": False,
            "alert_mask": cat.dht_notification
            | cat.dht_operation_notification
            | cat.error_notification
            | cat.status_notification,
        }
    )
    peer = Libtorrent(session, port)
    try:
        await peer.wait_for("dht_bootstrap_alert")
        yield a, b, peer
    finally:
        session.pause()
        del peer, session
        for node in (a, b):
            await node.dht.stop()
            node.endpoint.close()


def libtorrent_keypair() -> tuple[bytes, bytes]:
    """libtorrent signs with the 64-byte expanded key (SHA-512 of the seed, clamped)."""
    seed = os.urandom(32)
    public = bytes(nacl.signing.SigningKey(seed).verify_key)
    expanded = bytearray(hashlib.sha512(seed).digest())
    expanded[0] &= 248
    expanded[31] &= 63
    expanded[31] |= 64
    return bytes(expanded), public


async def test_libtorrent_resolves_our_signed_record(
    swarm: tuple[Ours, Ours, Libtorrent],
) -> None:
    _a, b, peer = swarm
    done = await b.dht.publish()
    assert done is not None and done.stored >= 2  # A and libtorrent took it
    peer.session.dht_get_mutable_item(b.identity.public_key, PEER_RECORD_SALT)
    got = await peer.wait_for("dht_mutable_item_alert", lambda x: x["authoritative"])
    assert got["key"] == b.identity.public_key and got["salt"] == PEER_RECORD_SALT
    item = Item(
        value=bencode(got["item"]),
        key=got["key"],
        signature=got["signature"],
        seq=got["seq"],
        salt=got["salt"],
    )
    # B's bootstrap (A, named by B) saw B at its own address: no NAT.
    assert read_record_item(item, b.identity.public_key) == PeerRecord(
        addresses=(b.addr,), nat="none"
    )


async def test_we_resolve_a_libtorrent_put(swarm: tuple[Ours, Ours, Libtorrent]) -> None:
    a, b, peer = swarm
    secret, public = libtorrent_keypair()
    peer.session.dht_put_mutable_item(secret, public, b"hello from libtorrent", b"lt-salt")
    put = await peer.wait_for("dht_put_alert", lambda x: x["public_key"] == public)
    assert put["num_success"] >= 2
    for node in (a, b):
        item = await node.dht.get_item(public, b"lt-salt")
        assert item is not None and item.verify()
        assert item.value == bencode(b"hello from libtorrent") and item.seq == 1


async def test_each_side_finds_the_other(swarm: tuple[Ours, Ours, Libtorrent]) -> None:
    a, b, peer = swarm
    lt_addr = ("127.0.0.1", peer.port)
    # libtorrent joined through A; B finds it by a find_node lookup for its ID.
    lt_node = a.dht.core.routing_table(4).get_by_addr(lt_addr)
    assert lt_node is not None
    lookup = await b.dht.find_node(lt_node.id)
    assert lookup.nodes[0].addr == lt_addr and lookup.nodes[0].id == lt_node.id
    # libtorrent learnt B from A's referral during its bootstrap lookup (A itself, its
    # bootstrap "router", is kept out of its table by design).
    peer.session.dht_live_nodes(lt.sha1_hash(lt_node.id))
    live = await peer.wait_for("dht_live_nodes_alert")
    assert b.addr in [(str(n["endpoint"][0]), n["endpoint"][1]) for n in live["nodes"]]

    # libtorrent finds the peer we announce ...
    ours_hash = hashlib.sha1(b"p2pchat interop: ours").digest()
    announced = await b.dht.announce(ours_hash)
    assert announced.stored >= 2
    peer.session.dht_get_peers(lt.sha1_hash(ours_hash))
    reply = await peer.wait_for(
        "dht_get_peers_reply_alert", lambda x: x["info_hash"] == ours_hash
    )
    assert b.addr in [(str(h), p) for h, p in reply["peers"]]

    # ... and we find the one libtorrent announces (port implied by its socket).
    theirs_hash = hashlib.sha1(b"p2pchat interop: theirs").digest()
    peer.session.dht_announce(lt.sha1_hash(theirs_hash), 0, 0)
    deadline = time.monotonic() + 20
    while lt_addr not in await b.dht.get_peers(theirs_hash):
        assert time.monotonic() < deadline, "libtorrent's announce never showed up"
        await asyncio.sleep(0.2)
