"""`zsagent front`: the management node's (MN) agent commands, taken over or passed on.

For each request: a path of ``routes.ROUTES[fronts]`` whose command names storage configured here is
ours; everything else goes to ZStack's agent byte for byte (zsagent.front.forward). Ours follow the MN's
transport ([zs] RESTFacadeImpl.asyncJson l.303-453): an empty 200 at once (400 without ``taskuuid``,
as ZStack's agents), the work in a job, then the result POSTed to ``callbackurl`` with the same
``taskuuid``; never a 5xx or a non-JSON result, which would make a Ceph MN run the copy again on another
mon (CPSB l.3547-3563). A failure is ``success:false`` with an ``error`` that says what to do.

Every call the MN waits for is a row of ``front_calls``, written before the job; after a restart the
interrupted ones are failed, their leftovers removed, and the MN told (if it still waits).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, BinaryIO

from zsagent import errors
from zsagent.config import BackupStorage, Config, PrimaryStorage
from zsagent.errors import ErrorCode
from zsagent.front import paths
from zsagent.front.callbacks import ProgressReporter, deliver
from zsagent.front.destinations import KeyFile, sftp_destination, sftp_settings
from zsagent.front.forward import RawRequest, Upstream
from zsagent.front.routes import ROUTES, Plan
from zsagent.front.wire import (
    CALLBACK_URL_HEADER,
    MISSING_TASK_UUID,
    TASK_UUID_HEADER,
    Envelope,
    MalformedCommand,
    envelope,
    failure,
    parse_json_object,
    response_body,
    send_command_url,
    stage_window,
    success,
)
from zsagent.jobs import Job, JobManager
from zsagent.service import TemplateService
from zsagent.store import FrontCall, FrontRecords, Store

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 16 * 1024 * 1024
DEADLINE_MARGIN_S = 1.0
"""A job is stopped this long before the MN's deadline, so that its failure reaches the MN in time."""
UNBOUNDED_WAIT_S = 72 * 3600  # the MN's default message timeout for this API, when a command has none
RESTARTED = ("zsagent front restarted while this command ran; what it had written was removed. "
             "Create the template again")


