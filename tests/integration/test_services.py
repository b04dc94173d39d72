"""The session's services do what the other integration tests count on, and their failures show."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

MIB = 1024 * 1024


def export_md5(cluster, spec: str) -> str:
    """md5 of `rbd export SPEC -`, computed by piping it into md5sum."""
    argv = ["rbd", "export", "--no-progress", spec, "-"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cluster.cli_env()) as rbd:
        md5sum = subprocess.run(["md5sum"], stdin=rbd.stdout, capture_output=True, timeout=300, check=True)
        rbd.stdout.close()
        err = rbd.stderr.read().decode(errors="replace")
        assert rbd.wait(timeout=60) == 0, f"rbd export {spec} failed: {err}"
    return md5sum.stdout.split()[0].decode()


@pytest.fixture
def written_image(ceph_cluster, ceph_pool):
    """An 8 MiB image holding two known extents in snapshot "s1", and different bytes at its head."""
    import rbd

    name = ceph_cluster.unique_pool_name("img")
    size = 8 * MIB
    snap = bytearray(size)
    extents = {0: os.urandom(MIB), 5 * MIB + 512: os.urandom(MIB // 2)}
    with ceph_cluster.connect() as conn, conn.open_ioctx(ceph_pool) as ioctx:
        rbd.RBD().create(ioctx, name, size)
        with rbd.Image(ioctx, name) as image:
            for offset, data in extents.items():
                assert image.write(data, offset) == len(data)
                snap[offset : offset + len(data)] = data
            image.create_snap("s1")
            head = bytearray(snap)
            head[:4096] = b"\xa5" * 4096
            image.write(bytes(head[:4096]), 0)
    return f"{ceph_pool}/{name}", bytes(snap), bytes(head)


@pytest.mark.ceph
def test_rbd_snapshot_export_matches_written_bytes(ceph_cluster, written_image):
    spec, snap, head = written_image
    assert export_md5(ceph_cluster, f"{spec}@s1") == hashlib.md5(snap).hexdigest()
    assert export_md5(ceph_cluster, spec) == hashlib.md5(head).hexdigest()
    assert hashlib.md5(snap).digest() != hashlib.md5(head).digest()


@pytest.mark.ceph
def test_rbd_cli_errors_surface(ceph_cluster, written_image):
    spec, _, _ = written_image
    with pytest.raises(subprocess.CalledProcessError) as err:
        ceph_cluster.rbd_cli("info", f"{spec}@no-such-snap")
    assert err.value.returncode != 0
    assert "No such file or directory" in str(err.value)


@pytest.mark.ceph
def test_export_import_between_pools(ceph_cluster, ceph_pool_pair, written_image):
    src_spec, snap, _ = written_image
    _, dst_pool = ceph_pool_pair
    dst_spec = f"{dst_pool}/{ceph_cluster.unique_pool_name('copy')}"
    exported = ceph_cluster.rbd_cli("export", "--no-progress", f"{src_spec}@s1", "-")
    assert exported == snap
    ceph_cluster.rbd_cli("import", "--no-progress", "-", dst_spec, input=exported)
    assert export_md5(ceph_cluster, dst_spec) == hashlib.md5(snap).hexdigest()
    listed = ceph_cluster.rbd_cli("ls", dst_pool).decode().split()
    assert dst_spec.split("/")[1] in listed


@pytest.mark.sftp
def test_sftp_upload_then_ssh_md5sum(sshd_server, tmp_path: Path):
    data = os.urandom(256 * 1024 + 7)
    local = tmp_path / "local.bin"
    local.write_bytes(data)
    remote = tmp_path / "remote" / "uploaded.bin"
    remote.parent.mkdir()
    batch = f'put "{local}" "{remote}"\n'.encode()
    subprocess.run(sshd_server.sftp_argv("-"), input=batch, capture_output=True, timeout=60, check=True)

    out = subprocess.run(sshd_server.ssh_argv("md5sum", str(remote)), capture_output=True, timeout=60,
                         stdin=subprocess.DEVNULL, check=True)  # fmt: skip
    assert out.stdout.split()[0].decode() == hashlib.md5(data).hexdigest()


@pytest.mark.sftp
def test_ssh_failures_surface(sshd_server, tmp_path: Path):
    # A remote command's exit status comes back.
    proc = subprocess.run(sshd_server.ssh_argv("exit", "3"), capture_output=True, timeout=60,
                          stdin=subprocess.DEVNULL, check=False)  # fmt: skip
    assert proc.returncode == 3
    # An unknown host key is refused (StrictHostKeyChecking=yes): the known_hosts file matters.
    empty = tmp_path / "empty_known_hosts"
    empty.touch()
    argv = [a.replace(sshd_server.known_hosts, str(empty)) for a in sshd_server.ssh_argv("true")]
    proc = subprocess.run(argv, capture_output=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 255
    assert b"Host key verification failed" in proc.stderr
