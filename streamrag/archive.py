"""Embed, store and search archived chunks of evicted text (Chroma + BM25).

The archive is an *index*, not the record: evicted text is first made
durable in the transcript's eviction log, and the background indexer
(:mod:`streamrag.indexer`) hands the chunks cut from it to
:meth:`Archive.upsert`. Writes are idempotent (deterministic chunk ids), so
the indexer may retry after any failure. Every call that reaches the store
raises :class:`ArchiveUnavailable` when the store fails, never a raw client
error, so callers can degrade (chat goes on without recall) instead of stopping.

Search is hybrid: Chroma's dense similarity and BM25 over the same chunks,
fused by reciprocal rank (RRF, k=60). Every query is filtered by session: one
conversation never recalls another's text.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from streamrag.chunking import Chunk, Chunker
from streamrag.config import ArchiveSettings
from streamrag.embedding import EMBEDDED, StreamragEmbedding
from streamrag.lexical import LexicalIndex

logger = logging.getLogger(__name__)

RRF_K = 60
# Embedded stores rewritten by this process (path -> count): other Archive objects on one reopen.
_REWRITES: dict[str, int] = {}


class ArchiveUnavailable(RuntimeError):
    """The vector store could not be reached, or failed a read or write; the message names the store."""


@dataclass(frozen=True)
class Memory:
    """One archived chunk, as found by a search or listing.

    ``score`` is the fused rank score (or the reranker's score when one is
    set); ``similarity`` the cosine similarity from the dense search and
    ``lexical_score`` the BM25 score, each ``None`` when that retriever did
    not return the chunk. ``created_at`` is when the text was said.
    ``pending`` marks text that is logged but not indexed yet (found by BM25 alone).
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
    pending: bool = False


