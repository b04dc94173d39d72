"""diff_iterate: the exact extents real Ceph (Pacific 16.2.15, default features) reports, pinned.

What the numbers below say about the real cluster:

- whole_object=False reports, per 4 MiB object, the byte range [0, object size) of every object that
  exists, where the object size is the end of the furthest write into it (zeros written count as data;
  truncation by a tail discard or a shrink lowers it). Extents are never merged across objects.
- whole_object=True (fast-diff) reports whole objects, clipped to the image end and the asked range.
- From a snapshot: byte-precise changed ranges per object (the OSD's clone overlap); an object removed
  since the snapshot, or the cut-off part of a truncated one, is reported with exists=False.
- Discards below the 64 KiB discard granularity do nothing; larger ones are shrunk to 64 KiB
  boundaries; a discard reaching the end of an object truncates it, one covering it removes it.
- Clones with include_parent=True report the parent's extents where the child object does not exist,
  clipped to the parent overlap; an existing but empty child object (a whole-object discard in a
  clone) also falls back to the parent's extents with whole_object=False, though it reads as zeros.
- A zero-length whole_object diff_iterate aborts the process (ceph_assert); the fake raises LibrbdAbort.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest
from rbd_contract import ContractBackend, KiB, MiB, all_diffs, diff, raises, shared_parent

T, F = True, False


# ---------------------------------------------------------------- plain images


def test_fresh_image_has_no_extents(backend: ContractBackend) -> None:
    image = backend.open(backend.create(20 * MiB + 5))
    assert all_diffs(image) == {(wo, ip): [] for wo in (F, T) for ip in (T, F)}


def test_writes_are_reported_per_object(backend: ContractBackend) -> None:
    image = backend.open(backend.create(20 * MiB + 5))
    image.write(b"x" * 100, 1 * MiB)
    image.write(b"\0" * 4096, 4 * MiB + 100)  # zeros are data too
    image.write(b"z" * 10, 8 * MiB - 5)  # straddles objects 1 and 2
    image.write(b"y" * 5, 20 * MiB)  # the 5-byte last object
    expected = [(0, MiB + 100, T), (4 * MiB, 4 * MiB, T), (8 * MiB, 5, T), (20 * MiB, 5, T)]
    expected_whole = [(0, 4 * MiB, T), (4 * MiB, 4 * MiB, T), (8 * MiB, 4 * MiB, T), (20 * MiB, 5, T)]
    for include_parent in (T, F):
        assert diff(image, include_parent=include_parent) == expected
        assert diff(image, whole_object=T, include_parent=include_parent) == expected_whole
    # a sub-range is clipped, in both modes
    assert diff(image, offset=MiB + 50, length=10) == [(MiB + 50, 10, T)]
    assert diff(image, offset=MiB + 50, length=10, whole_object=T) == [(MiB + 50, 10, T)]
    assert diff(image, offset=5 * MiB, length=5 * MiB, whole_object=T) == [(5 * MiB, 3 * MiB, T), (8 * MiB, 2 * MiB, T)]
    # a range running past the end is clipped; one starting at the end is an error
    assert diff(image, offset=20 * MiB, length=MiB) == [(20 * MiB, 5, T)]
    with raises(backend.rbd.InvalidArgument, 22):
        diff(image, offset=20 * MiB + 5, length=1)
    assert diff(image, offset=0, length=0) == []
    assert diff(image, offset=30 * MiB, length=0) == []


def test_a_small_zero_write_reports_its_end(backend: ContractBackend) -> None:
    image = backend.open(backend.create(12 * MiB))
    image.write(b"\0" * 4096, 100)
    assert diff(image) == [(0, 4196, T)]
    assert diff(image, whole_object=T) == [(0, 4 * MiB, T)]


def test_discards(backend: ContractBackend) -> None:
    size = 16 * MiB + 5
    image = backend.open(backend.create(size))
    image.write(b"a" * size, 0)
    full = [(0, 4 * MiB, T), (4 * MiB, 4 * MiB, T), (8 * MiB, 4 * MiB, T), (12 * MiB, 4 * MiB, T), (16 * MiB, 5, T)]
    image.discard(MiB, 100)  # below the granularity: nothing
    image.discard(2 * MiB + 1, 128 * KiB)  # zeroes 64 KiB inside object 0: its size stays
    image.discard(12 * MiB, 4 * MiB - 1)  # not quite the whole object: zeroed, size stays
    image.discard(16 * MiB, 5)  # the partial last object: below the granularity
    assert diff(image) == full
    assert diff(image, whole_object=T) == full
    image.discard(7 * MiB, MiB)  # the tail of object 1: truncated to 3 MiB
    image.discard(8 * MiB, 4 * MiB)  # all of object 2: removed
    assert diff(image) == [(0, 4 * MiB, T), (4 * MiB, 3 * MiB, T), (12 * MiB, 4 * MiB, T), (16 * MiB, 5, T)]
    assert diff(image, whole_object=T) == [(0, 4 * MiB, T), (4 * MiB, 4 * MiB, T), (12 * MiB, 4 * MiB, T),
                                           (16 * MiB, 5, T)]  # fmt: skip
    image.discard(0, size)  # whole objects go; 64 KiB of the last one is zeroed
    assert diff(image) == [(16 * MiB, 5, T)]
    assert diff(image, whole_object=T) == [(16 * MiB, 5, T)]


def test_zeroing_through_the_end_of_an_object_truncates_it(backend: ContractBackend) -> None:
    image = backend.open(backend.create(12 * MiB))
    image.write(b"n" * 100, 0)
    image.discard(64 * KiB, 64 * KiB)  # wholly past the object's end: nothing
    assert diff(image) == [(0, 100, T)]
    image.discard(0, 64 * KiB)  # covers all the data: the object stays, empty
    assert diff(image) == []
    assert diff(image, whole_object=T) == [(0, 4 * MiB, T)]
    image.write(b"n" * (200 * KiB), 4 * MiB)
    image.discard(4 * MiB + 128 * KiB, 128 * KiB)  # straddles the end: truncated at its start
    assert diff(image) == [(4 * MiB, 128 * KiB, T)]
    image.discard(4 * MiB + 2 * MiB, 2 * MiB)  # a tail discard extends it (truncate)
    assert diff(image) == [(4 * MiB, 2 * MiB, T)]
    image.discard(8 * MiB + 2 * MiB, 2 * MiB)  # on a missing object: nothing
    assert diff(image, whole_object=T) == [(0, 4 * MiB, T), (4 * MiB, 4 * MiB, T)]


def test_resize(backend: ContractBackend) -> None:
    image = backend.open(backend.create(12 * MiB))
    image.write(b"b" * 100, 4 * MiB)
    image.write(b"c" * 100, 9 * MiB)
    image.resize(6 * MiB)  # object 2 removed, object 1 truncated at 2 MiB (extending it)
    assert diff(image) == [(4 * MiB, 2 * MiB, T)]
    assert diff(image, whole_object=T) == [(4 * MiB, 2 * MiB, T)]
    image.resize(4 * MiB + 50)
    assert diff(image) == [(4 * MiB, 50, T)]
    image.resize(16 * MiB)
    assert diff(image) == [(4 * MiB, 50, T)]
    assert diff(image, whole_object=T) == [(4 * MiB, 4 * MiB, T)]


# ---------------------------------------------------------------- snapshots


@pytest.fixture
def snapped(backend: ContractBackend):
    """An image with snapshots s1 and s2 and changes after each."""
    name = backend.create(12 * MiB + 5)
    image = backend.open(name)
    image.write(b"1" * 100, 0)
    image.write(b"1" * 100, 4 * MiB)
    image.create_snap("s1")
    image.write(b"2" * 10, 50)  # inside existing data
    image.write(b"2" * 10, 8 * MiB + 1)  # a new object
    image.discard(4 * MiB, 4 * MiB)  # an object removed
    image.write(b"2" * 5, 12 * MiB)
    image.create_snap("s2")
    image.write(b"3" * 10, 100)  # grows object 0 from 100 to 110 bytes
    image.write(b"3" * 10, 8 * MiB + 20)  # grows object 2 from 11 to 30 bytes
    return backend, name, image


def test_diff_from_a_snapshot(snapped) -> None:
    backend, name, image = snapped
    removed = (4 * MiB, 100, F)
    assert diff(image, "s2") == [(100, 10, T), (8 * MiB + 11, 19, T)]
    assert diff(image, "s2", whole_object=T) == [(0, 4 * MiB, T), (8 * MiB, 4 * MiB, T)]
    assert diff(image, "s1") == [(50, 10, T), (100, 10, T), removed, (8 * MiB, 30, T), (12 * MiB, 5, T)]
    assert diff(image, "s1", whole_object=T) == [(0, 4 * MiB, T), (4 * MiB, 4 * MiB, F), (8 * MiB, 4 * MiB, T),
                                                 (12 * MiB, 5, T)]  # fmt: skip
    assert diff(image) == [(0, 110, T), (8 * MiB, 30, T), (12 * MiB, 5, T)]  # the removed object: not at all
    with backend.open(name, snapshot="s2") as s2:
        assert diff(s2, "s1") == [(50, 10, T), removed, (8 * MiB, 11, T), (12 * MiB, 5, T)]
        assert diff(s2) == [(0, 100, T), (8 * MiB, 11, T), (12 * MiB, 5, T)]
        assert diff(s2, "s2") == []
    with backend.open(name, snapshot="s1") as s1:
        assert diff(s1) == [(0, 100, T), (4 * MiB, 100, T)]
        assert diff(s1, whole_object=T) == [(0, 4 * MiB, T), (4 * MiB, 4 * MiB, T)]
        with raises(backend.rbd.InvalidArgument, 22):  # from a newer snapshot
            diff(s1, "s2")
    with raises(backend.rbd.ImageNotFound, 2):
        diff(image, "nope")


def test_diff_from_a_snapshot_after_truncation_and_removal(snapped) -> None:
    backend, name, image = snapped
    image.discard(8 * MiB + 64 * KiB, 4 * MiB - 64 * KiB)  # object 2 truncated to 64 KiB (it had 30 bytes)
    image.resize(5 * MiB)
    assert diff(image, "s2") == [(100, 10, T)]
    assert diff(image, "s2", whole_object=T) == [(0, 4 * MiB, T)]
    image.remove_snap("s2")
    assert diff(image, "s1") == [(50, 10, T), (100, 10, T), (4 * MiB, 100, F)]
    assert diff(image, "s1", whole_object=T) == [(0, 4 * MiB, T), (4 * MiB, MiB, F)]


def test_without_fast_diff_whole_object_comes_from_the_objects(backend: ContractBackend) -> None:
    image = backend.open(backend.create(12 * MiB, features=1))  # layering only: no object map
    image.write(b"n" * 10, 100)
    image.discard(4 * MiB + 64 * KiB, 64 * KiB)  # no object there: nothing
    image.discard(8 * MiB + 2 * MiB, 2 * MiB)  # no object there: not created either
    assert diff(image) == [(0, 110, T)]
    assert diff(image, whole_object=T) == [(0, 4 * MiB, T)]
    image.create_snap("s")
    image.write(b"n", 5)
    assert diff(image, "s") == [(5, 1, T)]
    image.discard(0, 4 * MiB)
    assert diff(image, "s") == [(0, 110, F)]
    assert diff(image, "s", whole_object=T) == [(0, 4 * MiB, F)]
    assert diff(image) == [] and diff(image, whole_object=T) == []


# ---------------------------------------------------------------- clones

PARENT_DATA = [(0, 100, T), (4 * MiB, 4 * MiB, T), (8 * MiB, 1005, T), (12 * MiB, 5, T)]
PARENT_WHOLE = [(0, 4 * MiB, T), (4 * MiB, 4 * MiB, T), (8 * MiB, 4 * MiB, T), (12 * MiB, 5, T)]


@pytest.fixture
def parent(backend: ContractBackend):
    """The shared clone parent (rbd_contract.make_parent): objects 0-3 with data, snapshot "s" protected."""
    name = shared_parent(backend)
    return backend, name, backend.open(name)


def test_clone_reports_parent_data(parent) -> None:
    backend, name, image = parent
    image.write(b"Q" * 10, 2 * MiB)  # the parent's head: not the clone's business
    child = backend.open(backend.clone(name, "s"))
    assert diff(child) == PARENT_DATA
    assert diff(child, whole_object=T) == PARENT_WHOLE
    assert diff(child, include_parent=F) == []
    assert diff(child, whole_object=T, include_parent=F) == []
    assert diff(child, offset=MiB, length=8 * MiB) == [(4 * MiB, 4 * MiB, T), (8 * MiB, 1005, T)]


def test_clone_copy_up(parent) -> None:
    backend, name, _ = parent
    child = backend.open(backend.clone(name, "s"))
    child.write(b"C" * 10, 4 * MiB + 100)  # copies up the whole parent object
    child.write(b"C" * 10, 8 * MiB + 100)  # copies up [0, 1005)
    child.write(b"\0" * 5, 12 * MiB)
    assert diff(child) == PARENT_DATA
    assert diff(child, include_parent=F) == [(4 * MiB, 4 * MiB, T), (8 * MiB, 1005, T), (12 * MiB, 5, T)]
    assert diff(child, whole_object=T, include_parent=F) == [(4 * MiB, 4 * MiB, T), (8 * MiB, 4 * MiB, T),
                                                             (12 * MiB, 5, T)]  # fmt: skip


def test_clone_copy_up_skips_all_zero_parent_data(backend: ContractBackend) -> None:
    name = backend.create(8 * MiB)
    image = backend.open(name)
    image.write(b"\0" * (4 * MiB), 0)  # data, but zeros
    image.create_snap("s")
    image.protect_snap("s")
    child = backend.open(backend.clone(name, "s"))
    assert diff(child) == [(0, 4 * MiB, T)]
    child.write(b"c" * 10, 1000)
    assert diff(child, include_parent=F) == [(0, 1010, T)]


def test_clone_discards(parent) -> None:
    backend, name, _ = parent
    child = backend.open(backend.clone(name, "s"))
    child.discard(0, 4 * MiB)  # hides the parent with an empty object ...
    assert child.read(0, 100) == bytes(100)
    assert diff(child) == PARENT_DATA  # ... which diff_iterate does not see: the parent shows through
    assert diff(child, include_parent=F) == []
    assert diff(child, whole_object=T, include_parent=F) == [(0, 4 * MiB, T)]
    child.discard(8 * MiB + 3 * MiB, MiB)  # copy-up, then truncation (extending to 3 MiB)
    assert diff(child, include_parent=F) == [(8 * MiB, 3 * MiB, T)]
    child.discard(4 * MiB + 64 * KiB, 64 * KiB)  # copy-up, then zeroing inside
    assert diff(child, include_parent=F) == [(4 * MiB, 4 * MiB, T), (8 * MiB, 3 * MiB, T)]


def test_clone_shrink_and_grow(parent) -> None:
    backend, name, _ = parent
    child = backend.open(backend.clone(name, "s"))
    child.resize(5 * MiB)  # the boundary object is copied up and truncated
    assert diff(child) == [(0, 100, T), (4 * MiB, MiB, T)]
    assert diff(child, include_parent=F) == [(4 * MiB, MiB, T)]
    child.resize(13 * MiB)  # the parent overlap stays at 5 MiB
    assert diff(child) == [(0, 100, T), (4 * MiB, MiB, T)]
    assert diff(child, whole_object=T) == [(0, 4 * MiB, T), (4 * MiB, 4 * MiB, T)]


def test_clone_snapshots_and_clone_of_clone(parent) -> None:
    backend, name, _ = parent
    child_name = backend.clone(name, "s")
    child = backend.open(child_name)
    child.create_snap("cs1")
    child.write(b"C" * 10, 4 * MiB + 10)  # copy-up: the snapshot keeps seeing the parent data
    child.write(b"C" * 10, 200)  # copy-up of 100 bytes, then the write: 210 bytes
    assert diff(child, "cs1") == [(100, 110, T), (4 * MiB + 10, 10, T)]
    assert diff(child, "cs1", whole_object=T) == [(0, 4 * MiB, T), (4 * MiB, 4 * MiB, T)]
    assert diff(child, "cs1", include_parent=F) == diff(child, "cs1")  # never the parent from a snapshot
    with backend.open(child_name, snapshot="cs1") as cs1:
        # the copied-up objects now belong to the snapshot as well
        assert diff(cs1, include_parent=F) == [(0, 100, T), (4 * MiB, 4 * MiB, T)]
        assert diff(cs1, whole_object=T, include_parent=F) == [(0, 4 * MiB, T), (4 * MiB, 4 * MiB, T)]
        assert diff(cs1) == PARENT_DATA
    child.protect_snap("cs1")
    grandchild = backend.open(backend.clone(child_name, "cs1"))
    assert diff(grandchild) == PARENT_DATA
    assert diff(grandchild, include_parent=F) == []
    grandchild.write(b"G", 8 * MiB + 50)
    # the copy-up reads through the child to the grandparent, which comes back flat: a whole object
    assert diff(grandchild, include_parent=F) == [(8 * MiB, 4 * MiB, T)]


def test_flattened_clone(parent) -> None:
    backend, name, _ = parent
    child = backend.open(backend.clone(name, "s"))
    child.discard(0, 4 * MiB)
    child.flatten()  # the empty object 0 stays empty; the others are copied
    assert diff(child) == [(4 * MiB, 4 * MiB, T), (8 * MiB, 1005, T), (12 * MiB, 5, T)]
    assert diff(child, whole_object=T) == PARENT_WHOLE


# ---------------------------------------------------------------- callbacks and the abort


def test_callback_exceptions_and_errors_stop_the_iteration(backend: ContractBackend) -> None:
    image = backend.open(backend.create(12 * MiB))
    for offset in (0, 4 * MiB, 8 * MiB):
        image.write(b"x", offset)
    seen = []

    def stop_at_second(offset, length, exists):
        seen.append(offset)
        if len(seen) == 2:
            raise KeyError("stop")
        return 0

    with pytest.raises(KeyError):
        image.diff_iterate(0, image.size(), None, stop_at_second)
    assert seen == [0, 4 * MiB]
    with raises(backend.rbd.InvalidArgument, 22):  # a negative return is an error number
        image.diff_iterate(0, image.size(), None, lambda o, n, e: -22)


_ABORT_SCRIPT = textwrap.dedent(
    """
    import sys
    from zsagent.ceph import CephConfig, open_backend
    backend = open_backend(CephConfig(backend="rados", conf=sys.argv[1], keyring=sys.argv[2] or None))
    cluster = backend.connect()
    with cluster.open_ioctx(sys.argv[3]) as ioctx, backend.rbd.Image(ioctx, sys.argv[4]) as image:
        print("calling", flush=True)
        image.diff_iterate(int(sys.argv[5]), 0, None, lambda *a: 0, whole_object=True)
    print("returned", flush=True)
    """
)


@pytest.mark.parametrize("offset", [0, 4 * MiB])
def test_zero_length_whole_object_diff_aborts(backend: ContractBackend, offset: int) -> None:
    name = backend.create(4 * MiB)
    if backend.kind == "fake":
        image = backend.open(name)
        with pytest.raises(backend.rbd.LibrbdAbort):
            image.diff_iterate(offset, 0, None, lambda *a: 0, whole_object=True)
        assert diff(image, offset=offset, length=0) == []  # without whole_object: nothing
        return
    config = backend.ceph.config
    proc = subprocess.run(
        [sys.executable, "-c", _ABORT_SCRIPT, config.conf, config.keyring or "", backend.pool, name, str(offset)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "calling" in proc.stdout and "returned" not in proc.stdout
    assert proc.returncode == -signal.SIGABRT, proc.stderr[-2000:]
