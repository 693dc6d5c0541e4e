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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from streamrag.archive import Archive, Memory
from streamrag.config import RecallSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecallResult:
    """What came back for one turn, and why (kept for apps and users to inspect)."""

    query: str
    memories: list[Memory]
    block: str
    block_tokens: int
    considered: int


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
    ) -> RecallResult:
        settings = self.settings
        query = message
        if not settings.enabled or settings.top_k == 0:
            return RecallResult(query, [], "", 0, 0)
        hits = self.archive.search(session_id, message, k=settings.top_k * 4)
        if settings.use_last_reply and last_reply:
            # The new message leads; the previous reply (often the referent of "it" or "that")
            # only adds candidates after the message's own hits.
            query = f"{message}\n{last_reply}"
            seen = {h.chunk_id for h in hits}
            hits += [h for h in self.archive.search(session_id, query, k=settings.top_k * 2) if h.chunk_id not in seen]
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
        return RecallResult(query, kept, block, tokens, len(hits))

    @staticmethod
    def _line(memory: Memory) -> str:
        return f"- (turn {memory.turn}, {memory.role}) {memory.text.strip()}"

    def render(self, memories: list[Memory]) -> str:
        """One block, oldest memory first, each line naming its turn and speaker."""
        if not memories:
            return ""
        ordered = sorted(memories, key=lambda m: (m.turn, m.created_at, m.char_start))
        return "\n".join([self.settings.header, *(self._line(m) for m in ordered)])
