"""Does the memory find what real conversations need? Evidence recall per question kind, against baselines.

Long dated conversations between two named people
(:mod:`streamrag.bench.dialogues`) are fed session by session through the
public API (:meth:`Assistant.add_messages` with each turn's speaker name and
time) into an assistant with the default cache window, exactly as a user
importing a chat history would. Then every question is put to the memory:

``streamrag``
    :meth:`Assistant.recall` at the question's time: the memory block the
    next turn would get. Also ``search(k=10)``, the archive's ranking alone.
``dense_turns``, ``bm25_turns``, ``llamaindex_style``
    baselines that index every single turn (:mod:`streamrag.bench.memory_baselines`):
    MiniLM cosine, BM25, and LlamaIndex-style vector memory (dense top-2,
    queried with the last five messages). They fill the same token budget.

A question's evidence counts as *found* when one of its evidence turns is in
the block or still in the cache window (the model sees it either way);
``evicted_only`` restricts to questions whose evidence had all left the
window, where only the block can help. ``update`` questions also report
whether the newest value ranks above every older one. With ``answers`` the
embedded model answers each question from the block alone (greedy, a few
tokens) and the reply is checked for the gold answer.

The cost part (``sizes``) fills one session of a fresh archive with N chunks
and other sessions with more, and times :meth:`RecallPolicy.recall` (the
whole policy: queries embedded, dense and BM25 search, scoring) warm and
right after a write.
"""

from __future__ import annotations

import logging
import random
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from streamrag.bench.common import host_info, load_average, new_figure, progress_bar, rounded, save_figure, write_json
from streamrag.bench.dialogues import KINDS, Dialogue, answer_is_correct, build_dialogues
from streamrag.bench.memory_baselines import IndexedTurn, build_baselines, render_line
from streamrag.config import StreamRAGConfig, set_dotted

logger = logging.getLogger(__name__)

BASELINES = ("dense_turns", "bm25_turns", "llamaindex_style")
SYSTEMS = ("streamrag", *BASELINES)
ANSWER_PROMPT = "Answer the question in a few words, using these notes from earlier conversations.\n{block}"


def bench_config(base: StreamRAGConfig, data_dir: Path) -> StreamRAGConfig:
    """``base`` (model, cache window, recall settings) with a private archive and greedy short answers."""
    data = base.model_dump()
    overrides = {
        "data_dir": str(data_dir),
        "system_prompt": None,
        "generation.temperature": 0.0,
        "generation.repetition_penalty": 1.0,
        "archive.chroma_url": None,  # never write benchmark data into a user's Chroma server
        "archive.collection": "memory_benchmark",
        "archive.index_idle_s": 0.0,
    }
    for dotted, value in overrides.items():
        set_dotted(data, dotted, value)
    return StreamRAGConfig.from_dict(data)


def _percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def _answer(model, tokenizer, block: str, question: str, max_new_tokens: int) -> str:
    """The model's greedy answer to ``question`` with ``block`` as its only context (no session cache)."""
    import torch

    messages = [{"role": "system", "content": ANSWER_PROMPT.format(block=block or "(none)")}]
    messages.append({"role": "user", "content": question})
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    device = next(model.parameters()).device
    ids = {key: value.to(device) for key, value in ids.items()}
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


