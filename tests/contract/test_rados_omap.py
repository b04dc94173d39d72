"""RADOS omap and write operations on real Ceph and the fake: listing, guards, atomicity, their errors.

Pinned on Ceph 16.2.15 (python-rados Pacific): a failed ``omap_cmp`` raises the plain ``rados.OSError``
with errno ECANCELED; ``omap_cmp`` takes the value as ``str`` and compares a missing key as empty; only
EQ, GT and LT are allowed (the others are EINVAL on the OSD); an empty omap value reads back as None;
a write op with the default mtime (0) leaves the object's mtime alone (a new object's is the epoch).
"""

from __future__ import annotations

import errno
import threading
import time

import pytest
from rados_contract import omap_dict, omap_vals, read_op, set_omap, write_op


def test_set_omap_creates_the_object_and_lists_sorted(rados_ns) -> None:
    io = rados_ns.ioctx
    set_omap(io, "obj", {"b": b"2", "a": b"1", "ab": b"x", "c": b"3"})
    assert io.stat("obj")[0] == 0  # omap only, no data
    assert omap_vals(io, "obj") == [("a", b"1"), ("ab", b"x"), ("b", b"2"), ("c", b"3")]
    assert omap_vals(io, "obj", start_after="a") == [("ab", b"x"), ("b", b"2"), ("c", b"3")]
    assert omap_vals(io, "obj", filter_prefix="a") == [("a", b"1"), ("ab", b"x")]
    assert omap_vals(io, "obj", start_after="a", filter_prefix="a") == [("ab", b"x")]
    assert omap_vals(io, "obj", max_return=2) == [("a", b"1"), ("ab", b"x")]
    assert omap_vals(io, "obj", max_return=0) == []
    set_omap(io, "obj", {"a": b"one"})  # replaces one value, keeps the others
    assert omap_dict(io, "obj") == {"a": b"one", "ab": b"x", "b": b"2", "c": b"3"}


def test_an_empty_value_reads_back_as_none(rados_ns) -> None:
    io = rados_ns.ioctx
    set_omap(io, "obj", {"empty": b"", "text": "str values are taken too"})  # type: ignore[dict-item]
    assert omap_vals(io, "obj") == [("empty", None), ("text", b"str values are taken too")]


def test_get_omap_keys_and_vals_by_keys(rados_ns) -> None:
    io = rados_ns.ioctx
    set_omap(io, "obj", {"a": b"1", "b": b"2", "c": b"3"})
    with read_op(io) as op:
        keys, ret = io.get_omap_keys(op, "a", 1)
        by_keys, ret2 = io.get_omap_vals_by_keys(op, ("c", "missing", "a"))
        io.operate_read_op(op, "obj")
    assert (ret, ret2) == (0, 0)
    assert list(keys) == [("b", None)]
    assert list(by_keys) == [("a", b"1"), ("c", b"3")]  # sorted, missing keys left out


def test_omap_iterator_is_used_up_once(rados_ns) -> None:
    io = rados_ns.ioctx
    set_omap(io, "obj", {"a": b"1"})
    with read_op(io) as op:
        it, _ = io.get_omap_vals(op, "", "", -1)
        io.operate_read_op(op, "obj")
        assert list(it) == [("a", b"1")]
        assert list(it) == []


def test_remove_keys_and_clear(rados_ns) -> None:
    io = rados_ns.ioctx
    set_omap(io, "obj", {"a": b"1", "b": b"2", "c": b"3"})
    with write_op(io) as op:
        io.remove_omap_keys(op, ("a", "missing"))
        io.operate_write_op(op, "obj")
    assert omap_dict(io, "obj") == {"b": b"2", "c": b"3"}
    with write_op(io) as op:
        io.clear_omap(op)
        io.operate_write_op(op, "obj")
    assert omap_dict(io, "obj") == {}
    io.stat("obj")  # the object stays


