"""Does evicted text come back? Fact recall on long conversations, and what the archive costs.

Several long synthetic conversations (:mod:`streamrag.bench.conversations`)
are ingested message by message, without generation, into four systems that
share one loaded model and one cache size. Each planted fact is asked about
once it has left the cache (checked in the ledger, and in the archive for
streamrag), with greedy decoding:

``streamrag``
    an :class:`~streamrag.session.Assistant`: sink cache, archive and recall.
    All sessions share one archive, and their messages are interleaved, so
    every question is asked while other sessions hold facts of the same kind.
``streaming_llm``
    a plain :class:`~streamrag.engine.StreamingLM` with the same sink cache
    and no archive: what StreamingLLM alone remembers.
``window``
    a sliding window without sinks (``sink_tokens=0``, same capacity).
``ceiling``
    a fresh engine fed only the fact and its acknowledgement, then the
    question: how well the model answers when the fact is in context.

``hit_at_k`` is retrieval: the fact's own message came back in the memory
block (at most ``top_k`` memories). Only streamrag can retrieve; the others
report 0.0, and the ceiling 1.0 because the fact is in its context by
construction. ``answer_accuracy`` is the share of replies that state the
fact's key (:func:`~streamrag.bench.conversations.answer_is_correct`).

The costs part bulk-loads synthetic chunks into a fresh archive through
:meth:`Archive.write` and times it, then times :meth:`Archive.search` at
each size: warm (BM25 index up to date), the first query of a freshly opened
archive (index loaded from Chroma), and the first query after a write (the
BM25 index is rebuilt lazily after every write, which a live conversation
pays on the turn after each eviction).
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamrag.bench.common import host_info, load_average, new_figure, progress_bar, rounded, save_figure, write_json
from streamrag.bench.conversations import (
    KINDS,
    TEMPLATES,
    Probe,
    SessionScript,
    answer_is_correct,
    build_conversations,
    chat_token_counter,
    filler_exchange,
)
from streamrag.config import ArchiveSettings, StreamRAGConfig, set_dotted

logger = logging.getLogger(__name__)

SYSTEMS = ("streamrag", "streaming_llm", "window", "ceiling")
SYSTEM_LABELS = {
    "streamrag": "streamrag (sinks + window + archive recall)",
    "streaming_llm": "StreamingLLM (sinks + window, no archive)",
    "window": "sliding window, no sinks",
    "ceiling": "ceiling (fact just before the question)",
}
SYSTEM_COLORS = {"streamrag": "tab:blue", "streaming_llm": "tab:orange", "window": "tab:red", "ceiling": "tab:gray"}
DEFAULT_SIZES = (1000, 10000)
NOTES = {
    "hit_at_k": (
        "retrieval: the fact's own message is among the memories injected before the question (at most top_k). "
        "Only streamrag retrieves; streaming_llm and window report 0.0 (nothing can be retrieved), "
        "ceiling reports 1.0 (the fact is in its context by construction)."
    ),
    "answer_accuracy": (
        "share of greedy replies that state the fact's key (names and preferences as whole words, dates as "
        "day+month in either order, codes character by character); keys never occur in questions or filler."
    ),
    "write_ms_per_chunk": (
        "Archive.write time (chunking + embedding + Chroma upsert) per chunk, averaged over loading the archive "
        "from empty to that size in batches; embedding dominates."
    ),
    "write_ms_per_chunk_conversation": (
        "streamrag's own Archive.write time during the conversations, per chunk upserted: a chunk is written as soon "
        "as any of its text is evicted and rewritten (same id) as more of its message leaves, so chunks_written "
        "exceeds archived_chunks; every write embeds only a few short chunks, so per-call overhead shows."
    ),
    "query_ms": (
        "Archive.search (query embedding + filtered dense search + BM25 + RRF) with the BM25 index up to date; "
        "see costs.first_query_ms and costs.query_after_write_ms for the index (re)build cost."
    ),
}


def bench_config(
    base: StreamRAGConfig,
    data_dir: Path,
    *,
    sink_tokens: int,
    window_tokens: int,
    evict_chunk: int,
    max_new_tokens: int,
    top_k: int,
    budget_fraction: float,
    chunk_chars: int,
    chunk_overlap_chars: int,
) -> StreamRAGConfig:
    """``base`` (model, embedder, recall thresholds) with the benchmark's cache, greedy decoding, a private archive."""
    data = base.model_dump()
    overrides = {
        "data_dir": str(data_dir),
        "system_prompt": None,
        "cache.sink_tokens": sink_tokens,
        "cache.window_tokens": window_tokens,
        "cache.evict_chunk": evict_chunk,
        "generation.temperature": 0.0,
        "generation.max_new_tokens": max_new_tokens,
        "generation.repetition_penalty": 1.0,  # a penalty on context tokens would punish copying the fact
        "generation.ignore_eos": False,
        "generation.stop": [],
        "archive.chroma_url": None,  # never write benchmark data into a user's Chroma server
        "archive.collection": "recall_benchmark",
        "archive.chunk_chars": chunk_chars,
        "archive.chunk_overlap_chars": chunk_overlap_chars,
        "archive.reranker": None,
        "recall.enabled": True,
        "recall.top_k": top_k,
        "recall.budget_fraction": budget_fraction,
    }
    for dotted, value in overrides.items():
        set_dotted(data, dotted, value)
    return StreamRAGConfig.from_dict(data)


