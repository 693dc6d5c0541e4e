"""Tools the model may call: their specs, how calls look in the model's text, and reading calls back out.

A tool call is text the model writes, and it stays text: it is prefilled,
evicted and archived like any other reply, and the transcript stores exactly
what the model wrote. This module owns the two translations around that text:

* **instructions**: the tool specs as the model expects to read them. Where
  the model's chat template renders ``tools`` into its system message (Qwen2.5,
  Hermes, SmolLM3 and others), that rendering is used verbatim; otherwise (the
  embedded SmolLM2) a documented generic format, the widely trained
  Hermes style: specs inside ``<tools></tools>``, calls as
  ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.
* **syntax**: how a call is spelled in the reply (:class:`ToolSyntax`), used to
  constrain decoding (:mod:`streamrag.grammar`), to parse calls out of a reply
  (:meth:`ToolSyntax.parse`), to stream them (:class:`ToolCallStream`) and to
  write a framework's tool-call message back as the text the model would
  have written (:meth:`ToolSyntax.render`), so a client's message list
  matches what the session holds.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

logger = logging.getLogger(__name__)

# Compact-but-spaced JSON, the form the grammar forces and render() writes: re-rendering a parsed call
# gives back the very characters the model generated, so a client's history matches the session's.
JSON_SEPARATORS = (", ", ": ")
_SENTINEL = "\u2063STREAMRAG\u2063TOOLS\u2063"
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


class ToolError(ValueError):
    """A tool spec, a tool choice or a tool message is malformed; the message says which and why."""


@dataclass(frozen=True)
class Tool:
    """A function the model may call: a name, what it does, and its arguments as a JSON schema."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ToolError(f"tool name {self.name!r} must be 1-64 letters, digits, '_', '.' or '-'")
        if not isinstance(self.parameters, Mapping) or self.parameters.get("type", "object") != "object":
            raise ToolError(f"tool {self.name!r}: parameters must be a JSON schema of type 'object'")

    @classmethod
    def of(cls, spec: Tool | Mapping[str, Any]) -> Tool:
        """A tool from itself, an OpenAI tool (``{"type": "function", "function": {...}}``) or a bare function spec."""
        if isinstance(spec, Tool):
            return spec
        if not isinstance(spec, Mapping):
            raise ToolError(f"a tool must be a mapping or a Tool, not {type(spec).__name__}")
        if spec.get("type") == "function" and "function" in spec:
            spec = spec["function"]
        if "name" not in spec:
            raise ToolError(f"tool spec without a name: {dict(spec)!r}")
        parameters = spec.get("parameters") or {"type": "object", "properties": {}}
        return cls(str(spec["name"]), str(spec.get("description") or ""), dict(parameters))

    def openai(self) -> dict[str, Any]:
        """The OpenAI form, which chat templates take as ``tools``."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": dict(self.parameters)},
        }


@dataclass(frozen=True)
class ToolCall:
    """One call the model made: which tool, with which arguments, under which id."""

    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=lambda: "call_" + uuid.uuid4().hex[:24])


ToolChoiceMode = Literal["none", "auto", "required"]


@dataclass(frozen=True)
class ToolChoice:
    """Whether the model may, must, or must not call a tool; ``name`` forces one tool."""

    mode: ToolChoiceMode = "auto"
    name: str | None = None

    @classmethod
    def of(cls, value: ToolChoice | str | Mapping[str, Any] | None, tools: Sequence[Tool]) -> ToolChoice:
        """From OpenAI's and LangChain's spellings: "auto", "none", "required"/"any", a tool name, or
        ``{"type": "function", "function": {"name": ...}}``; checked against ``tools``."""
        names = [t.name for t in tools]
        if value is None:
            return cls("auto" if tools else "none")
        if isinstance(value, ToolChoice):
            choice = value
        elif isinstance(value, Mapping):
            name = (value.get("function") or {}).get("name") or value.get("name")
            if not name:
                raise ToolError(f"tool_choice {dict(value)!r} names no function")
            choice = cls("required", str(name))
        elif value in ("auto", "none"):
            choice = cls(value)  # type: ignore[arg-type]
        elif value in ("required", "any"):
            choice = cls("required")
        elif isinstance(value, str):
            choice = cls("required", value)
        else:
            raise ToolError(f"tool_choice must be auto, none, required, any or a tool name; got {value!r}")
        if choice.mode != "none" and not tools:
            raise ToolError(f"tool_choice {value!r} needs tools, and none were given")
        if choice.name is not None and choice.name not in names:
            raise ToolError(f"tool_choice names {choice.name!r}, which is not among the tools ({', '.join(names)})")
        return choice


@dataclass(frozen=True)
class ToolSyntax:
    """How one tool call is spelled in a reply: ``begin`` + ``{"name": N, "<args_key>": {...}}`` + ``end``."""

    name: str
    begin: str
    end: str
    args_key: str = "arguments"
    # Arguments pretty-printed with this indent, else on one line. The generic format indents: asked
    # for `magic_function(3)` the embedded 135M model wrote {"input": 256} on one line and, allowed
    # its own layout, `{\n    "input": 3\n}`, which is json.dumps(indent=4).
    args_indent: int | None = None

    def arguments_json(self, arguments: Mapping[str, Any]) -> str:
        """The arguments spelled exactly as the grammar lets the model write them (raw unicode, no escapes)."""
        return json.dumps(arguments, ensure_ascii=False, indent=self.args_indent, separators=self.separators)

    @property
    def separators(self) -> tuple[str, str]:
        return (",", ": ") if self.args_indent is not None else JSON_SEPARATORS

    def call_prefix(self, name: str) -> str:
        """The text of a call up to its arguments' opening brace (the grammar's fixed part)."""
        return f'{self.begin}{{"name": {json.dumps(name)}, "{self.args_key}": '

    def render_call(self, call: ToolCall) -> str:
        return self.call_prefix(call.name) + self.arguments_json(call.arguments) + "}" + self.end

    def render(self, content: str, calls: Sequence[ToolCall]) -> str:
        """An assistant message's text: its content, then each call on its own line (what the grammar emits)."""
        rendered = "\n".join(self.render_call(call) for call in calls)
        if not content.strip():
            return rendered
        return f"{content.rstrip()}\n{rendered}" if rendered else content

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        """``(content, calls)`` of a reply: the text outside the calls, and the calls in order.

        A block that is not a JSON object with a name stays in the content
        (unconstrained replies can be malformed; nothing is dropped).
        """
        calls: list[ToolCall] = []
        content: list[str] = []
        position = 0
        for start, stop, call in self._blocks(text):
            if call is None:
                continue
            content.append(text[position:start])
            calls.append(call)
            position = stop
        content.append(text[position:])
        return "".join(content).strip() if calls else text, calls

    def _blocks(self, text: str) -> Iterator[tuple[int, int, ToolCall | None]]:
        position = 0
        decoder = json.JSONDecoder()
        while (start := text.find(self.begin, position)) >= 0:
            body = start + len(self.begin)
            while body < len(text) and text[body].isspace():
                body += 1
            try:
                value, after = decoder.raw_decode(text, body)
            except json.JSONDecodeError:
                position = start + len(self.begin)
                continue
            stop = after
            if self.end:
                rest = text[after:]
                if rest.lstrip().startswith(self.end.strip()):
                    stop = after + (len(rest) - len(rest.lstrip())) + len(self.end.strip())
            position = stop
            yield start, stop, self._call_of(value)

    def _call_of(self, value: object) -> ToolCall | None:
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            return None
        arguments = value.get(self.args_key, value.get("arguments", value.get("parameters", {})))
        if isinstance(arguments, str):  # some models write the arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                return None
        if not isinstance(arguments, dict):
            return None
        return ToolCall(value["name"], arguments)

    def canonical(self, text: str) -> str:
        """``text`` as :meth:`render` would write it back after parsing: for matching a client's copy."""
        content, calls = self.parse(text)
        return self.render(content, calls).strip() if calls else text.strip()


