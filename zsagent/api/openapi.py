"""The OpenAPI document at /openapi.json, true to what the agent answers.

FastAPI writes each route's path and body; this module writes the rest, one entry per operation in
OPERATIONS: every status code the operation can answer with its content type and schema (ZStack's
ErrorCode for errors, plain text for the refusals ZStack's REST server answers in plain text), the
headers and query parameters the agent reads, and which calls need ``Authorization``. FastAPI's own 422
answer is gone: the agent never sends it (zsagent.api.refusals). A route with no entry here keeps
FastAPI's description and is marked ``x-zsagent-undocumented``; the tests fail on such a mark, so a new
route cannot go undocumented, while the document still serves.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST

from zsagent.api.job_headers import JOB_UUID_PATTERN, MAX_API_TIMEOUT_S, WEB_HOOK_PATTERN
from zsagent.api.query import IMAGE_SCHEMA, Schema
from zsagent.request import (
    BODY_KEYS,
    DESCRIPTION_MAX_CHARS,
    NAME_MAX_CHARS,
    PARAMS_KEYS,
    RESOURCE_UUID_PATTERN,
    SYSTEM_TAG_PATTERN,
    UUID_PATTERN,
)

API = "/zstack/v1"
CREATE = f"{API}/images/data-volume-templates/from/volumes/{{volumeUuid}}"


_REF = "#/components/schemas/"
_JSON_TYPES = {"str": "string", "int": "integer", "bool": "boolean"}


def _nullable(kind: str) -> dict[str, Any]:
    return {"type": [_JSON_TYPES[kind], "null"]}


def _inventory_schema(schema: Schema) -> dict[str, Any]:
    """An inventory as zsagent.api.query types it; no field is required (``fields=`` keeps only some)."""
    properties: dict[str, Any] = {}
    for name, kind in schema.items():
        properties[name] = (_nullable(kind) if isinstance(kind, str)
                            else {"type": "array", "items": _inventory_schema(kind)})
    return {"type": "object", "properties": properties}


_FULL_INVENTORY = {"allOf": [{"$ref": _REF + "ImageInventory"},
                             {"required": ["uuid", "name", "state", "status", "size", "url", "mediaType",
                                           "format", "backupStorageRefs"]}]}
_TYPED_MAP = {"type": "object", "additionalProperties": {"type": "string"},
              "description": "ZStack's schema map: answer path -> Java class (zsagent.api.schema)"}

COMPONENTS: dict[str, Any] = {
    "ErrorCode": {
        "type": "object", "required": ["code", "description", "details"],
        "description": "ZStack's ErrorCode (header/.../errorcode/ErrorCode.java)",
        "properties": {
            "code": {"type": "string", "pattern": r"^[A-Z]+\.[0-9]+$", "examples": ["SYS.1007"]},
            "description": {"type": "string"}, "details": {"type": "string"},
            "elaboration": {"type": ["string", "null"]}, "opaque": {"type": ["object", "null"]},
            "cause": {"anyOf": [{"$ref": _REF + "ErrorCode"}, {"type": "null"}]},
        },
    },
    "ErrorReply": {"type": "object", "required": ["error"], "properties": {"error": {"$ref": _REF + "ErrorCode"}},
                   "description": "A failed call: ZStack's ApiResponse with its error"},
    "ImageInventory": _inventory_schema(IMAGE_SCHEMA),
    "JobLocation": {"type": "object", "required": ["location", "apiTimeout"],
                    "properties": {"location": {"type": "string"},
                                   "apiTimeout": {"type": "integer", "description": "ms"}},
                    "description": "ZStack's 202: poll the location until it answers 200 or 503"},
    "CreateReply": {"type": "object", "required": ["inventory"],
                    "properties": {"inventory": _FULL_INVENTORY, "schema": _TYPED_MAP}},
    "QueryReply": {"type": "object", "properties": {
        "inventories": {"type": "array", "items": {"$ref": _REF + "ImageInventory"}},
        "total": {"type": "integer", "minimum": 0}, "schema": _TYPED_MAP},
        "description": "inventories (with total for replyWithCount=true), or only total for count=true"},
    "ProgressReply": {"type": "object", "required": ["inventories"], "properties": {
        "inventories": {"type": "array", "items": {
            "type": "object", "required": ["taskUuid", "type", "content"],
            "properties": {"taskUuid": {"type": "string"}, "type": {"type": "string"},
                           "content": {"type": "string"}, "phase": {"type": "string"},
                           "percent": {"type": "integer", "minimum": 0, "maximum": 100},
                           "bytesDone": {"type": ["integer", "null"]},
                           "bytesTotal": {"type": ["integer", "null"]}}}},
        "schema": _TYPED_MAP}},
    "ClassicEnvelope": {
        "type": "object", "required": ["state", "createdDate"],
        "description": "ZStack's RestAPIResponse; result is the JSON text of {<event or reply class>: {...}}",
        "properties": {"uuid": {"type": "string"}, "state": {"enum": ["Processing", "Done"]},
                       "createdDate": {"type": "string"}, "finishedDate": {"type": "string"},
                       "result": {"type": "string"}}},
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF + name}


_TEXT = {"text/plain": {"schema": {"type": "string"}}}
_ERROR = {"application/json": {"schema": _ref("ErrorReply")}}
_EMPTY = {"type": "object", "maxProperties": 0}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _ERROR}


def _refusal(description: str, also_error: bool = False) -> dict[str, Any]:
    """A plain-text refusal before the call runs (ZStack's RestException), or also an ErrorCode."""
    return {"description": description, "content": {**_TEXT, **(_ERROR if also_error else {})}}


_AUTH_400 = "Authorization missing, of another scheme or malformed; a bad access key Date (plain text)"
_AUTH_403 = ("an access key refused: unknown, wrong signature or time skew (plain text); another account's "
             "volume or image (ID.1002)")
_AUTHENTICATED = {
    "400": _refusal(_AUTH_400),
    "403": _refusal(_AUTH_403, also_error=True),
    "503": _error("the session is not valid (ID.1001), or the agent is shutting down (SYS.1006)"),
}
#: A call that runs as a job and, without a request for async, answers with its result (app.submit).
_JOB_CALL = {
    **_AUTHENTICATED,
    "202": _json(_ref("JobLocation"), "accepted (X-Job-UUID, X-Web-Hook or Prefer: respond-async): poll it"),
    "400": _refusal(_AUTH_400 + "; a bad X-Job-UUID, X-API-Timeout or X-Web-Hook (plain text); "
                    "an invalid argument (SYS.1007)", also_error=True),
    "401": _error("the session is not valid (ID.1001)"),
    "404": _error("the volume or a backup storage does not exist (SYS.1003)"),
    "413": _refusal("the request body is over [agent] max_body_bytes (plain text)"),
    "500": _error("an unexpected internal error (SYS.1000)"),
    "503": _error("the copy failed (SYS.1006), was cancelled (SYS.1017), or the agent is shutting down"),
    "504": _error("the job outlived its X-API-Timeout (SYS.1001)"),
}


def _header(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "schema": schema, "description": description}


_JOB_HEADERS = [
    _header("X-Job-UUID", {"type": "string", "pattern": JOB_UUID_PATTERN},
            "the job's uuid (ZStack's SDK sends one): answer 202 and poll /zstack/v1/api-jobs/<it>"),
    _header("X-Web-Hook", {"type": "string", "pattern": WEB_HOOK_PATTERN},
            "POST the result here when the job ends (X-Job-UUID and X-Job-Success headers); answers 202"),
    _header("X-API-Timeout", {"type": "integer", "minimum": 1, "maximum": MAX_API_TIMEOUT_S},
            "seconds; a job still running then is cancelled and fails with SYS.1001"),
    _header("Prefer", {"type": "string"}, "respond-async: answer 202 and poll"),
    _header("X-JSON-Schema", {"type": "string"}, "any value: add ZStack's schema map to a successful answer"),
]
_SCHEMA_HEADER = _JOB_HEADERS[-1]


def _uuid_path(name: str, description: str, pattern: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if pattern:
        schema["pattern"] = UUID_PATTERN
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


_COUNT = {"type": "integer", "minimum": 0, "maximum": 10**18 - 1}  # zsagent.api.query._natural: 18 digits
_SORTABLE = [name for name, kind in IMAGE_SCHEMA.items() if isinstance(kind, str)]
_QUERY_PARAMETERS = [
    {"name": "q", "in": "query", "required": False, "style": "form", "explode": True,
     "schema": {"type": "array", "items": {"type": "string"}},
     "description": "<field><op><value>, ANDed; ops = != > >= < <= ?= !?= ~= !~=, or '<field> is null|not null'"},
    {"name": "limit", "in": "query", "required": False, "schema": _COUNT,
     "description": "at most this many inventories (default 1000)"},
    {"name": "start", "in": "query", "required": False, "schema": _COUNT},
    {"name": "sort", "in": "query", "required": False,
     "schema": {"type": "string", "pattern": f"^[+-]?({'|'.join(_SORTABLE)})$"}},
    {"name": "count", "in": "query", "required": False, "schema": {"type": "boolean"},
     "description": "true: only the total"},
    {"name": "replyWithCount", "in": "query", "required": False, "schema": {"type": "boolean"}},
    {"name": "fields", "in": "query", "required": False,
     "schema": {"type": "string", "pattern": f"^({'|'.join(IMAGE_SCHEMA)})(,({'|'.join(IMAGE_SCHEMA)}))*$"},
     "description": "comma-separated top-level fields to keep"},
]

def _optional(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional field: null is taken as absent (zsagent.request)."""
    return {**schema, "type": [schema["type"], "null"]}


_UUID = {"type": "string", "pattern": UUID_PATTERN}
_USER_TAGS = _optional({"type": "array", "items": {"type": "string"}})
_SYSTEM_TAGS = _optional({"type": "array", "items": {"type": "string", "pattern": SYSTEM_TAG_PATTERN},
                          "description": "each at most once per tag; see README for what each does"})
CREATE_BODY: dict[str, Any] = {
    "type": "object", "required": ["params"], "additionalProperties": False,
    "properties": {
        "params": {
            "type": "object", "required": ["name"], "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "maxLength": NAME_MAX_CHARS,
                         "description": "trimmed as Java trims; length in UTF-16 code units, as Java counts"},
                "description": _optional({"type": "string", "maxLength": DESCRIPTION_MAX_CHARS}),
                "volumeUuid": {"description": "ignored: the path's volumeUuid is the volume"},
                "backupStorageUuids": _optional({"type": "array", "minItems": 1, "items": _UUID,
                                                 "description": "omitted or null: the agent chooses one"}),
                "resourceUuid": _optional({"type": "string", "pattern": RESOURCE_UUID_PATTERN}),
                "tagUuids": _optional({"type": "array", "items": _UUID}),
                "systemTags": _SYSTEM_TAGS, "userTags": _USER_TAGS,
                "requestIp": {"description": "sent by ZStack's Java SDK; ignored"},
            },
        },
        "systemTags": _SYSTEM_TAGS, "userTags": _USER_TAGS,
    },
}
assert set(CREATE_BODY["properties"]) == set(BODY_KEYS)
assert set(CREATE_BODY["properties"]["params"]["properties"]) == {*PARAMS_KEYS, "requestIp"}


@dataclass(frozen=True)
class Operation:
    """What the document says of one operation beyond its path: ``responses`` by status code,
    ``parameters`` (added to the path's), whether it needs ``Authorization`` (True, False, or "optional":
    read when sent, never refused), a request body."""

    responses: dict[str, Any]
    parameters: list[dict[str, Any]] = field(default_factory=list)
    authenticated: bool | str = True
    body: dict[str, Any] | None = None
    path_parameters: dict[str, dict[str, Any]] = field(default_factory=dict)


_CLASSIC_CALL = Operation(
    {"200": _json(_ref("ClassicEnvelope"), "the envelope, errors included (in result, success false)"),
     "413": _refusal("the body is over [agent] max_body_bytes")},
    authenticated=False,
    body={"required": True, "content": {"application/json": {"schema": {
        "type": "object", "description": '{"<message class>": {...fields..., "session": {"uuid": ...}}}'}}}})
_CLASSIC_RESULT = Operation(
    {"200": _json(_ref("ClassicEnvelope"), "the job's envelope"),
     "404": _refusal("No api result[uuid:...] found")},
    authenticated=False, path_parameters={"uuid": _uuid_path("uuid", "the job's uuid")})

OPERATIONS: dict[tuple[str, str], Operation] = {
    ("post", CREATE): Operation(
        {**_JOB_CALL, "200": _json(_ref("CreateReply"), "the template's ImageInventory")},
        _JOB_HEADERS, body={"required": True, "content": {"application/json": {"schema": CREATE_BODY}}},
        path_parameters={"volumeUuid": _uuid_path("volumeUuid", "the data volume", pattern=True)}),
    ("get", f"{API}/api-jobs/{{jobUuid}}"): Operation(
        {"200": _json({"type": "object"}, "done: the call's answer ({inventory} or {} for a delete)"),
         "202": _json(_EMPTY, "still running"),
         "404": _refusal("the job has been expired, or is another account's"),
         "503": _error("the job failed: its ErrorCode")},
        [_SCHEMA_HEADER], authenticated="optional",
        path_parameters={"jobUuid": _uuid_path("jobUuid", "the job (its X-Job-UUID or location)")}),
    ("delete", f"{API}/api-jobs/{{jobUuid}}"): Operation(
        {**_AUTHENTICATED, "202": _json(_EMPTY, "asked to stop"),
         "404": _error("no such job (SYS.1003)"), "409": _error("the job has already finished (SYS.1007)")},
        path_parameters={"jobUuid": _uuid_path("jobUuid", "the job")}),
    ("get", f"{API}/task-progresses/{{jobUuid}}"): Operation(
        {**_AUTHENTICATED, "200": _json(_ref("ProgressReply"), "the job's progress; none known: an empty list")},
        [_SCHEMA_HEADER], path_parameters={"jobUuid": _uuid_path("jobUuid", "the job")}),
    ("get", f"{API}/images/{{uuid}}"): Operation(
        {**_AUTHENTICATED, "200": _json(_ref("QueryReply"), "the image, or an empty list")},
        path_parameters={"uuid": _uuid_path("uuid", "the image")}),
    ("get", f"{API}/images"): Operation(
        {**_AUTHENTICATED, "200": _json(_ref("QueryReply"), "the images that match"),
         "400": _refusal(_AUTH_400 + "; a query parameter it cannot take (SYS.1007)", also_error=True)},
        _QUERY_PARAMETERS),
    ("delete", f"{API}/images/{{uuid}}"): Operation(
        {**_JOB_CALL, "200": _json({"type": "object", "additionalProperties": False,
                                    "properties": {"schema": _TYPED_MAP}},
                                   "deleted (also when it was not there); schema: {} with X-JSON-Schema")},
        _JOB_HEADERS, path_parameters={"uuid": _uuid_path("uuid", "the image")}),
    ("get", "/metrics"): Operation(
        {"200": {"description": "Prometheus metrics",
                 "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}}, authenticated=False),
    ("get", "/health"): Operation(
        {"200": _json({"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
                      "the agent answers")}, authenticated=False),
    ("post", "/zstack/api"): _CLASSIC_CALL,
    ("put", "/zstack/api"): _CLASSIC_CALL,
    ("get", "/zstack/api/result/{uuid}"): _CLASSIC_RESULT,
    ("put", "/zstack/api/result/{uuid}"): _CLASSIC_RESULT,
}

SECURITY_SCHEME = {
    "type": "apiKey", "in": "header", "name": "Authorization",
    "description": "'OAuth <sessionUuid>', or 'ZStack <AccessKeyId>:<signature>' with a Date header. "
                   "Missing or of another scheme: 400 in plain text, as ZStack answers; an unknown session: "
                   "ID.1001 (503 for queries, through the job for calls).",
}


UNDOCUMENTED = "x-zsagent-undocumented"


def document(app: FastAPI, base: dict[str, Any]) -> dict[str, Any]:
    """``base`` (FastAPI's document for ``app``) with OPERATIONS applied; an operation without an entry is
    marked UNDOCUMENTED."""
    doc = copy.deepcopy(base)
    for path, methods in doc.get("paths", {}).items():
        for method, operation in methods.items():
            spec = OPERATIONS.get((method, path))
            if spec is None:
                operation[UNDOCUMENTED] = f"no entry in zsagent.api.openapi.OPERATIONS for {method.upper()} {path}"
                continue
            fastapi_path = {p["name"]: p for p in operation.get("parameters", []) if p.get("in") == "path"}
            parameters = [spec.path_parameters.get(name, fastapi_path[name]) for name in fastapi_path]
            operation["parameters"] = parameters + spec.parameters
            if not operation["parameters"]:
                del operation["parameters"]
            operation["responses"] = spec.responses
            if spec.body is not None:
                operation["requestBody"] = spec.body
            operation["security"] = {True: [{"zstack": []}], False: [], "optional": [{}, {"zstack": []}]}[
                spec.authenticated]
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas.update(COMPONENTS)
    components["securitySchemes"] = {"zstack": SECURITY_SCHEME}
    return doc


def install(app: FastAPI) -> None:
    """Serve ``document`` at app.openapi_url, built once."""
    built: dict[str, Any] = {}
    lock = threading.Lock()
    fastapi_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        with lock:
            if not built:
                built.update(document(app, fastapi_openapi()))
            return built

    app.openapi = openapi  # type: ignore[method-assign]
