"""What forgetting costs: one message, then a whole session, in an archive of N chunks.

Forgetting erases bytes, not just index entries (see :mod:`streamrag.forgetting`):
the transcript overwrites the rows and truncates its WAL, and the embedded
Chroma store is rewritten without the deleted records by two fresh processes.
The rewrite is the cost that grows with the archive, so this benchmark fills
an embedded archive with ``chunks`` chat-like chunks (one short message each,
embedded by the real embedder) in one session, plus a second, smaller session
that must survive, then times:

``message``
    :func:`~streamrag.forgetting.forget_message` on one message of the big session;
``session``
    :func:`~streamrag.forgetting.forget_session` on the big session.

Each is split into the store's delete, the transcript's erase and the
compaction (``compact_seconds``). It then greps every file under the data
directory for the forgotten texts (``files_holding_forgotten`` must be 0).
"""

from __future__ import annotations

import logging
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from streamrag.bench.common import host_info, load_average, new_figure, progress_bar, rounded, save_figure, write_json
from streamrag.config import ArchiveSettings

logger = logging.getLogger(__name__)


def run_forget(
    settings: ArchiveSettings,
    out_dir: Path,
    *,
    chunks: int = 10_000,
    seed: int = 0,
    name: str = "forget",
    progress: bool = True,
) -> dict[str, Any]:
    from streamrag import forgetting
    from streamrag.archive import Archive
    from streamrag.bench.recall import _bulk_texts
    from streamrag.chunking import Chunk, chunk_id
    from streamrag.transcript import NewMessage, Transcript

    started_load = load_average()
    started = time.perf_counter()
    rng = random.Random(seed)
    texts = _bulk_texts(rng, settings.chunk_chars)
    result: dict[str, Any] = {"benchmark": "forget", "settings": {"chunks": chunks, "seed": seed}}
    with tempfile.TemporaryDirectory(prefix="streamrag-forget-") as tmp, progress_bar(progress) as bar:
        work = Path(tmp)
        transcript = Transcript(work / "transcripts.sqlite3")
        archive = Archive(settings, work)
        sizes = {"big": chunks, "kept": max(chunks // 10, 10)}
        task = bar.add_task("fill the archive", total=sum(sizes.values()))
        fill_started = time.perf_counter()
        secrets: dict[str, str] = {}
        for session, size in sizes.items():
            for start in range(0, size, 500):
                batch = []
                for i in range(start, min(start + 500, size)):
                    text = next(texts)
                    if session == "big" and i in (0, size // 2):
                        text = f"{text} secret-{session}-{i}-{rng.randrange(10**9)}"
                    batch.append(NewMessage("user" if i % 2 == 0 else "assistant", text, i // 2 + 1))
                stored = transcript.append_many(session, batch)
                archive.upsert(
                    [
                        Chunk(
                            chunk_id(session, m.message_id, 0),
                            m.content,
                            session,
                            m.message_id,
                            m.role,
                            m.turn,
                            0,
                            len(m.content),
                            True,
                            m.created_at,
                        )
                        for m in stored
                    ]
                )
                for m in stored:
                    if "secret-" in m.content:
                        secrets[m.message_id] = m.content[m.content.index("secret-") :]
                bar.update(task, advance=len(batch))
        result["fill_seconds"] = round(time.perf_counter() - fill_started, 1)
        one, whole = list(secrets)[0], list(secrets.values())[1]

        timings = {}
        began = time.perf_counter()
        done = forgetting.forget_message(transcript, archive, "big", one)
        timings["message"] = {
            "total_seconds": rounded(time.perf_counter() - began, 3),
            "compact_seconds": done.compact_seconds,
            "chunks": done.chunks,
        }
        began = time.perf_counter()
        done = forgetting.forget_session(transcript, archive, "big")
        timings["session"] = {
            "total_seconds": rounded(time.perf_counter() - began, 3),
            "compact_seconds": done.compact_seconds,
            "chunks": done.chunks,
            "messages": len(done.message_ids),
        }
        for entry in timings.values():
            entry["erase_seconds"] = rounded(entry["total_seconds"] - entry["compact_seconds"], 3)
        result["timings"] = timings
        forgotten = [secrets[one], whole]
        result["files_holding_forgotten"] = sum(
            1 for path in work.rglob("*") if path.is_file() and any(s.encode() in path.read_bytes() for s in forgotten)
        )
        result["kept_session_chunks"] = {"before": sizes["kept"], "after": archive.count("kept")}
        archive.close()
        transcript.close()
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    result["host"] = host_info(started_load)
    out_dir = Path(out_dir)
    write_json(out_dir / f"{name}.json", result)
    plot_forget(result, out_dir / f"{name}.png")
    return result


def plot_forget(result: dict[str, Any], path: Path) -> None:
    figure, (ax,) = new_figure(width=6, height=3.5)
    kinds = list(result["timings"])
    erase = [result["timings"][k]["erase_seconds"] for k in kinds]
    compact = [result["timings"][k]["compact_seconds"] for k in kinds]
    ax.bar(kinds, erase, label="delete from store + erase transcript rows", color="tab:blue")
    ax.bar(kinds, compact, bottom=erase, label="rewrite the archive files (compaction)", color="tab:orange")
    for x, (a, b) in enumerate(zip(erase, compact)):
        ax.text(x, a + b, f"{a + b:.1f} s", ha="center", va="bottom")
    ax.set_ylabel("seconds")
    ax.set_title(f"forgetting in an archive of {result['settings']['chunks']:,} chunks")
    ax.legend(fontsize=8)
    save_figure(figure, path)