# The Hermes / Qwen2.5 / SmolLM3 spelling, and the documented generic one (Hermes with indented arguments).
HERMES = ToolSyntax("hermes", "<tool_call>\n", "\n</tool_call>")
GENERIC = ToolSyntax("generic", "<tool_call>\n", "\n</tool_call>", args_indent=4)
# Llama 3.1-3.3 with JSON tool calling: a bare object with "parameters".
LLAMA_JSON = ToolSyntax("llama-json", "", "", args_key="parameters")

GENERIC_INSTRUCTIONS = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>
Results of a call come back in a message from the tool; answer the user with them."""


@dataclass(frozen=True)
class ToolFormat:
    """A model's way with tools: the instructions it reads and the syntax its calls use."""

    syntax: ToolSyntax
    native: bool  # True when the model's own chat template renders the instructions

    @classmethod
    def for_tokenizer(cls, tokenizer) -> ToolFormat:
        """The model's own format when its chat template renders tools into the system message, else generic."""
        template = getattr(tokenizer, "chat_template", None) or ""
        if not isinstance(template, str) or "tools" not in template:
            return cls(GENERIC, native=False)
        probe = [Tool("probe_tool", "probe", {"type": "object", "properties": {}})]
        if _native_instructions(tokenizer, probe) is None:
            return cls(GENERIC, native=False)
        syntax = HERMES if "<tool_call>" in template else LLAMA_JSON if '"parameters"' in template else HERMES
        return cls(syntax, native=True)

    def instructions(self, tokenizer, tools: Sequence[Tool]) -> str:
        """The text of the system message that presents ``tools`` to the model."""
        if self.native:
            text = _native_instructions(tokenizer, tools)
            if text is not None:
                return text
        specs = "\n".join(json.dumps(tool.openai(), separators=JSON_SEPARATORS) for tool in tools)
        return GENERIC_INSTRUCTIONS.format(tools=specs)


