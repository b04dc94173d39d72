"""ZStack's REST query over a list of inventories: what the SDK's QueryAction sends to ``GET /v1/<things>``.

``run_query(inventories, params, schema)`` is a pure function: ``params`` are the request's query
parameters as (name, value) pairs in order, the answer is the body ZStack gives. Parameters, as ZStack's
REST server reads them (zstackio/zstack snapshot 5a29293bd5, rest/src/main/java/org/zstack/rest/
RestServer.java ``handleQueryApi`` l.1074-1198; the SDK side: sdk/src/main/java/org/zstack/sdk/
ZSClient.java ``fillQueryApiRequestBuilder`` l.387-441):

- ``q`` (repeatable): ``<field><op><value>``. The operator is the first of ``!= >= <= !?= !~= ~= ?= = > <
  is null`` / ``not null`` (RestServer.java l.1052-1072, in that order) that occurs anywhere in the
  condition, and the condition is split at its first occurrence; the field is trimmed, the value is not
  (l.1140-1175). ``?=`` / ``!?=`` take a comma-separated list (search/src/main/java/org/zstack/query/
  QueryFacadeImpl.java l.383-395); ``~=`` / ``!~=`` are SQL LIKE (``%`` any run, ``_`` one character);
  ``<field> is null`` / ``<field> not null`` take no value. A dotted field (``backupStorageRefs.
  backupStorageUuid``) matches when any element of the list matches. Conditions are ANDed.
- ``limit`` (default 1000, header/src/main/java/org/zstack/header/query/APIQueryMessage.java l.12),
  ``start``: integers (RestServer.java l.1104-1115).
- ``sort``: ``+field`` / ``-field`` / ``field`` (ascending) (l.1124-1135); null sorts first ascending.
- ``count=true``: only ``{"total": n}``; ``replyWithCount=true``: ``total`` beside ``inventories``, the
  number of matches before ``start``/``limit`` (QueryFacadeImpl.java l.457-494, RestServer.java
  l.1219-1225).
- ``fields``: comma-separated top-level fields; each inventory keeps only those (l.1177-1188).

Where this differs from ZStack, on purpose: ZStack ignores parameters it does not know (``groupBy`` and
``filterName`` it knows, but they need its database) and answers a bad ``limit``/``start`` or a
condition without operator with a plain-text 400; here every such problem is ``SYS.1007`` with ZStack's
wording where it has one, so the caller can tell what was wrong.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from zsagent.errors import invalid

DEFAULT_LIMIT = 1000
KNOWN_PARAMETERS = ("q", "limit", "start", "sort", "count", "replyWithCount", "fields")

# RestServer.java l.1052-1072: a contained operator after the one containing it ("=" after "!=").
OPERATORS = ("!=", ">=", "<=", "!?=", "!~=", "~=", "?=", "=", ">", "<", "is null", "not null")
_NO_VALUE = ("is null", "not null")

# Field kinds of an inventory, for comparing a condition's text with a value: "str", "int", "bool", or a
# nested schema for a list of objects.
Schema = Mapping[str, Any]

IMAGE_BACKUP_STORAGE_REF_SCHEMA: Schema = {
    "imageUuid": "str", "backupStorageUuid": "str", "installPath": "str", "exportUrl": "str",
    "exportMd5Sum": "str", "status": "str", "createDate": "str", "lastOpDate": "str",
}
# ImageInventory as zsagent/inventory.py fills it.
IMAGE_SCHEMA: Schema = {
    "uuid": "str", "name": "str", "description": "str", "state": "str", "status": "str", "size": "int",
    "actualSize": "int", "md5Sum": "str", "url": "str", "mediaType": "str", "guestOsType": "str",
    "type": "str", "platform": "str", "architecture": "str", "format": "str", "system": "bool",
    "virtio": "bool", "createDate": "str", "lastOpDate": "str",
    "backupStorageRefs": IMAGE_BACKUP_STORAGE_REF_SCHEMA,
}


def run_query(inventories: list[dict[str, Any]], params: Iterable[tuple[str, str]],
              schema: Schema = IMAGE_SCHEMA) -> dict[str, Any]:
    """The query's answer: ``{"inventories": [...]}``, with ``"total"`` for replyWithCount, or only
    ``{"total": n}`` for count; ZsError SYS.1007 for a parameter, operator, field or number it cannot
    take."""
    conditions, limit, start, sort, count, with_count, fields = [], DEFAULT_LIMIT, 0, None, False, False, None
    for raw_name, raw_value in params:
        name, value = raw_name.strip(), raw_value.strip()
        if name == "q":
            conditions.append(_condition(raw_value, schema))
        elif name in ("limit", "start"):
            number = _natural(name, value)
            limit, start = (number, start) if name == "limit" else (limit, number)
        elif name == "sort":
            sort = _sort(value, schema)
        elif name in ("count", "replyWithCount"):
            flag = _boolean(name, value)
            count, with_count = (flag, with_count) if name == "count" else (count, flag)
        elif name == "fields":
            fields = _fields(value, schema)
        else:
            raise invalid(f"Invalid query parameter[{raw_name}]. Valid query parameters are "
                          f"{', '.join(KNOWN_PARAMETERS)}")
    found = [inv for inv in inventories if all(match(inv) for match in conditions)]
    if count:
        return {"total": len(found)}
    if sort is not None:
        field, descending = sort
        present = [i for i in found if i.get(field) is not None]
        absent = [i for i in found if i.get(field) is None]
        present.sort(key=lambda i: i[field], reverse=descending)
        found = present + absent if descending else absent + present
    page = found[start:start + limit]
    if fields is not None:
        page = [{f: inv.get(f) for f in fields} for inv in page]
    return {"inventories": page, "total": len(found)} if with_count else {"inventories": page}


def _natural(name: str, value: str) -> int:
    if not re.fullmatch(r"[+-]?\d{1,18}", value):  # a Java long; 5000 digits would stop int() itself
        raise invalid(f"Invalid query parameter. '{name}' must be an integer")  # RestServer.java l.1108
    number = int(value)
    if number < 0:
        raise invalid(f"Invalid query parameter. '{name}' must not be negative")
    return number


def _boolean(name: str, value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise invalid(f"Invalid query parameter. '{name}' must be true or false")
    return value.lower() == "true"


def _sort(value: str, schema: Schema) -> tuple[str, bool]:
    descending = value.startswith("-")
    field = value.lstrip("+-") if value[:1] in ("+", "-") else value
    if not isinstance(schema.get(field), str):
        raise invalid(f"Invalid query parameter. 'sort' field[{field}] is not a sortable field; valid fields "
                      f"are {', '.join(k for k, v in schema.items() if isinstance(v, str))}")
    return field, descending


def _fields(value: str, schema: Schema) -> list[str]:
    fields = [f.strip() for f in value.split(",") if f.strip()]
    if not fields:
        raise invalid("Invalid query parameter. 'fields' contains zero field")  # RestServer.java l.1184
    unknown = [f for f in fields if f not in schema]
    if unknown:
        raise invalid(f"Invalid query parameter. 'fields' has unknown field[{', '.join(unknown)}]")
    return fields


def _condition(text: str, schema: Schema):
    op = next((o for o in OPERATORS if o in text), None)
    if op is None:
        raise invalid(f"Invalid query parameter. The '{text}' in the parameter[q] doesn't contain any query "
                      f"operator. Valid query operators are [{', '.join(OPERATORS)}]")  # l.1150-1153
    field, value = text.split(op, 1)
    field = field.strip()
    if op in _NO_VALUE:
        value = None
    path = field.split(".")
    kind = _kind(path, schema, text)
    expected = _parse(kind, op, value, text)

    def get(item: Any, parts: list[str]) -> list[Any]:
        """Every value at ``parts`` under ``item``; a list of objects contributes each element's value."""
        if not parts:
            return [item]
        value = item.get(parts[0]) if isinstance(item, dict) else None
        if len(parts) > 1 and isinstance(value, list):
            return [v for element in value for v in get(element, parts[1:])]
        return get(value, parts[1:])

    def matches(inventory: dict[str, Any]) -> bool:
        values = get(inventory, path)
        if len(path) > 1:  # a nested field: any element of the list
            return any(_test(op, actual, expected) for actual in values)
        return _test(op, values[0], expected)

    return matches


