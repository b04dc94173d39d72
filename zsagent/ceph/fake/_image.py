"""The librbd layer of the fake: how image-level calls turn into object operations, reads and diffs.

An image's metadata (``meta.json``, see ``_store``) holds, besides sizes and names:

- ``objects``: the per-object records of ``_osd`` (keys are ``str(object_no)``);
- ``objmap``: the head object map, ``{str(object_no): state}`` with the librbd states below (absent =
  nonexistent); every snapshot keeps a frozen copy in ``snaps[i]["objmap"]``;
- ``parent``: ``{"pool_id", "image_id", "snap_id", "overlap"}`` for a clone (overlap in bytes), the same
  per snapshot in ``snaps[i]["parent"]``; ``children``: ``{str(snap_id): [[pool_id, image_id], ...]}``.

The rules encoded here were measured on Ceph Pacific 16.2.15 (librbd with the default features
layering, exclusive-lock, object-map, fast-diff, deep-flatten; memstore OSD) and are pinned by
``tests/contract``. Where a rule looks odd (for example a zero-length clone object reporting its
parent's data in diff_iterate) it is because the real cluster does it. The main ones:

- discard: shrunk inward to 64 KiB; per object remove (whole object; in a clone's parent overlap:
  truncate to 0 instead, which hides the parent), truncate (reaches the object end) or zero; ops on
  objects that do not exist are skipped, except in a clone's parent overlap;
- OSD zero reaching the end of an object truncates it; truncate past the end extends it;
- copy-up (first write-type op on a missing clone object inside the overlap): copies the parent's
  sparse-read extents - [0, object size) of an existing parent object, the whole range when the parent
  reads through to its own parent - minus what the op overwrites (all of it when the clone has
  snapshots); all zeros means no copy, but the child object is still created, empty; a real copy also
  marks the object in the clone's snapshot object maps (oldest dirty, later clean);
- shrinking a clone with snapshots first copies up every missing object up to the old overlap;
- diff_iterate: see ``diff_iterate`` below (fast diff from object maps when whole_object and the
  fast-diff feature, else librbd's list-snaps path over the OSD snapshot sets).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from . import _intervals as iv
from . import _osd as osd
from ._rbd_errors import InvalidArgument, LibrbdAbort
from ._store import Store, punch_hole

OBJECT_NONEXISTENT = 0
OBJECT_EXISTS = 1
OBJECT_PENDING = 2
OBJECT_EXISTS_CLEAN = 3

RBD_FEATURE_LAYERING = 1
RBD_FEATURE_EXCLUSIVE_LOCK = 4
RBD_FEATURE_OBJECT_MAP = 8
RBD_FEATURE_FAST_DIFF = 16
RBD_FEATURE_DEEP_FLATTEN = 32

#: rbd_discard_granularity_bytes default: discards are shrunk inward to multiples of this.
DISCARD_GRANULARITY_BYTES = 64 * 1024

#: object diff states of librbd's fast diff: unchanged, changed (data), removed (reported as zeros)
_DIFF_NONE = 0
_DIFF_UPDATED = 1
_DIFF_HOLE = 2

_ZERO_CHUNK_BYTES = 64 * 1024
_ZEROS = bytes(_ZERO_CHUNK_BYTES)


# ---------------------------------------------------------------- data files


class DataFiles:
    """The open data files of one image for the duration of one operation (closed by ``close``)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._fds: dict[int | None, int] = {}

    def _path(self, clone_id: int | None) -> str:
        name = "head.data" if clone_id is None else f"clone-{clone_id}.data"
        return os.path.join(self.directory, name)

    def fd(self, clone_id: int | None, create: bool = False) -> int | None:
        fd = self._fds.get(clone_id)
        if fd is None:
            flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
            try:
                fd = os.open(self._path(clone_id), flags, 0o644)
            except FileNotFoundError:
                return None
            self._fds[clone_id] = fd
        return fd

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def pread_into(self, clone_id: int | None, offset: int, buf: memoryview) -> None:
        fd = self.fd(clone_id)
        if fd is None:
            return
        done = 0
        while done < len(buf):
            n = os.preadv(fd, [buf[done:]], offset + done)
            if n <= 0:
                return  # past the end of a sparse file: the caller's buffer is already zero
            done += n

    def pwrite(self, clone_id: int | None, offset: int, data) -> None:
        """Write data, leaving all-zero 64 KiB chunks as holes (keeps the files sparse)."""
        fd = self.fd(clone_id, create=True)
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            chunk = view[pos : pos + _ZERO_CHUNK_BYTES]
            if chunk == _ZEROS[: len(chunk)]:
                punch_hole(fd, offset + pos, len(chunk))
            else:
                os.pwrite(fd, chunk, offset + pos)
            pos += len(chunk)

    def zero(self, clone_id: int | None, start: int, end: int) -> None:
        fd = self.fd(clone_id)
        if fd is not None:
            punch_hole(fd, start, end - start)

    def drop_clone_file(self, clone_id: int) -> None:
        fd = self._fds.pop(clone_id, None)
        if fd is not None:
            os.close(fd)
        try:
            os.unlink(self._path(clone_id))
        except FileNotFoundError:
            pass


