"""SFTP backup storage over the OpenSSH client: ``ssh -s sftp`` does network and crypto (in C), our own
small SFTP v3 client frames the packets over its pipes.

    settings.py     SftpSettings: server, key, known_hosts, timeouts, rate limit, connections
    ssh_command.py  the ssh command lines, and what ssh's stderr means (host key, auth, network)
    protocol.py     SFTP v3 packets and OpenSSH extensions: encode/decode only
    channel.py      one ssh process: requests in flight, replies matched by id, idle timeout
    client.py       file operations on a channel (OPEN, WRITE, FSETSTAT, RENAME, fsync, ...)
    upload.py       RemoteUpload: <path>.part over N sessions, durable no-clobber publish, cleanup
    remote_exec.py  md5sum / stat on the server over ssh exec (shell-quoted)
    bandwidth.py    TokenBucket, the upload rate cap
    paths.py        remote path checks
    errors.py       the exceptions, each naming the server

The sinks built on it are in zsagent.sinks.sftp.
"""

from zsagent.sftp.client import SftpClient
from zsagent.sftp.errors import (
    AuthenticationFailed,
    ConnectionLost,
    HostKeyChanged,
    HostKeyUnknown,
    IdleTimeout,
    Md5Mismatch,
    RemoteFileExists,
    SftpError,
    SftpStatusError,
    SshConnectError,
)
from zsagent.sftp.settings import SftpSettings
from zsagent.sftp.upload import RemoteUpload

__all__ = [
    "AuthenticationFailed",
    "ConnectionLost",
    "HostKeyChanged",
    "HostKeyUnknown",
    "IdleTimeout",
    "Md5Mismatch",
    "RemoteFileExists",
    "RemoteUpload",
    "SftpClient",
    "SftpError",
    "SftpSettings",
    "SftpStatusError",
    "SshConnectError",
]
