"""Ordinary framework use never deletes what was said: the four ways that used to erase a session.

Each test counts the session's transcript rows (superseded ones included) and
archived chunks before and after, and checks usage metadata is never negative.
"""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")

from conftest import filler_history  # noqa: E402
from langchain_core.messages import HumanMessage  # noqa: E402
from langchain_core.prompts import ChatPromptTemplate  # noqa: E402
from langchain_streamrag import ChatStreamRAG  # noqa: E402
from llama_index.core import VectorStoreIndex  # noqa: E402
from llama_index.core.chat_engine import CondensePlusContextChatEngine  # noqa: E402
from llama_index.core.llms import ChatMessage  # noqa: E402
from llama_index.embeddings.streamrag import StreamRAGEmbedding  # noqa: E402
from llama_index.llms.streamrag import StreamRAGLLM  # noqa: E402
from llama_index.vector_stores.streamrag import StreamRAGVectorStore  # noqa: E402


def counts(resources, session_id: str) -> tuple[int, int]:
    """(transcript rows, archived chunks) once everything logged is indexed."""
    assert resources.indexer.flush(session_id, timeout=60)
    return resources.transcript.count(session_id), resources.archive.count(session_id)


def never_shrinks(history: list[tuple[int, int]]) -> bool:
    return all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(history, history[1:]))


def non_negative(usage: dict) -> bool:
    return all(usage[key] >= 0 for key in ("input_tokens", "output_tokens", "total_tokens")) and all(
        value >= 0 for value in usage.get("input_token_details", {}).values()
    )


def test_the_readme_chain_called_again_under_one_session_id_keeps_everything(make_resources):
    resources = make_resources()
    chat = ChatStreamRAG(resources=resources, max_tokens=8, temperature=0)
    chain = ChatPromptTemplate.from_messages([("human", "{question}")]) | chat
    config = {"configurable": {"session_id": "ada"}}
    seen = []
    questions = ["Hi! My locker code is 5521.", *(f"{u} Please keep it in mind." for u, _ in filler_history(1.5, 256))]
    for question in questions[:6]:
        reply = chain.invoke({"question": question}, config=config)
        assert non_negative(reply.usage_metadata)
        seen.append(counts(resources, "ada"))
    said = [m for m in resources.transcript.messages("ada", include_superseded=True) if m.role != "memory"]
    assert never_shrinks(seen) and len(said) == 12
    # The chain sends one message each call: every call forks, and the first one is still findable.
    assert any("5521" in m.text for m in chat.get_session("ada").search("locker code", k=5))


def test_two_snippets_sharing_a_session_id_never_shrink_it(make_resources):
    resources = make_resources()
    chat = ChatStreamRAG(resources=resources, max_tokens=8, temperature=0)
    history = [HumanMessage("My sister Margarethe moved to Trondheim.")]
    for user, _ in filler_history(3, 256):
        history.append(HumanMessage(user))
    reply = chat.invoke(history, config={"configurable": {"session_id": "shared"}})
    assert non_negative(reply.usage_metadata)
    before = counts(resources, "shared")
    assert before[1] > 0  # the long history overflowed the window: there is an archive to lose
    # A second snippet, another framework, the same id, a different conversation.
    llm = StreamRAGLLM(resources=resources, session_id="shared", max_new_tokens=8)
    answer = llm.chat([ChatMessage(role="user", content="Hello, who are you?")])
    assert answer.additional_kwargs["forked"]
    after = counts(resources, "shared")
    assert never_shrinks([before, after]) and after[0] >= before[0] + 2
    assert any("Trondheim" in m.text for m in llm.get_session().search("Where did my sister move?", k=5))


def test_a_condense_plus_context_chat_engine_rebuilding_every_turn_keeps_everything(make_resources):
    # LlamaIndex's chat memory needs room for its own token limit: a 1,024-token window.
    resources = make_resources(cache={"sink_tokens": 4, "window_tokens": 1020, "evict_chunk": 32})
    archive = resources.archive
    llm = StreamRAGLLM(resources=resources, session_id="condense", max_new_tokens=8, temperature=0)
    store = StreamRAGVectorStore.from_archive(archive, session_id="condense")
    index = VectorStoreIndex.from_vector_store(store, embed_model=StreamRAGEmbedding.from_archive(archive))
    engine = CondensePlusContextChatEngine.from_defaults(retriever=index.as_retriever(similarity_top_k=1), llm=llm)
    # A long history first, so the retriever has an archive to find context in (else the engine never calls us).
    session = llm.get_session()
    session.add_messages([("user", "My locker code is 5521."), *filler_history(1.5, 1024)])
    seen = [counts(resources, "condense")]
    assert seen[0][1] > 0
    for question in ["What is my locker code?", "Thanks, and my name is Ada."]:
        assert str(engine.chat(question))
        seen.append(counts(resources, "condense"))
    # Each turn sends a freshly assembled list (new context in the system message): a fork, never a deletion.
    assert never_shrinks(seen) and seen[0][0] < seen[1][0] < seen[2][0]
    said = [m.content for m in resources.transcript.messages("condense", include_superseded=True)]
    assert any("5521" in text for text in said) and any("Ada" in text for text in said)
