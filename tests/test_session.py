"""The Assistant end to end: evicted facts come back, sessions stay apart, crashes lose nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from streamrag.archive import Archive, ArchiveUnavailable
from streamrag.config import StreamRAGConfig
from streamrag.recall import format_date
from streamrag.session import MEMORY_ROLE, Assistant, Resources
from streamrag.text import MessageError
from streamrag.transcript import Transcript, TranscriptError

FILLER_USER = [
    "Let's talk about gardening. What should I plant in a shady corner?",
    "The weather has been grey all week and the train was late again.",
    "I am reading a novel about sailors crossing the Atlantic in winter.",
    "We might paint the kitchen a pale colour next spring, not sure which.",
    "My neighbour's dog barks every morning at exactly seven o'clock.",
]
FILLER_ASSISTANT = [
    "Ferns and hostas do well in shade; they like moist soil and little sun.",
    "Grey weeks are tiring. A short walk at lunch can help a lot with the mood.",
    "That sounds like a gripping read; sea stories often have great atmosphere.",
    "Pale colours make small kitchens feel bigger, especially with good light.",
    "Some dogs are very punctual. Maybe he is greeting someone who leaves then.",
]


def small_config(data_dir: Path, **recall) -> StreamRAGConfig:
    return StreamRAGConfig(
        data_dir=data_dir,
        cache={"sink_tokens": 4, "window_tokens": 252, "evict_chunk": 32},
        generation={"temperature": 0, "max_new_tokens": 16},
        archive={"chunk_chars": 400, "chunk_overlap_chars": 80},
        recall={"top_k": 3, "budget_fraction": 0.3, **recall},
    )


@pytest.fixture
def resources(embedded, tmp_path, archive_settings):
    """Shared model plus a fresh archive (embedded Chroma, or a real Chroma server) and transcript."""
    model, tokenizer = embedded
    config = small_config(tmp_path)
    settings = archive_settings.model_copy(update={"chunk_chars": 400, "chunk_overlap_chars": 80})
    config = config.model_copy(update={"archive": settings})
    archive = Archive(config.archive, tmp_path)
    transcript = Transcript(tmp_path / "transcripts.sqlite3")
    resources = Resources(config, model, tokenizer, archive, transcript, threading.Lock())
    yield resources
    resources.close()


def with_config(resources: Resources, config: StreamRAGConfig) -> Resources:
    return Resources(
        config, resources.model, resources.tokenizer, resources.archive, resources.transcript, resources.lock
    )


def run_on(assistant: Assistant, windows: float) -> None:
    """Ingest filler exchanges until `windows` windows' worth of tokens went through the cache."""
    target = windows * assistant.lm.cache.capacity
    i = 0
    while assistant.lm.stats().prefilled_tokens < target:
        assistant.add_message("user", FILLER_USER[i % len(FILLER_USER)] + f" (note {i})")
        assistant.add_message("assistant", FILLER_ASSISTANT[i % len(FILLER_ASSISTANT)])
        i += 1


def test_an_early_fact_is_evicted_archived_and_recalled_when_asked(resources):
    assistant = Assistant(resources)
    fact = "By the way, my sister Margarethe moved to Trondheim last year."
    assistant.add_message("user", fact)
    assistant.add_message("assistant", "How exciting for her! Norway is beautiful.")
    run_on(assistant, windows=5)
    stats = assistant.stats()
    assert stats.cache.evicted_tokens > 4 * stats.cache.capacity
    assert assistant.flush()
    assert any("Trondheim" in m.text for m in resources.archive.list(assistant.session_id))
    assert "Trondheim" not in resources.tokenizer.decode(assistant.lm.ledger.token_ids())

    reply = assistant.stream("Where did my sister move to?").result()
    block = reply.recall.block
    assert block.startswith("Earlier in this conversation:")
    assert "Margarethe moved to Trondheim" in block
    assert any("Trondheim" in m.text and m.turn == 1 and m.role == "user" for m in reply.memories)
    assert reply.text and reply.done and not reply.recall_unavailable
    # The user message is durable before recall runs; the injected block is recorded as a memory.
    roles = [m.role for m in resources.transcript.messages(assistant.session_id)[-3:]]
    assert roles == ["user", MEMORY_ROLE, "assistant"]
    # In the cache, the block comes right before the user message.
    user_slot = next(i for i, s in enumerate(assistant.lm.ledger.slots) if s.message_id == reply.message_id)
    cached = resources.tokenizer.decode(assistant.lm.ledger.token_ids()[:user_slot])
    assert cached.rindex("Margarethe moved to Trondheim") < cached.rindex("Where did my sister move to?")


