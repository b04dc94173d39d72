"""cls_lock object locks on real Ceph and the fake: exclusive, shared, renew, expiry, and their errors.

Pinned on Ceph 16.2.15 (python-rados Pacific). A locker is the pair (client connection, cookie): the
same cookie from another connection is another locker. Every lock error, of lock_exclusive,
lock_shared and unlock alike, carries the message "Ioctx.rados_lock_exclusive(<pool>): failed to set
lock <name> on <oid>". Taking a lock creates the object. Expiry is judged on the OSD's clock and comes
a little late on a loaded host: tests wait for it with a deadline, never time it.
"""

from __future__ import annotations

import errno
import time

import pytest

MAY_RENEW = 1
MUST_RENEW = 2
EXPIRY_WAIT_S = 60.0


def _message(rados_ns, name: str, oid: str) -> str:
    return f"Ioctx.rados_lock_exclusive({rados_ns.pool}): failed to set lock {name} on {oid}"


def _raises(rados_ns, exc: type, code: int, name: str, oid: str, fn) -> None:
    with pytest.raises(exc) as e:
        fn()
    assert e.value.errno == code
    assert str(e.value).endswith(f"({_message(rados_ns, name, oid)})")


def test_exclusive_lock(rados_ns) -> None:
    rados, io = rados_ns.rados, rados_ns.ioctx
    assert io.lock_exclusive("obj", "lk", "c1", desc="copying") is None
    assert io.stat("obj")[0] == 0  # the lock made the object
    _raises(rados_ns, rados.ObjectExists, errno.EEXIST, "lk", "obj", lambda: io.lock_exclusive("obj", "lk", "c1"))
    io.lock_exclusive("obj", "lk", "c1", flags=MAY_RENEW)  # renew: same connection and cookie
    io.lock_exclusive("obj", "lk", "c1", flags=MUST_RENEW)
    for flags in (0, MAY_RENEW):
        _raises(rados_ns, rados.ObjectBusy, errno.EBUSY, "lk", "obj",
                lambda flags=flags: io.lock_exclusive("obj", "lk", "c2", flags=flags))  # fmt: skip
    _raises(rados_ns, rados.ObjectBusy, errno.EBUSY, "lk", "obj", lambda: io.lock_shared("obj", "lk", "c2", "t"))
    io.lock_exclusive("obj", "other-name", "c2")  # locks of other names are independent
    assert io.unlock("obj", "lk", "c1") is None
    io.lock_exclusive("obj", "lk", "c2")


def test_unlock_errors(rados_ns) -> None:
    rados, io = rados_ns.rados, rados_ns.ioctx
    io.lock_exclusive("obj", "lk", "c1")
    for name, cookie, oid in (("lk", "c2", "obj"), ("nolock", "c1", "obj"), ("lk", "c1", "nope")):
        _raises(rados_ns, rados.ObjectNotFound, errno.ENOENT, name, oid,
                lambda name=name, cookie=cookie, oid=oid: io.unlock(oid, name, cookie))  # fmt: skip
    io.unlock("obj", "lk", "c1")
    _raises(rados_ns, rados.ObjectNotFound, errno.ENOENT, "lk", "obj", lambda: io.unlock("obj", "lk", "c1"))
    io.stat("obj")  # unlocking leaves the object
    with pytest.raises(rados.ObjectNotFound):
        io.stat("nope")


def test_the_same_cookie_on_another_connection_is_another_locker(rados_ns) -> None:
    rados, io = rados_ns.rados, rados_ns.ioctx
    other = rados_ns.other()
    io.lock_exclusive("obj", "lk", "agent-a")
    for flags in (0, MAY_RENEW):
        _raises(rados_ns, rados.ObjectBusy, errno.EBUSY, "lk", "obj",
                lambda flags=flags: other.lock_exclusive("obj", "lk", "agent-a", flags=flags))  # fmt: skip
    _raises(rados_ns, rados.ObjectNotFound, errno.ENOENT, "lk", "obj", lambda: other.unlock("obj", "lk", "agent-a"))
    io.unlock("obj", "lk", "agent-a")
    other.lock_exclusive("obj", "lk", "agent-a")
    _raises(rados_ns, rados.ObjectBusy, errno.EBUSY, "lk", "obj", lambda: io.lock_exclusive("obj", "lk", "agent-a"))


