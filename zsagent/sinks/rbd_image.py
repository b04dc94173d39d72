"""RBD destinations in a backup pool: a full copy, or a copy-on-write clone of the source snapshot.

Both live under ``<name>.part`` until commit renames them (rbd rename refuses to overwrite).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from zsagent import faults
from zsagent.ceph.health import close_later, timed_out
from zsagent.ceph.images import data_ranges
from zsagent.copy.extents import Extent
from zsagent.sinks.base import NO_JOURNAL, PART_SUFFIX, Journal, SinkResult

log = logging.getLogger(__name__)

JOURNAL_KIND = "ceph"
"""Journal entries name an image in a pool: ``{"pool", "image"}`` (zsagent.storages.ceph removes them)."""


def rbd_allocated_bytes(image) -> int:
    """Bytes the image itself has allocated (its parent's data not counted)."""
    return sum(length for _, length in data_ranges(image, include_parent=False))


class _RbdPartImage:
    """The common life cycle: an image under a temporary name, renamed on commit, removed on abort.

    Each name is journalled (kind "ceph") before it exists and forgotten once it is gone or renamed.
    """

    sequential = False

    def __init__(self, rbd_module, ioctx, pool: str, name: str, journal: Journal = NO_JOURNAL) -> None:
        self.rbd = rbd_module
        self.ioctx = ioctx
        self.pool = pool
        self.name = name
        self.part = name + PART_SUFFIX
        self.description = f"ceph://{pool}/{name}"
        self.journal = journal
        self.image = None
        self._created = False
        self._part_id: int | None = None
        self._final_id: int | None = None
        self._published = False
        self._committed = False
        self.timed_out = False  # an operation of this sink ended with a Ceph timeout

    def _claim_part(self) -> None:
        """The final name must be free; journal the .part before it is created."""
        if self.name in self.rbd.RBD().list(self.ioctx):
            raise self.rbd.ImageExists(f"image {self.pool}/{self.name} already exists")
        self._part_id = self.journal.record(JOURNAL_KIND, {"pool": self.pool, "image": self.part})

    def _publish(self, parent: str | None = None) -> SinkResult:
        self.image.flush()
        actual = rbd_allocated_bytes(self.image)
        self.image.close()
        self.image = None
        self._final_id = self.journal.record(JOURNAL_KIND, {"pool": self.pool, "image": self.name})
        faults.hit("publish-before-rename")
        try:
            self.rbd.RBD().rename(self.ioctx, self.part, self.name)  # refuses to replace an image
        except BaseException:
            self.journal.forget(self._final_id)  # not renamed: the final name is not ours
            self._final_id = None
            raise
        self._created, self._published = False, True
        faults.hit("publish-after-rename")
        self._forget_part()
        self._committed = True
        return SinkResult(self.description, actual, parent)

    def _forget_part(self) -> None:
        if self._part_id is not None:
            self.journal.forget(self._part_id)
            self._part_id = None

    def abort(self) -> None:
        if self._committed:
            return
        if self.timed_out:  # Ceph does not answer: each removal would wait out the op timeout again
            if self.image is not None:
                close_later(self.image, self.part)
                self.image = None
            log.warning("%s: Ceph timed out; leaving %s to the background cleanup", self.description, self.part)
            return
        if self.image is not None:
            try:
                self.image.close()
            except Exception:  # noqa: BLE001
                log.exception("closing %s failed", self.part)
            self.image = None
        if self._created:
            if not self._remove(self.part):
                return
            self._created = False
        self._forget_part()
        if self._published:  # renamed, but the commit failed after that: it was never reported
            if not self._remove(self.name):
                return
            self._published = False
        if self._final_id is not None:
            self.journal.forget(self._final_id)
            self._final_id = None

    def _remove(self, image: str) -> bool:
        """Remove ``image`` (gone already is fine); False when that failed (its entry stays journalled)."""
        try:
            faults.hit("cleanup")
            self.rbd.RBD().remove(self.ioctx, image)
            # a full pool keeps the name listed (zsagent.ceph.images.remove_image): the journal retries
            return image not in self.rbd.RBD().list(self.ioctx)
        except self.rbd.ImageNotFound:  # a full pool answers so too: believe the pool's list
            return image not in self.rbd.RBD().list(self.ioctx)
        except Exception:  # noqa: BLE001 - abort never raises; the journal retries later
            log.exception("removing %s/%s failed", self.pool, image)
            return False


class RbdImageSink(_RbdPartImage):
    """An independent image of the source's size; only non-zero data is written.

    ``order``: log2 of the object size (None: the pool's default); templates of RBD volumes keep the
    volume's, as `rbd cp` does, so that the template is no less sparse than the volume. ``features``:
    the image's feature bits (None: the cluster's default). ``md5_key``: image metadata key the content
    MD5 is stored under before the image is published (None: not stored).
    """

    def __init__(self, rbd_module, ioctx, pool: str, name: str, order: int | None = None,
                 journal: Journal = NO_JOURNAL, features: int | None = None, md5_key: str | None = None) -> None:
        super().__init__(rbd_module, ioctx, pool, name, journal)
        self.order = order
        self.features = features
        self.md5_key = md5_key

    def open(self, size: int, extents: Sequence[Extent]) -> None:
        self._claim_part()
        extra = {} if self.features is None else {"features": self.features}
        self.rbd.RBD().create(self.ioctx, self.part, size, order=self.order, old_format=False, **extra)
        self._created = True
        self.image = self.rbd.Image(self.ioctx, self.part)

    def write(self, offset: int, data: bytes) -> None:
        try:
            self.image.write(data, offset)
        except Exception as e:
            self.timed_out = self.timed_out or timed_out(e)
            raise

    def commit(self, content_md5: str | None = None) -> SinkResult:
        if self.md5_key is not None:
            if content_md5 is None:
                raise ValueError(f"{self.description}: storing the MD5 needs the content MD5 of the copy")
            self.image.metadata_set(self.md5_key, content_md5)
        return self._publish()


class RbdCloneSink(_RbdPartImage):
    """A clone of ``parent_pool/parent_image@snapshot`` (protected first), optionally flattened.

    The data never passes through the pipeline: writes are ignored, the pipeline only hashes. With
    ``flatten`` the clone is flattened in the background while the pipeline reads the snapshot, and
    commit waits for it; the result then no longer depends on the snapshot.
    """

    def __init__(self, rbd_module, parent_ioctx, parent_image: str, snapshot: str,
                 ioctx, pool: str, name: str, flatten: bool = False, journal: Journal = NO_JOURNAL) -> None:
        super().__init__(rbd_module, ioctx, pool, name, journal)
        self.parent_ioctx = parent_ioctx
        self.parent_image = parent_image
        self.snapshot = snapshot
        self.flatten = flatten
        self._flattener: threading.Thread | None = None
        self._flatten_error: BaseException | None = None

    @property
    def parent_spec(self) -> str:
        return f"{self.parent_ioctx.get_pool_name()}/{self.parent_image}@{self.snapshot}"

    def open(self, size: int, extents: Sequence[Extent]) -> None:
        self._claim_part()
        with self.rbd.Image(self.parent_ioctx, self.parent_image) as parent:
            if not parent.is_protected_snap(self.snapshot):
                parent.protect_snap(self.snapshot)
        self.rbd.RBD().clone(self.parent_ioctx, self.parent_image, self.snapshot, self.ioctx, self.part)
        self._created = True
        self.image = self.rbd.Image(self.ioctx, self.part)
        if self.flatten:
            self._flattener = threading.Thread(target=self._flatten, name="zsagent-flatten", daemon=True)
            self._flattener.start()

    def _flatten(self) -> None:
        try:
            self.image.flatten()
        except BaseException as e:  # noqa: BLE001 - reported by commit
            self._flatten_error = e

    def write(self, offset: int, data: bytes) -> None:
        """The clone already holds the data."""

    def commit(self, content_md5: str | None = None) -> SinkResult:
        if self._flattener is not None:
            self._flattener.join()
            if self._flatten_error is not None:
                raise self._flatten_error
        return self._publish(parent=None if self.flatten else self.parent_spec)

    def abort(self) -> None:
        if self._flattener is not None:
            self._flattener.join()  # flatten cannot be interrupted; the image is removed right after
        super().abort()
