"""A :class:`~streamrag.session.Reply` in OpenAI's shapes: a ``chat.completion``, or its ``chunk`` stream.

Usage counts the whole conversation as the prompt (what a stateless server
would have read) and reports what the session's cache already held as
``prompt_tokens_details.cached_tokens``: a client that sends its growing
history on every request sees that only the new messages were prefilled.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from streamrag.session import Reply
from streamrag.tools import StreamEvent, ToolCall


def usage_of(reply: Reply) -> dict[str, Any]:
    sync, turn = reply.sync, reply.stats
    cached = sync.reused_tokens if sync else 0
    prefilled = (sync.prefilled_tokens if sync else 0) + turn.prefilled_tokens
    return {
        "prompt_tokens": cached + prefilled,
        "completion_tokens": turn.generated_tokens,
        "total_tokens": cached + prefilled + turn.generated_tokens,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def finish_reason(reply: Reply) -> str:
    """stop, length or tool_calls; a reply its client abandoned never reaches anyone, so "stop" is moot."""
    reason = reply.finish_reason
    return reason if reason in ("stop", "length", "tool_calls") else "stop"


def openai_call(call: ToolCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)},
    }


def completion(reply: Reply, model: str, created: int) -> dict[str, Any]:
    """The whole reply as one ``chat.completion`` object."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    calls = reply.tool_calls
    if calls:
        message["tool_calls"] = [openai_call(call) for call in calls]
        message["content"] = reply.content or None
    return {
        "id": completion_id(reply),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(reply), "logprobs": None}],
        "usage": usage_of(reply),
    }


def completion_id(reply: Reply) -> str:
    return f"chatcmpl-{reply.message_id}"


class ChunkStream:
    """Builds the ``chat.completion.chunk`` objects of one streamed reply."""

    def __init__(self, reply: Reply, model: str):
        self.reply = reply
        self.model = model
        self.created = int(time.time())

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": completion_id(self.reply),
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }

    def first(self) -> dict[str, Any]:
        return self.chunk({"role": "assistant", "content": ""})

    def text(self, text: str) -> dict[str, Any]:
        return self.chunk({"content": text})

    def events(self, events: list[StreamEvent]) -> Iterator[dict[str, Any]]:
        """Chunks for tool-call stream events: text, a call's head (id, name), pieces of its arguments."""
        for event in events:
            if event.kind == "text" and event.text:
                yield self.text(event.text)
            elif event.kind == "call":
                head = {"name": event.name, "arguments": ""}
                call = {"index": event.index, "id": event.call_id, "type": "function", "function": head}
                yield self.chunk({"tool_calls": [call]})
            elif event.kind == "arguments" and event.text:
                yield self.chunk({"tool_calls": [{"index": event.index, "function": {"arguments": event.text}}]})

    def last(self) -> dict[str, Any]:
        return self.chunk({}, finish_reason(self.reply))

    def usage(self) -> dict[str, Any]:
        return {**self.chunk({}), "choices": [], "usage": usage_of(self.reply)}


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n"
