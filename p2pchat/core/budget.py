"""Token buckets, sans-IO (the caller passes ``now``): how often a peer may make the
node do something, per key and in total.

``TokenBucket`` is one budget: ``rate`` tokens per second, at most ``burst`` saved
up, one spent per action.  ``KeyedBuckets`` keeps one per key (a contact's peer ID,
a source address) in a table that is bounded too, least recently used keys
forgotten first, so the budget itself cannot be grown by someone cycling through
keys.  Used for the DHT's replies (``dht/budget.py``) and file offers
(``net/transfers.py``).

Hand-written because it is a few lines and the libraries on PyPI are either
asyncio-bound (they sleep instead of answering "not now") or unmaintained.
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
