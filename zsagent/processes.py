"""Child processes the agent starts (qemu-nbd, qemu-img): stopping one without leaving it behind."""

from __future__ import annotations

import shutil
import subprocess

STOP_TIMEOUT_S = 10.0


def dies_with_agent(argv: list[str]) -> list[str]:
    """``argv`` run so that the kernel kills it when the thread that starts it (and so the agent) dies,
    even by SIGKILL: a ``--persistent`` qemu-nbd or a qemu-img convert must not outlive a crashed agent.
    util-linux' setpriv sets PR_SET_PDEATHSIG and execs ``argv`` (same pid); without it, ``argv`` as is."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else list(argv)


def stop_process(process: subprocess.Popen, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM ``process`` if it still runs, SIGKILL it when it has not exited after ``timeout_s`` seconds;
    it is reaped either way (``returncode`` is set on return)."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
