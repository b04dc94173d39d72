"""Backup storages → sinks: where a template goes, under which path, in which format, and which
temporary artifacts the copy may leave if the agent dies mid-way (for the journal)."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

from zsagent import errors
from zsagent.catalog import Volume
from zsagent.config import BackupStorage
from zsagent.copy.pipeline import PipelineConfig
from zsagent.qemu_img import ConvertOptions
from zsagent.rbd_copy import CephCopyMode, rbd_template_sink
from zsagent.sinks.base import Sink
from zsagent.sinks.converted import ConvertedFile, ConvertedUpload, Converter
from zsagent.sinks.rbd_image import PART_SUFFIX


@dataclass
class Destination:
    """One backup storage's part of a job.

    install_path: where the published template will be. format: "raw" | "qcow2".
    sink: what the copy pipeline writes, or converter: what the qemu-img engine makes (one of the two).
    artifacts: (kind, spec) of everything temporary the sink may create, journalled before the copy.
    ref: what `DELETE /images/{uuid}` needs to remove the template again.
    """

    bs: BackupStorage
    install_path: str
    format: str
    sink: Sink | None = None
    converter: Converter | None = None
    artifacts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    ref: dict[str, Any] = field(default_factory=dict)
    handles: list[Any] = field(default_factory=list)  # rados ioctxs to close after the copy

    @property
    def description(self) -> str:
        return (self.sink or self.converter).description

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


@dataclass(frozen=True)
class TemplateTags:
    """The request's system tags that shape templates (None: the backup storage's setting)."""

    mode: str | None = None
    format: str | None = None
    compression: str | None = None
    bandwidth: str | None = None


def build_destination(bs: BackupStorage, volume: Volume, image_uuid: str, account_uuid: str, *,
                      ceph_backend, cluster, tags: TemplateTags, snapshot: str | None,
                      pipeline: PipelineConfig | None = None, spool_dir: str | None = None) -> Destination:
    """The sink (or qemu-img converter) for ``bs``; Ceph sinks need the rbd module and a connected cluster.

    File templates go through qemu-img when they are compressed or the storage's engine is "qemu-img";
    SFTP ones are then converted in ``spool_dir`` first. Raises ZsError for a compression the format
    cannot have.
    """
    if bs.type == "ceph":
        mode = ceph_mode(bs, volume, tags.mode)
        dst_ioctx = cluster.open_ioctx(bs.pool)
        src_ioctx = cluster.open_ioctx(volume.pool) if volume.kind == "ceph" else None
        sink = rbd_template_sink(mode, ceph_backend.rbd, src_ioctx, volume.image, snapshot, dst_ioctx,
                                 bs.pool, image_uuid)
        ref = {"kind": "rbd", "pool": bs.pool, "image": image_uuid}
        if mode is CephCopyMode.CLONE:
            ref["parent"] = {"pool": volume.pool, "image": volume.image, "snapshot": snapshot}
        return Destination(bs, f"ceph://{bs.pool}/{image_uuid}", "raw", sink=sink,
                           artifacts=[("rbd-image", {"pool": bs.pool, "image": image_uuid + PART_SUFFIX})],
                           ref=ref, handles=[h for h in (dst_ioctx, src_ioctx) if h is not None])

    image_format = tags.format or bs.format
    options = _convert_options(bs, image_format, tags.compression)
    path = file_template_path(bs.path, account_uuid, image_uuid, image_format)
    if bs.type == "filesystem":
        artifacts = [("file", {"path": path + ".part", "root": bs.path})]
        ref = {"kind": "file", "path": path, "root": bs.path}
        if options is not None:
            return Destination(bs, path, image_format, converter=ConvertedFile(path, options, pipeline),
                               artifacts=artifacts, ref=ref)
        return Destination(bs, path, image_format, sink=_file_sink(path, image_format), artifacts=artifacts,
                           ref=ref)
    if bs.type == "sftp":
        settings = bs.sftp_settings(int(tags.bandwidth) if tags.bandwidth else None)
        spec = {"backupStorageUuid": bs.uuid, "path": path, "root": bs.path}
        artifacts = [("sftp-file", {**spec, "path": path + ".part"})]
        if options is not None:
            from zsagent.sinks.sftp import SftpRawSink

            spool = os.path.join(spool_dir or tempfile.gettempdir(), f"{image_uuid}-{bs.uuid}.{image_format}")
            converter = ConvertedUpload(spool, SftpRawSink(settings, path), options, pipeline)
            # journalled after the remote .part, so that cleanup (newest first) removes the spool first
            artifacts.append(("file", {"path": spool, "root": os.path.dirname(spool)}))
            return Destination(bs, path, image_format, converter=converter, artifacts=artifacts,
                               ref={"kind": "sftp", **spec})
        return Destination(bs, path, image_format, sink=_sftp_sink(settings, path, image_format),
                           artifacts=artifacts, ref={"kind": "sftp", **spec})
    raise ValueError(f"backup storage type {bs.type!r} is not supported")


def _convert_options(bs: BackupStorage, image_format: str, compression_tag: str | None) -> ConvertOptions | None:
    """What qemu-img should make for ``bs``, or None when the streaming writer / raw sinks do it."""
    compression = compression_tag or bs.compression
    if compression == "none":
        compression = None
    if compression and image_format != "qcow2":
        raise errors.invalid(f"a {compression}-compressed template must be qcow2, but backup storage "
                             f"[uuid:{bs.uuid}] stores {image_format} templates; add the system tag "
                             "template::format::qcow2")
    if compression is None and bs.engine != "qemu-img":
        return None
    return ConvertOptions(output_format=image_format, compression=compression)


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
