"""An LCEL chain with streaming and a session id: prompt | ChatStreamRAG | parser.

LangChain keeps the history (RunnableWithMessageHistory) and sends all of it on
every call; the streamrag session prefills only the new message each time.

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
    replies = []
    for question in ["Hi! My name is Ada and I love astronomy.", "What do I love?", "Name one planet."]:
        print(f"> {question}\n", end="", flush=True)
        pieces = []
        for piece in chain.stream({"question": question}, config=config):
            pieces.append(piece)
            print(piece, end="", flush=True)
        print()
        session = chat.get_session("lcel-demo")
        print(f"  [prefilled {session.lm.last_turn.prefilled_tokens} new tokens; rebuilt={session.last_sync.rebuilt}]")
        replies.append("".join(pieces))
    return replies


if __name__ == "__main__":
    main()
