"""Many clients at once: the OpenAI-compatible API against the Gradio app, same model, same load.

For each number of concurrent clients (1, 4, 16 by default) every client holds
one conversation of ``turns`` user messages, sent one after another as a real
user would (the next once the reply is complete); all clients start together.
Through the API a client streams ``/v1/chat/completions`` with its whole
history and its own ``X-Session-Id``; through the Gradio app it is its own
``gradio_client.Client`` (a browser tab's session) calling ``/chat``. Replies
are greedy and exactly ``max_tokens`` long (end of turn ignored), so both
targets do the same work.

Measured per target and client count: time to first token (the first piece of
reply text a client receives; p50 and p95 over all turns), tokens per second
per client (a turn's tokens over its time from first to last piece; mean of
turns) and in total (all tokens over the wall time), and errors. The two
targets share one model and one process; they run one after the other.
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamrag.bench.common import host_info, load_average, new_figure, progress_bar, rounded, save_figure, write_json
from streamrag.config import StreamRAGConfig

logger = logging.getLogger(__name__)

LINES = [
    "Good morning! I'm planning a week of meals, can you help?",
    "I usually cook with lentils, rice and whatever vegetables are cheap.",
    "My partner doesn't eat mushrooms, so leave those out.",
    "What could I make on Monday that keeps for two days?",
    "And something quick for Tuesday, I get home late.",
    "Could Wednesday be a soup? It is getting cold here.",
    "Thursday we have guests, four people in total.",
    "Friday is pizza night, always, but homemade.",
    "On Saturday we go hiking, so something to carry.",
    "Sunday lunch is with my parents, they like fish.",
]


@dataclass
class TurnTiming:
    ttft_s: float
    tokens: int
    stream_s: float  # first to last piece


def run_serve(
    model,
    tokenizer,
    config: StreamRAGConfig,
    out: Path,
    clients: tuple[int, ...] = (1, 4, 16),
    turns: int = 20,
    max_tokens: int = 32,
    targets: tuple[str, ...] = ("api", "gradio"),
    name: str = "serve",
) -> dict[str, Any]:
    """Run the load against each target and write ``out/name.json`` and ``out/name.png``."""
    load_before = load_average()
    started = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    total_turns = sum(clients) * turns * len(targets)
    with progress_bar() as progress, tempfile.TemporaryDirectory(prefix="streamrag-bench-serve-") as work:
        task = progress.add_task("turns", total=total_turns)
        for target in targets:
            results[target] = {}
            for count in clients:
                resources = _resources(model, tokenizer, config, Path(work) / f"{target}-{count}", max_tokens, count)
                try:
                    run = _run_api if target == "api" else _run_gradio
                    results[target][str(count)] = run(
                        resources, count, turns, max_tokens, lambda: progress.advance(task)
                    )
                finally:
                    resources.close()
    for count in clients:
        api, gradio = results.get("api", {}).get(str(count)), results.get("gradio", {}).get(str(count))
        if api and gradio and gradio["total_tokens_per_s"]:
            api["total_throughput_vs_gradio"] = rounded(api["total_tokens_per_s"] / gradio["total_tokens_per_s"], 3)
            api["ttft_p50_vs_gradio"] = rounded(api["ttft_p50_ms"] / gradio["ttft_p50_ms"], 3)
    result = {
        "benchmark": "serve",
        "settings": {"clients": list(clients), "turns": turns, "max_tokens": max_tokens, "targets": list(targets)},
        "results": results,
        "host": host_info(load_before),
        "wall_seconds": rounded(time.monotonic() - started, 1),
    }
    write_json(out / f"{name}.json", result)
    plot_serve(result, out / f"{name}.png")
    return result


def _resources(model, tokenizer, config: StreamRAGConfig, path: Path, max_tokens: int, clients: int):
    """Fresh archive and transcript for one run; greedy replies of exactly ``max_tokens`` tokens."""
    from streamrag.session import Resources

    data = config.model_dump()
    data["data_dir"] = path
    data["transcript_url"] = None  # always a fresh SQLite transcript under the run's folder
    data["generation"].update(temperature=0.0, max_new_tokens=max_tokens, ignore_eos=True)
    data["archive"]["chroma_url"] = None
    data["server"].update(max_active=clients, max_queue=max(clients, 1), api_key=None)
    return Resources.around(StreamRAGConfig.from_dict(data), model, tokenizer)


def _summary(timings: list[TurnTiming], wall_s: float, errors: int) -> dict[str, Any]:
    ttfts = sorted(t.ttft_s * 1000 for t in timings)
    per_client = [t.tokens / t.stream_s for t in timings if t.stream_s > 0 and t.tokens > 1]
    tokens = sum(t.tokens for t in timings)
    return {
        "turns": len(timings),
        "errors": errors,
        "tokens": tokens,
        "ttft_p50_ms": rounded(_percentile(ttfts, 50), 1),
        "ttft_p95_ms": rounded(_percentile(ttfts, 95), 1),
        "tokens_per_s_per_client": rounded(statistics.fmean(per_client), 2) if per_client else None,
        "total_tokens_per_s": rounded(tokens / wall_s, 2) if wall_s > 0 else None,
        "wall_seconds": rounded(wall_s, 2),
    }


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    index = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[index]


def _together(count: int, client) -> tuple[list[TurnTiming], float, int]:
    """Run ``client(i, timings)`` for i in range(count) in threads started together; (timings, wall s, errors)."""
    timings: list[TurnTiming] = []
    errors = [0]
    lock = threading.Lock()
    barrier = threading.Barrier(count)

    def work(i: int) -> None:
        barrier.wait()
        mine: list[TurnTiming] = []
        try:
            client(i, mine)
        except Exception:
            logger.exception("client %d failed", i)
            errors[0] += 1
        with lock:
            timings.extend(mine)

    threads = [threading.Thread(target=work, args=(i,), name=f"bench-client-{i}") for i in range(count)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return timings, time.monotonic() - started, errors[0]


def _run_api(resources, count: int, turns: int, max_tokens: int, tick) -> dict[str, Any]:
    import httpx

    from streamrag.api.app import served_model_name
    from streamrag.api.background import BackgroundServer

    model_id = served_model_name(resources.config)
    with BackgroundServer(resources) as server:
        url = f"{server.base_url}/chat/completions"

        def client(i: int, timings: list[TurnTiming]) -> None:
            messages: list[dict] = []
            with httpx.Client(timeout=600) as http:
                for turn in range(turns):
                    messages.append({"role": "user", "content": LINES[(i + turn) % len(LINES)]})
                    body = {"model": model_id, "messages": messages, "max_tokens": max_tokens, "stream": True}
                    sent = time.monotonic()
                    first = last = None
                    pieces, text = 0, []
                    headers = {"X-Session-Id": f"bench-{i}"}
                    with http.stream("POST", url, json=body, headers=headers) as response:
                        response.raise_for_status()
                        for line in response.iter_lines():
                            if not line.startswith("data: ") or line == "data: [DONE]":
                                continue
                            chunk = json.loads(line[6:])
                            delta = chunk["choices"][0]["delta"] if chunk.get("choices") else {}
                            if delta.get("content"):
                                last = time.monotonic()
                                first = first or last
                                pieces += 1
                                text.append(delta["content"])
                    messages.append({"role": "assistant", "content": "".join(text)})
                    timings.append(TurnTiming((first or time.monotonic()) - sent, pieces, (last or 0) - (first or 0)))
                    tick()

        timings, wall, errors = _together(count, client)
    return _summary(timings, wall, errors)


def _run_gradio(resources, count: int, turns: int, max_tokens: int, tick) -> dict[str, Any]:
    import gradio_client
    from streamrag_app.ui import build_app

    demo = build_app(resources)
    demo.queue(default_concurrency_limit=max(count, 1))
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, ssr_mode=False, server_name="127.0.0.1")
    try:

        def client(i: int, timings: list[TurnTiming]) -> None:
            app = gradio_client.Client(url, verbose=False)
            for turn in range(turns):
                sent = time.monotonic()
                job = app.submit(LINES[(i + turn) % len(LINES)], api_name="/chat")
                first = last = None
                seen = 0
                while True:
                    done = job.done()
                    outputs = job.outputs()
                    if len(outputs) > seen:
                        history = outputs[-1][1]
                        if history and history[-1]["role"] == "assistant" and gradio_text(history[-1]["content"]):
                            last = time.monotonic()
                            first = first or last
                        seen = len(outputs)
                    if done:
                        break
                    time.sleep(0.005)
                history = job.result()[1]
                tokens = len(resources.tokenizer(gradio_text(history[-1]["content"]))["input_ids"])
                timings.append(TurnTiming((first or time.monotonic()) - sent, tokens, (last or 0) - (first or 0)))
                tick()

        timings, wall, errors = _together(count, client)
    finally:
        demo.close()
    return _summary(timings, wall, errors)


def gradio_text(content) -> str:
    """A chat message's content as gradio_client returns it (a string, or a list of text parts) as text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    if isinstance(content, dict):
        return content.get("text", "")
    return str(content)


