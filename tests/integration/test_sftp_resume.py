"""SFTP uploads that lose their connection resume: against the real sshd, cut deterministically by killing
the sshd process serving our session or by a TCP proxy that resets the connection after N bytes.

Each test checks what a user would: the template's md5 equals the server's ``md5sum``, only the WRITEs
the server had not confirmed were sent again (the figure is reported), and when resuming is impossible or
given up the upload fails with a clear error and leaves nothing on the server."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import subprocess
import threading
import time

import pytest
from figures import report
from sftp_faults import CuttingProxy, sshd_processes_serving
from support import md5sum_file
from test_sftp import SMALL, MiB, remote_md5, remote_tree, rsh

from zsagent.copy.errors import AllSinksFailed, CopyCancelled
from zsagent.copy.pipeline import run_copy
from zsagent.sftp import SftpSettings
from zsagent.sinks.qcow2_stream import Qcow2StreamSink
from zsagent.sinks.sftp import SftpRawSink, SftpTarget
from zsagent.sources.raw_file import RawFileSource

pytestmark = pytest.mark.sftp

FAST_RETRY = {"resume_backoff_s": 0.2, "resume_backoff_max_s": 1.0, "resume_attempts": 3}


def window_bytes(settings, upload) -> int:
    """The unconfirmed window: what may be re-sent at most after one cut."""
    return settings.requests_in_flight * upload.write_bytes * settings.connections


@pytest.fixture
def settings(sshd_server) -> SftpSettings:
    return SftpSettings(hostname=sshd_server.host, port=sshd_server.port, username=sshd_server.user,
                        private_key=sshd_server.key, known_hosts=sshd_server.known_hosts,
                        connect_timeout_s=10, idle_timeout_s=30)  # fmt: skip


@pytest.fixture
def remote_dir(sshd_server):
    """A new empty directory on the server, removed with everything in it afterwards."""
    path = rsh(sshd_server, "mktemp", "-d", "/tmp/zsagent-sftp-test.XXXXXXXX").stdout.strip()
    yield path
    rsh(sshd_server, "rm", "-rf", "--", path, check=False)


@pytest.fixture
def volume(tmp_path):
    path = tmp_path / "vol.raw"
    path.write_bytes(os.urandom(32 * MiB))
    return path


def copy_cutting_at(source_path, sink, at_bytes: int, cut) -> object:
    """run_copy of the file into ``sink``, calling ``cut()`` once when ``at_bytes`` were hashed."""
    done_cut = threading.Event()

    def progress(done, total):
        if done >= at_bytes and not done_cut.is_set():
            done_cut.set()
            cut()

    source = RawFileSource(source_path)
    try:
        return run_copy(source, [sink], SMALL, progress=progress)
    finally:
        source.close()
        assert done_cut.is_set(), "the cut never happened"


@pytest.mark.parametrize("connections,verify", [(1, False), (2, True)])
def test_killed_sshd_session_mid_raw_upload_resumes_with_the_right_md5(volume, sshd_server, settings, remote_dir,
                                                                       connections, verify):
    if sshd_server.host not in ("127.0.0.1", "localhost"):
        pytest.fail("this test kills the server's session process and needs the sshd on this host")
    settings = dataclasses.replace(settings, connections=connections, verify_md5=verify, **FAST_RETRY)
    dst = f"{remote_dir}/new/t.raw"
    sink = SftpRawSink(settings, dst)
    killed: list[int] = []

    def kill_server_side():
        for pid in sshd_processes_serving(sink.ssh_pids[0], settings.port):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    result = copy_cutting_at(volume, sink, 16 * MiB, kill_server_side)
    assert killed, "the sshd session process was not found"
    upload = sink.upload
    assert upload.resumes == 1
    assert result.md5 == md5sum_file(volume) == remote_md5(sshd_server, dst)
    assert remote_tree(sshd_server, remote_dir) == ["new", "new/t.raw"]  # no .part left
    assert upload.bytes_sent == 32 * MiB  # every byte handed over once ...
    assert upload.bytes_resent <= window_bytes(settings, upload)  # ... and only unconfirmed ones again
    report(f"sftp resume, sshd session killed, raw, {connections} connection(s)",
           f"{upload.bytes_resent} bytes re-sent of a {window_bytes(settings, upload)}-byte window "
           f"({upload.bytes_resent / MiB:.2f} MiB, 32 MiB upload)")


def test_connection_reset_mid_qcow2_stream_resumes_and_the_image_is_right(tmp_path, volume, sshd_server, settings,
                                                                          remote_dir):
    with CuttingProxy(settings.port, cut_after_bytes=12 * MiB) as proxy:
        via_proxy = dataclasses.replace(settings, port=proxy.port, verify_md5=True,
                                        known_hosts=proxy.known_hosts(settings.known_hosts, tmp_path), **FAST_RETRY)
        dst = f"{remote_dir}/t.qcow2"
        target = SftpTarget(via_proxy, dst)
        source = RawFileSource(volume)
        try:
            result = run_copy(source, [Qcow2StreamSink(target)], SMALL)
        finally:
            source.close()
        assert proxy.cut_done.is_set()
    upload = target.upload
    assert upload.resumes == 1
    assert result.published[0].md5 == remote_md5(sshd_server, dst)
    assert remote_tree(sshd_server, remote_dir) == ["t.qcow2"]
    if sshd_server.host in ("127.0.0.1", "localhost"):  # the same file system: qemu-img reads the template
        subprocess.run(["qemu-img", "check", "-q", dst], check=True)
        subprocess.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2", str(volume), dst], check=True)
    assert upload.bytes_resent <= window_bytes(via_proxy, upload)
    report("sftp resume, TCP reset after 12 MiB, streaming qcow2",
           f"{upload.bytes_resent} bytes re-sent of a {window_bytes(via_proxy, upload)}-byte window")


def test_resume_waits_out_a_server_that_refuses_for_a_while(tmp_path, volume, sshd_server, settings, remote_dir):
    with CuttingProxy(settings.port, cut_after_bytes=8 * MiB, refuse=2) as proxy:
        via_proxy = dataclasses.replace(settings, port=proxy.port, remote_commands=False,
                                        known_hosts=proxy.known_hosts(settings.known_hosts, tmp_path), **FAST_RETRY)
        dst = f"{remote_dir}/t.raw"
        sink = SftpRawSink(via_proxy, dst)
        source = RawFileSource(volume)
        try:
            result = run_copy(source, [sink], SMALL)
        finally:
            source.close()
        assert proxy.cuts == 3  # the cut, then two refused reconnections
    assert sink.upload.resumes == 1
    assert result.md5 == remote_md5(sshd_server, dst)


def test_upload_gives_up_after_the_configured_attempts_and_leaves_nothing(tmp_path, volume, sshd_server, settings,
                                                                          remote_dir):
    attempts = FAST_RETRY["resume_attempts"]
    with CuttingProxy(settings.port, cut_after_bytes=8 * MiB, refuse=attempts) as proxy:
        via_proxy = dataclasses.replace(settings, port=proxy.port, remote_commands=False,
                                        known_hosts=proxy.known_hosts(settings.known_hosts, tmp_path), **FAST_RETRY)
        sink = SftpRawSink(via_proxy, f"{remote_dir}/sub/t.raw")
        source = RawFileSource(volume)
        with pytest.raises(AllSinksFailed, match=f"{attempts} reconnections failed"):
            run_copy(source, [sink], SMALL)
        source.close()
        assert proxy.cuts == 1 + attempts
    # the cleanup's own connection came through: no .part and no directory left behind
    assert remote_tree(sshd_server, remote_dir) == []


def test_a_part_file_shorter_than_confirmed_is_not_resumed(volume, sshd_server, settings, remote_dir):
    """A server that lost confirmed data (here: the .part truncated while we were away) must not get a
    template with a hole where data was: the upload fails and removes the .part."""
    if sshd_server.host not in ("127.0.0.1", "localhost"):
        pytest.fail("this test kills the server's session process and needs the sshd on this host")
    settings = dataclasses.replace(settings, **{**FAST_RETRY, "resume_backoff_s": 1.0})
    dst = f"{remote_dir}/t.raw"
    sink = SftpRawSink(settings, dst)

    def kill_and_truncate():
        for pid in sshd_processes_serving(sink.ssh_pids[0], settings.port):
            os.kill(pid, signal.SIGKILL)
        rsh(sshd_server, "truncate", "-s", "0", "--", f"{dst}.part")  # before the first reconnection (1 s)

    with pytest.raises(AllSinksFailed, match="fewer than the .* the server had confirmed"):
        copy_cutting_at(volume, sink, 16 * MiB, kill_and_truncate)
    assert remote_tree(sshd_server, remote_dir) == []


def test_cancel_while_waiting_to_reconnect_stops_at_once(tmp_path, volume, sshd_server, settings, remote_dir):
    with CuttingProxy(settings.port, cut_after_bytes=8 * MiB, refuse=1000) as proxy:
        slow = {"resume_attempts": 5, "resume_backoff_s": 30.0, "resume_backoff_max_s": 30.0}
        via_proxy = dataclasses.replace(settings, port=proxy.port, remote_commands=False,
                                        known_hosts=proxy.known_hosts(settings.known_hosts, tmp_path), **slow)
        sink = SftpRawSink(via_proxy, f"{remote_dir}/t.raw")
        cancel = threading.Event()
        cancelled_at: list[float] = []

        def cancel_after_the_cut():
            assert proxy.cut_done.wait(60)
            time.sleep(0.5)  # the upload is now waiting 30 s for its first reconnection
            proxy.refuse = proxy.connections - proxy.cut_connection - 1  # the cleanup may connect
            cancelled_at.append(time.monotonic())
            cancel.set()

        threading.Thread(target=cancel_after_the_cut, daemon=True).start()
        source = RawFileSource(volume)
        with pytest.raises(CopyCancelled):
            run_copy(source, [sink], SMALL, cancel=cancel)
        stopped_s = time.monotonic() - cancelled_at[0]
        source.close()
    assert stopped_s < 5  # not the 30 s backoff: generous for a loaded 2-core host
    assert remote_tree(sshd_server, remote_dir) == []
    report("sftp cancel during reconnection backoff", f"stopped and cleaned {stopped_s:.2f} s after the cancel")


def test_cut_between_the_last_write_and_the_commit_resumes(sshd_server, settings, remote_dir):
    """The commit's drain, fsync and rename go on over a new session; the file is whole."""
    if sshd_server.host not in ("127.0.0.1", "localhost"):
        pytest.fail("this test kills the server's session process and needs the sshd on this host")
    settings = dataclasses.replace(settings, verify_md5=True, **FAST_RETRY)
    dst = f"{remote_dir}/t.bin"
    target = SftpTarget(settings, dst)
    target.open()
    data = os.urandom(8 * MiB)
    target.write(data)
    for pid in sshd_processes_serving(target.ssh_pids[0], settings.port):
        os.kill(pid, signal.SIGKILL)
    path, _ = target.commit(expected_md5=hashlib.md5(data).hexdigest())
    assert path == dst
    assert target.upload.resumes == 1
    assert remote_md5(sshd_server, dst) == hashlib.md5(data).hexdigest()
    assert remote_tree(sshd_server, remote_dir) == ["t.bin"]