def test_a_numeric_code_comes_back_through_bm25(resources):
    # The embedder sees "4471-9082-XK" as noise; the lexical side holds every part of the code.
    assistant = Assistant(resources)
    assistant.add_message("user", "Please note the parcel tracking code 4471-9082-XK for later.")
    assistant.add_message("assistant", "Noted.")
    run_on(assistant, windows=5)
    reply = assistant.stream("Status of 4471-9082-XK?").result()
    hits = [m for m in reply.memories if "4471-9082-XK" in m.text]
    assert hits and reply.memories[0] == hits[0], reply.recall
    assert hits[0].lexical_score == pytest.approx(0.75, abs=0.2)  # 4471, 9082, xk of 4471, 9082, xk, status


def test_recalled_memories_are_never_archived_twice(resources):
    assistant = Assistant(resources)
    assistant.add_message("user", "My locker code at the gym is 5521.")
    assistant.add_message("assistant", "Got it.")
    for round_ in range(3):
        run_on(assistant, windows=2 * (round_ + 1))
        reply = assistant.stream("What is my gym locker code?").result()
        assert "5521" in reply.recall.block
    assert assistant.flush()
    memories = resources.archive.list(assistant.session_id)
    # The injected blocks were evicted too (three of them) but none was archived...
    memory_ids = {m.message_id for m in resources.transcript.messages(assistant.session_id) if m.role == MEMORY_ROLE}
    assert len(memory_ids) == 3
    assert not any(m.message_id in memory_ids or "Earlier in this conversation" in m.text for m in memories)
    # ...so the fact itself is archived once, from the message that said it.
    assert sum("locker code at the gym is 5521" in m.text for m in memories) == 1


def test_two_sessions_never_see_each_others_memories(resources):
    alice, bob = Assistant(resources), Assistant(resources)
    alice.add_message("user", "My secret project is codenamed Bluefinch.")
    bob.add_message("user", "I collect antique maps of Portugal.")
    run_on(alice, windows=3)
    run_on(bob, windows=3)
    reply = bob.stream("What is my secret project codenamed? Bluefinch?").result()
    assert all(m.session_id == bob.session_id for m in reply.memories)
    assert "Bluefinch" not in reply.recall.block
    assert all(m.session_id == bob.session_id for m in bob.search("Bluefinch secret project", k=20))


def test_forget_removes_one_memory_or_the_whole_session(resources):
    assistant = Assistant(resources)
    assistant.add_message("user", "My bank PIN hint is 'the blue door'.")
    run_on(assistant, windows=3)
    assert assistant.flush()
    hit = next(m for m in assistant.search("bank PIN hint blue door", k=10) if "blue door" in m.text)
    forgotten = assistant.forget(hit.chunk_id)
    assert forgotten.chunks == 1 and forgotten.message_ids == (hit.message_id,)
    assert all("blue door" not in m.text for m in assistant.search("bank PIN hint blue door", k=20))
    assert assistant.stats().archived_chunks > 0
    assistant.forget_session()
    assert resources.archive.count(assistant.session_id) == 0
    assert resources.transcript.get_session(assistant.session_id) is None


