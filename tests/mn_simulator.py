"""A ZStack management node (MN) as its storage agents see it, for tests of `zsagent front`.

Written from the protocol notes (/work/shared/reference/zstack-agent-protocol.md, "[zs]" = zstackio/zstack at
5a29293); file:line references below are to those sources. The simulator
- sends agent commands the way `RESTFacadeImpl.asyncJson()` does (l.303-453): Gson JSON body, headers
  `taskuuid` / `callbackurl` / `Content-Type`, thread and task context fields, KVM host addons;
- serves the callback (`notifyCallback` l.190-219) and progress (`sendCommand` l.221-254) endpoints;
- tells the test what the MN would conclude: the parsed reply, or the ErrorCode it would fail with
  (SYS.1000 unparsable callback, SYS.1001 timeout, SYS.1015 HTTP error).
"""

from __future__ import annotations

import http.client
import json
import re
import select
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass

from gson_json import gson_dumps
from raw_http import RawHttpServer, RawRequest, RawResponse

# header/src/main/java/org/zstack/header/rest/RESTConstant.java l.4-10
CALLBACK_PATH = "/asyncrest/callback"
SEND_COMMAND_PATH = "/asyncrest/sendcommand"
TASK_UUID_HEADER = "taskuuid"
CALLBACK_URL_HEADER = "callbackurl"
COMMAND_PATH_HEADER = "commandpath"
APP_JSON_UTF8 = "application/json; charset=utf-8"
# core/.../progress/ProgressConstants: the one handler registered on the command channel
PROGRESS_REPORT_PATH = "/progress/report"
# header/src/main/java/org/zstack/header/Constants.java l.7, set by KVMHost.java l.485
RESOURCE_UUID_HEADER = "X-Resource-UUID"
# conf/springConfigXml/RESTFacade.xml: RESTFacade.path
MN_ROOT_PATH = "zstack"

# core/.../CoreGlobalProperty.java l.41-50
connect_timeout_s = 15.0
read_timeout_s = 300.0
max_connections_per_route = 2
# Apache's connection request timeout is twice the connect timeout (RESTFacadeImpl.java l.182)
connection_request_timeout_s = 2 * connect_timeout_s
# RESTFacadeImpl.echo l.664: syncJsonPost(url, "", Void.class, SECONDS, 2)
echo_read_timeout_s = 2.0

# The MN's async client is Apache HttpAsyncClient; it adds these after Spring's headers. Illustrative only:
# an agent must not depend on them, a forwarding proxy must keep them.
_client_headers = [("Connection", "Keep-Alive"), ("User-Agent", "Apache-HttpAsyncClient/4.1.4 (Java/1.8.0)")]


def now_ms() -> int:
    return int(time.time() * 1000)


def servlet_body_text(request: RawRequest) -> str:
    """The body as `httpServletRequestToHttpEntity` (RESTFacadeImpl.java l.474-495) hands it to the parser.

    `req.getReader()` decodes with the Content-Type charset, else the servlet default ISO-8859-1 (conf/web.xml
    sets no encoding filter), and the lines are concatenated without their line breaks (l.476-482).
    """
    charset = "iso-8859-1"
    match = re.search(r"charset\s*=\s*\"?([A-Za-z0-9._:-]+)", request.header("Content-Type") or "", re.I)
    if match:
        charset = match.group(1)
    try:
        text = request.body.decode(charset, errors="replace")
    except LookupError:
        text = request.body.decode("iso-8859-1")
    return "".join(re.split(r"\r\n|\r|\n", text))


def append_kvm_host_addons(command_json: str, addons: dict) -> str:
    """KVMHost.Http.runBeforeAsyncJsonPostExts (KVMHost.java l.532-560): the addons are appended textually
    before the final `}`; a command that already has a `kvmHostAddons` field then carries the key twice."""
    addons_json = gson_dumps(addons)
    if command_json == "{}":
        return '{"kvmHostAddons":' + addons_json + "}"
    return command_json[:-1] + ',"kvmHostAddons":' + addons_json + "}"


class MnCallFailed(AssertionError):
    """The MN would fail the agent call with ErrorCode `code`; `details` is its message."""

    def __init__(self, code: str, details: str):
        super().__init__(f"the MN would fail this call with {code}: {details}")
        self.code = code
        self.details = details


