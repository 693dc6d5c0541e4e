"""Agents on the persistent cache: LangGraph threads as sessions, LlamaIndex's FunctionAgent, async chat that
leaves the event loop free, and structured output that is valid every time."""

from __future__ import annotations

import asyncio
from typing import Annotated

import pytest

pytest.importorskip("langgraph")
pytest.importorskip("llama_index.core")

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from langchain_streamrag import ChatStreamRAG  # noqa: E402
from langgraph.checkpoint.memory import InMemorySaver  # noqa: E402
from langgraph.prebuilt import create_react_agent  # noqa: E402
from llama_index.core.agent.workflow import FunctionAgent  # noqa: E402
from llama_index.core.base.llms.types import ChatMessage  # noqa: E402
from llama_index.core.tools import FunctionTool  # noqa: E402
from llama_index.llms.streamrag import StreamRAGLLM  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread_module")

ROOMY = {"sink_tokens": 4, "window_tokens": 1020, "evict_chunk": 32}


@tool
def get_weather(city: str) -> str:
    """Current weather and warnings for a city."""
    return f"{city}: 17 C and drizzle."


@tool
def find_order(number: str) -> str:
    """Look up a shop order by its order number."""
    return f"Order {number}: shipped Monday, due Thursday."


def test_two_langgraph_threads_are_two_sessions_that_never_rebuild_each_other(make_resources):
    resources = make_resources(cache=ROOMY)
    chat = ChatStreamRAG(resources=resources, max_tokens=40)
    agent = create_react_agent(chat, [get_weather, find_order], checkpointer=InMemorySaver())
    turns = [
        ("ana", "What's the weather in Porto today?"),
        ("ben", "Can you look up order number 7781?"),
        ("ana", "Thanks, that helps."),
        ("ben", "Great, thank you."),
    ]
    states = {}
    for thread, question in turns:
        states[thread] = agent.invoke(
            {"messages": [("user", question)]}, config={"configurable": {"thread_id": thread}}
        )

    ana, ben = states["ana"]["messages"], states["ben"]["messages"]
    assert [(c["name"], c["args"]) for c in ana[1].tool_calls] == [("get_weather", {"city": "Porto"})]
    assert [(c["name"], c["args"]) for c in ben[1].tool_calls] == [("find_order", {"number": "7781"})]
    for thread, state in states.items():
        messages = state["messages"]
        replies = [m for m in messages if isinstance(m, AIMessage)]
        assert len(replies) >= 3
        for reply in replies:  # every model call of the thread extended its own session
            meta = reply.response_metadata
            assert meta["session_id"] == thread and not meta["forked"] and not meta["rebuilt"], meta
        # The thread's next call found the session holding everything before it: only new messages prefilled.
        assert replies[-1].usage_metadata["input_token_details"]["cache_read"] > 0
        stored = resources.transcript.messages(thread, include_superseded=True)
        assert not any(m.superseded_at for m in stored)
        said = [m for m in stored if m.role in ("user", "assistant", "tool")]
        assert [m.role for m in said] == [
            {HumanMessage: "user", AIMessage: "assistant", ToolMessage: "tool"}[type(m)] for m in messages
        ]
    assert not any("7781" in m.content for m in resources.transcript.messages("ana"))
    assert not any("Porto" in m.content for m in resources.transcript.messages("ben"))


