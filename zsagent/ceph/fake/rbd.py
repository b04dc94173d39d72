"""A stand-in for python-rbd (the subset zsagent uses) on top of ``zsagent.ceph.fake.rados``.

Same names, signatures, return values and exceptions (class, base classes, errno) as Ceph Pacific
16.2.15's ``rbd`` module, measured against a real cluster by ``tests/contract``::

    rbd = RBD()
    rbd.create(ioctx, "vol", 1 << 30)                       # instant: a sparse file
    with Image(ioctx, "vol") as image:
        image.write(b"data", 0)
        image.create_snap("s1"); image.protect_snap("s1")
    rbd.clone(ioctx, "vol", "s1", ioctx, "child")           # copy-on-write child
    with Image(ioctx, "vol", snapshot="s1", read_only=True) as snap:
        snap.diff_iterate(0, snap.size(), None, callback, whole_object=True)

Model (see ``_image`` and ``_osd``): images are split into objects of ``2**order`` bytes; each object
keeps an OSD-style snapshot set (head + copy-on-write clones with overlap tracking) and a librbd-style
object map (per head and per snapshot), which is what makes ``diff_iterate`` report the same extents as
a real cluster. Clones follow clone format 1: the parent snapshot must be protected.

Deliberate differences from the real module: only what is listed in ``__all__`` exists; a zero-length
``whole_object`` diff_iterate raises ``LibrbdAbort`` where real librbd 16.2.15 aborts the process;
watchers are "rw-open Image handles" (an fcntl lock), so they vanish with the process instead of
timing out after 30 s.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator

from . import _image
from ._image import (
    RBD_FEATURE_DEEP_FLATTEN,
    RBD_FEATURE_EXCLUSIVE_LOCK,
    RBD_FEATURE_FAST_DIFF,
    RBD_FEATURE_LAYERING,
    RBD_FEATURE_OBJECT_MAP,
)
from ._rbd_errors import (
    ECANCELED,
    ArgumentOutOfRange,
    ConnectionShutdown,
    DiskQuotaExceeded,
    Error,
    FunctionNotSupported,
    ImageBusy,
    ImageExists,
    ImageHasSnapshots,
    ImageNotFound,
    IncompleteWriteError,
    InvalidArgument,
    IOError,
    LibrbdAbort,
    LogicError,
    NoSpace,
    ObjectExists,
    ObjectNotFound,
    OperationCanceled,
    OperationNotSupported,
    OSError,
    PermissionError,
    ReadOnlyImage,
    Timeout,
    make_ex,
)
from .rados import Ioctx

__all__ = [
    "ArgumentOutOfRange",
    "ConnectionShutdown",
    "DiskQuotaExceeded",
    "ECANCELED",
    "Error",
    "FunctionNotSupported",
    "ImageBusy",
    "ImageExists",
    "ImageHasSnapshots",
    "ImageNotFound",
    "IncompleteWriteError",
    "InvalidArgument",
    "IOError",
    "LibrbdAbort",
    "LogicError",
    "NoSpace",
    "ObjectExists",
    "ObjectNotFound",
    "OperationCanceled",
    "OperationNotSupported",
    "OSError",
    "PermissionError",
    "ReadOnlyImage",
    "Timeout",
    "RBD",
    "Image",
    "RBD_FEATURE_LAYERING",
    "RBD_FEATURE_STRIPINGV2",
    "RBD_FEATURE_EXCLUSIVE_LOCK",
    "RBD_FEATURE_OBJECT_MAP",
    "RBD_FEATURE_FAST_DIFF",
    "RBD_FEATURE_DEEP_FLATTEN",
    "RBD_FEATURE_JOURNALING",
    "RBD_FEATURE_DATA_POOL",
    "RBD_FEATURES_ALL",
    "RBD_SNAP_NAMESPACE_TYPE_USER",
]

RBD_FEATURE_STRIPINGV2 = 2
RBD_FEATURE_JOURNALING = 64
RBD_FEATURE_DATA_POOL = 128
RBD_FEATURES_ALL = 4095
RBD_SNAP_NAMESPACE_TYPE_USER = 0

#: rbd_default_features of Pacific: layering, exclusive-lock, object-map, fast-diff, deep-flatten.
DEFAULT_FEATURES = (
    RBD_FEATURE_LAYERING
    | RBD_FEATURE_EXCLUSIVE_LOCK
    | RBD_FEATURE_OBJECT_MAP
    | RBD_FEATURE_FAST_DIFF
    | RBD_FEATURE_DEEP_FLATTEN
)
DEFAULT_ORDER = 22
MIN_ORDER = 12
MAX_ORDER = 25
_UINT64_MAX = (1 << 64) - 1


# ---------------------------------------------------------------- argument helpers


def _cstr(value, what: str, opt: bool = False) -> str | None:
    """Like python-rbd's cstr: str or bytes, anything else is InvalidArgument."""
    if opt and value is None:
        return None
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, str):
        return value
    raise InvalidArgument(f"{what} must be a string")


