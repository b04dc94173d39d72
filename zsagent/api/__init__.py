"""The HTTP API: ZStack's REST shapes over the service."""

from zsagent.api.app import create_app

__all__ = ["create_app"]
