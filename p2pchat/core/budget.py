"""Rate budgets per peer, sans-IO: the caller passes ``now``.

A token bucket per key (a contact's peer ID, a source address): ``burst`` tokens
to start with, ``rate`` more per second, one spent per action.  The table of keys
is bounded too (least recently used keys are forgotten first), so the budget
itself cannot be grown without limit by someone cycling through keys.  A
forgotten key starts again with a full bucket, which is why ``max_keys`` should
exceed the number of keys that can be active at once (for contacts: all of them).

Hand-written because it is a dozen lines and the libraries on PyPI are either
asyncio-bound (they sleep instead of answering "not now") or unmaintained.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class RateBudget:
    """``allow(key, now)`` is True while ``key`` has a token left, and spends it."""

    def __init__(self, *, rate: float, burst: float, max_keys: int = 4096) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("a budget needs a positive rate, a burst of at least 1 and keys")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def allow(self, key: str, now: float) -> bool:
        if self.available(key, now) < 1.0:
            return False
        self.spend(key, 1.0, now)
        return True

    def _bucket(self, key: str, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets.popitem(last=False)
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        else:
            self._buckets.move_to_end(key)
            elapsed = max(0.0, now - bucket.at)
            bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate)
            bucket.at = now
        return bucket

    def available(self, key: str, now: float) -> float:
        """Tokens ``key`` could spend now (for costs of more than one token, such as
        bytes, checked against several budgets before any is charged)."""
        return self._bucket(key, now).tokens

    def spend(self, key: str, cost: float, now: float) -> None:
        """Charge ``cost`` tokens (the caller checked ``available``)."""
        bucket = self._bucket(key, now)
        bucket.tokens = max(0.0, bucket.tokens - cost)

    def wait(self, key: str, cost: float, now: float) -> float:
        """Seconds until ``key`` can spend ``cost`` tokens (0 if it can now)."""
        missing = min(cost, self.burst) - self.available(key, now)
        return max(0.0, missing / self.rate)

    def describe(self) -> str:
        """The budget in words, for refusals sent back to the peer."""
        every = 1.0 / self.rate
        pace = f"one every {every:g} s" if every >= 1 else f"{self.rate:g} a second"
        return f"at most {self.burst:g} at once, then {pace}"
