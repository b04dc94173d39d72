"""Clones (format 1): protected parents, read-through, copy-up, clone of clone, children, flatten."""

from __future__ import annotations

from rbd_contract import PARENT_SIZE, ContractBackend, KiB, MiB, make_parent, raises, shared_parent


def _parent(backend: ContractBackend) -> tuple[str, object]:
    """An own parent (see make_parent) and an open handle on its head."""
    name = make_parent(backend)
    return name, backend.open(name)


def _shared(backend: ContractBackend) -> tuple[str, object]:
    name = shared_parent(backend)
    return name, backend.open(name)


def test_clone_needs_a_protected_snapshot(backend: ContractBackend) -> None:
    rbd = backend.rbd
    name = backend.create(MiB)
    image = backend.open(name)
    image.create_snap("s")
    with raises(rbd.InvalidArgument, 22):  # clone format 1
        backend.clone(name, "s")
    with raises(rbd.ImageNotFound, 2):
        backend.clone(name, "nope")
    with raises(rbd.ImageNotFound, 2):
        backend.clone(backend.name("missing"), "s")
    image.protect_snap("s")
    child = backend.clone(name, "s")
    with raises(rbd.ImageExists, 17):
        backend.clone(name, "s", name=child)


def test_clone_reads_through_to_the_parent_snapshot(backend: ContractBackend) -> None:
    parent_name, parent = _shared(backend)
    with backend.open(parent_name, snapshot="s") as snap:
        expected = snap.read(0, PARENT_SIZE)
    parent.write(b"Q" * 10, 0)  # later parent writes stay invisible to the clone
    child = backend.open(backend.clone(parent_name, "s"))
    assert child.size() == PARENT_SIZE
    assert child.features() == 61
    assert child.overlap() == PARENT_SIZE
    assert child.read(0, PARENT_SIZE) == expected
    assert child.read(0, 4) == b"PPPP"


def test_copy_up_keeps_the_parent_intact(backend: ContractBackend) -> None:
    parent_name, parent = _shared(backend)
    child = backend.open(backend.clone(parent_name, "s"))
    child.write(b"C" * 10, 4 * MiB + 100)  # object with parent data: copied up, then written
    child.write(b"C" * 10, 8 * MiB + 100)  # parent data elsewhere in the object
    assert child.read(4 * MiB + 98, 14) == b"PPCCCCCCCCCCPP"
    assert child.read(8 * MiB + 98, 14) == bytes(2) + b"C" * 10 + bytes(2)
    assert child.read(8 * MiB + 1000, 5) == b"P" * 5
    assert parent.read(4 * MiB + 98, 14) == b"P" * 14
    with backend.open(parent_name, snapshot="s") as snap:
        assert snap.read(8 * MiB + 98, 14) == bytes(14)


def test_discard_in_a_clone_hides_the_parent(backend: ContractBackend) -> None:
    parent_name, _ = _shared(backend)
    child = backend.open(backend.clone(parent_name, "s"))
    child.discard(0, 4 * MiB)  # whole object
    child.discard(4 * MiB + 64 * KiB, 64 * KiB)  # part of an object
    assert child.read(0, 100) == bytes(100)
    assert child.read(4 * MiB + 64 * KiB - 1, 64 * KiB + 2) == b"P" + bytes(64 * KiB) + b"P"
    child.discard(8 * MiB, 64 * KiB)  # covers all the parent data there: nothing to copy up, still hidden
    assert child.read(8 * MiB + 1000, 5) == bytes(5)


