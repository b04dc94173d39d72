"""The one code path behind the HTTP API and the CLI: resolve, open the source, copy once, record.

``TemplateService.create_template`` turns a checked request into an ImageInventory or raises ZsError.
Two requests for one volume are serialized; at most ``agent.max_jobs`` copies run at once, the rest
queue. Everything a job creates (snapshot, temporary and final names of each template, changes to a
running domain) is journalled by the code that creates it, before it exists; the image record and its
templates' entries are written in one transaction, so a restart (``reconcile``) removes exactly what no
client was told about.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from zsagent import cleanup, errors, faults
from zsagent.admission import Admission
from zsagent.catalog import Catalog, Volume
from zsagent.ceph import health, open_backend
from zsagent.ceph.snapshots import JOURNAL_KIND as SNAPSHOT_KIND
from zsagent.config import BackupStorage, Config
from zsagent.copy.errors import AllSinksFailed, CopyCancelled, CopyError
from zsagent.copy.pipeline import CopyResult
from zsagent.errors import ErrorCode, ZsError
from zsagent.inventory import backup_storage_ref, image_inventory, zstack_date
from zsagent.janitor import Janitor
from zsagent.jobs import Job, JobState
from zsagent.metrics import Metrics
from zsagent.ownership import ADMIN_ACCOUNT_UUID, may_access, operation_denied
from zsagent.qemu_img import rbd_filename
from zsagent.request import CreateRequest
from zsagent.sources.open import PointInTimeOptions, open_source
from zsagent.storages import KINDS, Destination, Runtime, TemplateJob, TemplateTags
from zsagent.store import ImageRecord, JobJournal, JobRecord, JournalScope, Store
from zsagent.transfer import transfer
from zsagent.virt import VirtError
from zsagent.volume_owner import ManagementNodeVolumes, VolumeOwnership

log = logging.getLogger(__name__)

INTERRUPTED = ErrorCode(errors.OPERATION_FAILURE, "agent restarted during copy")
"""How a job that a restart ended fails."""


@dataclass(frozen=True)
class PathCopy:
    """A copy whose source and destination a management node's agent command names by path (zsagent.front).

    volume: the volume, found by the catalog; snapshot: the RBD snapshot to read, which exists already and
    is not ours (neither taken nor removed; None for file volumes); image_uuid, account_uuid, name,
    description: the image record; destination: makes the one Destination from the template job, the
    journal scope its sink records into, and the job's journal (for what belongs to the job itself, e.g.
    a key file: removed with the job's leftovers, after the destination's).
    """

    volume: Volume
    image_uuid: str
    account_uuid: str
    name: str
    description: str | None
    destination: Callable[[TemplateJob, JournalScope, JobJournal], Destination]
    snapshot: str | None = None


class TemplateService:
    def __init__(self, config: Config, store: Store, metrics: Metrics | None = None) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics or Metrics()
        uses_ceph = any(s.type == "ceph" for s in (*config.primary_storage, *config.backup_storage))
        self.runtime = Runtime(config, open_backend(config.ceph) if uses_ceph else None)
        self.admission = Admission(config.agent.max_jobs)
        self._active: set[str] = set()  # jobs running their copy in this process: their artifacts are theirs
        self._active_lock = threading.Lock()
        self.janitor = Janitor(store, self.runtime, self.active_jobs, self.metrics)
        self._create_guard = threading.Lock()  # makes "check resourceUuid, then claim it" atomic
        self._claimed: set[str] = set()
        self.volume_owner = VolumeOwnership(
            config.auth.unknown_volume_owner,
            ManagementNodeVolumes(config.auth.zstack_url) if config.auth.zstack_url else None)

    @property
    def ceph(self):
        return self.runtime.ceph

    @property
    def cluster(self):
        """The connected cluster handle (lazy: a file-only agent never connects), None without Ceph."""
        if self.ceph is None:
            return None
        try:
            return self.runtime.cluster
        except Exception as e:
            raise errors.operation_failed(self.runtime.unreachable or f"cannot connect to Ceph: {e}") from e

    def active_jobs(self) -> set[str]:
        with self._active_lock:
            return set(self._active)

    def close(self) -> None:
        self.janitor.stop()
        self.runtime.close()

    @property
    def catalog(self) -> Catalog:
        return Catalog(self.config, self.ceph, lambda: self.cluster)

    # -- the call ----------------------------------------------------------------------------------

    def create_template(self, request: CreateRequest, account_uuid: str, job: Job | None = None, *,
                        session_uuid: str | None = None) -> dict[str, Any]:
        """Make the template and return its ImageInventory; raises ZsError. ``account_uuid``: the caller's
        account, who must own the volume (zsagent.volume_owner; ``session_uuid``, when the caller came with
        one, lets the management node be asked) and will own the image."""
        job = job or Job()
        image_uuid = request.resource_uuid or uuidlib.uuid4().hex
        existing = self._claim(image_uuid, request, account_uuid)
        if existing is not None:
            job.phase = "done"
            return existing
        try:
            volume = self.catalog.find_volume(request.volume_uuid)
            if volume is None:
                raise errors.not_found(f"volume[uuid:{request.volume_uuid}] is not on any configured "
                                       "primary storage")
            self.volume_owner.check(volume, account_uuid, session_uuid)
            storages = self._backup_storages(request, volume)
            self.metrics.queued.inc()
            queued = True
            try:
                reason = lambda: job.cancel_reason  # noqa: E731

                def waiting_for(agent: str | None) -> None:  # another agent copies this volume now
                    job.phase, job.waiting_for = "queued", agent or "another agent"

                with self.admission.volume(volume.uuid, job.cancel, reason, waiting_for, job.cancel_with):
                    job.waiting_for = None
                    # a retry first removes what an earlier attempt on this volume or template left
                    self.janitor.settle(volume.uuid, image_uuid, self.config.agent.cleanup_wait_s, job.cancel)
                    with self.admission.slot(job.cancel, reason):
                        self.metrics.queued.dec()
                        queued = False
                        job.set_state(JobState.RUNNING)
                        with self.metrics.running.track_inprogress():
                            return self._run(request, account_uuid, volume, storages, image_uuid, job)
            finally:
                if queued:
                    self.metrics.queued.dec()
        finally:
            with self._create_guard:
                self._claimed.discard(image_uuid)

    def create_at(self, order: PathCopy, job: Job | None = None) -> dict[str, Any]:
        """The entry for commands that name paths (zsagent.front): the same admission, journal, copy,
        record and cleanup as ``create_template``; returns the ImageInventory or raises ZsError."""
        job = job or Job()
        volume = order.volume
        request = CreateRequest(order.name, order.description, volume.uuid, None, order.image_uuid, (), (), ())
        # The management node owns these templates and deletes them itself: a record of the same uuid is
        # of one it has deleted since; the copy still never overwrites a template that is there.
        with self._create_guard:
            if order.image_uuid not in self._claimed:
                self.store.delete_image(order.image_uuid)
        existing = self._claim(order.image_uuid, request, order.account_uuid)
        if existing is not None:
            job.phase = "done"
            return existing
        self.metrics.queued.inc()
        queued = True
        try:
            with self.admission.volume(volume.uuid), self.admission.slot(job.cancel, lambda: job.cancel_reason):
                self.metrics.queued.dec()
                queued = False
                job.set_state(JobState.RUNNING)
                with self.metrics.running.track_inprogress():
                    return self._run(request, order.account_uuid, volume, [], order.image_uuid, job, order)
        finally:
            if queued:
                self.metrics.queued.dec()
            with self._create_guard:
                self._claimed.discard(order.image_uuid)

    def _claim(self, image_uuid: str, request: CreateRequest, account_uuid: str) -> dict[str, Any] | None:
        """Idempotency: the same resourceUuid with the same parameters returns the existing image, to its
        own account (or the admin); to another it is a uuid in use, as a different request's is."""
        with self._create_guard:
            record = self.store.get_image(image_uuid)
            if record is not None:
                if record.fingerprint == request.fingerprint() and may_access(record.account_uuid, account_uuid):
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
        for bs in sorted(self.config.backup_storage, key=lambda b: not b.default):
            free = KINDS[bs.type].free_bytes(bs)
            if bs.default or free is None or free > volume.size:
                return [bs]
        raise errors.operation_failed("cannot find proper backup storage: none is the default and none "
                                      f"has room for {volume.size} bytes")

    def _run(self, request: CreateRequest, account_uuid: str, volume: Volume, storages: list[BackupStorage],
             image_uuid: str, job: Job, order: PathCopy | None = None) -> dict[str, Any]:
        with self._active_lock:
            self._active.add(job.uuid)
        try:
            return self._run_active(request, account_uuid, volume, storages, image_uuid, job, order)
        finally:
            with self._active_lock:
                self._active.discard(job.uuid)
            if self.store.artifacts(job.uuid):
                self.janitor.wake(job.uuid)  # what this job could not remove is retried in the background

    def _run_active(self, request: CreateRequest, account_uuid: str, volume: Volume,
                    storages: list[BackupStorage], image_uuid: str, job: Job,
                    order: PathCopy | None = None) -> dict[str, Any]:
        journal = JobJournal(self.store, job.uuid, volume.uuid, image_uuid)
        tags = TemplateTags(mode=request.system_tag("ceph::copyMode"), format=request.system_tag("template::format"),
                            compression=request.system_tag("template::compression"),
                            bandwidth=request.system_tag("sftp::bandwidth"))
        template = TemplateJob(volume, image_uuid, account_uuid, tags,
                               snapshot=(order.snapshot if order else image_uuid) if volume.kind == "ceph" else None,
                               pipeline=self.config.pipeline, spool_dir=self.config.agent.spool_path)
        where = {"job": job.uuid, "image": image_uuid, "volume": volume.uuid}
        job.phase, job.bytes_total = "snapshot", volume.size
        destinations: list[Destination] = []
        try:
            if order is None:
                destinations = self._destinations(storages, template, journal, job)
            else:
                destinations = [self._order_destination(order, template, journal)]
            log.info("job %s: copying volume %s (%d bytes) into image %s on %s", job.uuid, volume.uuid, volume.size,
                     image_uuid, [d.install_path for d in destinations], extra=where)
            started = time.monotonic()
            source_journal = journal.scope()
            result = self._copy(template, destinations, source_journal, job,
                                require_quiesce=request.system_tag("consistency") == "quiesced",
                                existing_snapshot=order is not None)
            self._count(result, time.monotonic() - started)
            job.phase = "publishing"
            inventory = self._record(request, template, destinations, result, source_journal, job)
            self.clean_job(job.uuid)  # what failed destinations could not remove themselves
            job.phase = "done"
            log.info("job %s: image %s from volume %s ready on %s, md5 %s, %s", job.uuid, image_uuid, volume.uuid,
                     [r["backupStorageUuid"] for r in inventory["backupStorageRefs"]], inventory["md5Sum"],
                     (job.point_in_time or {}).get("consistency", "stopped"), extra=where)
            return inventory
        except BaseException as e:
            job.phase = "failed"
            log.warning("job %s: image %s from volume %s failed: %s", job.uuid, image_uuid, volume.uuid, e,
                        extra=where)
            if self.ceph is not None and health.timed_out(e):
                self.janitor.wake()  # each removal would wait out the timeout again: in the background
            else:
                self.clean_job(job.uuid)
            raise
        finally:
            for dest in destinations:
                dest.close()

    def _destinations(self, storages: list[BackupStorage], template: TemplateJob, journal: JobJournal,
                      job: Job) -> list[Destination]:
        """One Destination per storage, each with a journal scope of its own; a storage that cannot even
        be opened fails alone (a ZsError, e.g. a bad tag, fails the job)."""
        destinations = []
        for bs in storages:
            scope = journal.scope()
            try:
                dest = KINDS[bs.type].destination(bs, template, scope, self.runtime)
            except ZsError:
                raise
            except Exception as e:  # noqa: BLE001 - this storage fails alone
                job.errors.append({"backupStorageUuid": bs.uuid, "error": str(e)})
                continue
            dest.journal = scope
            destinations.append(dest)
        if not destinations:
            raise _all_failed(template.volume.uuid, [e["error"] for e in job.errors])
        return destinations

    @staticmethod
    def _order_destination(order: PathCopy, template: TemplateJob, journal: JobJournal) -> Destination:
        scope = journal.scope()
        try:
            dest = order.destination(template, scope, journal)
        except ZsError:
            raise
        except (ValueError, OSError) as e:
            raise errors.operation_failed(f"cannot prepare the template's destination: {e}") from e
        dest.journal = scope
        return dest

    def _copy(self, template: TemplateJob, destinations: list[Destination], journal: JournalScope, job: Job,
              require_quiesce: bool = False, existing_snapshot: bool = False) -> CopyResult:
        volume = template.volume
        sinks = [d.sink for d in destinations if d.sink is not None]
        converters = [d.converter for d in destinations if d.converter is not None]

        def progress(done: int, total: int) -> None:
            job.phase, job.bytes_done, job.bytes_total = "copying", done, total

        def on_report(report: dict[str, Any]) -> None:
            job.point_in_time = report

        virt = self.config.virt
        options = PointInTimeOptions(enabled=virt.enabled, uri=virt.uri, runtime_dir=virt.runtime_dir,
                                     freeze_timeout_s=virt.freeze_timeout_s, require_quiesce=require_quiesce,
                                     connections=self.config.pipeline.depth)
        # The raw content's MD5 is only needed for raw templates; qcow2 sinks hash their own bytes.
        hash_content = any(d.format == "raw" for d in destinations if d.sink is not None)
        try:
            with open_source(volume, journal, snapshot=template.snapshot, ceph=self.ceph,
                             cluster=self.cluster if volume.kind == "ceph" else None,
                             qemu_input=self._rbd_qemu_input(template), virt=options, on_report=on_report,
                             existing_snapshot=existing_snapshot) as source:
                faults.hit("snapshot-taken")
                return transfer(source, sinks, converters, self.config.pipeline, progress=progress,
                                cancel=job.cancel, hash_content=hash_content)
        except VirtError as e:
            raise errors.operation_failed(f"cannot get a consistent point in time of volume[uuid:{volume.uuid}]",
                                          ErrorCode(errors.OPERATION_FAILURE, str(e))) from e
        except CopyCancelled as e:
            raise ZsError(errors.CANCELLED, f"creating the template was cancelled: {job.cancel_reason}") from e
        except AllSinksFailed as e:
            job.errors += [{"backupStorageUuid": _bs_of(destinations, err.sink), "error": str(err)}
                           for err in e.errors]
            raise _all_failed(volume.uuid, [self._explained(err, str(err)) for err in e.errors]) from e
        except CopyError as e:
            raise errors.operation_failed(f"copying volume[uuid:{volume.uuid}] failed",
                                          ErrorCode(errors.OPERATION_FAILURE, self._explained(e, str(e)))) from e
        except ZsError:
            raise
        except Exception as e:
            if self.ceph is not None and isinstance(e, (self.ceph.rbd.Error, self.ceph.rados.Error)):
                raise errors.operation_failed(f"Ceph refused an operation on volume[uuid:{volume.uuid}]",
                                              ErrorCode(errors.OPERATION_FAILURE,
                                                        self._explained(e, f"{type(e).__name__}: {e}"))) from e
            raise

    def _explained(self, error: BaseException, message: str) -> str:
        """``message``, and when Ceph timed out or is full, why (the cluster's own health checks)."""
        if self.ceph is None or not (health.timed_out(error) or health.out_of_space(error)):
            return message
        try:
            cluster = self.runtime.cluster
        except Exception:  # noqa: BLE001
            cluster = None
        return f"{message}: {health.explain(error, cluster, self.config.ceph.rados_osd_op_timeout)}"

    def _rbd_qemu_input(self, template: TemplateJob) -> tuple[str, str] | None:
        """How qemu-img reads the volume's snapshot (None on the fake backend, which qemu cannot read)."""
        ceph, volume = self.config.ceph, template.volume
        if self.ceph is None or self.ceph.is_fake or template.snapshot is None:
            return None
        return "raw", rbd_filename(volume.pool, volume.image, template.snapshot, conf=ceph.conf,
                                   client=ceph.client, keyring=ceph.keyring)

    def _count(self, result: CopyResult, seconds: float) -> None:
        self.metrics.bytes_read.inc(result.stats.bytes_read)
        self.metrics.bytes_written.inc(result.stats.bytes_written)
        self.metrics.bytes_hashed.inc(result.size)
        self.metrics.copy_seconds.observe(seconds)
        self.metrics.throughput.observe(result.size / max(seconds, 1e-6))

    def _record(self, request: CreateRequest, template: TemplateJob, destinations: list[Destination],
                result: CopyResult, source_journal: JournalScope, job: Job) -> dict[str, Any]:
        """Store the image with one ref per published destination, in request order; the journal entries
        of what the image now owns (its templates, a clone's parent snapshot) go in the same transaction."""
        date, image_uuid, volume = zstack_date(), template.image_uuid, template.volume
        refs, kept = [], []
        for dest in destinations:
            published = result.result_of(dest.endpoint)
            if published is not None:
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
        owned = [i for d, _, _ in kept for i in d.journal.ids]
        owned += [i for i, kind in source_journal.ids.items() if kind == SNAPSHOT_KIND]  # a clone's parent
        faults.hit("record-before")
        self.store.put_image(ImageRecord(image_uuid, template.account_uuid, volume.uuid, request.fingerprint(),
                                         inventory, stored_refs, tags), owned)
        return inventory

    # -- cleanup, restart, delete -----------------------------------------------------------------

    def clean_job(self, job_uuid: str) -> None:
        """Remove every journalled artifact of a job (newest first), then forget them; what cannot be
        removed now stays journalled and the janitor retries it."""
        for artifact in reversed(self.store.artifacts(job_uuid)):
            self.janitor.remove(artifact)

    def fail_interrupted(self, owns: Callable[[str], bool] | None = None) -> list[JobRecord]:
        """After a restart: jobs that were queued or running failed (SYS.1006 "agent restarted during
        copy"); returns them as they are stored now (with their web hooks). ``owns``: which jobs are this
        process's (`serve` and `front` may share a store); None: all. A store shared with other agents
        (RADOS) gives only this agent's own jobs: the others' are theirs, or their takeover's."""
        interrupted = []
        for job in self.store.unfinished_jobs(owner=self.store.owner if self.store.shared else None):
            if owns is not None and not owns(job.uuid):
                continue
            # atomic: another agent's takeover may fail the same job at the same time; one of them tells it
            if self.store.fail_job_if_unfinished(job.uuid, {"error": INTERRUPTED.to_json()}, 503):
                interrupted.append(self.store.get_job(job.uuid))
        return [j for j in interrupted if j is not None]

    def reconcile(self, owns: Callable[[str], bool] | None = None) -> list[str]:
        """After a restart, at once: fail interrupted jobs and try once to remove what they left behind,
        including a template published but never recorded (its client never got a success); ``owns`` as
        for fail_interrupted. The daemon does the removal in the background instead (``janitor``)."""
        interrupted = [job.uuid for job in self.fail_interrupted(owns)]
        self.janitor.sweep(lambda artifact: owns is None or owns(artifact.job_uuid), force=True)
        return interrupted

    def get_image(self, image_uuid: str, account_uuid: str | None = None) -> dict[str, Any]:
        """One image's inventory; another account's image (unless ``account_uuid`` is the admin or None)
        is not found, as it is not listed (``list_images``)."""
        record = self.store.get_image(image_uuid)
        if record is None or account_uuid not in (None, ADMIN_ACCOUNT_UUID, record.account_uuid):
            raise errors.not_found(f"image[uuid:{image_uuid}] not found")
        return record.inventory

    def list_images(self, account_uuid: str | None = None) -> list[dict[str, Any]]:
        """Every image's inventory (``account_uuid`` None: the operator's view, for the CLI), or those the
        account owns; the admin account sees all, as in ZStack (zstackio/zstack
        identity/src/main/java/org/zstack/identity/AccountManagerImpl.java l.208-209 ``isAdmin``;
        search/src/main/java/org/zstack/zql/ZQL.java l.501: no ownership filter for the admin)."""
        records = self.store.list_images()
        if account_uuid is not None and account_uuid != ADMIN_ACCOUNT_UUID:
            records = [r for r in records if r.account_uuid == account_uuid]
        return [r.inventory for r in records]

    def delete_image(self, image_uuid: str, missing_ok: bool = False, account_uuid: str | None = None) -> None:
        """Remove the image's templates from every backup storage, then its record; an image that is not
        there is SYS.1003, or nothing to do with ``missing_ok``; another account's (unless ``account_uuid``
        is the admin or None) is ID.1002."""
        record = self.store.get_image(image_uuid)
        if record is None:
            if missing_ok:
                return
            raise errors.not_found(f"image[uuid:{image_uuid}] not found")
        if account_uuid is not None and not may_access(record.account_uuid, account_uuid):
            raise operation_denied(image_uuid, "ImageVO", account_uuid)
        for ref in record.refs:
            try:
                cleanup.remove(ref["kind"], ref, self.runtime)
            except Exception as e:
                raise errors.operation_failed(
                    f"could not remove image[uuid:{image_uuid}] from backup storage "
                    f"[uuid:{ref['backupStorageUuid']}]", ErrorCode(errors.OPERATION_FAILURE, str(e))) from e
        self.store.delete_image(image_uuid)


def _bs_of(destinations: list[Destination], endpoint: object) -> str | None:
    return next((d.bs.uuid for d in destinations if d.endpoint is endpoint), None)


def _all_failed(volume_uuid: str, causes: list[str]) -> ZsError:
    cause = ErrorCode(errors.OPERATION_FAILURE, causes[0] if causes else "unknown error")
    return errors.operation_failed(f"failed to create data volume template from volume[uuid:{volume_uuid}] "
                                   "on all backup storage. See cause for one of errors", cause)
