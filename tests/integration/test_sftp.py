"""SFTP backup storage against a real OpenSSH sshd: templates checked with md5sum and stat over ssh,
host key and login refusals, cleanup after failures, rate limit, remote md5 verification."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from sftp_faults import sshd_processes_serving
from support import md5sum_file

from zsagent.copy.errors import AllSinksFailed
from zsagent.copy.pipeline import PipelineConfig, run_copy
from zsagent.sftp import (
    AuthenticationFailed,
    ConnectionLost,
    HostKeyChanged,
    HostKeyUnknown,
    IdleTimeout,
    Md5Mismatch,
    RemoteFileExists,
    SftpClient,
    SftpSettings,
    SshConnectError,
)
from zsagent.sftp.errors import RemoteFailure
from zsagent.sftp.remote_exec import StandbyCommands, run_remote
from zsagent.sinks.sftp import SftpRawSink, SftpTarget
from zsagent.sources.raw_file import RawFileSource

pytestmark = pytest.mark.sftp

KiB, MiB = 1024, 1024 * 1024
SMALL = PipelineConfig(chunk_bytes=256 * KiB, depth=4)


# ---------------------------------------------------------------- independent checks over ssh


def rsh(server, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ARGV on the server with the test's own ssh command line (not ours)."""
    proc = subprocess.run(server.ssh_argv(shlex.join(argv)), capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} on the server exited {proc.returncode}: {proc.stderr}")
    return proc


def remote_md5(server, path: str) -> str:
    return rsh(server, "md5sum", "--", path).stdout.split()[0]


def remote_exists(server, path: str) -> bool:
    return rsh(server, "test", "-e", path, check=False).returncode == 0


def remote_size_and_allocated(server, path: str) -> tuple[int, int]:
    size, blocks, unit = rsh(server, "stat", "-c", "%s %b %B", "--", path).stdout.split()
    return int(size), int(blocks) * int(unit)


def remote_tree(server, directory: str) -> list[str]:
    """Everything under DIRECTORY (itself excluded), as paths relative to it."""
    out = rsh(server, "find", directory, "-mindepth", "1").stdout
    return sorted(os.path.relpath(line, directory) for line in out.splitlines())


@pytest.fixture
def remote_dir(sshd_server):
    """A new empty directory on the server, removed with everything in it afterwards."""
    path = rsh(sshd_server, "mktemp", "-d", "/tmp/zsagent-sftp-test.XXXXXXXX").stdout.strip()
    yield path
    rsh(sshd_server, "rm", "-rf", "--", path, check=False)


@pytest.fixture
def settings(sshd_server) -> SftpSettings:
    return SftpSettings(hostname=sshd_server.host, port=sshd_server.port, username=sshd_server.user,
                        private_key=sshd_server.key, known_hosts=sshd_server.known_hosts,
                        connect_timeout_s=10, idle_timeout_s=30)  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- templates


def make_sparse_volume(path, size: int) -> list[tuple[int, int]]:
    """A sparse raw file: random data in a few places, one range of written zeros; returns the data ranges."""
    data_ranges = [(0, 300 * KiB), (5 * MiB + 777, 1 * MiB), (size - 70_000, 70_000)]
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, length in data_ranges:
            f.seek(offset)
            f.write(os.urandom(length))
        f.seek(9 * MiB)
        f.write(bytes(MiB))  # allocated, but zeros: the pipeline finds it zero and it must stay a hole
    return data_ranges


@pytest.mark.parametrize("connections,verify", [(1, False), (2, True)])
def test_raw_template_is_sparse_and_its_md5_matches_md5sum_over_ssh(
        tmp_path, sshd_server, settings, remote_dir, connections, verify):
    size = 24 * MiB + 12345
    src = tmp_path / "vol.raw"
    data_ranges = make_sparse_volume(src, size)
    dst = f"{remote_dir}/dataVolumeTemplates/acct/t.raw"
    sink = SftpRawSink(dataclasses.replace(settings, connections=connections, verify_md5=verify), dst)

    source = RawFileSource(src)
    try:
        result = run_copy(source, [sink], SMALL)
    finally:
        source.close()

    assert result.md5 == remote_md5(sshd_server, dst) == md5sum_file(src)
    remote_size, allocated = remote_size_and_allocated(sshd_server, dst)
    assert remote_size == size
    data_bytes = sum(length for _, length in data_ranges)
    assert allocated <= data_bytes + 8 * 64 * KiB  # holes stay holes (a little rounding per range)
    assert result.published[0].install_path == dst
    assert result.published[0].actual_size == allocated
    assert remote_tree(sshd_server, remote_dir) == ["dataVolumeTemplates", "dataVolumeTemplates/acct",
                                                    "dataVolumeTemplates/acct/t.raw"]


