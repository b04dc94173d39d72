"""SFTP backup storage: templates uploaded to a server reached with OpenSSH (zsagent.sftp), in ZStack's
layout; the install path is the plain remote path, as ZStack records it for SFTP backup storage."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from zsagent.sftp.client import SftpClient
from zsagent.sftp.errors import HostKeyChanged, HostKeyUnknown, RemoteNoSuchFile, SftpError, SftpStatusError
from zsagent.sftp.settings import SftpSettings
from zsagent.sinks.base import Journal
from zsagent.sinks.converted import ConvertedUpload
from zsagent.sinks.qcow2_stream import Qcow2StreamSink
from zsagent.sinks.sftp import SftpRawSink, SftpTarget
from zsagent.storages.base import Destination, Finding, Runtime, TemplateJob
from zsagent.storages.templates import COMPRESSIONS, ENGINES, FORMATS, FileTemplates


@dataclass(frozen=True)
class SftpStorageSettings(FileTemplates):
    """path: the remote directory templates go under (see FileTemplates for format, compression, engine);
    the other keys are zsagent.sftp.settings.SftpSettings' (documented there), checked when the config
    loads. flush_behind_bytes 0 turns flush-behind off; bandwidth_bytes_per_s 0 means no limit."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("hostname", "private_key", "known_hosts", "path")
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"format": FORMATS, "compression": COMPRESSIONS,
                                                     "engine": ENGINES}

    hostname: str = ""
    port: int = 22
    username: str = "root"
    private_key: str = ""
    known_hosts: str = ""
    accept_new_host_keys: bool = False
    connect_timeout_s: int = 10
    idle_timeout_s: int = 60
    keepalive_interval_s: int = 15
    bandwidth_bytes_per_s: int = 0
    verify_md5: bool = False
    remote_commands: bool = True
    connections: int = 1
    flush_behind_bytes: int = 64 * 1024 * 1024
    resume_attempts: int = 5
    resume_backoff_s: float = 1.0
    resume_backoff_max_s: float = 30.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not posixpath.isabs(self.path) or posixpath.normpath(self.path) != self.path.rstrip("/"):
            raise ValueError(f"path: {self.path!r} is not an absolute, normalised remote path")
        if self.flush_behind_bytes < 0 or 0 < self.flush_behind_bytes < 1024 * 1024:
            raise ValueError("flush_behind_bytes: 0 (off) or at least 1 MiB (1048576)")
        for key in ("resume_backoff_s", "resume_backoff_max_s"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{key}: must be a number of seconds, not {type(value).__name__}")
        if self.bandwidth_bytes_per_s < 0:
            raise ValueError("bandwidth_bytes_per_s: must not be negative (0: no limit)")
        self.connection()  # SftpSettings checks hostname, port, username, connections, ...

    def connection(self, bandwidth_bytes_per_s: int | None = None) -> SftpSettings:
        """How to reach the server; ``bandwidth_bytes_per_s`` (e.g. from a request's tag) overrides ours."""
        names = {f.name for f in fields(SftpSettings)} - {"bandwidth_bytes_per_s", "flush_behind_bytes"}
        values = {name: getattr(self, name) for name in names if hasattr(self, name)}
        return SftpSettings(**values, bandwidth_bytes_per_s=bandwidth_bytes_per_s or self.bandwidth_bytes_per_s or None,
                            flush_behind_bytes=self.flush_behind_bytes or None)


class SftpStorage:
    name = "sftp"
    settings = SftpStorageSettings

    def destination(self, bs, job: TemplateJob, journal: Journal, runtime: Runtime) -> Destination:
        settings: SftpStorageSettings = bs.settings
        image_format, path, options = settings.plan(bs.uuid, job)
        connection = settings.connection(int(job.tags.bandwidth) if job.tags.bandwidth else None)
        where = {"backupStorageUuid": bs.uuid, "root": settings.path}
        ref = {"kind": self.name, **where, "path": path}
        if options is not None:
            spool = os.path.join(job.spool_dir, f"{job.image_uuid}-{bs.uuid}.{image_format}")
            upload = SftpRawSink(connection, path, journal, where)
            converter = ConvertedUpload(spool, upload, options, job.pipeline, journal=journal)
            return Destination(bs, path, image_format, converter=converter, ref=ref)
        if image_format == "raw":
            sink = SftpRawSink(connection, path, journal, where)
        else:
            sink = Qcow2StreamSink(SftpTarget(connection, path, journal, where))
        return Destination(bs, path, image_format, sink=sink, ref=ref)

    def remove(self, spec: dict[str, Any], runtime: Runtime) -> None:
        """Remove a file on the server and the directories above it left empty, up to the storage's root.

        The server is the configured backup storage ``backupStorageUuid``, or, for a template a management
        node's command named (zsagent.front), ``connection``: SftpSettings' fields as that command gave them."""
        if "connection" in spec:
            settings = SftpSettings(**spec["connection"])
        else:
            bs = runtime.config.backup_storage_by_uuid(spec["backupStorageUuid"])
            if bs is None:
                raise ValueError(f"backup storage {spec['backupStorageUuid']} is no longer configured")
            settings = bs.settings.connection()
        client = SftpClient.connect(settings)
        try:
            try:
                client.remove(spec["path"])
            except RemoteNoSuchFile:
                pass
            root = spec["root"].rstrip("/")
            directory = posixpath.dirname(spec["path"])
            while directory.startswith(root + "/"):
                try:
                    client.rmdir(directory)
                except SftpStatusError:  # not empty, or gone
                    break
                directory = posixpath.dirname(directory)
        finally:
            client.close()

    def check(self, bs, runtime: Runtime) -> Iterator[Finding]:
        settings: SftpStorageSettings = bs.settings
        where = f"backup storage {bs.uuid}: sftp {settings.username}@{settings.hostname}:{settings.port}{settings.path}"
        try:
            client = SftpClient.connect(settings.connection())
        except (HostKeyUnknown, HostKeyChanged) as e:
            yield (False, f"{where}: {e}",
                   f"verify the server's key fingerprint, then add it to {settings.known_hosts}")
            return
        except (SftpError, ValueError, OSError) as e:
            yield (False, f"{where}: cannot connect: {e}",
                   "check hostname, port, username and private_key, and that sshd runs there")
            return
        try:
            if not client.exists(settings.path):
                yield (False, f"{where}: {settings.path} does not exist on the server",
                       f"create {settings.path} on the server")
            else:
                yield (True, f"{where} is reachable with a known host key", "")
        except SftpError as e:
            yield (False, f"{where}: {e}", "check the account's rights on the base path")
        finally:
            client.close()

    def free_bytes(self, bs) -> int | None:
        return None  # SFTP v3 has no portable free-space query


KIND = SftpStorage()