def test_a_call_cut_off_by_max_tokens_is_no_call_and_does_not_fork_the_session(make_resources):
    resources = make_resources(cache=ROOMY)
    # Room for the call's head and a token of its argument: cut inside the arguments.
    head = '<tool_call>\n{"name": "get_weather", "arguments": {\n    "city": "'
    cut = len(resources.tokenizer.encode(head, add_special_tokens=False)) + 1
    chat = ChatStreamRAG(resources=resources, max_tokens=cut, session_id="cut")
    bound = chat.bind_tools([get_weather], tool_choice="get_weather")
    messages = [HumanMessage("What's the weather in Porto today?")]
    reply = bound.invoke(messages)
    assert reply.response_metadata["finish_reason"] == "length"
    # LangChain's partial-JSON parse would have made a call of the fragment; an agent would have run it.
    assert not reply.tool_calls and [c["name"] for c in reply.invalid_tool_calls] == ["get_weather"]
    stored = chat.get_session().history()[-1]
    assert stored.role == "assistant" and reply.content == stored.content and "<tool_call>" in stored.content
    again = bound.invoke([*messages, reply, HumanMessage("Please try again.")], max_tokens=40)
    assert not again.response_metadata["forked"]
    assert [c["name"] for c in again.tool_calls] == ["get_weather"]  # complete, and valid under the schema
    assert isinstance(again.tool_calls[0]["args"]["city"], str)


class Person(BaseModel):
    """A person in a story."""

    name: str = Field(max_length=30)
    age: int = Field(ge=0, le=120)
    hobbies: list[Annotated[str, Field(max_length=20)]] = Field(max_length=3)


def test_structured_output_is_a_valid_pydantic_instance_twenty_times_out_of_twenty(make_resources):
    """Sampled (temperature 1, top-k 50): the grammar leaves only JSON the schema accepts, by both methods."""
    resources = make_resources(cache=ROOMY)
    parsed = []
    for i in range(20):
        chat = ChatStreamRAG(resources=resources, max_tokens=128, temperature=1.0, top_k=50, seed=i)
        method = "json_schema" if i % 2 == 0 else "function_calling"
        structured = chat.with_structured_output(Person, method=method, include_raw=True)
        out = structured.invoke(f"Invent character number {i} for a short story.")
        assert isinstance(out["parsed"], Person), (method, out)
        parsed.append(out["parsed"])
    assert len({p.name for p in parsed}) > 1  # sampled, not one fixed answer


@pytest.fixture
def llama_resources(make_resources):
    return make_resources(cache=ROOMY)


async def test_a_llamaindex_function_agent_calls_the_tool_and_answers_with_its_result(llama_resources):
    asked: list[str] = []

    def check_weather(city: str) -> str:
        """Current weather and warnings for a city."""
        asked.append(city)
        return f"{city}: 17 C and drizzle; harbour station PX-4412 warns of sea fog after sunset."

    llm = StreamRAGLLM(resources=llama_resources, session_id="function-agent", max_new_tokens=40)
    agent = FunctionAgent(tools=[FunctionTool.from_defaults(check_weather)], llm=llm)
    response = await agent.run("What's the weather in Porto today?")
    assert asked == ["Porto"]
    assert str(response).strip()
    stored = llama_resources.transcript.messages("function-agent")
    assert [m.role for m in stored if m.role in ("user", "assistant", "tool")] == [
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    assert "PX-4412" in next(m.content for m in stored if m.role == "tool")


async def test_llamaindex_async_chat_lets_the_event_loop_run_while_it_generates(llama_resources):
    llm = StreamRAGLLM(resources=llama_resources, session_id="ticks", max_new_tokens=24, temperature=0)
    ticks = 0
    running = True

    async def ticker() -> None:
        nonlocal ticks
        while running:
            await asyncio.sleep(0.002)
            ticks += 1

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    try:
        response = await llm.achat([ChatMessage(role="user", content="Tell me about the sea.")])
        during_chat = ticks
        pieces, ticks_between = [], []
        async for piece in await llm.astream_chat([ChatMessage(role="user", content="And about rivers?")]):
            pieces.append(piece.delta)
            ticks_between.append(ticks)
    finally:
        running = False
        await task
    assert response.message.content
    # 24 decoding steps in a worker thread: a blocked loop would have ticked once at most.
    assert during_chat >= 10
    assert len(pieces) > 1 and ticks_between[-1] - ticks_between[0] >= 5
