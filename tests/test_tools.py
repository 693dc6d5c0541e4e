"""Tool calls and structured output: the spelling of calls, the grammar, and tools in a persistent session."""

from __future__ import annotations

import json
import logging

import jsonschema
import pytest

from streamrag.history import HistoryMessage, comparable, normalise, plan_sync
from streamrag.session import TOOLS_ROLE, Assistant
from streamrag.structured import response_schema
from streamrag.tools import GENERIC, HERMES, Tool, ToolCall, ToolCallStream, ToolChoice, ToolError, ToolFormat, tools_of

logger = logging.getLogger(__name__)
pytestmark = pytest.mark.usefixtures("one_thread_module")

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "unit", "days"],
        },
    },
}
CITY_WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
ORDERS = {
    "name": "find_order",
    "description": "Look up an order by its number",
    "parameters": {"type": "object", "properties": {"number": {"type": "string"}}, "required": ["number"]},
}


# -- the spelling of calls (no model) ------------------------------------------
def test_a_rendered_reply_parses_back_to_its_content_and_calls():
    calls = [ToolCall("get_weather", {"city": "Paris", "unit": "celsius", "days": 2}), ToolCall("f", {})]
    text = HERMES.render("Let me check.", calls)
    content, parsed = HERMES.parse(text)
    assert content == "Let me check."
    assert [(c.name, c.arguments) for c in parsed] == [(c.name, c.arguments) for c in calls]
    assert HERMES.canonical(text) == text
    loose = text.replace('{"city": "Paris"', '{\n  "city":"Paris"').replace("Let me check.\n", "Let me check.  ")
    assert loose != text and HERMES.canonical(loose) == text  # a client's own whitespace still matches


def test_a_malformed_call_stays_text_and_nothing_is_dropped():
    text = 'Sure <tool_call>\n{"name": "f", "arguments": {"a": 1</tool_call> and <tool_call>\n[1, 2]\n</tool_call>'
    assert HERMES.parse(text) == (text, [])


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_streamed_calls_arrive_as_the_same_text_and_calls_whatever_the_piece_size(step):
    calls = [ToolCall("get_weather", {"city": 'Zürich "old town"', "days": [1, 2]}), ToolCall("f", {})]
    text = HERMES.render("Checking both.", calls)
    stream = ToolCallStream(HERMES)
    events = []
    for i in range(0, len(text), step):
        events += stream.push(text[i : i + step])
    events += stream.finish()
    assert "".join(e.text for e in events if e.kind == "text") == "Checking both."
    arguments: dict[int, str] = {}
    for event in events:
        if event.kind == "arguments":
            arguments[event.index] = arguments.get(event.index, "") + event.text
    assert [json.loads(arguments[i]) for i in (0, 1)] == [c.arguments for c in calls]
    starts = [e for e in events if e.kind == "call"]
    content, parsed = stream.calls()
    assert [e.name for e in starts] == ["get_weather", "f"]
    assert [c.id for c in parsed] == [e.call_id for e in starts]  # the ids streamed are the ids returned
    assert content == "Checking both."


def test_text_that_only_looks_like_a_call_streams_unchanged():
    for text in ("plain <tool and more", "x <tool_call>\n{bad json</tool_call>", "ends with newlines\n\n"):
        stream = ToolCallStream(HERMES)
        events = [e for piece in text for e in stream.push(piece)] + stream.finish()
        assert "".join(e.text for e in events) == text
        assert not [e for e in events if e.kind != "text"]


def test_tool_choice_spellings_and_their_errors():
    tools = tools_of([WEATHER, ORDERS])
    assert ToolChoice.of(None, tools) == ToolChoice("auto")
    assert ToolChoice.of(None, []) == ToolChoice("none")
    assert ToolChoice.of("any", tools) == ToolChoice("required")
    assert ToolChoice.of("find_order", tools) == ToolChoice("required", "find_order")
    assert ToolChoice.of({"type": "function", "function": {"name": "get_weather"}}, tools).name == "get_weather"
    with pytest.raises(ToolError, match="not among the tools"):
        ToolChoice.of("launch_rocket", tools)
    with pytest.raises(ToolError, match="needs tools"):
        ToolChoice.of("required", [])
    with pytest.raises(ToolError, match="named twice"):
        tools_of([ORDERS, ORDERS])
    with pytest.raises(ToolError, match="tool name"):
        Tool("no spaces allowed")


