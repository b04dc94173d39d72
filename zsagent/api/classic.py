"""ZStack's classic RPC endpoint, the one zstack-cli, shell scripts and zstack-mcp-server speak.

``POST /zstack/api`` takes ``{"<message class>": {...fields..., "session": {"uuid": ...}}}`` and answers
with ZStack's job envelope, ``{"uuid", "state", "createdDate", "finishedDate", "result"}``, where ``result``
is the JSON *text* of ``{"<event or reply class>": {"success": ..., ...}}``. Asynchronous messages answer
``state: "Processing"`` and are polled at ``GET /zstack/api/result/<uuid>`` until ``state`` is ``"Done"``;
query-like messages (ZStack's APISyncCallMessage) answer ``"Done"`` at once, without a uuid. The same
service, request checks and job manager as the REST API do the work.

Protocol facts, from zstackio/zstack at 5a29293bd5 ("[zs]"):
- routes: ``/api`` (POST, PUT) and ``/api/result/{uuid}`` (GET, PUT) under ``/zstack``
  ([zs] header/src/main/java/org/zstack/header/rest/RESTConstant.java l.8-9,
  core/src/main/java/org/zstack/core/rest/RESTApiController.java l.34, l.72);
- the envelope is RestAPIResponse ([zs] header/.../rest/RestAPIResponse.java l.5-10); its states are
  RestAPIState ``Processing`` / ``Done`` ([zs] header/.../rest/RestAPIState.java l.3-6); ``send`` fills
  uuid, state and createdDate, ``call`` (sync messages) createdDate, finishedDate, state Done and the
  result, and no uuid ([zs] core/.../rest/RESTApiFacadeImpl.java l.163-192); a poll returns all five
  (l.211-223) and an unknown uuid is HTTP 404 "No api result[uuid:%s] found" (RESTApiController l.38-40);
- the result text is ``{"<class name>": <message>}`` ([zs] core/.../rest/RESTApiDecoder.java l.50-54),
  without null fields (its GsonUtil has no serializeNulls, l.106-110) and without @APINoSee fields such
  as apiId ([zs] header/.../message/APIEvent.java l.19-20);
- errors raised before a message reaches its handler (argument checks, resource existence, the session)
  are answered with a plain ``org.zstack.header.message.APIEvent``, or ``APIReply`` for sync messages
  ([zs] core/.../cloudbus/CloudBusImpl3.java l.928-945); an unknown message is SYS.1008 "No service deals
  with message: ..." in the same classes (l.870-885).

Where ZStack's own endpoint answers with a bare exception text (malformed JSON, a class it cannot load:
RESTApiController l.53-61), which no classic client can parse, this endpoint gives the same envelope with
a ZStack ErrorCode instead (SYS.1007 / SYS.1008).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from zsagent import errors
from zsagent.api.query import run_query
from zsagent.auth import Authenticator, Credentials
from zsagent.errors import ErrorCode, ZsError
from zsagent.inventory import zstack_date
from zsagent.jobs import Job, JobManager
from zsagent.json_input import load_json
from zsagent.request import UUID_RE, parse_body
from zsagent.service import TemplateService

log = logging.getLogger(__name__)

API_CALL = "/zstack/api"
API_RESULT = "/zstack/api/result/{uuid}"

CREATE = "org.zstack.header.image.APICreateDataVolumeTemplateFromVolumeMsg"
QUERY_IMAGE = "org.zstack.header.image.APIQueryImageMsg"
DELETE_IMAGE = "org.zstack.header.image.APIDeleteImageMsg"
TASK_PROGRESS = "org.zstack.header.core.progress.APIGetTaskProgressMsg"

#: The class each message is answered with on success
#: ([zs] header/.../image/APICreateDataVolumeTemplateFromVolumeMsg.java @RestRequest responseClass, and
#: likewise APIQueryImageMsg.java l.11, APIDeleteImageMsg.java l.9, core/progress/APIGetTaskProgressMsg.java l.10).
ANSWER_CLASS = {
    CREATE: "org.zstack.header.image.APICreateDataVolumeTemplateFromVolumeEvent",
    QUERY_IMAGE: "org.zstack.header.image.APIQueryImageReply",
    DELETE_IMAGE: "org.zstack.header.image.APIDeleteImageEvent",
    TASK_PROGRESS: "org.zstack.header.core.progress.APIGetTaskProgressReply",
}
PLAIN_EVENT = "org.zstack.header.message.APIEvent"
PLAIN_REPLY = "org.zstack.header.message.APIReply"
#: Codes that ZStack raises in its API interceptors, before the message's handler runs.
_INTERCEPTOR_CODES = {errors.INVALID_ARGUMENT, errors.RESOURCE_NOT_FOUND, errors.INVALID_AUTHORIZATION,
                      errors.INVALID_SESSION, errors.PERMISSION_DENIED}
UNKNOWN_MESSAGE = "SYS.1008"  # [zs] header/.../errorcode/SysErrors.java l.14
UNKNOWN_MESSAGE_DESCRIPTION = "Unknown message, no service can deal with the message"  # [zs] conf/errorCodes/sys.xml

#: The create message's fields that go into the REST body's ``params``
#: ([zs] header/.../image/APICreateDataVolumeTemplateFromVolumeMsg.java and APICreateMessage).
_CREATE_PARAMS = ("name", "description", "volumeUuid", "backupStorageUuids", "resourceUuid", "tagUuids")

#: ZStack's query operators ([zs] header/.../query/QueryOp.java l.47-58) as the REST ``q`` syntax writes them
#: ([zs] rest/src/main/java/org/zstack/rest/RestServer.java l.1052-1072): conditions are handed to
#: zsagent.api.query in that syntax, so both endpoints filter the same way.
_REST_OPS = {"=": "=", "!=": "!=", ">": ">", ">=": ">=", "<": "<", "<=": "<=", "in": "?=", "not in": "!?=",
             "like": "~=", "not like": "!~=", "is null": " is null", "is not null": " not null"}
_VALUELESS_OPS = {"is null", "is not null"}
_FIELD_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.]*$")


def add_classic_routes(app: FastAPI, service: TemplateService, jobs: JobManager, auth: Authenticator) -> None:
    """Serve ``POST /zstack/api`` and ``GET /zstack/api/result/<uuid>`` on ``app``; ``auth`` as in
    zsagent.api.app.create_app (a classic message carries its session in its ``session`` field)."""
    # job uuid -> (message class, epoch seconds) for the asynchronous messages sent here; jobs made through
    # the REST API, or before a restart, are told apart by their answer (see _answer_class_of_job).
    sent: dict[str, tuple[str, float]] = {}

    def account_of(message_name: str, message: dict[str, Any]) -> str:
        session = message.get("session")
        # [zs] identity/.../AccountManagerImpl.java l.1423-1437: ID.1001 for each of these
        if not isinstance(session, dict):
            raise ZsError(errors.INVALID_SESSION, f"session of message[{message_name}] is null")
        session_uuid = session.get("uuid")
        if session_uuid is None:
            raise ZsError(errors.INVALID_SESSION, "session uuid is null")
        if not isinstance(session_uuid, str) or not UUID_RE.match(session_uuid):
            raise ZsError(errors.INVALID_SESSION, "the session is invalid or expired")
        return auth.account_of(Credentials(session_uuid=session_uuid))

    def submit(message_name: str, work: Callable[[Job], dict[str, Any]],
               volume_uuid: str | None = None) -> JSONResponse:
        if not app.state.accepting:
            error = errors.operation_failed("the agent is shutting down; retry on another agent or later").error
            return _done(PLAIN_EVENT, error)
        job = Job(readable_by_uuid=True)  # polled at /zstack/api/result/<uuid>, which carries no credentials
        now = time.time()
        for uuid in [u for u, (_, at) in sent.items() if at < now - jobs.retention_s]:
            del sent[uuid]
        sent[job.uuid] = (message_name, now)
        jobs.submit(job, work, volume_uuid=volume_uuid)
        return JSONResponse({"uuid": job.uuid, "state": "Processing", "createdDate": zstack_date()})

    def create(message: dict[str, Any]) -> JSONResponse:
        # Like the REST route: the session and the fields are checked inside the job, so their errors come
        # back on the poll, as ZStack sends them (RESTApiFacadeImpl.send, then the interceptors).
        def work(running: Job) -> dict[str, Any]:
            account = account_of(CREATE, message)
            jobs.set_owner(running, account, readable_by_uuid=True)
            request = parse_body(_rest_create_body(message))
            session_uuid = message["session"]["uuid"]  # account_of checked it is there
            return {"inventory": service.create_template(request, account, running, session_uuid=session_uuid)}

        volume = message.get("volumeUuid")
        return submit(CREATE, work, volume if isinstance(volume, str) else None)

    def delete(message: dict[str, Any]) -> JSONResponse:
        def work(running: Job) -> dict[str, Any]:
            account = account_of(DELETE_IMAGE, message)
            jobs.set_owner(running, account, readable_by_uuid=True)
            _delete_image(service, message, account)
            running.phase = "done"
            return {}

        return submit(DELETE_IMAGE, work)

    def query(message: dict[str, Any]) -> dict[str, Any]:
        return _query_images(service.list_images(account_of(QUERY_IMAGE, message)), message)

    def task_progress(message: dict[str, Any]) -> dict[str, Any]:
        caller = account_of(TASK_PROGRESS, message)
        api_id = message.get("apiId")
        if not isinstance(api_id, str) or not api_id:
            raise errors.invalid(f"field[apiId] of message[{TASK_PROGRESS}] must be the uuid of an API call")
        view = jobs.view(api_id, caller)
        if view is None:  # ZStack: an unknown API id has no progress entries; nor has another account's
            return {"success": True, "inventories": []}
        progress = view.progress or {"phase": "done" if view.success else "failed", "percent": 100,
                                     "bytesDone": None, "bytesTotal": None}
        name = sent.get(api_id, (CREATE,))[0]
        # TaskProgressInventory's fields ([zs] header/.../core/progress/TaskProgressInventory.java l.8-17);
        # type is TaskType.Progress (TaskType.java); the copy's own numbers go in the free-form opaque map.
        return {"success": True, "inventories": [{
            "taskUuid": api_id, "taskName": name, "type": "Progress", "content": str(progress["percent"]),
            "time": int(time.time() * 1000), "opaque": progress}]}

    asynchronous = {CREATE: create, DELETE_IMAGE: delete}
    synchronous = {QUERY_IMAGE: query, TASK_PROGRESS: task_progress}

    async def call(request: Request) -> JSONResponse:
        try:
            message_name, message = _decode(await request.body())
        except ZsError as e:
            return _done(PLAIN_EVENT, e.error)
        if message_name in asynchronous:
            return asynchronous[message_name](message)
        if message_name not in synchronous:
            served = ", ".join(sorted([*asynchronous, *synchronous]))
            return _done(PLAIN_EVENT, ErrorCode(UNKNOWN_MESSAGE, f"No service deals with message: {message_name}"
                                                                 f"; this agent serves {served}",
                                                description=UNKNOWN_MESSAGE_DESCRIPTION))
        created = zstack_date()
        try:  # off the event loop: a session may be checked with the management node
            reply = await asyncio.to_thread(synchronous[message_name], message)
        except ZsError as e:
            return _done(PLAIN_REPLY, e.error, created)
        except Exception as e:  # noqa: BLE001 - a bug: SYS.1000 to the client, the traceback to the log
            log.exception("classic %s failed", message_name)
            return _done(PLAIN_REPLY, ErrorCode(errors.INTERNAL_ERROR, f"{type(e).__name__}: {e}"), created)
        return JSONResponse({"state": "Done", "createdDate": created, "finishedDate": zstack_date(),
                             "result": _result_text(ANSWER_CLASS[message_name], reply)})

    async def result(uuid: str, request: Request) -> Response:
        # ZStack's classic clients send no credentials here (the session is inside each message): a job
        # sent here is read by its uuid; one started through the REST API with a session needs that
        # session's account (or the admin's) in an Authorization header; another account's is not found.
        caller = await asyncio.to_thread(auth.caller_or_none, request.method, request.url.path, request.headers)
        view = jobs.view(uuid, caller)
        if view is None:
            return PlainTextResponse(f"No api result[uuid:{uuid}] found", status_code=404)
        record = jobs.store.get_job(uuid)
        created = zstack_date(datetime.fromtimestamp(record.created_epoch)) if record else zstack_date()
        if view.running:
            return JSONResponse({"uuid": uuid, "state": "Processing", "createdDate": created})
        body = view.body or {}
        finished = record.finished_epoch if record and record.finished_epoch else time.time()
        answer_class = _answer_class_of_job(sent.get(uuid, (None,))[0], body, view.success)
        event = {"success": True, **({"inventory": body["inventory"]} if body.get("inventory") else {})} \
            if view.success else {"success": False, "error": body.get("error")}
        return JSONResponse({"uuid": uuid, "state": "Done", "createdDate": created,
                             "finishedDate": zstack_date(datetime.fromtimestamp(finished)),
                             "result": _result_text(answer_class, event)})

    # zstack-mcp-server posts to "/zstack/api/" (with the slash), ZStack's own clients to "/zstack/api":
    # Spring MVC maps both to the same handler, and so does this agent; the document lists the path without
    # the slash. PUT works as POST (and as GET for results), as RESTApiController maps both.
    for path in (API_CALL, API_CALL + "/"):
        for method in ("POST", "PUT"):
            app.add_api_route(path, call, methods=[method], summary="ZStack classic API call",
                              include_in_schema=path == API_CALL)
    for method in ("GET", "PUT"):
        app.add_api_route(API_RESULT, result, methods=[method], summary="ZStack classic API result")


def _decode(raw: bytes) -> tuple[str, dict[str, Any]]:
    """The message's class name and fields, or SYS.1007."""
    body = load_json(raw)
    if not isinstance(body, dict) or len(body) != 1:
        raise errors.invalid('the request body must be one message: {"<message class>": {...fields...}}')
    [(name, message)] = body.items()
    if not isinstance(message, dict):
        raise errors.invalid(f"the fields of message[{name}] must be a JSON object")
    return name, message


