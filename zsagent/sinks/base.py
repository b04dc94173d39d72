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
    md5: hex MD5 of the stored bytes when they differ from the volume's raw content (e.g. a qcow2
        file); None when the template is stored raw and the pipeline's MD5 is the template's.
    """

    install_path: str
    actual_size: int
    parent: str | None = None
    md5: str | None = None


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


class StreamTarget(Protocol):
    """Where a sequential format encoder (e.g. the streaming qcow2 writer) puts its bytes.

    ``open()`` creates a temporary object (``<name>.part``); ``write(data)`` appends, strictly in order,
    never seeking; ``commit()`` makes it durable and publishes it under the final name atomically,
    never replacing an existing one, and returns (install_path, actual_size); ``abort()`` removes what
    was created and never raises.
    """

    description: str

    def open(self) -> None: ...

    def write(self, data: bytes) -> None: ...

    def commit(self) -> tuple[str, int]: ...

    def abort(self) -> None: ...
