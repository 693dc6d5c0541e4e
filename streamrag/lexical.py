"""Incremental BM25 over one session's archived chunks, for exact words the embedder misses.

Dense embeddings are good at meaning and poor at exact tokens: a locker
code, an order number, a rare surname. BM25 finds those. The index here is
updated per write, never rebuilt: a conversation adds a chunk every few
seconds, and bm25s (whose tokenisation and stop words we use) stores a
precomputed score matrix in which every entry depends on the corpus size and
the average length, so it can only be rebuilt (seconds at 100k chunks,
measured in ``bench recall``). Tantivy indexes incrementally but each
in-memory index needs a writer heap of at least 15 MB, and we hold one index
per live session. So postings keep raw term frequencies and BM25 (Lucene's
idf, k1=1.5, b=0.75) is computed when a query arrives, over the postings of
the query's terms only: a query costs what its terms occur in, not the size
of the archive.

Scores of different queries are not comparable (BM25 grows with the query's
length and rarity), so every hit also carries ``coverage``: the share of the
query's idf mass that the chunk contains, in [0, 1]. A chunk holding every
content word of the question has coverage 1.0 whatever the question.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from array import array
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

logger = logging.getLogger(__name__)
# bm25s sets its own logger to DEBUG at import, which floods an application's logs
# with per-call index messages; the host application decides, so return it to WARNING.
logging.getLogger("bm25s").setLevel(logging.WARNING)

K1 = 1.5
B = 0.75
# bm25s' default token pattern: words of two or more characters (so "QX7-2291" gives "qx7", "2291").
_TOKEN = re.compile(r"(?u)\b\w\w+\b")


def _stop_words() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN) | {"did", "does", "do", "what", "when", "who", "which", "how", "why", "where"}


_STOP = _stop_words()


@lru_cache(maxsize=1)
def _stemmer():
    """English Snowball stemmer (PyStemmer), so "marathons" finds "marathon"; None if it is not installed."""
    try:
        import Stemmer
    except ImportError:  # an optional speed-up of recall quality, not a requirement
        logger.warning("PyStemmer is not installed: BM25 matches exact word forms only")
        return None
    return Stemmer.Stemmer("english")


def analyse(text: str) -> list[str]:
    """Lower-cased, stemmed content words of ``text`` (stop words and one-letter tokens dropped)."""
    words = [w for w in _TOKEN.findall(text.lower()) if w not in _STOP]
    stemmer = _stemmer()
    return stemmer.stemWords(words) if stemmer is not None and words else words


@dataclass(frozen=True)
class LexicalHit:
    """A chunk that shares words with the query: its BM25 score and the share of the query it covers."""

    chunk_id: str
    score: float
    coverage: float


class LexicalIndex:
    """Chunk id -> analysed text, searchable with BM25; adds, replaces and deletes in place."""

    def __init__(self, compact_after: int = 1000) -> None:
        """``compact_after``: deleted documents tolerated in the postings before they are dropped."""
        self.compact_after = compact_after
        self._lock = threading.Lock()
        self._ids: list[str | None] = []  # doc number -> chunk id; None once deleted
        self._number: dict[str, int] = {}
        self._doc_terms: list[np.ndarray | None] = []  # doc number -> its distinct term numbers
        self._lengths = array("f")
        self._alive = array("b")
        self._vocab: dict[str, int] = {}
        self._postings: list[tuple[array, array]] = []  # term number -> (doc numbers, term frequencies)
        self._df: list[int] = []
        self._live = 0
        self._total_length = 0.0
        self._dead = 0
        self.compactions = getattr(self, "compactions", 0)  # kept across a reset

    def __len__(self) -> int:
        return self._live

    # -- writing --------------------------------------------------------
    def upsert(self, items: dict[str, str]) -> None:
        """Add chunks; a chunk id already held is replaced (its old text no longer matches)."""
        analysed = {chunk_id: analyse(text) for chunk_id, text in items.items()}
        with self._lock:
            for chunk_id, words in analysed.items():
                self._remove(chunk_id)
                self._add(chunk_id, words)
            self._maybe_compact()

    def delete(self, chunk_ids: set[str] | None = None) -> None:
        """Remove chunks (all of them with ``None``)."""
        with self._lock:
            if chunk_ids is None:
                self.__init__(self.compact_after)
                return
            for chunk_id in chunk_ids:
                self._remove(chunk_id)
            self._maybe_compact()

    def _add(self, chunk_id: str, words: list[str]) -> None:
        number = len(self._ids)
        counts: dict[int, int] = {}
        for word in words:
            term = self._vocab.get(word)
            if term is None:
                term = self._vocab[word] = len(self._postings)
                self._postings.append((array("i"), array("f")))
                self._df.append(0)
            counts[term] = counts.get(term, 0) + 1
        for term, tf in counts.items():
            docs, freqs = self._postings[term]
            docs.append(number)
            freqs.append(tf)
            self._df[term] += 1
        self._ids.append(chunk_id)
        self._number[chunk_id] = number
        self._doc_terms.append(np.fromiter(counts, dtype=np.int32, count=len(counts)))
        self._lengths.append(len(words))
        self._alive.append(1)
        self._live += 1
        self._total_length += len(words)

    def _remove(self, chunk_id: str) -> None:
        number = self._number.pop(chunk_id, None)
        if number is None:
            return
        for term in self._doc_terms[number]:
            self._df[int(term)] -= 1
        self._ids[number] = None
        self._doc_terms[number] = None
        self._alive[number] = 0
        self._live -= 1
        self._total_length -= self._lengths[number]
        self._dead += 1

    def _maybe_compact(self) -> None:
        """Drop deleted documents from the postings once they outnumber the live ones (amortised O(1) per write)."""
        if self._dead < self.compact_after or self._dead < self._live:
            return
        keep = [(cid, n) for cid, n in self._number.items()]
        old_terms, old_lengths = self._doc_terms, self._lengths
        postings = self._postings
        # Rebuild from the stored term numbers and frequencies; no text is needed.
        freqs_of: dict[int, dict[int, float]] = {}
        for term, (docs, freqs) in enumerate(postings):
            for doc, tf in zip(docs, freqs):
                if self._alive[doc]:
                    freqs_of.setdefault(doc, {})[term] = tf
        vocab = self._vocab
        self.__init__(self.compact_after)  # keeps the compaction count
        self.compactions += 1
        self._vocab = vocab
        self._postings = [(array("i"), array("f")) for _ in vocab]
        self._df = [0] * len(vocab)
        for chunk_id, old in sorted(keep, key=lambda item: item[1]):
            number = len(self._ids)
            counts = freqs_of.get(old, {})
            for term, tf in counts.items():
                self._postings[term][0].append(number)
                self._postings[term][1].append(tf)
                self._df[term] += 1
            self._ids.append(chunk_id)
            self._number[chunk_id] = number
            self._doc_terms.append(old_terms[old])
            self._lengths.append(old_lengths[old])
            self._alive.append(1)
            self._live += 1
            self._total_length += old_lengths[old]

    # -- reading --------------------------------------------------------
    def _idf(self, term: int | None) -> float:
        df = 0 if term is None else self._df[term]
        return math.log(1.0 + (self._live - df + 0.5) / (df + 0.5))

    def _query_terms(self, query: str) -> tuple[list[int | None], np.ndarray]:
        """Distinct query terms (None for words no chunk holds) and their idf weights."""
        terms = list(dict.fromkeys(self._vocab.get(word, -1) for word in analyse(query)))
        terms = [None if term == -1 else term for term in terms]
        return terms, np.array([self._idf(term) for term in terms], dtype=np.float64)

    def search(self, query: str, k: int) -> list[LexicalHit]:
        """Best ``k`` chunks with a BM25 score > 0, best first."""
        with self._lock:
            if k <= 0 or not self._live:
                return []
            terms, weights = self._query_terms(query)
            if not terms:
                return []  # only stop words or unknown characters
            # Copies, not views: a view would pin the arrays and make the next append fail.
            lengths = np.array(self._lengths, dtype=np.float64)
            alive = np.array(self._alive, dtype=np.float64)
            average = self._total_length / self._live if self._live else 1.0
            scores = np.zeros(len(self._ids), dtype=np.float64)
            matched = np.zeros(len(self._ids), dtype=np.float64)
            for term, idf in zip(terms, weights):
                if term is None:
                    continue
                if not len(self._postings[term][0]):
                    continue
                docs = np.array(self._postings[term][0], dtype=np.int64)
                tf = np.array(self._postings[term][1], dtype=np.float64)
                norm = K1 * (1.0 - B + B * lengths[docs] / average)
                scores[docs] += alive[docs] * idf * tf * (K1 + 1.0) / (tf + norm)
                matched[docs] += alive[docs] * idf
            candidates = np.flatnonzero(scores > 0.0)
            if not len(candidates):
                return []
            if len(candidates) > k:
                candidates = candidates[np.argpartition(-scores[candidates], k - 1)[:k]]
            candidates = candidates[np.argsort(-scores[candidates], kind="stable")]
            total = float(weights.sum()) or 1.0
            return [LexicalHit(self._ids[n], float(scores[n]), float(matched[n] / total)) for n in candidates]

    def coverage(self, query: str, chunk_ids: list[str]) -> dict[str, float]:
        """Share of the query's idf mass each held chunk contains (chunks not held are left out)."""
        with self._lock:
            terms, weights = self._query_terms(query)
            total = float(weights.sum())
            weight_of = {term: float(w) for term, w in zip(terms, weights) if term is not None}
            result = {}
            for chunk_id in chunk_ids:
                number = self._number.get(chunk_id)
                if number is None:
                    continue
                held = sum(weight_of.get(term, 0.0) for term in self._doc_terms[number].tolist()) if total else 0.0
                result[chunk_id] = held / total if total else 0.0
            return result
