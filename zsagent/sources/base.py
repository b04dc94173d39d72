"""What the pipeline needs from a volume."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from zsagent.copy.extents import Extent


class Source(Protocol):
    """A read-only, point-in-time view of a volume.

    ``size``: virtual size in bytes. ``extents()``: the allocation map, in offset order (gaps are taken
    as holes). ``read()`` returns exactly ``length`` bytes and must be safe to call from several threads
    at once. ``close()`` releases everything the source opened or started.
    """

    size: int

    def extents(self) -> Iterable[Extent]: ...

    def read(self, offset: int, length: int) -> bytes: ...

    def close(self) -> None: ...
