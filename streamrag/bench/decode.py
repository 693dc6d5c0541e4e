"""Decode and prefill speed, load time and bulk ingestion, beside llama.cpp on the same GGUF, in one run.

Users choose llama.cpp or Ollama for local chat because they are fast; this
benchmark says how far streamrag is from them, as ratios from one run on one
machine. For each quantisation setting (``model.quantize``: ``none`` is fp32
eager, ``int8``, ``int4``) and each thread count it measures, through the
engine chat uses (:class:`~streamrag.engine.StreamingLM`, sink cache, sampling,
ledger):

``decode``
    greedy tokens per second over ``decode_tokens`` tokens (end of turn
    ignored), after a short warm-up reply;
``prefill``
    tokens per second for one message of ``prefill_tokens`` tokens;
``perplexity``
    of the benchmark text under transformers' dense cache (quality: the goal
    is within 2% of fp32);
``load``
    a fresh process (the converted model already on disk, as on every start
    after the first): seconds to import streamrag, then to
    :meth:`StreamingLM.load`, and in total to the first token; the fastest of
    :data:`LOAD_RUNS` processes, measured before this one loads anything.

And once, for the default setting on all threads: ingesting a history of
``messages`` messages with ``Assistant.add_messages`` (seconds until it
returns, everything durable and lexically searchable; and until the dense
index has caught up), beside the same messages fed one ``add_message`` at a
time (the first ``baseline_messages`` of them).

llama.cpp (``llama-cpp-python``, the optional ``bench`` extra; it compiles from
source) runs the same GGUF file with the same thread counts and token counts
when it is importable; without it the JSON says so and the ratios are absent.
"""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from streamrag.bench.common import (
    host_info,
    load_average,
    new_figure,
    progress_bar,
    rounded,
    save_figure,
    text_token_ids,
    write_json,
)
from streamrag.config import StreamRAGConfig

logger = logging.getLogger(__name__)

GOALS = {
    "decode_vs_llama_cpp_1_thread": 1.0,  # at least llama.cpp's decode speed
    "prefill_vs_llama_cpp": 2.0,  # at least twice its prefill speed
    "ingestion_tokens_per_s": 2000.0,  # a long history on all threads
    "warm_start_s": 2.0,  # load to ready, converted model on disk
    "perplexity_vs_fp32": 1.02,  # quantisation costs at most 2%
}
WARMUP_TOKENS = 8
LOAD_RUNS = 2  # start-up times vary with the page cache and the machine's load: the fastest of two is reported


