"""A LlamaIndex FunctionAgent with two tools on a persistent streamrag session.

``StreamRAGLLM`` is a function-calling LLM: the agent offers it the tools,
its calls are decoded under each tool's JSON schema (valid arguments every
time), and each tool result is one more message in the session's cache. The
agent's ``Memory`` keeps LlamaIndex's side of the chat across ``run`` calls;
the session keeps the KV cache, so each run prefills only what is new. The
async API runs the model in a worker thread: the event loop stays free.

    python integrations/examples/llamaindex_function_agent.py
"""

from __future__ import annotations

import asyncio

from _shop import find_order, get_weather
from llama_index.core.agent.workflow import FunctionAgent, ToolCallResult
from llama_index.core.memory import Memory
from llama_index.core.tools import FunctionTool
from llama_index.llms.streamrag import StreamRAGLLM


async def run(resources=None, max_new_tokens: int = 64) -> list[str]:
    llm = StreamRAGLLM(resources=resources, session_id="function-agent-demo", max_new_tokens=max_new_tokens)
    agent = FunctionAgent(
        tools=[FunctionTool.from_defaults(get_weather), FunctionTool.from_defaults(find_order)],
        llm=llm,
        system_prompt="You are a helpful shop assistant. Use the tools when they help.",
    )
    # LlamaIndex's side of the conversation, kept across runs (the session keeps the KV cache).
    memory = Memory.from_defaults(session_id="function-agent-demo", token_limit=8000)
    session = llm.get_session()
    answers = []
    for question in ["What's the weather in Porto today?", "Can you look up order number 7781?"]:
        print(f"> {question}")
        before = session.lm.stats().prefilled_tokens
        handler = agent.run(question, memory=memory)
        async for event in handler.stream_events():
            if isinstance(event, ToolCallResult):
                print(f"  [{event.tool_name}({event.tool_kwargs}) -> {event.tool_output.content}]")
        answer = str(await handler)
        print(f"  {answer}")
        print(f"  [prefilled {session.lm.stats().prefilled_tokens - before} new tokens this run]")
        answers.append(answer)
    return answers


def main(resources=None, max_new_tokens: int = 64) -> list[str]:
    return asyncio.run(run(resources, max_new_tokens))


if __name__ == "__main__":
    main()