def _native_instructions(tokenizer, tools: Sequence[Tool]) -> str | None:
    """What the chat template adds to a system message when given ``tools``; None if it adds it elsewhere."""
    message = [{"role": "system", "content": _SENTINEL}]
    try:
        plain = tokenizer.apply_chat_template(message, tokenize=False)
        with_tools = tokenizer.apply_chat_template(message, tools=[t.openai() for t in tools], tokenize=False)
    except Exception as exc:  # jinja's own errors: a template that wants tools next to a user message
        logger.debug("chat template cannot render tools into a system message: %s", exc)
        return None
    if plain.count(_SENTINEL) != 1 or with_tools.count(_SENTINEL) != 1 or with_tools == plain:
        return None
    prefix, suffix = plain.split(_SENTINEL)
    if not (with_tools.startswith(prefix) and with_tools.endswith(suffix)):
        return None
    inner = with_tools[len(prefix) : len(with_tools) - len(suffix)]
    before, after = inner.split(_SENTINEL)
    if before.strip() or tools[0].name not in after:
        return None  # tools placed before the system text, or not there at all: not a shape we can reproduce
    return after.strip()


def tools_of(specs: Sequence[Tool | Mapping[str, Any]] | None) -> list[Tool]:
    """Tools from specs, refusing two tools of one name."""
    tools = [Tool.of(spec) for spec in specs or ()]
    names = [t.name for t in tools]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ToolError(f"tools named twice: {', '.join(duplicates)}")
    return tools


@dataclass(frozen=True)
class StreamEvent:
    """One step of a streamed reply: text outside calls, or a piece of call ``index``.

    ``kind`` is "text", "call" (a call starts: ``name`` and ``call_id``), "arguments"
    (a fragment of the call's JSON arguments) or "end" (the call is complete).
    """

    kind: Literal["text", "call", "arguments", "end"]
    text: str = ""
    index: int = 0
    name: str | None = None
    call_id: str | None = None


