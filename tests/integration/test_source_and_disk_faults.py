"""Faults under a running copy, through the HTTP API: the file backup storage's disk fills up, the source
volume is deleted, resized or written, its RBD snapshot removed. Each gets ZStack's SYS.1006 with a
cause that says what happened, and nothing is left behind (no template, no .part, no snapshot, no
journal entry) — or, where the point in time still holds (an RBD volume resized after its snapshot),
the template is right."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import uuid
from pathlib import Path

import pytest
from agent_harness import file_volume, running_agent, write_config
from support import unavailable

MiB = 1024 * 1024


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


_LOCK = threading.Lock()


def once_at_first_read(monkeypatch, source_class, action, done: threading.Event | None = None) -> threading.Event:
    """Run ``action()`` once (``done`` shared between classes), from the copy's first read or readinto of
    ``source_class`` (the copy is under way)."""
    done = done or threading.Event()

    def fire():
        with _LOCK:
            if not done.is_set():
                action()
                done.set()

    original_read = source_class.read

    def read(self, offset, length):
        fire()
        return original_read(self, offset, length)

    monkeypatch.setattr(source_class, "read", read)
    if hasattr(source_class, "readinto"):
        original_readinto = source_class.readinto

        def readinto(self, offset, buffer):
            fire()
            return original_readinto(self, offset, buffer)

        monkeypatch.setattr(source_class, "readinto", readinto)
    return done


# ---------------------------------------------------------------- a full file backup storage


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (root needed; CI runs as root), unmounted afterwards."""
    if os.geteuid() != 0:
        unavailable("a small tmpfs for the disk-full test needs root")
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        unavailable(f"cannot mount a tmpfs: {proc.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture
def file_agent(fake_rbd_env, tmp_path, small_disk):
    """An agent with a file primary storage and two file backup storages on the 4 MiB disk."""
    ps_root = tmp_path / "ps"
    ps_root.mkdir()
    raw_bs, qcow2_bs = uuid.uuid4().hex, uuid.uuid4().hex
    config = write_config(tmp_path, fake_rbd_env.ceph_config,
                          [{"uuid": uuid.uuid4().hex, "type": "filesystem", "path": str(ps_root)}],
                          [{"uuid": raw_bs, "type": "filesystem", "path": str(small_disk / "raw"), "format": "raw"},
                           {"uuid": qcow2_bs, "type": "filesystem", "path": str(small_disk / "qcow2"),
                            "format": "qcow2"}])
    (small_disk / "raw").mkdir()
    (small_disk / "qcow2").mkdir()
    with running_agent(config) as agent:
        agent.ps_root, agent.bs = ps_root, {"raw": raw_bs, "qcow2": qcow2_bs}
        yield agent


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_a_full_file_backup_storage_is_sys_1006_and_leaves_no_file(file_agent, small_disk, fmt):
    vol, path = file_volume(file_agent.ps_root, size=16 * MiB)
    with open(path, "r+b") as f:  # 12 MiB of data: three times what the disk holds
        f.seek(2 * MiB)
        f.write(os.urandom(12 * MiB))
    answer = file_agent.post_create(vol, {"backupStorageUuids": [file_agent.bs[fmt]]})
    assert answer.status_code == 503
    error = answer.json()["error"]
    assert error["code"] == "SYS.1006"
    assert "No space left on device" in error["cause"]["details"]
    assert str(small_disk / fmt) in error["cause"]["details"]  # which storage is full
    assert files_under(small_disk) == []  # no .part, no template
    assert file_agent.agent.store.artifacts() == []
    assert file_agent.get("/zstack/v1/images").json()["inventories"] == []
    # the room is back: a volume that fits goes through
    small_vol, _ = file_volume(file_agent.ps_root, size=2 * MiB)
    assert file_agent.post_create(small_vol, {"backupStorageUuids": [file_agent.bs[fmt]]}).status_code == 200


# ---------------------------------------------------------------- file volumes that change under the copy


@pytest.fixture
def file_copy_agent(fake_rbd_env, tmp_path):
    ps_root, bs_root = tmp_path / "ps", tmp_path / "bs"
    ps_root.mkdir()
    bs_root.mkdir()
    bs = uuid.uuid4().hex
    config = write_config(tmp_path, fake_rbd_env.ceph_config,
                          [{"uuid": uuid.uuid4().hex, "type": "filesystem", "path": str(ps_root)}],
                          [{"uuid": bs, "type": "filesystem", "path": str(bs_root), "format": "qcow2"}])
    with running_agent(config) as agent:
        agent.ps_root, agent.bs_root, agent.bs = ps_root, bs_root, bs
        yield agent


def _delete(path):
    path.unlink()


def _grow(path):
    os.truncate(path, path.stat().st_size + MiB)


def _shrink(path):
    os.truncate(path, path.stat().st_size // 2)


def _write(path):
    """A write (of the bytes already there, so that only the act of writing can tell)."""
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        same = f.read(4096)
        f.seek(path.stat().st_size // 2)
        f.write(same)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
@pytest.mark.parametrize("change,says", [(_delete, "deleted"), (_grow, "resized"), (_shrink, "resized|short read"),
                                         (_write, "written")])
def test_a_file_volume_changed_during_the_copy_is_sys_1006_and_leaves_nothing(file_copy_agent, monkeypatch, fmt,
                                                                             change, says):
    from zsagent.sources.qcow2_file import Qcow2FileSource
    from zsagent.sources.qemu_nbd import QemuNbdSource
    from zsagent.sources.raw_file import RawFileSource

    agent = file_copy_agent
    vol, path = file_volume(agent.ps_root, size=8 * MiB)
    if fmt == "qcow2":
        qcow2 = path.with_suffix(".qcow2")
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(path), str(qcow2)], check=True)
        path.unlink()
        path = qcow2
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # a write mid-copy surely moves the time on
    fired = threading.Event()
    for source_class in [RawFileSource] if fmt == "raw" else [Qcow2FileSource, QemuNbdSource]:
        fired = once_at_first_read(monkeypatch, source_class, lambda: change(path), fired)
    answer = agent.post_create(vol, {"backupStorageUuids": [agent.bs]})
    assert fired.is_set()
    assert answer.status_code in (404, 503), answer.text
    error = answer.json()["error"]
    assert error["code"] == "SYS.1006", error
    assert re.search(says, error["cause"]["details"]), error
    assert files_under(agent.bs_root) == []
    assert agent.agent.store.artifacts() == []
    assert agent.get("/zstack/v1/images").json()["inventories"] == []


# ---------------------------------------------------------------- RBD volumes under the copy (real Ceph)


@pytest.fixture
def ceph_agent(real_rbd_env, tmp_path):
    env = real_rbd_env
    bs_root = tmp_path / "bs"
    bs_root.mkdir()
    ceph_bs, file_bs = uuid.uuid4().hex, uuid.uuid4().hex
    config = write_config(tmp_path, env.ceph_config,
                          [{"uuid": uuid.uuid4().hex, "type": "ceph", "pools": [env.src_pool]}],
                          [{"uuid": ceph_bs, "type": "ceph", "pool": env.dst_pool, "default": True},
                           {"uuid": file_bs, "type": "filesystem", "path": str(bs_root), "format": "raw"}])
    with running_agent(config) as agent:
        agent.env, agent.ceph_bs, agent.file_bs, agent.bs_root = env, ceph_bs, file_bs, bs_root
        yield agent


def rbd_volume(env, size=16 * MiB) -> str:
    vol = uuid.uuid4().hex
    env.rbd.RBD().create(env.src, vol, size, old_format=False)
    with env.rbd.Image(env.src, vol) as image:
        for offset in range(0, size, 4 * MiB):
            image.write(os.urandom(MiB), offset)
    return vol


def assert_nothing_left(agent, vol, image_uuids_before):
    env = agent.env
    assert sorted(env.rbd.RBD().list(env.dst)) == image_uuids_before  # no template, no .part
    if vol in env.rbd.RBD().list(env.src):
        with env.rbd.Image(env.src, vol) as image:
            assert [s["name"] for s in image.list_snaps()] == []
    assert files_under(agent.bs_root) == []
    assert agent.agent.store.artifacts() == []


def _remove_snapshots(env, vol):
    with env.rbd.Image(env.src, vol) as image:
        for snap in list(image.list_snaps()):
            if image.is_protected_snap(snap["name"]):
                image.unprotect_snap(snap["name"])
            image.remove_snap(snap["name"])


@pytest.mark.ceph
@pytest.mark.parametrize("what", ["snapshot removed", "volume deleted"])
def test_rbd_volume_or_snapshot_removed_during_the_copy_is_sys_1006_and_leaves_nothing(ceph_agent, monkeypatch,
                                                                                       what):
    from zsagent.sources.rbd_snapshot import RbdSnapshotSource

    env = ceph_agent.env
    vol = rbd_volume(env)
    before = sorted(env.rbd.RBD().list(env.dst))

    def remove():
        _remove_snapshots(env, vol)
        if what == "volume deleted":
            env.rbd.RBD().remove(env.src, vol)

    fired = once_at_first_read(monkeypatch, RbdSnapshotSource, remove)
    answer = ceph_agent.post_create(vol, {"backupStorageUuids": [ceph_agent.ceph_bs, ceph_agent.file_bs]})
    assert fired.is_set()
    assert answer.status_code == 503, answer.text
    error = answer.json()["error"]
    assert error["code"] == "SYS.1006"
    details = error["cause"]["details"]
    # librbd goes on reading a removed snapshot (until the OSDs trim it): the check after the last read
    # is what catches it
    assert ("was removed during the copy" if what == "snapshot removed" else "was deleted during the copy") \
        in details, details
    assert_nothing_left(ceph_agent, vol, before)


@pytest.mark.ceph
def test_rbd_volume_resized_during_the_copy_gives_the_snapshot_as_it_was(ceph_agent, monkeypatch):
    """The snapshot is the point in time: growing the volume after it changes nothing in the template."""
    from zsagent.sources.rbd_snapshot import RbdSnapshotSource

    env = ceph_agent.env
    vol = rbd_volume(env)
    md5_before = env.export_md5(env.src_pool, vol)

    def grow():
        with env.rbd.Image(env.src, vol) as image:
            image.resize(32 * MiB)
            image.write(b"\xff" * MiB, 20 * MiB)

    fired = once_at_first_read(monkeypatch, RbdSnapshotSource, grow)
    answer = ceph_agent.post_create(vol, {"backupStorageUuids": [ceph_agent.file_bs]})
    assert fired.is_set()
    assert answer.status_code == 200, answer.text
    inventory = answer.json()["inventory"]
    assert inventory["size"] == 16 * MiB
    assert inventory["md5Sum"] == md5_before
    template = inventory["backupStorageRefs"][0]["installPath"]
    assert subprocess.run(["md5sum", template], capture_output=True, text=True, check=True).stdout.split()[0] \
        == md5_before
    with env.rbd.Image(env.src, vol) as image:
        assert [s["name"] for s in image.list_snaps()] == []
