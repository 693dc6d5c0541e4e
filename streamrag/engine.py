"""Feed tokens, generate, stream: a chat whose KV cache lives as long as the conversation.

:class:`StreamingLM` owns one model, one :class:`~streamrag.cache.SinkCache`
and one :class:`~streamrag.ledger.Ledger`. Each new message is rendered on its
own with the model's chat template and prefilled on top of the existing cache,
so a turn costs only its new tokens. Before any forward pass that would
overflow ``sink_tokens + window_tokens``, the engine asks the ledger which
text is about to leave, hands those spans to the eviction subscribers (the
archive), and only when they all return drops the KV slots. A subscriber that
raises stops the eviction and the turn, with the cache unchanged.

The engine knows tokens, spans and messages by id, nothing more: which
conversation, turn or time a message belongs to is the session's business
(:mod:`streamrag.session`). A reply comes back as a :class:`Generation`, an
iterator of text pieces that carries its message id and its stats.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from streamrag.cache import SinkCache
from streamrag.config import GenerationSettings, StreamRAGConfig, set_dotted
from streamrag.detokenize import StopMatcher, StreamDecoder
from streamrag.ledger import EvictionSubscriber, Ledger, MessageRef
from streamrag.prompt import ChatFormat, RenderedMessage
from streamrag.rope import key_rotation_for
from streamrag.self_extend import SelfExtend, applied, self_extend_for
from streamrag.text import ROLES, MessageError, check_message
from streamrag.tools import ToolFormat

if TYPE_CHECKING:
    from streamrag.grammar import Constraint, GrammarCompiler

logger = logging.getLogger(__name__)

__all__ = ["ROLES", "CacheStats", "Generation", "MessageError", "Prefill", "StreamingLM", "TurnStats"]

# Flat keyword names accepted by StreamingLM.load() and Assistant.open(), mapped onto config fields.
FLAT_SETTINGS = {
    "sink_tokens": "cache.sink_tokens",
    "window_tokens": "cache.window_tokens",
    "evict_chunk": "cache.evict_chunk",
    "prefill_chunk": "cache.prefill_chunk",
    "position_mode": "cache.position_mode",
    "group_size": "cache.group_size",
    "neighbor_window": "cache.neighbor_window",
    "device": "model.device",
    "dtype": "model.dtype",
    "gguf_file": "model.gguf_file",
    "quantize": "model.quantize",
    "attn_implementation": "model.attn_implementation",
    "temperature": "generation.temperature",
    "top_p": "generation.top_p",
    "top_k": "generation.top_k",
    "repetition_penalty": "generation.repetition_penalty",
    "max_new_tokens": "generation.max_new_tokens",
    "seed": "generation.seed",
    "stop": "generation.stop",
    "data_dir": "data_dir",
    "system_prompt": "system_prompt",
    "chroma_url": "archive.chroma_url",
}


def config_from_settings(
    model: str | None = None, config: StreamRAGConfig | str | None = None, **settings
) -> StreamRAGConfig:
    """One config from a model spec, a base config (object or YAML path) and flat or dotted settings.

    ``settings`` are flat names such as ``window_tokens`` or ``device`` (see
    :data:`FLAT_SETTINGS`) or dotted config paths (``"recall.top_k"``); the
    one loader behind :meth:`StreamingLM.load` and ``Assistant.open``.
    """
    overrides = {FLAT_SETTINGS.get(k, k): v for k, v in settings.items()}
    if model is not None:
        overrides["model.spec"] = model
    if isinstance(config, StreamRAGConfig):
        merged = config.model_dump()
        for dotted, value in overrides.items():
            set_dotted(merged, dotted, value)
        return StreamRAGConfig.from_dict(merged)
    return StreamRAGConfig.load(config, overrides)


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of the cache and of the work done so far."""

    cache_tokens: int
    capacity: int
    sink_tokens: int
    window_tokens: int
    evicted_tokens: int
    evictions: int
    cache_bytes: int
    prefilled_tokens: int
    generated_tokens: int
    messages: int