def check_settings(sessions: int, facts_per_kind: int, windows: float) -> None:
    """Raise ValueError for conversations the generator cannot build (before any model is loaded)."""
    from streamrag.bench.conversations import MAX_FACTS_PER_KIND, MAX_SESSIONS, MIN_WINDOWS

    if not 1 <= sessions <= MAX_SESSIONS:
        raise ValueError(f"sessions must be between 1 and {MAX_SESSIONS}, not {sessions}")
    if not 1 <= facts_per_kind <= MAX_FACTS_PER_KIND:
        raise ValueError(f"facts per kind must be between 1 and {MAX_FACTS_PER_KIND}, not {facts_per_kind}")
    if windows < MIN_WINDOWS:
        raise ValueError(f"conversations need at least {MIN_WINDOWS} windows, not {windows}")


def parse_sizes(text: str) -> list[int]:
    """``"1k,10k,100k"`` -> ``[1000, 10000, 100000]``; ``"none"`` or ``""`` -> ``[]`` (skip the costs)."""
    from streamrag.bench.latency import parse_lengths

    if text.strip().lower() in {"", "none", "0"}:
        return []
    return parse_lengths(text)


# -- the conversations ----------------------------------------------------------


@dataclass
class Outcome:
    """What one system did with one probe."""

    reply: str
    correct: bool
    evicted: bool | None = None  # the fact had left the cache when the question came (None: ceiling)
    archived: bool | None = None
    hit: bool = False
    recalled: int = 0
    leaked: bool = False  # a memory of another session came back, or another session's key was in the block


@dataclass
class SystemRun:
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    seconds: float = 0.0
    sessions: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


class _EngineChat:
    """A plain StreamingLM fed the script (streaming_llm and window)."""

    def __init__(self, lm):
        self.lm = lm
        self.fact_ids: dict[str, str] = {}

    def add(self, role: str, text: str, probe: str | None) -> None:
        message_id = uuid.uuid4().hex
        if probe:
            self.fact_ids[probe] = message_id
        self.lm.add_message(role, text, message_id=message_id)

    def ask(self, probe: Probe) -> Outcome:
        evicted = self.fact_ids[probe.probe_id] not in self.lm.ledger.resident_ranges()
        reply = self.lm.chat(probe.question)
        return Outcome(reply=reply, correct=answer_is_correct(probe, reply), evicted=evicted)

    def stats(self) -> dict[str, Any]:
        stats = self.lm.stats()
        return {
            "prefilled_tokens": stats.prefilled_tokens,
            "generated_tokens": stats.generated_tokens,
            "evicted_tokens": stats.evicted_tokens,
            "capacity": stats.capacity,
            "windows": round(stats.prefilled_tokens / stats.capacity, 2),
        }


