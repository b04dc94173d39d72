"""Copies of volumes that a libvirt domain is using: who uses a volume, and a point-in-time view of it.

ZStack copies an RBD volume of a running VM crash-consistently and refuses file volumes of running VMs.
Here an RBD snapshot is taken under fsFreeze/fsThaw when the guest agent allows (crash-consistent and
reported as such when it does not), and a qcow2/raw file of a running domain is read through a libvirt
pull-mode backup (NBD export of the disk as it was), or, where that is not available, through an external
snapshot that is committed back afterwards. Entry point: ``open_point_in_time`` (point_in_time.py).

Modules: usage (who uses a volume), disks (domain XML), quiesce (freeze/thaw), backup (pull-mode backup),
overlay (external snapshot + active commit), journal (undo steps), undo (undoing them), locks
(per-domain), connection (libvirt connections and event loop). The sources these views yield live in
zsagent.sources: NbdSource (QEMU's backup export) and QemuNbdSource (the base under an external snapshot).
"""

from zsagent.virt.connection import DEFAULT_URI
from zsagent.virt.disks import DiskLayer, DomainDisk, parse_disks
from zsagent.virt.errors import BackupUnsupported, QuiesceRequired, VirtError, VolumeShared
from zsagent.virt.journal import UndoJournal, UndoStep
from zsagent.virt.point_in_time import Consistency, Method, PointInTime, PointInTimeReport, open_point_in_time
from zsagent.virt.undo import undo_step
from zsagent.virt.usage import VolumeRef, VolumeUser, find_volume_users

__all__ = [
    "DEFAULT_URI", "BackupUnsupported", "Consistency", "DiskLayer", "DomainDisk", "Method", "PointInTime",
    "PointInTimeReport", "QuiesceRequired", "UndoJournal", "UndoStep", "VirtError", "VolumeRef", "VolumeShared",
    "VolumeUser", "find_volume_users", "open_point_in_time", "parse_disks", "undo_step",
]