def _done(answer_class: str, error: ErrorCode, created: str | None = None) -> JSONResponse:
    """A finished call that failed: the envelope with ``{"<answer_class>": {"success": false, "error"}}``."""
    return JSONResponse({"state": "Done", "createdDate": created or zstack_date(), "finishedDate": zstack_date(),
                         "result": _result_text(answer_class, {"success": False, "error": error.to_json()})})


def _answer_class_of_job(message_name: str | None, body: dict[str, Any], success: bool) -> str:
    """The class a finished job is answered with: its message's event, else (a job of the REST API, or one
    from before a restart) the create event when it made an image, the delete event when it made none."""
    if not success:
        code = (body.get("error") or {}).get("code")
        if code in _INTERCEPTOR_CODES:
            return PLAIN_EVENT
    if message_name is not None:
        return ANSWER_CLASS[message_name]
    return ANSWER_CLASS[CREATE] if body.get("inventory") or not success else ANSWER_CLASS[DELETE_IMAGE]


def _result_text(answer_class: str, answer: dict[str, Any]) -> str:
    return json.dumps({answer_class: _without_nulls(answer)})


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _rest_create_body(message: dict[str, Any]) -> dict[str, Any]:
    """The REST body (zsagent.request.parse_body's input) with the message's fields: tags stay at the top."""
    body: dict[str, Any] = {"params": {k: message[k] for k in _CREATE_PARAMS if k in message}}
    for key in ("systemTags", "userTags"):
        if key in message:
            body[key] = message[key]
    return body