class _Tally:
    """Per-kind counts for one system."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, **row: Any) -> None:
        self.rows.append(row)

    def summary(self) -> dict[str, Any]:
        def share(rows, key):
            values = [r[key] for r in rows if r.get(key) is not None]
            return rounded(sum(values) / len(values)) if values else None

        def block(rows):
            return {
                "questions": len(rows),
                "evidence_recall": share(rows, "found"),
                "evidence_recall_all": share(rows, "found_all"),
                "evicted_only": share([r for r in rows if r["evicted"]], "found"),
                "search_k10": share(rows, "search_found"),
                "tokens": rounded(statistics.mean(r["tokens"] for r in rows), 1) if rows else None,
                "answer_accuracy": share(rows, "correct"),
                "newest_first": share(rows, "newest_first"),
            }

        result = block(self.rows)
        result["by_kind"] = {kind: block([r for r in self.rows if r["kind"] == kind]) for kind in KINDS}
        return result


def run_quality(
    model,
    tokenizer,
    base: StreamRAGConfig,
    work: Path,
    dialogues: list[Dialogue],
    answers: bool,
    max_new_tokens: int,
    progress: bool = True,
) -> dict[str, Any]:
    """Feed every dialogue into its own session and put every question to each system."""
    from streamrag.archive import Archive
    from streamrag.session import Assistant, Resources
    from streamrag.transcript import Transcript

    config = bench_config(base, work)
    archive = Archive(config.archive, work)
    transcript = Transcript(work / "transcript.sqlite")
    resources = Resources(config, model, tokenizer, archive, transcript, threading.Lock())
    tallies = {system: _Tally() for system in SYSTEMS}
    recall_ms: list[float] = []
    count_tokens = None
    budget = 0
    fed_tokens = fed_seconds = 0.0
    try:
        with progress_bar(progress) as bar:
            total = sum(len(d.sessions) + len(d.questions) for d in dialogues)
            task = bar.add_task("memory bench", total=total)
            for dialogue in dialogues:
                assistant = Assistant(resources, session_id=f"dialogue-{dialogue.dialogue_id}")
                count_tokens = assistant._count_tokens
                budget = assistant.recall_policy.budget_tokens
                baselines = build_baselines(lambda texts: np.stack(archive.embedder(list(texts))))
                message_of: dict[str, str] = {}
                history: list[str] = []
                for session in dialogue.sessions:
                    started = time.perf_counter()
                    ids = assistant.add_messages(
                        [
                            {"role": t.role, "content": t.text, "name": t.speaker, "timestamp": t.timestamp}
                            for t in session.turns
                        ]
                    )
                    fed_seconds += time.perf_counter() - started
                    fed_tokens += sum(count_tokens(t.text) for t in session.turns)
                    message_of.update({t.turn_id: mid for t, mid in zip(session.turns, ids)})
                    history += [t.text for t in session.turns]
                    indexed = [IndexedTurn(t.turn_id, t.speaker, t.text, t.timestamp) for t in session.turns]
                    for baseline in baselines:
                        baseline.add(indexed)
                    bar.advance(task)
                assistant.flush(timeout=600)
                resident = assistant.lm.ledger.resident_ranges()
                for question in dialogue.questions:
                    evidence = {message_of[t] for t in question.evidence}
                    in_window = {m for m in evidence if resident.get(m, (1, 0))[0] == 0}
                    evicted = not in_window
                    started = time.perf_counter()
                    result = assistant.recall(question.text, now=question.asked_at)
                    recall_ms.append(1000 * (time.perf_counter() - started))
                    shown = result.message_ids | in_window
                    search = assistant.search(question.text, k=10)
                    row = {
                        "kind": question.kind,
                        "evicted": evicted,
                        "found": bool(evidence & shown),
                        "found_all": evidence <= shown,
                        "search_found": bool(evidence & ({m.message_id for m in search} | in_window)),
                        "tokens": result.block_tokens,
                    }
                    if question.kind == "update":
                        stale = {message_of[t] for t in question.stale}
                        if evidence & in_window:  # the model sees the newest value; older ones must say so
                            row["newest_first"] = all(
                                line.earlier for line in result.lines if line.message_id in stale and line.memory
                            )
                        else:
                            row["newest_first"] = _newest_first(
                                [m.message_id for m in result.memories], evidence, stale
                            )
                    if answers:
                        row["correct"] = answer_is_correct(
                            _answer(model, tokenizer, result.block, question.text, max_new_tokens), question
                        )
                    tallies["streamrag"].add(**row)
                    recent = [*history[-4:], question.text]
                    for baseline in baselines:
                        picked = baseline.retrieve(question.text, recent, budget, count_tokens)
                        block = "\n".join(render_line(t) for t in picked)
                        ids = {message_of[t.turn_id] for t in picked} | in_window
                        base_row = {
                            "kind": question.kind,
                            "evicted": evicted,
                            "found": bool(evidence & ids),
                            "found_all": evidence <= ids,
                            "search_found": None,
                            "tokens": count_tokens(block) if block else 0,
                        }
                        if question.kind == "update":
                            stale = {message_of[t] for t in question.stale}
                            ranked = [message_of[t.turn_id] for t in picked]
                            if evidence & in_window:  # nothing marks an older value: it must not be shown
                                base_row["newest_first"] = not stale & set(ranked)
                            else:
                                base_row["newest_first"] = _newest_first(ranked, evidence, stale)
                        if answers:
                            base_row["correct"] = answer_is_correct(
                                _answer(model, tokenizer, block, question.text, max_new_tokens), question
                            )
                        tallies[baseline.name].add(**base_row)
                    bar.advance(task)
    finally:
        resources.close()
    summary = {system: tally.summary() for system, tally in tallies.items()}
    summary["recall_ms"] = {
        "p50": rounded(_percentile(recall_ms, 0.5), 1),
        "p95": rounded(_percentile(recall_ms, 0.95), 1),
    }
    summary["budget_tokens"] = budget
    summary["ingest_tokens_per_second"] = rounded(fed_tokens / fed_seconds, 1) if fed_seconds else None
    return summary


def _newest_first(ranked: list[str], newest: set[str], stale: set[str]) -> bool:
    """The newest value is ranked, and above every older value that is ranked."""
    positions = {m: i for i, m in reversed(list(enumerate(ranked)))}
    best_new = min((positions[m] for m in newest if m in positions), default=None)
    if best_new is None:
        return False
    return all(positions[m] > best_new for m in stale if m in positions)


# -- cost -----------------------------------------------------------------------


_COST_WORDS = (
    "garden train weather dinner sister brother meeting holiday beach mountain concert recipe bicycle "
    "office project deadline coffee market museum library football swimming painting guitar camera"
).split()


def _synthetic(rng: random.Random, session: str, number: int, dims: int):
    from streamrag.chunking import Chunk, chunk_id

    text = " ".join(rng.choice(_COST_WORDS) for _ in range(rng.randint(8, 30))) + f" note {number}"
    chunk = Chunk(chunk_id(session, f"m{number}", 0), text, session, f"m{number}", "user", number, 0, len(text), True,
                  1.6e9 + number, "user")  # fmt: skip
    vector = np.asarray([rng.gauss(0, 1) for _ in range(dims)], dtype=np.float32)
    return chunk, vector / np.linalg.norm(vector)


def _load(archive, session: str, count: int, rng: random.Random, dims: int, batch: int = 2000) -> None:
    """Store ``count`` synthetic chunks with random unit vectors (embedding 1M texts would take hours here)."""
    from streamrag.archive import _chunk_meta

    collection = archive.collection_for(session)
    for start in range(0, count, batch):
        pairs = [_synthetic(rng, session, n, dims) for n in range(start, min(count, start + batch))]
        collection.add(
            ids=[c.chunk_id for c, _ in pairs],
            embeddings=np.stack([v for _, v in pairs]),
            documents=[c.text for c, _ in pairs],
            metadatas=[_chunk_meta(c) for c, _ in pairs],
        )


def run_cost(base: StreamRAGConfig, work: Path, sizes: list[int], others: int, queries: int, seed: int) -> dict:
    """Recall latency (the whole policy) with ``size`` chunks in the session and ``others`` in other sessions."""
    from streamrag.archive import Archive
    from streamrag.recall import RecallPolicy

    config = bench_config(base, work)
    rng = random.Random(seed)
    results: dict[str, Any] = {}
    dims = len(Archive(config.archive, work / "probe").embedder(["x"])[0])
    # Each question is new (the policy keeps the embeddings of texts it has seen), as in a real conversation.
    questions = [f"what did we say about the {rng.choice(_COST_WORDS)} and the {rng.choice(_COST_WORDS)}, take {n}?"
                 for n in range(queries)]  # fmt: skip
    for size in sizes:
        where = work / f"cost-{size}"
        archive = Archive(config.archive, where)
        started = time.perf_counter()
        _load(archive, "target", size, rng, dims)
        for number in range(others // max(size, 1)):
            _load(archive, f"other-{number}", size, rng, dims)
        remainder = others % max(size, 1)
        if remainder:
            _load(archive, "other-rest", remainder, rng, dims)
        load_s = time.perf_counter() - started
        policy = RecallPolicy(config.recall, archive, lambda text: len(text.split()), config.cache.window_tokens)
        started = time.perf_counter()
        policy.recall("target", "warm up the lexical index", now=1.7e9)
        first_ms = 1000 * (time.perf_counter() - started)
        warm, after_write = [], []
        for number, question in enumerate(questions):
            started = time.perf_counter()
            policy.recall("target", question, recent=["we talked about dinner", "and the garden"], now=1.7e9)
            warm.append(1000 * (time.perf_counter() - started))
            chunk, _ = _synthetic(rng, "target", size + number, dims)
            archive.upsert([chunk])
            started = time.perf_counter()
            policy.recall("target", question, now=1.7e9)
            after_write.append(1000 * (time.perf_counter() - started))
        results[str(size)] = {
            "chunks_in_session": size,
            "chunks_in_other_sessions": others,
            "load_seconds": rounded(load_s, 1),
            "first_recall_ms": rounded(first_ms, 1),
            "recall_ms": {"p50": rounded(_percentile(warm, 0.5), 1), "p95": rounded(_percentile(warm, 0.95), 1)},
            "after_write_ms": {
                "p50": rounded(_percentile(after_write, 0.5), 1),
                "p95": rounded(_percentile(after_write, 0.95), 1),
            },
        }
        archive.close()
        shutil.rmtree(where, ignore_errors=True)
    return results


# -- the run --------------------------------------------------------------------


def run_memory(
    model,
    tokenizer,
    base: StreamRAGConfig,
    out: Path,
    *,
    dialogues: int = 3,
    sessions: int = 24,
    turns_per_session: int = 16,
    answers: bool = True,
    max_new_tokens: int = 24,
    sizes: list[int] | None = None,
    others: int = 0,
    queries: int = 50,
    seed: int = 0,
    name: str = "memory",
    model_name: str = "",
    work_dir: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The whole benchmark; writes OUT/NAME.json and OUT/NAME.png and returns the JSON."""
    started_load = load_average()
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="memory-bench-", dir=work_dir or out))
    try:
        built = build_dialogues(dialogues, seed=seed, sessions=sessions, turns_per_session=turns_per_session)
        quality = (
            run_quality(model, tokenizer, base, work / "quality", built, answers, max_new_tokens, progress)
            if built
            else {"budget_tokens": None, "recall_ms": None, "ingest_tokens_per_second": None}
        )
        cost = run_cost(base, work / "cost", sizes or [], others, queries, seed) if sizes else {}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "benchmark": "memory",
        "model": model_name,
        "settings": {
            "dialogues": dialogues,
            "sessions": sessions,
            "turns_per_session": turns_per_session,
            "turns": sum(len(d.turns()) for d in built),
            "questions": sum(len(d.questions) for d in built),
            "window_tokens": base.cache.window_tokens,
            "budget_tokens": quality["budget_tokens"],
            "answers": answers,
            "seed": seed,
            "recall": base.recall.model_dump(),
            "lexical_weight": base.archive.lexical_weight,
        },
        **{system: quality[system] for system in SYSTEMS if system in quality},
        "recall_ms": quality["recall_ms"],
        "ingest_tokens_per_second": quality["ingest_tokens_per_second"],
        "cost": cost,
        "host": host_info(started_load),
        "wall_seconds": rounded(time.perf_counter() - started, 1),
    }
    write_json(out / f"{name}.json", result)
    plot(result, out / f"{name}.png")
    return result


