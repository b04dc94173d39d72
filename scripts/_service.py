"""What the test-service scripts (scripts/ceph-cluster, scripts/sshd, scripts/libvirt) have in common.

Each script starts throwaway daemons whose whole state lives under a DIR given on the command line:

    scripts/NAME up DIR [options] [--timeout SECONDS]    # prints only shell export lines on stdout
    scripts/NAME down DIR [--timeout SECONDS]           # stops what `up` started; DIR stays

This module holds the parts that do not depend on the daemon: the error type `up`/`down` raise, the
stderr logger, DIR's layout basics, a free port, recognising a daemon by the pid in its pid file, stopping
it, log tails for error messages, JSON state files, and the command line. Python standard library only;
the scripts find it next to themselves.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class ServiceError(Exception):
    """A failure `up` or `down` reports as one "NAME: error: ..." line (plus log tails) and exit status 1."""


def logger(prog: str) -> Callable[[str], None]:
    """log(msg): one line "PROG: msg" on stderr (stdout carries only the exports)."""

    def log(msg: str) -> None:
        print(f"{prog}: {msg}", file=sys.stderr, flush=True)

    return log


class Layout:
    """Paths under DIR; each script adds its own. root: DIR, absolute; state: the JSON file in which `up`
    records what it made or started."""

    def __init__(self, root: Path, state_name: str) -> None:
        self.root = root
        self.state = root / state_name


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (another process may still take it before the daemon binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def run(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a short command; ServiceError with its stderr when it fails."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise ServiceError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


# ---------------------------------------------------------------- processes


def proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state letter first), None when PID is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def exe(pid: int) -> str:
    """The binary PID runs (a replaced binary still counts). Raises OSError when PID is gone."""
    return os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")


def cmdline(pid: int) -> list[bytes]:
    """PID's argv as the process shows it now (daemons may rewrite it). Raises OSError when PID is gone."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")


def live_pid(pid_file: Path, is_ours: Callable[[int], bool]) -> int | None:
    """The pid in pid_file if that process is alive (not a zombie) and is_ours(pid) holds, else None.

    is_ours guards against a recycled pid; an OSError in it (the process vanished) counts as "not ours"."""
    try:
        pid = int(pid_file.read_text().strip())
        ours = is_ours(pid)
    except (OSError, ValueError):
        return None
    stat = proc_stat(pid)
    if not ours or stat is None or stat[0] == "Z":
        return None
    return pid


def wait_exec(proc: subprocess.Popen, is_ours: Callable[[], object]) -> None:
    """Wait (at most 1 s) until a just-started child shows the new image or has exited.

    Popen can return (vfork) while the kernel is still replacing the child's image: /proc/PID/cmdline
    reads empty for a moment, which a cmdline check would take for "not our daemon"."""
    for _ in range(500):
        if is_ours() or proc.poll() is not None:
            return
        time.sleep(0.002)


def terminate(pid: int, running: Callable[[], bool], timeout: float, poll_s: float = 0.05,
              on_sigkill: Callable[[], None] | None = None) -> None:  # fmt: skip
    """SIGTERM, wait up to timeout seconds while running(), then SIGKILL (after on_sigkill()) and wait."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while running() and time.monotonic() < deadline:
        time.sleep(poll_s)
    if running():
        if on_sigkill is not None:
            on_sigkill()
        os.kill(pid, signal.SIGKILL)
        while running():
            time.sleep(poll_s)


# ---------------------------------------------------------------- logs and state


def tail_lines(path: Path, lines: int) -> list[str] | None:
    """The last lines of a log, None when it cannot be read."""
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return None


def format_tail(path: Path, text: list[str]) -> str:
    return f"--- last lines of {path}:\n" + "\n".join(text)


def log_tail(path: Path, lines: int, missing: str) -> str:
    """The last lines of a log under a header naming it, for an error message; `missing` when unreadable."""
    text = tail_lines(path, lines)
    return missing if text is None else format_tail(path, text)


def write_json(path: Path, obj: Any, **dumps_kwargs: Any) -> None:
    """Write obj as JSON plus a newline, atomically (a reader never sees half a file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, **dumps_kwargs) + "\n")
    tmp.replace(path)


# ---------------------------------------------------------------- command line


def main(prog: str, doc: str, *, up: Callable[[Path, argparse.Namespace], None], down: Callable[[Path, float], None],
         up_help: str, down_help: str, up_timeout_s: float, waits_for: str, down_timeout_s: float,
         add_up_args: Callable[[argparse.ArgumentParser], None] | None = None) -> int:  # fmt: skip
    """`PROG up DIR [...] [--timeout S]` and `PROG down DIR [--timeout S]`; exit status 0, or 1 after logging.

    up(DIR, args) and down(DIR, timeout_s) get DIR made absolute; the script's first docstring paragraph is
    the description. ServiceError, a command's timeout and OSError become "PROG: error: ..." and status 1."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help=up_help)
    p_up.add_argument("dir", type=Path)
    if add_up_args is not None:
        add_up_args(p_up)
    p_up.add_argument("--timeout", type=float, default=up_timeout_s,
                      help=f"seconds to wait for {waits_for} (default {up_timeout_s:g})")  # fmt: skip
    p_down = sub.add_parser("down", help=down_help)
    p_down.add_argument("dir", type=Path)
    p_down.add_argument("--timeout", type=float, default=down_timeout_s,
                        help=f"seconds before SIGKILL (default {down_timeout_s:g})")  # fmt: skip
    args = parser.parse_args()

    root = args.dir.absolute()
    try:
        if args.cmd == "up":
            up(root, args)
        else:
            down(root, args.timeout)
    except (ServiceError, subprocess.TimeoutExpired, OSError) as e:
        logger(prog)(f"error: {e}")
        return 1
    return 0
