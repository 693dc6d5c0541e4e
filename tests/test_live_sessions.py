"""Live sessions are bounded: beyond ``live_sessions`` the least recently used idle one lets its cache go.

A released session loses nothing: its next use rebuilds the cache from the transcript (as a resume would),
through the handle a caller still holds or through ``Resources.session``.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("one_thread_module")


def test_beyond_the_limit_the_least_recently_used_session_releases_its_cache_and_comes_back_whole(make_resources):
    resources = make_resources(live_sessions=2)
    first = resources.session("first")
    first.chat("My bike lock code is 3921.")
    resources.session("second").chat("I grow tomatoes on the balcony.")
    held = resources.session("first")  # used last: "second" is now the least recently used
    resources.session("third").chat("The bus was late today.")

    assert list(resources._assistants) == ["first", "third"]
    second_before = [m.content for m in resources.transcript.messages("second")]
    assert held.stats().cache.cache_tokens > 0

    resources.session("fourth").chat("Cats sleep a lot.")
    assert list(resources._assistants) == ["third", "fourth"]
    assert first.stats().cache.cache_tokens == 0  # let go, though this test still holds the handle

    # The handle still works: its next turn rebuilds the cache from the transcript first.
    reply = first.stream("What did I tell you?").result()
    assert reply.text.strip()
    said = [m.message_id for m in resources.transcript.messages("first") if m.role in ("user", "assistant")]
    assert said[0] in first.lm.ledger  # the first message is back in the cache, under its id
    # And through Resources: "second" resumes from the transcript, every message as it was.
    second = resources.session("second")
    assert [m.content for m in resources.transcript.messages("second")] == second_before
    assert second.stats().cache.cache_tokens > 0
    assert len(resources._assistants) == 2


def test_a_session_with_an_open_reply_is_not_released(make_resources):
    resources = make_resources(live_sessions=1)
    busy = resources.session("busy")
    reply = busy.stream("Tell me about the moon.")
    next(reply)  # a reply is open, a client is reading it
    resources.session("other").chat("Hello.")
    assert "busy" in resources._assistants and busy.stats().cache.cache_tokens > 0
    reply.close()
    resources.session("third")
    assert "busy" not in resources._assistants  # idle now: released
