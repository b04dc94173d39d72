"""An NBD export's allocation map from block status (the base:allocation context)."""

from __future__ import annotations

from collections.abc import Iterator

from zsagent.copy.extents import Extent, Kind, coalesce

# NBD servers may refuse block status requests much larger than this; we loop anyway.
STATUS_REQUEST_BYTES = 1 << 30


def nbd_kind(nbd_module, flags: int) -> Kind:
    """A hole without the zero flag may read as anything, so it is read like data."""
    if not flags & nbd_module.STATE_ZERO:
        return Kind.DATA
    return Kind.HOLE if flags & nbd_module.STATE_HOLE else Kind.ZERO


def nbd_extents(nbd_module, handle, size: int) -> Iterator[Extent]:
    """Extents of ``[0, size)`` from block status on ``handle`` (connected with base:allocation)."""
    found: list[Extent] = []
    offset = 0
    while offset < size:
        start = offset

        def on_status(_context: str, at: int, entries: list[int], _error) -> int:
            pos = at
            for length, flags in zip(entries[::2], entries[1::2], strict=True):
                length = min(length, size - pos)
                if length <= 0:
                    break
                found.append(Extent(pos, length, nbd_kind(nbd_module, flags)))
                pos += length
            return 0

        handle.block_status(min(STATUS_REQUEST_BYTES, size - start), start, on_status)
        reached = found[-1].end if found else start
        if reached <= start:
            raise OSError(f"NBD block status made no progress at offset {start}")
        offset = reached
    return coalesce(found)
