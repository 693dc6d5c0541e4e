"""Which message every cached token came from, and what text an eviction removes.

The KV cache only holds tensors; the ledger runs beside it, one entry per
cache slot, so that when the sink cache drops slots we can say exactly which
words of which message left the model's view. Those words become
:class:`EvictedSpan` events, which the archive stores before the slots are
dropped. Text is recovered from character offsets into the original message,
not by re-decoding tokens, so a span's text is a verbatim substring of what
the user or the model wrote, and chat-template tokens carry no text at all.

Memory stays bounded: the ledger holds entries only for resident tokens, and
a message's text only from its earliest resident character onwards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class MessageRef:
    """Identity of one chat message, as the engine knows it: an id and a role.

    Sessions, turns and times are the session's business: it keeps them by
    ``message_id`` and attaches them when it logs evicted text.
    """

    message_id: str
    role: str


@dataclass(frozen=True)
class EvictedSpan:
    """A contiguous run of one message's tokens that just left the cache.

    ``token_start``/``token_end`` index the message's own token sequence
    (template tokens included); ``char_start``/``char_end`` index its content.
    ``archive`` is False for text that must not be archived again (recalled
    memories that were injected into the context).
    """

    message: MessageRef
    token_start: int
    token_end: int
    char_start: int
    char_end: int
    text: str
    token_ids: tuple[int, ...]
    archive: bool

    @property
    def message_id(self) -> str:
        return self.message.message_id

    @property
    def role(self) -> str:
        return self.message.role


EvictionSubscriber = Callable[[list[EvictedSpan]], None]


@dataclass
class _MessageText:
    """The resident tail of a message's content: ``text`` starts at character ``base``."""

    ref: MessageRef
    archive: bool
    text: str = ""
    base: int = 0
    resident_tokens: int = 0

    def slice(self, start: int, end: int) -> str:
        return self.text[max(start - self.base, 0) : max(end - self.base, 0)]

    def forget_before(self, char: int) -> None:
        if char > self.base:
            self.text = self.text[char - self.base :]
            self.base = char


@dataclass(frozen=True)
class Slot:
    """One cache slot: the token, its message, its index in the message, and its characters."""

    token_id: int
    message_id: str
    index: int
    char_start: int
    char_end: int


