"""A stand-in for ZStack's own Python agent (cephagent on 7762, kvmagent on 7070) behind `zsagent front`.

It behaves like zstacklib's `http.py` (zstackio/zstack-utility f7b496e, protocol notes §1.1/§1.2) and
records every request byte for byte, so tests can assert that forwarded requests arrive untouched:
- async paths (`AsyncUirHandler.index` l.178-195): 400 `taskUuid missing in request header` without a
  `taskuuid` header, else an empty 200 at once; the handler then runs in a thread and POSTs its reply JSON
  to the request's `callbackurl` with header `taskuuid` (`_run_index` l.140-164, `json_post` l.350-390);
  a taskuuid still running is ignored (200, no second callback, l.143-147);
- sync paths (`SyncUriHandler._do_index` l.72-81): a `taskuuid` header makes the handler raise (500),
  else the reply is the body of the 200.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import traceback
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

from gson_json import drop_nulls
from raw_http import RawHttpServer, RawRequest, RawResponse

# the synchronous URIs of ZStack's agents; everything else is registered async (protocol notes §1.7)
ECHO_PATHS = frozenset({
    "/ceph/primarystorage/echo",        # cephagent.py
    "/ceph/backupstorage/echo",
    "/host/echo",                       # kvmagent host_plugin
    "/sftpbackupstorage/echo",          # sftpbackupstorage.py l.564-579
})
SYNC_PATHS = ECHO_PATHS | {"/sftpbackupstorage/connect"}

# what cherrypy puts on every answer
_server_headers = [("Content-Type", "text/html;charset=utf-8"), ("Server", "CherryPy/3.2.2")]

Reply = dict | Callable[[dict], dict]


@dataclass
class Recorded:
    """One request as received: `raw_headers` keep the received order and case; `head` is the request line
    and header block byte for byte."""

    method: str
    path: str
    raw_headers: list[tuple[bytes, bytes]]
    body: bytes
    head: bytes = b""
    target: str = ""

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode("latin-1")
        for key, value in self.raw_headers:
            if key.lower() == wanted:
                return value.decode("latin-1")
        return None

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class CallbackPost:
    """A reply the agent POSTed to a callbackurl; `status` is the MN's answer (0: never delivered)."""

    task_uuid: str
    url: str
    body: bytes
    headers: dict[str, str]
    status: int = 0
    finished: threading.Event = field(default_factory=threading.Event, repr=False)

    def wait(self, timeout_s: float = 10) -> int:
        """The MN's answer once the agent stopped trying (0: never delivered)."""
        if not self.finished.wait(timeout_s):
            raise AssertionError(f"callback for {self.task_uuid} still being posted after {timeout_s} s")
        return self.status


def agent_json(value: dict) -> bytes:
    """`jsonobject.dumps` (jsonobject.py l.175-210): None attributes dropped, simplejson's default
    separators (`", "`, `": "`), ensure_ascii."""
    return json.dumps(drop_nulls(value), ensure_ascii=True).encode("ascii")