def _delete_image(service: TemplateService, message: dict[str, Any], account_uuid: str) -> None:
    """APIDeleteImageMsg: ``uuid`` (required; an image that does not exist is a success, as
    ``successIfResourceNotExisting`` says in [zs] header/.../image/APIDeleteImageMsg.java l.12),
    ``backupStorageUuids`` (optional, non-empty, l.14; this agent deletes from all of the image's backup
    storages, so it must name them all) and ``deleteMode`` (Permissive | Enforcing,
    [zs] header/.../message/APIDeleteMessage.java l.17, l.31-34)."""
    uuid = message.get("uuid")
    if not isinstance(uuid, str):
        raise errors.invalid(f"field[uuid] of message[{DELETE_IMAGE}] is mandatory, can not be null"
                             if uuid is None else f"field[uuid] of message[{DELETE_IMAGE}] must be a string")
    mode = message.get("deleteMode", "Permissive")
    if mode not in ("Permissive", "Enforcing"):
        raise errors.invalid(f"field[deleteMode] must be Permissive or Enforcing, not {mode!r}")
    try:
        image = service.get_image(uuid.strip(), account_uuid)
    except ZsError as e:
        if e.error.code == errors.RESOURCE_NOT_FOUND:
            service.delete_image(uuid.strip(), missing_ok=True, account_uuid=account_uuid)  # ID.1002 if not theirs
            return
        raise
    wanted = message.get("backupStorageUuids")
    if wanted is not None:
        if not isinstance(wanted, list) or not wanted or not all(isinstance(u, str) for u in wanted):
            raise errors.invalid("field[backupStorageUuids] must be a nonempty list of uuids")
        held = {r["backupStorageUuid"] for r in image.get("backupStorageRefs", [])}
        if not held <= set(wanted):
            raise errors.invalid(f"image[uuid:{uuid}] is on backup storages {sorted(held)}; this agent deletes an "
                                 "image from all of them at once, so backupStorageUuids must name them all "
                                 "or be omitted")
    service.delete_image(uuid.strip(), account_uuid=account_uuid)


