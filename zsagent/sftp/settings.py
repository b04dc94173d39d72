"""How to reach one SFTP backup storage and how hard to push it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from zsagent.sftp.protocol import MAX_WRITE_DATA_BYTES

_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[0-9A-Za-z_.:%-]+)$")
_USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\$?$")


@dataclass(frozen=True, kw_only=True)
class SftpSettings:
    """One SFTP server, reached with OpenSSH's ``ssh`` and a private key; the host key must be known.

    hostname: DNS name or IP address of the server (no user@, no port).
    port: TCP port of its sshd.
    username: the account we log in as.
    private_key: path of the private key file (no passphrase: ssh runs in batch mode).
    known_hosts: path of the known_hosts file that must hold the server's host key (as
        ``[hostname]:port`` when the port is not 22). No other known_hosts file is consulted.
    accept_new_host_keys: True: a host not in known_hosts is trusted on first use and added
        (StrictHostKeyChecking=accept-new); a *changed* key is always refused.
    connect_timeout_s: seconds for the TCP connect (ssh's ConnectTimeout) and, doubled, for the whole
        login up to the SFTP version exchange.
    idle_timeout_s: seconds without any answer from the server while requests are outstanding before
        the session is declared dead (ten times that while an fsync, close or truncation runs).
    keepalive_interval_s: seconds between ssh keepalive probes when the server is silent
        (ServerAliveInterval); ``keepalive_count_max`` unanswered probes end the session.
    bandwidth_bytes_per_s: upper bound of the upload rate (file data bytes/s, all connections of one
        upload together); None: unlimited.
    verify_md5: after the upload, run ``md5sum`` on the server over ssh and compare with the md5 of
        the bytes sent; on a mismatch the file is removed and the upload fails. Needs remote_commands.
    remote_commands: the server runs commands over ssh exec (``md5sum``, ``stat``). False for
        SFTP-only accounts; then the reported allocated size is the logical size.
    connections: ssh connections (processes) one upload is spread over, each writing its own offsets.
        1 was fastest on the 2-core project machine with the server on loopback (CPU-bound: a second
        ssh only adds work); more can pay when the agent has idle cores and the network is not the limit.
    request_bytes: data bytes per SFTP WRITE (OpenSSH refuses more than 261120; 64 KiB to 255 KiB
        measured alike, the largest means the fewest requests).
    requests_in_flight: WRITE requests sent and not yet answered, per connection.
    flush_behind_bytes: once this many bytes were sent, a separate session asks the server to fsync the
        .part, and again after every further this many, so that the commit's fsync finds little left to
        write (zsagent.sftp.flush_behind); None: only the commit's fsync.
    resume_attempts: when an upload's connection is lost (sshd killed, connection reset, the server
        silent for idle_timeout_s), this many reconnections are tried before the upload fails; each
        resends only the WRITEs the server had not confirmed and goes on (zsagent.sftp.upload). 0: fail
        at once.
    resume_backoff_s: seconds before the first reconnection; doubled before each further one, up to
        resume_backoff_max_s.
    ssh_binary: the OpenSSH client to run.
    """

    hostname: str
    private_key: str
    known_hosts: str
    port: int = 22
    username: str = "root"
    accept_new_host_keys: bool = False
    connect_timeout_s: float = 10.0
    idle_timeout_s: float = 60.0
    keepalive_interval_s: int = 15
    keepalive_count_max: int = 3
    bandwidth_bytes_per_s: int | None = None
    verify_md5: bool = False
    remote_commands: bool = True
    connections: int = 1
    request_bytes: int = MAX_WRITE_DATA_BYTES
    requests_in_flight: int = 64
    flush_behind_bytes: int | None = 64 * 1024 * 1024
    resume_attempts: int = 5
    resume_backoff_s: float = 1.0
    resume_backoff_max_s: float = 30.0
    ssh_binary: str = "ssh"

    def __post_init__(self) -> None:
        if not _HOST_RE.match(self.hostname) or self.hostname.startswith("-"):
            raise ValueError(f"invalid SFTP hostname {self.hostname!r}")
        if not _USER_RE.match(self.username):
            raise ValueError(f"invalid SFTP username {self.username!r}")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"invalid SFTP port {self.port}")
        for name in ("private_key", "known_hosts"):
            value = getattr(self, name)
            if not value or "\n" in value or "\0" in value:
                raise ValueError(f"invalid {name} path {value!r}")
        for name in ("connect_timeout_s", "idle_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.keepalive_interval_s < 1 or self.keepalive_count_max < 1:
            raise ValueError("keepalive_interval_s and keepalive_count_max must be at least 1")
        if self.bandwidth_bytes_per_s is not None and self.bandwidth_bytes_per_s <= 0:
            raise ValueError("bandwidth_bytes_per_s must be positive (or None for no limit)")
        if self.verify_md5 and not self.remote_commands:
            raise ValueError("verify_md5 needs remote_commands (md5sum runs on the server)")
        if not 1 <= self.connections <= 16:
            raise ValueError("connections must be between 1 and 16")
        if not 512 <= self.request_bytes <= MAX_WRITE_DATA_BYTES:
            raise ValueError(f"request_bytes must be between 512 and {MAX_WRITE_DATA_BYTES}")
        if not 1 <= self.requests_in_flight <= 1024:
            raise ValueError("requests_in_flight must be between 1 and 1024")
        if self.flush_behind_bytes is not None and self.flush_behind_bytes < 1024 * 1024:
            raise ValueError("flush_behind_bytes must be at least 1 MiB (or None for no flush-behind)")
        if not 0 <= self.resume_attempts <= 100:
            raise ValueError("resume_attempts must be between 0 and 100")
        if not 0 < self.resume_backoff_s <= self.resume_backoff_max_s <= 3600:
            raise ValueError("resume_backoff_s must be positive and at most resume_backoff_max_s (at most 3600)")

    def resume_delay_s(self, attempt: int) -> float:
        """Seconds to wait before reconnection ``attempt`` (1, 2, ...)."""
        return min(self.resume_backoff_s * 2 ** min(attempt - 1, 30), self.resume_backoff_max_s)

    @property
    def target(self) -> str:
        """``user@host:port``, for messages."""
        return f"{self.username}@{self.hostname}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """How known_hosts names this server: ``host`` on port 22, else ``[host]:port``."""
        return self.hostname if self.port == 22 else f"[{self.hostname.strip('[]')}]:{self.port}"