def test_empty_raw_template(tmp_path, sshd_server, settings, remote_dir):
    src = tmp_path / "empty.raw"
    src.write_bytes(b"")
    dst = f"{remote_dir}/t.raw"
    source = RawFileSource(src)
    result = run_copy(source, [SftpRawSink(settings, dst)], SMALL)
    source.close()
    assert result.md5 == remote_md5(sshd_server, dst) == hashlib.md5(b"").hexdigest()
    assert remote_size_and_allocated(sshd_server, dst)[0] == 0


def test_stream_target_upload_md5_matches_md5sum_over_ssh(sshd_server, settings, remote_dir):
    data = os.urandom(3 * MiB + 4321)
    dst = f"{remote_dir}/images/t.qcow2"
    target = SftpTarget(settings, dst)
    target.open()
    pos = 0
    for size in (1, 511, 64 * KiB, 261120, 261121, 1 * MiB + 3, len(data)):  # odd pieces, in order
        target.write(data[pos:pos + size])
        pos = min(pos + size, len(data))
    path, actual = target.commit()

    assert path == dst
    assert remote_md5(sshd_server, dst) == hashlib.md5(data).hexdigest()
    size, allocated = remote_size_and_allocated(sshd_server, dst)
    assert size == len(data)
    assert actual == allocated
    assert not remote_exists(sshd_server, dst + ".part")


def test_stream_target_buffer_may_be_reused_after_write(sshd_server, settings, remote_dir):
    dst = f"{remote_dir}/t.bin"
    target = SftpTarget(settings, dst)
    target.open()
    buf = bytearray(MiB)
    expected = hashlib.md5()
    for fill in range(1, 5):
        buf[:] = bytes([fill]) * MiB
        expected.update(buf)
        target.write(buf)
    target.commit()
    assert remote_md5(sshd_server, dst) == expected.hexdigest()


def test_verified_raw_and_qcow2_uploads_hash_each_byte_once(tmp_path, sshd_server, settings, remote_dir, monkeypatch):
    """With verify_md5 the server's md5sum is compared with the MD5 the copy already has: the agent hashes
    the volume (raw) or the image file (qcow2) once, never a second time for the check."""
    from zsagent.copy import pipeline
    from zsagent.sinks import qcow2_stream
    from zsagent.sinks.qcow2_stream import Qcow2StreamSink

    hashed = []

    def counting_md5(real):
        def make(*args, **kwargs):
            hasher = real(*args, **kwargs)
            update, update_zeros = hasher.update, hasher.update_zeros
            hasher = type("Counted", (), {"hexdigest": hasher.hexdigest, "copy": getattr(hasher, "copy", None),
                                          "update": lambda self, b: (hashed.append(len(memoryview(b).cast("B"))),
                                                                     update(b))[1],
                                          "update_zeros": lambda self, n: (hashed.append(n), update_zeros(n))[1]})()
            return hasher
        return make

    monkeypatch.setattr(pipeline, "new_md5", counting_md5(pipeline.new_md5))
    monkeypatch.setattr(qcow2_stream, "new_md5", counting_md5(qcow2_stream.new_md5))
    src = tmp_path / "vol.raw"
    make_sparse_volume(src, 12 * MiB)
    verified = dataclasses.replace(settings, verify_md5=True)
    source = RawFileSource(src)
    try:
        raw = run_copy(source, [SftpRawSink(verified, f"{remote_dir}/t.raw")], SMALL)
        assert sum(hashed) == 12 * MiB and raw.md5 == remote_md5(sshd_server, f"{remote_dir}/t.raw")
        hashed.clear()
        qcow2 = run_copy(source, [Qcow2StreamSink(SftpTarget(verified, f"{remote_dir}/t.qcow2"))], SMALL,
                         hash_content=False)
    finally:
        source.close()
    image_size = remote_size_and_allocated(sshd_server, f"{remote_dir}/t.qcow2")[0]
    assert sum(hashed) == image_size and qcow2.published[0].md5 == remote_md5(sshd_server, f"{remote_dir}/t.qcow2")


