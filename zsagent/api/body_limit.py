"""A limit on request bodies, applied before any route reads one.

ZStack's REST server reads any body whole (RestServer.java toHttpEntity); an agent that did the same
would hold whatever a client sends in memory. Bodies here are small (the create call's fields are
bounded: a name of 255 and a description of 2048 characters, a few uuids and tags), so a body over
``max_bytes`` is refused at once with 413 and a plain-text reason, as ZStack's REST server refuses
requests it cannot take (RestException: status and text, RestServer.java l.685-686); the connection is
then closed without reading the rest. A body within the limit is read here and handed to the route.
"""

from __future__ import annotations

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The default of ``[agent] max_body_bytes``.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024  # keep equal to AgentSettings.max_body_bytes


def too_large_text(max_bytes: int) -> str:
    return f"the request body is larger than this agent's limit of {max_bytes} bytes ([agent] max_body_bytes)"


class BodyLimit:
    """ASGI middleware: HTTP requests whose body exceeds ``max_bytes`` get 413 before the app sees them."""

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the app see it
                await self.app(scope, _replay([message], receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        whole = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([whole], receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = PlainTextResponse(too_large_text(self.max_bytes), status_code=413,
                                   headers={"Connection": "close"})
        await answer(scope, receive, send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive that first gives ``messages``, then reads from ``receive``."""
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