def _kind(path: list[str], schema: Schema, text: str) -> str:
    here: Any = schema
    for i, part in enumerate(path):
        if not isinstance(here, Mapping) or part not in here:
            where = ".".join(path[:i + 1])
            raise invalid(f"Invalid query parameter. The '{text}' in the parameter[q] names an unknown "
                          f"field[{where}]")
        here = here[part]
    if not isinstance(here, str):
        raise invalid(f"Invalid query parameter. The '{text}' in the parameter[q] names field[{'.'.join(path)}], "
                      "a list: name one of its elements' fields")
    return here


def _parse(kind: str, op: str, value: str | None, text: str) -> Any:
    """The condition's value in the field's type: a list for ?= and !?=, a regex for ~= and !~=."""
    if value is None:
        return None
    if op in ("~=", "!~="):
        pattern = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in value)
        return re.compile(pattern, re.S)
    if op in ("?=", "!?="):
        return [_typed(kind, v, text) for v in value.split(",")]
    if kind == "bool" and op not in ("=", "!="):
        raise invalid(f"Invalid query parameter. The '{text}' in the parameter[q] compares a boolean field "
                      f"with '{op}'")
    return _typed(kind, value, text)


def _typed(kind: str, value: str, text: str) -> Any:
    if kind == "int":
        try:
            return int(value)
        except ValueError:
            raise invalid(f"Invalid query parameter. The '{text}' in the parameter[q]: '{value}' is not an "
                          "integer") from None
    if kind == "bool":
        if value.lower() not in ("true", "false"):
            raise invalid(f"Invalid query parameter. The '{text}' in the parameter[q]: '{value}' is not true "
                          "or false")
        return value.lower() == "true"
    return value


def _test(op: str, actual: Any, expected: Any) -> bool:
    if op == "is null":
        return actual is None
    if op == "not null":
        return actual is not None
    if actual is None:  # SQL: a comparison with NULL is never true
        return False
    if op == "=":
        return actual == expected
    if op == "!=":
        return actual != expected
    if op == "?=":
        return actual in expected
    if op == "!?=":
        return actual not in expected
    if op == "~=":
        return expected.fullmatch(str(actual)) is not None
    if op == "!~=":
        return expected.fullmatch(str(actual)) is None
    return {">": actual > expected, ">=": actual >= expected, "<": actual < expected,
            "<=": actual <= expected}[op]
