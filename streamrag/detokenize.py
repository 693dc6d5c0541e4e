"""Turn a stream of token ids into a stream of text, in constant memory.

Decoding one token at a time breaks multi-byte characters (a CJK character or
an emoji is often split over several byte-level tokens) and, for
SentencePiece tokenizers, drops leading spaces. The usual fix, used by TGI and
vLLM, decodes a short trailing window twice (with and without the newest
tokens) and emits the difference once it no longer ends in a replacement
character. Only that window is kept, so a 100k-token reply costs no more
memory than a 10-token one.
"""

from __future__ import annotations

_REPLACEMENT = "\ufffd"


class StreamDecoder:
    """Incremental detokeniser: feed ids, get the new complete text."""

    def __init__(self, tokenizer, max_pending: int = 16):
        self.tokenizer = tokenizer
        self.max_pending = max_pending
        self._ids: list[int] = []
        self._prefix = 0  # start of the context window re-decoded each step
        self._read = 0  # end of what has already been emitted

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def step(self, token_id: int) -> str:
        """Add one token; return the text it completes (possibly empty)."""
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        pending = len(self._ids) - self._read
        if len(after) > len(before) and (not after.endswith(_REPLACEMENT) or pending >= self.max_pending):
            # A genuinely invalid byte sequence would otherwise hold text back forever.
            piece = after[len(before) :]
            self._prefix, self._read = self._read, len(self._ids)
            self._compact()
            return piece
        return ""

    def flush(self) -> str:
        """Text of tokens still held back (an unfinished character at the very end)."""
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        self._compact()
        return after[len(before) :]

    def _compact(self) -> None:
        if self._prefix:
            del self._ids[: self._prefix]
            self._read -= self._prefix
            self._prefix = 0


class StopMatcher:
    """Holds back just enough text to catch stop strings split across tokens."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self._hold = max((len(s) for s in self.stops), default=1) - 1
        self._buffer = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """Add text; return what is safe to emit now. Sets ``stopped`` when a stop string appears."""
        if self.stopped:
            return ""
        self._buffer += text
        if not self.stops:
            out, self._buffer = self._buffer, ""
            return out
        cut = min((i for i in (self._buffer.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self._buffer = self._buffer[:cut], ""
            return out
        safe = len(self._buffer) - self._hold
        if safe <= 0:
            return ""
        out, self._buffer = self._buffer[:safe], self._buffer[safe:]
        return out

    def flush(self) -> str:
        """Emit whatever is held back once generation ends without a stop string."""
        out, self._buffer = ("" if self.stopped else self._buffer), ""
        return out
