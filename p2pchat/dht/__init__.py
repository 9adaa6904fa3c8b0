"""Sans-IO Kademlia DHT speaking the BitTorrent Mainline wire format (KRPC over bencode).

The network layer feeds :class:`~p2pchat.dht.core.DhtCore` datagrams and the current time
and sends what it returns; nothing in this package opens sockets, sleeps or reads the
clock (``tests/test_boundaries.py`` enforces it). ``docs/dht.md`` describes the design.
"""

from .core import DhtConfig, DhtCore
from .events import (
    AnnounceDone,
    DhtEvent,
    ExternalAddressChanged,
    GetItemDone,
    LookupDone,
    LookupStats,
    NodeIdChanged,
    PeersFound,
    PutDone,
)
from .records import DISCOVERY_INFO_HASH, PeerRecord, make_record_item, read_record_item
from .storage import Item

__all__ = [
    "DISCOVERY_INFO_HASH",
    "AnnounceDone",
    "DhtConfig",
    "DhtCore",
    "DhtEvent",
    "ExternalAddressChanged",
    "GetItemDone",
    "Item",
    "LookupDone",
    "LookupStats",
    "NodeIdChanged",
    "PeerRecord",
    "PeersFound",
    "PutDone",
    "make_record_item",
    "read_record_item",
]
