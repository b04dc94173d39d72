"""zsagent.copy.md5 and the native zsagent._md5: digests equal hashlib's for every input.

The native tests run once per kernel the CPU has (``_md5.KERNELS``). They skip when the extension is not
built, except in CI (``CI=true``), where a missing extension is a failure: the package build must make it.
"""

from __future__ import annotations

import hashlib
import os
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zsagent.copy import md5 as md5_mod
from zsagent.copy.md5 import HashlibMD5, new_md5

native = md5_mod.native
KERNELS = list(native.KERNELS) if native is not None else []

needs_native = pytest.mark.skipif(native is None and os.environ.get("CI") != "true",
                                  reason="zsagent._md5 is not built")

# RFC 1321 appendix A.5
RFC_SUITE = [
    (b"", "d41d8cd98f00b204e9800998ecf8427e"),
    (b"a", "0cc175b9c0f1b6a831c399e269772661"),
    (b"abc", "900150983cd24fb0d6963f7d28e17f72"),
    (b"message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
    (b"abcdefghijklmnopqrstuvwxyz", "c3fcd3d76192e4007dfb496cca67e13b"),
    (b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", "d174ab98d277d9f5a5611c2c9f419d9f"),
    (b"1234567890" * 8, "57edf4a22be3c955ac49da2e2107b67a"),
]

# A stream is a list of operations: ("data", bytes) hashed with update(), ("zeros", n) with update_zeros().
# Data is drawn mostly random, sometimes as zeros (64-byte-aligned or not) to reach the zero-block path.
_data_op = st.one_of(
    st.binary(max_size=300),
    st.integers(min_value=0, max_value=700).map(bytes),
    st.tuples(st.binary(max_size=70), st.integers(min_value=0, max_value=4), st.binary(max_size=70)).map(
        lambda t: t[0] + bytes(64 * t[1]) + t[2]),
).map(lambda b: ("data", b))
_zeros_op = st.integers(min_value=0, max_value=5000).map(lambda n: ("zeros", n))
streams = st.lists(st.one_of(_data_op, _zeros_op), max_size=12)


def expected(ops) -> str:
    ref = hashlib.md5()
    for kind, value in ops:
        ref.update(value if kind == "data" else bytes(value))
    return ref.hexdigest()


def feed(hasher, ops):
    for kind, value in ops:
        if kind == "data":
            hasher.update(value)
        else:
            hasher.update_zeros(value)
    return hasher


def test_ci_builds_the_extension():
    if os.environ.get("CI") == "true":
        assert native is not None, "zsagent._md5 was not built by the package build"


# ---------------------------------------------------------------- hashlib fallback


@pytest.mark.parametrize(("data", "digest"), RFC_SUITE)
def test_hashlib_fallback_rfc_suite(data, digest):
    assert HashlibMD5(data).hexdigest() == digest


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(streams)
def test_hashlib_fallback_matches_hashlib(ops):
    assert feed(HashlibMD5(), ops).hexdigest() == expected(ops)


def test_hashlib_fallback_zeros_longer_than_its_buffer():
    n = md5_mod.ZERO_BUFFER_BYTES * 2 + 12345
    h = HashlibMD5(b"x")
    h.update_zeros(n)
    assert h.hexdigest() == hashlib.md5(b"x" + bytes(n)).hexdigest()


def test_hashlib_fallback_rejects_negative_zeros():
    with pytest.raises(ValueError):
        HashlibMD5().update_zeros(-1)


def test_hashlib_fallback_copy_is_independent():
    a = HashlibMD5(b"abc")
    b = a.copy()
    b.update(b"def")
    assert a.hexdigest() == hashlib.md5(b"abc").hexdigest()
    assert b.digest() == hashlib.md5(b"abcdef").digest()


def test_new_md5_follows_the_flag():
    h = new_md5()
    assert isinstance(h, HashlibMD5) is not md5_mod.USE_NATIVE
    assert isinstance(new_md5(use_native=False), HashlibMD5)


def test_choice_env_override(monkeypatch):
    """The override decides without measuring; without it the figures do (tests/unit/test_md5_choice.py)."""
    for value, native_expected in [("hashlib", False), ("native", native is not None)]:
        monkeypatch.setattr(md5_mod, "_choice", None)
        monkeypatch.setenv("ZSAGENT_MD5", value)
        assert md5_mod.USE_NATIVE is native_expected
        assert isinstance(new_md5(), HashlibMD5) is not native_expected


# ---------------------------------------------------------------- native


@needs_native
def test_native_has_the_scalar_kernel_last():
    assert KERNELS[-1] == "scalar"
    assert native.MD5().kernel == KERNELS[0]
    with pytest.raises(ValueError):
        native.MD5(kernel="no-such-kernel")


@needs_native
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(("data", "digest"), RFC_SUITE)
def test_native_rfc_suite(kernel, data, digest):
    assert native.MD5(data, kernel=kernel).hexdigest() == digest


@needs_native
@pytest.mark.parametrize("kernel", KERNELS)
def test_native_every_length_around_the_padding_boundaries(kernel):
    data = os.urandom(300)
    for n in range(0, 300):
        assert native.MD5(data[:n], kernel=kernel).digest() == hashlib.md5(data[:n]).digest(), n
        assert native.MD5(bytes(n), kernel=kernel).digest() == hashlib.md5(bytes(n)).digest(), n
        h = native.MD5(kernel=kernel)
        h.update_zeros(n)
        assert h.digest() == hashlib.md5(bytes(n)).digest(), n


@needs_native
@pytest.mark.parametrize("kernel", KERNELS)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(ops=streams)
def test_native_matches_hashlib(kernel, ops):
    assert feed(native.MD5(kernel=kernel), ops).hexdigest() == expected(ops)


@needs_native
@pytest.mark.parametrize("kernel", KERNELS)
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(min_size=0, max_size=3000), cuts=st.lists(st.integers(0, 3000), max_size=6))
def test_native_any_split_points(kernel, data, cuts):
    h = native.MD5(kernel=kernel)
    pos = 0
    for cut in sorted(c for c in cuts if c <= len(data)):
        h.update(memoryview(data)[pos:cut])
        pos = cut
    h.update(data[pos:])
    assert h.hexdigest() == hashlib.md5(data).hexdigest()


@needs_native
@pytest.mark.parametrize("kernel", KERNELS)
def test_native_large_updates_release_the_gil_and_stay_right(kernel):
    """Big buffers (GIL released), zero runs inside data, and four threads on four objects at once."""
    block = os.urandom(1 << 20)
    mixed = block[:100_000] + bytes(300_000) + block[100_000:] + bytes(64 * 1000)
    want = hashlib.md5(mixed * 3).hexdigest()
    results = {}

    def work(i):
        h = native.MD5(kernel=kernel)
        for _ in range(3):
            h.update(bytearray(mixed))
        results[i] = h.hexdigest()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == dict.fromkeys(range(4), want)


@needs_native
@pytest.mark.parametrize("kernel", KERNELS)
def test_native_update_zeros_large_counts(kernel):
    n = (3 << 20) + 17
    h = native.MD5(b"head", kernel=kernel)
    h.update_zeros(n)
    h.update(b"tail")
    assert h.hexdigest() == hashlib.md5(b"head" + bytes(n) + b"tail").hexdigest()
    assert h.length == n + 8


@needs_native
def test_native_update_zeros_argument_checks():
    h = native.MD5()
    with pytest.raises(ValueError):
        h.update_zeros(-1)
    with pytest.raises(TypeError):
        h.update_zeros(1.5)
    with pytest.raises(OverflowError):
        h.update_zeros(1 << 70)
    with pytest.raises(TypeError):
        h.update("text")


@needs_native
@pytest.mark.parametrize("kernel", KERNELS)
def test_native_digest_does_not_finish_the_stream(kernel):
    h = native.MD5(b"abc", kernel=kernel)
    assert h.digest() == hashlib.md5(b"abc").digest()
    h.update(b"def")
    assert h.hexdigest() == hashlib.md5(b"abcdef").hexdigest()
    c = h.copy()
    c.update(b"g")
    assert h.hexdigest() == hashlib.md5(b"abcdef").hexdigest()
    assert c.hexdigest() == hashlib.md5(b"abcdefg").hexdigest()
    assert c.kernel == kernel


@needs_native
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(before=streams, after=streams, kernels=st.tuples(st.sampled_from(KERNELS or ["scalar"]),
                                                        st.sampled_from(KERNELS or ["scalar"])))
def test_native_state_round_trip(before, after, kernels):
    """state() at any point, from_state() in a fresh object (any kernel), then more input."""
    first = feed(native.MD5(kernel=kernels[0]), before)
    state = first.state()
    assert len(state) == 28 + first.length % 64
    resumed = native.MD5.from_state(state, kernel=kernels[1])
    assert resumed.state() == state
    assert resumed.length == first.length
    assert resumed.hexdigest() == expected(before)
    assert feed(resumed, after).hexdigest() == expected(before + after)
    assert first.hexdigest() == expected(before)  # the exporter is untouched


@needs_native
def test_native_state_survives_bytes_copies():
    h = native.MD5(os.urandom(1000))
    state = bytes(bytearray(h.state()))
    h.update(b"more")
    resumed = md5_mod.resume_md5(state)
    resumed.update(b"more")
    assert resumed.digest() == h.digest()


@needs_native
def test_native_from_state_rejects_garbage():
    good = native.MD5(b"x" * 70).state()  # 70 % 64 = 6 buffered bytes
    for bad in (b"", b"zsm5", b"nope" + good[4:], good[:-1], good + b"\0", b"\0" * 28):
        with pytest.raises(ValueError):
            native.MD5.from_state(bad)
