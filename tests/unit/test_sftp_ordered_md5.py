"""MD5 of out-of-order pieces equals the MD5 of the whole."""

import hashlib
import random
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zsagent.sftp.ordered_md5 import OrderedMd5


@given(st.lists(st.tuples(st.integers(1, 5000), st.booleans()), max_size=30), st.randoms())
def test_any_order_gives_the_md5_of_the_whole(pieces, rnd):
    content, parts, pos = bytearray(), [], 0
    for length, zero in pieces:
        data = None if zero else bytes(rnd.getrandbits(8) for _ in range(length))
        content += bytes(length) if zero else data
        parts.append((pos, length, data))
        pos += length
    rnd.shuffle(parts)
    md5 = OrderedMd5()
    for part in parts:
        md5.add(*part)
    assert md5.hexdigest(len(content)) == hashlib.md5(content).hexdigest()


def test_threads_adding_concurrently():
    blob = random.randbytes(64 * 4096)
    parts = [(i * 4096, 4096, blob[i * 4096:(i + 1) * 4096]) for i in range(64)]
    random.shuffle(parts)
    md5 = OrderedMd5()
    threads = [threading.Thread(target=lambda chunk=parts[i::4]: [md5.add(*p) for p in chunk]) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert md5.hexdigest(len(blob)) == hashlib.md5(blob).hexdigest()


def test_gaps_and_repeats_are_errors():
    md5 = OrderedMd5()
    md5.add(10, 5, None)
    with pytest.raises(ValueError, match="only 0 of 15 bytes"):
        md5.hexdigest(15)
    md5.add(0, 10, b"a" * 10)
    assert md5.hashed_bytes == 15
    with pytest.raises(ValueError, match="already added"):
        md5.add(0, 10, b"a" * 10)
    with pytest.raises(ValueError, match="does not match"):
        md5.add(15, 3, b"ab")
