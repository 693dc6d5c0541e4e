"""What constrained decoding costs per token, against free text from the same engine in the same run.

Constrained decoding (:mod:`streamrag.grammar`) adds two things to a decoding
step: the grammar's mask over the vocabulary and the matcher's advance over
the chosen token. It also removes work: where the grammar alone decides the
next text (a tool call's head, ``": "`` after a property name) that text is
written for the model and fed in one forward pass (jump-forward decoding).

Workloads, each over the same prompts, greedy:

``text``
    free text, end of turn ignored: the unconstrained baseline;
``json_schema`` / ``json_schema_no_jump``
    a reply constrained to a JSON schema, with and without jump-forward;
``tool_call`` / ``tool_call_no_jump``
    a required call of one of three tools, with and without jump-forward.

For each: tokens, forward passes, ms per token and per forward pass, the
grammar's own ms per token (time inside the mask, accept and jump-forward
calls), the ratio of ms per token to the text baseline, and how many replies
were valid JSON under their schema (an independent validator, jsonschema).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from streamrag.bench.common import host_info, load_average, new_figure, progress_bar, rounded, save_figure, write_json

logger = logging.getLogger(__name__)

PROMPTS = [
    "Describe a character for my fantasy novel.",
    "Tell me about a city you would like to visit, and the weather there.",
    "I need to check on order 5521, and also the forecast for Lisbon.",
    "Write a short profile of a retired sailor who now keeps bees.",
]
PROFILE = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "home_town": {"type": "string", "maxLength": 40},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 24}, "maxItems": 3},
        "summary": {"type": "string", "maxLength": 200},
    },
    "required": ["name", "age", "home_town", "hobbies", "summary"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
        },
    },
    {
        "name": "find_order",
        "description": "Look up a shop order by its number.",
        "parameters": {"type": "object", "properties": {"number": {"type": "string"}}, "required": ["number"]},
    },
    {
        "name": "send_email",
        "description": "Send an email.",
        "parameters": {
            "type": "object",
            "properties": {"to": {"type": "string"}, "subject": {"type": "string"}, "body": {"type": "string"}},
            "required": ["to", "subject", "body"],
        },
    },
]
WORKLOADS = ("text", "json_schema", "json_schema_no_jump", "tool_call", "tool_call_no_jump")


class _NoJumpForward:
    """A constraint that never writes text for the model: every token is the model's own step."""

    def __init__(self, constraint):
        self._constraint = constraint

    def forced_tokens(self, tokenizer, limit: int) -> list[int]:
        return []

    def __getattr__(self, name: str):
        return getattr(self._constraint, name)


def run_constrained(
    model,
    tokenizer,
    config,
    out_dir: Path,
    *,
    max_tokens: int = 160,
    repeats: int = 1,
    prompts: int = len(PROMPTS),
    name: str = "constrained",
    progress: bool = True,
) -> dict[str, Any]:
    import jsonschema

    from streamrag.engine import StreamingLM
    from streamrag.structured import plan_turn
    from streamrag.tools import tools_of

    started_load = load_average()
    started = time.perf_counter()
    lm = StreamingLM(model, tokenizer, config)
    plans = {
        "text": None,
        "json_schema": plan_turn(lm, response_format=PROFILE),
        "tool_call": plan_turn(lm, TOOLS, "required", parallel_tool_calls=False),
    }
    schemas = {tool.name: tool.parameters for tool in tools_of(TOOLS)}
    runs: dict[str, list[dict[str, Any]]] = {w: [] for w in WORKLOADS}
    with progress_bar(progress) as bar:
        task = bar.add_task("constrained decoding", total=len(WORKLOADS) * prompts * repeats)
        for _ in range(repeats):
            for prompt in PROMPTS[:prompts]:
                for workload in WORKLOADS:
                    plan = plans[workload.removesuffix("_no_jump")]
                    lm.reset()
                    if plan is not None and plan.instructions:
                        lm.add_message("system", plan.instructions, archive=False)
                    constraint = plan.make_constraint() if plan is not None else None
                    if constraint is not None and workload.endswith("_no_jump"):
                        constraint = _NoJumpForward(constraint)
                    reply = lm.stream_chat(
                        prompt,
                        constraint=constraint,
                        max_new_tokens=max_tokens,
                        temperature=0.0,
                        ignore_eos=constraint is None,  # free text runs its full length
                    )
                    text = "".join(reply)
                    stats = reply.stats
                    runs[workload].append(
                        {
                            "tokens": stats.generated_tokens,
                            "steps": stats.decode_steps,
                            "seconds": stats.decode_seconds,
                            "grammar_seconds": constraint.seconds if constraint is not None else 0.0,
                            "valid": None if plan is None else _valid(text, plan, lm, schemas, jsonschema),
                            "stop_reason": stats.stop_reason,
                        }
                    )
                    bar.advance(task)
    summary = {workload: _summary(entries) for workload, entries in runs.items()}
    base = summary["text"]
    for entry in summary.values():
        entry["ms_per_token_ratio"] = rounded(entry["ms_per_token"] / base["ms_per_token"], 3)
        entry["ms_per_step_ratio"] = rounded(entry["ms_per_step"] / base["ms_per_step"], 3)
    result = {
        "benchmark": "constrained",
        "settings": {"max_tokens": max_tokens, "prompts": prompts, "repeats": repeats, "grammar": "xgrammar"},
        "vocab_size": int(model.config.vocab_size),
        "workloads": summary,
        "runs": runs,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "host": host_info(started_load),
    }
    out_dir = Path(out_dir)
    write_json(out_dir / f"{name}.json", result)
    plot_constrained(result, out_dir / f"{name}.png")
    return result


