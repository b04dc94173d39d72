"""The OpenSSH client command lines we run, and what ssh's complaints on stderr mean.

ssh does the network, the crypto (in C, aes128-gcm first) and the host key check; we only frame SFTP
packets over its stdin/stdout. Every option comes from SftpSettings: ``-F /dev/null`` keeps the
user's ~/.ssh/config and the system's ssh_config out of it, and only the configured known_hosts file
decides which host keys are trusted.
"""

from __future__ import annotations

import math
import re

from zsagent.sftp.errors import AuthenticationFailed, HostKeyChanged, HostKeyUnknown, SshConnectError
from zsagent.sftp.settings import SftpSettings

CIPHERS = ",".join([
    "aes128-gcm@openssh.com",  # first: AES-NI makes it the cheapest per byte (see sftp-bench.md)
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
])

_UNSAFE_OPTION_VALUE = re.compile(r"[\s\"'%\\]")


def _safe_path(name: str, path: str) -> str:
    """A path for an ssh option: ssh splits such values on blanks and expands %-tokens, so refuse those."""
    if _UNSAFE_OPTION_VALUE.search(path):
        raise ValueError(f"{name} path {path!r} must not contain blanks, quotes, backslashes or '%'")
    return path


def ssh_base_argv(settings: SftpSettings) -> list[str]:
    """``ssh`` with every option we rely on, up to (not including) the host."""
    strict = "accept-new" if settings.accept_new_host_keys else "yes"
    options = [
        "BatchMode=yes",  # never prompt (passphrases, passwords, unknown hosts)
        f"StrictHostKeyChecking={strict}",
        f"UserKnownHostsFile={_safe_path('known_hosts', settings.known_hosts)}",
        "GlobalKnownHostsFile=/dev/null",
        "UpdateHostKeys=no",
        "CheckHostIP=no",
        "IdentitiesOnly=yes",
        "IdentityAgent=none",
        "PreferredAuthentications=publickey",
        "Compression=no",  # volume data: random or already compressed; zlib would only cost CPU
        f"ConnectTimeout={max(1, math.ceil(settings.connect_timeout_s))}",
        "ConnectionAttempts=1",
        f"ServerAliveInterval={settings.keepalive_interval_s}",
        f"ServerAliveCountMax={settings.keepalive_count_max}",
        "ControlMaster=no",
        "ControlPath=none",
        "ForwardAgent=no",
        "ForwardX11=no",
        "ClearAllForwardings=yes",
        "PermitLocalCommand=no",
        "LogLevel=ERROR",
    ]
    argv = [settings.ssh_binary, "-F", "/dev/null", "-T", "-x", "-a", "-c", CIPHERS,
            "-i", _safe_path("private_key", settings.private_key)]
    for option in options:
        argv += ["-o", option]
    argv += ["-p", str(settings.port), "-l", settings.username]
    return argv


def sftp_argv(settings: SftpSettings) -> list[str]:
    """``ssh ... -s -- HOST sftp``: the server's sftp subsystem on our stdin/stdout."""
    return [*ssh_base_argv(settings), "-s", "--", settings.hostname, "sftp"]


def exec_argv(settings: SftpSettings, command_line: str) -> list[str]:
    """``ssh ... -- HOST COMMAND_LINE``: the remote shell parses it, so its words must be shell-quoted."""
    return [*ssh_base_argv(settings), "--", settings.hostname, command_line]


def _first_line(stderr: str, *needles: str) -> str | None:
    for line in stderr.splitlines():
        if any(n in line for n in needles):
            return line.strip()
    return None


def _tail(stderr: str, lines: int = 6) -> str:
    text = [line.strip() for line in stderr.strip().splitlines() if line.strip() and "@@@" not in line]
    return " | ".join(text[-lines:]) or "(nothing on stderr)"


def diagnose(stderr: str, returncode: int | None, settings: SftpSettings) -> SshConnectError:
    """Turn a failed login into the exception that says what is wrong and how to fix it."""
    host, port, kh = settings.hostname, settings.port, settings.known_hosts
    name = settings.known_hosts_name
    target = settings.target
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr or "has changed and you have requested" in stderr:
        match = re.search(r"SHA256:[A-Za-z0-9+/=]+", stderr)
        offered = f" (it now offers {match.group(0)})" if match else ""
        return HostKeyChanged(
            f"host key of {host}:{port} has CHANGED: {kh} holds a different key for {name}{offered}. "
            "Refusing to connect: this can be a man-in-the-middle attack. If the server's key was "
            "replaced on purpose, verify the new fingerprint on the server (ssh-keygen -lf "
            f"/etc/ssh/ssh_host_ed25519_key.pub), remove the old entry (ssh-keygen -f {kh} -R '{name}') "
            f"and add the new one (ssh-keyscan -p {port} {host} >> {kh})", target, stderr)
    if "host key is known for" in stderr or "Host key verification failed" in stderr:
        return HostKeyUnknown(
            f"host key of {host}:{port} is not in {kh} (no entry for {name}): refusing to connect to an "
            "unknown server. Verify its fingerprint on the server (ssh-keygen -lf "
            f"/etc/ssh/ssh_host_ed25519_key.pub), then add it with ssh-keyscan -p {port} {host} >> {kh} "
            "(or allow trust-on-first-use with accept_new_host_keys)", target, stderr)
    if "Permission denied" in stderr or "Too many authentication failures" in stderr:
        why = ""
        key_problem = _first_line(stderr, "not accessible", "bad permissions", "Load key", "invalid format")
        if key_problem:
            why = f" (the private key {settings.private_key} cannot be used: {key_problem})"
        return AuthenticationFailed(
            f"{target} refused the login of {settings.username!r} with the key {settings.private_key}{why}; "
            f"is its public key in ~{settings.username}/.ssh/authorized_keys on {host}?", target, stderr)
    network = _first_line(stderr, "Connection refused", "timed out", "Could not resolve hostname",
                          "No route to host", "Network is unreachable", "Connection reset",
                          "Connection closed by", "kex_exchange_identification")
    if network:
        return SshConnectError(f"cannot connect to {host}:{port}: {network}", target, stderr)
    if "subsystem request failed" in stderr:
        return SshConnectError(f"{target} does not offer the sftp subsystem", target, stderr)
    status = "killed by a signal" if returncode is not None and returncode < 0 else f"exit status {returncode}"
    return SshConnectError(f"ssh to {target} failed ({status}): {_tail(stderr)}", target, stderr)


def describe_exit(returncode: int | None, stderr: str) -> str:
    """``ssh exited with status 255: <last lines>`` / ``ssh was killed by signal 9``, for messages."""
    if returncode is None:
        how = "ssh is still running"
    elif returncode < 0:
        how = f"ssh was killed by signal {-returncode}"
    else:
        how = f"ssh exited with status {returncode}"
    tail = _tail(stderr)
    return how if tail == "(nothing on stderr)" else f"{how}: {tail}"