# ---------------------------------------------------------------- host keys and logins


def test_unknown_host_key_is_refused(tmp_path, sshd_server, settings, remote_dir):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    target = SftpTarget(dataclasses.replace(settings, known_hosts=str(empty)), f"{remote_dir}/d/t.bin")
    with pytest.raises(HostKeyUnknown) as err:
        target.open()
    message = str(err.value)
    assert f"{sshd_server.host}:{sshd_server.port}" in message
    assert "not in" in message and str(empty) in message and "ssh-keyscan" in message
    assert empty.read_text() == ""  # nothing was added
    assert remote_tree(sshd_server, remote_dir) == []


def other_host_key_line(tmp_path, sshd_server) -> str:
    key = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    kind, blob = (key.with_suffix(".pub")).read_text().split()[:2]
    return f"[{sshd_server.host}]:{sshd_server.port} {kind} {blob}\n"


@pytest.mark.parametrize("accept_new", [False, True])
def test_changed_host_key_is_refused(tmp_path, sshd_server, settings, remote_dir, accept_new):
    wrong = tmp_path / "known_hosts"
    wrong.write_text(other_host_key_line(tmp_path, sshd_server))
    before = wrong.read_text()
    changed = dataclasses.replace(settings, known_hosts=str(wrong), accept_new_host_keys=accept_new)
    with pytest.raises(HostKeyChanged, match=f"{sshd_server.host}:{sshd_server.port} has CHANGED"):
        SftpTarget(changed, f"{remote_dir}/t.bin").open()
    assert wrong.read_text() == before
    assert remote_tree(sshd_server, remote_dir) == []


def test_accept_new_host_keys_trusts_on_first_use_and_records_the_key(tmp_path, sshd_server, settings,
                                                                        remote_dir):
    fresh = tmp_path / "known_hosts"
    fresh.write_text("")
    tofu = dataclasses.replace(settings, known_hosts=str(fresh), accept_new_host_keys=True)
    target = SftpTarget(tofu, f"{remote_dir}/t.bin")
    target.open()
    target.write(b"hello")
    target.commit()
    recorded = fresh.read_text()
    assert f"[{sshd_server.host}]:{sshd_server.port} " in recorded
    server_key = Path(sshd_server.known_hosts).read_text().split()[1:3]
    assert " ".join(server_key) in recorded


def test_wrong_client_key_is_refused(tmp_path, sshd_server, settings, remote_dir):
    key = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    with pytest.raises(AuthenticationFailed) as err:
        SftpTarget(dataclasses.replace(settings, private_key=str(key)), f"{remote_dir}/t.bin").open()
    assert str(key) in str(err.value) and "refused" in str(err.value)
    assert remote_tree(sshd_server, remote_dir) == []


def test_missing_client_key_is_a_clear_error(tmp_path, settings, remote_dir):
    missing = str(tmp_path / "no-such-key")
    with pytest.raises(AuthenticationFailed, match="cannot be used.*not accessible"):
        SftpClient.connect(dataclasses.replace(settings, private_key=missing))


def test_configured_port_is_used(settings, remote_dir):
    port = free_port()
    with pytest.raises(SshConnectError, match=f"cannot connect to {settings.hostname}:{port}: .*refused"):
        SftpTarget(dataclasses.replace(settings, port=port), f"{remote_dir}/t.bin").open()


def test_configured_username_is_used(sshd_server, settings, remote_dir):
    with pytest.raises(AuthenticationFailed, match="login of 'nobody'"):
        SftpClient.connect(dataclasses.replace(settings, username="nobody"))
    # and the right ones reach the server as configured: the server's view of the connection
    out = run_remote(settings, [["printenv", "SSH_CONNECTION"], ["id", "-un"]], timeout_s=30).split("\n")
    client_ip, client_port, server_ip, server_port = out[0].split()
    assert int(server_port) == settings.port
    assert out[1] == sshd_server.user


