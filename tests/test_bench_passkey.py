"""The passkey benchmark and the ppl benchmark's Self-Extend row, on tiny settings."""

from __future__ import annotations

import json

import pytest
import torch

from streamrag.bench.passkey import answer_has_key, haystack, parse_numbers
from streamrag.bench.ppl import run_ppl
from streamrag.config import StreamRAGConfig
from tests.test_bench import assert_png, invoke


def test_haystack_hides_the_key_at_the_asked_depth_in_about_the_asked_length(embedded):
    _, tokenizer = embedded
    text = haystack(tokenizer, 600, 0.25, "12345")
    tokens = len(tokenizer(text).input_ids)
    assert 540 <= tokens <= 600
    assert text.endswith("What is the pass key? The pass key is")
    assert 0.2 < text.index("12345") / len(text) < 0.35  # the intro counts towards the length


def test_an_answer_counts_only_when_its_first_five_digit_number_is_the_key():
    assert answer_has_key(" 12345. Remember", "12345")
    assert not answer_has_key(" 54321, not 12345", "12345")
    assert not answer_has_key(" a magical key", "12345")
    assert parse_numbers("2k, 10k,300") == [2048, 10240, 300]
    assert parse_numbers("0.2,0.8", float) == [0.2, 0.8]


def test_passkey_cli_runs_every_policy_and_writes_accuracy_per_length_and_depth(data_dir, tmp_path, one_thread):
    out = tmp_path / "out"
    args = ["bench", "passkey", "--lengths", "200,700", "--depths", "0.2", "--window", "252"]
    args += ["--neighbor-window", "128", "--group-size", "4", "--threads", "1", "--out", str(out), "--name", "pk"]
    result = invoke(args, data_dir)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "pk.json").read_text())
    assert_png(out / "pk.png")
    assert set(data["accuracy"]) == {"dense", "sink", "sink_archive", "self_extend"}
    assert data["model"]["trained_length"] == 8192
    records = {(r["policy"], r["length"]): r for r in data["records"]}
    assert len(records) == 8
    # 200 tokens fit every cache: nothing evicted, and the model finds the key.
    for policy in data["accuracy"]:
        assert records[(policy, 200)]["evicted_tokens"] == 0
    assert data["accuracy"]["dense"]["200"]["0.2"] == 1.0
    # 700 tokens overflow the 256-token sink caches: the key (at 20%) has left them; Self-Extend keeps all.
    assert records[("sink", 700)]["evicted_tokens"] > 300
    assert records[("sink_archive", 700)]["evicted_tokens"] > 300
    assert records[("self_extend", 700)]["evicted_tokens"] == 0
    assert not any(path.name.startswith(".passkey-work") for path in out.iterdir())


def test_ppl_self_extend_row_equals_dense_when_the_neighbor_window_covers_the_text(embedded, data_dir, tmp_path):
    model, tokenizer = embedded
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run_ppl(
            model,
            tokenizer,
            StreamRAGConfig(data_dir=data_dir),
            tmp_path,
            tokens=48,
            window_tokens=60,
            sink_tokens=4,
            chunk=16,
            progress=False,
            self_extend=True,
            group_size=4,
            neighbor_window=64,
        )
    finally:
        torch.set_num_threads(threads)
    entry = result["self_extend"]
    assert entry["evicted_tokens"] == 0 and entry["cache_tokens"] == 48
    assert entry["ppl"] == pytest.approx(result["dense"]["ppl"], rel=1e-3)
    assert result["ratios"]["self_extend_vs_dense"] == pytest.approx(1.0, abs=1e-3)
    assert result["settings"]["self_extend"] == {"group_size": 4, "neighbor_window": 64}
    assert {"dense", "window", "sink"} <= set(result)  # the existing rows are unchanged