def test_shared_lock(rados_ns) -> None:
    rados, io = rados_ns.rados, rados_ns.ioctx
    io.lock_shared("obj", "lk", "a", "tag")
    io.lock_shared("obj", "lk", "b", "tag", desc="reader")
    _raises(rados_ns, rados.ObjectBusy, errno.EBUSY, "lk", "obj", lambda: io.lock_shared("obj", "lk", "c", "tag2"))
    _raises(rados_ns, rados.ObjectExists, errno.EEXIST, "lk", "obj", lambda: io.lock_shared("obj", "lk", "a", "tag"))
    io.lock_shared("obj", "lk", "a", "tag", flags=MAY_RENEW)
    for cookie in ("d", "a"):
        _raises(rados_ns, rados.ObjectBusy, errno.EBUSY, "lk", "obj",
                lambda cookie=cookie: io.lock_exclusive("obj", "lk", cookie))  # fmt: skip
    io.unlock("obj", "lk", "a")
    io.unlock("obj", "lk", "b")
    io.lock_exclusive("obj", "lk", "d")


def test_flags_and_names(rados_ns) -> None:
    rados, io = rados_ns.rados, rados_ns.ioctx
    _raises(rados_ns, rados.ObjectNotFound, errno.ENOENT, "lk", "o1",
            lambda: io.lock_exclusive("o1", "lk", "c", flags=MUST_RENEW))  # fmt: skip
    io.lock_exclusive("o2", "lk", "c", flags=MAY_RENEW)  # may renew: takes a free lock too
    _raises(rados_ns, rados.InvalidArgumentError, errno.EINVAL, "lk", "o3",
            lambda: io.lock_exclusive("o3", "lk", "c", flags=MAY_RENEW | MUST_RENEW))  # fmt: skip
    _raises(rados_ns, rados.InvalidArgumentError, errno.EINVAL, "", "o4", lambda: io.lock_exclusive("o4", "", "c"))
    io.lock_exclusive("o5", "lk", "")  # an empty cookie is a cookie


def test_removing_the_object_drops_its_locks(rados_ns) -> None:
    io = rados_ns.ioctx
    io.lock_exclusive("obj", "lk", "c1")
    assert io.remove_object("obj") is True
    io.lock_exclusive("obj", "lk", "c2")


def test_a_lock_on_an_object_with_data_keeps_the_data(rados_ns) -> None:
    io = rados_ns.ioctx
    io.write_full("obj", b"payload")
    io.lock_exclusive("obj", "lk", "c1")
    assert io.read("obj") == b"payload"


def test_locks_are_per_namespace(rados_ns) -> None:
    io, other = rados_ns.ioctx, rados_ns.other()
    other.set_namespace(rados_ns.namespace + "-x")
    io.lock_exclusive("obj", "lk", "c1")
    other.lock_exclusive("obj", "lk", "c2")


def _take_when_free(io, rados, oid: str, cookie: str, duration: int) -> None:
    deadline = time.monotonic() + EXPIRY_WAIT_S
    while True:
        try:
            io.lock_exclusive(oid, "lk", cookie, duration=duration)
            return
        except rados.ObjectBusy:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_a_lock_with_a_duration_expires(rados_ns) -> None:
    rados, io = rados_ns.rados, rados_ns.ioctx
    other = rados_ns.other()
    io.lock_exclusive("obj", "lk", "a", duration=1)
    with pytest.raises(rados.ObjectBusy):
        other.lock_exclusive("obj", "lk", "b", duration=1)
    _take_when_free(other, rados, "obj", "b", duration=30)
    # the first holder lost it: no renew, no unlock
    _raises(rados_ns, rados.ObjectBusy, errno.EBUSY, "lk", "obj",
            lambda: io.lock_exclusive("obj", "lk", "a", duration=1, flags=MAY_RENEW))  # fmt: skip
    _raises(rados_ns, rados.ObjectNotFound, errno.ENOENT, "lk", "obj", lambda: io.unlock("obj", "lk", "a"))
    other.unlock("obj", "lk", "b")


def test_a_renewed_lock_without_duration_never_expires(rados_ns) -> None:
    rados, io = rados_ns.rados, rados_ns.ioctx
    io.lock_exclusive("obj", "lk", "a", duration=1)
    io.lock_exclusive("obj", "lk", "a", flags=MAY_RENEW)  # no duration now
    io.lock_exclusive("probe", "lk", "a", duration=1)
    _take_when_free(io, rados, "probe", "b", duration=1)  # a 1 s lock beside it has expired by now
    with pytest.raises(rados.ObjectBusy):
        io.lock_exclusive("obj", "lk", "b")
