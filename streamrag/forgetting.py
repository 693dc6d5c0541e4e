"""Erase what a user asked to forget from every store: archive, eviction log, memory blocks, transcript.

One meaning for each forget (the README and ``streamrag archive forget --help`` say the same):

* forgetting a **message** (or a memory cut from it: a memory is a slice of a
  message and overlaps its neighbours, so forgetting works on whole messages)
  removes its chunks from the archive and the BM25 index, its rows from the
  eviction log, every recalled memory block that quotes it, and its transcript
  row, unless ``keep_record`` keeps that row (marked forgotten: never fed to the
  model or archived again);
* forgetting a **session** removes everything of it.

Afterwards no search, recall or export returns the text, and no file under the
data directory holds it: the transcript overwrites deleted rows and truncates
its WAL, and an embedded archive is rewritten without them. A Chroma server
keeps its own files (compact them with ``chroma vacuum`` on the server).

The live KV cache is the session's business: :class:`streamrag.session.Assistant`
calls these functions and then rebuilds its cache if the text was resident.
These functions need no model, so ``streamrag archive forget`` runs without one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from streamrag.archive import Archive, ArchiveUnavailable
from streamrag.transcript import Transcript

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Forgotten:
    """What a forget removed: messages, archived chunks, eviction-log rows, recalled memory blocks.

    ``cache_rebuilt``: the text was in a live KV cache, which was rebuilt
    without it. ``compact_seconds``: the time taken to rewrite the archive's
    files, or ``None`` when that runs in the background (``compaction`` is then
    the ticket to pass to :meth:`~streamrag.archive.Archive.wait_compacted`).
    """

    message_ids: tuple[str, ...]
    chunks: int
    log_rows: int
    memory_block_ids: tuple[str, ...]
    cache_rebuilt: bool
    compact_seconds: float | None
    compaction: int | None = None

    @property
    def memory_blocks(self) -> int:
        """How many recalled memory blocks were erased with it."""
        return len(self.memory_block_ids)


def compact(archive: Archive, wait: bool) -> tuple[float | None, int | None]:
    """Rewrite the archive's files now (``wait``) or in the background; (seconds, ticket)."""
    if wait:
        return round(archive.compact(), 3), None
    return None, archive.compact_soon()


def forget_message(
    transcript: Transcript,
    archive: Archive,
    session_id: str,
    message_id: str,
    keep_record: bool = False,
    wait: bool = True,
    reindex: Callable[[str], object] | None = None,
    rewrite: bool = True,
) -> Forgotten:
    """Erase one message of ``session_id`` from the archive and the transcript database (see the module doc).

    The archive goes first: if the store is unavailable, this raises
    :class:`~streamrag.archive.ArchiveUnavailable` and nothing was changed.
    Searches stop returning the text at once; with ``wait=False`` the
    archive's files are rewritten in the background (seconds per 10k chunks).
    ``reindex`` re-embeds a message's stored chunks (the indexer's): the
    message after the forgotten one was embedded with it as context.
    ``rewrite=False`` leaves the rewrite to the caller (:func:`compact`), for
    one that must write to the archive first (see ``Assistant.forget_message``).
    """
    stored = transcript.get(message_id)
    if stored is None or stored.session_id != session_id:
        raise KeyError(f"no message {message_id!r} in session {session_id}")
    _, after = transcript.neighbours(message_id, before=0, after=1)
    chunks = archive.forget(session_id, message_id=message_id)
    counts = transcript.forget_message(message_id, keep_record=keep_record)
    if after and reindex is not None:
        # The next message was embedded with this one as its context: embed it again without it.
        try:
            reindex(after[0].message_id)
        except ArchiveUnavailable:
            logger.warning("could not re-embed message %s without the forgotten one before it", after[0].message_id)
    seconds, ticket = compact(archive, wait) if rewrite else (None, None)
    logger.info("forgot message %s of session %s: %d chunks, %s", message_id, session_id, chunks, counts)
    blocks = tuple(counts["memory_blocks"])
    return Forgotten((message_id,), chunks, counts["log_rows"], blocks, False, seconds, ticket)


def forget_session(transcript: Transcript, archive: Archive, session_id: str, wait: bool = True) -> Forgotten:
    """Erase a whole session: its archive, eviction log, messages and memory blocks (``wait`` as above)."""
    messages = transcript.messages(session_id, include_superseded=True)
    ids = tuple(m.message_id for m in messages if m.role != "memory")
    blocks = tuple(m.message_id for m in messages if m.role == "memory")
    log_rows = transcript.log_count(session_id)
    chunks = archive.forget(session_id)
    transcript.delete_session(session_id)
    seconds, ticket = compact(archive, wait)
    logger.info("forgot session %s: %d messages, %d chunks", session_id, len(ids), chunks)
    return Forgotten(ids, chunks, log_rows, blocks, False, seconds, ticket)


def memory_for_chunk(archive: Archive, session_id: str, chunk_id: str, pending=()):
    """The stored (or still pending) memory ``chunk_id`` of ``session_id``, or ``KeyError``."""
    memory = next(iter(archive.get(session_id, [chunk_id])), None)
    if memory is not None:
        return memory
    waiting = next((c for c in pending if c.chunk_id == chunk_id and c.session_id == session_id), None)
    if waiting is None:
        raise KeyError(f"no memory {chunk_id!r} in session {session_id}")
    return waiting
