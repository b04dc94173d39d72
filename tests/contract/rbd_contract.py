"""Shared pieces of the contract suite (imported by its conftest and tests as ``rbd_contract``).

The contract suite: every test runs against the fake backend and against a real Ceph cluster.

``backend`` is parametrized ``["fake", "real"]`` (the real one marked ``ceph``) and gives a
``ContractBackend``: the ``rados``/``rbd`` modules of that backend, a connected cluster handle and two
open pools (the second for cross-pool clones). Tests use unique image names, so they share the pools.
``both`` gives the (real, fake) pair for the differential tests that run one pattern on each.

The real side takes the session cluster and pools from ``tests/conftest.py`` (``ceph_cluster``,
``make_pool``); under CI=true they fail instead of skipping. Real connections set
``rbd_default_clone_format=1``: the agent always protects a snapshot before cloning it, and clone
format 1 is what makes an unprotected clone an error on every cluster (the test cluster's "auto"
already picks 1, a mimic+ cluster would pick 2).
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