def llama_cpp_available() -> bool:
    """Whether ``llama_cpp`` can be imported here (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def run_decode(
    config: StreamRAGConfig,
    out: Path,
    quantize: tuple[str, ...] = ("none", "int8", "int4"),
    threads: tuple[int, ...] = (1, 2),
    decode_tokens: int = 256,
    prefill_tokens: int = 1024,
    messages: int = 10_000,
    baseline_messages: int = 200,
    llama_cpp: bool = True,
    name: str = "decode",
    load_runs: int = LOAD_RUNS,
) -> dict[str, Any]:
    """Measure every setting and llama.cpp, write ``out/name.json`` and ``out/name.png``; returns the result."""
    from streamrag.models import load_model, resolve

    load_before = load_average()
    started = time.monotonic()
    resolved = resolve(config.model)
    gguf = Path(resolved.path) / resolved.gguf_file if resolved.gguf_file else None
    results: dict[str, Any] = {}
    ingestion: dict[str, Any] | None = None
    default_mode, text = None, ""
    steps = len(quantize) * (len(threads) * 2 + 2) + (2 if messages else 0)
    if llama_cpp and gguf is not None and llama_cpp_available():
        steps += len(threads) * 2 + 1
    with progress_bar() as progress:
        task = progress.add_task("decode bench", total=steps)
        # Start-up first, while this process is idle: measured after the runs below, a child took 1.5x as long.
        loads = {}
        for mode in quantize:
            loads[mode] = _warm_load(config, mode, load_runs)
            progress.advance(task)
        for mode in quantize:
            settings = config.model.model_copy(update={"quantize": mode})
            model, tokenizer, _ = load_model(settings, config.data_dir)
            default_mode = default_mode or _default_mode(config, quantize)
            text = tokenizer.decode(text_token_ids(tokenizer, prefill_tokens))
            entry = _measure_engine(model, tokenizer, config, threads, decode_tokens, text, progress, task)
            entry["perplexity"] = _perplexity(model, tokenizer, prefill_tokens)
            progress.advance(task)
            entry["load"] = loads[mode]
            entry["quantized_as"] = _quantized_as(model)
            results[mode] = entry
            if messages and mode == default_mode:
                ingestion = _ingestion(model, tokenizer, config, messages, baseline_messages, max(threads))
                progress.advance(task, 2)
            del model
        reference = None
        if not llama_cpp:
            reference = {"available": False, "reason": "not requested (--no-llama-cpp)"}
        elif gguf is None:
            reference = {"available": False, "reason": "the model is not a GGUF file"}
        elif not llama_cpp_available():
            reference = {"available": False, "reason": "llama_cpp not importable: pip install -e '.[bench]'"}
        else:
            reference = _measure_llama_cpp(gguf, text, threads, decode_tokens)
            reference["available"] = True
            progress.advance(task, len(threads) * 2 + 1)
    result = {
        "benchmark": "decode",
        "model": resolved.description,
        "settings": {
            "quantize": list(quantize),
            "threads": list(threads),
            "decode_tokens": decode_tokens,
            "prefill_tokens": prefill_tokens,
            "messages": messages,
            "baseline_messages": baseline_messages,
            "load_runs": load_runs,
        },
        "streamrag": results,
        "llama_cpp": reference,
        "ingestion": ingestion,
        "host": host_info(load_before),
        "wall_seconds": rounded(time.monotonic() - started, 1),
    }
    result["default_setting"] = default_mode
    result["ratios"], result["goals"] = _ratios_and_goals(result, default_mode)
    write_json(out / f"{name}.json", result)
    plot_decode(result, out / f"{name}.png")
    return result


def _default_mode(config: StreamRAGConfig, measured: tuple[str, ...]) -> str:
    """The setting users get (``model.quantize`` as it resolves for this model and device), if measured."""
    from streamrag.models import converted_gguf_dir, pick_device, pick_quantize, resolve, source_weight_bits

    requested = config.model.quantize
    if requested == "auto":
        resolved, bits = resolve(config.model), None
        if resolved.gguf_file:
            gguf = Path(resolved.path) / resolved.gguf_file
            bits = source_weight_bits(converted_gguf_dir(gguf, config.data_dir), gguf)
        requested = pick_quantize("auto", pick_device(config.model.device), bits)
    return requested if requested in measured else measured[-1]


def _quantized_as(model) -> str:
    from streamrag.quantize import Int4WeightLinear, Int8WeightLinear

    kinds = {type(m) for m in model.modules()}
    return "int4" if Int4WeightLinear in kinds else "int8" if Int8WeightLinear in kinds else "none"


def _engine(model, tokenizer, config: StreamRAGConfig):
    from streamrag.engine import StreamingLM

    data = config.model_dump()
    data["generation"].update(temperature=0.0, ignore_eos=True, repetition_penalty=1.0)
    return StreamingLM(model, tokenizer, StreamRAGConfig.from_dict(data))


def _measure_engine(model, tokenizer, config, threads, decode_tokens: int, text: str, progress, task) -> dict[str, Any]:
    lm = _engine(model, tokenizer, config)
    entry: dict[str, Any] = {"decode_tokens_per_s": {}, "prefill_tokens_per_s": {}}
    previous = torch.get_num_threads()
    try:
        for count in threads:
            torch.set_num_threads(count)
            lm.reset()
            lm.chat("Warm up.", max_new_tokens=WARMUP_TOKENS)
            lm.reset()
            reply = lm.stream_chat("Tell me a long story about a lighthouse keeper.", max_new_tokens=decode_tokens)
            "".join(reply)
            entry["decode_tokens_per_s"][str(count)] = rounded(reply.stats.tokens_per_second, 2)
            progress.advance(task)
            lm.reset()
            prefill = lm.add_message("user", text)
            entry["prefill_tokens_per_s"][str(count)] = rounded(prefill.tokens / prefill.seconds, 1)
            entry["prefilled_tokens"] = prefill.tokens
            progress.advance(task)
    finally:
        torch.set_num_threads(previous)
    return entry


def _perplexity(model, tokenizer, tokens: int) -> float | None:
    from streamrag.bench.ppl import score_dense

    return rounded(score_dense(model, text_token_ids(tokenizer, tokens), chunk=256).ppl, 4)


_LOAD_SCRIPT = """
import json, sys, time
started = time.perf_counter()
import torch
torch.set_num_threads(1)
from streamrag.config import StreamRAGConfig
from streamrag.engine import StreamingLM
imported = time.perf_counter()
config = StreamRAGConfig.from_dict(json.loads(sys.argv[1]))
lm = StreamingLM.load(config=config)
loaded = time.perf_counter()
lm.chat("Hi", max_new_tokens=1)
first = time.perf_counter()
print(json.dumps({"import_s": imported - started, "load_s": loaded - imported, "ready_s": loaded - started,
                  "first_token_s": first - started}))
