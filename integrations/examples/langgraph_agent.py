"""A LangGraph agent with two tools on one long streamrag session per thread.

``create_react_agent`` loops model -> tools -> model. Each LangGraph thread
(``config["configurable"]["thread_id"]``) is one streamrag session: LangGraph's
checkpointer keeps the thread's messages and sends all of them on every call,
and the session prefills only what is new (the last question, a tool's
result). Tool calls are decoded under each tool's JSON schema, so their
arguments are always valid, even from the 135M embedded model.

Tool results are messages like any other: once the conversation has pushed an
early result out of the window it is archived, and a later question recalls
it from the archive into the context.

    python integrations/examples/langgraph_agent.py
"""

from __future__ import annotations

from _shop import find_order, get_weather
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool
from langchain_streamrag import ChatStreamRAG
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.prebuilt import create_react_agent

# Conversation that has nothing to do with either tool: it fills the window so the early results leave it.
SMALL_TALK = [
    "I finally finished the jigsaw puzzle my aunt gave me, a thousand pieces of blue sky.",
    "My daughter wants to learn the violin; her teacher says to start with short daily practice.",
    "We watched a documentary about octopuses last night, they are remarkably clever.",
    "I am reading a novel about sailors crossing the Atlantic in winter, it is gripping.",
    "My neighbour bakes sourdough every Sunday and leaves a loaf on our doorstep.",
    "The museum downtown opened a new room of medieval maps and I spent hours there.",
]


def main(resources=None, max_tokens: int = 64, small_talk: int = 12, thread: str = "agent-demo") -> dict:
    """Run the agent through a long thread; returns its messages and the session's numbers."""
    chat = ChatStreamRAG(resources=resources, max_tokens=max_tokens, temperature=0)
    agent = create_react_agent(chat, [tool(get_weather), tool(find_order)], checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": thread}}
    session = chat.get_session(thread)

    def ask(question: str) -> list:
        print(f"> {question}")
        state = agent.invoke({"messages": [("user", question)]}, config=config)
        for message in state["messages"][-3:]:
            if isinstance(message, AIMessage) and message.tool_calls:
                calls = ", ".join(f"{call['name']}({call['args']})" for call in message.tool_calls)
                print(f"  [calls {calls}]")
            elif isinstance(message, ToolMessage):
                print(f"  [{message.name} says: {message.content}]")
        print(f"  {state['messages'][-1].content}")
        return state["messages"]

    ask("What's the weather in Porto today?")
    ask("Can you look up order number 7781?")
    for i in range(small_talk):
        ask(SMALL_TALK[i % len(SMALL_TALK)])
    evicted = session.lm.stats().evicted_tokens
    print(f"  [{evicted} tokens have left the window; the early tool results are in the archive]")
    messages = ask("Earlier you checked Porto for me. What did harbour station PX-4412 warn about?")
    recalled = [m for m in session.transcript.messages(session.session_id) if m.role == "memory"]
    print(f"  [recalled into the context: {recalled[-1].content if recalled else 'nothing'}]")
    return {"messages": messages, "evicted_tokens": evicted, "session": session}


if __name__ == "__main__":
    main()
