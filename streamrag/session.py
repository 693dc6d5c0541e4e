"""One conversation: the engine, the archive, recall and the transcript, tied together.

A user message travels one road (see STYLE.md):

    transcript (durable append) -> recall (archive search, budget, skip what
    is still in the window) -> engine (prefill only the new tokens; evictions
    are archived before their KV slots drop) -> transcript (the reply)

:class:`Resources` holds what several conversations share (the model, the
archive, the transcript database); :class:`Assistant` is one conversation
with its own KV cache. :meth:`Assistant.resume` rebuilds a conversation after
a restart from the transcript's most recent messages.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from streamrag.archive import Archive, Memory
from streamrag.config import ConfigError, StreamRAGConfig, set_dotted
from streamrag.engine import CacheStats, MessageError, StreamingLM, TurnStats
from streamrag.history import HistoryMessage, normalise, plan_sync
from streamrag.recall import RecallPolicy, RecallResult
from streamrag.transcript import Transcript

logger = logging.getLogger(__name__)

MEMORY_ROLE = "memory"  # how injected memory blocks are recorded in the transcript (never re-fed)
# What one session may set for itself; the model, archive and data directory are shared by all sessions.
SESSION_SETTINGS = ("cache.", "generation.", "recall.", "system_prompt")
TITLE_CHARS = 60
_SHARED: dict[str, Resources] = {}
_SHARED_LOCK = threading.Lock()


@dataclass
class Resources:
    """What all conversations of one process share: model, tokenizer, archive, transcript.

    ``lock`` serialises generation on the shared model: one forward pass at a
    time, whichever conversation it belongs to.
    """

    config: StreamRAGConfig
    model: object
    tokenizer: object
    archive: Archive
    transcript: Transcript
    lock: threading.Lock
    _assistants: dict[str, Assistant] = field(default_factory=dict, repr=False, compare=False)
    _assistants_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def load(cls, config: StreamRAGConfig | None = None) -> Resources:
        from streamrag.models import load_model

        config = config or StreamRAGConfig()
        data_dir = Path(config.data_dir)
        model, tokenizer, _ = load_model(config.model, data_dir)
        archive = Archive(config.archive, data_dir)
        transcript = Transcript(config.transcript_path)
        return cls(config, model, tokenizer, archive, transcript, threading.Lock())

    @classmethod
    def shared(cls, config: StreamRAGConfig | None = None) -> Resources:
        """One :class:`Resources` per distinct config in this process, loaded on first use.

        For callers that create many light handles (framework adapters): the
        model is loaded once however many handles there are.
        """
        config = config or StreamRAGConfig()
        key = config.model_dump_json()
        with _SHARED_LOCK:
            if key not in _SHARED:
                _SHARED[key] = cls.load(config)
            return _SHARED[key]

    def session(self, session_id: str | None = None, settings: dict | None = None) -> Assistant:
        """The one :class:`Assistant` of this process for ``session_id`` (a new id when ``None``).

        Opened on first use, resumed from the transcript when the session is
        stored there, then reused: two handles on one id share one KV cache.
        ``settings`` (dotted overrides, see :class:`Assistant`) apply to a new
        session only; a stored one keeps the settings it was created with.
        """
        with self._assistants_lock:
            assistant = self._assistants.get(session_id) if session_id else None
            if assistant is None:
                stored = session_id is not None and self.transcript.count(session_id) > 0
                if stored:
                    assistant = Assistant.resume(session_id, resources=self)
                else:
                    assistant = Assistant(self, session_id, settings=settings)
                self._assistants[assistant.session_id] = assistant
            return assistant


def session_config(base: StreamRAGConfig, settings: dict | None) -> StreamRAGConfig:
    """``base`` with one session's dotted overrides applied; shared sections may not be overridden."""
    if not settings:
        return base
    data = base.model_dump()
    for dotted, value in settings.items():
        if not dotted.startswith(SESSION_SETTINGS):
            raise ConfigError(f"{dotted}: not a per-session setting; sessions may set cache.*, generation.*, recall.*")
        set_dotted(data, dotted, value)
    return StreamRAGConfig.from_dict(data, source="session settings")


@dataclass(frozen=True)
class SyncResult:
    """What :meth:`Assistant.sync` did: fed only new messages on top, or rebuilt the session.

    ``reused_tokens`` were already in the cache and not prefilled again;
    ``prefilled_tokens`` is what the sync itself fed.
    """

    rebuilt: bool
    fed: int
    reused_tokens: int
    prefilled_tokens: int


@dataclass(frozen=True)
class AssistantStats:
    """Cache state plus what the archive and transcript hold for this session."""

    cache: CacheStats
    archived_chunks: int
    transcript_messages: int
    recalled_last_turn: int


