"""BM25 over one session's archived chunks (bm25s), for exact words the embedder misses.

Dense embeddings are good at meaning and poor at exact tokens: a locker code,
an order number, a rare surname. BM25 finds those. bm25s builds a sparse index
in one pass but cannot add documents to it, so the index is rebuilt lazily: an
upsert marks it stale, and the next search rebuilds it once.
"""

from __future__ import annotations

import logging
import threading

import bm25s

logger = logging.getLogger(__name__)
# bm25s sets its own logger to DEBUG at import, which floods an application's logs
# with per-call index messages; the host application decides, so return it to WARNING.
logging.getLogger("bm25s").setLevel(logging.WARNING)


class LexicalIndex:
    """Chunk id -> text, searchable with BM25 (English stop words removed)."""

    def __init__(self) -> None:
        self._texts: dict[str, str] = {}
        self._ids: list[str] = []
        self._retriever: bm25s.BM25 | None = None
        self._stale = True
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._texts)

    def upsert(self, items: dict[str, str]) -> None:
        with self._lock:
            self._texts.update(items)
            self._stale = True

    def delete(self, chunk_ids: set[str] | None = None) -> None:
        with self._lock:
            if chunk_ids is None:
                self._texts.clear()
            else:
                for chunk_id in chunk_ids:
                    self._texts.pop(chunk_id, None)
            self._stale = True

    def _rebuild(self) -> None:
        self._ids = list(self._texts)
        self._retriever = None
        if self._ids:
            tokens = bm25s.tokenize([self._texts[i] for i in self._ids], stopwords="en", show_progress=False)
            retriever = bm25s.BM25()
            retriever.index(tokens, show_progress=False)
            self._retriever = retriever
        self._stale = False

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        """Best ``k`` chunk ids with BM25 score > 0, best first."""
        with self._lock:
            if self._stale:
                self._rebuild()
            if self._retriever is None or k <= 0:
                return []
            query_tokens = bm25s.tokenize([query], stopwords="en", show_progress=False)
            if not query_tokens.ids or not query_tokens.ids[0]:
                return []  # only stop words or unknown characters
            k = min(k, len(self._ids))
            docs, scores = self._retriever.retrieve(query_tokens, k=k, show_progress=False)
            return [(self._ids[int(d)], float(s)) for d, s in zip(docs[0], scores[0]) if float(s) > 0.0]
