"""Token buckets, sans-IO (the caller passes ``now``): how often, or how much, a peer
may make the node do something, per key and in total.

``TokenBucket`` is one budget: ``rate`` tokens per second, at most ``burst`` saved
up.  ``RateBudget`` keeps one per key (a contact's peer ID, a source address, a
connection) in a table that is bounded too, least recently used keys forgotten
first, so the budget itself cannot be grown by someone cycling through keys.  A
forgotten key starts again with a full bucket, which is why ``max_keys`` should
exceed the number of keys that can be active at once, or a global bucket should
stand behind the keyed one.  The one implementation for every budget of the node:
DHT replies (``dht/budget.py``), resends and message quotas (``delivery.py``), file
offers (``net/transfers.py``), group summaries and answers (``core/group/replica.py``),
relayed bytes (``core/relay.py``), rendezvous requests (``core/rendezvous.py``) and
strangers' punches and relay channels (``net/punch.py``, ``net/relay.py``).

Hand-written because it is a few lines and the libraries on PyPI are either
asyncio-bound (they sleep instead of answering "not now") or unmaintained.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["KeyedBuckets", "RateBudget", "TokenBucket"]

K = TypeVar("K")


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; starts full."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last = now

    def refill(self, now: float) -> float:
        """Add what accrued since the last look; return the tokens available."""
        elapsed = max(0.0, now - self.last)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.last = now
        return self.tokens

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        if self.refill(now) < 1.0:
            return False
        self.tokens -= 1.0
        return True


class RateBudget:
    """One :class:`TokenBucket` per key, at most ``max_keys`` of them."""

    def __init__(self, rate: float, burst: float, max_keys: int = 4096) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("a budget needs a positive rate, a burst of at least 1 and keys")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()

    def _bucket(self, key: Hashable, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets.popitem(last=False)
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        else:
            self._buckets.move_to_end(key)
        return bucket

    def allow(self, key: Hashable, now: float) -> bool:
        """Spend one of ``key``'s tokens if it has one."""
        return self._bucket(key, now).take(now)

    take = allow

    def available(self, key: Hashable, now: float) -> float:
        """Tokens ``key`` could spend now (for costs of more than one token, such as
        bytes, checked against several budgets before any is charged)."""
        return self._bucket(key, now).refill(now)

    def spend(self, key: Hashable, cost: float, now: float) -> None:
        """Charge ``cost`` tokens (the caller checked ``available``)."""
        bucket = self._bucket(key, now)
        bucket.tokens = max(0.0, bucket.refill(now) - cost)

    def wait(self, key: Hashable, cost: float, now: float) -> float:
        """Seconds until ``key`` can spend ``cost`` tokens (0 if it can now)."""
        missing = min(cost, self.burst) - self.available(key, now)
        return max(0.0, missing / self.rate)

    def describe(self) -> str:
        """The budget in words, for refusals sent back to the peer."""
        every = 1.0 / self.rate
        pace = f"one every {every:g} s" if every >= 1 else f"{self.rate:g} a second"
        return f"at most {self.burst:g} at once, then {pace}"

    def __len__(self) -> int:
        return len(self._buckets)


class KeyedBuckets(RateBudget, Generic[K]):
    """A :class:`RateBudget` with its key type spelled out (the DHT's name for it)."""
