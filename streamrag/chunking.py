"""Cut logged evicted text into archive chunks along message boundaries.

Evictions arrive in pieces of whatever size the cache dropped (``evict_chunk``
tokens, sometimes cutting a message in two), and are logged as they come
(:meth:`streamrag.transcript.Transcript.log_evicted`). The archive wants
chunks of a predictable size that never mix two messages, and that come out
*the same* however the evictions fell: after a crash, a rebuild or an
indexer that ran twice, the archive must end up with each piece of text
exactly once.

So chunks sit on a fixed grid over each message's content characters: chunk
``k`` covers ``[k * step, k * step + chunk_chars)`` with ``step = chunk_chars -
overlap``, and its id is ``session:message:start``. A chunk is written as soon
as any of its text is logged and rewritten (same id, so an upsert) as more of
the message follows. Cutting is a pure function of the logged text, so the
indexer can run in any process, any number of times.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from streamrag.transcript import EvictedText

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
    spoken_at: float = 0.0


def chunk_id(session_id: str, message_id: str, grid_start: int) -> str:
    return f"{session_id}:{message_id}:{grid_start}"


class Chunker:
    """Grid-aligned chunks of one message's logged text; holds no state between calls."""

    def __init__(self, chunk_chars: int, overlap_chars: int):
        if not 0 <= overlap_chars < chunk_chars:
            raise ValueError("overlap must be smaller than the chunk size")
        self.size = chunk_chars
        self.step = chunk_chars - overlap_chars

    def first_affected(self, new_from: int) -> int:
        """Start of the first grid cell that text from ``new_from`` onwards falls into."""
        return max(0, (new_from - self.size) // self.step + 1) * self.step

    def chunks(self, pieces: Sequence[EvictedText], new_from: int) -> list[Chunk]:
        """Chunks created or grown by the text from character ``new_from`` on.

        ``pieces`` are the message's logged pieces in order, reaching back at
        least to :meth:`first_affected` (more is harmless). Runs separated by
        a gap (a log that skipped characters) are chunked apart, never glued.
        """
        chunks: list[Chunk] = []
        for run in _contiguous_runs(pieces):
            chunks += self._chunks_of_run(run, new_from)
        return chunks

    def _chunks_of_run(self, run: list[EvictedText], new_from: int) -> list[Chunk]:
        start, end = run[0].char_start, run[-1].char_end
        if end <= new_from:
            return []
        text = "".join(piece.text for piece in run)
        head = run[-1]
        first = max(0, (max(new_from, start) - self.size) // self.step + 1)
        last = (end - 1) // self.step
        chunks = []
        for k in range(first, last + 1):
            grid_start = k * self.step
            lo, hi = max(grid_start, start), min(grid_start + self.size, end)
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