def plot_serve(result: dict[str, Any], path: Path) -> Path:
    """Time to first token (p50, p95) and total tokens/s against client count, one line per target."""
    figure, (ttft_axis, rate_axis) = new_figure(10, 4, ncols=2)
    for target, runs in result["results"].items():
        counts = sorted(int(c) for c in runs)
        ttft_axis.plot(counts, [runs[str(c)]["ttft_p50_ms"] for c in counts], marker="o", label=f"{target} p50")
        ttft_axis.plot(
            counts, [runs[str(c)]["ttft_p95_ms"] for c in counts], ls="--", marker="x", label=f"{target} p95"
        )
        rate_axis.plot(
            counts, [runs[str(c)]["total_tokens_per_s"] for c in counts], marker="o", label=f"{target} total"
        )
        rate_axis.plot(
            counts,
            [runs[str(c)]["tokens_per_s_per_client"] for c in counts],
            ls="--",
            marker="x",
            label=f"{target} per client",
        )
    settings = result["settings"]
    ttft_axis.set(xlabel="concurrent clients", ylabel="time to first token (ms)", xscale="log", yscale="log")
    ttft_axis.set_title(f"{settings['turns']} turns per client, {settings['max_tokens']} tokens per reply")
    rate_axis.set(xlabel="concurrent clients", ylabel="tokens / s", xscale="log")
    for axis in (ttft_axis, rate_axis):
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    return save_figure(figure, path)