def test_sftp_session_reports_server_extensions(settings):
    with SftpClient.connect(settings) as client:
        assert "posix-rename@openssh.com" in client.extensions
        assert "fsync@openssh.com" in client.extensions
        assert client.write_bytes == 261120  # limits@openssh.com: no more per WRITE
        assert client.realpath("/tmp/../tmp") == "/tmp"


# ---------------------------------------------------------------- failures leave nothing behind


def test_killed_ssh_mid_upload_raises_and_leaves_no_part(tmp_path, sshd_server, settings, remote_dir):
    """With resuming off (tests/integration/test_sftp_resume.py has it on): the failure is clean."""
    src = tmp_path / "vol.raw"
    src.write_bytes(os.urandom(48 * MiB))
    dst = f"{remote_dir}/new/t.raw"
    sink = SftpRawSink(dataclasses.replace(settings, resume_attempts=0), dst)
    killed = threading.Event()

    def cut(done, total):
        if done >= 4 * MiB and not killed.is_set():
            killed.set()
            for pid in sink.ssh_pids:
                os.kill(pid, signal.SIGKILL)

    source = RawFileSource(src)
    with pytest.raises(AllSinksFailed) as err:
        run_copy(source, [sink], SMALL, progress=cut)
    source.close()
    assert killed.is_set()
    assert isinstance(err.value.errors[0].__cause__, ConnectionLost)
    assert "lost: ssh was killed by signal 9" in str(err.value)
    assert f"{settings.username}@{settings.hostname}:{settings.port}" in str(err.value)
    # checked over a fresh connection: no .part, and the directory we created is gone too
    assert remote_tree(sshd_server, remote_dir) == []


def test_killed_server_session_mid_upload_raises_and_leaves_no_part(sshd_server, settings, remote_dir):
    if sshd_server.host not in ("127.0.0.1", "localhost"):
        pytest.fail("this test kills the server's session process and needs the sshd on this host")
    dst = f"{remote_dir}/t.qcow2"
    target = SftpTarget(dataclasses.replace(settings, resume_attempts=0), dst)
    target.open()
    target.write(os.urandom(2 * MiB))
    server_side = sshd_processes_serving(target.ssh_pids[0], settings.port)
    assert server_side, "the sshd session process was not found"
    for pid in server_side:
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(ConnectionLost, match=f"SFTP session with {settings.target} lost"):
        for _ in range(64):
            target.write(os.urandom(MiB))
        target.commit()
    target.abort()
    assert remote_tree(sshd_server, remote_dir) == []


def test_silent_server_hits_the_idle_timeout_and_leaves_no_part(sshd_server, settings, remote_dir):
    dst = f"{remote_dir}/sub/t.bin"
    target = SftpTarget(dataclasses.replace(settings, idle_timeout_s=1, resume_attempts=0), dst)
    target.open()
    os.kill(target.ssh_pids[0], signal.SIGSTOP)  # ssh stops reading and answering; our code kills it
    started = time.monotonic()
    with pytest.raises(IdleTimeout, match="no answer for"):
        for _ in range(32):
            target.write(bytes(MiB))
        target.commit()
    assert time.monotonic() - started >= 0.9
    target.abort()
    assert remote_tree(sshd_server, remote_dir) == []


def test_directories_are_created_and_removed_again_on_abort(sshd_server, settings, remote_dir):
    rsh(sshd_server, "mkdir", f"{remote_dir}/shared")
    target = SftpTarget(settings, f"{remote_dir}/shared/new1/new2/t.bin")
    target.open()
    assert remote_tree(sshd_server, remote_dir) == ["shared", "shared/new1", "shared/new1/new2",
                                                    "shared/new1/new2/t.bin.part"]
    target.write(b"x" * 1000)
    target.abort()
    assert remote_tree(sshd_server, remote_dir) == ["shared"]  # it existed before: kept