def _chunk_meta(c: Chunk) -> dict:
    """Chroma metadata of a chunk (also how a pending chunk reads back as a :class:`Memory`)."""
    return {
        "session_id": c.session_id,
        "message_id": c.message_id,
        "role": c.role,
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
    """Evicted text of every session, in one Chroma collection."""

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
        self._collection = None
        self._generation = 0
        self._lexical: dict[str, LexicalIndex] = {}
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
            self.collection  # noqa: B018 - opens the store
        except ArchiveUnavailable as exc:
            if settings.chroma_url is None:
                raise
            logger.warning("%s; chat goes on and the archive is retried on first use", exc)

    @property
    def collection(self):
        """The Chroma collection, opened (and the client created) on first use.

        Reopened when another archive of this process rewrote the same
        embedded store (:meth:`compact`), whose old files this one still held.
        """
        if self._collection is not None and self._generation != _REWRITES.get(self.where, 0):
            with self._lock:
                self.client, self._collection = None, None
        if self._collection is None:
            with self._lock:
                if self._collection is None:
                    if self.client is None:
                        self.client = open_chroma_client(self.settings, self.data_dir)
                    self._generation = _REWRITES.get(self.where, 0)
                    with self._store(f"opening collection {self.settings.collection!r}"):
                        self._collection = self.client.get_or_create_collection(
                            self.settings.collection,
                            embedding_function=self.embedder,
                            configuration={"hnsw": {"space": "cosine"}},
                        )
        return self._collection

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
        with self._lock, self._store("write"):
            self._upsert(unique)
        self.write_seconds += time.perf_counter() - started
        self.chunks_written += len(unique)
        return len(unique)

    def _upsert(self, chunks: list[Chunk]) -> None:
        self.collection.upsert(
            ids=[c.chunk_id for c in chunks],
            documents=[c.text for c in chunks],
            metadatas=[_chunk_meta(c) for c in chunks],
        )
        for chunk in chunks:
            index = self._lexical.get(chunk.session_id)
            if index is not None:
                index.upsert({chunk.chunk_id: chunk.text})

    # -- reading --------------------------------------------------------
    def _lexical_index(self, session_id: str) -> LexicalIndex:
        """The session's BM25 index, loaded from the store on first use (call with the lock held)."""
        index = self._lexical.get(session_id)
        if index is None:
            index = LexicalIndex()
            got = self.collection.get(where={"session_id": session_id}, include=["documents"])
            index.upsert(dict(zip(got["ids"], got["documents"])))
            self._lexical[session_id] = index
        return index

    def count(self, session_id: str | None = None) -> int:
        """Chunks in the archive, for one session or all."""
        with self._store("count"):
            if session_id is None:
                return self.collection.count()
            return len(self.collection.get(where={"session_id": session_id}, include=[])["ids"])

    def get(self, chunk_ids: list[str]) -> list[Memory]:
        with self._store("read"):
            got = self.collection.get(ids=chunk_ids, include=["documents", "metadatas"])
        return [_memory(i, d, m) for i, d, m in zip(got["ids"], got["documents"], got["metadatas"])]

    def list(self, session_id: str, limit: int | None = None, offset: int = 0) -> list[Memory]:
        """A session's memories in conversation order (turn, then position)."""
        with self._store("listing"):
            got = self.collection.get(where={"session_id": session_id}, include=["documents", "metadatas"])
        memories = [_memory(i, d, m) for i, d, m in zip(got["ids"], got["documents"], got["metadatas"])]
        memories.sort(key=lambda m: (m.turn, m.created_at, m.message_id, m.char_start))
        return memories[offset : None if limit is None else offset + limit]

    def search(
        self,
        session_id: str,
        query: str,
        k: int = 5,
        candidates: int | None = None,
        pending: list[Chunk] | None = None,
    ) -> list[Memory]:
        """Hybrid search inside one session: dense + BM25, fused by reciprocal rank.

        Returns up to ``k`` memories, best first, each carrying the component
        scores so a recall policy can apply its own thresholds. ``pending``
        chunks (logged, not yet indexed) are ranked beside the stored ones:
        embedded here with the archive's own embedder, so their similarity
        is the one the store would give them.
        """
        if k <= 0 or not query.strip():
            return []
        pool = candidates or max(3 * k, 10)
        query_vector = self.embedder([query])[0]
        dense: list[tuple[str, float, str, dict]] = []
        lexical: list[tuple[str, float]] = []
        extra: dict[str, tuple[str, dict]] = {}  # BM25 hits the dense search did not return
        with self._lock, self._store("search"):
            index = self._lexical_index(session_id)
            if len(index):
                result = self.collection.query(
                    query_embeddings=[query_vector],
                    n_results=min(pool, len(index)),
                    where={"session_id": session_id},
                    include=["documents", "metadatas", "distances"],
                )
                dense = [
                    (cid, 1.0 - float(dist), doc, meta)
                    for cid, doc, meta, dist in zip(
                        result["ids"][0], result["documents"][0], result["metadatas"][0], result["distances"][0]
                    )
                ]
                lexical = index.search(query, pool)
                missing = [cid for cid, _ in lexical if cid not in {d[0] for d in dense}]
                if missing:
                    got = self.collection.get(ids=missing, include=["documents", "metadatas"])
                    extra = dict(zip(got["ids"], zip(got["documents"], got["metadatas"])))
        found = {cid: (doc, meta) for cid, _, doc, meta in dense} | extra
        return self._fuse(session_id, query, query_vector, pool, dense, lexical, found, pending or [])[:k]

    def search_pending(self, session_id: str, query: str, k: int, pending: list[Chunk]) -> list[Memory]:
        """The same hybrid search over logged, not yet indexed chunks alone: no store involved.

        What recall falls back on while the store is unavailable.
        """
        if k <= 0 or not query.strip():
            return []
        query_vector = self.embedder([query])[0]
        return self._fuse(session_id, query, query_vector, max(3 * k, 10), [], [], {}, pending)[:k]

    def _fuse(
        self,
        session_id: str,
        query: str,
        query_vector,
        pool: int,
        dense: list[tuple[str, float, str, dict]],
        lexical: list[tuple[str, float]],
        found: dict[str, tuple[str, dict]],
        pending: list[Chunk],
    ) -> list[Memory]:
        """Reciprocal-rank fusion of the dense and BM25 rankings, pending chunks merged into both."""
        mine = {c.chunk_id: c for c in pending if c.session_id == session_id}
        if mine:
            # A pending chunk replaces an older, shorter version of itself in the store.
            chunks = list(mine.values())
            vectors = self.embedder([c.text for c in chunks])
            waiting = [
                (c.chunk_id, float(np.dot(query_vector, v)), c.text, _chunk_meta(c)) for c, v in zip(chunks, vectors)
            ]
            dense = sorted([d for d in dense if d[0] not in mine] + waiting, key=lambda d: -d[1])[:pool]
            pending_index = LexicalIndex()
            pending_index.upsert({cid: c.text for cid, c in mine.items()})
            lexical = sorted(
                [hit for hit in lexical if hit[0] not in mine] + pending_index.search(query, pool), key=lambda h: -h[1]
            )[:pool]
            found = found | {cid: (c.text, _chunk_meta(c)) for cid, c in mine.items()}
        fused: dict[str, float] = {}
        for rank, (cid, *_rest) in enumerate(dense):
            fused[cid] = fused.get(cid, 0.0) + 1.0 / (RRF_K + rank + 1)
        for rank, (cid, _) in enumerate(lexical):
            fused[cid] = fused.get(cid, 0.0) + 1.0 / (RRF_K + rank + 1)
        similarity = {cid: sim for cid, sim, *_rest in dense}
        lexical_score = dict(lexical)
        memories = [
            _memory(
                cid,
                found[cid][0],
                found[cid][1],
                score=score,
                similarity=similarity.get(cid),
                lexical_score=lexical_score.get(cid),
                pending=cid in mine,
            )
            for cid, score in sorted(fused.items(), key=lambda item: -item[1])
            if cid in found
        ]
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
        where: dict = {"session_id": session_id}
        if message_id is not None:
            where = {"$and": [{"session_id": session_id}, {"message_id": message_id}]}
        # Not during a compaction: its copy would bring back what this deletes.
        with self._compacting, self._lock, self._store("delete"):
            if chunk_id is not None:
                ids = self.collection.get(ids=[chunk_id], where=where, include=[])["ids"]
            else:
                ids = self.collection.get(where=where, include=[])["ids"]
            if ids:
                self.collection.delete(ids=ids)
            index = self._lexical.get(session_id)
            if index is not None:
                index.delete(set(ids) if chunk_id is not None or message_id is not None else None)
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
                    self.collection  # noqa: B018 - opens the store if it is not yet
                    export_collections(self.client, export)
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
                    self.collection  # noqa: B018 - reopen on the rewritten files
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
            self.client, self._collection = None, None


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
