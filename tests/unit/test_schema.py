"""ZStack's schema map, against maps written by hand from ZStack's rule (JsonSchemaBuilder: every
non-plain object by path, children recorded before their parent, the whole map reversed)."""

from __future__ import annotations

import pytest

from zsagent.api.schema import GET_IMAGE, Kind, add_schema, schema_of, wants_schema, with_schema

IMAGE = "org.zstack.header.image.ImageInventory"
REF = "org.zstack.header.image.ImageBackupStorageRefInventory"
PROGRESS = "org.zstack.header.core.progress.TaskProgressInventory"
DATE = "Jan 6, 2017 3:51:16 AM"
SCHEMA_ON = {"X-JSON-Schema": "true"}


def ref(image: str, bs: str) -> dict:
    return {"imageUuid": image, "backupStorageUuid": bs, "installPath": f"ceph://pool/{image}",
            "exportUrl": None, "exportMd5Sum": None, "status": "Ready", "createDate": DATE, "lastOpDate": DATE}


def image(uuid: str, refs: list[dict] | None) -> dict:
    return {"uuid": uuid, "name": "t", "description": None, "state": "Enabled", "status": "Ready",
            "size": 1 << 20, "actualSize": 4096, "md5Sum": None, "url": "volume://v", "mediaType":
            "DataVolumeTemplate", "guestOsType": None, "type": "zstack", "platform": None, "architecture": None,
            "format": "raw", "system": False, "virtio": False, "createDate": DATE, "lastOpDate": DATE,
            "backupStorageRefs": refs}


def test_create_success():
    body = {"success": True, "inventory": image("i0", [ref("i0", "b0"), ref("i0", "b1")])}
    answer = with_schema(body, Kind.CREATE, SCHEMA_ON)
    assert answer == {**body, "schema": {"inventory": IMAGE, "inventory.backupStorageRefs[1]": REF,
                                         "inventory.backupStorageRefs[0]": REF}}
    assert list(answer["schema"]) == ["inventory", "inventory.backupStorageRefs[1]",
                                      "inventory.backupStorageRefs[0]"]


def test_create_without_the_header_is_unchanged():
    body = {"success": True, "inventory": image("i0", [ref("i0", "b0")])}
    assert with_schema(body, Kind.CREATE, {"Authorization": "OAuth x"}) is body


def test_failure_gets_no_schema():
    body = {"success": False, "error": {"code": "SYS.1003", "description": "Resource not found",
                                        "details": "volume not found", "cause": {"code": "SYS.1006"}}}
    assert with_schema(body, Kind.CREATE, SCHEMA_ON) == body
    assert "schema" not in with_schema(body, Kind.QUERY_IMAGES, {})


def test_query_with_two_images_of_two_refs_each():
    body = {"inventories": [image("i0", [ref("i0", "b0"), ref("i0", "b1")]),
                            image("i1", [ref("i1", "b0"), ref("i1", "b1")])], "total": 2}
    expected = {
        "inventories[1]": IMAGE,
        "inventories[1].backupStorageRefs[1]": REF,
        "inventories[1].backupStorageRefs[0]": REF,
        "inventories[0]": IMAGE,
        "inventories[0].backupStorageRefs[1]": REF,
        "inventories[0].backupStorageRefs[0]": REF,
    }
    for headers in (SCHEMA_ON, {}):  # a query carries it always
        answer = with_schema(body, Kind.QUERY_IMAGES, headers)
        assert answer["schema"] == expected and list(answer["schema"]) == list(expected)
        assert answer["inventories"] == body["inventories"] and answer["total"] == 2


def test_get_image_is_a_query_and_empty_results_give_an_empty_map():
    assert GET_IMAGE is Kind.QUERY_IMAGES
    assert with_schema({"inventories": []}, GET_IMAGE, {}) == {"inventories": [], "schema": {}}


def test_null_and_empty_lists_and_plain_values_get_no_entry():
    assert schema_of({"inventory": image("i0", None)}, Kind.CREATE) == {"inventory": IMAGE}
    assert schema_of({"inventory": image("i0", [])}, Kind.CREATE) == {"inventory": IMAGE}
    assert schema_of({"inventory": None, "success": True}, Kind.CREATE) == {}


def test_system_tags_of_an_image_are_typed_after_its_refs():
    inv = {**image("i0", [ref("i0", "b0")]), "systemTags": [{"uuid": "t", "tag": "a::b"}]}
    assert list(schema_of({"inventory": inv}, Kind.CREATE).items()) == [
        ("inventory", IMAGE), ("inventory.systemTags[0]", "org.zstack.header.tag.SystemTagInventory"),
        ("inventory.backupStorageRefs[0]", REF)]


def test_task_progress():
    body = {"inventories": [{"taskUuid": "j", "type": "Progress", "content": "40", "opaque": {"a": {"b": 1}},
                             "time": 1, "phase": "copying", "percent": 40, "bytesDone": 4, "bytesTotal": 10}]}
    assert with_schema(body, Kind.TASK_PROGRESS, SCHEMA_ON)["schema"] == {"inventories[0]": PROGRESS}
    assert with_schema(body, Kind.TASK_PROGRESS, {}) is body
    nested = {"inventories": [{"taskUuid": "j", "subTasks": [{"taskUuid": "s0"}, {"taskUuid": "s1"}]}]}
    assert list(schema_of(nested, Kind.TASK_PROGRESS).items()) == [
        ("inventories[0]", PROGRESS), ("inventories[0].subTasks[1]", PROGRESS),
        ("inventories[0].subTasks[0]", PROGRESS)]


def test_delete():
    assert with_schema({}, Kind.DELETE, SCHEMA_ON) == {"schema": {}}
    assert with_schema({"success": True}, Kind.DELETE, SCHEMA_ON) == {"success": True, "schema": {}}
    assert with_schema({}, Kind.DELETE, {}) == {}


@pytest.mark.parametrize("headers, wanted", [
    ({"X-JSON-Schema": "true"}, True), ({"x-json-schema": "false"}, True), ({"X-Json-Schema": ""}, True),
    ({"X-JSON": "true"}, False), ({}, False)])
def test_the_header_counts_by_presence_in_any_case(headers, wanted):
    assert wants_schema(headers) is wanted


def test_add_schema_does_not_change_its_argument():
    body = {"inventory": image("i0", [])}
    assert "schema" in add_schema(body, Kind.CREATE) and "schema" not in body
