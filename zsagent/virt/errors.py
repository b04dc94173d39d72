"""What can go wrong around a running domain, as exceptions the service maps to ZStack error codes."""

from __future__ import annotations


class VirtError(Exception):
    """A libvirt step around a running domain failed.

    The domain was put back on its original disk when possible; steps that could not be undone are
    still in the UndoJournal (``PointInTime.journal.pending``) so that a later ``undo_step`` retries them.
    """


class QuiesceRequired(VirtError):
    """``require_quiesce`` was set and the guest's filesystems could not be frozen (no guest agent, agent
    not responding, freeze failed, or the freeze timeout thawed the guest before the snapshot finished)."""


class VolumeShared(VirtError):
    """The file volume is written by more than one running domain (a shareable disk): no single domain
    can give a point-in-time view of it."""


class BackupUnsupported(VirtError):
    """libvirt or QEMU cannot run a pull-mode backup here; the caller falls back to an external snapshot."""
