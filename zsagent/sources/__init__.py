"""Point-in-time, read-only views of a volume that the pipeline reads from."""

from zsagent.sources.base import Source

__all__ = ["Source"]
