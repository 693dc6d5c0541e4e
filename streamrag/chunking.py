"""Group evicted text into archive chunks along message boundaries.

Evictions arrive in pieces of whatever size the cache dropped (``evict_chunk``
tokens, sometimes cutting a message in two). The archive wants chunks of a
predictable size that never mix two messages, and that come out *the same*
however the evictions fell: after a crash and :meth:`Assistant.resume`, the
rebuilt cache evicts the same messages again at different boundaries, and the
archive must end up with each piece of text exactly once.

So chunks sit on a fixed grid over each message's content characters: chunk
``k`` covers ``[k * step, k * step + chunk_chars)`` with ``step = chunk_chars -
overlap``, and its id is ``session:message:start``. A chunk is written as soon
as any of its text is evicted and rewritten (same id, so an upsert) as more of
it leaves the window. Text is therefore durable the moment it is evicted, and
writing the same span twice changes nothing.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

from streamrag.ledger import EvictedSpan

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Chunk:
    """One archive record: verbatim text of one message between two character offsets."""

    chunk_id: str
    text: str
    session_id: str
    message_id: str
    role: str
    turn: int
    char_start: int
    char_end: int
    complete: bool


def chunk_id(session_id: str, message_id: str, grid_start: int) -> str:
    return f"{session_id}:{message_id}:{grid_start}"


@dataclass
class _Evicted:
    """Evicted text of one message still needed for chunks that are not complete yet."""

    start: int
    text: str

    @property
    def end(self) -> int:
        return self.start + len(self.text)


class Chunker:
    """Turns evicted spans into grid-aligned chunks; remembers a bounded tail per message."""

    def __init__(self, chunk_chars: int, overlap_chars: int, max_messages: int = 4096):
        if not 0 <= overlap_chars < chunk_chars:
            raise ValueError("overlap must be smaller than the chunk size")
        self.size = chunk_chars
        self.step = chunk_chars - overlap_chars
        self.max_messages = max_messages
        self._buffers: OrderedDict[tuple[str, str], _Evicted] = OrderedDict()

    def snapshot(self) -> OrderedDict[tuple[str, str], _Evicted]:
        """State to restore if writing the chunks fails (so a retry archives them again)."""
        return OrderedDict((k, _Evicted(v.start, v.text)) for k, v in self._buffers.items())

    def restore(self, snapshot: OrderedDict[tuple[str, str], _Evicted]) -> None:
        self._buffers = snapshot

    def forget(self, keys: set[tuple[str, str]] | None = None) -> None:
        """Drop buffered text of these (session id, message id) pairs, or of all messages."""
        if keys is None:
            self._buffers.clear()
        for key in keys or ():
            self._buffers.pop(key, None)

    def add(self, span: EvictedSpan) -> list[Chunk]:
        """Chunks created or grown by one evicted span (empty for template-only spans)."""
        if not span.text:
            return []
        a, text = span.char_start, span.text
        key = (span.session_id, span.message_id)
        buffer = self._buffers.get(key)
        if buffer is None or a > buffer.end:
            if buffer is not None:
                logger.warning("non-contiguous eviction of message %s at char %d", span.message_id, a)
            buffer = _Evicted(a, text)
            new_from = a
        elif a + len(text) <= buffer.end:
            return []  # already archived (the same text evicted again after a rebuild)
        else:
            new_from = buffer.end
            buffer.text += text[buffer.end - a :]
        self._buffers[key] = buffer
        self._buffers.move_to_end(key)
        while len(self._buffers) > self.max_messages:
            self._buffers.popitem(last=False)

        end = buffer.end
        first = max(0, (new_from - self.size) // self.step + 1)
        last = (end - 1) // self.step
        chunks = []
        for k in range(first, last + 1):
            grid_start = k * self.step
            start = max(grid_start, buffer.start)
            stop = min(grid_start + self.size, end)
            if stop <= start:
                continue
            chunks.append(
                Chunk(
                    chunk_id=chunk_id(span.session_id, span.message_id, grid_start),
                    text=buffer.text[start - buffer.start : stop - buffer.start],
                    session_id=span.session_id,
                    message_id=span.message_id,
                    role=span.role,
                    turn=span.turn,
                    char_start=start,
                    char_end=stop,
                    complete=grid_start + self.size <= end,
                )
            )
        # Keep only what the earliest incomplete chunk still needs.
        keep_from = max(buffer.start, (max(end - self.size, -1) // self.step + 1) * self.step)
        buffer.text = buffer.text[keep_from - buffer.start :]
        buffer.start = keep_from
        return chunks