def test_omap_on_a_missing_object(rados_ns) -> None:
    rados, io = rados_ns.rados, rados_ns.ioctx
    for build in (lambda op: io.remove_omap_keys(op, ("a",)), lambda op: io.clear_omap(op), lambda op: op.remove(),
                  lambda op: op.rm_xattr("a")):  # fmt: skip
        with write_op(io) as op, pytest.raises(rados.ObjectNotFound) as e:
            build(op)
            io.operate_write_op(op, "nope")
        assert str(e.value) == "[errno 2] RADOS object not found (Failed to operate write op for oid nope)"
    with read_op(io) as op, pytest.raises(rados.ObjectNotFound) as e:
        io.get_omap_vals(op, "", "", -1)
        io.operate_read_op(op, "nope")
    assert str(e.value) == "[errno 2] RADOS object not found (Failed to operate read op for oid nope)"
    with pytest.raises(rados.ObjectNotFound):
        io.stat("nope")


def test_keys_and_values_must_pair_up(rados_ns) -> None:
    rados, io = rados_ns.rados, rados_ns.ioctx
    with write_op(io) as op, pytest.raises(rados.Error) as e:
        io.set_omap(op, ("a", "b"), (b"1",))
    assert str(e.value) == "Rados(): keys and values must have the same number of items"


def test_write_and_read_ops_are_no_context_managers(rados_ns) -> None:
    # python-rados Pacific: `with rados.WriteOp() as op` does not exist; use create/release_write_op
    with pytest.raises((TypeError, AttributeError)), rados_ns.ioctx.create_write_op():
        pass


# ---------------------------------------------------------------- guards


def test_exclusive_create(rados_ns) -> None:
    rados, io = rados_ns.rados, rados_ns.ioctx
    with write_op(io) as op:
        op.new(rados.LIBRADOS_CREATE_EXCLUSIVE)
        op.write_full(b"first")
        io.set_omap(op, ("k",), (b"1",))
        assert io.operate_write_op(op, "obj") is None
    with write_op(io) as op, pytest.raises(rados.ObjectExists) as e:
        op.new(rados.LIBRADOS_CREATE_EXCLUSIVE)
        op.write_full(b"second")
        io.set_omap(op, ("k", "k2"), (b"2", b"2"))
        io.operate_write_op(op, "obj")
    assert e.value.errno == errno.EEXIST
    assert str(e.value) == "[errno 17] RADOS object exists (Failed to operate write op for oid obj)"
    assert io.read("obj") == b"first" and omap_dict(io, "obj") == {"k": b"1"}  # nothing of it applied
    with write_op(io) as op:
        op.new(rados.LIBRADOS_CREATE_IDEMPOTENT)
        io.operate_write_op(op, "obj")
    assert io.read("obj") == b"first"


def test_exclusive_create_fails_on_an_omap_only_object(rados_ns) -> None:
    rados, io = rados_ns.rados, rados_ns.ioctx
    set_omap(io, "obj", {"a": b"1"})
    with write_op(io) as op, pytest.raises(rados.ObjectExists):
        op.new(rados.LIBRADOS_CREATE_EXCLUSIVE)
        io.operate_write_op(op, "obj")


def _guarded_set(io, oid: str, key: str, val, cmp_op, new: dict[str, bytes]) -> None:
    with write_op(io) as op:
        op.omap_cmp(key, val, cmp_op)
        io.set_omap(op, tuple(new), tuple(new.values()))
        io.operate_write_op(op, oid)


def test_omap_cmp_guards_the_whole_op(rados_ns) -> None:
    rados, io = rados_ns.rados, rados_ns.ioctx
    eq = rados.LIBRADOS_CMPXATTR_OP_EQ
    set_omap(io, "obj", {"state": b"queued"})
    _guarded_set(io, "obj", "state", "queued", eq, {"state": b"running", "owner": b"a"})
    assert omap_dict(io, "obj") == {"owner": b"a", "state": b"running"}
    with pytest.raises(rados.OSError) as e:
        _guarded_set(io, "obj", "state", "queued", eq, {"state": b"running", "owner": b"b"})
    assert type(e.value) is rados.OSError  # not a subclass: catch it and check errno
    assert e.value.errno == errno.ECANCELED
    assert str(e.value) == "[errno 125] Failed to operate write op for oid obj"
    assert omap_dict(io, "obj") == {"owner": b"a", "state": b"running"}


