"""The LangChain adapter on the embedded model: sessions persist, only new messages are prefilled."""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_core")

from conftest import filler_history  # noqa: E402
from langchain_core.callbacks import BaseCallbackHandler  # noqa: E402
from langchain_core.messages import HumanMessage, SystemMessage  # noqa: E402
from langchain_streamrag import ChatStreamRAG, StreamRAG, StreamRAGRetriever  # noqa: E402


@pytest.fixture
def roomy(make_resources):
    """A 1024-token cache: ten short turns fit, so nothing is evicted or recalled."""
    return make_resources(cache={"sink_tokens": 4, "window_tokens": 1020, "evict_chunk": 32})


def test_a_ten_turn_conversation_prefills_only_the_new_message_each_call(roomy):
    chat = ChatStreamRAG(resources=roomy, max_tokens=4)
    config = {"configurable": {"session_id": "ten-turns"}}
    messages = [SystemMessage("You are a helpful assistant.")]
    for i in range(10):
        messages.append(HumanMessage(f"Tell me one word about the number {i}."))
        session = chat.get_session("ten-turns")
        before = session.lm.stats()
        reply = chat.invoke(messages, config=config)
        after = session.lm.stats()
        meta, usage = reply.response_metadata, reply.usage_metadata
        prefilled = usage["input_tokens"] - usage["input_token_details"]["cache_read"]
        assert meta["synced_messages"] == (1 if i == 0 else 0)  # the system message once; then nothing to catch up
        assert not meta["forked"] and not meta["rebuilt"]
        assert after.prefilled_tokens - before.prefilled_tokens == prefilled == meta["prefilled_tokens"]
        if i > 0:
            # Everything prefilled in this call is the new user message (plus the previous reply's closing tokens).
            assert prefilled < 30 < before.cache_tokens
            assert usage["input_token_details"]["cache_read"] == before.cache_tokens
        assert reply.response_metadata["session_id"] == "ten-turns"
        messages.append(reply)
    assert after.evictions == 0 and after.messages == 21
    assert [m.role for m in session.history()] == ["system"] + ["user", "assistant"] * 10


def test_a_divergent_history_forks_the_session_and_deletes_nothing(roomy):
    chat = ChatStreamRAG(resources=roomy, max_tokens=8, session_id="edited")
    first = [HumanMessage("My cat is called Tom.")]
    first.append(chat.invoke(first))
    chat.invoke([*first, HumanMessage("What is my cat called?")])
    session = chat.get_session()
    stored = roomy.transcript.count(session.session_id)

    edited = [HumanMessage("My dog is called Rex."), first[1], HumanMessage("What is my dog called?")]
    reply = chat.invoke(edited)
    meta = reply.response_metadata
    assert meta["forked"] and meta["superseded_messages"] == 4
    assert meta["rebuilt"]  # the edit is at the very start: nothing of the cache can be kept
    assert all(v >= 0 for v in (reply.usage_metadata["input_tokens"], reply.usage_metadata["output_tokens"]))
    held = session.history()
    assert [(m.role, m.content) for m in held[:3]] == [
        ("user", "My dog is called Rex."),
        ("assistant", first[1].content),
        ("user", "What is my dog called?"),
    ]
    assert "My cat is called Tom." not in [m.content for m in held]
    # Nothing was deleted: the old branch is still stored and, once indexed, recallable.
    assert roomy.transcript.count(session.session_id) >= stored + 3
    assert session.flush()
    assert any("Tom" in m.text for m in session.search("cat called Tom", k=5))

    # A retry of the last question (LangChain's history dropped the last exchange): the cache is rewound to the
    # fork, not rebuilt, and what came before it is not prefilled again.
    retry = chat.invoke([*edited[:2], HumanMessage("How old is my dog?")])
    meta = retry.response_metadata
    assert meta["forked"] and not meta["rebuilt"] and meta["superseded_messages"] == 2
    assert retry.usage_metadata["input_token_details"]["cache_read"] > 0
    assert [m.content for m in session.history()][:3] == [
        "My dog is called Rex.",
        first[1].content,
        "How old is my dog?",
    ]