class _AssistantChat(_EngineChat):
    """The full streamrag Assistant: evictions archived, memories recalled before each question."""

    def __init__(self, assistant, foreign_keys: list[str], recall_seconds: list[float]):
        super().__init__(assistant.lm)
        self.assistant = assistant
        self.foreign_keys = [key.lower() for key in foreign_keys]
        policy = assistant.recall_policy
        recall = policy.recall

        def timed_recall(*args, **kwargs):
            started = time.perf_counter()
            try:
                return recall(*args, **kwargs)
            finally:
                recall_seconds.append(time.perf_counter() - started)

        policy.recall = timed_recall  # instrumentation of this benchmark's own instance only

    def add(self, role: str, text: str, probe: str | None) -> None:
        message_id = self.assistant.add_message(role, text)
        if probe:
            self.fact_ids[probe] = message_id

    def ask(self, probe: Probe) -> Outcome:
        assistant = self.assistant
        fact_id = self.fact_ids[probe.probe_id]
        evicted = fact_id not in self.lm.ledger.resident_ranges()
        key = probe.key.lower()
        assistant.flush(timeout=60)  # evictions are indexed in the background; recall would wait for them too
        archived = any(
            m.message_id == fact_id and key in m.text.lower() for m in assistant.archive.list(assistant.session_id)
        )
        turn = assistant.stream(probe.question).result()
        reply, recall = turn.text, turn.recall
        memories = recall.memories if recall else []
        block = (recall.block if recall else "").lower()
        hit = any(m.message_id == fact_id and key in m.text.lower() for m in memories)
        leaked = any(m.session_id != assistant.session_id for m in memories) or any(
            other in block for other in self.foreign_keys
        )
        return Outcome(
            reply=reply,
            correct=answer_is_correct(probe, reply),
            evicted=evicted,
            archived=archived,
            hit=hit,
            recalled=len(memories),
            leaked=leaked,
        )


def _play(
    scripts: list[SessionScript],
    chats: list[_EngineChat],
    system: str,
    advance: Callable[[], None],
) -> SystemRun:
    """Feed every script into its chat, interleaving sessions step by step; ask each question on the way."""
    run = SystemRun()
    probes = {p.probe_id: p for script in scripts for p in script.probes}
    started = time.perf_counter()
    for position in range(max(len(script.steps) for script in scripts)):
        for script, chat in zip(scripts, chats):
            if position >= len(script.steps):
                continue
            step = script.steps[position]
            if step.role == "ask":
                probe = probes[step.probe]
                outcome = chat.ask(probe)
                if not outcome.evicted:
                    raise RuntimeError(f"{system}: the fact of {probe.probe_id} was still in the cache when asked")
                if outcome.archived is False:
                    raise RuntimeError(f"{system}: the fact of {probe.probe_id} was evicted but is not in the archive")
                run.outcomes[probe.probe_id] = outcome
                logger.debug("%s %s: %r -> %r", system, probe.probe_id, probe.question, outcome.reply)
            else:
                chat.add(step.role, step.text, step.probe)
            advance()
    run.seconds = time.perf_counter() - started
    run.sessions = [chat.stats() for chat in chats]
    return run


def _ceiling(model, tokenizer, config: StreamRAGConfig, probes: list[Probe], advance: Callable[[], None]) -> SystemRun:
    from streamrag.engine import StreamingLM

    run = SystemRun()
    started = time.perf_counter()
    for probe in probes:
        lm = StreamingLM(model, tokenizer, config)
        lm.add_message("user", probe.fact)
        lm.add_message("assistant", probe.ack)
        reply = lm.chat(probe.question)
        run.outcomes[probe.probe_id] = Outcome(reply=reply, correct=answer_is_correct(probe, reply), hit=True)
        advance()
    run.seconds = time.perf_counter() - started
    return run


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> list[float] | None:
    """95% Wilson score interval of a proportion: how much a rate from a few dozen probes can be trusted."""
    if trials == 0:
        return None
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return [rounded(max(0.0, centre - half), 3), rounded(min(1.0, centre + half), 3)]


