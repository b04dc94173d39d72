"""The paths a management node's command names, checked before anything touches them.

Every name that becomes an RBD image or a file is a ZStack uuid (32 lowercase hex digits); paths are
absolute, normalised and free of ``..``; whether they lie inside a configured storage is decided by the
caller (zsagent.front.routes), which forwards what is not ours.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from zsagent.front.wire import MalformedCommand

UUID = r"[0-9a-f]{32}"
_POOL = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
_CEPH_SNAPSHOT_RE = re.compile(rf"^ceph://({_POOL})/({UUID})@({UUID})$")
_CEPH_IMAGE_RE = re.compile(rf"^ceph://({_POOL})/({UUID})$")
# [zs] BackupStoragePathMaker.java l.90-124: <bsUrl>/dataVolumeTemplates/acct-<account>/<image>/<image>.<suffix>
_SFTP_TEMPLATE_RE = re.compile(rf"^(/.*)/dataVolumeTemplates/acct-({UUID})/({UUID})/\3\.(volume|qcow2)$")
# [zs] LKB l.1040-1042, NfsPrimaryStorageKvmHelper.java l.55-57: <psUrl>/templateWorkspace/image-<img>/<img>.qcow2
_WORKSPACE_RE = re.compile(rf"^(/.*)/templateWorkspace/image-({UUID})/\2\.qcow2$")
# ZStack's volume files: <psUrl>/{dataVolumes,rootVolumes}/acct-<account>/vol-<uuid>/<uuid>.<ext>
_FILE_VOLUME_RE = re.compile(rf"^(/.*)/(dataVolumes|rootVolumes)/acct-({UUID})/vol-({UUID})/\4\.(qcow2|raw|img)$")


@dataclass(frozen=True)
class SftpTemplatePath:
    """``<root>/dataVolumeTemplates/acct-<account>/<image>/<image>.<suffix>`` on an SFTP server."""

    path: str
    root: str
    account_uuid: str
    image_uuid: str


@dataclass(frozen=True)
class FileVolumePath:
    path: str
    root: str
    account_uuid: str
    volume_uuid: str


def text_field(cmd: dict, name: str) -> str:
    value = cmd.get(name)
    if not isinstance(value, str) or not value:
        raise MalformedCommand(f"field {name} is missing or not a string")
    return value


def _absolute(value: str, name: str) -> str:
    if "\0" in value or "\n" in value or not value.startswith("/") or posixpath.normpath(value) != value \
            or "/../" in value + "/":
        raise MalformedCommand(f"{name} {value!r} is not an absolute, normalised path")
    return value


def ceph_snapshot(value: str, name: str) -> tuple[str, str, str]:
    """``ceph://<pool>/<volume uuid>@<snapshot uuid>`` -> (pool, image, snapshot)."""
    m = _CEPH_SNAPSHOT_RE.match(value)
    if m is None:
        raise MalformedCommand(f"{name} {value!r} is not ceph://<pool>/<volume uuid>@<snapshot uuid>")
    return m.group(1), m.group(2), m.group(3)


def ceph_image(value: str, name: str) -> tuple[str, str]:
    """``ceph://<pool>/<image uuid>`` -> (pool, image)."""
    m = _CEPH_IMAGE_RE.match(value)
    if m is None:
        raise MalformedCommand(f"{name} {value!r} is not ceph://<pool>/<image uuid>")
    return m.group(1), m.group(2)


def sftp_template(value: str, name: str) -> SftpTemplatePath:
    m = _SFTP_TEMPLATE_RE.match(_absolute(value, name))
    if m is None:
        raise MalformedCommand(f"{name} {value!r} is not <backup storage url>/dataVolumeTemplates/"
                               "acct-<account uuid>/<image uuid>/<image uuid>.volume|.qcow2")
    return SftpTemplatePath(value, m.group(1), m.group(2), m.group(3))


def workspace(value: str, name: str) -> tuple[str, str]:
    """``<ps root>/templateWorkspace/image-<image>/<image>.qcow2`` -> (ps root, image uuid)."""
    m = _WORKSPACE_RE.match(_absolute(value, name))
    if m is None:
        raise MalformedCommand(f"{name} {value!r} is not <primary storage>/templateWorkspace/"
                               "image-<image uuid>/<image uuid>.qcow2")
    return m.group(1), m.group(2)


def file_volume(value: str, name: str) -> FileVolumePath:
    m = _FILE_VOLUME_RE.match(_absolute(value, name))
    if m is None:
        raise MalformedCommand(f"{name} {value!r} is not <primary storage>/dataVolumes|rootVolumes/"
                               "acct-<account uuid>/vol-<volume uuid>/<volume uuid>.qcow2|raw")
    return FileVolumePath(value, m.group(1), m.group(3), m.group(4))


def inside(path: str, root: str) -> bool:
    root = root.rstrip("/") or "/"
    return path == root or path.startswith(root + "/")