def _query_images(images: list[dict[str, Any]], message: dict[str, Any]) -> dict[str, Any]:
    """APIQueryImageMsg ([zs] header/.../query/APIQueryMessage.java l.6-17): ``conditions`` (required),
    ``limit`` (default 1000), ``start``, ``count`` (only the total), ``replyWithCount`` (the total too,
    [zs] search/.../query/QueryFacadeImpl.java l.480), ``sortBy`` / ``sortDirection`` (asc | desc) and
    ``fields`` (only these fields of each image), handed to zsagent.api.query as the REST query parameters
    they stand for, so both endpoints answer alike. ``groupBy`` and ``filterName`` are not supported."""
    conditions = message.get("conditions")
    if conditions is None:
        raise errors.invalid(f"field[conditions] of message[{QUERY_IMAGE}] is mandatory, can not be null")
    if not isinstance(conditions, list):
        raise errors.invalid("field[conditions] must be a list of {name, op, value}")
    params = [("q", _condition(c)) for c in conditions]
    for unsupported in ("groupBy", "filterName"):
        if message.get(unsupported) not in (None, ""):
            raise errors.invalid(f"field[{unsupported}] of {QUERY_IMAGE} is not supported by this agent")
    for key in ("limit", "start"):
        if (value := message.get(key)) is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise errors.invalid(f"field[{key}] must be a non-negative integer, not {value!r}")
            params.append((key, str(value)))
    for key in ("count", "replyWithCount"):
        if (value := message.get(key)) is not None:
            params.append((key, str(value).lower()))
    if (sort_by := message.get("sortBy")) is not None:
        direction = message.get("sortDirection", "asc")
        if direction not in ("asc", "desc"):
            raise errors.invalid(f"field[sortDirection] must be asc or desc, not {direction!r}")
        if not isinstance(sort_by, str):
            raise errors.invalid(f"field[sortBy] must be the name of a field, not {sort_by!r}")
        params.append(("sort", ("+" if direction == "asc" else "-") + sort_by))
    if (fields := message.get("fields")) is not None:
        if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
            raise errors.invalid("field[fields] must be a list of field names")
        params.append(("fields", ",".join(fields)))
    return {"success": True, **run_query(images, params)}


