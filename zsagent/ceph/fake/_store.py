"""On-disk state of a fake cluster, and the lock that makes it safe for threads and processes.

Layout under ``fake_root``::

    .lock                         fcntl lock file: shared for reads, exclusive for every change
    cluster.json                  {"fsid", "next_pool_id", "pools": {name: pool_id}}
    pools/<pool_id>/pool.json     {"name", "next_snap_id", "images": {image name: image id}}
    pools/<pool_id>/<image_id>/   one directory per image, named by its id (renames touch pool.json only)
        meta.json                 the image: size, order, features, snapshots, object records, ...
        head.data                 sparse file, byte i of the image at offset i (the head objects)
        clone-<id>.data           sparse file holding the OSD clones made with that clone id
        watch                     rw-open Image handles hold a shared flock on it (the "watchers")
    pools/<pool_id>/objects/      RADOS objects made through the object API (Ioctx.write_full, omap, locks...)
        <sha1 of nspace NUL oid>.json   one object: data, xattrs, omap, locks (format in ``_objects``)

JSON files are replaced atomically (write to a temp file, fsync-free rename). Parsed JSON is cached per
file keyed by (inode, mtime, size), so repeated reads of an unchanged image cost one ``stat``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import json
import os
import secrets
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_ZERO_CHUNK_BYTES = 1 << 20
#: parsed JSON files kept per process (each holds one open file descriptor)
_CACHE_ENTRIES = 256

try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    _fallocate = _libc.fallocate
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    _fallocate.restype = ctypes.c_int
except (OSError, AttributeError):  # pragma: no cover - non-glibc systems
    _fallocate = None


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Make [offset, offset+length) of the file read as zeros without growing it."""
    if length <= 0:
        return
    size = os.fstat(fd).st_size
    if offset >= size:
        return
    length = min(length, size - offset)
    if _fallocate is not None and _fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return
    zeros = bytes(min(length, _ZERO_CHUNK_BYTES))
    done = 0
    while done < length:
        n = min(len(zeros), length - done)
        os.pwrite(fd, zeros[:n], offset + done)
        done += n


