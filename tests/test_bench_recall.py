"""The recall benchmark on tiny settings: its files, and behaviour only real retrieval produces."""

from __future__ import annotations

import json
import random

import pytest
from typer.testing import CliRunner

from streamrag.bench.conversations import (
    KINDS,
    Probe,
    answer_is_correct,
    build_conversations,
    chat_token_counter,
    filler_exchange,
)
from streamrag.bench.recall import SYSTEMS, run_recall
from streamrag.cli import app
from streamrag.config import StreamRAGConfig

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def probe(kind: str, key: str) -> Probe:
    return Probe("p", 0, kind, "t", f"fact {key}", "ok", "question?", key)


def test_answers_count_only_when_they_state_the_key():
    date = probe("date", "14 September")
    for reply in ("It is on 14 September.", "September 14th!", "the 14th of September", "SEPTEMBER 14"):
        assert answer_is_correct(date, reply), reply
    for reply in ("On 4 September.", "September 141", "14 October"):
        assert not answer_is_correct(date, reply), reply
    code = probe("code", "QX7-4471")
    assert answer_is_correct(code, "The password is qx7-4471.") and answer_is_correct(code, "It's QX7 4471")
    assert not answer_is_correct(code, "QX7-44712")
    colour = probe("preference", "teal")
    assert answer_is_correct(colour, "Teal, I think.") and not answer_is_correct(colour, "Don't steal it.")


def test_conversations_are_deterministic_and_ask_only_after_the_fact_left_the_cache(embedded):
    _, tokenizer = embedded
    count = chat_token_counter(tokenizer)
    settings = dict(sessions=3, facts_per_kind=2, windows=8, capacity=128, seed=7)
    scripts = build_conversations(count, **settings)
    again = build_conversations(count, **settings)
    assert [s.steps for s in scripts] == [s.steps for s in again]
    keys = [p.key.lower() for s in scripts for p in s.probes]
    assert len(keys) == len(set(keys)) == 3 * 2 * len(KINDS)
    for script in scripts:
        assert script.tokens >= 8 * 128
        asked = [step.probe for step in script.steps if step.role == "ask"]
        assert sorted(asked) == sorted(p.probe_id for p in script.probes)
        for p in script.probes:
            assert script.gap(p.probe_id) >= 1.5 * 128
            assert p.key.lower() not in p.question.lower() and p.key.lower() in p.fact.lower()
        # Keys appear only in their fact: not in filler, acknowledgements or questions of any session.
        others = [s.text.lower() for s in script.steps if not (s.probe and s.role == "user")]
        assert not any(key in text for key in keys for text in others)
    rng = random.Random(0)
    assert len({filler_exchange(rng) for _ in range(500)}) > 450  # filler varies


def test_recall_benchmark_finds_evicted_facts_that_the_plain_caches_lost(embedded, data_dir, tmp_path):
    model, tokenizer = embedded
    result = run_recall(
        model,
        tokenizer,
        StreamRAGConfig(data_dir=data_dir),
        tmp_path,
        sessions=1,
        facts_per_kind=1,
        windows=6,
        sink_tokens=4,
        window_tokens=124,
        evict_chunk=16,
        max_new_tokens=8,
        sizes=[200],
        queries=5,
        batch=64,
        progress=False,
    )
    written = json.loads((tmp_path / "recall.json").read_text())
    assert written == result
    png = (tmp_path / "recall.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000
    assert not list(tmp_path.glob(".recall-work-*"))  # the temporary archives are gone

    for system in SYSTEMS:
        entry = result[system]
        assert set(entry["by_kind"]) == set(KINDS) and entry["probes"] == len(KINDS)
        assert 0.0 <= entry["answer_accuracy"] <= 1.0 and entry["notes"]
    # Every fact was verified evicted (and archived) before its question, in every streaming system.
    assert all(p["archived"] for p in result["probes"])
    conversation = result["conversations"][0]
    for system in ("streamrag", "streaming_llm", "window"):
        assert conversation[system]["prefilled_tokens"] >= 6 * 128
        assert conversation[system]["evicted_tokens"] > 0
    # Only the archive can bring an evicted fact back; the ceiling has it in context.
    assert result["streamrag"]["hit_at_k"] > 0
    assert sum(p["hit"] for p in result["probes"]) >= 2
    assert result["streaming_llm"]["hit_at_k"] == 0.0 and result["window"]["hit_at_k"] == 0.0
    assert result["ceiling"]["hit_at_k"] == 1.0
    assert result["streamrag"]["cross_session_leaks"] == 0
    assert result["streamrag"]["chunks_written"] > 0 and result["streamrag"]["recall_ms"]["p50"] > 0

    assert result["write_ms_per_chunk"]["200"] > 0
    assert 0 < result["query_ms"]["200"]["p50"] <= result["query_ms"]["200"]["p95"]
    assert result["costs"]["first_query_ms"]["200"] > 0 and result["costs"]["query_after_write_ms"]["200"]["p50"] > 0
    assert result["costs"]["chunks_in_archive"] >= 200


def test_recall_cli_rejects_bad_sizes_before_loading_anything(data_dir, tmp_path):
    result = CliRunner().invoke(
        app, ["bench", "recall", "--sizes", "10,x", "--out", str(tmp_path)], env={"STREAMRAG_HOME": str(data_dir)}
    )
    assert result.exit_code == 2
    assert "--sizes" in result.output
    assert not (tmp_path / "recall.json").exists()


@pytest.mark.parametrize("option", [["--sessions", "13"], ["--facts-per-kind", "5"], ["--windows", "3"]])
def test_recall_cli_refuses_impossible_conversations(data_dir, tmp_path, option):
    args = ["bench", "recall", *option, "--sizes", "none", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args, env={"STREAMRAG_HOME": str(data_dir)})
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "recall.json").exists()