def test_omap_cmp_a_missing_key_compares_as_empty(rados_ns) -> None:
    rados, io = rados_ns.rados, rados_ns.ioctx
    eq = rados.LIBRADOS_CMPXATTR_OP_EQ
    set_omap(io, "obj", {"other": b"1", "empty": b""})
    _guarded_set(io, "obj", "missing", "", eq, {"a": b"1"})
    _guarded_set(io, "obj", "empty", "", eq, {"b": b"1"})
    with pytest.raises(rados.OSError) as e:
        _guarded_set(io, "obj", "missing", "x", eq, {"c": b"1"})
    assert e.value.errno == errno.ECANCELED
    assert set(omap_dict(io, "obj")) == {"a", "b", "empty", "other"}


def test_omap_cmp_greater_and_less(rados_ns) -> None:
    rados, io = rados_ns.rados, rados_ns.ioctx
    set_omap(io, "obj", {"n": b"2"})
    _guarded_set(io, "obj", "n", "1", rados.LIBRADOS_CMPXATTR_OP_GT, {"gt": b"1"})  # stored value > "1"
    _guarded_set(io, "obj", "n", "3", rados.LIBRADOS_CMPXATTR_OP_LT, {"lt": b"1"})
    for val, cmp_op in (("3", rados.LIBRADOS_CMPXATTR_OP_GT), ("1", rados.LIBRADOS_CMPXATTR_OP_LT)):
        with pytest.raises(rados.OSError) as e:
            _guarded_set(io, "obj", "n", val, cmp_op, {"no": b"1"})
        assert e.value.errno == errno.ECANCELED
    assert omap_dict(io, "obj") == {"gt": b"1", "lt": b"1", "n": b"2"}


def test_omap_cmp_other_operators_are_invalid(rados_ns) -> None:
    rados, io = rados_ns.rados, rados_ns.ioctx
    set_omap(io, "obj", {"n": b"2"})
    for cmp_op in (rados.LIBRADOS_CMPXATTR_OP_NE, rados.LIBRADOS_CMPXATTR_OP_GTE, rados.LIBRADOS_CMPXATTR_OP_LTE, 99):
        with pytest.raises(rados.InvalidArgumentError) as e:
            _guarded_set(io, "obj", "n", "3", cmp_op, {"no": b"1"})
        assert e.value.errno == errno.EINVAL
        assert str(e.value) == "[errno 22] RADOS invalid argument (Failed to operate write op for oid obj)"
    assert omap_dict(io, "obj") == {"n": b"2"}


def test_omap_cmp_takes_str_only(rados_ns) -> None:
    with write_op(rados_ns.ioctx) as op, pytest.raises(TypeError):
        op.omap_cmp("k", b"bytes", rados_ns.rados.LIBRADOS_CMPXATTR_OP_EQ)


def test_omap_cmp_on_a_missing_object(rados_ns) -> None:
    rados, io = rados_ns.rados, rados_ns.ioctx
    with pytest.raises(rados.ObjectNotFound):
        _guarded_set(io, "nope", "k", "", rados.LIBRADOS_CMPXATTR_OP_EQ, {"k": b"1"})
    with pytest.raises(rados.ObjectNotFound):
        io.stat("nope")


def test_guards_run_in_order_and_any_failure_cancels_all(rados_ns) -> None:
    rados, io = rados_ns.rados, rados_ns.ioctx
    set_omap(io, "obj", {"a": b"1", "b": b"2"})
    with write_op(io) as op, pytest.raises(rados.OSError) as e:
        op.omap_cmp("a", "1")
        op.omap_cmp("b", "wrong")
        io.set_omap(op, ("c",), (b"3",))
        op.write_full(b"data")
        io.operate_write_op(op, "obj")
    assert e.value.errno == errno.ECANCELED
    assert omap_dict(io, "obj") == {"a": b"1", "b": b"2"} and io.read("obj") == b""
    with write_op(io) as op, pytest.raises(rados.ObjectExists):
        op.new(rados.LIBRADOS_CREATE_EXCLUSIVE)  # first in the op: its EEXIST is what is reported
        op.omap_cmp("b", "wrong")
        io.operate_write_op(op, "obj")


