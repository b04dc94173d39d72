"""What the HTTP server answers before, or instead of, a route: ZStack's words, never FastAPI's.

- No route for the path: 404 ``no api mapping to <path>`` in plain text (RestServer.java l.673-676).
- A path served, but not with this method: 405 ``The method[<m>] is not allowed for the path[<p>]`` in
  plain text (RestServer.java l.802-804), with an ``Allow`` header naming every method the path serves
  (RFC 9110 15.5.6; Starlette would name only those of the first route that matched the path).
- Anything FastAPI itself would call a validation error (its 422 ``{"detail": [...]}``): 400 with the
  SYS.1007 ErrorCode, like every other bad argument.
- An unexpected exception: 500 with the SYS.1000 ErrorCode, its type and message, never a traceback (the
  traceback goes to the log).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Match

from zsagent import errors
from zsagent.api.responses import JSONResponse
from zsagent.errors import ErrorCode

log = logging.getLogger(__name__)


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        path = request.url.path
        if exc.status_code == 404:
            return PlainTextResponse(f"no api mapping to {path}", status_code=404)
        if exc.status_code == 405:
            return PlainTextResponse(f"The method[{request.method}] is not allowed for the path[{path}]",
                                     status_code=405, headers={"Allow": ", ".join(allowed_methods(app, request))})
        return PlainTextResponse(str(exc.detail), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', 'invalid')}"
                            for e in exc.errors())
        return JSONResponse({"error": ErrorCode(errors.INVALID_ARGUMENT, details).to_json()}, status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed unexpectedly", request.method, request.url.path, exc_info=exc)
        error = ErrorCode(errors.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
        return JSONResponse({"error": error.to_json()}, status_code=500)


def allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method some route serves for the request's path, sorted."""
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(request.scope)
        if match in (Match.FULL, Match.PARTIAL):
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)
