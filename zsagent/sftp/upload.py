"""One remote file written at offsets under ``<path>.part`` over one or more SFTP sessions, then
made durable and published under ``<path>`` without ever replacing an existing file.

    open()    session 0 logs in -> [an ssh exec for stat/md5sum logs in and waits] -> final name free?
              -> create missing parent dirs -> OPEN .part (CREAT|EXCL) on session 0, then the other
              sessions OPEN the same .part for writing
    write()   pipelined WRITEs at offsets, spread over the sessions; a token bucket caps the rate;
              every flush_behind_bytes a session of its own fsyncs the .part (zsagent.sftp.flush_behind)
    commit()  drain every session -> FSETSTAT size (sparse tail) -> fsync@openssh.com -> CLOSE
              -> [stat/md5sum: the waiting exec runs] -> final name still free? -> RENAME .part -> final
    abort()   kill the sessions -> REMOVE .part (and the final name when a failed commit had published
              it) -> RMDIR the dirs we created (innermost first); over a fresh session when the old one
              is dead; never raises

Resume: when a session is lost while writing or committing (sshd killed, connection reset, an idle
timeout), the upload reconnects up to ``resume_attempts`` times, waiting ``resume_delay_s`` before each
(exponential backoff), and goes on where it stopped: every WRITE is sent with its data kept until the
server confirms it, so exactly the unconfirmed WRITEs of the lost sessions (at most
``requests_in_flight`` x ``request_bytes`` per session) are sent again, at their offsets, and nothing the
server confirmed is sent twice. Before it resends, the ``.part`` must still be there and at least as
long as the highest confirmed offset; otherwise (a server that restarted and lost unsynced data, the
file removed) the upload fails rather than publish a template with a gap. The MD5 needs nothing: it is
computed by the caller from the bytes handed to ``write`` (the pipeline's content MD5, the qcow2
encoder's file MD5), which the resume does not change, so the hasher's state simply carries on in
memory, whichever MD5 implementation runs. ``interrupt()`` (a cancel) ends a resume at once.

Each name (``.part``, then the final one right before the RENAME) is journalled before it exists and
forgotten once it is removed or renamed (``journal``, kind "sftp", spec ``journal_spec`` + ``path``).

Publishing uses plain SSH_FXP_RENAME, which the SFTP draft defines as failing when the new name
exists and which OpenSSH implements race-free for regular files (link() then unlink()).
posix-rename@openssh.com (rename(2)) would silently replace a file created between our existence
check and the rename, so it is only the fallback for servers whose plain RENAME fails for another
reason, after a fresh existence check.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from zsagent import faults
from zsagent.sftp import protocol as p
from zsagent.sftp.bandwidth import bucket_for
from zsagent.sftp.client import SftpClient
from zsagent.sftp.errors import (
    AuthenticationFailed,
    ConnectionLost,
    HostKeyChanged,
    HostKeyUnknown,
    Md5Mismatch,
    RemoteFailure,
    RemoteFileExists,
    RemoteNoSuchFile,
    RemoteUnsupported,
    ResumeImpossible,
    SftpError,
    SshConnectError,
)
from zsagent.sftp.flush_behind import FlushBehind
from zsagent.sftp.paths import ancestors, checked_remote_path, part_path
from zsagent.sftp.remote_exec import StandbyCommands, allocated_and_md5_commands, remote_allocated_and_md5
from zsagent.sftp.settings import SftpSettings
from zsagent.sinks.base import NO_JOURNAL, Journal

log = logging.getLogger(__name__)

DIR_MODE = 0o755
FILE_MODE = 0o644
JOURNAL_KIND = "sftp"


class RemoteUpload:
    """A file on the SFTP server, written at offsets, published atomically or removed.

    Thread-safe ``write``; ``open``/``commit``/``abort`` come from one thread, ``interrupt`` from any.
    ``bytes_sent``: data bytes handed to ssh so far (each once); ``bytes_resent``: data bytes sent again
    after lost connections; ``resumes``: reconnections that succeeded.
    """

    def __init__(self, settings: SftpSettings, path: str, journal: Journal = NO_JOURNAL,
                 journal_spec: dict | None = None) -> None:
        self.settings = settings
        self.path = checked_remote_path(path)
        self.part = part_path(self.path)
        self.target = settings.target
        self.bytes_sent = 0
        self._journal = journal
        self._journal_spec = dict(journal_spec or {})
        self._part_id: int | None = None
        self._final_id: int | None = None
        self._committed = False
        self._sessions: list[SftpClient] = []
        self._handles: list[bytes] = []
        self._created_dirs: list[str] = []
        self._part_created = False
        self._published = False
        self._bucket = bucket_for(settings.bandwidth_bytes_per_s, settings.request_bytes)
        self._lock = threading.Lock()
        self._turn = 0
        self._standby: StandbyCommands | None = None
        self._flush: FlushBehind | None = None
        self.bytes_resent = 0
        self.resumes = 0
        self._acked_end = 0  # highest confirmed end offset over every session so far
        self._unsent: list[tuple[int, memoryview | bytes]] = []  # unconfirmed WRITEs of lost sessions
        self._generation = 0  # bumped by every reconnection
        self._resume_lock = threading.Lock()
        self._interrupted = threading.Event()
        self._committing = False
        self._resume_error: BaseException | None = None
        self._killed = False  # interrupt() killed the sessions: abort cleans up over a new one

    # -- open -------------------------------------------------------------------------------------

    def open(self) -> None:
        """Create ``<path>.part`` (and missing parent directories) and connect every session."""
        try:
            primary = SftpClient(self.settings)
            self._sessions.append(primary)
            primary.start()
            if self.settings.remote_commands:  # after the first login, which may add the host key
                self._standby = StandbyCommands(self.settings, allocated_and_md5_commands(
                    self.part, self.settings.verify_md5))
            if primary.exists(self.path):
                raise RemoteFileExists(f"{self.path} already exists on {self.target}: templates are never "
                                       "overwritten", self.target)
            self._make_parents(primary)
            self._handles.append(self._create_part(primary))
            if self.settings.connections > 1:
                self._open_more(self.settings.connections - 1)
            if self.settings.flush_behind_bytes and primary.offers(p.EXT_FSYNC):
                self._flush = FlushBehind(self.settings, self.part, self.settings.flush_behind_bytes)
        except BaseException:
            self.abort()
            raise

    def _make_parents(self, client: SftpClient) -> None:
        missing = []
        for directory in ancestors(self.path):
            try:
                attrs = client.stat(directory)
            except RemoteNoSuchFile:
                missing.append(directory)
                continue
            if not attrs.is_dir:
                raise SftpError(f"{directory} on {self.target} exists but is not a directory", self.target)
            break
        for directory in reversed(missing):
            try:
                client.mkdir(directory, DIR_MODE)
            except RemoteFailure:
                with contextlib.suppress(SftpError):
                    if client.stat(directory).is_dir:
                        continue  # made by someone else meanwhile: not ours to remove
                raise
            self._created_dirs.append(directory)

    def _record(self, path: str) -> int:
        return self._journal.record(JOURNAL_KIND, {**self._journal_spec, "path": path})

    def _forget(self, name: str) -> None:
        artifact_id = getattr(self, name)
        if artifact_id is not None:
            self._journal.forget(artifact_id)
            setattr(self, name, None)

    def _create_part(self, client: SftpClient) -> bytes:
        self._part_id = self._record(self.part)
        try:
            handle = client.open(self.part, p.FXF_WRITE | p.FXF_CREAT | p.FXF_EXCL, FILE_MODE)
        except BaseException as e:
            self._forget("_part_id")  # not created by us
            if isinstance(e, RemoteFailure) and client.exists(self.part):
                raise RemoteFileExists(f"{self.part} already exists on {self.target}: another upload of "
                                       "this template is running or a crashed one left it behind",
                                       self.target) from e
            raise
        self._part_created = True
        return handle

    def _open_more(self, count: int) -> None:
        """Connect ``count`` more sessions in parallel, each with the .part open for writing."""

        def connect() -> tuple[SftpClient, bytes]:
            client = SftpClient(self.settings)
            with self._lock:
                self._sessions.append(client)
            client.start()
            return client, client.open(self.part, p.FXF_WRITE)

        with ThreadPoolExecutor(count, thread_name_prefix="zsagent-sftp-connect") as pool:
            futures = [pool.submit(connect) for _ in range(count)]
            opened = [f.result() for f in futures]  # the first failure propagates (abort cleans up)
        with self._lock:
            self._sessions = [self._sessions[0]] + [client for client, _ in opened]
            self._handles = [self._handles[0]] + [handle for _, handle in opened]

    # -- write ------------------------------------------------------------------------------------

    @property
    def write_bytes(self) -> int:
        """Data bytes per WRITE request."""
        return self._sessions[0].write_bytes if self._sessions else self.settings.request_bytes

    def _pick(self) -> tuple[SftpClient, bytes]:
        """The session with the fewest unanswered WRITEs (round robin among equals); ConnectionLost while
        a reconnection is under way (the caller then waits for it in ``_resume``)."""
        if self._resume_error is not None:
            raise self._resume_error
        if self._generation % 2:  # odd while a reconnection runs
            raise ConnectionLost(f"upload of {self.part} to {self.target} is reconnecting", self.target)
        return self._choose()

    def _choose(self) -> tuple[SftpClient, bytes]:
        sessions, handles = self._sessions, self._handles
        if not sessions or len(handles) != len(sessions):
            raise SftpError(f"upload of {self.part} to {self.target} is not open", self.target)
        if len(sessions) == 1:
            return sessions[0], handles[0]
        with self._lock:
            self._turn = (self._turn + 1) % len(sessions)
            order = sessions[self._turn:] + sessions[:self._turn]
        best = min(order, key=lambda s: s.channel.writes_in_flight)
        return best, handles[sessions.index(best)]

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Send ``data`` for ``offset`` (pipelined: returns once ssh has it). Raises what went wrong
        earlier with any request of this upload."""
        view = memoryview(data)
        step = self.write_bytes
        for start in range(0, len(view), step):
            piece = view[start:start + step]
            if not piece.readonly:  # kept until confirmed (for a resend), and the caller may reuse its buffer
                piece = bytes(piece)
            if self._bucket is not None:
                self._bucket.take(len(piece))
            self._send(offset + start, piece)
            with self._lock:
                self.bytes_sent += len(piece)
                if self._flush is not None:
                    self._flush.sent(self.bytes_sent)

    def _send(self, offset: int, piece: memoryview | bytes) -> None:
        while True:
            generation = self._generation
            try:
                session, handle = self._pick()
                session.channel.write(handle, offset, piece, self.part, keep=True)
                return
            except ConnectionLost as e:
                self._resume(generation, e)

    def _retrying(self, step):
        """``step()``, reconnecting (see ``_resume``) and calling it again when a session is lost."""
        while True:
            generation = self._generation
            try:
                return step()
            except ConnectionLost as e:
                self._resume(generation, e)

    # -- resume -----------------------------------------------------------------------------------

    def interrupt(self) -> None:
        """Stop at once (a cancel or another failure of the copy): writers and a reconnection waiting
        for its next attempt fail now instead of after the backoff. ``abort()`` still cleans up."""
        self._interrupted.set()
        with self._lock:
            sessions = list(self._sessions)
            self._killed = bool(sessions)
        for session in sessions:
            session.channel.kill()

    def _resume(self, generation: int, error: ConnectionLost) -> None:
        """Reconnect after ``error``, unless another thread did since ``generation``; raise when the
        upload cannot go on."""
        with self._resume_lock:
            if self._resume_error is not None:
                raise self._resume_error
            if generation != self._generation:
                return  # reconnected meanwhile: just try again
            self._generation += 1  # odd: from here on, _pick() sends writers here to wait
            try:
                self._reconnect(error)
            except BaseException as e:
                self._resume_error = e  # the other writers fail with it, without reconnecting again
                raise
            finally:
                self._generation += 1  # even again: a writer sent here meanwhile tries again, on the new sessions

    def _reconnect(self, error: ConnectionLost) -> None:
        attempts = self.settings.resume_attempts
        if self._interrupted.is_set() or attempts == 0:
            self._drop_sessions()
            raise error
        self._drop_sessions()
        log.warning("SFTP upload of %s to %s lost its connection after %d bytes (%s); resuming with %d "
                    "unconfirmed bytes to send again", self.part, self.target, self.bytes_sent, error,
                    sum(len(d) for _, d in self._unsent))
        last: SftpError = error
        for attempt in range(1, attempts + 1):
            if self._interrupted.wait(self.settings.resume_delay_s(attempt)):
                raise error
            try:
                self._reopen()
            except (HostKeyUnknown, HostKeyChanged, AuthenticationFailed):
                self._drop_sessions()
                raise
            except (ConnectionLost, SshConnectError) as e:
                self._drop_sessions()
                if self._interrupted.is_set():
                    raise error from e
                last = e
                log.warning("reconnection %d of %d to %s failed: %s", attempt, attempts, self.target, e)
                continue
            except BaseException:
                self._drop_sessions()
                raise
            self.resumes += 1
            log.warning("SFTP upload of %s to %s resumed (reconnection %d); %d bytes sent again in all",
                        self.part, self.target, attempt, self.bytes_resent)
            return
        raise ConnectionLost(f"upload of {self.part} to {self.target}: connection lost ({error}) and "
                             f"{attempts} reconnections failed, the last with: {last}", self.target) from error

    def _detach_sessions(self) -> list:
        """Take every session away from the upload (stopping the flush-behind and the standby
        connection) and return them, for the caller to kill or reuse."""
        with self._lock:
            sessions, self._sessions, self._handles = self._sessions, [], []
            flush, self._flush = self._flush, None
            standby, self._standby = self._standby, None
        if flush is not None:
            flush.kill()
        if standby is not None:
            standby.cancel()
        return sessions

    def _drop_sessions(self) -> None:
        """Kill every session; keep their unconfirmed WRITEs and the highest offset they confirmed."""
        sessions = self._detach_sessions()
        for session in sessions:
            session.channel.kill()
        for session in sessions:
            session.close()
            self._unsent.extend(session.channel.lost_writes())
            self._acked_end = max(self._acked_end, session.channel.acked_end)

    def _reopen(self) -> None:
        """Log in again, check that the .part still holds every confirmed byte, open it on every session
        and send the unconfirmed WRITEs again."""
        primary = SftpClient(self.settings)
        with self._lock:
            self._sessions = [primary]
        if self._interrupted.is_set():
            raise ConnectionLost(f"upload of {self.part} to {self.target} was interrupted", self.target)
        primary.start()
        try:
            size = primary.stat(self.part).size or 0
        except RemoteNoSuchFile as e:
            raise ResumeImpossible(f"{self.part} is gone from {self.target}: the upload cannot resume",
                                   self.target) from e
        if size < self._acked_end:
            raise ResumeImpossible(f"{self.part} on {self.target} holds {size} bytes, fewer than the "
                                   f"{self._acked_end} the server had confirmed (did it restart?): the upload "
                                   "cannot resume", self.target)
        handle = primary.open(self.part, p.FXF_WRITE)
        with self._lock:
            self._handles = [handle]
        if self.settings.connections > 1:
            self._open_more(self.settings.connections - 1)
        while self._unsent:
            offset, data = self._unsent[0]
            session, handle = self._choose()
            session.channel.write(handle, offset, data, self.part, keep=True)
            self._unsent.pop(0)
            with self._lock:
                self.bytes_resent += len(data)
        if self.settings.remote_commands and not self._committing:
            self._standby = StandbyCommands(self.settings, allocated_and_md5_commands(
                self.part, self.settings.verify_md5))
        if self.settings.flush_behind_bytes and not self._committing and primary.offers(p.EXT_FSYNC):
            self._flush = FlushBehind(self.settings, self.part, self.settings.flush_behind_bytes)

    # -- commit -----------------------------------------------------------------------------------

    def commit(self, size: int | None = None, expected_md5: str | None = None) -> tuple[str, int]:
        """Make the file durable and publish it; return (path, allocated bytes on the server).

        ``size``: set the file to this many bytes first (holes at the end of a sparse file).
        ``expected_md5``: with settings.verify_md5, the server's md5sum of the file must equal it.
        On any failure everything created is removed (as by ``abort``) and the error raised.
        """
        try:
            return self._commit(size, expected_md5)
        except BaseException:
            self.abort()
            raise

    def _commit(self, size: int | None, expected_md5: str | None) -> tuple[str, int]:
        logical = self._retrying(lambda: self._finish_part(size))
        allocated = self._measure_retrying(logical, expected_md5)
        primary = self._publish_retrying()
        primary.close()
        self._committed = True
        return self.path, allocated

    def _finish_part(self, size: int | None) -> int:
        """Wait for every WRITE, set the size, fsync and close the .part; its logical size."""
        for session in list(self._sessions):
            session.drain()
        self._committing = True
        if self._flush is not None:
            self._flush.stop()
        primary, handle = self._sessions[0], self._handles[0]
        for session, other in zip(self._sessions[1:], self._handles[1:], strict=True):
            session.close_handle(other, self.part)
            session.close()
        with self._lock:
            self._sessions, self._handles = [primary], [handle]
        if size is not None:
            primary.fsetstat(handle, p.Attrs(size=size), self.part)
        primary.fsync(handle, self.part)  # not offered: the server's own flush policy applies
        logical = primary.fstat(handle, self.part).size or 0
        primary.close_handle(handle, self.part)
        return logical

    def _measure_retrying(self, logical: int, expected_md5: str | None) -> int:
        """``_measure``, tried again (fresh ssh, with backoff) when its ssh loses the connection."""
        for attempt in range(1, self.settings.resume_attempts + 2):
            try:
                return self._measure(logical, expected_md5)
            except (HostKeyUnknown, HostKeyChanged, AuthenticationFailed):
                raise
            except SshConnectError as e:
                if attempt > self.settings.resume_attempts or self._interrupted.wait(
                        self.settings.resume_delay_s(attempt)):
                    raise
                log.warning("md5sum/stat of %s on %s lost its connection (%s); trying again",
                            self.part, self.target, e)
        raise AssertionError("unreachable")

    def _publish_retrying(self) -> SftpClient:
        """``_publish`` over the primary session, reconnecting when it is lost; a RENAME whose answer
        was lost counts as done when the .part is gone and the final name exists."""
        for attempt in range(1, self.settings.resume_attempts + 2):
            client = self._sessions[0] if self._sessions else None
            try:
                if client is None:
                    client = SftpClient(self.settings)
                    with self._lock:
                        self._sessions = [client]
                    client.start()
                if self._final_id is not None:  # a RENAME was sent, its answer lost
                    if not client.exists(self.part) and client.exists(self.path):
                        self._published = True
                        self._part_created = False
                        self._forget("_part_id")
                        return client
                    self._forget("_final_id")
                self._publish(client)
                return client
            except (HostKeyUnknown, HostKeyChanged, AuthenticationFailed):
                raise
            except (ConnectionLost, SshConnectError) as e:
                with self._lock:
                    sessions, self._sessions, self._handles = self._sessions, [], []
                for session in sessions:
                    session.channel.kill()
                    session.close()
                if attempt > self.settings.resume_attempts or self._interrupted.wait(
                        self.settings.resume_delay_s(attempt)):
                    raise
                log.warning("publishing %s on %s lost the connection (%s); reconnecting", self.path,
                            self.target, e)
        raise AssertionError("unreachable")

    def _measure(self, logical: int, expected_md5: str | None) -> int:
        """Allocated bytes of the .part (logical size when the server runs no commands); check its md5."""
        verify = self.settings.verify_md5 and expected_md5 is not None
        if not self.settings.remote_commands:
            return logical
        try:
            standby, self._standby = self._standby, None
            allocated, actual_md5 = remote_allocated_and_md5(self.settings, self.part, logical, verify, standby)
        except SftpError as e:
            if verify:
                raise
            log.warning("allocated size of %s on %s unknown, reporting its logical size: %s",
                        self.part, self.target, e)
            return logical
        if verify and actual_md5 != expected_md5:
            raise Md5Mismatch(self.path, str(expected_md5), str(actual_md5), self.target)
        return allocated

    def _publish(self, client: SftpClient) -> None:
        taken = RemoteFileExists(f"{self.path} already exists on {self.target}: templates are never "
                                 "overwritten", self.target)
        if client.exists(self.path):
            raise taken
        self._final_id = self._record(self.path)
        faults.hit("publish-before-rename")
        try:
            self._rename(client, taken)
        except RemoteFileExists:
            self._forget("_final_id")  # someone else's file: not ours to remove
            raise
        self._published = True
        faults.hit("publish-after-rename")
        self._part_created = False
        self._forget("_part_id")

    def _rename(self, client: SftpClient, taken: RemoteFileExists) -> None:
        try:
            client.rename(self.part, self.path)
        except (RemoteFailure, RemoteUnsupported) as e:
            if client.exists(self.path):
                raise taken from e
            if not client.offers(p.EXT_POSIX_RENAME):
                raise
            log.info("RENAME of %s on %s failed (%s); using posix-rename", self.part, self.target, e)
            client.posix_rename(self.part, self.path)

    # -- abort ------------------------------------------------------------------------------------

    def abort(self) -> None:
        """Remove the .part and the directories this upload created; close every session. Never raises."""
        if self._resume_lock.locked():
            self.interrupt()  # a reconnection under way gives up at once
        self._interrupted.set()
        with self._resume_lock:
            self._abort()

    def _abort(self) -> None:
        sessions = self._detach_sessions()
        for session in sessions[1:]:
            session.channel.kill()
            session.close()
        primary = sessions[0] if sessions else None
        try:
            if self._committed or not (self._part_created or self._published or self._created_dirs):
                return
            if primary is None or self._killed or not primary.channel.alive:
                if primary is not None:
                    primary.close()
                primary = SftpClient(self.settings)
                primary.start()
            self._remove_created(primary)
        except Exception as e:  # noqa: BLE001 - abort must not hide the original error
            log.error("cleanup of %s on %s failed; it may be left behind: %s", self.part, self.target, e)
        finally:
            if primary is not None:
                primary.close()

    def _remove_created(self, client: SftpClient) -> None:
        if self._part_created:
            with contextlib.suppress(RemoteNoSuchFile):
                client.remove(self.part)
            self._part_created = False
        self._forget("_part_id")
        if self._published:  # renamed, but the commit failed after that: it was never reported
            with contextlib.suppress(RemoteNoSuchFile):
                client.remove(self.path)
            self._published = False
        self._forget("_final_id")
        while self._created_dirs:
            directory = self._created_dirs.pop()
            try:
                client.rmdir(directory)
            except SftpError as e:  # not empty any more (another upload uses it) or gone
                log.info("leaving %s on %s: %s", directory, self.target, e)
                self._created_dirs.clear()

    # -- for diagnostics and tests ----------------------------------------------------------------

    @property
    def ssh_pids(self) -> list[int]:
        return [pid for s in self._sessions if (pid := s.channel.pid) is not None]