def _condition(condition: Any) -> str:
    """One ``{name, op, value}`` as the REST ``q`` text zsagent.api.query reads; or SYS.1007."""
    if not isinstance(condition, dict):
        raise errors.invalid(f"a query condition must be {{name, op, value}}, not {condition!r}")
    name, op, value = condition.get("name"), condition.get("op"), condition.get("value")
    if not isinstance(name, str) or not _FIELD_RE.match(name.strip()):
        raise errors.invalid(f"query condition {condition!r}: 'name' must be a field name")
    if not isinstance(op, str) or op.strip() not in _REST_OPS:
        # [zs] QueryOp.valueOf: "unknown QueryOp type[%s]"
        raise errors.invalid(f"unknown QueryOp type[{op}]; ZStack's operators are {', '.join(_REST_OPS)}")
    op = op.strip()
    if op in _VALUELESS_OPS:
        value = ""
    elif isinstance(value, bool):
        value = "true" if value else "false"
    elif isinstance(value, int | float):
        value = str(value)
    elif isinstance(value, list) and op in ("in", "not in") and all(isinstance(v, str) for v in value):
        value = ",".join(value)
    if not isinstance(value, str):
        raise errors.invalid(f"query condition {condition!r}: 'value' must be a string")
    if op in (">", "<") and value.startswith("="):  # the text form would read as >= / <=
        raise errors.invalid(f"query condition {condition!r}: a value compared with {op} cannot start with '='")
    return f"{name.strip()}{_REST_OPS[op]}{value}"


