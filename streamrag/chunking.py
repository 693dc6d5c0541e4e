"""Cut logged evicted text into archive chunks along message boundaries.

Evictions arrive in pieces of whatever size the cache dropped (``evict_chunk``
tokens, sometimes cutting a message in two), and are logged as they come
(:meth:`streamrag.transcript.Transcript.log_evicted`). The archive wants
chunks of a predictable size that never mix two messages, and that come out
*the same* however the evictions fell: after a crash, a rebuild or an
indexer that ran twice, the archive must end up with each piece of text
exactly once.

So chunks sit on a fixed grid over each message's content characters: chunk
``k`` belongs to ``[k * step, k * step + chunk_chars)`` with ``step =
chunk_chars - overlap``, and its id is ``session:message:k*step``. Its edges
are then moved back to where a word begins (a sentence, when one begins in
the last quarter of the cell), so no word is cut in half and no fragment
like "ormous" reaches a prompt; a run of text without a space is cut hard.
Where an edge lands depends only on the quarter-cell of text before it. A
chunk is written as soon as any of its text is logged and rewritten (same
id, so an upsert) as more of the message follows; a chunk whose message is
not all logged yet ends where the log ends. Cutting is a pure function of
the logged text, so the indexer can run in any process, any number of times.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from streamrag.transcript import EvictedText

logger = logging.getLogger(__name__)
_SENTENCE_END = re.compile(r"[.!?\n][\"')\]]*\s+")


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
    spoken_at: float = 0.0
    speaker: str = ""
    context: str = ""  # the turn before, for the embedding only (see Archive); never stored or shown


def chunk_id(session_id: str, message_id: str, grid_start: int) -> str:
    return f"{session_id}:{message_id}:{grid_start}"


class Chunker:
    """Grid-aligned chunks of one message's logged text; holds no state between calls."""

    def __init__(self, chunk_chars: int, overlap_chars: int):
        if not 0 <= overlap_chars < chunk_chars:
            raise ValueError("overlap must be smaller than the chunk size")
        self.size = chunk_chars
        self.step = chunk_chars - overlap_chars
        self.look_back = chunk_chars // 4

    def first_affected(self, new_from: int) -> int:
        """First character the chunks touched by text from ``new_from`` on may start at (edges move back)."""
        return max(0, self._first_cell(new_from) * self.step - self.look_back - 1)

    def _first_cell(self, new_from: int) -> int:
        """First cell that text from ``new_from`` on can change: one holding it, or ending right at it.

        A cell ending at ``new_from`` is included because whether its end cuts
        a word depends on the first character after it.
        """
        return max(0, -(-(new_from - self.size) // self.step))

    def snap(self, text: str, offset: int, position: int, floor: int) -> int:
        """``position`` moved back to a sentence or word start, never to ``floor`` or below.

        ``text`` starts at character ``offset`` of the message. A position at
        either end of the known text, or already between a space and a word,
        stays; so does one inside a word with no space in the look-back range.
        """
        at = position - offset
        if at <= 0 or at >= len(text) or text[at - 1].isspace() or text[at].isspace():
            return position
        lowest = max(floor + 1 - offset, at - self.look_back, 0)
        window = text[lowest:at]
        sentence = [m.end() for m in _SENTENCE_END.finditer(window)]
        if sentence:
            return offset + lowest + sentence[-1]
        space = max(window.rfind(" "), window.rfind("\n"), window.rfind("\t"))
        return position if space < 0 else offset + lowest + space + 1

    def chunks(self, pieces: Sequence[EvictedText], new_from: int, speaker: str = "") -> list[Chunk]:
        """Chunks created or grown by the text from character ``new_from`` on.

        ``pieces`` are the message's logged pieces in order, reaching back at
        least to :meth:`first_affected` (more is harmless). Runs separated by
        a gap (a log that skipped characters) are chunked apart, never glued.
        """
        chunks: list[Chunk] = []
        for run in _contiguous_runs(pieces):
            chunks += self._chunks_of_run(run, new_from, speaker)
        return chunks

    def _chunks_of_run(self, run: list[EvictedText], new_from: int, speaker: str) -> list[Chunk]:
        start, end = run[0].char_start, run[-1].char_end
        if end <= new_from:
            return []
        text = "".join(piece.text for piece in run)
        head = run[-1]
        first = self._first_cell(max(new_from, start))
        last = (end - 1) // self.step
        chunks = []
        for k in range(first, last + 1):
            grid_start = k * self.step
            lo = max(self.snap(text, start, grid_start, grid_start - self.step), start)
            hi = min(self.snap(text, start, grid_start + self.size, grid_start), end)
            if hi <= lo:
                continue
            chunks.append(
                Chunk(
                    chunk_id=chunk_id(head.session_id, head.message_id, grid_start),
                    text=text[lo - start : hi - start],
                    session_id=head.session_id,
                    message_id=head.message_id,
                    role=head.role,
                    turn=head.turn,
                    char_start=lo,
                    char_end=hi,
                    complete=grid_start + self.size <= end,
                    spoken_at=head.spoken_at,
                    speaker=speaker or head.role,
                )
            )
        return chunks


def _contiguous_runs(pieces: Sequence[EvictedText]) -> list[list[EvictedText]]:
    runs: list[list[EvictedText]] = []
    for piece in sorted(pieces, key=lambda p: p.char_start):
        if runs and piece.char_start <= runs[-1][-1].char_end:
            last = runs[-1][-1]
            if piece.char_end <= last.char_end:
                continue  # already covered
            overlap = last.char_end - piece.char_start
            if overlap:
                piece = EvictedText(**{**piece.__dict__, "char_start": last.char_end, "text": piece.text[overlap:]})
            runs[-1].append(piece)
        else:
            if runs:
                logger.warning("logged text of message %s has a gap before char %d", piece.message_id, piece.char_start)
            runs.append([piece])
    return runs
