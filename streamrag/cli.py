"""The ``streamrag`` command: chat in the terminal, one-shot generation, benchmarks.

Every command takes ``--config`` (a YAML file, default ``configs/default.yaml``
when present) plus flags that override single settings, and errors print as
one clear line instead of a traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from streamrag.config import ConfigError, StreamRAGConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Long-running assistants on a local model.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that write JSON + PNG under an output folder.")
app.add_typer(bench_app, name="bench")

console = Console(stderr=True)
DEFAULT_CONFIG = Path("configs/default.yaml")

ConfigOption = typer.Option(None, "--config", "-c", help="YAML config (default: configs/default.yaml if present).")
ModelOption = typer.Option(None, "--model", "-m", help="Hub id, folder or .gguf file (default: embedded SmolLM2).")


def load_config(config: Optional[Path], **overrides) -> StreamRAGConfig:
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
    for noisy in ("httpx", "urllib3", "chromadb", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


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
    config: Optional[Path] = ConfigOption,
    model: Optional[str] = ModelOption,
    window_tokens: Optional[int] = typer.Option(None, help="Rolling window size."),
    sink_tokens: Optional[int] = typer.Option(None, help="Attention-sink tokens kept at the start."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda, cuda:N."),
    dtype: Optional[str] = typer.Option(None, help="auto, fp32, bf16, fp16."),
    temperature: Optional[float] = typer.Option(None),
    max_new_tokens: Optional[int] = typer.Option(None),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Chat in the terminal; replies stream as they are generated. /stats shows the cache, /quit leaves."""
    _setup_logging(verbose)
    cfg = load_config(
        config,
        **{
            "model.spec": model,
            "cache.window_tokens": window_tokens,
            "cache.sink_tokens": sink_tokens,
            "model.device": device,
            "model.dtype": dtype,
            "generation.temperature": temperature,
            "generation.max_new_tokens": max_new_tokens,
        },
    )
    from streamrag.engine import MessageError

    lm = _load_lm(cfg)
    if cfg.system_prompt:
        lm.add_message("system", cfg.system_prompt)
    console.print("[bold]streamrag chat[/bold] — /stats for the cache, /quit to leave")
    out = Console()
    while True:
        try:
            text = console.input("[bold green]you>[/bold green] ")
        except (EOFError, KeyboardInterrupt):
            break
        if text.strip() in {"/quit", "/exit"}:
            break
        if text.strip() == "/stats":
            out.print(lm.stats())
            continue
        try:
            out.print("[bold blue]assistant>[/bold blue] ", end="")
            for piece in lm.stream_chat(text):
                out.print(piece, end="", markup=False, highlight=False, soft_wrap=True)
            out.print()
            turn = lm.last_turn
            console.print(
                f"[dim]{turn.prefilled_tokens} prefilled, {turn.generated_tokens} generated, "
                f"{turn.tokens_per_second:.1f} tok/s[/dim]"
            )
        except MessageError as exc:
            out.print()
            console.print(f"[red]{exc}[/red]")
        except KeyboardInterrupt:
            out.print()
            console.print("[dim](interrupted)[/dim]")


@app.command()
def generate(
    prompt: str = typer.Option(..., "--prompt", "-p", help="The user message."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", "-n"),
    raw: bool = typer.Option(False, help="Plain completion of the prompt, without the chat template."),
    config: Optional[Path] = ConfigOption,
    model: Optional[str] = ModelOption,
    window_tokens: Optional[int] = typer.Option(None),
    sink_tokens: Optional[int] = typer.Option(None),
    device: Optional[str] = typer.Option(None),
    dtype: Optional[str] = typer.Option(None),
    temperature: Optional[float] = typer.Option(None),
    seed: Optional[int] = typer.Option(None),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
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
            "generation.temperature": temperature,
            "generation.seed": seed,
        },
    )
    from streamrag.engine import MessageError

    lm = _load_lm(cfg)
    stream = lm.stream_completion if raw else lm.stream_chat
    try:
        for piece in stream(prompt, max_new_tokens=max_new_tokens):
            sys.stdout.write(piece)
            sys.stdout.flush()
    except MessageError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    sys.stdout.write("\n")
    stats = lm.stats()
    console.print(
        f"[dim]{lm.last_turn.generated_tokens} tokens, {lm.last_turn.tokens_per_second:.1f} tok/s; "
        f"cache {stats.cache_tokens}/{stats.capacity}, evicted {stats.evicted_tokens}[/dim]"
    )


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
