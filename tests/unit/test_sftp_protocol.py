"""SFTP v3 encoding and decoding, byte for byte against the draft's layouts."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zsagent.sftp import protocol as p


def test_init_packet_is_length_type_version():
    assert p.init_packet() == struct.pack(">IBI", 5, p.FXP_INIT, 3)


def test_request_packet_layout():
    pkt = p.packet(p.FXP_REMOVE, 7, p.string("/a/b"))
    assert pkt == struct.pack(">IBII", 1 + 4 + 4 + 4, p.FXP_REMOVE, 7, 4) + b"/a/b"


def test_write_header_plus_data_is_a_whole_write_packet():
    data = b"x" * 1000
    pkt = p.write_header(9, b"HANDLE", 1 << 40, len(data)) + data
    length, kind, rid = struct.unpack(">IBI", pkt[:9])
    assert (length, kind, rid) == (len(pkt) - 4, p.FXP_WRITE, 9)
    reader = p.Reader(pkt[9:])
    assert reader.string() == b"HANDLE"
    assert reader.u64() == 1 << 40
    assert reader.string() == data
    assert reader.remaining == 0


@given(size=st.none() | st.integers(0, 2**64 - 1), perms=st.none() | st.integers(0, 0o177777),
       times=st.none() | st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
       ids=st.none() | st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
       ext=st.dictionaries(st.binary(max_size=8), st.binary(max_size=8), max_size=3))
def test_attrs_round_trip(size, perms, times, ids, ext):
    attrs = p.Attrs(size=size, permissions=perms, uid=ids and ids[0], gid=ids and ids[1],
                    atime=times and times[0], mtime=times and times[1], extended=ext)
    reader = p.Reader(attrs.encode())
    assert reader.attrs() == attrs
    assert reader.remaining == 0


def test_attrs_size_only_is_flag_and_u64():
    assert p.Attrs(size=5).encode() == struct.pack(">IQ", p.ATTR_SIZE, 5)
    assert p.Attrs().encode() == struct.pack(">I", 0)


def test_file_type_from_permissions():
    assert p.Attrs(permissions=0o040755).is_dir and not p.Attrs(permissions=0o040755).is_regular
    assert p.Attrs(permissions=0o100644).is_regular
    assert not p.Attrs().is_dir


def test_parse_version_with_extensions():
    body = bytes([p.FXP_VERSION]) + p.u32(3) + p.string("posix-rename@openssh.com") + p.string("1") \
        + p.string("fsync@openssh.com") + p.string("1")
    assert p.parse_version(body) == (3, {"posix-rename@openssh.com": b"1", "fsync@openssh.com": b"1"})


def test_parse_version_refuses_another_first_packet():
    with pytest.raises(p.ProtocolError):
        p.parse_version(bytes([p.FXP_STATUS]) + p.u32(3))


def test_status_with_and_without_message():
    full = p.Reader(p.u32(p.FX_NO_SUCH_FILE) + p.string("No such file") + p.string("en"))
    assert p.parse_status(full) == p.Status(p.FX_NO_SUCH_FILE, "No such file")
    assert p.parse_status(full).name == "SSH_FX_NO_SUCH_FILE"
    assert p.parse_status(p.Reader(p.u32(p.FX_OK))) == p.Status(p.FX_OK, "")  # old servers stop early
    assert p.Status(99, "").name == "status 99"


def test_name_reply_and_limits_reply():
    body = p.u32(1) + p.string("/tmp") + p.string("drwxrwxrwt ...") + p.Attrs(permissions=0o41777).encode()
    assert p.parse_name(p.Reader(body)) == [("/tmp", p.Attrs(permissions=0o41777))]
    limits = p.parse_limits(p.Reader(p.u64(262144) + p.u64(261120) + p.u64(261120) + p.u64(1000)))
    assert limits.max_write_bytes == 261120 == p.MAX_WRITE_DATA_BYTES


def test_reader_refuses_to_run_past_the_end():
    reader = p.Reader(p.u32(10) + b"short")
    with pytest.raises(p.ProtocolError, match="too short"):
        reader.string()
