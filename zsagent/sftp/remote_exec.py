"""Commands run on the SFTP server over a separate ``ssh HOST 'cmd'`` (md5sum, stat), for servers that
allow them (``SftpSettings.remote_commands``).

The remote shell parses the command line, so every word is quoted with shlex.quote; the paths are
ours (built from validated UUIDs), but quoting is not optional.

An upload's commit needs one such command (stat, md5sum) after its last fsync; ``StandbyCommands`` logs
in while the upload runs and only starts the commands when told, so the login is not on the commit's path.
"""

from __future__ import annotations

import contextlib
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
        raise _timed_out(settings, line, timeout_s) from e
    except OSError as e:
        raise SshConnectError(f"cannot run {settings.ssh_binary}: {e}", settings.target) from e
    return _output(settings, line, proc.returncode, proc.stdout, proc.stderr)


def _timed_out(settings: SftpSettings, line: str, timeout_s: float) -> RemoteCommandError:
    return RemoteCommandError(f"`{line}` on {settings.target} did not finish within {timeout_s:.0f} s",
                              settings.target)


def _output(settings: SftpSettings, line: str, returncode: int, stdout: bytes, stderr_raw: bytes) -> str:
    """stdout as text, or the error that ssh's exit status and stderr describe."""
    stderr = stderr_raw.decode(errors="replace")
    if returncode == 255:  # ssh's own failure (a remote command exiting 255 is taken for one too)
        raise diagnose(stderr, returncode, settings)
    if returncode != 0:
        raise RemoteCommandError(f"`{line}` on {settings.target} exited with status {returncode}: "
                                 f"{stderr.strip() or '(nothing on stderr)'}", settings.target)
    return stdout.decode(errors="replace")


class StandbyCommands:
    """``commands`` on the server over an ssh that logs in now and runs them only when ``run()`` is called.

    The remote shell waits in ``read`` for one line on stdin: ``run()`` sends it, ``cancel()`` (or our
    exit) closes stdin without it, and then nothing runs. When the standby ssh is gone by the time of
    ``run()`` (its connection dropped during a long upload), ``run()`` logs in afresh.
    """

    def __init__(self, settings: SftpSettings, commands: Sequence[Sequence[str]]) -> None:
        self.settings = settings
        self.commands = [list(argv) for argv in commands]
        self._line = command_line(self.commands)
        self._proc: subprocess.Popen | None = None
        try:
            self._proc = subprocess.Popen(exec_argv(settings, f"read -r _ && {self._line}"),
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, start_new_session=True)
        except OSError:
            pass  # run() reports it when it tries again

    def run(self, timeout_s: float) -> str:
        """What ``run_remote(settings, commands, timeout_s)`` returns or raises; usable once."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            if proc is not None:
                _reap(proc)
            return run_remote(self.settings, self.commands, timeout_s)
        try:
            stdout, stderr = proc.communicate(b"go\n", timeout=timeout_s)
        except subprocess.TimeoutExpired as e:
            _reap(proc, kill=True)
            raise _timed_out(self.settings, self._line, timeout_s) from e
        return _output(self.settings, self._line, proc.returncode, stdout, stderr)

    def cancel(self) -> None:
        """Stop the standby ssh without running anything. Never raises."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _reap(proc, kill=True)


def _reap(proc: subprocess.Popen, kill: bool = False) -> None:
    if kill and proc.poll() is None:
        with contextlib.suppress(OSError):
            proc.kill()
    with contextlib.suppress(OSError, ValueError, subprocess.TimeoutExpired):
        proc.communicate(timeout=10)


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


def allocated_and_md5_commands(path: str, with_md5: bool) -> list[list[str]]:
    """What ``remote_allocated_and_md5`` runs on the server."""
    commands = [["stat", "-c", "%b %B", "--", path]]
    if with_md5:
        commands.append(["md5sum", "--", path])
    return commands


def remote_allocated_and_md5(settings: SftpSettings, path: str, size_bytes: int, with_md5: bool,
                             standby: StandbyCommands | None = None) -> tuple[int, str | None]:
    """(allocated bytes of ``path``, its md5 when ``with_md5``) in one ssh exec: ``standby``'s when it
    holds these commands (it is used up either way), else a fresh one."""
    commands = allocated_and_md5_commands(path, with_md5)
    timeout_s = check_timeout_s(size_bytes) if with_md5 else 60.0
    if standby is not None and standby.commands == commands:
        out = standby.run(timeout_s)
    else:
        if standby is not None:
            standby.cancel()
        out = run_remote(settings, commands, timeout_s)
    first, _, rest = out.partition("\n")
    try:
        allocated = parse_stat_blocks(first)
        digest = parse_md5sum(rest) if with_md5 else None
    except ValueError as e:
        raise RemoteCommandError(f"unexpected output on {settings.target}: {e}", settings.target) from e
    return allocated, digest
