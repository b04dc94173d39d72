"""Allocation maps: which byte ranges of a volume hold data, read as zeros, or are not allocated at all."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass


class Kind(enum.Enum):
    """What a range of a volume holds.

    DATA: allocated; must be read (it may still turn out to be all zeros).
    ZERO: allocated or not, known to read as zeros; never read.
    HOLE: not allocated anywhere in the chain; reads as zeros; never read.
    """

    DATA = "data"
    ZERO = "zero"
    HOLE = "hole"

    @property
    def reads_as_zero(self) -> bool:
        return self is not Kind.DATA


@dataclass(frozen=True, slots=True)
class Extent:
    """``length`` bytes starting at byte ``offset`` of the volume, all of one ``kind``."""

    offset: int
    length: int
    kind: Kind

    @property
    def end(self) -> int:
        return self.offset + self.length


def covering(size: int, data_ranges: Iterable[tuple[int, int]], gap: Kind = Kind.HOLE) -> Iterator[Extent]:
    """Turn (offset, length) ranges of data into extents covering ``[0, size)`` in order.

    Ranges may come unsorted, overlapping or touching; they are merged. Parts outside ``[0, size)`` are
    dropped. What no range covers becomes ``gap``.
    """
    pos = 0
    for offset, length in merge_ranges(data_ranges):
        start, end = max(offset, pos), min(offset + length, size)
        if end <= start:
            continue
        if start > pos:
            yield Extent(pos, start - pos, gap)
        yield Extent(start, end - start, Kind.DATA)
        pos = end
    if pos < size:
        yield Extent(pos, size - pos, gap)


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort (offset, length) ranges and merge the ones that overlap or touch; empty ones vanish."""
    merged: list[list[int]] = []
    for offset, length in sorted(r for r in ranges if r[1] > 0):
        if merged and offset <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], offset + length)
        else:
            merged.append([offset, offset + length])
    return [(start, end - start) for start, end in merged]


def coalesce(extents: Iterable[Extent]) -> Iterator[Extent]:
    """Merge neighbours of the same kind (ZERO and HOLE stay distinct)."""
    pending: Extent | None = None
    for ext in extents:
        if ext.length == 0:
            continue
        if pending and pending.kind is ext.kind and pending.end == ext.offset:
            pending = Extent(pending.offset, pending.length + ext.length, ext.kind)
            continue
        if pending:
            yield pending
        pending = ext
    if pending:
        yield pending


def chunked(extents: Iterable[Extent], chunk_bytes: int) -> Iterator[Extent]:
    """Split extents into pieces of at most ``chunk_bytes``, aligned to ``chunk_bytes`` boundaries.

    Alignment keeps pieces on object/cluster boundaries when the chunk size is a multiple of them, so a
    read touches as few RBD objects as possible.
    """
    if chunk_bytes <= 0:
        raise ValueError("chunk_bytes must be positive")
    for ext in extents:
        pos = ext.offset
        while pos < ext.end:
            boundary = (pos // chunk_bytes + 1) * chunk_bytes
            end = min(boundary, ext.end)
            yield Extent(pos, end - pos, ext.kind)
            pos = end


def allocated_bytes(extents: Iterable[Extent]) -> int:
    """Bytes in DATA extents."""
    return sum(e.length for e in extents if e.kind is Kind.DATA)
