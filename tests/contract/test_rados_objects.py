"""RADOS objects on real Ceph and the fake: data, stat, xattrs, namespaces, listing, and the errors of each.

Pinned on Ceph 16.2.15 (python-rados Pacific); the fake must behave the same.
"""

from __future__ import annotations

import time

import pytest
from rados_contract import new_namespace, omap_dict, set_omap


def test_write_full_read_and_stat(rados_ns) -> None:
    io = rados_ns.ioctx
    assert io.write_full("obj", b"hello world") == 0
    assert io.read("obj") == b"hello world"
    assert io.read("obj", 3, 2) == b"llo"
    assert io.read("obj", 3, 100) == b""  # past the end: empty, no error
    size, mtime = io.stat("obj")
    assert size == 11
    assert isinstance(mtime, time.struct_time)
    assert abs(time.mktime(mtime) - time.time()) < 600  # a direct write stamps the current time
    assert io.write_full("obj", b"new") == 0  # replaces all of it
    assert io.read("obj") == b"new" and io.stat("obj")[0] == 3


def test_read_defaults_to_8192_bytes(rados_ns) -> None:
    io = rados_ns.ioctx
    io.write_full("big", b"a" * 10000)
    assert len(io.read("big")) == 8192
    assert io.read("big", 20000) == b"a" * 10000


def test_write_at_an_offset_fills_the_gap_with_zeros(rados_ns) -> None:
    io = rados_ns.ioctx
    io.write_full("obj", b"hello")
    assert io.write("obj", b"XY", 8) == 0
    assert io.read("obj") == b"hello\0\0\0XY"
    assert io.write("obj", b"J", 0) == 0  # overwrites in place, keeps the rest
    assert io.read("obj") == b"Jello\0\0\0XY"
    io.write("fresh", b"ab", 3)  # creates the object
    assert io.read("fresh") == b"\0\0\0ab"


def test_empty_object(rados_ns) -> None:
    io = rados_ns.ioctx
    io.write_full("empty", b"")
    assert io.stat("empty")[0] == 0
    assert io.read("empty") == b""


def test_data_must_be_bytes(rados_ns) -> None:
    with pytest.raises(TypeError):
        rados_ns.ioctx.write_full("obj", "text")


def test_missing_object_errors(rados_ns) -> None:
    rados, io, pool = rados_ns.rados, rados_ns.ioctx, rados_ns.pool
    expected = {
        "read": (lambda: io.read("nope"), f"Ioctx.read({pool}): failed to read nope"),
        "stat": (lambda: io.stat("nope"), "Failed to stat 'nope'"),
        "remove_object": (lambda: io.remove_object("nope"), "Failed to remove 'nope'"),
        "get_xattr": (lambda: io.get_xattr("nope", "a"), "Failed to get xattr 'a'"),
        "get_xattrs": (lambda: io.get_xattrs("nope"), "Failed to get rados xattrs for object 'nope'"),
        "rm_xattr": (lambda: io.rm_xattr("nope", "a"), "Failed to delete key 'nope' xattr 'a'"),
    }
    for call, (fn, message) in expected.items():
        with pytest.raises(rados.ObjectNotFound) as e:
            fn()
        assert e.value.errno == 2, call
        assert str(e.value) == f"[errno 2] RADOS object not found ({message})", call
    with pytest.raises(rados.ObjectNotFound):
        io.stat("nope")  # none of them created it


def test_remove_object_takes_data_xattrs_and_omap_with_it(rados_ns) -> None:
    io = rados_ns.ioctx
    io.write_full("obj", b"data")
    io.set_xattr("obj", "a", b"1")
    set_omap(io, "obj", {"k": b"v"})
    assert io.remove_object("obj") is True
    with pytest.raises(rados_ns.rados.ObjectNotFound):
        io.read("obj")
    io.write_full("obj", b"again")
    assert list(io.get_xattrs("obj")) == [] and omap_dict(io, "obj") == {}


def test_write_full_keeps_xattrs_and_omap(rados_ns) -> None:
    io = rados_ns.ioctx
    io.write_full("obj", b"first")
    io.set_xattr("obj", "a", b"1")
    set_omap(io, "obj", {"k": b"v"})
    io.write_full("obj", b"second")
    assert list(io.get_xattrs("obj")) == [("a", b"1")]
    assert omap_dict(io, "obj") == {"k": b"v"}


