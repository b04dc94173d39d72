"""Child processes the agent starts (qemu-nbd, qemu-img): stopping one without leaving it behind."""

from __future__ import annotations

import subprocess

STOP_TIMEOUT_S = 10.0


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
