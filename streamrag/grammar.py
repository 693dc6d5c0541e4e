"""Constrained decoding: a grammar masks the logits of every step, so even a 135M model writes valid JSON.

The grammar engine is xgrammar, chosen by measurement on the embedded
tokenizer (49,152 tokens): ``streamrag bench constrained`` measures its mask
and accept at 0.3-0.5 ms per token, against tens of milliseconds for the
model's own forward pass. It also has *structural
tags*: free text until a trigger (``<tool_call>``), then a schema-bound call,
which is exactly what ``tool_choice="auto"`` needs.

A :class:`Constraint` is one reply's state: the engine calls :meth:`mask`
on the logits before sampling and :meth:`accept` with the chosen token, so
streaming stays token by token. Compiling is per tokenizer (once per
engine) and per grammar (cached by its specification).

xgrammar is installed ``--no-deps`` by the Makefile: its wheel declares
triton (1 GB), which only its CUDA kernels use; CUDA builds of torch bring
triton themselves.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from streamrag.tools import JSON_SEPARATORS, Tool, ToolChoice, ToolSyntax

logger = logging.getLogger(__name__)

_COMPILED_CACHE_SIZE = 64


class GrammarUnavailable(RuntimeError):
    """Constrained decoding was asked for, but the grammar engine (xgrammar) is not installed."""


def _xgrammar():
    try:
        import xgrammar
    except ImportError as exc:  # pragma: no cover - installed by make install
        raise GrammarUnavailable(
            "constrained decoding (tools, response_format) needs xgrammar: pip install --no-deps xgrammar==0.2.8 "
            "apache-tvm-ffi"
        ) from exc
    return xgrammar


class Constraint:
    """One reply's grammar state: mask the logits, accept the chosen token."""

    def __init__(self, matcher, vocab_size: int, description: str, trigger: str | None = None):
        xgr = _xgrammar()
        self._matcher = matcher
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        self.description = description
        self.trigger = trigger
        """The reply is free text until this opens a structured part (tool_choice auto); None: all structured."""
        self.steps = 0
        self.seconds = 0.0
        """Time spent in the grammar (masks, accepts, forced text): what constraining costs this reply."""

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """Set every token the grammar forbids now to -inf (in place; ``logits`` is ``[1, vocab]`` or ``[vocab]``)."""
        xgr = _xgrammar()
        began = time.perf_counter()
        self._matcher.fill_next_token_bitmask(self._bitmask)
        bitmask = self._bitmask if logits.device.type == "cpu" else self._bitmask.to(logits.device, non_blocking=True)
        xgr.apply_token_bitmask_inplace(logits if logits.dim() == 2 else logits.unsqueeze(0), bitmask)
        self.seconds += time.perf_counter() - began
        return logits

    def accept(self, token: int) -> None:
        """Advance over ``token``; a token the mask allowed is always accepted."""
        began = time.perf_counter()
        accepted = self._matcher.accept_token(token)
        self.seconds += time.perf_counter() - began
        if not accepted:
            raise RuntimeError(f"the grammar refused token {token} ({self.description})")
        self.steps += 1

    def forced_tokens(self, tokenizer, limit: int) -> list[int]:
        """The tokens of what the grammar alone decides next (at most ``limit``), accepted already.

        Jump-forward decoding: where only one text can follow (``": "`` after a
        property name, a tool call's fixed head) it is written for the model in
        its ordinary tokenization. Left to pick it token by token under the
        mask, a small model splits it oddly (a lone space where it meant to
        write an unquoted number, then a quote-and-backslash token), lands
        where it has never been, and writes noise into the arguments.
        """
        if limit <= 0 or self._matcher.is_terminated():
            return []
        began = time.perf_counter()
        try:
            text = self._matcher.find_jump_forward_string()
            tokens = tokenizer.encode(text, add_special_tokens=False)[:limit] if text else []
            for taken, token in enumerate(tokens):
                if not self._matcher.accept_token(token):
                    # Its tokenization crosses into what the grammar leaves open: take the part that fits.
                    return tokens[:taken]
                self.steps += 1
            return tokens
        finally:
            self.seconds += time.perf_counter() - began

    def structured(self, written: str) -> bool:
        """Has the reply entered JSON or a call, ``written`` being its latest text? (There values are copied
        from the conversation: the engine's repetition penalty then looks at the reply's own tokens only.)"""
        return self.trigger is None or self.trigger in written

    @property
    def finished(self) -> bool:
        """The grammar is complete: only an end-of-turn token may follow."""
        return self._matcher.is_terminated()


