"""Passkey retrieval below and beyond the trained context, for four cache policies in one run.

The task of the Self-Extend paper (and of Landmark Attention before it): a
random five-digit key hidden at some depth of filler text, asked for at the
end. Every policy reads the same haystack, as one user message of the chat,
then answers "What is the pass key?" with greedy decoding; an answer is
correct when it contains the key.

``dense``
    nothing is evicted (a cache larger than the text); beyond the trained
    length the model meets relative positions it never saw.
``sink``
    the attention-sink cache (shift mode) with a window inside the trained
    length: the key is simply gone once it is evicted.
``sink_archive``
    the same cache inside a streamrag :class:`~streamrag.session.Assistant`:
    evicted text is archived in Chroma and the question recalls it.
``self_extend``
    a sink cache whose window holds the whole text, with Self-Extend's grouped
    positions so that no relative position exceeds the trained length.
"""

from __future__ import annotations

import logging
import random
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from streamrag.bench.common import host_info, load_average, new_figure, progress_bar, rounded, save_figure, write_json
from streamrag.config import StreamRAGConfig, set_dotted

logger = logging.getLogger(__name__)

POLICIES = ("dense", "sink", "sink_archive", "self_extend")
POLICY_LABELS = {
    "dense": "dense (no eviction)",
    "sink": "attention sinks + window",
    "sink_archive": "sinks + window + archive recall",
    "self_extend": "Self-Extend (whole text in cache)",
}
INTRO = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there.\n"
)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key.\n"
QUESTION = "What is the pass key? The pass key is"
# Below and beyond SmolLM2-135M's 8192 trained tokens; about 15 minutes on one CPU core with the defaults
# (the 10k reads of dense and Self-Extend dominate).
DEFAULT_LENGTHS = (2048, 10240)
DEFAULT_DEPTHS = (0.5,)


def parse_numbers(text: str, kind: type = int) -> list:
    """``"4k,12k"`` -> ``[4096, 12288]``; ``"0.1,0.5"`` -> ``[0.1, 0.5]`` (``kind=float``)."""
    values = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        if kind is int and part.endswith("k"):
            values.append(int(float(part[:-1]) * 1024))
        else:
            values.append(kind(part))
    if not values:
        raise ValueError(f"no values in {text!r}")
    return values


