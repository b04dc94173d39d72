"""The one entry point for the service: a point-in-time view of a volume that a domain may be using.

    pit = open_point_in_time("file", volume.path, uri=uri, require_quiesce=tag)
    with pit as source:                          # None: nobody writes the volume, copy it directly
        run_copy(source or QemuNbdSource(volume.path, ...), sinks, ...)   (close your own source)
    job.record(pit.report.to_json())             # consistency, method, domain, frozen window, ...

    pit = open_point_in_time("ceph", (pool, image), uri=uri,
                             take_rbd_snapshot=lambda: create_snap(pool, image, snap))
    with pit as source:                          # always None for RBD: copy the snapshot just taken
        ...

What happens on enter, by who uses the volume (``find_volume_users``), and the consistency reported:

- no running domain writes it (not attached, shut off, read-only or backing image, no libvirt reachable):
  ceph: ``take_rbd_snapshot()``; file: nothing, the source is None.                     -> "stopped"
- ceph, one or more running/paused writers: fsFreeze each, ``take_rbd_snapshot()``, fsThaw (guaranteed,
  with a freeze timeout).                                      -> "quiesced" or "crash-consistent"
- file, one running/paused writer: under fsFreeze/fsThaw, a pull-mode backup (source: NbdSource on
  QEMU's export), or when that is unavailable or ``method="snapshot"``, an external snapshot (source:
  QemuNbdSource on the now read-only base).                     -> "quiesced" or "crash-consistent"
- file, several running writers (shareable disk): VolumeShared.

On exit (success or not) the source is closed, the backup job aborted / the overlay committed back and
deleted: the domain ends on its original disk. Every change to a domain is journalled before it is made
(``journal``, an UndoJournal the service may hook into its own store) and undone on failure; a step that
cannot be undone stays pending there, and ``undo_step(kind, spec)`` retries it later.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Any

from zsagent.sources.base import Source
from zsagent.virt.backup import PullBackup
from zsagent.virt.connection import DEFAULT_URI, open_connection
from zsagent.virt.errors import BackupUnsupported, QuiesceRequired, VirtError, VolumeShared
from zsagent.virt.journal import UndoJournal
from zsagent.virt.locks import domain_lock
from zsagent.virt.overlay import DEFAULT_COMMIT_TIMEOUT_S, ExternalOverlay
from zsagent.virt.quiesce import DEFAULT_FREEZE_TIMEOUT_S, QuiesceResult, frozen
from zsagent.virt.undo import undo_all
from zsagent.virt.usage import VolumeRef, VolumeUser, find_disk, users_on

log = logging.getLogger(__name__)


class Consistency(StrEnum):
    """How consistent the copy is (a str, for the job record).

    QUIESCED: a running guest's filesystems were frozen when the point in time was taken.
    CRASH_CONSISTENT: the guest ran on unfrozen (no usable guest agent): like a power cut at that moment.
    STOPPED: no running domain could write the volume (not attached, shut off, read-only or a backing
    image, or no libvirt reachable).
    """

    QUIESCED = "quiesced"
    CRASH_CONSISTENT = "crash-consistent"
    STOPPED = "stopped"


class Method(StrEnum):
    """How the point in time was made. DIRECT: nothing to do (file volume read as it is); RBD_SNAPSHOT:
    the caller's snapshot; BACKUP: libvirt pull-mode backup over NBD; EXTERNAL_SNAPSHOT: overlay +
    blockCommit (the fallback)."""

    DIRECT = "direct"
    RBD_SNAPSHOT = "rbd-snapshot"
    BACKUP = "backup"
    EXTERNAL_SNAPSHOT = "external-snapshot"


@dataclass
class PointInTimeReport:
    """What was done, for the job record.

    consistency: see Consistency (None until entered); method: see Method; domain / domain_uuid / disk:
    the running domain and disk target the view was taken from (the first one for a shared RBD volume);
    users: every domain disk naming the volume; quiesce_error: why the guest was not frozen (None when it
    was, or when no domain runs); frozen_s: the length of the frozen window in seconds; libvirt_error:
    why libvirt could not be asked (then nobody was taken to use the volume); fallback_reason: why the
    pull-mode backup was not used.
    """

    volume: str
    consistency: Consistency | None = None
    method: Method | None = None
    domain: str | None = None
    domain_uuid: str | None = None
    disk: str | None = None
    users: list[VolumeUser] = field(default_factory=list)
    quiesce_error: str | None = None
    frozen_s: float | None = None
    libvirt_error: str | None = None
    fallback_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"volume": self.volume, "consistency": str(self.consistency) if self.consistency else None,
                "method": str(self.method) if self.method else None, "domain": self.domain,
                "domainUuid": self.domain_uuid, "disk": self.disk, "users": [u.to_json() for u in self.users],
                "quiesceError": self.quiesce_error, "frozenSeconds": self.frozen_s,
                "libvirtError": self.libvirt_error, "fallbackReason": self.fallback_reason}


class PointInTime:
    """Context manager made by ``open_point_in_time``.

    ``with pit as source``: source is the Source to copy (a file volume of a running domain), or None:
    copy the volume (or the RBD snapshot the callback took) directly. The source is closed on exit; do
    not close it yourself. report: PointInTimeReport (complete once entered). journal: the UndoJournal.
    """

    def __init__(self, volume: VolumeRef, *, uri: str, require_quiesce: bool,
                 take_rbd_snapshot: Callable[[], Any] | None, method: str, freeze_timeout_s: float,
                 runtime_dir: str | None, scratch_dir: str | None, connections: int,
                 commit_timeout_s: float, journal: UndoJournal | None) -> None:
        self.volume = volume
        self.uri = uri
        self.require_quiesce = require_quiesce
        self.take_rbd_snapshot = take_rbd_snapshot
        self.method = method
        self.freeze_timeout_s = freeze_timeout_s
        self.runtime_dir = runtime_dir
        self.scratch_dir = scratch_dir
        self.connections = connections
        self.commit_timeout_s = commit_timeout_s
        self.journal = journal or UndoJournal()
        self.report = PointInTimeReport(str(volume))
        self.source: Source | None = None
        self._conn = None
        self._stack = ExitStack()  # undone in reverse on exit: domain lock, job/overlay, connection
        self._entered = False

    # -- enter ------------------------------------------------------------------------------------

    def __enter__(self) -> Source | None:
        if self._entered:
            raise RuntimeError("a PointInTime can be entered once")
        self._entered = True
        try:
            self._enter()
        except BaseException:
            self._close(failed=True)
            raise
        return self.source

    def _enter(self) -> None:
        users = self._find_users()
        self.report.users = users
        writers = [u for u in users if u.writes]
        if self.volume.kind == "ceph":
            self._rbd(writers)
            return
        if not writers:
            self.report.consistency, self.report.method = Consistency.STOPPED, Method.DIRECT
            log.info("volume %s: no running domain writes it; copying it directly", self.volume)
            return
        if len(writers) > 1:
            raise VolumeShared(f"volume {self.volume} is written by several running domains: "
                               f"{', '.join(f'{u.domain}:{u.disk}' for u in writers)}")
        self._file(writers[0])

    def _find_users(self) -> list[VolumeUser]:
        try:
            self._conn = open_connection(self.uri)
        except ImportError as e:
            self.report.libvirt_error = f"no libvirt binding: {e}"
        except Exception as e:  # noqa: BLE001 - libvirtError: no libvirtd on a storage-only host
            self.report.libvirt_error = str(e)
        if self._conn is None:
            log.info("libvirt at %s not reachable (%s): taking volume %s as not in use", self.uri,
                     self.report.libvirt_error, self.volume)
            return []
        self._stack.callback(self._conn.close)
        return users_on(self._conn, self.volume)

    def _rbd(self, writers: list[VolumeUser]) -> None:
        if self.take_rbd_snapshot is None:
            raise ValueError("an RBD volume needs take_rbd_snapshot")
        self.report.method = Method.RBD_SNAPSHOT
        if not writers:
            self.take_rbd_snapshot()
            self.report.consistency = Consistency.STOPPED
            return
        self._note_domain(writers[0])
        domains = []
        for uuid in dict.fromkeys(u.uuid for u in writers):
            domains.append(self._conn.lookupByUUIDString(uuid))
        with self._freeze(domains):
            self.take_rbd_snapshot()

    def _file(self, writer: VolumeUser) -> None:
        self._note_domain(writer)
        self._stack.enter_context(domain_lock(writer.uuid, "job"))
        dom, disks, disk = find_disk(self._conn, writer.uuid, writer.disk)
        if not dom.isActive():  # stopped while we looked
            self.report.consistency, self.report.method = Consistency.STOPPED, Method.DIRECT
            return
        with self._freeze([dom]):
            view = None
            if self.method in ("auto", "backup"):
                backup = PullBackup(dom, disks, disk, uri=self.uri, journal=self.journal,
                                    runtime_dir=self.runtime_dir, scratch_dir=self.scratch_dir)
                try:
                    backup.begin()
                    view = backup
                    self.report.method = Method.BACKUP
                except BackupUnsupported as e:
                    if self.method == "backup":
                        raise
                    self.report.fallback_reason = str(e)
                    log.warning("domain %s: %s; falling back to an external snapshot", writer.domain, e)
            if view is None:
                view = ExternalOverlay(dom, disks, disk, uri=self.uri, journal=self.journal,
                                       overlay_dir=self.scratch_dir, commit_timeout_s=self.commit_timeout_s)
                view.create()
                self.report.method = Method.EXTERNAL_SNAPSHOT
            self._stack.callback(view.end)
        self.source = (view.source() if isinstance(view, PullBackup)
                       else view.source(connections=self.connections))

    def _freeze(self, domains: list[Any]):
        return _Recorded(frozen(domains, uri=self.uri, journal=self.journal, require=self.require_quiesce,
                                timeout_s=self.freeze_timeout_s), self.report)

    def _note_domain(self, user: VolumeUser) -> None:
        self.report.domain, self.report.domain_uuid, self.report.disk = user.domain, user.uuid, user.disk

    # -- exit -------------------------------------------------------------------------------------

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._close(failed=exc is not None)

    def _close(self, failed: bool) -> None:
        """End the job / merge the overlay, then undo whatever is still journalled."""
        self.source = None
        errors: list[BaseException] = []
        try:
            self._stack.close()
        except Exception as e:  # noqa: BLE001 - the steps stay pending; undone below or later
            log.exception("volume %s: ending the point-in-time view failed", self.volume)
            errors.append(e)
        if self.journal.pending:
            errors += undo_all(self.journal)
        if errors and not failed:
            raise VirtError(f"volume {self.volume}: could not put domain {self.report.domain} back as it was: "
                            f"{errors[0]}") from errors[0]


class _Recorded:
    """``frozen(...)`` that copies its result into the report when the block ends."""

    def __init__(self, cm, report: PointInTimeReport) -> None:
        self.cm = cm
        self.report = report
        self.result: QuiesceResult | None = None

    def __enter__(self) -> QuiesceResult:
        try:
            self.result = self.cm.__enter__()
        except QuiesceRequired as e:
            self.report.quiesce_error = str(e)
            raise
        return self.result

    def __exit__(self, *exc_info) -> bool | None:
        try:
            return self.cm.__exit__(*exc_info)
        finally:
            if self.result is not None:
                self.report.consistency = (Consistency.QUIESCED if self.result.quiesced
                                           else Consistency.CRASH_CONSISTENT)
                self.report.quiesce_error = self.result.reason
                self.report.frozen_s = self.result.frozen_s


def open_point_in_time(volume_kind: str, target: str | os.PathLike[str] | tuple[str, str], *,
                       uri: str = DEFAULT_URI, require_quiesce: bool = False,
                       take_rbd_snapshot: Callable[[], Any] | None = None, method: str = "auto",
                       freeze_timeout_s: float = DEFAULT_FREEZE_TIMEOUT_S, runtime_dir: str | None = None,
                       scratch_dir: str | None = None, connections: int = 8,
                       commit_timeout_s: float = DEFAULT_COMMIT_TIMEOUT_S,
                       journal: UndoJournal | None = None) -> PointInTime:
    """A point-in-time view of a volume, safe while a domain runs on it (see the module docstring).

    volume_kind: "file" (target: the volume's path) or "ceph" (target: (pool, image) or "pool/image").
    uri: the libvirt URI to ask. require_quiesce: fail (QuiesceRequired) instead of a crash-consistent
    copy when the guest cannot be frozen. take_rbd_snapshot: for "ceph", called exactly once on enter to
    take the RBD snapshot (under freeze when a domain runs on the volume). method (file volumes): "auto"
    (pull-mode backup, else external snapshot), "backup" (no fallback) or "snapshot" (external snapshot
    only). freeze_timeout_s: the guest is thawed after this many seconds even if the snapshot is still
    being taken. runtime_dir: where the NBD socket directory is made (default: the temp dir; must be seen
    by QEMU at the same path, and short). scratch_dir: where the backup scratch file / snapshot overlay go
    (default: next to the volume). connections: qemu-nbd clients for the external-snapshot source (the
    pipeline's depth). commit_timeout_s: how long the overlay's commit may take. journal: an UndoJournal
    (give it record/clear hooks to persist the steps).
    """
    if method not in ("auto", "backup", "snapshot"):
        raise ValueError(f"method must be auto, backup or snapshot, not {method!r}")
    if volume_kind == "file":
        if isinstance(target, tuple):
            raise ValueError("a file volume is named by its path")
        if take_rbd_snapshot is not None:
            raise ValueError("take_rbd_snapshot is for RBD volumes only")
        volume = VolumeRef.file(target)
    elif volume_kind in ("ceph", "rbd"):
        pool, image = target if isinstance(target, tuple) else str(target).split("/", 1)
        volume = VolumeRef.rbd(pool, image)
    else:
        raise ValueError(f"volume_kind must be 'file' or 'ceph', not {volume_kind!r}")
    return PointInTime(volume, uri=uri, require_quiesce=require_quiesce, take_rbd_snapshot=take_rbd_snapshot,
                       method=method, freeze_timeout_s=freeze_timeout_s, runtime_dir=runtime_dir,
                       scratch_dir=scratch_dir, connections=connections, commit_timeout_s=commit_timeout_s,
                       journal=journal)