class Front:
    def __init__(self, config: Config, store: Store, service: TemplateService, jobs: JobManager) -> None:
        self.config = config
        self.settings = config.front
        self.store = store
        self.service = service
        self.jobs = jobs
        self.records = FrontRecords(store)
        self.upstream = Upstream(self.settings.upstream_url, self.settings.upstream_timeout_s)
        self.routes = ROUTES[self.settings.fronts]
        self.key_dir = f"{config.front.data_dir or config.agent.data_dir}/front-keys"
        self._lock = threading.Lock()
        self._tasks: dict[str, Job] = {}  # taskuuid -> its running job
        self._apis: dict[str, set[str]] = {}  # api id -> taskuuids of its running jobs
        self._stop = threading.Event()

    # -- start and restart -----------------------------------------------------------------------------

    def start(self) -> list[threading.Thread]:
        """Fail the calls a previous run left unanswered (their leftovers removed first), tell the MN, and
        start expiring intents."""
        calls = self.records.calls()
        owned = {call.job_uuid for call in calls}

        def owns(job_uuid: str) -> bool:
            """Our calls' jobs, and the leftovers of any finished job (nobody runs it any more); not the
            running jobs of a `zsagent serve` or `zsagent copy` that shares the store."""
            record = self.store.get_job(job_uuid)
            return job_uuid in owned or (record is not None and record.finished_epoch is not None)

        interrupted = self.service.reconcile(owns=owns)
        if interrupted:
            log.warning("front jobs interrupted by the last stop, now failed: %s", ", ".join(interrupted))
        threads = []
        for call in calls:
            record = self.store.get_job(call.job_uuid)
            rsp = failure(RESTARTED) if record is None or record.result is None or call.job_uuid in interrupted \
                else self._response(record.result, timed_out=False)
            thread = threading.Thread(target=self._tell_after_restart, args=(call, rsp), daemon=True,
                                      name=f"front-restart-{call.job_uuid[:8]}")
            thread.start()
            threads.append(thread)
        expired = self.records.expire_intents()
        if expired:
            log.info("forgot %d createtemplate intents that were never uploaded", len(expired))
        threading.Thread(target=self._expire_intents, name="front-intents", daemon=True).start()
        return threads

    def _tell_after_restart(self, call: FrontCall, rsp: dict[str, Any]) -> None:
        if time.time() < call.expires_epoch:
            deliver(call.callback_url, call.task_uuid, response_body(rsp), self.settings.callback_retry_s)
        self.records.forget_call(call.job_uuid)

    def _expire_intents(self) -> None:
        while not self._stop.wait(60):
            for path in self.records.expire_intents():
                log.info("createtemplate intent %s expired without an upload", path)

    def close(self) -> None:
        self._stop.set()

    # -- what is configured here -----------------------------------------------------------------------

    def is_ceph_primary_pool(self, pool: str) -> bool:
        return any(ps.type == "ceph" and pool in ps.pools for ps in self.config.primary_storage)

    def ceph_backup_storage(self, pool: str) -> BackupStorage | None:
        return next((bs for bs in self.config.backup_storage if bs.type == "ceph" and bs.settings.pool == pool),
                    None)

    def file_primary_storage(self, path: str) -> PrimaryStorage | None:
        return next((ps for ps in self.config.primary_storage
                     if ps.type == "filesystem" and ps.path and paths.inside(path, ps.path)), None)

    def sftp_destination_maker(self, target: paths.SftpTemplatePath, hostname: str, port: int, username: str,
                               key: str, image_format: str, planned_file_size: int | None = None):
        """The destination factory for service.PathCopy: the key file (in the job's journal, so removed
        after the upload's own entries), then the checked settings, then the sink."""
        def make(template, scope, job_journal):
            key_file = KeyFile(self.key_dir, job_journal.job_uuid, key, job_journal)
            settings = sftp_settings(self.settings, target.root, hostname, port, username, key_file.path,
                                     image_format)
            return sftp_destination(settings, target.path, image_format, scope, planned_file_size)
        return make

    # -- one request -----------------------------------------------------------------------------------

    def handle(self, request: RawRequest, wfile: BinaryIO) -> bool:
        """Answer one request; returns whether the connection may stay open."""
        route = self.routes.get(request.path)
        if route is None or request.method != "POST":
            return self.upstream.forward(request, wfile)
        task_uuid = request.header(TASK_UUID_HEADER)
        callback_url = request.header(CALLBACK_URL_HEADER)
        if not task_uuid:
            return _plain(wfile, 400, MISSING_TASK_UUID)
        if not callback_url:
            return _plain(wfile, 400, "callbackurl missing in request header")
        try:
            body = request.read_body(MAX_COMMAND_BYTES)
        except (ValueError, ConnectionError) as e:
            _plain(wfile, 413, f"zsagent front: {e}")
            return False
        try:
            cmd = parse_json_object(body)
            env = envelope(cmd)
            plan = route(self, cmd, env)
        except MalformedCommand as e:
            _ok(wfile)
            self._answer_soon(callback_url, task_uuid, failure(f"zsagent front: malformed {request.path} "
                                                                f"command: {e}"))
            return True
        except Exception as e:  # noqa: BLE001 - never a 5xx for a long command
            log.exception("routing %s failed", request.path)
            _ok(wfile)
            self._answer_soon(callback_url, task_uuid, failure(f"zsagent front: {request.path}: {e}"))
            return True
        if plan is None:
            return self.upstream.forward(request, wfile)
        with self._lock:
            duplicate = task_uuid in self._tasks
        _ok(wfile)
        if duplicate:  # as ZStack's agents: a taskuuid still running is ignored ([zsu] http.py l.143-147)
            log.info("ignoring a second %s with the running taskuuid %s", request.path, task_uuid)
        elif plan.reply is not None:
            self._answer_soon(callback_url, task_uuid, success(**plan.reply))
        else:
            self._start(request.path, cmd, env, task_uuid, callback_url, plan)
        return True

    def _answer_soon(self, callback_url: str, task_uuid: str, rsp: dict[str, Any]) -> None:
        threading.Thread(target=deliver, args=(callback_url, task_uuid, response_body(rsp),
                                               self.settings.callback_retry_s),
                         name=f"front-answer-{task_uuid[:8]}", daemon=True).start()

    def _start(self, path: str, cmd: dict[str, Any], env: Envelope, task_uuid: str, callback_url: str,
               plan: Plan) -> None:
        now = time.time()
        if env.expires_epoch is not None and env.expires_epoch - now <= DEADLINE_MARGIN_S:
            self._answer_soon(callback_url, task_uuid, failure(
                "zsagent front: the management node's deadline for this command (taskContext.__messagedeadline__) "
                "had passed when it arrived; nothing was done"))
            return
        job = Job()
        if env.expires_epoch is not None:
            job.timeout_s = env.expires_epoch - now - DEADLINE_MARGIN_S
        call = FrontCall(job.uuid, task_uuid, callback_url, path, env.expires_epoch or now + UNBOUNDED_WAIT_S)
        self.records.add_call(call)
        reporter = None
        if plan.process_type is not None:
            reporter = ProgressReporter(send_command_url(cmd, callback_url), env,
                                        stage_window(env.task_stage, plan.stage_default), plan.process_type,
                                        lambda: _percent(job))
        with self._lock:
            self._tasks[task_uuid] = job
            if env.api_id:
                self._apis.setdefault(env.api_id, set()).add(task_uuid)

        def work(job: Job) -> dict[str, Any]:
            if reporter is not None:
                reporter.start()
            try:
                return {"rsp": plan.work(job)}
            finally:
                if reporter is not None:
                    reporter.stop()

        def done(job: Job) -> None:
            with self._lock:
                self._tasks.pop(task_uuid, None)
                if env.api_id:
                    self._apis.get(env.api_id, set()).discard(task_uuid)
            rsp = self._response(job.body or {}, timed_out=job.timed_out)
            log.info("%s task %s: %s", path, task_uuid, "success" if rsp["success"] else rsp["error"])
            deliver(callback_url, task_uuid, response_body(rsp), self.settings.callback_retry_s)
            self.records.forget_call(job.uuid)

        job.on_done = done
        log.info("taking over %s (task %s, api %s) as job %s", path, task_uuid, env.api_id, job.uuid)
        self.jobs.submit(job, work, volume_uuid=plan.volume_uuid)

    @staticmethod
    def _response(body: dict[str, Any], timed_out: bool) -> dict[str, Any]:
        """The MN's response from a finished job's body."""
        if "rsp" in body:
            return success(**body["rsp"])
        if timed_out:
            return failure("zsagent front: the management node's deadline for this command "
                           "(taskContext.__messagedeadline__) was reached before the copy finished; it was "
                           "stopped and what it had written removed")
        error = ErrorCode.from_json(body["error"]) if "error" in body else ErrorCode(errors.INTERNAL_ERROR, "no result")
        return failure(f"zsagent front: {_explain(error)}")

    # -- cancel ----------------------------------------------------------------------------------------

    def cancel_api(self, api_id: str) -> bool:
        """Cancel our running jobs and forget our intents of ``api_id``; False when there are none."""
        with self._lock:
            jobs = [self._tasks[t] for t in self._apis.get(api_id, ()) if t in self._tasks]
        for job in jobs:
            self.jobs.cancel(job.uuid, f"cancelled by the management node (api {api_id})")
        intents = self.records.intents_of_api(api_id)
        for path in intents:
            self.records.forget_intent(path)
        if jobs or intents:
            log.info("cancel of api %s: %d jobs, %d intents", api_id, len(jobs), len(intents))
        return bool(jobs or intents)


def _percent(job: Job) -> float | None:
    """The copy's percentage (100 once it is publishing); None before it copies or after it failed."""
    if job.phase in ("publishing", "done"):
        return 100.0
    if job.phase != "copying" or not job.bytes_total:
        return None
    return 100.0 * job.bytes_done / job.bytes_total


def _explain(error: ErrorCode) -> str:
    text = f"{error.details or error.description} ({error.code})"
    cause = error.cause
    while cause is not None:
        text += f": {cause.details or cause.description}"
        cause = cause.cause
    return text


def _ok(wfile: BinaryIO) -> None:
    """The empty 200 ZStack's agents answer an async command with ([zsu] http.py l.178-195)."""
    wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    wfile.flush()


def _plain(wfile: BinaryIO, status: int, text: str) -> bool:
    reasons = {400: "Bad Request", 413: "Payload Too Large"}
    data = text.encode()
    wfile.write(b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                % (status, reasons.get(status, "Error").encode(), len(data), data))
    wfile.flush()
    return True


__all__ = ["Front"]
