"""What a turn may or must produce: plain text, tool calls, or JSON under a schema.

A caller names tools, a tool choice and a response format in the spellings
of OpenAI and LangChain; :func:`plan_turn` checks them all before anything is
stored or fed (a bad schema is refused while the session is untouched) and
returns a :class:`TurnPlan`: the tools, the instructions the model must read,
and a factory of the grammar that constrains the reply.

Precedence when both are given: a required or named tool choice constrains
the reply to calls; otherwise a JSON response format constrains it to JSON
(the tools stay visible, as with OpenAI's API, but "auto" cannot mix free
JSON and calls in one grammar).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from streamrag.tools import Tool, ToolChoice, ToolError, tools_of

if TYPE_CHECKING:
    from streamrag.engine import StreamingLM
    from streamrag.grammar import Constraint


@dataclass(frozen=True)
class TurnPlan:
    """The tools of a turn and how its reply is constrained."""

    tools: tuple[Tool, ...] = ()
    choice: ToolChoice = ToolChoice("none")
    response_schema: Mapping[str, Any] | None = None
    make_constraint: Callable[[], Constraint | None] = lambda: None
    instructions: str | None = None
    parallel_tool_calls: bool = True
    routed: tuple[str, ...] = ()  # tools the router made this "auto" turn call (see streamrag.tool_router)

    @property
    def offers_calls(self) -> bool:
        """May the reply call tools? (Then its text is parsed for calls; with tool_choice none it is not.)"""
        return bool(self.tools) and self.choice.mode != "none"

    @property
    def instructions_key(self) -> str | None:
        """Names the instructions' text, so a session feeds them again only when they change."""
        if self.instructions is None:
            return None
        return hashlib.sha256(self.instructions.encode("utf-8")).hexdigest()[:16]


def response_schema(response_format: object) -> Mapping[str, Any] | None:
    """The JSON schema a response format asks for; ``{"type": "object"}`` for JSON mode; None for text.

    Takes OpenAI's ``{"type": "json_schema", "json_schema": {"schema": ...}}``,
    ``{"type": "json_object"}`` and ``{"type": "text"}``, a bare JSON schema, or
    a pydantic model class.
    """
    if response_format is None:
        return None
    if isinstance(response_format, type) and hasattr(response_format, "model_json_schema"):
        return response_format.model_json_schema()
    if not isinstance(response_format, Mapping):
        raise ToolError(f"response_format must be a mapping or a pydantic model, not {type(response_format).__name__}")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        inner = response_format.get("json_schema")
        if not isinstance(inner, Mapping) or not isinstance(inner.get("schema"), Mapping):
            raise ToolError('response_format json_schema needs {"json_schema": {"name": ..., "schema": {...}}}')
        return dict(inner["schema"])
    if kind in (None, "object", "array", "string", "number", "integer", "boolean") or "properties" in response_format:
        return dict(response_format)  # a bare JSON schema
    raise ToolError(f"unknown response_format type {kind!r}; use text, json_object or json_schema")


def plan_turn(
    lm: StreamingLM,
    tools: Sequence[Tool | Mapping[str, Any]] | None = None,
    tool_choice: object = None,
    response_format: object = None,
    parallel_tool_calls: bool = True,
) -> TurnPlan:
    """Check a turn's tools, choice and response format, compile its grammar, and plan it.

    Raises :class:`~streamrag.tools.ToolError` (or the grammar engine's own
    error for a schema it cannot compile) with nothing changed.
    """
    tool_list = tools_of(tools)
    choice = ToolChoice.of(tool_choice, tool_list)
    schema = response_schema(response_format)
    if not tool_list and schema is None:
        return TurnPlan()
    syntax = lm.tool_format.syntax
    instructions = lm.tool_format.instructions(lm.tokenizer, tool_list) if tool_list else None
    grammar = lm.grammar()
    try:
        calls = lambda: grammar.tool_calls(syntax, tool_list, choice, parallel_tool_calls)  # noqa: E731
        if choice.mode == "required":
            make = _compiled_now(calls)
        elif schema is not None:
            make = _compiled_now(lambda: grammar.json_schema(schema))
        elif choice.mode == "auto":
            make = _compiled_now(calls)
        else:
            make = lambda: None  # noqa: E731
    except (RuntimeError, ValueError) as exc:
        if isinstance(exc, ToolError):
            raise
        raise ToolError(f"cannot compile a grammar for this turn: {exc}") from exc
    return TurnPlan(tuple(tool_list), choice, schema, make, instructions, parallel_tool_calls)


def routed_plan(lm: StreamingLM, plan: TurnPlan, picked: Sequence[Tool]) -> TurnPlan:
    """``plan`` (an "auto" turn) made to call one of ``picked``: the router's decision for the model.

    The instructions still show every tool; only the grammar narrows, to
    calls of the picked ones.
    """
    if not picked:
        return plan
    choice = ToolChoice("required", picked[0].name if len(picked) == 1 else None)
    grammar, syntax, parallel = lm.grammar(), lm.tool_format.syntax, plan.parallel_tool_calls
    make = _compiled_now(lambda: grammar.tool_calls(syntax, picked, choice, parallel))
    return replace(plan, choice=choice, make_constraint=make, routed=tuple(t.name for t in picked))


def _compiled_now(build: Callable[[], Constraint | None]) -> Callable[[], Constraint | None]:
    """``build``, run once now so a grammar that cannot compile fails before the turn (the compiler caches
    it, so each later call only makes a fresh matcher)."""
    build()
    return build
