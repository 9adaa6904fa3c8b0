"""Token buckets: how many replies the DHT node may send, per source and in total.

A KRPC reply is larger than the query that asked for it (a ``find_node`` query of ~60
bytes brings back ~250-450), and UDP source addresses can be forged, so every reply is
something a stranger can aim at a third party. Two layers bound it:

* per source IP (:class:`KeyedBuckets`): one source cannot monopolise the node;
* globally (:class:`TokenBucket`), with separate budgets for *unverified* sources and
  for sources that proved their address by answering one of our queries (a random
  transaction ID only reaches whoever really is at that address). Forged queries from
  any number of addresses share the small unverified budget, while the nodes the DHT
  actually works with keep their own share.

Beyond a bucket the query is dropped unanswered: the asker retries elsewhere, as it
would after a lost datagram.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

__all__ = ["KeyedBuckets", "TokenBucket"]

K = TypeVar("K")


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; starts full."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        elapsed = max(0.0, now - self.last)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.last = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class KeyedBuckets(Generic[K]):
    """One :class:`TokenBucket` per key, at most ``max_keys`` of them (least recently
    used forgotten first: a forgotten key starts again with a full bucket, which is why
    the global buckets exist)."""

    def __init__(self, rate: float, burst: float, max_keys: int) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[K, TokenBucket] = OrderedDict()

    def take(self, key: K, now: float) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets.popitem(last=False)
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now)

    def __len__(self) -> int:
        return len(self._buckets)