@dataclass
class Ledger:
    """Slot-by-slot record of the cache's contents, kept in lockstep with it."""

    slots: list[Slot] = field(default_factory=list)
    _messages: dict[str, _MessageText] = field(default_factory=dict)
    _next_index: dict[str, int] = field(default_factory=dict)
    _closed: set[str] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self.slots)

    def open_message(self, ref: MessageRef, archive: bool = True) -> None:
        """Start tracking a message before any of its tokens enter the cache."""
        if ref.message_id in self._messages:
            raise ValueError(f"message {ref.message_id} is already in the ledger")
        self._messages[ref.message_id] = _MessageText(ref=ref, archive=archive)
        self._next_index[ref.message_id] = 0

    def __contains__(self, message_id: str) -> bool:
        return message_id in self._messages

    def withdraw_message(self, message_id: str) -> bool:
        """Forget a message that never made it into the cache; False if some of its tokens did."""
        message = self._messages.get(message_id)
        if message is None:
            return True
        if message.resident_tokens:
            return False
        del self._messages[message_id]
        del self._next_index[message_id]
        self._closed.discard(message_id)
        return True

    def extend_text(self, message_id: str, text: str) -> None:
        """Append content to a message (a user message at once, a reply as it streams)."""
        self._messages[message_id].text += text

    def message_ref(self, message_id: str) -> MessageRef:
        return self._messages[message_id].ref

    def append(self, message_id: str, token_id: int, char_start: int, char_end: int) -> None:
        """Record one token that is about to enter the cache."""
        index = self._next_index[message_id]
        self._next_index[message_id] = index + 1
        self.slots.append(Slot(token_id, message_id, index, char_start, char_end))
        self._messages[message_id].resident_tokens += 1

    def truncate(self, length: int) -> None:
        """Forget slots past ``length`` (tokens recorded but never fed, e.g. after a failed forward)."""
        for slot in self.slots[length:]:
            self._messages[slot.message_id].resident_tokens -= 1
            self._next_index[slot.message_id] -= 1
        del self.slots[length:]

    def first_slot(self, message_id: str) -> int | None:
        """Cache position of the message's first token, or ``None`` if that token is no longer resident."""
        for position, slot in enumerate(self.slots):
            if slot.message_id == message_id:
                return position if slot.index == 0 else None
        return None

    def rollback(self, length: int) -> None:
        """Forget slots past ``length`` and every message left with no resident token (undoing a prefill)."""
        touched = {slot.message_id for slot in self.slots[length:]}
        self.truncate(length)
        for message_id in touched:
            message = self._messages.get(message_id)
            if message is not None and not message.resident_tokens:
                del self._messages[message_id]
                del self._next_index[message_id]
                self._closed.discard(message_id)

    def resident_ranges(self) -> dict[str, tuple[int, int]]:
        """Per message, the character range of its content still in the cache."""
        ranges: dict[str, tuple[int, int]] = {}
        for slot in self.slots:
            if slot.char_end > slot.char_start:
                low, high = ranges.get(slot.message_id, (slot.char_start, slot.char_end))
                ranges[slot.message_id] = (min(low, slot.char_start), max(high, slot.char_end))
        return ranges

    def token_ids(self, start: int = 0, end: int | None = None) -> list[int]:
        return [slot.token_id for slot in self.slots[start:end]]

    def spans(self, start: int, count: int) -> list[EvictedSpan]:
        """The spans that evicting ``count`` slots from ``start`` would remove (nothing changes yet)."""
        spans: list[EvictedSpan] = []
        run: list[Slot] = []
        for slot in self.slots[start : start + count]:
            if run and slot.message_id != run[0].message_id:
                spans.append(self._span(run))
                run = []
            run.append(slot)
        if run:
            spans.append(self._span(run))
        return spans

    def _span(self, run: list[Slot]) -> EvictedSpan:
        message = self._messages[run[0].message_id]
        char_start = min(slot.char_start for slot in run)
        char_end = max(slot.char_end for slot in run)
        text = message.slice(char_start, char_end) if char_end > char_start else ""
        return EvictedSpan(
            message=message.ref,
            token_start=run[0].index,
            token_end=run[-1].index + 1,
            char_start=char_start,
            char_end=char_end,
            text=text,
            token_ids=tuple(slot.token_id for slot in run),
            archive=message.archive,
        )

    def drop(self, start: int, count: int) -> None:
        """Remove ``count`` slots from ``start`` after the cache dropped them; free finished text."""
        removed = self.slots[start : start + count]
        del self.slots[start : start + count]
        for slot in removed:
            self._messages[slot.message_id].resident_tokens -= 1
        for message_id in {slot.message_id for slot in removed}:
            self._release(message_id)

    def close_message(self, message_id: str) -> None:
        """A message is complete; free it now if none of its tokens are resident."""
        self._release(message_id, closing=True)

    def _release(self, message_id: str, closing: bool = False) -> None:
        message = self._messages.get(message_id)
        if message is None:
            return
        if closing:
            self._closed.add(message_id)
        if message.resident_tokens:
            resident_start = min(s.char_start for s in self.slots if s.message_id == message_id)
            message.forget_before(resident_start)
        elif message_id in self._closed:
            # Complete and fully evicted: nothing of it can be asked for again.
            del self._messages[message_id]
            del self._next_index[message_id]
            self._closed.discard(message_id)

    def clear(self) -> None:
        self.slots.clear()
        self._messages.clear()
        self._next_index.clear()
        self._closed.clear()
