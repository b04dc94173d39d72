"""Commands run on the SFTP server over a separate ``ssh HOST 'cmd'`` (md5sum, stat), for servers that
allow them (``SftpSettings.remote_commands``).

The remote shell parses the command line, so every word is quoted with shlex.quote; the paths are
ours (built from validated UUIDs), but quoting is not optional.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Sequence

from zsagent.sftp.errors import RemoteCommandError, SshConnectError
from zsagent.sftp.settings import SftpSettings
from zsagent.sftp.ssh_command import diagnose, exec_argv

_MD5_LINE = re.compile(r"^\\?([0-9a-fA-F]{32})[ \t]")
_STAT_LINE = re.compile(r"^(\d+) (\d+)$")


def command_line(commands: Sequence[Sequence[str]]) -> str:
    """Commands for the remote shell, each word quoted, run one after the other while they succeed."""
    return " && ".join(shlex.join(list(argv)) for argv in commands)


def run_remote(settings: SftpSettings, commands: Sequence[Sequence[str]], timeout_s: float) -> str:
    """Run ``commands`` on the server; return their stdout. SshConnectError when ssh cannot log in,
    RemoteCommandError when a command fails or does not finish within ``timeout_s``."""
    line = command_line(commands)
    argv = exec_argv(settings, line)
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s,
                              start_new_session=True, check=False)
    except subprocess.TimeoutExpired as e:
        raise RemoteCommandError(f"`{line}` on {settings.target} did not finish within {timeout_s:.0f} s",
                                 settings.target) from e
    except OSError as e:
        raise SshConnectError(f"cannot run {settings.ssh_binary}: {e}", settings.target) from e
    stderr = proc.stderr.decode(errors="replace")
    if proc.returncode == 255:  # ssh's own failure (a remote command exiting 255 is taken for one too)
        raise diagnose(stderr, proc.returncode, settings)
    if proc.returncode != 0:
        raise RemoteCommandError(f"`{line}` on {settings.target} exited with status {proc.returncode}: "
                                 f"{stderr.strip() or '(nothing on stderr)'}", settings.target)
    return proc.stdout.decode(errors="replace")


def parse_md5sum(output: str) -> str:
    """The digest in the first line of ``md5sum`` output (lower case); ValueError when there is none.

    GNU md5sum prefixes the line with a backslash when the file name needed escaping.
    """
    match = _MD5_LINE.match(output)
    if not match:
        raise ValueError(f"not md5sum output: {output[:200]!r}")
    return match.group(1).lower()


def parse_stat_blocks(output: str) -> int:
    """Allocated bytes from ``stat -c '%b %B'`` output (blocks times the block unit)."""
    match = _STAT_LINE.match(output.strip())
    if not match:
        raise ValueError(f"not `stat -c '%b %B'` output: {output[:200]!r}")
    return int(match.group(1)) * int(match.group(2))


def check_timeout_s(size_bytes: int) -> float:
    """How long md5sum may take on the server: a minute plus 20 MB/s (a hang guard, not a budget)."""
    return 60.0 + size_bytes / 20e6


def remote_allocated_and_md5(settings: SftpSettings, path: str, size_bytes: int,
                             with_md5: bool) -> tuple[int, str | None]:
    """(allocated bytes of ``path``, its md5 when ``with_md5``) in one ssh exec."""
    commands: list[list[str]] = [["stat", "-c", "%b %B", "--", path]]
    if with_md5:
        commands.append(["md5sum", "--", path])
    out = run_remote(settings, commands, check_timeout_s(size_bytes) if with_md5 else 60.0)
    first, _, rest = out.partition("\n")
    try:
        allocated = parse_stat_blocks(first)
        digest = parse_md5sum(rest) if with_md5 else None
    except ValueError as e:
        raise RemoteCommandError(f"unexpected output on {settings.target}: {e}", settings.target) from e
    return allocated, digest
