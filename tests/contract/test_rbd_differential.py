"""Random write patterns run on real Ceph and on the fake: every diff_iterate answer and every byte equal.

One example is a handful of independent images (sizes up to 20 MiB, unaligned), each going through
writes / zero writes / discards / resizes, a snapshot, more changes, and optionally a clone of the
snapshot with changes of its own and a snapshot of the clone. Snapshots are taken for all images of an
example at once (on real Ceph a snapshot costs a monitor round of about a second; concurrent ones
share it). Then, on both backends, the same questions are asked: the image bytes (md5) at the head and
at each snapshot, and diff_iterate for whole_object x include_parent, from the beginning and from each
snapshot. The answers must be identical.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from rbd_contract import ContractBackend, KiB, MiB, all_diffs

MAX_SIZE = 20 * MiB


@dataclass(frozen=True)
class Op:
    """kind: write | zeros | discard | resize. where: fraction of the current size; length in bytes
    (clipped to the image end); for resize, length is the new size."""

    kind: str
    where: float
    length: int


@dataclass(frozen=True)
class Pattern:
    size: int
    before: tuple[Op, ...]
    after: tuple[Op, ...]
    clone: bool
    child_ops: tuple[Op, ...] = ()
    child_snap: bool = False
    child_after: tuple[Op, ...] = ()


_lengths = st.one_of(
    st.integers(1, 300),
    st.sampled_from([64 * KiB, 128 * KiB, 4 * MiB, 4 * MiB - 1, 8 * MiB]),
    st.integers(1, 9 * MiB),
    st.integers(1, 40).map(lambda n: n * 64 * KiB + 1),
)
_wheres = st.one_of(st.sampled_from([0.0, 0.25, 0.5, 0.999999]), st.floats(0, 1, exclude_max=True))
_io_ops = st.builds(Op, st.sampled_from(["write", "write", "zeros", "discard", "discard"]), _wheres, _lengths)
_resize = st.builds(Op, st.just("resize"), st.just(0.0), st.integers(1, MAX_SIZE))
_ops = st.lists(st.one_of(_io_ops, _io_ops, _io_ops, _resize), max_size=4).map(tuple)
_sizes = st.one_of(
    st.integers(1, MAX_SIZE),
    st.integers(1, 5).map(lambda n: n * 4 * MiB),
    st.tuples(st.integers(0, 4), st.integers(1, 70000)).map(lambda t: t[0] * 4 * MiB + t[1]),
)
_patterns = st.builds(Pattern, _sizes, _ops, _ops, st.booleans(), _ops, st.booleans(), _ops)


@dataclass
class _Image:
    pattern: Pattern
    name: str
    child: str | None = None
    snaps: list[str] = field(default_factory=list)
    child_snaps: list[str] = field(default_factory=list)


def _apply(image, ops: tuple[Op, ...], fill: int) -> None:
    for op in ops:
        size = image.size()
        if op.kind == "resize":
            image.resize(op.length)
            continue
        if size == 0:
            continue
        offset = min(int(op.where * size), size - 1)
        length = min(op.length, size - offset)
        if op.kind == "write":
            image.write(bytes([fill]) * length, offset)
        elif op.kind == "zeros":
            image.write(bytes(length), offset)
        else:
            image.discard(offset, length)
        fill += 1


def _concurrently(calls: list) -> None:
    """Run the calls at once: concurrent snapshot changes share one monitor round on real Ceph."""
    with ThreadPoolExecutor(max_workers=max(1, len(calls))) as pool:
        for future in [pool.submit(call) for call in calls]:
            future.result()


def _snapshot_all(backend: ContractBackend, targets: list[tuple[object, str]]) -> None:
    _concurrently([lambda image=image, name=name: image.create_snap(name) for image, name in targets])


def _remove_snapshots(backend: ContractBackend, targets: list[tuple[str, list[str]]]) -> None:
    """Unprotect and remove the snapshots of each (image, snapshots), then the images, all at once."""

    def remove(name: str, snaps: list[str]) -> None:
        with backend.rbd.Image(backend.ioctx, name) as image:
            for snap in snaps:
                if image.is_protected_snap(snap):
                    image.unprotect_snap(snap)
                image.remove_snap(snap)
        backend.rbd.RBD().remove(backend.ioctx, name)

    _concurrently([lambda name=name, snaps=snaps: remove(name, snaps) for name, snaps in targets])


def _remove(backend: ContractBackend, images: list[_Image]) -> None:
    """Remove what an example made (the test cluster's memstore OSD holds everything in memory)."""
    _remove_snapshots(backend, [(img.child, img.child_snaps) for img in images if img.child])
    _remove_snapshots(backend, [(img.name, img.snaps) for img in images])


def _md5(image) -> str:
    return hashlib.md5(image.read(0, image.size()) if image.size() else b"").hexdigest()


def _observe(backend: ContractBackend, name: str, snaps: list[str]) -> dict:
    out = {}
    with backend.rbd.Image(backend.ioctx, name, read_only=True) as head:
        out["head md5"] = _md5(head)
        if head.size():
            out["head"] = all_diffs(head)
            for snap in snaps:
                out[f"head from {snap}"] = all_diffs(head, snap)
    for snap in snaps:
        with backend.rbd.Image(backend.ioctx, name, snapshot=snap, read_only=True) as at:
            out[f"{snap} md5"] = _md5(at)
            if at.size():
                out[f"at {snap}"] = all_diffs(at)
    return out


def _run(backend: ContractBackend, patterns: list[Pattern]) -> list[dict]:
    rbd = backend.rbd
    images = [_Image(p, backend.name("diff")) for p in patterns]
    handles = {}
    try:
        for img in images:
            backend.create(img.pattern.size, name=img.name)
            handles[img.name] = rbd.Image(backend.ioctx, img.name)
            _apply(handles[img.name], img.pattern.before, 0x41)
        _snapshot_all(backend, [(handles[img.name], "s") for img in images])
        for img in images:
            img.snaps.append("s")
            _apply(handles[img.name], img.pattern.after, 0x61)
            if img.pattern.clone:
                handles[img.name].protect_snap("s")
                img.child = backend.clone(img.name, "s")
                handles[img.child] = rbd.Image(backend.ioctx, img.child)
                _apply(handles[img.child], img.pattern.child_ops, 0x30)
        snap_children = [img for img in images if img.child and img.pattern.child_snap]
        if snap_children:
            _snapshot_all(backend, [(handles[img.child], "cs") for img in snap_children])
        for img in images:
            if img.child:
                if img.pattern.child_snap:
                    img.child_snaps.append("cs")
                _apply(handles[img.child], img.pattern.child_after, 0x50)
    finally:
        for handle in handles.values():
            handle.close()
    results = []
    for img in images:
        result = {"parent": _observe(backend, img.name, img.snaps)}
        if img.child:
            result["child"] = _observe(backend, img.child, img.child_snaps)
        results.append(result)
    _remove(backend, images)
    return results


_REGRESSIONS = [
    # a clone whose copy-up would copy only zeros once the triggering write is taken out
    [
        Pattern(
            8 * MiB,
            (Op("write", 0.0, 64 * KiB), Op("zeros", 0.0078125, 4 * MiB)),
            (),
            True,
            (Op("write", 0.0, 64 * KiB),),
            True,
            (Op("discard", 0.5, 4 * MiB),),
        )
    ],
    # shrink within one object after writes, around a snapshot
    [Pattern(1, (Op("write", 0.0, 1), Op("write", 0.0, 1), Op("resize", 0.0, 3), Op("resize", 0.0, 2)), (), False)],
]


@pytest.mark.ceph
@settings(
    max_examples=20,
    deadline=None,
    # no shrinking: on real Ceph it would outlast the test timeout; a failure prints its whole pattern
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(patterns=st.lists(_patterns, min_size=1, max_size=4))
@example(patterns=_REGRESSIONS[0])
@example(patterns=_REGRESSIONS[1])
def test_fake_matches_real(both: tuple[ContractBackend, ContractBackend], patterns: list[Pattern]) -> None:
    real, fake = both
    expected = _run(real, patterns)
    got = _run(fake, patterns)
    for pattern, want, have in zip(patterns, expected, got, strict=True):
        for image in want:
            for question, answer in want[image].items():
                assert have[image].get(question) == answer, (
                    f"{pattern}\n{image} {question}:\n real {answer}\n fake {have[image].get(question)}"
                )
