"""A turn that fails at any step is taken back whole: cache, ledger, transcript, log and archive as before.

Failures are injected at each step of a turn that recalls a memory: the recall itself, storing the memory
block, feeding it, prefilling the question, and a forward pass that fails halfway through a long message
after its prefill had already evicted text. The next turn then works as if the failed one never happened.
"""

from __future__ import annotations

import pytest
from conftest import PASSPORT_FACT, SMALL_TALK

from streamrag.session import MEMORY_ROLE

pytestmark = pytest.mark.usefixtures("one_thread_module")

QUESTION = "What is my passport number?"


class Injected(RuntimeError):
    pass


@pytest.fixture
def session(make_resources):
    resources = make_resources(
        cache={"sink_tokens": 4, "window_tokens": 124, "evict_chunk": 16, "prefill_chunk": 32},
        recall={"budget_fraction": 0.4},
        generation={"temperature": 0, "max_new_tokens": 8},
    )
    session = resources.session("s")
    for text in [PASSPORT_FACT, *SMALL_TALK[:4]]:
        session.chat(text)
    assert session.flush(60)
    assert "X7741" in session.recall(QUESTION).block  # the question recalls the evicted fact
    return session


def snapshot(session) -> tuple:
    assert session.flush(60)
    transcript = session.transcript
    return (
        [(m.message_id, m.role, m.content) for m in transcript.messages("s", include_superseded=True)],
        transcript.log_count("s"),
        sorted(m.chunk_id for m in session.archive.list("s")),
        session.lm.ledger.token_ids(),
        dict(session.lm.ledger.resident_ranges()),
        session.turn,
    )


def _fail_recall(session, monkeypatch):
    monkeypatch.setattr(session, "_recall", lambda *a, **k: (_ for _ in ()).throw(Injected("recall")))


def _fail_storing_the_block(session, monkeypatch):
    append = session.transcript.append

    def failing(session_id, role, *args, **kwargs):
        if role == MEMORY_ROLE:
            raise Injected("block row")
        return append(session_id, role, *args, **kwargs)

    monkeypatch.setattr(session.transcript, "append", failing)


def _fail_feeding_the_block(session, monkeypatch):
    add_message = session.lm.add_message

    def failing(role, text, *args, **kwargs):
        add_message(role, text, *args, **kwargs)  # fed, then the step fails
        raise Injected("block fed")

    monkeypatch.setattr(session.lm, "add_message", failing)


def _fail_after_the_question_is_prefilled(session, monkeypatch):
    stream_chat = session.lm.stream_chat

    def failing(*args, **kwargs):
        stream_chat(*args, **kwargs)  # the question is in the cache, then the step fails
        raise Injected("prefilled")

    monkeypatch.setattr(session.lm, "stream_chat", failing)


def _failed_turn(session, monkeypatch, inject) -> tuple[tuple, tuple]:
    """Ask the question with ``inject``'s failure in place; the stores' snapshots before and after."""
    before = snapshot(session)
    inject(session, monkeypatch)
    with pytest.raises(Injected):
        session.stream(QUESTION)
    monkeypatch.undo()
    return before, snapshot(session)


@pytest.mark.parametrize("inject", [_fail_recall, _fail_storing_the_block])
def test_a_turn_that_fails_before_feeding_anything_leaves_every_store_exactly_as_it_was(session, monkeypatch, inject):
    before, after = _failed_turn(session, monkeypatch, inject)
    assert after == before
    _next_turn_is_ordinary(session)


@pytest.mark.parametrize("inject", [_fail_feeding_the_block, _fail_after_the_question_is_prefilled])
def test_a_turn_that_fails_after_feeding_leaves_no_trace_and_loses_nothing(session, monkeypatch, inject):
    """Feeding made room by evicting older text (logged, as any eviction); the failed step's own text is gone."""
    before, after = _failed_turn(session, monkeypatch, inject)
    assert after[0] == before[0] and after[5] == before[5]  # transcript rows and turn count as before
    _no_trace_and_nothing_lost(session)
    _next_turn_is_ordinary(session)


def _no_trace_and_nothing_lost(session) -> None:
    """Only stored messages in cache, log and archive; every stored character resident or logged."""
    stored = [m for m in session.transcript.messages("s", include_superseded=True)]
    ids = {m.message_id for m in stored}
    resident = session.lm.ledger.resident_ranges()
    assert set(resident) <= ids
    assert all(m.message_id in ids for m in session.archive.list("s"))
    for message in stored:
        if message.role == MEMORY_ROLE or message.role == "tool_spec":
            continue
        covered = [resident[message.message_id]] if message.message_id in resident else []
        covered += [(e.char_start, e.char_end) for e in session.transcript.evicted_text(message.message_id)]
        reached = 0
        for start, end in sorted(covered):
            assert start <= reached, f"characters {reached}-{start} of {message.content!r} are nowhere"
            reached = max(reached, end)
        assert reached >= len(message.content), message.content


def _next_turn_is_ordinary(session) -> None:
    """The question, its memory block and the reply, once each, in order."""
    blocks_before = sum(m.role == MEMORY_ROLE for m in session.transcript.messages("s"))
    session.chat(QUESTION)
    stored = session.transcript.messages("s")
    assert [m.content for m in stored if m.role == "user"].count(QUESTION) == 1
    assert sum(m.role == MEMORY_ROLE for m in stored) == blocks_before + 1
    assert [m.role for m in stored[-3:]] == ["user", MEMORY_ROLE, "assistant"]  # stored as said, once


def test_a_forward_pass_failing_midway_through_a_long_message_leaves_no_trace_of_it(session, monkeypatch):
    """The prefill had evicted older text (now in the log) and part of the message itself before failing."""
    long_message = " ".join(f"Item {i}: a line of my long shopping list with code ZQ{i:03d}." for i in range(40))
    before_rows = [(m.message_id, m.content) for m in session.transcript.messages("s", include_superseded=True)]
    model = session.lm.model
    forward = model.forward
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:  # a few 32-token chunks in, past an eviction of the message's own start
            raise Injected("forward")
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", failing)
    with pytest.raises(Injected):
        session.stream(long_message)
    monkeypatch.undo()
    assert session.flush(60)
    assert [(m.message_id, m.content) for m in session.transcript.messages("s", include_superseded=True)] == before_rows
    rows = {m.message_id for m in session.transcript.messages("s", include_superseded=True)}
    assert all(m.message_id in rows for m in session.archive.list("s"))  # no orphan chunk of the failed message
    assert not any("ZQ" in m.text for m in session.archive.list("s"))
    _no_trace_and_nothing_lost(session)
    assert session.chat("Hello again.").strip()
