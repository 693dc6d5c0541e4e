"""Perplexity of one long text under the sink cache and its two baselines, in one run.

The three policies score the same tokens, fed in the same chunks, through the
same loaded model:

``dense``
    transformers' ``DynamicCache``: nothing is ever evicted. The reference,
    until the text outgrows the positions the model was trained on.
``window``
    a sliding window without attention sinks: a :class:`StreamingLM` with
    ``sink_tokens=0`` and ``window_tokens = W + S``, so it holds exactly as
    many tokens as the sink cache. StreamingLLM's failing baseline.
``sink``
    the attention-sink cache as chat uses it (``sink_tokens=S``,
    ``window_tokens=W``), through :meth:`StreamingLM.feed_for_scoring`.
``self_extend`` (optional)
    a sink cache large enough for the whole text in Self-Extend position
    mode: like ``dense`` nothing is evicted, but no relative position exceeds
    the trained length, so perplexity past it should stay near the in-range one.

Token ``i`` is scored with the logits the model produced at position
``i - 1`` (the last logits of a chunk score the first token of the next), so
every policy scores tokens ``1 .. N-1`` and the numbers are directly
comparable. The streaming policies evict ``chunk`` tokens at a time
(``evict_chunk = chunk``), so between chunks their cache holds between
``W + S - chunk`` and ``W + S`` tokens.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from streamrag.bench.common import (
    MB,
    TEXT_JOINER,
    TEXT_SOURCE,
    cache_nbytes,
    host_info,
    load_average,
    new_figure,
    progress_bar,
    rounded,
    save_figure,
    text_fingerprint,
    text_token_ids,
    write_json,
)
from streamrag.config import StreamRAGConfig, set_dotted

logger = logging.getLogger(__name__)

POLICIES = ("dense", "window", "sink")
POLICY_LABELS = {
    "dense": "dense (no eviction)",
    "window": "sliding window, no sinks",
    "sink": "attention sinks + window",
    "self_extend": "Self-Extend (no eviction)",
}
POLICY_COLORS = {"dense": "tab:gray", "window": "tab:red", "sink": "tab:blue", "self_extend": "tab:green"}


@dataclass
class PolicyScore:
    """Per-token negative log-likelihoods of one policy, and what its cache looked like."""

    name: str
    nll: torch.Tensor  # [N - 1] float64: NLL of tokens 1 .. N-1
    chunk_nll: list[float]  # mean NLL of the tokens scored in each chunk
    seconds: float
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def ppl(self) -> float:
        return math.exp(self.nll.mean().item())


class _Scorer:
    """Turns the logits of successive chunks into per-token NLLs (shifted by one)."""

    def __init__(self) -> None:
        self.previous: torch.Tensor | None = None  # last logits of the previous chunk
        self.nll: list[torch.Tensor] = []
        self.chunk_nll: list[float] = []

    def add(self, piece: list[int], logits: torch.Tensor) -> None:
        targets = torch.tensor(piece, dtype=torch.long)
        logits = logits.float()
        if self.previous is not None:
            predicting = torch.cat((self.previous.unsqueeze(0), logits[:-1]))
        else:
            predicting, targets = logits[:-1], targets[1:]
        self.previous = logits[-1]
        if targets.numel() == 0:
            return
        log_probs = torch.log_softmax(predicting, dim=-1)
        nll = -log_probs.gather(1, targets.unsqueeze(1)).squeeze(1).double()
        self.nll.append(nll)
        self.chunk_nll.append(nll.mean().item())

    def result(self) -> torch.Tensor:
        return torch.cat(self.nll) if self.nll else torch.zeros(0, dtype=torch.float64)


def score_dense(model, token_ids: list[int], chunk: int, on_chunk: Callable[[int], None] | None = None) -> PolicyScore:
    """Score ``token_ids`` with the plain model and a transformers ``DynamicCache`` (no eviction)."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    cache = DynamicCache()
    scorer = _Scorer()
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(token_ids), chunk):
            piece = token_ids[start : start + chunk]
            input_ids = torch.tensor([piece], dtype=torch.long, device=device)
            out = model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=0)
            scorer.add(piece, out.logits[0].float().cpu())
            if on_chunk:
                on_chunk(len(piece))
    length = cache.get_seq_length()
    stats = {
        "cache_tokens": length,
        "cache_tokens_max": length,
        "cache_mb": cache_nbytes(cache) / MB,
        "evicted_tokens": 0,
        "evictions": 0,
    }
    return PolicyScore("dense", scorer.result(), scorer.chunk_nll, time.perf_counter() - started, stats)


