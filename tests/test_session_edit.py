"""Editing a conversation: stop mid-reply, undo, regenerate, per-session settings, titles.

What the Gradio app's buttons call; each must leave cache, transcript and archive in agreement.
"""

from __future__ import annotations

import pytest
from conftest import filler_history

from streamrag.config import ConfigError
from streamrag.engine import MessageError
from streamrag.session import MEMORY_ROLE, Assistant


def cached_text(assistant: Assistant) -> str:
    return assistant.resources.tokenizer.decode(assistant.lm.ledger.token_ids())


def test_stop_ends_the_reply_and_keeps_what_was_shown(make_resources):
    assistant = Assistant(make_resources(generation={"temperature": 0, "max_new_tokens": 48}))
    shown = []
    reply = assistant.stream("Tell me a long story about a lighthouse keeper.")
    for piece in reply:
        shown.append(piece)
        if len(shown) == 3:
            assistant.stop()
    assert len(shown) == 3
    assert reply.stop_reason == "interrupted" and reply.done
    reply = assistant.transcript.messages(assistant.session_id)[-1]
    assert (reply.role, reply.content) == ("assistant", "".join(shown))
    assert "".join(shown).strip() in cached_text(assistant)
    # A later reply is not affected by the earlier stop.
    later = assistant.stream("Thanks. What is two plus two?").result()
    assert later.stop_reason in {"eos", "length"}


def test_a_closed_stream_records_exactly_the_pieces_it_yielded(make_resources):
    assistant = Assistant(make_resources(generation={"temperature": 0, "max_new_tokens": 48}))
    stream = assistant.stream("Describe the sea in many words.")
    shown = [next(stream), next(stream)]
    stream.close()  # what a client going away does
    reply = assistant.transcript.messages(assistant.session_id)[-1]
    assert reply.content == "".join(shown)
    assert not assistant.resources.lock.locked()
    assert assistant.chat("And the sky?")


def test_undo_takes_back_the_last_exchange_everywhere(make_resources):
    assistant = Assistant(make_resources())
    assert assistant.undo() is None  # nothing to take back yet
    assistant.chat("My cat is called Pumpernickel.")
    before = assistant.history()
    assistant.chat("Please forget the zebra named Quillon.")
    assert assistant.undo() == "Please forget the zebra named Quillon."
    assert assistant.history() == before
    assert "Quillon" not in cached_text(assistant)
    assert "Pumpernickel" in cached_text(assistant)
    assert assistant.turn == 1
    assistant.chat("What is my cat called?")
    assert [m.turn for m in assistant.transcript.messages(assistant.session_id) if m.role == "user"] == [1, 2]


def test_undo_forgets_memories_archived_from_the_undone_messages(make_resources):
    assistant = Assistant(make_resources())
    for role, content in filler_history(1.2, assistant.lm.cache.capacity):
        assistant.add_message(role, content)
    long_message = "The blue heron code word is Marzipan-77. " * 40  # longer than the window: partly evicted
    assistant.chat(long_message)
    assert assistant.flush()
    assert any("Marzipan-77" in m.text for m in assistant.archive.list(assistant.session_id))
    assert assistant.undo() == long_message
    assert not any("Marzipan-77" in m.text for m in assistant.archive.list(assistant.session_id))
    assert "Marzipan" not in cached_text(assistant)


def test_regenerate_answers_the_last_message_again_without_duplicates(make_resources):
    assistant = Assistant(make_resources())
    first = assistant.chat("Name a colour.")
    again = assistant.regenerate().result().text
    assert again == first  # greedy decoding from the same context
    rows = [(m.role, m.turn) for m in assistant.transcript.messages(assistant.session_id) if m.role != MEMORY_ROLE]
    assert rows == [("user", 1), ("assistant", 1)]
    with pytest.raises(MessageError):
        Assistant(assistant.resources).regenerate()


