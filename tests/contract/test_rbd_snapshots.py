"""Snapshots: immutable points in time, read-only handles, protection and removal rules."""

from __future__ import annotations

from rbd_contract import ContractBackend, KiB, MiB, raises, shared_snapshotted


def test_snapshot_is_immutable(backend: ContractBackend) -> None:
    size = 12 * MiB + 5
    name = backend.create(size)
    image = backend.open(name)
    image.write(b"1" * 100, 0)
    image.write(b"1" * 100, 4 * MiB)
    image.write(b"1" * 5, 12 * MiB)
    image.create_snap("s1")
    before = image.read(0, size)
    image.write(b"2" * 10, 50)  # inside written data
    image.write(b"2" * 10, 8 * MiB + 1)  # a new object
    image.discard(4 * MiB, 4 * MiB)  # a whole object goes
    image.write(b"\0" * 5, 12 * MiB)  # zeros over data
    image.resize(5 * MiB)  # the tail goes
    with backend.open(name, snapshot="s1") as snap:
        assert snap.size() == size
        assert snap.read(0, size) == before
    assert image.read(0, 100) == b"1" * 50 + b"2" * 10 + b"1" * 40
    assert image.size() == 5 * MiB


def test_list_snaps(backend: ContractBackend) -> None:
    name = shared_snapshotted(backend)
    image = backend.open(name, read_only=True)
    snaps = list(image.list_snaps())
    assert [(s["name"], s["size"], s["namespace"]) for s in snaps] == [("a", MiB, 0), ("b", 2 * MiB, 0)]
    assert set(snaps[0]) == {"id", "size", "name", "namespace"}
    assert isinstance(snaps[0]["id"], int) and snaps[0]["id"] < snaps[1]["id"]
    with backend.open(name, snapshot="a") as at_a:  # all snapshots, whatever the handle is open at
        assert [s["name"] for s in at_a.list_snaps()] == ["a", "b"]
        assert at_a.size() == MiB
        assert at_a.read(0, 5) == b"head1"
    with backend.open(name, snapshot="b") as at_b:  # "b" was taken through the handle open at "a"
        assert at_b.size() == 2 * MiB
        assert at_b.read(0, 5) == b"head2"
    assert list(backend.open(backend.create(MiB)).list_snaps()) == []


def test_snapshot_handles_are_read_only(backend: ContractBackend) -> None:
    rbd = backend.rbd
    snap = backend.open(shared_snapshotted(backend), snapshot="a")
    with raises(rbd.ReadOnlyImage, 30):
        snap.write(b"x", 0)
    with raises(rbd.ReadOnlyImage, 30):
        snap.discard(0, 64 * KiB)
    with raises(rbd.ReadOnlyImage, 30):
        snap.resize(1)
    snap.flush()


def test_snapshot_errors(backend: ContractBackend) -> None:
    rbd = backend.rbd
    name = shared_snapshotted(backend)
    image = backend.open(name)
    with raises(rbd.ImageExists, 17):
        image.create_snap("a")
    with raises(rbd.ImageNotFound, 2):
        rbd.Image(backend.ioctx, name, snapshot="nope")
    with raises(rbd.ImageNotFound, 2):
        image.remove_snap("nope")
    with raises(rbd.ImageNotFound, 2):
        image.protect_snap("nope")
    with raises(rbd.ImageNotFound, 2):
        image.unprotect_snap("nope")
    with raises(rbd.ImageNotFound, 2):
        image.is_protected_snap("nope")


def test_protection_rules(backend: ContractBackend) -> None:
    rbd = backend.rbd
    image = backend.open(shared_snapshotted(backend))
    assert image.is_protected_snap("a") is False
    with raises(rbd.InvalidArgument, 22):
        image.unprotect_snap("a")
    image.protect_snap("a")
    try:
        assert image.is_protected_snap("a") is True
        with raises(rbd.ImageBusy, 16):
            image.protect_snap("a")
        with raises(rbd.ImageBusy, 16):
            image.remove_snap("a")
    finally:
        image.unprotect_snap("a")
    assert image.is_protected_snap("a") is False


def test_removing_one_snapshot_keeps_the_others(backend: ContractBackend) -> None:
    name = backend.create(8 * MiB)
    image = backend.open(name)
    image.write(b"a" * 10, 0)
    image.create_snap("a")
    image.write(b"b" * 10, 5)
    image.create_snap("b")
    image.discard(0, 4 * MiB)
    image.remove_snap("a")
    assert [s["name"] for s in image.list_snaps()] == ["b"]
    with backend.open(name, snapshot="b") as b:
        assert b.read(0, 20) == b"a" * 5 + b"b" * 10 + bytes(5)
    assert image.read(0, 20) == bytes(20)
    image.remove_snap("b")
    image.close()
    backend.rbd.RBD().remove(backend.ioctx, name)