def test_existing_template_is_never_overwritten(tmp_path, sshd_server, settings, remote_dir):
    dst = f"{remote_dir}/t.raw"
    rsh(sshd_server, "sh", "-c", f"printf precious > {shlex.quote(dst)}")
    src = tmp_path / "vol.raw"
    src.write_bytes(b"\x01" * MiB)
    source = RawFileSource(src)
    with pytest.raises(AllSinksFailed, match="already exists"):
        run_copy(source, [SftpRawSink(settings, dst)], SMALL)
    source.close()
    assert rsh(sshd_server, "cat", dst).stdout == "precious"
    assert remote_tree(sshd_server, remote_dir) == ["t.raw"]


def test_template_appearing_during_the_upload_is_not_overwritten(sshd_server, settings, remote_dir):
    dst = f"{remote_dir}/t.bin"
    target = SftpTarget(settings, dst)
    target.open()
    target.write(os.urandom(MiB))
    rsh(sshd_server, "sh", "-c", f"printf precious > {shlex.quote(dst)}")
    with pytest.raises(RemoteFileExists, match="already exists"):
        target.commit()
    target.abort()
    assert rsh(sshd_server, "cat", dst).stdout == "precious"
    assert remote_tree(sshd_server, remote_dir) == ["t.bin"]


def test_plain_rename_refuses_to_replace_and_posix_rename_would(sshd_server, settings, remote_dir):
    """Why publishing uses SSH_FXP_RENAME (no-clobber even in a race) and not posix-rename first."""
    for name, text in (("a", "new"), ("b", "old"), ("c", "new")):
        rsh(sshd_server, "sh", "-c", f"printf {text} > {shlex.quote(f'{remote_dir}/{name}')}")
    with SftpClient.connect(settings) as client:
        with pytest.raises(RemoteFailure):
            client.rename(f"{remote_dir}/a", f"{remote_dir}/b")
        client.posix_rename(f"{remote_dir}/c", f"{remote_dir}/b")
    assert rsh(sshd_server, "cat", f"{remote_dir}/b").stdout == "new"  # posix-rename clobbered "old"
    assert remote_tree(sshd_server, remote_dir) == ["a", "b"]


def test_a_part_file_of_another_upload_is_left_alone(sshd_server, settings, remote_dir):
    dst = f"{remote_dir}/t.bin"
    rsh(sshd_server, "sh", "-c", f"printf busy > {shlex.quote(dst + '.part')}")
    target = SftpTarget(settings, dst)
    with pytest.raises(RemoteFileExists, match=r"t\.bin\.part already exists"):
        target.open()
    target.abort()
    assert rsh(sshd_server, "cat", dst + ".part").stdout == "busy"


# ---------------------------------------------------------------- rate limit and verification


def test_bandwidth_limit_is_respected(sshd_server, settings, remote_dir):
    limited = dataclasses.replace(settings, bandwidth_bytes_per_s=4 * MiB, remote_commands=False)
    data = os.urandom(2 * MiB)
    target = SftpTarget(limited, f"{remote_dir}/t.bin")
    target.open()
    started = time.monotonic()
    for offset in range(0, len(data), 100 * KiB):
        target.write(data[offset:offset + 100 * KiB])
    target.commit()
    assert time.monotonic() - started >= 0.35  # 2 MiB at 4 MiB/s, minus one burst; no upper bound here
    assert remote_md5(sshd_server, f"{remote_dir}/t.bin") == hashlib.md5(data).hexdigest()


def test_remote_md5_verification_catches_a_corrupt_upload(sshd_server, settings, remote_dir):
    dst = f"{remote_dir}/sub/t.bin"
    target = SftpTarget(dataclasses.replace(settings, verify_md5=True), dst)
    target.open()
    data = os.urandom(3 * MiB)
    target.write(data)
    for session in target._upload._sessions:  # every WRITE answered before the file is tampered with
        session.drain()
    part = shlex.quote(dst + ".part")
    rsh(sshd_server, "sh", "-c", f"printf X | dd of={part} bs=1 seek=1000 conv=notrunc status=none")
    with pytest.raises(Md5Mismatch, match="md5 of .*t.bin .* is [0-9a-f]{32}, but the bytes sent hash to"):
        target.commit(expected_md5=hashlib.md5(data).hexdigest())
    assert remote_tree(sshd_server, remote_dir) == []  # the corrupt file and its directory are gone