def test_a_failing_eviction_log_fails_the_turn_and_changes_nothing(resources, monkeypatch):
    assistant = Assistant(resources)
    assistant.add_message("user", "The first message is long enough to fill a good part of the window. " * 10)
    before_cache = assistant.lm.stats()
    before_messages = resources.transcript.count(assistant.session_id)

    def disk_full(*args, **kwargs):
        raise TranscriptError("database or disk is full")

    monkeypatch.setattr(resources.transcript, "log_evicted", disk_full)
    with pytest.raises(TranscriptError, match="disk is full"):
        assistant.add_message("user", "This message needs room, so something must be evicted. " * 10)
    # Text may only leave the cache once it is durable: nothing was evicted, nothing stored.
    assert assistant.lm.stats() == before_cache
    assert resources.transcript.count(assistant.session_id) == before_messages


def test_an_archive_outage_degrades_recall_and_loses_nothing(resources, monkeypatch):
    assistant = Assistant(resources)
    assistant.add_message("user", "My locker code at the gym is 5521, please remember it.")
    assistant.add_message("assistant", "Got it.")

    def down(*args, **kwargs):
        raise ConnectionError("connection refused")

    from chromadb.api.models.Collection import Collection

    for method in ("upsert", "query", "get", "count"):  # every session's collection
        monkeypatch.setattr(Collection, method, down)
    run_on(assistant, windows=3)  # evictions keep happening: they go to the log
    assert assistant.stats().pending_evictions > 0
    reply = assistant.stream("What is my gym locker code?").result()
    assert reply.text and reply.recall_unavailable
    assert "connection refused" in reply.recall.unavailable
    # What is logged but not indexed is still recalled, through BM25 over the log.
    assert any("5521" in m.text and m.pending for m in reply.memories)
    with pytest.raises(ArchiveUnavailable, match="connection refused"):
        resources.archive.search(assistant.session_id, "locker code")
    stats = assistant.stats()
    assert stats.archived_chunks is None and stats.archive_unavailable
    monkeypatch.undo()  # the store is back
    assert assistant.flush(timeout=60)
    assert assistant.stats().pending_evictions == 0 and assistant.indexer.unavailable is None
    assert any("5521" in m.text for m in resources.archive.list(assistant.session_id))


CHILD = textwrap.dedent(
    """
    import json, sys
    from streamrag.config import StreamRAGConfig
    from streamrag.session import Assistant
    config = StreamRAGConfig.model_validate_json(sys.argv[1])
    assistant = Assistant.open(config, session_id="crashy")
    i = 0
    while True:
        role = "user" if i % 2 == 0 else "assistant"
        text = f"message {i}: " + ("the quick brown fox jumps over the lazy dog number %d. " % i) * 3
        mid = assistant.add_message(role, text)
        print(json.dumps({"id": mid, "text": text}), flush=True)
        i += 1
    """
)


