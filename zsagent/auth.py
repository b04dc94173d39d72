"""Who is calling: ``Authorization: OAuth <sessionUuid>`` checked against a sessions file or a ZStack
management node, or ``Authorization: ZStack <AccessKeyId>:<signature>`` with a ``Date`` header, checked
against an access keys file. ``Authenticator`` is the one entry point the API uses. Session tokens and
access key secrets are compared in constant time and never logged.

Which refusals are immediate follows ZStack's REST server (zstackio/zstack snapshot 5a29293bd5,
rest/src/main/java/org/zstack/rest/RestServer.java ``handleApi`` l.866-903): a missing or unknown
Authorization, and everything about an access key (Date, format, key, signature), are refused at once in
plain text (``RestRefusal``); a session is only looked up when the request runs, so a bad one is ID.1001
through the job (AccountManagerImpl.doAuth, identity/src/main/java/org/zstack/identity/
AccountManagerImpl.java l.1781-1791, returns a stub session).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx

from zsagent import errors
from zsagent.errors import RestRefusal, ZsError
from zsagent.ownership import ADMIN_ACCOUNT_UUID

log = logging.getLogger(__name__)


class _WatchedFile:
    """A file of whitespace-separated fields per line ('#' comments), re-read when its mtime or size
    changes. A bad line is skipped with a warning naming only its number: a line may hold a secret."""

    FIELDS: tuple[str, ...] = ()

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._entries: list[tuple[str, ...]] = []

    def _load(self) -> list[tuple[str, ...]]:
        try:
            st = os.stat(self.path)
        except OSError as e:
            log.error("%s cannot be read: %s", self.path, e.strerror)
            return []
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)  # an atomic replace changes the inode
        with self._lock:
            if stamp != self._stamp:
                entries = []
                with open(self.path) as f:
                    for number, line in enumerate(f, 1):
                        fields = line.split("#", 1)[0].split()
                        if not fields:
                            continue
                        if len(fields) != len(self.FIELDS):
                            log.warning("%s:%d: expected '%s'", self.path, number,
                                        " ".join(f"<{name}>" for name in self.FIELDS))
                            continue
                        entries.append(tuple(fields))
                self._entries, self._stamp = entries, stamp
            return self._entries


class SessionsFile(_WatchedFile):
    """``<sessionUuid> <accountUuid>`` per line ('#' comments); re-read when the file changes."""

    FIELDS = ("sessionUuid", "accountUuid")

    def account_of(self, session_uuid: str) -> str:
        """The account uuid of a valid session, or ID.1001."""
        account = None
        for known, acct in self._load():  # look at every entry: the time taken does not leak a match
            if hmac.compare_digest(known.encode(), session_uuid.encode()):
                account = acct
        if account is None:
            raise ZsError(errors.INVALID_SESSION, "the session is invalid or expired")
        return account


@dataclass(frozen=True)
class AccessKey:
    """One access key: ``key_id`` (public, sent in the header), ``secret`` (HMAC key; never logged),
    ``account_uuid`` (who the caller is)."""

    key_id: str
    secret: str = ""
    account_uuid: str = ""

    def __repr__(self) -> str:  # never show the secret, not even in a traceback
        return f"AccessKey(key_id={self.key_id!r}, account_uuid={self.account_uuid!r})"


class AccessKeysFile(_WatchedFile):
    """``<AccessKeyId> <secret> <accountUuid>`` per line ('#' comments); re-read when the file changes.
    Keep it readable by the agent only: it holds secrets."""

    FIELDS = ("AccessKeyId", "secret", "accountUuid")

    def find(self, key_id: str) -> AccessKey | None:
        found = None
        for known, secret, account in self._load():  # every entry: the time taken does not leak a match
            if hmac.compare_digest(known.encode(), key_id.encode()):
                found = AccessKey(known, secret, account)
        return found


class ManagementNodeSessions:
    """Asks a ZStack management node who a session is; answers are cached for ``cache_s``.

    ZStack's open REST API has no call that names a session's account, so it is found in three asks, each
    with the caller's own session (zstackio/zstack at 5a29293bd5):
    1. ``GET /zstack/v1/accounts/sessions/{uuid}/valid`` (header/.../identity/APIValidateSessionMsg.java
       l.15; the reply's ``valid``, APIValidateSessionReply.java l.12);
    2. ``GET /zstack/v1/management-nodes`` (APIQueryManagementNodeMsg.java l.15-16), an admin-only API
       (header/.../managementnode/RBACInfo.java l.12): answered 200, the session is the admin's;
    3. else ``GET /zstack/v1/accounts`` (APIQueryAccountMsg.java l.15-20): when it names exactly one
       account and that is not the admin, the session is that account's. Anything else cannot be told
       apart and is refused (ID.1002): a normal account is never taken for the admin.
    """

    def __init__(self, url: str, cache_s: int = 30, timeout_s: float = 10) -> None:
        self.url = url.rstrip("/")
        self.cache_s = cache_s
        self.timeout_s = timeout_s
        self._cache: dict[str, tuple[float, str | None]] = {}
        self._lock = threading.Lock()

    def account_of(self, session_uuid: str) -> str:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(session_uuid)
        if cached is None or now - cached[0] > self.cache_s:
            try:
                account = self._ask(session_uuid)
            except (httpx.HTTPError, ValueError, AttributeError, TypeError) as e:
                raise ZsError(errors.INTERNAL_ERROR, f"cannot ask the management node about the session: "
                                                     f"{type(e).__name__}") from None
            with self._lock:
                self._cache[session_uuid] = (now, account)
            cached = (now, account)
        if cached[1] is None:
            raise ZsError(errors.INVALID_SESSION, "the session is invalid or expired")
        if cached[1] == "":
            raise ZsError(errors.PERMISSION_DENIED, "the management node does not say which account this session "
                                                    "belongs to; use an access key or a sessions file entry")
        return cached[1]

    def _get(self, path: str, session_uuid: str) -> httpx.Response:
        return httpx.get(f"{self.url}/zstack/v1{path}", timeout=self.timeout_s,
                         headers={"Authorization": f"OAuth {session_uuid}"})

    def _ask(self, session_uuid: str) -> str | None:
        """The account uuid, None for a session that is not valid, "" when the account cannot be told."""
        valid = self._get(f"/accounts/sessions/{session_uuid}/valid", session_uuid)
        if valid.status_code != 200 or not valid.json().get("valid"):
            return None
        if self._get("/management-nodes", session_uuid).status_code == 200:
            return ADMIN_ACCOUNT_UUID
        accounts = self._get("/accounts", session_uuid)
        found = accounts.json().get("inventories") if accounts.status_code == 200 else None
        if isinstance(found, list) and len(found) == 1 and isinstance(found[0], dict):
            account = found[0].get("uuid")
            if isinstance(account, str) and account and account != ADMIN_ACCOUNT_UUID:
                return account
        return ""


# --- access key signatures -------------------------------------------------------------------------
# The protocol, as the Java SDK signs (zstackio/zstack sdk/src/main/java/org/zstack/sdk/ZSClient.java
# l.371-385, Constants.java l.31-32) and as ZStack's access key backend checks (AccessKeyManager.doAuth,
# package org.zstack.accessKey: a premium plugin that is not in zstackio/zstack's open tree; its public
# copy was read for this):
#   string to sign = <HTTP method> "\n" <Date header, verbatim> "\n" <URI path>
#   signature      = Base64(HMAC-SHA1(key = secret as bytes, message = string to sign as bytes))
# The URI path is the decoded request path without the servlet context "/zstack" and without the query
# string: "/v1/images/..." (RestServer.java l.893 ``params.uri = getDecodedUrl(req)``, l.603-613; the SDK
# signs "/v1" + the API path, ZSClient.java l.377; testlib/src/main/resources/zssdk.py l.250-260 does the
# same). Content-MD5 and Content-Type are collected (RestServer.java l.891-892) but not signed.

SIGNED_PATH_PREFIX = "/zstack"  # ZStack's servlet context: not part of the signed path
# RestConstants.java l.30-31: a request must be received within 15 minutes of its Date, either way.
REQUEST_SKEW = timedelta(minutes=15)

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
# RestServer.java l.151-154: "EEE, dd MMM yyyy HH:mm:ss z", English, case-insensitive.
_DATE_RE = re.compile(r"^([a-z]{3}), (\d{2}) ([a-z]{3}) (\d{4}) (\d{2}):(\d{2}):(\d{2}) (\S+)$", re.I)
_OFFSET_RE = re.compile(r"^(?:GMT|UTC|UT)?([+-])(\d{1,2})(?::?(\d{2}))?$", re.I)
# Zone abbreviations read as RFC 5322 does (US zones); only their offsets matter, and only with
# check_time_zone: by default ZStack ignores the zone (below).
_ABBREVIATIONS_H = {"GMT": 0, "UTC": 0, "UT": 0, "Z": 0, "EST": -5, "EDT": -4, "CST": -6, "CDT": -5,
                    "MST": -7, "MDT": -6, "PST": -8, "PDT": -7}
_DATE_MISSING = "'Date' must be incuded in request header"  # sic: RestServer.java l.1026
_DATE_FORMAT = "'Date' format error, correct format is 'EEE, dd MMM yyyy HH:mm:ss z'"  # l.1033


def string_to_sign(method: str, date: str, path: str) -> str:
    return f"{method}\n{date}\n{path}"


def sign(secret: str, method: str, date: str, path: str) -> str:
    """ZStack's access key signature of a request (see the protocol above)."""
    digest = hmac.new(secret.encode(), string_to_sign(method, date, path).encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def signed_path(request_path: str) -> str:
    """The path a client signs: the decoded request path without ``/zstack``."""
    if request_path.startswith(SIGNED_PATH_PREFIX + "/"):
        return request_path[len(SIGNED_PATH_PREFIX):]
    return request_path


def parse_date(text: str) -> tuple[datetime, timezone | ZoneInfo | None]:
    """The wall-clock time of a Date header and its zone (None for an abbreviation ZStack may know but
    this agent does not: then only the wall clock can be checked); RestRefusal 400 if it is not ZStack's
    format or not a real date."""
    match = _DATE_RE.match(text.strip())
    if not match:
        raise RestRefusal(400, _DATE_FORMAT)
    day, dd, mon, yyyy, hh, mi, ss, zone = match.groups()
    if mon.lower() not in _MONTHS or day.lower() not in _DAYS:
        raise RestRefusal(400, _DATE_FORMAT)
    try:
        when = datetime(int(yyyy), _MONTHS.index(mon.lower()) + 1, int(dd), int(hh), int(mi), int(ss))
    except ValueError:
        raise RestRefusal(400, _DATE_FORMAT) from None
    if when.weekday() != _DAYS.index(day.lower()):  # java.time refuses a day name that conflicts
        raise RestRefusal(400, _DATE_FORMAT)
    return when, _zone(zone)


def _zone(text: str) -> timezone | ZoneInfo | None:
    if text.upper() in _ABBREVIATIONS_H:
        return timezone(timedelta(hours=_ABBREVIATIONS_H[text.upper()]))
    offset = _OFFSET_RE.match(text)
    if offset:
        sign_, hours, minutes = offset.groups()
        delta = timedelta(hours=int(hours), minutes=int(minutes or 0))
        if delta > timedelta(hours=18):
            raise RestRefusal(400, _DATE_FORMAT)
        return timezone(-delta if sign_ == "-" else delta)
    if "/" in text or text.isalpha():
        try:
            return ZoneInfo(text)  # a tz database id such as Asia/Shanghai or PRC, as the Java SDK sends
        except (ZoneInfoNotFoundError, ValueError, OSError):
            if text.isalpha() and 2 <= len(text) <= 5:
                return None  # an abbreviation: the wall clock is all that can be checked
    raise RestRefusal(400, _DATE_FORMAT)


def check_date(text: str | None, now: datetime, check_time_zone: bool) -> None:
    """RestServer.checkTime (l.1024-1050): the Date header must be there, in ZStack's format, and within
    15 minutes of ``now`` (an aware datetime), boundaries included. ZStack's default
    (``rest.checkTimeZone`` = false, conf/globalConfig/rest.xml l.19-25) compares wall clocks and ignores
    the zone: the header's local time against the agent's."""
    if text is None:
        raise RestRefusal(400, _DATE_MISSING)
    when, zone = parse_date(text)
    if check_time_zone and zone is not None:
        when = when.replace(tzinfo=zone)
    else:
        now = now.replace(tzinfo=None)
    if not now - REQUEST_SKEW <= when <= now + REQUEST_SKEW:
        raise RestRefusal(403, "requestTimeTooSkewed")  # RestServer.java l.1038


def _java_split_colon(text: str) -> list[str]:
    """Java's ``text.split(":")``: trailing empty strings are dropped."""
    parts = text.split(":")
    while parts and parts[-1] == "":
        parts.pop()
    return parts


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():  # the first one, whatever its case
        if key.lower() == name:
            return value
    return None


@dataclass(frozen=True)
class Credentials:
    """What the Authorization header of a request carried, checked as far as ZStack checks it on
    arrival: a ``session_uuid`` still to be looked up when the request runs, or the ``account_uuid`` of
    an access key whose signature was already verified."""

    session_uuid: str | None = None
    account_uuid: str | None = None

    def __repr__(self) -> str:  # the session is a secret: never in a traceback or a log line
        session = "<hidden>" if self.session_uuid else None
        return f"Credentials(session_uuid={session}, account_uuid={self.account_uuid!r})"


class Authenticator:
    """The API's one entry point for "who is calling".

    ``credentials(method, path, headers)`` on arrival: raises RestRefusal (answer it at once, plain text)
    for what ZStack refuses before the API runs; ``account_of(credentials)`` when the request runs:
    raises ZsError ID.1001 for a session that is not valid. ``authenticate`` does both.

    ``sessions`` has ``account_of(session_uuid) -> account_uuid`` (SessionsFile, ManagementNodeSessions);
    ``access_keys`` is an AccessKeysFile or None (then every access key is unknown); ``clock`` gives the
    current time (aware), for tests."""

    def __init__(self, sessions, access_keys: AccessKeysFile | None = None, *, check_time_zone: bool = False,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.sessions = sessions
        self.access_keys = access_keys
        self.check_time_zone = check_time_zone
        self.clock = clock or (lambda: datetime.now().astimezone())

    def authenticate(self, method: str, path: str, headers: Mapping[str, str]) -> str:
        return self.account_of(self.credentials(method, path, headers))

    def caller_or_none(self, method: str, path: str, headers: Mapping[str, str]) -> str | None:
        """The account the request's credentials name, or None when it has none that check out (no
        header, ``OAuth null`` as ZStack's SDK polls with, an unknown session, a bad signature): for the
        calls ZStack answers without credentials (job polls), which then show only what anyone may see."""
        try:
            return self.authenticate(method, path, headers)
        except (RestRefusal, ZsError):
            return None

    def account_of(self, credentials: Credentials) -> str:
        if credentials.account_uuid is not None:
            return credentials.account_uuid
        return self.sessions.account_of(credentials.session_uuid or "")

    def credentials(self, method: str, path: str, headers: Mapping[str, str]) -> Credentials:
        auth = _header(headers, "authorization")
        if auth is None:
            raise RestRefusal(400, "missing header 'Authorization'")  # RestServer.java l.868-870
        auth = auth.strip()
        if auth.startswith("OAuth"):  # l.875-878: whatever follows is the session, checked later
            return Credentials(session_uuid=auth[len("OAuth"):].strip())
        if auth.startswith("ZStack"):  # l.879-893
            check_date(_header(headers, "date"), self.clock(), self.check_time_zone)
            key_and_signature = auth[len("ZStack"):].strip()
            if len(_java_split_colon(key_and_signature)) != 2:
                raise RestRefusal(400, "accessKey format is 'ZStack AccessKeyId:Signature'")
            key_id, signature = key_and_signature.split(":", 1)
            return Credentials(account_uuid=self._verify(key_id, signature, method, path,
                                                         _header(headers, "date") or ""))
        raise RestRefusal(400, "Authorization type must be 'OAuth'")  # l.894-896

    def _verify(self, key_id: str, signature: str, method: str, path: str, date: str) -> str:
        """AccessKeyManager.doAuth: an unknown key and a wrong signature are both 403, in plain text."""
        key = self.access_keys.find(key_id) if self.access_keys is not None else None
        expected = sign(key.secret if key else "-", method, date, signed_path(path))  # same work either way
        if key is None:
            log.warning("request %s %s refused: unknown access key id %r", method, path, key_id[:64])
            raise RestRefusal(403, f"access key id: {key_id} does not existed or disabled")
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            log.warning("request %s %s refused: wrong signature for access key %s", method, path, key_id)
            raise RestRefusal(403, "wrong accessKey signature")
        return key.account_uuid
