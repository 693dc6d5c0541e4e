"""Bulk ingestion: a history larger than the window is stored whole, archived whole, and prefilled at its tail only."""

from __future__ import annotations

import pytest
from conftest import filler_history

from streamrag.session import Assistant

PLANTED = "My grandmother's village is called Vilar de Mouros."


def forward_tokens(model) -> tuple[list[int], callable]:
    """Count the input tokens of every forward pass of ``model``; returns (counts, remove)."""
    counts: list[int] = []

    def hook(module, args, kwargs):
        counts.append(kwargs["input_ids"].shape[1])

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    return counts, handle.remove


def test_a_history_several_windows_long_is_prefilled_only_where_the_cache_will_hold_it(make_resources):
    resources = make_resources()
    assistant = Assistant(resources)
    history = [("user", PLANTED), ("assistant", "A lovely name."), *filler_history(8, assistant.lm.cache.capacity)]
    counts, remove = forward_tokens(resources.model)
    try:
        ids = assistant.add_messages(history)
    finally:
        remove()
    window = resources.config.cache.window_tokens
    history_tokens = sum(len(assistant.lm.format.content(text).token_ids) for _, text in history)
    assert history_tokens > 6 * window
    # One window of prefill (the system prompt and the newest ~3/4 window), not eight windows of it.
    assert sum(counts) <= window + resources.config.cache.sink_tokens
    # Every message is in the transcript, in order; the cache ends with the newest one.
    stored = [m for m in resources.transcript.messages(assistant.session_id) if m.message_id in set(ids)]
    assert [m.content for m in stored] == [text for _, text in history]
    assert assistant.lm.ledger.slots[-1].message_id == ids[-1]
    # Everything the cache does not hold is logged for the archive: the oldest message is found again.
    assert assistant.flush(timeout=120)
    assert any("Vilar de Mouros" in m.text for m in assistant.search("grandmother's village", k=5))
    unheld = [m for m in stored if m.message_id not in assistant.lm.ledger]
    logged = resources.transcript.logged_ends(assistant.session_id)
    assert unheld and all(logged.get(m.message_id, 0) == len(m.content) for m in unheld)


def test_the_cache_after_a_bulk_ingest_is_the_one_a_resume_builds(make_resources):
    resources = make_resources()
    assistant = Assistant(resources)
    assistant.add_messages(filler_history(4, assistant.lm.cache.capacity))
    ingested = assistant.lm.ledger.token_ids()
    resumed = Assistant.resume(assistant.session_id, resources=resources)
    assert resumed.lm.ledger.token_ids() == ingested


def test_what_the_cache_held_before_a_bulk_ingest_is_archived_not_lost(make_resources):
    resources = make_resources()
    assistant = Assistant(resources)
    earlier = assistant.add_message("user", PLANTED)
    assert earlier in assistant.lm.ledger
    assistant.add_messages(filler_history(3, assistant.lm.cache.capacity))
    assert earlier not in assistant.lm.ledger
    assert assistant.flush(timeout=120)
    assert any("Vilar de Mouros" in m.text for m in assistant.search("grandmother's village", k=5))
    # The conversation goes on from the ingested history.
    reply = assistant.stream("Where is my grandmother from?", max_new_tokens=4).result()
    assert reply.text


def test_a_short_batch_is_prefilled_on_top_of_the_cache(make_resources):
    resources = make_resources()
    assistant = Assistant(resources)
    first = assistant.add_message("user", "Hello there, I have a question about tomatoes.")
    before = assistant.lm.stats()
    ids = assistant.add_messages([("assistant", "Ask away."), ("user", "Why do they split?")])
    after = assistant.lm.stats()
    assert first in assistant.lm.ledger and all(m in assistant.lm.ledger for m in ids)
    assert after.evicted_tokens == before.evicted_tokens == 0
    assert after.cache_tokens > before.cache_tokens


def test_a_bulk_ingest_that_fails_keeps_nothing_of_itself_and_the_session_goes_on(make_resources, monkeypatch):
    resources = make_resources()
    assistant = Assistant(resources)
    kept = assistant.add_message("user", PLANTED)
    history = filler_history(3, assistant.lm.cache.capacity)

    def broken(*args, **kwargs):
        raise RuntimeError("forward pass failed")

    with monkeypatch.context() as patch:
        patch.setattr(assistant.lm, "add_messages", broken)
        with pytest.raises(RuntimeError, match="forward pass failed"):
            assistant.add_messages(history)
    contents = [m.content for m in resources.transcript.messages(assistant.session_id)]
    assert PLANTED in contents and not any(text in contents for _, text in history)
    assert resources.transcript.get(kept) is not None
    # The next step rebuilds the cache from the transcript and works.
    reply = assistant.stream("Where is my grandmother from?", max_new_tokens=4).result()
    assert reply.text and kept in assistant.lm.ledger
