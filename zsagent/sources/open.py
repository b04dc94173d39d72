"""A volume's point in time, opened before the copy: ``open_source(...)`` yields the Source to read and
releases everything on exit.

    ceph volume   snapshot ``<pool>/<image>@<template uuid>`` (journalled first; taken under fsFreeze
                  when a running VM writes the volume) -> RbdSnapshotSource -> on exit the snapshot is
                  removed unless a clone now depends on it (then its journal entry stays, for the caller
                  to clear with the image record)
    file volume   a running VM writes it: its disk as it was (libvirt pull backup or external overlay,
                  zsagent.virt); otherwise the file itself: a qcow2 chain read directly
                  (zsagent.sources.qcow2_file; qemu-nbd when it needs what that reader does not do),
                  a raw file read in place

Every change to a running domain is journalled by zsagent.virt with its own undo. ``on_report`` gets
the point-in-time report (consistency, method, frozen time) when libvirt was asked.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from zsagent.catalog import Volume
from zsagent.ceph.health import close_later, timed_out
from zsagent.ceph.snapshots import JOURNAL_KIND as SNAPSHOT_KIND
from zsagent.ceph.snapshots import create_snapshot, release_snapshot
from zsagent.sinks.base import Journal
from zsagent.sources.base import Source
from zsagent.sources.qcow2_file import open_qcow2_source
from zsagent.sources.raw_file import RawFileSource
from zsagent.sources.rbd_snapshot import RbdSnapshotSource
from zsagent.virt import UndoJournal, open_point_in_time


@dataclass(frozen=True)
class PointInTimeOptions:
    """enabled: ask libvirt who uses the volume (zsagent.config.VirtSettings for the rest);
    require_quiesce: fail rather than copy a running guest unfrozen; connections: qemu-nbd clients."""

    enabled: bool = False
    uri: str = "qemu:///system"
    runtime_dir: str = "/run/zsagent"
    freeze_timeout_s: float = 30
    require_quiesce: bool = False
    connections: int = 8


@contextmanager
def open_source(volume: Volume, journal: Journal, *, snapshot: str | None = None, ceph=None, cluster=None,
                qemu_input: tuple[str, str] | None = None, virt: PointInTimeOptions = PointInTimeOptions(),
                on_report: Callable[[dict[str, Any]], None] | None = None,
                existing_snapshot: bool = False) -> Iterator[Source]:
    """The Source of ``volume`` at one point in time; ``snapshot`` names the RBD snapshot to take (ceph
    volumes; ``ceph``/``cluster`` are the backend and a connected handle); ``qemu_input`` how qemu-img
    names that snapshot (None: it cannot read it). ``existing_snapshot``: the snapshot is someone else's
    (the management node took it, zsagent.front): read as it is, neither taken nor removed. Raises
    zsagent.virt.VirtError when no consistent point in time can be had."""
    if volume.kind == "ceph" and existing_snapshot:
        if snapshot is None:
            raise ValueError("an RBD volume is read at a snapshot: name it")
        with cluster.open_ioctx(volume.pool) as ioctx:
            source = RbdSnapshotSource(ceph.rbd, ioctx, volume.image, snapshot, qemu_input=qemu_input)
            try:
                yield source
            finally:
                source.close()
        return
    if volume.kind == "ceph":
        with _rbd_snapshot(volume, journal, snapshot, ceph, cluster, qemu_input, virt, on_report) as source:
            yield source
        return
    with _file_volume(volume, journal, virt, on_report) as source:
        yield source


@contextmanager
def _rbd_snapshot(volume: Volume, journal: Journal, snapshot: str | None, ceph, cluster,
                  qemu_input, virt: PointInTimeOptions, on_report) -> Iterator[Source]:
    if snapshot is None:
        raise ValueError("an RBD volume is read at a snapshot: name it")
    rbd = ceph.rbd
    with cluster.open_ioctx(volume.pool) as ioctx:
        entry = journal.record(SNAPSHOT_KIND, {"pool": volume.pool, "image": volume.image, "snapshot": snapshot})
        try:
            def take() -> None:
                create_snapshot(rbd, ioctx, volume.image, snapshot)

            if virt.enabled:
                pit = _point_in_time("ceph", (volume.pool, volume.image), journal, virt, take_rbd_snapshot=take)
                with pit:
                    pass  # only the freeze window around the snapshot is needed
                if on_report is not None:
                    on_report(pit.report.to_json())
            else:
                take()
        except rbd.ImageExists:  # not ours: a retry that is still running, or state left behind
            journal.forget(entry)
            raise
        except BaseException:
            _release(rbd, ioctx, volume.image, snapshot, journal, entry)
            raise
        failure: BaseException | None = None
        try:
            source = RbdSnapshotSource(rbd, ioctx, volume.image, snapshot, qemu_input=qemu_input)
            try:
                yield source
            except BaseException as e:
                failure = e
                raise
            finally:
                if timed_out(failure):
                    close_later(source, f"{volume.pool}/{volume.image}@{snapshot}")
                else:
                    source.close()
        finally:
            if not timed_out(failure):  # after a Ceph timeout the snapshot is left to the background cleanup
                _release(rbd, ioctx, volume.image, snapshot, journal, entry)


def _release(rbd, ioctx, image: str, snapshot: str, journal: Journal, entry: int) -> None:
    """Remove the snapshot (forgetting its entry) unless a clone depends on it; never hides an error
    (a snapshot that cannot be removed now stays journalled for the cleanup that follows)."""
    try:
        if release_snapshot(rbd, ioctx, image, snapshot):
            journal.forget(entry)
    except rbd.ImageNotFound:  # never taken
        journal.forget(entry)
    except Exception:  # noqa: BLE001 - the journal entry stays: the job's cleanup retries
        pass


@contextmanager
def _file_volume(volume: Volume, journal: Journal, virt: PointInTimeOptions, on_report) -> Iterator[Source]:
    if virt.enabled:
        os.makedirs(virt.runtime_dir, exist_ok=True)
        pit = _point_in_time("file", volume.path, journal, virt, runtime_dir=virt.runtime_dir,
                             connections=virt.connections)
        with pit as live:
            if on_report is not None:
                on_report(pit.report.to_json())
            if live is not None:  # a running VM's disk as it was: closed by the point in time
                yield live
                return
            with _stopped_file(volume, virt.connections, journal) as source:
                yield source
        return
    with _stopped_file(volume, virt.connections, journal) as source:
        yield source


@contextmanager
def _stopped_file(volume: Volume, connections: int, journal: Journal) -> Iterator[Source]:
    if volume.format == "qcow2":
        direct = volume.primary_storage is None or volume.primary_storage.qcow2_reader == "direct"
        source = open_qcow2_source(volume.path, connections=connections, direct=direct, journal=journal)
    else:
        source = RawFileSource(volume.path)
    try:
        yield source
    finally:
        source.close()


def _point_in_time(kind: str, target, journal: Journal, virt: PointInTimeOptions, **options):
    undo = UndoJournal(record=journal.record, clear=journal.forget)
    return open_point_in_time(kind, target, uri=virt.uri, require_quiesce=virt.require_quiesce,
                              freeze_timeout_s=virt.freeze_timeout_s, journal=undo, **options)
