"""A LlamaIndex query engine over a session's archive (the same Chroma collection, the same embedder).

python integrations/examples/llamaindex_query_archive.py
"""

from __future__ import annotations

from pathlib import Path

from _history import long_history
from llama_index.core import VectorStoreIndex
from llama_index.embeddings.streamrag import StreamRAGEmbedding
from llama_index.llms.streamrag import StreamRAGLLM
from llama_index.vector_stores.streamrag import StreamRAGVectorStore

SMALL_WINDOW = str(Path(__file__).resolve().parents[2] / "configs" / "small-window.yaml")


def main(resources=None, max_new_tokens: int = 48, exchanges: int = 40):
    llm = StreamRAGLLM(
        resources=resources, config=SMALL_WINDOW, session_id="archive-qa", max_new_tokens=max_new_tokens, temperature=0
    )
    resources = llm.get_resources()
    session = resources.session("archived-chat")
    session.sync(long_history(exchanges))
    session.flush()  # evicted text is indexed in the background; wait for it before reading the store
    # a long conversation: its start is now only in the archive
    archive = resources.archive
    print(f"{archive.count(session.session_id)} chunks archived for session {session.session_id}")

    store = StreamRAGVectorStore.from_archive(archive, session_id=session.session_id)
    index = VectorStoreIndex.from_vector_store(store, embed_model=StreamRAGEmbedding.from_archive(archive))
    engine = index.as_query_engine(llm=llm, similarity_top_k=2, response_mode="simple_summarize")
    response = engine.query("Where did my sister Margarethe move?")
    for node in response.source_nodes:
        print(f"  [{node.score:.2f}] (turn {node.metadata['turn']}) {node.text[:80]}")
    print(f"answer: {response}")
    return response


if __name__ == "__main__":
    main()
