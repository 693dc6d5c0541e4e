"""What the three LangChain classes share: finding the resources, and LangChain messages as (role, text)."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, ChatMessage, HumanMessage, SystemMessage, ToolMessage

from streamrag.config import StreamRAGConfig
from streamrag.history import HistoryMessage, timestamp_of
from streamrag.models import EMBEDDED_MODEL_NAME
from streamrag.session import Resources
from streamrag.tools import ToolCall

_ROLE_NAMES = {
    "human": "user",
    "user": "user",
    "ai": "assistant",
    "assistant": "assistant",
    "system": "system",
    "tool": "tool",
}

# Content blocks that spell an AI message's tool calls (Anthropic's, LangChain's standard ones).
_CALL_BLOCKS = ("tool_use", "tool_call", "function_call")


def resolve_resources(resources: Resources | None, config: StreamRAGConfig | str | None) -> Resources:
    """The given resources, or the process-wide ones for ``config`` (a config, a YAML path, or defaults)."""
    if resources is not None:
        return resources
    if isinstance(config, str):
        config = StreamRAGConfig.load(config)
    return Resources.shared(config)


def model_label(config: StreamRAGConfig) -> str:
    return config.model.spec or EMBEDDED_MODEL_NAME


def message_text(content: Any) -> str:
    """A message's text; content blocks other than text (and tool calls) are refused: the model reads text."""
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(block.get("text", ""))
        elif isinstance(block, dict) and block.get("type") in _CALL_BLOCKS:
            continue  # a tool call written as content: the message's tool_calls carry it
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise ValueError(f"streamrag reads text only; got a {kind!r} content block")
    return "".join(parts)


def to_history(messages: list[BaseMessage]) -> list[HistoryMessage]:
    """LangChain messages as streamrag messages: role and text, plus the message's ``name`` and the
    ``timestamp`` in its ``additional_kwargs`` or ``response_metadata`` (Unix seconds or ISO 8601)."""
    history = []
    for message in messages:
        calls: tuple[ToolCall, ...] = ()
        name = message.name
        if isinstance(message, HumanMessage):
            role = "user"
        elif isinstance(message, AIMessage):
            role = "assistant"
            calls = tuple(ToolCall(c["name"], dict(c["args"]), c.get("id") or "") for c in message.tool_calls)
        elif isinstance(message, SystemMessage):
            role = "system"
        elif isinstance(message, ToolMessage):
            role = "tool"  # its name (the tool's), when set, comes back with its memories
        elif isinstance(message, ChatMessage) and message.role in _ROLE_NAMES:
            role = _ROLE_NAMES[message.role]
        else:
            raise ValueError(
                f"streamrag cannot take a {type(message).__name__} (role {message.type!r}): "
                "use system, human, ai and tool messages"
            )
        meta = {**message.response_metadata, **message.additional_kwargs}
        when = timestamp_of(meta.get("timestamp"))
        history.append(HistoryMessage(role, message_text(message.content), name, when, calls))
    return history
