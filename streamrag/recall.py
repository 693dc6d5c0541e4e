"""Decide which archived memories come back into the context before a user turn.

The policy, in order:

1. query the session's archive with the new message; then with the message
   plus the previous reply (which often holds the referent of "that" or
   "it"), whose hits only fill what is left;
2. keep hits the dense retriever finds similar enough *or* BM25 matches on
   content words (a code or a name the embedder cannot see);
3. drop hits whose text is still inside the cache window: the model can
   already attend to it, and repeating it wastes budget;
4. fit the rest, best first and without repeating a text, into a token
   budget (a share of the window);
5. render them as one clearly delimited system message, oldest first, with
   turn numbers, injected right before the user message and marked
   not-to-archive so it is never archived a second time.

Text that is logged but not yet indexed (``pending`` chunks) takes part
through BM25. If the vector store is unavailable, recall degrades to those
pending chunks alone and says so (``RecallResult.unavailable``): the turn goes on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from streamrag.archive import Archive, ArchiveUnavailable, Memory
from streamrag.chunking import Chunk
from streamrag.config import RecallSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecallResult:
    """What came back for one turn, and why (kept for apps and users to inspect).

    ``unavailable`` holds the store's error when the archive could not be
    searched (only not-yet-indexed text was); ``None`` when recall worked.
    """

    query: str
    memories: list[Memory]
    block: str
    block_tokens: int
    considered: int
    unavailable: str | None = None


def _overlaps_window(memory: Memory, resident: dict[str, tuple[int, int]]) -> bool:
    """True when the memory's characters are all still in the cache."""
    span = resident.get(memory.message_id)
    return span is not None and span[0] <= memory.char_start and memory.char_end <= span[1]


class RecallPolicy:
    """Turns a user message into a memory block for the prompt."""

    def __init__(self, settings: RecallSettings, archive: Archive, count_tokens, window_tokens: int):
        self.settings = settings
        self.archive = archive
        self.count_tokens = count_tokens
        self.budget_tokens = max(1, int(settings.budget_fraction * window_tokens))

    def recall(
        self,
        session_id: str,
        message: str,
        last_reply: str | None = None,
        resident: dict[str, tuple[int, int]] | None = None,
        pending: list[Chunk] | None = None,
    ) -> RecallResult:
        settings = self.settings
        query = message
        if not settings.enabled or settings.top_k == 0:
            return RecallResult(query, [], "", 0, 0)
        unavailable = None
        queries = [(message, settings.top_k * 4)]
        if settings.use_last_reply and last_reply:
            # The new message leads; the previous reply (often the referent of "it" or "that")
            # only adds candidates after the message's own hits.
            query = f"{message}\n{last_reply}"
            queries.append((query, settings.top_k * 2))
        hits: list[Memory] = []
        seen: set[str] = set()
        for text, k in queries:
            try:
                found = self.archive.search(session_id, text, k=k, pending=pending)
            except ArchiveUnavailable as exc:
                unavailable = str(exc)
                found = self.archive.search_pending(session_id, text, k, pending or [])
            hits += [h for h in found if h.chunk_id not in seen]
            seen.update(h.chunk_id for h in found)
        resident = resident or {}
        kept: list[Memory] = []
        texts: set[str] = set()
        used = 0
        header_tokens = self.count_tokens(settings.header)
        for hit in hits:
            relevant = (hit.similarity is not None and hit.similarity >= settings.min_similarity) or (
                hit.lexical_score is not None and hit.lexical_score >= settings.min_lexical_score
            )
            text = " ".join(hit.text.split())
            if not relevant or text in texts or _overlaps_window(hit, resident):
                continue
            cost = self.count_tokens(self._line(hit)) + 1
            if header_tokens + used + cost > self.budget_tokens:
                continue
            kept.append(hit)
            texts.add(text)
            used += cost
            if len(kept) == settings.top_k:
                break
        block = self.render(kept)
        tokens = self.count_tokens(block) if block else 0
        logger.debug("recall: %d of %d hits, %d tokens", len(kept), len(hits), tokens)
        return RecallResult(query, kept, block, tokens, len(hits), unavailable)

    @staticmethod
    def _line(memory: Memory) -> str:
        return f"- (turn {memory.turn}, {memory.role}) {memory.text.strip()}"

    def render(self, memories: list[Memory]) -> str:
        """One block, oldest memory first, each line naming its turn and speaker."""
        if not memories:
            return ""
        ordered = sorted(memories, key=lambda m: (m.turn, m.created_at, m.char_start))
        return "\n".join([self.settings.header, *(self._line(m) for m in ordered)])
