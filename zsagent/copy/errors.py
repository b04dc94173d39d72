"""What can go wrong in a copy, as exceptions the service maps to ZStack error codes."""

from __future__ import annotations


class CopyError(Exception):
    """A copy failed; nothing it created is left behind."""


class CopyCancelled(CopyError):
    """The copy was cancelled by its caller."""

    def __init__(self, reason: str = "copy cancelled") -> None:
        super().__init__(reason)


class SourceError(CopyError):
    """Reading the source failed (the source is untouched)."""


class SinkError(CopyError):
    """Writing to, committing or creating one destination failed.

    ``description`` names the destination in messages; ``sink`` is the destination object itself (a Sink
    or a Converter; None when unknown), which is how callers tell destinations apart; ``__cause__`` the
    storage error.
    """

    def __init__(self, description: str, message: str, sink: object | None = None) -> None:
        super().__init__(f"{description}: {message}")
        self.description = description
        self.sink = sink


class AllSinksFailed(CopyError):
    """Every destination failed; ``errors`` holds one SinkError per destination."""

    def __init__(self, errors: list[SinkError]) -> None:
        super().__init__("; ".join(str(e) for e in errors) or "no destination succeeded")
        self.errors = errors
