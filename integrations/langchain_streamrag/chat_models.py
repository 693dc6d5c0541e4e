"""``ChatStreamRAG``: a LangChain chat model whose conversation lives in a persistent streamrag session.

LangChain sends the whole message list on every call. The session keeps its
KV cache between calls, so :meth:`streamrag.session.Assistant.stream_messages`
feeds only the messages that extend what the session holds. When the list
diverges (an edited or a different history, a chain called twice under one id)
the session forks: the stored messages after the common prefix are kept and
archived, never deleted, and ``response_metadata`` says so.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from operator import itemgetter
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.chat_models import agenerate_from_stream, generate_from_stream
from langchain_core.messages import AIMessageChunk, BaseMessage, BaseMessageChunk
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import invalid_tool_call, tool_call_chunk
from langchain_core.messages.utils import message_chunk_to_message
from langchain_core.output_parsers import JsonOutputKeyToolsParser, JsonOutputParser, PydanticToolsParser
from langchain_core.output_parsers.pydantic import PydanticOutputParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig, RunnableMap, RunnablePassthrough, ensure_config
from langchain_core.runnables.config import run_in_executor
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import ConfigDict, Field, PrivateAttr

from langchain_streamrag._common import model_label, resolve_resources, to_history
from streamrag.session import AnonymousSessions, Assistant, Resources
from streamrag.tools import ToolCall, ToolCallStream

_DONE = object()


class ChatStreamRAG(BaseChatModel):
    """A chat model on a local LM with an attention-sink cache and recall of evicted text.

    The session id comes from ``config["configurable"]["session_id"]`` (or
    LangGraph's ``thread_id``), else the ``session_id`` field. Without one,
    the messages say which conversation a call belongs to: the one of this
    model object that they continue, else a new one (see
    :class:`~streamrag.session.AnonymousSessions`).

    >>> chat = ChatStreamRAG(max_tokens=64)
    >>> chat.invoke("Hello!", config={"configurable": {"session_id": "ada"}})
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    model_name: str | None = Field(default=None, alias="model")
    """Shown in traces and ``response_metadata``; defaults to the configured model."""
    config: Any = None
    """A ``StreamRAGConfig``, a YAML path, or ``None`` for the defaults (embedded models)."""
    resources: Any = Field(default=None, exclude=True)
    """Already loaded resources to share (model, archive, transcript); loaded from ``config`` when ``None``."""
    session_id: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: list[str] | None = None
    streaming: bool = False
    """``invoke`` streams internally (callbacks see every token)."""

    _anonymous: AnonymousSessions = PrivateAttr(default_factory=AnonymousSessions)

    # -- LangChain identity ----------------------------------------------
    @property
    def _llm_type(self) -> str:
        return "streamrag"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self._model_name(),
            "session_id": self.session_id,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "repetition_penalty": self.repetition_penalty,
            "seed": self.seed,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "streamrag"
        params["ls_model_name"] = kwargs.get("model") or self._model_name()
        if self.temperature is not None:
            params["ls_temperature"] = kwargs.get("temperature", self.temperature)
        if self.max_tokens is not None:
            params["ls_max_tokens"] = kwargs.get("max_tokens", self.max_tokens)
        return params

    def _model_name(self) -> str:
        if self.model_name:
            return self.model_name
        if self.resources is not None:
            return model_label(self.resources.config)
        return "SmolLM2-135M-Instruct" if self.config is None else "streamrag"

    # -- sessions ---------------------------------------------------------
    def get_resources(self) -> Resources:
        if self.resources is None:
            self.resources = resolve_resources(None, self.config)
        return self.resources

    def get_session(self, session_id: str | None = None) -> Assistant:
        """The streamrag session (an :class:`~streamrag.session.Assistant`) behind ``session_id``; without
        an id or a ``session_id`` field, the conversation this model object used last."""
        return self._anonymous.resolve(self.get_resources(), session_id or self.session_id)

    # The configurable session id reaches _generate/_stream as a keyword argument.
    @staticmethod
    def _session_kwargs(config: RunnableConfig | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        configurable = ensure_config(config).get("configurable", {})
        session_id = configurable.get("session_id") or configurable.get("thread_id")
        if session_id and "session_id" not in kwargs:
            return {**kwargs, "session_id": session_id}
        return kwargs

    def invoke(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, *, stop=None, **kwargs: Any
    ) -> BaseMessage:
        return super().invoke(input, config, stop=stop, **self._session_kwargs(config, kwargs))

    async def ainvoke(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, *, stop=None, **kwargs: Any
    ) -> BaseMessage:
        return await super().ainvoke(input, config, stop=stop, **self._session_kwargs(config, kwargs))

    def stream(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, *, stop=None, **kwargs: Any
    ) -> Iterator[BaseMessageChunk]:
        yield from super().stream(input, config, stop=stop, **self._session_kwargs(config, kwargs))

    async def astream(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, *, stop=None, **kwargs: Any
    ) -> AsyncIterator[BaseMessageChunk]:
        async for chunk in super().astream(input, config, stop=stop, **self._session_kwargs(config, kwargs)):
            yield chunk

    # -- generation -------------------------------------------------------
    def _generation(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """LangChain's names for sampling settings, per call over per instance, as streamrag's names."""
        settings = {
            "temperature": kwargs.get("temperature", self.temperature),
            "max_new_tokens": kwargs.get("max_tokens", self.max_tokens),
            "top_p": kwargs.get("top_p", self.top_p),
            "top_k": kwargs.get("top_k", self.top_k),
            "repetition_penalty": kwargs.get("repetition_penalty", self.repetition_penalty),
            "seed": kwargs.get("seed", self.seed),
            "stop": stop if stop is not None else self.stop,
        }
        # Bound by bind_tools / with_structured_output.
        for key in ("tools", "tool_choice", "response_format", "parallel_tool_calls"):
            settings[key] = kwargs.get(key)
        return {k: v for k, v in settings.items() if v is not None}

    # -- tools and structured output -----------------------------------------
    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: dict | str | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, BaseMessage]:
        """Tools the model may call (``tool_choice``: "auto", "none", "any"/"required", or a tool's name).

        Calls are decoded under each tool's JSON schema, so their arguments
        always validate; they come back as ``AIMessage.tool_calls`` (and as
        ``tool_call_chunks`` while streaming). Results go back as
        ``ToolMessage``: fed into the persistent cache like any message.
        """
        formatted = [convert_to_openai_tool(tool) for tool in tools]
        if tool_choice is True:  # LangChain's old spelling for "call the only tool"
            if len(formatted) != 1:
                raise ValueError("tool_choice=True needs exactly one tool")
            tool_choice = formatted[0]["function"]["name"]
        if tool_choice is False:
            tool_choice = "none"
        return super().bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def with_structured_output(
        self,
        schema: dict | type,
        *,
        method: Literal["function_calling", "json_schema", "json_mode"] = "json_schema",
        include_raw: bool = False,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict | Any]:
        """Replies parsed into ``schema`` (a pydantic model, TypedDict, or JSON schema), always valid.

        ``json_schema`` (the default) constrains the reply to JSON under the
        schema; ``function_calling`` forces a call of a tool with the schema as
        its arguments; ``json_mode`` asks for JSON, and since the schema is
        known here, it is constrained to it too (left to any JSON object, the
        135M model answered a Joke schema with ``{"setup": 1, "punchline": 2}``).
        """
        kwargs.pop("strict", None)
        if kwargs:
            raise ValueError(f"unsupported arguments: {kwargs}")
        is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        structured = {"kwargs": {"method": method}, "schema": schema}
        if method == "function_calling":
            tool_name = convert_to_openai_tool(schema)["function"]["name"]
            llm = self.bind_tools(
                [schema], tool_choice=tool_name, parallel_tool_calls=False, ls_structured_output_format=structured
            )
            parser: Runnable = (
                PydanticToolsParser(tools=[schema], first_tool_only=True)
                if is_pydantic
                else JsonOutputKeyToolsParser(key_name=tool_name, first_tool_only=True)
            )
        elif method in ("json_schema", "json_mode"):
            json_schema = convert_to_json_schema(schema)
            name = json_schema.get("title") or "response"
            response_format = {"type": "json_schema", "json_schema": {"name": name, "schema": json_schema}}
            llm = self.bind(response_format=response_format, ls_structured_output_format=structured)
            parser = PydanticOutputParser(pydantic_object=schema) if is_pydantic else JsonOutputParser()
        else:
            raise ValueError(f"unknown method {method!r}; use json_schema, function_calling or json_mode")
        if include_raw:
            parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
            fallback = RunnablePassthrough.assign(parsed=lambda _: None)
            return RunnableMap(raw=llm) | parsed.with_fallbacks([fallback], exception_key="parsing_error")
        return llm | parser

    def _chunks(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        parsed: list[tuple[str, list[ToolCall]]] | None = None,
    ):
        """The reply as chunks: text and tool-call pieces as they stream, then a last one with usage and metadata.

        With tools, the reply's content and complete calls as parsed from its whole text are appended to
        ``parsed`` at the end (a call cut off by ``max_tokens`` is not among them).
        """
        history = to_history(messages)
        session = self._anonymous.resolve(self.get_resources(), kwargs.get("session_id") or self.session_id, history)
        settings = self._generation(stop, kwargs)
        reply = session.stream_messages(history, **settings)
        calls = ToolCallStream(session.lm.tool_format.syntax) if reply.plan.offers_calls else None
        try:
            for piece in reply:
                if calls is None:
                    yield ChatGenerationChunk(message=AIMessageChunk(content=piece))
                    continue
                for event in calls.push(piece):
                    yield _event_chunk(event)
            for event in calls.finish() if calls is not None else ():
                yield _event_chunk(event)
        finally:
            reply.close()
        if calls is not None and parsed is not None:
            parsed.append(calls.calls())
        sync, turn = reply.sync, reply.stats
        reused = sync.reused_tokens if sync else 0
        prefilled = (sync.prefilled_tokens if sync else 0) + turn.prefilled_tokens
        usage = UsageMetadata(
            input_tokens=reused + prefilled,
            output_tokens=turn.generated_tokens,
            total_tokens=reused + prefilled + turn.generated_tokens,
            input_token_details={"cache_read": reused},
        )
        metadata = {
            "model_name": self._model_name(),
            "model_provider": "streamrag",
            "session_id": session.session_id,
            "finish_reason": reply.finish_reason if calls is not None else turn.stop_reason,
            "message_id": reply.message_id,
            "synced_messages": sync.fed if sync else 0,
            "forked": bool(sync and sync.forked),
            "superseded_messages": sync.superseded if sync else 0,
            "rebuilt": bool(sync and sync.rebuilt),
            "prefilled_tokens": prefilled,
            "recalled": len(reply.memories),
            "recall_unavailable": reply.recall_unavailable,
        }
        yield ChatGenerationChunk(
            message=AIMessageChunk(content="", usage_metadata=usage, response_metadata=metadata, chunk_position="last"),
            generation_info={"finish_reason": metadata["finish_reason"]},
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for chunk in self._chunks(messages, stop, kwargs):
            if run_manager and chunk.text:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))
        parsed: list = []
        chunks = list(self._chunks(messages, stop, kwargs, parsed))
        return _result(chunks, parsed)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        # The model runs on CPU/GPU in a worker thread, one step per chunk, so the event loop stays free.
        chunks = self._chunks(messages, stop, kwargs)
        try:
            while (chunk := await run_in_executor(None, next, chunks, _DONE)) is not _DONE:
                if run_manager and chunk.text:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
        finally:
            await run_in_executor(None, chunks.close)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            return await agenerate_from_stream(self._astream(messages, stop, run_manager, **kwargs))
        parsed: list = []
        chunks = await run_in_executor(None, lambda: list(self._chunks(messages, stop, kwargs, parsed)))
        return _result(chunks, parsed)


def _event_chunk(event) -> ChatGenerationChunk:
    """A chunk for one streamed event: text, or a piece of a tool call (merged by index downstream)."""
    if event.kind == "text":
        return ChatGenerationChunk(message=AIMessageChunk(content=event.text))
    if event.kind == "call":
        piece = tool_call_chunk(name=event.name, args="", id=event.call_id, index=event.index)
    elif event.kind == "arguments":
        piece = tool_call_chunk(name=None, args=event.text, id=None, index=event.index)
    else:  # "end": nothing new to say
        return ChatGenerationChunk(message=AIMessageChunk(content=""))
    return ChatGenerationChunk(message=AIMessageChunk(content="", tool_call_chunks=[piece]))


def _result(chunks: list[ChatGenerationChunk], parsed: list[tuple[str, list[ToolCall]]]) -> ChatResult:
    """The chunks merged (text joined, tool-call pieces assembled into ``tool_calls``) as one message.

    With tools, ``parsed`` holds the reply's own parse. A call that ``max_tokens`` cut off is not a call:
    LangChain's lenient partial-JSON parse would turn ``{"city": "Por`` into ``{"city": "Por"}`` and an
    agent would run the tool with it. It becomes an ``invalid_tool_call``, and the content is the text
    as the model wrote it, so the message sent back next time matches the session (no fork).
    """
    merged = chunks[0].message
    for chunk in chunks[1:]:
        merged = merged + chunk.message
    message = message_chunk_to_message(merged)
    if parsed:
        content, complete = parsed[0]
        written = {call.id for call in complete}
        message = message.model_copy(
            update={
                "content": content,
                "tool_calls": [c for c in message.tool_calls if c["id"] in written],
                "invalid_tool_calls": [
                    *message.invalid_tool_calls,
                    *(
                        invalid_tool_call(
                            name=c["name"], args=c["args"], id=c["id"], error="the reply ended before the call did"
                        )
                        for c in merged.tool_call_chunks
                        if c["id"] not in written
                    ),
                ],
            }
        )
    message.id = None  # LangChain assigns the run id, as for any model
    return ChatResult(generations=[ChatGeneration(message=message, generation_info=chunks[-1].generation_info)])