class _ObjectData:
    """``_osd.DataOps`` for one object: object-relative offsets onto the image's files."""

    def __init__(self, files: DataFiles, base: int) -> None:
        self.files = files
        self.base = base

    def copy_head_to_clone(self, clone_id: int, length: int) -> None:
        if length <= 0:
            return
        buf = bytearray(length)
        self.files.pread_into(None, self.base, memoryview(buf))
        self.files.pwrite(clone_id, self.base, buf)

    def zero(self, clone_id: int | None, start: int, end: int) -> None:
        if end > start:
            self.files.zero(clone_id, self.base + start, self.base + end)


# ---------------------------------------------------------------- views


def object_size(meta: dict) -> int:
    return 1 << meta["order"]


def num_objects(size: int, obj_size: int) -> int:
    return (size + obj_size - 1) // obj_size


@dataclass
class View:
    """An image as seen at its head (``snap`` None) or at one snapshot; read-only access to its state."""

    store: Store
    pool_id: int
    meta: dict
    snap: dict | None = None
    _parent: View | None = field(default=None, repr=False)
    _files: DataFiles | None = field(default=None, repr=False)

    @property
    def snap_id(self) -> int | None:
        return None if self.snap is None else self.snap["id"]

    @property
    def end_id(self) -> int:
        return osd.HEAD if self.snap is None else self.snap["id"]

    @property
    def size(self) -> int:
        return self.meta["size"] if self.snap is None else self.snap["size"]

    @property
    def obj_size(self) -> int:
        return object_size(self.meta)

    @property
    def features(self) -> int:
        return self.meta["features"]

    @property
    def objmap(self) -> dict:
        return self.meta["objmap"] if self.snap is None else self.snap["objmap"]

    @property
    def parent_link(self) -> dict | None:
        return self.meta["parent"] if self.snap is None else self.snap.get("parent")

    @property
    def overlap(self) -> int:
        link = self.parent_link
        return 0 if link is None else link["overlap"]

    @property
    def files(self) -> DataFiles:
        if self._files is None:
            self._files = DataFiles(self.store.image_dir(self.pool_id, self.meta["id"]))
        return self._files

    def record(self, object_no: int) -> dict | None:
        return self.meta["objects"].get(str(object_no))

    def parent(self) -> View | None:
        link = self.parent_link
        if link is None:
            return None
        if self._parent is None:
            meta = self.store.image(link["pool_id"], link["image_id"])
            if meta is None:
                raise InvalidArgument(f"fake ceph: parent image {link['image_id']} of {self.meta['id']} is gone")
            snap = next((s for s in meta["snaps"] if s["id"] == link["snap_id"]), None)
            if snap is None:
                raise InvalidArgument(f"fake ceph: parent snapshot {link['snap_id']} is gone")
            self._parent = View(self.store, link["pool_id"], meta, snap)
        return self._parent

    def close(self) -> None:
        if self._files is not None:
            self._files.close()
        if self._parent is not None:
            self._parent.close()


# ---------------------------------------------------------------- reads