def test_exclusive_create_with_a_guard_on_a_new_object(rados_ns) -> None:
    rados, io = rados_ns.rados, rados_ns.ioctx
    with write_op(io) as op:
        op.new(rados.LIBRADOS_CREATE_EXCLUSIVE)
        op.omap_cmp("k", "")  # a new object has no keys: compares as empty
        io.set_omap(op, ("k",), (b"1",))
        io.operate_write_op(op, "obj")
    assert omap_dict(io, "obj") == {"k": b"1"}


def test_write_op_data_xattrs_and_remove(rados_ns) -> None:
    io = rados_ns.ioctx
    with write_op(io) as op:
        op.write_full(b"data")
        op.set_xattr("x", b"1")
        io.operate_write_op(op, "obj")
    assert io.read("obj") == b"data" and list(io.get_xattrs("obj")) == [("x", b"1")]
    with write_op(io) as op:
        op.rm_xattr("x")
        op.rm_xattr("never-set")
        op.write(b"D", 0)
        op.append(b"!")
        io.operate_write_op(op, "obj")
    assert io.read("obj") == b"Data!" and list(io.get_xattrs("obj")) == []
    with write_op(io) as op:
        op.remove()
        io.operate_write_op(op, "obj")
    with pytest.raises(rados_ns.rados.ObjectNotFound):
        io.stat("obj")


def test_write_op_mtime(rados_ns) -> None:
    io = rados_ns.ioctx
    with write_op(io) as op:
        op.write_full(b"x")
        io.operate_write_op(op, "new")
    assert time.mktime(io.stat("new")[1]) == time.mktime(time.localtime(0))  # the default mtime 0 sets none
    io.write_full("direct", b"x")
    before = io.stat("direct")[1]
    set_omap(io, "direct", {"k": b"v"})
    assert io.stat("direct")[1] == before
    with write_op(io) as op:
        op.write_full(b"y")
        io.operate_write_op(op, "direct", mtime=1_700_000_000)
    assert time.mktime(io.stat("direct")[1]) == 1_700_000_000


# ---------------------------------------------------------------- races


def test_threads_racing_an_exclusive_create_have_one_winner(rados_ns) -> None:
    rados, io = rados_ns.rados, rados_ns.ioctx
    winners, losers, errors = [], [], []
    start = threading.Barrier(6)

    def create(n: int) -> None:
        try:
            start.wait()
            with write_op(io) as op:
                op.new(rados.LIBRADOS_CREATE_EXCLUSIVE)
                io.set_omap(op, ("owner",), (str(n).encode(),))
                io.operate_write_op(op, "race")
            winners.append(n)
        except rados.ObjectExists:
            losers.append(n)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=create, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(winners) == 1 and len(losers) == 5
    assert omap_dict(io, "race") == {"owner": str(winners[0]).encode()}


def test_compare_and_swap_counter_loses_no_update(rados_ns) -> None:
    rados, io = rados_ns.rados, rados_ns.ioctx
    set_omap(io, "counter", {"n": b"0"})
    per_thread, threads_n, errors = 5, 4, []

    def bump() -> None:
        try:
            done = 0
            while done < per_thread:
                current = omap_dict(io, "counter")["n"].decode()
                try:
                    _guarded_set(io, "counter", "n", current, rados.LIBRADOS_CMPXATTR_OP_EQ,
                                 {"n": str(int(current) + 1).encode()})  # fmt: skip
                    done += 1
                except rados.OSError as e:
                    if e.errno != errno.ECANCELED:
                        raise
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=bump) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert omap_dict(io, "counter") == {"n": str(per_thread * threads_n).encode()}
