"""stop_process: a child is terminated, killed when it ignores SIGTERM, and always reaped."""

import signal
import subprocess
import sys

from zsagent.processes import stop_process


def test_a_running_child_is_terminated_and_reaped():
    child = subprocess.Popen(["sleep", "60"])
    stop_process(child)
    assert child.returncode == -signal.SIGTERM


def test_a_child_that_ignores_sigterm_is_killed():
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
            "time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert child.stdout.readline() == b"ready\n"
    stop_process(child, timeout_s=0.2)
    child.stdout.close()
    assert child.returncode == -signal.SIGKILL


def test_an_exited_child_is_left_as_it_is():
    child = subprocess.Popen(["true"])
    child.wait()
    stop_process(child)
    assert child.returncode == 0