def haystack(tokenizer, length: int, depth: float, key: str) -> str:
    """Intro, filler and the needle at ``depth`` (0 = start, 1 = end), about ``length`` tokens in all."""
    unit = len(tokenizer(FILLER, add_special_tokens=False).input_ids)
    fixed = len(tokenizer(INTRO + NEEDLE.format(key=key) + QUESTION, add_special_tokens=False).input_ids)
    count = max((length - fixed - 16) // unit, 1)  # 16: the chat template's tokens around the message
    before = round(depth * count)
    return INTRO + FILLER * before + NEEDLE.format(key=key) + FILLER * (count - before) + QUESTION


def answer_has_key(answer: str, key: str) -> bool:
    """The first five-digit number of the answer is the key (a key merely repeated later does not count)."""
    found = re.findall(r"\d{5}", answer.replace(" ", ""))
    return bool(found) and found[0] == key


def policy_config(base: StreamRAGConfig, data_dir: Path, **cache) -> StreamRAGConfig:
    """``base`` with this policy's cache, greedy short answers and a private embedded archive."""
    data = base.model_dump()
    overrides = {
        "data_dir": str(data_dir),
        "system_prompt": None,
        "generation.temperature": 0.0,
        "generation.max_new_tokens": 8,
        "generation.repetition_penalty": 1.0,  # a penalty on context tokens would punish copying the key
        "generation.stop": [],
        "archive.chroma_url": None,  # never write benchmark data into a user's Chroma server
        "archive.collection": "passkey_benchmark",
        "archive.reranker": None,
        # Chunks and a memory budget that fit a window of a few hundred tokens too (the tests' size).
        "archive.chunk_chars": 400,
        "archive.chunk_overlap_chars": 80,
        "recall.enabled": True,
        "recall.budget_fraction": 0.5,
        **{f"cache.{key}": value for key, value in cache.items()},
    }
    for dotted, value in overrides.items():
        set_dotted(data, dotted, value)
    return StreamRAGConfig.from_dict(data)


def run_passkey(
    model,
    tokenizer,
    config: StreamRAGConfig,
    out_dir: Path,
    *,
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    depths: Sequence[float] = DEFAULT_DEPTHS,
    trials: int = 1,
    policies: Sequence[str] = POLICIES,
    sink_tokens: int = 4,
    sink_window: int = 2044,
    group_size: int = 4,
    neighbor_window: int = 2048,
    dense_max: int | None = None,
    prefill_chunk: int = 512,
    seed: int = 0,
    name: str = "passkey",
    model_name: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Ask every policy for the key at every length x depth (``trials`` keys each); write ``<name>.json``/``.png``.

    ``dense_max`` skips dense runs longer than that many tokens (they cost
    the most and, past the trained length, are expected to fail).
    """
    from streamrag.engine import StreamingLM
    from streamrag.self_extend import trained_length

    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown policies {unknown}; choose from {', '.join(POLICIES)}")
    if trials < 1:
        raise ValueError("--trials must be at least 1")
    if any(not 0.0 <= d <= 1.0 for d in depths):
        raise ValueError("depths must lie between 0 and 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trained = trained_length(model)
    longest = max(lengths)
    # Room for the whole text, its template tokens and the answer, in sink_tokens + window_tokens.
    whole = longest + 256
    caches = {
        "dense": {"sink_tokens": 0, "window_tokens": whole, "evict_chunk": 64, "prefill_chunk": prefill_chunk},
        "sink": {"sink_tokens": sink_tokens, "window_tokens": sink_window, "prefill_chunk": prefill_chunk},
        "sink_archive": {"sink_tokens": sink_tokens, "window_tokens": sink_window, "prefill_chunk": prefill_chunk},
        "self_extend": {
            "sink_tokens": sink_tokens,
            "window_tokens": whole - sink_tokens,
            "evict_chunk": 64,
            "prefill_chunk": prefill_chunk,
            "position_mode": "self_extend",
            "group_size": group_size,
            "neighbor_window": neighbor_window,
        },
    }
    rng = random.Random(seed)
    keys = {
        (length, depth, t): f"{rng.randint(10000, 99999)}"
        for length in lengths
        for depth in depths
        for t in range(trials)
    }
    work = Path(tempfile.mkdtemp(prefix=".passkey-work-", dir=out_dir))
    started_load = load_average()
    started = time.perf_counter()
    records: list[dict[str, Any]] = []
    seconds: dict[str, float] = {p: 0.0 for p in policies}
    try:
        configs = {p: policy_config(config, work / p, **caches[p]) for p in policies}
        engines: dict[str, Callable[[str], tuple[str, dict[str, Any]]]] = {}
        for policy in policies:
            if policy == "sink_archive":
                # Imported only here: Chroma and the embedder serve this policy alone.
                from streamrag.archive import Archive
                from streamrag.session import Assistant, Resources
                from streamrag.transcript import Transcript

                archive = Archive(configs[policy].archive, work / policy)
                transcript = Transcript(work / policy / "transcripts.sqlite3")
                resources = Resources(configs[policy], model, tokenizer, archive, transcript, threading.Lock())
                engines[policy] = _assistant_asker(resources, Assistant)
            else:
                lm = StreamingLM(model, tokenizer, configs[policy])
                engines[policy] = _engine_asker(lm)
        total = sum(
            length * trials * len(depths)
            for policy in policies
            for length in lengths
            if not (policy == "dense" and dense_max and length > dense_max)
        )
        with progress_bar(progress) as bar:
            task = bar.add_task("passkey", total=total)
            for length in lengths:
                for depth in depths:
                    for trial in range(trials):
                        key = keys[(length, depth, trial)]
                        text = haystack(tokenizer, length, depth, key)
                        for policy in policies:
                            if policy == "dense" and dense_max and length > dense_max:
                                continue
                            bar.update(task, description=f"{policy:>12} {length // 1024}k d={depth:.2f}")
                            tick = time.perf_counter()
                            answer, stats = engines[policy](text)
                            spent = time.perf_counter() - tick
                            seconds[policy] += spent
                            correct = answer_has_key(answer, key)
                            records.append(
                                {
                                    "policy": policy,
                                    "length": length,
                                    "depth": depth,
                                    "trial": trial,
                                    "key": key,
                                    "answer": answer,
                                    "correct": correct,
                                    "seconds": round(spent, 2),
                                    **stats,
                                }
                            )
                            logger.info("%s %d d=%.2f: %r -> %s", policy, length, depth, answer, correct)
                            bar.advance(task, length)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    wall = time.perf_counter() - started
    result: dict[str, Any] = {
        "benchmark": "passkey",
        "model": {"name": model_name, "trained_length": trained, "device": str(next(model.parameters()).device)},
        "settings": {
            "lengths": list(lengths),
            "depths": list(depths),
            "trials": trials,
            "policies": list(policies),
            "caches": {p: caches[p] for p in policies},
            "dense_max": dense_max,
            "seed": seed,
            "question": QUESTION,
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        },
        "accuracy": _accuracy(records, policies, lengths, depths),
        "accuracy_by_length": {
            policy: {
                str(length): _mean([r["correct"] for r in records if r["policy"] == policy and r["length"] == length])
                for length in lengths
            }
            for policy in policies
        },
        "seconds_by_policy": {p: round(s, 1) for p, s in seconds.items()},
        "records": records,
        "wall_seconds": round(wall, 1),
        "host": host_info(started_load),
    }
    write_json(out_dir / f"{name}.json", result)
    plot_passkey(result, out_dir / f"{name}.png")
    return result


def _engine_asker(lm) -> Callable[[str], tuple[str, dict[str, Any]]]:
    """One fresh stream per haystack, read as plain text that ends in "The pass key is" (the paper's protocol).

    Plain continuation rather than a chat turn: the 135M instruct model
    answers the chat question with made-up definitions even at 1k tokens,
    but completes the sentence with the key.
    """

    def ask(text: str) -> tuple[str, dict[str, Any]]:
        lm.reset()
        answer = lm.complete(text)
        stats = lm.stats()
        return answer, {"evicted_tokens": stats.evicted_tokens, "cache_tokens": stats.cache_tokens}

    return ask


def _assistant_asker(resources, assistant_class) -> Callable[[str], tuple[str, dict[str, Any]]]:
    """A new Assistant session per haystack: the text as a user message (evictions archived), then recall.

    The memories the session recalls for the question open the same plain
    continuation the other policies get, so the only difference from ``sink``
    is what came back from the archive.
    """
    counter = iter(range(1_000_000))

    def ask(text: str) -> tuple[str, dict[str, Any]]:
        haystack_text, _, question = text.rpartition("\n")
        assistant = assistant_class(resources, session_id=f"passkey-{next(counter)}")
        assistant.add_message("user", haystack_text)
        recall = assistant.recall(question)
        prompt = (recall.block + "\n\n" if recall.block else "") + question
        answer = assistant.lm.complete(prompt)
        stats = assistant.lm.stats()
        return answer, {
            "evicted_tokens": stats.evicted_tokens,
            "cache_tokens": stats.cache_tokens,
            "recalled": len(recall.memories),
            "recalled_key": any(NEEDLE.split("{")[0].strip() in m.text for m in recall.memories),
        }

    return ask


def _mean(values: list[bool]) -> float | None:
    return rounded(sum(values) / len(values)) if values else None


def _accuracy(records, policies, lengths, depths) -> dict[str, dict[str, dict[str, float | None]]]:
    """policy -> str(length) -> str(depth) -> share of trials answered correctly (None: not run)."""
    return {
        policy: {
            str(length): {
                f"{depth:g}": _mean(
                    [
                        r["correct"]
                        for r in records
                        if r["policy"] == policy and r["length"] == length and r["depth"] == depth
                    ]
                )
                for depth in depths
            }
            for length in lengths
        }
        for policy in policies
    }


def plot_passkey(result: dict[str, Any], path: Path) -> Path:
    """One heatmap per policy like the paper's needle figure: length on x, depth on y, green = found."""
    import numpy as np
    from matplotlib.colors import LinearSegmentedColormap

    settings = result["settings"]
    policies, lengths, depths = settings["policies"], settings["lengths"], settings["depths"]
    trained = result["model"]["trained_length"]
    figure, axes = new_figure(3.2 * len(policies) + 1, 3.6, ncols=len(policies))
    colors = LinearSegmentedColormap.from_list("needle", ["#d7191c", "#fdae61", "#1a9641"])
    for ax, policy in zip(axes, policies):
        grid = np.full((len(depths), len(lengths)), np.nan)
        for i, depth in enumerate(depths):
            for j, length in enumerate(lengths):
                value = result["accuracy"][policy][str(length)][f"{depth:g}"]
                if value is not None:
                    grid[i, j] = value
        image = ax.imshow(grid, cmap=colors, vmin=0, vmax=1, aspect="auto", origin="upper")
        for i in range(len(depths)):
            for j in range(len(lengths)):
                label = "skipped" if np.isnan(grid[i, j]) else f"{grid[i, j]:.2f}"
                ax.text(j, i, label, ha="center", va="center", fontsize=8, color="black")
        ax.set_xticks(range(len(lengths)))
        ax.set_xticklabels(
            [f"{length / 1024:g}k" + ("*" if trained and length > trained else "") for length in lengths]
        )
        ax.set_yticks(range(len(depths)))
        ax.set_yticklabels([f"{d:.0%}" for d in depths])
        ax.set_xlabel("tokens (* beyond trained length)")
        ax.set_title(POLICY_LABELS[policy], fontsize=9)
    axes[0].set_ylabel("needle depth")
    figure.colorbar(image, ax=axes, shrink=0.8, label="accuracy")
    figure.suptitle(
        f"{result['model']['name'] or 'model'}: passkey retrieval, trained length {trained}, "
        f"{settings['trials']} key(s) per cell",
        fontsize=10,
    )
    return save_figure(figure, path)