def test_killed_mid_conversation_then_resumed_keeps_every_message_exactly_once(embedded, data_dir, tmp_path):
    config = small_config(tmp_path)
    # Share the converted embedded model with the child: no second 20 s conversion.
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    models_link = tmp_path / "models"
    models_link.symlink_to(Path(data_dir) / "models", target_is_directory=True)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, config.model_dump_json()],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    done = []
    deadline = time.monotonic() + 240
    while len(done) < 24 and time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            break
        done.append(json.loads(line))
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert len(done) >= 24, "the child did not get far enough before the deadline"

    model, tokenizer = embedded
    resources = Resources(
        config,
        model,
        tokenizer,
        Archive(config.archive, tmp_path),
        Transcript(tmp_path / "transcripts.sqlite3"),
        threading.Lock(),
    )
    stored = resources.transcript.messages("crashy")
    ids = [m.message_id for m in stored]
    assert len(ids) == len(set(ids))
    # Every message the child finished is there once; at most the one in flight is extra.
    assert [d["id"] for d in done] == ids[: len(done)] and len(ids) - len(done) <= 1
    by_id = {m.message_id: m.content for m in stored}

    assistant = Assistant.resume("crashy", resources=resources)
    assert assistant.lm.stats().cache_tokens > 0
    for i in range(10):
        assistant.add_message("user" if i % 2 == 0 else "assistant", f"after the restart, message {i}. " * 6)
    assert assistant.flush(timeout=120)

    step = config.archive.chunk_chars - config.archive.chunk_overlap_chars
    memories = resources.archive.list("crashy")
    assert memories
    for memory in memories:
        # Verbatim text at its recorded offsets, on the chunk grid: nothing duplicated under another id.
        assert (
            by_id.get(memory.message_id, None) is None
            or memory.text == by_id[memory.message_id][memory.char_start : memory.char_end]
        )
        assert memory.chunk_id.endswith(f":{(memory.char_start // step) * step}")
    keys = [(m.message_id, m.char_start // step) for m in memories]
    assert len(keys) == len(set(keys))
    # The messages evicted before the crash are all in the archive.
    archived = {m.message_id for m in memories}
    assert {d["id"] for d in done[:10]} <= archived
    resources.close()


def test_a_chroma_server_killed_mid_conversation_then_restarted_loses_and_duplicates_nothing(
    embedded, tmp_path, own_chroma_server
):
    from streamrag.chunking import chunk_id
    from streamrag.config import ArchiveSettings

    model, tokenizer = embedded
    config = small_config(tmp_path)
    settings = ArchiveSettings(
        chroma_url=own_chroma_server.url, chunk_chars=400, chunk_overlap_chars=80, timeout_s=5, index_idle_s=0.2
    )
    config = config.model_copy(update={"archive": settings})
    resources = Resources(
        config, model, tokenizer, Archive(settings, tmp_path), Transcript(config.transcript_path), threading.Lock()
    )
    try:
        assistant = Assistant(resources)
        assistant.add_message("user", "My locker code at the gym is 5521, please remember it.")
        run_on(assistant, windows=2)
        assert assistant.flush(timeout=60)

        own_chroma_server.stop()  # the archive goes away mid-conversation
        run_on(assistant, windows=4)  # evictions go on: logged, waiting for the store
        reply = assistant.stream("What is my gym locker code?").result()
        assert reply.text and reply.recall_unavailable  # the turn went on and says recall was degraded
        assert assistant.stats().pending_evictions > 0 and assistant.indexer.unavailable
        assert not assistant.flush(timeout=5)

        own_chroma_server.start()  # same path, same port
        assert assistant.flush(timeout=120)
        assert assistant.stats().pending_evictions == 0 and assistant.indexer.unavailable is None
        # Every logged character is in the archive exactly once: the chunk ids are exactly the grid's.
        step = settings.chunk_chars - settings.chunk_overlap_chars
        ends = resources.transcript.logged_ends(assistant.session_id)
        expected = {
            chunk_id(assistant.session_id, message_id, start)
            for message_id, end in ends.items()
            for start in range(0, end, step)
        }
        memories = resources.archive.list(assistant.session_id)
        assert len(memories) == len({m.chunk_id for m in memories}) == len(expected)
        assert {m.chunk_id for m in memories} == expected
        content = {m.message_id: m.content for m in resources.transcript.messages(assistant.session_id)}
        assert all(content[m.message_id][m.char_start : m.char_end] == m.text for m in memories)
        assert all(m.char_end == min(m.char_start + 400, ends[m.message_id]) for m in memories)
    finally:
        resources.close()


def test_speakers_and_times_given_with_messages_come_back_with_their_memories(resources):
    assistant = Assistant(resources)
    said = datetime(2023, 5, 8, 14, 0, tzinfo=UTC).timestamp()
    assistant.add_message("user", "I ran my first half marathon yesterday, in 1:58!", timestamp=said, name="Maya")
    assistant.add_message("assistant", "That is a great time, well done.", timestamp=said + 60, name="Tom")
    run_on(assistant, windows=3)
    assert assistant.flush()
    result = assistant.recall("When did Maya run her first half marathon?", now=said + 30 * 86400)
    line = next(line for line in result.block.splitlines() if "half marathon" in line)
    assert line.startswith(f"[{format_date(said, None)}] Maya: ")  # "[8 May 2023] Maya: " in the machine's zone
    assert result.memories[0].speaker == "Maya" and result.memories[0].created_at == said
    with pytest.raises(MessageError, match="speaker name"):
        assistant.add_message("user", "hello", name="two\nlines")
