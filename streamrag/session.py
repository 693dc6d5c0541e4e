"""One conversation: the engine, the archive, recall and the transcript, tied together.

A user message travels one road (see STYLE.md):

    transcript (durable append) -> recall (archive search, budget, skip what
    is still in the window) -> engine (prefill only the new tokens; evicted
    text is appended to the transcript's eviction log before its KV slots
    drop) -> transcript (the reply)

Beside that road the :class:`~streamrag.indexer.Indexer` embeds the logged
text into the archive, so an eviction costs one local append, not an
embedding and a vector-store round trip.

:class:`Resources` holds what several conversations share (the model, the
archive, the transcript database, the indexer); :class:`Assistant` is one
conversation with its own KV cache. A turn comes back as a :class:`Reply`
to iterate. Nothing the user said is deleted except by an explicit
:meth:`Assistant.undo` or forget: a message list that diverges from the
stored one supersedes the old messages (they stay stored and archived), and
every path that rebuilds the cache archives whatever it does not re-feed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from streamrag import forgetting
from streamrag.archive import Archive, ArchiveUnavailable, Memory
from streamrag.chunking import Chunk
from streamrag.config import ConfigError, StreamRAGConfig, set_dotted
from streamrag.engine import FLAT_SETTINGS, CacheStats, Generation, StreamingLM, TurnStats, config_from_settings
from streamrag.fairlock import FairLock
from streamrag.forgetting import Forgotten
from streamrag.history import HistoryMessage, as_message, normalise, plan_sync, shared_prefix
from streamrag.indexer import Indexer
from streamrag.ledger import EvictedSpan
from streamrag.recall import RecallPolicy, RecallResult
from streamrag.structured import TurnPlan, plan_turn, routed_plan
from streamrag.text import MessageError
from streamrag.tool_router import ToolRouter
from streamrag.tools import ToolCall, ToolChoice, ToolFormat, ToolSyntax
from streamrag.transcript import (
    EvictedText,
    NewMessage,
    SessionInfo,
    StoredMessage,
    Transcript,
    open_transcript,
    title_of,
)

logger = logging.getLogger(__name__)

MEMORY_ROLE = "memory"  # how injected memory blocks are recorded in the transcript (never re-fed)
TOOLS_ROLE = "tool_spec"  # how the tools' instructions are recorded (never re-fed: a turn with tools feeds them)
CONTEXT_ROLES = (MEMORY_ROLE, TOOLS_ROLE)  # what the session put into the context itself, not the conversation
# What one session may set for itself; the model, archive and data directory are shared by all sessions.
SESSION_SETTINGS = ("cache.", "generation.", "recall.", "system_prompt")
BUSY_GRACE_S = 0.5  # the model counts as in use this long after its last step (the gap between two tokens)
REFEED_SHARE = 0.75  # a rebuilt cache re-feeds the newest messages that fit in this share of the window
TEMPLATE_TOKENS = 8  # what a message's chat-template framing costs, about (role tags, newlines)
REPLY_WAIT_S = 300.0  # how long a new turn waits for a reply another thread is still reading
_SHARED: dict[str, Resources] = {}
_SHARED_LOCK = threading.Lock()


@dataclass
class Resources:
    """What all conversations of one process share: model, tokenizer, archive, transcript, indexer.

    ``lock`` serialises forward passes on the shared model: one at a time,
    whichever conversation it belongs to. It is taken per step (a prefill, a
    decoded token), never held while a caller reads a reply. :meth:`load`
    makes it a :class:`~streamrag.fairlock.FairLock`, so concurrent replies
    take turns token by token.
    """

    config: StreamRAGConfig
    model: object
    tokenizer: object
    archive: Archive
    transcript: Transcript
    lock: threading.Lock | FairLock
    indexer: Indexer | None = None
    active_at: float = 0.0  # monotonic time the model last finished a step
    _assistants: OrderedDict[str, Assistant] = field(default_factory=OrderedDict, repr=False, compare=False)
    _assistants_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _tool_syntax: ToolSyntax | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.indexer is None:
            settings = self.config.archive
            self.indexer = Indexer(
                self.transcript,
                self.archive,
                batch=settings.index_batch,
                idle_s=settings.index_idle_s,
                busy=self.busy,
            )
            # Text logged before a crash or during an outage is indexed without waiting for new evictions.
            if self.transcript.pending_count():
                self.indexer.notify()
        # A compaction of the archive copies the store while index writes wait.
        self.archive.pause_writes = self.indexer.paused

    @contextlib.contextmanager
    def using_model(self) -> Iterator[None]:
        """Hold the model for one step (a prefill, one decoded token) and note when it was last used."""
        with self.lock:
            try:
                yield
            finally:
                self.active_at = time.monotonic()

    def busy(self) -> bool:
        """Is a conversation using the model now, or between two of its tokens? (The indexer waits then.)"""
        return self.lock.locked() or time.monotonic() - self.active_at < BUSY_GRACE_S

    @classmethod
    def load(cls, config: StreamRAGConfig | None = None) -> Resources:
        from streamrag.models import load_model

        config = config or StreamRAGConfig()
        model, tokenizer, _ = load_model(config.model, Path(config.data_dir))
        return cls.around(config, model, tokenizer)

    @classmethod
    def around(cls, config: StreamRAGConfig, model, tokenizer) -> Resources:
        """Resources for an already loaded model: the archive and transcript where ``config`` puts them.

        For benchmarks and tests that load a model once and give each run its own data directory.
        """
        archive = Archive(config.archive, Path(config.data_dir))
        return cls(config, model, tokenizer, archive, open_transcript(config.transcript_target), FairLock())

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

    def session(
        self, session_id: str | None = None, settings: dict | None = None, owner: str | None = None
    ) -> Assistant:
        """The one :class:`Assistant` of this process for ``session_id`` (a new id when ``None``).

        Opened on first use, resumed from the transcript when the session is
        stored there, then reused: two handles on one id share one KV cache.
        A live session whose transcript another process has moved on since is
        rebuilt from it first (:meth:`Assistant.catch_up`).
        ``settings`` (dotted overrides, see :class:`Assistant`) apply to a new
        session only; a stored one keeps the settings it was created with.
        ``owner`` (a user name) is stored with a new session; a session that
        belongs to someone else is refused with :class:`SessionAccessError`.
        """
        if session_id is not None and owner is not None:
            info = self.transcript.get_session(session_id)
            if info is not None and info.meta.get("owner") != owner:
                raise SessionAccessError(f"session {session_id!r} belongs to another user")
        with self._assistants_lock:
            assistant = self._assistants.get(session_id) if session_id else None
            if assistant is None:
                stored = session_id is not None and self.transcript.count(session_id) > 0
                if stored:
                    assistant = Assistant.resume(session_id, resources=self)
                else:
                    assistant = Assistant(self, session_id, settings=settings, owner=owner)
                self._assistants[assistant.session_id] = assistant
                self._release_beyond_limit()
                return assistant
            self._assistants.move_to_end(assistant.session_id)
        assistant.catch_up()  # another process (a replica on a shared transcript) may have moved it on
        return assistant

    def continued_by(self, session_id: str, messages) -> int:
        """How many leading messages of ``messages`` the stored session already has (see
        :meth:`Assistant.continued_by`), read from the transcript: a session that is not live is not opened."""
        with self._assistants_lock:
            live = self._assistants.get(session_id)
        if live is not None:
            return live.continued_by(messages)
        info = self.transcript.get_session(session_id)
        if info is None:
            return 0
        prompt = session_config(self.config, info.meta.get("settings")).system_prompt
        if self._tool_syntax is None:
            self._tool_syntax = ToolFormat.for_tokenizer(self.tokenizer).syntax
        return conversation_overlap(self.transcript, session_id, prompt, messages, self._tool_syntax)

    def sessions_of(self, owner: str | None) -> list[SessionInfo]:
        """Stored sessions holding messages, the most recent first: ``owner``'s only, or, for ``None``
        (a single-user process), every session."""
        return [
            info
            for info in self.transcript.sessions()
            if info.message_count and (owner is None or info.meta.get("owner") == owner)
        ]

    def _release_beyond_limit(self) -> None:
        """Beyond ``live_sessions`` live conversations, the least recently used idle ones let their caches go.

        Called with ``_assistants_lock`` held. A released session loses nothing:
        its transcript holds every message, and its next use rebuilds the cache
        from it as a resume would (archiving what is not re-fed). A session in
        the middle of a step or a reply is skipped.
        """
        for session_id in list(self._assistants):
            if len(self._assistants) <= self.config.live_sessions:
                return
            if self._assistants[session_id].release():
                del self._assistants[session_id]
                logger.info(
                    "session %s: cache released (more than %d live sessions)", session_id, self.config.live_sessions
                )

    def close(self) -> None:
        """Stop the indexer (unindexed text stays in the log for next time) and close the transcript."""
        if self.indexer is not None:
            self.indexer.close()
        self.archive.close()
        self.transcript.close()


class SessionAccessError(PermissionError):
    """A user asked for a session that belongs to someone else."""


class AnonymousSessions:
    """Conversations a framework sends without a session id, told apart by their messages.

    An adapter with no session id (LangChain's and LlamaIndex's, by default)
    keeps one of these: a message list goes to the session it continues, the
    one sharing the longest opening with it (beyond a system prompt; an edit
    or retry there forks that session, losing nothing); a list that shares
    nothing with any starts a new session. So unrelated calls on one model
    object are unrelated conversations, and one conversation sent whole on
    every call still prefills only its new messages.
    """

    def __init__(self, limit: int = 16):
        self.limit = limit
        """How many recent conversations a list is compared with (each comparison reads one transcript)."""
        self._ids: list[str] = []
        self._lock = threading.Lock()

    def resolve(self, resources: Resources, session_id: str | None, messages=None) -> Assistant:
        """The session named ``session_id``; without a name, the one ``messages`` continue (else a new one),
        or with no messages either, the conversation used last."""
        if session_id is not None:
            return resources.session(session_id)
        if messages is not None:
            return self.for_messages(resources, messages)
        return self.latest(resources)

    def latest(self, resources: Resources) -> Assistant:
        """The conversation used last (a new one if none yet)."""
        with self._lock:
            session_id = self._ids[-1] if self._ids else None
        return self._remember(resources.session(session_id))

    def for_messages(self, resources: Resources, messages) -> Assistant:
        """The session ``messages`` continue, else a new one."""
        with self._lock:
            known = list(self._ids[-self.limit :])
        best, best_shared = None, 0
        for session_id in reversed(known):  # the most recent first: it wins a tie
            shared = resources.continued_by(session_id, messages)
            if shared > best_shared:
                best, best_shared = session_id, shared
        return self._remember(resources.session(best))  # only the one chosen is opened (a new one for None)

    def _remember(self, session: Assistant) -> Assistant:
        with self._lock:
            if session.session_id in self._ids:
                self._ids.remove(session.session_id)
            self._ids.append(session.session_id)
            del self._ids[: -self.limit]
        return session


def held_conversation(
    transcript: Transcript, session_id: str, system_prompt: str | None, incoming: list[HistoryMessage]
) -> tuple[list[StoredMessage], list[HistoryMessage]]:
    """A session's conversation as stored and as messages, to compare with a client's ``incoming`` list."""
    stored = [m for m in transcript.messages(session_id) if m.role not in CONTEXT_ROLES]
    held = [HistoryMessage(m.role, m.content) for m in stored]
    if system_prompt and held and held[0] == HistoryMessage("system", system_prompt):
        if not incoming or incoming[0].role != "system":
            # The configured prompt the session added itself; clients need not repeat it.
            stored, held = stored[1:], held[1:]
    return stored, held


def conversation_overlap(
    transcript: Transcript, session_id: str, system_prompt: str | None, messages, syntax: ToolSyntax
) -> int:
    """How many leading messages of ``messages`` the stored session has (0 if only a system prompt)."""
    incoming = normalise(messages, syntax)
    _, held = held_conversation(transcript, session_id, system_prompt, incoming)
    common = shared_prefix(held, incoming, syntax)
    return common if any(m.role != "system" for m in incoming[:common]) else 0


MAX_NAME_CHARS = 100


def _check_name(name: str | None) -> None:
    """A speaker name is a short line of text (it is shown in every memory line of its messages)."""
    if name is None:
        return
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS or "\n" in name:
        raise MessageError(f"a speaker name must be one line of 1 to {MAX_NAME_CHARS} characters, not {name!r}")


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
    """What :meth:`Assistant.sync` did with a client's message list.

    ``forked``: the list diverged from the stored history; the ``superseded``
    stored messages after the common prefix were set aside (kept in the
    transcript and archive, no longer fed). ``rebuilt``: the cache had to be
    rebuilt from the transcript rather than rewound. ``reused_tokens`` were
    already in the cache and not prefilled again; ``prefilled_tokens`` is
    what the sync itself fed (a rebuild's re-feed included). Never negative.
    """

    forked: bool
    rebuilt: bool
    superseded: int
    fed: int
    reused_tokens: int
    prefilled_tokens: int


@dataclass(frozen=True)
class AssistantStats:
    """Cache state plus what the archive and transcript hold for this session.

    ``archived_chunks`` is ``None`` while the archive is unavailable;
    ``pending_evictions`` counts logged text the indexer has not stored yet.
    """

    cache: CacheStats
    archived_chunks: int | None
    pending_evictions: int
    transcript_messages: int
    archive_unavailable: str | None


class Reply(Iterator[str]):
    """One answer of the assistant, as a value: iterate it for the text, read the rest from it.

    ``message_id`` is the reply's id in the transcript (and the cache);
    ``recall`` what came back from the archive for this turn
    (``recall_unavailable`` says whether the archive could not be searched);
    ``sync`` what a whole-list call did first; ``stats`` the tokens and speed,
    final once the reply ends; ``stop_reason`` one of eos, length, stop,
    interrupted.

    Each step takes the session's lock and the shared model's lock only for
    itself, so a reader that pauses, or abandons the reply, blocks no one.
    A reply ends when it is exhausted, closed, stopped, or when the session
    starts its next turn; the text yielded so far is then recorded.
    """

    def __init__(
        self,
        assistant: Assistant,
        generation: Generation,
        turn: int,
        user_message_id: str | None = None,
        recall: RecallResult | None = None,
        sync: SyncResult | None = None,
        plan: TurnPlan | None = None,
    ):
        self.assistant = assistant
        self.plan = plan or TurnPlan()
        self.message_id = generation.message_id
        self.user_message_id = user_message_id
        self.turn = turn
        self.recall = recall
        self.sync = sync
        self._generation = generation
        self._done = False
        self.owner = threading.get_ident()  # the thread that asked for it (and is presumably reading it)

    def __iter__(self) -> Reply:
        return self

    def __next__(self) -> str:
        assistant = self.assistant
        with assistant._lock:
            if self._done:
                raise StopIteration
            if assistant._stop.is_set():
                self._finish()
                raise StopIteration
            try:
                with assistant.resources.using_model():
                    return next(self._generation)
            except BaseException:  # StopIteration included: the reply is over either way
                self._finish()
                raise

    def close(self) -> None:
        """End the reply now (a client that went away); the text so far stays, as "interrupted"."""
        with self.assistant._lock:
            self._finish()

    def result(self) -> Reply:
        """Read the reply to its end; returns itself (``assistant.stream(text).result().text``)."""
        for _ in self:
            pass
        return self

    @property
    def done(self) -> bool:
        return self._done

    @property
    def text(self) -> str:
        """The reply's text so far (all of it once :attr:`done`)."""
        return self._generation.text

    @property
    def stats(self) -> TurnStats:
        return self._generation.stats

    @property
    def stop_reason(self) -> str:
        return self._generation.stop_reason

    @property
    def tool_calls(self) -> list[ToolCall]:
        """The calls in the reply (when the turn offered tools), in order; read once the reply is done."""
        return self._parsed()[1]

    @property
    def content(self) -> str:
        """The reply's text without its tool calls (all of :attr:`text` when it has none)."""
        return self._parsed()[0]

    @property
    def finish_reason(self) -> str:
        """OpenAI's name for why the reply ended: stop, length, tool_calls (or interrupted)."""
        if self.tool_calls:
            return "tool_calls"
        return {"eos": "stop", "stop": "stop"}.get(self.stop_reason, self.stop_reason)

    def _parsed(self) -> tuple[str, list[ToolCall]]:
        if not self.plan.offers_calls:  # with tool_choice none, text that looks like a call is text
            return self.text, []
        cached = getattr(self, "_parsed_cache", None)
        if cached is None or cached[0] != len(self.text):
            content, calls = self.assistant.lm.tool_format.syntax.parse(self.text)
            cached = (len(self.text), content, calls)
            if self._done:
                self._parsed_cache = cached
        return cached[1], cached[2]

    @property
    def recall_unavailable(self) -> bool:
        return bool(self.recall and self.recall.unavailable)

    @property
    def memories(self) -> list[Memory]:
        return self.recall.memories if self.recall else []

    def _finish(self) -> None:
        """Close the generation and record what was said (called with the session's lock held)."""
        if self._done:
            return
        self._done = True
        self._generation.close()
        self.assistant._record_reply(self)

    def __repr__(self) -> str:
        state = self.stop_reason or "open"
        return f"Reply({self.message_id!r}, {state}, {len(self.text)} chars)"


class Assistant:
    """A conversation that remembers what left its window.

    >>> assistant = Assistant.open()                 # embedded models, default config
    >>> assistant.chat("My locker code is 4417.")
    >>> ...                                          # hours of conversation later
    >>> reply = assistant.stream("What was my locker code?")
    >>> print("".join(reply))                        # the code comes back from the archive
    >>> reply.memories                               # and you can see why
    """

    def __init__(
        self,
        resources: Resources,
        session_id: str | None = None,
        title: str | None = None,
        settings: dict | None = None,
        owner: str | None = None,
    ):
        """``settings`` are dotted overrides of this session's own config (``{"cache.window_tokens": 508}``).

        Only ``cache.*``, ``generation.*``, ``recall.*`` and ``system_prompt`` may
        differ between sessions (they share the model and archive). They are
        stored with the session, so a resumed session keeps its window size.
        """
        self.resources = resources
        self.archive = resources.archive
        self.transcript = resources.transcript
        self.indexer = resources.indexer
        self.session_id = session_id or uuid.uuid4().hex
        meta = {**({"settings": dict(settings)} if settings else {}), **({"owner": owner} if owner else {})} or None
        if settings:
            session_config(resources.config, settings)  # refuse bad settings before storing anything
        info = self.transcript.create_session(self.session_id, title=title, meta=meta)
        self.settings: dict = dict(info.meta.get("settings") or {})
        self.owner: str | None = info.meta.get("owner")  # who may use it (apps with users); None: anyone
        self.config = session_config(resources.config, self.settings)
        self._router: ToolRouter | None = None
        self._titled = info.title is not None
        self.lm = StreamingLM(resources.model, resources.tokenizer, self.config)
        self.lm.on_evict(self._log_evictions)
        self.recall_policy = RecallPolicy(
            self.config.recall, self.archive, self._count_tokens, self.config.cache.window_tokens
        )
        self.turn = 0  # user messages so far
        self._said: dict[str, tuple[int, float]] = {}  # message id -> (turn, time said), for resident messages
        self._started = False
        self._speakers: set[str] | None = None  # participants' names, read on first recall
        self._open_reply: Reply | None = None
        self._lock = threading.RLock()  # one step of this session at a time (a turn, a token, a sync)
        self._reply_ended = threading.Condition(self._lock)  # notified when the open reply ends
        self._stop = threading.Event()  # set by stop(): the reply in progress ends after its current token
        self._tools_fed: tuple[str, str] | None = None  # (instructions key, message id) of the tools last fed
        # The newest transcript row as this object last left it; another row there means another process
        # (a second server replica on a shared transcript) moved the conversation on: see catch_up().
        self._newest: str | None = None
        self._released = False  # the cache was let go (Resources' live-session limit): rebuilt on next use

    # -- construction ---------------------------------------------------
    @classmethod
    def open(
        cls,
        model: str | StreamRAGConfig | None = None,
        config: StreamRAGConfig | str | None = None,
        session_id: str | None = None,
        resources: Resources | None = None,
        **settings,
    ) -> Assistant:
        """A new conversation (or an empty one under a given id).

        Takes what :meth:`StreamingLM.load` takes: a model spec (hub id,
        folder, .gguf, None for the embedded one), a config or YAML path, and
        flat settings (``window_tokens=1020``, ``temperature=0``) or dotted
        ones. With ``resources`` already loaded, the settings apply to this
        session alone (only cache, generation, recall and system prompt may).
        """
        if isinstance(model, StreamRAGConfig):  # Assistant.open(config)
            model, config = None, model
        if resources is not None:
            if model is not None or config is not None:
                raise ConfigError("pass either loaded resources or a model/config to load, not both")
            dotted = {FLAT_SETTINGS.get(k, k): v for k, v in settings.items()}
            return cls(resources, session_id, settings=dotted or None)
        return cls(Resources.load(config_from_settings(model, config, **settings)), session_id)

    @classmethod
    def resume(
        cls, session_id: str, config: StreamRAGConfig | None = None, resources: Resources | None = None
    ) -> Assistant:
        """Continue a stored conversation: rebuild the cache from its latest messages.

        Everything the rebuilt cache does not hold is in the archive (or its
        log) afterwards, so no text is lost to recall by a restart.
        """
        resources = resources or Resources.load(config)
        if resources.transcript.get_session(session_id) is None:
            raise KeyError(f"no session {session_id!r} in {resources.config.data_dir}")
        assistant = cls(resources, session_id)
        with assistant._lock:
            assistant._rebuild()
        return assistant

    def _count_tokens(self, text: str) -> int:
        return len(self.lm.format.content(text))

    # -- the eviction log ---------------------------------------------------
    def _log_evictions(self, spans: list[EvictedSpan]) -> None:
        """Eviction subscriber: make the text durable in the log (one append), then let the slots go."""
        records = []
        for span in spans:
            if span.archive and span.text:
                turn, said = self._said_of(span.message_id)
                records.append(
                    EvictedText(
                        self.session_id,
                        span.message_id,
                        span.role,
                        turn,
                        span.char_start,
                        span.char_end,
                        span.text,
                        said,
                    )
                )
        if records and self.transcript.log_evicted(records):
            self.indexer.notify()
        for message_id in [m for m in self._said if m not in self.lm.ledger]:
            del self._said[message_id]

    def _said_of(self, message_id: str) -> tuple[int, float]:
        if message_id in self._said:
            return self._said[message_id]
        stored = self.transcript.get(message_id)
        return (stored.turn, stored.created_at) if stored else (self.turn, time.time())

    def _archive_unfed(self, fed: set[str]) -> int:
        """Log every stored message's text that the cache does not hold, so recall can find it.

        Idempotent (the log clips what it already has). Called by every path
        that rebuilds the cache from the transcript: resume, undo, a diverging
        history. Superseded messages are included: they were said.
        """
        ends = self.transcript.logged_ends(self.session_id)
        records = [
            EvictedText(
                self.session_id,
                m.message_id,
                m.role,
                m.turn,
                ends.get(m.message_id, 0),
                len(m.content),
                m.content[ends.get(m.message_id, 0) :],
                m.created_at,
            )
            for m in self.transcript.messages(self.session_id, include_superseded=True)
            if m.role not in CONTEXT_ROLES
            and m.message_id not in fed
            and not m.meta.get("forgotten_at")
            and ends.get(m.message_id, 0) < len(m.content)
        ]
        logged = self.transcript.log_evicted(records)
        if logged:
            self.indexer.notify()
            logger.info(
                "session %s: %d message(s) not re-fed were logged for the archive", self.session_id, len(logged)
            )
        return len(logged)

    # -- rebuilding the cache -------------------------------------------------
    def _rebuild(self) -> int:
        """Feed the opening system message and the newest messages that fit in ~3/4 of the window.

        Whatever is not re-fed is logged for the archive first. Returns the
        tokens prefilled. Called with the session's lock held.
        """
        messages = [m for m in self.transcript.messages(self.session_id) if m.role not in CONTEXT_ROLES]
        opening = messages[0] if messages and messages[0].role == "system" else None
        rest = messages[1:] if opening else messages
        budget = int(REFEED_SHARE * self.config.cache.window_tokens)
        tail: list[StoredMessage] = []
        for message in reversed(rest):
            cost = self._count_tokens(message.content) + TEMPLATE_TOKENS
            if tail and cost > budget:
                break
            tail.append(message)
            budget -= cost
        tail.reverse()
        feed = ([opening] if opening else []) + tail
        self._archive_unfed({m.message_id for m in feed})
        self._said = {m.message_id: (m.turn, m.created_at) for m in feed}
        self._released = False
        with self.resources.using_model():
            self.lm.reset()
            prefill = self.lm.add_messages([(m.role, m.content, m.message_id) for m in feed]) if feed else None
        self._after_rewind(messages)
        self._tools_fed = None
        logger.info("session %s: cache rebuilt, %d of %d messages re-fed", self.session_id, len(feed), len(messages))
        return prefill.tokens if prefill else 0

    def _outgrows_window(self, messages: list[StoredMessage]) -> bool:
        """Whether these messages alone overflow the window, so prefilling them all would only evict them again.

        Then ingestion skips ahead: everything is logged for the archive
        straight from the transcript and only the newest ~3/4 window is
        prefilled (the same cache a resume builds). A 10k-message history costs
        one log append and one window of prefill instead of a forward pass
        over every token. A message's UTF-8 bytes plus one (SentencePiece's
        word-start marker) bound its tokens from above: every token of a
        byte-level or byte-fallback vocabulary covers at least one byte, while
        characters do not (one emoji can be several tokens). So short batches
        are never tokenized here.
        """
        window = self.config.cache.window_tokens
        if sum(len(m.content.encode()) + 1 + TEMPLATE_TOKENS for m in messages) <= window:
            return False
        counts = self.lm.format.content_lengths([m.content for m in messages])
        return sum(counts) + TEMPLATE_TOKENS * len(messages) > window

    def _roll_back(self, message_ids: list[str | None]) -> None:
        """A step that failed is taken back whole (called with the session's lock held, then re-raise).

        Its messages leave the cache (rewound to just before the first of
        them), the transcript, the eviction log and the archive, so a retry
        neither duplicates nor orphans anything. If the failed prefill had
        already evicted the start of one of them, the cache cannot be rewound
        and is rebuilt from the transcript instead (what it held before the
        step is then in the log, as after any eviction: nothing is lost).
        """
        ids = [m for m in message_ids if m is not None]
        doomed = set(ids)
        first = next((slot.message_id for slot in self.lm.ledger.slots if slot.message_id in doomed), None)
        rebuild = False
        if first is not None:
            with self.resources.using_model():
                rebuild = not self.lm.truncate_to(first)
        for message_id in ids:
            self.lm.ledger.withdraw_message(message_id)  # one that never reached the cache
            self._said.pop(message_id, None)
        with self.indexer.paused():
            for message_id in ids:
                self.transcript.delete_message(message_id)
            try:
                for message_id in ids:
                    self.archive.forget(self.session_id, message_id=message_id)
            except ArchiveUnavailable as exc:
                logger.warning("session %s: chunks of a failed step may stay in the archive: %s", self.session_id, exc)
        if rebuild:
            self._rebuild()
        self._newest = self._newest_row()

    def _start(self) -> None:
        """The configured system prompt opens a new conversation (and becomes its attention sinks)."""
        if self._started:
            return
        self._started = True
        prompt = self.config.system_prompt
        if prompt and self.transcript.count(self.session_id, include_superseded=False) == 0:
            self._feed([HistoryMessage("system", prompt)])

    def _finish_open_reply(self) -> None:
        """Before a new step of the conversation, the reply still open must end (called with the lock held).

        A reply another thread is reading is waited for (up to
        ``REPLY_WAIT_S``): concurrent calls on one session are serialised, and
        cache order stays transcript order. A reply this thread left half-read
        (or one still open after the wait) is ended here, its text so far recorded.
        """
        reply = self._open_reply
        if reply is not None and reply.owner != threading.get_ident():
            if not self._reply_ended.wait_for(lambda: self._open_reply is not reply, timeout=REPLY_WAIT_S):
                logger.warning(
                    "session %s: a reply open for %.0f s in another thread is ended", self.session_id, REPLY_WAIT_S
                )
        if self._open_reply is not None:
            self._open_reply.close()

    def _record_reply(self, reply: Reply) -> None:
        """A reply ended: store its text (if any) as the assistant's message of its turn."""
        if self._open_reply is reply:
            self._open_reply = None
            self._reply_ended.notify_all()
        text = reply.text
        if text.strip():
            meta = {"stop_reason": reply.stop_reason}
            self.transcript.append(
                self.session_id, "assistant", text, reply.turn, message_id=reply.message_id, meta=meta
            )
            self._newest = reply.message_id

    # -- conversation ---------------------------------------------------
    def add_message(self, role: str, text: str, timestamp: float | None = None, name: str | None = None) -> str:
        """Append a message without generating (ingesting an existing history). Returns its id.

        ``timestamp`` (Unix time) is when it was said, now by default; ``name``
        who said it, for conversations between named people. Both come back
        with the message's memories ("[7 May 2023] Maya: ...").
        """
        return self.add_messages([HistoryMessage(role, text, name, timestamp)])[0]

    def add_messages(self, messages: Iterable) -> list[str]:
        """Append many messages without generating, in one transcript commit and packed prefills.

        Takes ``(role, text[, timestamp[, name]])`` tuples, ``HistoryMessage``
        or ``{"role", "content"[, "name", "timestamp"]}`` dicts. All are
        checked before any is stored. Returns their ids.
        """
        items = [as_message(message) for message in messages]
        for item in items:
            self.lm.check_message(item.role, item.content)
            _check_name(item.name)
        with self._lock:
            self._ready()
            self._start()
            return self._feed(items)

    def _feed(self, messages: list[HistoryMessage]) -> list[str]:
        """Store, then prefill, checked messages (with the session's lock held); ids in order.

        If the prefill fails, the messages that never reached the cache are
        taken back out of the transcript, so a retry does not duplicate them.
        """
        turn = self.turn
        rows = []
        for message in messages:
            turn = turn + 1 if message.role == "user" else turn
            meta = {"name": message.name} if message.name else None
            self._note_speaker(message.name)
            rows.append(NewMessage(message.role, message.content, turn, meta=meta, created_at=message.timestamp))
        stored = self.transcript.append_many(self.session_id, rows)
        for row in stored:
            self._said[row.message_id] = (row.turn, row.created_at)
        skip_ahead = self._outgrows_window(stored)
        try:
            if skip_ahead:
                self._rebuild()
            else:
                with self.resources.using_model():
                    self.lm.add_messages([(m.role, m.content, m.message_id) for m in stored])
        except BaseException:
            self._roll_back([row.message_id for row in stored])
            if skip_ahead:
                self._released = True  # the cache was being rebuilt: the next step rebuilds it from the transcript
            raise
        if stored:
            self._newest = stored[-1].message_id
        self.turn = turn
        users = [m for m in stored if m.role == "user"]
        if users:
            self._title_from(users[0].content)
        return [m.message_id for m in stored]

    def stream(
        self,
        text: str,
        *,
        timestamp: float | None = None,
        name: str | None = None,
        tools=None,
        tool_choice=None,
        response_format=None,
        parallel_tool_calls: bool = True,
        **generation,
    ) -> Reply:
        """Answer a user message: recall, prefill, and a :class:`Reply` to iterate for the answer.

        The message is durable in the transcript before anything else
        happens; if recall or the prefill fails, it is taken back (nothing is
        left behind) and the error is raised here. ``timestamp`` and ``name``
        are as in :meth:`add_message`.

        ``tools`` (OpenAI-style specs or :class:`~streamrag.tools.Tool`) are
        shown to the model, and ``tool_choice`` ("auto", "none", "required",
        or a tool's name) says whether it may or must call one; the calls come
        back as ``reply.tool_calls``, their arguments valid under each tool's
        schema (constrained decoding). ``response_format`` (a JSON schema,
        OpenAI's ``json_schema``/``json_object``, or a pydantic model) makes
        the reply one valid JSON value. ``parallel_tool_calls=False`` allows
        one call per reply. See :mod:`streamrag.structured`.
        """
        self.lm.check_message("user", text)
        _check_name(name)
        plan = self._routed(self._plan(tools, tool_choice, response_format, parallel_tool_calls), text)
        with self._lock:
            self._ready()
            self._start()
            return self._answer(HistoryMessage("user", text, name, timestamp), generation, plan=plan)

    def _trained_on_tools(self) -> bool:
        """Does the model's own chat template render tools? (Then it learned to call them.)"""
        return self.lm.tool_format.native

    def _plan(self, tools, tool_choice, response_format, parallel_tool_calls: bool) -> TurnPlan:
        """:func:`plan_turn` with this session's ``tools.parallel_calls`` policy applied."""
        policy = self.config.tools.parallel_calls
        if policy == "one" or (policy == "infer" and not self._trained_on_tools()):
            parallel_tool_calls = False
        return plan_turn(self.lm, tools, tool_choice, response_format, parallel_tool_calls)

    def _routed(self, plan: TurnPlan, request: str | None) -> TurnPlan:
        """An "auto" turn answering ``request`` (a user's message) as the tool router decides, if it decides.

        A user's request is routed. A reply that follows a tool's result
        (``request`` None) answers with it in text: a model never trained on
        tools, left to decide there, called tool after tool (New York, London,
        Cairo... for an order lookup, inside LlamaIndex's FunctionAgent loop).
        With a response format the turn stays JSON. See :mod:`streamrag.tool_router`.
        """
        settings = self.config.tools
        mode = settings.auto
        if mode == "infer":
            mode = "model" if self._trained_on_tools() else "router"
        if mode != "router" or plan.choice.mode != "auto" or plan.response_schema is not None:
            return plan
        if not request:
            return replace(plan, choice=ToolChoice("none"), make_constraint=lambda: None)
        if self._router is None:  # built on the first routed turn: the embedder call waits until needed
            self._router = ToolRouter(self.archive.embedder, settings.router_threshold)
        return routed_plan(self.lm, plan, self._router.route(request, plan.tools))

    def _offer_tools(self, plan: TurnPlan) -> None:
        """Feed the tools' instructions unless the cache already holds these very ones, whole.

        They are recorded in the transcript (role ``tool_spec``) for the audit
        trail but never archived or re-fed: a later turn with tools feeds them
        again once they have left the window. Called with the lock held.
        """
        key = plan.instructions_key
        if key is None:
            return
        held = self._tools_fed
        if held is not None and held[0] == key:
            resident = self.lm.ledger.resident_ranges().get(held[1])
            if resident is not None and resident[0] == 0:
                return
        text = plan.instructions
        assert text is not None
        row = self.transcript.append(self.session_id, TOOLS_ROLE, text, self.turn, meta={"tools": key})
        try:
            with self.resources.using_model():
                self.lm.add_message("system", text, message_id=row.message_id, archive=False)
        except BaseException:
            self._roll_back([row.message_id])
            raise
        self._tools_fed = (key, row.message_id)
        self._newest = row.message_id

    def _answer(
        self,
        message: HistoryMessage | str,
        generation: dict,
        sync: SyncResult | None = None,
        plan: TurnPlan | None = None,
    ) -> Reply:
        message = message if isinstance(message, HistoryMessage) else HistoryMessage("user", message)
        plan = plan or TurnPlan()
        self._offer_tools(plan)
        text = message.content
        turn = self.turn + 1
        meta = {"name": message.name} if message.name else None
        self._note_speaker(message.name)
        stored = self.transcript.append(self.session_id, "user", text, turn, meta=meta, created_at=message.timestamp)
        self._said[stored.message_id] = (turn, stored.created_at)
        block_id = None
        try:
            # Recall may wait on the network (a Chroma server, up to archive.timeout_s) and on the indexer:
            # never with the model held, so a slow archive stalls this session alone, not every session.
            recall = self._recall(text, now=stored.created_at, exclude=stored.message_id)
            with self.resources.using_model():
                if recall.block:
                    quoted = {"quotes": sorted(recall.message_ids)}  # what a forget of any of them erases
                    block = self.transcript.append(self.session_id, MEMORY_ROLE, recall.block, turn, meta=quoted)
                    block_id = block.message_id
                    self.lm.add_message("system", recall.block, message_id=block_id, archive=False)
                constraint = plan.make_constraint()
                reply = self.lm.stream_chat(text, message_id=stored.message_id, constraint=constraint, **generation)
        except BaseException:
            self._roll_back([stored.message_id, block_id])
            raise
        self._newest = block_id or stored.message_id
        self._title_from(text)
        self.turn = turn
        return self._open(Reply(self, reply, turn, stored.message_id, recall, sync, plan))

    def _open(self, reply: Reply) -> Reply:
        """A reply starts: it is the session's open reply, said now, and an earlier stop() does not apply."""
        self._said[reply.message_id] = (reply.turn, time.time())
        self._stop.clear()
        self._open_reply = reply
        return reply

    def _recall(self, text: str, now: float | None = None, exclude: str | None = None) -> RecallResult:
        """Recall for ``text`` asked at ``now``: wait briefly for the indexer, search the archive and the pending text.

        The latest messages (``exclude`` is the question's own row) join the query as context.
        """
        settings = self.config.recall
        pending: list[Chunk] = []
        window: list[StoredMessage] = []
        resident = self.lm.ledger.resident_ranges()
        if settings.enabled and settings.top_k:
            self.indexer.flush(self.session_id, timeout=settings.index_wait_s)
            pending = self.indexer.pending_chunks(self.session_id)
            # The messages wholly in the cache (a window holds about 4 characters a token).
            tail = self.transcript.tail(self.session_id, 4 * self.config.cache.window_tokens)
            window = [
                m
                for m in tail
                if m.role not in CONTEXT_ROLES
                and m.message_id != exclude
                and resident.get(m.message_id, (1, 0))[0] == 0
            ]
        recent = [m.content for m in window[-settings.context_messages :]] if settings.context_messages else []
        drafts = self.transcript.drafts_of(self.session_id, text) if settings.enabled and settings.top_k else set()
        return self.recall_policy.recall(
            self.session_id,
            text,
            recent,
            resident,
            pending,
            now=now,
            neighbours=self.transcript.neighbours,
            window=window,
            speakers=self._speaker_names(),
            skip=drafts,
        )

    def _speaker_names(self) -> set[str]:
        """The participants' names: read from the transcript once, then kept up to date as messages arrive."""
        if self._speakers is None:
            self._speakers = self.transcript.speaker_names(self.session_id)
        return self._speakers

    def _note_speaker(self, name: str | None) -> None:
        if name and self._speakers is not None:
            self._speakers.add(name.strip())

    def chat(self, text: str, **generation) -> str:
        """Answer a user message and return the whole reply text."""
        return self.stream(text, **generation).result().text

    def stop(self) -> None:
        """End the reply being streamed after its current token (a stop button; safe from any thread).

        The partial reply is kept, in the cache and in the transcript alike,
        with ``stop_reason`` "interrupted". A reply that starts later is not affected.
        """
        self._stop.set()

    def stream_reply(
        self, *, tools=None, tool_choice=None, response_format=None, parallel_tool_calls: bool = True, **generation
    ) -> Reply:
        """Answer the messages added so far, whatever the last one's role (no recall: there is no new query).

        After a tool's result (``add_message("tool", ...)``) this is the reply that uses it.
        ``tools``, ``tool_choice``, ``response_format`` and ``parallel_tool_calls`` are as in :meth:`stream`.
        """
        plan = self._plan(tools, tool_choice, response_format, parallel_tool_calls)
        if plan.choice.mode == "auto":
            said = [m for m in self.transcript.tail(self.session_id, 4096) if m.role not in CONTEXT_ROLES]
            plan = self._routed(plan, said[-1].content if said and said[-1].role == "user" else None)
        with self._lock:
            self._ready()
            self._start()
            return self._answer_without_message(generation, plan=plan)

    def _answer_without_message(
        self, generation: dict, sync: SyncResult | None = None, plan: TurnPlan | None = None
    ) -> Reply:
        plan = plan or TurnPlan()
        self._offer_tools(plan)
        with self.resources.using_model():
            reply = self.lm.stream_reply(constraint=plan.make_constraint(), **generation)
        return self._open(Reply(self, reply, self.turn, sync=sync, plan=plan))

    def undo(self) -> str | None:
        """Take back the last exchange: the last user message and everything after it.

        Transcript rows, the injected memory block, their eviction log and any
        memories archived from them are deleted (an explicit undo is one of
        the two ways text is deleted), and the cache is rebuilt from what
        remains, archiving whatever the rebuilt cache does not hold.
        Returns the user message taken back (``None`` if there was none).
        """
        with self._lock:
            self._ready()
            stored = self.transcript.messages(self.session_id)
            last_user = next((m for m in reversed(stored) if m.role == "user"), None)
            if last_user is None:
                return None
            removed = {m.message_id for m in stored if m.seq >= last_user.seq}
            with self.indexer.paused():
                self.transcript.truncate_after(self.session_id, last_user.seq - 1)
                try:
                    for memory in self.archive.list(self.session_id):
                        if memory.message_id in removed:
                            self.archive.forget(self.session_id, memory.chunk_id)
                except ArchiveUnavailable:
                    logger.warning("undo: the archive is unavailable; chunks of the undone messages stay in it")
                    raise
            self._rebuild()
            logger.info("session %s: took back the exchange from turn %d", self.session_id, last_user.turn)
            return last_user.content

    def regenerate(self, **generation) -> Reply:
        """Answer the last user message again: :meth:`undo` it, then :meth:`stream` it anew (recall included)."""
        with self._lock:
            text = self.undo()
            if text is None:
                raise MessageError("nothing to regenerate: the session has no user message")
            return self.stream(text, **generation)

    def _title_from(self, text: str) -> None:
        """A session without a title is named after its first user message (for session lists)."""
        if self._titled:
            return
        self.transcript.rename_session(self.session_id, title_of(text))
        self._titled = True

    # -- whole message lists (chat frameworks) ---------------------------
    def history(self) -> list[HistoryMessage]:
        """The conversation this session holds, oldest first; memory blocks and superseded messages left out."""
        return [
            HistoryMessage(m.role, m.content)
            for m in self.transcript.messages(self.session_id)
            if m.role not in CONTEXT_ROLES
        ]

    def sync(self, messages) -> SyncResult:
        """Make the session's conversation ``messages`` (role/content pairs), re-feeding as little as possible.

        If ``messages`` start with everything the session holds, only the new
        ones are fed. If they diverge (an edited message, a shorter or a
        different history), the stored messages after the common prefix are
        *superseded*: kept in the transcript (and exports), archived so they
        can still be recalled, but no longer part of the conversation; the
        cache is rewound to the fork when it still holds it, else rebuilt.
        Nothing is deleted. See :mod:`streamrag.history`.
        """
        incoming = normalise(messages, self.lm.tool_format.syntax)
        with self._lock:
            self._ready()
            return self._sync(incoming)

    def _held(self, incoming: list[HistoryMessage]) -> tuple[list[StoredMessage], list[HistoryMessage]]:
        """The session's conversation as stored and as messages, to compare with a client's ``incoming`` list."""
        return held_conversation(self.transcript, self.session_id, self.config.system_prompt, incoming)

    def continued_by(self, messages) -> int:
        """How many leading messages of a client's list this conversation already has (0 if they only share
        a system prompt: two conversations with one prompt are still two)."""
        with self._lock:
            return conversation_overlap(
                self.transcript, self.session_id, self.config.system_prompt, messages, self.lm.tool_format.syntax
            )

    def _sync(self, incoming: list[HistoryMessage]) -> SyncResult:
        stored, held = self._held(incoming)
        syntax = self.lm.tool_format.syntax
        plan = plan_sync(held, incoming, syntax)
        before = self.lm.stats()
        if not plan.rebuild:
            if plan.new:
                self._start()
                self._feed(list(plan.new))
            after = self.lm.stats()
            return SyncResult(
                False, False, 0, len(plan.new), before.cache_tokens, after.prefilled_tokens - before.prefilled_tokens
            )

        common = shared_prefix(held, incoming, syntax)
        fork_seq = stored[common - 1].seq if common else self._kept_prompt_seq()
        superseded = self.transcript.supersede_after(self.session_id, fork_seq)
        rewound = bool(superseded) and self.lm.truncate_to(superseded[0].message_id)
        if rewound:
            self._archive_unfed(set(self.lm.ledger.resident_ranges()))
            self._after_rewind()
        else:
            self._rebuild()
        reused = self.lm.stats().cache_tokens if rewound else 0
        new = incoming[common:]
        if new:
            if new[0].role == "system" and common == 0:
                self._started = True  # the client brings its own system message
            self._start()
            self._feed(list(new))
        after = self.lm.stats()
        logger.info(
            "session %s: history diverged after %d message(s); %d superseded (kept and archived), cache %s",
            self.session_id,
            common,
            len(superseded),
            "rewound" if rewound else "rebuilt",
        )
        return SyncResult(
            forked=True,
            rebuilt=not rewound,
            superseded=len([m for m in superseded if m.role not in CONTEXT_ROLES]),
            fed=len(new),
            reused_tokens=reused,
            prefilled_tokens=max(after.prefilled_tokens - before.prefilled_tokens, 0),
        )

    def _kept_prompt_seq(self) -> int:
        """The seq a fork at the very start keeps: the configured prompt's, if the session opened with it."""
        first = self.transcript.messages(self.session_id, limit=1)
        prompt = self.config.system_prompt
        if prompt and first and first[0].role == "system" and first[0].content == prompt:
            return first[0].seq
        return 0

    def _after_rewind(self, messages: list[StoredMessage] | None = None) -> None:
        """Turn number as the active transcript (or ``messages`` read from it) now says."""
        if messages is None:
            messages = [m for m in self.transcript.messages(self.session_id) if m.role not in CONTEXT_ROLES]
        self.turn = max((m.turn for m in messages), default=0)
        self._started = bool(messages)
        self._newest = self._newest_row()

    def _newest_row(self) -> str | None:
        newest = self.transcript.tail(self.session_id, 0)
        return newest[-1].message_id if newest else None

    def release(self) -> bool:
        """Let the KV cache go now (memory), if the session is idle; its next use rebuilds it from the transcript.

        Returns False (and keeps everything) while another thread is in a step
        of this session or a reply is open. Nothing is lost: the transcript
        holds every message, and the rebuild archives whatever it does not re-feed.
        """
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if self._open_reply is not None:
                return False
            self.lm.reset()
            self._said.clear()
            self._tools_fed = None
            self._released = True
            return True
        finally:
            self._lock.release()

    def _ready(self) -> None:
        """Before a step of the conversation (lock held): end the open reply; bring a released cache back."""
        self._finish_open_reply()
        if self._released:
            self._rebuild()

    def catch_up(self) -> bool:
        """Rebuild the cache if another process changed this conversation's transcript since this object did.

        Two server replicas on one shared transcript (PostgreSQL) may each hold
        the session: the one that answers the next request first takes in what
        the other added (or took back), as a resume would. Returns whether it
        rebuilt. Cheap when nothing changed: one read of the newest row.
        """
        with self._lock:
            newest = self._newest_row()
            if newest == self._newest:
                return False
            self._finish_open_reply()
            logger.info("session %s: the transcript moved on elsewhere; rebuilding the cache from it", self.session_id)
            self._speakers = None
            self._rebuild()
            return True

    def stream_messages(
        self,
        messages,
        *,
        tools=None,
        tool_choice=None,
        response_format=None,
        parallel_tool_calls: bool = True,
        **generation,
    ) -> Reply:
        """Answer a whole message list: sync the session to it, then reply.

        A final user message is answered like :meth:`stream` (with recall);
        otherwise the reply follows the synced messages (:meth:`stream_reply`),
        e.g. after a tool's result. The :class:`Reply` carries what the sync
        did (``reply.sync``). Assistant messages may carry ``tool_calls``
        (OpenAI or LangChain shape); ``tools``, ``tool_choice`` and
        ``response_format`` are as in :meth:`stream`.
        """
        incoming = normalise(messages, self.lm.tool_format.syntax)
        if not incoming:
            raise MessageError("no messages to answer")
        for message in incoming:
            self.lm.check_message(message.role, message.content)
        plan = self._plan(tools, tool_choice, response_format, parallel_tool_calls)
        plan = self._routed(plan, incoming[-1].content if incoming[-1].role == "user" else None)
        with self._lock:
            self._ready()
            if incoming[-1].role == "user":
                sync = self._sync(incoming[:-1])
                self._start()
                return self._answer(incoming[-1], generation, sync, plan)
            sync = self._sync(incoming)
            return self._answer_without_message(generation, sync, plan)

    def recall(self, text: str, now: float | None = None) -> RecallResult:
        """What this session would recall for ``text`` asked at ``now`` (Unix time; default now).

        Nothing is injected or stored.
        """
        with self._lock:
            return self._recall(text, now=now)

    # -- inspection and forgetting --------------------------------------
    def stats(self) -> AssistantStats:
        try:
            archived = self.archive.count(self.session_id)
        except ArchiveUnavailable:
            archived = None
        return AssistantStats(
            cache=self.lm.stats(),
            archived_chunks=archived,
            pending_evictions=self.transcript.pending_count(self.session_id),
            transcript_messages=self.transcript.count(self.session_id),
            archive_unavailable=self.indexer.unavailable,
        )

    def wait_forgotten(self, timeout: float | None = 300.0) -> bool:
        """Wait until the archive's files have been rewritten after the forgets asked for so far."""
        return self.archive.wait_compacted(timeout=timeout)

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until everything this session evicted is indexed in the archive; False on timeout or outage."""
        return self.indexer.flush(self.session_id, timeout=timeout)

    def search(self, query: str, k: int = 5) -> list[Memory]:
        """The session's archive searched for ``query`` (text not yet indexed included, through BM25)."""
        return self.archive.search(self.session_id, query, k=k, pending=self.indexer.pending_chunks(self.session_id))

    def forget(self, chunk_id: str, keep_record: bool = False, wait: bool = False) -> Forgotten:
        """Forget a memory: the message it was cut from, everywhere (see :meth:`forget_message`)."""
        with self._lock:
            pending = self.indexer.pending_chunks(self.session_id)
            memory = forgetting.memory_for_chunk(self.archive, self.session_id, chunk_id, pending)
            return self.forget_message(memory.message_id, keep_record, wait)

    def forget_message(self, message_id: str, keep_record: bool = False, wait: bool = False) -> Forgotten:
        """Erase one message's text everywhere, this session's KV cache included (see :mod:`streamrag.forgetting`).

        Afterwards no search, recall or export returns it and no file under
        the data directory holds it. With ``keep_record`` the transcript row
        stays, marked forgotten. Other messages that repeated the text (a
        reply that quoted it) are not touched. Searches, recall, exports and
        the cache lose the text before this returns; the archive's files are
        rewritten in the background unless ``wait`` (:meth:`wait_forgotten`).
        """
        with self._lock:
            self._ready()
            with self.indexer.paused():
                forgotten = forgetting.forget_message(
                    self.transcript,
                    self.archive,
                    self.session_id,
                    message_id,
                    keep_record,
                    wait,
                    self.indexer.reindex,
                    rewrite=False,
                )
            # The cache still holds what the transcript just lost: the message, or a memory block quoting it.
            resident = any(m in self.lm.ledger for m in (message_id, *forgotten.memory_block_ids))
            self._said.pop(message_id, None)
            if resident:
                self._rebuild()  # logs what it does not re-feed, for the indexer
            else:
                self._after_rewind()  # the turn count and the last reply as the transcript now says
            # Index that now, before the files are rewritten: hnswlib fills unused bytes of what it writes
            # with this process's stale memory, which held the forgotten text. The rewrite runs in a fresh
            # process, so the files it leaves hold no such bytes (a write after it could: found by
            # test_keeping_the_record_keeps_only_the_transcript_row when the indexer ran after the rewrite).
            self.indexer.flush(self.session_id, timeout=30.0)  # forgetting is rare and takes seconds anyway
            seconds, ticket = forgetting.compact(self.archive, wait)
            return replace(forgotten, cache_rebuilt=resident, compact_seconds=seconds, compaction=ticket)

    def forget_session(self, wait: bool = False) -> Forgotten:
        """Delete this session everywhere: archive, eviction log, transcript and cache (and this handle).

        As with :meth:`forget_message`, no file under the data directory holds
        its text afterwards (once the background rewrite is done, unless ``wait``).
        """
        with self._lock:
            self._finish_open_reply()
            with self.indexer.paused():
                forgotten = forgetting.forget_session(self.transcript, self.archive, self.session_id, wait)
            with self.resources._assistants_lock:
                if self.resources._assistants.get(self.session_id) is self:
                    del self.resources._assistants[self.session_id]
            with self.resources.using_model():
                self.lm.reset()
            self._said.clear()
            self.turn = 0
            self._newest = None
            return replace(forgotten, cache_rebuilt=True)
