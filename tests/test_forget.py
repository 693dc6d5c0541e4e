"""Forget means forgotten: after each way of forgetting, no file, export, search or recall holds the text.

A unique secret is planted in a message that is evicted, indexed, and recalled
into a memory block (which the transcript records and the cache holds). Each
way of forgetting is then followed by a byte-level grep of every file under
the data directory. And undo, regenerate and resume never leave a hole:
every transcript character stays either in the cache or in the archive.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import files_holding, filler_history
from typer.testing import CliRunner

from streamrag.cli import app
from streamrag.session import MEMORY_ROLE, Assistant

SECRET = "QUOKKA-7319-ZEPHYR"
RECALL = {"top_k": 3, "budget_fraction": 0.3}  # room in a 256-token window for the block that quotes the secret


def planted(resources) -> tuple[Assistant, str]:
    """A session whose secret left the window, was indexed, and came back in a recalled memory block."""
    assistant = Assistant(resources)
    message_id = assistant.add_message("user", f"Please remember: my vault code is {SECRET}, keep it safe.")
    assistant.add_message("assistant", "I will keep it safe.")
    assistant.add_messages(filler_history(2, assistant.lm.cache.capacity))
    assert assistant.flush()
    reply = assistant.stream("What is my vault code?", max_new_tokens=1).result()  # one token: cannot repeat it
    assert SECRET in reply.recall.block  # recalled: now in a memory row and in the cache
    assert SECRET not in reply.text
    assert files_holding(resources.config.data_dir, SECRET)  # before: on disk, of course
    return assistant, message_id


def assert_forgotten(assistant: Assistant) -> None:
    # At once: no search, recall, export or cache holds it...
    assert all(SECRET not in m.text for m in assistant.search(f"vault code {SECRET}", k=20))
    assert SECRET not in assistant.recall(f"What is my vault code {SECRET}?").block
    exported = json.dumps(assistant.transcript.export(assistant.session_id))
    assert SECRET not in exported
    cached = assistant.resources.tokenizer.decode(assistant.lm.ledger.token_ids())
    assert SECRET not in cached
    # ...and once the archive's files are rewritten (in the background), no file does.
    assert assistant.wait_forgotten(timeout=300) and assistant.flush()
    assert files_holding(assistant.resources.config.data_dir, SECRET) == []


def test_forgetting_one_memory_forgets_its_message_everywhere(make_resources):
    assistant, message_id = planted(make_resources(recall=RECALL))
    hit = next(m for m in assistant.search(SECRET, k=10) if SECRET in m.text)
    forgotten = assistant.forget(hit.chunk_id)
    assert forgotten.message_ids == (message_id,) and forgotten.chunks >= 1 and forgotten.memory_blocks == 1
    assert forgotten.compact_seconds is None and forgotten.compaction  # the files are rewritten in the background
    assert_forgotten(assistant)
    # The conversation goes on; the rest of it is still remembered.
    assert assistant.chat("Thanks. What should I plant in a shady corner?")
    assert any("shady corner" in m.text for m in assistant.search("shady corner plants", k=5))


def test_forgetting_a_message_while_it_is_in_the_cache_rebuilds_the_cache_without_it(make_resources):
    resources = make_resources()
    assistant = Assistant(resources)
    message_id = assistant.add_message("user", f"My vault code is {SECRET}.")
    assistant.add_message("assistant", "Noted.")
    assert message_id in assistant.lm.ledger.resident_ranges()
    forgotten = assistant.forget_message(message_id)
    assert forgotten.cache_rebuilt and forgotten.chunks == 0
    assert_forgotten(assistant)
    assert [m.content for m in assistant.history()] == ["Noted."]


def test_keeping_the_record_keeps_only_the_transcript_row(make_resources):
    assistant, message_id = planted(make_resources(recall=RECALL))
    assistant.forget_message(message_id, keep_record=True, wait=True)
    data_dir = assistant.resources.config.data_dir
    assert files_holding(data_dir, SECRET) == ["transcripts.sqlite3"]
    kept = assistant.transcript.get(message_id)
    assert SECRET in kept.content and kept.superseded_at and kept.meta.get("forgotten_at")
    assert all(SECRET not in m.text for m in assistant.search(SECRET, k=20))
    assert SECRET not in assistant.recall("What is my vault code?").block
    assert SECRET not in assistant.resources.tokenizer.decode(assistant.lm.ledger.token_ids())
    # A later rebuild neither re-feeds nor re-archives it.
    resumed = Assistant.resume(assistant.session_id, resources=assistant.resources)
    assert resumed.flush() and all(SECRET not in m.text for m in resumed.search(SECRET, k=20))


def test_forgetting_the_session_leaves_no_byte_of_it(make_resources):
    resources = make_resources(recall=RECALL)
    assistant, _ = planted(resources)
    other = Assistant(resources)
    other.add_messages(filler_history(2, other.lm.cache.capacity))
    assert other.flush()
    kept = resources.archive.count(other.session_id)
    forgotten = assistant.forget_session()
    assert forgotten.chunks > 0 and assistant.wait_forgotten(timeout=300)
    assert files_holding(resources.config.data_dir, SECRET) == []
    assert resources.transcript.get_session(assistant.session_id) is None
    assert resources.archive.count(assistant.session_id) == 0
    # Other sessions are untouched by the rewrite of the store.
    assert resources.archive.count(other.session_id) == kept
    assert other.search("shady corner", k=3)


def test_the_cli_forgets_a_memory_and_a_session(make_resources, tmp_path):
    resources = make_resources(recall=RECALL)
    assistant, _ = planted(resources)
    chunk = next(m.chunk_id for m in assistant.search(SECRET, k=10) if SECRET in m.text)
    config = tmp_path / "forget.yaml"
    config.write_text(resources.config.model_dump_json())  # JSON is YAML
    resources.close()  # the CLI opens the data directory itself, as another process would
    runner = CliRunner()
    done = runner.invoke(app, ["archive", "forget", "-s", assistant.session_id, "--chunk", chunk, "-c", str(config)])
    assert done.exit_code == 0, done.output
    assert "forgot 1 message" in done.output
    assert files_holding(Path(resources.config.data_dir), SECRET) == []
    gone = runner.invoke(app, ["archive", "forget", "-s", assistant.session_id, "--yes", "-c", str(config)])
    assert gone.exit_code == 0 and "forgot the session" in gone.output


def covered_chars(assistant: Assistant) -> int:
    """Characters of the active transcript neither resident in the cache nor in an archived chunk."""
    assert assistant.flush()
    resident = assistant.lm.ledger.resident_ranges()
    archived: dict[str, list[tuple[int, int]]] = {}
    for memory in assistant.archive.list(assistant.session_id):
        archived.setdefault(memory.message_id, []).append((memory.char_start, memory.char_end))
    holes = 0
    for message in assistant.transcript.messages(assistant.session_id):
        if message.role == MEMORY_ROLE:
            continue
        spans = sorted(
            archived.get(message.message_id, [])
            + ([resident[message.message_id]] if message.message_id in resident else [])
        )
        position = 0
        for start, end in spans:
            if start > position:
                holes += start - position
            position = max(position, end)
        holes += max(len(message.content) - position, 0)
    return holes


@pytest.mark.parametrize("action", ["undo", "regenerate", "resume"])
def test_undo_regenerate_and_resume_leave_no_hole(make_resources, action):
    resources = make_resources()
    assistant = Assistant(resources)
    assistant.add_messages(filler_history(1.6, assistant.lm.cache.capacity))
    assistant.chat("Tell me about ferns.")
    assistant.chat("And about hostas?")
    if action == "undo":
        assistant.undo()
    elif action == "regenerate":
        assistant.regenerate(max_new_tokens=8).result()
    else:
        assistant = Assistant.resume(assistant.session_id, resources=resources)
    assert covered_chars(assistant) == 0
    # And a search for an early message's own words finds it.
    first = next(m for m in assistant.transcript.messages(assistant.session_id) if m.role == "user")
    assert any(m.message_id == first.message_id for m in assistant.search(first.content, k=5))


def test_the_forget_benchmark_erases_every_planted_text_and_keeps_the_other_session(tmp_path):
    from streamrag.bench.forget import run_forget
    from streamrag.config import ArchiveSettings

    result = run_forget(ArchiveSettings(), tmp_path, chunks=60, progress=False)
    assert result["files_holding_forgotten"] == 0
    assert result["timings"]["message"]["chunks"] == 1 and result["timings"]["session"]["chunks"] == 59
    assert result["kept_session_chunks"]["after"] == result["kept_session_chunks"]["before"]
    assert (tmp_path / "forget.json").exists() and (tmp_path / "forget.png").stat().st_size > 5_000


def test_a_forget_during_a_background_rewrite_is_not_undone_by_it(make_resources):
    resources = make_resources(recall=RECALL)
    assistant = Assistant(resources)
    first = assistant.add_message("user", "The first secret is PANGOLIN-1111.")
    second = assistant.add_message("user", "The second secret is PANGOLIN-2222.")
    assistant.add_messages(filler_history(2, assistant.lm.cache.capacity))
    assert assistant.flush()
    assistant.forget_message(first)  # starts rewriting the archive in the background
    assistant.forget_message(second)  # must not be copied back by that rewrite
    assert assistant.wait_forgotten(timeout=300)
    assert not any("PANGOLIN" in m.text for m in resources.archive.list(assistant.session_id))
    assert files_holding(resources.config.data_dir, "PANGOLIN") == []