class StoreLock:
    """A reader/writer lock over the whole fake cluster: a thread-reentrant fcntl.flock on ``.lock``.

    Each outermost acquisition opens its own file description, so threads of one process exclude each
    other just like processes do. Nested acquisitions in the same thread reuse the outer one; asking for
    exclusive inside shared is a programming error.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._local = threading.local()

    @contextlib.contextmanager
    def __call__(self, exclusive: bool) -> Iterator[None]:
        local = self._local
        depth = getattr(local, "depth", 0)
        if depth:
            if exclusive and not local.exclusive:
                raise RuntimeError("fake ceph: exclusive lock requested while holding the shared lock")
            local.depth = depth + 1
            try:
                yield
            finally:
                local.depth -= 1
            return
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            local.depth = 1
            local.exclusive = exclusive
            try:
                yield
            finally:
                local.depth = 0
        finally:
            os.close(fd)  # closing the last descriptor releases the flock


class Store:
    """Paths, JSON state and the lock of one fake cluster directory. One instance per root per process."""

    def __init__(self, root: str) -> None:
        self.root = root
        os.makedirs(os.path.join(root, "pools"), exist_ok=True)
        self.lock = StoreLock(os.path.join(root, ".lock"))
        self._cache: OrderedDict[str, tuple[tuple[int, int, int], dict, int]] = OrderedDict()
        self._cache_lock = threading.Lock()
        with self.lock(exclusive=True):
            if not os.path.exists(self._cluster_path):
                self._save(self._cluster_path, {"fsid": str(uuid.uuid4()), "next_pool_id": 1, "pools": {}})

    # ------------------------------------------------------------ json files

    @property
    def _cluster_path(self) -> str:
        return os.path.join(self.root, "cluster.json")

    def _load(self, path: str, fresh: bool) -> dict | None:
        """The parsed file, or None when missing. Cached objects must not be mutated: pass fresh=True
        to get a private copy to modify and save.

        A cache entry keeps the file it was read from open, so that its inode cannot be reused by a
        later replacement: (inode, mtime, size) then reliably tells whether the file changed, even when
        two saves land within one timestamp tick and have the same size.
        """
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if not fresh:
            with self._cache_lock:
                hit = self._cache.get(path)
                if hit is not None and hit[0] == key:
                    self._cache.move_to_end(path)
                    return hit[1]
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)
            with os.fdopen(os.dup(fd), "rb") as f:
                obj = json.loads(f.read())
        except BaseException:
            os.close(fd)
            raise
        if fresh:
            os.close(fd)
            return obj
        with self._cache_lock:
            old = self._cache.pop(path, None)
            if old is not None:
                os.close(old[2])
            self._cache[path] = ((st.st_ino, st.st_mtime_ns, st.st_size), obj, fd)
            while len(self._cache) > _CACHE_ENTRIES:
                _, (_, _, evicted_fd) = self._cache.popitem(last=False)
                os.close(evicted_fd)
        return obj

    def _save(self, path: str, obj: dict) -> None:
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "w") as f:
            json.dump(obj, f, separators=(",", ":"))
        os.replace(tmp, path)
        with self._cache_lock:
            old = self._cache.pop(path, None)
            if old is not None:
                os.close(old[2])

    def _remove_cached(self, prefix: str) -> None:
        with self._cache_lock:
            for path in [p for p in self._cache if p.startswith(prefix)]:
                os.close(self._cache.pop(path)[2])

    # ------------------------------------------------------------ cluster and pools

    def cluster(self, fresh: bool = False) -> dict:
        obj = self._load(self._cluster_path, fresh)
        if obj is None:
            raise FileNotFoundError(errno.ENOENT, "fake ceph cluster state is missing", self._cluster_path)
        return obj

    def save_cluster(self, obj: dict) -> None:
        self._save(self._cluster_path, obj)

    def pool_dir(self, pool_id: int) -> str:
        return os.path.join(self.root, "pools", str(pool_id))

    def pool_id(self, name: str) -> int | None:
        return self.cluster()["pools"].get(name)

    def pool_name(self, pool_id: int) -> str | None:
        pool = self.pool(pool_id)
        return None if pool is None else pool["name"]

    def pool(self, pool_id: int, fresh: bool = False) -> dict | None:
        return self._load(os.path.join(self.pool_dir(pool_id), "pool.json"), fresh)

    def save_pool(self, pool_id: int, obj: dict) -> None:
        self._save(os.path.join(self.pool_dir(pool_id), "pool.json"), obj)

    def create_pool(self, name: str) -> int:
        cluster = self.cluster(fresh=True)
        pool_id = cluster["next_pool_id"]
        cluster["next_pool_id"] = pool_id + 1
        os.makedirs(self.pool_dir(pool_id), exist_ok=True)
        self.save_pool(pool_id, {"name": name, "next_snap_id": 1, "images": {}})
        cluster["pools"][name] = pool_id
        self.save_cluster(cluster)
        return pool_id

    def delete_pool(self, name: str) -> None:
        cluster = self.cluster(fresh=True)
        pool_id = cluster["pools"].pop(name)
        self.save_cluster(cluster)
        directory = self.pool_dir(pool_id)
        self._remove_cached(directory)
        _rmtree(directory)

    # ------------------------------------------------------------ images

    def image_dir(self, pool_id: int, image_id: str) -> str:
        return os.path.join(self.pool_dir(pool_id), image_id)

    def image(self, pool_id: int, image_id: str, fresh: bool = False) -> dict | None:
        return self._load(os.path.join(self.image_dir(pool_id, image_id), "meta.json"), fresh)

    def save_image(self, pool_id: int, meta: dict) -> None:
        self._save(os.path.join(self.image_dir(pool_id, meta["id"]), "meta.json"), meta)

    def new_image_dir(self, pool_id: int) -> str:
        while True:
            image_id = secrets.token_hex(6)
            path = self.image_dir(pool_id, image_id)
            try:
                os.mkdir(path)
            except FileExistsError:
                continue
            with open(os.path.join(path, "head.data"), "wb"):
                pass
            with open(os.path.join(path, "watch"), "wb"):
                pass
            return image_id

    def delete_image_dir(self, pool_id: int, image_id: str) -> None:
        directory = self.image_dir(pool_id, image_id)
        self._remove_cached(directory)
        _rmtree(directory)

    # ------------------------------------------------------------ RADOS objects

    def _objects_dir(self, pool_id: int) -> str:
        return os.path.join(self.pool_dir(pool_id), "objects")

    def _object_path(self, pool_id: int, nspace: str, key: str) -> str:
        name = hashlib.sha1(f"{nspace}\0{key}".encode()).hexdigest()
        return os.path.join(self._objects_dir(pool_id), f"{name}.json")

    def rados_object(self, pool_id: int, nspace: str, key: str, fresh: bool = False) -> dict | None:
        """The object's state (see ``_objects``), or None when it does not exist."""
        return self._load(self._object_path(pool_id, nspace, key), fresh)

    def save_rados_object(self, pool_id: int, obj: dict) -> None:
        os.makedirs(self._objects_dir(pool_id), exist_ok=True)
        self._save(self._object_path(pool_id, obj["nspace"], obj["key"]), obj)

    def remove_rados_object(self, pool_id: int, nspace: str, key: str) -> None:
        path = self._object_path(pool_id, nspace, key)
        self._remove_cached(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def rados_objects(self, pool_id: int) -> list[dict]:
        """Every object of the pool, in all namespaces."""
        try:
            names = os.listdir(self._objects_dir(pool_id))
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            if name.endswith(".json"):
                obj = self._load(os.path.join(self._objects_dir(pool_id), name), fresh=False)
                if obj is not None:
                    found.append(obj)
        return found


def _rmtree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


_stores: dict[str, Store] = {}
_stores_lock = threading.Lock()


def open_store(root: str) -> Store:
    """The process-wide Store for ``root`` (created on first use)."""
    key = os.path.realpath(root)
    with _stores_lock:
        store = _stores.get(key)
        if store is None or not os.path.isdir(os.path.join(key, "pools")):
            store = Store(key)
            _stores[key] = store
        return store
