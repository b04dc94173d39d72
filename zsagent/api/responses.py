"""The agent's JSON answers: rendered so that no stored text can make an answer fail.

Starlette's JSONResponse encodes with ``ensure_ascii=False`` and then UTF-8, which raises on a lone
surrogate; one such name stored by an older agent (zsagent.json_input now refuses them) would then turn
every list that holds it into a 500. Here the answer falls back to ASCII-escaped JSON (``"\\ud800"``),
which is still valid JSON that every client reads back to the same string; answers without such text
are byte for byte what Starlette sends.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse as _StarletteJSON


class JSONResponse(_StarletteJSON):
    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, indent=None,
                              separators=(",", ":")).encode("ascii")
