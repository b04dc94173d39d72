"""Templates from RBD volumes: snapshot the volume, copy the snapshot, release the snapshot.

Modes for a Ceph backup pool in the same cluster:
  copy    - an independent image streamed through the pipeline (the default);
  clone   - a copy-on-write clone of the protected snapshot: instant; the snapshot stays as its parent;
  flatten - a clone flattened by librbd while the pipeline reads the snapshot for the md5.
In every mode the md5 comes from reading the snapshot, and the snapshot is removed afterwards unless a
clone still depends on it (ZStack's own agent leaves its snapshots behind; we do not).
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Sequence

from zsagent.copy.pipeline import CopyResult, PipelineConfig, ProgressCallback
from zsagent.qemu_img import QemuInput
from zsagent.sinks.base import Sink
from zsagent.sinks.converted import Converter
from zsagent.sinks.rbd_image import RbdCloneSink, RbdImageSink
from zsagent.sources.rbd_snapshot import RbdSnapshotSource
from zsagent.transfer import transfer

log = logging.getLogger(__name__)


class CephCopyMode(enum.Enum):
    COPY = "copy"
    CLONE = "clone"
    FLATTEN = "flatten"


def rbd_template_sink(mode: CephCopyMode, rbd_module, src_ioctx, volume: str, snapshot: str,
                      dst_ioctx, dst_pool: str, name: str) -> Sink:
    """The sink that makes ``dst_pool/name`` from ``volume@snapshot`` in ``mode``.

    ``src_ioctx`` is None when the volume is not an RBD image (then only COPY makes sense).
    """
    if mode is CephCopyMode.COPY:
        order = None
        if src_ioctx is not None:
            with rbd_module.Image(src_ioctx, volume, read_only=True) as image:
                order = image.stat()["order"]
        return RbdImageSink(rbd_module, dst_ioctx, dst_pool, name, order)
    return RbdCloneSink(rbd_module, src_ioctx, volume, snapshot, dst_ioctx, dst_pool, name,
                        flatten=mode is CephCopyMode.FLATTEN)


def copy_rbd_volume(rbd_module, ioctx, volume: str, snapshot: str, sinks: Sequence[Sink],
                    config: PipelineConfig | None = None, *, progress: ProgressCallback | None = None,
                    cancel: threading.Event | None = None, hash_content: bool = True,
                    take_snapshot: Callable[[Callable[[], None]], None] | None = None,
                    converters: Sequence[Converter] = (), qemu_input: QemuInput | None = None) -> CopyResult:
    """Take ``volume@snapshot``, copy it into ``sinks`` in one pass (and make the ``converters``' templates,
    which read the snapshot through qemu as ``qemu_input`` names it), then release the snapshot.

    The snapshot must not exist yet (it is named after the new template, so a clash means a retry of a
    job that is still running or left state behind: ImageExists from rbd). ``take_snapshot(create)``,
    when given, decides how ``create()`` is called (e.g. with the guest's filesystems frozen).
    """

    def create() -> None:
        with rbd_module.Image(ioctx, volume) as image:
            image.create_snap(snapshot)

    try:
        (take_snapshot or (lambda make: make()))(create)
        source = RbdSnapshotSource(rbd_module, ioctx, volume, snapshot, qemu_input=qemu_input)
        try:
            return transfer(source, sinks, converters, config, progress=progress, cancel=cancel,
                            hash_content=hash_content)
        finally:
            source.close()
    finally:
        try:
            release_snapshot(rbd_module, ioctx, volume, snapshot)
        except rbd_module.ImageNotFound:  # the snapshot was never taken
            pass


def release_snapshot(rbd_module, ioctx, volume: str, snapshot: str) -> bool:
    """Remove ``volume@snapshot`` unless clones depend on it; True when it was removed."""
    with rbd_module.Image(ioctx, volume, snapshot=snapshot, read_only=True) as snap:
        children = snap.list_children()
    if children:
        log.info("keeping snapshot %s@%s: parent of %s", volume, snapshot, children)
        return False
    with rbd_module.Image(ioctx, volume) as image:
        if image.is_protected_snap(snapshot):
            image.unprotect_snap(snapshot)
        image.remove_snap(snapshot)
    return True
