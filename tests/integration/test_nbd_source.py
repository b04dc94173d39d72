"""NbdSource against real NBD servers: qemu-nbd with a named export (block status), and a minimal server
without structured replies (so without block status), as older or simpler servers are."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time

import nbd
import pytest
from support import make_qcow2_chain, md5sum_file

from zsagent.copy.extents import Extent, Kind
from zsagent.copy.pipeline import PipelineConfig, run_copy
from zsagent.processes import stop_process
from zsagent.sinks.raw_file import RawFileSink
from zsagent.sources.nbd import NbdSource, nbd_unix_url

KiB, MiB = 1024, 1024 * 1024
SMALL = PipelineConfig(chunk_bytes=64 * KiB, depth=4)


@pytest.fixture
def socket_dir():
    path = tempfile.mkdtemp(prefix="zsagent-test-nbd-")  # short: a unix socket path has at most 107 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def qemu_nbd_export(tmp_path, socket_dir):
    """A qcow2 chain served by qemu-nbd as export "vda": (socket path, chain path)."""
    chain = make_qcow2_chain(tmp_path)
    sock = os.path.join(socket_dir, "vda.sock")
    server = subprocess.Popen(["qemu-nbd", "--read-only", "--persistent", "--shared=8", "--export-name=vda",
                               f"--socket={sock}", "--format=qcow2", str(chain)], stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(sock):
            assert server.poll() is None, "qemu-nbd exited"
            assert time.monotonic() < deadline, "qemu-nbd did not start"
            time.sleep(0.02)
        yield sock, chain
    finally:
        stop_process(server)


def test_named_export_copies_like_qemu_img_convert_and_skips_holes(tmp_path, qemu_nbd_export):
    sock, chain = qemu_nbd_export
    reference = tmp_path / "reference.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(chain), str(reference)], check=True)
    source = NbdSource(sock, "vda")
    try:
        assert source.has_block_status
        assert source.size == 24 * MiB
        assert any(e.kind is not Kind.DATA for e in source.extents())
        result = run_copy(source, [RawFileSink(tmp_path / "t.raw")], SMALL)
    finally:
        source.close()
    assert result.md5 == md5sum_file(reference) == md5sum_file(tmp_path / "t.raw")
    assert result.stats.bytes_read < 12 * MiB  # zeros and holes are not read


def test_qemu_input_names_the_export_for_qemu_img(qemu_nbd_export):
    sock, chain = qemu_nbd_export
    source = NbdSource(sock, "vda")
    try:
        assert source.qemu_input == ("raw", nbd_unix_url(sock, "vda"))
        fmt, filename = source.qemu_input
        compare = subprocess.run(["qemu-img", "compare", "-f", fmt, "-F", "qcow2", filename, str(chain)],
                                 capture_output=True, text=True)
        assert compare.returncode == 0, compare.stdout + compare.stderr
    finally:
        source.close()


def test_unknown_export_is_an_nbd_error(qemu_nbd_export):
    sock, _ = qemu_nbd_export
    with pytest.raises(nbd.Error):
        NbdSource(sock, "nosuchdisk")


def test_no_new_connection_after_close(qemu_nbd_export):
    sock, _ = qemu_nbd_export
    source = NbdSource(sock, "vda")
    source.read(0, 4096)
    source.close()
    source.close()  # idempotent
    failures = []

    def read_in_a_new_thread():
        try:
            source.read(0, 4096)
        except OSError as e:
            failures.append(e)

    thread = threading.Thread(target=read_in_a_new_thread)
    thread.start()
    thread.join()
    assert len(failures) == 1 and "closed" in str(failures[0])


def test_server_without_block_status_reads_as_all_data(tmp_path, socket_dir):
    data = os.urandom(3 * MiB + 4 * KiB)
    with SimpleNbdServer(os.path.join(socket_dir, "simple.sock"), data) as server:
        source = NbdSource(server.path)
        try:
            assert not source.has_block_status
            assert list(source.extents()) == [Extent(0, len(data), Kind.DATA)]
            result = run_copy(source, [RawFileSink(tmp_path / "t.raw")], SMALL)
        finally:
            source.close()
        assert server.connections >= 2  # the main handle and at least one reading thread
    assert (tmp_path / "t.raw").read_bytes() == data
    assert result.md5 == md5sum_file(tmp_path / "t.raw")


def test_empty_export_without_block_status_has_no_extents(socket_dir):
    with SimpleNbdServer(os.path.join(socket_dir, "empty.sock"), b"") as server:
        source = NbdSource(server.path)
        try:
            assert source.size == 0
            assert list(source.extents()) == []
        finally:
            source.close()


class SimpleNbdServer:
    """A read-only NBD server with only what a client needs without structured replies: the fixed
    newstyle handshake (NBD_OPT_GO or NBD_OPT_EXPORT_NAME; every other option is unsupported) and simple
    replies to NBD_CMD_READ and NBD_CMD_DISC. It serves ``data`` as the default export on unix socket
    ``path``; ``connections`` counts the clients that got through the handshake."""

    IHAVEOPT = 0x49484156454F5054
    OPT_REPLY_MAGIC = 0x3E889045565A9
    REQUEST_MAGIC, SIMPLE_REPLY_MAGIC = 0x25609513, 0x67446698
    FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES = 1, 2
    OPT_EXPORT_NAME, OPT_ABORT, OPT_GO = 1, 2, 7
    REP_ACK, REP_INFO, REP_ERR_UNSUP = 1, 3, 0x80000001
    TRANSMISSION_FLAGS = 1 | 2  # HAS_FLAGS | READ_ONLY
    CMD_READ, CMD_DISC = 0, 2
    EINVAL = 22

    def __init__(self, path: str, data: bytes) -> None:
        self.path = path
        self.data = data
        self.connections = 0
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen()
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> SimpleNbdServer:
        return self

    def __exit__(self, *exc_info) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                if self._handshake(conn):
                    with self._lock:
                        self.connections += 1
                    self._transmission(conn)
            except (ConnectionError, EOFError):
                pass

    def _handshake(self, conn: socket.socket) -> bool:
        conn.sendall(b"NBDMAGIC" + struct.pack(">QH", self.IHAVEOPT, self.FLAG_FIXED_NEWSTYLE | self.FLAG_NO_ZEROES))
        (client_flags,) = struct.unpack(">I", _recv(conn, 4))
        while True:
            magic, option, length = struct.unpack(">QII", _recv(conn, 16))
            assert magic == self.IHAVEOPT
            _recv(conn, length)
            if option == self.OPT_EXPORT_NAME:
                zeroes = b"" if client_flags & self.FLAG_NO_ZEROES else bytes(124)
                conn.sendall(struct.pack(">QH", len(self.data), self.TRANSMISSION_FLAGS) + zeroes)
                return True
            if option == self.OPT_GO:
                self._reply(conn, option, self.REP_INFO, struct.pack(">HQH", 0, len(self.data),
                                                                     self.TRANSMISSION_FLAGS))
                self._reply(conn, option, self.REP_ACK)
                return True
            if option == self.OPT_ABORT:
                self._reply(conn, option, self.REP_ACK)
                return False
            self._reply(conn, option, self.REP_ERR_UNSUP)  # structured replies, meta contexts, ...

    def _reply(self, conn: socket.socket, option: int, kind: int, payload: bytes = b"") -> None:
        conn.sendall(struct.pack(">QIII", self.OPT_REPLY_MAGIC, option, kind, len(payload)) + payload)

    def _transmission(self, conn: socket.socket) -> None:
        while True:
            magic, _flags, command, cookie, offset, length = struct.unpack(">IHHQQI", _recv(conn, 28))
            assert magic == self.REQUEST_MAGIC
            if command == self.CMD_DISC:
                return
            if command == self.CMD_READ and offset + length <= len(self.data):
                conn.sendall(struct.pack(">IIQ", self.SIMPLE_REPLY_MAGIC, 0, cookie)
                             + self.data[offset:offset + length])
            else:
                conn.sendall(struct.pack(">IIQ", self.SIMPLE_REPLY_MAGIC, self.EINVAL, cookie))


def _recv(conn: socket.socket, length: int) -> bytes:
    data = b""
    while len(data) < length:
        more = conn.recv(length - len(data))
        if not more:
            raise EOFError("the client went away")
        data += more
    return data
