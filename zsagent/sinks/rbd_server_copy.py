"""An RBD template whose data the OSDs copy themselves from the volume's snapshot (zsagent.ceph.server_copy).

The pipeline still reads the snapshot through librbd for the MD5, so the MD5 is of exactly the snapshot's
bits; the data it hands this sink is dropped, because the destination's objects are copied server-side from
the same snapshot while the pipeline reads. The image has no object map during the copies; commit waits for
every object copy, then turns object-map and fast-diff back on and builds the map from the objects (they were
made behind librbd's back), stores the MD5 and publishes as RbdImageSink does.

When a server-side copy would not be provably identical (zsagent.ceph.server_copy.refusal) the sink
writes what it is handed, as RbdImageSink.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from zsagent.ceph import server_copy
from zsagent.ceph.health import timed_out
from zsagent.copy.extents import Extent
from zsagent.sinks.base import NO_JOURNAL, Journal, SinkResult
from zsagent.sinks.rbd_image import RbdImageSink

log = logging.getLogger(__name__)


class RbdServerCopySink(RbdImageSink):
    """RbdImageSink for a volume ``source_image@snapshot`` in ``source_ioctx``'s pool of the same cluster.

    ``backend``: the zsagent.ceph.CephBackend whose config the native handle connects with.
    ``server_copy``: after ``open``, the running ObjectCopy, or None when the data is written through librbd
    (``refused`` then says why).
    """

    def __init__(self, backend, source_ioctx, source_image: str, snapshot: str, ioctx, pool: str, name: str,
                 order: int | None = None, journal: Journal = NO_JOURNAL, features: int | None = None,
                 md5_key: str | None = None) -> None:
        super().__init__(backend.rbd, ioctx, pool, name, order, journal, features, md5_key)
        self.backend = backend
        self.source_ioctx = source_ioctx
        self.source_image = source_image
        self.snapshot = snapshot
        self.server_copy: server_copy.ObjectCopy | None = None
        self.refused: str | None = None
        self._map_features = 0  # object-map / fast-diff bits turned off during the copies

    def open(self, size: int, extents: Sequence[Extent]) -> None:
        super().open(size, extents)
        with self.rbd.Image(self.source_ioctx, self.source_image, snapshot=self.snapshot, read_only=True) as src:
            self.refused = server_copy.refusal(self.rbd, src, self.source_ioctx, self.image, self.ioctx)
            if self.refused is not None:
                log.info("%s: written through librbd: %s", self.description, self.refused)
                return
            object_bytes = src.stat()["obj_size"]
            try:
                copy = server_copy.ObjectCopy.between(
                    self.backend, self.source_ioctx, src.snap_get_id(self.snapshot), src.block_name_prefix(),
                    self.ioctx, self.image.block_name_prefix())
            except OSError as e:  # e.g. the native handle cannot connect: librbd still can write
                self.refused = f"no server-side copy: {e}"
                log.warning("%s: written through librbd: %s", self.description, self.refused)
                return
        # While the objects are made behind librbd's back the image has no object map: a removal (an
        # abort, or the cleanup after a crash) then deletes every object number instead of only those an
        # object map would list, so no copied object outlives the image.
        self._map_features = self.image.features() & (self.rbd.RBD_FEATURE_OBJECT_MAP | self.rbd.RBD_FEATURE_FAST_DIFF)
        if self._map_features:
            self.image.update_features(self._map_features, False)
        copy.start(server_copy.object_numbers(extents, object_bytes))
        self.server_copy = copy

    def write(self, offset: int, data: bytes) -> None:
        """The OSDs copy the data; a failed object copy ends the copy at once."""
        if self.server_copy is None:
            super().write(offset, data)
        elif self.server_copy.error is not None:
            self.timed_out = self.timed_out or timed_out(self.server_copy.error)
            raise self.server_copy.error

    def commit(self, content_md5: str | None = None) -> SinkResult:
        if self.server_copy is not None:
            try:
                self.server_copy.wait()
            except Exception as e:
                self.timed_out = self.timed_out or timed_out(e)
                raise
            if self._map_features:  # back on, built from the objects there are (also fast-diff's state)
                self.image.update_features(self._map_features, True)
                self.image.rebuild_object_map()
        return super().commit(content_md5)

    def abort(self) -> None:
        if self.server_copy is not None:
            self.server_copy.stop()  # no copy may land in the image after it is removed
        super().abort()
