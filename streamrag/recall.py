"""Decide which archived memories come back into the context before a user turn.

What the block should hold is what a careful person would pull from the
transcript: the turns that answer the question, the turn around one that
means little alone, the newest version of a fact that changed, and when each
thing was said. The policy, in order:

1. **Queries.** The question alone, and the question with the last few
   messages (``context_messages``), whose hits count a little less: "and
   her sister?" needs the conversation to mean anything. When the question
   names a period ("last week", "in May", "yesterday"), a third search
   covers only text said then, and everything said then scores higher
   (``time_boost``); nothing outside it is dropped.
2. **Scores** are absolute (cosine similarity mixed with the share of the
   question's content words a memory holds, see :meth:`Archive.search`),
   so ``min_score`` means the same for every question.
3. **Still in the window** (the model can attend to it) is dropped, and so
   are repeats (the same text, or a near-identical vector).
4. **Versions of one fact.** Memories this similar to each other
   (``update_similarity``) are taken as versions of one fact: the newest
   ranks first and older ones are marked ``(earlier)`` in the block, never
   silently dropped (the user may ask what it used to be). A question
   about the present ("... now?", "current") prefers statements that say
   something changed, and newer ones.
5. **Budget.** Best first, up to ``top_k`` memories within a share of the
   window; a short line brings the turn before it (and a recalled question
   the turn after it) from the transcript, when it fits.
6. **Render** one system message, in conversation order, each line dated
   and attributed: ``[7 May 2023] Maya: I ran my first half marathon
   yesterday.`` It is injected right before the user message and marked
   not-to-archive, so it is never archived a second time.

Text that is logged but not yet indexed (``pending`` chunks) is ranked with
the rest. If the vector store is unavailable, recall degrades to those
pending chunks and says so (``RecallResult.unavailable``): the turn goes on.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, tzinfo
from typing import Any

import numpy as np

from streamrag.archive import Archive, ArchiveUnavailable, Memory, embedding_text
from streamrag.chunking import Chunk
from streamrag.config import RecallSettings
from streamrag.lexical import analyse
from streamrag.timeparse import TimeRange, find_time_range
from streamrag.transcript import StoredMessage, speaker_of

logger = logging.getLogger(__name__)

_MONTH_NAMES = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
                "October", "November", "December")  # fmt: skip
# Memories at least this similar to a kept one (and said by the same speaker) are repeats.
DUPLICATE_SIMILARITY = 0.97
# The latest characters of the conversation that join the question in its second query (~150 tokens):
# the embedder's cost grows with the length, and the last few turns carry the referent of "it".
CONTEXT_CHARS = 600
# Texts whose embeddings a policy keeps (questions and recent messages; ~1.5 KB each).
VECTOR_CACHE = 512
# A newer statement that says something changed needs this much less similarity to count as a new version.
CHANGED_SLACK = 0.3
# Words with which people say that a fact changed.
_CHANGE = re.compile(
    r"(?<!for )(?<!right )(?<!just )(?<!until )(?<!by )\bnow\b(?! and then| that)|"
    r"\b(nowadays|these days|anymore|any more|no longer|changed?|changing|switch(?:ed)?|swapped|moved|"
    r"instead|reassigned|updated?|replaced|since then|from now on|quit)\b",
    re.IGNORECASE,
)
# Words with which a question asks about the present state of something ("... now?", "current ...").
_ASKS_CURRENT = re.compile(r"\b(now|nowadays|currently|current|these days|at the moment|still|latest|anymore)\b", re.I)
# When a question asks about the present, statements that say something changed score this much higher.
CHANGED_BOOST = 0.1
# ... and the newest candidate this much (the oldest none, linearly between).
RECENCY_BOOST = 0.05
# At most this many messages of the window are embedded to look for newer versions of recalled facts.
WINDOW_CANDIDATES = 8


@dataclass(frozen=True)
class _Said:
    """A statement as version detection sees it: who, when, its vector and content words."""

    message_id: str
    speaker: str
    said_at: float
    text: str
    vector: Any
    terms: frozenset[str]

    @staticmethod
    def of(memory: Memory) -> _Said:
        return _Said(
            memory.message_id,
            memory.speaker,
            memory.created_at,
            memory.text,
            memory.vector,
            frozenset(analyse(memory.text)),
        )


Neighbours = Callable[[str], tuple[list[StoredMessage], list[StoredMessage]]]


@dataclass(frozen=True)
class RecalledLine:
    """One line of the memory block: a recalled memory, or a turn next to one (``memory`` None)."""

    message_id: str
    speaker: str
    said_at: float
    text: str
    memory: Memory | None = None
    earlier: bool = False
    order: tuple = ()


@dataclass(frozen=True)
class RecallResult:
    """What came back for one turn, and why (kept for apps and users to inspect).

    ``memories`` are best first (the newest version of a fact before older
    ones); ``lines`` are the block's lines in conversation order, neighbour
    turns included. ``unavailable`` holds the store's error when the
    archive could not be searched (only not-yet-indexed text was); ``None``
    when recall worked. ``time_range`` is the period the question named.
    """

    query: str
    memories: list[Memory]
    block: str
    block_tokens: int
    considered: int
    unavailable: str | None = None
    lines: tuple[RecalledLine, ...] = ()
    time_range: TimeRange | None = None

    @property
    def message_ids(self) -> set[str]:
        """Every message whose text is in the block (recalled or as a neighbour)."""
        return {line.message_id for line in self.lines}


def _overlaps_window(memory: Memory, resident: dict[str, tuple[int, int]]) -> bool:
    """True when the memory's characters are all still in the cache."""
    span = resident.get(memory.message_id)
    return span is not None and span[0] <= memory.char_start and memory.char_end <= span[1]