def read_into(view: View, start: int, end: int, out: memoryview) -> None:
    """Fill ``out`` (zeroed, ``end - start`` bytes) with the view's bytes [start, end)."""
    osz = view.obj_size
    pos = start
    while pos < end:
        object_no = pos // osz
        base = object_no * osz
        oend = min(base + osz, end)
        found = osd.resolve(view.record(object_no), view.snap_id)
        if found is not None:
            clone_id, size = found
            stop = min(oend, base + size)
            if stop > pos:
                view.files.pread_into(clone_id, pos, out[pos - start : stop - start])
        else:
            parent = view.parent()
            if parent is not None and pos < view.overlap:
                stop = min(oend, view.overlap)
                read_into(parent, pos, stop, out[pos - start : stop - start])
        pos = oend


def sparse_read_extents(view: View, start: int, end: int) -> list[iv.Interval]:
    """Image ranges in [start, end) that librbd's sparse read of the view returns as data, which is what a
    copy-up copies: [0, object size) of an existing object (memstore OSD), and where the object is
    missing but the view has a parent, the whole range up to the parent overlap (a read through to the
    parent comes back flat, not sparse)."""
    osz = view.obj_size
    out: list[iv.Interval] = []
    pos = start
    while pos < end:
        object_no = pos // osz
        base = object_no * osz
        oend = min(base + osz, end)
        found = osd.resolve(view.record(object_no), view.snap_id)
        if found is not None:
            stop = min(oend, base + found[1])
            if stop > pos:
                out.append((pos, stop))
        elif view.parent_link is not None and pos < view.overlap:
            out.append((pos, min(oend, view.overlap)))
        pos = oend
    return iv.normalize(out)


# ---------------------------------------------------------------- writes


