"""The disks of a domain as its XML describes them: each disk's target and its chain of images.

Parsed: ``<disk type='file'|'block'>`` (``source file``/``dev``, the ``backingStore`` chain that a running
domain's live XML carries), ``<disk type='network'>`` with ``<source protocol='rbd' name='pool[/ns]/image
[@snap]'>``, and ``<disk type='volume'>`` (storage pool volumes, resolved to a path when a resolver is
given). Anything else is kept with ``kind`` set to what the XML says, so it matches no volume.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass

VolumeResolver = Callable[[str, str], str | None]
"""``resolve(pool, volume) -> path`` for ``<disk type='volume'>`` (None when unknown)."""


@dataclass(frozen=True)
class DiskLayer:
    """One image of a disk's chain.

    kind: "file" or "block" (then ``path`` is set), "rbd" (``pool``, ``namespace`` ("" for none),
    ``image``, and ``snapshot`` when the disk is attached to an RBD snapshot), or the XML's own type /
    network protocol for anything else. format: the image format ("qcow2", "raw") or "" when unknown.
    """

    kind: str
    path: str | None = None
    pool: str | None = None
    namespace: str = ""
    image: str | None = None
    snapshot: str | None = None
    format: str = ""


@dataclass(frozen=True)
class DomainDisk:
    """One ``<disk>``: target: the guest device name ("vda"); device: "disk", "cdrom", "lun" or "floppy";
    chain: the active image first, then its backing images in order; readonly/shareable: the XML flags."""

    target: str
    device: str
    chain: tuple[DiskLayer, ...]
    readonly: bool = False
    shareable: bool = False

    @property
    def active(self) -> DiskLayer | None:
        """The image the guest writes to (None for an empty cdrom)."""
        return self.chain[0] if self.chain else None


def parse_disks(domain_xml: str, resolve_volume: VolumeResolver | None = None) -> list[DomainDisk]:
    """Every ``<devices><disk>`` of a domain XML, in document order."""
    root = ET.fromstring(domain_xml)
    disks = []
    for disk in root.findall("./devices/disk"):
        target = disk.find("target")
        driver = disk.find("driver")
        chain: list[DiskLayer] = []
        layer = _layer(disk, driver.get("type", "") if driver is not None else "", resolve_volume)
        if layer is not None:
            chain.append(layer)
            node = disk.find("backingStore")
            while node is not None and node.get("type"):  # an empty <backingStore/> ends the chain
                fmt = node.find("format")
                below = _layer(node, fmt.get("type", "") if fmt is not None else "", resolve_volume)
                if below is None:
                    break
                chain.append(below)
                node = node.find("backingStore")
        disks.append(DomainDisk(
            target=target.get("dev", "") if target is not None else "",
            device=disk.get("device", "disk"),
            chain=tuple(chain),
            readonly=disk.find("readonly") is not None,
            shareable=disk.find("shareable") is not None,
        ))
    return disks


def _layer(node: ET.Element, fmt: str, resolve_volume: VolumeResolver | None) -> DiskLayer | None:
    """The image a ``<disk>`` or ``<backingStore>`` element names; None when it names none."""
    source = node.find("source")
    if source is None:
        return None
    kind = node.get("type", "file")
    if kind == "file":
        path = source.get("file")
        return DiskLayer("file", path=path, format=fmt) if path else None
    if kind == "block":
        path = source.get("dev")
        return DiskLayer("block", path=path, format=fmt) if path else None
    if kind == "network":
        protocol = source.get("protocol", "")
        name = source.get("name", "")
        if protocol != "rbd" or not name:
            return DiskLayer(protocol or "network", format=fmt)
        spec, _, snapshot = name.partition("@")
        parts = spec.split("/")
        if len(parts) not in (2, 3):
            return DiskLayer("rbd", format=fmt)
        return DiskLayer("rbd", pool=parts[0], namespace=parts[1] if len(parts) == 3 else "",
                         image=parts[-1], snapshot=snapshot or None, format=fmt)
    if kind == "volume":
        pool, volume = source.get("pool"), source.get("volume")
        path = resolve_volume(pool, volume) if resolve_volume and pool and volume else None
        return DiskLayer("file", path=path, format=fmt) if path else DiskLayer("volume", format=fmt)
    return DiskLayer(kind, format=fmt)


def select_disk(parent: ET.Element, disks: Iterable[DomainDisk], target: str, mode: str, value: str,
                **attributes: str) -> ET.Element:
    """Add to ``parent`` (a ``<domainbackup>`` or ``<domainsnapshot>``) the ``<disks>`` list that takes
    only disk ``target``: it gets ``mode=value`` and ``attributes``, every other disk with a target
    ``mode="no"`` (a disk left out would get libvirt's default mode). Returns the ``<disk>`` of ``target``,
    for its children; ValueError when ``disks`` has no such target."""
    listed = ET.SubElement(parent, "disks")
    chosen = None
    for disk in disks:
        if not disk.target:
            continue
        if disk.target == target:
            chosen = ET.SubElement(listed, "disk", {"name": disk.target, mode: value, **attributes})
        else:
            ET.SubElement(listed, "disk", {"name": disk.target, mode: "no"})
    if chosen is None:
        raise ValueError(f"no disk {target!r} among the domain's disks")
    return chosen


def seclabel_owner(domain_xml: str) -> tuple[int, int] | None:
    """(uid, gid) QEMU runs as, from the live XML's ``<seclabel model='dac'><label>+64055:+64055``."""
    root = ET.fromstring(domain_xml)
    for seclabel in root.findall("./seclabel"):
        if seclabel.get("model") != "dac":
            continue
        label = seclabel.findtext("label") or ""
        user, sep, group = label.partition(":")
        if sep and user.startswith("+") and group.startswith("+"):
            try:
                return int(user[1:]), int(group[1:])
            except ValueError:
                return None
    return None
