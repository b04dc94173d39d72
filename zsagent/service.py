"""The one code path behind the HTTP API and the CLI: resolve, journal, copy, record.

``TemplateService.create_template`` turns a checked request into an ImageInventory or raises ZsError.
Two requests for one volume are serialized; at most ``agent.max_jobs`` copies run at once, the rest
queue. Every temporary artifact is journalled before it exists, so a restart (``reconcile``) can
remove what a crash left behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid as uuidlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from zsagent import errors
from zsagent.catalog import Catalog, Volume
from zsagent.ceph import open_backend
from zsagent.cleanup import delete_template, remove_artifact
from zsagent.config import BackupStorage, Config
from zsagent.copy.errors import AllSinksFailed, CopyCancelled, CopyError
from zsagent.copy.pipeline import CopyResult
from zsagent.destinations import Destination, TemplateTags, build_destination
from zsagent.errors import ErrorCode, ZsError
from zsagent.inventory import backup_storage_ref, image_inventory, zstack_date
from zsagent.metrics import Metrics
from zsagent.qemu_img import rbd_filename
from zsagent.rbd_copy import copy_rbd_volume
from zsagent.request import CreateRequest
from zsagent.store import ImageRecord, Store
from zsagent.transfer import transfer

log = logging.getLogger(__name__)

ADMIN_ACCOUNT_UUID = "36c27e8ff05c4780bf6d2fa65700f22e"  # ZStack's built-in admin account


@dataclass
class Progress:
    """What a job is doing: phase (queued | snapshot | copying | publishing | done | failed),
    bytes_done / bytes_total of the copy."""

    phase: str = "queued"
    bytes_done: int = 0
    bytes_total: int = 0
    started_s: float = field(default_factory=time.time)

    @property
    def percent(self) -> int:
        if self.phase == "done":
            return 100
        if not self.bytes_total:
            return 0
        return min(99, int(100 * self.bytes_done / self.bytes_total))

    def to_json(self) -> dict[str, Any]:
        return {"phase": self.phase, "percent": self.percent, "bytesDone": self.bytes_done,
                "bytesTotal": self.bytes_total}


@dataclass
class JobContext:
    """One request's job: its uuid, live progress and cancel switch."""

    uuid: str = field(default_factory=lambda: uuidlib.uuid4().hex)
    progress: Progress = field(default_factory=Progress)
    cancel: threading.Event = field(default_factory=threading.Event)
    cancel_reason: str = "cancelled by request"
    errors: list[dict[str, Any]] = field(default_factory=list)  # per backup storage failures
    point_in_time: dict[str, Any] | None = None  # how consistent the copy is (see zsagent.virt)

    def cancel_with(self, reason: str) -> None:
        self.cancel_reason = reason
        self.cancel.set()


