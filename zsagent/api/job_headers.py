"""The headers that make a REST call a job: X-Job-UUID, X-API-Timeout and X-Web-Hook, checked at the door.

Each problem is a plain-text 400, as ZStack's REST server refuses a bad X-Job-UUID (RestServer.java
handleApi l.963-976). Where ZStack is looser, on purpose:
- X-Job-UUID: ZStack checks only its length, though its message asks for "a UUID with '-' stripped"; here
  it must be 32 hex digits, since it becomes the job's URL (/zstack/v1/api-jobs/<it>) and its record.
- X-API-Timeout: ZStack's Long.parseLong throws on anything but a number, answered as an unexpected error
  (500 with the exception's text, l.980-988 and l.686-689); here that is a 400, and so is a timeout that is
  not positive or longer than MAX_API_TIMEOUT_S.
- X-Web-Hook: ZStack parses it only when the job ends (okhttp's HttpUrl.parse, l.342, which takes http and
  https URLs); here a value that is not such a URL is refused before the job starts.
"""

from __future__ import annotations

import re

from zsagent.errors import RestRefusal
from zsagent.jobs import JobManager

#: The longest X-API-Timeout the agent takes, in seconds (ten years; Python's timers stop at ~292 years).
MAX_API_TIMEOUT_S = 10 * 365 * 24 * 3600
JOB_UUID_PATTERN = r"^[0-9a-fA-F]{32}$"
_PORT = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
#: An http(s) URL in ASCII: a host name or address (IPv6 in brackets), an optional port, then any
#: printable characters.
WEB_HOOK_PATTERN = rf"^https?://([A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(:{_PORT})?([/?#][!-~]*)?$"
_JOB_UUID_RE = re.compile(JOB_UUID_PATTERN)
_WEB_HOOK_RE = re.compile(WEB_HOOK_PATTERN)


def check_job_uuid(value: str | None, jobs: JobManager) -> str | None:
    if value is None:
        return None
    if not _JOB_UUID_RE.fullmatch(value):
        raise RestRefusal(400, "Invalid header[X-Job-UUID], it must be a UUID with '-' stripped")
    if jobs.exists(value):
        raise RestRefusal(400, f"Duplicate job uuid[{value}]")
    return value


def api_timeout_s(value: str | None, default_s: int) -> int:
    if value is None:
        return default_s
    text = value.strip()
    if not re.fullmatch(r"[0-9]{1,12}", text) or not 1 <= int(text) <= MAX_API_TIMEOUT_S:
        raise RestRefusal(400, f"Invalid header[X-API-Timeout], it must be a whole number of seconds from 1 to "
                               f"{MAX_API_TIMEOUT_S}, not {value!r}")
    return int(text)


def check_web_hook(value: str | None) -> str | None:
    if value is None:
        return None
    if not _WEB_HOOK_RE.fullmatch(value.strip()):
        raise RestRefusal(400, "Invalid header[X-Web-Hook], it must be an http or https URL")
    return value.strip()
