"""What the agent can see: volumes on the configured primary storages, found by uuid.

Ceph: an image named by the volume uuid in one of the pools (ZStack's convention). Files: ZStack's
layout ``<root>/{dataVolumes,rootVolumes}/acct-<account>/vol-<uuid>/<uuid>.{qcow2,raw}``.
Paths are built from validated uuids only, never from names.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field

from zsagent.config import Config, PrimaryStorage

QCOW2_MAGIC = b"QFI\xfb"
# Inventory fields a volume may carry in its metadata (RBD image metadata / file user xattrs).
METADATA_KEYS = {"platform": "zstack.platform", "architecture": "zstack.architecture",
                 "guestOsType": "zstack.guestOsType"}
# The owning account of an RBD volume, in its image metadata (zsagent.volume_owner); a file volume's is in
# its path.
ACCOUNT_METADATA_KEY = "zstack.accountUuid"


@dataclass(frozen=True)
class Volume:
    """A volume found on a primary storage.

    kind: "ceph" (``pool`` + ``image``; ``order``: log2 of its object size) or "file" (``path`` +
    ``format``: qcow2 | raw). size: virtual bytes. metadata: inventory fields recorded on the volume
    (see METADATA_KEYS). account_uuid: the owning account, when the volume tells (a file volume's path, an
    RBD image's ACCOUNT_METADATA_KEY); None: not known.
    """

    uuid: str
    primary_storage: PrimaryStorage
    kind: str
    size: int
    pool: str | None = None
    image: str | None = None
    path: str | None = None
    format: str = "raw"
    account_uuid: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    order: int | None = None


class Catalog:
    """Finds volumes by uuid; ``cluster`` is a connected rados handle (real or fake), None, or a callable
    that connects when first needed (so that file volumes are found while Ceph is unreachable)."""

    def __init__(self, config: Config, ceph_backend=None, cluster=None) -> None:
        self.config = config
        self.backend = ceph_backend
        self._cluster = cluster

    @property
    def cluster(self):
        if callable(self._cluster):
            self._cluster = self._cluster()
        return self._cluster

    def find_volume(self, uuid: str) -> Volume | None:
        """File roots first: they need no network, and answer while the Ceph monitors are down."""
        ordered = sorted(self.config.primary_storage, key=lambda ps: ps.type == "ceph")
        for ps in ordered:
            found = self._find_in_ceph(ps, uuid) if ps.type == "ceph" else self._find_in_files(ps, uuid)
            if found:
                return found
        return None

    def volumes(self) -> list[Volume]:
        """Every volume the catalog can see (for `zsagent volumes`)."""
        found = []
        for ps in self.config.primary_storage:
            if ps.type == "ceph":
                for pool in ps.pools:
                    ioctx = self._ioctx(pool)
                    if ioctx is None:
                        continue
                    with ioctx:
                        names = self.backend.rbd.RBD().list(ioctx)
                    found += [v for n in names if len(n) == 32 and (v := self._find_in_ceph(ps, n))]
            else:
                for path in glob.glob(os.path.join(glob.escape(ps.path), "*Volumes", "acct-*", "vol-*", "*")):
                    uuid = os.path.basename(os.path.dirname(path))[4:]
                    if os.path.basename(path).split(".")[0] == uuid and (v := self._find_in_files(ps, uuid)):
                        found.append(v)
        return found

    def _ioctx(self, pool: str):
        if self.cluster is None:
            return None
        try:
            return self.cluster.open_ioctx(pool)
        except self.backend.rados.ObjectNotFound:
            return None

    def _find_in_ceph(self, ps: PrimaryStorage, uuid: str) -> Volume | None:
        rbd = self.backend.rbd if self.backend else None
        for pool in ps.pools:
            ioctx = self._ioctx(pool)
            if ioctx is None:
                continue
            with ioctx:
                try:
                    with rbd.Image(ioctx, uuid, read_only=True) as image:
                        size = image.size()
                        order = image.stat()["order"]
                        metadata = {}
                        for field_name, key in (*METADATA_KEYS.items(), ("accountUuid", ACCOUNT_METADATA_KEY)):
                            try:
                                metadata[field_name] = image.metadata_get(key)
                            except KeyError:
                                pass
                except rbd.ImageNotFound:
                    continue
            account = metadata.pop("accountUuid", None)
            return Volume(uuid, ps, "ceph", size, pool=pool, image=uuid, metadata=metadata, order=order,
                          account_uuid=account)
        return None

    def _find_in_files(self, ps: PrimaryStorage, uuid: str) -> Volume | None:
        pattern = os.path.join(glob.escape(ps.path), "*Volumes", "acct-*", f"vol-{uuid}", f"{uuid}.*")
        for path in sorted(glob.glob(pattern)):
            kind_dir = os.path.basename(os.path.dirname(os.path.dirname(os.path.dirname(path))))
            suffix = path.rsplit(".", 1)[-1]
            if kind_dir not in ("dataVolumes", "rootVolumes") or suffix not in ("qcow2", "raw", "img"):
                continue
            image_format = "qcow2" if _has_qcow2_magic(path) else "raw"
            account = os.path.basename(os.path.dirname(os.path.dirname(path)))[len("acct-"):]
            size = _qcow2_virtual_size(path) if image_format == "qcow2" else os.path.getsize(path)
            return Volume(uuid, ps, "file", size, path=path, format=image_format, account_uuid=account,
                          metadata=_xattrs(path))
        return None


def _has_qcow2_magic(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == QCOW2_MAGIC


def _qcow2_virtual_size(path: str) -> int:
    """The virtual size from the qcow2 header (big-endian u64 at byte 24)."""
    with open(path, "rb") as f:
        header = f.read(32)
    return int.from_bytes(header[24:32], "big")


def _xattrs(path: str) -> dict[str, str]:
    found = {}
    for field_name, key in METADATA_KEYS.items():
        try:
            found[field_name] = os.getxattr(path, f"user.{key}").decode()
        except OSError:
            pass
    return found
