"""RBD image helpers shared by the sinks, the sources and cleanup."""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)


def data_ranges(image, include_parent: bool) -> list[tuple[int, int]]:
    """(offset, length) of every range ``diff_iterate`` reports as existing, in offset order; with
    ``include_parent`` a clone's parents' data counts too."""
    ranges: list[tuple[int, int]] = []

    def on_extent(offset: int, length: int, exists: bool) -> int:
        if exists:
            ranges.append((offset, length))
        return 0

    size = image.size()
    if size:  # librbd asserts on some zero-length diffs; an empty image has no extents anyway
        image.diff_iterate(0, size, None, on_extent, include_parent=include_parent, whole_object=False)
    return ranges


def full_try(ioctx) -> Any:
    """Let ``ioctx``'s operations through to the OSDs when the cluster or pool is full: a write is then
    refused at once (ENOSPC, EDQUOT for a quota) instead of waiting, and a removal, which frees space,
    goes through (librados ``set_osdmap_full_try``; the fake backend has no fullness)."""
    if hasattr(ioctx, "set_osdmap_full_try"):
        ioctx.set_osdmap_full_try()
    return ioctx


@contextmanager
def pool_ioctx(backend, cluster, pool: str) -> Iterator[Any]:
    """An ioctx on ``pool`` for removals (which work on a full pool), or None when the pool is gone
    (then there is nothing to remove)."""
    try:
        ioctx = cluster.open_ioctx(pool)
    except backend.rados.ObjectNotFound:
        yield None
        return
    with ioctx:
        yield full_try(ioctx)


def remove_image(backend, cluster, pool: str, image: str) -> None:
    """Remove ``pool/image``; nothing to do when it (or its pool) is gone. An image whose exclusive lock
    this very client still owns through a handle it lost (an operation that timed out while an OSD was
    down) is busy for good: that stale lock is broken, then the image removed."""
    rbd = backend.rbd
    with pool_ioctx(backend, cluster, pool) as ioctx:
        if ioctx is not None:
            try:
                rbd.RBD().remove(ioctx, image)
            except rbd.ImageNotFound:
                pass
            except rbd.ImageBusy:
                if not break_own_stale_lock(rbd, cluster, ioctx, image):
                    raise
                rbd.RBD().remove(ioctx, image)
            if image in rbd.RBD().list(ioctx):
                # On a full pool librbd's remove fails (even as "not found": its metadata updates are
                # writes) and the image's data keeps the pool full. Deleting its data objects frees the
                # space (deletes pass a full pool); the remove is retried once the pool has room.
                freed = free_data_objects(backend, ioctx, image)
                raise OSError(errno.ENOSPC, f"{pool}/{image} cannot be removed while its pool is full; "
                                            f"{freed} data objects deleted to make room, retried later")


def free_data_objects(backend, ioctx, image: str) -> int:
    """Delete every data object of ``image`` (its content becomes zeros; the image itself stays);
    returns how many were there. Only for removing an image a full pool keeps."""
    with backend.rbd.Image(ioctx, image, read_only=True) as opened:
        info = opened.stat()
    prefix, objects = info["block_name_prefix"], -(-info["size"] // info["obj_size"]) if info["obj_size"] else 0
    deleted = 0
    for number in range(objects):
        try:
            ioctx.remove_object(f"{prefix}.{number:016x}")
            deleted += 1
        except backend.rados.ObjectNotFound:
            pass
    return deleted


def break_own_stale_lock(rbd, cluster, ioctx, image: str) -> bool:
    """Break ``image``'s exclusive lock when its only owner is this client and nobody else watches it;
    True when a lock was broken. A lock of any other client is never touched."""
    try:
        ours = cluster.get_addrs()
    except Exception:  # noqa: BLE001 - the fake backend: no locks to break
        return False
    with rbd.Image(ioctx, image) as opened:
        watchers = [w for w in opened.watchers_list() if w.get("addr") != ours]
        owners = list(opened.lock_get_owners())
        if watchers or not owners or any(not _same_client(o["owner"], ours) for o in owners):
            return False
        for owner in owners:
            opened.lock_break(owner["mode"], owner["owner"])
    log.info("broke this agent's own stale lock on %s", image)
    return True


def _same_client(owner: str, addrs: str) -> bool:
    """Whether the lock owner ``owner`` (``client.<id> <addr>`` or an addr) is the client at ``addrs``."""
    ours = {a.split(":", 1)[1] if a.startswith(("v1:", "v2:")) else a for a in addrs.strip("[]").split(",")}
    return any(addr in owner for addr in ours)