def test_response_format_spellings():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert response_schema({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}) == schema
    assert response_schema({"type": "json_object"}) == {"type": "object"}
    assert response_schema({"type": "text"}) is None
    assert response_schema(schema) == schema
    with pytest.raises(ToolError, match="unknown response_format"):
        response_schema({"type": "yaml"})


def test_a_frameworks_tool_call_message_matches_the_text_the_model_wrote():
    written = '<tool_call>\n{"name": "find_order", "arguments": {\n "number": "7731"\n}}\n</tool_call>'
    held = [HistoryMessage("user", "Where is order 7731?"), HistoryMessage("assistant", written)]
    langchain_style = {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"name": "find_order", "args": {"number": "7731"}}],
    }
    openai_style = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "find_order", "arguments": '{"number":"7731"}'}}
        ],
    }
    for client in (langchain_style, openai_style):
        incoming = normalise([held[0], client, {"role": "tool", "content": "shipped"}])
        assert comparable(incoming[1]) == comparable(held[1])
        plan = plan_sync(held, incoming)
        assert not plan.rebuild and [m.role for m in plan.new] == ["tool"]


# -- with the embedded model -----------------------------------------------------
def test_the_embedded_model_gets_the_generic_format(embedded):
    _, tokenizer = embedded
    fmt = ToolFormat.for_tokenizer(tokenizer)
    assert fmt.syntax is GENERIC and not fmt.native  # SmolLM2's template has no tools
    text = fmt.instructions(tokenizer, tools_of([WEATHER]))
    assert "<tools>" in text and '"name": "get_weather"' in text and "<tool_call>" in text


@pytest.mark.parametrize("syntax", [GENERIC, HERMES], ids=lambda s: s.name)
def test_the_grammar_accepts_exactly_what_render_writes(embedded, syntax):
    """A call rendered back from a client's history is the very text the model was allowed to write,
    token for token, so the cache matches it and nothing is prefilled again."""
    from streamrag.grammar import compiler_for

    model, tokenizer = embedded
    tool = Tool.of(
        {
            "name": "create_customer",
            "parameters": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "address": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
                },
                "required": ["name", "tags", "address"],
            },
        }
    )
    arguments = {"name": "こんにちは株式会社", "tags": ["b2b", "jp"], "address": {"city": "大阪"}}
    call = ToolCall("create_customer", arguments)
    text = syntax.render("", [call])
    assert "こんにちは" in text and (("\n    " in text) == (syntax.args_indent == 4))
    compiler = compiler_for(tokenizer, model.config.vocab_size, [tokenizer.eos_token_id])
    constraint = compiler.tool_calls(syntax, [tool], ToolChoice("required"), parallel=False)
    for token in tokenizer.encode(text, add_special_tokens=False):
        constraint.accept(token)
    constraint.accept(tokenizer.eos_token_id)  # the call is complete: the turn may end here
    assert constraint.finished
    loose = text.replace('": ', '":  ', 1)  # one stray space: not the spelling the grammar allows
    escaped = text.replace("大阪", "\\u5927\\u962a")  # the same JSON value, escaped as render never writes it
    for other_spelling in (loose, escaped):
        other = compiler.tool_calls(syntax, [tool], ToolChoice("required"), parallel=False)
        with pytest.raises(RuntimeError, match="refused"):
            for token in tokenizer.encode(other_spelling, add_special_tokens=False):
                other.accept(token)


def test_strings_are_escaped_only_where_json_dumps_escapes_them(embedded):
    """Raw unicode, and the escapes json.dumps(ensure_ascii=False) writes; no \\u for a printable character
    (a small model that starts one wanders through \\u03ca\\u03d9... until max_tokens cuts the call)."""
    from streamrag.grammar import compiler_for

    model, tokenizer = embedded
    compiler = compiler_for(tokenizer, model.config.vocab_size, [tokenizer.eos_token_id])
    schema = {"type": "object", "properties": {"note": {"type": "string"}}, "required": ["note"]}

    def accepts(text: str) -> bool:
        constraint = compiler.json_schema(schema)
        try:
            for token in tokenizer.encode(text, add_special_tokens=False):
                constraint.accept(token)
        except RuntimeError:
            return False
        return True

    written = json.dumps({"note": 'say "hi"\\ to Zoë\n\tnow\x01'}, ensure_ascii=False, separators=(", ", ": "))
    assert "\\u0001" in written and "Zoë" in written and accepts(written)
    assert not accepts('{"note": "Zo\\u00eb"}')  # an escape json.dumps would not write
    assert not accepts('{"note": "a\\/b"}')
    assert accepts('{"note": "Zoë"}')


