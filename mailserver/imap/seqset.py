"""Sequence sets (RFC 3501 §9 sequence-set, RFC 9051 §9): "1:3,5,7:*", "*", "4:2".

The same syntax names message sequence numbers and UIDs; "*" is the largest number in
use in the folder (RFC 3501 §6.4.8, §9 seq-number), and a range's ends may come in
either order. SEARCHRES's "$" (RFC 5182) stands alone and the session resolves it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Iterator

# nz-number: no leading zero, and it fits in 32 bits (RFC 3501 §9 number).
_NUMBER = r"(?:[1-9][0-9]{0,9}|\*)"
_SET = re.compile(rf"{_NUMBER}(?::{_NUMBER})?(?:,{_NUMBER}(?::{_NUMBER})?)*")
MAX_NUMBER = 2**32 - 1


@dataclass(frozen=True)
class SequenceSet:
    # Each range as written, low and high in either order; None stands for "*".
    ranges: tuple[tuple[int | None, int | None], ...]

    @classmethod
    def parse(cls, text: str) -> SequenceSet:
        if not _SET.fullmatch(text):
            raise ValueError(f"invalid sequence set: {text!r}")
        ranges = []
        for part in text.split(","):
            first, _, last = part.partition(":")
            low, high = _number(first), _number(last or first)
            if max(low or 0, high or 0) > MAX_NUMBER:
                raise ValueError(f"number too large in sequence set: {text!r}")
            ranges.append((low, high))
        return cls(tuple(ranges))

    def contains(self, n: int, largest: int) -> bool:
        """Whether n is in the set, "*" meaning `largest`."""
        return any(low <= n <= high for low, high in self._bounds(largest))

    def resolve(self, largest: int, limit: int | None = None) -> list[int]:
        """The numbers in the set, sorted and unique, "*" meaning `largest`; numbers above
        `limit` (by default `largest`) are dropped, so the result never exceeds `limit`
        items. Hence for UIDs `N:*` with N above the largest UID gives just the largest
        (RFC 3501 §6.4.8), and "1:4294967295" costs no more than "1:*". Message sequence
        numbers out of range are an error the session must detect before (RFC 3501 §9:
        compare `ranges` with the message count); here they are silently dropped."""
        cap = largest if limit is None else limit
        numbers: list[int] = []
        for low, high in sorted(self._bounds(largest)):  # overlaps cost nothing: "1:*,1:*,..."
            low = max(low, numbers[-1] + 1 if numbers else 1)
            numbers.extend(range(low, min(high, cap) + 1))
        return numbers

    def _bounds(self, largest: int) -> Iterator[tuple[int, int]]:
        for low, high in self.ranges:
            low, high = largest if low is None else low, largest if high is None else high
            yield (low, high) if low <= high else (high, low)


def _number(text: str) -> int | None:
    return None if text == "*" else int(text)


def compress(numbers: Iterable[int]) -> str:
    """Sorted ranges, "1:3,5" (UIDPLUS, VANISHED, ESEARCH ALL); "" for no numbers."""
    runs: list[list[int]] = []  # [first, last] of each run of consecutive numbers
    for n in sorted(set(numbers)):
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ",".join(f"{first}:{last}" if first != last else str(first) for first, last in runs)