"""


def _warm_load(config: StreamRAGConfig, mode: str, runs: int = LOAD_RUNS) -> dict[str, Any]:
    """Fresh interpreters load the (already converted) model: where the seconds go, in the fastest of ``runs``."""
    data = json.loads(config.model_dump_json())
    data["model"]["quantize"] = mode
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    best: dict[str, Any] | None = None
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", _LOAD_SCRIPT, json.dumps(data)], capture_output=True, text=True, env=env, timeout=600
        )
        wall = time.perf_counter() - started
        if done.returncode != 0:
            logger.error("warm-load subprocess failed: %s", done.stderr[-2000:])
            last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"rc {done.returncode}"
            return {"error": last}
        timings = {k: rounded(v, 3) for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}
        timings["process_wall_s"] = rounded(wall, 3)
        if best is None or timings["ready_s"] < best["ready_s"]:
            best = timings
    return best | {"runs": runs}


def history_messages(count: int, seed: int = 0) -> list[tuple[str, str]]:
    """``count`` messages of everyday chat, user and assistant alternating (the memory benchmark's small talk)."""
    from streamrag.bench.conversations import filler_exchange

    rng = random.Random(seed)
    messages: list[tuple[str, str]] = []
    while len(messages) < count:
        user, assistant = filler_exchange(rng)
        messages += [("user", user), ("assistant", assistant)]
    return messages[:count]


def _token_count(tokenizer, messages: list[tuple[str, str]]) -> int:
    """Content tokens as the engine counts them (``ChatFormat.content_lengths``), template framing aside."""
    from streamrag.prompt import ChatFormat

    return sum(ChatFormat(tokenizer).content_lengths([text for _, text in messages]))


def _ingestion(model, tokenizer, config, count: int, baseline_count: int, threads: int) -> dict[str, Any]:
    """Seconds to ingest ``count`` messages in one call, and the same messages one at a time (the first few)."""
    from streamrag.session import Assistant, Resources

    history = history_messages(count)
    tokens = _token_count(tokenizer, history)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="streamrag-bench-ingest-") as work:
            data = config.model_dump()
            data.update(data_dir=Path(work) / "bulk", transcript_url=None)
            data["archive"]["chroma_url"] = None
            resources = Resources.around(StreamRAGConfig.from_dict(data), model, tokenizer)
            try:
                assistant = Assistant.open(resources=resources)
                started = time.perf_counter()
                assistant.add_messages(history)
                returned = time.perf_counter() - started
                indexed_ok = assistant.flush(timeout=3600)
                indexed = time.perf_counter() - started
                stored = resources.transcript.count(assistant.session_id)
                chunks = assistant.stats().archived_chunks
            finally:
                resources.close()
            data["data_dir"] = Path(work) / "one-by-one"
            resources = Resources.around(StreamRAGConfig.from_dict(data), model, tokenizer)
            try:
                assistant = Assistant.open(resources=resources)
                some = history[:baseline_count]
                some_tokens = _token_count(tokenizer, some)
                started = time.perf_counter()
                for role, text in some:
                    assistant.add_message(role, text)
                one_by_one = time.perf_counter() - started
            finally:
                resources.close()
    finally:
        torch.set_num_threads(previous)
    return {
        "messages": count,
        "tokens": tokens,
        "threads": threads,
        "stored_messages": stored,
        "archived_chunks": chunks,
        "returned_s": rounded(returned, 2),
        "tokens_per_s": rounded(tokens / returned, 1),
        "indexed_s": rounded(indexed, 2) if indexed_ok else None,
        "indexed_tokens_per_s": rounded(tokens / indexed, 1) if indexed_ok else None,
        "one_by_one_messages": baseline_count,
        "one_by_one_tokens_per_s": rounded(some_tokens / one_by_one, 1) if one_by_one > 0 else None,
    }


