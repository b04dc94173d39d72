"""zsagent.api.query.run_query: ZStack's REST query parameters over a list of ImageInventories."""

from __future__ import annotations

import pytest

from zsagent.api.query import run_query
from zsagent.errors import ZsError


def image(uuid, name, size, *, description=None, system=False, bs=()):
    return {"uuid": uuid, "name": name, "description": description, "size": size, "actualSize": size // 2,
            "format": "qcow2", "system": system, "virtio": False, "platform": None,
            "backupStorageRefs": [{"imageUuid": uuid, "backupStorageUuid": b, "status": "Ready"} for b in bs]}


IMAGES = [
    image("a1", "alpha", 300, description="first", bs=("bs1",)),
    image("b2", "beta", 100, bs=("bs1", "bs2")),
    image("c3", "gamma_1", 200, description="100% done", system=True),
    image("d4", "delta", 100, bs=("bs2",)),
]


def uuids(params):
    return [i["uuid"] for i in run_query(IMAGES, params)["inventories"]]


def q(*conditions):
    return uuids([("q", c) for c in conditions])


def error(params) -> str:
    with pytest.raises(ZsError) as info:
        run_query(IMAGES, params)
    assert info.value.error.code == "SYS.1007"
    return info.value.error.details


def test_no_parameters_lists_everything():
    assert run_query(IMAGES, []) == {"inventories": IMAGES}


@pytest.mark.parametrize("condition, expected", [
    ("name=beta", ["b2"]),
    ("name!=beta", ["a1", "c3", "d4"]),
    ("size>100", ["a1", "c3"]),
    ("size>=200", ["a1", "c3"]),
    ("size<200", ["b2", "d4"]),
    ("size<=100", ["b2", "d4"]),
    ("name?=alpha,delta,zeta", ["a1", "d4"]),
    ("name!?=alpha,delta", ["b2", "c3"]),
    ("size?=100,300", ["a1", "b2", "d4"]),
    ("name~=%ta", ["b2", "d4"]),
    ("name~=_eta", ["b2"]),                  # _ is one character
    ("name~=gamma\\_1", []),                  # no escapes: a literal backslash
    ("name!~=%a", ["c3"]),
    ("description is null", ["b2", "d4"]),
    ("description not null", ["a1", "c3"]),
    ("description~=100%", ["c3"]),
    ("description!=first", ["c3"]),          # SQL: NULL != 'first' is not true
    ("system=true", ["c3"]),
    ("system=FALSE", ["a1", "b2", "d4"]),
    ("backupStorageRefs.backupStorageUuid=bs2", ["b2", "d4"]),
    ("backupStorageRefs.backupStorageUuid!=bs1", ["b2", "d4"]),  # any ref that is not bs1
    ("name= beta", []),                      # the value is not trimmed (RestServer)
    (" name =beta", ["b2"]),                 # the field is
])
def test_each_operator(condition, expected):
    assert q(condition) == expected


def test_conditions_are_anded_and_the_first_operator_found_wins():
    assert q("size=100", "name~=%ta") == ["b2", "d4"]
    assert q("size=100", "name=delta") == ["d4"]
    # ZStack looks for "!=" before "=" anywhere in the text: "name=a!=b" is field "name=a"
    assert "unknown field[name=a]" in error([("q", "name=a!=b")])


def test_sort_limit_start():
    assert uuids([("sort", "+size")]) == ["b2", "d4", "c3", "a1"]
    assert uuids([("sort", "-size")]) == ["a1", "c3", "b2", "d4"]
    assert uuids([("sort", " size")]) == ["b2", "d4", "c3", "a1"]   # "+size" unescaped in a URL
    assert uuids([("sort", "name")]) == ["a1", "b2", "d4", "c3"]
    assert uuids([("sort", "description")]) == ["b2", "d4", "c3", "a1"]  # null first ascending
    assert uuids([("sort", "-description")]) == ["a1", "c3", "b2", "d4"]
    assert uuids([("sort", "name"), ("limit", "2")]) == ["a1", "b2"]
    assert uuids([("sort", "name"), ("limit", "2"), ("start", "1")]) == ["b2", "d4"]
    assert uuids([("start", "10")]) == []
    assert uuids([("limit", "0")]) == []


def test_count_and_reply_with_count():
    assert run_query(IMAGES, [("q", "size=100"), ("count", "true")]) == {"total": 2}
    assert run_query(IMAGES, [("count", "true"), ("limit", "1")]) == {"total": 4}
    answer = run_query(IMAGES, [("replyWithCount", "true"), ("limit", "1"), ("sort", "name")])
    assert answer == {"inventories": [IMAGES[0]], "total": 4}
    assert run_query(IMAGES, [("replyWithCount", "false")]) == {"inventories": IMAGES}
    assert run_query(IMAGES, [("count", "false"), ("limit", "1")]) == {"inventories": IMAGES[:1]}


def test_fields():
    answer = run_query(IMAGES, [("fields", "uuid, name"), ("q", "size=100")])
    assert answer == {"inventories": [{"uuid": "b2", "name": "beta"}, {"uuid": "d4", "name": "delta"}]}


@pytest.mark.parametrize("params, text", [
    ([("limit", "ten")], "'limit' must be an integer"),
    ([("start", "1.5")], "'start' must be an integer"),
    ([("limit", "-1")], "'limit' must not be negative"),
    ([("q", "name")], "doesn't contain any query operator"),
    ([("q", "nosuch=1")], "unknown field[nosuch]"),
    ([("q", "backupStorageRefs.nosuch=1")], "unknown field[backupStorageRefs.nosuch]"),
    ([("q", "backupStorageRefs=x")], "a list"),
    ([("q", "size>big")], "'big' is not an integer"),
    ([("q", "size?=1,x")], "'x' is not an integer"),
    ([("q", "system=yes")], "'yes' is not true or false"),
    ([("q", "system>true")], "compares a boolean field"),
    ([("sort", "-nosuch")], "'sort' field[nosuch]"),
    ([("sort", "backupStorageRefs")], "'sort' field[backupStorageRefs]"),
    ([("count", "yes")], "'count' must be true or false"),
    ([("replyWithCount", "1")], "'replyWithCount' must be true or false"),
    ([("fields", " , ")], "'fields' contains zero field"),
    ([("fields", "uuid,nosuch")], "unknown field[nosuch]"),
    ([("groupBy", "name")], "Invalid query parameter[groupBy]"),
    ([("nonsense", "1")], "Invalid query parameter[nonsense]"),
])
def test_errors_are_sys_1007(params, text):
    assert text in error(params)
