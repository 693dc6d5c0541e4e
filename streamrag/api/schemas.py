"""The request bodies the server accepts, as pydantic models: OpenAI's names, checked before any work starts.

Fields OpenAI defines and streamrag cannot honour are refused with a clear
400 (``n`` above 1, ``logprobs``, images), rather than silently ignored;
``frequency_penalty``/``presence_penalty`` are accepted and ignored (clients
such as Open WebUI send 0 by default; streamrag's own ``repetition_penalty``
is the knob). Unknown fields are ignored, as OpenAI-compatible servers do, so
newer clients keep working. streamrag's extensions (``top_k``,
``repetition_penalty``) travel in the same body (``extra_body`` in the openai
client).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from streamrag.api.errors import APIError
from streamrag.structured import response_schema
from streamrag.tools import ToolChoice, tools_of

ROLE_ALIASES = {"developer": "system"}  # OpenAI's newer name for the system role


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class CalledFunction(_Body):
    name: str = Field(min_length=1)
    arguments: str = "{}"

    @field_validator("arguments")
    @classmethod
    def _json_object(cls, value: str) -> str:
        try:
            parsed = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"a tool call's arguments must be a JSON object, not {value[:60]!r} ({exc})") from None
        if not isinstance(parsed, dict):
            raise ValueError(f"a tool call's arguments must be a JSON object, not {value[:60]!r}")
        return value


class ToolCallIn(_Body):
    id: str | None = None
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        """The message's text: a string, or its text parts joined (other parts are refused)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        texts = []
        for part in self.content:
            kind = part.get("type")
            if kind in ("text", "input_text") and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                raise APIError(
                    400,
                    f"a {self.role} message has a content part of type {kind!r}; this model reads text parts only",
                    param="messages",
                    code="unsupported_content",
                )
        return "\n".join(texts)

    def as_history(self) -> dict[str, Any]:
        """The message as streamrag's message dict (see :func:`streamrag.history.as_message`)."""
        message: dict[str, Any] = {"role": ROLE_ALIASES.get(self.role, self.role), "content": self.text()}
        if self.tool_calls:
            message["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        if self.name and self.role in ("user", "assistant"):
            message["name"] = self.name
        return message


class StreamOptions(_Body):
    include_usage: bool = False


class ChatCompletionRequest(_Body):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    n: int = Field(default=1, ge=1)
    logprobs: bool | None = None
    user: str | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    # streamrag's own sampling settings.
    top_k: int | None = Field(default=None, ge=0)
    repetition_penalty: float | None = Field(default=None, gt=0)

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError("only n=1 is supported: one conversation has one reply per turn")
        return value

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("logprobs are not supported")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if any(not isinstance(s, str) or not s for s in stops):
            raise ValueError("each stop sequence must be a non-empty string")
        return value

    def check(self) -> None:
        """Refuse what would fail once a session is chosen (so a refused request leaves no trace in it)."""
        if not any(m.text().strip() or m.tool_calls for m in self.messages):
            raise APIError(
                400, "no messages to answer: every message is empty", param="messages", code="invalid_message"
            )
        tools = tools_of(self.tools)
        ToolChoice.of(self.tool_choice, tools)
        response_schema(self.response_format)

    def generation(self) -> dict[str, Any]:
        """The sampling settings, in streamrag's names (unset ones keep the session's defaults)."""
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        settings = {
            "max_new_tokens": self.max_completion_tokens or self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "repetition_penalty": self.repetition_penalty,
            "seed": self.seed,
            "stop": stop,
        }
        return {key: value for key, value in settings.items() if value is not None}


class EmbeddingRequest(_Body):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    def texts(self) -> list[str]:
        if isinstance(self.input, str):
            texts = [self.input]
        elif all(isinstance(item, str) for item in self.input):
            texts = list(self.input)  # type: ignore[arg-type]
        else:
            raise APIError(400, "input must be text (a string or a list of strings), not token ids", param="input")
        if not texts or any(not text.strip() for text in texts):
            raise APIError(400, "input must hold at least one non-empty string, and no empty ones", param="input")
        return texts
