"""The LlamaIndex adapter on the embedded model: chat on a persistent session, queries over the archive."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_index.core")

from conftest import build_resources, filler_history  # noqa: E402
from llama_index.core import VectorStoreIndex  # noqa: E402
from llama_index.core.base.llms.types import ChatMessage  # noqa: E402
from llama_index.core.memory import Memory  # noqa: E402
from llama_index.embeddings.streamrag import StreamRAGEmbedding  # noqa: E402
from llama_index.llms.streamrag import StreamRAGLLM  # noqa: E402
from llama_index.memory.streamrag import StreamRAGMemoryBlock  # noqa: E402
from llama_index.vector_stores.streamrag import StreamRAGVectorStore  # noqa: E402

FACT = "By the way, my sister Margarethe moved to Trondheim last year."


@pytest.fixture(scope="module")
def resources(embedded, tmp_path_factory):
    """One 256-token-cache setup for the module (each test uses its own session ids)."""
    resources = build_resources(embedded, tmp_path_factory.mktemp("llamaindex"))
    yield resources
    resources.close()


@pytest.fixture(scope="module")
def archived(resources):
    """A session whose first message (the fact) left the window and lives only in the archive."""
    session = resources.session("archived")
    history = [("user", FACT), ("assistant", "How exciting for her!")]
    session.sync(history + filler_history(windows=2, capacity=resources.config.cache.capacity))
    assert session.flush()  # the vector store reads Chroma: wait for the background indexer
    assert FACT not in " ".join(m.text for m in session.lm.ledger.spans(0, session.lm.cache.get_seq_length()))
    return session


def test_metadata_describes_the_cache_as_the_context_window(resources):
    meta = StreamRAGLLM(resources=resources, max_new_tokens=7).metadata
    assert meta.context_window == resources.config.cache.capacity == 256
    assert meta.is_chat_model and meta.num_output == 7 and meta.model_name == "SmolLM2-135M-Instruct"


def test_stream_complete_gives_cumulative_text_and_new_deltas(resources):
    llm = StreamRAGLLM(resources=resources, max_new_tokens=10)
    responses = list(llm.stream_complete("The three primary colours are"))
    assert len(responses) > 1
    assert "".join(r.delta for r in responses) == responses[-1].text
    assert all(a.text + b.delta == b.text for a, b in zip(responses, responses[1:]))
    assert llm.complete("The three primary colours are").text == responses[-1].text


def test_chat_extends_the_session_and_forks_when_the_history_diverges(resources):
    llm = StreamRAGLLM(resources=resources, session_id="li-chat", max_new_tokens=6)
    messages = [ChatMessage(role="user", content="Hi, I'm Ada.")]
    for question in ["What is my name?", "Say hello."]:
        reply = llm.chat(messages)
        messages += [reply.message, ChatMessage(role="user", content=question)]
    session = llm.get_session()
    before = session.lm.stats().prefilled_tokens
    streamed = list(llm.stream_chat(messages))
    assert not streamed[-1].additional_kwargs["forked"]
    assert "".join(r.delta for r in streamed) == streamed[-1].message.content
    assert session.lm.stats().prefilled_tokens - before < 20

    def conversation() -> int:  # messages said, superseded ones included (memory blocks are not said)
        stored = resources.transcript.messages(session.session_id, include_superseded=True)
        return sum(m.role != "memory" for m in stored)

    stored = conversation()

    other = llm.chat([ChatMessage(role="user", content="A different conversation.")])
    assert other.additional_kwargs["forked"] and other.additional_kwargs["superseded_messages"] == 6
    assert [m.content for m in session.history()][0] == "A different conversation."
    assert conversation() == stored + 2  # kept: superseded, not deleted


def test_the_query_engine_answers_from_the_archive(resources, archived):
    archive = resources.archive
    store = StreamRAGVectorStore.from_archive(archive, session_id=archived.session_id)
    index = VectorStoreIndex.from_vector_store(store, embed_model=StreamRAGEmbedding.from_archive(archive))
    llm = StreamRAGLLM(resources=resources, session_id="qa", max_new_tokens=24)
    engine = index.as_query_engine(llm=llm, similarity_top_k=2, response_mode="simple_summarize")
    response = engine.query("Where did my sister Margarethe move?")
    assert "Trondheim" in response.source_nodes[0].node.get_content()
    assert response.source_nodes[0].metadata["session_id"] == "archived"
    # The answer was synthesised from the archive: the fact reached the answering model's prompt.
    # (Whether the 135M model then repeats it correctly is not what this proves.)
    prompt = " ".join(m.content for m in llm.get_session().history() if m.role != "assistant")
    assert "Trondheim" in prompt and "Where did my sister Margarethe move?" in prompt
    assert str(response).strip()


def test_the_vector_store_only_sees_its_own_session(resources, archived):
    other = resources.session("other")
    other.sync(filler_history(windows=1.5, capacity=resources.config.cache.capacity))
    assert other.flush()
    archive = resources.archive
    embed = StreamRAGEmbedding.from_archive(archive)
    store = StreamRAGVectorStore.from_archive(archive, session_id="other")
    nodes = (
        VectorStoreIndex.from_vector_store(store, embed_model=embed)
        .as_retriever(similarity_top_k=5)
        .retrieve("Margarethe Trondheim")
    )
    assert nodes and all(n.metadata["session_id"] == "other" for n in nodes)
    with pytest.raises(NotImplementedError):
        store.add([])


def test_the_memory_block_reads_what_the_session_recalls(resources, archived):
    block = StreamRAGMemoryBlock(session=archived)
    memory = Memory.from_defaults(session_id="li-memory", token_limit=2000, memory_blocks=[block])
    memory.put(ChatMessage(role="user", content="Where did my sister Margarethe move?"))
    messages = memory.get()
    assert "Trondheim" in messages[0].content and "Earlier in this conversation" in messages[0].content
