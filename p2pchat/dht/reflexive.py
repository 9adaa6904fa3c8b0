"""Our reflexive (server-reflexive, "external") addresses and the NAT kind they reveal.

A node behind a NAT cannot see its public address; only others can tell it where our
datagrams came from. Three kinds of observer do:

* strangers on the DHT: every KRPC reply carries the BEP 42 ``ip`` field. Anyone can
  lie there, so a stranger's report counts as one vote per voter IP and an address is
  accepted only when ``threshold`` distinct voter IPs agree (the BEP 42 rule);
* an explicitly configured bootstrap node (the user named it, so it is trusted more
  than a stranger): one report is enough;
* a contact or a rendezvous node on an authenticated session: it saw the source address
  of our packets and we know who it is, so one report is enough too.

The NAT kind follows from what the observers saw (RFC 4787 mapping behaviour):

* ``none``: an observer saw our own local address (IP of an interface, our port);
* ``endpoint-independent``: at least two observers saw the same mapped port (one
  mapping for every destination: hole punching works with that port);
* ``endpoint-dependent``: observers saw different ports (a new mapping per
  destination; only birthday-style probing gets through);
* ``unknown``: fewer than two observers so far.

Everything here is sans-IO and bounded: at most ``max_strangers`` stranger votes and
``max_trusted`` trusted observations, each expiring after ``lifetime`` seconds.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Final

from .bep42 import is_bep42_exempt
from .krpc import Addr

__all__ = [
    "NAT_ED",
    "NAT_EI",
    "NAT_KINDS",
    "NAT_NONE",
    "NAT_UNKNOWN",
    "SOURCES",
    "SOURCE_BOOTSTRAP",
    "SOURCE_CONTACT",
    "SOURCE_DHT",
    "SOURCE_RENDEZVOUS",
    "ReflexiveAddress",
    "ReflexiveAddresses",
]

NAT_UNKNOWN: Final = "unknown"
NAT_NONE: Final = "none"
NAT_EI: Final = "endpoint-independent"
NAT_ED: Final = "endpoint-dependent"
NAT_KINDS: Final = (NAT_UNKNOWN, NAT_NONE, NAT_EI, NAT_ED)

SOURCE_DHT: Final = "dht"
SOURCE_BOOTSTRAP: Final = "bootstrap"
SOURCE_CONTACT: Final = "contact"
SOURCE_RENDEZVOUS: Final = "rendezvous"
SOURCES: Final = (SOURCE_DHT, SOURCE_BOOTSTRAP, SOURCE_CONTACT, SOURCE_RENDEZVOUS)
_TRUSTED: Final = frozenset({SOURCE_BOOTSTRAP, SOURCE_CONTACT, SOURCE_RENDEZVOUS})


@dataclass(frozen=True, slots=True)
class ReflexiveAddress:
    """An accepted reflexive address: where others see our packets come from.

    ``port`` is the port most observers saw; ``observers`` how many distinct observers
    reported this IP; ``trusted`` whether a bootstrap, contact or rendezvous node did.
    """

    ip: str
    port: int
    observers: int
    trusted: bool
    last_seen: float

    @property
    def addr(self) -> Addr:
        return (self.ip, self.port)


@dataclass(frozen=True, slots=True)
class _Observation:
    address: Addr
    source: str
    at: float


class ReflexiveAddresses:
    """Collects observations of our address and decides what to believe.

    ``observe`` returns True when the accepted addresses or the NAT kind changed, which
    is when a record carrying them should be republished.
    """

    def __init__(
        self,
        *,
        threshold: int = 3,
        max_strangers: int = 64,
        max_trusted: int = 16,
        lifetime: float = 1800.0,
        local_port: int | None = None,
        local_ips: frozenset[str] = frozenset(),
    ) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        self.threshold = threshold
        self.max_strangers = max_strangers
        self.max_trusted = max_trusted
        self.lifetime = lifetime
        self.local_port = local_port
        self.local_ips = local_ips
        #: Stranger votes by voter IP; trusted observations by observer identity.
        self._strangers: OrderedDict[str, _Observation] = OrderedDict()
        self._trusted: OrderedDict[str, _Observation] = OrderedDict()
        #: Strangers that moved away from an IP (evidence that it is gone).
        self._moved: dict[str, set[str]] = {}
        self._snapshot: tuple[tuple[ReflexiveAddress, ...], str] = ((), NAT_UNKNOWN)

    # ------------------------------------------------------------------ input

    def set_local(self, ips: frozenset[str], port: int | None) -> bool:
        """Our own addresses (the bound IP, or every interface's for a wildcard bind)."""
        self.local_ips = ips
        self.local_port = port
        return self._refresh()

    def observe(self, observer: str, address: Addr, source: str, now: float) -> bool:
        """``observer`` (a voter IP for strangers, a peer ID or bootstrap address for the
        trusted kinds) saw our packets come from ``address``."""
        if source not in SOURCES:
            raise ValueError(f"unknown observation source {source!r}")
        trusted = source in _TRUSTED
        pool = self._trusted if trusted else self._strangers
        previous = pool.pop(observer, None)
        pool[observer] = _Observation(address, source, now)
        limit = self.max_trusted if trusted else self.max_strangers
        while len(pool) > limit:
            pool.popitem(last=False)
        if previous is not None and previous.address[0] != address[0]:
            self._moved_away(previous.address[0], observer, trusted)
        self._expire(now)
        return self._refresh()

    def _moved_away(self, old_ip: str, observer: str, trusted: bool) -> None:
        """An observer now sees us at another IP: the network changed. One trusted mover,
        or two strangers, are enough to forget the old IP at once instead of letting it
        linger until its votes expire."""
        movers = self._moved.setdefault(old_ip, set())
        movers.add(observer)
        if len(self._moved) > self.max_strangers:
            del self._moved[next(iter(self._moved))]
        if not trusted and len(movers) < 2:
            return
        for pool in (self._strangers, self._trusted):
            for key in [k for k, obs in pool.items() if obs.address[0] == old_ip]:
                del pool[key]
        del self._moved[old_ip]

    def expire(self, now: float) -> bool:
        self._expire(now)
        return self._refresh()

    def _expire(self, now: float) -> None:
        for pool in (self._strangers, self._trusted):
            for key in [k for k, obs in pool.items() if now - obs.at > self.lifetime]:
                del pool[key]

    # ------------------------------------------------------------------ decisions

    def _refresh(self) -> bool:
        accepted = self._decide()
        snapshot = (accepted, self._nat_kind(accepted))
        changed = _comparable(snapshot) != _comparable(self._snapshot)
        self._snapshot = snapshot
        return changed

    def _decide(self) -> tuple[ReflexiveAddress, ...]:
        by_ip: dict[str, list[tuple[bool, _Observation]]] = {}
        for trusted, pool in ((True, self._trusted), (False, self._strangers)):
            for obs in pool.values():
                by_ip.setdefault(obs.address[0], []).append((trusted, obs))
        accepted: list[ReflexiveAddress] = []
        for ip, seen in by_ip.items():
            trusted = any(t for t, _ in seen)
            if not trusted and len(seen) < self.threshold:
                continue
            ports = Counter(obs.address[1] for _, obs in seen)
            latest = max(obs.at for _, obs in seen)
            top = max(ports.values())
            # The most common port; among equals the one seen last.
            port = max(
                (obs for _, obs in seen if ports[obs.address[1]] == top), key=lambda o: o.at
            ).address[1]
            accepted.append(ReflexiveAddress(ip, port, len(seen), trusted, latest))
        # Public addresses first (they work from anywhere), then the best attested; the
        # IP breaks ties so that the order only changes when the evidence does.
        accepted.sort(key=lambda a: (is_bep42_exempt(a.ip), -a.observers, a.ip))
        return tuple(accepted)

    def _nat_kind(self, accepted: tuple[ReflexiveAddress, ...]) -> str:
        if not accepted:
            return NAT_UNKNOWN
        primary = accepted[0]
        if self._is_local(primary.addr):
            return NAT_NONE
        ports = [
            obs.address[1]
            for pool in (self._trusted, self._strangers)
            for obs in pool.values()
            if obs.address[0] == primary.ip
        ]
        if len(ports) < 2:
            return NAT_UNKNOWN
        same = Counter(ports).most_common(1)[0][1]
        # Most observers agreeing on one port: one mapping for everyone (a stale vote
        # from before the mapping was renewed, or one liar, does not flip it).
        return NAT_EI if same >= 2 and 2 * same > len(ports) else NAT_ED

    def _is_local(self, addr: Addr) -> bool:
        return addr[1] == self.local_port and addr[0] in self.local_ips

    # ------------------------------------------------------------------ output

    @property
    def accepted(self) -> tuple[ReflexiveAddress, ...]:
        """Accepted addresses, the primary one (public, best attested) first."""
        return self._snapshot[0]

    @property
    def primary(self) -> ReflexiveAddress | None:
        return self._snapshot[0][0] if self._snapshot[0] else None

    @property
    def nat_kind(self) -> str:
        return self._snapshot[1]

    def observations(self) -> dict[str, tuple[Addr, str]]:
        """Observer -> (what it saw, its kind), for diagnostics."""
        out = {k: (o.address, o.source) for k, o in self._trusted.items()}
        out.update({k: (o.address, o.source) for k, o in self._strangers.items()})
        return out


def _comparable(
    snapshot: tuple[tuple[ReflexiveAddress, ...], str],
) -> tuple[tuple[Addr, ...], str]:
    """What matters for publication: the addresses (in order) and the NAT kind."""
    return tuple(a.addr for a in snapshot[0]), snapshot[1]
