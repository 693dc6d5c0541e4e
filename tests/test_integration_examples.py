"""The examples under integrations/examples run, offline, and show what they promise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")

EXAMPLES = Path(__file__).resolve().parents[1] / "integrations" / "examples"


@pytest.fixture
def examples(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import importlib

    return lambda name: importlib.import_module(name)


@pytest.fixture
def small_window(make_resources):
    """The cache of configs/small-window.yaml (4 + 508 tokens) around the shared model, under tmp_path."""
    return make_resources(cache={"sink_tokens": 4, "window_tokens": 508, "evict_chunk": 32})


def test_lcel_chat_streams_in_one_session(examples, small_window):
    example = examples("langchain_lcel_chat")
    replies = example.main(resources=small_window, max_tokens=12)
    assert len(replies) == 3 and all(replies)
    session = small_window.session("lcel-demo")
    assert [m.role for m in session.history()] == ["system"] + ["user", "assistant"] * 3

    def said() -> list:
        return [m for m in small_window.transcript.messages("lcel-demo", include_superseded=True) if m.role != "memory"]

    first_run = said()
    # Re-running the example starts LangChain's in-memory history empty: the session forks, nothing is lost
    # (the first run's messages are superseded, kept, archived: the second run may even recall them).
    example.main(resources=small_window, max_tokens=12)
    after = said()
    assert [(m.message_id, m.content) for m in after[: len(first_run)]] == [
        (m.message_id, m.content) for m in first_run
    ]
    assert len(after) == len(first_run) + 6 and all(m.superseded_at for m in after[1 : len(first_run)])
    assert [m.role for m in session.history()] == ["system"] + ["user", "assistant"] * 3


def test_langchain_rag_chain_retrieves_the_evicted_fact(examples, small_window):
    docs, answer = examples("langchain_rag_history").main(resources=small_window, max_tokens=12, exchanges=20)
    session = small_window.session("rag-demo")
    assert "Trondheim" not in small_window.tokenizer.decode(session.lm.ledger.token_ids())  # left the window
    assert "Trondheim" in docs[0].page_content and answer


def test_llamaindex_chat_engine_extends_its_session(examples, small_window):
    replies = examples("llamaindex_chat_engine").main(resources=small_window, max_new_tokens=12)
    assert len(replies) == 2 and all(replies)
    session = small_window.session("llamaindex-demo")
    assert [m.role for m in session.history()] == ["system"] + ["user", "assistant"] * 2
    assert small_window.transcript.count("llamaindex-demo", include_superseded=False) == 5


def test_llamaindex_query_engine_answers_from_the_archive(examples, small_window):
    response = examples("llamaindex_query_archive").main(resources=small_window, max_new_tokens=16, exchanges=20)
    assert "Trondheim" in response.source_nodes[0].node.get_content()
    assert str(response).strip()


def test_an_example_runs_as_a_script_on_the_embedded_defaults(embedded, data_dir, tmp_path):
    """A fresh process with only STREAMRAG_HOME set: embedded model and embedder, default config."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(Path(data_dir) / "models")  # reuse this session's converted model
    env = {**os.environ, "STREAMRAG_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "llamaindex_chat_engine.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "> What do I love?" in done.stdout and "new tokens]" in done.stdout


def test_langgraph_agent_recalls_an_early_tool_result_after_it_left_the_window(examples, small_window):
    out = examples("langgraph_agent").main(resources=small_window, max_tokens=48, small_talk=6)
    session = out["session"]
    calls = [c for m in out["messages"] if getattr(m, "tool_calls", None) for c in m.tool_calls]
    assert [(c["name"], c["args"]) for c in calls[:2]] == [
        ("get_weather", {"city": "Porto"}),
        ("find_order", {"number": "7781"}),
    ]
    stored = small_window.transcript.messages(session.session_id, include_superseded=True)
    assert not any(m.superseded_at for m in stored)  # every call of the thread extended the session
    porto = next(m for m in stored if m.role == "tool" and "PX-4412" in m.content)
    assert out["evicted_tokens"] > 0 and porto.message_id not in session.lm.ledger.resident_ranges()
    # The last question's memory block brought the evicted tool result back into the context.
    last_block = [m for m in stored if m.role == "memory"][-1]
    assert "PX-4412 warns of sea fog after sunset" in last_block.content
    assert stored[-1].role == "assistant" and stored[-1].content


def test_llamaindex_function_agent_calls_its_tools_in_one_session(examples, small_window):
    answers = examples("llamaindex_function_agent").main(resources=small_window, max_new_tokens=48)
    assert len(answers) == 2 and all(answers)
    stored = small_window.transcript.messages("function-agent-demo", include_superseded=True)
    assert not any(m.superseded_at for m in stored)  # the second run extended the session
    tools = [m.content for m in stored if m.role == "tool"]
    assert any("PX-4412" in t for t in tools) and any("Nordpost" in t for t in tools)
