"""Server-side copy of an RBD snapshot's data objects into a new image of the same cluster.

The destination's OSD pulls each object from the source object at the snapshot (the RADOS op COPY_FROM,
through the optional native module ``zsagent._rados_copy``), so the data does not pass through the agent:
no socket copies, no messenger CRC and no librbd copies for the write half of the copy.

It is only used when the result is provably the same bytes as a copy through librbd (``refusal``): an
object ``rbd_data.<id>.<objno:016x>`` then holds exactly the image's bytes
``[objno * object_bytes, (objno + 1) * object_bytes)``, and a missing object reads as zeros in both
images.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from zsagent.copy.extents import Extent, Kind

log = logging.getLogger(__name__)

IN_FLIGHT_OBJECTS = 8
"""Object copies in flight at once per copy (each moves one object, 4 MiB by default, inside the OSDs)."""

try:
    from zsagent import _rados_copy
except ImportError:  # not built (no C++ compiler or librados' C++ headers): copies go through librbd
    _rados_copy = None

_clusters: dict[object, object] = {}
_clusters_lock = threading.Lock()


def available(backend) -> bool:
    """Whether server-side copies can be made with ``backend`` (zsagent.ceph.CephBackend): the real
    cluster and the native module built."""
    return _rados_copy is not None and backend is not None and not backend.is_fake


def native_cluster(backend):
    """The native module's own librados handle, from the same ceph.conf, client and keyring as the agent's
    cluster handle; one per process and config, connected on first use, kept until the process ends."""
    with _clusters_lock:
        cluster = _clusters.get(backend.config)
        if cluster is None:
            c = backend.config
            cluster = _rados_copy.Cluster(c.conf, f"client.{c.client}", backend.client_options())
            _clusters[backend.config] = cluster
        return cluster


def refusal(rbd_module, source, source_ioctx, destination, destination_ioctx) -> str | None:
    """Why a server-side copy of ``source`` (an open image at the snapshot to copy) into ``destination``
    (the new, empty image) would not be the same as a copy through librbd; None when it would.

    Refused: a clone whose parent still shows through (its missing objects read from the parent), striping
    other than one object after the other, a separate data pool (objects not in the image's pool), a
    different object size, and a destination with journaling (writes behind librbd's back would not be
    in its journal)."""
    try:
        source.parent_info()
        if source.overlap() > 0:
            return "the volume is a clone whose parent's data shows through"
    except rbd_module.ImageNotFound:
        pass  # no parent
    for role, image, ioctx in (("volume", source, source_ioctx), ("template", destination, destination_ioctx)):
        object_bytes = image.stat()["obj_size"]
        if image.stripe_unit() != object_bytes or image.stripe_count() != 1:
            return f"the {role} image uses fancy striping"
        if image.features() & rbd_module.RBD_FEATURE_DATA_POOL or image.data_pool_id() != ioctx.get_pool_id():
            return f"the {role} image keeps its data in a separate data pool"
    if source.stat()["obj_size"] != destination.stat()["obj_size"]:
        return "the template's object size differs from the volume's"
    if destination.features() & rbd_module.RBD_FEATURE_JOURNALING:
        return "the template image has journaling enabled"
    return None


def object_numbers(extents: Iterable[Extent], object_bytes: int) -> list[int]:
    """Numbers of the objects the DATA extents touch, in order (each once)."""
    numbers: list[int] = []
    for ext in extents:
        if ext.kind is not Kind.DATA or not ext.length:
            continue
        first, last = ext.offset // object_bytes, (ext.end - 1) // object_bytes
        if numbers and numbers[-1] >= first:
            first = numbers[-1] + 1
        numbers.extend(range(first, last + 1))
    return numbers


class ObjectCopy:
    """Copies objects of one image at a snapshot into another image, server-side, on a thread of its own.

    ``start(numbers)`` begins; ``error`` is the failure so far (None: none yet); ``wait()`` returns once
    every object is copied or raises the failure; ``stop()`` makes the copies end after those in flight
    (so that nothing is written into an image after it was removed) and waits for that.
    """

    def __init__(self, job, in_flight: int = IN_FLIGHT_OBJECTS) -> None:
        self._job = job
        self._in_flight = in_flight
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.objects = 0  # how many objects were asked for

    @classmethod
    def between(cls, backend, source_ioctx, snapshot_id: int, source_prefix: str,
                destination_ioctx, destination_prefix: str, in_flight: int = IN_FLIGHT_OBJECTS) -> ObjectCopy:
        """Objects ``<source_prefix>.<objno>`` at snapshot ``snapshot_id`` into ``<destination_prefix>.<objno>``,
        in the pools (and namespaces) of the two ioctxs."""
        job = native_cluster(backend).copy_job(
            source_ioctx.get_pool_name(), source_ioctx.get_namespace(), snapshot_id, source_prefix,
            destination_ioctx.get_pool_name(), destination_ioctx.get_namespace(), destination_prefix)
        return cls(job, in_flight)

    @property
    def copied(self) -> int:
        return self._job.copied

    def start(self, numbers: list[int]) -> None:
        self.objects = len(numbers)
        self._thread = threading.Thread(target=self._run, args=(numbers,), name="zsagent-objcopy", daemon=True)
        self._thread.start()

    def _run(self, numbers: list[int]) -> None:
        try:
            self._job.run(numbers, self._in_flight)
        except BaseException as e:  # noqa: BLE001 - reported through error / wait()
            self.error = e

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self._job.stop()
        if self._thread is not None:
            self._thread.join()
