"""The OpenAI-compatible HTTP API (`streamrag api`): chat completions, models, embeddings, memory.

Any OpenAI client (the ``openai`` package, LangChain's ``ChatOpenAI``,
LlamaIndex's ``OpenAILike``, Open WebUI, curl) talks to streamrag as to any
chat model, while each conversation keeps its attention-sink cache and its
archive on the server:

- **Which conversation**: a request names it with the ``X-Session-Id`` header,
  else with the body's ``user`` field. Without a name, the message list is
  matched against recent conversations (:class:`~streamrag.session.AnonymousSessions`)
  and continues the one it extends. The answer carries the session's id in an
  ``X-Session-Id`` header. A list that extends the session prefills only its new
  messages (``usage.prompt_tokens_details.cached_tokens`` shows the rest came from
  the cache); one that diverges (an edit, a retry) forks the session, and the
  messages it replaces stay in the transcript and the archive.
- **Many clients, one model**: ``server.max_active`` requests generate at once,
  taking turns token by token; ``server.max_queue`` more wait in line; beyond
  that 429 with ``Retry-After``. A client that disconnects stops its generation.
- **Memory**: ``/v1/sessions/{id}/memories`` searches, lists and forgets what the
  session's archive holds; ``/v1/sessions/{id}/messages`` reads its transcript.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import ipaddress
import logging
import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from streamrag.api.admission import Admission, Slot
from streamrag.api.completions import ChunkStream, completion, sse
from streamrag.api.errors import APIError, as_api_error, install_error_handlers
from streamrag.api.schemas import ChatCompletionRequest, EmbeddingRequest
from streamrag.api.turns import TurnWorker
from streamrag.config import ConfigError, ServerSettings, StreamRAGConfig
from streamrag.models import EMBEDDED_MODEL_NAME
from streamrag.session import AnonymousSessions, Assistant, Resources
from streamrag.tools import ToolCallStream

logger = logging.getLogger(__name__)

SESSION_HEADER = "X-Session-Id"
_SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
EMBEDDED_EMBEDDER_NAME = "all-MiniLM-L6-v2"
API_KEY_ENV = "STREAMRAG_API_KEY"


def served_model_name(config: StreamRAGConfig) -> str:
    """The id clients send as ``model``: ``server.model_name``, a hub id as is, a file or folder by its name."""
    if config.server.model_name:
        return config.server.model_name
    spec = config.model.spec
    if not spec:
        return EMBEDDED_MODEL_NAME
    path = Path(spec).expanduser()
    if path.exists():
        return path.name.removesuffix(".gguf")
    return spec


def embedder_name(config: StreamRAGConfig) -> str:
    model = config.archive.embedding_model
    return Path(model).name if model else EMBEDDED_EMBEDDER_NAME


def api_key_of(settings: ServerSettings) -> str | None:
    return settings.api_key or os.environ.get(API_KEY_ENV) or None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(settings: ServerSettings) -> None:
    """Refuse to serve beyond the loopback address without an API key: anyone reaching the port could read
    every session's transcript and memories."""
    if not is_loopback(settings.host) and api_key_of(settings) is None:
        raise ConfigError(
            f"refusing to serve on {settings.host} without an API key: anyone who reaches the port could read "
            "every session. Set server.api_key, --api-key or $STREAMRAG_API_KEY (or bind 127.0.0.1)."
        )


def session_name(value: str | None, source: str) -> str | None:
    """A client's name for its conversation, checked (it becomes a key in the transcript and archive)."""
    if value is None or value == "":
        return None
    if not _SESSION_ID.match(value):
        raise APIError(
            400,
            f"{source} must be 1-128 characters of letters, digits and . _ : @ - (starting with a letter "
            f"or digit), got {value[:40]!r}",
            param=source,
            code="invalid_session_id",
        )
    return value


