"""The ``streamrag`` command: chat in the terminal, the web app (serve), one-shot generation, benchmarks.

Every command takes ``--config`` (a YAML file, default ``configs/default.yaml``
when present) plus flags that override single settings, and errors print as
one clear line instead of a traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from streamrag.archive_cli import archive_app
from streamrag.config import ConfigError, StreamRAGConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Long-running assistants on a local model.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that write JSON + PNG under an output folder.")
app.add_typer(bench_app, name="bench")
app.add_typer(archive_app, name="archive")

console = Console(stderr=True)
DEFAULT_CONFIG = Path("configs/default.yaml")

ConfigOption = typer.Option(None, "--config", "-c", help="YAML config (default: configs/default.yaml if present).")
ModelOption = typer.Option(None, "--model", "-m", help="Hub id, folder or .gguf file (default: embedded SmolLM2).")
DeviceOption = typer.Option(None, help="auto, cpu, cuda, cuda:N.")
DtypeOption = typer.Option(None, help="auto, fp32, bf16, fp16.")
QuantizeOption = typer.Option(None, help="model.quantize: auto, none, int8, int4 (weight-only, CPU).")
VerboseOption = typer.Option(False, "--verbose", "-v")
ThreadsOption = typer.Option(None, help="torch CPU threads (default: torch's own choice).")
OutOption = typer.Option(Path("results"), "--out", "-o", help="Output folder.")
WorkDirOption = typer.Option(None, help="Where the temporary archives go (default: under OUT).")


def load_config(config: Path | None, **overrides) -> StreamRAGConfig:
    """Config file (or the default one) plus command-line overrides, with errors as clean exits."""
    if config is None and DEFAULT_CONFIG.is_file():
        config = DEFAULT_CONFIG
    try:
        return StreamRAGConfig.load(config, overrides)
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "urllib3", "chromadb", "transformers", "sentence_transformers", "bm25s"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight-loading bars would interleave with the chat


def _load_resources(cfg: StreamRAGConfig):
    """The model, archive and transcript for ``cfg``, or a clean exit with the reason (no traceback)."""
    from streamrag.archive import ArchiveUnavailable
    from streamrag.models import ModelLoadError
    from streamrag.rope import UnsupportedModelError
    from streamrag.session import Resources

    try:
        with console.status("loading models..."):
            return Resources.load(cfg)
    except (ModelLoadError, UnsupportedModelError, ArchiveUnavailable) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


def _load_lm(cfg: StreamRAGConfig):
    from streamrag.engine import StreamingLM
    from streamrag.models import ModelLoadError, load_model
    from streamrag.rope import UnsupportedModelError

    try:
        with console.status("loading model..."):
            model, tokenizer, _ = load_model(cfg.model, cfg.data_dir)
            return StreamingLM(model, tokenizer, cfg)
    except (ModelLoadError, UnsupportedModelError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


@app.command()
def chat(
    config: Path | None = ConfigOption,
    model: str | None = ModelOption,
    session: str | None = typer.Option(None, "--session", "-s", help="Resume this session (default: a new one)."),
    window_tokens: int | None = typer.Option(None, help="Rolling window size."),
    sink_tokens: int | None = typer.Option(None, help="Attention-sink tokens kept at the start."),
    device: str | None = DeviceOption,
    dtype: str | None = DtypeOption,
    quantize: str | None = QuantizeOption,
    temperature: float | None = typer.Option(None),
    max_new_tokens: int | None = typer.Option(None),
    verbose: bool = VerboseOption,
) -> None:
    """Chat in the terminal with memory: evicted text is archived and recalled.

    /stats shows cache and archive, /recall what came back for the last turn, /quit leaves.
    """
    _setup_logging(verbose)
    cfg = load_config(
        config,
        **{
            "model.spec": model,
            "cache.window_tokens": window_tokens,
            "cache.sink_tokens": sink_tokens,
            "model.device": device,
            "model.dtype": dtype,
            "model.quantize": quantize,
            "generation.temperature": temperature,
            "generation.max_new_tokens": max_new_tokens,
        },
    )
    from streamrag.archive import ArchiveUnavailable
    from streamrag.engine import MessageError
    from streamrag.session import Assistant

    resources = _load_resources(cfg)
    try:
        with console.status("resuming..." if session else "starting..."):
            assistant = Assistant.resume(session, resources=resources) if session else Assistant(resources)
    except (ArchiveUnavailable, KeyError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    console.print(f"[bold]streamrag chat[/bold] — session [cyan]{assistant.session_id}[/cyan]; /stats, /recall, /quit")
    out = Console()
    last = None
    while True:
        try:
            text = console.input("[bold green]you>[/bold green] ")
        except (EOFError, KeyboardInterrupt):
            break
        command = text.strip()
        if command in {"/quit", "/exit"}:
            break
        if command == "/stats":
            out.print(assistant.stats())
            continue
        if command == "/recall":
            block = last.recall.block if last is not None and last.recall else ""
            out.print(block or "(nothing recalled yet)", markup=False)
            continue
        try:
            out.print("[bold blue]assistant>[/bold blue] ", end="")
            last = assistant.stream(text)
            try:
                for piece in last:
                    out.print(piece, end="", markup=False, highlight=False, soft_wrap=True)
            finally:
                last.close()
            out.print()
            turn = last.stats
            note = " (archive unavailable: recall skipped)" if last.recall_unavailable else ""
            console.print(
                f"[dim]{turn.prefilled_tokens} prefilled, {turn.generated_tokens} generated, "
                f"{turn.tokens_per_second:.1f} tok/s, {len(last.memories)} memories recalled{note}[/dim]"
            )
        except (MessageError, ArchiveUnavailable) as exc:
            out.print()
            console.print(f"[red]{exc}[/red]")
        except KeyboardInterrupt:
            out.print()
            console.print("[dim](interrupted)[/dim]")
    console.print(f"[dim]resume with: streamrag chat --session {assistant.session_id}[/dim]")


@app.command()
def serve(
    config: Path | None = ConfigOption,
    model: str | None = ModelOption,
    host: str = typer.Option(
        "127.0.0.1", help="Address to bind; another than 127.0.0.1 (0.0.0.0: your network) needs users (--auth)."
    ),
    port: int = typer.Option(7860, help="Port of the web app."),
    share: bool = typer.Option(
        False, "--share", help="Also open a public Gradio share link (off by default; needs users)."
    ),
    auth: list[str] | None = typer.Option(
        None,
        "--auth",
        metavar="USER:PASSWORD",
        help="A user who may log in (repeatable); each sees only their own sessions. "
        "Prefer --auth-file: the command line is visible to other local users.",
    ),
    auth_file: Path | None = typer.Option(
        None, "--auth-file", help="File of user:password lines (app.auth_file); adds to --auth."
    ),
    window_tokens: int | None = typer.Option(None, help="Default rolling window for new sessions."),
    sink_tokens: int | None = typer.Option(None, help="Default attention-sink tokens for new sessions."),
    device: str | None = DeviceOption,
    dtype: str | None = DtypeOption,
    quantize: str | None = QuantizeOption,
    verbose: bool = VerboseOption,
) -> None:
    """The Gradio app: streaming chat, memory panel, sessions, archive (http://127.0.0.1:7860).

    Users (--auth, --auth-file, app.auth_file) log in and see only their own sessions.
    Without users the app serves only on a loopback address, and never with --share.
    """
    _setup_logging(verbose)
    cfg = load_config(
        config,
        **{
            "model.spec": model,
            "cache.window_tokens": window_tokens,
            "cache.sink_tokens": sink_tokens,
            "model.device": device,
            "model.dtype": dtype,
            "model.quantize": quantize,
            "app.auth_file": str(auth_file) if auth_file else None,
        },
    )
    try:
        from streamrag_app import launch
        from streamrag_app.auth import check_exposure, exposed, load_users
        from streamrag_app.ui import network_warning
    except ImportError as exc:
        console.print(f"[red]error:[/red] the app needs its extra: pip install 'streamrag[app]' ({exc})")
        raise typer.Exit(1) from None
    try:  # before loading anything: a refused start costs no model load
        users = load_users(auth or [], cfg.app.auth_file)
        check_exposure(host, share, users)
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    if exposed(host, share):
        console.print(f"[yellow]warning:[/yellow] {network_warning(host, share, len(users))}")
    resources = _load_resources(cfg)
    launch(cfg, host=host, port=port, share=share, resources=resources, auth=users or None)


@app.command()
def api(
    config: Path | None = ConfigOption,
    model: str | None = ModelOption,
    host: str | None = typer.Option(None, help="Address to bind (server.host, 127.0.0.1); others need an API key."),
    port: int | None = typer.Option(None, help="Port (server.port, 8000)."),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="STREAMRAG_API_KEY", help="Bearer token clients must send (server.api_key)."
    ),
    device: str | None = DeviceOption,
    dtype: str | None = DtypeOption,
    quantize: str | None = QuantizeOption,
    verbose: bool = VerboseOption,
) -> None:
    """The OpenAI-compatible API: /v1/chat/completions, /v1/models, /v1/embeddings, session memory."""
    _setup_logging(verbose)
    cfg = load_config(
        config,
        **{
            "model.spec": model,
            "model.device": device,
            "model.dtype": dtype,
            "model.quantize": quantize,
            "server.host": host,
            "server.port": port,
            "server.api_key": api_key,
        },
    )
    try:
        from streamrag import api as http_api
    except ImportError as exc:
        console.print(f"[red]error:[/red] the API server needs its extra: pip install 'streamrag[server]' ({exc})")
        raise typer.Exit(1) from None
    from streamrag.config import ConfigError

    try:  # before loading anything: a refused start costs no model load
        http_api.check_exposure(cfg.server)
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    resources = _load_resources(cfg)
    console.print(f"OpenAI-compatible API on http://{cfg.server.host}:{cfg.server.port}/v1")
    try:
        http_api.run(resources)
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    finally:
        resources.close()


@app.command()
def generate(
    prompt: str = typer.Option(..., "--prompt", "-p", help="The user message."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", "-n"),
    raw: bool = typer.Option(False, help="Plain completion of the prompt, without the chat template."),
    ignore_eos: bool = typer.Option(False, help="Keep generating past end-of-turn tokens (endless streams)."),
    config: Path | None = ConfigOption,
    model: str | None = ModelOption,
    window_tokens: int | None = typer.Option(None),
    sink_tokens: int | None = typer.Option(None),
    device: str | None = typer.Option(None),
    dtype: str | None = typer.Option(None),
    quantize: str | None = QuantizeOption,
    temperature: float | None = typer.Option(None),
    seed: int | None = typer.Option(None),
    verbose: bool = VerboseOption,
) -> None:
    """Generate one reply to --prompt and stream it to stdout (any length, constant memory)."""
    _setup_logging(verbose)
    cfg = load_config(
        config,
        **{
            "model.spec": model,
            "cache.window_tokens": window_tokens,
            "cache.sink_tokens": sink_tokens,
            "model.device": device,
            "model.dtype": dtype,
            "model.quantize": quantize,
            "generation.temperature": temperature,
            "generation.seed": seed,
        },
    )
    from streamrag.engine import MessageError

    lm = _load_lm(cfg)
    stream = lm.stream_completion if raw else lm.stream_chat
    try:
        reply = stream(prompt, max_new_tokens=max_new_tokens, ignore_eos=ignore_eos)
        for piece in reply:
            sys.stdout.write(piece)
            sys.stdout.flush()
    except MessageError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    sys.stdout.write("\n")
    stats = lm.stats()
    console.print(
        f"[dim]{reply.stats.generated_tokens} tokens, {reply.stats.tokens_per_second:.1f} tok/s; "
        f"cache {stats.cache_tokens}/{stats.capacity}, evicted {stats.evicted_tokens}[/dim]"
    )


def _load_model(cfg: StreamRAGConfig, threads: int | None = None):
    """(model, tokenizer, resolved) for the benchmarks, which build their own engines around one model.

    ``threads`` pins torch's CPU threads first, so timings on a shared machine are comparable.
    """
    from streamrag.models import ModelLoadError, load_model

    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        with console.status("loading model..."):
            return load_model(cfg.model, cfg.data_dir)
    except ModelLoadError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


@bench_app.command("ppl")
def bench_ppl(
    tokens: int = typer.Option(1500, "--tokens", "-n", help="Tokens of text to score (from pydoc_data.topics)."),
    window: int = typer.Option(256, "--window", help="window_tokens of the sink cache."),
    sinks: int = typer.Option(4, "--sinks", help="sink_tokens of the sink cache; the window baseline gets 0 sinks."),
    chunk: int = typer.Option(64, "--chunk", help="Tokens per forward pass, and the eviction chunk."),
    smooth: int | None = typer.Option(None, help="Tokens in the plot's running mean (default: 100 to 256)."),
    out: Path = OutOption,
    name: str = typer.Option("ppl", help="File stem: writes OUT/NAME.json and OUT/NAME.png."),
    threads: int | None = ThreadsOption,
    self_extend: bool = typer.Option(False, "--self-extend", help="Add a Self-Extend row (whole text cached)."),
    group_size: int = typer.Option(4, help="Self-Extend group size G (with --self-extend)."),
    neighbor_window: int = typer.Option(2048, help="Self-Extend neighbor window W (with --self-extend)."),
    config: Path | None = ConfigOption,
    model: str | None = ModelOption,
    device: str | None = DeviceOption,
    dtype: str | None = DtypeOption,
    quantize: str | None = QuantizeOption,
    verbose: bool = VerboseOption,
) -> None:
    """Perplexity of one long text: dense cache vs. sliding window vs. attention sinks (vs. Self-Extend), in one run."""
    _setup_logging(verbose)
    cfg = load_config(
        config,
        **{
            "model.spec": model,
            "model.device": device,
            "model.dtype": dtype,
            "model.quantize": quantize,
            "cache.sink_tokens": sinks,
            "cache.window_tokens": window,
            "cache.evict_chunk": chunk,
        },
    )
    from streamrag.bench.ppl import run_ppl
    from streamrag.rope import UnsupportedModelError

    hf_model, tokenizer, resolved = _load_model(cfg, threads)
    try:
        result = run_ppl(
            hf_model,
            tokenizer,
            cfg,
            out,
            tokens=tokens,
            window_tokens=window,
            sink_tokens=sinks,
            chunk=chunk,
            smooth=smooth,
            name=name,
            model_name=resolved.description,
            self_extend=self_extend,
            group_size=group_size,
            neighbor_window=neighbor_window,
        )
    except (ValueError, UnsupportedModelError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    table = Table(title=f"perplexity of {tokens:,} tokens, cache {sinks + window} tokens")
    for column in ("policy", "ppl", "vs dense", "cache tokens", "evicted"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for policy in ("dense", "window", "sink", "self_extend"):
        if policy not in result:
            continue
        entry = result[policy]
        ratio = entry["ppl"] / result["dense"]["ppl"]
        table.add_row(
            policy, f"{entry['ppl']:.3f}", f"{ratio:.3f}x", str(entry["cache_tokens"]), str(entry["evicted_tokens"])
        )
    Console().print(table)
    console.print(f"wrote {out / (name + '.json')} and {out / (name + '.png')} in {result['wall_seconds']:.0f} s")


@bench_app.command("passkey")
def bench_passkey(
    lengths: str = typer.Option("2k,10k", help="Haystack lengths in tokens, e.g. 4k,12k,16k (trained: 8k)."),
    depths: str = typer.Option("0.5", help="Where the key sits in the text, 0 = start, 1 = end, e.g. 0.1,0.5,0.9."),
    trials: int = typer.Option(1, help="Random keys per length x depth cell."),
    policies: str = typer.Option(
        "dense,sink,sink_archive,self_extend", help="Comma-separated subset of dense,sink,sink_archive,self_extend."
    ),
    sinks: int = typer.Option(4, "--sinks", help="sink_tokens of the sink and Self-Extend caches."),
    window: int = typer.Option(2044, "--window", help="window_tokens of sink and sink_archive (inside 8k)."),
    group_size: int = typer.Option(4, help="Self-Extend group size G."),
    neighbor_window: int = typer.Option(2048, help="Self-Extend neighbor window W."),
    dense_max: int | None = typer.Option(None, help="Skip dense runs longer than this many tokens."),
    seed: int = typer.Option(0, help="Seed of the keys."),
    out: Path = OutOption,
    name: str = typer.Option("passkey", help="File stem: writes OUT/NAME.json and OUT/NAME.png."),
    threads: int | None = ThreadsOption,
    config: Path | None = ConfigOption,
    model: str | None = ModelOption,
    device: str | None = DeviceOption,
    dtype: str | None = DtypeOption,
    verbose: bool = VerboseOption,
) -> None:
    """Passkey retrieval below and beyond the trained length: dense, sink, sink + archive, Self-Extend.

    With the defaults (2k and 10k tokens, depth 0.5) it took 15 minutes on one CPU core; the paper-sized grid
    (--lengths 4k,12k,16k --depths 0.1,0.5,0.9 --trials 3) wants a GPU.
    """
    _setup_logging(verbose)
    from streamrag.bench.passkey import parse_numbers, run_passkey

    try:
        length_list, depth_list = parse_numbers(lengths), parse_numbers(depths, float)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    cfg = load_config(config, **{"model.spec": model, "model.device": device, "model.dtype": dtype})
    from streamrag.archive import ArchiveUnavailable
    from streamrag.rope import UnsupportedModelError

    hf_model, tokenizer, resolved = _load_model(cfg, threads)
    try:
        result = run_passkey(
            hf_model,
            tokenizer,
            cfg,
            out,
            lengths=length_list,
            depths=depth_list,
            trials=trials,
            policies=[p.strip() for p in policies.split(",") if p.strip()],
            sink_tokens=sinks,
            sink_window=window,
            group_size=group_size,
            neighbor_window=neighbor_window,
            dense_max=dense_max,
            seed=seed,
            name=name,
            model_name=resolved.description,
        )
    except (ValueError, ConfigError, UnsupportedModelError, ArchiveUnavailable) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    table = Table(title=f"passkey accuracy (trained length {result['model']['trained_length']})")
    table.add_column("policy")
    for length in length_list:
        table.add_column(f"{length:,}", justify="right")
    for policy, by_length in result["accuracy_by_length"].items():
        table.add_row(policy, *("-" if by_length[str(n)] is None else f"{by_length[str(n)]:.2f}" for n in length_list))
    Console().print(table)
    console.print(f"wrote {out / (name + '.json')} and {out / (name + '.png')} in {result['wall_seconds']:.0f} s")


@bench_app.command("latency")
def bench_latency(
    lengths: str = typer.Option("1000,4000,16000", help="Stream lengths to measure at, e.g. 1000,4000,16000,64000."),
    steps: int = typer.Option(64, help="Greedy decode steps timed at each length (64 = one eviction per burst)."),
    recompute_steps: int = typer.Option(4, help="Steps timed for recompute (each one is a full forward pass)."),
    dense_max: int = typer.Option(16000, help="Longest stream measured for dense; longer ones are skipped."),
    policies: str = typer.Option(
        "sink,dense,recompute,archive", help="Comma-separated subset of sink,dense,recompute,archive."
    ),
    window: int | None = typer.Option(None, "--window", help="window_tokens (default: from the config)."),
    sinks: int | None = typer.Option(None, "--sinks", help="sink_tokens (default: from the config)."),
    evict_chunk: int | None = typer.Option(None, help="Evict at least this many tokens at once."),
    out: Path = OutOption,
    name: str = typer.Option("latency", help="File stem: writes OUT/NAME.json and OUT/NAME.png."),
    threads: int | None = ThreadsOption,
    config: Path | None = ConfigOption,
    model: str | None = ModelOption,
    device: str | None = DeviceOption,
    dtype: str | None = DtypeOption,
    verbose: bool = VerboseOption,
) -> None:
    """Per-token decode latency and memory vs. stream length: sink cache vs. dense vs. recompute vs. with archive."""
    _setup_logging(verbose)
    cfg = load_config(
        config,
        **{
            "model.spec": model,
            "model.device": device,
            "model.dtype": dtype,
            "cache.sink_tokens": sinks,
            "cache.window_tokens": window,
            "cache.evict_chunk": evict_chunk,
        },
    )
    from concurrent.futures.process import BrokenProcessPool

    from streamrag.bench.latency import parse_lengths, run_latency
    from streamrag.models import ModelLoadError
    from streamrag.rope import UnsupportedModelError

    try:
        length_list = parse_lengths(lengths)
        policy_list = [p.strip() for p in policies.split(",") if p.strip()]
        result = run_latency(
            cfg,
            out,
            lengths=length_list,
            policies=policy_list,
            steps=steps,
            recompute_steps=recompute_steps,
            dense_max=dense_max,
            name=name,
            threads=threads,
        )
    except (ValueError, ModelLoadError, UnsupportedModelError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    except BrokenProcessPool:
        console.print("[red]error:[/red] a measuring process died (out of memory?); try smaller --lengths")
        raise typer.Exit(1) from None
    table = Table(title=f"decode cost, cache {cfg.cache.capacity} tokens")
    for column in ("policy", "length", "ms/token", "rss MB", "cache MB", "vs sink"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for policy in policy_list:
        for entry in result[policy]["results"]:
            if entry.get("skipped"):
                table.add_row(policy, f"{entry['length']:,}", "skipped", "", "", "")
                continue
            ratio = result["ratios"].get(str(entry["length"]), {}).get(f"{policy}_vs_sink_ms_per_token")
            table.add_row(
                policy,
                f"{entry['length']:,}",
                f"{entry['ms_per_token']:.1f}",
                f"{entry['rss_mb']:.0f}",
                f"{entry['cache_mb']:.1f}",
                f"{ratio:.2f}x" if ratio else "",
            )
    Console().print(table)
    console.print(f"wrote {out / (name + '.json')} and {out / (name + '.png')} in {result['wall_seconds']:.0f} s")


@bench_app.command("constrained")
def bench_constrained(
    max_tokens: int = typer.Option(160, help="Most tokens per reply (free text runs exactly this many)."),
    repeats: int = typer.Option(1, help="Times over the prompts."),
    out: Path = OutOption,
    name: str = typer.Option("constrained", help="File stem: writes OUT/NAME.json and OUT/NAME.png."),
    threads: int | None = ThreadsOption,
    config: Path | None = ConfigOption,
    model: str | None = ModelOption,
    device: str | None = DeviceOption,
    dtype: str | None = DtypeOption,
    verbose: bool = VerboseOption,
) -> None:
    """Constrained decoding's cost per token (JSON schema, tool calls; with and without jump-forward) vs free text."""
    _setup_logging(verbose)
    cfg = load_config(config, **{"model.spec": model, "model.device": device, "model.dtype": dtype})
    if max_tokens < 1 or repeats < 1:
        console.print("[red]error:[/red] need --max-tokens >= 1 and --repeats >= 1")
        raise typer.Exit(2)
    model_, tokenizer, _ = _load_model(cfg, threads)
    from streamrag.bench.constrained import run_constrained

    result = run_constrained(model_, tokenizer, cfg, out, max_tokens=max_tokens, repeats=repeats, name=name)
    table = Table(title=f"constrained decoding, {result['settings']['prompts']} prompts x {repeats}")
    for column in ("workload", "tokens", "tokens/step", "ms/token", "grammar ms/token", "vs text", "valid"):
        table.add_column(column, justify="left" if column == "workload" else "right", no_wrap=column == "workload")
    for workload, entry in result["workloads"].items():
        table.add_row(
            workload,
            str(entry["tokens"]),
            f"{entry['tokens_per_step']:.2f}",
            f"{entry['ms_per_token']:.1f}",
            f"{entry['grammar_ms_per_token']:.3f}",
            f"{entry['ms_per_token_ratio']:.2f}x",
            entry["valid"] or "",
        )
    Console().print(table)
    console.print(f"wrote {out / (name + '.json')} and {out / (name + '.png')} in {result['wall_seconds']:.0f} s")


@bench_app.command("serve")
def bench_serve(
    clients: str = typer.Option("1,4,16", help="Concurrent client counts, comma-separated."),
    turns: int = typer.Option(20, help="User messages per client (one conversation each)."),
    max_tokens: int = typer.Option(32, help="Tokens per reply (exactly: end of turn ignored)."),
    targets: str = typer.Option("api,gradio", help="api, gradio, or both (comma-separated)."),
    out: Path = OutOption,
    name: str = typer.Option("serve", help="File stem: writes OUT/NAME.json and OUT/NAME.png."),
    threads: int | None = ThreadsOption,
    config: Path | None = ConfigOption,
    model: str | None = ModelOption,
    device: str | None = DeviceOption,
    dtype: str | None = DtypeOption,
    verbose: bool = VerboseOption,
) -> None:
    """N concurrent clients x turns through the OpenAI API and the Gradio app: time to first token, tokens/s."""
    _setup_logging(verbose)
    cfg = load_config(config, **{"model.spec": model, "model.device": device, "model.dtype": dtype})
    try:
        counts = tuple(int(c) for c in clients.split(",") if c.strip())
    except ValueError:
        counts = ()
    chosen = tuple(t.strip() for t in targets.split(",") if t.strip())
    if not counts or min(counts) < 1 or turns < 1 or max_tokens < 1 or not set(chosen) <= {"api", "gradio"}:
        console.print(
            "[red]error:[/red] need --clients like 1,4,16, --turns >= 1, --max-tokens >= 1, targets api/gradio"
        )
        raise typer.Exit(2)
    model_, tokenizer, _ = _load_model(cfg, threads)
    from streamrag.bench.serve import run_serve

    result = run_serve(model_, tokenizer, cfg, out, counts, turns, max_tokens, chosen, name)
    table = Table(title=f"serving, {turns} turns per client, {max_tokens} tokens per reply")
    for column in ("target", "clients", "TTFT p50 ms", "TTFT p95 ms", "tok/s per client", "tok/s total", "errors"):
        table.add_column(column, justify="left" if column == "target" else "right")
    for target, runs in result["results"].items():
        for count, entry in runs.items():
            table.add_row(
                target,
                count,
                str(entry["ttft_p50_ms"]),
                str(entry["ttft_p95_ms"]),
                str(entry["tokens_per_s_per_client"]),
                str(entry["total_tokens_per_s"]),
                str(entry["errors"]),
            )
    Console().print(table)
    console.print(f"wrote {out / (name + '.json')} and {out / (name + '.png')} in {result['wall_seconds']:.0f} s")


@bench_app.command("decode")
def bench_decode(
    quantize: str = typer.Option("none,int8,int4", help="model.quantize settings to measure, comma-separated."),
    threads: str = typer.Option("1,2", help="torch (and llama.cpp) thread counts, comma-separated."),
    tokens: int = typer.Option(256, "--tokens", "-n", help="Greedy tokens decoded per measurement."),
    prefill_tokens: int = typer.Option(1024, help="Tokens in the prefill measurement (and the perplexity text)."),
    messages: int = typer.Option(10_000, help="Messages in the ingestion measurement (0 skips it)."),
    baseline_messages: int = typer.Option(200, help="Of those, fed one add_message at a time as the baseline."),
    llama_cpp: bool = typer.Option(True, help="Run llama.cpp on the same GGUF when llama_cpp is importable."),
    load_runs: int = typer.Option(2, help="Fresh processes timed per setting for the warm start (the fastest counts)."),
    out: Path = OutOption,
    name: str = typer.Option("decode", help="File stem: writes OUT/NAME.json and OUT/NAME.png."),
    config: Path | None = ConfigOption,
    model: str | None = ModelOption,
    verbose: bool = VerboseOption,
) -> None:
    """Decode/prefill tokens/s, perplexity, warm start and ingestion per quantize setting, beside llama.cpp."""
    _setup_logging(verbose)
    cfg = load_config(config, **{"model.spec": model})
    try:
        modes = tuple(m.strip() for m in quantize.split(",") if m.strip())
        counts = tuple(int(t) for t in threads.split(",") if t.strip())
    except ValueError:
        modes, counts = (), ()
    if not modes or not set(modes) <= {"none", "int8", "int4"} or not counts or min(counts) < 1:
        console.print("[red]error:[/red] need --quantize from none,int8,int4 and --threads like 1,2")
        raise typer.Exit(2)
    if tokens < 1 or prefill_tokens < 16 or messages < 0 or baseline_messages < 0 or load_runs < 1:
        console.print("[red]error:[/red] need --tokens >= 1, --prefill-tokens >= 16, --messages >= 0, --load-runs >= 1")
        raise typer.Exit(2)
    from streamrag.bench.decode import run_decode
    from streamrag.models import ModelLoadError
    from streamrag.quantize import QuantizeError

    try:
        result = run_decode(
            cfg, out, modes, counts, tokens, prefill_tokens, messages, baseline_messages, llama_cpp, name, load_runs
        )
    except (ModelLoadError, QuantizeError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    table = Table(title=f"{result['model']}: {tokens} greedy tokens, prefill of {prefill_tokens}")
    for column in ("setting", "threads", "decode tok/s", "prefill tok/s", "perplexity", "warm start s"):
        table.add_column(column, justify="left" if column == "setting" else "right")
    rows = dict(result["streamrag"])
    if (result["llama_cpp"] or {}).get("available"):
        rows["llama.cpp"] = result["llama_cpp"]
    for setting, entry in rows.items():
        for count in counts:
            table.add_row(
                setting,
                str(count),
                str(entry["decode_tokens_per_s"].get(str(count))),
                str(entry["prefill_tokens_per_s"].get(str(count))),
                str(entry.get("perplexity", "")),
                str((entry.get("load") or {}).get("ready_s", "")),
            )
    Console().print(table)
    for goal, entry in result["goals"].items():
        verdict = {True: "met", False: "not met", None: "not measured"}[entry["met"]]
        console.print(f"{goal}: {entry['measured']} (goal {entry['goal']}, {entry['setting']}): {verdict}")
    console.print(f"wrote {out / (name + '.json')} and {out / (name + '.png')} in {result['wall_seconds']:.0f} s")


@bench_app.command("crash")
def bench_crash(
    trials: int = typer.Option(20, help="Kill-and-resume trials."),
    min_delay: float = typer.Option(3.0, help="Earliest SIGKILL, seconds after the child is ready."),
    max_delay: float = typer.Option(30.0, help="Latest SIGKILL, seconds after the child is ready."),
    seed: int = typer.Option(0, help="Seeds the delays and the conversations."),
    out: Path = OutOption,
    name: str = typer.Option("crash", help="File stem: writes OUT/NAME.json and OUT/NAME.png."),
    config: Path | None = ConfigOption,
    model: str | None = ModelOption,
    verbose: bool = VerboseOption,
) -> None:
    """SIGKILL a conversation at random points, resume it: count lost, duplicated and unfindable text (all 0)."""
    _setup_logging(verbose)
    cfg = load_config(config, **{"model.spec": model})
    if trials < 1 or not 0 < min_delay <= max_delay:
        console.print("[red]error:[/red] need --trials >= 1 and 0 < --min-delay <= --max-delay")
        raise typer.Exit(2)
    from streamrag.bench.crash import run_crash

    result = run_crash(cfg, out, trials=trials, min_delay=min_delay, max_delay=max_delay, seed=seed, name=name)
    table = Table(title=f"{trials} SIGKILL trials, each resumed")
    for column in ("acknowledged", "lost", "duplicated", "uncovered chars", "bad chunks", "integrity ok"):
        table.add_column(column, justify="right")
    totals = result["totals"]
    table.add_row(
        str(totals["acknowledged"]),
        str(totals["lost"]),
        str(totals["duplicated"]),
        str(totals["uncovered_chars"]),
        str(totals["mismatched_chunks"]),
        f"{result['integrity_ok']}/{trials}",
    )
    Console().print(table)
    console.print(f"phases at the kill: {result['phases']}")
    console.print(f"wrote {out / (name + '.json')} and {out / (name + '.png')} in {result['wall_seconds']:.0f} s")


@bench_app.command("forget")
def bench_forget(
    chunks: int = typer.Option(10_000, help="Chunks in the session that is forgotten (one short message each)."),
    seed: int = typer.Option(0),
    out: Path = OutOption,
    name: str = typer.Option("forget", help="File stem: writes OUT/NAME.json and OUT/NAME.png."),
    config: Path | None = ConfigOption,
    verbose: bool = VerboseOption,
) -> None:
    """The cost of forgetting one message and one session (bytes erased, archive rewritten) at N chunks."""
    _setup_logging(verbose)
    cfg = load_config(config)
    from streamrag.bench.forget import run_forget

    result = run_forget(cfg.archive, out, chunks=chunks, seed=seed, name=name)
    for kind, entry in result["timings"].items():
        console.print(
            f"forget one {kind}: {entry['total_seconds']:.2f} s "
            f"(rewriting the archive {entry['compact_seconds']:.2f} s, {entry['chunks']} chunks removed)"
        )
    console.print(f"files still holding forgotten text: {result['files_holding_forgotten']}")
    console.print(f"wrote {out / (name + '.json')} and {out / (name + '.png')} in {result['wall_seconds']:.0f} s")


@bench_app.command("recall")
def bench_recall(
    sessions: int = typer.Option(4, help="Conversations sharing one archive (facts of the same kinds in each)."),
    facts_per_kind: int = typer.Option(3, help="Planted facts per kind (name, date, code, preference) and session."),
    windows: float = typer.Option(20, help="Length of each conversation in cache windows of ingested text."),
    window: int = typer.Option(252, "--window", help="window_tokens of the sink cache."),
    sinks: int = typer.Option(4, "--sinks", help="sink_tokens; the window baseline gets 0 sinks, same capacity."),
    evict_chunk: int = typer.Option(32, help="Evict at least this many tokens at once."),
    max_new_tokens: int = typer.Option(24, help="Longest answer (greedy decoding)."),
    top_k: int = typer.Option(4, help="Most memories recalled per question (the k of hit@k)."),
    budget_fraction: float = typer.Option(0.3, help="Share of the window the memory block may use."),
    sizes: str = typer.Option(
        "1000,10000", help="Archive sizes (chunks) for the cost measurements, e.g. 1k,10k,100k; 'none' skips them."
    ),
    queries: int = typer.Option(50, help="Searches timed at each archive size."),
    batch: int = typer.Option(512, help="Evicted spans per Archive.write call when bulk-loading."),
    seed: int = typer.Option(0, help="Seed of the synthetic conversations."),
    out: Path = OutOption,
    name: str = typer.Option("recall", help="File stem: writes OUT/NAME.json and OUT/NAME.png."),
    work_dir: Path | None = WorkDirOption,
    threads: int | None = ThreadsOption,
    config: Path | None = ConfigOption,
    model: str | None = ModelOption,
    device: str | None = DeviceOption,
    dtype: str | None = DtypeOption,
    verbose: bool = VerboseOption,
) -> None:
    """Recall of evicted facts (streamrag vs. StreamingLLM vs. sliding window vs. ceiling), plus archive costs.

    With the defaults (4 sessions x 20 windows, 48 facts, sizes 1k and 10k) it takes about 15 minutes on 2 idle
    CPU cores; --sizes 1k,10k,100k adds about 20 minutes (embedding 100k chunks).
    """
    _setup_logging(verbose)
    from streamrag.bench.recall import check_settings, parse_sizes

    try:
        size_list = parse_sizes(sizes)
    except ValueError as exc:
        console.print(f"[red]error:[/red] --sizes: {exc}")
        raise typer.Exit(2) from None
    try:
        check_settings(sessions, facts_per_kind, windows)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    cfg = load_config(
        config,
        **{
            "model.spec": model,
            "model.device": device,
            "model.dtype": dtype,
            "cache.sink_tokens": sinks,
            "cache.window_tokens": window,
            "cache.evict_chunk": evict_chunk,
        },
    )
    from streamrag.archive import ArchiveUnavailable
    from streamrag.bench.recall import SYSTEMS, run_recall
    from streamrag.rope import UnsupportedModelError

    hf_model, tokenizer, resolved = _load_model(cfg, threads)
    try:
        result = run_recall(
            hf_model,
            tokenizer,
            cfg,
            out,
            sessions=sessions,
            facts_per_kind=facts_per_kind,
            windows=windows,
            sink_tokens=sinks,
            window_tokens=window,
            evict_chunk=evict_chunk,
            max_new_tokens=max_new_tokens,
            top_k=top_k,
            budget_fraction=budget_fraction,
            sizes=size_list,
            queries=queries,
            batch=batch,
            seed=seed,
            name=name,
            model_name=resolved.description,
            work_dir=work_dir,
        )
    except (ValueError, ConfigError, UnsupportedModelError, ArchiveUnavailable) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    table = Table(title=f"recall of {result['settings']['probes']} evicted facts, cache {sinks + window} tokens")
    for column in ("system", "hit@k", "accuracy", "name", "date", "code", "preference"):
        table.add_column(column, justify="left" if column == "system" else "right")
    for system in SYSTEMS:
        entry = result[system]
        kinds = [f"{entry['by_kind'][kind]['answer_accuracy']:.2f}" for kind in ("name", "date", "code", "preference")]
        table.add_row(system, f"{entry['hit_at_k']:.2f}", f"{entry['answer_accuracy']:.2f}", *kinds)
    Console().print(table)
    if result["query_ms"]:
        costs = Table(title="archive costs")
        columns = ("chunks", "write ms/chunk", "search p50 ms", "search p95 ms", "first search ms", "after write ms")
        for column in columns:
            costs.add_column(column, justify="right")
        details = result["costs"]
        for size, query in result["query_ms"].items():
            costs.add_row(
                f"{int(size):,}",
                f"{result['write_ms_per_chunk'][size]:.2f}",
                f"{query['p50']:.1f}",
                f"{query['p95']:.1f}",
                f"{details['first_query_ms'][size]:.0f}",
                f"{details['query_after_write_ms'][size]['p50']:.0f}",
            )
        Console().print(costs)
    console.print(f"wrote {out / (name + '.json')} and {out / (name + '.png')} in {result['wall_seconds']:.0f} s")


@bench_app.command("memory")
def bench_memory(
    dialogues: int = typer.Option(
        3, help="Long conversations between two named people, each its own session; 0: only the cost part."
    ),
    sessions: int = typer.Option(24, help="Dated sessions per conversation."),
    turns_per_session: int = typer.Option(16, help="Turns per session."),
    answers: bool = typer.Option(True, help="Let the model answer each question from each system's block."),
    max_new_tokens: int = typer.Option(24, help="Longest answer (greedy decoding)."),
    sizes: str = typer.Option(
        "none", help="Chunks in one session for the recall-cost part, e.g. 10k,100k; 'none' skips it."
    ),
    others: int = typer.Option(0, help="Chunks in other sessions of the same store during the cost part."),
    queries: int = typer.Option(50, help="Recalls timed at each size."),
    seed: int = typer.Option(0, help="Seed of the generated conversations."),
    out: Path = OutOption,
    name: str = typer.Option("memory", help="File stem: writes OUT/NAME.json and OUT/NAME.png."),
    work_dir: Path | None = WorkDirOption,
    threads: int | None = ThreadsOption,
    config: Path | None = ConfigOption,
    model: str | None = ModelOption,
    device: str | None = DeviceOption,
    dtype: str | None = DtypeOption,
    verbose: bool = VerboseOption,
) -> None:
    """Evidence recall on long dated two-person conversations, per question kind, against three baselines.

    Baselines index every turn: dense (MiniLM), BM25, and LlamaIndex-style memory (dense top-2 queried with the
    last five messages), at the same token budget. --sizes adds the recall cost at that many chunks per session.
    """
    _setup_logging(verbose)
    from streamrag.bench.recall import parse_sizes

    try:
        size_list = parse_sizes(sizes)
    except ValueError as exc:
        console.print(f"[red]error:[/red] --sizes: {exc}")
        raise typer.Exit(2) from None
    if dialogues < 0 or sessions < 2 or turns_per_session < 8 or (dialogues == 0 and not size_list):
        console.print(
            "[red]error:[/red] need 2+ sessions of 8+ turns, and dialogues (0 runs only the cost part, with --sizes)"
        )
        raise typer.Exit(2)
    cfg = load_config(config, **{"model.spec": model, "model.device": device, "model.dtype": dtype})
    from streamrag.bench.memory import SYSTEMS, run_memory

    hf_model, tokenizer, resolved = _load_model(cfg, threads)
    result = run_memory(
        hf_model,
        tokenizer,
        cfg,
        out,
        dialogues=dialogues,
        sessions=sessions,
        turns_per_session=turns_per_session,
        answers=answers,
        max_new_tokens=max_new_tokens,
        sizes=size_list,
        others=others,
        queries=queries,
        seed=seed,
        name=name,
        model_name=resolved.description,
        work_dir=work_dir,
    )
    from streamrag.bench.dialogues import KINDS

    def cell(value):
        return "-" if value is None else f"{value:.2f}"

    table = Table(title=f"evidence recall, {result['settings']['questions']} questions")
    for column in ("system", "overall", "evicted only", *KINDS, "tokens", "accuracy"):
        table.add_column(column, justify="left" if column == "system" else "right")
    for system in [s for s in SYSTEMS if s in result]:
        entry = result[system]
        kinds = [cell(entry["by_kind"][kind]["evidence_recall"]) for kind in KINDS]
        table.add_row(
            system,
            cell(entry["evidence_recall"]),
            cell(entry["evicted_only"]),
            *kinds,
            f"{entry['tokens']:.0f}",
            cell(entry["answer_accuracy"]),
        )
    if "streamrag" in result:
        Console().print(table)
        entry = result["streamrag"]
        console.print(
            f"search(k=10) {cell(entry['search_k10'])}; newest value first {cell(entry['newest_first'])}; "
            f"recall p50 {result['recall_ms']['p50']} ms, p95 {result['recall_ms']['p95']} ms"
        )
    for size, cost in result["cost"].items():
        console.print(
            f"{int(size):,} chunks (+{cost['chunks_in_other_sessions']:,} elsewhere): recall p50 "
            f"{cost['recall_ms']['p50']} ms, p95 {cost['recall_ms']['p95']} ms; after a write p95 "
            f"{cost['after_write_ms']['p95']} ms"
        )
    console.print(f"wrote {out / (name + '.json')} and {out / (name + '.png')} in {result['wall_seconds']:.0f} s")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