def score_streaming(
    lm, token_ids: list[int], chunk: int, name: str, on_chunk: Callable[[int], None] | None = None
) -> PolicyScore:
    """Score ``token_ids`` through a :class:`StreamingLM`, evicting on the path chat uses."""
    scorer = _Scorer()
    longest = 0
    started = time.perf_counter()
    for start in range(0, len(token_ids), chunk):
        piece = token_ids[start : start + chunk]
        logits = lm.feed_for_scoring(piece)
        longest = max(longest, lm.cache.get_seq_length())
        scorer.add(piece, logits.cpu())
        if on_chunk:
            on_chunk(len(piece))
    stats = lm.stats()
    cache = {
        "sink_tokens": stats.sink_tokens,
        "window_tokens": stats.window_tokens,
        "capacity": stats.capacity,
        "cache_tokens": stats.cache_tokens,
        "cache_tokens_max": longest,
        "cache_mb": stats.cache_bytes / MB,
        "evicted_tokens": stats.evicted_tokens,
        "evictions": stats.evictions,
    }
    return PolicyScore(name, scorer.result(), scorer.chunk_nll, time.perf_counter() - started, cache)


def streaming_config(
    base: StreamRAGConfig, sink_tokens: int, window_tokens: int, evict_chunk: int, **cache: Any
) -> StreamRAGConfig:
    """``base`` with another cache shape (validated like any config); ``cache`` sets further cache fields."""
    data = base.model_dump()
    set_dotted(data, "cache.sink_tokens", sink_tokens)
    set_dotted(data, "cache.window_tokens", window_tokens)
    set_dotted(data, "cache.evict_chunk", evict_chunk)
    for key, value in cache.items():
        set_dotted(data, f"cache.{key}", value)
    return StreamRAGConfig.from_dict(data)