class GrammarCompiler:
    """Compiles grammars for one tokenizer, caching them by specification; thread-safe."""

    def __init__(self, tokenizer, vocab_size: int, stop_token_ids: Sequence[int]):
        xgr = _xgrammar()
        self.vocab_size = vocab_size
        self.stop_token_ids = sorted(set(int(t) for t in stop_token_ids))
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=self.stop_token_ids)
        self._compiler = xgr.GrammarCompiler(info, max_threads=1)
        self._compiled: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def _compile(self, key: str, build) -> Any:
        with self._lock:
            compiled = self._compiled.get(key)
            if compiled is not None:
                self._compiled.move_to_end(key)
                return compiled
        compiled = build()
        with self._lock:
            self._compiled[key] = compiled
            while len(self._compiled) > _COMPILED_CACHE_SIZE:
                self._compiled.popitem(last=False)
        return compiled

    def _constraint(self, key: str, build, description: str, trigger: str | None = None) -> Constraint:
        xgr = _xgrammar()
        compiled = self._compile(key, build)
        matcher = xgr.GrammarMatcher(compiled, override_stop_tokens=self.stop_token_ids)
        return Constraint(matcher, self.vocab_size, description, trigger)

    def json_schema(self, schema: Mapping[str, Any]) -> Constraint:
        """The whole reply is one JSON value valid under ``schema``, written compactly (``{"a": 1, "b": 2}``)."""
        spec = json.dumps(schema)  # not sorted: the schema's property order is the order the JSON is written in
        return self._constraint(
            "json:" + spec,
            lambda: self._compiler.compile_grammar(json_grammar(schema, indent=None, separators=JSON_SEPARATORS)),
            "response_format json_schema",
        )

    def json_object(self) -> Constraint:
        """Any JSON object (OpenAI's ``json_object`` mode, LangChain's ``json_mode``)."""
        return self.json_schema({"type": "object"})

    def tool_calls(
        self, syntax: ToolSyntax, tools: Sequence[Tool], choice: ToolChoice, parallel: bool = True
    ) -> Constraint | None:
        """Calls spelled in ``syntax``: free text with optional calls (auto), only calls (required),
        exactly one call of one tool (named); one call at most unless ``parallel``; ``None`` for
        tool_choice none."""
        if choice.mode == "none" or not tools:
            return None
        chosen = [t for t in tools if choice.name in (None, t.name)]
        tags = [
            {
                "type": "tag",
                "begin": syntax.call_prefix(tool.name),
                # The arguments in one fixed layout, exactly as ToolSyntax.render writes them: the model
                # cannot wander into whitespace of its own, and a client's copy matches byte for byte.
                "content": {"type": "grammar", "grammar": _canonical_json(tool.parameters, syntax)},
                "end": "}" + syntax.end,
            }
            for tool in chosen
        ]
        trigger = None
        if choice.mode == "auto":
            trigger = syntax.begin or '{"name"'
            fmt: dict[str, Any] = {
                "type": "triggered_tags",
                "triggers": [trigger],
                "tags": tags,
                "stop_after_first": not parallel,
            }
        else:
            fmt = {
                "type": "tags_with_separator",
                "tags": tags,
                "separator": "\n",
                "at_least_one": True,
                "stop_after_first": choice.name is not None or not parallel,
            }
        spec = json.dumps({"type": "structural_tag", "format": fmt})
        description = f"tool_choice {choice.name or choice.mode} over {', '.join(t.name for t in chosen)}"
        return self._constraint(
            "tools:" + spec, lambda: self._compiler.compile_structural_tag(spec), description, trigger
        )


# The escapes json.dumps(ensure_ascii=False) writes: the two that must be escaped, the named controls, and
# \u00XX for other control characters. xgrammar's JSON grammar also allows \/ and \u for any code point; a
# small model that starts an escape then wanders through \u03ca\u03d9... until max_tokens cuts the call
# (seen with SmolLM2-135M asked for an order number), and no client would write it back that way.
_CANONICAL_ESCAPE = 'basic_escape ::= (([\\"\\\\bfnrt]) | ("u00" [01] [A-Fa-f0-9]))'


def json_grammar(schema: Mapping[str, Any], indent: int | None, separators: tuple[str, str]) -> str:
    """EBNF for JSON valid under ``schema`` in one fixed layout (``indent``, ``separators``), its strings
    escaped only where ``json.dumps(..., ensure_ascii=False)`` escapes them."""
    xgr = _xgrammar()
    grammar = xgr.Grammar.from_json_schema(
        json.dumps(dict(schema)), any_whitespace=False, indent=indent, separators=separators
    )
    rules = str(grammar).splitlines()
    escapes = [i for i, rule in enumerate(rules) if rule.startswith("basic_escape ::=")]
    if len(escapes) != 1:  # another xgrammar spelling: keep its grammar (valid JSON all the same)
        logger.warning("xgrammar's JSON grammar has no single basic_escape rule; escapes are not narrowed")
        return "\n".join(rules)
    rules[escapes[0]] = _CANONICAL_ESCAPE
    return "\n".join(rules)


def _canonical_json(schema: Mapping[str, Any], syntax: ToolSyntax) -> str:
    """EBNF for JSON valid under ``schema`` spelled exactly as ``syntax.arguments_json`` writes it."""
    return json_grammar(schema, indent=syntax.args_indent, separators=syntax.separators)


_COMPILERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_COMPILERS_LOCK = threading.Lock()


def compiler_for(tokenizer, vocab_size: int, stop_token_ids: Sequence[int]) -> GrammarCompiler:
    """The one compiler of a tokenizer, shared by every session on the model (its vocabulary is indexed once)."""
    key = (vocab_size, tuple(sorted(set(int(t) for t in stop_token_ids))))
    with _COMPILERS_LOCK:
        compilers = _COMPILERS.setdefault(tokenizer, {})
        if key not in compilers:
            compilers[key] = GrammarCompiler(tokenizer, vocab_size, key[1])
        return compilers[key]