class Mutation:
    """One mutating operation on an image's head: the caller holds the store's exclusive lock, loads
    the metadata fresh, calls the methods, then ``save()``s."""

    def __init__(self, store: Store, pool_id: int, meta: dict) -> None:
        self.store = store
        self.pool_id = pool_id
        self.meta = meta
        self.view = View(store, pool_id, meta)
        #: set once the metadata has been saved (the with-block then does not save again)
        self.saved = False

    @property
    def files(self) -> DataFiles:
        return self.view.files

    def close(self) -> None:
        self.view.close()

    def save(self) -> None:
        self.store.save_image(self.pool_id, self.meta)

    # ---- object-level helpers

    @property
    def snapc(self) -> tuple[int, list[int]]:
        return self.meta["snap_seq"], [s["id"] for s in self.meta["snaps"]]

    def _record(self, object_no: int, create: bool) -> dict | None:
        rec = self.meta["objects"].get(str(object_no))
        if rec is None and create:
            rec = osd.new_record()
            self.meta["objects"][str(object_no)] = rec
        return rec

    def _forget_if_empty(self, object_no: int) -> None:
        rec = self.meta["objects"].get(str(object_no))
        if rec is not None and osd.is_empty(rec):
            del self.meta["objects"][str(object_no)]

    def _data(self, object_no: int) -> _ObjectData:
        return _ObjectData(self.files, object_no * object_size(self.meta))

    def _in_parent_overlap(self, object_no: int) -> bool:
        parent = self.meta["parent"]
        return parent is not None and object_no * object_size(self.meta) < parent["overlap"]

    def _head_exists(self, object_no: int) -> bool:
        rec = self.meta["objects"].get(str(object_no))
        return rec is not None and rec["head"] is not None

    def _set_objmap(self, object_no: int, state: int) -> None:
        if state == OBJECT_NONEXISTENT:
            self.meta["objmap"].pop(str(object_no), None)
        else:
            self.meta["objmap"][str(object_no)] = state

    def copyup(self, object_no: int, for_flatten: bool = False, overwrite: iv.Interval | None = None) -> bool:
        """Copy the parent's data of a missing child object into the child (deep-flatten style: with an
        empty snapshot context, so the child's snapshots see it too). Returns whether data was copied.

        ``overwrite``: the object-relative range the op that triggers the copy-up is about to write
        (or zero, or truncate away).
        Without child snapshots librbd copies only what that write leaves of the parent data; with
        them it copies everything. Either way, when what it would copy is all zeros it copies nothing.
        """
        osz = object_size(self.meta)
        base = object_no * osz
        parent = self.view.parent()
        stop = min(base + osz, self.meta["parent"]["overlap"])
        extents = sparse_read_extents(parent, base, stop)
        if overwrite is not None and not self.meta["snaps"]:
            extents = iv.subtract(extents, [(base + overwrite[0], base + overwrite[1])])
        bufs = []
        for start, end in extents:
            buf = bytearray(end - start)
            read_into(parent, start, end, memoryview(buf))
            bufs.append(buf)
        if not any(buf.count(0) != len(buf) for buf in bufs):
            return False  # nothing, or only zeros: librbd skips the copy-up
        rec = self._record(object_no, create=True)
        data = self._data(object_no)
        for (start, end), buf in zip(extents, bufs, strict=True):
            osd.write(rec, start - base, end - base, (0, []), data)
            self.files.pwrite(None, start, buf)
        # librbd's copyup also marks the object in the snapshots' object maps: the oldest snapshot
        # holding the data as dirty, later ones as clean.
        first = True
        updated_snaps = False
        for snap in self.meta["snaps"]:
            link = snap.get("parent")
            if snap["id"] <= rec["seq"] or link is None or base >= link["overlap"]:
                continue
            snap["objmap"][str(object_no)] = OBJECT_EXISTS if first else OBJECT_EXISTS_CLEAN
            first = False
            updated_snaps = True
        if for_flatten:
            fast_diff = self.meta["features"] & RBD_FEATURE_FAST_DIFF
            self._set_objmap(object_no, OBJECT_EXISTS_CLEAN if (updated_snaps and fast_diff) else OBJECT_EXISTS)
        return True

    def _prepare(self, object_no: int, overwrite: iv.Interval | None = None) -> bool:
        """Before a write-type op on a head object: copy up from the parent when the child object is
        missing inside the parent overlap (``overwrite``: the range a data write covers). Returns
        whether the op applies (object exists or is in the overlap); its object map entry becomes
        EXISTS in that case."""
        if self._head_exists(object_no):
            self._set_objmap(object_no, OBJECT_EXISTS)
            return True
        if self._in_parent_overlap(object_no):
            if not self.copyup(object_no, overwrite=overwrite):
                # the copy-up still creates the child object, empty: it hides the parent from now on
                rec = self._record(object_no, create=True)
                if rec["head"] is None:
                    osd.truncate(rec, 0, (0, []), self._data(object_no))
            self._set_objmap(object_no, OBJECT_EXISTS)
            return True
        return False

    # ---- image-level operations

    def write(self, offset: int, data: bytes) -> None:
        osz = object_size(self.meta)
        view = memoryview(data)
        pos = offset
        end = offset + len(data)
        while pos < end:
            object_no = pos // osz
            base = object_no * osz
            oend = min(base + osz, end)
            self._prepare(object_no, overwrite=(pos - base, oend - base))
            self._set_objmap(object_no, OBJECT_EXISTS)
            rec = self._record(object_no, create=True)
            osd.write(rec, pos - base, oend - base, self.snapc, self._data(object_no))
            self.files.pwrite(None, pos, view[pos - offset : oend - offset])
            pos = oend

    def discard(self, offset: int, length: int) -> None:
        """librbd discard with rbd_skip_partial_discard=true: shrink the range inward to the discard
        granularity, then per object remove (whole object), truncate (range reaches the object end) or
        zero; clone objects inside the parent overlap are truncated to 0 instead of removed."""
        osz = object_size(self.meta)
        gran = min(DISCARD_GRANULARITY_BYTES, osz)
        start = -(-offset // gran) * gran
        end = (offset + length) // gran * gran
        pos = start
        while pos < end:
            object_no = pos // osz
            base = object_no * osz
            oend = min(base + osz, end)
            rel_start, rel_end = pos - base, oend - base
            if rel_start == 0 and rel_end == osz:
                self._discard_whole(object_no)
            elif self._prepare(object_no, overwrite=(rel_start, rel_end)):
                rec = self._record(object_no, create=True)
                if rel_end == osz:
                    osd.truncate(rec, rel_start, self.snapc, self._data(object_no))
                else:
                    osd.zero(rec, rel_start, rel_end, self.snapc, self._data(object_no))
                self._forget_if_empty(object_no)
            pos = oend

    def _discard_whole(self, object_no: int) -> None:
        if self._in_parent_overlap(object_no):
            # hide the parent's object: an empty child object, no copy-up
            rec = self._record(object_no, create=True)
            osd.truncate(rec, 0, self.snapc, self._data(object_no))
            self._set_objmap(object_no, OBJECT_EXISTS)
            return
        self._remove_object(object_no)

    def _remove_object(self, object_no: int) -> None:
        rec = self._record(object_no, create=False)
        if rec is not None:
            osd.remove(rec, self.snapc, self._data(object_no))
            self._forget_if_empty(object_no)
        self._set_objmap(object_no, OBJECT_NONEXISTENT)

    def resize(self, new_size: int) -> None:
        """Grow: only the size changes. Shrink (librbd TrimRequest): with snapshots, a clone first copies
        up every missing object between the new end and the parent overlap (so the snapshots keep that
        data); objects past the new end are removed, the boundary object is truncated at the new end, or
        zeroed up to the old end when that lies in it too (copied up first, with the old overlap); the
        parent overlap shrinks last."""
        old_size = self.meta["size"]
        if new_size >= old_size:
            self.meta["size"] = new_size
            return
        osz = object_size(self.meta)
        parent = self.meta["parent"]
        keep = num_objects(new_size, osz)
        if parent is not None and self.meta["snaps"]:
            for object_no in range(keep, num_objects(parent["overlap"], osz)):
                if not self._head_exists(object_no):
                    self.copyup(object_no)
        doomed = set(range(keep, num_objects(old_size, osz)))
        doomed.update(int(k) for k in self.meta["objects"] if int(k) >= keep)
        for object_no in sorted(doomed):
            self._remove_object(object_no)
        if new_size % osz:
            object_no = new_size // osz
            base = object_no * osz
            if self._prepare(object_no, overwrite=(new_size % osz, osz)):
                rec = self._record(object_no, create=True)
                if old_size < base + osz:
                    # the old end lies in this object too: librbd zeroes [new end, old end) in it rather
                    # than truncating, so an object shorter than the new end keeps its size (contract-tested)
                    osd.zero(rec, new_size - base, old_size - base, self.snapc, self._data(object_no))
                else:
                    osd.truncate(rec, new_size - base, self.snapc, self._data(object_no))
                self._forget_if_empty(object_no)
        if parent is not None:
            parent["overlap"] = min(parent["overlap"], new_size)
        self.meta["objmap"] = {k: v for k, v in self.meta["objmap"].items() if int(k) < keep}
        self.meta["size"] = new_size

    def flatten(self) -> None:
        osz = object_size(self.meta)
        overlap = self.meta["parent"]["overlap"]
        for object_no in range(num_objects(overlap, osz)):
            if not self._head_exists(object_no):
                self.copyup(object_no, for_flatten=True)

    def create_snap(self, snap_id: int, name: str, timestamp: float) -> None:
        snap = {
            "id": snap_id,
            "name": name,
            "size": self.meta["size"],
            "protected": False,
            "timestamp": timestamp,
            "objmap": dict(self.meta["objmap"]),
            "parent": None if self.meta["parent"] is None else dict(self.meta["parent"]),
        }
        self.meta["snaps"].append(snap)
        self.meta["snap_seq"] = max(self.meta["snap_seq"], snap_id)
        if self.meta["features"] & RBD_FEATURE_FAST_DIFF:
            self.meta["objmap"] = {
                k: (OBJECT_EXISTS_CLEAN if v == OBJECT_EXISTS else v) for k, v in self.meta["objmap"].items()
            }

    def remove_snap(self, snap_id: int) -> None:
        snaps = self.meta["snaps"]
        index = next(i for i, s in enumerate(snaps) if s["id"] == snap_id)
        removed = snaps.pop(index)
        # object map: dirty state of the removed snapshot carries over to the next newer map
        following = snaps[index]["objmap"] if index < len(snaps) else self.meta["objmap"]
        for key, state in removed["objmap"].items():
            if state == OBJECT_EXISTS and following.get(key) == OBJECT_EXISTS_CLEAN:
                following[key] = OBJECT_EXISTS
        dropped: set[int] = set()
        for key in list(self.meta["objects"]):
            rec = self.meta["objects"][key]
            dropped.update(osd.trim_snap(rec, snap_id, self._data(int(key))))
            if osd.is_empty(rec):
                del self.meta["objects"][key]
        live = {c["id"] for rec in self.meta["objects"].values() for c in rec["clones"]}
        for clone_id in dropped - live:
            self.files.drop_clone_file(clone_id)


# ---------------------------------------------------------------- diff_iterate

Callback = Callable[[int, int, bool], object]


def diff_iterate(
    view: View, offset: int, length: int, from_snap: dict | None, include_parent: bool, whole_object: bool
) -> list[tuple[int, int, bool]]:
    """The extents ``Image.diff_iterate`` reports, in order. Arguments already validated and clipped."""
    from_id = 0 if from_snap is None else from_snap["id"]
    if length == 0:
        if whole_object:
            raise LibrbdAbort(
                "librbd 16.2.15 aborts the process (ceph_assert in DiffIterate) on a zero-length "
                "whole_object diff_iterate"
            )
        return []
    if from_id > view.end_id:
        raise InvalidArgument("error generating diff from snapshot")
    if from_id == view.end_id:
        return []
    if whole_object and view.features & RBD_FEATURE_FAST_DIFF:
        return _fast_diff(view, offset, length, from_snap, include_parent)
    return _list_snaps_diff(view, offset, offset + length, from_id, whole_object, include_parent, False)


def _objmap_vector(objmap: dict, size: int, obj_size: int) -> list[int]:
    return [objmap.get(str(i), OBJECT_NONEXISTENT) for i in range(num_objects(size, obj_size))]


def _fast_diff_states(view: View, from_snap: dict | None) -> list[int]:
    """Per-object diff state from the object maps, the way librbd 16.2.15's object map DiffRequest
    computes it: from the beginning of time only the end map counts; from a snapshot, the maps of every
    snapshot up to the end are compared pairwise, the state vector being resized to each map's size
    (so an object beyond an intermediate, smaller size forgets its earlier state)."""
    osz = view.obj_size
    end_map = _objmap_vector(view.objmap, view.size, osz)
    if from_snap is None:
        return [_DIFF_UPDATED if state != OBJECT_NONEXISTENT else _DIFF_NONE for state in end_map]
    maps = [_objmap_vector(s["objmap"], s["size"], osz)
            for s in view.meta["snaps"] if from_snap["id"] < s["id"] <= view.end_id]  # fmt: skip
    if view.snap is None:
        maps.append(end_map)
    prev = _objmap_vector(from_snap["objmap"], from_snap["size"], osz)
    diff = [_DIFF_NONE] * len(prev)
    for cur in maps:
        diff = diff[: len(cur)] + [_DIFF_NONE] * (len(cur) - len(diff))
        overlap = min(len(cur), len(prev))
        for i in range(overlap):
            if cur[i] == OBJECT_NONEXISTENT:
                if prev[i] != OBJECT_NONEXISTENT:
                    diff[i] = _DIFF_HOLE
            elif cur[i] == OBJECT_EXISTS or (
                prev[i] != cur[i] and not (prev[i] == OBJECT_EXISTS and cur[i] == OBJECT_EXISTS_CLEAN)
            ):
                diff[i] = _DIFF_UPDATED
        for i in range(overlap, len(cur)):
            diff[i] = _DIFF_NONE if cur[i] == OBJECT_NONEXISTENT else _DIFF_UPDATED
        prev = cur
    return diff


def _fast_diff(
    view: View, offset: int, length: int, from_snap: dict | None, include_parent: bool
) -> list[tuple[int, int, bool]]:
    osz = view.obj_size
    end = offset + length
    first, last = offset // osz, (end - 1) // osz
    states = _fast_diff_states(view, from_snap)

    parent_diff: list[iv.Interval] = []
    if include_parent and from_snap is None and view.parent_link is not None and offset < view.overlap:
        parent = view.parent()
        parent_end = min(end, view.overlap)
        extents = diff_iterate(parent, offset, parent_end - offset, None, True, True)
        parent_diff = iv.normalize((o, o + n) for o, n, exists in extents if exists)

    out: list[tuple[int, int, bool]] = []
    for object_no in range(first, last + 1):
        start = max(offset, object_no * osz)
        stop = min(end, (object_no + 1) * osz)
        state = states[object_no] if object_no < len(states) else _DIFF_NONE
        if state == _DIFF_UPDATED:
            out.append((start, stop - start, True))
        elif state == _DIFF_HOLE:
            out.append((start, stop - start, False))
        elif state == _DIFF_NONE and parent_diff:
            out.extend((s, e - s, True) for s, e in iv.clip(parent_diff, start, stop))
    return out


def _list_snaps_diff(
    view: View, start: int, end: int, from_id: int, whole_object: bool, include_parent: bool, ignore_zeroed: bool
) -> list[tuple[int, int, bool]]:
    osz = view.obj_size
    out: list[tuple[int, int, bool]] = []
    pos = start
    while pos < end:
        object_no = pos // osz
        base = object_no * osz
        oend = min(base + osz, end)
        extents = _list_snaps_object(
            view, object_no, pos - base, oend - base, from_id, whole_object, include_parent, ignore_zeroed
        )
        out.extend((base + s, e - s, exists) for s, e, exists in extents)
        pos = oend
    return out


def _list_snaps_object(
    view: View,
    object_no: int,
    rel_start: int,
    rel_end: int,
    from_id: int,
    whole_object: bool,
    include_parent: bool,
    ignore_zeroed: bool,
) -> list[tuple[int, int, bool]]:
    """librbd's ObjectListSnapsRequest for one object extent followed by DiffIterate's aggregation."""
    osz = view.obj_size
    extent = [(rel_start, rel_end)]
    data: list[iv.Interval] = []
    zeroed: list[iv.Interval] = []
    rec = view.record(object_no)
    if rec is not None:
        start_snap = 0
        prev_end_size = 0
        for end_snap in (from_id, view.end_id):
            if start_snap == end_snap:
                continue
            diff, end_size, exists = osd.calc_snap_set_diff(rec, start_snap, end_snap)
            if whole_object and diff:
                diff = [(0, osz)]
            diff_interval = iv.intersect(extent, diff)
            zero_interval: list[iv.Interval] = []
            if end_size < prev_end_size and not whole_object:
                zero_interval = iv.intersect([(end_size, prev_end_size)], extent)
                diff_interval = iv.subtract(diff_interval, zero_interval)
            prev_end_size = end_size
            start_snap = end_snap
            if end_snap <= from_id:
                continue
            if exists:
                data = iv.union(data, diff_interval)
            else:
                zero_interval = iv.union(zero_interval, diff_interval)
            if not ignore_zeroed:
                zeroed = iv.union(zeroed, zero_interval)
    if not data and not zeroed and from_id == 0 and include_parent:
        parent = view.parent()
        if parent is not None:
            base = object_no * osz
            stop = min(base + rel_end, view.overlap)
            if base + rel_start < stop:
                found = _list_snaps_diff(parent, base + rel_start, stop, 0, whole_object, True, True)
                from_parent = iv.normalize((o, o + n) for o, n, exists in found if exists)
                if from_parent:
                    data = iv.shift(from_parent, -base)
                    zeroed = []
    if from_id == 0:
        # a diff from the beginning of time never reports zeroed extents (an object deleted at the
        # head while a snapshot still holds a clone is simply not reported)
        zeroed = []
    merged = [(s, e, True) for s, e in data] + [(s, e, False) for s, e in zeroed]
    merged.sort()
    out: list[tuple[int, int, bool]] = []
    for s, e, exists in merged:
        if out and out[-1][1] == s and out[-1][2] == exists:
            out[-1] = (out[-1][0], e, exists)
        else:
            out.append((s, e, exists))
    return out
