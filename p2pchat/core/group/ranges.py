"""Sets of sequence numbers kept as sorted, disjoint, inclusive ranges.

Group sync describes "which of an author's messages do I hold" compactly: almost
always one range, a few more while gaps are being filled.  This is a dozen lines
of interval arithmetic, so it is written here rather than pulling in an interval
library whose general machinery (open/closed bounds, floats) we would have to
constrain back to integers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

Range = tuple[int, int]


class SeqSet:
    """A mutable set of positive integers stored as ``[(lo, hi), ...]`` (inclusive)."""

    __slots__ = ("_ranges",)

    def __init__(self, ranges: Iterable[Range] = ()) -> None:
        self._ranges: list[Range] = []
        for lo, hi in ranges:
            self.add_range(lo, hi)

    @property
    def ranges(self) -> tuple[Range, ...]:
        return tuple(self._ranges)

    def __len__(self) -> int:
        return sum(hi - lo + 1 for lo, hi in self._ranges)

    def __bool__(self) -> bool:
        return bool(self._ranges)

    def __contains__(self, seq: object) -> bool:
        if not isinstance(seq, int):
            return False
        for lo, hi in self._ranges:
            if seq < lo:
                return False
            if seq <= hi:
                return True
        return False

    def __iter__(self) -> Iterator[int]:
        for lo, hi in self._ranges:
            yield from range(lo, hi + 1)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SeqSet) and self._ranges == other._ranges

    def __repr__(self) -> str:
        return f"SeqSet({self._ranges!r})"

    def copy(self) -> SeqSet:
        out = SeqSet()
        out._ranges = list(self._ranges)
        return out

    def add(self, seq: int) -> None:
        self.add_range(seq, seq)

    def add_range(self, lo: int, hi: int) -> None:
        if lo > hi:
            return
        merged: list[Range] = []
        placed = False
        for a, b in self._ranges:
            if b + 1 < lo:
                merged.append((a, b))
            elif hi + 1 < a:
                if not placed:
                    merged.append((lo, hi))
                    placed = True
                merged.append((a, b))
            else:
                lo, hi = min(lo, a), max(hi, b)
        if not placed:
            merged.append((lo, hi))
        merged.sort()
        self._ranges = merged

    def update(self, other: SeqSet) -> None:
        for lo, hi in other._ranges:
            self.add_range(lo, hi)

    def discard_below(self, seq: int) -> None:
        """Forget every member smaller than ``seq``."""
        kept: list[Range] = []
        for lo, hi in self._ranges:
            if hi < seq:
                continue
            kept.append((max(lo, seq), hi))
        self._ranges = kept

    def discard(self, seq: int) -> None:
        kept: list[Range] = []
        for lo, hi in self._ranges:
            if lo <= seq <= hi:
                if lo < seq:
                    kept.append((lo, seq - 1))
                if seq < hi:
                    kept.append((seq + 1, hi))
            else:
                kept.append((lo, hi))
        self._ranges = kept

    def minus(self, other: SeqSet) -> SeqSet:
        """Members of self that are not in ``other``."""
        out: list[Range] = []
        theirs = other._ranges
        for lo, hi in self._ranges:
            cur = lo
            for a, b in theirs:
                if b < cur:
                    continue
                if a > hi:
                    break
                if a > cur:
                    out.append((cur, a - 1))
                cur = max(cur, b + 1)
                if cur > hi:
                    break
            if cur <= hi:
                out.append((cur, hi))
        result = SeqSet()
        result._ranges = out
        return result

    def first(self) -> int | None:
        return self._ranges[0][0] if self._ranges else None

    def last(self) -> int | None:
        return self._ranges[-1][1] if self._ranges else None
