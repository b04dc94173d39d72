"""The RADOS object API of the fake ``Ioctx`` (mixed into it) and the WriteOp/ReadOp/iterator classes.

Signatures, return values and exceptions (class, errno, message) as python-rados Pacific; the model of
an object and the atomicity of operations are described in ``_objects``. Like the real module, WriteOp
and ReadOp are no context managers: make them with ``ioctx.create_write_op()`` and hand them back with
``ioctx.release_write_op(op)``.

What Ceph Pacific does and the fake copies (tests/contract/test_rados_*.py pin each):

- a failed ``omap_cmp`` raises the plain ``rados.OSError``, errno ECANCELED (125); ``omap_cmp`` takes the
  value as ``str``; a missing key compares as ""; only EQ, GT, LT are valid (others: InvalidArgumentError);
  on a missing object the guard gives ObjectNotFound. ``new(LIBRADOS_CREATE_EXCLUSIVE)`` on an existing
  object (data or omap only) gives ObjectExists. Steps run in order; the first failure cancels all.
- an empty omap value reads back as None; ``set_omap`` also takes ``str`` values.
- ``operate_write_op`` with the default ``mtime=0`` leaves the mtime as it was (the epoch for a new object);
  direct calls (``write_full``, ``set_xattr``...) stamp the current time: do not use ``stat`` mtimes of
  write-op objects as a clock.
- a locker is (connection, cookie): only the connection that took a lock can renew (``flags=1``) or unlock
  it; another connection with the same cookie gets ObjectBusy / ObjectNotFound, so a restarted agent waits
  for the ``duration`` to run out. Same locker again without flags: ObjectExists. Taking a lock creates
  the object; ``remove_object`` drops its locks.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

from . import _objects as objs
from ._objects import StepError
from ._rados_errors import Error, make_ex

LIBRADOS_ALL_NSPACES = "\x01"
LIBRADOS_CREATE_EXCLUSIVE = 1
LIBRADOS_CREATE_IDEMPOTENT = 0
LIBRADOS_CMPXATTR_OP_EQ = 1
LIBRADOS_CMPXATTR_OP_NE = 2
LIBRADOS_CMPXATTR_OP_GT = 3
LIBRADOS_CMPXATTR_OP_GTE = 4
LIBRADOS_CMPXATTR_OP_LT = 5
LIBRADOS_CMPXATTR_OP_LTE = 6
LIBRADOS_OPERATION_NOFLAG = 0


def _str(value, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"Argument '{what}' has incorrect type (expected str, got {type(value).__name__})")
    return value


def _bytes(value, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError(f"Argument '{what}' has incorrect type (expected bytes, got {type(value).__name__})")
    return value


def _key(value) -> str:
    return value.decode() if isinstance(value, bytes) else _str(value, "key")


def _value(value) -> bytes:
    return value.encode() if isinstance(value, str) else _bytes(value, "value")


class WriteOp:
    """Steps to apply to one object at once (``Ioctx.operate_write_op``)."""

    def __init__(self) -> None:
        self.steps: list[objs.Step] = []

    def create(self) -> WriteOp:
        return self

    def release(self) -> None:
        self.steps = []

    def set_flags(self, flags: int = LIBRADOS_OPERATION_NOFLAG) -> None:
        pass

    def new(self, exclusive: int | None = None) -> None:
        self.steps.append(objs.step_new(bool(exclusive)))

    def remove(self) -> None:
        self.steps.append(objs.step_remove())

    def write(self, to_write: bytes, offset: int = 0) -> None:
        self.steps.append(objs.step_write(_bytes(to_write, "to_write"), int(offset)))

    def write_full(self, to_write: bytes) -> None:
        self.steps.append(objs.step_write(_bytes(to_write, "to_write"), 0, full=True))

    def append(self, to_write: bytes) -> None:
        self.steps.append(objs.step_write(_bytes(to_write, "to_write"), None))

    def set_xattr(self, xattr_name: str, xattr_value: bytes) -> None:
        self.steps.append(objs.step_set_xattr(_str(xattr_name, "xattr_name"), _bytes(xattr_value, "xattr_value")))

    def rm_xattr(self, xattr_name: str) -> None:
        self.steps.append(objs.step_rm_xattr(_str(xattr_name, "xattr_name")))

    def omap_cmp(self, key: str, val: str, cmp_op: int = LIBRADOS_CMPXATTR_OP_EQ) -> None:
        self.steps.append(objs.step_omap_cmp(_str(key, "key"), _str(val, "val").encode(), int(cmp_op)))


class OmapIterator:
    """Filled by ``operate_read_op``; yields (key, value) pairs once."""

    def __init__(self) -> None:
        self._items: list[tuple[str, bytes | None]] = []

    def _fill(self, items: list[tuple[str, bytes | None]]) -> None:
        self._items = list(items)

    def __iter__(self) -> Iterator[tuple[str, bytes | None]]:
        return self

    def __next__(self) -> tuple[str, bytes | None]:
        if not self._items:
            raise StopIteration
        return self._items.pop(0)


class ReadOp:
    """Omap reads to run on one object at once (``Ioctx.operate_read_op``)."""

    def __init__(self) -> None:
        self.reads: list = []  # (iterator, function of the object state giving its items)

    def create(self) -> ReadOp:
        return self

    def release(self) -> None:
        self.reads = []

    def set_flags(self, flags: int = LIBRADOS_OPERATION_NOFLAG) -> None:
        pass


class RadosObject:
    """A listed object (``Ioctx.list_objects``): ``key``, ``nspace``, ``locator_key``, ``read``, ``stat``."""

    def __init__(self, ioctx, key: str, nspace: str) -> None:
        self.ioctx = ioctx
        self.key = key
        self.nspace = nspace
        self.locator_key = ""

    def __repr__(self) -> str:
        return f"rados.Object(ioctx={self.ioctx.name},key={self.key},nspace={self.nspace},locator={self.locator_key})"

    def _in_ns(self):
        ioctx = type(self.ioctx)(self.ioctx.cluster, self.ioctx.name, self.ioctx.pool_id)
        ioctx.set_namespace(self.nspace)
        return ioctx

    def read(self, length: int = 1024 * 1024) -> bytes:
        return self._in_ns().read(self.key, length)

    def stat(self):
        return self._in_ns().stat(self.key)

    def remove(self) -> None:
        self._in_ns().remove_object(self.key)


class ObjectsMixin:
    """The object, xattr, omap, write-op and lock calls of ``Ioctx`` (which supplies store/pool_id/name)."""

    nspace: str = ""

    # ---- namespaces

    def set_namespace(self, nspace: str | None) -> None:
        self.require_ioctx_open()
        self.nspace = "" if nspace is None else _str(nspace, "nspace")

    def get_namespace(self) -> str:
        self.require_ioctx_open()
        return self.nspace

    # ---- plumbing

    def _load(self, key: str, fresh: bool = False) -> dict | None:
        return self.store.rados_object(self.pool_id, self.nspace, key, fresh)

    def _check_pool(self, message: str) -> None:
        if self.store.pool(self.pool_id) is None:
            raise make_ex(2, message)

    def _change(self, key: str, steps: list, message: str, mtime: float | None) -> None:
        """Apply ``steps`` to object ``key`` atomically; ``mtime`` None leaves the object's mtime alone."""
        key = _key(key)
        store = self.store
        with store.lock(exclusive=True):
            self._check_pool(message)
            before = self._load(key, fresh=True)
            try:
                after = objs.apply_steps(before, key, self.nspace, steps)
            except StepError as e:
                raise make_ex(e.code, message) from None
            if after is None:
                if before is not None:
                    store.remove_rados_object(self.pool_id, self.nspace, key)
                return
            if mtime is not None:
                after["mtime"] = mtime
            store.save_rados_object(self.pool_id, after)

    def _existing(self, key: str, message: str) -> dict:
        with self.store.lock(exclusive=False):
            obj = self._load(_key(key))
        if obj is None:
            raise make_ex(2, message)
        return obj

    # ---- data

    def write_full(self, key: str, data: bytes) -> int:
        self._change(key, [objs.step_write(_bytes(data, "data"), 0, full=True)],
                     f"Ioctx.write_full({self.name}): failed to write {key}", time.time())  # fmt: skip
        return 0

    def write(self, key: str, data: bytes, offset: int = 0) -> int:
        self._change(key, [objs.step_write(_bytes(data, "data"), int(offset))],
                     f"Ioctx.write({self.name}): failed to write {key}", time.time())  # fmt: skip
        return 0

    def append(self, key: str, data: bytes) -> int:
        self._change(key, [objs.step_write(_bytes(data, "data"), None)],
                     f"Ioctx.append({self.name}): failed to append {key}", time.time())  # fmt: skip
        return 0

    def read(self, key: str, length: int = 8192, offset: int = 0) -> bytes:
        obj = self._existing(key, f"Ioctx.read({self.name}): failed to read {key}")
        return objs.s2b(obj["data"][offset:offset + length])

    def stat(self, key: str) -> tuple[int, time.struct_time]:
        obj = self._existing(key, f"Failed to stat '{key}'")
        return len(obj["data"]), time.localtime(int(obj["mtime"]))

    def remove_object(self, key: str) -> bool:
        self._change(key, [objs.step_remove()], f"Failed to remove '{key}'", None)
        return True

    def list_objects(self) -> Iterator[RadosObject]:
        store = self.store
        with store.lock(exclusive=False):
            found = store.rados_objects(self.pool_id)
        wanted = [o for o in found if self.nspace == LIBRADOS_ALL_NSPACES or o["nspace"] == self.nspace]
        wanted.sort(key=lambda o: (o["nspace"], o["key"]))
        return iter([RadosObject(self, o["key"], o["nspace"]) for o in wanted])

    # ---- xattrs

    def set_xattr(self, key: str, xattr_name: str, xattr_value: bytes) -> bool:
        step = objs.step_set_xattr(_str(xattr_name, "xattr_name"), _bytes(xattr_value, "xattr_value"))
        self._change(key, [step], f"Failed to set xattr '{xattr_name}'", time.time())
        return True

    def get_xattr(self, key: str, xattr_name: str) -> bytes:
        message = f"Failed to get xattr '{xattr_name}'"
        obj = self._existing(key, message)
        if xattr_name not in obj["xattrs"]:
            raise make_ex(61, message)
        return objs.s2b(obj["xattrs"][xattr_name])

    def get_xattrs(self, oid: str) -> Iterator[tuple[str, bytes]]:
        obj = self._existing(oid, f"Failed to get rados xattrs for object '{oid}'")
        return iter([(name, objs.s2b(v)) for name, v in sorted(obj["xattrs"].items())])

    def rm_xattr(self, key: str, xattr_name: str) -> bool:
        self._change(key, [objs.step_rm_xattr(_str(xattr_name, "xattr_name"))],
                     f"Failed to delete key '{key}' xattr '{xattr_name}'", time.time())  # fmt: skip
        return True

    # ---- write and read operations

    def create_write_op(self) -> WriteOp:
        self.require_ioctx_open()
        return WriteOp().create()

    def release_write_op(self, write_op: WriteOp) -> None:
        write_op.release()

    def create_read_op(self) -> ReadOp:
        self.require_ioctx_open()
        return ReadOp().create()

    def release_read_op(self, read_op: ReadOp) -> None:
        read_op.release()

    def set_omap(self, write_op: WriteOp, keys: Sequence[str], values: Sequence[bytes]) -> None:
        if len(keys) != len(values):
            raise Error("Rados(): keys and values must have the same number of items")
        write_op.steps.append(objs.step_set_omap({_key(k): _value(v) for k, v in zip(keys, values, strict=True)}))

    def remove_omap_keys(self, write_op: WriteOp, keys: Sequence[str]) -> None:
        write_op.steps.append(objs.step_rm_omap_keys([_key(k) for k in keys]))

    def clear_omap(self, write_op: WriteOp) -> None:
        write_op.steps.append(objs.step_clear_omap())

    def operate_write_op(self, write_op: WriteOp, oid: str, mtime: int = 0,
                         flags: int = LIBRADOS_OPERATION_NOFLAG) -> None:  # fmt: skip
        # the OSD sets the mtime only when the client sends one: python-rados sends 0 unless told
        self._change(oid, list(write_op.steps), f"Failed to operate write op for oid {oid}", mtime or None)

    def get_omap_vals(self, read_op: ReadOp, start_after: str, filter_prefix: str,
                      max_return: int) -> tuple[OmapIterator, int]:  # fmt: skip
        it = OmapIterator()
        after, prefix, limit = _str(start_after, "start_after"), _str(filter_prefix, "filter_prefix"), int(max_return)
        read_op.reads.append((it, lambda obj: objs.omap_vals(obj, after, prefix, limit)))
        return it, 0

    def get_omap_keys(self, read_op: ReadOp, start_after: str, max_return: int) -> tuple[OmapIterator, int]:
        it = OmapIterator()
        after, limit = _str(start_after, "start_after"), int(max_return)
        read_op.reads.append((it, lambda obj: [(k, None) for k, _ in objs.omap_vals(obj, after, "", limit)]))
        return it, 0

    def get_omap_vals_by_keys(self, read_op: ReadOp, keys: Sequence[str]) -> tuple[OmapIterator, int]:
        it = OmapIterator()
        wanted = [_key(k) for k in keys]
        read_op.reads.append((it, lambda obj: objs.omap_vals_by_keys(obj, wanted)))
        return it, 0

    def operate_read_op(self, read_op: ReadOp, oid: str, flag: int = LIBRADOS_OPERATION_NOFLAG) -> None:
        obj = self._existing(oid, f"Failed to operate read op for oid {oid}")
        for it, items in read_op.reads:
            it._fill(items(obj))

    # ---- cls_lock

    def _lock_call(self, key: str, name: str, change) -> None:
        """Run ``change(obj, now)`` on object ``key`` under the exclusive store lock; the message is the
        one python-rados gives for every lock call's failure."""
        message = f"Ioctx.rados_lock_exclusive({self.name}): failed to set lock {name} on {key}"
        store = self.store
        with store.lock(exclusive=True):
            self._check_pool(message)
            obj = self._load(key, fresh=True)
            now = objs.wall_clock()
            try:
                saved = change(obj, now)
            except StepError as e:
                raise make_ex(e.code, message) from None
            if saved is not None:
                store.save_rados_object(self.pool_id, saved)

    def _take(self, key, name, cookie, tag, desc, duration, flags, exclusive: bool) -> None:
        key, name, cookie = _str(key, "key"), _str(name, "name"), _str(cookie, "cookie")
        tag, desc = _str(tag, "tag"), _str(desc, "desc")

        def change(obj, now):
            obj = obj if obj is not None else objs.new_object(key, self.nspace, now)
            objs.lock(obj, name, exclusive, self.cluster.get_instance_id(), cookie, tag, desc,
                      None if duration is None else float(duration), int(flags), now)  # fmt: skip
            return obj

        self._lock_call(key, name, change)

    def lock_exclusive(self, key: str, name: str, cookie: str, desc: str = "", duration: int | None = None,
                       flags: int = 0) -> None:  # fmt: skip
        self._take(key, name, cookie, "", desc, duration, flags, exclusive=True)

    def lock_shared(self, key: str, name: str, cookie: str, tag: str, desc: str = "", duration: int | None = None,
                    flags: int = 0) -> None:  # fmt: skip
        self._take(key, name, cookie, tag, desc, duration, flags, exclusive=False)

    def unlock(self, key: str, name: str, cookie: str) -> None:
        key, name, cookie = _str(key, "key"), _str(name, "name"), _str(cookie, "cookie")

        def change(obj, now):
            objs.unlock(obj, name, self.cluster.get_instance_id(), cookie, now)
            return obj

        self._lock_call(key, name, change)
