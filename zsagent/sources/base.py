"""What the pipeline needs from a volume."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from zsagent.copy.extents import Extent

QemuInput = tuple[str, str]
"""(format, filename) as qemu-img's ``-f`` and source argument take them, e.g. ("qcow2", "/ps/vol.qcow2"),
("raw", "rbd:pool/image@snap:conf=..."), ("raw", "nbd+unix:///vda?socket=...")."""


class Source(Protocol):
    """A read-only, point-in-time view of a volume.

    ``size``: virtual size in bytes. ``extents()``: the allocation map, in offset order (gaps are taken
    as holes). ``read()`` returns exactly ``length`` bytes and must be safe to call from several threads
    at once. ``close()`` releases everything the source opened or started.
    A source may also offer ``readinto(offset, buffer)`` (the direct qcow2 reader does): the bytes at
    ``offset`` into a writable buffer, every byte of it.
    ``qemu_input``: how qemu-img reads the same bytes (the qemu-img engine, zsagent.qemu_img); None: qemu-img
    cannot read this source (e.g. a volume of the fake Ceph backend).
    A source may also have ``confirm_unchanged()``: called once after the last read, before anything is
    published, it raises zsagent.sources.unchanged.SourceChanged when the volume did not hold still
    (deleted, resized, written, its snapshot removed), and the copy fails.
    """

    size: int
    qemu_input: QemuInput | None

    def extents(self) -> Iterable[Extent]: ...

    def read(self, offset: int, length: int) -> bytes: ...

    def close(self) -> None: ...