class TemplateService:
    def __init__(self, config: Config, store: Store, metrics: Metrics | None = None) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics or Metrics()
        uses_ceph = any(s.type == "ceph" for s in (*config.primary_storage, *config.backup_storage))
        self.ceph = open_backend(config.ceph) if uses_ceph else None
        self._cluster = None
        self._cluster_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(config.agent.max_jobs)
        self._volume_locks: dict[str, tuple[threading.Lock, int]] = {}
        self._volume_locks_guard = threading.Lock()
        self._create_guard = threading.Lock()  # makes "check resourceUuid, then claim it" atomic
        self._claimed: set[str] = set()

    # -- Ceph connection (lazy: a file-only agent never needs it) ---------------------------------

    @property
    def cluster(self):
        if self.ceph is None:
            return None
        with self._cluster_lock:
            if self._cluster is None:
                try:
                    self._cluster = self.ceph.connect()
                except Exception as e:
                    raise errors.operation_failed(f"cannot connect to Ceph: {e}") from e
            return self._cluster

    def close(self) -> None:
        with self._cluster_lock:
            if self._cluster is not None:
                self._cluster.shutdown()
                self._cluster = None

    @property
    def catalog(self) -> Catalog:
        return Catalog(self.config, self.ceph, self.cluster)

    # -- the call ----------------------------------------------------------------------------------

    def create_template(self, request: CreateRequest, account_uuid: str,
                        job: JobContext | None = None) -> dict[str, Any]:
        """Make the template and return its ImageInventory; raises ZsError."""
        job = job or JobContext()
        image_uuid = request.resource_uuid or uuidlib.uuid4().hex
        existing = self._claim(image_uuid, request)
        if existing is not None:
            job.progress.phase = "done"
            return existing
        try:
            volume = self.catalog.find_volume(request.volume_uuid)
            if volume is None:
                raise errors.not_found(f"volume[uuid:{request.volume_uuid}] is not on any configured "
                                       "primary storage")
            storages = self._backup_storages(request, volume)
            self.metrics.queued.inc()
            queued = True
            try:
                with self._volume_lock(volume.uuid), self._slot(job):
                    self.metrics.queued.dec()
                    queued = False
                    with self.metrics.running.track_inprogress():
                        return self._run(request, account_uuid, volume, storages, image_uuid, job)
            finally:
                if queued:
                    self.metrics.queued.dec()
        finally:
            with self._create_guard:
                self._claimed.discard(image_uuid)

    def _claim(self, image_uuid: str, request: CreateRequest) -> dict[str, Any] | None:
        """Idempotency: the same resourceUuid with the same parameters returns the existing image."""
        with self._create_guard:
            record = self.store.get_image(image_uuid)
            if record is not None:
                if record.fingerprint == request.fingerprint():
                    return record.inventory
                raise errors.invalid(f"resourceUuid {image_uuid} is already used by another image")
            if image_uuid in self._claimed:
                raise errors.invalid(f"resourceUuid {image_uuid} is being created by another request")
            self._claimed.add(image_uuid)
        return None

    def _backup_storages(self, request: CreateRequest, volume: Volume) -> list[BackupStorage]:
        if request.backup_storage_uuids is not None:
            found = []
            for bs_uuid in request.backup_storage_uuids:
                bs = self.config.backup_storage_by_uuid(bs_uuid)
                if bs is None:
                    raise errors.not_found(f"backup storage[uuid:{bs_uuid}] is not configured on this agent")
                found.append(bs)
            return found
        candidates = sorted(self.config.backup_storage, key=lambda b: not b.default)
        for bs in candidates:
            if bs.default or self._has_room(bs, volume.size):
                return [bs]
        raise errors.operation_failed("cannot find proper backup storage: none is the default and none "
                                      f"has room for {volume.size} bytes")

    @staticmethod
    def _has_room(bs: BackupStorage, size: int) -> bool:
        if bs.type == "filesystem":
            try:
                return shutil.disk_usage(bs.path).free > size
            except OSError:
                return False
        return True  # Ceph pool usage needs a mgr; SFTP has no portable free-space query

    @contextmanager
    def _volume_lock(self, volume_uuid: str) -> Iterator[None]:
        with self._volume_locks_guard:
            lock, users = self._volume_locks.get(volume_uuid, (threading.Lock(), 0))
            self._volume_locks[volume_uuid] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._volume_locks_guard:
                lock, users = self._volume_locks[volume_uuid]
                if users == 1:
                    del self._volume_locks[volume_uuid]
                else:
                    self._volume_locks[volume_uuid] = (lock, users - 1)

    @contextmanager
    def _slot(self, job: JobContext) -> Iterator[None]:
        while not self._slots.acquire(timeout=0.2):
            if job.cancel.is_set():
                raise ZsError(errors.CANCELLED, f"the job was cancelled while queued: {job.cancel_reason}")
        try:
            yield
        finally:
            self._slots.release()

    def _run(self, request: CreateRequest, account_uuid: str, volume: Volume, storages: list[BackupStorage],
             image_uuid: str, job: JobContext) -> dict[str, Any]:
        snapshot = image_uuid if volume.kind == "ceph" else None
        destinations: list[Destination] = []
        tags = TemplateTags(mode=request.system_tag("ceph::copyMode"), format=request.system_tag("template::format"),
                            compression=request.system_tag("template::compression"),
                            bandwidth=request.system_tag("sftp::bandwidth"))
        job.progress.phase = "snapshot"
        job.progress.bytes_total = volume.size
        try:
            for bs in storages:
                try:
                    destinations.append(build_destination(
                        bs, volume, image_uuid, account_uuid, ceph_backend=self.ceph, cluster=self.cluster,
                        tags=tags, snapshot=snapshot, pipeline=self.config.pipeline,
                        spool_dir=self.config.agent.spool_path))
                except ZsError:
                    raise
                except Exception as e:  # noqa: BLE001 - a storage we cannot even open fails alone
                    job.errors.append({"backupStorageUuid": bs.uuid, "error": str(e)})
            if not destinations:
                raise _all_failed(request.volume_uuid, [e["error"] for e in job.errors])
            if snapshot:
                self.store.journal(job.uuid, "rbd-snapshot", {"pool": volume.pool, "image": volume.image,
                                                              "snapshot": snapshot})
            for dest in destinations:
                for kind, spec in dest.artifacts:
                    self.store.journal(job.uuid, kind, spec)
            log.info("job %s: copying volume %s (%d bytes) into image %s on %s", job.uuid, volume.uuid, volume.size,
                     image_uuid, [d.install_path for d in destinations],
                     extra={"job": job.uuid, "image": image_uuid, "volume": volume.uuid})
            started = time.monotonic()
            result = self._copy(volume, snapshot, destinations, job,
                                require_quiesce=request.system_tag("consistency") == "quiesced")
            self._count(result, time.monotonic() - started)
            job.progress.phase = "publishing"
            inventory = self._record(request, account_uuid, volume, image_uuid, destinations, result, job)
            self.store.clear_journal(job.uuid)
            job.progress.phase = "done"
            consistency = (job.point_in_time or {}).get("consistency", "stopped")
            log.info("job %s: image %s from volume %s ready on %s, md5 %s, %s", job.uuid, image_uuid, volume.uuid,
                     [r["backupStorageUuid"] for r in inventory["backupStorageRefs"]], inventory["md5Sum"],
                     consistency,
                     extra={"job": job.uuid, "image": image_uuid, "volume": volume.uuid})
            return inventory
        except BaseException as e:
            job.progress.phase = "failed"
            log.warning("job %s: image %s from volume %s failed: %s", job.uuid, image_uuid, volume.uuid, e,
                        extra={"job": job.uuid, "image": image_uuid, "volume": volume.uuid})
            self.clean_job(job.uuid)
            raise
        finally:
            for dest in destinations:
                dest.close()

    @contextmanager
    def _point_in_time(self, volume: Volume, job: JobContext, require_quiesce: bool):
        """Yields (take_snapshot, live_source): how to take an RBD snapshot (under fsFreeze when a running
        VM writes the volume), and for a file volume a running VM writes, the Source of its disk as it
        was (libvirt pull backup or external snapshot); (None, None) when virt is disabled."""
        settings = self.config.virt
        if not settings.enabled:
            yield None, None
            return
        from zsagent.virt import UndoJournal, VirtError, open_point_in_time

        journal = UndoJournal(record=lambda kind, spec: self.store.journal(job.uuid, kind, spec),
                              clear=self.store.clear_artifact)
        target = (volume.pool, volume.image) if volume.kind == "ceph" else volume.path
        taken: list = []

        def take_snapshot(create) -> None:
            pit = open_point_in_time("ceph", target, uri=settings.uri, require_quiesce=require_quiesce,
                                     take_rbd_snapshot=create, freeze_timeout_s=settings.freeze_timeout_s,
                                     journal=journal)
            with pit:
                pass
            taken.append(pit.report)

        try:
            if volume.kind == "ceph":
                yield take_snapshot, None
                if taken:
                    job.point_in_time = taken[0].to_json()
                return
            os.makedirs(settings.runtime_dir, exist_ok=True)
            pit = open_point_in_time("file", target, uri=settings.uri, require_quiesce=require_quiesce,
                                     freeze_timeout_s=settings.freeze_timeout_s, runtime_dir=settings.runtime_dir,
                                     connections=self.config.pipeline.depth, journal=journal)
            with pit as live_source:
                job.point_in_time = pit.report.to_json()
                yield None, live_source
        except VirtError as e:
            raise errors.operation_failed(f"cannot get a consistent point in time of volume[uuid:{volume.uuid}]",
                                          ErrorCode(errors.OPERATION_FAILURE, str(e))) from e

    def _copy(self, volume: Volume, snapshot: str | None, destinations: list[Destination],
              job: JobContext, require_quiesce: bool = False) -> CopyResult:
        sinks = [d.sink for d in destinations if d.sink is not None]
        converters = [d.converter for d in destinations if d.converter is not None]

        def progress(done: int, total: int) -> None:
            job.progress.phase = "copying"
            job.progress.bytes_done, job.progress.bytes_total = done, total

        config = self.config.pipeline
        # The raw content's MD5 is only needed for raw templates; qcow2 sinks hash their own bytes.
        hash_content = any(d.format == "raw" for d in destinations if d.sink is not None)
        try:
            with self._point_in_time(volume, job, require_quiesce) as (take_snapshot, live_source):
                if volume.kind == "ceph":
                    with self.cluster.open_ioctx(volume.pool) as ioctx:
                        return copy_rbd_volume(self.ceph.rbd, ioctx, volume.image, snapshot, sinks, config,
                                               progress=progress, cancel=job.cancel, hash_content=hash_content,
                                               take_snapshot=take_snapshot, converters=converters,
                                               qemu_input=self._rbd_qemu_input(volume, snapshot))
                if live_source is not None:  # a running VM's disk as it was: closed by the point in time
                    return transfer(live_source, sinks, converters, config, progress=progress, cancel=job.cancel,
                                    hash_content=hash_content)
                source = _file_source(volume, config.depth)
                try:
                    return transfer(source, sinks, converters, config, progress=progress, cancel=job.cancel,
                                    hash_content=hash_content)
                finally:
                    source.close()
        except CopyCancelled as e:
            raise ZsError(errors.CANCELLED, f"creating the template was cancelled: {job.cancel_reason}") from e
        except AllSinksFailed as e:
            job.errors += [{"backupStorageUuid": _bs_of(destinations, err.sink), "error": str(err)}
                           for err in e.errors]
            raise _all_failed(volume.uuid, [str(err) for err in e.errors]) from e
        except CopyError as e:
            raise errors.operation_failed(f"copying volume[uuid:{volume.uuid}] failed",
                                          ErrorCode(errors.OPERATION_FAILURE, str(e))) from e
        except ZsError:
            raise
        except Exception as e:
            if self.ceph is not None and isinstance(e, (self.ceph.rbd.Error, self.ceph.rados.Error)):
                raise errors.operation_failed(f"Ceph refused an operation on volume[uuid:{volume.uuid}]",
                                              ErrorCode(errors.OPERATION_FAILURE, f"{type(e).__name__}: {e}")) from e
            raise

    def _rbd_qemu_input(self, volume: Volume, snapshot: str | None) -> tuple[str, str] | None:
        """How qemu-img reads the volume's snapshot (None on the fake backend, which qemu cannot read)."""
        ceph = self.config.ceph
        if self.ceph is None or self.ceph.is_fake or snapshot is None:
            return None
        return "raw", rbd_filename(volume.pool, volume.image, snapshot, conf=ceph.conf, client=ceph.client,
                                   keyring=ceph.keyring)

    def _count(self, result: CopyResult, seconds: float) -> None:
        self.metrics.bytes_read.inc(result.stats.bytes_read)
        self.metrics.bytes_written.inc(result.stats.bytes_written)
        self.metrics.bytes_hashed.inc(result.size)
        self.metrics.copy_seconds.observe(seconds)
        self.metrics.throughput.observe(result.size / max(seconds, 1e-6))

    def _record(self, request: CreateRequest, account_uuid: str, volume: Volume, image_uuid: str,
                destinations: list[Destination], result: CopyResult, job: JobContext) -> dict[str, Any]:
        date = zstack_date()
        by_path = {d.install_path: d for d in destinations}
        order = {d.install_path: i for i, d in enumerate(destinations)}
        refs, kept = [], []
        for published in sorted(result.published, key=lambda p: order[p.install_path]):
            dest = by_path[published.install_path]
            md5 = published.md5 or result.md5
            refs.append(backup_storage_ref(image_uuid, dest.bs.uuid, published.install_path, md5, date))
            kept.append((dest, published, md5))
        for failure in result.failed:
            job.errors.append({"backupStorageUuid": _bs_of(destinations, failure.sink), "error": str(failure)})
        first_dest, first, first_md5 = kept[0]
        defaults = self.config.image
        inventory = image_inventory(
            uuid=image_uuid, name=request.name, description=request.description, volume_uuid=volume.uuid,
            size=result.size, actual_size=first.actual_size, md5=first_md5, image_format=first_dest.format,
            platform=volume.metadata.get("platform", defaults.platform),
            architecture=volume.metadata.get("architecture", defaults.architecture),
            guest_os_type=volume.metadata.get("guestOsType", defaults.guest_os_type),
            virtio=defaults.virtio, refs=refs, date=date)
        stored_refs = [{**d.ref, "backupStorageUuid": d.bs.uuid} for d, _, _ in kept]
        tags = {"systemTags": list(request.system_tags), "userTags": list(request.user_tags),
                "tagUuids": list(request.tag_uuids)}
        self.store.put_image(ImageRecord(image_uuid, account_uuid, volume.uuid, request.fingerprint(),
                                         inventory, stored_refs, tags))
        return inventory

    # -- cleanup, restart, delete -----------------------------------------------------------------

    def clean_job(self, job_uuid: str) -> None:
        """Remove every journalled artifact of a job (newest first), then forget them."""
        for artifact in reversed(self.store.artifacts(job_uuid)):
            try:
                remove_artifact(artifact.kind, artifact.spec, self.ceph,
                                self.cluster if artifact.kind.startswith("rbd") else None, self.config)
            except Exception:  # noqa: BLE001 - kept in the journal; the next start retries
                log.exception("job %s: could not remove %s %s", job_uuid, artifact.kind, artifact.spec)
                continue
            self.store.clear_artifact(artifact.id)

    def reconcile(self) -> list[str]:
        """After a restart: jobs that were running failed; remove what they left behind."""
        interrupted = []
        for job in self.store.unfinished_jobs():
            error = ErrorCode(errors.OPERATION_FAILURE, "agent restarted during copy")
            self.store.finish_job(job.uuid, "failed", error.http_status, {"success": False,
                                                                          "error": error.to_json()})
            interrupted.append(job.uuid)
        for job_uuid in dict.fromkeys(a.job_uuid for a in self.store.artifacts()):
            self.clean_job(job_uuid)
        return interrupted

    def get_image(self, image_uuid: str) -> dict[str, Any]:
        record = self.store.get_image(image_uuid)
        if record is None:
            raise errors.not_found(f"image[uuid:{image_uuid}] not found")
        return record.inventory

    def list_images(self) -> list[dict[str, Any]]:
        return [r.inventory for r in self.store.list_images()]

    def delete_image(self, image_uuid: str) -> None:
        record = self.store.get_image(image_uuid)
        if record is None:
            raise errors.not_found(f"image[uuid:{image_uuid}] not found")
        for ref in record.refs:
            try:
                delete_template(ref, self.ceph, self.cluster if ref["kind"] == "rbd" else None, self.config)
            except Exception as e:
                raise errors.operation_failed(
                    f"could not remove image[uuid:{image_uuid}] from backup storage "
                    f"[uuid:{ref['backupStorageUuid']}]", ErrorCode(errors.OPERATION_FAILURE, str(e))) from e
        self.store.delete_image(image_uuid)


def _file_source(volume: Volume, depth: int):
    if volume.format == "qcow2":
        from zsagent.sources.qemu_nbd import QemuNbdSource

        return QemuNbdSource(volume.path, "qcow2", connections=depth)
    from zsagent.sources.raw_file import RawFileSource

    return RawFileSource(volume.path)


def _bs_of(destinations: list[Destination], description: str) -> str | None:
    return next((d.bs.uuid for d in destinations if d.description == description), None)


def _all_failed(volume_uuid: str, causes: list[str]) -> ZsError:
    cause = ErrorCode(errors.OPERATION_FAILURE, causes[0] if causes else "unknown error")
    return errors.operation_failed(f"failed to create data volume template from volume[uuid:{volume_uuid}] "
                                   "on all backup storage. See cause for one of errors", cause)
