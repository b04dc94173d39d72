"""Backup storages → sinks: where a template goes, under which path, in which format, and which
temporary artifacts the copy may leave if the agent dies mid-way (for the journal)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from zsagent.catalog import Volume
from zsagent.config import BackupStorage
from zsagent.rbd_copy import CephCopyMode, rbd_template_sink
from zsagent.sinks.base import Sink
from zsagent.sinks.rbd_image import PART_SUFFIX


@dataclass
class Destination:
    """One backup storage's part of a job.

    install_path: where the published template will be. format: "raw" | "qcow2".
    artifacts: (kind, spec) of everything temporary the sink may create, journalled before the copy.
    ref: what `DELETE /images/{uuid}` needs to remove the template again.
    """

    bs: BackupStorage
    sink: Sink
    install_path: str
    format: str
    artifacts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    ref: dict[str, Any] = field(default_factory=dict)
    handles: list[Any] = field(default_factory=list)  # rados ioctxs to close after the copy

    def close(self) -> None:
        for handle in self.handles:
            handle.close()
        self.handles.clear()


def file_template_path(root: str, account_uuid: str, image_uuid: str, image_format: str) -> str:
    """ZStack's layout: ``<root>/dataVolumeTemplates/acct-<account>/<image>/<image>.<format>``."""
    return os.path.join(root, "dataVolumeTemplates", f"acct-{account_uuid}", image_uuid,
                        f"{image_uuid}.{image_format}")


def ceph_mode(bs: BackupStorage, volume: Volume, tag: str | None) -> CephCopyMode:
    """clone/flatten need the volume in the same cluster; other volumes are copied."""
    mode = CephCopyMode(tag or bs.mode)
    return mode if volume.kind == "ceph" else CephCopyMode.COPY


def build_destination(bs: BackupStorage, volume: Volume, image_uuid: str, account_uuid: str, *,
                      ceph_backend, cluster, mode_tag: str | None, format_tag: str | None,
                      snapshot: str | None, bandwidth_tag: str | None = None) -> Destination:
    """The sink for ``bs``; Ceph sinks need the rbd module and a connected cluster."""
    if bs.type == "ceph":
        mode = ceph_mode(bs, volume, mode_tag)
        dst_ioctx = cluster.open_ioctx(bs.pool)
        src_ioctx = cluster.open_ioctx(volume.pool) if volume.kind == "ceph" else None
        sink = rbd_template_sink(mode, ceph_backend.rbd, src_ioctx, volume.image, snapshot, dst_ioctx,
                                 bs.pool, image_uuid)
        ref = {"kind": "rbd", "pool": bs.pool, "image": image_uuid}
        if mode is CephCopyMode.CLONE:
            ref["parent"] = {"pool": volume.pool, "image": volume.image, "snapshot": snapshot}
        return Destination(bs, sink, f"ceph://{bs.pool}/{image_uuid}", "raw",
                           [("rbd-image", {"pool": bs.pool, "image": image_uuid + PART_SUFFIX})], ref,
                           [h for h in (dst_ioctx, src_ioctx) if h is not None])

    image_format = format_tag or bs.format
    if bs.type == "filesystem":
        path = file_template_path(bs.path, account_uuid, image_uuid, image_format)
        sink = _file_sink(path, image_format)
        artifacts = [("file", {"path": path + ".part", "root": bs.path})]
        return Destination(bs, sink, path, image_format, artifacts, {"kind": "file", "path": path,
                                                                      "root": bs.path})
    if bs.type == "sftp":
        path = file_template_path(bs.path, account_uuid, image_uuid, image_format)
        settings = bs.sftp_settings(int(bandwidth_tag) if bandwidth_tag else None)
        sink = _sftp_sink(settings, path, image_format)
        spec = {"backupStorageUuid": bs.uuid, "path": path, "root": bs.path}
        return Destination(bs, sink, path, image_format, [("sftp-file", {**spec, "path": path + ".part"})],
                           {"kind": "sftp", **spec})
    raise ValueError(f"backup storage type {bs.type!r} is not supported")


def _sftp_sink(settings, path: str, image_format: str) -> Sink:
    from zsagent.sinks.sftp import SftpRawSink, SftpTarget

    if image_format == "raw":
        return SftpRawSink(settings, path)
    from zsagent.sinks.qcow2_stream import Qcow2StreamSink

    return Qcow2StreamSink(SftpTarget(settings, path))


def _file_sink(path: str, image_format: str) -> Sink:
    if image_format == "raw":
        from zsagent.sinks.raw_file import RawFileSink

        return RawFileSink(path)
    from zsagent.sinks.file_stream import FileStreamTarget
    from zsagent.sinks.qcow2_stream import Qcow2StreamSink

    return Qcow2StreamSink(FileStreamTarget(path))
