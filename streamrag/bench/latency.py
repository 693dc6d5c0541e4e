"""Per-token decode cost and memory of the sink cache and its baselines, at growing stream lengths.

Generating 64k tokens one at a time is too slow for a CPU benchmark, and it
is not needed: the cost of a decode step depends only on the state the cache
is in. So each policy runs one stream: at every checkpoint length ``L`` it
first brings its state to "``L`` tokens so far" by feeding the benchmark text
in chunks, then times a burst of greedy decode steps (argmax: what matters is
the cost per step, not the words), then measures its memory.

``sink``
    a :class:`StreamingLM`; the text goes through
    :meth:`StreamingLM.feed_for_scoring`, i.e. the real eviction path, and
    each decode step is the engine's own single-token step. The cache stays at
    ``sink_tokens + window_tokens``.
``dense``
    transformers' ``DynamicCache`` grown to ``L`` tokens. Skipped above
    ``dense_max`` (memory and time); beyond the model's trained context its
    output is also meaningless, which the JSON notes.
``recompute``
    StreamingLLM's "sliding window with re-computation" baseline: no cache;
    every step re-runs the model from scratch over the last
    ``sink_tokens + window_tokens`` tokens.
``archive``
    the sink cache as a conversation uses it, with the archive attached: the
    text goes in as chat messages of an :class:`~streamrag.session.Assistant`
    (embedded Chroma in a temporary directory), each decode step is a step of
    a :class:`~streamrag.session.Reply`, and every eviction appends its text
    to the transcript's log while the background indexer embeds it. Before
    each burst the indexer catches up (``flush``), so the burst measures what
    decoding pays with evictions happening: the log append on the decode path
    and an indexer that waits while the model is busy. Its background work
    is reported beside (``indexed_chunks``, ``index_ms_per_chunk``).

Each policy runs in a fresh process (``spawn``), so ``rss_mb`` is that
policy's own resident memory, measured with psutil right after the burst;
``cache_mb`` is the exact size of the keys and values held.
"""

from __future__ import annotations

import gc
import logging
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from streamrag.bench.common import (
    MB,
    TEXT_SOURCE,
    cache_nbytes,
    host_info,
    load_average,
    new_figure,
    progress_bar,
    rounded,
    rss_bytes,
    save_figure,
    text_token_ids,
    write_json,
)
from streamrag.config import StreamRAGConfig

logger = logging.getLogger(__name__)

POLICIES = ("sink", "dense", "recompute", "archive")
POLICY_LABELS = {
    "archive": "sink window + archive (log and background indexer)",
    "sink": "attention sinks + window (streamrag)",
    "dense": "dense cache (no eviction)",
    "recompute": "sliding window, recomputed every step",
}
POLICY_COLORS = {"sink": "tab:blue", "dense": "tab:gray", "recompute": "tab:orange", "archive": "tab:green"}
DEFAULT_LENGTHS = (1000, 4000, 16000)


def parse_lengths(text: str) -> list[int]:
    """``"1000,4k,16000"`` -> ``[1000, 4000, 16000]`` (sorted, unique, positive)."""
    lengths = set()
    for part in text.split(","):
        part = part.strip().lower().replace("_", "")
        if not part:
            continue
        scale = 1000 if part.endswith("k") else 1
        try:
            value = int(part.removesuffix("k")) * scale
        except ValueError:
            raise ValueError(f"cannot read length {part!r}; give numbers like 1000,4000,16000 or 1k,4k") from None
        if value <= 0:
            raise ValueError(f"lengths must be positive, not {value}")
        lengths.add(value)
    if not lengths:
        raise ValueError("give at least one length")
    return sorted(lengths)


