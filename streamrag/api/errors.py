"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` with the matching status.

OpenAI clients read the status to decide what to do (401: check the key,
429: retry after ``Retry-After``, 400: the request is wrong, do not retry),
and show ``error.message`` to the user, so each refusal says what was wrong
and how to fix it. Core exceptions are mapped here in one place.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from streamrag.archive import ArchiveUnavailable
from streamrag.config import ConfigError
from streamrag.text import MessageError
from streamrag.tools import ToolError
from streamrag.transcript import TranscriptError

logger = logging.getLogger(__name__)


class APIError(Exception):
    """A refusal to send back as-is: HTTP ``status`` plus OpenAI's error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",  # noqa: A002 - OpenAI's field name
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def as_api_error(exc: BaseException) -> APIError:
    """The API error for an exception raised while serving a request."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, MessageError):
        return APIError(400, str(exc), param="messages", code="invalid_message")
    if isinstance(exc, ToolError):
        return APIError(400, str(exc), param="tools", code="invalid_tools")
    if isinstance(exc, ConfigError):
        return APIError(400, str(exc), code="invalid_settings")
    if isinstance(exc, ArchiveUnavailable):
        return APIError(503, f"the archive is unavailable: {exc}", type="server_error", code="archive_unavailable")
    if isinstance(exc, TranscriptError):
        return APIError(503, f"the transcript is unavailable: {exc}", type="server_error", code="transcript_error")
    logger.exception("request failed", exc_info=exc)
    return APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")


def install_error_handlers(app: FastAPI) -> None:
    """Every error the app can answer with, OpenAI's shape: ours, FastAPI's validation and routing errors."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        param = None
        for error in exc.errors():
            loc = [str(part) for part in error.get("loc", ()) if part != "body"]
            param = param or (".".join(loc) or None)
            problems.append(f"{'.'.join(loc) or 'body'}: {error.get('msg')}")
        return APIError(400, "invalid request: " + "; ".join(problems), param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return APIError(exc.status_code, str(exc.detail), type=kind, code=code).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return as_api_error(exc).response()
