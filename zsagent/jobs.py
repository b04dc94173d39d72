"""Jobs: every create request runs as one, synchronous callers just wait for it.

A job's life: ``queued`` (waiting for its volume or for a copy slot) -> ``running`` (a slot is taken) ->
``done`` | ``failed`` | ``cancelled``. The store holds the same state. A job's answer is ZStack's
ApiResponse: the event's fields on success (``{"inventory": ...}``, ``{}`` for a delete), ``{"error":
ErrorCode}`` on failure (zstackio/zstack rest/src/main/java/org/zstack/rest/ApiResponse.java; RestServer.java
handleJobQuery l.705-740: no "success" key). It stays pollable for ``retention_s`` after it ends (ZStack
keeps them 3 h), then it is forgotten. A web hook, when given, gets the same body POSTed with
``X-Job-UUID`` and ``X-Job-Success`` (RestServer.java callWebHook l.322-350). A job that outlives its
``timeout_s`` (ZStack's API timeout) is cancelled, cleaned up by its work, and fails with SYS.1001.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from zsagent import errors
from zsagent.errors import ErrorCode, ZsError
from zsagent.metrics import Metrics
from zsagent.ownership import may_access, may_read_job
from zsagent.store import JobRecord, Store

log = logging.getLogger(__name__)

EXPIRE_SWEEP_S = 60.0
"""Seconds between two removals of expired job records from the store."""

PROGRESS_SAVE_S = 1.0
"""Seconds between two saves of a running job's progress to the store (also saved at each state change),
so that a poll on another agent sharing the store sees it move, without a write per chunk copied."""


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass
class Job:
    """One request's job, shared by the API (progress, cancel, the answer) and the service (the work).

    state: see the module docstring; phase: what it is doing (queued | snapshot | copying | publishing |
    done | failed); bytes_done / bytes_total: the copy's progress; cancel / cancel_reason: the switch the
    copy polls; errors: per backup storage failures, also on success; point_in_time: how consistent the
    copy is (zsagent.virt); webhook: where the result is POSTed; webhook_body: makes the web hook's body
    from ``body`` (the API adds ZStack's schema map there when the request asked for it); timeout_s: the
    API timeout (None: none); done: set once ``body`` (the answer) is there; finished_epoch: when, in
    seconds since 1970; on_done: called with the job once it is finished and stored (e.g. the management
    node's callback, zsagent.front).
    """

    uuid: str = field(default_factory=lambda: uuidlib.uuid4().hex)
    state: JobState = JobState.QUEUED
    phase: str = "queued"
    waiting_for: str | None = None  # while queued behind another agent's copy of the volume: its agent id
    bytes_done: int = 0
    bytes_total: int = 0
    cancel: threading.Event = field(default_factory=threading.Event)
    cancel_reason: str = "cancelled by request"
    errors: list[dict[str, Any]] = field(default_factory=list)
    point_in_time: dict[str, Any] | None = None
    webhook: str | None = None
    webhook_body: Callable[[dict[str, Any]], dict[str, Any]] | None = field(default=None, repr=False)
    timeout_s: float | None = None
    timed_out: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    body: dict[str, Any] | None = None
    finished_epoch: float | None = None
    on_state: Callable[[JobState], None] | None = field(default=None, repr=False)
    on_done: Callable[[Job], None] | None = field(default=None, repr=False)
    account_uuid: str | None = None
    readable_by_uuid: bool = False

    def set_state(self, state: JobState) -> None:
        self.state = state
        if self.on_state is not None:
            self.on_state(state)

    def cancel_with(self, reason: str) -> None:
        self.cancel_reason = reason
        self.cancel.set()

    @property
    def success(self) -> bool:
        return self.body is not None and _succeeded(self.body)

    @property
    def percent(self) -> int:
        if self.phase == "done":
            return 100
        if not self.bytes_total:
            return 0
        return min(99, int(100 * self.bytes_done / self.bytes_total))

    def progress_json(self) -> dict[str, Any]:
        progress = {"phase": self.phase, "percent": self.percent, "bytesDone": self.bytes_done,
                    "bytesTotal": self.bytes_total}
        if self.phase == "queued" and self.waiting_for:
            progress["waitingFor"] = self.waiting_for
        return progress


def post_webhook(url: str, job_uuid: str, success: bool, body: dict[str, Any], attempts: int = 3,
                 backoff_s: float = 1.0) -> bool:
    """POST a job's answer as ZStack does (RestServer.java callWebHook l.322-350: the body, with
    ``X-Job-UUID`` and ``X-Job-Success``); retried with backoff; True when the hook took it."""
    headers = {"X-Job-UUID": job_uuid, "X-Job-Success": "true" if success else "false"}
    for attempt in range(attempts):
        try:
            answer = httpx.post(url, json=body, headers=headers, timeout=10)
            if answer.status_code < 300:
                return True
            reason = f"HTTP {answer.status_code}"
        except httpx.HTTPError as e:
            reason = type(e).__name__
        log.warning("job %s: web hook attempt %d failed: %s", job_uuid, attempt + 1, reason)
        time.sleep(backoff_s * 2 ** attempt)
    return False

ANYONE = object()
"""For JobManager.view/cancel: the agent itself asks, no account check."""


Work = Callable[[Job], dict[str, Any]]
"""Does the job and returns the answer's fields (e.g. ``{"inventory": ...}``), or raises ZsError."""


def _succeeded(body: dict[str, Any]) -> bool:
    """A ZStack answer failed when it carries an error (records of older agents also say "success")."""
    return bool(body.get("success", "error" not in body))


@dataclass(frozen=True)
class JobView:
    """A job as the API shows it: running, or finished with its body."""

    uuid: str
    running: bool
    success: bool
    body: dict[str, Any] | None
    progress: dict[str, Any] | None
    account_uuid: str | None = None
    readable_by_uuid: bool = False

    def readable_by(self, caller_uuid: str | None) -> bool:
        """``caller_uuid`` may see this job (zsagent.ownership.may_read_job)."""
        return may_read_job(self.account_uuid, self.readable_by_uuid, caller_uuid)


class JobManager:
    def __init__(self, store: Store, retention_s: int = 3 * 3600, webhook_attempts: int = 3,
                 webhook_backoff_s: float = 1.0, metrics: Metrics | None = None) -> None:
        self.store = store
        self.metrics = metrics
        self.retention_s = retention_s
        self.webhook_attempts = webhook_attempts
        self.webhook_backoff_s = webhook_backoff_s
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._next_sweep = 0.0  # time.monotonic() of the next DELETE of expired job records
        self._threads: set[threading.Thread] = set()
        self._saver: threading.Thread | None = None  # saves running jobs' progress (_save_progress_loop)
        self._saved_progress: dict[str, dict[str, Any]] = {}
        self.end_once = False  # see _record_end

    def submit(self, job: Job, work: Work, volume_uuid: str | None = None) -> Job:
        """Run ``work(job)`` on a thread of its own; the job stays queued until the work says it runs."""
        job.on_state = lambda state: self._state_changed(job, state)
        self.store.add_job(job.uuid, volume_uuid, job.account_uuid, job.readable_by_uuid, job.webhook)
        with self._lock:
            self._jobs[job.uuid] = job
        thread = threading.Thread(target=self._run, args=(job, work), name=f"job-{job.uuid[:8]}")
        with self._lock:
            self._threads.add(thread)
            if self._saver is None:
                self._saver = threading.Thread(target=self._save_progress_loop, name="job-progress", daemon=True)
                self._saver.start()
        thread.start()
        return job

    def _state_changed(self, job: Job, state: JobState) -> None:
        self.store.set_job_state(job.uuid, state)
        self._save_progress(job)

    def _save_progress(self, job: Job) -> None:
        """Store the job's progress when it changed since the last save; a store that fails is only logged
        (the copy goes on, a poll elsewhere sees older progress)."""
        progress = job.progress_json()
        if self._saved_progress.get(job.uuid) == progress:
            return
        try:
            self.store.set_job_progress(job.uuid, progress)
        except ZsError as e:
            log.warning("job %s: its progress could not be saved: %s", job.uuid, e)
            return
        self._saved_progress[job.uuid] = progress

    def _save_progress_loop(self) -> None:
        """Every PROGRESS_SAVE_S, save the progress of the running jobs; ends when none runs."""
        while True:
            time.sleep(PROGRESS_SAVE_S)
            with self._lock:
                running = [j for j in self._jobs.values() if not j.done.is_set()]
                if not running:
                    self._saver = None
                    return
            for job in running:
                self._save_progress(job)

    def _run(self, job: Job, work: Work) -> None:
        timer = None
        if job.timeout_s is not None:
            timer = threading.Timer(job.timeout_s, self._time_out, args=(job,))
            timer.daemon = True
            timer.start()
        try:
            body = work(job)
        except ZsError as e:
            error = e.error
            if job.timed_out and error.code == errors.CANCELLED:
                error = ErrorCode(errors.TIMEOUT, f"the job did not finish within its API timeout of "
                                                  f"{job.timeout_s:g} s; it was stopped and what it made removed")
            body = {"error": error.to_json()}
        except Exception as e:  # noqa: BLE001 - reported as SYS.1000, logged with its traceback
            log.exception("job %s failed unexpectedly", job.uuid)
            body = {"error": ErrorCode(errors.INTERNAL_ERROR, f"{type(e).__name__}: {e}").to_json()}
        finally:
            if timer is not None:
                timer.cancel()
        job.body, job.finished_epoch = body, time.time()
        outcome = "success" if job.success else body["error"]["code"]
        if job.success:
            job.state = JobState.DONE
        else:
            job.state = JobState.CANCELLED if outcome == errors.CANCELLED else JobState.FAILED
        self._save_progress(job)
        self._saved_progress.pop(job.uuid, None)
        told = self._record_end(job)
        if self.metrics is not None:
            self.metrics.jobs.labels(outcome).inc()
        job.done.set()
        log.info("job %s finished: %s", job.uuid, outcome)
        if job.webhook and told:
            self._post_webhook(job)
        if job.on_done is not None:
            try:
                job.on_done(job)
            except Exception:  # noqa: BLE001 - the job is finished and stored whatever its listener does
                log.exception("job %s: its completion listener failed", job.uuid)
        with self._lock:
            self._threads.discard(threading.current_thread())

    def _record_end(self, job: Job) -> bool:
        """Store the job's end; False when a failure came too late: with ``end_once`` (a store several
        agents share), another agent's takeover may have failed the job already (zsagent.cluster.takeover),
        and its answer stands (this one's web hook is not sent)."""
        status = 200 if job.success else 503
        if self.end_once and not job.success and not self.store.fail_job_if_unfinished(job.uuid, job.body, status):
            record = self.store.get_job(job.uuid)
            if record is not None and record.result is not None:
                job.body = record.result
            return False
        self.store.finish_job(job.uuid, job.state, status, job.body, job.errors, job.point_in_time)
        return True

    @staticmethod
    def _time_out(job: Job) -> None:
        if not job.done.is_set():
            job.timed_out = True
            job.cancel_with(f"its API timeout of {job.timeout_s:g} s ran out")

    def _post_webhook(self, job: Job) -> None:
        body = job.webhook_body(job.body) if job.webhook_body is not None else job.body
        post_webhook(job.webhook, job.uuid, job.success, body, self.webhook_attempts, self.webhook_backoff_s)

    def tell_interrupted(self, records: list[JobRecord]) -> None:
        """POST the failure of jobs a restart ended to their web hooks, in the background."""
        for record in records:
            if record.webhook and record.result is not None:
                threading.Thread(target=post_webhook, name=f"webhook-{record.uuid[:8]}", daemon=True,
                                 args=(record.webhook, record.uuid, False, record.result, self.webhook_attempts,
                                       self.webhook_backoff_s)).start()

    def set_owner(self, job: Job, account_uuid: str, readable_by_uuid: bool) -> None:
        """The job's account, once its credentials are checked (a session is checked by the job)."""
        if (job.account_uuid, job.readable_by_uuid) != (account_uuid, readable_by_uuid):
            job.account_uuid, job.readable_by_uuid = account_uuid, readable_by_uuid
            self.store.set_job_account(job.uuid, account_uuid, readable_by_uuid)

    def view(self, job_uuid: str, caller_uuid: str | None | object = ANYONE) -> JobView | None:
        """The job, or None when unknown, expired, or not ``caller_uuid``'s to see (None: a caller without
        credentials; ANYONE: the agent itself)."""
        self.expire()
        with self._lock:
            job = self._jobs.get(job_uuid)
        if job is not None:
            running = not job.done.is_set()
            view = JobView(job.uuid, running, job.success, job.body, job.progress_json(), job.account_uuid,
                           job.readable_by_uuid)
        else:
            record = self.store.get_job(job_uuid)
            if record is None:
                return None
            if record.result is None:
                if record.state not in (JobState.QUEUED, JobState.RUNNING):
                    return None
                # running on another agent that shares the store: its progress as that agent last saved it
                progress = record.progress or {"phase": record.state, "percent": 0, "bytesDone": 0, "bytesTotal": 0}
                view = JobView(record.uuid, True, False, None, progress, record.account_uuid, record.readable_by_uuid)
            elif record.finished_epoch is not None and record.finished_epoch < time.time() - self.retention_s:
                return None  # expired (the store forgets it at the next sweep)
            else:
                view = JobView(record.uuid, False, _succeeded(record.result), record.result, None,
                               record.account_uuid, record.readable_by_uuid)
        if caller_uuid is not ANYONE and not view.readable_by(caller_uuid):  # type: ignore[arg-type]
            return None
        return view

    def cancel(self, job_uuid: str, reason: str = "cancelled by request",
               caller_uuid: str | None | object = ANYONE) -> bool:
        """Ask a running job to stop; False when it is not running here, or not ``caller_uuid``'s (its
        owner's or the admin's) to stop."""
        with self._lock:
            job = self._jobs.get(job_uuid)
        if job is None or job.done.is_set():
            return False
        if caller_uuid is not ANYONE and not may_access(job.account_uuid, caller_uuid):  # type: ignore[arg-type]
            return False
        job.cancel_with(reason)
        return True

    def drain(self, drain_s: float) -> list[str]:
        """Let running jobs finish for ``drain_s``, then cancel the rest and wait for them to clean up.

        Returns the uuids of the jobs that had to be cancelled."""
        if self.wait_all(drain_s):
            return []
        cancelled = [job.uuid for job in self.running()]
        for uuid in cancelled:
            self.cancel(uuid, f"the agent is shutting down and the drain time of {drain_s:g} s ran out")
        self.wait_all()
        return cancelled

    def running(self) -> list[Job]:
        with self._lock:
            return [j for j in self._jobs.values() if not j.done.is_set()]

    def exists(self, job_uuid: str) -> bool:
        with self._lock:
            if job_uuid in self._jobs:
                return True
        return self.store.get_job(job_uuid) is not None

    def expire(self) -> None:
        """Drop the jobs finished more than ``retention_s`` ago from memory, and from the store at most
        once per EXPIRE_SWEEP_S: every poll calls this on the API's event loop, and a write there waits
        for the store behind every running job (``view`` hides expired records meanwhile)."""
        cutoff = time.time() - self.retention_s
        now = time.monotonic()
        with self._lock:
            for uuid in [u for u, j in self._jobs.items() if j.finished_epoch and j.finished_epoch < cutoff]:
                del self._jobs[uuid]
            sweep = now >= self._next_sweep
            if sweep:
                self._next_sweep = now + EXPIRE_SWEEP_S
        if sweep:
            self.store.forget_jobs_before(cutoff)

    def wait_all(self, timeout_s: float | None = None) -> bool:
        """Wait for running jobs; True when none is left."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for job in self.running():
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not job.done.wait(remaining):
                return False
        return True
