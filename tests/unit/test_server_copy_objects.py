"""Which RBD objects a server-side copy asks the OSDs for (zsagent.ceph.server_copy.object_numbers)."""

from zsagent.ceph.server_copy import object_numbers
from zsagent.copy.extents import Extent, Kind

MiB = 1024 * 1024


def test_every_object_a_data_extent_touches_once_in_order():
    extents = [Extent(0, MiB + 1, Kind.DATA),            # objects 0 and 1 (one byte of 1)
               Extent(MiB + 1, 2 * MiB, Kind.HOLE),
               Extent(3 * MiB + 1, MiB - 1, Kind.DATA),  # object 3, its last bytes
               Extent(4 * MiB, 1, Kind.DATA),            # object 4, its first byte
               Extent(4 * MiB + 1, 3 * MiB, Kind.ZERO),  # known zeros: nothing to copy
               Extent(9 * MiB - 5, 5, Kind.DATA)]        # the partial last object 8
    assert object_numbers(extents, MiB) == [0, 1, 3, 4, 8]


def test_no_data_no_objects():
    assert object_numbers([Extent(0, 10 * MiB, Kind.HOLE)], 4 * MiB) == []
    assert object_numbers([], 4 * MiB) == []
