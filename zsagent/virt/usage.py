"""Who uses a volume: the libvirt domains that have it as a disk image, and how.

``find_volume_users(VolumeRef.file(path))`` / ``find_volume_users(VolumeRef.rbd(pool, image))`` lists
every domain of a libvirt URI (running, paused or shut off) whose disks name the volume, as the active
image or anywhere in the backing chain. No libvirt to ask (binding missing, daemon not running: a
storage-only host) means "nobody": the reason is logged and the list is empty.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from zsagent.virt.connection import DEFAULT_URI, error_code, libvirt_module, open_connection
from zsagent.virt.disks import DiskLayer, DomainDisk, parse_disks

log = logging.getLogger(__name__)

# virDomainState -> the name reported in VolumeUser.state
STATE_NAMES = {0: "no-state", 1: "running", 2: "blocked", 3: "paused", 4: "shutting-down", 5: "shut-off",
               6: "crashed", 7: "pmsuspended"}


@dataclass(frozen=True)
class VolumeRef:
    """The volume asked about: kind "file" with ``path`` (a file or block device), or kind "ceph" with
    ``pool``, ``image`` and ``namespace`` ("" for the default namespace)."""

    kind: str
    path: str | None = None
    pool: str | None = None
    image: str | None = None
    namespace: str = ""

    @classmethod
    def file(cls, path: str | os.PathLike[str]) -> VolumeRef:
        return cls("file", path=os.fspath(path))

    @classmethod
    def rbd(cls, pool: str, image: str, namespace: str = "") -> VolumeRef:
        return cls("ceph", pool=pool, image=image, namespace=namespace)

    def __str__(self) -> str:
        if self.kind == "file":
            return str(self.path)
        return "/".join(p for p in (self.pool, self.namespace, self.image) if p)


class _Matcher:
    """Compares disk layers with one volume; a file matches by real path or by (device, inode)."""

    def __init__(self, volume: VolumeRef) -> None:
        self.volume = volume
        self.realpath = os.path.realpath(volume.path) if volume.kind == "file" and volume.path else None
        self.identity = _identity(volume.path) if self.realpath else None

    def __call__(self, layer: DiskLayer) -> bool:
        if self.volume.kind == "ceph":
            # A disk on an RBD snapshot of the volume reads the snapshot, not the volume: no match.
            return (layer.kind == "rbd" and layer.snapshot is None and layer.pool == self.volume.pool
                    and layer.image == self.volume.image and layer.namespace == self.volume.namespace)
        if layer.kind not in ("file", "block") or not layer.path or self.realpath is None:
            return False
        if os.path.realpath(layer.path) == self.realpath:
            return True
        return self.identity is not None and _identity(layer.path) == self.identity


def _identity(path: str | None) -> tuple[int, int] | None:
    try:
        st = os.stat(path)  # type: ignore[arg-type]
    except (OSError, TypeError):
        return None
    return st.st_dev, st.st_ino


@dataclass(frozen=True)
class VolumeUser:
    """One disk of one domain that names the volume.

    domain/uuid: the domain's name and UUID; state: "running", "paused", "shut-off", ... (STATE_NAMES);
    active: a QEMU process exists (running, paused, ...); disk: the target ("vda"); layer: 0 when the
    volume is the image the guest writes, n > 0 when it is the n-th backing image below it; readonly /
    shareable: the disk's XML flags; format: the volume's format as the domain opens it ("" if unknown).
    """

    domain: str
    uuid: str
    state: str
    active: bool
    disk: str
    layer: int
    readonly: bool
    shareable: bool
    format: str

    @property
    def writes(self) -> bool:
        """The guest can change the volume right now: active domain, top layer, not read-only."""
        return self.active and self.layer == 0 and not self.readonly

    def to_json(self) -> dict:
        return {"domain": self.domain, "uuid": self.uuid, "state": self.state, "disk": self.disk,
                "layer": self.layer, "readonly": self.readonly}


def users_on(conn, volume: VolumeRef) -> list[VolumeUser]:
    """The users of ``volume`` among the domains of an open connection."""
    libvirt = libvirt_module()
    match = _Matcher(volume)
    found = []
    for dom in conn.listAllDomains(0):
        try:
            state = dom.state()[0]
            active = bool(dom.isActive())
            disks = parse_disks(dom.XMLDesc(0), _volume_resolver(conn))
            name, uuid = dom.name(), dom.UUIDString()
        except libvirt.libvirtError as e:
            if error_code(e) == libvirt.VIR_ERR_NO_DOMAIN:
                continue  # undefined while we looked
            raise
        for disk in disks:
            for index, layer in enumerate(disk.chain):
                if match(layer):
                    found.append(VolumeUser(name, uuid, STATE_NAMES.get(state, str(state)), active, disk.target,
                                            index, disk.readonly, disk.shareable, layer.format))
    return found


def find_volume_users(volume: VolumeRef, uri: str = DEFAULT_URI) -> list[VolumeUser]:
    """Every domain disk of ``uri`` that names ``volume``; [] (logged) when libvirt cannot be reached."""
    try:
        conn = open_connection(uri)
    except ImportError as e:
        log.info("no libvirt binding (%s): taking volume %s as not in use", e, volume)
        return []
    except Exception as e:  # noqa: BLE001 - libvirtError: no daemon here, a storage-only host
        log.info("libvirt at %s not reachable (%s): taking volume %s as not in use", uri, e, volume)
        return []
    try:
        return users_on(conn, volume)
    finally:
        conn.close()


def find_disk(conn, uuid: str, target: str) -> tuple[object, list[DomainDisk], DomainDisk]:
    """(virDomain, all its disks, the disk ``target``) from the live XML; LookupError if the disk is gone."""
    dom = conn.lookupByUUIDString(uuid)
    disks = parse_disks(dom.XMLDesc(0), _volume_resolver(conn))
    for disk in disks:
        if disk.target == target:
            return dom, disks, disk
    raise LookupError(f"domain {dom.name()} has no disk {target}")


def _volume_resolver(conn):
    def resolve(pool: str, volume: str) -> str | None:
        try:
            return conn.storagePoolLookupByName(pool).storageVolLookupByName(volume).path()
        except Exception:  # noqa: BLE001 - no storage driver, pool inactive: the disk matches nothing
            return None
    return resolve
