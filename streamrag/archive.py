"""Chunk, embed, store and search evicted text (Chroma + BM25).

The archive is an eviction subscriber: :meth:`Archive.write` receives the
spans the sink cache is about to drop and returns only once their chunks are
in Chroma. If Chroma cannot be reached, it raises :class:`ArchiveUnavailable`
and the engine keeps the KV slots, so nothing is silently lost.

Search is hybrid: Chroma's dense similarity and BM25 over the same chunks,
fused by reciprocal rank (RRF, k=60). Every query is filtered by session: one
conversation never recalls another's text.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from streamrag.chunking import Chunk, Chunker
from streamrag.config import ArchiveSettings
from streamrag.embedding import EMBEDDED, StreamragEmbedding
from streamrag.ledger import EvictedSpan
from streamrag.lexical import LexicalIndex

logger = logging.getLogger(__name__)

RRF_K = 60


class ArchiveUnavailable(RuntimeError):
    """The vector store could not be reached or refused a write; the cache was left as it was."""


@dataclass(frozen=True)
class Memory:
    """One archived chunk, as found by a search or listing.

    ``score`` is the fused rank score (or the reranker's score when one is
    set); ``similarity`` the cosine similarity from the dense search and
    ``lexical_score`` the BM25 score, each ``None`` when that retriever did
    not return the chunk.
    """

    chunk_id: str
    text: str
    session_id: str
    message_id: str
    role: str
    turn: int
    char_start: int
    char_end: int
    created_at: float
    score: float = 0.0
    similarity: float | None = None
    lexical_score: float | None = None


def _memory(chunk_id: str, text: str, meta: dict, **scores) -> Memory:
    return Memory(
        chunk_id=chunk_id,
        text=text,
        session_id=str(meta["session_id"]),
        message_id=str(meta["message_id"]),
        role=str(meta["role"]),
        turn=int(meta["turn"]),
        char_start=int(meta["char_start"]),
        char_end=int(meta["char_end"]),
        created_at=float(meta.get("created_at", 0.0)),
        **scores,
    )


def open_chroma_client(settings: ArchiveSettings, data_dir: Path):
    """An embedded PersistentClient under ``data_dir/chroma``, or an HttpClient for ``chroma_url``."""
    import chromadb
    from chromadb.config import Settings

    chroma_settings = Settings(anonymized_telemetry=False)
    try:
        if settings.chroma_url is None:
            path = Path(data_dir) / "chroma"
            path.mkdir(parents=True, exist_ok=True)
            return chromadb.PersistentClient(
                path=str(path), settings=chroma_settings, tenant=settings.tenant, database=settings.database
            )
        url = urlparse(settings.chroma_url)
        return chromadb.HttpClient(
            host=url.hostname or "127.0.0.1",
            port=url.port or (443 if url.scheme == "https" else 8000),
            ssl=url.scheme == "https",
            settings=chroma_settings,
            tenant=settings.tenant,
            database=settings.database,
        )
    except Exception as exc:  # chromadb raises ValueError/ConnectionError/its own types
        where = settings.chroma_url or str(Path(data_dir) / "chroma")
        raise ArchiveUnavailable(f"cannot open the Chroma archive at {where}: {exc}") from exc


class Archive:
    """Evicted text of every session, in one Chroma collection."""

    def __init__(self, settings: ArchiveSettings, data_dir: Path, client=None):
        self.settings = settings
        self.where = settings.chroma_url or str(Path(data_dir) / "chroma")
        self.client = client or open_chroma_client(settings, data_dir)
        self.embedder = StreamragEmbedding(
            model=settings.embedding_model or EMBEDDED,
            device=settings.embedding_device,
            batch_size=settings.embedding_batch_size,
        )
        try:
            self.collection = self.client.get_or_create_collection(
                settings.collection, embedding_function=self.embedder, configuration={"hnsw": {"space": "cosine"}}
            )
        except Exception as exc:
            raise ArchiveUnavailable(f"cannot open collection {settings.collection!r} at {self.where}: {exc}") from exc
        self.chunker = Chunker(settings.chunk_chars, settings.chunk_overlap_chars)
        self._lexical: dict[str, LexicalIndex] = {}
        self._lock = threading.RLock()
        self._reranker = None
        self.chunks_written = 0
        self.write_seconds = 0.0

    # -- writing --------------------------------------------------------
    def write(self, spans: list[EvictedSpan]) -> int:
        """Archive evicted spans durably; return the number of chunks written.

        Spans marked ``archive=False`` (recalled memories) and template-only
        spans are skipped. Raises :class:`ArchiveUnavailable` if the store
        refuses the write, with the chunker rolled back so a retry writes the
        same chunks.
        """
        with self._lock:
            snapshot = self.chunker.snapshot()
            chunks: dict[str, Chunk] = {}
            for span in spans:
                if span.archive:
                    for chunk in self.chunker.add(span):
                        chunks[chunk.chunk_id] = chunk
            if not chunks:
                return 0
            started = time.perf_counter()
            try:
                self._upsert(list(chunks.values()))
            except Exception as exc:
                self.chunker.restore(snapshot)
                raise ArchiveUnavailable(f"archive write to {self.where} failed: {exc}") from exc
            self.write_seconds += time.perf_counter() - started
            self.chunks_written += len(chunks)
            return len(chunks)

    __call__ = write  # an Archive is itself an eviction subscriber: lm.on_evict(archive)

    def _upsert(self, chunks: list[Chunk]) -> None:
        now = time.time()
        self.collection.upsert(
            ids=[c.chunk_id for c in chunks],
            documents=[c.text for c in chunks],
            metadatas=[
                {
                    "session_id": c.session_id,
                    "message_id": c.message_id,
                    "role": c.role,
                    "turn": c.turn,
                    "char_start": c.char_start,
                    "char_end": c.char_end,
                    "complete": c.complete,
                    "created_at": now,
                }
                for c in chunks
            ],
        )
        for chunk in chunks:
            index = self._lexical.get(chunk.session_id)
            if index is not None:
                index.upsert({chunk.chunk_id: chunk.text})

    # -- reading --------------------------------------------------------
    def _lexical_index(self, session_id: str) -> LexicalIndex:
        index = self._lexical.get(session_id)
        if index is None:
            index = LexicalIndex()
            got = self.collection.get(where={"session_id": session_id}, include=["documents"])
            index.upsert(dict(zip(got["ids"], got["documents"])))
            self._lexical[session_id] = index
        return index

    def count(self, session_id: str | None = None) -> int:
        """Chunks in the archive, for one session or all."""
        if session_id is None:
            return self.collection.count()
        return len(self.collection.get(where={"session_id": session_id}, include=[])["ids"])

    def get(self, chunk_ids: list[str]) -> list[Memory]:
        got = self.collection.get(ids=chunk_ids, include=["documents", "metadatas"])
        return [_memory(i, d, m) for i, d, m in zip(got["ids"], got["documents"], got["metadatas"])]

    def list(self, session_id: str, limit: int | None = None, offset: int = 0) -> list[Memory]:
        """A session's memories in conversation order (turn, then position)."""
        got = self.collection.get(where={"session_id": session_id}, include=["documents", "metadatas"])
        memories = [_memory(i, d, m) for i, d, m in zip(got["ids"], got["documents"], got["metadatas"])]
        memories.sort(key=lambda m: (m.turn, m.created_at, m.message_id, m.char_start))
        return memories[offset : None if limit is None else offset + limit]

    def search(self, session_id: str, query: str, k: int = 5, candidates: int | None = None) -> list[Memory]:
        """Hybrid search inside one session: dense + BM25, fused by reciprocal rank.

        Returns up to ``k`` memories, best first, each carrying the component
        scores so a recall policy can apply its own thresholds.
        """
        if k <= 0 or not query.strip():
            return []
        pool = candidates or max(3 * k, 10)
        with self._lock:
            lexical = self._lexical_index(session_id)
            total = len(lexical)
            if total == 0:
                return []
            result = self.collection.query(
                query_texts=[query],
                n_results=min(pool, total),
                where={"session_id": session_id},
                include=["documents", "metadatas", "distances"],
            )
            lexical_hits = lexical.search(query, pool)
        fused: dict[str, float] = {}
        similarity: dict[str, float] = {}
        found: dict[str, tuple[str, dict]] = {}
        for rank, (cid, doc, meta, dist) in enumerate(
            zip(result["ids"][0], result["documents"][0], result["metadatas"][0], result["distances"][0])
        ):
            fused[cid] = fused.get(cid, 0.0) + 1.0 / (RRF_K + rank + 1)
            similarity[cid] = 1.0 - float(dist)
            found[cid] = (doc, meta)
        lexical_score = dict(lexical_hits)
        for rank, (cid, _) in enumerate(lexical_hits):
            fused[cid] = fused.get(cid, 0.0) + 1.0 / (RRF_K + rank + 1)
        missing = [cid for cid in lexical_score if cid not in found]
        if missing:
            got = self.collection.get(ids=missing, include=["documents", "metadatas"])
            found.update({i: (d, m) for i, d, m in zip(got["ids"], got["documents"], got["metadatas"])})
        memories = [
            _memory(
                cid,
                found[cid][0],
                found[cid][1],
                score=score,
                similarity=similarity.get(cid),
                lexical_score=lexical_score.get(cid),
            )
            for cid, score in sorted(fused.items(), key=lambda item: -item[1])
            if cid in found
        ]
        if self.settings.reranker:
            memories = self._rerank(query, memories)
        return memories[:k]

    def _rerank(self, query: str, memories: list[Memory]) -> list[Memory]:
        from dataclasses import replace

        from sentence_transformers import CrossEncoder

        if self._reranker is None:
            self._reranker = CrossEncoder(self.settings.reranker, device=self.settings.embedding_device)
        if not memories:
            return memories
        scores = self._reranker.predict([(query, m.text) for m in memories])
        reranked = [replace(m, score=float(s)) for m, s in zip(memories, scores)]
        return sorted(reranked, key=lambda m: -m.score)

    # -- forgetting -----------------------------------------------------
    def forget(self, session_id: str, chunk_id: str | None = None) -> int:
        """Delete one memory of a session, or all of them; returns how many were deleted."""
        with self._lock:
            if chunk_id is not None:
                got = self.collection.get(ids=[chunk_id], where={"session_id": session_id}, include=["metadatas"])
                ids = got["ids"]
            else:
                got = self.collection.get(where={"session_id": session_id}, include=["metadatas"])
                ids = got["ids"]
            message_keys = {(session_id, m["message_id"]) for m in got["metadatas"]}
            if ids:
                self.collection.delete(ids=ids)
            index = self._lexical.get(session_id)
            if index is not None:
                index.delete(set(ids) if chunk_id is not None else None)
            self.chunker.forget(message_keys)
            return len(ids)
