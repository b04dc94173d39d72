"""What the pipeline needs from a destination."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from zsagent.copy.extents import Extent


@dataclass(frozen=True)
class SinkResult:
    """A published template.

    install_path: where it lives (``ceph://<pool>/<image>`` or a file path).
    actual_size: bytes allocated for it on the destination.
    parent: for a copy-on-write clone, the ``pool/image@snapshot`` it depends on, else None.
    """

    install_path: str
    actual_size: int
    parent: str | None = None


class Sink(Protocol):
    """One destination of a copy.

    ``description``: its final install path, for messages.
    ``sequential``: True when writes must come in offset order (streams); False when ``write`` and
    ``zero`` may be called from several threads in any order.
    Life cycle: ``open(size, extents)`` creates everything under a temporary name (the planned extents
    let stream formats lay out their metadata first), then ``write``/``zero`` cover every byte once,
    then ``commit()`` publishes under the final name atomically, or ``abort()`` removes all it created.
    ``abort()`` may be called at any point, also after a failed ``open`` or ``commit``, and never raises.
    """

    description: str
    sequential: bool

    def open(self, size: int, extents: Sequence[Extent]) -> None: ...

    def write(self, offset: int, data: bytes) -> None: ...

    def zero(self, offset: int, length: int) -> None: ...

    def commit(self) -> SinkResult: ...

    def abort(self) -> None: ...
