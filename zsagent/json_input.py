"""JSON from a client, read so that what the agent keeps can always be sent back.

``json.loads`` lets through two things that break later, far from the request: a document nested so
deeply that the parser runs out of recursion (RecursionError, not ValueError), and lone UTF-16
surrogates (``"\\ud800"``, or the bytes ED A0 80, which it decodes with ``surrogatepass``). A surrogate
is not a character: a string holding one cannot be encoded as UTF-8, so a name that kept it would make
every answer that lists it fail. Both are refused here as SYS.1007, before anything is stored.
"""

from __future__ import annotations

import json
from typing import Any

from zsagent.errors import invalid

#: The deepest nesting a body may have (objects and arrays); the create call needs 3.
MAX_DEPTH = 32


def load_json(raw: bytes | str) -> Any:
    """The parsed document, or ZsError SYS.1007 naming what is wrong with it."""
    try:
        document = json.loads(raw)
    except RecursionError:
        raise invalid(f"the request body is nested too deeply (more than {MAX_DEPTH} levels)") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise invalid(f"the request body is not valid JSON: {e}") from None
    check_text(document)
    return document


def check_text(document: Any) -> None:
    """SYS.1007 when ``document`` nests deeper than MAX_DEPTH or any of its keys or strings holds a
    surrogate code point; the error names the field (``params.name``). Iterative, so any depth is safe."""
    stack: list[tuple[Any, str, int]] = [(document, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, str):
            _check_string(value, where)
            continue
        if not isinstance(value, dict | list):
            continue
        if depth >= MAX_DEPTH:
            raise invalid(f"the request body is nested too deeply (more than {MAX_DEPTH} levels)")
        if isinstance(value, dict):
            for key, item in value.items():
                path = f"{where}.{key}" if where else key
                _check_string(key, f"{path} (the key)")
                stack.append((item, path, depth + 1))
        else:
            stack.extend((item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value))


def _check_string(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        code = ord(text[e.start])
        shown = where.encode("utf-8", "backslashreplace").decode("utf-8")
        name = f"field '{shown}'" if where else "the request body"
        raise invalid(f"{name} holds a lone UTF-16 surrogate (U+{code:04X} at character {e.start}), which is not "
                      "a character; send the text as valid Unicode") from None
