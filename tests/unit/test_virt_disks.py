"""select_disk: the <disks> list of a backup or snapshot definition that takes exactly one disk."""

import xml.etree.ElementTree as ET

import pytest

from zsagent.virt.disks import DiskLayer, DomainDisk, select_disk

DISKS = [DomainDisk("vda", "disk", (DiskLayer("file", path="/ps/vda.qcow2", format="qcow2"),)),
         DomainDisk("", "cdrom", ()),  # no target: not listed
         DomainDisk("vdb", "disk", (DiskLayer("rbd", pool="p", image="i"),))]


def test_only_the_target_is_taken_and_every_other_disk_is_listed_as_no():
    root = ET.Element("domainsnapshot")
    node = select_disk(root, DISKS, "vdb", "snapshot", "external", type="file")
    ET.SubElement(node, "source", file="/ps/overlay.qcow2")
    assert ET.tostring(root, encoding="unicode") == (
        '<domainsnapshot><disks><disk name="vda" snapshot="no" />'
        '<disk name="vdb" snapshot="external" type="file"><source file="/ps/overlay.qcow2" /></disk>'
        '</disks></domainsnapshot>')


def test_an_unknown_target_is_refused():
    with pytest.raises(ValueError, match="vdz"):
        select_disk(ET.Element("domainbackup"), DISKS, "vdz", "backup", "yes")