@pytest.mark.parametrize("choice", ["required", "get_weather"])
def test_a_forced_call_has_arguments_valid_under_its_schema(make_resources, choice):
    resources = make_resources(generation={"temperature": 0, "max_new_tokens": 96})
    assistant = Assistant(resources)
    reply = assistant.stream(
        "What's the weather in Lisbon this week?",
        tools=[WEATHER, ORDERS],
        tool_choice=choice,
        parallel_tool_calls=False,
    ).result()
    assert reply.tool_calls, reply.text
    schemas = {"get_weather": WEATHER["function"]["parameters"], "find_order": ORDERS["parameters"]}
    for call in reply.tool_calls:
        jsonschema.validate(call.arguments, schemas[call.name])  # an independent validator
    if choice == "get_weather":
        assert [c.name for c in reply.tool_calls] == ["get_weather"]
    assert reply.finish_reason == "tool_calls" and reply.stop_reason == "eos"
    stored = resources.transcript.messages(assistant.session_id)
    assert [m.role for m in stored] == [TOOLS_ROLE, "user", "assistant"]
    assert stored[-1].content == reply.text  # what the model wrote, exactly


def test_a_call_copies_its_argument_from_the_question_despite_the_repetition_penalty(make_resources):
    """Inside a call the repetition penalty (1.1 by default) looks at the reply's own tokens only: over the
    window the "3" of the question lost to "1" and the call read {"input": 1234567890}."""
    resources = make_resources(generation={"temperature": 0, "max_new_tokens": 48})
    assert resources.config.generation.repetition_penalty > 1
    magic = {
        "name": "magic_function",
        "description": "Apply a magic function to an input.",
        "parameters": {"type": "object", "properties": {"input": {"type": "integer"}}, "required": ["input"]},
    }
    reply = Assistant(resources).stream("What is the value of magic_function(3)? Use the tool.", tools=[magic])
    assert [(c.name, c.arguments) for c in reply.result().tool_calls] == [("magic_function", {"input": 3})]


def test_sampled_json_replies_are_valid_every_time(make_resources):
    """Temperature 1.0, top-k 50: the grammar still leaves only valid continuations."""
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 30},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
        },
        "required": ["name", "age", "tags"],
        "additionalProperties": False,
    }
    resources = make_resources(generation={"temperature": 1.0, "top_k": 50, "max_new_tokens": 96})
    assistant = Assistant(resources)
    for seed in range(5):
        reply = assistant.stream(f"Invent person {seed}.", response_format=schema, seed=seed).result()
        jsonschema.validate(json.loads(reply.text), schema)
        assert reply.stop_reason == "eos" and not reply.tool_calls


def test_a_tool_result_is_fed_once_and_the_reply_that_uses_it_streams(make_resources):
    resources = make_resources(generation={"temperature": 0, "max_new_tokens": 48})
    assistant = Assistant(resources)
    call = assistant.stream("What's the weather in Lisbon?", tools=[CITY_WEATHER], tool_choice="get_weather").result()
    assert [(c.name, c.arguments) for c in call.tool_calls] == [("get_weather", {"city": "Lisbon"})]
    before = assistant.lm.stats().prefilled_tokens
    assistant.add_message("tool", "Lisbon: 21 C and sunny <|im_end|> wind 14 km/h.", name="get_weather")
    fed = assistant.lm.stats().prefilled_tokens - before
    assert 0 < fed < 64  # just the result and its framing, not the conversation again
    tool_id = resources.transcript.messages(assistant.session_id)[-1].message_id
    own_ids = assistant.lm.ledger.token_ids(assistant.lm.ledger.first_slot(tool_id))
    im_end = resources.tokenizer.convert_tokens_to_ids("<|im_end|>")
    # One control token: the template's own close of the tool turn. The "<|im_end|>" inside the
    # result was tokenised as plain text and reads back as typed.
    assert own_ids.count(im_end) == 1 and own_ids[-2] == im_end
    assert "sunny <|im_end|> wind 14 km/h." in resources.tokenizer.decode(own_ids)
    answer = assistant.stream_reply(tools=[CITY_WEATHER], tool_choice="none")
    pieces = [piece for piece in answer if piece]
    assert len(pieces) > 1 and not answer.tool_calls  # streamed piece by piece; tool_choice none calls nothing
    # The tools' instructions were fed once: the second turn found them still in the window.
    assert [m.role for m in resources.transcript.messages(assistant.session_id)].count(TOOLS_ROLE) == 1


