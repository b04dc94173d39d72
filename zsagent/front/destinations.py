"""Where a taken-over command's template goes, built from the command's own values.

Ceph: an RBD image (``RbdImageSink``) in a configured Ceph backup storage's pool, the content MD5 in its
metadata ``zstack.md5`` before it is published; ``shareable`` gives it the features of ``rbd cp
--image-shared`` ([zsu] cephagent.py ``_wrap_shareable_cmd`` l.805-809). SFTP: the command's server,
user, port and key, the host key checked against ``[front] known_hosts``; the key is written to a 0600
file journalled before it exists (removed with the job's leftovers, after the upload's, and on restart);
the MD5 goes to ``<installPath>.md5`` (``md5sum -c`` format) right after the template is published.
Templates are the management node's: their records are of kind ``zstack-managed``.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from zsagent.cleanup import MANAGED_KIND
from zsagent.config import BackupStorage, FrontSettings
from zsagent.copy.extents import Extent
from zsagent.qcow2 import DEFAULT_CLUSTER_BITS, plan_layout
from zsagent.sftp.settings import SftpSettings
from zsagent.sftp.upload import RemoteUpload
from zsagent.sinks.base import Journal, Sink, SinkResult
from zsagent.sinks.converted import SPOOL_KIND
from zsagent.sinks.qcow2_stream import Qcow2StreamSink
from zsagent.sinks.rbd_image import RbdImageSink
from zsagent.sinks.sftp import SftpRawSink, SftpTarget
from zsagent.storages.base import Destination, Runtime, TemplateJob
from zsagent.storages.sftp import SftpStorageSettings

MD5_METADATA_KEY = "zstack.md5"
MD5_SUFFIX = ".md5"
# librbd feature bits (rbd.pyx): what `rbd --image-shared` leaves out: exclusive-lock, object-map,
# fast-diff, journaling.
_SHARED_OFF = 4 | 8 | 16 | 64
_DEFAULT_FEATURES = 1 | 4 | 8 | 16 | 32  # layering, exclusive-lock, object-map, fast-diff, deep-flatten


def ceph_destination(bs: BackupStorage, image_uuid: str, template: TemplateJob, journal: Journal,
                     runtime: Runtime, shareable: bool) -> Destination:
    pool = bs.settings.pool
    ioctx = runtime.cluster.open_ioctx(pool)
    features = _DEFAULT_FEATURES & ~_SHARED_OFF if shareable else None
    sink = RbdImageSink(runtime.ceph.rbd, ioctx, pool, image_uuid, template.volume.order, journal=journal,
                        features=features, md5_key=MD5_METADATA_KEY)
    ref = {"kind": MANAGED_KIND, "pool": pool, "image": image_uuid}
    return Destination(bs, f"ceph://{pool}/{image_uuid}", "raw", sink=sink, ref=ref, handles=[ioctx])


class KeyFile:
    """The command's private key in a 0600 file under ``directory``, journalled (kind "spool", removed
    by zsagent.cleanup) before it is created."""

    def __init__(self, directory: str, job_uuid: str, key: str, journal: Journal) -> None:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.path = os.path.join(directory, f"{job_uuid}.key")
        journal.record(SPOOL_KIND, {"path": self.path})
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key if key.endswith("\n") else key + "\n")


def sftp_settings(front: FrontSettings, root: str, hostname: str, port: int, username: str,
                  key_path: str, image_format: str) -> SftpStorageSettings:
    """The command's server as a backup storage's settings (which check every value)."""
    return SftpStorageSettings(path=root, format=image_format, hostname=hostname, port=port, username=username,
                               private_key=key_path, known_hosts=front.known_hosts,
                               accept_new_host_keys=front.accept_new_host_keys)


def sftp_destination(settings: SftpStorageSettings, path: str, image_format: str, journal: Journal,
                     planned_file_size: int | None = None) -> Destination:
    """A raw (Ceph) or streamed qcow2 (local/NFS) template at ``path`` on the command's server;
    ``planned_file_size``: the qcow2 file size ``createtemplate`` announced (checked before writing)."""
    connection = settings.connection()
    spec = {"connection": _connection_spec(connection), "root": settings.path}
    bs = BackupStorage(_pseudo_uuid(connection, settings.path), "sftp", settings)
    if image_format == "raw":
        sink: Sink = SftpRawSink(connection, path, journal, spec)
    else:
        sink = Qcow2StreamSink(SftpTarget(connection, path, journal, spec))
    wrapped = Md5Beside(sink, connection, path, journal, spec, planned_file_size)
    ref = {"kind": MANAGED_KIND, "hostname": connection.hostname, "port": connection.port, "path": path}
    return Destination(bs, path, image_format, sink=wrapped, ref=ref)


class Md5Beside:
    """A Sink that publishes ``<path>.md5`` right after the template: the MD5 of the stored bytes (the
    qcow2 file's, or the raw content's). Both names are journalled, so a failure after the template was
    published removes it with the job's leftovers. With ``planned_file_size`` the streamed qcow2 must have
    the size announced earlier, or nothing is written."""

    def __init__(self, sink: Sink, connection: SftpSettings, path: str, journal: Journal, spec: dict[str, Any],
                 planned_file_size: int | None = None) -> None:
        self.sink = sink
        self.description = sink.description
        self.sequential = sink.sequential
        self._md5_upload = RemoteUpload(connection, path + MD5_SUFFIX, journal, spec)
        self._name = posixpath.basename(path)
        self._planned = planned_file_size

    def open(self, size: int, extents: Sequence[Extent]) -> None:
        if self._planned is not None:
            now = plan_layout(size, extents, DEFAULT_CLUSTER_BITS).file_size
            if now != self._planned:
                raise ValueError(f"the volume changed since createtemplate was answered (a {self._planned}-byte "
                                 f"qcow2 was announced, it would now be {now} bytes); create the template again")
        self.sink.open(size, extents)

    def write(self, offset: int, data: bytes) -> None:
        self.sink.write(offset, data)

    def zero(self, offset: int, length: int) -> None:
        self.sink.zero(offset, length)

    def commit(self, content_md5: str | None = None) -> SinkResult:
        result = self.sink.commit(content_md5)
        md5 = result.md5 or content_md5
        if md5 is None:
            raise ValueError(f"{self.description}: no MD5 to store beside the template")
        line = f"{md5}  {self._name}\n".encode()
        self._md5_upload.open()
        self._md5_upload.write(0, line)
        self._md5_upload.commit()
        return SinkResult(result.install_path, result.actual_size, result.parent, md5)

    def interrupt(self) -> None:
        """The copy stopped: an upload waiting to reconnect gives up at once (zsagent.sinks.base.Sink)."""
        interrupt = getattr(self.sink, "interrupt", None)
        if interrupt is not None:
            interrupt()

    def abort(self) -> None:
        self.sink.abort()
        self._md5_upload.abort()


def _connection_spec(connection: SftpSettings) -> dict[str, Any]:
    """What zsagent.storages.sftp needs to reach the server again (restart cleanup); no secret: the key
    is a file path, removed after the upload's own entries."""
    return {k: v for k, v in asdict(connection).items()
            if k in ("hostname", "port", "username", "private_key", "known_hosts", "accept_new_host_keys")}


def _pseudo_uuid(connection: SftpSettings, root: str) -> str:
    """Our record's name for a backup storage the command does not name: derived from where it is."""
    import hashlib

    return hashlib.md5(f"sftp://{connection.username}@{connection.hostname}:{connection.port}{root}".encode(),
                       usedforsecurity=False).hexdigest()
