"""Baseline memories for ``streamrag bench memory``: every turn kept, one document each.

streamrag archives only what the cache evicts, in chunks, and recalls it under a
token budget. To know whether that is any good it has to beat the simplest
strong alternatives, which keep *every* turn of the conversation as its own
document and search them all:

``dense_turns``
    cosine similarity (the same embedder as streamrag) between the question
    and each turn; the memory block is filled best-first up to the budget.
``bm25_turns``
    BM25 (bm25s, English stop words removed) over the same turn strings; it
    finds exact tokens (codes, numbers, rare names) that embeddings blur.
``llamaindex_style``
    what LlamaIndex's ``VectorMemory`` does by default: the query is the last
    five messages joined, and only the top two turns come back, however much
    budget is left.

Every system is measured at the same token budget, so the lines each one
returns are counted exactly as they would be rendered (:func:`render_line`).
Dense search is a brute-force dot product over normalised vectors: exact, and
fast enough at conversation scale, so no approximate index can blur the result.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

import bm25s
import numpy as np

logger = logging.getLogger(__name__)
# bm25s sets its own logger to DEBUG at import; leave the level to the host application.
logging.getLogger("bm25s").setLevel(logging.WARNING)

Embed = Callable[[list[str]], np.ndarray]
"""Texts -> L2-normalised float32 vectors of shape ``(len(texts), d)``."""

CANDIDATES = 50
"""How many ranked turns the budget filler considers: enough to fill any realistic budget with short turns."""

LLAMAINDEX_TOP_K = 2  # VectorMemory's default similarity_top_k
LLAMAINDEX_WINDOW = 5  # messages joined into VectorMemory's query

# Fixed English month names: strftime("%B") follows the process locale.
_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip


@dataclass(frozen=True)
class IndexedTurn:
    """One message of a conversation, as every baseline stores it."""

    turn_id: str
    speaker: str
    text: str
    timestamp: float  # Unix time, rendered as a UTC date


@runtime_checkable
class TurnBaseline(Protocol):
    """A memory that holds whole turns and returns those worth putting before the question."""

    name: str

    def add(self, turns: Sequence[IndexedTurn]) -> None:
        """Index more turns; may be called many times. A turn id already held is ignored."""
        ...

    def retrieve(
        self, question: str, recent: Sequence[str], budget_tokens: int, count_tokens: Callable[[str], int]
    ) -> list[IndexedTurn]:
        """Turns to put in the memory block, best first, whose rendered lines fit budget_tokens."""
        ...


def render_line(turn: IndexedTurn) -> str:
    """The memory-block line of a turn, e.g. ``[7 May 2023] Alice: hi``; what the budget counts."""
    when = datetime.fromtimestamp(turn.timestamp, tz=UTC)
    return f"[{when.day} {_MONTHS[when.month - 1]} {when.year}] {turn.speaker}: {turn.text}"


def document_text(turn: IndexedTurn) -> str:
    """What is embedded and BM25-indexed for a turn: who said it matters as much as what was said."""
    return f"{turn.speaker}: {turn.text}"


def fill_budget(
    ranked: Sequence[IndexedTurn],
    budget_tokens: int,
    count_tokens: Callable[[str], int],
    limit: int = CANDIDATES,
) -> list[IndexedTurn]:
    """The best-first prefix of ``ranked[:limit]`` that fits, skipping turns too long for what is left.

    Each line costs its tokens plus one for the newline that separates it from
    the next, so the returned lines joined by newlines fit ``budget_tokens``.
    Skipping (rather than stopping at) a long turn lets a shorter, lower-ranked
    one still use the room, as a greedy memory block would.
    """
    chosen: list[IndexedTurn] = []
    left = budget_tokens
    for turn in ranked[:limit]:
        if left <= 0:
            break
        cost = count_tokens(render_line(turn)) + 1
        if cost <= left:
            chosen.append(turn)
            left -= cost
    return chosen


class CachedEmbed:
    """Memoises an embedder by text, so two dense baselines over the same turns embed each string once."""

    def __init__(self, embed: Embed) -> None:
        self._embed = embed
        self._vectors: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def __call__(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._vectors))
            if missing:
                vectors = np.asarray(self._embed(missing), dtype=np.float32)
                for text, vector in zip(missing, vectors):
                    self._vectors[text] = vector
            return np.stack([self._vectors[t] for t in texts])


class _DenseIndex:
    """Turns and their vectors in one growing matrix; exact cosine search by dot product."""

    def __init__(self, embed: Embed) -> None:
        self._embed = embed
        self._turns: list[IndexedTurn] = []
        self._ids: set[str] = set()
        self._matrix: np.ndarray | None = None  # capacity rows; the first len(self._turns) are filled
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._turns)

    def add(self, turns: Sequence[IndexedTurn]) -> None:
        with self._lock:  # held while embedding: adds are rare next to searches, and this keeps them atomic
            fresh = _unseen(turns, self._ids)
            if not fresh:
                return
            vectors = np.asarray(self._embed([document_text(t) for t in fresh]), dtype=np.float32)
            if vectors.ndim != 2 or vectors.shape[0] != len(fresh):
                raise ValueError(f"embed returned shape {vectors.shape} for {len(fresh)} texts")
            size = len(self._turns)
            needed = size + len(fresh)
            if self._matrix is None or needed > self._matrix.shape[0]:
                # Doubling keeps appends amortised O(1) per row over a long conversation.
                capacity = max(needed, 2 * (0 if self._matrix is None else self._matrix.shape[0]), 64)
                grown = np.empty((capacity, vectors.shape[1]), dtype=np.float32)
                if self._matrix is not None:
                    grown[:size] = self._matrix[:size]
                self._matrix = grown
            self._matrix[size:needed] = vectors
            self._turns.extend(fresh)
            self._ids.update(t.turn_id for t in fresh)  # only once stored: a failed embed keeps nothing

    def ranked(self, query: str, k: int) -> list[IndexedTurn]:
        """The ``k`` turns most similar to ``query``, best first; ties keep insertion order."""
        with self._lock:
            size = len(self._turns)
            if not query.strip() or size == 0 or k <= 0:
                return []
            matrix = self._matrix[:size]
            turns = list(self._turns)
        scores = matrix @ np.asarray(self._embed([query]), dtype=np.float32)[0]
        order = np.argsort(-scores, kind="stable")[:k]
        return [turns[int(i)] for i in order]


def _unseen(turns: Sequence[IndexedTurn], held: set[str]) -> list[IndexedTurn]:
    """Turns whose id is not in ``held``, each id once (its first occurrence); ``held`` is left as it is."""
    seen: set[str] = set()
    fresh: list[IndexedTurn] = []
    for turn in turns:
        if turn.turn_id not in held and turn.turn_id not in seen:
            seen.add(turn.turn_id)
            fresh.append(turn)
    return fresh


class DenseTurns:
    """Every turn embedded; the question's nearest turns fill the budget best-first."""

    name = "dense_turns"

    def __init__(self, embed: Embed) -> None:
        self._index = _DenseIndex(embed)

    def add(self, turns: Sequence[IndexedTurn]) -> None:
        self._index.add(turns)

    def retrieve(
        self, question: str, recent: Sequence[str], budget_tokens: int, count_tokens: Callable[[str], int]
    ) -> list[IndexedTurn]:
        if not question.strip() or budget_tokens <= 0:
            return []
        return fill_budget(self._index.ranked(question, CANDIDATES), budget_tokens, count_tokens)


