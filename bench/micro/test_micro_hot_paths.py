"""Micro-benchmarks of the copy pipeline's hot parts (pytest-benchmark), outside `make test`:

    .venv/bin/pytest bench/micro --benchmark-only [--benchmark-group-by=group]

- hasher: hashlib vs the native kernels on 4 MiB of random data, 4 MiB of zeros, update_zeros(4 MiB);
- zero detection: the pipeline's ``data == zero_chunk`` (memcmp) on data, on zeros, and alternatives;
- extent chunking: plan() and chunked() on a fragmented allocation map (many small extents).

pytest's testpaths = ["tests"] keeps these out of `make test`; this directory is only collected when named.
"""

from __future__ import annotations

import hashlib
import os
import random

import pytest

from zsagent.copy import md5 as md5_mod
from zsagent.copy.extents import Extent, Kind, chunked, covering
from zsagent.copy.pipeline import plan

MiB = 1024 * 1024
CHUNK = 4 * MiB

RANDOM = os.urandom(CHUNK)
ZEROS = bytes(CHUNK)
ZEROS_COPY = bytes(bytearray(CHUNK))  # a second buffer: == must really compare
LATE_NONZERO = bytes(CHUNK - 1) + b"\x01"

KERNELS = list(md5_mod.native.KERNELS) if md5_mod.native is not None else []


def _hashers():
    out = [pytest.param(lambda: hashlib.md5(), id="hashlib")]
    for kernel in KERNELS:
        out.append(pytest.param(lambda k=kernel: md5_mod.native.MD5(kernel=k), id=f"native-{kernel}"))
    return out


# ---------------------------------------------------------------- hasher


@pytest.mark.benchmark(group="md5 4 MiB random")
@pytest.mark.parametrize("make", _hashers())
def test_md5_random(benchmark, make):
    h = make()
    benchmark(h.update, RANDOM)


@pytest.mark.benchmark(group="md5 4 MiB zeros (buffer)")
@pytest.mark.parametrize("make", _hashers())
def test_md5_zero_buffer(benchmark, make):
    h = make()
    benchmark(h.update, ZEROS)


@pytest.mark.benchmark(group="md5 4 MiB zeros (update_zeros)")
@pytest.mark.parametrize("make", [pytest.param(lambda: md5_mod.HashlibMD5(), id="hashlib-shared-buffer")]
                         + [pytest.param(lambda k=k: md5_mod.native.MD5(kernel=k), id=f"native-{k}")
                            for k in KERNELS])
def test_md5_update_zeros(benchmark, make):
    h = make()
    benchmark(h.update_zeros, CHUNK)


# ---------------------------------------------------------------- zero detection


@pytest.mark.benchmark(group="zero check 4 MiB")
@pytest.mark.parametrize(("label", "data"), [("random", RANDOM), ("zeros", ZEROS_COPY), ("last-byte", LATE_NONZERO)])
def test_zero_check_memcmp(benchmark, label, data):
    """The pipeline's check: bytes == bytes (memcmp, exits at the first difference)."""
    assert benchmark(lambda: data == ZEROS) is (label == "zeros")


@pytest.mark.benchmark(group="zero check 4 MiB")
@pytest.mark.parametrize(("label", "data"), [("zeros", ZEROS_COPY), ("last-byte", LATE_NONZERO)])
def test_zero_check_count(benchmark, label, data):
    """An alternative without a zero buffer: bytes.count(0) (memchr-based) scans everything."""
    assert benchmark(lambda: data.count(0) == len(data)) is (label == "zeros")


@pytest.mark.benchmark(group="zero check 4 MiB")
@pytest.mark.parametrize(("label", "data"), [("zeros", ZEROS_COPY)])
def test_zero_check_strip(benchmark, label, data):
    """Another alternative: not bytes.lstrip(b'\\0') (allocates when not all zero)."""
    assert benchmark(lambda: not data.lstrip(b"\0")) is True


# ---------------------------------------------------------------- extents


def _fragmented(size: int, pieces: int, seed: int = 7) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    ranges = []
    for _ in range(pieces):
        offset = rng.randrange(0, size // 4096) * 4096
        ranges.append((offset, rng.choice([4096, 65536, 1 << 20, 4 << 20])))
    return ranges


class _MapOnly:
    """A source that only has a size and an allocation map."""

    def __init__(self, size: int, extents: list[Extent]) -> None:
        self.size = size
        self._extents = extents

    def extents(self):
        return self._extents


SIZE_1TIB = 1 << 40
RANGES_20K = _fragmented(SIZE_1TIB, 20_000)
EXTENTS_20K = list(covering(SIZE_1TIB // 64, RANGES_20K))


@pytest.mark.benchmark(group="extents")
def test_covering_20k_ranges(benchmark):
    benchmark(lambda: list(covering(SIZE_1TIB, RANGES_20K)))


@pytest.mark.benchmark(group="extents")
def test_plan_20k_extents(benchmark):
    source = _MapOnly(SIZE_1TIB // 64, EXTENTS_20K)
    benchmark(plan, source)


@pytest.mark.benchmark(group="extents")
def test_chunked_16gib_data_extent_4mib(benchmark):
    """One 16 GiB data extent in 4 MiB pieces: the pipeline's per-chunk overhead (4096 pieces)."""
    extents = [Extent(0, 16 << 30, Kind.DATA)]
    assert benchmark(lambda: sum(1 for _ in chunked(extents, CHUNK))) == 4096


@pytest.mark.benchmark(group="extents")
def test_chunked_fragmented_map(benchmark):
    benchmark(lambda: sum(1 for _ in chunked(EXTENTS_20K, CHUNK)))