@dataclass
class Delivery:
    """One POST to the callback URL: what arrived, what the MN answered, what its Gson made of it."""

    task_uuid: str | None
    status: int
    raw_headers: list[tuple[bytes, bytes]]
    body: bytes
    text: str                       # after the servlet's line joining
    parsed: dict | None             # None when the body is not a JSON object
    parse_error: str | None
    at_ms: int                      # wall clock, ms since the epoch


@dataclass
class Outcome:
    """What the MN concludes about one call: `body` on success, else `code` and `details`."""

    code: str | None
    details: str
    body: dict | None


@dataclass
class ProgressReport:
    raw_headers: list[tuple[bytes, bytes]]
    body: bytes
    parsed: dict


class PendingCall:
    """One async agent call (one taskuuid): the sync reply and the callbacks that follow."""

    def __init__(self, url: str, task_uuid: str, api_id: str | None, body: bytes, headers: list[tuple[str, str]],
                 timeout_ms: int, deadline_ms: int):
        self.url = url
        self.task_uuid = task_uuid
        self.api_id = api_id
        self.body = body
        self.headers = headers
        self.sync_status: int = 0          # 0 until (or unless) the agent answered the POST
        self.sync_body: bytes = b""
        self.sent_ms = now_ms()
        self.timeout_ms = timeout_ms
        self.deadline_ms = deadline_ms
        self._expires_ms = self.sent_ms + timeout_ms
        self._cond = threading.Condition()
        self._deliveries: list[Delivery] = []
        self._answer: Delivery | None = None
        self._failure: tuple[str, str] | None = None

    # -- the MN's side ---------------------------------------------------------------------------------------
    def _expired_locked(self, at_ms: int) -> bool:
        """The timeout task of RESTFacadeImpl.java l.348-356: after `timeout` ms the wrapper fails with
        SYS.1001 and is removed, so a later callback finds no wrapper (404)."""
        if self._answer is None and self._failure is None and at_ms > self._expires_ms:
            self._failure = ("SYS.1001", f"[Async Http Timeout] url: {self.url}, timeout after "
                                         f"{self.timeout_ms}[MILLISECONDS], command: {self.body.decode()}")
        return self._answer is not None or self._failure is not None

    def fail(self, code: str, details: str) -> None:
        """The wrapper's fail(): ignored once a callback was accepted (the `called` flag, l.414-417)."""
        with self._cond:
            if not self._expired_locked(now_ms()):
                self._failure = (code, details)
            self._cond.notify_all()

    def offer(self, delivery: Delivery) -> int:
        """A callback for this taskuuid: 200 and consumed while the wrapper lives, 404 after (l.200-208)."""
        with self._cond:
            done = self._expired_locked(delivery.at_ms)
            delivery.status = 404 if done else 200
            self._deliveries.append(delivery)
            if not done:
                self._answer = delivery
            self._cond.notify_all()
            return delivery.status

    def _outcome_locked(self) -> Outcome | None:
        current = now_ms()
        self._expired_locked(current)
        answer = self._answer
        if answer is not None and answer.at_ms > self.deadline_ms:
            return Outcome("SYS.1001", f"the API message deadline {self.deadline_ms} passed before the callback "
                                       f"arrived at {answer.at_ms}", None)
        if answer is not None and answer.parsed is None:
            # l.402-404: a parse exception becomes inerr(t.getMessage()), SYS.1000
            return Outcome("SYS.1000", f"unparsable callback body {answer.text[:200]!r}: {answer.parse_error}", None)
        if answer is not None:
            return Outcome(None, "", answer.parsed)
        if self._failure is not None:
            return Outcome(self._failure[0], self._failure[1], None)
        if current > self.deadline_ms:
            return Outcome("SYS.1001", f"the API message deadline {self.deadline_ms} passed with no callback "
                                       f"for taskuuid {self.task_uuid} ({self.url})", None)
        return None

    # -- the test's side -------------------------------------------------------------------------------------
    def wait(self, timeout_s: float = 60) -> Outcome:
        """The MN's conclusion; raises AssertionError if the test gives up first (the MN would still wait)."""
        give_up = time.monotonic() + timeout_s
        with self._cond:
            while True:
                outcome = self._outcome_locked()
                if outcome is not None:
                    return outcome
                left_s = give_up - time.monotonic()
                if left_s <= 0:
                    raise AssertionError(f"no callback for taskuuid {self.task_uuid} ({self.url}) within "
                                         f"{timeout_s} s; the MN would wait until its deadline {self.deadline_ms}")
                until_deadline_s = (min(self.deadline_ms, self._expires_ms) - now_ms()) / 1000 + 0.01
                self._cond.wait(max(0.01, min(left_s, until_deadline_s, 1.0)))

    def result(self, timeout_s: float = 60) -> dict:
        """The callback body as the MN parsed it; raises MnCallFailed (an AssertionError) if the MN would fail
        the call instead (SYS.1000 unparsable body, SYS.1001 deadline/timeout, SYS.1015 HTTP error)."""
        outcome = self.wait(timeout_s)
        if outcome.code is not None:
            raise MnCallFailed(outcome.code, outcome.details)
        assert outcome.body is not None
        return outcome.body

    def callbacks(self) -> list[dict]:
        """The parsed bodies of every JSON callback seen for this taskuuid, accepted or not, in order."""
        with self._cond:
            return [d.parsed for d in self._deliveries if d.parsed is not None]

    def deliveries(self) -> list[Delivery]:
        """Every callback POST for this taskuuid, with the status the MN answered."""
        with self._cond:
            return list(self._deliveries)


