"""Shared pieces of the contract suite (imported by its conftest and tests as ``rbd_contract``).

Every contract test runs against the fake backend and against a real Ceph cluster: the ``backend``
fixture (``conftest.py``) gives a ``ContractBackend`` with the ``rados``/``rbd`` modules of that
backend, a connected cluster handle and two open pools (the second for cross-pool clones). Tests use
unique image names, so they share the pools; setups that tests only read are built once per backend
(``shared_parent``, ``shared_snapshotted``) because on real Ceph every snapshot costs about a second.
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pytest

from zsagent.ceph import CephBackend

KiB = 1024
MiB = 1024 * KiB

_names = itertools.count()


@dataclass
class ContractBackend:
    """One backend under test: modules, a connected cluster and two pools with open io contexts."""

    kind: str
    ceph: CephBackend
    cluster: Any
    pool: str
    ioctx: Any
    pool2: str
    ioctx2: Any
    _opened: list = field(default_factory=list, repr=False)
    _cache: dict = field(default_factory=dict, repr=False)

    def cached(self, key: str, factory):
        """factory(self) once per backend and session: for setups several tests only read (on real
        Ceph every snapshot costs about a second of monitor time)."""
        if key not in self._cache:
            self._cache[key] = factory(self)
        return self._cache[key]

    @property
    def rbd(self) -> ModuleType:
        return self.ceph.rbd

    @property
    def rados(self) -> ModuleType:
        return self.ceph.rados

    def name(self, prefix: str = "img") -> str:
        """An image name no other test uses."""
        return f"{prefix}-{next(_names)}-{secrets.token_hex(3)}"

    def create(self, size: int, name: str | None = None, ioctx: Any = None, **kwargs) -> str:
        name = name or self.name()
        self.rbd.RBD().create(ioctx or self.ioctx, name, size, **kwargs)
        return name

    def open(self, name: str, ioctx: Any = None, **kwargs):
        """rbd.Image(...) closed at the end of the test."""
        image = self.rbd.Image(ioctx or self.ioctx, name, **kwargs)
        self._opened.append(image)
        return image

    def clone(self, parent: str, snap: str, name: str | None = None, ioctx: Any = None,
              parent_ioctx: Any = None) -> str:  # fmt: skip
        name = name or self.name("clone")
        self.rbd.RBD().clone(parent_ioctx or self.ioctx, parent, snap, ioctx or self.ioctx, name)
        return name

    def close_all(self) -> None:
        for image in self._opened:
            image.close()
        self._opened.clear()


def diff(image, from_snapshot=None, whole_object=False, include_parent=True, offset=0, length=None):
    """The extents diff_iterate reports, as a list of (offset, length, exists)."""
    out: list[tuple[int, int, bool]] = []
    image.diff_iterate(offset, image.size() if length is None else length, from_snapshot,
                       lambda o, n, e: out.append((o, n, e)), include_parent=include_parent,
                       whole_object=whole_object)  # fmt: skip
    return out


def all_diffs(image, from_snapshot=None) -> dict[tuple[bool, bool], list]:
    """diff() for every (whole_object, include_parent) combination."""
    return {
        (wo, ip): diff(image, from_snapshot, whole_object=wo, include_parent=ip)
        for wo in (False, True)
        for ip in (True, False)
    }


def raises(exc_type, errno=None):
    """pytest.raises that also pins the exception's ``errno`` attribute (None included)."""
    return _Raises(exc_type, errno)


class _Raises:
    def __init__(self, exc_type, errno) -> None:
        self._ctx = pytest.raises(exc_type)
        self._errno = errno

    def __enter__(self):
        self.info = self._ctx.__enter__()
        return self.info

    def __exit__(self, *exc):
        suppressed = self._ctx.__exit__(*exc)
        got = getattr(self.info.value, "errno", "no errno attribute")
        assert got == self._errno, f"{self.info.value!r}: errno {got!r}, expected {self._errno!r}"
        return suppressed


PARENT_SIZE = 12 * MiB + 5


def make_parent(backend: ContractBackend) -> str:
    """A clone parent: data in objects 0 (100 bytes), 1 (all of it), 2 (5 bytes at +1000) and 3 (the
    5-byte tail of the image), then snapshot "s", protected. Returns its name."""
    name = backend.create(PARENT_SIZE)
    with backend.rbd.Image(backend.ioctx, name) as image:
        image.write(b"P" * 100, 0)
        image.write(b"P" * (4 * MiB), 4 * MiB)
        image.write(b"P" * 5, 8 * MiB + 1000)
        image.write(b"P" * 5, 12 * MiB)
        image.create_snap("s")
        image.protect_snap("s")
    return name


def shared_parent(backend: ContractBackend) -> str:
    """make_parent() once per backend: for tests that only clone it (and may write to its head)."""
    return backend.cached("parent", make_parent)


def make_snapshotted(backend: ContractBackend) -> str:
    """An image with two snapshots: "a" (1 MiB, "head1" at 0), then - taken through a handle open at
    "a", which snapshots the head all the same - "b" (2 MiB, "head2" at 0)."""
    name = backend.create(MiB)
    with backend.rbd.Image(backend.ioctx, name) as image:
        image.write(b"head1", 0)
        image.create_snap("a")
        image.resize(2 * MiB)
        image.write(b"head2", 0)
        with backend.rbd.Image(backend.ioctx, name, snapshot="a") as at_a:
            at_a.create_snap("b")
    return name


def shared_snapshotted(backend: ContractBackend) -> str:
    """make_snapshotted() once per backend; tests must leave its snapshots as they found them."""
    return backend.cached("snapshotted", make_snapshotted)
