"""``streamrag archive ...``: look into, export and prune what conversations remember.

These commands open the archive and transcript only (no chat model), so they
start in a couple of seconds and work while an assistant is running.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

archive_app = typer.Typer(no_args_is_help=True, help="Search, list, export and forget archived memories.")
console = Console()
errors = Console(stderr=True)

SessionOption = typer.Option(..., "--session", "-s", help="Session id (see `streamrag archive sessions`).")
ConfigOption = typer.Option(None, "--config", "-c", help="YAML config (default: configs/default.yaml if present).")


def _open(config_path: Path | None):
    from streamrag.archive import Archive, ArchiveUnavailable
    from streamrag.cli import _setup_logging, load_config
    from streamrag.transcript import TranscriptError, open_transcript

    _setup_logging(verbose=False)
    config = load_config(config_path)
    try:
        archive = Archive(config.archive, config.data_dir)
    except ArchiveUnavailable as exc:
        errors.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    try:
        transcript = open_transcript(config.transcript_target)
    except TranscriptError as exc:
        archive.close()
        errors.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    return archive, transcript


def _require_session(transcript, archive, session: str) -> None:
    if transcript.get_session(session) is None and archive.count(session) == 0:
        errors.print(f"[red]error:[/red] no session {session!r}; `streamrag archive sessions` lists them")
        raise typer.Exit(1)


def _memory_table(memories, scores: bool) -> Table:
    table = Table(show_lines=False)
    if scores:
        for column in ("score", "sim", "bm25"):
            table.add_column(column, justify="right")
    for column in ("turn", "role", "text", "chunk id"):
        table.add_column(column, overflow="fold")
    for m in memories:
        cells = []
        if scores:
            sim = "" if m.similarity is None else f"{m.similarity:.2f}"
            bm25 = "" if m.lexical_score is None else f"{m.lexical_score:.2f}"
            cells = [f"{m.score:.4f}", sim, bm25]
        table.add_row(*cells, str(m.turn), m.role, m.text.strip(), m.chunk_id)
    return table


@archive_app.command("sessions")
def sessions(config: Path | None = ConfigOption) -> None:
    """List stored sessions, newest first, with message and memory counts."""
    archive, transcript = _open(config)
    table = Table()
    for column in ("session", "title", "messages", "memories"):
        table.add_column(column)
    for info in transcript.sessions():
        table.add_row(info.session_id, info.title or "", str(info.message_count), str(archive.count(info.session_id)))
    console.print(table)


@archive_app.command("search")
def search(
    query: str = typer.Argument(..., help="What to look for."),
    session: str = SessionOption,
    k: int = typer.Option(5, "-k", help="How many memories to show."),
    config: Path | None = ConfigOption,
) -> None:
    """Hybrid (dense + BM25) search of one session's archive."""
    archive, transcript = _open(config)
    _require_session(transcript, archive, session)
    console.print(_memory_table(archive.search(session, query, k=k), scores=True))


@archive_app.command("list")
def list_memories(
    session: str = SessionOption,
    limit: int | None = typer.Option(None, help="Show at most this many."),
    config: Path | None = ConfigOption,
) -> None:
    """A session's memories in conversation order."""
    archive, transcript = _open(config)
    _require_session(transcript, archive, session)
    console.print(_memory_table(archive.list(session, limit=limit), scores=False))


@archive_app.command("forget")
def forget(
    session: str = SessionOption,
    chunk: str | None = typer.Option(None, "--chunk", help="Forget the message this memory (chunk id) was cut from."),
    message: str | None = typer.Option(None, "--message", help="Forget this message (its id)."),
    keep_record: bool = typer.Option(
        False, "--keep-record", help="Keep the message's transcript row (marked forgotten); erase the rest."
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before forgetting a whole session."),
    config: Path | None = ConfigOption,
) -> None:
    """Forget a message everywhere, or a whole session.

    A memory is a slice of a message, so --chunk forgets the whole message it
    came from: its archived chunks, its eviction-log rows, the recalled memory
    blocks that quote it, and its transcript row (unless --keep-record).
    Without --chunk or --message the whole session goes. Afterwards no search,
    export or file under the data directory holds the text (an embedded
    archive is rewritten; a Chroma server compacts its own files). A running
    assistant drops the text from its cache when it forgets it itself.
    """
    from streamrag import forgetting
    from streamrag.archive import ArchiveUnavailable

    archive, transcript = _open(config)
    _require_session(transcript, archive, session)
    try:
        if chunk is None and message is None:
            if not yes and not typer.confirm(f"Forget session {session} (archive and transcript) for good?"):
                raise typer.Exit(1)
            done = forgetting.forget_session(transcript, archive, session)
            console.print(f"forgot the session: {len(done.message_ids)} messages, {done.chunks} memories")
            return
        if chunk is not None:
            message = forgetting.memory_for_chunk(archive, session, chunk).message_id
        from streamrag.indexer import Indexer  # its thread starts only on notify(); reindex runs here

        reindex = Indexer(transcript, archive).reindex
        done = forgetting.forget_message(transcript, archive, session, message, keep_record, True, reindex)
    except KeyError as exc:
        errors.print(f"[red]error:[/red] {exc.args[0]}")
        raise typer.Exit(1) from None
    except ArchiveUnavailable as exc:
        errors.print(f"[red]error:[/red] {exc}; nothing was forgotten")
        raise typer.Exit(1) from None
    kept = " (transcript row kept)" if keep_record else ""
    console.print(
        f"forgot 1 message{kept}: {done.chunks} memories, {done.memory_blocks} memory blocks, "
        f"{done.log_rows} log rows; archive rewritten in {done.compact_seconds:.2f} s"
    )


@archive_app.command("export")
def export(
    session: str = SessionOption,
    out: Path | None = typer.Option(None, "--out", "-o", help="Write JSON here (default: stdout)."),
    config: Path | None = ConfigOption,
) -> None:
    """Export a session's transcript and archived memories as JSON."""
    from dataclasses import asdict

    archive, transcript = _open(config)
    _require_session(transcript, archive, session)
    data = transcript.export(session) if transcript.get_session(session) else {"session": {"session_id": session}}
    data["memories"] = [asdict(m) for m in archive.list(session)]
    text = json.dumps(data, indent=2, ensure_ascii=False)
    if out is None:
        print(text)
    else:
        out.write_text(text)
        errors.print(f"wrote {out}")
