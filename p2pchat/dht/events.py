"""What :class:`~p2pchat.dht.core.DhtCore` reports to the layer driving it.

Each operation (``find_node``, ``get_peers``, ``announce``, ``get_item``, ``put_*``,
``bootstrap``) ends with exactly one event carrying its ``op_id``, so the driver can keep
a dict of waiters and never needs to poll the core's internals.
"""

from __future__ import annotations

from dataclasses import dataclass

from .krpc import Addr, NodeInfo
from .storage import Item

__all__ = [
    "AnnounceDone",
    "DhtEvent",
    "ExternalAddressChanged",
    "GetItemDone",
    "LookupDone",
    "LookupStats",
    "NodeIdChanged",
    "PeersFound",
    "PutDone",
]


@dataclass(frozen=True, slots=True)
class LookupStats:
    """How an iterative lookup went; the simulation aggregates these.

    ``hops`` is the longest referral chain that led to a node among the final results: 1
    means the seeds themselves were the closest nodes. ``timeouts`` counts queries that
    failed or were still unanswered (slow) when the lookup ended.
    """

    hops: int
    queried: int
    responded: int
    timeouts: int


@dataclass(frozen=True, slots=True)
class LookupDone:
    """A ``find_node`` (or bootstrap) lookup ended; ``nodes`` are the closest that answered."""

    op_id: int
    target: bytes
    nodes: tuple[NodeInfo, ...]
    stats: LookupStats
    bootstrap: bool = False


@dataclass(frozen=True, slots=True)
class PeersFound:
    """A ``get_peers`` lookup ended."""

    op_id: int
    info_hash: bytes
    peers: tuple[Addr, ...]
    nodes: tuple[NodeInfo, ...]
    stats: LookupStats


@dataclass(frozen=True, slots=True)
class AnnounceDone:
    """``get_peers`` then ``announce_peer``; ``stored`` nodes acknowledged the announce."""

    op_id: int
    info_hash: bytes
    peers: tuple[Addr, ...]
    stored: int
    stats: LookupStats


@dataclass(frozen=True, slots=True)
class GetItemDone:
    """A BEP 44 ``get`` ended; ``item`` is ``None`` if no valid item was found.

    For mutable items this is the highest ``seq`` with a valid signature among all replies.
    """

    op_id: int
    target: bytes
    item: Item | None
    stats: LookupStats


@dataclass(frozen=True, slots=True)
class PutDone:
    """A BEP 44 ``put`` ended.

    ``stored`` nodes accepted it; ``errors`` are the KRPC errors the others returned.
    ``newest_seq`` is the highest valid ``seq`` seen during the lookup, so a publisher whose
    clock went backwards can retry above it.
    """

    op_id: int
    target: bytes
    stored: int
    errors: tuple[tuple[int, str], ...]
    newest_seq: int | None
    stats: LookupStats


@dataclass(frozen=True, slots=True)
class ExternalAddressChanged:
    """Our accepted reflexive addresses or our NAT kind changed (:mod:`.reflexive`).

    ``addresses`` are the accepted reflexive addresses, the primary one first (empty
    when none is accepted any more); ``nat`` is the NAT kind.
    """

    addresses: tuple[Addr, ...]
    nat: str


@dataclass(frozen=True, slots=True)
class NodeIdChanged:
    """BEP 42 enforcement made us adopt an ID that matches our external IP."""

    old_id: bytes
    new_id: bytes


DhtEvent = (
    LookupDone
    | PeersFound
    | AnnounceDone
    | GetItemDone
    | PutDone
    | ExternalAddressChanged
    | NodeIdChanged
)