_LLAMA_LOAD_SCRIPT = """
import json, sys, time
started = time.perf_counter()
from llama_cpp import Llama
imported = time.perf_counter()
llm = Llama(model_path=sys.argv[1], n_threads=1, n_ctx=2048, verbose=False)
loaded = time.perf_counter()
print(json.dumps({"import_s": imported - started, "load_s": loaded - imported, "ready_s": loaded - started}))
"""


def _measure_llama_cpp(gguf: Path, text: str, threads, decode_tokens: int) -> dict[str, Any]:
    """llama.cpp on the same file: greedy decode and one prefill per thread count, and a fresh-process load."""
    from llama_cpp import Llama, __version__

    entry: dict[str, Any] = {"version": __version__, "decode_tokens_per_s": {}, "prefill_tokens_per_s": {}}
    for count in threads:
        llm = Llama(
            model_path=str(gguf), n_threads=count, n_threads_batch=count, n_ctx=4096, n_batch=512, verbose=False
        )
        prompt = llm.tokenize(text.encode())
        llm.reset()
        started = time.perf_counter()
        llm.eval(prompt)
        entry["prefill_tokens_per_s"][str(count)] = rounded(len(prompt) / (time.perf_counter() - started), 1)
        entry["prefilled_tokens"] = len(prompt)
        opening = llm.tokenize(b"Tell me a long story about a lighthouse keeper.")
        produced, first = 0, None
        for _ in llm.generate(opening, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            produced += 1
            if first is None:
                first = time.perf_counter()  # from the first token on: decode only, as for streamrag
            if produced > decode_tokens:
                break
        entry["decode_tokens_per_s"][str(count)] = rounded(decode_tokens / (time.perf_counter() - first), 2)
        del llm
    done = subprocess.run(
        [sys.executable, "-c", _LLAMA_LOAD_SCRIPT, str(gguf)], capture_output=True, text=True, timeout=300
    )
    if done.returncode == 0:
        entry["load"] = {k: rounded(v, 3) for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}
    return entry


def _ratios_and_goals(result: dict[str, Any], default_mode: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each setting against llama.cpp (speed) and fp32 (perplexity); the issue's goals, met or not."""
    ours, reference = result["streamrag"], result["llama_cpp"] or {}
    ratios: dict[str, Any] = {}
    fp32 = ours.get("none", {}).get("perplexity")
    for mode, entry in ours.items():
        row: dict[str, Any] = {}
        if fp32 and entry.get("perplexity"):
            row["perplexity_vs_fp32"] = rounded(entry["perplexity"] / fp32, 4)
        if reference.get("available"):
            for kind in ("decode", "prefill"):
                for count, value in entry[f"{kind}_tokens_per_s"].items():
                    theirs = reference[f"{kind}_tokens_per_s"].get(count)
                    if value and theirs:
                        row[f"{kind}_vs_llama_cpp_{count}_thread"] = rounded(value / theirs, 3)
        ratios[mode] = row
    chosen, chosen_ratios = ours.get(default_mode, {}), ratios.get(default_mode, {})
    ingestion = result.get("ingestion") or {}
    one = str(min(result["settings"]["threads"]))
    measured = {
        "decode_vs_llama_cpp_1_thread": chosen_ratios.get(f"decode_vs_llama_cpp_{one}_thread"),
        "prefill_vs_llama_cpp": chosen_ratios.get(f"prefill_vs_llama_cpp_{one}_thread"),
        "ingestion_tokens_per_s": ingestion.get("tokens_per_s"),
        "warm_start_s": (chosen.get("load") or {}).get("ready_s"),
        "perplexity_vs_fp32": chosen_ratios.get("perplexity_vs_fp32"),
    }
    goals = {}
    for key, target in GOALS.items():
        value = measured[key]
        lower_is_better = key in ("warm_start_s", "perplexity_vs_fp32")
        met = None if value is None else (value <= target if lower_is_better else value >= target)
        goals[key] = {"setting": default_mode, "goal": target, "measured": value, "met": met}
    return ratios, goals


def plot_decode(result: dict[str, Any], path: Path) -> Path:
    """Decode and prefill tokens/s per thread count (each setting beside llama.cpp), and warm load seconds."""
    figure, (decode_axis, prefill_axis, load_axis) = new_figure(14, 4, ncols=3)
    series = {f"streamrag {mode}": entry for mode, entry in result["streamrag"].items()}
    if (result["llama_cpp"] or {}).get("available"):
        series["llama.cpp"] = result["llama_cpp"]
    threads = [str(t) for t in result["settings"]["threads"]]
    width = 0.8 / max(len(series), 1)
    for axis, kind in ((decode_axis, "decode"), (prefill_axis, "prefill")):
        for i, (label, entry) in enumerate(series.items()):
            values = [entry[f"{kind}_tokens_per_s"].get(t) or 0 for t in threads]
            bars = axis.bar([j + i * width for j in range(len(threads))], values, width, label=label)
            axis.bar_label(bars, fmt="%.0f", fontsize=7)
        axis.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(threads))], [f"{t} thr" for t in threads])
        axis.set(ylabel="tokens / s", title=f"{kind} ({result['settings'][f'{kind}_tokens']} tokens)")
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3, axis="y")
    labels, imports, loads = [], [], []
    for label, entry in series.items():
        load = entry.get("load") or {}
        if "ready_s" in load:
            labels.append(label.replace("streamrag ", ""))
            imports.append(load.get("import_s", 0))
            loads.append(load.get("load_s", 0))
    load_axis.bar(labels, imports, label="import")
    load_axis.bar(labels, loads, bottom=imports, label="load")
    load_axis.axhline(GOALS["warm_start_s"], color="grey", ls="--", lw=1, label="goal")
    load_axis.set(ylabel="seconds", title="warm start to ready (fresh process)")
    load_axis.legend(fontsize=7)
    ingestion = result.get("ingestion")
    if ingestion:
        load_axis.text(
            0.02,
            0.97,
            f"ingest {ingestion['messages']:,} msgs: {ingestion['tokens_per_s']:,.0f} tok/s "
            f"(one by one {ingestion['one_by_one_tokens_per_s'] or 0:,.0f})",
            transform=load_axis.transAxes,
            va="top",
            fontsize=7,
        )
    return save_figure(figure, path)
