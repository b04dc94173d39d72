from hypothesis import given
from hypothesis import strategies as st

from zsagent.copy.extents import Extent, Kind, allocated_bytes, chunked, coalesce, covering, merge_ranges

ranges = st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 800)), max_size=12)


def _as_set(rs):
    return {b for o, n in rs for b in range(o, o + n)}


@given(ranges)
def test_merge_ranges_keeps_exactly_the_same_bytes_sorted_and_disjoint(rs):
    merged = merge_ranges(rs)
    assert _as_set(merged) == _as_set(rs)
    for (o1, n1), (o2, _) in zip(merged, merged[1:], strict=False):
        assert o1 + n1 < o2  # touching ranges are merged too


@given(st.integers(0, 6000), ranges)
def test_covering_tiles_the_volume_and_marks_data_exactly(size, rs):
    extents = list(covering(size, rs))
    pos = 0
    for e in extents:
        assert e.offset == pos and e.length > 0
        pos = e.end
    assert pos == size
    data = {b for e in extents if e.kind is Kind.DATA for b in range(e.offset, e.end)}
    assert data == {b for b in _as_set(rs) if b < size}


@given(st.integers(0, 6000), ranges, st.sampled_from([512, 1000, 4096]))
def test_chunked_pieces_stay_within_chunk_boundaries_and_keep_kinds(size, rs, chunk):
    extents = list(covering(size, rs))
    pieces = list(chunked(extents, chunk))
    assert list(coalesce(pieces)) == list(coalesce(extents))
    for p in pieces:
        assert 0 < p.length <= chunk
        assert p.offset // chunk == (p.end - 1) // chunk


def test_coalesce_merges_same_kind_only():
    exts = [Extent(0, 10, Kind.DATA), Extent(10, 5, Kind.DATA), Extent(15, 5, Kind.ZERO),
            Extent(20, 5, Kind.HOLE), Extent(25, 0, Kind.DATA)]
    assert list(coalesce(exts)) == [Extent(0, 15, Kind.DATA), Extent(15, 5, Kind.ZERO),
                                    Extent(20, 5, Kind.HOLE)]
    assert allocated_bytes(exts) == 15
