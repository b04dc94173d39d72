"""FastAPI application: parses, authenticates and maps errors; the service does the work."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from zsagent import errors
from zsagent.api import openapi, refusals
from zsagent.api.body_limit import BodyLimit
from zsagent.api.classic import add_classic_routes
from zsagent.api.job_headers import api_timeout_s, check_job_uuid, check_web_hook
from zsagent.api.query import run_query
from zsagent.api.responses import JSONResponse
from zsagent.api.schema import Kind, with_schema
from zsagent.auth import Authenticator, Credentials
from zsagent.errors import ErrorCode, RestRefusal, ZsError
from zsagent.jobs import Job, JobManager
from zsagent.request import parse_body
from zsagent.service import TemplateService

log = logging.getLogger(__name__)

API = "/zstack/v1"

ASYNC_TIMEOUTS_S = {"create": 72 * 3600, "delete": 5 * 60}
"""ZStack's default API timeouts: 72 h for APICreateDataVolumeTemplateFromVolumeMsg
(core/src/main/java/org/zstack/core/timeout/ApiTimeoutGlobalProperty.java l.26), 5 min for the rest
(ApiTimeoutManagerImpl.java parseTimeout, "most default timeout are 5 minutes")."""


def error_response(error: ErrorCode, status: int = 503) -> JSONResponse:
    """ZStack answers every API error as 503 with ``{"error": ErrorCode}`` (RestServer.java
    sendReplyResponse l.1237-1240 for synchronous calls, handleJobQuery l.736-738 for jobs)."""
    return JSONResponse({"error": error.to_json()}, status_code=status)


SYNC_POLL_S = 0.05
"""How often a plain (synchronous) create looks whether its job has finished."""


def _owner_of(auth: Authenticator, credentials: Credentials) -> str | None:
    """The account the credentials name, or None when the session is not valid (the job then fails with
    ID.1001, as ZStack answers it)."""
    try:
        return auth.account_of(credentials)
    except ZsError:
        return None


def create_app(service: TemplateService, jobs: JobManager, auth: Authenticator) -> FastAPI:
    """``auth`` tells who calls (zsagent.auth.Authenticator)."""
    app = FastAPI(title="zsagent", version="0.1.0", default_response_class=JSONResponse,
                  description="ZStack data volume templates from Ceph and file volumes")
    app.state.accepting = True  # False while the daemon drains on shutdown
    app.add_middleware(BodyLimit, max_bytes=service.config.agent.max_body_bytes)
    refusals.install(app)
    openapi.install(app)

    @app.exception_handler(ZsError)
    async def _zs_error(request: Request, exc: ZsError) -> JSONResponse:
        # A bad argument of a synchronous call is 400, as ZStack's REST server answers bad query parameters
        # (RestServer.java l.1104-1188); the rest keep ZStack's 503 for a failed reply.
        return error_response(exc.error, 400 if exc.error.code == errors.INVALID_ARGUMENT else 503)

    @app.exception_handler(RestRefusal)
    async def _refused(request: Request, exc: RestRefusal) -> PlainTextResponse:
        return PlainTextResponse(exc.text, status_code=exc.status)

    def account_for(request: Request) -> str:
        return auth.authenticate(request.method, request.url.path, request.headers)

    def identify(credentials: Credentials, running: Job) -> str:
        """The caller's account when the job runs (ID.1001 for a bad session), recorded as the job's."""
        account = auth.account_of(credentials)
        jobs.set_owner(running, account, readable_by_uuid=credentials.account_uuid is not None)
        return account

    async def submit(request: Request, kind: str, work: Callable[[Credentials, Job], dict[str, Any]],
                     answers: Kind, volume_uuid: str | None = None) -> JSONResponse:
        """Run ``work(credentials, job)`` as a job (an access key is checked at once, a session by the job).
        A caller that asks for it (``X-Job-UUID``, as ZStack's SDK
        always sends, ``X-Web-Hook`` or ``Prefer: respond-async``) gets ZStack's 202 with the job's location
        and its timeout in ms (RestServer.java sendMessage l.1253-1275) and polls; a plain call (the API
        page's curl example) waits and gets the result (200) or the error (its status in errors.HTTP_STATUS).
        ``answers``: the kind of answer, for ZStack's schema map (zsagent.api.schema)."""
        credentials = auth.credentials(request.method, request.url.path, request.headers)  # RestRefusal at once
        if not app.state.accepting:
            raise errors.operation_failed("the agent is shutting down; retry on another agent or later")
        job_uuid = check_job_uuid(request.headers.get("x-job-uuid"), jobs)
        timeout_s = api_timeout_s(request.headers.get("x-api-timeout"), ASYNC_TIMEOUTS_S[kind])
        webhook = check_web_hook(request.headers.get("x-web-hook"))
        owner = await asyncio.to_thread(_owner_of, auth, credentials)
        # A job signed with an access key is polled by ZStack's SDK with "OAuth null"; one whose caller is
        # not identified only holds its ID.1001: both are read by their uuid (zsagent.ownership).
        job = Job(webhook=webhook, timeout_s=timeout_s,
                  webhook_body=partial(with_schema, kind=answers, headers=dict(request.headers)),
                  account_uuid=owner, readable_by_uuid=credentials.account_uuid is not None or owner is None)
        if job_uuid is not None:
            job.uuid = job_uuid
        jobs.submit(job, lambda running: work(credentials, running), volume_uuid=volume_uuid)
        if job_uuid is not None or job.webhook or "respond-async" in request.headers.get("prefer", ""):
            location = f"{str(request.base_url).rstrip('/')}{API}/api-jobs/{job.uuid}"
            return JSONResponse({"location": location, "apiTimeout": timeout_s * 1000}, status_code=202)
        while not job.done.is_set():  # not asyncio.to_thread: waiting callers would hold the default
            await asyncio.sleep(SYNC_POLL_S)  # executor's few threads, which the classic endpoint needs
        if job.success:
            return JSONResponse(with_schema(job.body, answers, request.headers))
        # zsagent's own synchronous mode keeps its status per error (400 invalid, 404 not found, ...)
        return JSONResponse(job.body, status_code=errors.HTTP_STATUS.get(job.body["error"]["code"], 500))

    @app.post(f"{API}/images/data-volume-templates/from/volumes/{{volumeUuid}}",
              summary="CreateDataVolumeTemplateFromVolume")
    async def create_data_volume_template(volumeUuid: str, request: Request) -> JSONResponse:  # noqa: N803
        body = await request.body()

        # The session and the body are checked inside the job: ZStack answers those errors through the
        # job too (202, then 503 on the poll: portal/.../ApiMediatorImpl.java l.68-71).
        def work(credentials: Credentials, running: Job) -> dict[str, Any]:
            account = identify(credentials, running)
            create = parse_body(body, volumeUuid)
            return {"inventory": service.create_template(create, account, running,
                                                         session_uuid=credentials.session_uuid)}

        return await submit(request, "create", work, Kind.CREATE, volume_uuid=volumeUuid)

    async def caller_of(request: Request) -> str | None:
        return await asyncio.to_thread(auth.caller_or_none, request.method, request.url.path, request.headers)

    @app.get(f"{API}/api-jobs/{{jobUuid}}", summary="Poll an asynchronous job")
    async def poll_job(jobUuid: str, request: Request) -> Response:  # noqa: N803
        """RestServer.java handleJobQuery l.705-740: unknown or expired: 404; the schema map as the polling
        request asks (a delete's answer, ``{}``, has none either way). ZStack asks for no credentials here;
        this agent shows a job only to its account and the admin (the SDK polls with the session that
        started it, ZSClient.java l.686-692), and to a caller without credentials only the jobs
        zsagent.ownership.may_read_job allows; anyone else is told it is not there."""
        view = jobs.view(jobUuid, await caller_of(request))
        if view is None:
            return PlainTextResponse("the job has been expired", status_code=404)
        if view.running:
            return JSONResponse({}, status_code=202)
        return JSONResponse(with_schema(view.body, Kind.CREATE, request.headers),
                            status_code=200 if view.success else 503)

    @app.delete(f"{API}/api-jobs/{{jobUuid}}", summary="Cancel a running job (zsagent's own)")
    async def cancel_job(jobUuid: str, request: Request) -> JSONResponse:  # noqa: N803
        caller = account_for(request)
        if jobs.cancel(jobUuid, caller_uuid=caller):  # its account's or the admin's to cancel
            return JSONResponse({}, status_code=202)
        if jobs.view(jobUuid, caller) is None:
            return error_response(ErrorCode(errors.RESOURCE_NOT_FOUND, f"job[uuid:{jobUuid}] not found"), 404)
        return error_response(ErrorCode(errors.INVALID_ARGUMENT, f"job[uuid:{jobUuid}] has already finished"),
                              409)

    @app.get(f"{API}/task-progresses/{{jobUuid}}", summary="Progress of a job")
    async def task_progress(jobUuid: str, request: Request) -> JSONResponse:  # noqa: N803
        """A synchronous call (header/.../core/progress/APIGetTaskProgressMsg.java l.15); an unknown job has
        no progress: an empty list (ProgressReportService.java l.278-280), and so has another account's."""
        view = jobs.view(jobUuid, account_for(request))
        if view is None:
            return JSONResponse({"inventories": []})
        progress = view.progress or {"phase": "done" if view.success else "failed",
                                     "percent": 100, "bytesDone": None, "bytesTotal": None}
        return JSONResponse(with_schema({"inventories": [{"taskUuid": jobUuid, "type": "Progress",
                                                          "content": str(progress["percent"]), **progress}]},
                                        Kind.TASK_PROGRESS, request.headers))

    @app.get(f"{API}/images/{{uuid}}", summary="Get one image")
    async def get_image(uuid: str, request: Request) -> JSONResponse:
        """A query by uuid (header/.../image/APIQueryImageMsg.java): none found is an empty list."""
        account = account_for(request)
        found = [i for i in service.list_images(account) if i["uuid"] == uuid]
        return JSONResponse(with_schema({"inventories": found}, Kind.QUERY_IMAGES, request.headers))

    @app.get(f"{API}/images", summary="Query images")
    async def list_images(request: Request) -> JSONResponse:
        """ZStack's query parameters (zsagent.api.query); an account sees its own images only."""
        account = account_for(request)
        found = run_query(service.list_images(account), request.query_params.multi_items())
        return JSONResponse(with_schema(found, Kind.QUERY_IMAGES, request.headers))

    @app.delete(f"{API}/images/{{uuid}}", summary="Delete an image and its bits on every backup storage")
    async def delete_image(uuid: str, request: Request) -> JSONResponse:
        """Asynchronous like every ZStack API but queries (APIDeleteImageMsg); deleting an image that is
        not there succeeds, as ZStack's delete messages do."""
        def work(credentials: Credentials, running: Job) -> dict[str, Any]:
            service.delete_image(uuid, missing_ok=True, account_uuid=identify(credentials, running))
            return {}

        return await submit(request, "delete", work, Kind.DELETE)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health", summary="Liveness")
    async def health() -> dict[str, str]:
        """``ceph``: "unreachable: <why>" once connecting failed (file and SFTP work goes on)."""
        answer = {"status": "ok"}
        if service.runtime.unreachable:
            answer["ceph"] = service.runtime.unreachable
        return answer

    add_classic_routes(app, service, jobs, auth)
    return app
