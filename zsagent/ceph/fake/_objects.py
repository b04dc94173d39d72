"""RADOS objects of the fake cluster: data, xattrs, omap and cls_lock locks, and the write/read operations on them.

One object is one JSON file (layout in ``_store``)::

    {"key": oid, "nspace": namespace, "mtime": seconds since the epoch (float),
     "data": the object's bytes, "xattrs": {name: bytes}, "omap": {key: bytes},
     "locks": {lock name: {"type": "exclusive"|"shared", "tag": str,
                           "lockers": [{"client": instance id, "cookie": str, "desc": str,
                                        "expires": wall-clock seconds, 0 for never}]}}}

Bytes are stored as latin-1 strings (exact round trip, compact for the ASCII/JSON values the agent
stores). A write operation is a list of steps applied in order to a private copy of the object under
the store's exclusive lock; the first failing step raises and nothing is saved, so every operation is
all or nothing for every thread and process. Lock expiry is judged by the wall clock (``time.time``),
which all processes on the host share.

Semantics follow Ceph Pacific's OSD and cls_lock as the contract suite (tests/contract/test_rados_*.py)
pins them; what is not modelled: lock xattrs ("lock.<name>") do not show in ``get_xattrs``, and the
objects that rbd images are made of are not listed.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable

from ._rados_errors import make_ex

CMP_EQ = 1
CMP_GT = 3
CMP_LT = 5
LOCK_FLAG_MAY_RENEW = 1
LOCK_FLAG_MUST_RENEW = 2


class StepError(Exception):
    """A step of an operation failed with ``code`` (a positive errno); the caller words the message."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def b2s(data: bytes) -> str:
    return data.decode("latin-1")


def s2b(text: str) -> bytes:
    return text.encode("latin-1")


def new_object(key: str, nspace: str, mtime: float) -> dict:
    return {"key": key, "nspace": nspace, "mtime": mtime, "data": "", "xattrs": {}, "omap": {}, "locks": {}}


#: A step takes the object (None when missing) and returns it (None when removed), or raises StepError.
Step = Callable[[dict | None, str, str], dict | None]


def _need(obj: dict | None) -> dict:
    if obj is None:
        raise StepError(errno.ENOENT)
    return obj


def _have(obj: dict | None, key: str, nspace: str) -> dict:
    return new_object(key, nspace, 0.0) if obj is None else obj


def step_new(exclusive: bool) -> Step:
    def run(obj, key, nspace):
        if obj is not None and exclusive:
            raise StepError(errno.EEXIST)
        return _have(obj, key, nspace)

    return run


def step_remove() -> Step:
    def run(obj, key, nspace):
        _need(obj)
        return None

    return run


def step_write(data: bytes, offset: int | None, full: bool = False) -> Step:
    """Write ``data`` at ``offset`` (None: append); ``full`` replaces the whole content."""

    def run(obj, key, nspace):
        obj = _have(obj, key, nspace)
        if full:
            obj["data"] = b2s(data)
            return obj
        old = s2b(obj["data"])
        at = len(old) if offset is None else offset
        if at > len(old):
            old += bytes(at - len(old))
        obj["data"] = b2s(old[:at] + data + old[at + len(data):])
        return obj

    return run


def step_set_xattr(name: str, value: bytes) -> Step:
    def run(obj, key, nspace):
        obj = _have(obj, key, nspace)
        obj["xattrs"][name] = b2s(value)
        return obj

    return run


def step_rm_xattr(name: str) -> Step:
    def run(obj, key, nspace):
        obj = _need(obj)
        obj["xattrs"].pop(name, None)
        return obj

    return run


def step_set_omap(values: dict[str, bytes]) -> Step:
    def run(obj, key, nspace):
        obj = _have(obj, key, nspace)
        obj["omap"].update({k: b2s(v) for k, v in values.items()})
        return obj

    return run


def step_rm_omap_keys(keys: list[str]) -> Step:
    def run(obj, key, nspace):
        obj = _need(obj)
        for k in keys:
            obj["omap"].pop(k, None)
        return obj

    return run


def step_clear_omap() -> Step:
    def run(obj, key, nspace):
        obj = _need(obj)
        obj["omap"] = {}
        return obj

    return run


