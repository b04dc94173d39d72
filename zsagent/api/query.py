"""ZStack-style query conditions for listing images: ``q=field=value`` (also ``!=``, ``>``, ``<``,
``>=``, ``<=``, ``?=`` for "one of a,b,c", ``~=`` for SQL-like ``%`` patterns)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from zsagent.errors import invalid

_CONDITION_RE = re.compile(r"^([A-Za-z][A-Za-z0-9_.]*)(!=|>=|<=|\?=|~=|=|>|<)(.*)$", re.S)


def parse_conditions(conditions: list[str]) -> list[Callable[[dict[str, Any]], bool]]:
    return [_condition(c) for c in conditions]


def _condition(text: str) -> Callable[[dict[str, Any]], bool]:
    match = _CONDITION_RE.match(text)
    if not match:
        raise invalid(f"query condition {text!r} is not 'field<op>value' (ops: = != > < >= <= ?= ~=)")
    field, op, value = match.groups()

    def get(item: dict[str, Any]) -> Any:
        for part in field.split("."):
            if isinstance(item, list):  # e.g. backupStorageRefs.backupStorageUuid: any element
                return [x.get(part) for x in item if isinstance(x, dict)]
            item = item.get(part) if isinstance(item, dict) else None
        return item

    def matches(actual: Any) -> bool:
        if isinstance(actual, list):
            return any(matches(a) for a in actual)
        text_value = "" if actual is None else str(actual).lower() if isinstance(actual, bool) else str(actual)
        if op == "=":
            return text_value == value
        if op == "!=":
            return text_value != value
        if op == "?=":
            return text_value in value.split(",")
        if op == "~=":
            pattern = "^" + ".*".join(re.escape(p) for p in value.split("%")) + "$"
            return re.match(pattern, text_value, re.S) is not None
        try:
            left, right = float(actual), float(value)
        except (TypeError, ValueError):
            left, right = text_value, value
        return {">": left > right, "<": left < right, ">=": left >= right, "<=": left <= right}[op]

    return lambda item: matches(get(item))
