"""SftpChannel/SftpClient against a scripted SFTP server process (run in place of ssh): replies out of
order, refused WRITEs, silence, garbage, a wrong version, an early exit. The real sshd is in
tests/integration/test_sftp.py; these are the server behaviours it cannot be made to show."""

import sys
import textwrap

import pytest

from zsagent.sftp import protocol as p
from zsagent.sftp.client import SftpClient
from zsagent.sftp.errors import (
    ConnectionLost,
    IdleTimeout,
    RemoteFailure,
    RemoteNoSuchFile,
    SftpProtocolError,
    SshConnectError,
)
from zsagent.sftp.settings import SftpSettings

FAKE_SERVER = textwrap.dedent('''
    import os, select, struct, sys
    mode = sys.argv[1]
    if mode == "exit":
        sys.stderr.write("boom: cannot start\\n")
        sys.exit(3)

    def read_exact(n):
        data = b""
        while len(data) < n:
            chunk = os.read(0, n - len(data))
            if not chunk:
                sys.exit(0)
            data += chunk
        return data

    def send(kind, body):
        os.write(1, struct.pack(">IB", len(body) + 1, kind) + body)

    def s(text):
        raw = text.encode() if isinstance(text, str) else text
        return struct.pack(">I", len(raw)) + raw

    def status(rid, code, msg=""):
        return (101, rid + struct.pack(">I", code) + s(msg) + s("en"))

    read_exact(struct.unpack(">I", read_exact(4))[0])  # INIT
    send(2, struct.pack(">I", 2 if mode == "v2" else 3) + s("fsync@openssh.com") + s("1"))
    held = []
    while True:
        if held and not select.select([0], [], [], 0.05)[0]:
            for reply in reversed(held):
                send(*reply)
            held = []
        body = read_exact(struct.unpack(">I", read_exact(4))[0])
        kind, rid = body[0], body[1:5]
        if mode == "silent":
            continue
        if mode == "garbage":
            os.write(1, b"\\xff" * 16)
            continue
        if kind == 6:  # WRITE: refuse everything from 1 MiB on; answer in reverse order, 3 at a time
            hlen = struct.unpack(">I", body[5:9])[0]
            offset = struct.unpack(">Q", body[9 + hlen:17 + hlen])[0]
            held.append(status(rid, 4, "No space left on device") if offset >= 1 << 20 else status(rid, 0))
            if len(held) == 3:
                for reply in reversed(held):
                    send(*reply)
                held = []
            continue
        for reply in reversed(held):
            send(*reply)
        held = []
        if kind == 3:  # OPEN
            send(102, rid + s("h1"))
        elif kind == 17:  # STAT
            send(105, rid + struct.pack(">IQ", 1, 42))
        elif kind == 13:  # REMOVE
            send(*status(rid, 2, "No such file"))
        else:
            send(*status(rid, 0))
''')


@pytest.fixture
def fake(tmp_path):
    script = tmp_path / "fake_sftp_server.py"
    script.write_text(FAKE_SERVER)

    def connect(mode="ok", **kw):
        settings = SftpSettings(hostname="fake.example", port=2222, private_key="/k", known_hosts="/kh",
                                request_bytes=64 * 1024, requests_in_flight=8, **kw)
        client = SftpClient(settings, argv=[sys.executable, str(script), mode])
        client.start()
        return client

    return connect


def test_out_of_order_replies_are_matched_to_their_requests(fake):
    with fake() as client:
        handle = client.open("/f", p.FXF_WRITE | p.FXF_CREAT)
        assert handle == b"h1"
        client.write(handle, 0, b"x" * (1 << 20), "/f")  # 16 WRITEs, window of 8, answered 3 by 3 backwards
        client.drain()
        assert client.channel.bytes_acked == 1 << 20
        assert client.stat("/f").size == 42
        assert client.fsync(handle, "/f") is True


def test_a_refused_write_surfaces_with_its_offset_and_the_servers_message(fake):
    with fake() as client:
        handle = client.open("/f", p.FXF_WRITE)
        client.write(handle, (1 << 20) - 64 * 1024, b"y" * (128 * 1024), "/f")
        with pytest.raises(RemoteFailure, match=r"WRITE /f \(offset 1048576, 65536 bytes\).*No space left"):
            client.drain()
        with pytest.raises(RemoteFailure):  # and every later write is refused too
            client.write(handle, 0, b"z", "/f")


def test_status_errors_name_operation_path_and_server(fake):
    with fake() as client, pytest.raises(RemoteNoSuchFile, match="SFTP REMOVE /gone on root@fake.example:2222"):
        client.remove("/gone")


def test_a_silent_server_hits_the_idle_timeout(fake):
    client = fake("silent", idle_timeout_s=0.3)
    with pytest.raises(IdleTimeout, match="no answer for"):
        client.stat("/f")
    assert not client.channel.alive
    client.close()


def test_garbage_is_a_protocol_error_and_ends_the_session(fake):
    client = fake("garbage")
    with pytest.raises(SftpProtocolError, match="malformed"):
        client.stat("/f")
    with pytest.raises(ConnectionLost):
        client.stat("/f")
    client.close()


def test_another_protocol_version_is_refused(fake):
    with pytest.raises(SshConnectError, match="speaks SFTP version 2"):
        fake("v2")


def test_an_early_exit_reports_the_status_and_stderr(fake):
    with pytest.raises(SshConnectError, match=r"failed \(exit status 3\): boom: cannot start"):
        fake("exit")


def test_missing_ssh_binary(tmp_path):
    settings = SftpSettings(hostname="h", private_key="/k", known_hosts="/kh",
                            ssh_binary=str(tmp_path / "no-ssh"))
    with pytest.raises(SshConnectError, match="cannot run"):
        SftpClient.connect(settings)


def test_kept_writes_the_server_never_answered_are_handed_back_once_in_offset_order(fake):
    client = fake("silent", idle_timeout_s=0.3)
    for i in (2, 0, 3, 1):
        client.channel.write(b"h1", i * 1000, bytes([i]) * 1000, "/f", keep=True)
    client.channel.write(b"h1", 9000, b"n" * 10, "/f")  # not kept: the caller cannot resend it
    with pytest.raises(IdleTimeout):
        client.drain()
    assert [(offset, bytes(data)) for offset, data in client.channel.lost_writes()] == [
        (i * 1000, bytes([i]) * 1000) for i in range(4)]
    assert client.channel.lost_writes() == []
    client.close()


def test_confirmed_writes_are_not_kept_and_acked_end_is_the_highest_confirmed_offset(fake):
    with fake() as client:
        handle = client.open("/f", p.FXF_WRITE)
        for start in range(0, 1 << 20, 64 * 1024):
            client.channel.write(handle, start, b"x" * (64 * 1024), "/f", keep=True)
        client.drain()
        assert client.channel.acked_end == 1 << 20
    assert client.channel.lost_writes() == []
