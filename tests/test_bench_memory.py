"""The memory benchmark on tiny settings: its files, the baselines beside streamrag, and the cost part."""

from __future__ import annotations

import json

from streamrag.bench.dialogues import KINDS
from streamrag.bench.memory import SYSTEMS, run_memory
from streamrag.config import StreamRAGConfig

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_the_memory_benchmark_compares_streamrag_with_its_baselines(embedded, data_dir, tmp_path):
    model, tokenizer = embedded
    # A small window, so that most of even a short conversation is evicted and has to be recalled.
    base = StreamRAGConfig(
        data_dir=data_dir,
        cache={"sink_tokens": 4, "window_tokens": 508, "evict_chunk": 32},
        recall={"budget_fraction": 0.3},  # room for a few lines: ~150 tokens
    )
    result = run_memory(
        model,
        tokenizer,
        base,
        tmp_path / "out",
        dialogues=1,
        sessions=8,
        turns_per_session=12,
        answers=False,
        sizes=[300],
        others=300,
        queries=5,
        progress=False,
    )
    saved = json.loads((tmp_path / "out" / "memory.json").read_text())
    assert saved["settings"]["questions"] == result["settings"]["questions"] > 0
    assert (tmp_path / "out" / "memory.png").read_bytes()[:8] == PNG_MAGIC
    for system in SYSTEMS:
        assert 0.0 <= saved[system]["evidence_recall"] <= 1.0
        assert set(saved[system]["by_kind"]) == set(KINDS)
    # On questions whose evidence left the window, retrieval is what answers; streamrag's recall must
    # beat a window of the last five messages (the LlamaIndex-style memory), whatever the tiny set.
    assert saved["streamrag"]["evidence_recall"] >= saved["llamaindex_style"]["evidence_recall"]
    assert saved["streamrag"]["tokens"] <= saved["settings"]["budget_tokens"] + 1
    cost = saved["cost"]["300"]
    assert cost["chunks_in_session"] == 300 and cost["chunks_in_other_sessions"] == 300
    assert cost["recall_ms"]["p50"] > 0 and cost["after_write_ms"]["p95"] > 0
    # The benchmark leaves only its results behind.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["memory.json", "memory.png"]
