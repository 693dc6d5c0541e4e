"""Limits that keep one conversation from hurting the others, and one session's order under concurrency."""

from __future__ import annotations

import threading

import pytest

from streamrag.session import CONTEXT_ROLES

pytestmark = pytest.mark.usefixtures("one_thread_module")


def test_a_hung_archive_stalls_only_its_own_session(make_resources):
    """Recall waits on the archive without the model: another session chats meanwhile."""
    resources = make_resources()
    slow, other = resources.session("slow"), resources.session("other")
    slow.chat("My first message, so there is a conversation.")
    searching, release = threading.Event(), threading.Event()
    search_many = resources.archive.search_many

    def hung(session_id, *args, **kwargs):
        if session_id == "slow":
            searching.set()
            assert release.wait(60), "the test never released the archive"
        return search_many(session_id, *args, **kwargs)

    resources.archive.search_many = hung
    stuck = threading.Thread(target=lambda: slow.chat("What did I say first?"))
    stuck.start()
    try:
        assert searching.wait(30)
        # The archive hangs for "slow"; "other" is answered in full meanwhile.
        assert other.chat("Hello there.").strip()
        assert stuck.is_alive()
    finally:
        release.set()
        stuck.join(60)
    assert [m.role for m in resources.transcript.messages("slow") if m.role not in CONTEXT_ROLES][-2:] == [
        "user",
        "assistant",
    ]


def test_concurrent_calls_on_one_session_are_serialised_in_transcript_and_cache_order(make_resources):
    resources = make_resources()
    session = resources.session("shared")
    barrier = threading.Barrier(3)
    errors = []

    def ask(text: str) -> None:
        barrier.wait()
        try:
            session.chat(text)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(f"Question number {i}?",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    said = [m for m in resources.transcript.messages("shared") if m.role in ("user", "assistant")]
    assert [m.role for m in said] == ["user", "assistant"] * 3  # each reply right after its question
    assert sorted(m.turn for m in said if m.role == "user") == [1, 2, 3]  # three turns, none shared
    assert all(a.turn == q.turn for q, a in zip(said[::2], said[1::2]))
    resident = list(session.lm.ledger.resident_ranges())
    assert [m.message_id for m in said if m.message_id in resident] == [
        m for m in resident if m in {x.message_id for x in said}
    ]
