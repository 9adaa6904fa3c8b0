"""Rendezvous registrations, connect forwarding and hole punching on the node's socket.

The sans-IO pieces live in ``core/punch.py`` (packets, blobs, probe plans) and
``core/rendezvous.py`` (both sides of a registration).  This module is their asyncio
shell, the endpoint's handler for the 0x00-0x3F packet space:

* **As a rendezvous** (every node): a :class:`RendezvousServer` takes registrations
  from contacts (from anyone with ``relay=True``) and forwards connect requests to them.
* **As a registrant**: keeps one or two registrations (``set_rendezvous``), which hold
  the NAT mapping open, tell us the address the rendezvous sees us at, and, compared
  with each other, whether our NAT keeps one port for every destination.
* **As a dialer** (:meth:`PunchService.dial`): sends a connect request through the
  target's rendezvous, measures the round trip, sends ``Sync``, waits half the round
  trip (so both sides probe at the same moment, as libp2p's DCUtR does) and probes the
  target's candidates; every path a probe answers on is handed to the caller, which
  starts QUIC there (the dialer keeps the client role).
* **As a target**: answers a forwarded request from a contact (or, within a small
  budget, a stranger: contact requests need a path too) and probes back.

Endpoint-dependent NATs get birthday probing (``core/punch.Mode``): the side behind
one opens many extra sockets (``Endpoint.open_aux_sockets``), the other sprays probes
at random ports; the socket a probe gets through on carries the QUIC connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import random
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from p2pchat.core import punch
from p2pchat.core.budget import TokenBucket
from p2pchat.core.punch import (
    NAT_ED,
    NAT_EI,
    NAT_NONE,
    NAT_UNKNOWN,
    Addr,
    BlobKind,
    ConnectBlob,
    Mode,
    PunchError,
    PunchPlan,
    Status,
)
from p2pchat.core.rendezvous import RegistrationClient, RendezvousServer
from p2pchat.identity import Identity, format_address, peer_id_from_key, verify_signature
from p2pchat.net.endpoint import AuxSocket, Endpoint
from p2pchat.net.quic import next_tick

__all__ = ["PunchFailed", "PunchService", "RendezvousNode"]

log = logging.getLogger(__name__)

MAX_REGISTRATIONS: Final = 2
#: Registrations tracked at once, refused ones included (they show why in status).
MAX_TRACKED: Final = 6
#: Registrations held for relay channels (``hold``), on top of our own.
MAX_HELD: Final = 4
#: A rendezvous that never answered is tried again after this long.
RETRY_FAILED: Final = 300.0
#: Connect-request retransmissions to one rendezvous before trying the next.
CONNECT_TRIES: Final = (0.0, 0.4, 1.0, 2.0)
CONNECT_TIMEOUT: Final = 3.0
MAX_SESSIONS: Final = 32
#: A forwarded request older or newer than this (by the dialer's clock) is refused.
MAX_CLOCK_SKEW: Final = 600.0
REPLAY_MEMORY: Final = 4096
#: Strangers (not contacts) may make us punch this often: contact requests need it,
#: and nobody should make us spray probes at will.
STRANGER_RATE: Final = 4 / 60.0
STRANGER_BURST: Final = 4.0
#: Extra sockets open at once, over all punches (birthday probing).
MAX_AUX_SOCKETS: Final = 2 * punch.LISTEN_SOCKETS
#: The target starts probing this long after the request if the dialer's Sync is lost.
SYNC_FALLBACK: Final = 1.0
#: A punched path is remembered for labelling the QUIC connection that follows.
PATH_MEMORY: Final = 30.0


class PunchFailed(Exception):
    """The punch could not even start (no rendezvous answered, refused, declined)."""


@dataclass(frozen=True, slots=True)
class RendezvousNode:
    """A node we may register with: ``key`` None means "whoever answers at ``addr``"
    (a bootstrap address), pinned at its first challenge."""

    addr: Addr
    key: bytes | None = None
    source: str = "configured"


@dataclass(eq=False, slots=True)
class _Session:
    request_id: bytes
    dialer: bool
    peer_key: bytes
    secret: bytes
    rendezvous: Addr
    key: bytes | None = None
    plan: PunchPlan | None = None
    aux: list[AuxSocket] = field(default_factory=list)
    paths: list[tuple[Addr, AuxSocket | None]] = field(default_factory=list)
    on_path: Callable[[Addr, AuxSocket | None], None] | None = None
    reply: asyncio.Future[punch.ConnectReply] | None = None
    task: asyncio.Task[None] | None = None
    seq: int = 0
    probes: int = 0
    done: bool = False
    started: float = 0.0


class PunchService:
    """The endpoint's punch/rendezvous handler: see the module docstring."""

    def __init__(
        self,
        endpoint: Endpoint,
        identity: Identity,
        *,
        relay: bool = False,
        is_contact: Callable[[bytes], bool] = lambda key: False,
        local_candidates: Callable[[], list[Addr]] = list,
        external: Callable[[], tuple[list[Addr], str]] | None = None,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.identity = identity
        self.relay = relay
        self.is_contact = is_contact
        self.local_candidates = local_candidates
        self.external = external
        self.on_change = on_change
        self.clock = clock
        self.rng = rng or random.SystemRandom()
        self.loop = asyncio.get_running_loop()
        self.server = RendezvousServer(
            key=identity.public_key,
            sign=identity.sign,
            verify=verify_signature,
            may_register=lambda key: self.relay or self.is_contact(key),
        )
        self._wanted: list[RendezvousNode] = []
        self._regs: dict[Addr, RegistrationClient] = {}
        self._failed: dict[Addr, float] = {}
        self._held: dict[Addr, tuple[RendezvousNode, float]] = {}
        self._sessions: dict[bytes, _Session] = {}
        self._sync_events: dict[bytes, asyncio.Event] = {}
        self._seen_requests: OrderedDict[bytes, float] = OrderedDict()
        self._strangers = TokenBucket(STRANGER_RATE, STRANGER_BURST, self.loop.time())
        self._punched: dict[tuple[Addr, int], float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self.stats: dict[str, int] = {}
        self.running = False

    # ------------------------------------------------------------------ life
    async def start(self) -> None:
        self.endpoint.punch_handler = self.datagram_received
        self.running = True
        self._spawn(self._maintain())

    async def stop(self) -> None:
        self.running = False
        if self.endpoint.punch_handler == self.datagram_received:
            self.endpoint.punch_handler = None
        for session in list(self._sessions.values()):
            self._end(session)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("punch task failed", exc_info=task.exception())

    def _count(self, name: str, n: int = 1) -> None:
        self.stats[name] = self.stats.get(name, 0) + n

    # ------------------------------------------------------------------ input
    def datagram_received(self, data: bytes, addr: Addr, via: AuxSocket | None) -> None:
        """Every datagram whose first byte is 0x00-0x3F, from any of our sockets."""
        try:
            packet = punch.decode(data)
        except PunchError:
            self._count("junk")
            return
        now = self.loop.time()
        if isinstance(packet, punch.Probe):
            self._probe(packet, addr, via, now)
            return
        if via is not None:
            return  # only probes belong on the extra sockets
        if isinstance(packet, punch.RegChallenge | punch.Registered | punch.KeepaliveAck):
            reg = self._regs.get(addr)
            if reg is not None and reg.receive(packet, addr, now):
                self._flush_reg(reg)
                self._reg_events(reg)
            else:
                self._count("unsolicited")
            return
        if isinstance(packet, punch.ConnectFwd):
            self._forwarded(packet, addr, now)
            return
        if isinstance(packet, punch.ConnectReply):
            session = self._sessions.get(packet.request_id)
            if (
                session is None
                or not session.dialer
                or session.reply is None
                or session.reply.done()
                or session.rendezvous != addr
                or packet.target_key != session.peer_key
            ):
                self._count("unsolicited")
                return
            session.reply.set_result(packet)
            return
        if isinstance(packet, punch.Sync):
            self._sync(packet, addr, now)
            return
        self.server.receive(packet, addr, now)
        self._flush_server()

    def _flush_server(self) -> None:
        for data, dest in self.server.datagrams_to_send():
            self.endpoint.sendto(data, dest)

    # ------------------------------------------------------------------ registrations
    def set_rendezvous(self, nodes: Iterable[RendezvousNode]) -> None:
        """Where we may register, best first; we keep at most two registrations."""
        own = {self.endpoint.local_address, *self.local_candidates()}
        wanted: list[RendezvousNode] = []
        for node in nodes:
            if node.key == self.identity.public_key or node.addr in own:
                continue
            if node.addr not in {n.addr for n in wanted}:
                wanted.append(node)
        if wanted != self._wanted:
            self._wanted = wanted
            self._wake.set()

    def registrations(self) -> list[RegistrationClient]:
        return [reg for reg in self._regs.values() if reg.registered]

    def registered_rendezvous(self) -> list[tuple[bytes, Addr]]:
        """(key, address) of the rendezvous nodes we are registered with."""
        wanted = {n.addr for n in self._wanted}
        return [
            (reg.rendezvous_key, reg.addr)
            for reg in self.registrations()
            if reg.rendezvous_key is not None and reg.addr in wanted
        ]

    def observed_addresses(self) -> list[Addr]:
        return list(dict.fromkeys(r.observed for r in self.registrations() if r.observed))

    def nat_kind(self) -> str:
        """What the registrations show, else what the DHT measured."""
        local = set(self.local_candidates())
        if self.endpoint.local_address is not None:
            local.add(self.endpoint.local_address)
        seen = self.observed_addresses()
        if any(addr in local for addr in seen):
            return NAT_NONE
        regs = [r for r in self.registrations() if r.observed]
        if len({r.addr for r in regs}) >= 2:
            return NAT_EI if len({r.observed for r in regs}) == 1 else NAT_ED
        if self.external is not None:
            kind = self.external()[1]
            if kind in (NAT_NONE, NAT_EI, NAT_ED):
                return kind
        return NAT_UNKNOWN

    def candidates(self) -> tuple[Addr, ...]:
        """Where a peer may reach us: reflexive addresses first, then our own."""
        found = list(self.observed_addresses())
        if self.external is not None:
            found.extend(self.external()[0])
        found.extend(self.local_candidates())
        return punch.order_candidates(found)

    def _reg_events(self, reg: RegistrationClient) -> None:
        changed = moved = False
        while (event := reg.next_event()) is not None:
            changed = True
            moved = moved or event.kind == "moved"
            log.info(
                "rendezvous %s: %s %s %s",
                format_address(*reg.addr),
                event.kind,
                format_address(*event.observed) if event.observed else "",
                event.reason,
            )
            if event.kind == "refused":
                self._wake.set()  # take another one meanwhile
        if changed and self.on_change is not None:
            self.on_change(moved)

    def _flush_reg(self, reg: RegistrationClient) -> None:
        for data, dest in reg.datagrams_to_send():
            self.endpoint.sendto(data, dest)

    def _refill(self, now: float) -> None:
        """Keep up to two live registrations.  A refused one stays listed (status shows
        why) and retries by itself later, but does not take a slot.  Held ones
        (``hold``) come on top."""
        for addr, (_, until) in list(self._held.items()):
            if until <= now:
                del self._held[addr]
        wanted = {n.addr: n for n in self._wanted}
        for addr in list(self._regs):
            if addr not in wanted and addr not in self._held:
                del self._regs[addr]
                self._failed.pop(addr, None)
        ours = [reg for addr, reg in self._regs.items() if addr in wanted]
        live = sum(reg.state != "refused" for reg in ours)
        tracked = len(ours)
        for node in self._wanted:
            if live >= MAX_REGISTRATIONS or tracked >= MAX_TRACKED:
                break
            if node.addr in self._regs or not self._may_retry(node.addr, now):
                continue
            self._new_registration(node, now)
            live += 1
            tracked += 1
        for addr, (node, _) in self._held.items():
            if addr not in self._regs and self._may_retry(addr, now):
                self._new_registration(node, now)

    def _may_retry(self, addr: Addr, now: float) -> bool:
        failed_at = self._failed.get(addr)
        return failed_at is None or now - failed_at >= RETRY_FAILED

    def _new_registration(self, node: RendezvousNode, now: float) -> None:
        reg = RegistrationClient(
            our_key=self.identity.public_key,
            seed=self.identity.seed,
            sign=self.identity.sign,
            verify=verify_signature,
            addr=node.addr,
            rendezvous_key=node.key,
        )
        self._regs[node.addr] = reg
        reg.start(now)
        self._flush_reg(reg)

    def hold(self, node: RendezvousNode, until: float) -> None:
        """Keep a registration with ``node`` until ``until`` (loop time), besides our
        own rendezvous nodes: a relay that carries a channel to a contact needs us
        registered there (``net/relay.py``).  Held registrations are not published
        in our record; at most ``MAX_HELD`` at once (the one ending first goes)."""
        own = {self.endpoint.local_address, *self.local_candidates()}
        if node.key == self.identity.public_key or node.addr in own:
            return
        held = self._held.get(node.addr)
        if held is not None:
            until = max(until, held[1])
        self._held[node.addr] = (node, until)
        while len(self._held) > MAX_HELD:
            first = min(self._held, key=lambda a: self._held[a][1])
            del self._held[first]
        if node.addr not in self._regs:
            self._wake.set()

    def retry_held(self, addr: Addr) -> None:
        """Register again now with a held rendezvous that refused us (its owner may
        have added us since); our own rendezvous nodes retry on their own schedule."""
        reg = self._regs.get(addr)
        if (
            reg is not None
            and reg.state == "refused"
            and addr not in {n.addr for n in self._wanted}
        ):
            del self._regs[addr]
            self._wake.set()

    def registration(self, addr: Addr) -> RegistrationClient | None:
        """Our registration with the rendezvous at ``addr``, in whatever state."""
        return self._regs.get(addr)

    async def _maintain(self) -> None:
        """One loop for registrations (keepalives, renewals) and the server's tables."""
        while True:
            now = self.loop.time()
            self._refill(now)
            deadline = next_tick(now)
            for reg in list(self._regs.values()):
                before = reg.state
                reg.on_timer(now)
                self._flush_reg(reg)
                self._reg_events(reg)
                if reg.state == "hello" and before == "hello" and reg.next_deadline() > now + 30:
                    # A rendezvous that never answers: try another one meanwhile.
                    self._failed[reg.addr] = now
                    del self._regs[reg.addr]
                    continue
                deadline = min(deadline, reg.next_deadline())
            self.server.expire(now)
            for key, at in list(self._punched.items()):
                if now - at > PATH_MEMORY:
                    del self._punched[key]
            self._wake.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that
            # races with the wake-up, and stop() would wait for this loop for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(max(now + 0.05, deadline)):
                    await self._wake.wait()

    # ------------------------------------------------------------------ dialer
    async def dial(
        self,
        target_key: bytes,
        rendezvous: Iterable[Addr],
        on_path: Callable[[Addr, AuxSocket | None], None],
    ) -> None:
        """Punch towards ``target_key`` through the first rendezvous that answers.

        Returns when the probe plan is over (or raises :class:`PunchFailed` before it
        starts); ``on_path`` is called for every path a probe answered on.  Cancel it
        once a connection is up: unused extra sockets are closed then.
        """
        if len(self._sessions) >= MAX_SESSIONS:
            raise PunchFailed("too many punches in progress")
        reasons = []
        for rv in list(dict.fromkeys(rendezvous))[:4]:
            session = _Session(
                request_id=punch.new_request_id(),
                dialer=True,
                peer_key=target_key,
                secret=punch.new_secret(),
                rendezvous=rv,
                on_path=on_path,
            )
            self._sessions[session.request_id] = session
            try:
                await self._dial_through(session)
                return
            except PunchFailed as exc:
                reasons.append(f"{format_address(*rv)}: {exc}")
            finally:
                self._end(session)
        raise PunchFailed("; ".join(reasons) or "no rendezvous known")

    async def _dial_through(self, session: _Session) -> None:
        blob = ConnectBlob(
            kind=BlobKind.REQUEST,
            dialer_key=self.identity.public_key,
            target_key=session.peer_key,
            request_id=session.request_id,
            timestamp=int(self.clock() * 1000),
            secret=session.secret,
            nat=self.nat_kind(),
            candidates=self.candidates(),
        )
        try:
            sealed = blob.seal(self.identity.sign, session.peer_key)
        except PunchError as exc:
            raise PunchFailed(str(exc)) from None
        packet = punch.encode(
            punch.Connect(session.peer_key, self.identity.public_key, session.request_id, sealed)
        )
        session.reply = self.loop.create_future()
        sent_at = self.loop.time()
        start = sent_at
        for offset in CONNECT_TRIES:
            delay = start + offset - self.loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(session.reply), delay)
            if session.reply.done():
                break
            sent_at = self.loop.time()
            self.endpoint.sendto(packet, session.rendezvous)
            self._count("connect_sent")
        try:
            reply = await asyncio.wait_for(
                asyncio.shield(session.reply), max(0.0, start + CONNECT_TIMEOUT - self.loop.time())
            )
        except TimeoutError:
            raise PunchFailed("the rendezvous did not answer") from None
        rtt = self.loop.time() - sent_at
        if reply.status != Status.OK:
            name = Status(reply.status).name.lower() if reply.status in set(Status) else "error"
            raise PunchFailed(f"rendezvous: {name.replace('_', ' ')}")
        try:
            answer = ConnectBlob.open(reply.blob, self.identity.seed, verify_signature)
        except PunchError as exc:
            self._count("bad_answer")
            raise PunchFailed(f"bad answer: {exc}") from None
        if (
            answer.kind is BlobKind.REQUEST
            or answer.request_id != session.request_id
            or answer.dialer_key != self.identity.public_key
            or answer.target_key != session.peer_key
        ):
            self._count("bad_answer")
            raise PunchFailed("answer does not match the request")
        if answer.kind is BlobKind.DECLINE:
            raise PunchFailed("the target declined")
        session.key = punch.punch_key(session.request_id, session.secret, answer.secret)
        peers = punch.order_candidates(
            ([reply.observed] if reply.observed else []) + list(answer.candidates)
        )
        observed = reply.observed
        mode, _ = punch.choose_modes(blob.nat, answer.nat)
        sync = punch.Sync(
            session.peer_key,
            session.request_id,
            punch.mac(session.key, b"sync", session.request_id),
        )
        self.endpoint.sendto(punch.encode(sync), session.rendezvous)
        log.info(
            "punching to %s: %s (ours %s, theirs %s), rtt %.0f ms, %d candidates",
            peer_id_from_key(session.peer_key)[:12],
            mode.value,
            blob.nat,
            answer.nat,
            rtt * 1000,
            len(peers),
        )
        # The Sync reaches the target in about half the round trip: start together.
        await asyncio.sleep(rtt / 2)
        await self._run(session, mode, peers, observed)

    # ------------------------------------------------------------------ target
    def _forwarded(self, fwd: punch.ConnectFwd, addr: Addr, now: float) -> None:
        reg = self._regs.get(addr)
        if reg is None or not reg.registered:
            self._count("forward_from_stranger")
            return  # only our own rendezvous forwards to us
        try:
            request = ConnectBlob.open(fwd.blob, self.identity.seed, verify_signature)
        except PunchError:
            self._count("bad_request")
            return
        if (
            request.kind is not BlobKind.REQUEST
            or request.target_key != self.identity.public_key
            or request.dialer_key != fwd.dialer_key
            or request.request_id != fwd.request_id
        ):
            self._count("bad_request")
            return
        if abs(request.timestamp / 1000 - self.clock()) > MAX_CLOCK_SKEW:
            self._count("stale_request")
            return
        if request.request_id in self._seen_requests or request.request_id in self._sessions:
            self._count("replayed_request")
            return
        self._seen_requests[request.request_id] = now
        while len(self._seen_requests) > REPLAY_MEMORY:
            self._seen_requests.popitem(last=False)
        accept = self.is_contact(request.dialer_key) or self._stranger_budget(now)
        if accept and len(self._sessions) >= MAX_SESSIONS:
            accept = False
        session = _Session(
            request_id=request.request_id,
            dialer=False,
            peer_key=request.dialer_key,
            secret=punch.new_secret(),
            rendezvous=addr,
        )
        answer = ConnectBlob(
            kind=BlobKind.ACCEPT if accept else BlobKind.DECLINE,
            dialer_key=request.dialer_key,
            target_key=self.identity.public_key,
            request_id=request.request_id,
            timestamp=int(self.clock() * 1000),
            secret=session.secret,
            nat=self.nat_kind(),
            candidates=self.candidates() if accept else (),
        )
        try:
            sealed = answer.seal(self.identity.sign, request.dialer_key)
        except PunchError:
            return
        self.endpoint.sendto(
            punch.encode(punch.ConnectAck(request.dialer_key, request.request_id, sealed)), addr
        )
        if not accept:
            self._count("declined")
            return
        self._count("accepted")
        session.key = punch.punch_key(request.request_id, request.secret, session.secret)
        peers = punch.order_candidates([fwd.observed, *request.candidates])
        _, mode = punch.choose_modes(request.nat, answer.nat)
        self._sessions[session.request_id] = session
        session.started = now
        session.task = self._spawn(self._target_run(session, mode, peers, fwd.observed))

    def _stranger_budget(self, now: float) -> bool:
        if self._strangers.take(now):
            return True
        self._count("stranger_refused")
        return False

    def _sync(self, packet: punch.Sync, addr: Addr, now: float) -> None:
        session = self._sessions.get(packet.request_id)
        if (
            session is None
            or session.dialer
            or session.key is None
            or session.rendezvous != addr
            or not punch.mac_ok(session.key, packet.mac, b"sync", packet.request_id)
        ):
            if session is None or session.dialer:
                # Not ours: we may be this pair's rendezvous.
                self.server.receive(packet, addr, now)
                self._flush_server()
            else:
                self._count("bad_sync")
            return
        self._count("synced")
        event = self._sync_events.get(packet.request_id)
        if event is not None:
            event.set()

    async def _target_run(
        self, session: _Session, mode: Mode, peers: tuple[Addr, ...], observed: Addr
    ) -> None:
        synced = asyncio.Event()
        self._sync_events[session.request_id] = synced
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(synced.wait(), SYNC_FALLBACK)
            await self._run(session, mode, peers, observed)
        finally:
            self._sync_events.pop(session.request_id, None)
            self._end(session)

    # ------------------------------------------------------------------ probing
    async def _run(
        self, session: _Session, mode: Mode, peers: tuple[Addr, ...], observed: Addr | None
    ) -> None:
        if observed is None:
            mode = Mode.DIRECT  # birthday probes go only where the rendezvous saw the peer
        if mode is Mode.LISTEN:
            room = MAX_AUX_SOCKETS - self.endpoint.aux_sockets
            count = min(punch.LISTEN_SOCKETS, max(0, room))
            session.aux = await self.endpoint.open_aux_sockets(count) if count else []
            if not session.aux:
                mode = Mode.DIRECT
        start = self.loop.time()
        session.started = start
        session.plan = PunchPlan(
            mode,
            peers,
            start=start,
            rng=self.rng,
            observed=observed,
            listen_sockets=len(session.aux),
        )
        self._count(f"punch_{mode.value}")
        plan = session.plan
        while not session.done:
            for send in plan.due(self.loop.time()):
                sock = session.aux[send.socket] if send.socket is not None else None
                self._send_probe(session, send.addr, sock, ack=False, seq=None)
            deadline = plan.next_deadline()
            if deadline is None:
                break
            await asyncio.sleep(max(0.0, deadline - self.loop.time()))
        # Give the last probes' answers a moment.
        if not session.done:
            await asyncio.sleep(0.5)

    def _send_probe(
        self,
        session: _Session,
        addr: Addr,
        via: AuxSocket | None,
        *,
        ack: bool,
        seq: int | None,
    ) -> None:
        assert session.key is not None
        if seq is None:
            session.seq = (session.seq + 1) & 0xFFFF
            seq = session.seq
        kind = punch.Type.PROBE_ACK if ack else punch.Type.PROBE
        tag = self._probe_mac(session.key, kind, session.request_id, session.dialer, seq)
        probe = punch.Probe(session.request_id, session.dialer, seq, tag, ack=ack)
        session.probes += 1
        self.endpoint.sendto(punch.encode(probe), addr, via=via)

    @staticmethod
    def _probe_mac(key: bytes, kind: int, request_id: bytes, from_dialer: bool, seq: int) -> bytes:
        return punch.mac(key, bytes((kind,)), request_id, struct.pack("!BH", from_dialer, seq))

    def _probe(self, probe: punch.Probe, addr: Addr, via: AuxSocket | None, now: float) -> None:
        session = self._sessions.get(probe.request_id)
        if session is None or session.key is None or probe.from_dialer == session.dialer:
            self._count("probe_unknown")
            return
        kind = punch.Type.PROBE_ACK if probe.ack else punch.Type.PROBE
        expected = self._probe_mac(
            session.key, kind, probe.request_id, probe.from_dialer, probe.seq
        )
        if not hmac.compare_digest(expected, probe.mac):
            self._count("probe_forged")
            return
        if not probe.ack:
            self._send_probe(session, addr, via, ack=True, seq=probe.seq)
        path = (addr, via)
        if path in session.paths:
            return
        session.paths.append(path)
        self._count("paths_found")
        self._punched[(addr, id(via))] = now
        log.info(
            "punched path to %s: %s%s",
            peer_id_from_key(session.peer_key)[:12],
            format_address(*addr),
            f" (extra socket :{via.port})" if via is not None else "",
        )
        if session.on_path is not None:
            session.on_path(addr, via)

    def connected(self, peer_key: bytes) -> None:
        """A session with this peer is up: its punches (either side) can stop."""
        for session in list(self._sessions.values()):
            if session.peer_key == peer_key and session.paths:
                if session.task is not None:
                    session.task.cancel()
                self._end(session)

    def was_punched(self, addr: Addr, via: AuxSocket | None) -> bool:
        """Whether a probe recently answered on this path (labels the connection)."""
        return (addr, id(via)) in self._punched

    def _end(self, session: _Session) -> None:
        if session.done:
            return
        session.done = True
        self._sessions.pop(session.request_id, None)
        for aux in session.aux:
            if aux.link is None:
                aux.close()
        session.aux = []
        self._count("probes_sent", session.probes)

    # ------------------------------------------------------------------ diagnostics
    def status(self) -> dict[str, Any]:
        return {
            "nat": self.nat_kind(),
            "reflexive": [format_address(*a) for a in self.observed_addresses()],
            "relay": self.relay,
            "registrations": [
                {
                    "address": format_address(*reg.addr),
                    "peer_id": peer_id_from_key(reg.rendezvous_key) if reg.rendezvous_key else None,
                    "state": reg.state,
                    "observed": format_address(*reg.observed) if reg.observed else None,
                    "reason": reg.refused or None,
                }
                for reg in self._regs.values()
            ],
            "rendezvous": self.server.status(),
            "punch": dict(self.stats),
            "punches_in_progress": len(self._sessions),
            "extra_sockets": self.endpoint.aux_sockets,
        }
