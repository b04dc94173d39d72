"""The management node's (MN) agent transport, as ZStack's own sources define it.

References are to zstackio/zstack 5a29293b ([zs]) and zstackio/zstack-utility f7b496e8 ([zsu]), as
listed in the project's protocol notes (zstack-agent-protocol.md).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

TASK_UUID_HEADER = "taskuuid"
"""[zs] core/.../rest/RESTFacadeImpl.java l.330-340: the MN's id of one async call; the callback repeats it."""
CALLBACK_URL_HEADER = "callbackurl"
"""[zs] RESTFacadeImpl.java l.127-152, l.330-340: where the result is POSTed."""
COMMAND_PATH_HEADER = "commandpath"
PROGRESS_COMMAND_PATH = "/progress/report"
"""[zs] RESTFacadeImpl.sendCommand l.221-254 and ProgressReportService.java l.132-142."""
CALLBACK_SUFFIX = "/asyncrest/callback"
SEND_COMMAND_SUFFIX = "/asyncrest/sendcommand"
"""[zs] header/.../rest/RESTConstant.java l.4-10: the progress URL is the callback's base + this."""
MISSING_TASK_UUID = "taskUuid missing in request header"
"""[zsu] zstacklib/zstacklib/utils/http.py AsyncUirHandler.index l.178-195: 400 with this text."""


class MalformedCommand(ValueError):
    """The command cannot be understood; the message says which field and why (it goes to the MN)."""


@dataclass(frozen=True)
class Envelope:
    """What every HasThreadContext command carries besides its own fields.

    ([zs] header/src/main/java/org/zstack/header/HasThreadContextAspect.aj l.8-29.)
    thread_context / thread_context_stack: echoed verbatim in progress reports; api_id: its "api" entry,
    the cancellation key ([zs] CPSB l.3140-3170; KVMHost.cancelJob l.5999-6021); task_stage: the "start-end"
    window of the whole API's progress this command covers (None: none given); expires_epoch: when the MN
    stops waiting, seconds since 1970: its ``__messagedeadline__``, and no later than the full
    ``__messagetimeout__`` after arrival (RESTFacadeImpl l.303-356, l.455-459), None when neither is given.
    """

    thread_context: dict[str, Any] | None
    thread_context_stack: list[Any] | None
    api_id: str | None
    task_stage: str | None
    expires_epoch: float | None


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The command as the MN's Gson wrote it; a duplicated key (``kvmHostAddons``, [zs] KVMHost.java
    l.532-560) keeps its last value, as Gson's reader on the agent side does."""
    try:
        value = json.loads(body.decode("utf-8")) if body.strip() else None
    except (UnicodeDecodeError, ValueError) as e:
        raise MalformedCommand(f"the command body is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise MalformedCommand("the command body is not a JSON object")
    return value


def envelope(cmd: dict[str, Any], now_epoch: float | None = None) -> Envelope:
    now = time.time() if now_epoch is None else now_epoch
    context = cmd.get("threadContext")
    if context is not None and not isinstance(context, dict):
        raise MalformedCommand("threadContext is not an object")
    stack = cmd.get("threadContextStack")
    if stack is not None and not isinstance(stack, list):
        raise MalformedCommand("threadContextStack is not a list")
    api_id = (context or {}).get("api")
    stage = (context or {}).get("task-stage")
    if stage is not None:
        stage_window(stage)  # checked now: a bad window is a malformed command
    task = cmd.get("taskContext") or {}
    if not isinstance(task, dict):
        raise MalformedCommand("taskContext is not an object")
    limits = []
    for key, relative in (("__messagedeadline__", False), ("__messagetimeout__", True)):
        value = task.get(key)
        if value is None:
            continue
        try:
            ms = int(str(value))
        except ValueError:
            raise MalformedCommand(f"taskContext.{key} {value!r} is not a number of milliseconds") from None
        limits.append(now + ms / 1000 if relative else ms / 1000)
    return Envelope(context, stack, api_id if isinstance(api_id, str) else None,
                    stage if isinstance(stage, str) else None, min(limits) if limits else None)


def stage_window(stage: str | None, default: tuple[int, int] = (0, 100)) -> tuple[int, int]:
    """``"start-end"`` of threadContext["task-stage"] ([zsu] zstacklib/zstacklib/utils/report.py
    get_scale l.17-23); ``default`` when absent."""
    if not stage:
        return default
    try:
        start, end = (int(part) for part in stage.split("-"))
    except ValueError:
        raise MalformedCommand(f"threadContext.task-stage {stage!r} is not \"start-end\"") from None
    if not 0 <= start <= end <= 100:
        raise MalformedCommand(f"threadContext.task-stage {stage!r} is outside 0-100")
    return start, end


def stage_percent(percent: float, window: tuple[int, int]) -> int:
    """The command's own percentage on the API's global scale: ``int(p/100*(end-start)+start)``
    ([zsu] report.py get_exact_percent_from_scale l.30-31)."""
    start, end = window
    return int(float(percent) / 100 * (end - start) + start)


def send_command_url(cmd: dict[str, Any], callback_url: str) -> str | None:
    """Where progress goes: the command's ``sendCommandUrl`` (Ceph ``cp`` and sftp upload), else the one
    derived from the callback URL (KVM-side commands carry none; kvmagent learns it at /host/connect,
    [zsu] kvmagent/kvmagent/plugins/host_plugin.py l.1009-1012; same base, RESTConstant l.4-10)."""
    url = cmd.get("sendCommandUrl")
    if isinstance(url, str) and url:
        return url
    if callback_url.endswith(CALLBACK_SUFFIX):
        return callback_url[: -len(CALLBACK_SUFFIX)] + SEND_COMMAND_SUFFIX
    return None


def response_body(rsp: dict[str, Any]) -> bytes:
    """A response as the Python agents send it: null fields dropped ([zsu] jsonobject.py l.175-203), ASCII
    only (``\\u`` escapes: the MN's servlet joins lines and reads bytes, RESTFacadeImpl l.476-482), compact."""
    clean = {k: v for k, v in rsp.items() if v is not None}
    return json.dumps(clean, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def success(**fields: Any) -> dict[str, Any]:
    """On success the Python agents send ``"error":""`` ([zs] CephMonBase.AgentResponse l.114-143)."""
    return {"success": True, "error": "", **fields}


def failure(error: str, **fields: Any) -> dict[str, Any]:
    """The MN tests only ``success`` (protocol notes §1.3); ``error`` is shown to the operator."""
    return {"success": False, "error": error, **fields}


def progress_report(env: Envelope, progress: int, process_type: str) -> dict[str, Any]:
    """ProgressCommands.ProgressReportCmd ([zs] core/.../progress/ProgressCommands.java l.27-35; the
    Python side's fields: [zsu] report.py Report.report l.82-111): the command's thread context verbatim."""
    return {"threadContextMap": env.thread_context or {}, "threadContextStack": env.thread_context_stack or [],
            "progress": str(progress), "processType": process_type}
