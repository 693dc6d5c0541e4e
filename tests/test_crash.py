"""SIGKILL a real conversation (its own process), resume it: nothing acknowledged is lost, nothing unfindable.

The full experiment is ``streamrag bench crash`` (20 trials at random points);
these trials are the same code at its two subtlest kill points, so the suite
proves them on every run: right after an eviction's log append committed but
before the KV slots dropped, and after chunks reached Chroma but before the
log rows were marked indexed.
"""

from __future__ import annotations

import pytest

from streamrag.bench.crash import run_trial
from streamrag.config import StreamRAGConfig


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "delay"), [(1, 6.0), (2, 25.0)])
def test_a_killed_conversation_resumes_with_every_character_cached_or_archived(
    embedded, data_dir, tmp_path, seed, delay
):
    model, tokenizer = embedded
    config = StreamRAGConfig(data_dir=data_dir)  # the trial links data_dir/models: no second model conversion
    record = run_trial(config, model, tokenizer, tmp_path / "trial", seed, delay)
    assert record["integrity"] == "ok"
    assert record["acknowledged"] >= 3 and record["stored"] >= record["acknowledged"]
    assert record["lost"] == 0 and record["duplicated"] == 0
    assert record["uncovered_chars"] == 0 and record["mismatched_chunks"] == 0
    assert record["archived_chunks"] > 0  # text left the window and was indexed