def summarize(run: SystemRun, probes: list[Probe], system: str) -> dict[str, Any]:
    """hit_at_k and answer_accuracy, overall and per probe kind."""

    def rates(selected: list[Probe]) -> dict[str, Any]:
        outcomes = [run.outcomes[p.probe_id] for p in selected]
        if system == "streamrag":
            hits = [o.hit for o in outcomes]
        else:
            hits = [system == "ceiling"] * len(outcomes)
        entry = {
            "hit_at_k": rounded(statistics.fmean(hits) if hits else 0.0),
            "answer_accuracy": rounded(statistics.fmean(o.correct for o in outcomes) if outcomes else 0.0),
            "probes": len(outcomes),
        }
        if system == "streamrag":
            when_hit = [o.correct for o in outcomes if o.hit]
            entry["answer_accuracy_when_hit"] = rounded(statistics.fmean(when_hit)) if when_hit else None
        return entry

    result = {"description": SYSTEM_LABELS[system], **rates(probes)}
    correct = sum(run.outcomes[p.probe_id].correct for p in probes)
    result["answer_accuracy_ci95"] = wilson_interval(correct, len(probes))
    result["by_kind"] = {kind: rates([p for p in probes if p.kind == kind]) for kind in KINDS}
    result["seconds"] = round(run.seconds, 1)
    return result


# -- the archive's costs --------------------------------------------------------


def _bulk_texts(rng: random.Random, limit: int):
    """Chat-like chunk texts: one filler exchange, or two, cut to ``limit`` characters (one chunk each)."""
    while True:
        parts = list(filler_exchange(rng))
        if rng.random() < 0.4:
            parts += filler_exchange(rng)
        yield " ".join(parts)[:limit].strip()


def _bulk_queries(rng: random.Random, count: int) -> list[str]:
    questions = [t.question for templates in TEMPLATES.values() for t in templates]
    return [rng.choice(questions) if i % 2 == 0 else filler_exchange(rng)[0] for i in range(count)]


def _percentiles(seconds: list[float]) -> dict[str, float | None]:
    ms = sorted(1000 * s for s in seconds)
    if not ms:
        return {"p50": None, "p95": None, "mean": None}
    p95 = ms[min(len(ms) - 1, math.ceil(0.95 * len(ms)) - 1)]
    return {"p50": rounded(statistics.median(ms), 2), "p95": rounded(p95, 2), "mean": rounded(statistics.fmean(ms), 2)}