def first_evicted_score(capacity: int, chunk: int) -> int:
    """Position of the first token scored after an eviction (earlier ones saw the whole text so far).

    Chunks are fed whole, so the first eviction happens before the first chunk
    that does not fit; its first token is still scored by the previous chunk's
    last logits, computed before the eviction.
    """
    return (capacity // chunk) * chunk + 1


def segment_bounds(tokens: int, capacity: int, chunk: int, trained: int | None) -> dict[str, tuple[int, int]]:
    """Token ranges worth comparing separately: before any eviction, inside and beyond the trained context.

    Bounds are token positions ``[start, end)``; only tokens ``1 .. N-1`` are
    scored, token ``p`` by the logits at position ``p - 1``, so "beyond the
    trained context" starts at ``trained + 1``.
    """
    evicted = first_evicted_score(capacity, chunk) if tokens > capacity else tokens  # no eviction at all
    segments = {"before_eviction": (1, min(evicted, tokens))}
    end = min(trained + 1, tokens) if trained else tokens
    if end > evicted:
        segments["after_eviction_within_trained_context"] = (evicted, end)
    if trained and tokens > trained + 1:
        segments["beyond_trained_context"] = (trained + 1, tokens)
    return {key: (a, b) for key, (a, b) in segments.items() if b > a}


def running_ppl(nll: torch.Tensor, span: int) -> torch.Tensor:
    """exp of the mean NLL over the last ``span`` tokens at each position (fewer at the start)."""
    sums = torch.cat((torch.zeros(1, dtype=torch.float64), nll.double().cumsum(0)))
    ends = torch.arange(1, nll.numel() + 1)
    starts = (ends - span).clamp(min=0)
    return ((sums[ends] - sums[starts]) / (ends - starts)).exp()


def run_ppl(
    model,
    tokenizer,
    config: StreamRAGConfig,
    out_dir: Path,
    *,
    tokens: int = 1500,
    window_tokens: int = 256,
    sink_tokens: int = 4,
    chunk: int = 64,
    smooth: int | None = None,
    name: str = "ppl",
    model_name: str | None = None,
    progress: bool = True,
    self_extend: bool = False,
    group_size: int = 4,
    neighbor_window: int = 2048,
) -> dict[str, Any]:
    """Score the benchmark text under ``dense``, ``window`` and ``sink``; write ``<name>.json`` and ``.png``.

    ``config`` supplies everything but the cache shape (device, data dir).
    ``self_extend=True`` adds the ``self_extend`` row (``group_size``,
    ``neighbor_window``). Returns the dictionary written as JSON.
    """
    from streamrag.engine import StreamingLM

    if tokens < 2:
        raise ValueError("--tokens must be at least 2 (the first token has nothing to be predicted from)")
    if chunk > window_tokens:
        raise ValueError(f"--chunk ({chunk}) cannot exceed --window ({window_tokens})")
    capacity = sink_tokens + window_tokens
    token_ids = text_token_ids(tokenizer, tokens)
    text_config = model.config.get_text_config(decoder=True)
    trained = getattr(text_config, "max_position_embeddings", None)
    smooth = smooth or max(100, min(256, tokens // 12))
    engines = {
        "window": StreamingLM(model, tokenizer, streaming_config(config, 0, capacity, chunk)),
        "sink": StreamingLM(model, tokenizer, streaming_config(config, sink_tokens, window_tokens, chunk)),
    }
    policies = POLICIES
    if self_extend:
        # The whole text fits (rounded up to whole chunks), so the row isolates the position mapping.
        whole = -(-tokens // chunk) * chunk
        extended = streaming_config(
            config,
            sink_tokens,
            max(whole, window_tokens),
            chunk,
            position_mode="self_extend",
            group_size=group_size,
            neighbor_window=neighbor_window,
        )
        engines["self_extend"] = StreamingLM(model, tokenizer, extended)
        policies = (*POLICIES, "self_extend")
    logger.info(
        "perplexity of %d tokens; cache of %d tokens (%d sinks + %d window), chunks of %d",
        tokens,
        capacity,
        sink_tokens,
        window_tokens,
        chunk,
    )
    started_load = load_average()
    started = time.perf_counter()
    scores: dict[str, PolicyScore] = {}
    with progress_bar(progress) as bar:
        for policy in policies:
            task = bar.add_task(f"{policy:>6}", total=tokens)

            def advance(count: int, task=task) -> None:
                bar.advance(task, count)

            if policy == "dense":
                scores[policy] = score_dense(model, token_ids, chunk, advance)
            else:
                scores[policy] = score_streaming(engines[policy], token_ids, chunk, policy, advance)
            logger.info("%s: ppl %.3f in %.1f s", policy, scores[policy].ppl, scores[policy].seconds)
    wall = time.perf_counter() - started

    segments = segment_bounds(tokens, capacity, chunk, trained)
    result: dict[str, Any] = {
        "benchmark": "ppl",
        "model": {"name": model_name, "max_position_embeddings": trained, "device": str(engines["sink"].device)},
        "text": {
            "source": TEXT_SOURCE,
            "joiner": TEXT_JOINER,
            "tokens": tokens,
            "scored_tokens": tokens - 1,
            "fingerprint": text_fingerprint(token_ids),
        },
        "settings": {
            "tokens": tokens,
            "window_tokens": window_tokens,
            "sink_tokens": sink_tokens,
            "capacity": capacity,
            "chunk": chunk,
            "first_evicted_score": first_evicted_score(capacity, chunk),
            "evict_chunk": chunk,
            "smooth": smooth,
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            **({"self_extend": {"group_size": group_size, "neighbor_window": neighbor_window}} if self_extend else {}),
        },
        "segments": {key: list(bounds) for key, bounds in segments.items()},
    }
    for policy, score in scores.items():
        entry: dict[str, Any] = {
            "description": POLICY_LABELS[policy],
            "ppl": rounded(score.ppl),
            "mean_nll": rounded(score.nll.mean().item(), 5),
            "scored_tokens": score.nll.numel(),
            "ppl_by_segment": {
                key: rounded(math.exp(score.nll[a - 1 : b - 1].mean().item())) for key, (a, b) in segments.items()
            },
            "seconds": round(score.seconds, 2),
            "tokens_per_second": round(tokens / score.seconds, 1) if score.seconds > 0 else None,
            **{key: rounded(value) if isinstance(value, float) else value for key, value in score.cache.items()},
            "nll_per_chunk": [rounded(value) for value in score.chunk_nll],
        }
        result[policy] = entry
    result["ratios"] = {
        "sink_vs_dense": rounded(scores["sink"].ppl / scores["dense"].ppl),
        "window_vs_dense": rounded(scores["window"].ppl / scores["dense"].ppl),
        "window_vs_sink": rounded(scores["window"].ppl / scores["sink"].ppl),
    }
    result["ratios_by_segment"] = {
        key: {
            "sink_vs_dense": _ratio(result["sink"], result["dense"], key),
            "window_vs_dense": _ratio(result["window"], result["dense"], key),
        }
        for key in segments
    }
    if self_extend:
        result["ratios"]["self_extend_vs_dense"] = rounded(scores["self_extend"].ppl / scores["dense"].ppl)
        for key in segments:
            result["ratios_by_segment"][key]["self_extend_vs_dense"] = _ratio(
                result["self_extend"], result["dense"], key
            )
    result["wall_seconds"] = round(wall, 1)
    result["host"] = host_info(started_load)

    out_dir = Path(out_dir)
    write_json(out_dir / f"{name}.json", result)
    plot_ppl(
        scores,
        out_dir / f"{name}.png",
        evicted=first_evicted_score(capacity, chunk),
        capacity=capacity,
        trained=trained,
        smooth=smooth,
        title=_title(result),
    )
    return result


def _ratio(entry: dict, reference: dict, segment: str) -> float | None:
    a, b = entry["ppl_by_segment"].get(segment), reference["ppl_by_segment"].get(segment)
    return rounded(a / b) if a and b else None


def _title(result: dict) -> str:
    s = result["settings"]
    model = result["model"]["name"] or "model"
    return (
        f"{model}: perplexity on {s['tokens']:,} tokens of {TEXT_SOURCE}\n"
        f"cache {s['capacity']} tokens (sink: {s['sink_tokens']} sinks + {s['window_tokens']} window; "
        f"window: 0 sinks + {s['capacity']}), chunks of {s['chunk']}"
    )


def plot_ppl(
    scores: dict[str, PolicyScore],
    path: Path,
    *,
    evicted: int,
    capacity: int,
    trained: int | None,
    smooth: int,
    title: str,
) -> Path:
    """Running perplexity along the text, one line per policy, log scale."""
    figure, (axes,) = new_figure(10, 6)
    settled: list[float] = []  # the curves once the running mean spans `smooth` tokens
    for policy, score in scores.items():
        curve = running_ppl(score.nll, smooth)
        if curve.numel() > smooth:
            settled += [curve[smooth:].min().item(), curve[smooth:].max().item()]
        positions = torch.arange(1, curve.numel() + 1)
        axes.plot(
            positions.numpy(),
            curve.numpy(),
            label=f"{POLICY_LABELS[policy]}: ppl {score.ppl:.2f}",
            color=POLICY_COLORS.get(policy),
            linewidth=1.4,
        )
    tokens = max(score.nll.numel() for score in scores.values()) + 1
    if evicted < tokens and tokens > capacity:
        axes.axvline(evicted, color="black", linestyle=":", linewidth=1)
        axes.annotate(
            " cache full: eviction starts",
            (evicted, 1),
            xycoords=("data", "axes fraction"),
            va="top",
            fontsize=8,
        )
    if trained and tokens > trained:
        axes.axvline(trained, color="tab:purple", linestyle="--", linewidth=1.2)
        axes.annotate(
            f" trained context ({trained:,})",
            (trained, 0.93),
            xycoords=("data", "axes fraction"),
            va="top",
            fontsize=8,
            color="tab:purple",
        )
    from matplotlib.ticker import LogLocator, ScalarFormatter

    axes.set_yscale("log")
    # Plain numbers (3, 10, 30) rather than 3x10^0 on the log axis.
    axes.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axes.yaxis.set_major_formatter(ScalarFormatter())
    axes.yaxis.set_minor_formatter("")
    if settled:
        # The first tokens have almost no context (perplexities in the thousands, the same for every
        # policy); scale the axis to the rest so that the differences between policies stay visible.
        axes.set_ylim(min(settled) / 1.3, max(settled) * 1.6)
    axes.set_xlim(0, tokens)
    axes.set_xlabel("token position in the text")
    axes.set_ylabel(f"perplexity (running mean of NLL over {smooth} tokens, exp)")
    axes.set_title(title, fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    # Two rows once a fourth policy (self_extend) joins, so the legend stays inside the figure.
    ncol = len(scores) if len(scores) <= 3 else 2
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=ncol, fontsize=9, frameon=False)
    return save_figure(figure, path)
