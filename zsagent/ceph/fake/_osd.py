"""The RADOS object layer of the fake: one record per data object, modelled on the OSD's SnapSet.

A record (plain JSON-able dict, kept in the image's metadata under ``objects[str(object_no)]``):

- ``head``: size in bytes of the head object, or ``None`` when the head does not exist (never written,
  removed, or a whiteout left behind by a removal while snapshots still hold clones);
- ``seq``: the newest snapshot id the object has seen in a write's snapshot context (SnapSet.seq);
- ``clones``: oldest first, each ``{"id": clone id (= snapshot context seq when it was made),
  "snaps": [snapshot ids it serves], "size": bytes, "overlap": [[start, end], ...]}`` where overlap is
  the part of the clone still identical to the next newer clone (or the head), as the OSD tracks it.

Object data lives outside the record (head file / clone files of the image); the callbacks in
``DataOps`` move it. Sizes are object-relative byte offsets. A write op first makes the head writeable
(clones it when the snapshot context is newer than ``seq``), then records its modified range by cutting
it out of the newest clone's overlap - exactly what makes ``list_snaps`` and so diff_iterate report
byte-precise changes.
"""

from __future__ import annotations

from typing import Protocol

from . import _intervals as iv

#: Snapshot id of the head in snapshot-set arithmetic (CEPH_NOSNAP).
HEAD = (1 << 64) - 2


class DataOps(Protocol):
    """How the object layer moves bytes; offsets are object-relative, ``clone_id`` None is the head."""

    def copy_head_to_clone(self, clone_id: int, length: int) -> None: ...

    def zero(self, clone_id: int | None, start: int, end: int) -> None: ...


def new_record() -> dict:
    return {"seq": 0, "head": None, "clones": []}


def _make_writeable(rec: dict, snapc_seq: int, snapc_snaps: list[int], data: DataOps) -> None:
    if snapc_seq <= rec["seq"]:
        return
    if rec["head"] is not None:
        snaps = [s for s in snapc_snaps if s > rec["seq"]]
        if snaps:
            size = rec["head"]
            data.copy_head_to_clone(snapc_seq, size)
            rec["clones"].append(
                {"id": snapc_seq, "snaps": snaps, "size": size, "overlap": [[0, size]] if size else []}
            )
    rec["seq"] = snapc_seq


def _modified(rec: dict, ranges: list[iv.Interval]) -> None:
    if rec["clones"]:
        last = rec["clones"][-1]
        last["overlap"] = [list(r) for r in iv.subtract(iv.normalize(last["overlap"]), ranges)]


def write(rec: dict, start: int, end: int, snapc: tuple[int, list[int]], data: DataOps) -> None:
    """Record a data write of [start, end); the caller writes the bytes into the head afterwards."""
    _make_writeable(rec, *snapc, data)
    rec["head"] = max(rec["head"] or 0, end)
    _modified(rec, [(start, end)])


def zero(rec: dict, start: int, end: int, snapc: tuple[int, list[int]], data: DataOps) -> None:
    """OSD zero: a no-op on a missing object or wholly past its end; a range reaching the end of the
    object truncates it at ``start`` (measured: it never extends an object)."""
    size = rec["head"]
    if size is None or start >= size:
        return
    if end >= size:
        truncate(rec, start, snapc, data)
        return
    _make_writeable(rec, *snapc, data)
    data.zero(None, start, end)
    _modified(rec, [(start, end)])


def truncate(rec: dict, size: int, snapc: tuple[int, list[int]], data: DataOps) -> None:
    """OSD truncate: creates a missing object, shrinks (zeroing the tail) or extends (sparse)."""
    _make_writeable(rec, *snapc, data)
    old = rec["head"]
    if old is not None and size < old:
        data.zero(None, size, old)
        _modified(rec, [(size, old)])
    rec["head"] = size


def remove(rec: dict, snapc: tuple[int, list[int]], data: DataOps) -> None:
    """OSD delete: the head goes (clones stay); the newest clone no longer overlaps anything."""
    if rec["head"] is None:
        return
    _make_writeable(rec, *snapc, data)
    data.zero(None, 0, rec["head"])
    if rec["clones"]:
        rec["clones"][-1]["overlap"] = []
    rec["head"] = None


def is_empty(rec: dict) -> bool:
    return rec["head"] is None and not rec["clones"]


def trim_snap(rec: dict, snap_id: int, data: DataOps) -> list[int]:
    """Snap trimming after a snapshot is removed; returns ids of clones that were dropped."""
    dropped = []
    clones = rec["clones"]
    i = 0
    while i < len(clones):
        clone = clones[i]
        if snap_id in clone["snaps"]:
            clone["snaps"] = [s for s in clone["snaps"] if s != snap_id]
        if not clone["snaps"]:
            if i > 0:
                prev = clones[i - 1]
                prev["overlap"] = [
                    list(r) for r in iv.intersect(iv.normalize(prev["overlap"]), iv.normalize(clone["overlap"]))
                ]
            data.zero(clone["id"], 0, clone["size"])
            dropped.append(clone["id"])
            del clones[i]
            continue
        i += 1
    return dropped


def resolve(rec: dict | None, snap_id: int | None) -> tuple[int | None, int] | None:
    """Which stored object a read at ``snap_id`` (None = head) sees: ``(clone id or None, size)``."""
    if rec is None:
        return None
    if snap_id is None or snap_id > rec["seq"]:
        return (None, rec["head"]) if rec["head"] is not None else None
    for clone in rec["clones"]:
        if clone["id"] >= snap_id:
            return (clone["id"], clone["size"]) if snap_id in clone["snaps"] else None
    return None


def calc_snap_set_diff(rec: dict, start: int, end: int) -> tuple[list[iv.Interval], int, bool]:
    """What changed in the object between snapshot ``start`` (0 = beginning) and ``end`` (HEAD = head).

    Returns (changed ranges, size at end, exists at end), following librados' calc_snap_set_diff over
    the record's clones followed by the head.
    """
    entries = [(c["snaps"][0], c["snaps"][-1], c["size"], c["overlap"]) for c in rec["clones"]]
    if rec["head"] is not None:
        entries.append((rec["seq"] + 1, HEAD, rec["head"], []))
    diff: list[iv.Interval] = []
    saw_start = False
    start_size = 0
    end_size = 0
    end_exists = False
    i = 0
    while i < len(entries):
        a, b, size, overlap = entries[i]
        if b < start:
            i += 1
            continue
        if not saw_start:
            if start < a:
                if size:
                    diff = [(0, size)]
                start_size = 0
            else:
                start_size = size
            saw_start = True
        if end < a:
            end_exists = False
            diff = [(0, start_size)] if start_size else []
            break
        if end <= b:
            end_exists = True
            end_size = size
            break
        max_size = size
        i += 1
        if i < len(entries):
            max_size = max(max_size, entries[i][2])
        to_next = iv.subtract([(0, max_size)] if max_size else [], iv.normalize(overlap))
        diff = iv.union(diff, to_next)
    return diff, end_size, end_exists