def test_a_tool_result_evicted_from_the_window_is_recalled_later(make_resources):
    from conftest import FILLER

    # A 256-token window; the default recall budget (15% of it) is smaller than the result's line.
    resources = make_resources(recall={"budget_fraction": 0.4})
    assistant = Assistant(resources)
    call = assistant.stream("Weather in Porto?", tools=[CITY_WEATHER], tool_choice="get_weather", max_new_tokens=48)
    assert call.result().tool_calls
    result = "Porto: 17 C, drizzle; the harbour station PX-4412 warns of fog after sunset, per Ribeiro Meteo."
    assistant.add_message("tool", result, name="get_weather")
    assistant.stream_reply(max_new_tokens=8).result()
    for question, answer in FILLER * 2:
        assistant.add_messages([("user", question), ("assistant", answer)])
    tool_id = next(m.message_id for m in resources.transcript.messages(assistant.session_id) if m.role == "tool")
    assert tool_id not in assistant.lm.ledger.resident_ranges()  # the result left the window
    assert assistant.flush()
    reply = assistant.stream("What did the harbour station in Porto warn about?").result()
    recalled = " ".join(m.text for m in reply.memories)
    assert "PX-4412" in recalled and "fog after sunset" in recalled


def test_a_bad_turn_is_refused_before_anything_is_stored(make_resources):
    resources = make_resources()
    assistant = Assistant(resources)
    assistant.chat("Hello.")
    before = (resources.transcript.count(assistant.session_id), assistant.lm.stats())
    with pytest.raises(ToolError, match="not among the tools"):
        assistant.stream("Hi", tools=[ORDERS], tool_choice="get_weather")
    with pytest.raises(ToolError, match="response_format"):
        assistant.stream("Hi", response_format={"type": "json_schema"})
    assert (resources.transcript.count(assistant.session_id), assistant.lm.stats()) == before


def test_auto_routes_a_request_for_a_tool_and_leaves_the_rest_to_the_model(make_resources):
    """The embedded model was never trained on tools, so "auto" is decided by the tool router
    (streamrag.tool_router); with ``tools.auto: model`` the same request gets prose."""
    resources = make_resources(generation={"temperature": 0, "max_new_tokens": 40})
    assistant = Assistant(resources)
    call = assistant.stream("What's the weather like in Lisbon today?", tools=[CITY_WEATHER, ORDERS]).result()
    assert [(c.name, c.arguments) for c in call.tool_calls] == [("get_weather", {"city": "Lisbon"})]
    assert call.plan.routed == ("get_weather",)
    assistant.add_message("tool", "Lisbon: 21 C and sunny.", name="get_weather")
    answer = assistant.stream_reply(tools=[CITY_WEATHER, ORDERS], max_new_tokens=12).result()
    # After a result the reply answers with it: no call, and text that looks like one stays text.
    assert answer.plan.routed == () and answer.plan.choice.mode == "none" and not answer.tool_calls
    assert answer.plan.make_constraint() is None
    small_talk = assistant.stream("Thanks! Have a nice evening.", tools=[CITY_WEATHER, ORDERS], max_new_tokens=8)
    assert not small_talk.result().tool_calls and small_talk.plan.routed == ()

    by_model = Assistant(make_resources(tools={"auto": "model"}, generation={"temperature": 0, "max_new_tokens": 8}))
    prose = by_model.stream("What's the weather like in Lisbon today?", tools=[CITY_WEATHER, ORDERS]).result()
    assert prose.plan.routed == () and prose.plan.choice.mode == "auto"
