"""The benchmarks on tiny settings: their files, and numbers that only real measurements produce."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from streamrag.bench.latency import parse_lengths
from streamrag.bench.ppl import run_ppl
from streamrag.cli import app
from streamrag.config import StreamRAGConfig

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def invoke(args: list[str], data_dir) -> object:
    """Run the CLI with the session's data dir, so the converted model is reused and nothing leaves tmp."""
    result = CliRunner().invoke(app, args, env={"STREAMRAG_HOME": str(data_dir)}, catch_exceptions=False)
    return result


def kv_bytes_per_token(model) -> int:
    config = model.config.get_text_config(decoder=True)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = next(model.parameters()).element_size()
    return config.num_hidden_layers * 2 * config.num_key_value_heads * head_dim * element


@pytest.fixture
def keep_threads():
    """Tests that change torch's thread count (``--threads`` does, process-wide) get it put back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def assert_png(path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_ppl_equals_dense_for_every_policy_when_the_text_fits_the_cache(embedded, data_dir, tmp_path, keep_threads):
    model, tokenizer = embedded
    torch.set_num_threads(1)  # two threads on two busy cores are slower than one
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
    )
    written = json.loads((tmp_path / "ppl.json").read_text())
    assert written == result
    assert_png(tmp_path / "ppl.png")
    dense = result["dense"]
    assert dense["scored_tokens"] == 47 and 1 < dense["ppl"] < 1000
    for policy in ("window", "sink"):
        assert result[policy]["evicted_tokens"] == 0
        assert result[policy]["cache_tokens"] == 48
        # Nothing was evicted, so the sink cache must reproduce transformers' own cache.
        assert result[policy]["ppl"] == pytest.approx(dense["ppl"], rel=1e-3)
    assert result["ratios"]["sink_vs_dense"] == pytest.approx(1.0, abs=1e-3)


def test_ppl_cli_scores_three_policies_and_sinks_beat_the_plain_window(data_dir, tmp_path, keep_threads):
    out = tmp_path / "out"
    args = ["bench", "ppl", "--tokens", "160", "--window", "48", "--sinks", "4", "--chunk", "16", "--threads", "1"]
    result = invoke([*args, "--out", str(out), "--name", "small"], data_dir)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "small.json").read_text())
    assert_png(out / "small.png")
    assert {"dense", "window", "sink", "ratios", "settings"} <= set(data)
    dense, window, sink = data["dense"], data["window"], data["sink"]
    assert dense["evicted_tokens"] == 0 and dense["cache_tokens"] == 160
    for entry, sinks in ((window, 0), (sink, 4)):
        assert entry["sink_tokens"] == sinks and entry["capacity"] == 52
        assert entry["evicted_tokens"] > 0 and entry["cache_tokens_max"] <= 52
        assert len(entry["nll_per_chunk"]) == math.ceil(160 / 16)
        # Before the first eviction all three caches hold the same tokens: same predictions.
        before = entry["ppl_by_segment"]["before_eviction"]
        assert before == pytest.approx(dense["ppl_by_segment"]["before_eviction"], rel=1e-3)
    assert data["ratios"]["sink_vs_dense"] == pytest.approx(sink["ppl"] / dense["ppl"], rel=1e-3)
    # The StreamingLLM result: dropping the first tokens hurts far more than dropping the same number later.
    assert data["ratios"]["window_vs_dense"] > data["ratios"]["sink_vs_dense"] * 1.2


def test_ppl_cli_rejects_a_chunk_larger_than_the_window_by_field_name(data_dir, tmp_path):
    args = ["bench", "ppl", "--window", "16", "--chunk", "32", "--out", str(tmp_path)]
    result = invoke(args, data_dir)
    assert result.exit_code == 2
    assert "cache.evict_chunk" in result.output
    assert not (tmp_path / "ppl.json").exists()


def test_lengths_accept_thousands_suffix_and_sort():
    assert parse_lengths("16k, 1000,4k,1000") == [1000, 4000, 16000]
    with pytest.raises(ValueError):
        parse_lengths("10,-3")


@pytest.mark.slow
def test_latency_cli_measures_every_policy_at_every_length(embedded, data_dir, tmp_path):
    model, _ = embedded
    args = ["bench", "latency", "--lengths", "80,160", "--window", "40", "--sinks", "4", "--evict-chunk", "8"]
    args += ["--steps", "8", "--recompute-steps", "2", "--dense-max", "100", "--threads", "1", "--out", str(tmp_path)]
    result = invoke(args, data_dir)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "latency.json").read_text())
    assert_png(tmp_path / "latency.png")
    per_token = kv_bytes_per_token(model)
    for policy in ("sink", "dense", "recompute", "archive"):
        assert [entry["length"] for entry in data[policy]["results"]] == [80, 160]
        for entry in data[policy]["results"]:
            if entry.get("skipped"):
                continue
            assert entry["ms_per_token"] > 0 and entry["rss_mb"] > 100 and entry["steps"] > 0
    sink = data["sink"]["results"]
    # The sink cache fills to exactly sinks + window before each eviction, whatever the stream length.
    assert [entry["cache_tokens"] for entry in sink] == [44, 44]
    assert sink[0]["cache_mb"] == sink[1]["cache_mb"] == round(44 * per_token / 2**20, 3)
    assert sink[1]["evicted_tokens"] > sink[0]["evicted_tokens"] > 0
    dense = data["dense"]["results"]
    assert dense[0]["cache_tokens"] == 80 + 8 and dense[0]["cache_mb"] == round(88 * per_token / 2**20, 3)
    assert dense[1]["skipped"] and "dense-max" in dense[1]["reason"]
    assert data["recompute"]["results"][0]["cache_mb"] == 0
    ratios = data["ratios"]
    assert ratios["80"]["dense_vs_sink_ms_per_token"] > 0 and ratios["160"]["dense_vs_sink_ms_per_token"] is None
    assert ratios["160"]["recompute_vs_sink_ms_per_token"] > 0
    # With the archive attached, evictions are logged and indexed in the background, nothing left behind.
    archive = data["archive"]["results"]
    assert [entry["cache_tokens"] for entry in archive] == [44, 44] and archive[1]["evictions"] > 0
    assert archive[-1]["indexed_chunks"] > 0 and archive[-1]["tokens_per_step"] >= 1
    assert ratios["160"]["archive_vs_sink_ms_per_token"] > 0


def test_constrained_bench_measures_the_grammar_against_free_text(embedded, data_dir, tmp_path, keep_threads):
    from streamrag.bench.constrained import WORKLOADS, run_constrained

    model, tokenizer = embedded
    torch.set_num_threads(1)
    result = run_constrained(
        model, tokenizer, StreamRAGConfig(data_dir=data_dir), tmp_path, max_tokens=128, prompts=1, progress=False
    )
    assert json.loads((tmp_path / "constrained.json").read_text())["workloads"] == result["workloads"]
    assert_png(tmp_path / "constrained.png")
    workloads = result["workloads"]
    assert list(workloads) == list(WORKLOADS)
    text = workloads["text"]
    assert text["tokens"] == 128 and text["grammar_ms_per_token"] == 0 and text["ms_per_token_ratio"] == 1.0
    for name in ("json_schema", "tool_call"):
        assert workloads[name]["valid"] == "1/1"
        assert workloads[name]["grammar_ms_per_token"] > 0  # measured, inside the grammar's own calls
        assert workloads[f"{name}_no_jump"]["tokens_per_step"] == 1.0
    # The tool call's fixed head is written for the model: many tokens per forward pass.
    assert workloads["tool_call"]["tokens_per_step"] > 2
    assert workloads["tool_call"]["ms_per_step_ratio"] > 0


def test_serve_bench_sends_the_same_load_through_the_api_and_the_app(embedded, data_dir, tmp_path, keep_threads):
    from streamrag.bench.serve import run_serve

    model, tokenizer = embedded
    torch.set_num_threads(1)
    result = run_serve(
        model, tokenizer, StreamRAGConfig(data_dir=data_dir), tmp_path, clients=(1, 2), turns=2, max_tokens=4
    )
    assert json.loads((tmp_path / "serve.json").read_text())["results"] == result["results"]
    assert_png(tmp_path / "serve.png")
    for target in ("api", "gradio"):
        for clients in (1, 2):
            run = result["results"][target][str(clients)]
            # Every turn of every client answered, each reply exactly max_tokens long (end of turn ignored).
            assert run["errors"] == 0 and run["turns"] == 2 * clients and run["tokens"] > 0
            if target == "api":  # streamed pieces are tokens; the app's text is re-tokenized, which may merge some
                assert run["tokens"] == 2 * clients * 4
            assert 0 < run["ttft_p50_ms"] <= run["ttft_p95_ms"] and run["total_tokens_per_s"] > 0
    api = result["results"]["api"]["2"]
    assert api["total_throughput_vs_gradio"] > 0 and api["ttft_p50_vs_gradio"] > 0
    assert not any(tmp_path.glob("*.sqlite3"))  # runs write their stores in their own temporary folders


def test_decode_bench_measures_each_setting_beside_llama_cpp_and_checks_the_goals(data_dir, tmp_path, keep_threads):
    from streamrag.bench.decode import GOALS, llama_cpp_available

    args = ["bench", "decode", "--quantize", "none,int4", "--threads", "1", "--tokens", "8", "--prefill-tokens", "64"]
    args += ["--messages", "120", "--baseline-messages", "6", "--load-runs", "1", "--out", str(tmp_path)]
    out = invoke(args, data_dir)
    assert out.exit_code == 0 and "perplexity_vs_fp32" in out.output
    result = json.loads((tmp_path / "decode.json").read_text())
    assert_png(tmp_path / "decode.png")
    assert result["default_setting"] == "int4"  # the embedded model is a 4-bit GGUF: auto means int4
    for mode in ("none", "int4"):
        entry = result["streamrag"][mode]
        assert entry["quantized_as"] == mode
        assert entry["decode_tokens_per_s"]["1"] > 0 and entry["prefill_tokens_per_s"]["1"] > 0
        assert entry["prefilled_tokens"] >= 64 and entry["perplexity"] > 1
        load = entry["load"]  # a fresh process loaded the model and produced a token
        assert 0 < load["import_s"] < load["ready_s"] < load["first_token_s"] <= load["process_wall_s"]
    assert result["ratios"]["int4"]["perplexity_vs_fp32"] < GOALS["perplexity_vs_fp32"]
    ingestion = result["ingestion"]
    assert ingestion["stored_messages"] == 120 and ingestion["archived_chunks"] > 0
    assert ingestion["tokens_per_s"] > 0 and ingestion["indexed_s"] >= ingestion["returned_s"]
    assert set(result["goals"]) == set(GOALS)
    assert result["goals"]["perplexity_vs_fp32"]["met"] is True
    reference = result["llama_cpp"]
    assert reference["available"] == llama_cpp_available()
    if reference["available"]:  # the optional `bench` extra: compiled from source, so not in `make test`
        assert reference["decode_tokens_per_s"]["1"] > 0 and reference["load"]["ready_s"] > 0
        assert result["ratios"]["int4"]["decode_vs_llama_cpp_1_thread"] > 0
        assert result["goals"]["decode_vs_llama_cpp_1_thread"]["met"] in (True, False)
    else:
        assert "llama_cpp" in reference["reason"] and "decode_vs_llama_cpp_1_thread" not in result["ratios"]["int4"]
    assert not any(tmp_path.glob("*.sqlite3"))


def test_decode_bench_refuses_unknown_settings_before_loading(data_dir, tmp_path):
    result = CliRunner().invoke(
        app, ["bench", "decode", "--quantize", "int3", "--out", str(tmp_path)], env={"STREAMRAG_HOME": str(data_dir)}
    )
    assert result.exit_code == 2 and "--quantize" in result.output
    assert not (tmp_path / "decode.json").exists()