class Assistant:
    """A conversation that remembers what left its window.

    >>> assistant = Assistant.open()                 # embedded models, default config
    >>> assistant.chat("My locker code is 4417.")
    >>> ...                                          # hours of conversation later
    >>> assistant.chat("What was my locker code?")   # the code comes back from the archive
    >>> assistant.last_recall.memories               # and you can see why
    """

    def __init__(
        self,
        resources: Resources,
        session_id: str | None = None,
        title: str | None = None,
        settings: dict | None = None,
    ):
        """``settings`` are dotted overrides of this session's own config (``{"cache.window_tokens": 508}``).

        Only ``cache.*``, ``generation.*``, ``recall.*`` and ``system_prompt`` may
        differ between sessions (they share the model and archive). They are
        stored with the session, so a resumed session keeps its window size.
        """
        self.resources = resources
        self.archive = resources.archive
        self.transcript = resources.transcript
        self.session_id = session_id or uuid.uuid4().hex
        meta = {"settings": dict(settings)} if settings else None
        info = self.transcript.create_session(self.session_id, title=title, meta=meta)
        self.settings: dict = dict(info.meta.get("settings") or {})
        self.config = session_config(resources.config, self.settings)
        self._titled = info.title is not None
        self.lm = StreamingLM(resources.model, resources.tokenizer, self.config, session_id=self.session_id)
        self.lm.on_evict(self.archive.write)
        self.recall_policy = RecallPolicy(
            self.config.recall, self.archive, self._count_tokens, self.config.cache.window_tokens
        )
        self.last_recall: RecallResult | None = None
        self._last_reply_text: str | None = None
        self._started = False
        self.last_sync: SyncResult | None = None
        self._messages_lock = threading.Lock()  # one whole-list call (sync + reply) at a time
        self._stop = threading.Event()  # set by stop(): the reply in progress ends after its current token

    # -- construction ---------------------------------------------------
    @classmethod
    def open(
        cls,
        config: StreamRAGConfig | None = None,
        session_id: str | None = None,
        resources: Resources | None = None,
    ) -> Assistant:
        """A new conversation (or an empty one under a given id)."""
        return cls(resources or Resources.load(config), session_id)

    @classmethod
    def resume(
        cls, session_id: str, config: StreamRAGConfig | None = None, resources: Resources | None = None
    ) -> Assistant:
        """Continue a stored conversation: rebuild the cache from its latest messages."""
        resources = resources or Resources.load(config)
        if resources.transcript.get_session(session_id) is None:
            raise KeyError(f"no session {session_id!r} in {resources.config.data_dir}")
        assistant = cls(resources, session_id)
        assistant._rebuild()
        return assistant

    def _count_tokens(self, text: str) -> int:
        return len(self.lm.format.content(text))

    def _rebuild(self) -> None:
        """Feed the opening system message and the newest messages that fit in ~3/4 of the window.

        Re-fed text that gets evicted again is archived under the same
        deterministic chunk ids, so the archive does not grow duplicates.
        """
        messages = [m for m in self.transcript.messages(self.session_id) if m.role != MEMORY_ROLE]
        if not messages:
            with self.resources.lock:
                self.lm.reset()
            self._last_reply_text = None
            self._started = False
            return
        opening = messages[0] if messages[0].role == "system" else None
        rest = messages[1:] if opening else messages
        budget = int(0.75 * self.config.cache.window_tokens)
        tail = []
        for message in reversed(rest):
            cost = self._count_tokens(message.content) + 8
            if tail and cost > budget:
                break
            tail.append(message)
            budget -= cost
        tail.reverse()
        with self.resources.lock:
            self.lm.reset()
            if opening:
                self.lm.add_message("system", opening.content, message_id=opening.message_id, turn=opening.turn)
            for message in tail:
                self.lm.add_message(message.role, message.content, message_id=message.message_id, turn=message.turn)
            self.lm._turn = max((m.turn for m in messages), default=0)
        replies = [m for m in messages if m.role == "assistant"]
        self._last_reply_text = replies[-1].content if replies else None
        self._started = True
        logger.info("resumed session %s: %d of %d messages re-fed", self.session_id, len(tail), len(messages))

    def _start(self) -> None:
        """The configured system prompt opens a new conversation (and becomes its attention sinks)."""
        if self._started:
            return
        self._started = True
        prompt = self.config.system_prompt
        if prompt and self.transcript.count(self.session_id) == 0:
            self.add_message("system", prompt)

    # -- conversation ---------------------------------------------------
    def add_message(self, role: str, text: str) -> str:
        """Append a message without generating (ingesting an existing history). Returns its id."""
        self.lm._check_message(role, text)
        self._start()
        turn = self.lm.turn + 1 if role == "user" else self.lm.turn
        stored = self.transcript.append(self.session_id, role, text, turn)
        if role == "user":
            self._title_from(text)
        try:
            with self.resources.lock:
                self.lm.add_message(role, text, message_id=stored.message_id, turn=turn)
        except BaseException:
            self.transcript.delete_message(stored.message_id)
            raise
        if role == "assistant":
            self._last_reply_text = text
        return stored.message_id

    def stream(self, text: str, **generation) -> Iterator[str]:
        """Answer a user message, streaming the reply; memories are recalled first."""
        self.lm._check_message("user", text)
        self._start()
        turn = self.lm.turn + 1
        stored = self.transcript.append(self.session_id, "user", text, turn)
        self._title_from(text)
        pieces: list[str] = []
        reply_id: str | None = None
        with self.resources.lock:
            self._stop.clear()
            try:
                result = self.recall_policy.recall(
                    self.session_id, text, self._last_reply_text, self.lm.ledger.resident_ranges()
                )
                self.last_recall = result
                if result.block:
                    # Recorded under the previous turn in the cache: the user message that follows opens
                    # ``turn`` (the engine numbers a user message one past the last message's turn).
                    self.lm.add_message("system", result.block, archive=False, turn=turn - 1)
                    self.transcript.append(self.session_id, MEMORY_ROLE, result.block, turn)
                stream = self.lm.stream_chat(text, message_id=stored.message_id, **generation)
                first = next(stream, None)
            except BaseException:
                # The message never reached the model: take it back so a retry does not duplicate it.
                if stored.message_id not in self.lm.ledger and self.lm.turn < turn:
                    self.transcript.delete_message(stored.message_id)
                raise
            reply_id = self.lm.last_reply.message_id if self.lm.last_reply else None
            try:
                piece = first
                # stop() is checked before asking for the next token, so every token the cache holds
                # is also in the reply that the transcript records.
                while piece is not None:
                    pieces.append(piece)
                    yield piece
                    piece = None if self._stop.is_set() else next(stream, None)
            finally:
                stream.close()
                reply = "".join(pieces)
                if reply_id is not None and reply.strip():
                    meta = {"stop_reason": self.lm.last_turn.stop_reason}
                    self.transcript.append(self.session_id, "assistant", reply, turn, message_id=reply_id, meta=meta)
                    self._last_reply_text = reply

    def chat(self, text: str, **generation) -> str:
        return "".join(self.stream(text, **generation))

    def stop(self) -> None:
        """End the reply being streamed after its current token (a stop button; safe from any thread).

        The partial reply is kept, in the cache and in the transcript alike,
        with ``stop_reason`` "interrupted". A reply that starts later is not affected.
        """
        self._stop.set()

    def undo(self) -> str | None:
        """Take back the last exchange: the last user message and everything after it.

        Transcript rows, the injected memory block and any memories archived
        from those messages are deleted, and the cache is rebuilt from what
        remains (as :meth:`resume` does), so cache and transcript agree again.
        Returns the user message taken back (``None`` if there was none).
        """
        stored = self.transcript.messages(self.session_id)
        last_user = next((m for m in reversed(stored) if m.role == "user"), None)
        if last_user is None:
            return None
        removed = {m.message_id for m in stored if m.seq >= last_user.seq}
        self.transcript.truncate_after(self.session_id, last_user.seq - 1)
        for memory in self.archive.list(self.session_id):
            if memory.message_id in removed:
                self.archive.forget(self.session_id, memory.chunk_id)
        self.last_recall = None
        self._rebuild()
        logger.info("session %s: took back the exchange from turn %d", self.session_id, last_user.turn)
        return last_user.content

    def regenerate(self, **generation) -> Iterator[str]:
        """Answer the last user message again: :meth:`undo` it, then :meth:`stream` it anew (recall included)."""
        text = self.undo()
        if text is None:
            raise MessageError("nothing to regenerate: the session has no user message")
        yield from self.stream(text, **generation)

    @property
    def last_turn(self) -> TurnStats:
        """Tokens prefilled and generated by the last reply, and its speed (tokens per second)."""
        return self.lm.last_turn

    def _title_from(self, text: str) -> None:
        """A session without a title is named after its first user message (for session lists)."""
        if self._titled:
            return
        line = " ".join(text.split())
        title = line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "…"
        self.transcript.rename_session(self.session_id, title)
        self._titled = True

    def stream_reply(self, **generation) -> Iterator[str]:
        """Answer the messages added so far, whatever the last one's role (no recall: there is no new query)."""
        self._start()
        turn = self.lm.turn
        before = self.lm.last_reply
        pieces: list[str] = []
        with self.resources.lock:
            self._stop.clear()
            stream = self.lm.stream_reply(**generation)
            try:
                while not self._stop.is_set():
                    piece = next(stream, None)
                    if piece is None:
                        break
                    pieces.append(piece)
                    yield piece
            finally:
                stream.close()
                reply = "".join(pieces)
                ref = self.lm.last_reply
                if ref is not None and ref is not before and reply.strip():
                    meta = {"stop_reason": self.lm.last_turn.stop_reason}
                    self.transcript.append(
                        self.session_id, "assistant", reply, turn, message_id=ref.message_id, meta=meta
                    )
                    self._last_reply_text = reply

    # -- whole message lists (chat frameworks) ---------------------------
    def history(self) -> list[HistoryMessage]:
        """The conversation this session holds, oldest first; injected memory blocks are left out."""
        return [
            HistoryMessage(m.role, m.content)
            for m in self.transcript.messages(self.session_id)
            if m.role != MEMORY_ROLE
        ]

    def sync(self, messages) -> SyncResult:
        """Make the session hold exactly ``messages`` (role/content pairs), re-feeding as little as possible.

        If ``messages`` start with everything the session holds, only the new
        ones are fed. Otherwise (an edited or a different history) the session
        is rebuilt: its cache, transcript and archived memories are cleared
        and ``messages`` are fed from the start. See :mod:`streamrag.history`.
        """
        incoming = normalise(messages)
        held = self.history()
        prompt = self.config.system_prompt
        if prompt and held and held[0] == HistoryMessage("system", prompt):
            if not incoming or incoming[0].role != "system":
                held = held[1:]  # the configured prompt the session added itself; clients need not repeat it
        plan = plan_sync(held, incoming)
        before = self.lm.stats()
        if plan.rebuild:
            self._clear()
            if incoming and incoming[0].role == "system":
                self._started = True  # the client brings its own system message
        for message in plan.new:
            self.add_message(message.role, message.content)
        after = self.lm.stats()
        self.last_sync = SyncResult(
            rebuilt=plan.rebuild,
            fed=len(plan.new),
            reused_tokens=0 if plan.rebuild else before.cache_tokens,
            prefilled_tokens=after.prefilled_tokens - before.prefilled_tokens,
        )
        return self.last_sync

    def stream_messages(self, messages, **generation) -> Iterator[str]:
        """Answer a whole message list: sync the session to it, then stream the reply.

        A final user message is answered like :meth:`stream` (with recall);
        otherwise the reply follows the synced messages (:meth:`stream_reply`).
        """
        incoming = normalise(messages)
        if not incoming:
            raise MessageError("no messages to answer")
        with self._messages_lock:
            if incoming[-1].role == "user":
                self.sync(incoming[:-1])
                yield from self.stream(incoming[-1].content, **generation)
            else:
                self.sync(incoming)
                yield from self.stream_reply(**generation)

    def recall(self, text: str) -> RecallResult:
        """What this session would recall for ``text`` right now; nothing is injected or stored."""
        return self.recall_policy.recall(self.session_id, text, self._last_reply_text, self.lm.ledger.resident_ranges())

    def _clear(self) -> None:
        """Empty this session (cache, transcript, archive) but keep its id."""
        self.archive.forget(self.session_id)
        self.transcript.truncate_after(self.session_id, 0)
        with self.resources.lock:
            self.lm.reset()
        self._last_reply_text = None
        self.last_recall = None
        self._started = False

    # -- inspection and forgetting --------------------------------------
    @property
    def recalled(self) -> list[Memory]:
        return self.last_recall.memories if self.last_recall else []

    def stats(self) -> AssistantStats:
        return AssistantStats(
            cache=self.lm.stats(),
            archived_chunks=self.archive.count(self.session_id),
            transcript_messages=self.transcript.count(self.session_id),
            recalled_last_turn=len(self.recalled),
        )

    def search(self, query: str, k: int = 5) -> list[Memory]:
        return self.archive.search(self.session_id, query, k=k)

    def forget(self, chunk_id: str | None = None) -> int:
        """Delete one memory (by chunk id) or every memory of this session; returns how many."""
        return self.archive.forget(self.session_id, chunk_id)

    def forget_session(self) -> None:
        """Delete this session everywhere: archive, transcript and cache (and the process's handle on it)."""
        self.archive.forget(self.session_id)
        self.transcript.delete_session(self.session_id)
        with self.resources._assistants_lock:
            if self.resources._assistants.get(self.session_id) is self:
                del self.resources._assistants[self.session_id]
        with self.resources.lock:
            self.lm.reset()
        self._last_reply_text = None
        self.last_recall = None