def test_remote_md5_verification_passes_for_a_good_upload(sshd_server, settings, remote_dir):
    dst = f"{remote_dir}/t.bin"
    data = os.urandom(MiB + 1)
    target = SftpTarget(dataclasses.replace(settings, verify_md5=True), dst)
    target.open()
    target.write(data)
    path, actual = target.commit(expected_md5=hashlib.md5(data).hexdigest())
    assert remote_md5(sshd_server, path) == hashlib.md5(data).hexdigest()


def test_remote_md5_verification_needs_the_md5_of_what_was_sent(sshd_server, settings, remote_dir):
    target = SftpTarget(dataclasses.replace(settings, verify_md5=True), f"{remote_dir}/sub/t.bin")
    target.open()
    target.write(b"x" * KiB)
    with pytest.raises(ValueError, match="verify_md5 needs the MD5"):
        target.commit()
    target.abort()
    assert remote_tree(sshd_server, remote_dir) == []


def test_sftp_only_account_reports_the_logical_size(sshd_server, settings, remote_dir):
    dst = f"{remote_dir}/t.bin"
    target = SftpTarget(dataclasses.replace(settings, remote_commands=False), dst)
    target.open()
    target.write(b"abc" * 1000)
    assert target.commit() == (dst, 3000)


# ---------------------------------------------------------------- flush-behind and the standby exec


def wait_for(condition, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_flush_behind_fsyncs_the_part_while_the_upload_runs(sshd_server, settings, remote_dir):
    dst = f"{remote_dir}/t.bin"
    data = os.urandom(6 * MiB)
    target = SftpTarget(dataclasses.replace(settings, flush_behind_bytes=MiB), dst)
    target.open()
    target.write(data[:3 * MiB])
    flush = target._upload._flush
    wait_for(lambda: flush.flushes >= 1)  # its session connects at the first step
    target.write(data[3 * MiB:])
    target.commit()
    assert remote_md5(sshd_server, dst) == hashlib.md5(data).hexdigest()
    assert not flush._thread.is_alive()


def test_abort_stops_flush_behind_and_leaves_no_part(sshd_server, settings, remote_dir):
    target = SftpTarget(dataclasses.replace(settings, flush_behind_bytes=MiB), f"{remote_dir}/sub/t.bin")
    target.open()
    target.write(os.urandom(2 * MiB))
    flush = target._upload._flush
    wait_for(lambda: flush.flushes >= 1)
    ssh_pid = flush._client.channel.pid
    target.abort()
    assert not flush._thread.is_alive()
    assert not os.path.exists(f"/proc/{ssh_pid}")  # killed and reaped
    assert remote_tree(sshd_server, remote_dir) == []


def test_no_flush_behind_below_its_step(sshd_server, settings, remote_dir):
    target = SftpTarget(settings, f"{remote_dir}/t.bin")  # default step: 64 MiB
    target.open()
    target.write(os.urandom(MiB))
    target.commit()
    assert target._upload._flush._thread is None  # no second session for a small upload


def test_standby_commands_run_only_when_told(sshd_server, settings, remote_dir):
    marker = f"{remote_dir}/ran"
    standby = StandbyCommands(settings, [["touch", "--", marker], ["echo", "done"]])
    time.sleep(0.5)  # logged in by now, waiting for the go
    assert not remote_exists(sshd_server, marker)
    assert standby.run(timeout_s=30) == "done\n"
    assert remote_exists(sshd_server, marker)

    cancelled = StandbyCommands(settings, [["touch", "--", f"{marker}2"]])
    time.sleep(0.5)
    cancelled.cancel()
    time.sleep(0.2)
    assert not remote_exists(sshd_server, f"{marker}2")


def test_standby_commands_log_in_again_when_their_ssh_is_gone(sshd_server, settings, remote_dir):
    standby = StandbyCommands(settings, [["echo", "again"]])
    standby._proc.kill()
    standby._proc.wait()
    assert standby.run(timeout_s=30) == "again\n"
