"""What can go wrong talking to SFTP backup storage. Every message names the server (user@host:port)."""

from __future__ import annotations

from zsagent.sftp.protocol import (
    FX_FAILURE,
    FX_NO_SUCH_FILE,
    FX_OP_UNSUPPORTED,
    FX_PERMISSION_DENIED,
    Status,
)


class SftpError(Exception):
    """Base class. ``target``: ``user@host:port`` of the server concerned."""

    def __init__(self, message: str, target: str = "") -> None:
        super().__init__(message)
        self.target = target


class SshConnectError(SftpError):
    """ssh could not set up an SFTP session (no route, refused, timeout, subsystem refused, ...).

    ``stderr``: what ssh said, for the details of an error report.
    """

    def __init__(self, message: str, target: str = "", stderr: str = "") -> None:
        super().__init__(message, target)
        self.stderr = stderr


class HostKeyUnknown(SshConnectError):
    """The server's host key is not in the configured known_hosts file (and accepting new keys is off)."""


class HostKeyChanged(SshConnectError):
    """known_hosts holds a different key for this host and port: possibly a man-in-the-middle."""


class AuthenticationFailed(SshConnectError):
    """The server refused our private key (or the key file cannot be used)."""


class ConnectionLost(SftpError):
    """An established SFTP session ended before its work was done (ssh exited, killed, network cut)."""


class ResumeImpossible(SftpError):
    """A lost upload cannot go on: its .part is gone or shorter than what the server had confirmed."""


class IdleTimeout(ConnectionLost):
    """The server answered nothing for ``idle_timeout_s`` while requests were outstanding."""


class SftpProtocolError(ConnectionLost):
    """The server sent something that is not SFTP v3; the session is closed."""


class SftpStatusError(SftpError):
    """The server refused one request. ``op``: request name, ``path``: what it was about,
    ``code``/``server_message``: the SSH_FXP_STATUS reply."""

    def __init__(self, op: str, path: str, status: Status, target: str = "") -> None:
        detail = f": {status.message}" if status.message else ""
        super().__init__(f"SFTP {op} {path} on {target} failed: {status.name}{detail}", target)
        self.op = op
        self.path = path
        self.code = status.code
        self.server_message = status.message


class RemoteNoSuchFile(SftpStatusError):
    """SSH_FX_NO_SUCH_FILE."""


class RemotePermissionDenied(SftpStatusError):
    """SSH_FX_PERMISSION_DENIED."""


class RemoteFailure(SftpStatusError):
    """SSH_FX_FAILURE: the generic error (OpenSSH also answers it for EEXIST, ENOSPC, EISDIR, ...)."""


class RemoteUnsupported(SftpStatusError):
    """SSH_FX_OP_UNSUPPORTED."""


_BY_CODE: dict[int, type[SftpStatusError]] = {
    FX_NO_SUCH_FILE: RemoteNoSuchFile,
    FX_PERMISSION_DENIED: RemotePermissionDenied,
    FX_FAILURE: RemoteFailure,
    FX_OP_UNSUPPORTED: RemoteUnsupported,
}


def status_error(op: str, path: str, status: Status, target: str) -> SftpStatusError:
    """The SftpStatusError subclass for ``status.code``."""
    return _BY_CODE.get(status.code, SftpStatusError)(op, path, status, target)


class RemoteFileExists(SftpError, FileExistsError):
    """The final name is taken: a template is never overwritten."""


class RemoteCommandError(SftpError):
    """A command run over ``ssh ... <command>`` (md5sum, stat) failed or printed something unexpected."""


class Md5Mismatch(SftpError):
    """The server's md5sum of the uploaded file differs from the md5 of the bytes we sent."""

    def __init__(self, path: str, expected: str, actual: str, target: str = "") -> None:
        super().__init__(f"md5 of {path} on {target} is {actual}, but the bytes sent hash to {expected}: "
                         "the upload is corrupt and was removed", target)
        self.path = path
        self.expected = expected
        self.actual = actual