def _u64(value, what: str = "value") -> int:
    """Like a Cython uint64_t argument: ints only, negative or too big is OverflowError."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"an integer is required for {what}")
    if value < 0:
        raise OverflowError("can't convert negative value to uint64_t")
    if value > _UINT64_MAX:
        raise OverflowError("int too big to convert")
    return value


def _b(value: str | None) -> str:
    """How python-rbd renders names in messages: repr of the bytes (``b'name'``), or None."""
    return "None" if value is None else repr(value.encode())


def _ioctx(ioctx) -> Ioctx:
    if not isinstance(ioctx, Ioctx):
        raise TypeError(f"Argument 'ioctx' has incorrect type (expected rados.Ioctx, got {type(ioctx).__name__})")
    return ioctx


def _validate_features(features: int) -> None:
    if features & ~RBD_FEATURES_ALL:
        raise InvalidArgument("error creating image", errno=22)
    needs = (
        (RBD_FEATURE_OBJECT_MAP, RBD_FEATURE_EXCLUSIVE_LOCK),
        (RBD_FEATURE_FAST_DIFF, RBD_FEATURE_OBJECT_MAP),
        (RBD_FEATURE_JOURNALING, RBD_FEATURE_EXCLUSIVE_LOCK),
    )
    for feature, required in needs:
        if features & feature and not features & required:
            raise InvalidArgument("error creating image", errno=22)


def _new_meta(image_id: str, name: str, size: int, order: int, features: int, fmt: int) -> dict:
    return {
        "id": image_id,
        "name": name,
        "format": fmt,
        "size": size,
        "order": order,
        "features": features,
        "snap_seq": 0,
        "snaps": [],
        "objmap": {},
        "objects": {},
        "parent": None,
        "children": {},
        "metadata": {},
    }


def _alloc_snap_id(store, pool_id: int) -> int:
    pool = store.pool(pool_id, fresh=True)
    snap_id = pool["next_snap_id"]
    pool["next_snap_id"] = snap_id + 1
    store.save_pool(pool_id, pool)
    return snap_id


def _unregister_child(store, child_pool_id: int, child_meta: dict) -> None:
    """Drop the child from its parent's children unless some snapshot of it still has that parent."""
    links = [child_meta["parent"]] + [s.get("parent") for s in child_meta["snaps"]]
    links = [link for link in links if link is not None]
    if not links:
        return
    for link in links:
        parent = store.image(link["pool_id"], link["image_id"], fresh=True)
        if parent is None:
            continue
        key = str(link["snap_id"])
        entry = [child_pool_id, child_meta["id"]]
        children = parent["children"].get(key, [])
        if entry in children:
            children.remove(entry)
            if not children:
                parent["children"].pop(key, None)
            store.save_image(link["pool_id"], parent)


# ---------------------------------------------------------------- RBD