@dataclass(frozen=True)
class Prefill:
    """What feeding one or more messages cost: tokens prefilled (template tokens included) and seconds."""

    message_ids: tuple[str, ...]
    tokens: int
    seconds: float

    @property
    def message_id(self) -> str:
        """The (last) message fed."""
        return self.message_ids[-1]


@dataclass
class TurnStats:
    """What one reply cost: tokens prefilled and generated, how fast, and why it stopped."""

    prefilled_tokens: int = 0
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    stop_reason: str = ""
    decode_steps: int = 0
    """Forward passes while decoding: fewer than ``generated_tokens`` when a grammar wrote text for the model."""

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0


class Generation(Iterator[str]):
    """A reply being generated: iterate for its text, piece by piece.

    ``message_id`` names the reply from the start; ``stats`` fill in as it
    runs and are final once iteration ends or :meth:`close` is called (a
    closed reply stays in the cache as it is, with ``stop_reason``
    "interrupted").
    """

    def __init__(
        self, message_id: str, pieces: Iterator[str], stats: TurnStats, on_unstarted_close: Callable[[], None]
    ):
        self.message_id = message_id
        self.stats = stats
        self._pieces = pieces
        self._text: list[str] = []
        self._started = False
        self._closed = False
        self._on_unstarted_close = on_unstarted_close

    def __iter__(self) -> Generation:
        return self

    def __next__(self) -> str:
        if self._closed:
            raise StopIteration
        self._started = True
        piece = next(self._pieces)
        self._text.append(piece)
        return piece

    def close(self) -> None:
        """End the reply here; what was generated stays in the cache. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._started:
            self._pieces.close()  # runs the generator's own clean-up
        else:
            self._on_unstarted_close()  # a generator never started skips its finally block

    @property
    def text(self) -> str:
        """The text yielded so far."""
        return "".join(self._text)

    @property
    def stop_reason(self) -> str:
        return self.stats.stop_reason


class StreamingLM:
    """A causal LM with an attention-sink cache that persists across turns.

    Most users start with :meth:`load`::

        lm = StreamingLM.load()                      # embedded SmolLM2-135M-Instruct
        lm = StreamingLM.load("Qwen/Qwen2.5-0.5B-Instruct", window_tokens=4092, device="cuda")
        for piece in lm.stream_chat("Hello!"):
            print(piece, end="")

    Not thread-safe: one caller at a time (the session serialises its own
    turns; a shared model is serialised by the session's resources lock).
    """

    def __init__(self, model, tokenizer, config: StreamRAGConfig | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or StreamRAGConfig()
        cache_settings = self.config.cache
        self.rotation = key_rotation_for(model, cache_settings.capacity)
        text_config = model.config.get_text_config(decoder=True)
        self.num_layers = text_config.num_hidden_layers
        self.max_position_embeddings = getattr(text_config, "max_position_embeddings", None)
        # Self-Extend (optional) lets the cache outgrow the trained length; checked here, where the model is known.
        self.self_extend: SelfExtend | None = None
        if cache_settings.position_mode == "self_extend":
            self.self_extend = self_extend_for(
                model,
                self.rotation,
                cache_settings.capacity,
                cache_settings.group_size,
                cache_settings.neighbor_window,
            )
        elif self.max_position_embeddings and cache_settings.capacity > self.max_position_embeddings:
            logger.warning(
                "cache holds %d tokens but the model was trained on %d positions; expect degraded output",
                cache_settings.capacity,
                self.max_position_embeddings,
            )
        self.format = ChatFormat(tokenizer)
        self.eos_token_ids = _eos_token_ids(model, tokenizer)
        self._subscribers: list[EvictionSubscriber] = []
        self._tool_format: ToolFormat | None = None
        self._grammar: GrammarCompiler | None = None
        self.reset()

    # -- construction ---------------------------------------------------
    @classmethod
    def load(cls, model: str | None = None, config: StreamRAGConfig | str | None = None, **settings) -> StreamingLM:
        """Load a model (hub id, folder, .gguf, or None for the embedded default) with a sink cache.

        ``settings`` are flat names such as ``sink_tokens``, ``window_tokens``,
        ``device``, ``dtype``, ``temperature``; or dotted config paths.
        """
        from streamrag.models import load_model

        config = config_from_settings(model, config, **settings)
        hf_model, tokenizer, _ = load_model(config.model, config.data_dir)
        return cls(hf_model, tokenizer, config)

    # -- state ----------------------------------------------------------
    def reset(self) -> None:
        """Forget the conversation: empty cache and ledger (subscribers and the work counters stay)."""
        settings = self.config.cache
        self.cache = SinkCache(self.num_layers, settings.sink_tokens, settings.window_tokens, self.rotation)
        self.ledger = Ledger()
        # A reply's closing template tokens, fed together with the next message's tokens.
        self._pending: tuple[str, RenderedMessage] | None = None
        self._messages = 0
        # Tokens prefilled and generated over the engine's life: a rebuild's re-feed is work too.
        self._prefilled_total = getattr(self, "_prefilled_total", 0)
        self._generated_total = getattr(self, "_generated_total", 0)
        self._last_logits: torch.Tensor | None = None
        self._scoring_ref: MessageRef | None = None

    def on_evict(self, subscriber: EvictionSubscriber) -> Callable[[], None]:
        """Call ``subscriber(spans)`` with the text of every eviction, before the KV slots are dropped.

        Returns a function that unsubscribes it again.
        """
        self._subscribers.append(subscriber)
        return lambda: self._subscribers.remove(subscriber)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def stats(self) -> CacheStats:
        return CacheStats(
            cache_tokens=self.cache.get_seq_length(),
            capacity=self.cache.capacity,
            sink_tokens=self.cache.sink_tokens,
            window_tokens=self.cache.window_tokens,
            evicted_tokens=self.cache.evicted_tokens,
            evictions=self.cache.evictions,
            cache_bytes=self.cache.nbytes(),
            prefilled_tokens=self._prefilled_total,
            generated_tokens=self._generated_total,
            messages=self._messages,
        )

    # -- conversation ---------------------------------------------------
    def add_message(
        self,
        role: str,
        content: str,
        *,
        message_id: str | None = None,
        archive: bool = True,
        generation_prompt: bool = False,
    ) -> Prefill:
        """Append one message to the conversation and prefill its tokens now.

        ``archive=False`` marks text that must never be archived when evicted
        (recalled memories). ``generation_prompt=True`` also feeds the tokens
        that open the assistant's reply.
        """
        self.check_message(role, content)
        ref = MessageRef(message_id or uuid.uuid4().hex, role)
        rendered = self.format.message(role, content, first=self._messages == 0, generation_prompt=generation_prompt)
        return self._prefill([(ref, content, rendered)], archive=archive)

    def add_messages(self, messages: Sequence[tuple[str, str] | tuple[str, str, str | None]]) -> Prefill:
        """Append many messages at once: ``(role, content)`` or ``(role, content, message_id)``.

        They are packed into prefill chunks of ``cache.prefill_chunk`` tokens,
        so ingesting a history costs one forward pass per chunk rather than
        one per message. All are checked before any is fed.
        """
        for message in messages:
            self.check_message(message[0], message[1])
        parts = []
        for i, message in enumerate(messages):
            role, content = message[0], message[1]
            message_id = message[2] if len(message) > 2 else None
            ref = MessageRef(message_id or uuid.uuid4().hex, role)
            first = self._messages == 0 and i == 0
            parts.append((ref, content, self.format.message(role, content, first=first)))
        return self._prefill(parts)

    def stream_chat(
        self, text: str, *, message_id: str | None = None, constraint: Constraint | None = None, **generation
    ) -> Generation:
        """Add a user message (prefilled now) and return its reply as a :class:`Generation` to iterate.

        ``constraint`` (from :meth:`grammar`) masks every decoding step: a JSON
        schema, or tool calls.
        """
        prefill = self.add_message("user", text, message_id=message_id, generation_prompt=True)
        return self._generation(generation, prefill, close_turn=True, constraint=constraint)

    def chat(self, text: str, **generation) -> str:
        """Add a user message and return the whole reply."""
        return "".join(self.stream_chat(text, **generation))

    def stream_reply(self, *, constraint: Constraint | None = None, **generation) -> Generation:
        """A reply to the messages added so far (opens the assistant turn itself), as a :class:`Generation`."""
        prompt = self.format.control_ids(self.format.generation_prompt)
        ref = MessageRef(uuid.uuid4().hex, "assistant")
        prefill = self._prefill([(ref, "", RenderedMessage(prompt, [(0, 0)] * len(prompt)))], keep_open=True)
        return self._generation(generation, prefill, close_turn=True, ref=ref, constraint=constraint)

    # -- tools and grammars ---------------------------------------------
    @property
    def tool_format(self) -> ToolFormat:
        """How this model reads tools and spells its calls (its own template's way, or the generic one)."""
        if self._tool_format is None:
            self._tool_format = ToolFormat.for_tokenizer(self.tokenizer)
        return self._tool_format

    def grammar(self) -> GrammarCompiler:
        """The grammar compiler for this model's tokenizer (built on first use, a fraction of a second)."""
        if self._grammar is None:
            vocab_size = self.model.config.get_text_config(decoder=True).vocab_size
            from streamrag.grammar import compiler_for

            self._grammar = compiler_for(self.tokenizer, vocab_size, sorted(self.eos_token_ids))
        return self._grammar

    def stream_completion(self, prompt: str, **generation) -> Generation:
        """Plain continuation of ``prompt`` (no chat template), as a :class:`Generation`."""
        self.check_message("user", prompt)
        ref = MessageRef(uuid.uuid4().hex, "user")
        rendered = self.format.content(prompt)
        if self._messages == 0:
            head = self.format.with_bos([])
            rendered = RenderedMessage(head + rendered.token_ids, [(0, 0)] * len(head) + rendered.offsets)
        prefill = self._prefill([(ref, prompt, rendered)])
        return self._generation(generation, prefill, close_turn=False)

    def complete(self, prompt: str, **generation) -> str:
        return "".join(self.stream_completion(prompt, **generation))

    def truncate_to(self, message_id: str) -> bool:
        """Drop ``message_id`` and everything fed after it, if its first token is still in the cache.

        Cheap rewinding for a history that changed after that message (an
        edited last message): nothing before it is prefilled again. Returns
        False, changing nothing, when the message is not wholly resident; the
        caller then rebuilds. Nothing is reported to eviction subscribers: the
        dropped text was never evicted, and the caller decides what to keep.
        """
        position = self.ledger.first_slot(message_id)
        if position is None or position < self.cache.sink_tokens:
            return False
        pending, self._pending = self._pending, None
        self._truncate(position, rollback=True)
        # Closing tokens still owed by a reply that stays are still owed; those of a dropped reply are not.
        if pending is not None and pending[0] in self.ledger:
            self._pending = pending
        else:
            last = self.ledger.slots[-1].message_id if self.ledger.slots else None
            if last is not None and self.ledger.message_ref(last).role == "assistant":
                suffix = self.format.assistant_suffix()
                if self.ledger.token_ids(-len(suffix)) != suffix:
                    end = max((s.char_end for s in self.ledger.slots if s.message_id == last), default=0)
                    self._pending = (last, RenderedMessage(suffix, [(end, end)] * len(suffix)))
        self._last_logits = None
        return True

    # -- internals: messages --------------------------------------------
    def check_message(self, role: str, content: str) -> None:
        """:class:`MessageError` if the message cannot be fed (see :func:`streamrag.text.check_message`)."""
        check_message(role, content, self.config.max_message_chars, ROLES)
        self._check_tokens(content)

    def _check_tokens(self, content: str) -> None:
        """Refuse a message over ``max_message_tokens``, fast even for a huge one.

        Only a prefix of ``8 * limit`` characters is tokenized first: when it
        alone is over the limit (a megabyte of emoji is), the answer is known
        without tokenizing the rest.
        """
        limit = self.config.max_message_tokens
        probe = content[: 8 * limit]
        count = len(self.tokenizer(probe, add_special_tokens=False)["input_ids"])
        if count <= limit and len(probe) < len(content):
            count = len(self.tokenizer(content, add_special_tokens=False)["input_ids"])
        if count > limit:
            counted = f"{count:,} tokens" if len(probe) == len(content) else f"over {count:,} tokens"
            raise MessageError(
                f"message has {counted}, more than max_message_tokens ({limit:,}); split it or raise the limit"
            )

    def _generation(
        self,
        overrides: dict,
        prefill: Prefill,
        close_turn: bool,
        ref: MessageRef | None = None,
        constraint: Constraint | None = None,
    ) -> Generation:
        ref = ref or self._open_reply()
        stats = TurnStats(prefilled_tokens=prefill.tokens, prefill_seconds=prefill.seconds)
        pieces = self._generate(ref, overrides, stats, close_turn, constraint)
        return Generation(ref.message_id, pieces, stats, lambda: self._close_reply(ref, stats, 0, close_turn))

    def _prefill(
        self, messages: list[tuple[MessageRef, str, RenderedMessage]], archive: bool = True, keep_open: bool = False
    ) -> Prefill:
        """Feed new messages, together with any pending closing tokens, as one prefill.

        On failure (an eviction subscriber raising, an interrupted forward) the
        messages are withdrawn again: nothing of them stays in ledger or cache
        unless an eviction already succeeded mid-prefill.
        """
        started = time.perf_counter()
        for ref, content, _ in messages:
            self.ledger.open_message(ref, archive=archive)
            self.ledger.extend_text(ref.message_id, content)
        pending, self._pending = self._pending, None
        parts = ([pending] if pending else []) + [(ref.message_id, rendered) for ref, _, rendered in messages]
        try:
            self._feed(parts)
        except BaseException:
            for ref, _, _ in messages:
                if not self.ledger.withdraw_message(ref.message_id):
                    logger.error("message %s was partly fed before an error; it stays in the cache", ref.message_id)
            if pending and pending[0] in self.ledger:
                self._pending = pending
            raise
        if pending:
            self.ledger.close_message(pending[0])
        for i, (ref, _, _) in enumerate(messages):
            if not (keep_open and i == len(messages) - 1):
                self.ledger.close_message(ref.message_id)
        self._messages += len(messages)
        fed = sum(len(r) for _, r in parts)
        return Prefill(tuple(ref.message_id for ref, _, _ in messages), fed, time.perf_counter() - started)

    def _open_reply(self) -> MessageRef:
        ref = MessageRef(uuid.uuid4().hex, "assistant")
        self.ledger.open_message(ref)
        self._messages += 1
        return ref

    # -- internals: tokens ----------------------------------------------
    def _make_room(self, incoming: int) -> None:
        """Evict enough to fit ``incoming`` tokens; subscribers see the text first."""
        count = self.cache.room_needed(incoming, self.config.cache.evict_chunk)
        if count == 0:
            return
        start = self.cache.sink_tokens
        spans = self.ledger.spans(start, count)
        for subscriber in self._subscribers:
            subscriber(spans)  # raising here leaves cache and ledger untouched
        with torch.inference_mode():
            self.cache.evict(count)
        self.ledger.drop(start, count)
        logger.debug("evicted %d tokens in %d spans", count, len(spans))

    @torch.inference_mode()
    def _forward(self, token_ids: list[int], all_logits: bool = False) -> torch.Tensor:
        """One forward pass over tokens already recorded in the ledger; returns fp32 logits."""
        input_ids = torch.tensor([token_ids], dtype=torch.long, device=self.device)
        length = self.cache.get_seq_length()
        try:
            with self._attention():
                out = self.model(
                    input_ids=input_ids,
                    past_key_values=self.cache,
                    use_cache=True,
                    logits_to_keep=0 if all_logits else 1,
                )
        except BaseException:
            # Undo a partial update (some layers appended, others not) so cache and ledger agree again.
            self._truncate(length)
            raise
        return out.logits[0].float()

    def _attention(self) -> contextlib.AbstractContextManager:
        """Self-Extend attention for this engine's forward passes only; the model's own otherwise."""
        if self.self_extend is None:
            return contextlib.nullcontext()
        return applied(self.model, self.self_extend)

    def _truncate(self, length: int, rollback: bool = False) -> None:
        for layer in self.cache.layers:
            if layer.is_initialized and layer.keys is not None and layer.keys.shape[-2] > length:
                layer.keys = layer.keys[..., :length, :]
                layer.values = layer.values[..., :length, :]
        if rollback:
            self.ledger.rollback(length)
        else:
            self.ledger.truncate(length)

    def _feed(self, parts: list[tuple[str, RenderedMessage]]) -> None:
        """Prefill tokens of one or more messages in chunks, evicting between chunks as needed.

        If a chunk fails before any eviction happened in this call, everything
        this call added is removed again, so cache and ledger stay in lockstep.
        """
        settings = self.config.cache
        chunk = min(settings.prefill_chunk, settings.window_tokens)
        tokens = [
            (message_id, token_id, span)
            for message_id, rendered in parts
            for token_id, span in zip(rendered.token_ids, rendered.offsets)
        ]
        start_length, start_evictions = self.cache.get_seq_length(), self.cache.evictions
        try:
            for start in range(0, len(tokens), chunk):
                piece = tokens[start : start + chunk]
                self._make_room(len(piece))
                for message_id, token_id, (a, b) in piece:
                    self.ledger.append(message_id, token_id, a, b)
                self._last_logits = self._forward([token_id for _, token_id, _ in piece])[-1]
                self._prefilled_total += len(piece)
        except BaseException:
            if self.cache.evictions == start_evictions:
                self._truncate(start_length)
            raise

    def feed_for_scoring(self, token_ids: list[int]) -> torch.Tensor:
        """Feed raw tokens and return logits for every position (perplexity benchmarks).

        Tokens go through the same eviction path as chat messages, under one
        synthetic message, so what is measured is what chat uses. Scoring and
        chat do not mix: use an engine (or a :meth:`reset`) dedicated to it.
        """
        if self._messages:
            raise RuntimeError("feed_for_scoring needs an engine without chat messages; call reset() first")
        if self._scoring_ref is None:
            self._scoring_ref = MessageRef("scoring", "user")
            self.ledger.open_message(self._scoring_ref, archive=False)
        self._make_room(len(token_ids))
        for token_id in token_ids:
            self.ledger.append(self._scoring_ref.message_id, token_id, 0, 0)
        logits = self._forward(token_ids, all_logits=True)
        self._last_logits = logits[-1]
        self._prefilled_total += len(token_ids)
        return logits

    # -- internals: decoding --------------------------------------------
    def _generation_settings(self, overrides: dict) -> GenerationSettings:
        if not overrides:
            return self.config.generation
        merged = self.config.generation.model_dump() | {k: v for k, v in overrides.items() if v is not None}
        return GenerationSettings.model_validate(merged)

    def _generate(
        self, ref: MessageRef, overrides: dict, stats: TurnStats, close_turn: bool, constraint: Constraint | None
    ) -> Iterator[str]:
        settings = self._generation_settings(overrides)
        processors = _processors(settings)
        generator = None
        if settings.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(settings.seed)
        decoder = StreamDecoder(self.tokenizer)
        stops = StopMatcher(settings.stop)
        produced = 0  # characters of generated text so far
        started = time.perf_counter()
        try:
            logits = self._last_logits
            if logits is None:
                raise RuntimeError("nothing to continue from: feed a message before generating")
            written, own = "", []  # the reply's last characters (enough to spot a call's opening) and tokens
            structured = False  # inside JSON or a call (then the repetition penalty looks at the reply alone)
            while stats.generated_tokens < settings.max_new_tokens:
                structured = structured or (constraint is not None and constraint.structured(written))
                token = self._sample(logits, processors, settings, generator, constraint, own if structured else None)
                if token in self.eos_token_ids and (not settings.ignore_eos or constraint is not None):
                    stats.stop_reason = "eos"
                    break
                step = [token]
                if constraint is not None:
                    constraint.accept(token)
                    # What the grammar alone decides next goes in with this token: one forward for all of them.
                    room = settings.max_new_tokens - stats.generated_tokens - 1
                    limit = min(room, self.config.cache.window_tokens // 4)
                    step += constraint.forced_tokens(self.tokenizer, limit)
                self._make_room(len(step))
                visible = ""
                for token in step:
                    piece = decoder.step(token)
                    self.ledger.extend_text(ref.message_id, piece)
                    self.ledger.append(ref.message_id, token, produced, produced + len(piece))
                    produced += len(piece)
                    written = written[-_CALL_OPENING_CHARS:] + piece
                    own.append(token)
                    visible += stops.push(piece)
                logits = self._forward(step)[-1]
                self._last_logits = logits
                stats.generated_tokens += len(step)
                stats.decode_steps += 1
                self._generated_total += len(step)
                stats.decode_seconds = time.perf_counter() - started
                if visible:
                    yield visible
                if stops.stopped:
                    stats.stop_reason = "stop"
                    break
            else:
                stats.stop_reason = "length"
            tail = decoder.flush()
            if tail:
                self.ledger.extend_text(ref.message_id, tail)
            visible = stops.push(tail) + stops.flush()
            if visible:
                yield visible
        finally:
            # Runs also when the caller stops iterating (a stop button): the reply so far stays in the cache.
            stats.decode_seconds = time.perf_counter() - started
            self._close_reply(ref, stats, produced, close_turn)

    def _close_reply(self, ref: MessageRef, stats: TurnStats, produced: int, close_turn: bool) -> None:
        """A reply ended (finished, stopped or abandoned): its closing tokens go with the next message."""
        if not stats.stop_reason:
            stats.stop_reason = "interrupted"
        if close_turn:
            suffix = self.format.assistant_suffix()
            self._pending = (ref.message_id, RenderedMessage(suffix, [(produced, produced)] * len(suffix)))
        else:
            self.ledger.close_message(ref.message_id)

    def _sample(
        self,
        logits: torch.Tensor,
        processors,
        settings: GenerationSettings,
        generator,
        constraint=None,
        own_tokens: list[int] | None = None,
    ) -> int:
        """The next token. The repetition penalty looks at the last ``repetition_window`` cached tokens, or
        at ``own_tokens`` alone (the reply's, inside JSON or a call): arguments copy values from the
        conversation, and at 1.1 over the window ``magic_function(3)`` became ``{"input": 1234567890}``
        (the "3" was in the question), while without any penalty a JSON string looped ("A cat is a cat,
        right? A cat is a cat, right? ...")."""
        scores = logits.unsqueeze(0)
        if constraint is not None:
            # Masked first, so top-k/top-p choose among tokens the grammar allows.
            scores = constraint.mask(scores.clone())
        if settings.repetition_penalty != 1.0 and settings.repetition_window > 0:
            window = settings.repetition_window
            recent = self.ledger.token_ids(-window) if own_tokens is None else own_tokens[-window:]
            if recent:
                history = torch.tensor([recent], dtype=torch.long, device=scores.device)
                scores = RepetitionPenaltyLogitsProcessor(settings.repetition_penalty)(history, scores)
        if settings.temperature == 0:
            return int(scores.argmax(dim=-1))
        scores = processors(None, scores)
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=generator))


# How much of a reply's tail is kept to notice a structured part opening (a tool-call tag is ~12 characters).
_CALL_OPENING_CHARS = 256


def _processors(settings: GenerationSettings) -> LogitsProcessorList:
    processors = LogitsProcessorList()
    if settings.temperature > 0 and settings.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(settings.temperature))
    if settings.top_k > 0:
        processors.append(TopKLogitsWarper(settings.top_k))
    if settings.top_p < 1.0:
        processors.append(TopPLogitsWarper(settings.top_p))
    return processors


def _eos_token_ids(model, tokenizer) -> set[int]:
    """End-of-turn ids from the generation config, model config and tokenizer together."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
