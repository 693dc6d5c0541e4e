"""Mapping a client's whole message list onto a persistent session: extend, or rebuild."""

from __future__ import annotations

from datetime import UTC

from streamrag.history import HistoryMessage, normalise, plan_sync

HELD = [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!")]


def test_a_list_that_extends_the_session_feeds_only_its_new_messages():
    plan = plan_sync(HELD, [*HELD, ("user", "How are you?")])
    assert not plan.rebuild
    assert plan.new == (HistoryMessage("user", "How are you?"),)


def test_the_same_list_again_feeds_nothing():
    plan = plan_sync(HELD, HELD)
    assert not plan.rebuild and plan.new == ()


def test_an_empty_session_is_extended_by_anything():
    plan = plan_sync([], HELD)
    assert not plan.rebuild and len(plan.new) == 3


def test_an_edited_message_rebuilds_from_the_whole_list():
    edited = [HELD[0], ("user", "Hi there"), HELD[2], ("user", "More")]
    plan = plan_sync(HELD, edited)
    assert plan.rebuild
    assert [m.content for m in plan.new] == ["Be brief.", "Hi there", "Hello!", "More"]


def test_a_shorter_list_rebuilds():
    plan = plan_sync(HELD, [("user", "Hi")])
    assert plan.rebuild and plan.new == (HistoryMessage("user", "Hi"),)


def test_blank_messages_are_left_out_on_both_sides():
    # An empty reply is never stored by a session, so a client echoing it back still extends.
    plan = plan_sync([("user", "Hi")], [("user", "Hi"), ("assistant", "  "), ("user", "Again")])
    assert not plan.rebuild and plan.new == (HistoryMessage("user", "Again"),)


def test_pairs_dicts_and_history_messages_are_all_accepted():
    assert normalise([("user", "a"), {"role": "assistant", "content": "b"}, HistoryMessage("user", "c")]) == [
        HistoryMessage("user", "a"),
        HistoryMessage("assistant", "b"),
        HistoryMessage("user", "c"),
    ]


def test_framework_messages_bring_their_speaker_and_time():
    from datetime import datetime

    from langchain_core.messages import AIMessage, HumanMessage
    from langchain_streamrag._common import to_history

    when = datetime(2023, 5, 8, 14, 0, tzinfo=UTC)
    history = to_history(
        [
            HumanMessage("I ran a half marathon", name="Maya", additional_kwargs={"timestamp": when.isoformat()}),
            AIMessage("Well done!", name="Tom", response_metadata={"timestamp": when.timestamp() + 60}),
            HumanMessage("no metadata"),
        ]
    )
    assert [(m.name, m.timestamp) for m in history] == [
        ("Maya", when.timestamp()),
        ("Tom", when.timestamp() + 60),
        (None, None),
    ]
    # Speaker and time do not take part in matching a client's list against the session.
    assert history[2] == HistoryMessage("user", "no metadata", "Someone", 1.0)


def test_llamaindex_messages_bring_their_speaker_and_time():
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.streamrag.base import _history_message

    message = _history_message(
        ChatMessage(role="user", content="hi", additional_kwargs={"name": "Maya", "timestamp": 1683554400})
    )
    assert (message.name, message.timestamp) == ("Maya", 1683554400.0)


def test_a_timestamp_that_is_not_a_time_is_refused():
    import pytest

    from streamrag.history import timestamp_of

    assert timestamp_of("2023-05-08T14:00:00Z") == 1683554400.0
    for bad in ("last tuesday", True, [1]):
        with pytest.raises(ValueError, match="timestamp"):
            timestamp_of(bad)
