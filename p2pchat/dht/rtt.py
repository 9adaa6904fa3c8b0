"""Round-trip times, so a lookup stops waiting for a dead node early.

A fixed timeout has to fit the slowest healthy node on the Internet (Mainline clients
use 2-15 s), so every dead contact among the ``k`` closest stalls a lookup that long;
that, not the number of hops, is what made Mainline lookups take seconds (Jimenez,
Osmani and Knutsson, P2P'11, brought the median to 100-200 ms mostly by timing out
early and querying in parallel).

We keep RFC 6298's smoothed RTT and variance per address and one over all replies, and
derive two deadlines for a lookup query (``lookup.py``):

* *slow* after ``srtt + 4 * rttvar``, the smaller of the node's and the overall one
  (at least ``min_slow``, at most ``max_slow``): the lookup sends another query in its
  place, so a dead node costs no parallelism;
* *given up* after twice the overall ``srtt + 4 * rttvar`` (at least ``min_give_up``, at
  most ``max_give_up``): the lookup stops waiting for it and may end without it.

The transaction itself lives on until the fixed ``query_timeout``, so a late answer is
still used while the lookup runs, still refreshes the routing table, and only a real
timeout counts as a failure there. The give-up deadline follows the overall estimate
because a dead node's own estimate may date from a busy moment and is never refreshed
(it does not answer); a live node slower than twice the network's usual round trip may
be left out of a lookup's result, which costs exactness, not the lookup.
The table is bounded (least recently updated forgotten first).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from .krpc import Addr

__all__ = ["RttTable"]

_ALPHA = 1 / 8
_BETA = 1 / 4
#: Give up after this many times the overall ``srtt + 4 * rttvar``: 1 was measurably no
#: faster in the simulation and found the exact closest nodes less often.
GIVE_UP_FACTOR = 2.0


@dataclass(slots=True)
class _Estimate:
    srtt: float
    rttvar: float

    @classmethod
    def first(cls, rtt: float) -> _Estimate:
        return cls(rtt, rtt / 2)

    def sample(self, rtt: float) -> None:
        self.rttvar = (1 - _BETA) * self.rttvar + _BETA * abs(self.srtt - rtt)
        self.srtt = (1 - _ALPHA) * self.srtt + _ALPHA * rtt

    @property
    def timeout(self) -> float:
        return self.srtt + 4 * self.rttvar


class RttTable:
    """Per-address and overall RTT estimates, and the deadlines derived from them."""

    def __init__(
        self,
        *,
        min_slow: float,
        max_slow: float,
        min_give_up: float,
        max_give_up: float,
        max_entries: int = 4096,
    ) -> None:
        self.min_slow = min_slow
        self.max_slow = max_slow
        self.min_give_up = min_give_up
        self.max_give_up = max_give_up
        self.max_entries = max_entries
        self._by_addr: OrderedDict[Addr, _Estimate] = OrderedDict()
        self._overall: _Estimate | None = None

    def sample(self, addr: Addr, rtt: float) -> None:
        rtt = max(0.0, rtt)
        estimate = self._by_addr.pop(addr, None)
        if estimate is None:
            estimate = _Estimate.first(rtt)
        else:
            estimate.sample(rtt)
        self._by_addr[addr] = estimate
        while len(self._by_addr) > self.max_entries:
            self._by_addr.popitem(last=False)
        if self._overall is None:
            self._overall = _Estimate.first(rtt)
        else:
            self._overall.sample(rtt)

    def forget(self, addr: Addr) -> None:
        """``addr`` did not answer at all: its old estimate says nothing about it now."""
        self._by_addr.pop(addr, None)

    def slow_after(self, addr: Addr) -> float:
        known = [e.timeout for e in (self._by_addr.get(addr), self._overall) if e is not None]
        if not known:
            return self.max_slow
        return min(self.max_slow, max(self.min_slow, min(known)))

    def give_up_after(self) -> float:
        if self._overall is None:
            return self.max_give_up
        return min(self.max_give_up, max(self.min_give_up, GIVE_UP_FACTOR * self._overall.timeout))

    def srtt(self, addr: Addr) -> float | None:
        estimate = self._by_addr.get(addr)
        return None if estimate is None else estimate.srtt

    def __len__(self) -> int:
        return len(self._by_addr)
