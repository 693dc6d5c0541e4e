"""Embed, store and search archived chunks of evicted text (Chroma + BM25).

The archive is an *index*, not the record: evicted text is first made
durable in the transcript's eviction log, and the background indexer
(:mod:`streamrag.indexer`) hands the chunks cut from it to
:meth:`Archive.upsert`. Writes are idempotent (deterministic chunk ids), so
the indexer may retry after any failure. Every call that reaches the store
raises :class:`ArchiveUnavailable` when the store fails, never a raw client
error, so callers can degrade (chat goes on without recall) instead of stopping.

Each session has its own collection (and BM25 index), so one conversation
never recalls another's text and a search costs what that session holds.
Search is hybrid: Chroma's dense similarity and BM25 over the same chunks,
each candidate scored on one absolute scale (see :meth:`Archive.search`).
What is embedded and BM25-indexed is the chunk *with its speaker*
("Maya: I ran my first half marathon"), so "what did Maya run" finds it;
what is stored and shown is the verbatim text.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from streamrag.chunking import Chunk, Chunker
from streamrag.config import ArchiveSettings
from streamrag.embedding import EMBEDDED, StreamragEmbedding
from streamrag.lexical import LexicalIndex

logger = logging.getLogger(__name__)

# Records read per call when a session's BM25 index is built from its collection.
LOAD_PAGE = 5000
# Embedded stores rewritten by this process (path -> count): other Archive objects on one reopen.
_REWRITES: dict[str, int] = {}


class ArchiveUnavailable(RuntimeError):
    """The vector store could not be reached, or failed a read or write; the message names the store."""


@dataclass(frozen=True)
class Memory:
    """One archived chunk, as found by a search or listing.

    ``score`` is the absolute relevance in [0, 1] (see :meth:`Archive.search`;
    the reranker's score when one is set); ``similarity`` the cosine
    similarity to the query and ``lexical_score`` the BM25 coverage (share
    of the query's content words the chunk holds). ``created_at`` is when
    the text was said, ``speaker`` who said it (a name, else the role).
    ``pending`` marks text that is logged but not indexed yet; ``vector``
    is its embedding when a search returned it.
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
    speaker: str = ""
    score: float = 0.0
    similarity: float | None = None
    lexical_score: float | None = None
    pending: bool = False
    vector: Any = field(default=None, repr=False, compare=False)


def embedding_text(speaker: str, text: str, context: str = "") -> str:
    """What is embedded for a chunk: its text, said by its speaker, after the turn before it if given.

    BM25 indexes the same without the context: a word of the turn before
    must not make this one match on its own.
    """
    said = f"{speaker}: {text}" if speaker else text
    return f"{context}\n{said}" if context else said


def _spoken_in(meta: dict, between: tuple[float, float]) -> bool:
    return between[0] <= float(meta.get("created_at", 0.0)) < between[1]


def _chunk_meta(c: Chunk) -> dict:
    """Chroma metadata of a chunk (also how a pending chunk reads back as a :class:`Memory`)."""
    return {
        "session_id": c.session_id,
        "message_id": c.message_id,
        "role": c.role,
        "speaker": c.speaker,
        "turn": c.turn,
        "char_start": c.char_start,
        "char_end": c.char_end,
        "complete": c.complete,
        "created_at": c.spoken_at,
    }


def _memory(chunk_id: str, text: str, meta: dict, **scores) -> Memory:
    return Memory(
        chunk_id=chunk_id,
        text=text,
        session_id=str(meta["session_id"]),
        message_id=str(meta["message_id"]),
        role=str(meta["role"]),
        speaker=str(meta.get("speaker") or meta["role"]),
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
        client = chromadb.HttpClient(
            host=url.hostname or "127.0.0.1",
            port=url.port or (443 if url.scheme == "https" else 8000),
            ssl=url.scheme == "https",
            settings=chroma_settings,
            tenant=settings.tenant,
            database=settings.database,
        )
        _set_http_timeout(client, settings.timeout_s)
        return client
    except Exception as exc:  # chromadb raises ValueError/ConnectionError/its own types
        where = settings.chroma_url or str(Path(data_dir) / "chroma")
        raise ArchiveUnavailable(f"cannot open the Chroma archive at {where}: {exc}") from exc


def _set_http_timeout(client, seconds: float) -> None:
    """Give the Chroma HTTP client a timeout: chromadb creates its httpx session with none at all.

    Without one, a paused or half-dead server freezes every call that
    reaches it. chromadb has no setting for this, so we set it on its httpx
    session; if a chromadb release moves that attribute, we say so and go on.
    """
    import httpx

    session = getattr(getattr(client, "_server", None), "_session", None)
    if isinstance(session, httpx.Client):
        session.timeout = httpx.Timeout(seconds)
    else:
        logger.warning("cannot set a timeout on this chromadb client; archive calls may hang on a stalled server")


class Archive:
    """Evicted text of every session: one Chroma collection per session, one BM25 index per live session.

    A collection per session (named from a digest of the session id, the id
    itself in its metadata) makes a search cost what *that* session holds:
    a shared collection filtered by session walks the whole archive's
    vector index and metadata, so one long conversation slowed every other
    one (measured in issue 11: p95 2.1 s at 5.5k chunks over 10 sessions).
    Forgetting a whole session drops its collection.
    """

    def __init__(self, settings: ArchiveSettings, data_dir: Path, client=None):
        """Open the store now; a Chroma *server* that is down is retried on first use instead.

        An embedded store that cannot be opened (a bad path, a corrupt
        directory) fails here: that is a setup error, not an outage.
        """
        self.settings = settings
        self.data_dir = Path(data_dir)
        self.where = settings.chroma_url or str(self.data_dir / "chroma")
        self.client = client
        self.embedder = StreamragEmbedding(
            model=settings.embedding_model or EMBEDDED,
            device=settings.embedding_device,
            batch_size=settings.embedding_batch_size,
        )
        self.chunker = Chunker(settings.chunk_chars, settings.chunk_overlap_chars)
        self._collections: dict[str, Any] = {}
        self._generation = 0
        self._opened = False
        self._lexical: OrderedDict[str, LexicalIndex] = OrderedDict()
        self._lock = threading.RLock()
        self._reranker = None
        self.chunks_written = 0
        self.write_seconds = 0.0
        # Compaction (see compact): who may write during it, and the background thread's bookkeeping.
        self.pause_writes: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
        self.compactions = 0
        self._compacting = threading.Lock()
        self._compaction_cond = threading.Condition()
        self._compaction_requested = 0
        self._compaction_completed = 0
        self._compaction_thread: threading.Thread | None = None
        try:
            self._client()
        except ArchiveUnavailable as exc:
            if settings.chroma_url is None:
                raise
            logger.warning("%s; chat goes on and the archive is retried on first use", exc)

    # -- the store ------------------------------------------------------
    def _client(self):
        """The Chroma client, created on first use; older single-collection archives are split once.

        Reopened when another archive of this process rewrote the same
        embedded store (:meth:`compact`), whose old files this one still held.
        """
        if self._opened and self._generation != _REWRITES.get(self.where, 0):
            with self._lock:
                self.client, self._collections, self._opened = None, {}, False
        if not self._opened:
            with self._lock:
                if not self._opened:
                    if self.client is None:
                        self.client = open_chroma_client(self.settings, self.data_dir)
                    self._generation = _REWRITES.get(self.where, 0)
                    with self._store("opening"):
                        self._split_shared_collection()
                    self._opened = True
        return self.client

    def collection_name(self, session_id: str) -> str:
        """The session's collection: the configured prefix and a digest of the id (Chroma limits names)."""
        digest = hashlib.sha256(session_id.encode("utf-8")).hexdigest()[:24]
        return f"{self.settings.collection}-{digest}"

    def collection_for(self, session_id: str, create: bool = True):
        """The session's Chroma collection (created when ``create``), or None when it has none."""
        client = self._client()
        collection = self._collections.get(session_id)
        if collection is not None:
            return collection
        name = self.collection_name(session_id)
        with self._lock, self._store(f"opening the collection of session {session_id!r}"):
            if create:
                collection = client.get_or_create_collection(
                    name,
                    metadata={"session_id": session_id},
                    embedding_function=self.embedder,
                    configuration={"hnsw": {"space": "cosine"}},
                )
            else:
                try:
                    collection = client.get_collection(name, embedding_function=self.embedder)
                except Exception as exc:  # chromadb raises NotFoundError (ValueError before 1.0)
                    if "does not exist" in str(exc) or type(exc).__name__ == "NotFoundError":
                        return None
                    raise
            self._collections[session_id] = collection
            return collection

    def session_ids(self) -> list[str]:
        """Sessions that have a collection in this archive."""
        prefix = self.settings.collection + "-"
        with self._store("listing collections"):
            found = self._client().list_collections()
        return [
            str(c.metadata["session_id"])
            for c in found
            if c.name.startswith(prefix) and (c.metadata or {}).get("session_id")
        ]

    def _split_shared_collection(self) -> None:
        """Move an archive written before per-session collections (one shared collection) into them.

        Vectors are copied, not recomputed; the shared collection is dropped
        only after every record has been written to its session's collection,
        so a crash midway repeats the copy (idempotent upserts) and loses nothing.
        """
        client = self.client
        names = {c.name for c in client.list_collections()}
        if self.settings.collection not in names:
            return
        shared = client.get_collection(self.settings.collection, embedding_function=self.embedder)
        total, offset = shared.count(), 0
        while offset < total:
            got = shared.get(include=["embeddings", "documents", "metadatas"], limit=2000, offset=offset)
            if not got["ids"]:
                break
            by_session: dict[str, list[int]] = {}
            for row, meta in enumerate(got["metadatas"]):
                by_session.setdefault(str(meta["session_id"]), []).append(row)
            for session_id, rows in by_session.items():
                target = client.get_or_create_collection(
                    self.collection_name(session_id),
                    metadata={"session_id": session_id},
                    embedding_function=self.embedder,
                    configuration={"hnsw": {"space": "cosine"}},
                )
                target.upsert(
                    ids=[got["ids"][r] for r in rows],
                    embeddings=np.asarray([got["embeddings"][r] for r in rows], dtype=np.float32),
                    documents=[got["documents"][r] for r in rows],
                    metadatas=[{"speaker": got["metadatas"][r]["role"], **got["metadatas"][r]} for r in rows],
                )
            offset += len(got["ids"])
        client.delete_collection(self.settings.collection)
        logger.info("archive %s: moved %d chunks from the shared collection into per-session ones", self.where, total)

    @contextlib.contextmanager
    def _store(self, what: str) -> Iterator[None]:
        """Turn any failure of the vector store into :class:`ArchiveUnavailable` naming the store."""
        try:
            yield
        except ArchiveUnavailable:
            raise
        except Exception as exc:  # chromadb and httpx raise many types; callers need one
            raise ArchiveUnavailable(f"archive {what} at {self.where} failed: {type(exc).__name__}: {exc}") from exc

    # -- writing --------------------------------------------------------
    def upsert(self, chunks: list[Chunk]) -> int:
        """Embed and store chunks (same id: replaced); returns how many. Idempotent.

        Raises :class:`ArchiveUnavailable` if the store refuses the write; the
        caller (the indexer) keeps the text in its log and tries again later.
        """
        unique = list({c.chunk_id: c for c in chunks}.values())
        if not unique:
            return 0
        started = time.perf_counter()
        by_session: dict[str, list[Chunk]] = {}
        for chunk in unique:
            by_session.setdefault(chunk.session_id, []).append(chunk)
        with self._lock, self._store("write"):
            for session_id, mine in by_session.items():
                self._upsert(session_id, mine)
        self.write_seconds += time.perf_counter() - started
        self.chunks_written += len(unique)
        return len(unique)

    def _upsert(self, session_id: str, chunks: list[Chunk]) -> None:
        self.collection_for(session_id).upsert(
            ids=[c.chunk_id for c in chunks],
            embeddings=np.stack(self.embedder([embedding_text(c.speaker, c.text, c.context) for c in chunks])),
            documents=[c.text for c in chunks],
            metadatas=[_chunk_meta(c) for c in chunks],
        )
        index = self._lexical.get(session_id)
        if index is not None:
            index.upsert({c.chunk_id: embedding_text(c.speaker, c.text) for c in chunks})

    # -- reading --------------------------------------------------------
    def _lexical_index(self, session_id: str, collection) -> LexicalIndex:
        """The session's BM25 index, loaded from its collection on first use (call with the lock held).

        Only the most recently used ``archive.lexical_sessions`` indexes stay in memory. With a Chroma
        server, an index whose size no longer matches the collection's is reloaded (one count per search).
        """
        index = self._lexical.get(session_id)
        if index is not None and self.settings.chroma_url and len(index) != collection.count():
            # A Chroma server may be shared by several processes (server replicas): another one wrote
            # or forgot chunks of this session since the index was loaded. Load it again.
            index = None
        if index is None:
            index = LexicalIndex()
            index.upsert(
                {
                    cid: embedding_text(str(meta.get("speaker", meta.get("role", ""))), doc)
                    for cid, doc, meta in _records(collection)
                }
            )
            self._lexical[session_id] = index
            while len(self._lexical) > self.settings.lexical_sessions:
                self._lexical.popitem(last=False)
        self._lexical.move_to_end(session_id)
        return index

    def count(self, session_id: str | None = None) -> int:
        """Chunks in the archive, for one session or all."""
        with self._store("count"):
            if session_id is None:
                return sum(self.count(s) for s in self.session_ids())
            collection = self.collection_for(session_id, create=False)
            return 0 if collection is None else collection.count()

    def get(self, session_id: str, chunk_ids: list[str]) -> list[Memory]:
        with self._store("read"):
            collection = self.collection_for(session_id, create=False)
            if collection is None or not chunk_ids:
                return []
            got = collection.get(ids=chunk_ids, include=["documents", "metadatas"])
        return [_memory(i, d, m) for i, d, m in zip(got["ids"], got["documents"], got["metadatas"])]

    def list(self, session_id: str, limit: int | None = None, offset: int = 0) -> list[Memory]:
        """A session's memories in conversation order (turn, then position)."""
        with self._store("listing"):
            collection = self.collection_for(session_id, create=False)
            if collection is None:
                return []
            memories = [_memory(i, d, m) for i, d, m in _records(collection)]
        memories.sort(key=lambda m: (m.turn, m.created_at, m.message_id, m.char_start))
        return memories[offset : None if limit is None else offset + limit]

    def search(
        self,
        session_id: str,
        query: str,
        k: int = 5,
        candidates: int | None = None,
        pending: list[Chunk] | None = None,
        spoken_between: tuple[float, float] | None = None,
    ) -> list[Memory]:
        """Hybrid search inside one session: dense and BM25 candidates, scored on one absolute scale.

        Every candidate (from either retriever) gets both its cosine
        similarity to the query and its BM25 coverage (share of the query's
        content words it holds); ``score`` mixes them with
        ``archive.lexical_weight``, so a threshold on it means the same for
        every query (reciprocal-rank fusion gives the first hit 1/61
        whether it is right or unrelated). ``pending`` chunks (logged, not
        yet indexed) are ranked beside the stored ones, embedded here with
        the archive's own embedder. ``spoken_between`` keeps only text said
        in that Unix-time range. Memories carry their vectors (``vector``)
        so a recall policy can compare them with each other.
        """
        return self.search_many(session_id, [query], k, candidates, pending, spoken_between)[0]

    def search_many(
        self,
        session_id: str,
        queries: Sequence[str],
        k: int = 5,
        candidates: int | None = None,
        pending: list[Chunk] | None = None,
        spoken_between: tuple[float, float] | None = None,
        vectors: Sequence | None = None,
    ) -> list[list[Memory]]:
        """:meth:`search` for several queries at the price of about one.

        The queries are embedded in one batch and sent to Chroma in one
        call, the chunks BM25 found are fetched once, and pending chunks are
        embedded once: recall asks two or three questions a turn.
        ``vectors`` are the queries' embeddings when the caller has them.
        """
        results: list[list[Memory]] = [[] for _ in queries]
        asked = [i for i, query in enumerate(queries) if query.strip()]
        if k <= 0 or not asked:
            return results
        pool = candidates or max(3 * k, 10)
        if vectors is None:
            vectors = self.embedder([queries[i] for i in asked])
        else:
            vectors = [vectors[i] for i in asked]
        vectors = [np.asarray(v, dtype=np.float32) for v in vectors]
        found: dict[str, tuple[str, dict, np.ndarray]] = {}
        hits: list[set[str]] = [set() for _ in asked]
        coverage: list[dict[str, float]] = [{} for _ in asked]
        where = None
        if spoken_between is not None:
            where = {"$and": [{"created_at": {"$gte": spoken_between[0]}}, {"created_at": {"$lt": spoken_between[1]}}]}
        with self._lock, self._store("search"):
            collection = self.collection_for(session_id, create=False)
            index = self._lexical_index(session_id, collection) if collection is not None else LexicalIndex()
            if len(index):
                result = collection.query(
                    query_embeddings=vectors,
                    n_results=min(pool, len(index)),
                    where=where,
                    include=["documents", "metadatas", "embeddings"],
                )
                for n in range(len(asked)):
                    for cid, doc, meta, vector in zip(
                        result["ids"][n], result["documents"][n], result["metadatas"][n], result["embeddings"][n]
                    ):
                        found[cid] = (doc, meta, np.asarray(vector, dtype=np.float32))
                        hits[n].add(cid)
                for n, i in enumerate(asked):
                    for hit in index.search(queries[i], pool):
                        coverage[n][hit.chunk_id] = hit.coverage
                        hits[n].add(hit.chunk_id)
                missing = sorted({cid for n in range(len(asked)) for cid in hits[n]} - found.keys())
                if missing:
                    got = collection.get(ids=missing, include=["documents", "metadatas", "embeddings"])
                    for cid, doc, meta, vector in zip(
                        got["ids"], got["documents"], got["metadatas"], got["embeddings"]
                    ):
                        if spoken_between is None or _spoken_in(meta, spoken_between):
                            found[cid] = (doc, meta, np.asarray(vector, dtype=np.float32))
                for n, i in enumerate(asked):
                    unscored = [cid for cid in hits[n] if cid in found and cid not in coverage[n]]
                    coverage[n].update(index.coverage(queries[i], unscored))
        waiting = self._pending_for(session_id, pending or [], spoken_between)
        for n, i in enumerate(asked):
            mine = {cid: found[cid] for cid in hits[n] if cid in found}
            results[i] = self._score(queries[i], vectors[n], mine, coverage[n], waiting)[:k]
        return results

    def search_pending(self, session_id: str, query: str, k: int, pending: list[Chunk]) -> list[Memory]:
        """The same hybrid search over logged, not yet indexed chunks alone: no store involved.

        What recall falls back on while the store is unavailable.
        """
        if k <= 0 or not query.strip():
            return []
        query_vector = np.asarray(self.embedder([query])[0], dtype=np.float32)
        return self._score(query, query_vector, {}, {}, self._pending_for(session_id, pending, None))[:k]

    def _pending_for(
        self, session_id: str, pending: list[Chunk], spoken_between: tuple[float, float] | None
    ) -> tuple[dict[str, tuple[str, dict, np.ndarray]], LexicalIndex]:
        """The session's pending chunks, embedded (once for all queries), and a BM25 index over them."""
        mine = {
            c.chunk_id: c
            for c in pending
            if c.session_id == session_id and (spoken_between is None or _spoken_in(_chunk_meta(c), spoken_between))
        }
        index = LexicalIndex()
        if not mine:
            return {}, index
        chunks = list(mine.values())
        vectors = self.embedder([embedding_text(c.speaker, c.text, c.context) for c in chunks])
        index.upsert({c.chunk_id: embedding_text(c.speaker, c.text) for c in chunks})
        embedded = {
            c.chunk_id: (c.text, _chunk_meta(c), np.asarray(v, dtype=np.float32)) for c, v in zip(chunks, vectors)
        }
        return embedded, index

    def _score(
        self,
        query: str,
        query_vector: np.ndarray,
        found: dict[str, tuple[str, dict, np.ndarray]],
        coverage: dict[str, float],
        waiting: tuple[dict[str, tuple[str, dict, np.ndarray]], LexicalIndex],
    ) -> list[Memory]:
        """One absolute score per candidate (see :meth:`search`), pending chunks merged in; best first.

        A pending chunk replaces an older, shorter version of itself in the store.
        """
        pending, pending_index = waiting
        if pending:
            found = found | pending
            coverage = coverage | pending_index.coverage(query, list(pending))
        weight = self.settings.lexical_weight
        memories = []
        for cid, (doc, meta, vector) in found.items():
            similarity = float(np.dot(query_vector, vector))
            cov = coverage.get(cid, 0.0)
            score = (1.0 - weight) * max(similarity, 0.0) + weight * cov
            memories.append(
                _memory(
                    cid,
                    doc,
                    meta,
                    score=score,
                    similarity=similarity,
                    lexical_score=cov,
                    pending=cid in pending,
                    vector=vector,
                )
            )
        memories.sort(key=lambda m: -m.score)
        if self.settings.reranker:
            memories = self._rerank(query, memories)
        return memories

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
    def forget(self, session_id: str, chunk_id: str | None = None, message_id: str | None = None) -> int:
        """Delete one memory, every memory of one message, or every memory of a session; returns how many.

        Deleting removes records from the store's index, not their bytes
        from its files: call :meth:`compact` for that (forgetting does). A
        compaction under way is waited for: its copy would bring the records back.
        """
        # Not during a compaction: its copy would bring back what this deletes.
        with self._compacting, self._lock, self._store("delete"):
            collection = self.collection_for(session_id, create=False)
            if collection is None:
                return 0
            if chunk_id is None and message_id is None:
                count = collection.count()
                self._client().delete_collection(self.collection_name(session_id))
                self._collections.pop(session_id, None)
                self._lexical.pop(session_id, None)
                return count
            if chunk_id is not None:
                ids = collection.get(ids=[chunk_id], include=[])["ids"]
            else:
                ids = collection.get(where={"message_id": message_id}, include=[])["ids"]
            if ids:
                collection.delete(ids=ids)
            index = self._lexical.get(session_id)
            if index is not None:
                index.delete(set(ids))
            return len(ids)

    def compact(self, timeout: float = 3600) -> float:
        """Rewrite the embedded store so that deleted records leave no bytes behind; returns the seconds taken.

        Chroma deletes logically: the text stays in its SQLite file (its
        write-ahead queue, full-text index and free pages) until much later.
        So the live records of every collection (ids, embeddings, documents,
        metadata: nothing is embedded again) are exported to a plain file, a
        fresh process builds a new store from that file, and the new store
        replaces the old one. hnswlib writes uninitialised memory of the
        writing process into unused link slots of its files; the builder has
        only ever seen live records, so no stray copy of deleted text can land
        there. Index writes are paused meanwhile (``pause_writes``) and
        searches go on against the old store; only the final swap holds the
        archive's lock. A Chroma *server* keeps its own files: there, run
        ``chroma vacuum`` on the server's directory.
        """
        if self.settings.chroma_url is not None:
            logger.info(
                "archive at %s is a server: its files are compacted by the server, not by streamrag", self.where
            )
            return 0.0
        started = time.perf_counter()
        path = Path(self.where)
        fresh, stale = path.with_name(path.name + ".compacting"), path.with_name(path.name + ".stale")
        export = path.with_name(path.name + ".export")
        # Lock order everywhere: index writes paused, then compaction, then the archive's own lock.
        with self.pause_writes(), self._compacting:
            if not path.exists():
                return 0.0
            for leftover in (fresh, export, stale):
                shutil.rmtree(leftover, ignore_errors=True)
            try:
                with self._store("compaction"):
                    export_collections(self._client(), export)
                command = [sys.executable, "-m", "streamrag.archive", str(export), str(fresh)]
                command += [self.settings.tenant, self.settings.database]
                done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
                if done.returncode != 0:
                    raise ArchiveUnavailable(f"rewriting the archive at {path} failed: {done.stderr[-2000:]}")
                with self._lock:
                    self.close()
                    _stop_local_system(path)
                    path.rename(stale)
                    fresh.rename(path)
                    shutil.rmtree(stale)
                    _REWRITES[self.where] = _REWRITES.get(self.where, 0) + 1
                    self._client()  # reopen on the rewritten files
            finally:
                shutil.rmtree(export, ignore_errors=True)
                shutil.rmtree(fresh, ignore_errors=True)
        seconds = time.perf_counter() - started
        self.compactions += 1
        logger.info("archive %s rewritten without deleted records in %.2f s", self.where, seconds)
        return seconds

    def compact_soon(self) -> int:
        """Ask for :meth:`compact` in a background thread; returns a ticket for :meth:`wait_compacted`.

        Requests that arrive while one runs are served by one more run after
        it, since their deletes may have come after its copy began.
        """
        with self._compaction_cond:
            self._compaction_requested += 1
            ticket = self._compaction_requested
            if self._compaction_thread is None or not self._compaction_thread.is_alive():
                self._compaction_thread = threading.Thread(
                    target=self._compact_in_background, name="streamrag-compaction", daemon=True
                )
                self._compaction_thread.start()
            return ticket

    def wait_compacted(self, ticket: int | None = None, timeout: float | None = None) -> bool:
        """Wait until the compaction that ``ticket`` (default: the latest request) asked for has run."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._compaction_cond:
            ticket = self._compaction_requested if ticket is None else ticket
            while self._compaction_completed < ticket:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._compaction_cond.wait(left)
            return True

    def _compact_in_background(self) -> None:
        while True:
            with self._compaction_cond:
                if self._compaction_completed >= self._compaction_requested:
                    self._compaction_thread = None
                    return
                target = self._compaction_requested
            try:
                self.compact()
            except Exception:  # the deleted records are already out of every search; only their bytes wait
                logger.exception("rewriting the archive failed; the deleted text stays in its files until the next try")
            with self._compaction_cond:
                self._compaction_completed = target
                self._compaction_cond.notify_all()

    def close(self) -> None:
        """Release the store (an embedded one's files); the next call reopens it."""
        with self._lock:
            if self.client is not None and hasattr(self.client, "close"):
                self.client.close()
            self.client, self._collections, self._opened = None, {}, False


def _records(collection) -> Iterator[tuple[str, str, dict]]:
    """Every (id, document, metadata) of a collection, read in pages: one get of 100k records
    exceeds SQLite's limit on variables inside Chroma."""
    offset = 0
    while True:
        got = collection.get(include=["documents", "metadatas"], limit=LOAD_PAGE, offset=offset)
        yield from zip(got["ids"], got["documents"], got["metadatas"])
        offset += len(got["ids"])
        if len(got["ids"]) < LOAD_PAGE:
            return


def _stop_local_system(path: Path) -> None:
    """Stop chromadb's cached in-process system for an embedded store, whoever else still holds it.

    chromadb shares one system per directory between all clients of a process
    and keeps it while any client is open; one that outlived its owner would
    keep the old files open and hand them to the next client after the store
    is rewritten (SQLite then refuses writes: "database moved"). Other handles
    on the same directory in this process must reopen afterwards. This reaches
    into chromadb's shared-client registry (pinned chromadb 1.5.9): there is
    no public call for it.
    """
    from chromadb.api.shared_system_client import SharedSystemClient

    system = SharedSystemClient._identifier_to_system.pop(str(path), None)
    SharedSystemClient._identifier_to_refcount.pop(str(path), None)
    if system is not None:
        system.stop()


def export_collections(client, target: Path, batch: int = 2000) -> int:
    """The live records of every collection behind ``client``, as plain files under ``target``.

    One JSON file per collection (name, metadata, configuration as JSON;
    ids, documents, metadata) and one ``.npy`` of its stored embeddings.
    Returns the number of records.
    """
    import json

    from chromadb.api.collection_configuration import collection_configuration_to_json

    target.mkdir(parents=True)
    total = 0
    for number, collection in enumerate(client.list_collections()):
        ids, documents, metadatas, embeddings = [], [], [], []
        while True:
            got = collection.get(include=["embeddings", "documents", "metadatas"], limit=batch, offset=len(ids))
            if not got["ids"]:
                break
            ids += got["ids"]
            documents += got["documents"]
            metadatas += got["metadatas"]
            embeddings += list(got["embeddings"])
        record = {
            "name": collection.name,
            "metadata": collection.metadata,
            "configuration": collection_configuration_to_json(collection.configuration),
            "ids": ids,
            "documents": documents,
            "metadatas": metadatas,
        }
        (target / f"{number}.json").write_text(json.dumps(record))
        np.save(target / f"{number}.npy", np.asarray(embeddings, dtype=np.float32))
        total += len(ids)
    return total


def import_store(source: Path, target: Path, tenant: str, database: str, batch: int = 2000) -> int:
    """A new embedded store at ``target`` from :func:`export_collections`' files; returns the records written."""
    import json

    import chromadb
    from chromadb.api.collection_configuration import load_collection_configuration_from_json
    from chromadb.config import Settings

    client = chromadb.PersistentClient(
        path=str(target), settings=Settings(anonymized_telemetry=False), tenant=tenant, database=database
    )
    total = 0
    try:
        for path in sorted(source.glob("*.json")):
            record = json.loads(path.read_text())
            embeddings = np.load(path.with_suffix(".npy"))
            copy = client.create_collection(
                record["name"],
                metadata=record["metadata"],
                configuration=load_collection_configuration_from_json(record["configuration"]),
            )
            for start in range(0, len(record["ids"]), batch):
                end = start + batch
                copy.add(
                    ids=record["ids"][start:end],
                    embeddings=embeddings[start:end],
                    documents=record["documents"][start:end],
                    metadatas=record["metadatas"][start:end],
                )
            total += len(record["ids"])
    finally:
        client.close()
    return total


if __name__ == "__main__":  # the fresh process behind Archive.compact
    import streamrag.embedding  # noqa: F401 - registers the embedding function the collections name

    logging.basicConfig(level=logging.WARNING)
    print(import_store(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]))
