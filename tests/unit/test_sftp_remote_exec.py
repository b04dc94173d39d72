"""Parsing what md5sum and stat print on the server; quoting for the remote shell; remote paths."""

import shlex

import pytest

from zsagent.sftp.paths import ancestors, checked_remote_path, part_path
from zsagent.sftp.remote_exec import command_line, parse_md5sum, parse_stat_blocks


def test_md5sum_output():
    assert parse_md5sum("d41d8cd98f00b204e9800998ecf8427e  /bs/t.raw\n") == "d41d8cd98f00b204e9800998ecf8427e"
    # GNU md5sum escapes odd file names and marks the line with a backslash
    assert parse_md5sum("\\D41D8CD98F00B204E9800998ECF8427E  /bs/a\\nb\n") == "d41d8cd98f00b204e9800998ecf8427e"


@pytest.mark.parametrize("junk", ["", "md5sum: /bs/t.raw: No such file or directory\n", "d41d8cd98f00b204  x\n",
                                  "Last login: today\nd41d8cd98f00b204e9800998ecf8427e  x\n"])
def test_md5sum_output_that_is_not_a_digest_is_refused(junk):
    with pytest.raises(ValueError):
        parse_md5sum(junk)


def test_stat_blocks():
    assert parse_stat_blocks("8 512\n") == 4096
    with pytest.raises(ValueError):
        parse_stat_blocks("stat: cannot stat\n")


def test_command_line_quotes_every_word():
    line = command_line([["stat", "-c", "%b %B", "--", "/bs/a b;rm -rf x"], ["md5sum", "--", "/bs/$(x)"]])
    first, second = line.split(" && ")
    assert shlex.split(first) == ["stat", "-c", "%b %B", "--", "/bs/a b;rm -rf x"]
    assert shlex.split(second) == ["md5sum", "--", "/bs/$(x)"]


def test_remote_paths():
    assert checked_remote_path("/bs/t/u.raw") == "/bs/t/u.raw"
    for bad in ["bs/t.raw", "/", "/bs/../etc/passwd", "/bs//t", "/bs/t/", "/bs/./t", "/bs/t\n", "//bs/t"]:
        with pytest.raises(ValueError):
            checked_remote_path(bad)
    assert part_path("/bs/t.raw") == "/bs/t.raw.part"
    assert ancestors("/a/b/c.raw") == ["/a/b", "/a"]
    assert ancestors("/c.raw") == []