def test_streaming_yields_several_chunks_that_join_to_the_reply(roomy):
    chat = ChatStreamRAG(resources=roomy, max_tokens=16, session_id="stream")
    chunks = list(chat.stream("Hello! Who are you?"))
    assert len([c for c in chunks if c.content]) > 1
    assert chunks[-1].chunk_position == "last"
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    stored = chat.get_session().history()[-1]
    assert stored.role == "assistant" and full.content == stored.content
    assert full.usage_metadata["output_tokens"] == 16 or full.response_metadata["finish_reason"] == "eos"


def test_stop_sequences_end_the_reply_before_the_stop_string(roomy):
    question = "Write a short sentence about the sea."
    full = ChatStreamRAG(resources=roomy, max_tokens=24, session_id="stop").invoke(question).content
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    # Greedy decoding from the same fresh context: the same reply, cut just before the stop string.
    stopped = ChatStreamRAG(resources=roomy, max_tokens=24, session_id="stop2").invoke(question, stop=[stop])
    assert stopped.content == full[: full.index(stop)]
    assert stopped.response_metadata["finish_reason"] == "stop"


def test_the_retriever_finds_a_fact_that_left_the_window(make_resources):
    resources = make_resources()
    chat = ChatStreamRAG(resources=resources, session_id="long")
    fact = "By the way, my sister Margarethe moved to Trondheim last year."
    history = [("user", fact), ("assistant", "How exciting for her!")]
    history += filler_history(windows=3, capacity=resources.config.cache.capacity)
    session = chat.get_session()
    session.sync(history)
    assert "Trondheim" not in resources.tokenizer.decode(session.lm.ledger.token_ids())  # not in the window

    retriever = StreamRAGRetriever.from_session(session, k=3)
    docs = retriever.invoke("Where did Margarethe move to?")
    assert len(docs) <= 3
    assert "Trondheim" in docs[0].page_content
    meta = docs[0].metadata
    assert meta["session_id"] == "long" and meta["role"] == "user" and meta["turn"] == 1
    assert meta["chunk_id"] == docs[0].id and meta["score"] > 0
    assert len(retriever.invoke("Margarethe", k=1)) == 1


class _Tokens(BaseCallbackHandler):
    def __init__(self):
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs) -> None:
        self.tokens.append(token)


def test_the_completion_llm_streams_and_fires_token_callbacks(roomy):
    llm = StreamRAG(resources=roomy, max_tokens=12)
    handler = _Tokens()
    pieces = list(llm.stream("The three primary colours are", config={"callbacks": [handler]}))
    text = "".join(pieces)
    assert text and len([p for p in pieces if p]) > 1
    assert "".join(handler.tokens) == text
    again = llm.invoke("The three primary colours are")
    assert again == text  # greedy, and each call starts from a fresh context


def test_without_a_session_id_the_messages_say_which_conversation_a_call_continues(roomy):
    chat = ChatStreamRAG(resources=roomy, max_tokens=4)
    opening = [HumanMessage("My cat is called Tom.")]
    first = chat.invoke(opening)
    cat = first.response_metadata["session_id"]
    follow = chat.invoke([*opening, first, HumanMessage("What is my cat called?")])
    meta = follow.response_metadata
    assert meta["session_id"] == cat and not meta["forked"]
    assert follow.usage_metadata["input_token_details"]["cache_read"] > 0  # the cache was reused, not rebuilt

    # An unrelated call is an unrelated conversation: nothing of the cat session is superseded or recalled.
    other = chat.invoke([HumanMessage("Name a colour of the rainbow.")])
    assert other.response_metadata["session_id"] != cat and not other.response_metadata["forked"]
    assert not any(m.superseded_at for m in roomy.transcript.messages(cat, include_superseded=True))

    # A retry of the cat conversation's last question goes back to it (and forks it there, losing nothing).
    retry = chat.invoke([*opening, first, HumanMessage("How old is my cat?")])
    assert retry.response_metadata["session_id"] == cat and retry.response_metadata["forked"]
    assert chat.get_session().session_id == cat  # the conversation used last

    # A shared system prompt alone does not make two conversations one.
    prompt = SystemMessage("You are a helpful assistant.")
    a = chat.invoke([prompt, HumanMessage("Hello from Ana.")]).response_metadata["session_id"]
    b = chat.invoke([prompt, HumanMessage("Hello from Ben.")]).response_metadata["session_id"]
    assert len({a, b, cat, other.response_metadata["session_id"]}) == 4
