"""Remote paths: absolute, normalised POSIX paths; a template lives under ``<path>.part`` until published."""

from __future__ import annotations

import posixpath

from zsagent.sinks.base import PART_SUFFIX


def checked_remote_path(path: str) -> str:
    """``path`` itself when it is an absolute, normalised POSIX path naming a file, else ValueError.

    Normalised: no ``.``/``..`` parts, no doubled or trailing slashes, no NUL or line breaks.
    """
    if not isinstance(path, str) or not path.startswith("/") or path == "/":
        raise ValueError(f"remote path must be an absolute file path, not {path!r}")
    if any(c in path for c in "\0\n\r"):
        raise ValueError(f"remote path {path!r} contains a control character")
    if posixpath.normpath(path) != path or path.startswith("//"):
        raise ValueError(f"remote path {path!r} is not normalised")
    return path


def part_path(path: str) -> str:
    """Where the file is written before it is published."""
    return path + PART_SUFFIX


def ancestors(path: str) -> list[str]:
    """Directories above ``path``, nearest first, ``/`` excluded: /a/b/c -> [/a/b, /a]."""
    result = []
    parent = posixpath.dirname(path)
    while parent not in ("/", ""):
        result.append(parent)
        parent = posixpath.dirname(parent)
    return result
