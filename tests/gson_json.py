"""JSON text as ZStack's management node writes it (Gson through `JSONObjectUtil.toJsonString`).

Facts, from [zs] `utils/src/main/java/org/zstack/utils/gson/JSONObjectUtil.java` l.19-31 at commit 5a29293:
- the Gson instance is built with `.disableHtmlEscaping()` (l.30), so `< > & = '` are written as they are,
  not as `\\u003c` etc.; `serializeNulls()` is not called, so null fields and null map values are omitted
  (null list elements stay, as JSON `null`);
- output is compact (no pretty printing on that instance) and UTF-8 on the wire
  (`Content-Type: application/json; charset=utf-8`, RESTFacadeImpl.java l.334).
Gson's JsonWriter still escapes `"`, `\\`, the control characters below U+0020 (`\\t \\b \\n \\r \\f` in short
form, the rest as lowercase `\\u00xx`) and always U+2028/U+2029; everything else, non-ASCII included, is raw.
Python's `json.dumps(ensure_ascii=False)` does the same except for U+2028/U+2029, which are patched below.
Floats are not used by these commands; Gson would write 1e-05 as 1.0E-5.
"""

from __future__ import annotations

import json


def drop_nulls(value):
    """`value` without None members of objects (Gson with serializeNulls off); list elements are kept."""
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [drop_nulls(v) for v in value]
    return value


def gson_dumps(value) -> str:
    """`value` serialised the way the MN's Gson writes it (see the module docstring)."""
    text = json.dumps(drop_nulls(value), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    # U+2028/U+2029 can only occur inside strings, so a textual replace is exact
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