class BM25Turns:
    """Every turn in a textbook bm25s index; the question's best matches fill the budget.

    Plain bm25s on purpose, not :class:`streamrag.lexical.LexicalIndex`: a
    baseline must not change when the system under test does. bm25s cannot add
    to an index, so an add marks it stale and the next retrieve rebuilds it.
    """

    name = "bm25_turns"

    def __init__(self) -> None:
        self._turns: list[IndexedTurn] = []
        self._ids: set[str] = set()
        self._retriever: bm25s.BM25 | None = None
        self._stale = False
        self._lock = threading.Lock()

    def add(self, turns: Sequence[IndexedTurn]) -> None:
        with self._lock:
            fresh = _unseen(turns, self._ids)
            if fresh:
                self._turns.extend(fresh)
                self._ids.update(t.turn_id for t in fresh)
                self._stale = True

    def _rebuild(self) -> None:
        tokens = bm25s.tokenize([document_text(t) for t in self._turns], stopwords="en", show_progress=False)
        retriever = bm25s.BM25()
        retriever.index(tokens, show_progress=False)
        self._retriever = retriever
        self._stale = False
        logger.debug("bm25_turns: rebuilt the index over %d turns", len(self._turns))

    def retrieve(
        self, question: str, recent: Sequence[str], budget_tokens: int, count_tokens: Callable[[str], int]
    ) -> list[IndexedTurn]:
        if not question.strip() or budget_tokens <= 0:
            return []
        with self._lock:
            if not self._turns:
                return []
            if self._stale:
                self._rebuild()
            query = bm25s.tokenize([question], stopwords="en", show_progress=False)
            if not query.ids or not query.ids[0]:
                return []  # only stop words (or no words at all)
            k = min(CANDIDATES, len(self._turns))
            docs, scores = self._retriever.retrieve(query, k=k, show_progress=False)
            # Score 0 means no query word occurs in the turn: not a match, however the tie is ordered.
            ranked = [self._turns[int(d)] for d, score in zip(docs[0], scores[0]) if float(score) > 0.0]
        return fill_budget(ranked, budget_tokens, count_tokens)


class LlamaIndexStyle(DenseTurns):
    """LlamaIndex ``VectorMemory`` defaults: query = the last five messages, top two turns, nothing more.

    The query includes the question (the last of ``recent``), so a question
    that alone is ambiguous is read in the light of the conversation, and a
    question that alone is clear can be pulled off course by it.
    """

    name = "llamaindex_style"

    def retrieve(
        self, question: str, recent: Sequence[str], budget_tokens: int, count_tokens: Callable[[str], int]
    ) -> list[IndexedTurn]:
        if not question.strip() or budget_tokens <= 0:
            return []
        messages = list(recent[-LLAMAINDEX_WINDOW:]) or [question]
        query = "\n".join(messages)
        ranked = self._index.ranked(query, LLAMAINDEX_TOP_K)
        return fill_budget(ranked, budget_tokens, count_tokens, limit=LLAMAINDEX_TOP_K)


def build_baselines(embed: Embed) -> list[TurnBaseline]:
    """The three baselines, fresh and empty; the dense two share one memoised embedder."""
    shared = CachedEmbed(embed)
    return [DenseTurns(shared), BM25Turns(), LlamaIndexStyle(shared)]