class ToolCallStream:
    """Turn streamed reply pieces into text and tool-call events as early as they are certain.

    Text is passed on until something that might open a call; a call's
    arguments are passed on as they arrive, holding back only what might
    be its closing characters. The call ids match :meth:`calls` at the end.
    """

    def __init__(self, syntax: ToolSyntax):
        self.syntax = syntax
        self._buffer = ""
        self._state = "text"  # text | head | args
        self._index = -1
        self._call_ids: list[str] = []
        self._all: list[str] = []
        self._args = ""
        self._gap = ""

    def push(self, piece: str) -> list[StreamEvent]:
        self._all.append(piece)
        self._buffer += piece
        return list(self._drain(final=False))

    def finish(self) -> list[StreamEvent]:
        return list(self._drain(final=True))

    def calls(self) -> tuple[str, list[ToolCall]]:
        """The reply's content and calls (the calls carry the ids the events announced)."""
        content, calls = self.syntax.parse("".join(self._all))
        ids = self._call_ids + ["call_" + uuid.uuid4().hex[:24] for _ in range(len(calls) - len(self._call_ids))]
        return content, [ToolCall(c.name, c.arguments, ids[i]) for i, c in enumerate(calls)]

    def _drain(self, final: bool) -> Iterator[StreamEvent]:
        begin = self.syntax.begin or '{"name"'
        while True:
            if self._state == "text":
                at = self._buffer.find(begin)
                if at < 0:
                    # Hold back what may open a call, and trailing whitespace (a reply with calls is stripped).
                    partial = _partial_suffix(self._buffer, begin)
                    settled = self._buffer[: len(self._buffer) - partial]
                    keep = len(self._buffer) - len(settled.rstrip()) if not final else 0
                    if final and self._index >= 0:
                        self._buffer = self._buffer.rstrip()
                    cut = len(self._buffer) - keep
                    if cut:
                        yield StreamEvent("text", self._buffer[:cut])
                        self._buffer = self._buffer[cut:]
                    return
                before = self._buffer[:at]
                if before.strip():
                    yield StreamEvent("text", before.rstrip())
                self._gap = before[len(before.rstrip()) :]  # given back if this is no call after all
                self._buffer = self._buffer[at:]
                self._state = "head"
            if self._state == "head":
                match = re.match(
                    r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"(?:arguments|parameters)"\s*:\s*',
                    self._buffer[len(self.syntax.begin) :],
                )
                if match is None:
                    if final or len(self._buffer) > len(self.syntax.begin) + 200:
                        # Not a call after all (or one we cannot stream): it stays text.
                        yield StreamEvent("text", self._gap + self._buffer)
                        self._buffer, self._state = "", "text"
                        if final:
                            return
                        continue
                    return
                self._index += 1
                self._call_ids.append("call_" + uuid.uuid4().hex[:24])
                name = json.loads(match.group(1))
                yield StreamEvent("call", index=self._index, name=name, call_id=self._call_ids[-1])
                self._buffer = self._buffer[len(self.syntax.begin) + match.end() :]
                self._state, self._args = "args", ""
            if self._state == "args":
                if not self._args:
                    self._buffer = self._buffer.lstrip()
                text = self._args + self._buffer
                done = _object_end(text)
                if done is None:
                    if self._buffer:
                        yield StreamEvent("arguments", self._buffer, index=self._index)
                        self._args, self._buffer = text, ""
                    if final:
                        yield StreamEvent("end", index=self._index)
                        self._state = "text"
                    return
                if done > len(self._args):
                    yield StreamEvent("arguments", text[len(self._args) : done], index=self._index)
                self._args, self._buffer = text[:done], text[done:]
                self._state = "close"
            if self._state == "close":
                closing = r"\s*\}" + (r"\s*" + re.escape(self.syntax.end.strip()) if self.syntax.end else "")
                close = re.match(closing, self._buffer)
                if close is None and not final and len(self._buffer) < len(self.syntax.end) + 8:
                    return  # the closing characters may still be on their way
                yield StreamEvent("end", index=self._index)
                self._buffer = self._buffer[close.end() :].lstrip("\n") if close else self._buffer
                self._state, self._args = "text", ""
                if final and not self._buffer:
                    return


def _partial_suffix(text: str, token: str) -> int:
    """How many characters at the end of ``text`` could be the start of ``token``."""
    for size in range(min(len(token) - 1, len(text)), 0, -1):
        if token.startswith(text[-size:]):
            return size
    return 0


def _object_end(text: str) -> int | None:
    """Where the JSON value at the start of ``text`` ends (its length), or None while it is still open."""
    depth = 0
    in_string = escaped = False
    started = False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
            started = True
        elif ch in "}]":
            depth -= 1
            if started and depth == 0:
                return i + 1
    return None


def arguments_schema_errors(tool: Tool, arguments: Mapping[str, Any]) -> list[str]:
    """Why ``arguments`` do not fit ``tool``'s schema (empty when they do); jsonschema when installed."""
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - jsonschema ships with the app and LangChain extras
        missing = [k for k in tool.parameters.get("required", []) if k not in arguments]
        return [f"missing required argument {k!r}" for k in missing]
    validator = jsonschema.Draft202012Validator(dict(tool.parameters))
    return [error.message for error in validator.iter_errors(dict(arguments))]