def run_latency(
    config: StreamRAGConfig,
    out_dir: Path,
    *,
    lengths: list[int] | tuple[int, ...] = DEFAULT_LENGTHS,
    policies: list[str] | tuple[str, ...] = POLICIES,
    steps: int = 64,
    recompute_steps: int = 4,
    dense_max: int = 16000,
    name: str = "latency",
    threads: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure every policy in its own fresh process; write ``<name>.json`` and ``<name>.png``.

    ``config`` gives the model, device and cache shape (``cache.sink_tokens``,
    ``cache.window_tokens``, ``cache.evict_chunk``, ``cache.prefill_chunk``).
    ``threads`` sets torch's CPU threads in the measuring processes.
    """
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown policies {unknown}; choose from {', '.join(POLICIES)}")
    if steps < 1 or recompute_steps < 1:
        raise ValueError("--steps and --recompute-steps must be at least 1")
    lengths = sorted(set(lengths))
    cache = config.cache
    if steps < cache.evict_chunk:
        logger.warning(
            "a burst of %d steps is shorter than evict_chunk (%d): the sink timing may miss the eviction cost",
            steps,
            cache.evict_chunk,
        )
    started_load = load_average()
    started = time.perf_counter()
    measured: dict[str, dict[str, Any]] = {}
    for number, policy in enumerate(policies, 1):
        logger.info("measuring %s in a fresh process (%d of %d)", policy, number, len(policies))
        job = {
            "policy": policy,
            "config": config.model_dump(mode="json"),
            "lengths": lengths,
            "steps": recompute_steps if policy == "recompute" else steps,
            "dense_max": dense_max,
            "threads": threads,
            "progress": progress,
        }
        # A fresh interpreter per policy: its RSS is its own, not what earlier policies left behind.
        # The child shows its own progress bar on the shared stderr.
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            measured[policy] = pool.submit(measure_policy, job).result()
    wall = time.perf_counter() - started

    first = next(iter(measured.values()))
    result: dict[str, Any] = {
        "benchmark": "latency",
        "model": first["model"],
        "settings": {
            "lengths": lengths,
            "steps": steps,
            "recompute_steps": recompute_steps,
            "dense_max": dense_max,
            "sink_tokens": cache.sink_tokens,
            "window_tokens": cache.window_tokens,
            "capacity": cache.capacity,
            "evict_chunk": cache.evict_chunk,
            "prefill_chunk": min(cache.prefill_chunk, cache.window_tokens),
            "decoding": "greedy (argmax)",
            "text": TEXT_SOURCE,
        },
    }
    for policy, data in measured.items():
        result[policy] = {key: value for key, value in data.items() if key != "model"}
    result["ratios"] = latency_ratios(result, lengths)
    result["wall_seconds"] = round(wall, 1)
    result["host"] = host_info(started_load) | {"torch_threads": first["model"]["torch_threads"]}

    out_dir = Path(out_dir)
    write_json(out_dir / f"{name}.json", result)
    plot_latency(result, out_dir / f"{name}.png")
    return result


def latency_ratios(result: dict[str, Any], lengths: list[int]) -> dict[str, dict[str, float | None]]:
    """Per length: how many times slower (and bigger) each baseline is than the sink cache."""
    ratios: dict[str, dict[str, float | None]] = {}
    sink = _by_length(result.get("sink"))
    for length in lengths:
        base = sink.get(length)
        row: dict[str, float | None] = {}
        for policy in ("dense", "recompute", "archive"):
            other = _by_length(result.get(policy)).get(length)
            if policy not in result:
                continue
            ok = base is not None and other is not None
            row[f"{policy}_vs_sink_ms_per_token"] = (
                rounded(other["ms_per_token"] / base["ms_per_token"], 3) if ok else None
            )
            row[f"{policy}_vs_sink_rss_mb"] = rounded(other["rss_mb"] / base["rss_mb"], 3) if ok else None
        if "dense" in result:
            other = _by_length(result["dense"]).get(length)
            row["dense_vs_sink_cache_mb"] = (
                rounded(other["cache_mb"] / base["cache_mb"], 3)
                if base is not None and other is not None and base["cache_mb"]
                else None
            )
        ratios[str(length)] = row
    return ratios


def _by_length(policy: dict[str, Any] | None) -> dict[int, dict[str, Any]]:
    """Measured (not skipped) results of one policy, by length."""
    if not policy:
        return {}
    return {r["length"]: r for r in policy["results"] if not r.get("skipped")}


# -- the measuring process ----------------------------------------------------


def measure_policy(job: dict[str, Any]) -> dict[str, Any]:
    """Entry point of the fresh process: load the model, run one policy's stream, return its numbers."""
    import torch

    from streamrag.models import load_model

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    config = StreamRAGConfig.model_validate(job["config"])
    policy, lengths, steps = job["policy"], job["lengths"], job["steps"]
    model, tokenizer, resolved = load_model(config.model, config.data_dir)
    text_config = model.config.get_text_config(decoder=True)
    trained = getattr(text_config, "max_position_embeddings", None)
    # Enough text for the longest stream; the burst tokens are the model's own.
    text = text_token_ids(tokenizer, max(lengths), cycle=True)
    gc.collect()
    rss_model = rss_bytes()
    runners = {"sink": _SinkStream, "dense": _DenseStream, "recompute": _RecomputeStream, "archive": _ArchiveStream}
    runner = runners[policy](model, tokenizer, config)
    results: list[dict[str, Any]] = []
    position = 0  # tokens in the stream so far: text fed plus tokens generated in earlier bursts
    fed = 0  # text tokens fed so far
    started = time.perf_counter()
    with progress_bar(job.get("progress", True)) as bar:
        task = bar.add_task(f"{policy:>9}", total=max(lengths))
        with torch.inference_mode():
            for length in lengths:
                skip = runner.skip_reason(length, job["dense_max"])
                if skip:
                    logger.info("%s: skipping %d tokens: %s", policy, length, skip)
                    results.append({"length": length, "skipped": True, "reason": skip})
                    continue
                setup_started = time.perf_counter()
                if length > position:
                    runner.advance(text[fed : fed + length - position])
                    fed += length - position
                    position = length
                logits = runner.last_logits
                stream_tokens = position
                bar.update(task, completed=position)
                setup = time.perf_counter() - setup_started
                runner.before_burst()
                times: list[float] = []
                peak_cache = runner.cache_bytes()
                peak_tokens = runner.cache_tokens()
                for _ in range(steps):
                    token = int(logits.argmax())
                    step_started = time.perf_counter()
                    logits = runner.step(token)
                    times.append(time.perf_counter() - step_started)
                    if runner.cache_bytes() > peak_cache:
                        peak_cache, peak_tokens = runner.cache_bytes(), runner.cache_tokens()
                runner.after_burst()
                position += steps
                rss = rss_bytes()
                entry = {
                    "length": length,
                    "stream_tokens": stream_tokens,
                    "ms_per_token": round(1000 * statistics.fmean(times), 3),
                    "ms_per_token_median": round(1000 * statistics.median(times), 3),
                    "steps": steps,
                    "rss_mb": round(rss / MB, 1),
                    "rss_over_model_mb": round((rss - rss_model) / MB, 1),
                    # Peak KV held while the burst ran (the sink cache fills to capacity before each eviction).
                    "cache_mb": round(peak_cache / MB, 3),
                    "cache_tokens": peak_tokens,
                    "setup_seconds": round(setup, 2),
                    **runner.extra(),
                }
                if policy == "dense" and trained and length > trained:
                    entry["beyond_trained_context"] = True
                    entry["note"] = (
                        f"positions beyond the trained context ({trained}): the cost is real, the output is not usable"
                    )
                results.append(entry)
                logger.info(
                    "%s at %d tokens: %.1f ms/token, rss %.0f MB, cache %.1f MB",
                    policy,
                    length,
                    entry["ms_per_token"],
                    entry["rss_mb"],
                    entry["cache_mb"],
                )
    runner.close()
    return {
        "model": {
            "name": resolved.description,
            "max_position_embeddings": trained,
            "device": str(next(model.parameters()).device),
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "torch_threads": torch.get_num_threads(),
        },
        "description": POLICY_LABELS[policy],
        "rss_model_mb": round(rss_model / MB, 1),
        "seconds": round(time.perf_counter() - started, 1),
        "results": results,
    }


class _Stream:
    """What every policy's runner shares: nothing to do around a burst unless it says so."""

    def before_burst(self) -> None:
        pass

    def after_burst(self) -> None:
        pass

    def close(self) -> None:
        pass


class _EngineStream(_Stream):
    """A runner around a StreamingLM (``self.lm``): its cache's size and eviction counts."""

    lm: Any

    def cache_bytes(self) -> int:
        return self.lm.cache.nbytes()

    def cache_tokens(self) -> int:
        return self.lm.cache.get_seq_length()

    def extra(self) -> dict[str, Any]:
        stats = self.lm.stats()
        return {"capacity": stats.capacity, "evicted_tokens": stats.evicted_tokens, "evictions": stats.evictions}


class _SinkStream(_EngineStream):
    """The engine itself: text through feed_for_scoring (real eviction), single-token decode steps."""

    def __init__(self, model, tokenizer, config: StreamRAGConfig):
        from streamrag.engine import StreamingLM

        self.lm = StreamingLM(model, tokenizer, config)
        self.chunk = min(config.cache.prefill_chunk, config.cache.window_tokens)
        self.last_logits = None

    def skip_reason(self, length: int, dense_max: int) -> str | None:
        return None

    def advance(self, token_ids: list[int]):
        for start in range(0, len(token_ids), self.chunk):
            self.last_logits = self.lm.feed_for_scoring(token_ids[start : start + self.chunk])[-1]
        return self.last_logits

    def step(self, token: int):
        self.last_logits = self.lm.feed_for_scoring([token])[-1]
        return self.last_logits


class _DenseStream(_Stream):
    """transformers' DynamicCache, never evicted."""

    def __init__(self, model, tokenizer, config: StreamRAGConfig):
        from transformers import DynamicCache

        self.model = model
        self.device = next(model.parameters()).device
        self.cache = DynamicCache()
        self.chunk = min(config.cache.prefill_chunk, config.cache.window_tokens)
        self.last_logits = None

    def skip_reason(self, length: int, dense_max: int) -> str | None:
        if length > dense_max:
            return f"dense is capped at --dense-max {dense_max} tokens (its cache and per-step cost grow with length)"
        return None

    def _forward(self, token_ids: list[int]):
        import torch

        input_ids = torch.tensor([token_ids], dtype=torch.long, device=self.device)
        out = self.model(input_ids=input_ids, past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        self.last_logits = out.logits[0, -1].float()
        return self.last_logits

    def advance(self, token_ids: list[int]):
        for start in range(0, len(token_ids), self.chunk):
            self._forward(token_ids[start : start + self.chunk])
        return self.last_logits

    def step(self, token: int):
        return self._forward([token])

    def cache_bytes(self) -> int:
        return cache_nbytes(self.cache)

    def cache_tokens(self) -> int:
        return self.cache.get_seq_length()

    def extra(self) -> dict[str, Any]:
        return {}


class _RecomputeStream(_Stream):
    """No cache: each step is a full forward over the last ``sink_tokens + window_tokens`` tokens."""

    def __init__(self, model, tokenizer, config: StreamRAGConfig):
        self.model = model
        self.device = next(model.parameters()).device
        self.window = config.cache.capacity
        self.history: list[int] = []
        self.last_logits = None

    def skip_reason(self, length: int, dense_max: int) -> str | None:
        return None

    def _forward(self):
        import torch

        input_ids = torch.tensor([self.history[-self.window :]], dtype=torch.long, device=self.device)
        out = self.model(input_ids=input_ids, use_cache=False, logits_to_keep=1)
        self.last_logits = out.logits[0, -1].float()
        return self.last_logits

    def advance(self, token_ids: list[int]):
        # Reaching a length costs nothing here: the state is just the token history.
        self.history.extend(token_ids)
        self.history = self.history[-self.window :]
        return self._forward()

    def step(self, token: int):
        self.history.append(token)
        self.history = self.history[-self.window :]
        return self._forward()

    def cache_bytes(self) -> int:
        return 0  # nothing kept between steps; each step builds (and drops) K/V for the whole window

    def cache_tokens(self) -> int:
        return 0

    def extra(self) -> dict[str, Any]:
        return {"window_tokens": self.window}


# -- the figure ---------------------------------------------------------------


def plot_latency(result: dict[str, Any], path: Path) -> Path:
    """ms/token, process RSS and KV-cache size against stream length, one line per policy."""
    from matplotlib.ticker import ScalarFormatter

    figure, axes = new_figure(15, 5.2, ncols=3)
    panels = (
        ("ms_per_token", "ms per generated token"),
        ("rss_mb", "process RSS after the burst (MB)"),
        ("cache_mb", "KV cache held (MB)"),
    )
    trained = result["model"].get("max_position_embeddings")
    lengths = result["settings"]["lengths"]
    for ax, (key, label) in zip(axes, panels, strict=True):
        for policy in POLICIES:
            if policy not in result:
                continue
            points = sorted(_by_length(result[policy]).items())
            if not points:
                continue
            xs = [length for length, _ in points]
            ys = [entry[key] for _, entry in points]
            ax.plot(xs, ys, marker="o", label=POLICY_LABELS[policy], color=POLICY_COLORS[policy])
            for x, y in zip(xs, ys, strict=True):
                ax.annotate(_label(y), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if trained and max(lengths) > trained:
            ax.axvline(trained, color="tab:purple", linestyle="--", linewidth=1)
            ax.annotate(
                f" trained context ({trained:,})",
                (trained, 0.98),
                xycoords=("data", "axes fraction"),
                va="top",
                fontsize=7,
                color="tab:purple",
            )
        ax.set_xscale("log")
        ax.set_xticks(lengths, [f"{length:,}" for length in lengths])
        ax.minorticks_off()
        ax.set_xlabel("tokens in the stream so far")
        ax.set_ylabel(label)
        if key == "ms_per_token":
            # Recompute costs a hundred times more than a cached step: only a log axis shows both.
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(ScalarFormatter())
            ax.margins(y=0.15)
        else:
            ax.margins(y=0.12)  # room for the value labels
        if key == "cache_mb":  # RSS starts at the model's own size; zero would flatten its differences
            ax.set_ylim(0, ax.get_ylim()[1])
        ax.grid(True, alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=9, frameon=False)
    s = result["settings"]
    model = result["model"].get("name") or "model"
    figure.suptitle(
        f"{model} on {result['model'].get('device')}: greedy decode, {s['steps']}-step bursts "
        f"(recompute: {s['recompute_steps']}); cache {s['capacity']} tokens "
        f"({s['sink_tokens']} sinks + {s['window_tokens']} window)",
        fontsize=10,
    )
    return save_figure(figure, path)


def _label(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


class _ArchiveStream(_EngineStream):
    """A conversation with the archive attached: chat messages in, a Reply's steps out, evictions logged."""

    def __init__(self, model, tokenizer, config: StreamRAGConfig):
        import tempfile
        import threading

        from streamrag.archive import Archive
        from streamrag.session import Assistant, Resources
        from streamrag.transcript import open_transcript

        self._dir = tempfile.TemporaryDirectory(prefix="streamrag-latency-")
        work = Path(self._dir.name)
        config = config.model_copy(update={"data_dir": work})
        # Greedy with no repetition penalty: the reply's tokens are the runner's argmax tokens.
        generation = config.generation.model_copy(
            update={"temperature": 0.0, "repetition_penalty": 1.0, "ignore_eos": True, "max_new_tokens": 10**9}
        )
        config = config.model_copy(update={"generation": generation})
        self.tokenizer = tokenizer
        self.resources = Resources(
            config,
            model,
            tokenizer,
            Archive(config.archive, work),
            open_transcript(config.transcript_target),
            threading.Lock(),
        )
        self.assistant = Assistant(self.resources)
        self.lm = self.assistant.lm
        self.chunk = min(config.cache.prefill_chunk, config.cache.window_tokens)
        self.reply = None
        self.steps = 0
        self.tokens = 0
        self.last_logits = None

    def skip_reason(self, length: int, dense_max: int) -> str | None:
        return None

    def advance(self, token_ids: list[int]):
        """The text as alternating user/assistant messages of about one prefill chunk each."""
        if self.reply is not None:
            self.reply.close()
            self.reply = None
        messages = []
        for i, start in enumerate(range(0, len(token_ids), self.chunk)):
            text = self.tokenizer.decode(token_ids[start : start + self.chunk])
            if text.strip():
                messages.append(("user" if i % 2 == 0 else "assistant", text))
        self.assistant.add_messages(messages)
        self.last_logits = self.lm._last_logits
        return self.last_logits

    def before_burst(self) -> None:
        self.assistant.flush(timeout=600)  # the backlog of the text just fed, indexed before timing starts
        self.reply = self.assistant.stream_reply()

    def step(self, token: int):
        before = self.lm.stats().generated_tokens
        next(self.reply)
        self.steps += 1
        self.tokens += self.lm.stats().generated_tokens - before
        self.last_logits = self.lm._last_logits
        return self.last_logits

    def after_burst(self) -> None:
        self.reply.close()
        self.reply = None

    def extra(self) -> dict[str, Any]:
        archive = self.resources.archive
        return super().extra() | {
            "tokens_per_step": rounded(self.tokens / max(self.steps, 1), 3),
            "indexed_chunks": archive.chunks_written,
            "index_ms_per_chunk": rounded(1000 * archive.write_seconds / max(archive.chunks_written, 1), 2),
            "pending_evictions": self.resources.transcript.pending_count(),
        }

    def close(self) -> None:
        self.resources.close()
        self._dir.cleanup()
