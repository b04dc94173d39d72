"""An RBD image at a snapshot: an immutable point in time, extents from diff_iterate."""

from __future__ import annotations

from collections.abc import Iterator

from zsagent.ceph.images import data_ranges
from zsagent.copy.extents import Extent, covering
from zsagent.sources.base import QemuInput


class RbdSnapshotSource:
    """``pool/image@snapshot`` opened read-only through ``rbd_module`` (real or fake).

    Clones report their parents' data too (``include_parent=True``), so a clone's template is complete.
    ``qemu_input``: how qemu-img names the same snapshot (see Source), None when it cannot read it (the fake
    backend).
    """

    def __init__(self, rbd_module, ioctx, image: str, snapshot: str,
                 qemu_input: QemuInput | None = None) -> None:
        self.qemu_input = qemu_input
        self._image = rbd_module.Image(ioctx, image, snapshot=snapshot, read_only=True)
        self.size = self._image.size()

    def extents(self) -> Iterator[Extent]:
        return covering(self.size, data_ranges(self._image, include_parent=True))

    def read(self, offset: int, length: int) -> bytes:
        return self._image.read(offset, length)

    def close(self) -> None:
        self._image.close()