def _valid(text: str, plan, lm, schemas: dict, jsonschema) -> bool:
    """Is the reply what its constraint promised: JSON under the schema, or calls valid under their tools'?"""
    try:
        if plan.response_schema is not None:
            jsonschema.validate(json.loads(text), plan.response_schema)
            return True
        _, calls = lm.tool_format.syntax.parse(text)
        for call in calls:
            jsonschema.validate(call.arguments, schemas[call.name])
        return bool(calls)
    except (ValueError, jsonschema.ValidationError):
        return False


def _summary(entries: list[dict[str, Any]]) -> dict[str, Any]:
    tokens = sum(e["tokens"] for e in entries)
    steps = sum(e["steps"] for e in entries)
    seconds = sum(e["seconds"] for e in entries)
    grammar = sum(e["grammar_seconds"] for e in entries)
    checked = [e["valid"] for e in entries if e["valid"] is not None]
    return {
        "replies": len(entries),
        "tokens": tokens,
        "steps": steps,
        "tokens_per_step": rounded(tokens / steps, 3) if steps else None,
        "ms_per_token": rounded(1000 * seconds / tokens, 3),
        "ms_per_step": rounded(1000 * seconds / steps, 3),
        "grammar_ms_per_token": rounded(1000 * grammar / tokens, 4),
        "valid": f"{sum(checked)}/{len(checked)}" if checked else None,
        "cut_by_max_tokens": sum(e["stop_reason"] == "length" for e in entries),
    }


def plot_constrained(result: dict[str, Any], path: Path) -> None:
    figure, (ax,) = new_figure(width=7.5, height=3.8)
    names = list(result["workloads"])
    per_token = [result["workloads"][n]["ms_per_token"] for n in names]
    grammar = [result["workloads"][n]["grammar_ms_per_token"] for n in names]
    model_part = [t - g for t, g in zip(per_token, grammar)]
    ax.bar(names, model_part, label="model (forward, sampling, cache)", color="tab:blue")
    ax.bar(names, grammar, bottom=model_part, label="grammar (mask, accept, jump-forward)", color="tab:orange")
    for x, name in enumerate(names):
        entry = result["workloads"][name]
        ax.text(x, per_token[x], f"{per_token[x]:.1f} ms\n{entry['ms_per_token_ratio']:.2f}x", ha="center", va="bottom")
    ax.set_ylabel("ms per generated token")
    ax.set_ylim(0, max(per_token) * 1.3)
    ax.set_title(f"constrained decoding vs free text (vocab {result['vocab_size']:,}, greedy)")
    ax.tick_params(axis="x", labelsize=8)
    ax.legend(fontsize=8)
    save_figure(figure, path)
