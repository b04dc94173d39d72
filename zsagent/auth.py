"""Who is calling: ``Authorization: OAuth <sessionUuid>`` checked against a sessions file, or against a
ZStack management node. Session tokens are compared in constant time and never logged."""

from __future__ import annotations

import hmac
import logging
import os
import re
import threading
import time

import httpx

from zsagent import errors
from zsagent.errors import ZsError

log = logging.getLogger(__name__)

_HEADER_RE = re.compile(r"^OAuth ([0-9a-f]{32})$")


def session_from_header(value: str | None) -> str:
    """The session uuid of an Authorization header, or ID.1000."""
    match = _HEADER_RE.match((value or "").strip())
    if not match:
        raise ZsError(errors.INVALID_AUTHORIZATION,
                      "the Authorization header must be 'OAuth <sessionUuid>' (32 lowercase hex digits)")
    return match.group(1)


class SessionsFile:
    """``<sessionUuid> <accountUuid>`` per line ('#' comments); re-read when the file changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[float, int] | None = None
        self._sessions: list[tuple[str, str]] = []

    def _load(self) -> list[tuple[str, str]]:
        try:
            st = os.stat(self.path)
        except OSError as e:
            log.error("sessions file %s cannot be read: %s", self.path, e.strerror)
            return []
        stamp = (st.st_mtime, st.st_size)
        with self._lock:
            if stamp != self._stamp:
                sessions = []
                with open(self.path) as f:
                    for number, line in enumerate(f, 1):
                        fields = line.split("#", 1)[0].split()
                        if not fields:
                            continue
                        if len(fields) != 2:
                            log.warning("%s:%d: expected '<sessionUuid> <accountUuid>'", self.path, number)
                            continue
                        sessions.append((fields[0], fields[1]))
                self._sessions, self._stamp = sessions, stamp
            return self._sessions

    def account_of(self, session_uuid: str) -> str:
        """The account uuid of a valid session, or ID.1001."""
        account = None
        for known, acct in self._load():  # look at every entry: the time taken does not leak a match
            if hmac.compare_digest(known.encode(), session_uuid.encode()):
                account = acct
        if account is None:
            raise ZsError(errors.INVALID_SESSION, "the session is invalid or expired")
        return account


class ManagementNodeSessions:
    """Asks a ZStack management node (``GET /zstack/v1/accounts/sessions/{uuid}/valid``); answers are
    cached for ``cache_s``. The account is the one given as ``account_uuid``."""

    def __init__(self, url: str, account_uuid: str, cache_s: int = 30, timeout_s: float = 10) -> None:
        self.url = url.rstrip("/")
        self.account_uuid = account_uuid
        self.cache_s = cache_s
        self.timeout_s = timeout_s
        self._cache: dict[str, tuple[float, bool]] = {}
        self._lock = threading.Lock()

    def account_of(self, session_uuid: str) -> str:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(session_uuid)
        if cached is None or now - cached[0] > self.cache_s:
            try:
                answer = httpx.get(f"{self.url}/zstack/v1/accounts/sessions/{session_uuid}/valid",
                                   timeout=self.timeout_s)
                valid = answer.status_code == 200 and bool(answer.json().get("valid"))
            except (httpx.HTTPError, ValueError) as e:
                raise ZsError(errors.INTERNAL_ERROR, f"cannot ask the management node about the session: "
                                                     f"{type(e).__name__}") from None
            with self._lock:
                self._cache[session_uuid] = (now, valid)
            cached = (now, valid)
        if not cached[1]:
            raise ZsError(errors.INVALID_SESSION, "the session is invalid or expired")
        return self.account_uuid
