"""ZStack's typed answers: the ``schema`` map its REST server adds to an answer.

The map names, for every object in the answer that is not a plain value, the Java class it is, keyed by
its path: ``{"inventory": "org.zstack.header.image.ImageInventory",
"inventory.backupStorageRefs[0]": "org.zstack.header.image.ImageBackupStorageRefInventory"}``. ZStack's
Java SDK reads it to build typed objects (sdk/.../ApiResult.java l.100-127 in zstackio/zstack); without
it, nested lists arrive as untyped maps.

ZStack's rule (zstackio/zstack 5a29293bd5, header/src/main/java/org/zstack/header/message/
JsonSchemaBuilder.java, called from rest/src/main/java/org/zstack/rest/RestServer.java writeResponse
l.1204-1232):

- Which answers: only successful results (writeResponse runs for a 200 only; a failure sets just
  ``error``, RestServer l.736-738 and l.1237-1240; a 202 carries ``location``/``apiTimeout`` only, l.1268-1274
  and l.720-724). It is added when the request has an ``X-JSON-Schema`` header (RestServer l.1227: the
  header's presence, whatever its value; Spring's HttpHeaders are case-insensitive), and always for a query
  (``APIQueryReply``, l.1228-1229), so ``GET /images`` and ``GET /images/{uuid}`` (the same
  APIQueryImageMsg, header/.../image/APIQueryImageMsg.java l.14-19) always carry it. A job's poll and its
  web hook apply the header of the request that polls (l.704-740) or that created the job (l.322-336).
- Top level (JsonSchemaBuilder l.108-136): each entry of the answer map; null and plain values (strings,
  numbers, booleans: ``total``) are skipped; a list gives one entry per element at ``<key>[<i>]``; an
  object gives ``<key>``.
- Inside an object (l.33-99): its fields in declaration order (subclass first, FieldUtils.getAllFields);
  null fields are skipped; ``java.*`` values get no entry themselves (String, Long, Boolean, Timestamp
  dates, ...); a ``java.*`` collection whose element type is a ZStack class gives ``<field>[<i>]`` per
  element, a map of ZStack values ``<field>.<key>``, raw or ``java.*``-typed ones nothing; a ZStack
  object gives ``<field>``. Paths join with ``.``. An object is recorded after its children, and the
  finished map is reversed (l.141-146), so a parent comes before its children and later siblings
  before earlier ones.

The agent's answers are JSON, so the Java classes are modelled here: for each class, the fields that hold
ZStack objects, in declaration order (every other field holds plain values).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

#: The request header that asks for the map (rest/.../RestConstants.java l.11).
HEADER = "X-JSON-Schema"

IMAGE = "org.zstack.header.image.ImageInventory"
IMAGE_REF = "org.zstack.header.image.ImageBackupStorageRefInventory"
SYSTEM_TAG = "org.zstack.header.tag.SystemTagInventory"
TASK_PROGRESS = "org.zstack.header.core.progress.TaskProgressInventory"

#: class -> its fields that hold ZStack objects (or lists of them), in declaration order -> their class.
_OBJECT_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    # header/.../image/ImageInventory.java l.28-50: only these two of its fields are not java.* values.
    IMAGE: (("backupStorageRefs", IMAGE_REF), ("systemTags", SYSTEM_TAG)),
    # header/.../image/ImageBackupStorageRefInventory.java l.26-34: strings, a long, timestamps.
    IMAGE_REF: (),
    # header/.../tag/SystemTagInventory.java (+ TagInventory): strings, a Boolean, timestamps.
    SYSTEM_TAG: (),
    # header/.../core/progress/TaskProgressInventory.java l.12-20: ``opaque`` is a raw LinkedHashMap
    # (no generic type, so no entry); ``subTasks`` is a List<TaskProgressInventory>.
    TASK_PROGRESS: (("subTasks", TASK_PROGRESS),),
}


class Kind(enum.StrEnum):
    """Which API an answer belongs to (its keys that hold objects: _ANSWER_FIELDS)."""

    #: APICreateDataVolumeTemplateFromVolumeEvent: the create, its poll and its web hook.
    CREATE = "create"
    #: APIQueryImageReply: GET /images, and GET /images/{uuid} (APIQueryImageMsg's optionalPaths).
    QUERY_IMAGES = "query-images"
    #: APIGetTaskProgressReply.
    TASK_PROGRESS = "task-progress"
    #: APIDeleteImageEvent.
    DELETE = "delete"

    @property
    def always(self) -> bool:
        """Queries carry the map even without the header (RestServer l.1228-1229)."""
        return self is Kind.QUERY_IMAGES


#: GET /images/{uuid} is ZStack's query of one image.
GET_IMAGE = Kind.QUERY_IMAGES

#: The answer's keys that hold objects -> their class; the keys come from each response class's
#: @RestResponse (RestServer writeResponse l.1209-1217).
_ANSWER_FIELDS: dict[Kind, tuple[tuple[str, str], ...]] = {
    # header/.../image/APICreateDataVolumeTemplateFromVolumeEvent.java l.10-12: allTo="inventory".
    # A deletion's event has no such key, so a deletion job's result fits here too.
    Kind.CREATE: (("inventory", IMAGE),),
    # header/.../image/APIQueryImageReply.java l.8-10: allTo="inventories" (+ ``total``, a Long).
    Kind.QUERY_IMAGES: (("inventories", IMAGE),),
    # header/.../core/progress/APIGetTaskProgressReply.java l.12-14: allTo="inventories".
    Kind.TASK_PROGRESS: (("inventories", TASK_PROGRESS),),
    # header/.../image/APIDeleteImageEvent.java l.6: a bare @RestResponse, no fields: an empty map.
    Kind.DELETE: (),
}


def schema_of(body: Mapping[str, Any], kind: Kind) -> dict[str, str]:
    """The schema map ZStack gives for the successful answer ``body`` of API ``kind``."""
    recorded: list[tuple[str, str]] = []  # in ZStack's recording order: children before their parent
    for key, cls in _ANSWER_FIELDS[kind]:
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, Mapping):
                    _walk(item, cls, f"{key}[{i}]", recorded)
        elif isinstance(value, Mapping):
            _walk(value, cls, key, recorded)
    return dict(reversed(recorded))


def _walk(obj: Mapping[str, Any], cls: str, path: str, recorded: list[tuple[str, str]]) -> None:
    for name, field_cls in _OBJECT_FIELDS[cls]:
        value = obj.get(name)
        if isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, Mapping):
                    _walk(item, field_cls, f"{path}.{name}[{i}]", recorded)
        elif isinstance(value, Mapping):
            _walk(value, field_cls, f"{path}.{name}", recorded)
    recorded.append((path, cls))


def wants_schema(headers: Mapping[str, str]) -> bool:
    """Whether the request has the header, with any value, its name in any case."""
    return any(name.lower() == HEADER.lower() for name in headers)


def add_schema(body: dict[str, Any], kind: Kind) -> dict[str, Any]:
    """``body`` with ZStack's ``schema`` map; an error answer (``error`` set) is returned as it is."""
    if body.get("error") is not None:
        return body
    return {**body, "schema": schema_of(body, kind)}


def with_schema(body: dict[str, Any], kind: Kind, headers: Mapping[str, str]) -> dict[str, Any]:
    """The answer as ZStack sends it: with the schema map when the request asks for it (or ``kind`` is a
    query), otherwise unchanged."""
    if kind.always or wants_schema(headers):
        return add_schema(body, kind)
    return body
