"""Ceph backup storage: templates as RBD images in a pool of the cluster the agent is connected to.

Modes for volumes from the same cluster:
  copy    - an independent image streamed through the pipeline (the default); where it is provably
            identical the OSDs copy the data objects themselves while the pipeline reads the snapshot for
            the md5 (zsagent.sinks.rbd_server_copy; [pipeline] rbd_server_side_copy = false turns it off);
  clone   - a copy-on-write clone of the protected snapshot: instant; the snapshot stays as its parent;
  flatten - a clone flattened by librbd while the pipeline reads the snapshot for the md5.
In every mode the md5 comes from reading the snapshot. File volumes are always copied.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from zsagent.ceph import server_copy
from zsagent.ceph.images import full_try, remove_image
from zsagent.ceph.snapshots import forget_snapshot
from zsagent.sinks.base import Journal
from zsagent.sinks.rbd_image import RbdCloneSink, RbdImageSink
from zsagent.sinks.rbd_server_copy import RbdServerCopySink
from zsagent.storages.base import Destination, Finding, Runtime, TemplateJob


class CephCopyMode(enum.Enum):
    COPY = "copy"
    CLONE = "clone"
    FLATTEN = "flatten"


@dataclass(frozen=True)
class CephSettings:
    """pool: where templates go; mode: copy | clone | flatten (see the module docstring). Templates are
    raw RBD images: ``format`` and ``compression`` accept only "raw" and "none"."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("pool",)
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"mode": tuple(m.value for m in CephCopyMode)}

    pool: str
    mode: str = "copy"
    format: str = "raw"
    compression: str = "none"

    def __post_init__(self) -> None:
        if self.format != "raw":
            raise ValueError("format: Ceph backup storage stores raw images only")
        if self.compression != "none":
            raise ValueError("compression: Ceph backup storage stores raw images only")


class CephStorage:
    name = "ceph"
    settings = CephSettings

    def destination(self, bs, job: TemplateJob, journal: Journal, runtime: Runtime) -> Destination:
        settings: CephSettings = bs.settings
        volume = job.volume
        rbd = runtime.ceph.rbd
        mode = CephCopyMode(job.tags.mode or settings.mode) if volume.kind == "ceph" else CephCopyMode.COPY
        dst_ioctx = full_try(runtime.cluster.open_ioctx(settings.pool))  # a full pool fails at once
        handles = [dst_ioctx]
        ref: dict[str, Any] = {"kind": self.name, "pool": settings.pool, "image": job.image_uuid}
        try:
            if mode is CephCopyMode.COPY and volume.kind == "ceph" and job.pipeline.rbd_server_side_copy \
                    and server_copy.available(runtime.ceph):
                src_ioctx = runtime.cluster.open_ioctx(volume.pool)
                handles.append(src_ioctx)
                sink = RbdServerCopySink(runtime.ceph, src_ioctx, volume.image, job.snapshot, dst_ioctx,
                                         settings.pool, job.image_uuid, volume.order, journal=journal)
            elif mode is CephCopyMode.COPY:
                sink = RbdImageSink(rbd, dst_ioctx, settings.pool, job.image_uuid, volume.order, journal=journal)
            else:
                src_ioctx = runtime.cluster.open_ioctx(volume.pool)
                handles.append(src_ioctx)
                sink = RbdCloneSink(rbd, src_ioctx, volume.image, job.snapshot, dst_ioctx, settings.pool,
                                    job.image_uuid, flatten=mode is CephCopyMode.FLATTEN, journal=journal)
                if mode is CephCopyMode.CLONE:
                    ref["parent"] = {"pool": volume.pool, "image": volume.image, "snapshot": job.snapshot}
        except BaseException:
            for handle in handles:
                handle.close()
            raise
        return Destination(bs, f"ceph://{settings.pool}/{job.image_uuid}", "raw", sink=sink, ref=ref,
                           handles=handles)

    def remove(self, spec: dict[str, Any], runtime: Runtime) -> None:
        """An image (``{"pool", "image"}``); a clone's ref also releases its parent snapshot."""
        remove_image(runtime.ceph, runtime.cluster, spec["pool"], spec["image"])
        parent = spec.get("parent")
        if parent:
            forget_snapshot(runtime.ceph, runtime.cluster, parent["pool"], parent["image"], parent["snapshot"])

    def check(self, bs, runtime: Runtime) -> Iterator[Finding]:
        pool = bs.settings.pool
        if runtime.cluster.pool_exists(pool):
            yield (True, f"Ceph pool {pool} exists", "")
        else:
            yield (False, f"Ceph pool {pool} does not exist",
                   f"create it: ceph osd pool create {pool} && rbd pool init {pool}")

    def free_bytes(self, bs) -> int | None:
        return None  # a pool's room needs the mgr's view of the cluster


KIND = CephStorage()
