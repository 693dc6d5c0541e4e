"""``StreamRAGLLM``: a LlamaIndex LLM whose chat lives in a persistent streamrag session.

LlamaIndex sends the whole message list on every ``chat`` call;
:meth:`streamrag.session.Assistant.stream_messages` feeds only the messages
that extend what the session holds, and forks it (keeping and archiving the
old messages) when the list diverges.
``complete`` is plain continuation in a fresh context, like a completion API.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

from streamrag.config import StreamRAGConfig
from streamrag.engine import StreamingLM
from streamrag.history import HistoryMessage, timestamp_of
from streamrag.session import Assistant, Resources

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
_ROLES = {
    MessageRole.SYSTEM: "system",
    MessageRole.DEVELOPER: "system",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
}


class StreamRAGLLM(CustomLLM):
    """A local chat model with an attention-sink cache and recall of evicted text.

    >>> llm = StreamRAGLLM(session_id="ada", max_new_tokens=64)
    >>> llm.chat([ChatMessage(role="user", content="Hi, I'm Ada.")])
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    config: Any = Field(default=None, description="A StreamRAGConfig, a YAML path, or None for the defaults.")
    resources: Any = Field(default=None, exclude=True, description="Already loaded resources to share.")
    session_id: str | None = Field(default=None, description="The persistent session; one per instance when None.")
    temperature: float | None = None
    max_new_tokens: int | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: list[str] | None = None

    _default_session: str = PrivateAttr(default_factory=lambda: uuid.uuid4().hex)
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
        return self.get_resources().session(self.session_id or self._default_session)

    @property
    def metadata(self) -> LLMMetadata:
        config = self.get_resources().config
        return LLMMetadata(
            context_window=config.cache.capacity,
            num_output=self.max_new_tokens or config.generation.max_new_tokens,
            is_chat_model=True,
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
        }
        return {k: v for k, v in settings.items() if v is not None}

    # -- completion: a fresh context per call -------------------------------
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return list(self.stream_complete(prompt, formatted=formatted, **kwargs))[-1]

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
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
        session = self.get_session()
        history = [_history_message(m) for m in messages]
        generation = self._generation(kwargs)

        def gen() -> ChatResponseGen:
            text = ""
            reply = session.stream_messages(history, **generation)
            try:
                for piece in reply:
                    text += piece
                    yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=piece)
            finally:
                reply.close()
            sync = reply.sync
            info = {
                "session_id": session.session_id,
                "message_id": reply.message_id,
                "stop_reason": reply.stop_reason,
                "forked": bool(sync and sync.forked),
                "superseded_messages": sync.superseded if sync else 0,
                "recall_unavailable": reply.recall_unavailable,
            }
            yield ChatResponse(
                message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta="", additional_kwargs=info
            )

        return gen()


def _history_message(message: ChatMessage) -> HistoryMessage:
    role = _ROLES.get(message.role)
    if role is None:
        raise ValueError(f"streamrag has no tool calling; cannot take a {message.role.value!r} message")
    extra = message.additional_kwargs or {}
    return HistoryMessage(role, message.content or "", extra.get("name"), timestamp_of(extra.get("timestamp")))
