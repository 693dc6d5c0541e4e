"""An LCEL chain with streaming and a session id: prompt | ChatStreamRAG | parser.

LangChain keeps the history (RunnableWithMessageHistory) and sends all of it on
every call; the streamrag session prefills only the new message each time. Run
it twice: LangChain's in-memory history starts empty again, so the second run's
list diverges from the stored session, which forks: the first run's messages
stay in the transcript and the archive (recallable), and nothing is deleted.

    python integrations/examples/langchain_lcel_chat.py
"""

from __future__ import annotations

from langchain_core.chat_history import InMemoryChatMessageHistory
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables.history import RunnableWithMessageHistory
from langchain_streamrag import ChatStreamRAG


def main(resources=None, max_tokens: int = 48) -> list[str]:
    chat = ChatStreamRAG(resources=resources, max_tokens=max_tokens, temperature=0)
    prompt = ChatPromptTemplate.from_messages(
        [("system", "You are a friendly assistant."), MessagesPlaceholder("history"), ("human", "{question}")]
    )
    histories: dict[str, InMemoryChatMessageHistory] = {}
    chain = RunnableWithMessageHistory(
        prompt | chat | StrOutputParser(),
        lambda session_id: histories.setdefault(session_id, InMemoryChatMessageHistory()),
        input_messages_key="question",
        history_messages_key="history",
    )
    config = {"configurable": {"session_id": "lcel-demo"}}
    session = chat.get_session("lcel-demo")
    replies = []
    for question in ["Hi! My name is Ada and I love astronomy.", "What do I love?", "Name one planet."]:
        print(f"> {question}\n", end="", flush=True)
        before = session.lm.stats().prefilled_tokens
        pieces = []
        for piece in chain.stream({"question": question}, config=config):
            pieces.append(piece)
            print(piece, end="", flush=True)
        print()
        stats = session.stats()
        print(
            f"  [prefilled {stats.cache.prefilled_tokens - before} new tokens; "
            f"{stats.transcript_messages} messages stored]"
        )
        replies.append("".join(pieces))
    return replies


if __name__ == "__main__":
    main()
