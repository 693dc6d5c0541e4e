"""Kill a conversation with SIGKILL at random points, resume it, and prove nothing was lost.

Each trial runs a real conversation in a child process (an
:class:`~streamrag.session.Assistant` on the configured model, a small window
so evictions happen every few messages, the background indexer running):
ingested messages, user turns with generated replies, each message printed
as *acknowledged* once the call that stored it returned. The parent sends
SIGKILL either after a random delay (the child reports which step each of its
threads is in, and the last report names the phase), or at a chosen point
the child holds still at, once it has some history:

``generating``
    mid-reply, after a few generated tokens;
``evicting-before``
    the engine decided to evict; the text is not yet in the log, the KV slots are still there;
``evicting-after``
    the log append committed; the KV slots are not dropped yet;
``indexing``
    chunks upserted into Chroma, the log rows not yet marked indexed.

The parent then opens the same data directory, checks the transcript with
``PRAGMA integrity_check``, resumes the session, lets the indexer catch up,
and counts:

``lost`` / ``duplicated``
    acknowledged messages missing from the transcript, or stored twice;
``uncovered_chars``
    characters of stored messages that are neither resident in the resumed
    cache nor inside an archived chunk (the hole a resume must not leave);
``mismatched_chunks``
    archived chunks whose text is not the transcript's text at their offsets.

Every number should be 0. ``streamrag bench crash`` writes the trials as
JSON and a PNG under ``--out``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from streamrag.bench.common import host_info, load_average, new_figure, progress_bar, rounded, save_figure, write_json
from streamrag.config import StreamRAGConfig

logger = logging.getLogger(__name__)

SESSION = "crash-trial"
TARGETS = ("random", "generating", "evicting-before", "evicting-after", "indexing")
WARM_UP_ACKS = 12  # a chosen kill point is taken only once this many messages are acknowledged
FILLER = [
    "Let's talk about gardening. What should I plant in a shady corner of the yard?",
    "The weather has been grey all week and the train was late again this morning.",
    "I am reading a novel about sailors crossing the Atlantic in the middle of winter.",
    "We might paint the kitchen a pale colour next spring, not sure which one yet.",
    "My neighbour's dog barks every morning at exactly seven o'clock, like a clock.",
]


def trial_config(config: StreamRAGConfig, data_dir: Path) -> StreamRAGConfig:
    """The trial's settings: a small window (evictions every few messages), short replies, its own data dir."""
    data = config.model_dump()
    data["data_dir"] = str(data_dir)
    # The trial kills a process mid-write and checks the SQLite file it leaves: never a shared PostgreSQL.
    data["transcript_url"] = None
    data["cache"] |= {"sink_tokens": 4, "window_tokens": 252, "evict_chunk": 32}
    data["generation"] |= {"temperature": 0.0, "max_new_tokens": 32, "ignore_eos": True}
    data["archive"] |= {"chunk_chars": 400, "chunk_overlap_chars": 80, "index_idle_s": 0.5}
    return StreamRAGConfig.model_validate(data)


# -- the child: a conversation that reports what it acknowledged ----------------


def child_main(config_json: str, seed: int, target: str = "random") -> None:
    """Run a conversation forever, printing one JSON line per acknowledged message and per phase.

    With a ``target`` other than "random", the child stops still at that point
    (printing ``{"phase": "target"}``) and waits to be killed.
    """
    config = StreamRAGConfig.model_validate_json(config_json)
    out_lock = threading.Lock()
    acks = [0]

    def say(**record) -> None:
        with out_lock:
            sys.stdout.write(json.dumps(record) + "\n")
            sys.stdout.flush()

    def hold(point: str) -> None:
        if target == point and acks[0] >= WARM_UP_ACKS:
            say(phase="target", target=point)
            time.sleep(600)  # the parent kills us here

    from streamrag.session import Assistant

    assistant = Assistant.open(config, session_id=SESSION)
    transcript, archive = assistant.transcript, assistant.archive
    log_evicted, upsert = transcript.log_evicted, archive.upsert

    def reported_upsert(chunks):
        say(phase="indexing")
        try:
            count = upsert(chunks)
            hold("indexing")  # in Chroma, not yet marked indexed in the log
            return count
        finally:
            say(phase="indexed")

    def reported_log(records):
        say(phase="evicting")
        try:
            hold("evicting-before")
            logged = log_evicted(records)
            hold("evicting-after")  # durable, but the engine has not dropped the KV slots yet
            return logged
        finally:
            say(phase="evicted")

    archive.upsert = reported_upsert
    transcript.log_evicted = reported_log
    rng = random.Random(seed)
    i = 0
    say(phase="ready")
    while True:
        i += 1
        if rng.random() < 0.75:
            role = "user" if i % 2 else "assistant"
            text = f"[m{i}] {rng.choice(FILLER)} {rng.choice(FILLER)} Note {i}: code {rng.randrange(10**6):06d}."
            say(phase="between")
            message_id = assistant.add_message(role, text)
            acks[0] += 1
            say(ack=message_id, role=role, text=text)
        else:
            text = f"[m{i}] {rng.choice(FILLER)} Tell me something about it, please."
            reply = assistant.stream(text)
            acks[0] += 1
            say(ack=reply.user_message_id, role="user", text=text)
            say(phase="generating")
            for n, _ in enumerate(reply):
                if n == 5:
                    hold("generating")
            say(phase="between")
            if reply.text.strip():
                say(ack=reply.message_id, role="assistant", text=reply.text)


