"""Flush-behind: the server writes an upload's .part to disk while the upload still runs.

The page cache of the server takes a whole volume without writing any of it (a dirty limit of gigabytes
is common), so the commit's fsync would wait for all of it: 0.7-0.9 s per GiB on the project machine,
with both cores idle. A second SFTP session (its own ssh and server process, so the data session is never
blocked) sends fsync@openssh.com on the .part each time another ``step_bytes`` were sent; the commit's
fsync then only waits for the last step. It is an optimisation only: what it fails at is logged and
dropped, and the commit's own fsync is what makes the file durable.
"""

from __future__ import annotations

import contextlib
import logging
import threading

from zsagent.sftp import protocol as p
from zsagent.sftp.client import SftpClient
from zsagent.sftp.errors import SftpError
from zsagent.sftp.settings import SftpSettings

log = logging.getLogger(__name__)


class FlushBehind:
    """fsync of ``part`` every ``step_bytes`` sent, from a session of its own connected at the first step.

    ``sent(total_bytes)`` is called by the writers after each WRITE (cheap: it only compares); ``stop()``
    waits for a running fsync (not for a login still under way), closes the session and never raises;
    ``kill()`` stops it at once.
    ``flushes``: fsyncs done.
    """

    def __init__(self, settings: SftpSettings, part: str, step_bytes: int) -> None:
        self.settings = settings
        self.part = part
        self.step_bytes = step_bytes
        self.flushes = 0
        self._next_bytes = step_bytes
        self._wake = threading.Event()
        self._stopping = False
        self._ready = False  # logged in, .part open
        self._thread: threading.Thread | None = None
        self._client: SftpClient | None = None

    def sent(self, total_bytes: int) -> None:
        if total_bytes < self._next_bytes or self._stopping:
            return
        self._next_bytes = total_bytes + self.step_bytes
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="zsagent-sftp-flush", daemon=True)
            self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        try:
            client = SftpClient(self.settings)
            self._client = client
            if self._stopping:
                return
            client.start()
            if not client.offers(p.EXT_FSYNC):
                return
            handle = client.open(self.part, p.FXF_WRITE)
            self._ready = True
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    break
                client.fsync(handle, self.part)
                self.flushes += 1
            client.close_handle(handle, self.part)
        except SftpError as e:
            if not self._stopping:
                log.info("flush-behind of %s on %s stopped (the commit's fsync still runs): %s",
                         self.part, self.settings.target, e)
        finally:
            with contextlib.suppress(Exception):
                self._client.close()  # type: ignore[union-attr]

    def stop(self) -> None:
        """Let a running fsync finish, then close the session."""
        self._stopping = True
        self._wake.set()
        if not self._ready:  # a slow second login must not hold up the commit
            self._kill_session()
        if self._thread is not None:
            self._thread.join()

    def kill(self) -> None:
        """Stop at once (abort): kill the session's ssh, then wait for the thread."""
        self._stopping = True
        self._wake.set()
        self._kill_session()
        if self._thread is not None:
            self._thread.join()

    def _kill_session(self) -> None:
        client = self._client
        if client is not None:
            client.channel.kill()
