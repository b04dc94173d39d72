"""ZStack ErrorCode: the error shape every failure of the agent is reported in.

``{"code": "SYS.1007", "description": ..., "details": ..., "elaboration": null, "opaque": null,
"cause": <ErrorCode or null>}`` — codes as ZStack uses them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

INVALID_ARGUMENT = "SYS.1007"
RESOURCE_NOT_FOUND = "SYS.1003"
OPERATION_FAILURE = "SYS.1006"
INTERNAL_ERROR = "SYS.1000"
TIMEOUT = "SYS.1001"
CANCELLED = "SYS.1017"
INVALID_AUTHORIZATION = "ID.1000"
INVALID_SESSION = "ID.1001"
PERMISSION_DENIED = "ID.1002"

DESCRIPTIONS = {
    INVALID_ARGUMENT: "One or more API argument is invalid",
    RESOURCE_NOT_FOUND: "Unable to find the resource",
    OPERATION_FAILURE: "An operation failed",
    INTERNAL_ERROR: "An internal error happened",
    TIMEOUT: "An operation timed out",
    CANCELLED: "The operation was cancelled",
    INVALID_AUTHORIZATION: "Missing or malformed Authorization header",
    INVALID_SESSION: "Session expired or invalid",
    PERMISSION_DENIED: "Permission denied",
}

# HTTP status for a synchronous answer carrying this code.
HTTP_STATUS = {
    INVALID_ARGUMENT: 400,
    RESOURCE_NOT_FOUND: 404,
    OPERATION_FAILURE: 503,
    INTERNAL_ERROR: 500,
    TIMEOUT: 504,
    CANCELLED: 503,
    INVALID_AUTHORIZATION: 401,
    INVALID_SESSION: 401,
    PERMISSION_DENIED: 403,
}


@dataclass
class ErrorCode:
    code: str
    details: str
    cause: ErrorCode | None = None
    description: str | None = None
    elaboration: str | None = None
    opaque: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "description": self.description or DESCRIPTIONS.get(self.code, "Error"),
            "details": self.details,
            "elaboration": self.elaboration,
            "opaque": self.opaque,
            "cause": self.cause.to_json() if self.cause else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ErrorCode:
        return cls(data["code"], data.get("details") or "",
                   cls.from_json(data["cause"]) if data.get("cause") else None,
                   data.get("description"), data.get("elaboration"), data.get("opaque"))

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)


class ZsError(Exception):
    """An error with its ErrorCode; raised by the service, turned into the response by the API."""

    def __init__(self, code: str, details: str, cause: ErrorCode | None = None) -> None:
        super().__init__(f"{code}: {details}")
        self.error = ErrorCode(code, details, cause)


def invalid(details: str) -> ZsError:
    return ZsError(INVALID_ARGUMENT, details)


def not_found(details: str) -> ZsError:
    return ZsError(RESOURCE_NOT_FOUND, details)


def operation_failed(details: str, cause: ErrorCode | None = None) -> ZsError:
    return ZsError(OPERATION_FAILURE, details, cause)


class RestRefusal(Exception):
    """A request ZStack's REST server refuses before it becomes an API message: answered at once with
    ``status`` and ``text`` as plain text, not an ErrorCode (zstackio/zstack
    rest/src/main/java/org/zstack/rest/RestServer.java l.685-686 and l.587-600: ``RestException`` →
    ``sendResponse(e.statusCode, e.error, rsp)``)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"{status}: {text}")
        self.status = status
        self.text = text
