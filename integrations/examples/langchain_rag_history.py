"""RAG over a long chat history: StreamRAGRetriever finds what left the window, an LCEL chain answers.

python integrations/examples/langchain_rag_history.py
"""

from __future__ import annotations

from pathlib import Path

from _history import long_history
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_streamrag import ChatStreamRAG, StreamRAGRetriever

SMALL_WINDOW = str(Path(__file__).resolve().parents[2] / "configs" / "small-window.yaml")


def _join(docs) -> str:
    return "\n".join(doc.page_content for doc in docs)


def main(resources=None, max_tokens: int = 48, exchanges: int = 40) -> tuple[list, str]:
    chat = ChatStreamRAG(resources=resources, config=SMALL_WINDOW, max_tokens=max_tokens, temperature=0)
    session = chat.get_session("rag-demo")
    session.sync(long_history(exchanges))  # ingest the history without generating
    session.flush()  # what the window cannot hold is indexed in the background; wait for it before reading the store
    held, archived = session.lm.stats(), session.stats().archived_chunks
    print(f"cache: {held.cache_tokens} of {held.capacity} tokens held, {archived} chunks archived")

    retriever = StreamRAGRetriever.from_session(session, k=3)
    prompt = ChatPromptTemplate.from_messages(
        [
            ("system", "Answer from these notes of an earlier conversation:\n{context}"),
            ("human", "{question}"),
        ]
    )
    chain = (
        {
            "context": retriever | (lambda docs: "\n".join(d.page_content for d in docs)),
            "question": RunnablePassthrough(),
        }
        | prompt
        | chat.bind(session_id="rag-answers")  # answer in a separate session, not in the archived one
        | StrOutputParser()
    )
    question = "Where did my sister Margarethe move?"
    docs = retriever.invoke(question)
    for doc in docs:
        print(f"  (turn {doc.metadata['turn']}, {doc.metadata['role']}) {doc.page_content[:80]}")
    answer = chain.invoke(question)
    print(f"> {question}\n{answer}")
    return docs, answer


if __name__ == "__main__":
    main()