def test_per_session_settings_apply_and_survive_a_restart(make_resources):
    resources = make_resources()
    small = Assistant(resources, settings={"cache.window_tokens": 124, "recall.top_k": 1})
    default = Assistant(resources)
    assert small.lm.cache.capacity == 4 + 124 and small.recall_policy.settings.top_k == 1
    assert default.lm.cache.capacity == 4 + 252
    small.chat("Hello there.")
    resumed = Assistant.resume(small.session_id, resources=resources)
    assert resumed.lm.cache.capacity == 4 + 124 and resumed.settings == {"cache.window_tokens": 124, "recall.top_k": 1}
    via_registry = resources.session(None, settings={"generation.temperature": 0.5})
    assert via_registry.config.generation.temperature == 0.5
    with pytest.raises(ConfigError, match="not a per-session setting"):
        Assistant(resources, settings={"model.spec": "other"})
    with pytest.raises(ConfigError, match="cache.window_tokens"):
        Assistant(resources, settings={"cache.window_tokens": 0})


def test_a_session_is_titled_after_its_first_user_message(make_resources):
    resources = make_resources()
    assistant = Assistant(resources)
    assistant.chat("Plan a   three-day trip to Lisbon with lots of pastries and a tram ride on the first day.")
    assistant.chat("Second message.")
    title = resources.transcript.get_session(assistant.session_id).title
    assert title.startswith("Plan a three-day trip to Lisbon") and title.endswith("…") and len(title) <= 60
    named = Assistant(resources, title="Kept")
    named.chat("Hi.")
    assert resources.transcript.get_session(named.session_id).title == "Kept"


def test_forget_session_drops_the_registry_handle(make_resources):
    resources = make_resources()
    assistant = resources.session()
    assistant.chat("Hello.")
    assistant.forget_session()
    assert resources.session(assistant.session_id) is not assistant


def test_turn_numbers_stay_in_step_after_a_recall(make_resources):
    # A recalled memory block must not advance the turn: archive, transcript and panel share one numbering.
    assistant = Assistant(make_resources(recall={"top_k": 3, "budget_fraction": 0.3}))
    assistant.add_message("user", "My locker code at the gym is 5521.")
    assistant.add_message("assistant", "Got it.")
    for role, content in filler_history(1.5, assistant.lm.cache.capacity):
        assistant.add_message(role, content)
    reply = assistant.stream("What is my gym locker code?").result()
    assert reply.recall.block and reply.turn == assistant.turn
    users = [m for m in assistant.transcript.messages(assistant.session_id) if m.role == "user"]
    assert assistant.turn == users[-1].turn == len(users)
    block = next(m for m in assistant.transcript.messages(assistant.session_id) if m.role == MEMORY_ROLE)
    assert block.turn == users[-1].turn
    assistant.chat("Thanks.")
    assert assistant.turn == len(users) + 1


def test_a_reply_left_half_read_holds_no_lock_and_is_recorded_by_the_next_turn(make_resources):
    resources = make_resources(generation={"temperature": 0, "max_new_tokens": 48})
    alice, bob = Assistant(resources), Assistant(resources)
    reply = alice.stream("Describe the sea in many words.")
    first = next(reply) + next(reply)
    assert not resources.lock.locked()
    assert bob.chat("Hello from another session.")  # runs between two of alice's tokens
    first += next(reply)  # alice goes on where she was
    assert reply.text == first and not reply.done
    alice.chat("And the sky?")  # a new turn ends the reply still open
    assert reply.done and reply.stop_reason == "interrupted"
    replies = [m for m in alice.transcript.messages(alice.session_id) if m.role == "assistant"]
    assert (replies[0].message_id, replies[0].content) == (reply.message_id, first)
    assert first.strip() in cached_text(alice)


@pytest.mark.parametrize("bad", ["half an emoji \ud83d here", "\udfff", "   "])
def test_invalid_text_is_refused_everywhere_and_leaves_nothing_behind(make_resources, bad):
    assistant = Assistant(make_resources())
    assistant.chat("Hello.")
    before = (assistant.transcript.count(assistant.session_id), assistant.lm.stats())
    calls = [
        lambda: assistant.chat(bad),
        lambda: assistant.add_message("user", bad),
        lambda: assistant.add_messages([("user", "fine"), ("assistant", bad)]),
    ]
    if bad.strip():  # whole-list calls leave blank messages out by design (see streamrag.history)
        calls.append(
            lambda: assistant.stream_messages([{"role": "user", "content": "Hello."}, {"role": "user", "content": bad}])
        )
    for call in calls:
        with pytest.raises(MessageError):
            call()
    assert (assistant.transcript.count(assistant.session_id), assistant.lm.stats()) == before