def test_xattrs(rados_ns) -> None:
    rados, io = rados_ns.rados, rados_ns.ioctx
    assert io.set_xattr("obj", "b", b"2") is True  # creates the object
    assert io.stat("obj")[0] == 0
    io.set_xattr("obj", "a", b"1")
    io.set_xattr("obj", "empty", b"")
    assert io.get_xattr("obj", "a") == b"1"
    assert io.get_xattr("obj", "empty") == b""
    assert sorted(io.get_xattrs("obj")) == [("a", b"1"), ("b", b"2"), ("empty", b"")]
    io.set_xattr("obj", "a", b"one")
    assert io.get_xattr("obj", "a") == b"one"
    with pytest.raises(rados.NoData) as e:
        io.get_xattr("obj", "zz")
    assert e.value.errno == 61 and str(e.value) == "[errno 61] RADOS no data (Failed to get xattr 'zz')"
    assert io.rm_xattr("obj", "a") is True
    assert io.rm_xattr("obj", "zz") is True  # a missing attribute is no error
    assert sorted(io.get_xattrs("obj")) == [("b", b"2"), ("empty", b"")]
    with pytest.raises(TypeError):
        io.set_xattr("obj", "s", "text")


def test_namespaces_hold_distinct_objects(rados_ns) -> None:
    rados, io = rados_ns.rados, rados_ns.ioctx
    mine, theirs = rados_ns.namespace, new_namespace()
    assert io.get_namespace() == mine
    io.write_full("same", b"mine")
    io.write_full("only-mine", b"x")
    io.set_namespace(theirs)
    assert io.get_namespace() == theirs
    with pytest.raises(rados.ObjectNotFound):
        io.read("same")
    io.write_full("same", b"theirs")
    assert sorted((o.key, o.nspace) for o in io.list_objects()) == [("same", theirs)]
    io.set_namespace(mine)
    assert io.read("same") == b"mine"
    assert sorted((o.key, o.nspace) for o in io.list_objects()) == [("only-mine", mine), ("same", mine)]
    io.set_namespace(rados.LIBRADOS_ALL_NSPACES)
    everything = {(o.key, o.nspace) for o in io.list_objects()}
    assert {("same", mine), ("only-mine", mine), ("same", theirs)} <= everything
    io.set_namespace(theirs)
    io.remove_object("same")
    io.set_namespace(None)
    assert io.get_namespace() == ""


def test_listed_objects_name_their_pool_and_read(rados_ns) -> None:
    io = rados_ns.ioctx
    io.write_full("a", b"1")
    (obj,) = list(io.list_objects())
    assert obj.key == "a" and obj.nspace == rados_ns.namespace
    assert obj.read() == b"1"


def test_calls_on_a_deleted_pool_fail_as_not_found(backend) -> None:
    rados, cluster = backend.rados, backend.cluster
    pool = backend.name("gone")
    cluster.create_pool(pool)
    io = cluster.open_ioctx(pool)
    try:
        io.set_namespace(new_namespace())
        io.write_full("a", b"x")
        cluster.delete_pool(pool)
        calls = {
            "write_full": (lambda: io.write_full("a", b"y"), f"Ioctx.write_full({pool}): failed to write a"),
            "read": (lambda: io.read("a"), f"Ioctx.read({pool}): failed to read a"),
            "stat": (lambda: io.stat("a"), "Failed to stat 'a'"),
            "write op": (lambda: set_omap(io, "a", {"k": b"v"}), "Failed to operate write op for oid a"),
            "lock": (lambda: io.lock_exclusive("a", "lk", "c"),
                     f"Ioctx.rados_lock_exclusive({pool}): failed to set lock lk on a"),
        }  # fmt: skip
        for call, (fn, message) in calls.items():
            with pytest.raises(rados.ObjectNotFound) as e:
                fn()
            assert str(e.value) == f"[errno 2] RADOS object not found ({message})", call
        assert list(io.list_objects()) == []
        with pytest.raises(rados.ObjectNotFound):
            cluster.open_ioctx(pool)
    finally:
        io.close()
        if cluster.pool_exists(pool):
            cluster.delete_pool(pool)
