"""The agent's records in a RADOS pool, shared by every agent on the cluster (``[store] backend = "rados"``).

Layout: one object, ``zsagent.records``, in the configured pool and namespace; every record is one omap
key of it, its value compact JSON:

- ``image/<uuid>``: an ImageRecord (plus ``created_s``);
- ``job/<uuid>``: a JobRecord's fields without its progress; ``progress/<uuid>``: the progress, under a
  key of its own so that saving it never makes a state change of the job retry;
- ``active/<uuid>``: present while the job is queued or running (value: its owner), so unfinished jobs
  are found without reading every job; ``done/<finished µs, 16 digits>/<uuid>``: finished jobs in the
  order they finished, so expiry reads only the expired ones;
- ``journal/<id, 19 digits>``: an Artifact; ids are unique 63-bit ints, microseconds since 1970 shifted
  left 8 bits plus 8 random bits, so that keys sort by creation.

Why one object: a write op on one object is atomic (all of its steps or none), so every change that
touches several records is one op — recording an image and forgetting the journal entries it now owns,
finishing a job and leaving the active set. Guards make each change exact between agents with no lock:
an insert carries ``omap_cmp(key, "", EQ)`` (an absent key compares equal to the empty value, checked on
the real cluster by tests/contract/test_store.py) and fails with ECANCELED when the key is there; every
change of a job or journal entry is a compare-and-swap on its current value (``omap_cmp(key, old, EQ)``),
read again and retried on ECANCELED. The records are small and few (jobs are forgotten after the
retention, journal entries when their artifact is gone); a single object holds them comfortably.

The front's records (FrontRecords: the management node's calls and local/NFS intents) are about this
host's management-node connection and its local files, so they stay in a local SQLite file
(``<data_dir>/zsagent.db``) whatever the backend: ``local()``.

Failures: a pool that does not exist when the store opens is a ZsError naming the pool and the command
that creates it (the daemon refuses to start, `zsagent check` says it); a write to a full pool (ENOSPC,
EDQUOT) or one no OSD answers within ``[ceph] rados_osd_op_timeout`` is a ZsError SYS.1006 saying which.
Each op is all or nothing, so a failed write leaves the records as they were.
"""

from __future__ import annotations

import errno
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from zsagent import errors
from zsagent.errors import ZsError
from zsagent.store.records import Artifact, ImageRecord, JobRecord
from zsagent.store.sqlite import SqliteStore

RECORDS_OBJECT = "zsagent.records"
"""The object whose omap holds every record."""

SCAN_PAGE_KEYS = 512
"""Omap keys read per round trip when a prefix is scanned."""

CAS_ATTEMPTS = 100
"""Compare-and-swap attempts on one record before giving up (each loses only to another agent's change)."""

UNFINISHED = ("queued", "running")


