"""Cutting an SFTP upload's connection on purpose: the sshd process serving it, or a TCP proxy that
resets the connection after a given number of bytes."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
from pathlib import Path


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:["):-1])
    return inodes


def _tcp_connections() -> list[tuple[int, int, str]]:
    """(local port, remote port, socket inode) of every TCP socket in this network namespace."""
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                rows.append((int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16),
                             fields[9]))
    return rows


def sshd_processes_serving(ssh_pid: int, server_port: int) -> list[int]:
    """The sshd processes on this host that hold the server end of ssh_pid's TCP connection."""
    mine = _socket_inodes(ssh_pid)
    table = _tcp_connections()
    client_ports = {lp for lp, rp, inode in table if inode in mine and rp == server_port}
    server_inodes = {inode for lp, rp, inode in table if lp == server_port and rp in client_ports}
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == ssh_pid:
            continue
        try:
            if _socket_inodes(int(entry)) & server_inodes:
                found.append(int(entry))
        except OSError:
            continue
    return found


def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a middlebox or a crashed peer does."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class CuttingProxy:
    """A TCP proxy on 127.0.0.1 in front of ``upstream_port``.

    The ``cut_connection``-th connection (0-based) is reset, both ways, once ``cut_after_bytes`` bytes went
    from the client to the server; the ``refuse`` connections after it are reset at once (a server still
    down); every other connection passes untouched. ``cuts``: connections reset so far; ``connections``:
    accepted so far.
    """

    def __init__(self, upstream_port: int, cut_after_bytes: int, cut_connection: int = 0, refuse: int = 0) -> None:
        self.upstream_port = upstream_port
        self.cut_after_bytes = cut_after_bytes
        self.cut_connection = cut_connection
        self.refuse = refuse
        self.cuts = 0
        self.connections = 0
        self.cut_done = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> CuttingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        _reset(self._listener)

    def known_hosts(self, original: str | os.PathLike, directory: Path) -> str:
        """A known_hosts file naming the proxy's port with the keys ``original`` holds for the server."""
        lines = []
        for line in Path(original).read_text().splitlines():
            names, _, key = line.partition(" ")
            if names:
                lines.append(f"[127.0.0.1]:{self.port} {key}")
        path = directory / f"known_hosts-proxy-{self.port}"
        path.write_text("\n".join(lines) + "\n")
        return str(path)

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            number = self.connections
            self.connections += 1
            if self.cut_connection < number <= self.cut_connection + self.refuse:
                self.cuts += 1
                _reset(client)
                continue
            limit = self.cut_after_bytes if number == self.cut_connection else None
            threading.Thread(target=self._serve, args=(client, limit), daemon=True).start()

    def _serve(self, client: socket.socket, limit: int | None) -> None:
        try:
            server = socket.create_connection(("127.0.0.1", self.upstream_port))
        except OSError:
            _reset(client)
            return
        done = threading.Event()

        def pump(src: socket.socket, dst: socket.socket, budget: int | None) -> None:
            sent = 0
            try:
                while True:
                    chunk = src.recv(65536 if budget is None else max(1, min(65536, budget - sent)))
                    if not chunk:
                        break
                    dst.sendall(chunk)
                    sent += len(chunk)
                    if budget is not None and sent >= budget:
                        self.cuts += 1
                        self.cut_done.set()
                        break
            except OSError:
                pass
            finally:
                if not done.is_set():
                    done.set()
                    _reset(src)
                    _reset(dst)

        threading.Thread(target=pump, args=(server, client, None), daemon=True).start()
        pump(client, server, limit)
