"""RBD snapshots that make a volume's point in time: taken before a copy, released after it unless a
clone still depends on them (ZStack's own agent leaves its snapshots behind; we do not)."""

from __future__ import annotations

import logging

from zsagent.ceph.images import pool_ioctx

log = logging.getLogger(__name__)

JOURNAL_KIND = "ceph-snapshot"
"""Journal entries of a taken snapshot: ``{"pool", "image", "snapshot"}``."""


def create_snapshot(rbd_module, ioctx, image: str, snapshot: str) -> None:
    """Take ``image@snapshot``; ImageExists when it is there already (a retry that left state behind)."""
    with rbd_module.Image(ioctx, image) as opened:
        opened.create_snap(snapshot)


def release_snapshot(rbd_module, ioctx, image: str, snapshot: str) -> bool:
    """Remove ``image@snapshot`` unless clones depend on it; True when it was removed."""
    with rbd_module.Image(ioctx, image, snapshot=snapshot, read_only=True) as snap:
        children = snap.list_children()
    if children:
        log.info("keeping snapshot %s@%s: parent of %s", image, snapshot, children)
        return False
    with rbd_module.Image(ioctx, image) as opened:
        if opened.is_protected_snap(snapshot):
            opened.unprotect_snap(snapshot)
        opened.remove_snap(snapshot)
    return True


def forget_snapshot(backend, cluster, pool: str, image: str, snapshot: str) -> None:
    """Release ``pool/image@snapshot`` (see release_snapshot); nothing to do when it is gone."""
    with pool_ioctx(backend, cluster, pool) as ioctx:
        if ioctx is not None:
            try:
                release_snapshot(backend.rbd, ioctx, image, snapshot)
            except backend.rbd.ImageNotFound:  # the image or the snapshot is gone already
                pass