def test_clone_of_a_clone(backend: ContractBackend) -> None:
    parent_name, _ = _shared(backend)
    child_name = backend.clone(parent_name, "s")
    child = backend.open(child_name)
    child.write(b"C" * 10, 4 * MiB + 100)
    child.write(b"C" * 10, 8 * MiB + 100)
    child.create_snap("cs")
    child.protect_snap("cs")
    child.write(b"later", 0)
    grandchild_name = backend.clone(child_name, "cs", ioctx=backend.ioctx2)
    grandchild = backend.open(grandchild_name, ioctx=backend.ioctx2)
    assert grandchild.read(0, 4) == b"PPPP"
    assert grandchild.read(4 * MiB + 98, 14) == b"PPCCCCCCCCCCPP"
    assert grandchild.read(8 * MiB + 100, 10) == b"C" * 10
    assert grandchild.parent_info() == (backend.pool, child_name, "cs")


def test_children_and_parent_info(backend: ContractBackend) -> None:
    rbd = backend.rbd
    parent_name, parent = _parent(backend)
    parent.create_snap("s2")
    parent.protect_snap("s2")
    a = backend.clone(parent_name, "s")
    b = backend.clone(parent_name, "s2", ioctx=backend.ioctx2)
    assert sorted(parent.list_children()) == sorted([(backend.pool, a), (backend.pool2, b)])  # head: all
    with backend.open(parent_name, snapshot="s") as at_s:
        assert at_s.list_children() == [(backend.pool, a)]
        [info] = at_s.list_children2()
        assert (info["pool"], info["pool_namespace"], info["image"], info["trash"]) == (backend.pool, "", a, False)
    child = backend.open(b, ioctx=backend.ioctx2)
    assert child.parent_info() == (backend.pool, parent_name, "s2")
    assert child.parent_id() == parent.id()
    with raises(rbd.ImageNotFound, 2):
        parent.parent_info()
    child.create_snap("cs")
    with backend.open(b, ioctx=backend.ioctx2, snapshot="cs") as at_cs:
        assert at_cs.parent_info() == (backend.pool, parent_name, "s2")


def test_parent_with_children_is_pinned(backend: ContractBackend) -> None:
    rbd = backend.rbd
    parent_name, parent = _parent(backend)
    child = backend.clone(parent_name, "s")
    with raises(rbd.ImageBusy, 16):
        parent.unprotect_snap("s")
    with raises(rbd.ImageBusy, 16):
        parent.remove_snap("s")
    parent.close()
    with raises(rbd.ImageHasSnapshots, 39):
        rbd.RBD().remove(backend.ioctx, parent_name)
    rbd.RBD().remove(backend.ioctx, child)
    parent = backend.open(parent_name)
    assert parent.list_children() == []
    parent.unprotect_snap("s")
    parent.remove_snap("s")


def test_flatten(backend: ContractBackend) -> None:
    rbd = backend.rbd
    parent_name, parent = _parent(backend)
    child_name = backend.clone(parent_name, "s")
    child = backend.open(child_name)
    child.write(b"C" * 10, 8 * MiB + 100)
    child.create_snap("cs")
    expected = child.read(0, PARENT_SIZE)
    child.flatten()
    assert child.read(0, PARENT_SIZE) == expected
    with raises(rbd.ImageNotFound, 2):
        child.parent_info()
    with backend.open(child_name, snapshot="cs") as at_cs:  # deep-flatten: the snapshots too
        with raises(rbd.ImageNotFound, 2):
            at_cs.parent_info()
        assert at_cs.read(0, PARENT_SIZE) == expected
    assert parent.list_children() == []
    parent.unprotect_snap("s")
    with raises(rbd.InvalidArgument, 22):
        child.flatten()
    with raises(rbd.InvalidArgument, 22):
        parent.flatten()


def test_shrinking_a_clone_cuts_the_overlap(backend: ContractBackend) -> None:
    parent_name, _ = _shared(backend)
    child = backend.open(backend.clone(parent_name, "s"))
    child.resize(5 * MiB)
    assert child.overlap() == 5 * MiB
    child.resize(13 * MiB)
    assert child.overlap() == 5 * MiB
    assert child.read(5 * MiB - 2, 4) == b"PP\0\0"
    assert child.read(8 * MiB + 1000, 5) == bytes(5)
