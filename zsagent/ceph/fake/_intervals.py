"""Sets of byte ranges as sorted lists of disjoint, non-adjacent ``(start, end)`` pairs (end exclusive).

The fake's object model (clone overlaps, diff extents, copy-up extents) is all interval arithmetic; these
helpers keep it in one place. Every function takes and returns normalized lists and never mutates input.
"""

from __future__ import annotations

from collections.abc import Iterable

Interval = tuple[int, int]


def normalize(ranges: Iterable[Iterable[int]]) -> list[Interval]:
    """Sort, drop empty ranges and merge overlapping or adjacent ones."""
    out: list[Interval] = []
    for start, end in sorted((int(s), int(e)) for s, e in ranges):
        if end <= start:
            continue
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def union(a: list[Interval], b: list[Interval]) -> list[Interval]:
    return normalize([*a, *b])


def intersect(a: list[Interval], b: list[Interval]) -> list[Interval]:
    out: list[Interval] = []
    i = j = 0
    while i < len(a) and j < len(b):
        start = max(a[i][0], b[j][0])
        end = min(a[i][1], b[j][1])
        if start < end:
            out.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def subtract(a: list[Interval], b: list[Interval]) -> list[Interval]:
    out: list[Interval] = []
    j = 0
    for start, end in a:
        cur = start
        while j < len(b) and b[j][1] <= cur:
            j += 1
        k = j
        while k < len(b) and b[k][0] < end:
            if b[k][0] > cur:
                out.append((cur, b[k][0]))
            cur = max(cur, b[k][1])
            k += 1
        if cur < end:
            out.append((cur, end))
    return out


def clip(a: list[Interval], start: int, end: int) -> list[Interval]:
    return intersect(a, [(start, end)] if end > start else [])


def shift(a: list[Interval], delta: int) -> list[Interval]:
    return [(s + delta, e + delta) for s, e in a]