def _names(speaker: str, text: str) -> bool:
    """Does ``text`` mention ``speaker`` by name (a whole word; roles like "user" do not count)?"""
    if not speaker or speaker in ("user", "assistant", "system"):
        return False
    return re.search(rf"\b{re.escape(speaker)}\b", text, re.IGNORECASE) is not None


def _without_names(text: str, names: Collection[str]) -> str:
    """``text`` with each name (and its possessive) replaced by a pronoun."""
    for name in names:
        text = re.sub(rf"\b{re.escape(name)}['’]s\b", "their", text, flags=re.IGNORECASE)
        text = re.sub(rf"\b{re.escape(name)}\b", "them", text, flags=re.IGNORECASE)
    return text


def format_date(timestamp: float, zone: tzinfo | None) -> str:
    """``7 May 2023`` (English month names whatever the machine's locale)."""
    day = datetime.fromtimestamp(timestamp, zone)
    return f"{day.day} {_MONTH_NAMES[day.month - 1]} {day.year}"


def _cosine(a, b) -> float:
    if a is None or b is None:
        return 0.0
    return float(np.dot(np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)))


def _tail(text: str, limit: int) -> str:
    """The last ``limit`` characters of ``text`` (whitespace collapsed), starting at a word."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text.find(" ", len(text) - limit)
    return text[cut + 1 :] if cut >= 0 else text[-limit:]


def _clip(text: str, limit: int) -> str:
    """At most ``limit`` characters, cut after a word, with an ellipsis when cut."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit)
    return text[: cut if cut > 0 else limit] + " …"


