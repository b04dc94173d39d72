"""Point-in-time, read-only views of a volume that the pipeline reads from."""

from zsagent.sources.base import QemuInput, Source

__all__ = ["QemuInput", "Source"]