# -- the parent: kill, resume, count ---------------------------------------------


def run_trial(
    config: StreamRAGConfig,
    model,
    tokenizer,
    work: Path,
    seed: int,
    kill_after: float,
    target: str = "random",
    timeout: float = 300,
) -> dict[str, Any]:
    """One trial: a child conversation killed at ``target`` (or ``kill_after`` seconds after it is ready).

    A chosen target not reached within ``kill_after`` seconds (say, no
    indexing yet) falls back to a kill at that moment, reported as such.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown kill point {target!r}; choose from {', '.join(TARGETS)}")
    work.mkdir(parents=True, exist_ok=True)
    models = Path(config.data_dir) / "models"
    if models.is_dir() and not (work / "models").exists():
        (work / "models").symlink_to(models.resolve(), target_is_directory=True)  # no second model conversion
    trial = trial_config(config, work)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen(
        [sys.executable, "-m", "streamrag.bench.crash", trial.model_dump_json(), str(seed), target],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    lines: list[dict] = []
    reader = threading.Thread(target=lambda: lines.extend(json.loads(line) for line in child.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while not any(line.get("phase") == "ready" for line in list(lines)):
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            raise RuntimeError(f"the trial's child process did not start (exit code {child.poll()})")
        time.sleep(0.05)
    kill_at = time.monotonic() + (kill_after if target == "random" else max(kill_after, 60.0))
    while time.monotonic() < kill_at and child.poll() is None:
        if target != "random" and any(line.get("phase") == "target" for line in list(lines)):
            break
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    reader.join(timeout=10)
    acked = [line for line in lines if "ack" in line]
    held = any(line.get("phase") == "target" for line in lines)
    phase = target if held else _phase_at_kill(lines)
    record = {"seed": seed, "target": target, "held_at_target": held, "kill_after_s": round(kill_after, 2)}
    return record | {"phase": phase} | check_recovery(trial, model, tokenizer, acked)


def _phase_at_kill(lines: list[dict]) -> str:
    """What the child was doing when it died, from its last reports (indexing runs beside the others)."""
    phases = [line["phase"] for line in lines if "phase" in line]
    indexing = bool(phases) and max((i for i, p in enumerate(phases) if p == "indexing"), default=-1) > max(
        (i for i, p in enumerate(phases) if p == "indexed"), default=-1
    )
    evicting = bool(phases) and max((i for i, p in enumerate(phases) if p == "evicting"), default=-1) > max(
        (i for i, p in enumerate(phases) if p == "evicted"), default=-1
    )
    if evicting:
        return "evicting"
    if indexing:
        return "indexing"
    last = next((p for p in reversed(phases) if p in ("generating", "between")), "between")
    return last


def check_recovery(config: StreamRAGConfig, model, tokenizer, acked: list[dict]) -> dict[str, Any]:
    """Open what the killed process left, resume it, and count what was lost, duplicated or not findable."""
    from streamrag.archive import Archive
    from streamrag.session import Assistant, Resources
    from streamrag.transcript import Transcript

    with sqlite3.connect(config.transcript_path) as conn:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    resources = Resources(
        config,
        model,
        tokenizer,
        Archive(config.archive, config.data_dir),
        Transcript(config.transcript_path),
        threading.Lock(),
    )
    try:
        stored = resources.transcript.messages(SESSION, include_superseded=True)
        by_id = Counter(m.message_id for m in stored)
        content = {m.message_id: m.content for m in stored}
        lost = [a["ack"] for a in acked if a["ack"] not in content or content[a["ack"]] != a["text"]]
        duplicated = [message_id for message_id, count in by_id.items() if count > 1]
        # Each text the child wrote carries a unique [mN] marker: stored twice under two ids is a duplicate.
        # (Generated replies may repeat each other word for word, so only marked texts are counted.)
        texts = Counter(m.content for m in stored if m.content.startswith("[m"))
        duplicated += [text for text, count in texts.items() if count > 1]
        started = time.perf_counter()
        assistant = Assistant.resume(SESSION, resources=resources)
        resume_seconds = time.perf_counter() - started
        resources.indexer.drain()
        resident = assistant.lm.ledger.resident_ranges()
        memories = resources.archive.list(SESSION)
        covered: dict[str, list[tuple[int, int]]] = {}
        mismatched = 0
        for memory in memories:
            covered.setdefault(memory.message_id, []).append((memory.char_start, memory.char_end))
            text = content.get(memory.message_id)
            if text is not None and text[memory.char_start : memory.char_end] != memory.text:
                mismatched += 1
        uncovered = 0
        for message in stored:
            if message.role == "memory":
                continue
            spans = covered.get(message.message_id, []) + (
                [resident[message.message_id]] if message.message_id in resident else []
            )
            uncovered += _uncovered(len(message.content), spans)
        return {
            "integrity": integrity,
            "acknowledged": len(acked),
            "stored": len(stored),
            "lost": len(lost),
            "duplicated": len(duplicated),
            "uncovered_chars": uncovered,
            "mismatched_chunks": mismatched,
            "archived_chunks": len(memories),
            "resume_seconds": round(resume_seconds, 2),
            "cache_tokens": assistant.lm.stats().cache_tokens,
        }
    finally:
        resources.close()


def _uncovered(length: int, spans: list[tuple[int, int]]) -> int:
    """Characters of ``[0, length)`` outside every span."""
    covered = 0
    position = 0
    for start, end in sorted(spans):
        start, end = max(start, position), min(end, length)
        if end > start:
            covered += end - start
            position = end
    return length - covered


def run_crash(
    config: StreamRAGConfig,
    out_dir: Path,
    *,
    trials: int = 20,
    min_delay: float = 3.0,
    max_delay: float = 30.0,
    seed: int = 0,
    name: str = "crash",
    progress: bool = True,
) -> dict[str, Any]:
    """``trials`` kill-and-resume trials with random delays; writes ``<name>.json`` and ``<name>.png``."""
    from streamrag.models import load_model

    started_load = load_average()
    started = time.perf_counter()
    model, tokenizer, _ = load_model(config.model, config.data_dir)
    rng = random.Random(seed)
    records = []
    with tempfile.TemporaryDirectory(prefix="streamrag-crash-") as tmp, progress_bar(progress) as bar:
        task = bar.add_task("kill and resume", total=trials)
        for number in range(trials):
            delay = rng.uniform(min_delay, max_delay)
            target = TARGETS[number % len(TARGETS)]
            work = Path(tmp) / f"trial{number}"
            record = run_trial(config, model, tokenizer, work, seed + number, delay, target=target)
            logger.info("trial %d: %s", number, record)
            records.append(record)
            bar.advance(task)
    totals = {
        key: sum(r[key] for r in records)
        for key in ("acknowledged", "lost", "duplicated", "uncovered_chars", "mismatched_chunks")
    }
    result = {
        "benchmark": "crash",
        "settings": {"trials": trials, "min_delay_s": min_delay, "max_delay_s": max_delay, "seed": seed},
        "trials": records,
        "totals": totals,
        "integrity_ok": sum(r["integrity"] == "ok" for r in records),
        "phases": dict(Counter(r["phase"] for r in records)),
        "held_at_target": sum(r["held_at_target"] for r in records),
        "resume_seconds": {
            "mean": rounded(sum(r["resume_seconds"] for r in records) / max(len(records), 1), 2),
            "max": max((r["resume_seconds"] for r in records), default=0),
        },
        "wall_seconds": round(time.perf_counter() - started, 1),
        "host": host_info(started_load),
    }
    out_dir = Path(out_dir)
    write_json(out_dir / f"{name}.json", result)
    plot_crash(result, out_dir / f"{name}.png")
    return result


def plot_crash(result: dict[str, Any], path: Path) -> None:
    """Per trial: messages acknowledged before the kill, and what was lost or left unfindable (all 0)."""
    figure, (ax,) = new_figure(width=9, height=4)
    trials = result["trials"]
    xs = list(range(len(trials)))
    ax.bar(xs, [t["acknowledged"] for t in trials], color="tab:blue", label="acknowledged messages")
    bad = [t["lost"] + t["duplicated"] + t["uncovered_chars"] + t["mismatched_chunks"] for t in trials]
    ax.bar(xs, bad, color="tab:red", label="lost + duplicated + uncovered chars + bad chunks")
    ax.set_xticks(xs, [t["phase"].replace("-", "\n") for t in trials], fontsize=6)
    ax.set_xlabel("trial (where the SIGKILL landed)")
    ax.set_ylabel("count")
    ax.set_title(
        f"SIGKILL then resume: {result['totals']['lost']} lost, {result['totals']['uncovered_chars']} uncovered"
    )
    ax.legend(loc="upper left")
    save_figure(figure, path)


if __name__ == "__main__":
    child_main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "random")