class RBD:
    """Image-level operations on a pool (create, clone, list, remove, rename)."""

    def version(self) -> tuple[int, int, int]:
        return (1, 16, 0)

    def pool_init(self, ioctx, force: bool = False) -> None:
        _ioctx(ioctx).require_ioctx_open()

    def create(self, ioctx, name, size, order=None, old_format=False, features=None, stripe_unit=None,
               stripe_count=None, data_pool=None) -> None:  # fmt: skip
        """Create an image of ``size`` bytes split into ``2**order``-byte objects (order 12..25,
        default 22). Raises ImageExists, InvalidArgument, ArgumentOutOfRange like the real module."""
        io = _ioctx(ioctx)
        name = _cstr(name, "name")
        size = _u64(size, "size")
        if old_format and (features or stripe_unit or stripe_count or data_pool):
            raise InvalidArgument("format 1 images do not support feature masks, non-default striping, nor data pool")
        if stripe_unit or (stripe_count not in (None, 0, 1)) or data_pool:
            raise FunctionNotSupported("fake ceph: striping and data pools are not supported", errno=38)
        order = DEFAULT_ORDER if not order else _u64(order, "order")
        if not MIN_ORDER <= order <= MAX_ORDER:
            raise ArgumentOutOfRange("error creating image", errno=33)
        if old_format:
            features, fmt = 0, 1
        else:
            features = DEFAULT_FEATURES if features is None else _u64(features, "features")
            _validate_features(features)
            fmt = 2
        if not name:
            raise InvalidArgument("error creating image", errno=22)
        store = io.store
        with store.lock(exclusive=True):
            pool = store.pool(io.pool_id, fresh=True)
            if pool is None:
                raise ImageNotFound("error creating image", errno=2)
            if name in pool["images"]:
                raise ImageExists("error creating image", errno=17)
            image_id = store.new_image_dir(io.pool_id)
            store.save_image(io.pool_id, _new_meta(image_id, name, size, order, features, fmt))
            pool["images"][name] = image_id
            store.save_pool(io.pool_id, pool)

    def clone(self, p_ioctx, p_name, p_snapname, c_ioctx, c_name, features=None, order=None, stripe_unit=None,
              stripe_count=None, data_pool=None) -> None:  # fmt: skip
        """Clone a protected parent snapshot into a copy-on-write child (clone format 1)."""
        p_io, c_io = _ioctx(p_ioctx), _ioctx(c_ioctx)
        p_snapname = _cstr(p_snapname, "p_snapname")
        p_name = _cstr(p_name, "p_name")
        c_name = _cstr(c_name, "c_name")
        if stripe_unit or (stripe_count not in (None, 0, 1)) or data_pool:
            raise FunctionNotSupported("fake ceph: striping and data pools are not supported", errno=38)
        store = p_io.store
        with store.lock(exclusive=True):
            p_pool = store.pool(p_io.pool_id)
            parent_id = None if p_pool is None else p_pool["images"].get(p_name)
            parent = None if parent_id is None else store.image(p_io.pool_id, parent_id, fresh=True)
            if parent is None:
                raise ImageNotFound("error creating clone", errno=2)
            snap = next((s for s in parent["snaps"] if s["name"] == p_snapname), None)
            if snap is None:
                raise ImageNotFound("error creating clone", errno=2)
            if not parent["features"] & RBD_FEATURE_LAYERING or not snap["protected"]:
                raise InvalidArgument("error creating clone", errno=22)
            if features is None:
                features = DEFAULT_FEATURES
            features = _u64(features, "features")
            if not features & RBD_FEATURE_LAYERING:
                raise InvalidArgument("error creating clone", errno=22)
            _validate_features(features)
            order = parent["order"] if not order else _u64(order, "order")
            if not MIN_ORDER <= order <= MAX_ORDER:
                raise ArgumentOutOfRange("error creating clone", errno=33)
            c_pool = store.pool(c_io.pool_id, fresh=True)
            if c_pool is None:
                raise ImageNotFound("error creating clone", errno=2)
            if c_name in c_pool["images"]:
                raise ImageExists("error creating clone", errno=17)
            child_id = store.new_image_dir(c_io.pool_id)
            child = _new_meta(child_id, c_name, snap["size"], order, features, 2)
            child["parent"] = {
                "pool_id": p_io.pool_id,
                "image_id": parent_id,
                "snap_id": snap["id"],
                "overlap": snap["size"],
            }
            store.save_image(c_io.pool_id, child)
            parent["children"].setdefault(str(snap["id"]), []).append([c_io.pool_id, child_id])
            store.save_image(p_io.pool_id, parent)
            c_pool["images"][c_name] = child_id
            store.save_pool(c_io.pool_id, c_pool)

    def list(self, ioctx) -> list[str]:
        io = _ioctx(ioctx)
        store = io.store
        with store.lock(exclusive=False):
            pool = store.pool(io.pool_id)
            return sorted(pool["images"]) if pool else []

    def remove(self, ioctx, name, on_progress=None) -> None:
        """Delete an image: ImageNotFound, ImageHasSnapshots (checked first), ImageBusy (rw-open)."""
        io = _ioctx(ioctx)
        name = _cstr(name, "name")
        store = io.store
        with store.lock(exclusive=True):
            pool = store.pool(io.pool_id, fresh=True)
            image_id = None if pool is None else pool["images"].get(name)
            meta = None if image_id is None else store.image(io.pool_id, image_id)
            if meta is None:
                raise ImageNotFound("error removing image", errno=2)
            if meta["snaps"]:
                raise ImageHasSnapshots("error removing image", errno=39)
            if _has_watchers(store.image_dir(io.pool_id, image_id)):
                raise ImageBusy("error removing image", errno=16)
            _unregister_child(store, io.pool_id, meta)
            del pool["images"][name]
            store.save_pool(io.pool_id, pool)
            store.delete_image_dir(io.pool_id, image_id)
        if on_progress is not None:
            on_progress(1, 1)

    def rename(self, ioctx, src, dest) -> None:
        io = _ioctx(ioctx)
        src = _cstr(src, "src")
        dest = _cstr(dest, "dest")
        store = io.store
        with store.lock(exclusive=True):
            pool = store.pool(io.pool_id, fresh=True)
            if pool is None or src not in pool["images"]:
                raise ImageNotFound("error renaming image", errno=2)
            if dest in pool["images"]:
                raise ImageExists("error renaming image", errno=17)
            image_id = pool["images"].pop(src)
            pool["images"][dest] = image_id
            meta = store.image(io.pool_id, image_id, fresh=True)
            meta["name"] = dest
            store.save_image(io.pool_id, meta)
            store.save_pool(io.pool_id, pool)