class _RoutePool:
    """Apache's pool for one host:port: at most `max_connections_per_route` connections, kept alive."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.slots = threading.BoundedSemaphore(max_connections_per_route)
        self.idle: list[http.client.HTTPConnection] = []
        self.lock = threading.Lock()

    def take(self) -> http.client.HTTPConnection:
        with self.lock:
            while self.idle:
                conn = self.idle.pop()
                if conn.sock is not None and not select.select([conn.sock], [], [], 0)[0]:
                    return conn
                conn.close()  # closed by the peer while idle; the reactor would have dropped it
        conn = http.client.HTTPConnection(self.host, self.port, timeout=connect_timeout_s)
        conn.connect()
        conn.sock.settimeout(read_timeout_s)
        return conn

    def give_back(self, conn: http.client.HTTPConnection) -> None:
        with self.lock:
            self.idle.append(conn)

    def close(self) -> None:
        with self.lock:
            for conn in self.idle:
                conn.close()
            self.idle.clear()


class MnSimulator:
    """Context manager: an MN's callback and progress endpoints on 127.0.0.1:<free port>, and its agent client."""

    def __init__(self) -> None:
        self._server: RawHttpServer | None = None
        self._lock = threading.Lock()
        self._calls: dict[str, PendingCall] = {}
        self._pools: dict[tuple[str, int], _RoutePool] = {}
        self.orphan_callbacks: list[Delivery] = []      # no taskuuid header, or one the MN never sent
        self.progress_reports: list[ProgressReport] = []
        self.rejected_progress: list[tuple[int, RawRequest]] = []
        self.base_url = ""
        self.callback_url = ""
        self.send_command_url = ""

    def __enter__(self) -> MnSimulator:
        self._server = RawHttpServer(self._serve)
        self.base_url = f"http://127.0.0.1:{self._server.port}/{MN_ROOT_PATH}"
        self.callback_url = self.base_url + CALLBACK_PATH
        self.send_command_url = self.base_url + SEND_COMMAND_PATH
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.close()
        for pool in self._pools.values():
            pool.close()

    # -- sending ---------------------------------------------------------------------------------------------
    def post_command(self, agent_url: str, path: str, cmd: dict, *, thread_context: bool = True,
                     api_id: str | None = None, task_stage: str | None = None,
                     timeout_ms: int = 259_200_000, deadline_ms: int | None = None,
                     kvm_host_uuid: str | None = None, kvm_host_addons: dict | None = None,
                     extra_headers: dict | None = None) -> PendingCall:
        """POST `cmd` to `agent_url + path` as an async agent command and return once the agent answered the
        POST (the callback may already have arrived: the MN registers it before sending, l.441).

        thread_context: the command class implements HasThreadContext, so Gson writes the AspectJ fields
        `threadContext`, `threadContextStack`, `taskContext` (HasThreadContextAspect.aj l.8-29; values the
        caller put in `cmd` under those names win). timeout_ms: the message timeout (72 h for this API);
        deadline_ms: epoch ms, default now + timeout_ms. Fields come out in `cmd`'s order, then the context
        fields (Gson's own order is subclass fields before superclass fields; agents must not depend on
        it). kvm_host_uuid: a KVMHost call, which adds header
        X-Resource-UUID and appends `kvmHostAddons` (default {}) to the JSON text.
        """
        if kvm_host_addons is not None and kvm_host_uuid is None:
            raise ValueError("kvm_host_addons is only sent on KVM host calls (give kvm_host_uuid)")
        url = agent_url.rstrip("/") + "/" + path.lstrip("/")
        sent_ms = now_ms()
        deadline = deadline_ms if deadline_ms is not None else sent_ms + timeout_ms
        if thread_context and api_id is None:
            api_id = uuid.uuid4().hex
        body = dict(cmd)
        if thread_context:
            context = {"api": api_id}
            if task_stage is not None:
                context["task-stage"] = task_stage
            body.setdefault("threadContext", context)
            body.setdefault("threadContextStack", [])
            # TaskContext values are strings (ApiTimeoutManagerImpl.java l.310 parses them with Long.parseLong)
            body.setdefault("taskContext", {"__messagetimeout__": str(timeout_ms),
                                            "__messagedeadline__": str(deadline)})
        text = gson_dumps(body)
        headers = [(TASK_UUID_HEADER, uuid.uuid4().hex), (CALLBACK_URL_HEADER, self.callback_url),
                   ("Content-Type", APP_JSON_UTF8)]
        extra: dict[str, str] = {}
        if kvm_host_uuid is not None:
            text = append_kvm_host_addons(text, kvm_host_addons or {})
            extra[RESOURCE_UUID_HEADER] = kvm_host_uuid
        extra.update(extra_headers or {})
        for name, value in extra.items():
            # Spring's HttpHeaders.set(): replaces a header of the same name (any case), else appends (l.336-340)
            same = [i for i, (k, _) in enumerate(headers) if k.lower() == name.lower()]
            if same:
                headers[same[0]] = (name, value)
            else:
                headers.append((name, value))
        payload = text.encode("utf-8")
        call = PendingCall(url, headers[0][1], api_id, payload, headers, timeout_ms, deadline)
        if deadline < sent_ms:
            # ApiTimeoutManagerImpl.getTimeout l.307-317 gives 1 ms, and asyncJson l.310-313 fails without
            # posting; kept in the table only so the test can look at it (a callback for it gets 404)
            call.fail("SYS.1001", f"url: {url}, current timeout: 1, api message timeout, skip post async call")
        with self._lock:
            self._calls[call.task_uuid] = call
        if deadline >= sent_ms:
            self._send(call)
        return call

    def _pool(self, host: str, port: int) -> _RoutePool:
        with self._lock:
            return self._pools.setdefault((host, port), _RoutePool(host, port))

    def _send(self, call: PendingCall) -> None:
        parts = urllib.parse.urlsplit(call.url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        pool = self._pool(parts.hostname or "127.0.0.1", parts.port or 80)
        if not pool.slots.acquire(timeout=connection_request_timeout_s):
            call.fail("SYS.1015", f"timeout waiting for a connection to {parts.netloc} from the pool")
            return
        conn = None
        try:
            conn = pool.take()
            conn.putrequest("POST", target, skip_host=True, skip_accept_encoding=True)
            wire = [*call.headers, ("Content-Length", str(len(call.body))), ("Host", parts.netloc),
                    *_client_headers]
            for name, value in wire:
                conn.putheader(name, value)
            conn.endheaders(call.body)
            answer = conn.getresponse()
            call.sync_status = answer.status
            call.sync_body = answer.read()
            if answer.will_close:
                conn.close()
            else:
                pool.give_back(conn)
            conn = None
            # Spring's DefaultResponseErrorHandler fails only 4xx/5xx; the body is ignored (l.447-448)
            if call.sync_status >= 400:
                call.fail("SYS.1015", f"{call.sync_status} {answer.reason}: {call.sync_body[:200]!r}")
        except (OSError, http.client.HTTPException) as exc:
            call.fail("SYS.1015", f"I/O error on POST request for \"{call.url}\": {exc!r}")
        finally:
            if conn is not None:
                conn.close()
            pool.slots.release()

    def echo(self, agent_url: str, path: str) -> int:
        """One try of the MN's echo (RESTFacadeImpl.echo l.647-698 → syncJson l.570-580): a synchronous POST
        with an empty body and no taskuuid, 2 s read timeout. Returns the status, 0 for no HTTP answer; the MN
        accepts 200, 201 and 202 (l.631-638) and retries every second for up to 60 s."""
        parts = urllib.parse.urlsplit(agent_url.rstrip("/") + "/" + path.lstrip("/"))
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=connect_timeout_s)
        try:
            conn.connect()
            conn.sock.settimeout(echo_read_timeout_s)
            conn.request("POST", parts.path, body=b"",
                         headers={"Content-Type": "application/json", "Content-Length": "0"})
            answer = conn.getresponse()
            answer.read()
            return answer.status
        except (OSError, http.client.HTTPException):
            return 0
        finally:
            conn.close()

    # -- what the MN saw -------------------------------------------------------------------------------------
    def call(self, task_uuid: str) -> PendingCall:
        with self._lock:
            return self._calls[task_uuid]

    def sent_bytes(self, task_uuid: str) -> bytes:
        """The exact body POSTed for `task_uuid`."""
        return self.call(task_uuid).body

    def sent_headers(self, task_uuid: str) -> list[tuple[str, str]]:
        """The headers Spring set for `task_uuid`, in order (the client's own are added after them)."""
        return list(self.call(task_uuid).headers)

    def progress_for(self, api_id: str) -> list[dict]:
        """ProgressReportCmd bodies whose threadContextMap["api"] is `api_id` (the key of the TaskProgressVO,
        ProgressReportService.java l.132-142), in arrival order."""
        with self._lock:
            reports = list(self.progress_reports)
        return [r.parsed for r in reports if (r.parsed.get("threadContextMap") or {}).get("api") == api_id]

    # -- serving ---------------------------------------------------------------------------------------------
    def _serve(self, request: RawRequest) -> RawResponse:
        path = request.path.rstrip("/")
        if path == f"/{MN_ROOT_PATH}{CALLBACK_PATH}":
            handler = self._on_callback
        elif path == f"/{MN_ROOT_PATH}{SEND_COMMAND_PATH}":
            handler = self._on_send_command
        else:
            return RawResponse(404, b"no handler")
        if request.method not in ("POST", "PUT"):   # AsyncRESTCallController.java l.17-25
            return RawResponse(405, b"method not allowed")
        return handler(request)

    def _on_callback(self, request: RawRequest) -> RawResponse:
        text = servlet_body_text(request)
        parsed, error = None, None
        try:
            value = json.loads(text)
            if isinstance(value, dict):
                parsed = value
            else:
                error = f"expected a JSON object, got {type(value).__name__}"
        except ValueError as exc:
            error = str(exc)
        task_uuid = request.header(TASK_UUID_HEADER)
        delivery = Delivery(task_uuid, 0, request.raw_headers, request.body, text, parsed, error, now_ms())
        with self._lock:
            call = self._calls.get(task_uuid) if task_uuid is not None else None
        if task_uuid is None or call is None:
            delivery.status = 400 if task_uuid is None else 404
            with self._lock:
                self.orphan_callbacks.append(delivery)
            if task_uuid is None:
                return RawResponse(400, b"No 'taskUuid' found in the header")
            return RawResponse(404, f"No callback found for taskUuid[{task_uuid}]".encode())
        if call.offer(delivery) == 404:
            return RawResponse(404, f"No callback found for taskUuid[{task_uuid}]".encode())
        return RawResponse(200)

    def _on_send_command(self, request: RawRequest) -> RawResponse:
        command_path = request.header(COMMAND_PATH_HEADER)
        if command_path is None:
            with self._lock:
                self.rejected_progress.append((400, request))
            return RawResponse(400, b"No 'commandPath' found in the header")
        if command_path != PROGRESS_REPORT_PATH:
            with self._lock:
                self.rejected_progress.append((404, request))
            return RawResponse(404, f"no handler found for the command path[{command_path}]".encode())
        try:
            parsed = json.loads(servlet_body_text(request))
            if not isinstance(parsed, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            # the handler's Gson parse throws, and sendCommand answers 500 (l.246-252)
            with self._lock:
                self.rejected_progress.append((500, request))
            return RawResponse(500, str(exc).encode())
        with self._lock:
            self.progress_reports.append(ProgressReport(request.raw_headers, request.body, parsed))
        return RawResponse(200)


__all__ = ["MnSimulator", "PendingCall", "MnCallFailed", "Outcome", "Delivery", "ProgressReport",
           "append_kvm_host_addons", "servlet_body_text"]
