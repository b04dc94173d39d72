"""RBD image helpers shared by the sinks, the sources and cleanup."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


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


@contextmanager
def pool_ioctx(backend, cluster, pool: str) -> Iterator[Any]:
    """An ioctx on ``pool``, or None when the pool is gone (then there is nothing to remove)."""
    try:
        ioctx = cluster.open_ioctx(pool)
    except backend.rados.ObjectNotFound:
        yield None
        return
    with ioctx:
        yield ioctx


def remove_image(backend, cluster, pool: str, image: str) -> None:
    """Remove ``pool/image``; nothing to do when it (or its pool) is gone."""
    with pool_ioctx(backend, cluster, pool) as ioctx:
        if ioctx is not None:
            try:
                backend.rbd.RBD().remove(ioctx, image)
            except backend.rbd.ImageNotFound:
                pass
