"""Removing what a job left behind (journalled artifacts) and deleting published templates.

Every function here is idempotent: removing what is already gone is not an error.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from zsagent.rbd_copy import release_snapshot

log = logging.getLogger(__name__)


def remove_artifact(kind: str, spec: dict[str, Any], ceph_backend=None, cluster=None, config=None) -> None:
    """Remove one temporary artifact recorded in the journal."""
    if kind == "rbd-image":
        _remove_rbd_image(ceph_backend, cluster, spec["pool"], spec["image"])
    elif kind == "rbd-snapshot":
        _release_rbd_snapshot(ceph_backend, cluster, spec["pool"], spec["image"], spec["snapshot"])
    elif kind == "file":
        remove_file(spec["path"], spec["root"])
    elif kind == "sftp-file":
        remove_remote_file(config, spec)
    elif kind.startswith("virt-"):  # a change to a libvirt domain (freeze, backup job, overlay)
        from zsagent.virt import undo_step

        undo_step(kind, spec)
    else:
        raise ValueError(f"unknown artifact kind {kind!r}")


def delete_template(ref: dict[str, Any], ceph_backend=None, cluster=None, config=None) -> None:
    """Remove a published template (and a clone's parent snapshot when nothing else needs it)."""
    if ref["kind"] == "rbd":
        _remove_rbd_image(ceph_backend, cluster, ref["pool"], ref["image"])
        parent = ref.get("parent")
        if parent:
            _release_rbd_snapshot(ceph_backend, cluster, parent["pool"], parent["image"], parent["snapshot"])
    elif ref["kind"] == "file":
        remove_file(ref["path"], ref["root"])
    elif ref["kind"] == "sftp":
        remove_remote_file(config, ref)
    else:
        raise ValueError(f"unknown template kind {ref['kind']!r}")


def remove_remote_file(config, spec: dict[str, Any]) -> None:
    """Remove a file on an SFTP backup storage and the directories above it left empty, up to its root."""
    from zsagent.sftp.client import SftpClient
    from zsagent.sftp.errors import RemoteNoSuchFile, SftpStatusError

    bs = config.backup_storage_by_uuid(spec["backupStorageUuid"]) if config else None
    if bs is None:
        raise ValueError(f"backup storage {spec['backupStorageUuid']} is no longer configured")
    client = SftpClient.connect(bs.sftp_settings())
    try:
        try:
            client.remove(spec["path"])
        except RemoteNoSuchFile:
            pass
        root = spec["root"].rstrip("/")
        directory = os.path.dirname(spec["path"])
        while directory.startswith(root + "/"):
            try:
                client.rmdir(directory)
            except SftpStatusError:  # not empty, or gone
                break
            directory = os.path.dirname(directory)
    finally:
        client.close()


def remove_file(path: str, root: str) -> None:
    """Unlink ``path`` and the directories above it that are empty now, up to (not including) root."""
    target = Path(path)
    target.unlink(missing_ok=True)
    root_path = Path(root).resolve()
    for directory in target.parents:
        if directory.resolve() == root_path or root_path not in directory.resolve().parents:
            break
        try:
            directory.rmdir()
        except OSError:
            break


@contextmanager
def _pool(backend, cluster, pool: str) -> Iterator[Any]:
    """An ioctx on ``pool``, or None when the pool is gone (then there is nothing to remove)."""
    try:
        ioctx = cluster.open_ioctx(pool)
    except backend.rados.ObjectNotFound:
        yield None
        return
    with ioctx:
        yield ioctx


def _remove_rbd_image(backend, cluster, pool: str, image: str) -> None:
    with _pool(backend, cluster, pool) as ioctx:
        if ioctx is not None:
            try:
                backend.rbd.RBD().remove(ioctx, image)
            except backend.rbd.ImageNotFound:
                pass


def _release_rbd_snapshot(backend, cluster, pool: str, image: str, snapshot: str) -> None:
    with _pool(backend, cluster, pool) as ioctx:
        if ioctx is not None:
            try:
                release_snapshot(backend.rbd, ioctx, image, snapshot)
            except backend.rbd.ImageNotFound:  # the image or the snapshot is gone already
                pass
