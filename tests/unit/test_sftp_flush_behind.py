"""FlushBehind without a server: when it connects, and that stopping never waits for a login that hangs."""

import time

from zsagent.sftp.flush_behind import FlushBehind
from zsagent.sftp.settings import SftpSettings

MiB = 1024 * 1024


def settings_with_ssh(tmp_path, script: str) -> SftpSettings:
    ssh = tmp_path / "ssh"
    ssh.write_text(f"#!/bin/sh\n{script}\n")
    ssh.chmod(0o755)
    return SftpSettings(hostname="bs.example", private_key="/k", known_hosts="/kh", ssh_binary=str(ssh),
                        connect_timeout_s=30)


def test_no_session_before_the_first_step(tmp_path):
    flush = FlushBehind(settings_with_ssh(tmp_path, "exit 1"), "/bs/t.part", step_bytes=4 * MiB)
    flush.sent(4 * MiB - 1)
    assert flush._thread is None
    flush.stop()


def test_stop_does_not_wait_for_a_hanging_login(tmp_path):
    flush = FlushBehind(settings_with_ssh(tmp_path, "exec sleep 60"), "/bs/t.part", step_bytes=MiB)
    flush.sent(MiB)
    time.sleep(0.2)  # ssh runs and never answers
    started = time.monotonic()
    flush.stop()
    assert time.monotonic() - started < 5
    assert not flush._thread.is_alive()
    assert flush.flushes == 0
