"""Map a client's whole message list onto a persistent session: extend it, or fork it.

Chat frameworks (LangChain, LlamaIndex) send the entire conversation on every
call. A streamrag session keeps its KV cache between calls, so feeding the
whole list again would throw away the point of the cache. :func:`plan_sync`
compares what the session already holds with what the client sent:

* the incoming list starts with everything the session holds: only the new
  messages at its end are fed (no re-prefill);
* anything else (an edited message, a shorter list, another conversation):
  the session forks at the common prefix. The stored messages after it are
  superseded, never deleted: they stay in the transcript and the archive
  (see :meth:`streamrag.session.Assistant.sync`).

Messages whose content is empty or blank are left out on both sides: the
engine refuses to feed them, so they can never be part of what a session holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from streamrag.tools import HERMES, ToolCall, ToolSyntax


@dataclass(frozen=True)
class HistoryMessage:
    """One message of a conversation, as a client sees it: a role and its text.

    ``name`` (who said it, for chats between named people) and ``timestamp``
    (Unix time it was said) are stored with a new message and shown with
    its memories; they take no part in matching a client's list against the
    session, which compares what the model saw: roles and texts.
    """

    role: str
    content: str
    name: str | None = field(default=None, compare=False)
    timestamp: float | None = field(default=None, compare=False)
    tool_calls: tuple[ToolCall, ...] = field(default=(), compare=False)
    """An assistant message's calls, from a framework; :func:`normalise` writes them into ``content``."""


@dataclass(frozen=True)
class SyncPlan:
    """What to do with an incoming message list: feed ``new`` on top, or (``rebuild``) fork from it."""

    rebuild: bool
    new: tuple[HistoryMessage, ...]


def timestamp_of(value: object) -> float | None:
    """A message time from framework metadata: Unix seconds, an ISO 8601 string or a ``datetime``; None if absent.

    A datetime without a zone is taken as local time. Anything else is an
    error (a wrong date would mislabel every memory of the message).
    """
    from datetime import datetime

    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"not a timestamp: {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(f"timestamp {value!r} is neither Unix seconds nor ISO 8601") from exc
    if isinstance(value, datetime):
        return value.timestamp()
    raise ValueError(f"not a timestamp: {value!r} ({type(value).__name__})")


def as_message(message: HistoryMessage | tuple | Mapping[str, str]) -> HistoryMessage:
    """A ``HistoryMessage`` from itself, a ``(role, content[, timestamp[, name]])`` tuple or a dict.

    A dict has ``role`` and ``content`` and may have ``name`` and ``timestamp``.
    """
    if isinstance(message, HistoryMessage):
        return message
    if isinstance(message, Mapping):
        calls = tuple(_tool_call_of(call) for call in message.get("tool_calls") or ())
        content = message.get("content")
        return HistoryMessage(
            str(message["role"]),
            "" if content is None and calls else content,
            message.get("name"),
            message.get("timestamp"),
            calls,
        )
    if len(message) == 2:
        role, content = message
        return HistoryMessage(str(role), content)
    role, content, timestamp, *rest = message
    return HistoryMessage(str(role), content, rest[0] if rest else None, timestamp)


def _tool_call_of(call: ToolCall | Mapping) -> ToolCall:
    """A call from itself, OpenAI's ``{"id", "function": {"name", "arguments": "<json>"}}`` or LangChain's
    ``{"id", "name", "args"}``."""
    import json
    import uuid

    if isinstance(call, ToolCall):
        return call
    function = call.get("function") or call
    arguments = function.get("arguments", function.get("args", {}))
    if isinstance(arguments, str):
        arguments = json.loads(arguments) if arguments.strip() else {}
    return ToolCall(str(function["name"]), dict(arguments), str(call.get("id") or "call_" + uuid.uuid4().hex[:24]))


def normalise(
    messages: Iterable[HistoryMessage | tuple[str, str] | Mapping[str, str]], syntax: ToolSyntax = HERMES
) -> list[HistoryMessage]:
    """Accept ``HistoryMessage``, ``(role, content)`` pairs or ``{"role", "content"}`` dicts; drop blank ones.

    An assistant message's tool calls are written into its content as the
    model spells them (``syntax``): that text is what the model saw.
    """
    result = []
    for message in messages:
        message = as_message(message)
        if message.tool_calls:
            calls = [_tool_call_of(call) for call in message.tool_calls]
            message = replace(message, content=syntax.render(message.content or "", calls), tool_calls=())
        result.append(message)
    return [m for m in result if not (isinstance(m.content, str) and not m.content.strip())]


def comparable(message: HistoryMessage, syntax: ToolSyntax = HERMES) -> tuple[str, str]:
    """What must agree for two messages to be the same: role and text, a reply's tool calls compared parsed
    (a client writes back a call with its own whitespace)."""
    if message.role == "assistant" and syntax.begin and syntax.begin.strip() in message.content:
        return message.role, syntax.canonical(message.content)
    return message.role, message.content


def shared_prefix(held: list[HistoryMessage], incoming: list[HistoryMessage], syntax: ToolSyntax = HERMES) -> int:
    """How many leading messages two conversations have in common, compared as the model saw them."""
    count = 0
    for a, b in zip(held, incoming):
        if comparable(a, syntax) != comparable(b, syntax):
            break
        count += 1
    return count


def plan_sync(held: Iterable, incoming: Iterable, syntax: ToolSyntax = HERMES) -> SyncPlan:
    """Extend when ``incoming`` starts with all of ``held``; otherwise the session must fork."""
    held = normalise(held, syntax)
    incoming = normalise(incoming, syntax)
    if len(incoming) >= len(held) and all(
        comparable(a, syntax) == comparable(b, syntax) for a, b in zip(held, incoming[: len(held)])
    ):
        return SyncPlan(rebuild=False, new=tuple(incoming[len(held) :]))
    return SyncPlan(rebuild=True, new=tuple(incoming))