def _has_watchers(image_dir: str) -> bool:
    try:
        fd = os.open(os.path.join(image_dir, "watch"), os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


# ---------------------------------------------------------------- Image


class Image:
    """An open image, at its head or (``snapshot``) at a snapshot, which makes it read-only.

    A handle opened without ``read_only`` is a watcher: while it is open ``RBD.remove`` raises ImageBusy.
    Methods may be called from several threads at once.
    """

    def __init__(self, ioctx, name=None, snapshot=None, read_only=False, image_id=None, _oncomplete=None):
        io = _ioctx(ioctx)
        self._closed = True
        self._watch_fd: int | None = None
        name = _cstr(name, "name", opt=True)
        snapshot = _cstr(snapshot, "snapshot", opt=True)
        image_id = _cstr(image_id, "image_id", opt=True)
        if (name is None) == (image_id is None):
            raise InvalidArgument("either name or id must be specified")
        self._store = io.store
        self._pool_id = io.pool_id
        self._read_only = bool(read_only)
        with self._store.lock(exclusive=False):
            pool = self._store.pool(io.pool_id)
            if name is not None:
                image_id = None if pool is None else pool["images"].get(name)
            meta = None if image_id is None else self._store.image(io.pool_id, image_id)
            if meta is None:
                raise ImageNotFound(f"error opening image {_b(name or image_id)} at snapshot {_b(snapshot)}", errno=2)
            snap_id = None
            if snapshot is not None:
                snap = next((s for s in meta["snaps"] if s["name"] == snapshot), None)
                if snap is None:
                    raise ImageNotFound(f"error opening image {_b(name or image_id)} at snapshot {_b(snapshot)}",
                                        errno=2)  # fmt: skip
                snap_id = snap["id"]
            if not self._read_only:
                self._watch_fd = os.open(
                    os.path.join(self._store.image_dir(io.pool_id, image_id), "watch"), os.O_RDWR | os.O_CLOEXEC
                )
                fcntl.flock(self._watch_fd, fcntl.LOCK_SH)
        self._id = image_id
        self.name = meta["name"] if name is None else name
        self._snap_id = snap_id
        self._snap_name = snapshot
        self._closed = False
        self._close_lock = threading.Lock()

    # ---- lifecycle

    def close(self) -> None:
        with getattr(self, "_close_lock", threading.Lock()):
            if self._closed:
                return
            self._closed = True
            if self._watch_fd is not None:
                os.close(self._watch_fd)  # releases the watch
                self._watch_fd = None

    def __enter__(self):
        return self

    def __exit__(self, type_, value, traceback):
        self.close()
        return False

    def __del__(self):
        try:
            self.close()
        except Exception:  # pragma: no cover
            pass

    def __repr__(self) -> str:
        return f"rbd.Image(ioctx, {_b(self.name)})"

    def require_not_closed(self) -> None:
        if self._closed:
            raise InvalidArgument("image is closed")

    # ---- state access

    def _meta(self, fresh: bool = False) -> dict:
        meta = self._store.image(self._pool_id, self._id, fresh=fresh)
        if meta is None:
            raise ImageNotFound(f"image {_b(self.name)} was removed", errno=2)
        return meta

    def _snap(self, meta: dict) -> dict | None:
        if self._snap_id is None:
            return None
        snap = next((s for s in meta["snaps"] if s["id"] == self._snap_id), None)
        if snap is None:
            raise ImageNotFound(f"snapshot {_b(self._snap_name)} of image {_b(self.name)} was removed", errno=2)
        return snap

    def _view(self) -> _image.View:
        meta = self._meta()
        return _image.View(self._store, self._pool_id, meta, self._snap(meta))

    def _find_snap(self, meta: dict, name: str) -> dict | None:
        return next((s for s in meta["snaps"] if s["name"] == name), None)

    def _check_writable(self, message: str) -> None:
        if self._read_only or self._snap_id is not None:
            raise ReadOnlyImage(message, errno=30)

    def _check_not_read_only(self, message: str) -> None:
        if self._read_only:
            raise ReadOnlyImage(message, errno=30)

    def _mutate(self):
        """Context for a change of the head: exclusive lock, fresh metadata, Mutation; saved on success."""
        return _Mutating(self)

    # ---- information

    def get_name(self) -> str:
        self.require_not_closed()
        return self.name

    def id(self) -> str:
        self.require_not_closed()
        return self._id

    def block_name_prefix(self) -> str:
        self.require_not_closed()
        return f"rbd_data.{self._id}"

    def size(self) -> int:
        self.require_not_closed()
        with self._store.lock(exclusive=False):
            return self._view().size

    def stat(self) -> dict:
        self.require_not_closed()
        with self._store.lock(exclusive=False):
            view = self._view()
            return {
                "size": view.size,
                "obj_size": view.obj_size,
                "num_objs": _image.num_objects(view.size, view.obj_size),
                "order": view.meta["order"],
                "block_name_prefix": f"rbd_data.{self._id}",
                "parent_pool": _UINT64_MAX,
                "parent_name": b"",
            }

    def features(self) -> int:
        self.require_not_closed()
        with self._store.lock(exclusive=False):
            return self._meta()["features"]

    def old_format(self) -> bool:
        self.require_not_closed()
        with self._store.lock(exclusive=False):
            return self._meta()["format"] == 1

    def overlap(self) -> int:
        self.require_not_closed()
        with self._store.lock(exclusive=False):
            return self._view().overlap

    def parent_info(self) -> tuple[str, str, str]:
        """(parent pool, parent image, parent snapshot); ImageNotFound when the image has no parent."""
        self.require_not_closed()
        with self._store.lock(exclusive=False):
            view = self._view()
            link = view.parent_link
            if link is None:
                raise ImageNotFound(f"error getting parent info for image {_b(self.name)}", errno=2)
            parent = view.parent()
            return (self._store.pool_name(link["pool_id"]), parent.meta["name"], parent.snap["name"])

    def parent_id(self) -> str:
        self.require_not_closed()
        with self._store.lock(exclusive=False):
            link = self._view().parent_link
            if link is None:
                raise ImageNotFound(f"error getting parent id for image {_b(self.name)}", errno=2)
            return link["image_id"]

    # ---- data

    def read(self, offset, length, fadvise_flags=0) -> bytes:
        """Bytes [offset, offset+length); short at the end of the image; InvalidArgument when offset is
        at or past the end (and length > 0)."""
        self.require_not_closed()
        offset, length = _u64(offset, "offset"), _u64(length, "length")
        if length == 0:
            return b""
        with self._store.lock(exclusive=False):
            view = self._view()
            try:
                if offset >= view.size:
                    raise InvalidArgument(f"error reading {_b(self.name)} {offset}~{length}", errno=22)
                length = min(length, view.size - offset)
                buf = bytearray(length)
                _image.read_into(view, offset, offset + length, memoryview(buf))
            finally:
                view.close()
        return bytes(buf)

    def write(self, data, offset, fadvise_flags=0) -> int:
        """Write bytes at offset; InvalidArgument at/after the end, IncompleteWriteError (after writing
        what fits) when the data runs past the end."""
        self.require_not_closed()
        if not isinstance(data, bytes):
            raise TypeError("data must be a byte string")
        offset = _u64(offset, "offset")
        self._check_writable(f"error writing to {_b(self.name)}")
        if not data:
            return 0
        with self._mutate() as m:
            size = m.meta["size"]
            if offset >= size:
                raise InvalidArgument(f"error writing to {_b(self.name)}", errno=22)
            written = min(len(data), size - offset)
            m.write(offset, data[:written] if written < len(data) else data)
        if written < len(data):
            raise IncompleteWriteError(f"Wrote only {written} out of {len(data)} bytes")
        return written

    def discard(self, offset, length) -> None:
        self.require_not_closed()
        offset, length = _u64(offset, "offset"), _u64(length, "length")
        self._check_writable(f"error discarding region {offset}~{length}")
        if length == 0:
            return
        with self._mutate() as m:
            size = m.meta["size"]
            if offset >= size:
                raise InvalidArgument(f"error discarding region {offset}~{length}", errno=22)
            m.discard(offset, min(length, size - offset))

    def flush(self) -> None:
        self.require_not_closed()

    def resize(self, size, allow_shrink=True) -> None:
        self.require_not_closed()
        size = _u64(size, "size")
        self._check_writable(f"error resizing image {_b(self.name)}")
        with self._mutate() as m:
            if size < m.meta["size"] and not allow_shrink:
                raise InvalidArgument(f"error resizing image {_b(self.name)}", errno=22)
            m.resize(size)

    def flatten(self, on_progress=None) -> None:
        """Copy all parent data into the image and detach it (and, with deep-flatten, its snapshots)."""
        self.require_not_closed()
        self._check_writable(f"error flattening {_b(self.name)}")
        with self._mutate() as m:
            if m.meta["parent"] is None:
                raise InvalidArgument(f"error flattening {_b(self.name)}", errno=22)
            m.flatten()
            before = {**m.meta, "snaps": [dict(s) for s in m.meta["snaps"]]}
            m.meta["parent"] = None
            if m.meta["features"] & RBD_FEATURE_DEEP_FLATTEN:
                for snap in m.meta["snaps"]:
                    snap["parent"] = None
            m.save()
            m.saved = True
            still = [s.get("parent") for s in m.meta["snaps"] if s.get("parent")]
            if not still:
                _unregister_child(self._store, self._pool_id, before)
        if on_progress is not None:
            on_progress(1, 1)

    # ---- snapshots

    def create_snap(self, name, flags=0) -> None:
        self.require_not_closed()
        name = _cstr(name, "name")
        self._check_not_read_only(f"error creating snapshot {_b(name)} from {_b(self.name)}")
        with self._mutate() as m:
            if self._find_snap(m.meta, name) is not None:
                raise ImageExists(f"error creating snapshot {_b(name)} from {_b(self.name)}", errno=17)
            m.create_snap(_alloc_snap_id(self._store, self._pool_id), name, time.time())

    def remove_snap(self, name) -> None:
        """ImageNotFound for a missing snapshot, ImageBusy while it is protected."""
        self.require_not_closed()
        name = _cstr(name, "name")
        self._check_not_read_only(f"error removing snapshot {_b(name)} from {_b(self.name)}")
        with self._mutate() as m:
            snap = self._find_snap(m.meta, name)
            if snap is None:
                raise ImageNotFound(f"error removing snapshot {_b(name)} from {_b(self.name)}", errno=2)
            if snap["protected"]:
                raise ImageBusy(f"error removing snapshot {_b(name)} from {_b(self.name)}", errno=16)
            m.remove_snap(snap["id"])
            if snap.get("parent") is not None:
                m.save()
                m.saved = True
                self._unlink_snapshot_parent(m.meta, snap)

    def _unlink_snapshot_parent(self, meta: dict, removed: dict) -> None:
        link = removed["parent"]
        links = [meta["parent"]] + [s.get("parent") for s in meta["snaps"]]
        if any(x is not None and x["image_id"] == link["image_id"] for x in links):
            return
        _unregister_child(self._store, self._pool_id, {"id": meta["id"], "parent": link, "snaps": []})

    def list_snaps(self) -> Iterator[dict]:
        """Iterator of ``{"id", "size", "name", "namespace"}``, oldest first."""
        self.require_not_closed()
        with self._store.lock(exclusive=False):
            snaps = self._meta()["snaps"]
            out = [{"id": s["id"], "size": s["size"], "name": s["name"], "namespace": 0} for s in snaps]
        return iter(out)

    def protect_snap(self, name) -> None:
        self._set_protection(name, True)

    def unprotect_snap(self, name) -> None:
        self._set_protection(name, False)

    def _set_protection(self, name, protect: bool) -> None:
        self.require_not_closed()
        name = _cstr(name, "name")
        verb = "protecting" if protect else "unprotecting"
        msg = f"error {verb} snapshot {_b(self.name)}@{_b(name)}"
        self._check_not_read_only(msg)
        with self._mutate() as m:
            snap = self._find_snap(m.meta, name)
            if snap is None:
                raise ImageNotFound(msg, errno=2)
            if protect:
                if snap["protected"]:
                    raise ImageBusy(msg, errno=16)
            else:
                if not snap["protected"]:
                    raise InvalidArgument(msg, errno=22)
                if m.meta["children"].get(str(snap["id"])):
                    raise ImageBusy(msg, errno=16)
            snap["protected"] = protect

    def is_protected_snap(self, name) -> bool:
        self.require_not_closed()
        name = _cstr(name, "name")
        with self._store.lock(exclusive=False):
            snap = self._find_snap(self._meta(), name)
        if snap is None:
            raise ImageNotFound(f"error checking if snapshot {_b(self.name)}@{_b(name)} is protected", errno=2)
        return snap["protected"]

    # ---- clones

    def _children(self) -> list[tuple[int, str, str]]:
        """(pool id, pool name, image id) of the children: of every snapshot at the head, else of the
        open snapshot."""
        meta = self._meta()
        keys = [str(self._snap_id)] if self._snap_id is not None else list(meta["children"])
        out = []
        for key in keys:
            for pool_id, image_id in meta["children"].get(key, []):
                out.append((pool_id, self._store.pool_name(pool_id), image_id))
        return out

    def list_children(self) -> list[tuple[str, str]]:
        """[(pool name, image name)] of the clones of this image's snapshot(s)."""
        self.require_not_closed()
        with self._store.lock(exclusive=False):
            out = []
            for pool_id, pool_name, image_id in self._children():
                child = self._store.image(pool_id, image_id)
                if child is not None:
                    out.append((pool_name, child["name"]))
        return sorted(out)

    def list_children2(self) -> list[dict]:
        self.require_not_closed()
        with self._store.lock(exclusive=False):
            out = []
            for pool_id, pool_name, image_id in self._children():
                child = self._store.image(pool_id, image_id)
                if child is not None:
                    out.append({"pool": pool_name, "pool_namespace": "", "image": child["name"], "id": image_id,
                                "trash": False})  # fmt: skip
        return sorted(out, key=lambda c: (c["pool"], c["image"]))

    # ---- diff

    def diff_iterate(self, offset, length, from_snapshot, iterate_cb, include_parent=True, whole_object=False):
        """Call ``iterate_cb(offset, length, exists)`` for every changed extent, in offset order.

        From ``from_snapshot`` (None: the beginning of time) to the open view. ImageNotFound for an
        unknown snapshot, InvalidArgument when it is newer than the open view or offset is at/after the
        end. An exception in the callback stops the iteration and propagates; a negative int returned
        stops it with the matching rbd error.
        """
        self.require_not_closed()
        offset, length = _u64(offset, "offset"), _u64(length, "length")
        from_name = _cstr(from_snapshot, "from_snapshot", opt=True)
        with self._store.lock(exclusive=False):
            view = self._view()
            try:
                from_snap = None
                if from_name is not None:
                    from_snap = self._find_snap(view.meta, from_name)
                    if from_snap is None:
                        raise ImageNotFound(f"error generating diff from snapshot {_b(from_name)}", errno=2)
                if length and offset >= view.size:
                    raise InvalidArgument(f"error generating diff from snapshot {_b(from_name)}", errno=22)
                length = min(length, view.size - offset) if length else 0
                try:
                    extents = _image.diff_iterate(view, offset, length, from_snap, include_parent, whole_object)
                except InvalidArgument as e:
                    raise InvalidArgument(f"error generating diff from snapshot {_b(from_name)}", errno=22) from e
            finally:
                view.close()
        for ext_offset, ext_length, exists in extents:
            ret = iterate_cb(ext_offset, ext_length, exists)
            if isinstance(ret, int) and not isinstance(ret, bool) and ret < 0:
                raise make_ex(ret, f"error generating diff from snapshot {_b(from_name)}")
        return 0

    # ---- metadata

    def metadata_get(self, key) -> str:
        self.require_not_closed()
        key = _cstr(key, "key")
        with self._store.lock(exclusive=False):
            value = self._meta()["metadata"].get(key)
        if value is None:
            raise KeyError(f"no metadata {_b(key)} for image {_b(self.name)}")
        return value

    def metadata_set(self, key, value) -> None:
        self.require_not_closed()
        key, value = _cstr(key, "key"), _cstr(value, "value")
        self._check_not_read_only(f"error setting metadata {_b(key)} for image {_b(self.name)}")
        with self._mutate() as m:
            m.meta["metadata"][key] = value

    def metadata_remove(self, key) -> None:
        self.require_not_closed()
        key = _cstr(key, "key")
        self._check_not_read_only(f"error removing metadata {_b(key)} for image {_b(self.name)}")
        with self._mutate() as m:
            if key not in m.meta["metadata"]:
                raise KeyError(f"no metadata {_b(key)} for image {_b(self.name)}")
            del m.meta["metadata"][key]

    def metadata_list(self) -> Iterator[tuple[str, str]]:
        self.require_not_closed()
        with self._store.lock(exclusive=False):
            items = sorted(self._meta()["metadata"].items())
        return iter(items)


class _Mutating:
    """``with image._mutate() as m``: exclusive lock, fresh metadata, save on success."""

    def __init__(self, image: Image) -> None:
        self.image = image
        self._lock = image._store.lock(exclusive=True)
        self.mutation: _image.Mutation | None = None

    def __enter__(self) -> _image.Mutation:
        self._lock.__enter__()
        try:
            meta = self.image._meta(fresh=True)
            self.mutation = _image.Mutation(self.image._store, self.image._pool_id, meta)
            return self.mutation
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise

    def __exit__(self, exc_type, exc, tb):
        try:
            m = self.mutation
            try:
                if exc_type is None and not m.saved:
                    m.save()
            finally:
                m.close()
        finally:
            self._lock.__exit__(exc_type, exc, tb)
        return False
