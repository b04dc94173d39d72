"""Results and progress posted to the management node (MN).

Result: ``POST <callbackurl>`` with header ``taskuuid``, body the response JSON, retried on connection
errors and 5xx for up to ``retry_s`` (ZStack's agents: urllib3 Retry(15) looped for 60 s, [zsu] http.py
``json_post`` l.350-390); 2xx and 404 (unknown or expired taskuuid: the MN gave up or has it already,
[zs] RESTFacadeImpl.notifyCallback l.190-219) end the delivery. Progress: ``POST <sendCommandUrl>`` with
header ``commandpath: /progress/report`` (RESTFacadeImpl.sendCommand l.221-254), best effort.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

import httpx

from zsagent.front.wire import (
    COMMAND_PATH_HEADER,
    PROGRESS_COMMAND_PATH,
    TASK_UUID_HEADER,
    Envelope,
    progress_report,
    stage_percent,
)

log = logging.getLogger(__name__)

CALLBACK_TIMEOUT_S = 120  # ZStack's agents' own ([zsu] http.py l.354)
PROGRESS_TIMEOUT_S = 10
PROGRESS_INTERVAL_S = 1.0
POLL_S = 0.1


def deliver(callback_url: str, task_uuid: str, body: bytes, retry_s: float, backoff_s: float = 1.0) -> bool:
    """Post a result until the MN takes it; True when delivered (2xx or 404)."""
    headers = {TASK_UUID_HEADER: task_uuid, "Content-Type": "application/json", "Connection": "close"}
    deadline = time.monotonic() + retry_s
    attempt = 0
    while True:
        attempt += 1
        try:
            answer = httpx.post(callback_url, content=body, headers=headers, timeout=CALLBACK_TIMEOUT_S)
            if answer.status_code < 300 or answer.status_code == 404:
                return True
            reason = f"HTTP {answer.status_code}: {answer.text[:200]}"
            if 400 <= answer.status_code < 500:
                log.warning("callback %s for task %s refused: %s", callback_url, task_uuid, reason)
                return False
        except httpx.HTTPError as e:
            reason = f"{type(e).__name__}: {e}"
        if time.monotonic() + backoff_s > deadline:
            log.warning("callback %s for task %s not delivered after %d attempts: %s", callback_url, task_uuid,
                        attempt, reason)
            return False
        time.sleep(backoff_s)


class ProgressReporter:
    """Posts the job's percentage, mapped into the command's task-stage window, when it changes (the
    first at once, then at most every ``interval_s``), and the last value when stopped."""

    def __init__(self, url: str | None, env: Envelope, window: tuple[int, int], process_type: str,
                 percent: Callable[[], float | None], interval_s: float = PROGRESS_INTERVAL_S) -> None:
        self.url = url
        self.env = env
        self.window = window
        self.process_type = process_type
        self.percent = percent
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._last: int | None = None
        self._thread = threading.Thread(target=self._run, name="zsagent-progress", daemon=True)

    def start(self) -> ProgressReporter:
        if self.url and self.env.thread_context is not None:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(PROGRESS_TIMEOUT_S + 1)
            self._report()

    def _run(self) -> None:
        posted_at = None
        while not self._stop.wait(POLL_S):
            now = time.monotonic()
            if (posted_at is None or now - posted_at >= self.interval_s) and self._report():
                posted_at = now

    def _report(self) -> bool:
        percent = self.percent()
        if percent is None:
            return False
        value = stage_percent(min(max(percent, 0.0), 100.0), self.window)
        if value == self._last:
            return False
        self._last = value
        self.post(value)
        return True

    def post(self, value: int) -> None:
        body = json.dumps(progress_report(self.env, value, self.process_type), ensure_ascii=True,
                          separators=(",", ":"))
        try:
            httpx.post(self.url, content=body, timeout=PROGRESS_TIMEOUT_S,
                       headers={COMMAND_PATH_HEADER: PROGRESS_COMMAND_PATH, "Content-Type": "application/json"})
        except httpx.HTTPError as e:
            log.debug("progress to %s failed: %s", self.url, e)