class RadosStore:
    """The records in ``pool``/``namespace`` through ``cluster`` (a connected rados.Rados, from the
    ``rados`` module ``rados_module``: the real one or zsagent.ceph.fake's). ``owner``: this agent's id,
    stamped on the jobs and journal entries it writes; ``local``: the SQLite store of this host's own
    records (front calls and intents). ``osd_op_timeout_s``: the cluster handle's rados_osd_op_timeout,
    named in errors."""

    shared = True

    def __init__(self, cluster, rados_module, pool: str, namespace: str, owner: str, local: SqliteStore,
                 osd_op_timeout_s: int = 30, close_cluster: bool = True) -> None:
        self.rados = rados_module
        self.cluster = cluster
        self.pool = pool
        self.namespace = namespace
        self.owner = owner
        self.osd_op_timeout_s = osd_op_timeout_s
        self._local = local
        self._close_cluster = close_cluster
        self._closed = threading.Event()
        try:
            self.ioctx = cluster.open_ioctx(pool)
        except rados_module.ObjectNotFound:
            raise ZsError(errors.OPERATION_FAILURE, pool_missing(pool)) from None
        except rados_module.Error as e:
            raise self._failure("opened", e) from e
        self.ioctx.set_namespace(namespace)
        with self._call("opened"):
            op = self.ioctx.create_write_op()
            try:
                op.new(rados_module.LIBRADOS_CREATE_IDEMPOTENT)
                self.ioctx.operate_write_op(op, RECORDS_OBJECT)
            finally:
                self.ioctx.release_write_op(op)

    def local(self) -> SqliteStore:
        return self._local

    def describe(self) -> dict[str, Any]:
        return {"backend": "rados", "pool": self.pool, "namespace": self.namespace, "object": RECORDS_OBJECT,
                "owner": self.owner}

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self.ioctx.close()
        if self._close_cluster:
            self.cluster.shutdown()
        self._local.close()

    # -- images ------------------------------------------------------------------------------------

    def put_image(self, record: ImageRecord, artifacts: Iterable[int] = ()) -> None:
        key = f"image/{record.uuid}"
        value = {"uuid": record.uuid, "account_uuid": record.account_uuid, "volume_uuid": record.volume_uuid,
                 "fingerprint": record.fingerprint, "inventory": record.inventory, "refs": record.refs,
                 "tags": record.tags, "created_s": time.time()}
        if not self._write({key: ""}, {key: _encode(value)}, [_journal_key(i) for i in artifacts]):
            raise errors.invalid(f"resourceUuid {record.uuid} is already used by another image")

    def get_image(self, uuid: str) -> ImageRecord | None:
        raw = self._get([f"image/{uuid}"]).get(f"image/{uuid}")
        return _image(json.loads(raw)) if raw is not None else None

    def list_images(self) -> list[ImageRecord]:
        values = [json.loads(raw) for _, raw in self._scan("image/")]
        values.sort(key=lambda v: (v["created_s"], v["uuid"]))
        return [_image(v) for v in values]

    def delete_image(self, uuid: str) -> None:
        self._write({}, {}, [f"image/{uuid}"])

    # -- jobs --------------------------------------------------------------------------------------

    def add_job(self, uuid: str, volume_uuid: str | None, account_uuid: str | None = None,
                readable_by_uuid: bool = False, webhook: str | None = None) -> None:
        value = {"uuid": uuid, "volume_uuid": volume_uuid, "state": "queued", "result": None, "http_status": None,
                 "errors": [], "point_in_time": None, "created_s": time.time(), "finished_s": None,
                 "account_uuid": account_uuid, "readable_by_uuid": readable_by_uuid, "webhook": webhook,
                 "owner": self.owner}
        key = f"job/{uuid}"
        if not self._write({key: ""}, {key: _encode(value), f"active/{uuid}": self.owner}, []):
            raise errors.invalid(f"job {uuid} already exists")

    def set_job_account(self, uuid: str, account_uuid: str, readable_by_uuid: bool) -> None:
        self._update_job(uuid, lambda job: {**job, "account_uuid": account_uuid,
                                            "readable_by_uuid": readable_by_uuid})

    def set_job_state(self, uuid: str, state: str) -> None:
        self._update_job(uuid, lambda job: {**job, "state": state})

    def finish_job(self, uuid: str, state: str, http_status: int, result: dict[str, Any],
                   errors: list[dict[str, Any]] | None = None, point_in_time: dict[str, Any] | None = None) -> None:
        self._update_job(uuid, lambda job: {**job, "state": state, "http_status": http_status, "result": result,
                                            "errors": errors or [], "point_in_time": point_in_time,
                                            "finished_s": time.time()})

    def fail_job_if_unfinished(self, uuid: str, result: dict[str, Any], http_status: int = 503) -> bool:
        def fail(job: dict[str, Any]) -> dict[str, Any] | None:
            if job["state"] not in UNFINISHED:
                return None
            return {**job, "state": "failed", "http_status": http_status, "result": result, "errors": [],
                    "finished_s": time.time()}

        return self._update_job(uuid, fail)

    def set_job_progress(self, uuid: str, progress: dict[str, Any]) -> None:
        self._write({}, {f"progress/{uuid}": _encode(progress)}, [])

    def get_job(self, uuid: str) -> JobRecord | None:
        values = self._get([f"job/{uuid}", f"progress/{uuid}"])
        raw = values.get(f"job/{uuid}")
        if raw is None:
            return None
        progress = values.get(f"progress/{uuid}")
        return _job(json.loads(raw), json.loads(progress) if progress is not None else None)

    def unfinished_jobs(self, owner: str | None = None) -> list[JobRecord]:
        uuids = [key.removeprefix("active/") for key, value in self._scan("active/")
                 if owner is None or value == owner]
        jobs = [self.get_job(uuid) for uuid in uuids]
        return [j for j in jobs if j is not None and j.state in UNFINISHED and (owner is None or j.owner == owner)]

    def forget_jobs_before(self, finished_before_s: float) -> int:
        cutoff = f"done/{_micros(finished_before_s)}"
        forgotten = 0
        batch: list[str] = []
        for key, _ in self._scan("done/"):
            if key >= cutoff:
                break
            uuid = key.rpartition("/")[2]
            batch += [key, f"job/{uuid}", f"progress/{uuid}"]
            forgotten += 1
            if len(batch) >= 3 * SCAN_PAGE_KEYS:
                self._write({}, {}, batch)
                batch = []
        if batch:
            self._write({}, {}, batch)
        return forgotten

    def _update_job(self, uuid: str, change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> bool:
        """Compare-and-swap the job through ``change`` (None from it: leave the job as it is); keeps the
        active and done indexes in the same op. False when the job is not there or ``change`` said None."""
        key = f"job/{uuid}"
        for _ in range(CAS_ATTEMPTS):
            raw = self._get([key]).get(key)
            if raw is None:
                return False
            old = json.loads(raw)
            new = change(old)
            if new is None:
                return False
            sets, removes = {key: _encode(new)}, []
            if old.get("finished_s") is not None and old["finished_s"] != new.get("finished_s"):
                removes.append(_done_key(uuid, old["finished_s"]))
            if new["state"] not in UNFINISHED:
                removes.append(f"active/{uuid}")
                sets[_done_key(uuid, new["finished_s"] or time.time())] = ""
            if self._write({key: raw}, sets, removes):
                return True
        raise errors.operation_failed(f"job {uuid}: its record changed {CAS_ATTEMPTS} times while it was updated")

    # -- journal of temporary artifacts ------------------------------------------------------------

    def journal(self, job_uuid: str, kind: str, spec: dict[str, Any], volume_uuid: str | None = None,
                image_uuid: str | None = None) -> int:
        value = {"job_uuid": job_uuid, "kind": kind, "spec": spec, "created_s": time.time(),
                 "volume_uuid": volume_uuid, "image_uuid": image_uuid, "attempts": 0, "last_error": None,
                 "owner": self.owner}
        for _ in range(CAS_ATTEMPTS):
            artifact_id = new_journal_id()
            key = _journal_key(artifact_id)
            if self._write({key: ""}, {key: _encode(value)}, []):
                return artifact_id
        raise errors.operation_failed("no free journal id found")  # 8 random bits per microsecond: never

    def artifact_failed(self, artifact_id: int, error: str) -> None:
        key = _journal_key(artifact_id)
        for _ in range(CAS_ATTEMPTS):
            raw = self._get([key]).get(key)
            if raw is None:
                return
            value = json.loads(raw)
            value.update(attempts=value["attempts"] + 1, last_error=error)
            if self._write({key: raw}, {key: _encode(value)}, []):
                return
        raise errors.operation_failed(f"journal entry {artifact_id}: changed {CAS_ATTEMPTS} times while updated")

    def clear_journal(self, job_uuid: str) -> None:
        keys = [key for key, raw in self._scan("journal/") if json.loads(raw)["job_uuid"] == job_uuid]
        if keys:
            self._write({}, {}, keys)

    def clear_artifact(self, artifact_id: int) -> None:
        self._write({}, {}, [_journal_key(artifact_id)])

    def artifacts(self, job_uuid: str | None = None, owner: str | None = None) -> list[Artifact]:
        found = []
        for key, raw in self._scan("journal/"):
            v = json.loads(raw)
            if (job_uuid is None or v["job_uuid"] == job_uuid) and (owner is None or v["owner"] == owner):
                found.append(Artifact(int(key.removeprefix("journal/")), v["job_uuid"], v["kind"], v["spec"],
                                      v["volume_uuid"], v["image_uuid"], v["created_s"], v["attempts"],
                                      v["last_error"], v["owner"]))
        return found

    # -- RADOS -------------------------------------------------------------------------------------

    def _write(self, guards: dict[str, str], sets: dict[str, str], removes: list[str]) -> bool:
        """One atomic write op on the records object: every ``guards`` key must hold exactly that value
        ("": absent), then ``removes`` go and ``sets`` are written. False when a guard failed."""
        with self._call("written"):
            op = self.ioctx.create_write_op()
            try:
                for key, value in guards.items():
                    op.omap_cmp(key, value, self.rados.LIBRADOS_CMPXATTR_OP_EQ)
                if removes:
                    self.ioctx.remove_omap_keys(op, tuple(removes))
                if sets:
                    self.ioctx.set_omap(op, tuple(sets), tuple(v.encode() for v in sets.values()))
                try:
                    self.ioctx.operate_write_op(op, RECORDS_OBJECT)
                except self.rados.OSError as e:
                    if e.errno == errno.ECANCELED:
                        return False
                    raise
            finally:
                self.ioctx.release_write_op(op)
        return True

    def _get(self, keys: list[str]) -> dict[str, str]:
        with self._call("read"):
            op = self.ioctx.create_read_op()
            try:
                found, _ = self.ioctx.get_omap_vals_by_keys(op, tuple(keys))
                self.ioctx.operate_read_op(op, RECORDS_OBJECT)
                return {k: (v or b"").decode() for k, v in found}
            finally:
                self.ioctx.release_read_op(op)

    def _scan(self, prefix: str) -> Iterator[tuple[str, str]]:
        """Every key under ``prefix`` with its value, in key order, SCAN_PAGE_KEYS per round trip."""
        after = ""
        while True:
            with self._call("read"):
                op = self.ioctx.create_read_op()
                try:
                    found, _ = self.ioctx.get_omap_vals(op, after, prefix, SCAN_PAGE_KEYS)
                    self.ioctx.operate_read_op(op, RECORDS_OBJECT)
                    page = [(k, (v or b"").decode()) for k, v in found]  # an empty value comes as None
                finally:
                    self.ioctx.release_read_op(op)
            yield from page
            if len(page) < SCAN_PAGE_KEYS:
                return
            after = page[-1][0]

    @contextmanager
    def _call(self, what: str) -> Iterator[None]:
        try:
            yield
        except self.rados.Error as e:
            if isinstance(e, self.rados.OSError) and e.errno == errno.ECANCELED:
                raise
            raise self._failure(what, e) from e

    def _failure(self, what: str, error: Exception) -> ZsError:
        where = f"the agent's store (RADOS pool {self.pool}, namespace {self.namespace})"
        code = getattr(error, "errno", None)
        if code in (errno.ENOSPC, errno.EDQUOT):
            reason = "the pool is full or over its quota (ceph df; ceph osd pool get-quota " + self.pool + ")"
        elif code == errno.ETIMEDOUT or isinstance(error, self.rados.TimedOut):
            reason = (f"no OSD answered within rados_osd_op_timeout ({self.osd_op_timeout_s} s): an OSD may be "
                      "down or the pool full (ceph health detail)")
        elif code == errno.ENOENT:
            reason = f"the pool or its records object {RECORDS_OBJECT} is gone"
        elif code in (errno.EACCES, errno.EPERM):
            reason = "the client may not use this pool (check its cephx caps)"
        else:
            reason = f"{type(error).__name__}: {error}"
        return errors.operation_failed(f"{where} could not be {what}: {reason}")


def pool_missing(pool: str) -> str:
    """What to say when the store's pool is not there."""
    return (f"the store's RADOS pool {pool} does not exist; create it with `ceph osd pool create {pool}` "
            f"(and `ceph osd pool application enable {pool} zsagent`), or set [store] pool")


def new_journal_id() -> int:
    """A 63-bit id, unique with high probability and ordered by creation (µs since 1970 << 8 | 8 random
    bits); the insert's guard makes it unique for sure."""
    return (time.time_ns() // 1000) << 8 | secrets.randbits(8)


def _journal_key(artifact_id: int) -> str:
    return f"journal/{artifact_id:019d}"


def _micros(epoch_s: float) -> str:
    return f"{int(epoch_s * 1_000_000):016d}"


def _done_key(uuid: str, finished_s: float) -> str:
    return f"done/{_micros(finished_s)}/{uuid}"


def _encode(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _image(v: dict[str, Any]) -> ImageRecord:
    return ImageRecord(v["uuid"], v["account_uuid"], v["volume_uuid"], v["fingerprint"], v["inventory"], v["refs"],
                       v["tags"])


def _job(v: dict[str, Any], progress: dict[str, Any] | None) -> JobRecord:
    return JobRecord(v["uuid"], v["volume_uuid"], v["state"], v["result"], v["http_status"], v["errors"],
                     v["created_s"], v["finished_s"], v["point_in_time"], v["account_uuid"], v["readable_by_uuid"],
                     v["webhook"], v["owner"], progress)