class RecallPolicy:
    """Turns a user message into a memory block for the prompt."""

    def __init__(self, settings: RecallSettings, archive: Archive, count_tokens, window_tokens: int):
        self.settings = settings
        self.archive = archive
        self.count_tokens = count_tokens
        self.budget_tokens = max(1, int(settings.budget_fraction * window_tokens))
        self.zone: tzinfo | None = None
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._costs: dict[str, int] = {}
        if settings.timezone:
            from zoneinfo import ZoneInfo

            self.zone = ZoneInfo(settings.timezone)

    def _vectors_of(self, texts: list[str]) -> list[np.ndarray]:
        """Embeddings of ``texts``, each computed once and kept (the recent messages recur turn after turn)."""
        cache = self._vectors
        missing = [text for text in dict.fromkeys(texts) if text not in cache]
        if missing:
            for text, vector in zip(missing, self.archive.embedder(missing)):
                cache[text] = np.asarray(vector, dtype=np.float32)
        for text in texts:
            cache.move_to_end(text)
        while len(cache) > VECTOR_CACHE:
            cache.popitem(last=False)
        return [cache[text] for text in texts]

    def _local_zone(self) -> tzinfo:
        return self.zone or datetime.now().astimezone().tzinfo

    # -- searching ------------------------------------------------------
    def _search(
        self, session_id: str, texts: list[str], k: int, pending, spoken_between=None, vectors=None
    ) -> tuple[list[list[Memory]], str | None]:
        """The archive searched for each text (one batch); on an outage, the pending chunks alone."""
        try:
            found = self.archive.search_many(
                session_id, texts, k, candidates=k, pending=pending, spoken_between=spoken_between, vectors=vectors
            )
            return found, None
        except ArchiveUnavailable as exc:
            results = []
            for text in texts:
                found = self.archive.search_pending(session_id, text, k, pending or [])
                if spoken_between is not None:
                    found = [m for m in found if spoken_between[0] <= m.created_at < spoken_between[1]]
                results.append(found)
            return results, str(exc)

    def candidates(
        self,
        session_id: str,
        message: str,
        recent: Sequence[str] = (),
        pending: list[Chunk] | None = None,
        now: float | None = None,
        speakers: Collection[str] = (),
    ) -> tuple[list[Memory], str, TimeRange | None, str | None]:
        """Every memory any query found, with its best adjusted score: (memories, query, period, outage).

        A question that names a participant ("Would Maya enjoy camping?")
        is searched with the name replaced by "them": every line of Maya's
        is stored as "Maya: ..." and would match the name alone, drowning
        what the question asks about (measured on ``bench memory``'s
        dialogues: dense top-10 evidence 0.71 -> 0.85). Her lines get
        ``speaker_boost`` instead.
        """
        settings = self.settings
        pool = max(settings.top_k * 4, 16)
        named = {name for name in speakers if _names(name, message)}
        asked = _without_names(message, named)
        question = self._vectors_of([asked])[0]
        queries = [(asked, 1.0, question)]
        query = asked
        context = [text for text in recent if text and text.strip()][-settings.context_messages :]
        if settings.context_messages and context:
            # The context query's vector is the question's plus the mean of the recent messages' (each
            # embedded once and cached): embedding the concatenated text again every turn cost more than
            # the rest of recall together. Its BM25 side reads the text.
            query = _tail(" ".join(context), CONTEXT_CHARS) + "\n" + asked
            around = np.mean(self._vectors_of([_clip(text, CONTEXT_CHARS) for text in context]), axis=0)
            mixed = question + around / max(float(np.linalg.norm(around)), 1e-6)
            queries.append((query, settings.context_weight, mixed / max(float(np.linalg.norm(mixed)), 1e-6)))
        period = find_time_range(message, time.time() if now is None else now, self._local_zone())
        best: dict[str, Memory] = {}
        unavailable = None
        searches = [(queries, None)]
        if period is not None:
            searches.append(([(asked, 1.0, question)], (period.start, period.end)))
        hits: list[tuple[Memory, float]] = []
        for asking, between in searches:
            texts, weights, vectors = zip(*asking)
            results, failed = self._search(session_id, list(texts), pool, pending, between, list(vectors))
            unavailable = unavailable or failed
            hits += [(memory, weight) for found, weight in zip(results, weights) for memory in found]
        for memory, weight in hits:
            score = memory.score * weight
            if period is not None and period.start <= memory.created_at < period.end:
                score += settings.time_boost
            if memory.chunk_id not in best or best[memory.chunk_id].score < score:
                best[memory.chunk_id] = replace(memory, score=score)
        if _ASKS_CURRENT.search(message) and best:
            # "... now?": a statement that says something changed, and a newer one, is likelier the answer.
            times = [m.created_at for m in best.values()]
            span = max(max(times) - min(times), 1.0)
            best = {
                cid: replace(
                    m,
                    score=m.score
                    + (CHANGED_BOOST if _CHANGE.search(m.text) else 0.0)
                    + RECENCY_BOOST * (m.created_at - min(times)) / span,
                )
                for cid, m in best.items()
            }
        if named and settings.speaker_boost:
            best = {cid: replace(m, score=m.score + settings.speaker_boost) if m.speaker in named else m
                    for cid, m in best.items()}  # fmt: skip
        ranked = sorted(best.values(), key=lambda m: -m.score)
        return ranked, query, period, unavailable

    # -- the policy -----------------------------------------------------
    def recall(
        self,
        session_id: str,
        message: str,
        recent: Sequence[str] = (),
        resident: dict[str, tuple[int, int]] | None = None,
        pending: list[Chunk] | None = None,
        now: float | None = None,
        neighbours: Neighbours | None = None,
        window: Sequence[StoredMessage] = (),
        speakers: Collection[str] = (),
        skip: Collection[str] = (),
    ) -> RecallResult:
        """The memory block for ``message``, asked at ``now`` (Unix time; the current time by default).

        ``recent`` are the latest messages' texts (oldest first), ``resident``
        the character spans of each message still in the cache, ``neighbours``
        looks up the turns around a message (the transcript's), ``window``
        are the messages wholly in the cache (a newer version of a recalled
        fact there marks the recalled one as earlier), ``speakers`` the
        names of the conversation's participants, ``skip`` messages never to
        recall (drafts of this very answer: see ``Transcript.drafts_of``).
        """
        settings = self.settings
        if not settings.enabled or settings.top_k == 0 or not message.strip():
            return RecallResult(message, [], "", 0, 0)
        found, query, period, unavailable = self.candidates(session_id, message, recent, pending, now, speakers)
        resident = resident or {}
        relevant = [
            m
            for m in found
            if m.score >= settings.min_score and not _overlaps_window(m, resident) and m.message_id not in skip
        ]
        unique = self.without_repeats(relevant)
        ordered, earlier = self.versions_first(
            unique, message, self._window(window, message, unique[: settings.top_k * 2])
        )
        if period is not None:  # a question about a time asks what was said then, not what holds now
            ordered = unique
        lines = self._fit(ordered, earlier, resident, neighbours)
        kept = [line.memory for line in sorted(lines, key=lambda line: line.order) if line.memory is not None]
        block = self.render(lines)
        tokens = self.count_tokens(block) if block else 0
        logger.debug("recall: %d of %d hits, %d lines, %d tokens", len(kept), len(found), len(lines), tokens)
        return RecallResult(query, kept, block, tokens, len(found), unavailable, tuple(lines), period)

    @staticmethod
    def without_repeats(memories: list[Memory]) -> list[Memory]:
        """Best first, leaving out a memory whose text (or vector, same speaker) repeats a better one."""
        kept: list[Memory] = []
        texts: set[str] = set()
        for memory in memories:
            text = " ".join(memory.text.split()).lower()
            if text in texts:
                continue
            if any(
                m.speaker == memory.speaker and _cosine(m.vector, memory.vector) >= DUPLICATE_SIMILARITY for m in kept
            ):
                continue
            kept.append(memory)
            texts.add(text)
        return kept

    def _versions(self, older: _Said, newer: _Said, query_terms: set[str]) -> bool:
        """Do two statements of one speaker look like an older and a newer version of one fact?

        Similar enough in meaning (``update_similarity``) and answering the
        same part of the question (they hold the same words of it); or a
        little less similar when the newer one says that something changed
        ("now", "switched", "no longer", ...). Never across speakers: a fact
        about oneself is updated by oneself.
        """
        if older.speaker != newer.speaker or older.message_id == newer.message_id:
            return False
        if not older.said_at < newer.said_at:
            return False
        similarity = _cosine(older.vector, newer.vector)
        threshold = self.settings.update_similarity
        if similarity >= threshold:
            a, b = older.terms & query_terms, newer.terms & query_terms
            if a and b and len(a & b) >= 0.5 * min(len(a), len(b)):
                return True
        return similarity >= threshold - CHANGED_SLACK and bool(_CHANGE.search(newer.text))

    def versions_first(
        self, memories: list[Memory], query: str, window: Sequence[_Said] = ()
    ) -> tuple[list[Memory], set[str]]:
        """Newest version of a fact first: reorder memories, and name the older versions.

        A newer version ranks right above the best-ranked older one; older
        versions are returned (chunk ids) to be marked ``(earlier)``, also
        when the newer version is not recalled but still in the window.
        Only the head of the ranking (twice ``top_k``) is compared: what
        ranks below it does not reach the block.
        """
        head = 2 * max(self.settings.top_k, 1)
        memories, rest = memories[:head], memories[head:]
        query_terms = set(analyse(query))
        said = [_Said.of(m) for m in memories]
        earlier: set[str] = set()
        ahead: dict[int, list[int]] = {}  # index of an older version -> newer ones to place before it
        for i, older in enumerate(said):
            for j, newer in enumerate(said):
                if self._versions(older, newer, query_terms):
                    earlier.add(memories[i].chunk_id)
                    if j > i:
                        ahead.setdefault(i, []).append(j)
            if memories[i].chunk_id not in earlier and any(self._versions(older, w, query_terms) for w in window):
                earlier.add(memories[i].chunk_id)
        ordered: list[int] = []
        placed: set[int] = set()
        for i in range(len(memories)):
            if i in placed:
                continue
            for j in sorted(ahead.get(i, ()), key=lambda j: -said[j].said_at):
                if j not in placed:
                    ordered.append(j)
                    placed.add(j)
            ordered.append(i)
            placed.add(i)
        return [memories[i] for i in ordered] + rest, earlier

    def _window(self, window: Sequence[StoredMessage], query: str, memories: list[Memory]) -> list[_Said]:
        """Messages in the cache that may restate a recalled fact, embedded (one batch, at most a few).

        A candidate holds a word of the question and a word of a recalled
        memory of the same speaker: most turns have neither, so this usually
        embeds nothing.
        """
        query_terms = set(analyse(query))
        by_speaker: dict[str, set[str]] = {}
        for memory in memories:
            by_speaker.setdefault(memory.speaker, set()).update(analyse(memory.text))
        picked = []
        for message in reversed(window):
            if message.role not in ("user", "assistant"):
                continue
            speaker = speaker_of(message.role, message.meta)
            if speaker not in by_speaker:
                continue
            terms = frozenset(analyse(message.content))
            if terms & query_terms and terms & by_speaker[speaker]:
                picked.append((message, speaker, terms))
            if len(picked) == WINDOW_CANDIDATES:
                break
        if not picked:
            return []
        vectors = self._vectors_of([embedding_text(who, _clip(m.content, CONTEXT_CHARS)) for m, who, _ in picked])
        return [_Said(m.message_id, who, m.created_at, m.content, v, t) for (m, who, t), v in zip(picked, vectors)]

    def _fit(
        self,
        memories: list[Memory],
        earlier: set[str],
        resident: dict[str, tuple[int, int]],
        neighbours: Neighbours | None,
    ) -> list[RecalledLine]:
        """Lines for the best memories within the token budget, then neighbour turns in what is left.

        Memories come first: a neighbour only adds context to a line that is
        already in, so it must never push out a memory that answers something.
        """
        settings = self.settings
        used = self.count_tokens(settings.header)
        lines: list[RecalledLine] = []
        for rank, memory in enumerate(memories):
            if len(lines) == settings.top_k:
                break
            line = RecalledLine(
                memory.message_id,
                memory.speaker,
                memory.created_at,
                ("… " if memory.char_start > 0 else "") + " ".join(memory.text.split()),
                memory,
                memory.chunk_id in earlier,
                (rank,),
            )
            cost = self._cost(line)
            if used + cost <= self.budget_tokens:
                lines.append(line)
                used += cost
        if settings.neighbours and neighbours is not None:
            shown = {line.message_id for line in lines}
            for line in list(lines):
                for extra in self._neighbour_lines(line.memory, resident, neighbours, shown):
                    cost = self._cost(extra)
                    if used + cost <= self.budget_tokens:
                        lines.append(extra)
                        shown.add(extra.message_id)
                        used += cost
        return lines

    def _neighbour_lines(
        self,
        memory: Memory,
        resident: dict[str, tuple[int, int]],
        neighbours: Neighbours | None,
        in_block: set[str],
    ) -> list[RecalledLine]:
        """The turn before a short memory and the turn after one that asks a question, unless already seen."""
        limit = self.settings.neighbour_chars
        if neighbours is None or len(memory.text) >= limit:
            return []
        try:
            before, after = neighbours(memory.message_id)
        except Exception:  # a transcript hiccup costs the context line, not the turn
            logger.exception("looking up the turns around message %s failed", memory.message_id)
            return []
        wanted = before[-1:]
        if memory.text.rstrip().endswith("?"):
            wanted += after[:1]
        lines = []
        for message in wanted:
            span = resident.get(message.message_id)
            if message.message_id in in_block or (span is not None and span[0] == 0):
                continue  # already in the block, or still in the cache
            lines.append(
                RecalledLine(
                    message.message_id,
                    speaker_of(message.role, message.meta),
                    message.created_at,
                    _clip(message.content, limit),
                    None,
                    order=(),
                )
            )
        return lines

    def _cost(self, line: RecalledLine) -> int:
        """Tokens of a rendered line and its newline (counted once per text: memories recur turn after turn)."""
        text = self._line(line)
        cost = self._costs.get(text)
        if cost is None:
            cost = self._costs[text] = self.count_tokens(text) + 1
            if len(self._costs) > VECTOR_CACHE:
                self._costs.pop(next(iter(self._costs)))
        return cost

    def _line(self, line: RecalledLine) -> str:
        earlier = " (earlier)" if line.earlier else ""
        return f"[{format_date(line.said_at, self.zone)}] {line.speaker}{earlier}: {line.text}"

    def render(self, lines: Sequence[RecalledLine]) -> str:
        """One block in conversation order, each line dated and attributed."""
        if not lines:
            return ""
        ordered = sorted(lines, key=lambda line: (line.said_at, line.memory.char_start if line.memory else 0))
        return "\n".join([self.settings.header, *(self._line(line) for line in ordered)])