def step_omap_cmp(omap_key: str, value: bytes, cmp_op: int) -> Step:
    """Cancel the operation (ECANCELED) unless ``stored <op> value``; a missing key is b"" (as on Ceph)."""

    def run(obj, key, nspace):
        if cmp_op not in (CMP_EQ, CMP_GT, CMP_LT):
            raise StepError(errno.EINVAL)
        obj = _need(obj)
        stored = s2b(obj["omap"].get(omap_key, ""))
        ok = {CMP_EQ: stored == value, CMP_GT: stored > value, CMP_LT: stored < value}[cmp_op]
        if not ok:
            raise StepError(errno.ECANCELED)
        return obj

    return run


def apply_steps(obj: dict | None, key: str, nspace: str, steps: list[Step]) -> dict | None:
    """The object after all ``steps`` (None: removed); raises the first StepError. Steps change ``obj``
    in place: pass a private copy (``Store.rados_object(fresh=True)``) and save only the result."""
    work = obj
    for step in steps:
        work = step(work, key, nspace)
    return work


# ---------------------------------------------------------------- omap reads


def omap_vals(obj: dict, start_after: str, prefix: str, max_return: int) -> list[tuple[str, bytes | None]]:
    """Sorted (key, value) pairs after ``start_after`` starting with ``prefix``; at most ``max_return``
    (negative: all). An empty value reads back as None, like python-rados's OmapIterator."""
    out = []
    for k in sorted(obj["omap"]):
        if max_return >= 0 and len(out) >= max_return:
            break
        if (start_after and k <= start_after) or not k.startswith(prefix):
            continue
        value = s2b(obj["omap"][k])
        out.append((k, value or None))
    return out


def omap_vals_by_keys(obj: dict, keys: list[str]) -> list[tuple[str, bytes | None]]:
    omap = obj["omap"]
    return [(k, s2b(omap[k]) or None) for k in sorted(set(keys)) if k in omap]


# ---------------------------------------------------------------- cls_lock


def _live_lockers(lock: dict, now: float) -> list[dict]:
    return [lk for lk in lock["lockers"] if not lk["expires"] or lk["expires"] >= now]


def lock(obj: dict, name: str, exclusive: bool, client: int, cookie: str, tag: str, desc: str,
         duration: float | None, flags: int, now: float) -> None:  # fmt: skip
    """Take or renew lock ``name`` for the locker (client, cookie) in ``obj``, as cls_lock's lock_obj does:
    EINVAL for both renew flags or an empty name; EBUSY when held with another type or tag, or held
    exclusively by another locker; EEXIST when this locker holds it and neither flag says renew; ENOENT when it
    must renew and does not hold it. Expired lockers are dropped first."""
    may_renew, must_renew = bool(flags & LOCK_FLAG_MAY_RENEW), bool(flags & LOCK_FLAG_MUST_RENEW)
    if (may_renew and must_renew) or not name:
        raise StepError(errno.EINVAL)
    kind = "exclusive" if exclusive else "shared"
    current = obj["locks"].get(name) or {"type": kind, "tag": tag, "lockers": []}
    lockers = _live_lockers(current, now)
    mine = [lk for lk in lockers if lk["client"] == client and lk["cookie"] == cookie]
    if lockers and (current["type"] != kind or current["tag"] != tag or (exclusive and not mine)):
        raise StepError(errno.EBUSY)
    if mine and not (may_renew or must_renew):
        raise StepError(errno.EEXIST)
    if not mine and must_renew:
        raise StepError(errno.ENOENT)
    lockers = [lk for lk in lockers if lk not in mine]
    expires = now + duration if duration and duration > 0 else 0
    lockers.append({"client": client, "cookie": cookie, "desc": desc, "expires": expires})
    obj["locks"][name] = {"type": kind, "tag": tag, "lockers": lockers}


def unlock(obj: dict | None, name: str, client: int, cookie: str, now: float) -> None:
    """Release the locker (client, cookie) of lock ``name``; ENOENT when it holds none (or it expired)."""
    if obj is None or name not in obj["locks"]:
        raise StepError(errno.ENOENT)
    current = obj["locks"][name]
    lockers = _live_lockers(current, now)
    rest = [lk for lk in lockers if not (lk["client"] == client and lk["cookie"] == cookie)]
    if len(rest) == len(lockers):
        raise StepError(errno.ENOENT)
    if rest:
        current["lockers"] = rest
    else:
        del obj["locks"][name]


def wall_clock() -> float:
    return time.time()


def error(code: int, message: str):
    return make_ex(code, message)
