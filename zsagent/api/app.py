"""FastAPI application: parses, authenticates and maps errors; the service does the work."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from zsagent import errors
from zsagent.api.classic import add_classic_routes
from zsagent.api.query import parse_conditions
from zsagent.auth import session_from_header
from zsagent.errors import ErrorCode, ZsError
from zsagent.jobs import Job, JobManager
from zsagent.request import DESCRIPTION_MAX_CHARS, NAME_MAX_CHARS, UUID_PATTERN, parse_body
from zsagent.service import TemplateService

log = logging.getLogger(__name__)

API = "/zstack/v1"
_JOB_UUID_RE = re.compile(r"^[0-9a-f]{32}$")

_CREATE_BODY_SCHEMA = {
    "type": "object",
    "required": ["params"],
    "properties": {
        "params": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "maxLength": NAME_MAX_CHARS},
                "description": {"type": "string", "maxLength": DESCRIPTION_MAX_CHARS},
                "volumeUuid": {"type": "string", "pattern": UUID_PATTERN},
                "backupStorageUuids": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                "resourceUuid": {"type": "string"},
                "tagUuids": {"type": "array", "items": {"type": "string"}},
            },
        },
        "systemTags": {"type": "array", "items": {"type": "string"}},
        "userTags": {"type": "array", "items": {"type": "string"}},
    },
}


def error_response(error: ErrorCode, status: int | None = None) -> JSONResponse:
    return JSONResponse({"success": False, "error": error.to_json()}, status_code=status or error.http_status)


def create_app(service: TemplateService, jobs: JobManager, sessions) -> FastAPI:
    """``sessions`` has ``account_of(session_uuid) -> account_uuid`` (raises ZsError ID.1001)."""
    app = FastAPI(title="zsagent", version="0.1.0",
                  description="ZStack data volume templates from Ceph and file volumes")
    app.state.accepting = True  # False while the daemon drains on shutdown

    @app.exception_handler(ZsError)
    async def _zs_error(request: Request, exc: ZsError) -> JSONResponse:
        return error_response(exc.error)

    def account_for(request: Request) -> str:
        return sessions.account_of(session_from_header(request.headers.get("authorization")))

    @app.post(f"{API}/images/data-volume-templates/from/volumes/{{volumeUuid}}",
              summary="CreateDataVolumeTemplateFromVolume",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": _CREATE_BODY_SCHEMA}}}})
    async def create_data_volume_template(volumeUuid: str, request: Request) -> JSONResponse:  # noqa: N803
        session = session_from_header(request.headers.get("authorization"))  # ID.1000 at once
        if not app.state.accepting:
            raise errors.operation_failed("the agent is shutting down; retry on another agent or later")
        job_uuid = request.headers.get("x-job-uuid")
        webhook = request.headers.get("x-web-hook")
        is_async = bool(job_uuid or webhook or "respond-async" in request.headers.get("prefer", ""))
        if job_uuid is not None and not _JOB_UUID_RE.match(job_uuid):
            raise errors.invalid("X-Job-UUID must be 32 lowercase hex digits")
        body = await request.body()
        job = Job(uuid=job_uuid, webhook=webhook) if job_uuid else Job(webhook=webhook)
        location = f"{str(request.base_url).rstrip('/')}{API}/api-jobs/{job.uuid}"
        if job_uuid and jobs.exists(job_uuid):
            return JSONResponse({"location": location}, status_code=202)

        # The session and the body are checked inside the job: ZStack answers those errors through the
        # job too (a 202, then the failure on the poll), never as an immediate error to an async caller.
        def work(running: Job) -> dict[str, Any]:
            account = sessions.account_of(session)
            create = parse_body(body, volumeUuid)
            return service.create_template(create, account, running)

        jobs.submit(job, work, volume_uuid=volumeUuid)
        if is_async:
            return JSONResponse({"location": location}, status_code=202)
        await asyncio.to_thread(job.done.wait)
        return JSONResponse(job.body, status_code=job.http_status)

    @app.get(f"{API}/api-jobs/{{jobUuid}}", summary="Poll an asynchronous job")
    async def poll_job(jobUuid: str) -> JSONResponse:  # noqa: N803
        view = jobs.view(jobUuid)
        if view is None:
            return error_response(ErrorCode(errors.RESOURCE_NOT_FOUND, f"job[uuid:{jobUuid}] not found "
                                                                       "or expired"), 404)
        if view.running:
            return JSONResponse({}, status_code=202)
        return JSONResponse(view.body, status_code=200 if view.success else 503)

    @app.delete(f"{API}/api-jobs/{{jobUuid}}", summary="Cancel a running job")
    async def cancel_job(jobUuid: str, request: Request) -> JSONResponse:  # noqa: N803
        account_for(request)
        if jobs.cancel(jobUuid):
            return JSONResponse({}, status_code=202)
        if jobs.view(jobUuid) is None:
            return error_response(ErrorCode(errors.RESOURCE_NOT_FOUND, f"job[uuid:{jobUuid}] not found"), 404)
        return error_response(ErrorCode(errors.INVALID_ARGUMENT, f"job[uuid:{jobUuid}] has already finished"),
                              409)

    @app.get(f"{API}/task-progresses/{{jobUuid}}", summary="Progress of a job")
    async def task_progress(jobUuid: str, request: Request) -> JSONResponse:  # noqa: N803
        account_for(request)
        view = jobs.view(jobUuid)
        if view is None:
            return error_response(ErrorCode(errors.RESOURCE_NOT_FOUND, f"job[uuid:{jobUuid}] not found"), 404)
        progress = view.progress or {"phase": "done" if view.success else "failed",
                                     "percent": 100, "bytesDone": None, "bytesTotal": None}
        return JSONResponse({"inventories": [{"taskUuid": jobUuid, "type": "Progress",
                                              "content": str(progress["percent"]), **progress}]})

    @app.get(f"{API}/images/{{uuid}}", summary="Get one image")
    async def get_image(uuid: str, request: Request) -> JSONResponse:
        account_for(request)
        return JSONResponse({"inventories": [service.get_image(uuid)]})

    @app.get(f"{API}/images", summary="Query images")
    async def list_images(request: Request, q: list[str] = Query(default=[]),  # noqa: B008
                          limit: int = 1000, start: int = 0) -> JSONResponse:
        account_for(request)
        if limit < 0 or start < 0:
            raise errors.invalid("limit and start must not be negative")
        conditions = parse_conditions(q)
        found = [i for i in service.list_images() if all(c(i) for c in conditions)]
        return JSONResponse({"inventories": found[start:start + limit]})

    @app.delete(f"{API}/images/{{uuid}}", summary="Delete an image and its bits on every backup storage")
    async def delete_image(uuid: str, request: Request) -> JSONResponse:
        account_for(request)
        await asyncio.to_thread(service.delete_image, uuid)
        return JSONResponse({"success": True})

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health", summary="Liveness")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    add_classic_routes(app, service, jobs, sessions)
    return app
