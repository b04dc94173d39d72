"""Destinations a template is written to; each publishes atomically or leaves nothing behind."""

from zsagent.sinks.base import Sink, SinkResult

__all__ = ["Sink", "SinkResult"]