def plot(result: dict[str, Any], path: Path) -> Path:
    """Evidence recall per kind for each system (and tokens used); recall cost by archive size."""
    panels = [draw for draw, shown in ((_plot_quality, "streamrag" in result), (_plot_cost, result["cost"])) if shown]
    figure, axes = new_figure(6.5 * len(panels), 4.2, ncols=len(panels))
    for draw, axis in zip(panels, np.atleast_1d(axes)):
        draw(axis, result)
    return save_figure(figure, path)


def _plot_quality(axis, result: dict[str, Any]) -> None:
    kinds = [*KINDS, "overall"]
    width = 0.8 / len(SYSTEMS)
    for i, system in enumerate(SYSTEMS):
        entry = result[system]
        values = [entry["by_kind"][k]["evidence_recall"] or 0.0 for k in KINDS] + [entry["evidence_recall"] or 0.0]
        axis.bar(
            np.arange(len(kinds)) + i * width - 0.4 + width / 2,
            values,
            width,
            label=f"{system} ({entry['tokens']:.0f} tok)",
        )
    axis.axhline(0.75, color="grey", linestyle=":", linewidth=1)
    axis.set_xticks(np.arange(len(kinds)), [k.replace("_", "\n") for k in kinds], fontsize=8)
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("questions with evidence in context")
    axis.set_title(f"evidence recall, {result['settings']['questions']} questions")
    axis.legend(fontsize=7, loc="lower right")


def _plot_cost(axis, result: dict[str, Any]) -> None:
    sizes = sorted(result["cost"], key=int)
    xs = [int(s) for s in sizes]
    axis.plot(xs, [result["cost"][s]["recall_ms"]["p95"] for s in sizes], "o-", label="p95 warm")
    axis.plot(xs, [result["cost"][s]["recall_ms"]["p50"] for s in sizes], "o--", label="p50 warm")
    axis.plot(xs, [result["cost"][s]["after_write_ms"]["p95"] for s in sizes], "s-", label="p95 after a write")
    axis.axhline(50, color="grey", linestyle=":", linewidth=1)
    axis.set_xscale("log")
    axis.set_xlabel("chunks in the session")
    axis.set_ylabel("one recall, ms")
    others = result["cost"][sizes[-1]]["chunks_in_other_sessions"]
    axis.set_title(f"recall cost ({others:,} chunks in other sessions)")
    axis.legend(fontsize=7)
