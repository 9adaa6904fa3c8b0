"""The DHT on the node's shared UDP socket, with real daemons on 127.0.0.1.

Every swarm here is private: the first daemon is the only bootstrap node and the others
name it with ``--bootstrap``; nothing is sent beyond loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from p2pchat import cli
from p2pchat.config import BOOTSTRAP_ENV, DEFAULT_BOOTSTRAP, bootstrap_list
from p2pchat.dht.bencode import bdecode, bencode
from p2pchat.dht.krpc import compact_addr
from p2pchat.dht.records import PEER_RECORD_SALT, PeerRecord, record_target
from p2pchat.identity import Identity, key_from_peer_id
from p2pchat.net import dht as dht_module
from p2pchat.net.dht import DhtOptions, DhtService
from p2pchat.net.endpoint import Endpoint
from p2pchat.net.sockopts import raise_buffers
from p2pchat.node import NodeError

from .conftest import StartNode, free_udp_port, make_home
from .daemons import Daemon, DhtDaemon, delivered, run_cli, until

pytestmark = pytest.mark.timeout(120)


Swarm = tuple[DhtDaemon, DhtDaemon, DhtDaemon]


@pytest.fixture
async def swarm(tmp_path: Path) -> AsyncIterator[Swarm]:
    """A bootstrap daemon and two others (alice, bob) that know only the bootstrap."""
    boot_port = free_udp_port()
    bootstrap = ["--bootstrap", f"127.0.0.1:{boot_port}"]
    daemons = [
        DhtDaemon(make_home(tmp_path, name).home, f"127.0.0.1:{port}", extra=bootstrap)
        for name, port in (
            ("boot", boot_port),
            ("alice", free_udp_port()),
            ("bob", free_udp_port()),
        )
    ]
    boot, alice, bob = daemons
    try:
        await boot.start()
        await asyncio.gather(alice.start(), bob.start())
        yield boot, alice, bob
    finally:
        for d in daemons:
            await d.stop()


async def published(d: DhtDaemon) -> dict[str, Any] | None:
    status: dict[str, Any] = await d.call("dht_status")
    return status if status["record"]["published_at"] is not None else None


async def test_contact_added_by_bare_id_is_found_through_the_dht(
    swarm: Swarm, tmp_path: Path
) -> None:
    boot, alice, bob = swarm
    bob_status = await until(lambda: published(bob))
    assert bob_status["record"]["addresses"] == [bob.listen]
    assert bob_status["record"]["stored"] >= 1
    assert bob_status["read_only"] is False  # private swarm: serving from the start

    # Alice knows nothing but Bob's ID: no invite, no address.
    await alice.call("add", ref=bob.peer_id, name="bob", addresses=[])
    await alice.call("send", contact="bob", text="found you through the DHT", wait=0)
    # Alice resolved Bob's record and dialled him: Bob sees her contact request.
    await until(lambda: bob.call("requests"))
    await bob.call("accept", ref=alice.peer_id, name="alice")
    await until(lambda: delivered(alice, "bob", "found you through the DHT"))
    bodies = [m["body"] for m in await bob.call("history", contact="alice")]
    assert bodies == ["found you through the DHT"]
    contact = (await alice.call("contacts"))[0]
    assert contact["addresses"] == [bob.listen]
    nearby = {p["peer_id"]: p for p in await alice.call("nearby")}
    assert nearby[bob.peer_id]["source"] == "dht"

    # The CLI commands, through the running node's control socket.
    status = json.loads(run_cli(alice.paths.home, "dht", "status", "--json").stdout)
    assert status["table_size"] > 0
    assert status["bootstrap"] == [f"127.0.0.1:{boot.listen.rsplit(':', 1)[1]}"]
    assert status["record"]["seq"] is not None and status["record"]["stored"] >= 1
    plain = run_cli(alice.paths.home, "dht", "status")
    assert plain.returncode == 0 and "routing table:" in plain.stdout
    found = run_cli(alice.paths.home, "dht", "lookup", bob.peer_id, "--json")
    assert json.loads(found.stdout)["addresses"] == [bob.listen]
    by_name = run_cli(alice.paths.home, "dht", "lookup", "bob")
    assert by_name.stdout.split() == [bob.listen]

    # The routing table outlives the process (owner-only file).
    await alice.stop()
    state = alice.paths.home / "dht.state"
    assert state.exists() and (state.stat().st_mode & 0o777) == 0o600


async def test_dht_commands_explain_when_there_is_no_dht(tmp_path: Path) -> None:
    home = make_home(tmp_path, "carol").home
    nothing = run_cli(home, "dht", "status")
    assert nothing.returncode == cli.EXIT_NETWORK and "no node runs" in nothing.stderr
    daemon = Daemon(home, f"127.0.0.1:{free_udp_port()}")  # --no-dht
    await daemon.start()
    try:
        off = run_cli(home, "dht", "lookup", Identity.generate().peer_id)
        assert off.returncode == cli.EXIT_ERROR and "DHT is off" in off.stderr
    finally:
        await daemon.stop()


class KrpcClient(asyncio.DatagramProtocol):
    """A raw UDP socket on 127.0.0.1 that speaks (or abuses) KRPC."""

    def __init__(self) -> None:
        self.replies: list[dict[bytes, Any]] = []
        self.transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def open(cls) -> KrpcClient:
        return await cls.open_on("127.0.0.1")

    @classmethod
    async def open_on(cls, host: str) -> KrpcClient:
        loop = asyncio.get_running_loop()
        client = cls()
        transport, _ = await loop.create_datagram_endpoint(lambda: client, local_addr=(host, 0))
        client.transport = transport
        return client

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        try:
            message = bdecode(data)
        except Exception:
            return
        if isinstance(message, dict):
            self.replies.append(message)

    def send(self, data: bytes, target: str) -> None:
        assert self.transport is not None
        host, port = target.rsplit(":", 1)
        self.transport.sendto(data, (host, int(port)))

    def query(self, target: str, method: bytes, args: dict[bytes, Any], tid: bytes) -> None:
        args = {b"id": os.urandom(20), **args}
        self.send(bencode({b"t": tid, b"y": b"q", b"q": method, b"a": args}), target)

    def reply(self, tid: bytes) -> dict[bytes, Any] | None:
        return next((r for r in self.replies if r.get(b"t") == tid), None)

    async def answer(self, tid: bytes) -> dict[bytes, Any]:
        async def check() -> dict[bytes, Any] | None:
            return self.reply(tid)

        reply: dict[bytes, Any] = await until(check, timeout=5)
        return reply

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def test_quic_and_krpc_share_the_socket_under_load(swarm: Swarm) -> None:
    _boot, alice, bob = swarm
    await until(lambda: published(bob))
    await alice.call("add", ref=bob.peer_id, name="bob", addresses=[])
    await bob.call("add", ref=alice.peer_id, name="alice", addresses=[])
    await alice.call("send", contact="bob", text="warm-up", wait=0)
    await until(lambda: delivered(alice, "bob", "warm-up"))

    krpc = await KrpcClient.open()
    stop = asyncio.Event()

    async def hammer() -> int:
        sent = 0
        # A minimum volume, however fast the chat side finishes.
        while not stop.is_set() or sent < 600:
            for _ in range(20):
                tid = sent.to_bytes(4, "big")
                if sent % 2:
                    krpc.query(bob.listen, b"ping", {}, tid)
                else:
                    krpc.query(bob.listen, b"find_node", {b"target": os.urandom(20)}, tid)
                sent += 1
            await asyncio.sleep(0.01)
        return sent

    flood = asyncio.ensure_future(hammer())
    try:
        bodies = [f"under load {i}" for i in range(100)]
        for body in bodies:
            await alice.call("send", contact="bob", text=body, wait=0)
        await until(lambda: delivered(alice, "bob", bodies[-1]), timeout=30)
        # Meanwhile the DHT keeps answering on the same port (within its rate limit).
        assert await alice.call("dht_lookup", peer="bob") == {
            "peer": "bob",
            "addresses": [bob.listen],
        }
    finally:
        stop.set()
        sent = await flood
        krpc.close()
    received = [m["body"] for m in await bob.call("history", contact="alice")]
    assert received == ["warm-up", *bodies]
    answered = [r for r in krpc.replies if r.get(b"y") == b"r"]
    assert sent > 500 and len(answered) >= 40
    stats = (await bob.call("dht_status"))["stats"]
    assert stats["received"] >= sent // 2


async def test_hostile_krpc_leaves_node_and_chat_standing(swarm: Swarm) -> None:
    boot, alice, bob = swarm
    await until(lambda: published(bob))
    target = boot.listen  # holds Bob's record
    krpc = await KrpcClient.open()
    try:
        # Garbage: not bencode, truncated, nested to the hilt, oversized, wrong types.
        junk = [
            b"d" + os.urandom(200),
            b"d1:t2:xy1:y1:q",
            b"d" + b"l" * 5000 + b"e" * 5000 + b"e",
            b"d1:ad2:id20:" + b"x" * 20 + b"e1:q4:ping1:t2:aa1:y1:q" + b"e" * 3,
            b"d1:ad2:idi5ee1:q4:ping1:t2:ab1:y1:qe",
            b"d1:ad2:id20:" + b"x" * 20 + b"e1:q9:not_a_verb1:t2:ac1:y1:qe",
            b"d" + b"x" * 65_000,
            bytes([0x64]) + b"\x00" * 1499,
        ]
        for data in junk:
            krpc.send(data, target)
        # A forged record for Bob: his key, a newer seq, a signature that is not his.
        krpc.query(target, b"get", {b"target": os.urandom(20)}, b"tok1")
        token = (await krpc.answer(b"tok1"))[b"r"][b"token"]
        forged = PeerRecord(addresses=(("127.0.0.1", 9),)).encode()
        put = {
            b"k": key_from_peer_id(bob.peer_id),
            b"salt": PEER_RECORD_SALT,
            b"seq": int(time.time()) + 10_000,
            b"sig": os.urandom(64),
            b"token": token,
            b"v": bdecode(forged),
        }
        krpc.query(target, b"put", put, b"put1")
        reply = await krpc.answer(b"put1")
        assert reply[b"y"] == b"e" and reply[b"e"][0] == 206
        # A flood from one source: answered up to the per-IP rate, the rest dropped.
        for i in range(3000):
            krpc.query(target, b"ping", {}, b"f" + i.to_bytes(3, "big"))
            if i % 100 == 0:
                await asyncio.sleep(0)
        await asyncio.sleep(0.5)
    finally:
        krpc.close()
    assert boot.alive and alice.alive and bob.alive
    stats = (await boot.call("dht_status"))["stats"]
    assert stats["dropped_malformed"] >= 4 and stats["dropped_rate"] > 500
    await asyncio.sleep(2.5)  # let the shared 127.0.0.1 rate bucket refill
    found = await alice.call("dht_lookup", peer=bob.peer_id)
    assert found["addresses"] == [bob.listen]  # the genuine record, not the forgery
    await alice.call("add", ref=bob.peer_id, name="bob", addresses=[])
    await bob.call("add", ref=alice.peer_id, name="alice", addresses=[])
    await alice.call("send", contact="bob", text="still standing", wait=0)
    await until(lambda: delivered(alice, "bob", "still standing"))


#: Kernel memory one 1,400-byte datagram takes in a receive queue on loopback (measured:
#: 92 fit in the default 208 KiB, 3,640 in a granted 8 MiB).
DATAGRAM_TRUESIZE = 2304
DEFAULT_QUEUE = 92


async def test_a_burst_of_junk_does_not_drop_valid_pings(tmp_path: Path) -> None:
    """Thousands of junk datagrams at once overflowed the default ~208 KiB receive queue
    and valid pings in the middle of the burst were lost; the raised buffers hold it."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        granted = (raise_buffers(probe) or (0, 0))[0]
    finally:
        probe.close()
    burst = min(2000, granted // DATAGRAM_TRUESIZE // 2)
    if burst < 5 * DEFAULT_QUEUE:
        pytest.skip(f"the kernel grants only {granted} bytes of receive buffer here")
    port = free_udp_port()
    node = DhtDaemon(
        make_home(tmp_path, "node").home,
        f"127.0.0.1:{port}",
        extra=["--bootstrap", f"127.0.0.1:{port}"],
    )
    await node.start()
    try:
        await until(lambda: node.call("dht_status"))
        junk = b"d" + os.urandom(1399)
        pings = 10
        every = burst // pings

        def blast() -> set[bytes]:
            """The burst with pings in its middle, then every ping reply within 30 s."""
            with (
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as flood,
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as pinger,
            ):
                pinger.bind(("127.0.0.2", 0))  # its own IP: the per-IP limit is not in play
                for i in range(burst):
                    flood.sendto(junk, ("127.0.0.1", port))
                    if i % every == every // 2:
                        ping = {
                            b"a": {b"id": os.urandom(20)},
                            b"q": b"ping",
                            b"t": b"p%03d" % (i // every),
                            b"y": b"q",
                        }
                        pinger.sendto(bencode(ping), ("127.0.0.1", port))
                answered: set[bytes] = set()
                deadline = time.monotonic() + 30
                while len(answered) < pings and time.monotonic() < deadline:
                    pinger.settimeout(max(0.01, deadline - time.monotonic()))
                    try:
                        reply = bdecode(pinger.recv(2048))
                    except TimeoutError:
                        break
                    if isinstance(reply, dict) and reply.get(b"y") == b"r":
                        answered.add(reply[b"t"])
                return answered

        answered = await asyncio.to_thread(blast)
        assert len(answered) == pings, f"{pings - len(answered)} of {pings} pings lost"
        stats = (await node.call("dht_status"))["stats"]
        assert stats["dropped_malformed"] >= burst // 2  # the junk did reach the node
    finally:
        await node.stop()


# ---------------------------------------------------------------- in-process services


async def service(
    bootstrap: tuple[str, ...] = (), *, state: Path | None = None, **options: Any
) -> DhtService:
    identity = Identity.generate()
    endpoint = Endpoint(identity)
    await endpoint.start("127.0.0.1", 0)
    dht = DhtService(
        endpoint, identity, DhtOptions(bootstrap=bootstrap, **options), state_path=state
    )
    await dht.start()
    return dht


async def close(dht: DhtService) -> None:
    await dht.stop()
    dht._endpoint.close()


def test_bootstrap_list_precedence() -> None:
    env = {BOOTSTRAP_ENV: " 127.0.0.1:1, 127.0.0.1:2\n127.0.0.1:3 ,"}
    assert bootstrap_list(["127.0.0.1:9"], env) == ("127.0.0.1:9",)
    assert bootstrap_list(None, env) == ("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3")
    assert bootstrap_list([], {BOOTSTRAP_ENV: " "}) == DEFAULT_BOOTSTRAP
    with pytest.raises(ValueError):
        DhtOptions(bootstrap=("no-port",))


async def test_node_start_keeps_the_dht_off_by_default(start_node: StartNode) -> None:
    node = await start_node("quiet")
    with pytest.raises(NodeError, match="DHT is off"):
        node.dht_status()
    krpc = await KrpcClient.open()
    try:
        krpc.query(node.addresses[0], b"ping", {}, b"p1")
        await asyncio.sleep(0.3)
        assert krpc.replies == []
    finally:
        krpc.close()


async def test_routing_table_and_id_survive_a_restart(tmp_path: Path) -> None:
    first = await service()
    second = await service(
        (f"127.0.0.1:{first.status()['listen'].rsplit(':', 1)[1]}",), state=tmp_path / "dht.state"
    )
    try:
        assert await second.wait_ready(5)
        before = second.status()
        assert before["table_size"] == 1
    finally:
        await close(second)
    again = await service(state=tmp_path / "dht.state")
    try:
        after = again.status()
        assert after["node_id"] == before["node_id"] and after["table_size"] == 1
    finally:
        await close(again)
        await close(first)


class FakeVoter(asyncio.DatagramProtocol):
    """A DHT node on its own loopback IP that answers queries, telling the
    requester its address (the BEP 42 ``ip`` field)."""

    def __init__(self) -> None:
        self.queries: list[dict[bytes, Any]] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.node_id = os.urandom(20)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        message = bdecode(data)
        assert isinstance(message, dict) and message[b"y"] == b"q"
        self.queries.append(message)
        host, port = str(addr[0]), int(addr[1])
        reply = {
            b"t": message[b"t"],
            b"y": b"r",
            b"ip": compact_addr((host, port)),
            b"r": {b"id": self.node_id, b"nodes": b""},
        }
        assert self.transport is not None
        self.transport.sendto(bencode(reply), (host, port))


async def test_read_only_until_reachable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The public-swarm rule, played on loopback: the bootstrap voters count as public."""
    monkeypatch.setattr(dht_module, "is_bep42_exempt", lambda ip: False)
    loop = asyncio.get_running_loop()
    voters: list[FakeVoter] = []
    for n in (2, 3, 4):
        voter = FakeVoter()
        voter.transport, _ = await loop.create_datagram_endpoint(
            lambda v=voter: v,
            local_addr=(f"127.0.0.{n}", 0),  # type: ignore[misc]
        )
        voters.append(voter)
    bootstrap = tuple(
        f"127.0.0.{n}:{v.transport.get_extra_info('sockname')[1]}"  # type: ignore[union-attr]
        for n, v in zip((2, 3, 4), voters, strict=True)
    )
    dht = await service(bootstrap)
    target = dht.status()["listen"]
    try:
        assert await dht.wait_ready(5)
        status = dht.status()
        # Three distinct voters agree on our address, but nobody has reached us unasked.
        assert status["external_address"]["address"] == target
        assert status["read_only"] is True and "unsolicited" in status["mode"]
        assert all(q.get(b"ro") == 1 for v in voters for q in v.queries)  # BEP 43
        # A node we queried pinging back proves nothing about inbound reachability.
        known = await KrpcClient.open_on("127.0.0.2")
        known.query(target, b"ping", {}, b"k1")
        await asyncio.sleep(0.2)
        assert known.replies == [] and dht.status()["read_only"] is True
        known.close()
        # A query from an IP we never sent to came through: serve, answering it too.
        stranger = await KrpcClient.open_on("127.0.0.5")
        stranger.query(target, b"ping", {}, b"s1")
        assert (await stranger.answer(b"s1"))[b"y"] == b"r"
        assert dht.status()["read_only"] is False
        stranger.close()
    finally:
        await close(dht)
        for voter in voters:
            assert voter.transport is not None
            voter.transport.close()


async def test_addresses_from_every_source_and_the_record_that_carries_them() -> None:
    """A wildcard-bound node publishes; contacts' and rendezvous nodes' observations,
    the NAT kind and the rendezvous list reach the record that others look up."""
    first = await service()
    boot = f"127.0.0.1:{first.status()['listen'].rsplit(':', 1)[1]}"
    identity = Identity.generate()
    endpoint = Endpoint(identity)
    await endpoint.start("0.0.0.0", 0)
    port = endpoint.local_address[1] if endpoint.local_address else 0
    second = DhtService(endpoint, identity, DhtOptions(bootstrap=(boot,)))
    await second.start()
    try:
        assert await second.wait_ready(5)
        # The named bootstrap saw us at 127.0.0.1 with our own port: no NAT, on its word.
        assert second.reflexive_addresses() == [("127.0.0.1", port)]
        assert second.nat_kind() == "none"
        record = await until(lambda: first.lookup_record(identity.peer_id, timeout=5))
        assert ("127.0.0.1", port) in record.dial_addresses()

        # What authenticated peers saw: one contact is believed, two agreeing on the
        # port make the mapping endpoint-independent; public addresses come first.
        contact, rendezvous = Identity.generate().peer_id, Identity.generate().peer_id
        second.observed(("203.0.113.7", 40000), "contact", contact)
        assert second.reflexive_addresses()[0] == ("203.0.113.7", 40000)
        assert second.nat_kind() == "unknown"
        second.observed("203.0.113.7:40000", "rendezvous", rendezvous)
        assert second.nat_kind() == "endpoint-independent"
        second.set_rendezvous([(rendezvous, "198.51.100.7:4001")])
        assert second.rendezvous() == [(rendezvous, ("198.51.100.7", 4001))]

        async def republished() -> Any:
            found = await first.lookup_record(identity.peer_id, timeout=5)
            return found if found is not None and found.rendezvous else None

        found = await until(republished)
        assert found.addresses[0] == ("203.0.113.7", 40000)
        assert found.nat == "endpoint-independent"
        assert found.rendezvous == ((key_from_peer_id(rendezvous), ("198.51.100.7", 4001)),)
        status = second.status()
        assert status["nat"] == "endpoint-independent"
        assert status["observations"][contact]["source"] == "contact"
        with pytest.raises(dht_module.DhtError):
            second.observed(("203.0.113.7", 1), "gossip", contact)
    finally:
        await close(second)
        await close(first)


async def test_a_record_lands_on_several_nodes_and_survives_one_of_them_dying() -> None:
    """The first node to publish in a growing swarm of ten: its record first reaches
    one node, is republished as the table grows, and ends on several, so losing one
    storer loses nothing."""
    nodes = [await service()]
    boot = (nodes[0].status()["listen"],)
    try:
        first = await service(boot)
        nodes.append(first)
        await until(lambda: _async(first.status()["record"]["stored"] >= 1))
        for _ in range(8):
            nodes.append(await service(boot))
        key = first._identity.public_key
        target = record_target(key)

        def holders() -> list[DhtService]:
            return [
                n for n in nodes if n is not first and n.running
                and n.core.local_item(target, asyncio.get_running_loop().time()) is not None
            ]  # fmt: skip

        def spread() -> bool:
            status = first.status()["record"]
            return len(holders()) >= 4 and status["stored"] >= 4 and status["reach"] >= 4

        # A put under load may reach fewer nodes; the next one (15 s on) makes up for it.
        await until(lambda: _async(spread()), timeout=90)
        victim = next(n for n in holders() if n is not nodes[0])  # the bootstrap stays
        await close(victim)
        # A newcomer holds nothing itself: what it finds, it finds on the others.
        asker = await service(boot)
        nodes.append(asker)
        assert await asker.wait_ready(10)
        record = await asker.lookup_record(first._identity.peer_id, timeout=10)
        assert record is not None and record.dial_addresses()
    finally:
        for node in nodes:
            if node.running:
                await close(node)


async def _async(value: Any) -> Any:
    return value


async def test_stop_is_not_lost_when_a_change_races_it() -> None:
    """A change signalled just before ``stop()`` runs: under Python 3.11,
    ``asyncio.wait_for`` returned the finished wait and swallowed the cancel, so the
    publication loop ran on and ``stop()`` waited for it forever.  (The same race was
    fixed in the node's dial loop.)"""
    dht = await service()
    try:
        assert await dht.wait_ready(5)
        for _ in range(3):
            await asyncio.sleep(0.1)  # the publication loop now waits for a change
        dht._changed.set()
        stopping = asyncio.ensure_future(dht.stop())  # runs after the wait has finished
        try:
            async with asyncio.timeout(10):
                await asyncio.shield(stopping)
        finally:
            for task in list(dht._tasks):
                task.cancel()  # unblock a hung stop() so the test can end
            await stopping
        assert not dht._tasks
    finally:
        await close(dht)