def create_app(resources: Resources, settings: ServerSettings | None = None) -> FastAPI:
    """The API over ``resources`` (one model, its archive and transcript); ``settings`` default to the config's."""
    settings = settings or resources.config.server
    api_key = api_key_of(settings)
    model_id = served_model_name(resources.config)
    embedding_id = embedder_name(resources.config)
    admission = Admission(settings.max_active, settings.max_queue)
    anonymous = AnonymousSessions(settings.anonymous_sessions)
    started_at = int(time.time())

    app = FastAPI(title="streamrag", summary="OpenAI-compatible API over streamrag sessions", version="0.1.0")
    app.state.resources = resources
    app.state.admission = admission
    install_error_handlers(app)

    async def authorized(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(
                401,
                "missing or wrong API key: send it as `Authorization: Bearer <key>`",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)

    def check_model(name: str, served: str, kind: str) -> None:
        if name != served:
            raise APIError(
                404,
                f"unknown {kind} model {name!r}; this server serves {served!r}",
                param="model",
                code="model_not_found",
            )

    @app.get("/health", include_in_schema=False)
    async def health() -> dict[str, Any]:
        return {"status": "ok", "generating": admission.active, "waiting": admission.waiting}

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [_model(model_id), _model(embedding_id)]}

    @app.get("/v1/models/{name:path}", dependencies=[Depends(authorized)])
    async def get_model(name: str) -> dict[str, Any]:
        if name not in (model_id, embedding_id):
            raise APIError(404, f"unknown model {name!r}; this server serves {model_id!r}", code="model_not_found")
        return _model(name)

    def _model(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": started_at, "owned_by": "streamrag"}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorized)])
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        check_model(body.model, model_id, "chat")
        try:
            body.check()
        except Exception as exc:
            raise as_api_error(exc) from exc
        named = session_name(request.headers.get(SESSION_HEADER), SESSION_HEADER) or session_name(body.user, "user")
        messages = [message.as_history() for message in body.messages]
        options = {
            "tools": body.tools,
            "tool_choice": body.tool_choice,
            "response_format": body.response_format,
            "parallel_tool_calls": body.parallel_tool_calls if body.parallel_tool_calls is not None else True,
            **body.generation(),
        }

        def start():
            session = anonymous.resolve(resources, named, messages)
            return session.stream_messages(messages, **options)

        slot = await admission.acquire()
        worker = None
        try:
            worker = TurnWorker(start, name=f"api-{named or 'anonymous'}"[:40])
            reply = await worker.started()
        except BaseException as exc:
            slot.release()
            if worker is not None:
                worker.cancel()
            if not isinstance(exc, Exception):  # cancelled (the server is stopping): not an error to report
                raise
            raise as_api_error(exc) from exc
        headers = {SESSION_HEADER: reply.assistant.session_id}
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                _streamed(worker, slot, ChunkStream(reply, model_id), include_usage),
                media_type="text/event-stream",
                headers={**headers, "Cache-Control": "no-cache"},
                background=BackgroundTask(_finish, worker, slot),
            )
        watcher = asyncio.create_task(_watch_disconnect(request, worker))
        try:
            async for _ in worker.pieces():
                pass
        except Exception as exc:
            raise as_api_error(exc) from exc
        finally:
            watcher.cancel()
            _finish(worker, slot)
        return JSONResponse(completion(reply, model_id, int(time.time())), headers=headers)

    @app.post("/v1/embeddings", dependencies=[Depends(authorized)])
    async def embeddings(body: EmbeddingRequest) -> dict[str, Any]:
        check_model(body.model, embedding_id, "embedding")
        texts = body.texts()
        embedder = resources.archive.embedder
        vectors = await run_in_threadpool(embedder, texts)
        dimensions = len(vectors[0])
        if body.dimensions is not None and body.dimensions != dimensions:
            raise APIError(400, f"{embedding_id} makes {dimensions}-dimensional vectors", param="dimensions")
        tokens = await run_in_threadpool(_count_tokens, embedder, texts)
        data = [
            {"object": "embedding", "index": i, "embedding": _encoded(vector, body.encoding_format)}
            for i, vector in enumerate(vectors)
        ]
        return {
            "object": "list",
            "data": data,
            "model": embedding_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    # -- memory ------------------------------------------------------------
    async def stored_session(session_id: str) -> str:
        session_name(session_id, "session id")
        if await run_in_threadpool(resources.transcript.count, session_id) == 0:  # a database round trip
            raise APIError(404, f"no session {session_id!r}", param="session_id", code="session_not_found")
        return session_id

    @app.get("/v1/sessions/{session_id}", dependencies=[Depends(authorized)])
    async def session_info(session_id: str) -> dict[str, Any]:
        await stored_session(session_id)
        info = await run_in_threadpool(resources.transcript.get_session, session_id)
        return {
            "id": info.session_id,
            "object": "session",
            "title": info.title,
            "created_at": info.created_at,
            "updated_at": info.updated_at,
            "messages": info.message_count,
        }

    @app.get("/v1/sessions/{session_id}/messages", dependencies=[Depends(authorized)])
    async def session_messages(session_id: str) -> dict[str, Any]:
        await stored_session(session_id)
        rows = await run_in_threadpool(resources.transcript.messages, session_id, include_superseded=True)
        data = [
            {
                "id": m.message_id,
                "role": m.role,
                "content": m.content,
                "turn": m.turn,
                "created_at": m.created_at,
                "superseded": m.superseded_at is not None,
            }
            for m in rows
        ]
        return {"object": "list", "data": data}

    @app.get("/v1/sessions/{session_id}/memories", dependencies=[Depends(authorized)])
    async def memories(
        session_id: str,
        query: str | None = Query(default=None, description="Search for this; without it, list in order."),
        k: int = Query(default=5, ge=1, le=100),
        limit: int = Query(default=100, ge=1, le=1000),
        offset: int = Query(default=0, ge=0),
    ) -> dict[str, Any]:
        await stored_session(session_id)
        try:
            if query is not None and query.strip():
                pending = resources.indexer.pending_chunks(session_id)
                found = await run_in_threadpool(
                    lambda: resources.archive.search(session_id, query, k=k, pending=pending)
                )
            else:
                found = await run_in_threadpool(resources.archive.list, session_id, limit, offset)
        except Exception as exc:
            raise as_api_error(exc) from exc
        return {"object": "list", "data": [_memory(m) for m in found]}

    @app.delete("/v1/sessions/{session_id}/memories/{chunk_id}", dependencies=[Depends(authorized)])
    async def forget_memory(session_id: str, chunk_id: str) -> dict[str, Any]:
        await stored_session(session_id)
        session = await run_in_threadpool(resources.session, session_id)
        try:
            forgotten = await run_in_threadpool(session.forget, chunk_id)
        except KeyError as exc:
            raise APIError(404, f"no memory {chunk_id!r} in session {session_id!r}", code="memory_not_found") from exc
        except Exception as exc:
            raise as_api_error(exc) from exc
        return {"id": chunk_id, "object": "memory.deleted", "deleted": True, "messages": list(forgotten.message_ids)}

    @app.delete("/v1/sessions/{session_id}", dependencies=[Depends(authorized)])
    async def forget_session(session_id: str) -> dict[str, Any]:
        await stored_session(session_id)
        session: Assistant = await run_in_threadpool(resources.session, session_id)
        forgotten = await run_in_threadpool(session.forget_session)
        return {"id": session_id, "object": "session.deleted", "deleted": True, "messages": len(forgotten.message_ids)}

    return app


class BodyLimit:
    """Refuse a body over ``limit`` bytes (by its Content-Length) with 413 before it is read.

    A plain ASGI middleware: Starlette's ``BaseHTTPMiddleware`` wraps ``receive``
    so that ``Request.is_disconnected`` never sees the client leave, and a
    non-streamed turn would run to its end for nobody.
    """

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.limit:
                refusal = APIError(
                    413,
                    f"request body of {int(length)} bytes is over server.max_request_bytes={self.limit}",
                    code="request_too_large",
                )
                await refusal.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _streamed(worker: TurnWorker, slot: Slot, chunks: ChunkStream, include_usage: bool) -> AsyncIterator[str]:
    """The SSE body: a role chunk, the text or tool-call pieces, the finish chunk, usage if asked, ``[DONE]``.

    The finish chunk goes out only once the reply is recorded, so a client that
    sends its next request right after ``[DONE]`` finds the reply in the session.
    If the client disconnects, the task is cancelled here and the turn stops.
    """
    reply = chunks.reply
    calls = ToolCallStream(reply.assistant.lm.tool_format.syntax) if reply.plan.offers_calls else None
    try:
        yield sse(chunks.first())
        try:
            async for piece in worker.pieces():
                if calls is None:
                    yield sse(chunks.text(piece))
                else:
                    for chunk in chunks.events(calls.push(piece)):
                        yield sse(chunk)
            if calls is not None:
                for chunk in chunks.events(calls.finish()):
                    yield sse(chunk)
        except Exception as exc:  # the status line is sent: the error travels as an event
            yield sse(as_api_error(exc).body())
            return
        yield sse(chunks.last())
        if include_usage:
            yield sse(chunks.usage())
        yield sse("[DONE]")
    finally:
        _finish(worker, slot)


def _finish(worker: TurnWorker, slot: Slot) -> None:
    """Every way out of a request: stop the turn if it still runs, free the slot."""
    worker.cancel()
    slot.release()


async def _watch_disconnect(request: Request, worker: TurnWorker, every_s: float = 0.25) -> None:
    """Stop ``worker`` when the client of a non-streamed request goes away."""
    while True:
        if await request.is_disconnected():
            logger.info("client went away: stopping its turn")
            worker.cancel()
            return
        await asyncio.sleep(every_s)


def _count_tokens(embedder, texts: list[str]) -> int:
    tokenizer = embedder._encoder.tokenizer
    return sum(len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"])


def _encoded(vector, encoding: str) -> list[float] | str:
    array = np.asarray(vector, dtype="<f4")
    if encoding == "base64":
        return base64.b64encode(array.tobytes()).decode("ascii")
    return array.tolist()


def _memory(memory) -> dict[str, Any]:
    return {
        "id": memory.chunk_id,
        "object": "memory",
        "text": memory.text,
        "message_id": memory.message_id,
        "role": memory.role,
        "speaker": memory.speaker,
        "turn": memory.turn,
        "created_at": memory.created_at,
        "score": memory.score,
        "pending": getattr(memory, "pending", False),
    }
