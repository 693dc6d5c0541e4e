"""``StreamRAGLLM``: a LlamaIndex LLM whose chat lives in a persistent streamrag session.

LlamaIndex sends the whole message list on every ``chat`` call;
:meth:`streamrag.session.Assistant.stream_messages` feeds only the messages
that extend what the session holds, and forks it (keeping and archiving the
old messages) when the list diverges.
``complete`` is plain continuation in a fresh context, like a completion API.

It is a ``FunctionCallingLLM``: tools are offered to the model and its calls
decoded under each tool's schema (:mod:`streamrag.grammar`), so
``FunctionAgent`` and ``AgentWorkflow`` run on it, and a tool's result is
one more message in the persistent cache. The async methods run the model in
a worker thread one step at a time, so the event loop keeps running while it
generates.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    TextBlock,
    ToolCallBlock,
)
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection

from streamrag.config import StreamRAGConfig
from streamrag.engine import StreamingLM
from streamrag.history import HistoryMessage, timestamp_of
from streamrag.models import EMBEDDED_MODEL_NAME
from streamrag.session import AnonymousSessions, Assistant, Resources
from streamrag.tools import ToolCall, ToolCallStream

if TYPE_CHECKING:
    from llama_index.core.tools.types import BaseTool

_ROLES = {
    MessageRole.SYSTEM: "system",
    MessageRole.DEVELOPER: "system",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
    MessageRole.TOOL: "tool",
    MessageRole.FUNCTION: "tool",
}
_DONE = object()


class StreamRAGLLM(FunctionCallingLLM):
    """A local chat model with an attention-sink cache and recall of evicted text.

    >>> llm = StreamRAGLLM(session_id="ada", max_new_tokens=64)
    >>> llm.chat([ChatMessage(role="user", content="Hi, I'm Ada.")])
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    config: Any = Field(default=None, description="A StreamRAGConfig, a YAML path, or None for the defaults.")
    resources: Any = Field(default=None, exclude=True, description="Already loaded resources to share.")
    session_id: str | None = Field(
        default=None,
        description="The persistent session; when None, the conversation the messages continue, else a new one.",
    )
    temperature: float | None = None
    max_new_tokens: int | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: list[str] | None = None

    _anonymous: AnonymousSessions = PrivateAttr(default_factory=AnonymousSessions)
    _lm: StreamingLM | None = PrivateAttr(default=None)

    @classmethod
    def class_name(cls) -> str:
        return "StreamRAGLLM"

    # -- resources and sessions -------------------------------------------
    def get_resources(self) -> Resources:
        if self.resources is None:
            config = StreamRAGConfig.load(self.config) if isinstance(self.config, str) else self.config
            self.resources = Resources.shared(config)
        return self.resources

    def get_session(self) -> Assistant:
        """The session behind ``session_id``; without one, the conversation this LLM object used last."""
        return self._anonymous.resolve(self.get_resources(), self.session_id)

    @property
    def metadata(self) -> LLMMetadata:
        config = self.get_resources().config
        return LLMMetadata(
            context_window=config.cache.capacity,
            num_output=self.max_new_tokens or config.generation.max_new_tokens,
            is_chat_model=True,
            is_function_calling_model=True,
            model_name=config.model.spec or EMBEDDED_MODEL_NAME,
        )

    def _generation(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        settings = {
            "temperature": kwargs.get("temperature", self.temperature),
            "max_new_tokens": kwargs.get("max_new_tokens", kwargs.get("max_tokens", self.max_new_tokens)),
            "top_p": kwargs.get("top_p", self.top_p),
            "top_k": kwargs.get("top_k", self.top_k),
            "repetition_penalty": kwargs.get("repetition_penalty", self.repetition_penalty),
            "seed": kwargs.get("seed", self.seed),
            "stop": kwargs.get("stop", self.stop),
            "tools": kwargs.get("tools"),
            "tool_choice": kwargs.get("tool_choice"),
            "response_format": kwargs.get("response_format"),
            "parallel_tool_calls": kwargs.get("parallel_tool_calls"),
        }
        return {k: v for k, v in settings.items() if v is not None}

    # -- completion: a fresh context per call -------------------------------
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return list(self.stream_complete(prompt, formatted=formatted, **kwargs))[-1]

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        return self._completions(prompt, kwargs)

    def _completions(self, prompt: str, kwargs: dict[str, Any]) -> CompletionResponseGen:
        resources = self.get_resources()
        if self._lm is None:
            self._lm = StreamingLM(resources.model, resources.tokenizer, resources.config)
        lm, generation = self._lm, self._generation(kwargs)

        def gen() -> CompletionResponseGen:
            text = ""
            with resources.lock:
                lm.reset()
                pieces = lm.stream_completion(prompt, **generation)
                try:
                    for piece in pieces:
                        text += piece
                        yield CompletionResponse(text=text, delta=piece)
                finally:
                    pieces.close()
            if not text:
                yield CompletionResponse(text="", delta="")

        return gen()

    # -- chat: the persistent session -------------------------------------
    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return list(self.stream_chat(messages, **kwargs))[-1]  # the last response carries the whole reply

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return self._chat_responses(messages, kwargs)

    def _chat_responses(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> ChatResponseGen:
        """The reply as responses: one per streamed text piece, then the whole message with its tool calls."""
        history = [_history_message(m) for m in messages]
        session = self._anonymous.resolve(self.get_resources(), self.session_id, history)
        generation = self._generation(kwargs)

        def gen() -> ChatResponseGen:
            text = ""
            reply = session.stream_messages(history, **generation)
            calls = ToolCallStream(session.lm.tool_format.syntax) if reply.plan.offers_calls else None
            try:
                for piece in reply:
                    events = [piece] if calls is None else [e.text for e in calls.push(piece) if e.kind == "text"]
                    for delta in events:
                        text += delta
                        yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=delta)
                for delta in [e.text for e in calls.finish() if e.kind == "text"] if calls is not None else []:
                    text += delta
                    yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=delta)
            finally:
                reply.close()
            # The reply's own parse: a call cut off by max_tokens is no call, and stays in the text as written
            # (so the message sent back next time matches the session).
            if calls is not None:
                text, tool_calls = calls.calls()
            else:
                tool_calls = []
            sync = reply.sync
            info = {
                "session_id": session.session_id,
                "message_id": reply.message_id,
                "stop_reason": reply.stop_reason,
                "finish_reason": "tool_calls" if tool_calls else reply.finish_reason,
                "forked": bool(sync and sync.forked),
                "superseded_messages": sync.superseded if sync else 0,
                "recall_unavailable": reply.recall_unavailable,
            }
            blocks: list = [TextBlock(text=text)] if text else []
            blocks += [ToolCallBlock(tool_call_id=c.id, tool_name=c.name, tool_kwargs=c.arguments) for c in tool_calls]
            yield ChatResponse(
                message=ChatMessage(role=MessageRole.ASSISTANT, blocks=blocks), delta="", additional_kwargs=info
            )

        return gen()

    # -- tools ------------------------------------------------------------
    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        tool_choice: str | dict | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The chat arguments for ``chat_with_tools`` and the agents: messages, OpenAI-style tools, a choice."""
        messages = list(chat_history or [])
        if user_msg is not None:
            if isinstance(user_msg, str):
                user_msg = ChatMessage(role=MessageRole.USER, content=user_msg)
            messages.append(user_msg)
        specs = [tool.metadata.to_openai_tool() for tool in tools]
        choice = tool_choice if tool_choice is not None else ("required" if tool_required else "auto")
        return {
            "messages": messages,
            "tools": specs or None,
            "tool_choice": choice if specs else None,
            "parallel_tool_calls": allow_parallel_tool_calls,
            **kwargs,
        }

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        """The reply's tool calls (their arguments are valid under the tools' schemas: decoding was constrained)."""
        calls = [
            ToolSelection(
                tool_id=block.tool_call_id or "",
                tool_name=block.tool_name,
                tool_kwargs=block.tool_kwargs if isinstance(block.tool_kwargs, dict) else {},
            )
            for block in response.message.blocks
            if isinstance(block, ToolCallBlock)
        ]
        if not calls and error_on_no_tool_call:
            raise ValueError(f"the model called no tool; it replied {response.message.content!r}")
        return calls

    # -- async: the model runs in a worker thread, step by step --------------
    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        responses = [r async for r in _in_thread(self._chat_responses(messages, kwargs))]
        return responses[-1]  # the last carries the whole reply

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        return _in_thread(self._chat_responses(messages, kwargs))

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        responses = [r async for r in _in_thread(self._completions(prompt, kwargs))]
        return responses[-1]

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        return _in_thread(self._completions(prompt, kwargs))


async def _in_thread(items: Iterator) -> AsyncIterator:
    """``items`` as an async iterator whose every step runs in a worker thread (the loop stays free)."""
    try:
        while (item := await asyncio.to_thread(next, items, _DONE)) is not _DONE:
            yield item
    finally:
        await asyncio.to_thread(items.close)


def _history_message(message: ChatMessage) -> HistoryMessage:
    """A LlamaIndex message as a streamrag one; an assistant's tool calls come from its ``ToolCallBlock``s
    (or OpenAI-style ``additional_kwargs["tool_calls"]``)."""
    role = _ROLES.get(message.role)
    if role is None:
        raise ValueError(f"streamrag cannot take a {message.role.value!r} message")
    extra = message.additional_kwargs or {}
    calls = [
        ToolCall(block.tool_name, _arguments(block.tool_kwargs), block.tool_call_id or "")
        for block in message.blocks
        if isinstance(block, ToolCallBlock)
    ]
    if not calls and isinstance(extra.get("tool_calls"), list):
        calls = [c for c in extra["tool_calls"] if isinstance(c, dict)]
    text = "".join(block.text for block in message.blocks if isinstance(block, TextBlock))
    name = extra.get("name") if role != "tool" else extra.get("name") or extra.get("tool_name")
    return HistoryMessage(role, text, name, timestamp_of(extra.get("timestamp")), tuple(calls))


def _arguments(value: dict | str) -> dict:
    import json

    if isinstance(value, dict):
        return value
    return json.loads(value) if value.strip() else {}
