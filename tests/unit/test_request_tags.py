"""systemTags/userTags at the top level and inside ``params`` (where ZStack's Java SDK puts them)."""

from __future__ import annotations

import pytest

from zsagent.errors import ZsError
from zsagent.request import parse_body

VOLUME = "0cd599ec519249489475112a058bb93a"


def parse(params: dict, **top):
    return parse_body({"params": {"name": "t", **params}, **top}, VOLUME)


def test_tags_inside_params_are_read():
    request = parse({"systemTags": ["template::format::raw"], "userTags": ["u"]})
    assert request.system_tags == ("template::format::raw",) and request.user_tags == ("u",)
    assert request.system_tag("template::format") == "raw"


def test_both_places_merge_in_order_each_tag_once():
    request = parse({"systemTags": ["ceph::copyMode::clone", "template::format::raw"], "userTags": ["b", "c"]},
                    systemTags=["template::format::raw", "ceph::copyMode::clone", "template::format::raw"],
                    userTags=["a", "b"])
    assert request.system_tags == ("template::format::raw", "ceph::copyMode::clone")
    assert request.user_tags == ("a", "b", "c")


@pytest.mark.parametrize("params, says", [
    ({"systemTags": ["no::such::tag"]}, "system tag 'no::such::tag' is not supported"),
    ({"systemTags": "template::format::raw"}, "field 'params.systemTags' must be a list of strings"),
    ({"userTags": [None]}, "field 'params.userTags' must not contain null"),
    ({"systemTags": ["template::compression::zstd", "template::format::raw"]}, "needs the qcow2 format"),
])
def test_tags_inside_params_are_checked_like_the_top_levels(params, says):
    with pytest.raises(ZsError) as failed:
        parse(params)
    assert failed.value.error.code == "SYS.1007" and says in failed.value.error.details


def test_the_mix_of_both_places_is_checked_too():
    with pytest.raises(ZsError, match="needs the qcow2 format"):
        parse({"systemTags": ["template::format::raw"]}, systemTags=["template::compression::zlib"])
