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
from dataclasses import dataclass, field


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
        return HistoryMessage(str(message["role"]), message["content"], message.get("name"), message.get("timestamp"))
    if len(message) == 2:
        role, content = message
        return HistoryMessage(str(role), content)
    role, content, timestamp, *rest = message
    return HistoryMessage(str(role), content, rest[0] if rest else None, timestamp)


def normalise(messages: Iterable[HistoryMessage | tuple[str, str] | Mapping[str, str]]) -> list[HistoryMessage]:
    """Accept ``HistoryMessage``, ``(role, content)`` pairs or ``{"role", "content"}`` dicts; drop blank ones."""
    result = [as_message(message) for message in messages]
    return [m for m in result if not (isinstance(m.content, str) and not m.content.strip())]


def plan_sync(held: Iterable, incoming: Iterable) -> SyncPlan:
    """Extend when ``incoming`` starts with all of ``held``; otherwise the session must fork."""
    held = normalise(held)
    incoming = normalise(incoming)
    if len(incoming) >= len(held) and incoming[: len(held)] == held:
        return SyncPlan(rebuild=False, new=tuple(incoming[len(held) :]))
    return SyncPlan(rebuild=True, new=tuple(incoming))
