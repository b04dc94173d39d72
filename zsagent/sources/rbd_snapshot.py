"""An RBD image at a snapshot: an immutable point in time, extents from diff_iterate."""

from __future__ import annotations

from collections.abc import Iterator

from zsagent.ceph.images import data_ranges
from zsagent.copy.extents import Extent, covering
from zsagent.sources.base import QemuInput
from zsagent.sources.unchanged import SourceChanged


class RbdSnapshotSource:
    """``pool/image@snapshot`` opened read-only through ``rbd_module`` (real or fake).

    Clones report their parents' data too (``include_parent=True``), so a clone's template is complete.
    ``qemu_input``: how qemu-img names the same snapshot (see Source), None when it cannot read it (the fake
    backend).
    """

    def __init__(self, rbd_module, ioctx, image: str, snapshot: str,
                 qemu_input: QemuInput | None = None) -> None:
        self.qemu_input = qemu_input
        self._rbd, self._ioctx, self._name, self._snapshot = rbd_module, ioctx, image, snapshot
        self._image = rbd_module.Image(ioctx, image, snapshot=snapshot, read_only=True)
        self.size = self._image.size()

    def extents(self) -> Iterator[Extent]:
        return covering(self.size, data_ranges(self._image, include_parent=True))

    def read(self, offset: int, length: int) -> bytes:
        return self._image.read(offset, length)

    def confirm_unchanged(self) -> None:
        """SourceChanged when the image or its snapshot was removed while the copy read it (reads of a
        removed snapshot may still succeed for a while, until the OSDs trim it)."""
        try:
            with self._rbd.Image(self._ioctx, self._name, read_only=True) as head:
                names = {snap["name"] for snap in head.list_snaps()}
        except self._rbd.ImageNotFound:
            raise SourceChanged(f"RBD image {self._name} was deleted during the copy") from None
        if self._snapshot not in names:
            raise SourceChanged(f"snapshot {self._name}@{self._snapshot} was removed during the copy") from None

    def close(self) -> None:
        self._image.close()
