"""schemathesis hooks and checks for the agent's API (loaded with SCHEMATHESIS_HOOKS=schemathesis_hooks).

Requests are rewritten so that the fuzzing stays on this machine and exercises new work each time:
- an X-Web-Hook the agent would take is replaced by ZSAGENT_FUZZ_WEB_HOOK (a receiver on 127.0.0.1): the
  agent posts results there and nowhere else;
- an X-Job-UUID the agent would take is replaced by a fresh one (a repeated one is a 400 by design);
- half of the volume uuids drawn for a create are replaced by ZSAGENT_FUZZ_VOLUME, a real volume, and half
  of the backup storage lists by [ZSAGENT_FUZZ_BACKUP_STORAGE], so that drawn names, descriptions and tags
  reach a real copy and the images it records.

Checks beside schemathesis' own (tests/schemathesis.toml says which of those run, and why some do not):
- zstack_error_body: every 4xx/5xx is ZStack's ErrorCode in JSON (code, description, details) or one of
  the plain-text refusals of ZStack's REST server; never FastAPI's ``{"detail": ...}``, never a traceback.
- zstack_positive_acceptance: schema-valid input is not refused as SYS.1007, except by the rules a JSON
  Schema cannot say (ALLOWED_REFUSALS); for a job (202) the job's own answer is checked.
- zstack_job_outcome: a job the agent accepted (202) ends, is answered by ZStack's poll rules (200, or
  503 with an ErrorCode), never with an internal error (SYS.1000); a job made from schema-violating input
  fails (ZStack checks arguments in the job: ApiMediatorImpl.java l.68-71).
- zstack_classic_envelope: the classic endpoint answers with ZStack's envelope; its result parses, and an
  error in it is an ErrorCode that is not SYS.1000.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid

import httpx
import schemathesis

from zsagent.api.job_headers import JOB_UUID_PATTERN, check_web_hook
from zsagent.errors import RestRefusal
from zsagent.request import UUID_RE

#: Refusals of schema-valid input that are right: rules across fields or beyond JSON Schema.
ALLOWED_REFUSALS = (
    "conflict: give",  # two values for one system tag
    "needs the qcow2 format",  # template::compression with template::format::raw
    "(UTF-16 code units)",  # Java counts a character outside the BMP twice; JSON Schema once
    "is already used by another image",  # a resourceUuid drawn twice, with other parameters
    "is being created by another request",
    "must be qcow2, but backup storage",  # compression asked of a storage that keeps raw templates
)
POLL_LIMIT_S = 60
#: job location -> its final (status, body), so that two checks poll a job once.
_FINAL_ANSWERS: dict[str, tuple[int, object]] = {}


def _header(headers, name: str) -> str | None:
    return next((key for key in (headers or {}) if key.lower() == name.lower()), None)


@schemathesis.hook
def before_call(context, case, kwargs):
    headers = case.headers if case.headers is not None else {}
    if (key := _header(headers, "X-Web-Hook")) is not None:
        try:
            check_web_hook(str(headers[key]))
            headers[key] = os.environ["ZSAGENT_FUZZ_WEB_HOOK"]
        except RestRefusal:
            pass  # refused at the door: nothing is posted
    key = _header(headers, "X-Job-UUID")
    if key is not None and re.fullmatch(JOB_UUID_PATTERN, str(headers[key])):
        headers[key] = uuid.uuid4().hex
    case.headers = headers
    drawn = (case.path_parameters or {}).get("volumeUuid")
    if isinstance(drawn, str) and UUID_RE.fullmatch(drawn) and int(drawn, 16) % 2 == 0:
        case.path_parameters["volumeUuid"] = os.environ["ZSAGENT_FUZZ_VOLUME"]
    params = case.body.get("params") if isinstance(case.body, dict) else None
    storages = params.get("backupStorageUuids") if isinstance(params, dict) else None
    if isinstance(storages, list) and storages and all(isinstance(u, str) and UUID_RE.fullmatch(u) for u in storages) \
            and int(storages[0], 16) % 2 == 0:
        params["backupStorageUuids"] = [os.environ["ZSAGENT_FUZZ_BACKUP_STORAGE"]]


def _is_error_code(value) -> bool:
    return (isinstance(value, dict) and all(isinstance(value.get(k), str) for k in ("code", "description", "details"))
            and value["code"] != "")


def _json(response):
    try:
        return json.loads(response.content)
    except ValueError:
        return None


def _content_type(response) -> str:
    values = response.headers.get("content-type") or [""]
    return (values[0] if isinstance(values, list) else values).split(";")[0].strip()


@schemathesis.check
def zstack_error_body(ctx, response, case):
    if response.status_code < 400:
        return None
    kind = _content_type(response)
    if kind == "application/json":
        body = _json(response)
        assert isinstance(body, dict) and _is_error_code(body.get("error")), \
            f"a {response.status_code} whose JSON is not ZStack's {{\"error\": ErrorCode}}: {response.text[:300]}"
        assert "Traceback" not in response.text
    elif kind == "text/plain":
        assert response.text.strip() and "Traceback" not in response.text, \
            f"a {response.status_code} refusal without a reason: {response.text[:300]!r}"
    else:
        raise AssertionError(f"a {response.status_code} answered as {kind!r}: {response.text[:300]}")
    return None


def _job_answer(response):
    """The final answer of the job a 202 names: (status, parsed body)."""
    location = (_json(response) or {}).get("location")
    assert isinstance(location, str), f"202 without a location: {response.text[:300]}"
    if location in _FINAL_ANSWERS:
        return _FINAL_ANSWERS[location]
    deadline = time.monotonic() + POLL_LIMIT_S
    sent = response.request.headers.get("Authorization")
    credentials = {"Authorization": sent} if sent else {}  # a job is shown to its own account
    while True:
        polled = httpx.get(location, headers=credentials, timeout=30)
        if polled.status_code != 202:
            break
        assert time.monotonic() < deadline, f"job {location} still running after {POLL_LIMIT_S} s"
        time.sleep(0.05)
    try:
        body = polled.json()
    except ValueError:
        body = None
    _FINAL_ANSWERS[location] = (polled.status_code, body)
    return _FINAL_ANSWERS[location]


def _is_negative(case) -> bool:
    meta = case.meta
    return meta is not None and meta.generation.mode.is_negative


def _refused_as_invalid(status: int, body) -> str | None:
    """The SYS.1007 details when (status, body) refuses the input as invalid."""
    if status in (400, 503) and isinstance(body, dict) and _is_error_code(body.get("error")) \
            and body["error"]["code"] == "SYS.1007":
        return body["error"]["details"]
    return None


@schemathesis.check
def zstack_job_outcome(ctx, response, case):
    if response.status_code != 202 or "/zstack/v1/" not in case.path:
        return None
    if not (_json(response) or {}).get("location"):
        return None  # a cancel's 202 {}
    status, body = _job_answer(response)
    assert status in (200, 503), f"job answered {status}: {body}"
    if status == 503:
        assert isinstance(body, dict) and _is_error_code(body.get("error")), f"failed job without ErrorCode: {body}"
        assert body["error"]["code"] != "SYS.1000", f"job failed with an internal error: {body['error']}"
    if _is_negative(case) and _negated_only_in_job_input(case):
        assert status == 503, f"a job made from schema-violating input succeeded: {body}"
    return None


def _negated_only_in_job_input(case) -> bool:
    """Whether the negation is in what the job reads (body or path), not in headers the door checks."""
    from schemathesis.core.parameters import ParameterLocation

    meta = case.meta
    return any(location in (ParameterLocation.BODY, ParameterLocation.PATH) and component.mode.is_negative
               for location, component in meta.components.items())


@schemathesis.check
def zstack_positive_acceptance(ctx, response, case):
    if _is_negative(case) or case.meta is None:
        return None
    if response.status_code == 202 and "/zstack/v1/" in case.path and (_json(response) or {}).get("location"):
        status, body = _job_answer(response)
    else:
        status, body = response.status_code, _json(response)
    details = _refused_as_invalid(status, body)
    if details is None or case.path == "/zstack/v1/images":  # the q language: see tests/schemathesis.toml
        return None
    assert any(phrase in details for phrase in ALLOWED_REFUSALS), f"schema-valid input refused: {details}"
    return None


@schemathesis.check
def zstack_classic_envelope(ctx, response, case):
    if not case.path.startswith("/zstack/api") or response.status_code != 200:
        return None
    envelope = _json(response)
    assert isinstance(envelope, dict) and envelope.get("state") in ("Processing", "Done"), response.text[:300]
    if envelope["state"] == "Done" and "result" in envelope:
        result = json.loads(envelope["result"])
        assert isinstance(result, dict) and len(result) == 1, envelope["result"][:300]
        [answer] = result.values()
        if answer.get("success") is False:
            assert _is_error_code(answer.get("error")), answer
            assert answer["error"]["code"] != "SYS.1000", f"internal error: {answer['error']}"
    return None