def measure_archive_costs(
    settings: ArchiveSettings,
    work_dir: Path,
    sizes: list[int],
    *,
    queries: int = 50,
    batch: int = 512,
    k: int = 16,
    rebuilds: int = 5,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Grow one archive (one session) through ``sizes`` chunks; time writes and searches at each size.

    Writes go through :meth:`Archive.write` with synthetic evicted spans,
    ``batch`` per call. At each size a second :class:`Archive` is opened on
    the same store (as after a restart): its first search loads and indexes
    the session for BM25 (``first_query_ms``); then ``queries`` searches are
    timed warm (``query_ms``); then ``rebuilds`` times a small write (one
    eviction's worth of chunks) followed by a search (``query_after_write_ms``).
    """
    from streamrag.archive import Archive
    from streamrag.chunking import Chunk, chunk_id

    rng = random.Random(f"costs-{seed}")
    step = settings.chunk_chars - settings.chunk_overlap_chars
    texts = _bulk_texts(rng, step)  # at most one grid step: exactly one chunk per span
    session = "bulk"
    writer = Archive(settings, work_dir)
    written = 0  # chunks of the timed bulk writes
    extra = 0  # chunks written by the rebuild measurements (not timed as writes)
    write_seconds = 0.0
    chars = 0
    turn = 0

    def spans(count: int) -> list[Chunk]:
        """``count`` one-chunk messages, as the indexer would hand them to the archive."""
        nonlocal turn, chars
        result = []
        for _ in range(count):
            text = next(texts)
            chars += len(text)
            turn += 1
            message_id = uuid.uuid4().hex
            role = "user" if turn % 2 else "assistant"
            cid = chunk_id(session, message_id, 0)
            result.append(Chunk(cid, text, session, message_id, role, turn // 2, 0, len(text), True, time.time()))
        return result

    sizes = sorted(set(sizes))
    result: dict[str, Any] = {
        "write_ms_per_chunk": {},
        "write_ms_per_chunk_increment": {},
        "query_ms": {},
        "first_query_ms": {},
        "query_after_write_ms": {},
        "load_seconds": {},
    }
    queries_text = _bulk_queries(rng, queries)
    with progress_bar(progress) as bar:
        task = bar.add_task("archive load", total=max(sizes))
        for size in sizes:
            before_written, before_seconds = written, write_seconds
            while written + extra < size:
                pending = spans(min(batch, size - written - extra))
                started = time.perf_counter()
                count = writer.upsert(pending)
                write_seconds += time.perf_counter() - started
                written += count
                bar.update(task, completed=written + extra)
            label = str(size)
            result["write_ms_per_chunk"][label] = rounded(1000 * write_seconds / written, 3)
            increment = written - before_written
            result["write_ms_per_chunk_increment"][label] = (
                rounded(1000 * (write_seconds - before_seconds) / increment, 3) if increment else None
            )
            result["load_seconds"][label] = round(write_seconds, 1)

            reader = Archive(settings, work_dir)  # a fresh process's view: no BM25 index yet
            started = time.perf_counter()
            reader.search(session, queries_text[0], k=k)
            result["first_query_ms"][label] = rounded(1000 * (time.perf_counter() - started), 2)
            timings = []
            for query in queries_text:
                started = time.perf_counter()
                reader.search(session, query, k=k)
                timings.append(time.perf_counter() - started)
            result["query_ms"][label] = _percentiles(timings) | {"queries": len(timings)}
            rebuild = []
            for i in range(rebuilds):
                reader.upsert(spans(4))
                started = time.perf_counter()
                reader.search(session, queries_text[i % len(queries_text)], k=k)
                rebuild.append(time.perf_counter() - started)
            extra += 4 * rebuilds
            result["query_after_write_ms"][label] = _percentiles(rebuild) | {"queries": len(rebuild)}
            logger.info(
                "archive of %d chunks: write %.2f ms/chunk, search p50 %.1f ms, first %.0f ms, after a write %.0f ms",
                size,
                1000 * write_seconds / max(written, 1),
                result["query_ms"][label]["p50"],
                result["first_query_ms"][label],
                result["query_after_write_ms"][label]["p50"],
            )
    result["chunk_chars_mean"] = round(chars / max(written + extra, 1), 1)
    result["chunks_in_archive"] = written + extra
    result["batch"] = batch
    result["k"] = k
    result["sessions"] = 1
    result["note"] = (
        "one archive grown through the sizes (one session, as a very long conversation); each size's write cost is "
        "the average from empty to that size, *_increment the average of the chunks added for that size. "
        "query_after_write_ms: the first search after writing 4 chunks, which rebuilds the session's BM25 index."
    )
    return result


# -- the whole benchmark --------------------------------------------------------


class _LoadSampler:
    """The 1-minute load average every ``interval`` seconds while a phase runs (other jobs skew timings)."""

    def __init__(self, interval: float = 15.0):
        self.interval = interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            load = load_average()
            if load:
                self.samples.append(load[0])
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> _LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, Any] | None:
        if not self.samples:
            return None
        samples = self.samples
        return {"max": max(samples), "mean": round(statistics.fmean(samples), 2), "samples": len(samples)}


def run_recall(
    model,
    tokenizer,
    config: StreamRAGConfig,
    out_dir: Path,
    *,
    sessions: int = 4,
    facts_per_kind: int = 3,
    windows: float = 20,
    sink_tokens: int = 4,
    window_tokens: int = 252,
    evict_chunk: int = 32,
    max_new_tokens: int = 24,
    top_k: int = 4,
    budget_fraction: float = 0.3,
    chunk_chars: int = 400,
    chunk_overlap_chars: int = 80,
    sizes: list[int] | tuple[int, ...] = DEFAULT_SIZES,
    queries: int = 50,
    batch: int = 512,
    seed: int = 0,
    name: str = "recall",
    model_name: str | None = None,
    work_dir: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the four systems on the same conversations, then the archive costs; write ``<name>.json`` and ``.png``.

    Archives and transcripts live in a temporary folder under ``work_dir``
    (default: ``out_dir``), removed at the end.
    """
    from streamrag.archive import Archive
    from streamrag.engine import StreamingLM
    from streamrag.session import Assistant, Resources
    from streamrag.transcript import Transcript

    check_settings(sessions, facts_per_kind, windows)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    capacity = sink_tokens + window_tokens
    started_load = load_average()
    started = time.perf_counter()
    scripts = build_conversations(
        chat_token_counter(tokenizer),
        sessions=sessions,
        facts_per_kind=facts_per_kind,
        windows=windows,
        capacity=capacity,
        seed=seed,
    )
    probes = [p for script in scripts for p in script.probes]
    logger.info(
        "%d conversations of %s tokens, %d probes; cache of %d tokens",
        len(scripts),
        "/".join(str(s.tokens) for s in scripts),
        len(probes),
        capacity,
    )
    work = Path(tempfile.mkdtemp(prefix=".recall-work-", dir=work_dir or out_dir))
    try:
        shape = {
            "evict_chunk": evict_chunk,
            "max_new_tokens": max_new_tokens,
            "top_k": top_k,
            "budget_fraction": budget_fraction,
            "chunk_chars": chunk_chars,
            "chunk_overlap_chars": chunk_overlap_chars,
        }
        sink_config = bench_config(config, work, sink_tokens=sink_tokens, window_tokens=window_tokens, **shape)
        window_config = bench_config(config, work, sink_tokens=0, window_tokens=capacity, **shape)
        runs: dict[str, SystemRun] = {}
        steps = sum(len(script.steps) for script in scripts)
        with _LoadSampler() as systems_load, progress_bar(progress) as bar:
            tasks = {system: bar.add_task(f"{system:>13}", total=steps) for system in SYSTEMS[:3]}
            tasks["ceiling"] = bar.add_task(f"{'ceiling':>13}", total=len(probes))

            def advancer(system: str) -> Callable[[], None]:
                return lambda: bar.advance(tasks[system])

            archive = Archive(sink_config.archive, work)
            transcript = Transcript(work / "transcripts.sqlite3")
            resources = Resources(sink_config, model, tokenizer, archive, transcript, threading.Lock())
            try:
                recall_seconds: list[float] = []
                chats = []
                for script in scripts:
                    assistant = Assistant(resources, session_id=f"recall-{seed}-{script.index}")
                    foreign = [p.key for p in probes if p.session != script.index]
                    chats.append(_AssistantChat(assistant, foreign, recall_seconds))
                run = _play(scripts, chats, "streamrag", advancer("streamrag"))
                run.extra = {
                    "archived_chunks": archive.count(),
                    "chunks_written": archive.chunks_written,
                    "write_ms_per_chunk_conversation": rounded(
                        1000 * archive.write_seconds / max(archive.chunks_written, 1), 3
                    ),
                    "recall_ms": _percentiles(recall_seconds),
                    "memories_per_question": rounded(statistics.fmean(o.recalled for o in run.outcomes.values()), 2),
                    "cross_session_leaks": sum(o.leaked for o in run.outcomes.values()),
                }
                runs["streamrag"] = run
            finally:
                resources.close()
            for system, cfg in (("streaming_llm", sink_config), ("window", window_config)):
                chats = [_EngineChat(StreamingLM(model, tokenizer, cfg)) for s in scripts]
                runs[system] = _play(scripts, chats, system, advancer(system))
            runs["ceiling"] = _ceiling(model, tokenizer, sink_config, probes, advancer("ceiling"))
        for system, run in runs.items():
            logger.info(
                "%s: answer accuracy %.2f in %.0f s",
                system,
                statistics.fmean(o.correct for o in run.outcomes.values()),
                run.seconds,
            )
        with _LoadSampler() as costs_load:
            costs = (
                measure_archive_costs(
                    sink_config.archive,
                    work / "costs",
                    sizes,
                    queries=queries,
                    batch=batch,
                    k=4 * top_k,
                    seed=seed,
                    progress=progress,
                )
                if sizes
                else None
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    wall = time.perf_counter() - started

    result: dict[str, Any] = {
        "benchmark": "recall",
        "model": {
            "name": model_name,
            "device": str(next(model.parameters()).device),
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        },
        "settings": {
            "seed": seed,
            "sessions": sessions,
            "facts_per_kind": facts_per_kind,
            "probes": len(probes),
            "windows": windows,
            "sink_tokens": sink_tokens,
            "window_tokens": window_tokens,
            "capacity": capacity,
            "window_baseline": {"sink_tokens": 0, "window_tokens": capacity},
            "evict_chunk": evict_chunk,
            "decoding": "greedy (temperature 0, repetition_penalty 1.0)",
            "max_new_tokens": max_new_tokens,
            "top_k": top_k,
            "budget_fraction": budget_fraction,
            "budget_tokens": max(1, int(budget_fraction * window_tokens)),
            "min_score": sink_config.recall.min_score,
            "context_messages": sink_config.recall.context_messages,
            "chunk_chars": chunk_chars,
            "chunk_overlap_chars": chunk_overlap_chars,
            "embedding_model": sink_config.archive.embedding_model or "embedded all-MiniLM-L6-v2",
            "embedding_device": sink_config.archive.embedding_device,
            "sizes": list(sizes),
            "queries": queries,
            "batch": batch,
        },
    }
    for system in SYSTEMS:
        entry = summarize(runs[system], probes, system)
        entry |= runs[system].extra
        if system != "streamrag":
            entry["notes"] = (
                "hit_at_k is 1.0 by construction: the fact is in the context"
                if system == "ceiling"
                else "hit_at_k is 0.0 by construction: no archive, nothing can be retrieved"
            )
        else:
            entry["notes"] = "hit_at_k: the fact's own message was among the recalled memories"
        result[system] = entry
    result["write_ms_per_chunk"] = costs["write_ms_per_chunk"] if costs else {}
    result["query_ms"] = costs["query_ms"] if costs else {}
    result["costs"] = costs
    result["conversations"] = [
        {
            "session": script.index,
            "messages": sum(step.role != "ask" for step in script.steps),
            "questions": len(script.probes),
            "script_tokens": script.tokens,
            **{system: runs[system].sessions[script.index] for system in SYSTEMS[:3]},
        }
        for script in scripts
    ]
    result["probes"] = [_probe_record(p, scripts[p.session], runs, capacity) for p in probes]
    result["notes"] = NOTES
    result["wall_seconds"] = round(wall, 1)
    result["host"] = host_info(started_load) | {
        # 1-minute load sampled every 15 s: on 2 cores, anything well above 2 means other jobs shared the CPU.
        "load_1min_during_systems": systems_load.summary(),
        "load_1min_during_costs": costs_load.summary(),
    }

    write_json(out_dir / f"{name}.json", result)
    plot_recall(result, out_dir / f"{name}.png")
    return result


def _probe_record(probe: Probe, script: SessionScript, runs: dict[str, SystemRun], capacity: int) -> dict[str, Any]:
    ours = runs["streamrag"].outcomes[probe.probe_id]
    return {
        "id": probe.probe_id,
        "session": probe.session,
        "kind": probe.kind,
        "fact": probe.fact,
        "question": probe.question,
        "key": probe.key,
        "gap_tokens": script.gap(probe.probe_id),
        "gap_windows": round(script.gap(probe.probe_id) / capacity, 2),
        "archived": ours.archived,
        "hit": ours.hit,
        "recalled": ours.recalled,
        "correct": {system: run.outcomes[probe.probe_id].correct for system, run in runs.items()},
        "replies": {system: run.outcomes[probe.probe_id].reply for system, run in runs.items()},
    }


# -- the figure -----------------------------------------------------------------


def plot_recall(result: dict[str, Any], path: Path) -> Path:
    """Answer accuracy per system and kind; streamrag's retrieval; search latency vs archive size."""
    figure, (accuracy, retrieval, latency) = new_figure(18, 5.8, ncols=3)
    groups = ["all", *KINDS]

    def values(entry: dict[str, Any], metric: str) -> list[float]:
        return [entry[metric] or 0.0] + [(entry["by_kind"][kind][metric] or 0.0) for kind in KINDS]

    width = 0.8 / len(SYSTEMS)
    for number, system in enumerate(SYSTEMS):
        xs = [i + (number - (len(SYSTEMS) - 1) / 2) * width for i in range(len(groups))]
        heights = values(result[system], "answer_accuracy")
        bars = accuracy.bar(xs, heights, width, label=SYSTEM_LABELS[system], color=SYSTEM_COLORS[system])
        accuracy.bar_label(bars, labels=[f"{h:.2f}" for h in heights], fontsize=6, padding=1)
    probes = result["settings"]["probes"]
    accuracy.set_title(f"answer accuracy (greedy, key string in the reply), {probes} probes", fontsize=10)

    ours = result["streamrag"]
    series = {
        "hit@k (fact's message recalled)": values(ours, "hit_at_k"),
        "answer accuracy": values(ours, "answer_accuracy"),
        "answer accuracy when hit": values(ours, "answer_accuracy_when_hit"),
    }
    colors = ("tab:green", "tab:blue", "tab:purple")
    width = 0.8 / len(series)
    for number, ((label, heights), color) in enumerate(zip(series.items(), colors)):
        xs = [i + (number - (len(series) - 1) / 2) * width for i in range(len(groups))]
        bars = retrieval.bar(xs, heights, width, label=label, color=color)
        retrieval.bar_label(bars, labels=[f"{h:.2f}" for h in heights], fontsize=7, padding=1)
    k = result["settings"]["top_k"]
    retrieval.set_title(
        f"streamrag: retrieval (k={k}) and answers\n(streaming_llm / window: hit@k 0 by construction; ceiling: 1)",
        fontsize=10,
    )
    for axes in (accuracy, retrieval):
        axes.set_xticks(range(len(groups)), groups)
        axes.set_ylim(0, 1.32)  # headroom above 1.0 for the bar labels and the legend
        axes.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
        axes.set_ylabel("share of probes")
        axes.grid(True, axis="y", alpha=0.3)
        axes.legend(fontsize=7, loc="upper center", ncol=2, frameon=False)

    costs = result.get("costs")
    if costs and costs["query_ms"]:
        sizes = sorted(int(size) for size in costs["query_ms"])
        labels = [str(size) for size in sizes]
        lines = {
            "search p50 (warm)": ([costs["query_ms"][s]["p50"] for s in labels], "tab:blue", "-"),
            "search p95 (warm)": ([costs["query_ms"][s]["p95"] for s in labels], "tab:blue", "--"),
            "first search, index loaded from Chroma": ([costs["first_query_ms"][s] for s in labels], "tab:red", "-"),
            "search after a write (BM25 rebuild), p50": (
                [costs["query_after_write_ms"][s]["p50"] for s in labels],
                "tab:orange",
                "-",
            ),
            "write, per chunk": ([costs["write_ms_per_chunk"][s] for s in labels], "tab:green", ":"),
        }
        for label, (ys, color, style) in lines.items():
            latency.plot(sizes, ys, marker="o", color=color, linestyle=style, label=label)
        latency.set_xscale("log")
        latency.set_yscale("log")
        latency.set_xlabel("chunks in the archive (one session)")
        latency.set_ylabel("milliseconds")
        latency.legend(fontsize=7, frameon=False)
        latency.grid(True, which="both", alpha=0.3)
        latency.set_title(
            f"archive costs (chunks of ~{costs['chunk_chars_mean']:.0f} chars, k={costs['k']})", fontsize=10
        )
    else:
        latency.text(0.5, 0.5, "archive costs not measured (--sizes none)", ha="center", va="center")
        latency.set_axis_off()
    s = result["settings"]
    figure.suptitle(
        f"{result['model']['name'] or 'model'}: recall of evicted facts, {s['sessions']} sessions x "
        f"{s['windows']:g} windows, cache {s['capacity']} tokens ({s['sink_tokens']} sinks + {s['window_tokens']})",
        fontsize=11,
    )
    return save_figure(figure, path)
