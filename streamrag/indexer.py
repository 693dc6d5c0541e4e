"""Carry evicted text from the transcript's log into the archive, in the background.

Eviction must not wait for an embedding model or a vector store: the engine
makes text durable with one local append to the log
(:meth:`~streamrag.transcript.Transcript.log_evicted`) and drops its KV slots.
This indexer, one thread per archive, then cuts the logged text into chunks,
embeds and upserts them in batches, and marks the rows indexed. Every step is
idempotent (deterministic chunk ids, upserts), so a crash between any two of
them, an indexer in a second process, or an archive outage only delays
indexing: whatever is still unindexed is picked up on the next pass, after a
restart included.

Two rules keep it out of the way:

* while the model is generating (``busy()``), the indexer waits up to
  ``archive.index_idle_s`` before embedding, so archive writes do not compete
  with decoding for the CPU; :meth:`Indexer.flush` (recall, about to search)
  overrides the wait;
* while the store is unavailable it backs off (1 s, doubling to 30 s) and
  reports the error in :attr:`Indexer.unavailable`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import replace

from streamrag.archive import Archive, ArchiveUnavailable
from streamrag.chunking import Chunk
from streamrag.transcript import EvictedText, Transcript, TranscriptError

logger = logging.getLogger(__name__)

POLL_S = 2.0  # how often an idle indexer looks for rows logged by another process
MAX_BACKOFF_S = 30.0


class Indexer:
    """Background indexing of one transcript's eviction log into one archive."""

    def __init__(
        self,
        transcript: Transcript,
        archive: Archive,
        batch: int = 64,
        idle_s: float = 5.0,
        busy: Callable[[], bool] | None = None,
    ):
        self.transcript = transcript
        self.archive = archive
        self.batch = batch
        self.idle_s = idle_s
        self.busy = busy or (lambda: False)
        self.unavailable: str | None = None  # the last store error, None once a write succeeds again
        self.indexed_rows = 0
        self._cond = threading.Condition()
        self._signalled = False
        self._urgent = 0
        self._failures = 0  # consecutive failed passes (counts up during an outage)
        self._flush_requests = 0
        self._flushes_at_failure = 0
        self._waiting_since: float | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        self._run_lock = threading.RLock()

    # -- control ------------------------------------------------------------
    def notify(self) -> None:
        """New rows were logged: index them soon (starts the thread on first use)."""
        with self._cond:
            if self._closed:
                return
            self._signalled = True
            if self._waiting_since is None:
                self._waiting_since = time.monotonic()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="streamrag-indexer", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def flush(self, session_id: str | None = None, timeout: float | None = 10.0) -> bool:
        """Index now and wait until nothing of ``session_id`` (or of anyone) is pending.

        Returns True when drained, False when ``timeout`` passed first or the
        store failed while waiting (an outage: the rows stay in the log).
        """
        if self.transcript.pending_count(session_id) == 0:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            failures = self._failures
            self._urgent += 1
            self._flush_requests += 1
        try:
            self.notify()
            while True:
                if self.transcript.pending_count(session_id) == 0:
                    return True
                with self._cond:
                    if self._closed or self._failures > failures:
                        return False
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._cond.wait(timeout=0.5 if left is None else min(left, 0.5))
        finally:
            with self._cond:
                self._urgent -= 1

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread after its current batch (the log keeps what was not indexed)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No batch runs inside this block (a forget must not race an upsert of the same text)."""
        with self._run_lock:
            yield

    # -- work ---------------------------------------------------------------
    def run_once(self, limit: int | None = None) -> int:
        """Index one batch of pending rows now, in the caller's thread; returns how many rows.

        Raises :class:`ArchiveUnavailable` if the store fails (the rows stay pending).
        """
        with self._run_lock:
            rows = self.transcript.pending_evicted(limit or self.batch)
            if not rows:
                return 0
            self.archive.upsert(self.chunks_for(rows))
            self.transcript.mark_indexed([row.seq for row in rows if row.seq is not None])
            self.indexed_rows += len(rows)
            return len(rows)

    def drain(self) -> int:
        """Index everything pending, in the caller's thread (tools and tests); returns rows indexed."""
        total = 0
        while count := self.run_once():
            total += count
        return total

    def pending_chunks(self, session_id: str) -> list[Chunk]:
        """Chunks of the session's text that is logged but not indexed yet (for lexical recall)."""
        return self.chunks_for(self.transcript.pending_evicted(10_000, session_id=session_id))

    def chunks_for(self, rows: list[EvictedText]) -> list[Chunk]:
        """The chunks that logged rows create or grow, each cut from its message's whole logged text."""
        chunker = self.archive.chunker
        by_message: dict[str, list[EvictedText]] = defaultdict(list)
        for row in rows:
            by_message[row.message_id].append(row)
        chunks: list[Chunk] = []
        speakers = self.transcript.speakers(list(by_message))
        contexts = self.transcript.contexts(list(by_message), self.archive.settings.context_chars, questions_only=True)
        for message_id, new in by_message.items():
            new_from = min(row.char_start for row in new)
            pieces = self.transcript.evicted_text(message_id, from_char=chunker.first_affected(new_from))
            cut = chunker.chunks(pieces, new_from, speakers.get(message_id, ""))
            context = contexts.get(message_id, "")
            chunks += [replace(c, context=context) if c.char_start == 0 and context else c for c in cut]
        return chunks

    def reindex(self, message_id: str) -> int:
        """Embed and store a message's archived chunks again (its turn-before context changed); returns how many.

        Raises :class:`~streamrag.archive.ArchiveUnavailable` if the store refuses.
        """
        pieces = self.transcript.evicted_text(message_id)
        if not pieces:
            return 0
        return self.archive.upsert(self.chunks_for(pieces))

    def _flushes_since_failure(self) -> bool:
        """A flush asked after the last failure: it deserves one fresh try (called with the lock held)."""
        return self._flush_requests > self._flushes_at_failure

    def _loop(self) -> None:
        while True:
            with self._cond:
                if not self._signalled and not self._urgent and not self._closed:
                    self._cond.wait(timeout=POLL_S)
                if self._closed:
                    return
                self._signalled = False
                urgent = self._urgent > 0
                waited = time.monotonic() - (self._waiting_since or time.monotonic())
            if not urgent and self.busy() and waited < self.idle_s:
                with self._cond:
                    self._signalled = True  # still work to do
                    self._cond.wait(timeout=0.2)
                continue
            try:
                count = self.run_once()
            except ArchiveUnavailable as exc:
                with self._cond:
                    self._failures += 1
                    self._flushes_at_failure = self._flush_requests
                    delay = min(MAX_BACKOFF_S, 2.0 ** (self._failures - 1))
                    if self.unavailable is None:
                        logger.warning("archive unavailable, evicted text stays in the log: %s", exc)
                    self.unavailable = str(exc)
                    self._signalled = True
                    self._cond.notify_all()
                    # Back off; only a flush (someone is waiting) or close cuts the pause short.
                    failures, until = self._failures, time.monotonic() + delay
                    while not self._closed and time.monotonic() < until:
                        if self._urgent and self._failures == failures and self._flushes_since_failure():
                            break
                        self._cond.wait(timeout=until - time.monotonic())
                continue
            except TranscriptError as exc:
                if "closed" in str(exc):
                    return
                logger.exception("indexer: reading the eviction log failed; retrying")
                time.sleep(1.0)
                continue
            except Exception:  # never let the thread die silently: the log would stop draining
                logger.exception("indexer: unexpected error; retrying")
                time.sleep(1.0)
                continue
            with self._cond:
                if self.unavailable is not None:
                    logger.info("archive is back; indexing the log")
                self.unavailable = None
                self._failures = 0
                if count:
                    self._signalled = True  # maybe more
                else:
                    self._waiting_since = None
                self._cond.notify_all()