class UpstreamAgent:
    """Context manager: the agent on 127.0.0.1:<free port>."""

    # json_post retries via linux.wait_callback_success for up to 60 s (http.py l.384-388)
    callback_retry_s = 60.0

    def __init__(self) -> None:
        self._server: RawHttpServer | None = None
        self._lock = threading.Condition()
        self._replies: dict[str, tuple[Reply, float]] = {}
        self._running: set[str] = set()          # HANDLER_DICT
        self._closing = threading.Event()
        self.url = ""
        self.received: list[Recorded] = []
        self.callbacks_sent: list[CallbackPost] = []
        self.sync_paths: set[str] = set(SYNC_PATHS)
        self.not_found_paths: set[str] = set()   # answered 404, as cherrypy does for an unregistered URI

    def __enter__(self) -> UpstreamAgent:
        self._server = RawHttpServer(self._serve)
        self.url = f"http://127.0.0.1:{self._server.port}"
        return self

    def __exit__(self, *exc) -> None:
        self._closing.set()
        if self._server is not None:
            self._server.close()

    def reply_with(self, path: str, body: Reply, *, delay_s: float = 0.0) -> None:
        """Answer `path` with `body` (merged over `{"success": true, "error": ""}`), or with what
        `body(command)` returns; an exception raised there is reported the way http.py does it (a traceback
        as the callback body plus an `error` header, l.150-156). delay_s: time the handler takes."""
        with self._lock:
            self._replies[path.rstrip("/")] = (body, delay_s)

    def requests_to(self, path: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.received if r.path.rstrip("/") == path.rstrip("/")]

    def wait_for(self, path: str, count: int = 1, timeout_s: float = 10) -> list[Recorded]:
        """Wait until `count` requests to `path` arrived; returns them."""
        give_up = time.monotonic() + timeout_s
        with self._lock:
            while True:
                seen = [r for r in self.received if r.path.rstrip("/") == path.rstrip("/")]
                if len(seen) >= count:
                    return seen
                left = give_up - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(seen)} of {count} requests to {path} arrived in {timeout_s} s")
                self._lock.wait(left)

    # -- serving ---------------------------------------------------------------------------------------------
    def _serve(self, request: RawRequest) -> RawResponse:
        recorded = Recorded(request.method, request.path, request.raw_headers, request.body, request.head,
                            request.target)
        path = request.path.rstrip("/")  # routes are registered with and without the trailing slash (l.260-270)
        with self._lock:
            self.received.append(recorded)
            self._lock.notify_all()
        if path in self.not_found_paths:
            return RawResponse(404, b"The path '%s' was not found." % path.encode(), list(_server_headers))
        if path in self.sync_paths:
            return self._serve_sync(path, recorded)
        return self._serve_async(path, recorded)

    def _reply_for(self, path: str, command: dict) -> tuple[bytes, float]:
        with self._lock:
            reply, delay_s = self._replies.get(path, ({}, 0.0))
        answer = reply(command) if callable(reply) else reply
        return agent_json({"success": True, "error": "", **answer}), delay_s

    def _serve_sync(self, path: str, recorded: Recorded) -> RawResponse:
        task_uuid = recorded.header("taskuuid")
        if task_uuid:
            err = (f"[ERROR]: find async task uuid[{task_uuid}] in header, did you wrongly register sync uri "
                   f"for async call???")
            return RawResponse(500, err.encode(), list(_server_headers))
        with self._lock:
            answered = path in self._replies
        if not answered and path in ECHO_PATHS:
            return RawResponse(200, b"", list(_server_headers))  # the echo handlers return ''
        try:
            body, _ = self._reply_for(path, _loads(recorded.body))
        except Exception:
            return RawResponse(500, traceback.format_exc().encode(), list(_server_headers))
        return RawResponse(200, body, list(_server_headers))

    def _serve_async(self, path: str, recorded: Recorded) -> RawResponse:
        task_uuid = recorded.header("taskuuid")
        if task_uuid is None:
            return RawResponse(400, b"taskUuid missing in request header", list(_server_headers))
        thread = threading.Thread(target=self._run, args=(path, task_uuid, recorded), daemon=True,
                                  name=f"upstream-{task_uuid[:8]}")
        return RawResponse(200, b"", list(_server_headers), after=thread.start)

    def _run(self, path: str, task_uuid: str, recorded: Recorded) -> None:
        callback_url = recorded.header("callbackurl")
        with self._lock:
            if task_uuid in self._running or not callback_url:
                return  # a duplicate still running; or no callback uri, where _get_callback_uri raises
            self._running.add(task_uuid)
        headers = {"taskuuid": task_uuid}
        try:
            try:
                body, delay_s = self._reply_for(path, _loads(recorded.body))
                if delay_s:
                    self._closing.wait(delay_s)
            except Exception:
                text = traceback.format_exc()
                body = text.encode()
                headers["error"] = text.strip().splitlines()[-1]
            self._post_callback(callback_url, task_uuid, body, headers)
        finally:
            with self._lock:
                self._running.discard(task_uuid)

    def _post_callback(self, url: str, task_uuid: str, body: bytes, headers: dict[str, str]) -> None:
        post = CallbackPost(task_uuid, url, body, headers)
        with self._lock:
            self.callbacks_sent.append(post)
        wire = {"Content-Type": "application/json", "Connection": "close", **headers,
                "Content-Length": str(len(body))}
        try:
            self._deliver(post, wire)
        finally:
            post.finished.set()

    def _deliver(self, post: CallbackPost, wire: dict[str, str]) -> None:
        parts = urllib.parse.urlsplit(post.url)
        give_up = time.monotonic() + self.callback_retry_s
        while not self._closing.is_set():
            conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=120)
            try:
                conn.request("POST", parts.path or "/", body=post.body, headers=wire)
                answer = conn.getresponse()
                answer.read()
                post.status = answer.status  # any HTTP answer counts as delivered, 404 included
                return
            except (OSError, http.client.HTTPException):
                if time.monotonic() > give_up:
                    return
                self._closing.wait(1.0)
            finally:
                conn.close()


def _loads(body: bytes) -> dict:
    """The command as the agent's handler sees it (`jsonobject.loads`); {} for an empty or odd body."""
    try:
        value = json.loads(body) if body else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
